package main

import (
	"context"
	"fmt"
	"image/color"
	"slices"
	"strings"
	"time"

	"gonum.org/v1/plot/vg"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

// postCase is one kind of job of figure 2 and what was measured.
type postCase struct {
	name      string
	label     string // short, for the plot
	yaml      string
	spares    int
	fault     string
	req       *hourglassv1.GenerateRequest
	deadline  time.Duration
	refName   string
	ref       time.Duration
	slotFree  []time.Duration // deadline → the slot has an idle worker again
	reaped    []time.Duration // deadline → the old process is reaped (hang)
	answered  []time.Duration // client: its deadline → it got its answer
	stepsDone []float64
	other     map[codes.Code]int
	// serverCanceled counts calls the server logged as Canceled: the
	// client's RST_STREAM arrived before the server's deadline.
	serverCanceled int
}

// faultCtx adds the hourglass-fault metadata to a call.
func faultCtx(ctx context.Context, fault string) context.Context {
	if fault == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "hourglass-fault", fault)
}

// figPostDeadline: jobs whose deadline passes mid-run; time from the
// deadline to the worker slot being free again, read from the server's
// own log (the executor logs each transition with its time).
func (h *harness) figPostDeadline(s *section) error {
	s.title = "2. Post-deadline work: deadline → worker slot free again"
	s.png = "bench-post-deadline.png"
	n := pick(h, 30, 2)
	nHang := pick(h, 20, 1)
	size := pick(h, uint32(512), uint32(256))
	const steps = 40
	const slow = 20 * time.Millisecond
	const grace = 500 * time.Millisecond
	// The admission estimate is seeded low so that the slow= jobs, whose
	// injected delay admission cannot know about, are admitted; it then
	// follows the real jobs (EWMA) as usual.
	base := "admission:\n  seconds_per_megapixel_step: 0.001\n"

	coop := &postCase{
		name:  fmt.Sprintf("cooperative worker (%d×%d, %d steps, `slow=%v` per step)", size, size, steps, slow),
		label: "cooperative\nslow=20ms steps",
		yaml:  "workers:\n  count: 1\n  spares: 0\n" + base, fault: "slow=" + slow.String(),
		req: &hourglassv1.GenerateRequest{Prompt: "bench post-deadline", Width: proto.Uint32(size), Height: proto.Uint32(size),
			Steps: proto.Uint32(steps), Seed: proto.Uint64(2)},
		refName: "step time",
	}
	hangReq := &hourglassv1.GenerateRequest{Prompt: "bench hang", Width: proto.Uint32(64), Height: proto.Uint32(64),
		Steps: proto.Uint32(10), Seed: proto.Uint64(3)}
	hangYAML := func(spares int) string {
		return fmt.Sprintf("workers:\n  count: 1\n  spares: %d\ntimeouts:\n  cancel_grace: %v\n%s", spares, grace, base)
	}
	respawn := &postCase{name: "`hang` worker, no spare: grace, kill, respawn", label: "hang\nno spare",
		yaml: hangYAML(0), fault: "hang", req: hangReq, deadline: 300 * time.Millisecond, refName: "cancel grace", ref: grace}
	spare := &postCase{name: "`hang` worker, 1 hot spare: grace, kill, spare takes over", label: "hang\n1 hot spare",
		yaml: hangYAML(1), spares: 1, fault: "hang", req: hangReq, deadline: 300 * time.Millisecond, refName: "cancel grace", ref: grace}
	cases := []*postCase{coop, respawn, spare}

	for i, c := range cases {
		c.other = map[codes.Code]int{}
		total := map[bool]int{true: n, false: nHang}[c == coop]
		// The hang jobs each kill a worker: a fresh server every
		// killsPerServer of them keeps the crash-loop policy out of it.
		batch := total
		if c != coop {
			batch = killsPerServer
		}
		for done := 0; done < total; done += batch {
			d, err := h.startDaemon(2, fmt.Sprintf("post-deadline-%d", i+1), c.yaml, true)
			if err != nil {
				return err
			}
			err = h.runPostCase(d, c, min(batch, total-done), c == coop, steps, slow)
			d.close()
			if err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
		}
		if len(c.slotFree) == 0 {
			return fmt.Errorf("%s: no sample (other outcomes %v)", c.name, c.other)
		}
		sf := ms(c.slotFree)
		logf("  %s: n=%d, deadline → slot free p50 %s p99 %s (reference %s %v)", c.label, len(sf),
			fmtMs(quantile(sf, 0.5)), fmtMs(quantile(sf, 0.99)), c.refName, c.ref.Round(10*time.Microsecond))
	}

	// Plot: the samples of each case, with their reference.
	p1 := newPlot("Deadline → worker slot free again", "", "ms after the deadline (log scale)")
	logY(p1)
	colors := []color.Color{colHourglass, colOrange, colGreen}
	var names []string
	lo, hi := 1e9, 0.0
	for i, c := range cases {
		names = append(names, c.label)
		ys := ms(c.slotFree)
		for j := range ys {
			ys[j] = max(ys[j], 0.01) // a log axis has no zero
		}
		lo, hi = min(lo, slices.Min(ys)), max(hi, slices.Max(ys))
		if err := strip(p1, float64(i), ys, colors[i], uint64(i)); err != nil {
			return err
		}
	}
	refMs := float64(coop.ref) / float64(time.Millisecond)
	if err := hline(p1, refMs, -0.45, 0.45, fmt.Sprintf("step time %s", fmtMs(refMs)), colRef); err != nil {
		return err
	}
	gMs := float64(grace) / float64(time.Millisecond)
	if err := hline(p1, gMs, 0.6, 2.45, fmt.Sprintf("cancel grace %s", fmtMs(gMs)), colRef); err != nil {
		return err
	}
	p1.NominalX(names...)
	p1.X.Min, p1.X.Max = -0.6, 2.9
	p1.Y.Min, p1.Y.Max = min(lo, refMs)/2, max(hi, gMs)*2

	p2 := newPlot("hang: past the grace until the slot is free", "", "ms after deadline + cancel grace (log scale)")
	logY(p2)
	lo, hi = 1e9, 0.0
	for i, c := range cases[1:] {
		ys := ms(c.slotFree)
		for j := range ys {
			ys[j] = max(ys[j]-gMs, 0.01)
			lo, hi = min(lo, ys[j]), max(hi, ys[j])
		}
		if err := strip(p2, float64(i), ys, colors[i+1], uint64(5+i)); err != nil {
			return err
		}
	}
	p2.NominalX("kill + reap +\nnew process", "kill + hot spare\ntakes over")
	p2.X.Min, p2.X.Max = -0.6, 1.9
	p2.Y.Min, p2.Y.Max = lo/2, hi*3

	p3 := newPlot("The caller is answered at its deadline", "", "ms from the client's deadline to its answer")
	for i, c := range cases {
		if err := strip(p3, float64(i), ms(c.answered), colors[i], uint64(10+i)); err != nil {
			return err
		}
	}
	p3.NominalX(names...)
	p3.X.Min, p3.X.Max = -0.6, 2.9
	if err := h.savePNG(s.png, 16*vg.Inch, 5*vg.Inch, p1, p2, p3); err != nil {
		return err
	}

	var b strings.Builder
	fmt.Fprintf(&b, "![post-deadline work](docs/%s)\n\n", s.png)
	b.WriteString("Jobs whose deadline passes while a worker runs them, one at a time on a 1-worker server (`--unsafe-fault-injection`). " +
		"*Slot free* is read from hourglassd's own log, not from the client: the deadline is the one the server logged for the call (`grpc call` line), " +
		"and the slot is free at the executor's `job finished` line (cooperative: logged once the worker reports idle), " +
		"its `worker process ready` line for the replacement (no spare) or its `hot spare took over` line (spare). " +
		"*Reaped* is the executor's `worker killed` line, logged after the hung process group was SIGKILLed and reaped. " +
		"*Answered* is measured by the client: when its call returned, relative to its own deadline (negative: the server's DEADLINE_EXCEEDED arrived a hair before the client's own timer).\n\n")
	b.WriteString("| case | n | reference | slot free p50 | slot free p99 | slot free max | p99 ÷ reference | reaped p50 / p99 | answered p50 / p99 |\n")
	b.WriteString("|---|---:|---|---:|---:|---:|---:|---:|---:|\n")
	for _, c := range cases {
		sf := ms(c.slotFree)
		refMs := float64(c.ref) / float64(time.Millisecond)
		reaped := "–"
		if len(c.reaped) > 0 {
			r := ms(c.reaped)
			reaped = fmtMs(quantile(r, 0.5)) + " / " + fmtMs(quantile(r, 0.99))
		}
		a := ms(c.answered)
		fmt.Fprintf(&b, "| %s | %d | %s %s | %s | %s | %s | %s | %s | %s |\n", c.name, len(sf), c.refName, fmtMs(refMs),
			fmtMs(quantile(sf, 0.5)), fmtMs(quantile(sf, 0.99)), fmtMs(maxOf(sf)), fmtRatio(quantile(sf, 0.99)/refMs),
			reaped, fmtMs(quantile(a, 0.5))+" / "+fmtMs(quantile(a, 0.99)))
	}
	fmt.Fprintf(&b, "\nThe cooperative jobs are %d×%d with %d steps and `slow=%v` (each step sleeps %v on top of its compute, the sleep returns early on cancel), "+
		"deadline = 1.3 × the measured run time of the same job without the fault + 200 ms, so each is stopped about half way (steps done p50 %.0f of %d). "+
		"The step time is the measured compute time per step plus the %v. "+
		"The `hang` jobs (64×64, 10 steps) block forever after their first step without looking at cancellation; deadline %v, `timeouts.cancel_grace: %v` "+
		"(the default is 2 s; a shorter grace keeps the run short and changes nothing but that constant). "+
		"Each `hang` job costs a worker its life, so a fresh server is started every %d of them: "+
		"the executor holds back a slot whose worker died 5 times within 30 s (crash-loop policy), which is not what this figure measures.\n\n",
		size, size, steps, slow, slow, quantile(coop.stepsDone, 0.5), steps, slow, respawn.deadline, grace, killsPerServer)
	canceled := 0
	for _, c := range cases {
		canceled += c.serverCanceled
	}
	if canceled > 0 {
		fmt.Fprintf(&b, "%d of these calls were logged by the server as `Canceled` rather than `DeadlineExceeded`: the server's deadline is computed from `grpc-timeout` when the request arrives, so it is a little later than the client's, "+
			"and the client's RST_STREAM, sent at its own deadline, can arrive before it. They are counted here all the same (same event, same slot behaviour).\n\n", canceled)
	}
	b.WriteString("**What limits these numbers:** cooperative: once the cancel reaches the worker (one Unix-socket hop) the worker stops at its next check, within one step's compute, " +
		"and the executor's idle poll (`Describe` every 10 ms) then sees it idle, so the expected bound is one compute step plus the 10 ms poll, below the step time; " +
		"samples above it are scheduling delays on a loaded 2-core machine (see the load average in the notes). " +
		"`hang`: the grace by design, then SIGKILL and reap (a few ms), then either a fresh worker process (fork/exec, Go runtime start, socket, `Describe`: tens of ms on 2 shared cores) " +
		"or a hot spare (a few ms). The caller's answer does not wait for any of it.\n")
	s.body = b.String()
	p99 := func(c *postCase) float64 { return quantile(ms(c.slotFree), 0.99) }
	s.summary = fmt.Sprintf("cooperative worker: slot free %s after the deadline at p99 (its step time: %s); `hang`: grace + %s (new process) or grace + %s (hot spare) at p99; callers answered within %s of their deadline",
		fmtMs(p99(coop)), fmtMs(float64(coop.ref)/float64(time.Millisecond)), fmtMs(p99(respawn)-gMs), fmtMs(p99(spare)-gMs),
		fmtMs(max(quantile(ms(coop.answered), 0.99), quantile(ms(respawn.answered), 0.99), quantile(ms(spare.answered), 0.99))))
	return nil
}

