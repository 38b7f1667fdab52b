package main

import (
	"context"
	"fmt"
	"image/color"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hourglass-dev/hourglass/executor"
	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
	workerv1 "github.com/hourglass-dev/hourglass/gen/hourglass/worker/v1"
)

// spanRecorder hands the harness the start and end of the executor's
// admission spans and the end of its queue spans. OnEnd runs under the
// executor's lock, so it never blocks: a full channel drops.
type spanRecorder struct {
	admitted chan spanTimes
	left     chan spanTimes
}

type spanTimes struct{ start, end time.Time }

func (r *spanRecorder) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (r *spanRecorder) OnEnd(s sdktrace.ReadOnlySpan) {
	var ch chan spanTimes
	switch s.Name() {
	case "hourglass.admission":
		ch = r.admitted
	case "hourglass.queue":
		ch = r.left
	default:
		return
	}
	select {
	case ch <- spanTimes{s.StartTime(), s.EndTime()}:
	default:
	}
}
func (r *spanRecorder) Shutdown(context.Context) error   { return nil }
func (r *spanRecorder) ForceFlush(context.Context) error { return nil }

type scaleRow struct {
	depth                int
	enqueue, admit, deq  []float64 // µs per operation
	heapPerJob, stackPer float64   // bytes per queued job
}

