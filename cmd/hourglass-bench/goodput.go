package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

// deadlineMix is figure 4's documented mix of deadlines, as multiples of
// T0, the job's latency on an idle server.
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

type goodputRun struct {
	mode     string
	load     float64
	capacity float64 // jobs/s, measured right before this load level
	offered  int
	ok       int
	goodput  float64 // OK calls per second of the arrival window
	codes    map[string]int
	useful   time.Duration // worker time of jobs whose caller got OK
	wasted   time.Duration // worker time of jobs whose caller did not
	drain    time.Duration // end of the window → server idle again
	okBy     []int         // OK by deadline class
	sentBy   []int
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

// figGoodput: open-loop Poisson load at 1×, 2× and 4× the measured
// capacity, deadlines from deadlineMix; hourglass defaults vs the naive
// FIFO pool (admission and cancellation off), the same arrivals for both.
func (h *harness) figGoodput(s *section) error {
	s.title = "4. Goodput under overload: hourglass vs a naive FIFO pool"
	s.png = "bench-goodput.png"
	workers := numCPU()
	size := pick(h, uint32(512), uint32(128))
	steps := pick(h, uint32(20), uint32(10))
	window := pick(h, 8*time.Second, 500*time.Millisecond)
	req := &hourglassv1.GenerateRequest{Prompt: "bench goodput", Width: proto.Uint32(size), Height: proto.Uint32(size),
		Steps: proto.Uint32(steps), Seed: proto.Uint64(5)}
	base := fmt.Sprintf("workers:\n  count: %d\n", workers)
	modes := []struct {
		name, label, yaml string
	}{
		{"hourglass", "hourglass (defaults)", base},
		{"naive", "naive FIFO (admission and cancellation off)", base + "admission:\n  enabled: false\ncancellation:\n  enabled: false\n"},
	}

	// T0 and the capacity, on the hourglass server.
	d, err := h.startDaemon(4, "goodput-hourglass", modes[0].yaml, false)
	if err != nil {
		return err
	}
	var lat []float64
	for range pick(h, 7, 2) {
		t0 := time.Now()
		if _, err := d.client.Generate(withTimeout(h.ctx, 60*time.Second), req); err != nil {
			d.close()
			return fmt.Errorf("idle latency: %w", err)
		}
		lat = append(lat, time.Since(t0).Seconds())
	}
	// The least of the idle latencies: on a shared machine the others
	// include other people's work.
	t0 := time.Duration(slices.Min(lat) * float64(time.Second))
	call := func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		_, err := d.client.Generate(ctx, req)
		return err
	}
	// measureCapacity is the throughput of a closed loop of 2 callers per
	// worker with 60 s deadlines on the hourglass server, measured again
	// right before each load level, since a shared machine's capacity
	// drifts.
	measureCapacity := func() (float64, error) {
		closedLoop(h.ctx, 2*workers, pick(h, 500*time.Millisecond, 100*time.Millisecond), call)
		r := closedLoop(h.ctx, 2*workers, pick(h, 3*time.Second, 400*time.Millisecond), call)
		if r.ok == 0 {
			return 0, fmt.Errorf("capacity run: no call succeeded (%v)", r.errs)
		}
		return r.throughput(), nil
	}
	logf("  job %d×%d, %d steps: T0 (idle latency) %v, %d workers", size, size, steps, t0.Round(time.Millisecond), workers)

	// Both servers run from here on; each load level runs on one and then
	// the other (the order alternating), so that a pair is measured within
	// the same half minute of a shared machine's life.
	naive, err := h.startDaemon(4, "goodput-"+modes[1].name, modes[1].yaml, false)
	if err != nil {
		d.close()
		return err
	}
	servers := []*daemon{d, naive}
	defer func() {
		for _, s := range servers {
			s.close()
		}
	}()
	var runs []*goodputRun
	var capacities []float64
	for ki, k := range loads {
		capacity, err := measureCapacity()
		if err != nil {
			return err
		}
		capacities = append(capacities, capacity)
		logf("  capacity before the %.0f× level: %.1f jobs/s", k, capacity)
		order := []int{0, 1}
		if ki%2 == 1 {
			order = []int{1, 0}
		}
		for _, i := range order {
			r, err := h.openLoop(servers[i], modes[i].name, k, capacity, t0, window, req)
			r.capacity = capacity
			if err != nil {
				return fmt.Errorf("%s at %.0f×: %w", modes[i].name, k, err)
			}
			runs = append(runs, r)
			logf("  %-9s %.0f× capacity: offered %d, goodput %.2f/s (%.2f× capacity), wasted %.1f worker-s, drain %v",
				r.mode, k, r.offered, r.goodput, r.goodput/capacity, r.wasted.Seconds(), r.drain.Round(time.Millisecond))
		}
	}
	slices.SortStableFunc(runs, func(a, b *goodputRun) int { return strings.Compare(a.mode, b.mode) })

	// Plot: goodput (as a share of the capacity measured just before) and
	// wasted worker time against offered load.
	p1 := newPlot("Goodput: OK within the deadline", "offered load (× capacity)", "goodput ÷ capacity")
	p2 := newPlot("Worker time wasted on jobs that failed anyway", "offered load (× capacity)", "wasted worker-seconds per second")
	for i, m := range modes {
		var g, w plotter.XYs
		for _, r := range runs {
			if r.mode == m.name {
				g = append(g, plotter.XY{X: r.load, Y: r.goodput / r.capacity})
				w = append(w, plotter.XY{X: r.load, Y: r.wasted.Seconds() / window.Seconds()})
			}
		}
		c := colHourglass
		if i == 1 {
			c = colNaive
		}
		if err := line(p1, m.label, g, c, false, i); err != nil {
			return err
		}
		if err := line(p2, m.label, w, c, false, i); err != nil {
			return err
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
	p1.Y.Min, p2.Y.Min = 0, 0
	top := 1.0
	for _, r := range runs {
		top = max(top, r.goodput/r.capacity)
	}
	p1.Y.Max = top * 1.5 // room for the legend
	p1.X.Min, p1.X.Max, p2.X.Min, p2.X.Max = 0.8, 4.2, 0.8, 4.2
	p2.Y.Max = max(p2.Y.Max*1.3, float64(workers)*0.1)
	if err := h.savePNG(s.png, 13*vg.Inch, 5*vg.Inch, p1, p2); err != nil {
		return err
	}

	var b strings.Builder
	fmt.Fprintf(&b, "![goodput](docs/%s)\n\n", s.png)
	capNote := make([]string, len(capacities))
	for i, c := range capacities {
		capNote[i] = fmt.Sprintf("%.1f", c)
	}
	fmt.Fprintf(&b, "Jobs of %d×%d, %d steps, on %d workers (one per CPU). T0, their latency on an idle server (least of %d), was **%v**. "+
		"The capacity is the throughput of a closed loop of %d callers with 60 s deadlines on the hourglass server, measured again right before each load level "+
		"because a shared machine's capacity drifts: **%s jobs/s** before the 1×, 2× and 4× levels. "+
		"Each run sends Poisson arrivals for %v at 1×, 2× and 4× that rate; both modes get the same arrival times and deadlines (seeded), and both servers run side by side, each load level measured on one right after the other. "+
		"Each call's deadline is drawn from this mix:\n\n", size, size, steps, workers, len(lat), t0.Round(time.Millisecond), 2*workers, strings.Join(capNote, " / "), window)
	b.WriteString("| class | share | deadline |\n|---|---:|---:|\n")
	for _, c := range deadlineMix {
		fmt.Fprintf(&b, "| %s | %.0f%% | %g × T0 = %v |\n", c.name, c.share*100, c.mult, time.Duration(c.mult*float64(t0)).Round(time.Millisecond))
	}
	b.WriteString("\n*Goodput* = calls answered OK (hence within their deadline) ÷ the arrival window. *Wasted* = worker time, from the executor's `job finished` lines (`run_time`), " +
		"of jobs whose caller got anything but OK (joined with the server's `grpc call` line by job id), including what the naive pool runs after its callers have left; " +
		"each run waits until the server is idle again (*drain*) so all of it is counted.\n\n")
	b.WriteString("| mode | load | offered | OK | **goodput** | goodput ÷ capacity | worker-s on OK jobs | **worker-s wasted** | wasted share | drain | callers got |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, r := range runs {
		share := r.wasted.Seconds() / (r.wasted + r.useful).Seconds()
		var got []string
		keys := make([]string, 0, len(r.codes))
		for k := range r.codes {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			got = append(got, fmt.Sprintf("%s %d", k, r.codes[k]))
		}
		fmt.Fprintf(&b, "| %s | %.0f× | %d | %d | **%.2f/s** | %.2f | %.1f | **%.1f** | %.0f%% | %v | %s |\n",
			r.mode, r.load, r.offered, r.ok, r.goodput, r.goodput/r.capacity, r.useful.Seconds(), r.wasted.Seconds(), share*100,
			r.drain.Round(100*time.Millisecond), strings.Join(got, ", "))
	}
	b.WriteString("\nGoodput by deadline class (OK / sent):\n\n| mode | load |")
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
	b.WriteString("\nhourglass ÷ naive goodput:")
	for _, k := range loads {
		var hg, nv float64
		for _, r := range runs {
			if r.load == k && r.mode == "hourglass" {
				hg = r.goodput
			}
			if r.load == k && r.mode == "naive" {
				nv = r.goodput
			}
		}
		fmt.Fprintf(&b, " %.0f×: %s;", k, fmtRatio(hg/nv))
	}
	b.WriteString("\n\n**What limits these numbers:** the workers are CPU workers on the same 2 shared cores as hourglassd and the load generator, " +
		"so the capacity is CPU time, and the server's and client's own work at 4× load takes some of it from the workers. " +
		"The naive pool's queue is bounded by the same `queue.max` (256), which is what eventually refuses its calls; every job it admits runs to its end. " +
		"hourglass refuses the impossible class at once (`DEADLINE_TOO_SHORT`), refuses what the queue cannot serve in time (`OVERLOADED`), serves the queue earliest-deadline-first, " +
		"and stops a job at its deadline, so little worker time goes to jobs whose callers have gone. " +
		"What it does waste is jobs it admitted on a run-time estimate that the load then made wrong (here the CPU contention of the load itself): each runs until its deadline and is stopped there.\n")
	s.body = b.String()
	var parts []string
	for _, k := range loads {
		var hg, nv *goodputRun
		for _, r := range runs {
			if r.load == k && r.mode == "hourglass" {
				hg = r
			}
			if r.load == k && r.mode == "naive" {
				nv = r
			}
		}
		if hg != nil && nv != nil {
			parts = append(parts, fmt.Sprintf("%.0f× capacity: %.2f vs %.2f of capacity, %.1f vs %.1f worker-s wasted", k, hg.goodput/hg.capacity, nv.goodput/nv.capacity, hg.wasted.Seconds(), nv.wasted.Seconds()))
		}
	}
	s.summary = fmt.Sprintf("goodput (OK within the deadline) and wasted worker time, hourglass vs naive FIFO, %v of arrivals per level: ", window) + strings.Join(parts, "; ")
	return nil
}

// openLoop sends Poisson arrivals at load × capacity for window, waits for
// every answer and for the server to be idle, and reads the worker time
// of each job from the server's log.
func (h *harness) openLoop(d *daemon, mode string, load, capacity float64, t0, window time.Duration, req *hourglassv1.GenerateRequest) (*goodputRun, error) {
	if err := d.waitIdle(h.ctx, 0, 3*time.Minute); err != nil {
		return nil, err
	}
	rate := load * capacity
	rng := rand.New(rand.NewPCG(uint64(load*1000), 42))
	type arrival struct {
		at    time.Duration
		class int
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
		arrivals = append(arrivals, arrival{at: time.Duration(t * float64(time.Second)), class: class})
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
			ctx, cancel := context.WithTimeout(h.ctx, time.Duration(deadlineMix[a.class].mult*float64(t0)))
			defer cancel()
			_, err := d.client.Generate(ctx, req)
			mu.Lock()
			defer mu.Unlock()
			r.sentBy[a.class]++
			if err == nil {
				r.ok++
				r.okBy[a.class]++
				r.codes["OK"]++
				return
			}
			r.codes[statusName(err)]++
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
