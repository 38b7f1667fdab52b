package main

import (
	"context"
	"fmt"
	"image/color"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

// deadlineMix is figure 4's documented mix of deadlines, as multiples of
// T0, the job's latency on an idle server (each job size its own T0).
var deadlineMix = []struct {
	name  string
	share float64
	mult  float64
}{
	{"impossible", 0.20, 0.5},
	{"tight", 0.30, 2},
	{"moderate", 0.30, 5},
	{"generous", 0.20, 20},
}

// loads are the offered loads, in multiples of the measured capacity.
var loads = []float64{1, 2, 4}

// goodputMode is one server configuration figure 4 compares.
type goodputMode struct {
	name, label, yaml string
	color             color.Color
}

type goodputRun struct {
	mode     string
	load     float64
	capacity float64 // jobs/s of the mix, measured right before this load level
	offered  int
	admitted int // offered less the admission refusals
	ok       int
	goodput  float64 // OK calls per second of the arrival window
	codes    map[string]int
	useful   time.Duration // worker time of jobs whose caller got OK
	wasted   time.Duration // worker time of jobs whose caller did not
	drain    time.Duration // end of the window → server idle again
	okBy     []int         // OK by deadline class
	sentBy   []int
}

// kept is OK ÷ admitted: how often an admitted job kept its promise.
func (r *goodputRun) kept() float64 {
	if r.admitted == 0 {
		return 1
	}
	return float64(r.ok) / float64(r.admitted)
}

// admissionRefusal reports whether a call's status is a refusal made
// before the job was queued (the job was never admitted).
func admissionRefusal(name string) bool {
	for _, reason := range []string{"DEADLINE_TOO_SHORT", "OVERLOADED", "QUEUE_FULL"} {
		if strings.HasSuffix(name, " "+reason) {
			return true
		}
	}
	return false
}

// statusName is the gRPC code name, with the ErrorInfo reason when there
// is one, e.g. "RESOURCE_EXHAUSTED OVERLOADED".
func statusName(err error) string {
	st := status.Convert(err)
	name := codeName(st.Code())
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok && ei.GetReason() != name {
			return name + " " + ei.GetReason()
		}
	}
	return name
}