// runPostCase sends the case's jobs one at a time, then reads the log.
func (h *harness) runPostCase(d *daemon, c *postCase, n int, cooperative bool, steps int, slow time.Duration) error {
	ctx := h.ctx
	if cooperative && c.ref == 0 {
		// Measure the job without the fault: its run time and step time.
		var runs []float64
		for range pick(h, 3, 2) {
			resp, err := d.client.Generate(withTimeout(ctx, 30*time.Second), c.req)
			if err != nil {
				return fmt.Errorf("baseline job: %w", err)
			}
			runs = append(runs, resp.GetStats().GetRunTime().AsDuration().Seconds())
		}
		run := time.Duration(quantile(runs, 0.5) * float64(time.Second))
		c.ref = run/time.Duration(steps) + slow
		c.deadline = run*13/10 + 200*time.Millisecond
	}
	for range n {
		if err := d.waitIdle(ctx, c.spares, 30*time.Second); err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(faultCtx(ctx, c.fault), c.deadline)
		dl, _ := cctx.Deadline()
		_, err := d.client.Generate(cctx, c.req)
		returned := time.Now()
		cancel()
		if code := status.Code(err); code != codes.DeadlineExceeded {
			c.other[code]++
			continue
		}
		c.answered = append(c.answered, returned.Sub(dl))
	}
	if err := d.waitIdle(ctx, c.spares, 30*time.Second); err != nil {
		return err
	}
	recs, _, err := readLog(d.logPath, 0)
	if err != nil {
		return err
	}
	for i, r := range recs {
		// A call whose caller's RST_STREAM reached the server a hair
		// before the server's own deadline (computed from grpc-timeout on
		// arrival, so a little later than the client's) is logged as
		// Canceled; it is the same event.
		code := r.str("code")
		if r.Msg != msgCall || !strings.HasSuffix(r.str("method"), "/Generate") || (code != "DeadlineExceeded" && code != "Canceled") {
			continue
		}
		if code == "Canceled" {
			c.serverCanceled++
		}
		job := r.str("job")
		deadline, err := time.Parse(time.RFC3339Nano, r.str("deadline"))
		if err != nil || job == "" {
			continue
		}
		// The executor's lines for this job come after the call's line
		// (the caller is answered first), except rarely "job finished",
		// which may race it: search from a little before.
		fin := -1
		for j := max(0, i-50); j < len(recs); j++ {
			if executorJobFinished(recs[j]) && recs[j].str("job") == job {
				fin = j
				break
			}
		}
		if fin < 0 {
			continue
		}
		// This job's events end where the next job starts on a worker.
		end := len(recs)
		for j := fin + 1; j < len(recs); j++ {
			if recs[j].Msg == "job started" || recs[j].Msg == "job rejected" {
				end = j
				break
			}
		}
		c.stepsDone = append(c.stepsDone, recs[fin].num("steps_done"))
		switch {
		case cooperative:
			if o := recs[fin].str("outcome"); o != "deadline" && o != "canceled" {
				continue
			}
			c.slotFree = append(c.slotFree, recs[fin].Time.Sub(deadline))
		default:
			if t, ok := firstAfter(recs[:end], fin, func(r logRec) bool { return r.Msg == msgKilled && r.str("worker") == "w0" }); ok {
				c.reaped = append(c.reaped, t.Sub(deadline))
			}
			free := func(r logRec) bool { return r.Msg == msgReady }
			if c.spares > 0 {
				free = func(r logRec) bool { return r.Msg == msgSpare && r.str("worker") == "w0" }
			}
			if t, ok := firstAfter(recs[:end], fin, free); ok {
				c.slotFree = append(c.slotFree, t.Sub(deadline))
			}
		}
	}
	return nil
}

// firstAfter is the time of the first record after index i that matches.
func firstAfter(recs []logRec, i int, match func(logRec) bool) (time.Time, bool) {
	for _, r := range recs[i+1:] {
		if match(r) {
			return r.Time, true
		}
	}
	return time.Time{}, false
}
