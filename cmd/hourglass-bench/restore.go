package main

import (
	"context"
	"errors"
	"fmt"
	"image/color"
	"io"
	"strings"
	"syscall"
	"time"

	"gonum.org/v1/plot/vg"
	"google.golang.org/protobuf/proto"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

type restoreCase struct {
	name    string
	label   string
	spares  int
	byLog   []time.Duration // kill → the slot has a ready worker, from the server's log
	byPoll  []time.Duration // kill → GetServerInfo shows the slot ready with a new pid
	reaped  []time.Duration // kill → the executor logged the dead process reaped
	refill  []time.Duration // kill → a new hot spare is ready (spare case)
	callErr map[string]int  // what the caller of the killed job got
}

// figRestore: SIGKILL a busy worker process from outside (as the OOM killer
// or a segfault would) and time how long the slot goes without a worker.
func (h *harness) figRestore(s *section) error {
	s.title = "3. Capacity restore: worker kill → ready worker"
	s.png = "bench-capacity-restore.png"
	n := pick(h, 20, 1)
	cases := []*restoreCase{
		{name: "no spare: a fresh worker process starts", label: "no spare\n(respawn)", spares: 0},
		{name: "1 hot spare: the spare takes over", label: "1 hot spare", spares: 1},
	}
	for i, c := range cases {
		c.callErr = map[string]int{}
		yaml := fmt.Sprintf("workers:\n  count: 1\n  spares: %d\n", c.spares)
		// A fresh server every killsPerServer kills keeps the crash-loop
		// policy out of the measurement.
		for done := 0; done < n; done += killsPerServer {
			d, err := h.startDaemon(3, fmt.Sprintf("restore-%d", i+1), yaml, true)
			if err != nil {
				return err
			}
			for range min(killsPerServer, n-done) {
				if err := h.killOnce(d, c); err != nil {
					d.close()
					return fmt.Errorf("%s: %w", c.name, err)
				}
			}
			d.close()
		}
		if len(c.byLog) == 0 {
			return fmt.Errorf("%s: no sample", c.name)
		}
		l := ms(c.byLog)
		logf("  %s: n=%d, kill → ready p50 %s p99 %s", c.label, len(l), fmtMs(quantile(l, 0.5)), fmtMs(quantile(l, 0.99)))
	}

	p := newPlot("SIGKILL of a busy worker → slot has a ready worker", "", "ms after the kill (log scale)")
	logY(p)
	colors := []color.Color{colOrange, colGreen}
	var names []string
	lo, hi := 1e9, 0.0
	for i, c := range cases {
		names = append(names, c.label)
		ys := ms(c.byLog)
		for j := range ys {
			ys[j] = max(ys[j], 0.01)
			lo, hi = min(lo, ys[j]), max(hi, ys[j])
		}
		if err := strip(p, float64(i), ys, colors[i], uint64(20+i)); err != nil {
			return err
		}
	}
	p.NominalX(names...)
	p.X.Min, p.X.Max = -0.6, 1.9
	p.Y.Min, p.Y.Max = lo/2, hi*3
	if err := h.savePNG(s.png, 7.5*vg.Inch, 5*vg.Inch, p); err != nil {
		return err
	}

	var b strings.Builder
	fmt.Fprintf(&b, "![capacity restore](docs/%s)\n\n", s.png)
	b.WriteString("A 1-worker server runs a long job (`slow=100ms`, 64×64, 150 steps); once the job has reported its first step, the harness SIGKILLs the worker process " +
		"(its pid from `GetServerInfo`) and notes the time. *Ready (log)* is the server's own `worker process ready` line (no spare) or `hot spare took over` line (spare); " +
		"*ready (poll)* is when `GetServerInfo`, polled every few ms, first shows the slot ready with a new pid (an upper bound: it adds a poll and a call). " +
		"*Reaped* is the executor's `worker killed` line, logged once the dead process was reaped; *spare refilled* is when the replacement spare is ready. " +
		fmt.Sprintf("A fresh server is started every %d kills, below the executor's crash-loop threshold (5 deaths of a slot's worker within 30 s hold the slot back for 1 s, doubling up to 30 s, and bypass the spare).\n\n", killsPerServer))
	b.WriteString("| case | n | kill → ready (log) p50 | p99 | max | kill → ready (poll) p50 / p99 | kill → reaped p50 | kill → spare refilled p50 | the killed job's caller got |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, c := range cases {
		l, pl := ms(c.byLog), ms(c.byPoll)
		refill := "–"
		if len(c.refill) > 0 {
			refill = fmtMs(quantile(ms(c.refill), 0.5))
		}
		var got []string
		for k, v := range c.callErr {
			got = append(got, fmt.Sprintf("%s ×%d", k, v))
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %s / %s | %s | %s | %s |\n", c.name, len(l),
			fmtMs(quantile(l, 0.5)), fmtMs(quantile(l, 0.99)), fmtMs(maxOf(l)),
			fmtMs(quantile(pl, 0.5)), fmtMs(quantile(pl, 0.99)), fmtMs(quantile(ms(c.reaped), 0.5)), refill, strings.Join(got, ", "))
	}
	b.WriteString("\n**What limits these numbers:** the executor learns of the death when the worker's gRPC stream breaks (the kernel closes the Unix socket at once), then reaps the process. " +
		"Without a spare, the slot then waits for a new worker: fork/exec of `hourglass-worker`, the Go runtime starting, the socket appearing, and a `Describe` answer; " +
		"on 2 shared cores that is the dominant cost, and a real GPU worker loading a model would take seconds to minutes instead. " +
		"With a hot spare the slot gets the pre-started process under the executor's lock: what is left is noticing the death. " +
		"The kill is of a *busy* worker: an idle worker's death is noticed only when a job is sent to it (see the note at the end).\n")
	s.body = b.String()
	s.summary = fmt.Sprintf("SIGKILL of a busy worker → ready worker: p50 %s / p99 %s without a spare, p50 %s / p99 %s with a hot spare",
		fmtMs(quantile(ms(cases[0].byLog), 0.5)), fmtMs(quantile(ms(cases[0].byLog), 0.99)),
		fmtMs(quantile(ms(cases[1].byLog), 0.5)), fmtMs(quantile(ms(cases[1].byLog), 0.99)))
	return nil
}

// killOnce starts a long job, kills its worker and records the times.
func (h *harness) killOnce(d *daemon, c *restoreCase) error {
	ctx := h.ctx
	if err := d.waitIdle(ctx, c.spares, 30*time.Second); err != nil {
		return err
	}
	before, err := d.info(ctx)
	if err != nil {
		return err
	}
	oldPID := slotInfo(before, "w0").GetPid()

	cctx, cancel := context.WithTimeout(faultCtx(ctx, "slow=100ms"), 60*time.Second)
	defer cancel()
	stream, err := d.client.GenerateStream(cctx, &hourglassv1.GenerateRequest{Prompt: "bench restore",
		Width: proto.Uint32(64), Height: proto.Uint32(64), Steps: proto.Uint32(150), Seed: proto.Uint64(4)})
	if err != nil {
		return err
	}
	for {
		ev, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("stream ended before the first step: %w", err)
		}
		if ev.GetProgress() != nil {
			break
		}
	}
	info, err := d.info(ctx)
	if err != nil {
		return err
	}
	w := slotInfo(info, "w0")
	if w.GetState() != hourglassv1.WorkerState_WORKER_STATE_BUSY || w.GetPid() != oldPID {
		return fmt.Errorf("slot w0 not busy with pid %d: %v", oldPID, describeInfo(info))
	}
	from := logSize(d.proc)
	killed := time.Now()
	if err := syscall.Kill(int(oldPID), syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill worker %d: %w", oldPID, err)
	}
	// Poll for the slot with a new, ready worker.
	for {
		info, err := d.info(ctx)
		if err == nil {
			if w := slotInfo(info, "w0"); w.GetState() == hourglassv1.WorkerState_WORKER_STATE_READY && w.GetPid() != oldPID && w.GetPid() != 0 {
				c.byPoll = append(c.byPoll, time.Since(killed))
				break
			}
		}
		if time.Since(killed) > 30*time.Second {
			return fmt.Errorf("slot w0 not ready 30 s after the kill: %v", describeInfo(info))
		}
		time.Sleep(500 * time.Microsecond)
	}
	// The caller's answer.
	for {
		_, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			c.callErr["OK"]++
			break
		}
		if err != nil {
			c.callErr[statusName(err)]++
			break
		}
	}
	ready := func(r logRec) bool { return r.Msg == msgReady }
	if c.spares > 0 {
		ready = func(r logRec) bool { return r.Msg == msgSpare && r.str("worker") == "w0" }
	}
	rec, err := waitLog(ctx, d.proc, from, 10*time.Second, ready)
	if err != nil {
		return fmt.Errorf("no ready line after the kill: %w", err)
	}
	c.byLog = append(c.byLog, rec.Time.Sub(killed))
	if rec, err := waitLog(ctx, d.proc, from, 10*time.Second, func(r logRec) bool {
		return r.Msg == msgKilled && int32(r.num("pid")) == oldPID
	}); err == nil {
		c.reaped = append(c.reaped, rec.Time.Sub(killed))
	}
	if c.spares > 0 {
		if rec, err := waitLog(ctx, d.proc, from, 30*time.Second, func(r logRec) bool { return r.Msg == msgReady }); err == nil {
			c.refill = append(c.refill, rec.Time.Sub(killed))
		}
	}
	return nil
}