func codeName(c codes.Code) string {
	if c == codes.OK {
		return "OK"
	}
	var b strings.Builder
	for i, r := range c.String() {
		if r >= 'A' && r <= 'Z' && i > 0 {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return strings.ToUpper(b.String())
}

// jobSizes is figure 4's mix of job sizes: one image of side×side at each
// step count, drawn with equal probability, so run times spread over 8×.
func (h *harness) jobSizes() (side uint32, steps []uint32) {
	return pick(h, uint32(256), uint32(64)), pick(h, []uint32{5, 10, 20, 40}, []uint32{2, 4})
}

// figGoodput: open-loop Poisson load at 1×, 2× and 4× the measured
// capacity, job sizes from jobSizes and deadlines from deadlineMix;
// hourglass defaults vs the previous point-estimate policy vs the naive
// FIFO pool (admission and cancellation off), the same arrivals for all.
func (h *harness) figGoodput(s *section) error {
	s.title = "4. Goodput and kept promises under overload: hourglass vs the point-estimate policy vs a naive FIFO pool"
	s.png = "bench-goodput.png"
	workers := numCPU()
	side, steps := h.jobSizes()
	window := pick(h, 8*time.Second, 500*time.Millisecond)
	reqs := make([]*hourglassv1.GenerateRequest, len(steps))
	for i, n := range steps {
		reqs[i] = &hourglassv1.GenerateRequest{Prompt: "bench goodput", Width: proto.Uint32(side), Height: proto.Uint32(side),
			Steps: proto.Uint32(n), Seed: proto.Uint64(5)}
	}
	base := fmt.Sprintf("workers:\n  count: %d\n", workers)
	modes := []goodputMode{
		{"hourglass", "hourglass (defaults: schedulable)", base, colHourglass},
		{"point", "previous policy (admission.policy: point-estimate)", base + "admission:\n  policy: point-estimate\n", colOrange},
		{"naive", "naive FIFO (admission and cancellation off)", base + "admission:\n  enabled: false\ncancellation:\n  enabled: false\n", colNaive},
	}
	var servers []*daemon
	defer func() {
		for _, d := range servers {
			d.close()
		}
	}()
	for _, m := range modes {
		d, err := h.startDaemon(4, "goodput-"+m.name, m.yaml, false)
		if err != nil {
			return err
		}
		servers = append(servers, d)
	}
	hg := servers[0]

	// T0 of each size, on the hourglass server: the least of a few idle
	// latencies (on a shared machine the others include other people's
	// work).
	t0 := make([]time.Duration, len(reqs))
	for i, req := range reqs {
		var lat []float64
		for range pick(h, 5, 2) {
			start := time.Now()
			if _, err := hg.client.Generate(withTimeout(h.ctx, 60*time.Second), req); err != nil {
				return fmt.Errorf("idle latency: %w", err)
			}
			lat = append(lat, time.Since(start).Seconds())
		}
		t0[i] = time.Duration(slices.Min(lat) * float64(time.Second))
	}
	// measureCapacity is the throughput of the mix in a closed loop of 2
	// callers per worker with 60 s deadlines on the hourglass server,
	// measured again right before each load level, since a shared
	// machine's capacity drifts.
	var capMu sync.Mutex
	capRng := rand.New(rand.NewPCG(7, 7))
	call := func(ctx context.Context) error {
		capMu.Lock()
		req := reqs[capRng.IntN(len(reqs))]
		capMu.Unlock()
		ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		_, err := hg.client.Generate(ctx, req)
		return err
	}
	measureCapacity := func() (float64, error) {
		closedLoop(h.ctx, 2*workers, pick(h, 500*time.Millisecond, 100*time.Millisecond), call)
		r := closedLoop(h.ctx, 2*workers, pick(h, 4*time.Second, 400*time.Millisecond), call)
		if r.ok == 0 {
			return 0, fmt.Errorf("capacity run: no call succeeded (%v)", r.errs)
		}
		return r.throughput(), nil
	}
	var t0Note []string
	for i, n := range steps {
		t0Note = append(t0Note, fmt.Sprintf("%d steps %v", n, t0[i].Round(time.Millisecond)))
	}
	logf("  jobs %d×%d, %s (T0, idle latency), %d workers", side, side, strings.Join(t0Note, ", "), workers)

	var runs []*goodputRun
	var capacities []float64
	for ki, k := range loads {
		capacity, err := measureCapacity()
		if err != nil {
			return err
		}
		capacities = append(capacities, capacity)
		logf("  capacity before the %.0f× level: %.1f jobs/s", k, capacity)
		// The modes run one after the other, the order rotating per level,
		// so that each is measured within the same minute of a shared
		// machine's life.
		for o := range modes {
			i := (o + ki) % len(modes)
			r, err := h.openLoop(servers[i], modes[i].name, k, capacity, t0, window, reqs)
			if err != nil {
				return fmt.Errorf("%s at %.0f×: %w", modes[i].name, k, err)
			}
			r.capacity = capacity
			runs = append(runs, r)
			logf("  %-9s %.0f× capacity: offered %d, admitted %d, OK %d (kept %.1f%%), goodput %.2f× capacity, wasted %.1f worker-s",
				r.mode, k, r.offered, r.admitted, r.ok, 100*r.kept(), r.goodput/capacity, r.wasted.Seconds())
		}
	}
	modeIndex := func(name string) int {
		return slices.IndexFunc(modes, func(m goodputMode) bool { return m.name == name })
	}
	slices.SortStableFunc(runs, func(a, b *goodputRun) int { return modeIndex(a.mode) - modeIndex(b.mode) })

	cost, err := h.refusalCost(hg)
	if err != nil {
		return err
	}

	capacitySeconds := float64(workers) * window.Seconds()
	p1 := newPlot("Goodput: OK within the deadline", "offered load (× capacity)", "goodput ÷ capacity")
	p2 := newPlot("Kept promises: OK ÷ admitted", "offered load (× capacity)", "kept rate")
	p3 := newPlot("Worker time wasted on jobs that failed anyway", "offered load (× capacity)", "wasted ÷ worker capacity")
	for i, m := range modes {
		var g, kr, w plotter.XYs
		for _, r := range runs {
			if r.mode == m.name {
				g = append(g, plotter.XY{X: r.load, Y: r.goodput / r.capacity})
				kr = append(kr, plotter.XY{X: r.load, Y: r.kept()})
				w = append(w, plotter.XY{X: r.load, Y: r.wasted.Seconds() / capacitySeconds})
			}
		}
		for _, pl := range []struct {
			p   *plot.Plot
			xys plotter.XYs
		}{{p1, g}, {p2, kr}, {p3, w}} {
			if err := line(pl.p, m.label, pl.xys, m.color, false, i); err != nil {
				return err
			}
		}
	}
	feasible := 1 - deadlineMix[0].share
	var bound plotter.XYs
	for _, k := range []float64{0.8, 1, 1 / feasible, 2, 3, 4, 4.2} {
		bound = append(bound, plotter.XY{X: k, Y: min(k*feasible, 1)})
	}
	slices.SortFunc(bound, func(a, b plotter.XY) int { return int((a.X - b.X) * 1000) })
	if err := dashedLine(p1, "upper bound: min(1, offered × feasible share)", bound, colRef); err != nil {
		return err
	}
	p1.Legend.Top, p1.Legend.Left = true, false
	top := 1.0
	for _, r := range runs {
		top = max(top, r.goodput/r.capacity)
	}
	p1.Y.Min, p1.Y.Max = 0, top*1.6 // room for the legend
	p2.Y.Min, p2.Y.Max = 0, 1.05
	p2.Legend.Top, p2.Legend.Left = false, true
	p3.Y.Min = 0
	p3.Y.Max = max(p3.Y.Max*1.3, 0.1)
	for _, p := range []*plot.Plot{p1, p2, p3} {
		p.X.Min, p.X.Max = 0.8, 4.2
	}
	if err := h.savePNG(s.png, 18*vg.Inch, 5*vg.Inch, p1, p2, p3); err != nil {
		return err
	}

	var b strings.Builder
	fmt.Fprintf(&b, "![goodput](docs/%s)\n\n", s.png)
	capNote := make([]string, len(capacities))
	for i, c := range capacities {
		capNote[i] = fmt.Sprintf("%.1f", c)
	}
	fmt.Fprintf(&b, "Jobs of %d×%d with %s steps (each size equally likely), on %d workers (one per CPU). "+
		"T0, each size's latency on an idle server (least of a few), was %s. "+
		"The capacity is the throughput of the same mix in a closed loop of %d callers with 60 s deadlines on the hourglass server, measured again right before each load level "+
		"because a shared machine's capacity drifts: **%s jobs/s** before the 1×, 2× and 4× levels. "+
		"Each run sends Poisson arrivals for %v at 1×, 2× and 4× that rate; every mode gets the same arrival times, sizes and deadlines (seeded), "+
		"and the three servers run side by side, each load level measured on one right after the other. "+
		"Each call's deadline is its size's T0 times a multiple drawn from this mix:\n\n",
		side, side, joinUints(steps), workers, strings.Join(t0Note, ", "), 2*workers, strings.Join(capNote, " / "), window)
	b.WriteString("| class | share | deadline |\n|---|---:|---:|\n")
	for _, c := range deadlineMix {
		fmt.Fprintf(&b, "| %s | %.0f%% | %g × T0 |\n", c.name, c.share*100, c.mult)
	}
	b.WriteString("\n*Goodput* = calls answered OK (hence within their deadline) ÷ the arrival window, as a share of the capacity. " +
		"*Admitted* = calls not refused at admission (`DEADLINE_TOO_SHORT`, `OVERLOADED`, `QUEUE_FULL`); *kept* = OK ÷ admitted. " +
		"*Wasted* = worker time, from the executor's `job finished` lines (`run_time`), of jobs whose caller got anything but OK " +
		"(joined with the server's `grpc call` line by job id), including what the naive pool runs after its callers have left, " +
		"as a share of the workers' capacity over the window; each run waits until the server is idle again (*drain*) so all of it is counted.\n\n")
	b.WriteString("| mode | load | offered | admitted | OK | **kept** | **goodput ÷ capacity** | worker-s on OK jobs | worker-s wasted | **wasted ÷ capacity** | drain | callers got |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, r := range runs {
		var got []string
		keys := make([]string, 0, len(r.codes))
		for k := range r.codes {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			got = append(got, fmt.Sprintf("%s %d", k, r.codes[k]))
		}
		fmt.Fprintf(&b, "| %s | %.0f× | %d | %d | %d | **%.1f%%** | **%.2f** | %.1f | %.1f | **%.1f%%** | %v | %s |\n",
			r.mode, r.load, r.offered, r.admitted, r.ok, 100*r.kept(), r.goodput/r.capacity, r.useful.Seconds(), r.wasted.Seconds(),
			100*r.wasted.Seconds()/capacitySeconds, r.drain.Round(100*time.Millisecond), strings.Join(got, ", "))
	}
	b.WriteString("\nOK / sent by deadline class:\n\n| mode | load |")
	for _, c := range deadlineMix {
		fmt.Fprintf(&b, " %s |", c.name)
	}
	b.WriteString("\n|---|---:|")
	for range deadlineMix {
		b.WriteString("---:|")
	}
	b.WriteString("\n")
	for _, r := range runs {
		fmt.Fprintf(&b, "| %s | %.0f× |", r.mode, r.load)
		for i := range deadlineMix {
			fmt.Fprintf(&b, " %d / %d |", r.okBy[i], r.sentBy[i])
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "\n**The cost of refusing.** %d calls of 1024×1024 × 40 steps with a 200 ms deadline, from %d callers, "+
		"all refused `DEADLINE_TOO_SHORT`, cost hourglassd **%v of CPU per refusal** (its whole gRPC path: transport, interceptors, validation, admission, logging). "+
		"For scale, a trivial job (64×64, 1 step) costs %v of CPU per call across hourglassd and its worker: a refusal is **%.2f×** of it, "+
		"and %.2f%% of a %d-step %d×%d job's worker time (%v).\n",
		cost.n, cost.conc, cost.perRefusal.Round(time.Microsecond), cost.perTrivial.Round(time.Microsecond),
		cost.perRefusal.Seconds()/cost.perTrivial.Seconds(), 100*cost.perRefusal.Seconds()/t0[len(t0)-1].Seconds(),
		steps[len(steps)-1], side, side, t0[len(t0)-1].Round(time.Millisecond))
	b.WriteString("\n**What limits these numbers:** the workers are CPU workers on the same 2 shared cores as hourglassd and the load generator, " +
		"so the capacity is CPU time, and the server's and client's own work at 4× load (thousands of calls refused per second, each costing the CPU above) takes some of it from the workers. " +
		"The capacity is measured on the hourglass server in a closed loop, where the queue never runs dry; the open-loop runs leave workers idle when Poisson arrivals of the feasible classes pause, " +
		"and a fifth of the offered work is impossible by construction. " +
		"hourglass admits a job only if, by the planned run times (the 0.97 quantile of each model's learned actual ÷ mean run time), it and every job admitted before it finish in time; " +
		"a job whose latest start passes in the queue leaves it unstarted (`DEADLINE_UNREACHABLE`). " +
		"What it still loses is run-time noise beyond the quantile: the CPU workers' run times vary with the load of the machine itself, which the estimator learns only as it happens. " +
		"The previous policy planned with the mean, checked only the new job's own wait and started every job it dispatched, so a tight job admitted late pushed earlier ones past their deadlines. " +
		"The naive pool's queue is bounded by the same `queue.max` (256), which is what eventually refuses its calls; every job it admits runs to its end.\n")
	s.body = b.String()
	var parts []string
	for _, k := range loads {
		for _, r := range runs {
			if r.load == k && r.mode == "hourglass" {
				parts = append(parts, fmt.Sprintf("%.0f×: kept %.1f%%, goodput %.2f of capacity, wasted %.1f%%", k, 100*r.kept(), r.goodput/r.capacity,
					100*r.wasted.Seconds()/capacitySeconds))
			}
		}
	}
	var others []string
	for _, r := range runs {
		if r.load == 4 && r.mode != "hourglass" {
			others = append(others, fmt.Sprintf("%s kept %.1f%%, goodput %.2f", r.mode, 100*r.kept(), r.goodput/r.capacity))
		}
	}
	s.summary = fmt.Sprintf("mixed sizes × deadline mix, %v of arrivals per level, hourglass ", window) + strings.Join(parts, "; ") +
		" (at 4×: " + strings.Join(others, "; ") + fmt.Sprintf("); a refusal costs %v of server CPU", cost.perRefusal.Round(time.Microsecond))
	return nil
}

func joinUints(v []uint32) string {
	parts := make([]string, len(v))
	for i, n := range v {
		parts[i] = strconv.FormatUint(uint64(n), 10)
	}
	return strings.Join(parts[:len(parts)-1], ", ") + " or " + parts[len(parts)-1]
}

// refusalCostResult is the CPU hourglassd spends per refused call, and per
// trivial job (server and worker together) for scale.
type refusalCostResult struct {
	n, conc                int
	perRefusal, perTrivial time.Duration
}

// refusalCost measures the server's CPU per call refused at admission and
// per trivial job, each over a closed loop on d. The refused calls are
// 1024×1024 jobs of 40 steps (seconds of work on any worker here) with a
// 200 ms deadline: refused DEADLINE_TOO_SHORT by admission, after the
// whole interceptor chain.
func (h *harness) refusalCost(d *daemon) (refusalCostResult, error) {
	req := &hourglassv1.GenerateRequest{Prompt: "bench refusal", Width: proto.Uint32(1024), Height: proto.Uint32(1024),
		Steps: proto.Uint32(40), Seed: proto.Uint64(5)}
	r := refusalCostResult{conc: 8}
	if err := d.waitIdle(h.ctx, 0, 3*time.Minute); err != nil {
		return r, err
	}
	pids := workerPIDs(h.ctx, d)
	dur := pick(h, 1500*time.Millisecond, 100*time.Millisecond)
	// measure runs call in a closed loop and returns the CPU it cost and
	// the calls made.
	measure := func(call func(context.Context) error) (cpuSplit, loadResult) {
		before := h.cpuNow(d, pids)
		res := closedLoop(h.ctx, r.conc, dur, call)
		return h.cpuNow(d, pids).sub(before), res
	}
	cpu, res := measure(func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		_, err := d.client.Generate(ctx, req)
		if name := statusName(err); name != "DEADLINE_EXCEEDED DEADLINE_TOO_SHORT" {
			return fmt.Errorf("want DEADLINE_TOO_SHORT, got %s (%v)", name, err)
		}
		return nil
	})
	if res.errors() > 0 || res.ok == 0 {
		return r, fmt.Errorf("refusal cost: %d of %d calls not refused DEADLINE_TOO_SHORT (%v)", res.errors(), res.ok+res.errors(), res.errs)
	}
	r.n = res.ok
	r.perRefusal = cpu.server / time.Duration(res.ok)
	trivial := &hourglassv1.GenerateRequest{Prompt: "bench trivial", Width: proto.Uint32(64), Height: proto.Uint32(64),
		Steps: proto.Uint32(1), Seed: proto.Uint64(5)}
	cpu, res = measure(func(ctx context.Context) error {
		_, err := d.client.Generate(withTimeout(ctx, 30*time.Second), trivial)
		return err
	})
	if res.errors() > 0 || res.ok == 0 {
		return r, fmt.Errorf("trivial jobs: %d of %d failed (%v)", res.errors(), res.ok+res.errors(), res.errs)
	}
	r.perTrivial = (cpu.server + cpu.workers) / time.Duration(res.ok)
	logf("  refusal: %v of server CPU per call; trivial job: %v of server+worker CPU", r.perRefusal, r.perTrivial)
	return r, nil
}

// openLoop sends Poisson arrivals at load × capacity for window, each of a
// random size and deadline class, waits for every answer and for the
// server to be idle, and reads the worker time of each job from the
// server's log.
func (h *harness) openLoop(d *daemon, mode string, load, capacity float64, t0 []time.Duration, window time.Duration, reqs []*hourglassv1.GenerateRequest) (*goodputRun, error) {
	if err := d.waitIdle(h.ctx, 0, 3*time.Minute); err != nil {
		return nil, err
	}
	rate := load * capacity
	rng := rand.New(rand.NewPCG(uint64(load*1000), 42))
	type arrival struct {
		at          time.Duration
		class, size int
	}
	var arrivals []arrival
	for t := 0.0; ; {
		t += rng.ExpFloat64() / rate
		if t >= window.Seconds() {
			break
		}
		u, class := rng.Float64(), 0
		for acc := 0.0; class < len(deadlineMix)-1; class++ {
			acc += deadlineMix[class].share
			if u < acc {
				break
			}
		}
		arrivals = append(arrivals, arrival{at: time.Duration(t * float64(time.Second)), class: class, size: rng.IntN(len(reqs))})
	}
	r := &goodputRun{mode: mode, load: load, offered: len(arrivals), codes: map[string]int{},
		okBy: make([]int, len(deadlineMix)), sentBy: make([]int, len(deadlineMix))}
	from := logSize(d.proc)
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for _, a := range arrivals {
		if wait := time.Until(start.Add(a.at)); wait > 0 {
			if err := h.sleepCtx(wait); err != nil {
				return nil, err
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(h.ctx, time.Duration(deadlineMix[a.class].mult*float64(t0[a.size])))
			defer cancel()
			_, err := d.client.Generate(ctx, reqs[a.size])
			mu.Lock()
			defer mu.Unlock()
			r.sentBy[a.class]++
			name := "OK"
			if err == nil {
				r.ok++
				r.okBy[a.class]++
			} else {
				name = statusName(err)
			}
			r.codes[name]++
			if !admissionRefusal(name) {
				r.admitted++
			}
		}()
	}
	windowEnd := start.Add(window)
	wg.Wait()
	if err := d.waitIdle(h.ctx, 0, 5*time.Minute); err != nil {
		return nil, err
	}
	r.drain = max(0, time.Since(windowEnd))
	r.goodput = float64(r.ok) / window.Seconds()

	recs, _, err := readLog(d.logPath, from)
	if err != nil {
		return nil, err
	}
	code := map[string]string{}
	runTime := map[string]time.Duration{}
	for _, rec := range recs {
		switch {
		case rec.Msg == msgCall && strings.HasSuffix(rec.str("method"), "/Generate") && rec.str("job") != "":
			code[rec.str("job")] = rec.str("code")
		case executorJobFinished(rec):
			runTime[rec.str("job")] = rec.dur("run_time")
		}
	}
	for job, rt := range runTime {
		if code[job] == "OK" {
			r.useful += rt
		} else {
			r.wasted += rt
		}
	}
	return r, nil
}