// figScale: the executor in this process, one real worker kept busy by a
// job that never ends, and 100 … 10,000 jobs waiting behind it.
func (h *harness) figScale(s *section) error {
	s.title = "5. Scale: 100 to 10,000 queued jobs"
	s.png = "bench-scale.png"
	depths := pick(h, []int{100, 300, 1000, 3000, 10000}, []int{100, 1000})
	reps := pick(h, 5, 2)

	logFile, err := os.Create(filepath.Join(h.work, "scale-executor.log"))
	if err != nil {
		return err
	}
	defer logFile.Close()
	rec := &spanRecorder{admitted: make(chan spanTimes, 1<<16), left: make(chan spanTimes, 1<<16)}
	// A real SDK tracer provider, as hourglassd has (with no exporter it
	// still records spans), so each queued job carries its queue span.
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	cfg := executor.Config{
		Workers: 1, Spares: 0,
		Command:                 []string{filepath.Join(h.binDir, "hourglass-worker"), "--unsafe-fault-injection"},
		QueueMax:                20000,
		Admission:               true,
		SecondsPerMegapixelStep: 0.01,
		Cancellation:            true,
		Heartbeat:               2 * time.Hour,
		TracerProvider:          tp,
		WorkerLogs:              logFile,
		Logger:                  slog.New(slog.NewJSONHandler(logFile, nil)),
	}
	h.commands = append(h.commands, commandLine{figure: 5, label: "in-process executor",
		argv: []string{fmt.Sprintf("executor.New(Workers: 1, QueueMax: %d, Admission: true, Cancellation: true, SecondsPerMegapixelStep: %g, Heartbeat: %v, TracerProvider: SDK) running hourglass-worker --unsafe-fault-injection",
			cfg.QueueMax, cfg.SecondsPerMegapixelStep, cfg.Heartbeat)}})
	ctx, cancelAll := context.WithCancel(h.ctx)
	defer cancelAll()
	e, err := executor.New(ctx, cfg)
	if err != nil {
		return err
	}
	defer e.CloseWithin(time.Second)
	model := e.Catalog().DefaultModel
	spec := func(id string, deadline time.Time, fault string) *workerv1.Job {
		return &workerv1.Job{Id: id, Prompt: "x", Width: 64, Height: 64, Steps: 1, ImageCount: 1, GuidanceScale: 4, Sharpness: 2,
			Model: model, OutputFormat: hourglassv1.OutputFormat_OUTPUT_FORMAT_PNG, Deadline: timestamppb.New(deadline), Fault: fault}
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancelAll()
	// The blocker: the only worker sleeps an hour on its first step.
	bctx, bcancel := context.WithTimeout(ctx, time.Hour)
	defer bcancel()
	bdl, _ := bctx.Deadline()
	wg.Add(1)
	go func() { defer wg.Done(); _, _ = e.Run(bctx, spec("blocker", bdl, "slow=1h"), "blocker", nil) }()
	for e.Status().Workers[0].State != executor.StateBusy {
		if err := h.sleepCtx(time.Millisecond); err != nil {
			return err
		}
	}
	drain(rec.admitted)
	drain(rec.left)
	base := memNow()

	rng := rand.New(rand.NewPCG(5, 5))
	var queued []context.CancelFunc
	seq := 0
	// enqueue adds one job and waits until admission has decided; it
	// returns Run-call → admitted and the admission span's own duration.
	enqueue := func() (time.Duration, time.Duration, error) {
		seq++
		deadline := time.Now().Add(30*time.Minute + time.Duration(rng.Int64N(int64(30*time.Minute))))
		jctx, cancel := context.WithDeadline(ctx, deadline)
		j := spec(fmt.Sprintf("q%d", seq), deadline, "")
		queued = append(queued, cancel)
		t0 := time.Now()
		wg.Add(1)
		go func() { defer wg.Done(); _, _ = e.Run(jctx, j, "bench", nil) }()
		select {
		case st := <-rec.admitted:
			return st.end.Sub(t0), st.end.Sub(st.start), nil
		case <-time.After(10 * time.Second):
			return 0, 0, fmt.Errorf("job %d not admitted within 10 s", seq)
		}
	}
	// dequeue cancels a random waiting job and waits until it left.
	dequeue := func() (time.Duration, error) {
		i := rng.IntN(len(queued))
		cancel := queued[i]
		queued[i] = queued[len(queued)-1]
		queued = queued[:len(queued)-1]
		t0 := time.Now()
		cancel()
		select {
		case st := <-rec.left:
			return st.end.Sub(t0), nil
		case <-time.After(10 * time.Second):
			return 0, fmt.Errorf("cancelled job did not leave the queue within 10 s")
		}
	}
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

	var rows []scaleRow
	for _, d := range depths {
		batch := min(100, d/2)
		row := scaleRow{depth: d}
		for len(queued) < d-batch {
			if _, _, err := enqueue(); err != nil {
				return err
			}
		}
		for range reps {
			for range batch {
				op, adm, err := enqueue()
				if err != nil {
					return err
				}
				row.enqueue = append(row.enqueue, us(op))
				row.admit = append(row.admit, us(adm))
			}
			for range batch {
				op, err := dequeue()
				if err != nil {
					return err
				}
				row.deq = append(row.deq, us(op))
			}
		}
		for len(queued) < d {
			if _, _, err := enqueue(); err != nil {
				return err
			}
		}
		if got := e.Status().QueueDepth; got != d {
			return fmt.Errorf("queue depth %d, want %d", got, d)
		}
		m := memNow()
		row.heapPerJob = float64(int64(m.heap)-int64(base.heap)) / float64(d)
		row.stackPer = float64(int64(m.stack)-int64(base.stack)) / float64(d)
		rows = append(rows, row)
		logf("  depth %5d: Run→queued p50 %s, admission p50 %s p99 %s, dequeue p50 %s, %s heap + %s stack per job",
			d, fmtUs(quantile(row.enqueue, 0.5)), fmtUs(quantile(row.admit, 0.5)), fmtUs(quantile(row.admit, 0.99)),
			fmtUs(quantile(row.deq, 0.5)), fmtBytes(row.heapPerJob), fmtBytes(row.stackPer))
		if h.ctx.Err() != nil {
			return h.ctx.Err()
		}
	}

	// Plot: per-operation times and memory per job against queue depth.
	p1 := newPlot("Time per operation vs queue depth", "jobs waiting (log scale)", "µs (log scale)")
	logX(p1)
	logY(p1)
	series := []struct {
		name string
		get  func(scaleRow) float64
	}{
		{"admission decision p50", func(r scaleRow) float64 { return quantile(r.admit, 0.5) }},
		{"admission decision p99", func(r scaleRow) float64 { return quantile(r.admit, 0.99) }},
		{"Run call → queued, p50", func(r scaleRow) float64 { return quantile(r.enqueue, 0.5) }},
		{"cancel → left the queue, p50", func(r scaleRow) float64 { return quantile(r.deq, 0.5) }},
	}
	cols := []color.Color{colHourglass, colHourglass, colOrange, colGreen}
	for i, se := range series {
		var xys plotter.XYs
		for _, r := range rows {
			xys = append(xys, plotter.XY{X: float64(r.depth), Y: max(se.get(r), 0.01)})
		}
		if err := line(p1, se.name, xys, cols[i], i == 1, i); err != nil {
			return err
		}
	}
	var peak float64
	for _, r := range rows {
		peak = max(peak, quantile(r.admit, 0.99), quantile(r.enqueue, 0.5))
	}
	p1.Y.Max = peak * 6 // room for the legend
	p2 := newPlot("Memory per queued job", "jobs waiting (log scale)", "bytes per job")
	logX(p2)
	var heap, total plotter.XYs
	for _, r := range rows {
		heap = append(heap, plotter.XY{X: float64(r.depth), Y: r.heapPerJob})
		total = append(total, plotter.XY{X: float64(r.depth), Y: r.heapPerJob + r.stackPer})
	}
	if err := line(p2, "heap + goroutine stack", total, colPurple, false, 1); err != nil {
		return err
	}
	if err := line(p2, "heap only", heap, colHourglass, false, 0); err != nil {
		return err
	}
	p2.Y.Min = 0
	p2.Y.Max = maxOf(func() []float64 {
		var v []float64
		for _, r := range rows {
			v = append(v, r.heapPerJob+r.stackPer)
		}
		return v
	}()) * 1.3
	p2.Legend.Left = false
	if err := h.savePNG(s.png, 13*vg.Inch, 5*vg.Inch, p1, p2); err != nil {
		return err
	}

	var b strings.Builder
	fmt.Fprintf(&b, "![scale](docs/%s)\n\n", s.png)
	b.WriteString("`executor.New` in the harness's own process with one real `hourglass-worker`, kept busy by a job that sleeps an hour on its first step; " +
		"jobs (64×64, 1 step, one tenant, deadlines spread at random over 30–60 min so the earliest-deadline heap does real work) then wait behind it. " +
		"A real OpenTelemetry SDK tracer provider is installed, as in hourglassd, and its spans time the operations: " +
		"*admission decision* is the `hourglass.admission` span (lock, estimate, queue-wait estimate, verdict); " +
		"*Run call → queued* is from the `Run` call to the end of that span (the heap push is the next statement under the same lock), including starting the caller's goroutine; " +
		"*cancel → left the queue* is from cancelling a random waiting job's context to the end of its `hourglass.queue` span, after its removal from the heap. " +
		fmt.Sprintf("Operations are timed one at a time (no contention): at each depth, %d rounds of *b* enqueues then *b* removals, b = min(100, depth/2), so the queue holds between depth − b and depth. ", reps) +
		"Memory is `runtime.MemStats` after two GCs at exactly that depth, minus the same before the first job, divided by the depth: " +
		"it includes the job's context, its queue span and its waiting `Run` goroutine (in hourglassd each waiting job also holds its gRPC stream).\n\n")
	b.WriteString("| jobs waiting | Run call → queued p50 | admission p50 | admission p99 | cancel → left queue p50 | p99 | heap per job | + stack per job |\n")
	b.WriteString("|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %d | %s | %s | %s | %s | %s | %s | %s |\n", r.depth, fmtUs(quantile(r.enqueue, 0.5)),
			fmtUs(quantile(r.admit, 0.5)), fmtUs(quantile(r.admit, 0.99)), fmtUs(quantile(r.deq, 0.5)), fmtUs(quantile(r.deq, 0.99)),
			fmtBytes(r.heapPerJob), fmtBytes(r.stackPer))
	}
	first, last := rows[0], rows[len(rows)-1]
	growth := func(get func(scaleRow) float64) string { return fmtRatio(get(last) / get(first)) }
	fmt.Fprintf(&b, "\nGrowth from %d to %d waiting jobs (%d× more): Run call → queued %s, admission p50 %s, cancel → left %s, memory per job %s.\n\n",
		first.depth, last.depth, last.depth/first.depth,
		growth(func(r scaleRow) float64 { return quantile(r.enqueue, 0.5) }),
		growth(func(r scaleRow) float64 { return quantile(r.admit, 0.5) }),
		growth(func(r scaleRow) float64 { return quantile(r.deq, 0.5) }),
		growth(func(r scaleRow) float64 { return r.heapPerJob + r.stackPer }))
	b.WriteString("**What limits these numbers:** each tenant's waiting jobs are a balanced search tree in run order whose nodes also count their subtree's jobs and estimated work (`executor/jobtree.go`), " +
		"so enqueue, dequeue, removal and admission's estimate of the work queued ahead of a job are all O(log n) under the executor's lock, plus a term per tenant " +
		"(with one tenant, as here, none). At these depths the logarithm is small next to the fixed costs: goroutine scheduling on 2 shared cores, waking the caller's goroutine on removal, the queue span. " +
		"(Before the tree, admission summed the work ahead in an O(n) walk: 120 µs at 10,000 jobs, 60–90× its value at 100.) " +
		"Memory per job is flat: mostly the waiting goroutine's stack and the job's span.\n")
	s.body = b.String()
	s.summary = fmt.Sprintf("at %d waiting jobs: admission p50 %s (%s its value at %d), Run → queued p50 %s, cancel → left the queue p50 %s, %s per waiting job (heap + stack)",
		last.depth, fmtUs(quantile(last.admit, 0.5)), growth(func(r scaleRow) float64 { return quantile(r.admit, 0.5) }), first.depth,
		fmtUs(quantile(last.enqueue, 0.5)), fmtUs(quantile(last.deq, 0.5)), fmtBytes(last.heapPerJob+last.stackPer))
	return nil
}

type memSample struct{ heap, stack uint64 }

func memNow() memSample {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return memSample{heap: m.HeapAlloc, stack: m.StackInuse}
}

func drain(ch chan spanTimes) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}
