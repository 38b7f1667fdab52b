// Package executor runs generation jobs on a pool of supervised worker
// processes. It drives the scheduling core (package sched: admission as a
// schedulability test, the earliest-deadline-first queue, the fair share,
// the run-time estimator), dispatches one job per idle worker over a
// Unix-socket gRPC connection, and supervises every worker process: start,
// heartbeat, cancel, kill, respawn, hot spares, crash-loop backoff.
// It returns typed outcomes (*Error); mapping them to gRPC statuses is the
// server's business.
//
// The parts: executor.go is the Run call's life (admission through the
// core, waiting, answering at the deadline); dispatch.go hands jobs to idle
// slots and runs the worker call; supervise.go is what happens to a worker
// afterwards (idle, cancelled, killed, replaced, held back) or when it
// dies idle, with the hot spares and the restarts; worker.go and
// process.go start the real processes. Supervision reaches processes only
// through the launcher and workerProcess interfaces and time only through
// clock, so its state machine is tested with fakes and virtual time
// (supervise_test.go, on fake_test.go) and with real processes
// (pool_test.go).
//
// The promises it keeps:
//   - Run returns when the job's context ends, at the deadline, never later
//     because a worker is slow or a queue is long.
//   - The worker call is cancelled at that moment; a worker that is not idle
//     within the cancel grace is SIGKILLed with its whole process group,
//     reaped, and replaced (by a hot spare at once when one is ready).
//   - A slot never gets a new job before its worker is known idle or has
//     been replaced.
package executor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/hourglass-dev/hourglass/executor/sched"
	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
	workerv1 "github.com/hourglass-dev/hourglass/gen/hourglass/worker/v1"
)

// Config is what the executor needs; hourglassd fills it from its config.
type Config struct {
	// Workers is the number of worker slots that take jobs.
	Workers int
	// Spares is the number of hot spare processes kept started.
	Spares int
	// Command is the worker program and its arguments; the executor appends
	// "--socket PATH" and sets HOURGLASS_WORKER_SOCKET.
	Command []string
	// GPUs, when set, are handed to the slots in turn (slot i gets
	// GPUs[i mod len]) as CUDA_VISIBLE_DEVICES; several slots may share a
	// GPU. Hot spares are spread over them the same way, and a spare only
	// replaces a worker of its own GPU.
	GPUs []string
	// QueueMax is the most jobs that may wait for a worker.
	QueueMax int
	// CancelGrace is how long a worker has to become idle after its job was
	// cancelled before its process group is killed.
	CancelGrace time.Duration
	// Heartbeat is how long a busy worker may stay silent before it is
	// treated as wedged.
	Heartbeat time.Duration
	// WorkerStart bounds how long a worker may take to serve its socket.
	WorkerStart time.Duration
	// StopGrace is how long a worker has to exit after SIGTERM at shutdown.
	StopGrace time.Duration
	// Admission refuses jobs that cannot meet their deadline and orders the
	// queue by deadline. Off: FIFO, everything admitted (benchmarks only).
	Admission bool
	// Policy is the scheduling policy while Admission is on:
	// sched.Schedulable (the default) or sched.PointEstimate (the previous
	// policy, for comparison).
	Policy sched.Policy
	// Quantile is the quantile of actual ÷ mean run time that plans a job
	// (0: the scheduler's default, 0.97).
	Quantile float64
	// SecondsPerMegapixelStep and Overhead seed the run-time estimate; a
	// zero rate means calibrate on a worker at start-up.
	SecondsPerMegapixelStep float64
	Overhead                time.Duration
	// Cancellation cancels worker calls whose caller is gone. Off: a job
	// runs to completion once queued (benchmarks only).
	Cancellation bool
	// OnServingChange, if set, is called (under the executor's lock; it
	// must not call back into the executor) when the pool gains its first
	// live worker or loses its last.
	OnServingChange func(serving bool)
	// TracerProvider and MeterProvider receive the executor's spans
	// (hourglass.admission, hourglass.queue, hourglass.execute, and the
	// otelgrpc client spans of worker calls, which carry the trace to the
	// workers) and metrics. Nil means no-op.
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
	// WorkerLogs receives the workers' stdout and stderr (default os.Stderr).
	WorkerLogs io.Writer
	// Logger receives the executor's own logs (default slog.Default()).
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.CancelGrace <= 0 {
		c.CancelGrace = 2 * time.Second
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = 30 * time.Second
	}
	if c.WorkerStart <= 0 {
		c.WorkerStart = 30 * time.Second
	}
	if c.StopGrace <= 0 {
		c.StopGrace = 5 * time.Second
	}
	if c.WorkerLogs == nil {
		c.WorkerLogs = os.Stderr
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// EventKind says what an Event reports.
type EventKind int

const (
	// EventQueued: the job waits; Position jobs are ahead of it.
	EventQueued EventKind = iota + 1
	// EventStarted: WorkerID took the job.
	EventStarted
	// EventProgress: a step finished.
	EventProgress
	// EventImage: an image finished.
	EventImage
	// EventPreview: a preview of the image being sampled.
	EventPreview
)

// Event is one step in the life of a job, for streaming callers.
type Event struct {
	Kind     EventKind
	Position int
	WorkerID string
	Progress *workerv1.Progress
	Image    *hourglassv1.Image
	Preview  *hourglassv1.Preview
}

// Result is a finished job.
type Result struct {
	Images                []*hourglassv1.Image
	QueueWait, RunTime    time.Duration
	StepsDone, StepsTotal uint32
	WorkerID              string
}

// Catalog is what the workers offer, as reported by a worker at start-up.
type Catalog struct {
	Models       []string
	DefaultModel string
	Styles       []string
	Device       string
}

// Executor is a pool of worker processes and the queue in front of it.
type Executor struct {
	cfg Config
	log *slog.Logger
	dir string // private 0700 runtime directory holding the sockets

	tracer  trace.Tracer
	metrics instruments

	mu             sync.Mutex
	slots          []*slot
	spares         []*workerProc
	sparesStarting int
	// startingSpareGPUs is the GPU of each spare starting, to spread
	// spares over the GPUs.
	startingSpareGPUs []string
	spawned           int // processes ever started, names the next socket
	// launcher starts worker processes and clock times supervision: the
	// real ones in production, fakes in the supervision tests.
	launcher launcher
	clock    clock
	// sch is the scheduling core: every admission, queue and dispatch
	// decision. Guarded by mu.
	sch *sched.Scheduler
	// streamers counts queued jobs whose callers want position updates.
	streamers int
	closed    bool
	serving   bool
	catalog   Catalog

	stop chan struct{} // closed by Close: ends restarts and backoffs
	wg   sync.WaitGroup
}

// New creates the runtime directory, starts every worker and spare, and
// calibrates the run-time estimate, returning once all slots serve (or the
// first fails, in which case everything is stopped: a worker command that
// cannot start is a configuration error, better reported than retried).
func New(ctx context.Context, cfg Config) (*Executor, error) {
	return newExecutor(ctx, cfg, nil, realClock{})
}

// newExecutor is New with the process layer and the clock given; a nil
// launcher starts cfg.Command for real.
func newExecutor(ctx context.Context, cfg Config, l launcher, clk clock) (*Executor, error) {
	cfg.setDefaults()
	if cfg.Workers < 1 {
		return nil, errors.New("executor: need at least one worker")
	}
	if l == nil && len(cfg.Command) == 0 {
		return nil, errors.New("executor: empty worker command")
	}
	// MkdirTemp creates the directory 0700: only this user may reach the
	// worker sockets, which accept jobs without credentials.
	dir, err := os.MkdirTemp("", "hourglass-")
	if err != nil {
		return nil, fmt.Errorf("executor: create runtime dir: %w", err)
	}
	e := &Executor{
		cfg: cfg, log: cfg.Logger, dir: dir, stop: make(chan struct{}), launcher: l, clock: clk,
		sch: sched.New(sched.Config{Policy: policyOf(cfg), Workers: cfg.Workers, QueueMax: cfg.QueueMax,
			Quantile: cfg.Quantile, Overhead: cfg.Overhead, SecondsPerMegapixelStep: cfg.SecondsPerMegapixelStep}, time.Now()),
	}
	for i := range cfg.Workers {
		s := &slot{id: fmt.Sprintf("w%d", i), state: StateStarting}
		if len(cfg.GPUs) > 0 {
			s.gpu = cfg.GPUs[i%len(cfg.GPUs)]
		}
		e.slots = append(e.slots, s)
	}
	if err := e.initTelemetry(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("executor: metrics: %w", err)
	}
	if e.launcher == nil {
		e.launcher = processLauncher{dir: dir, command: cfg.Command, logs: cfg.WorkerLogs, start: cfg.WorkerStart,
			tracerProvider: e.tracerProvider(), meterProvider: e.meterProvider()}
	}

	errs := make(chan error, len(e.slots))
	for _, s := range e.slots {
		go func() {
			w, err := e.spawn(ctx, s.gpu)
			if err == nil {
				e.mu.Lock()
				s.w, s.state = w, StateReady
				if !alive(w.proc) { // died before watch could see it ready
					err = fmt.Errorf("worker %s exited right after it started serving: %v", w.name, w.proc.Err())
				}
				e.mu.Unlock()
			}
			errs <- err
		}()
	}
	var first error
	for range e.slots {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		e.Close()
		return nil, first
	}
	e.catalog = catalogOf(e.slots[0].w.desc)
	if cfg.Admission && cfg.SecondsPerMegapixelStep == 0 {
		if err := e.calibrate(ctx, e.slots[0].w); err != nil {
			e.Close()
			return nil, err
		}
	}
	e.mu.Lock()
	e.refillSparesLocked()
	e.changedLocked()
	e.mu.Unlock()
	return e, nil
}

func catalogOf(d *workerv1.DescribeResponse) Catalog {
	c := Catalog{Styles: append([]string(nil), d.GetStyles()...), Device: d.GetDevice()}
	for _, m := range d.GetModels() {
		c.Models = append(c.Models, m.GetName())
		if m.GetDefault() {
			c.DefaultModel = m.GetName()
		}
	}
	if c.DefaultModel == "" && len(c.Models) > 0 {
		c.DefaultModel = c.Models[0]
	}
	return c
}

// Catalog returns the models and styles the workers offer.
func (e *Executor) Catalog() Catalog {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.catalog
}

// Estimate is the mean predicted run time of a job on an idle worker.
func (e *Executor) Estimate(spec *workerv1.Job) time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	mean, _ := e.sch.Estimate(spec.GetModel(), megapixelSteps(spec))
	return mean
}

// Run admits a job for tenant, queues it and waits for its result. It
// returns when the job finished, or as soon as ctx ends: at the deadline
// with a KindDeadline error, on cancellation with KindCanceled, never
// waiting for the worker. ctx must carry a deadline. onEvent, if not nil, is
// called on Run's own goroutine, in order, and never after Run returns;
// progress events may be merged and previews dropped when onEvent is slow.
func (e *Executor) Run(ctx context.Context, spec *workerv1.Job, tenant string, onEvent func(Event)) (*Result, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		return nil, &Error{Kind: KindInternal, Msg: "job has no deadline"}
	}
	j := &job{
		ctx:        ctx,
		spec:       spec,
		tenant:     tenant,
		deadline:   deadline,
		stepsTotal: spec.GetSteps() * spec.GetImageCount(),
		enqueued:   time.Now(),
		position:   -1,
		streaming:  onEvent != nil,
		done:       make(chan struct{}),
		notify:     make(chan struct{}, 1),
	}
	j.sj = &sched.Job{Tenant: tenant, Model: spec.GetModel(), Cost: megapixelSteps(spec), Deadline: deadline, Value: j}
	if onEvent == nil {
		onEvent = func(Event) {}
	}
	deliver := func() {
		for _, ev := range j.take() {
			onEvent(ev)
		}
	}

	_, admission := e.tracer.Start(ctx, "hourglass.admission", trace.WithAttributes(
		attribute.String("hourglass.tenant", tenant),
		attribute.String("hourglass.model", spec.GetModel()),
		attribute.Int64("hourglass.remaining_ms", time.Until(deadline).Milliseconds()),
	))
	e.mu.Lock()
	if err := e.admitLocked(j); err != nil {
		e.mu.Unlock()
		// The metric's reason is the error kind (too_late, overloaded,
		// queue_full, unavailable), with over_share told apart from
		// overloaded: both mean "try another replica", for different
		// causes.
		reason := KindOf(err).String()
		var je *Error
		if errors.As(err, &je) && je.Reason == sched.OverShare.String() {
			reason = je.Reason
		}
		if admission.IsRecording() {
			admission.SetStatus(codes.Error, reason)
			admission.SetAttributes(attribute.String("hourglass.admission", reason),
				attribute.Int64("hourglass.planned_ms", j.sj.Planned.Milliseconds()))
		}
		admission.End()
		e.metrics.refusals.Add(ctx, 1, metric.WithAttributes(attribute.String("reason", reason)))
		return nil, err
	}
	if admission.IsRecording() {
		admission.SetAttributes(attribute.String("hourglass.admission", "admitted"),
			attribute.Int64("hourglass.estimate_ms", j.sj.Mean.Milliseconds()),
			attribute.Int64("hourglass.planned_ms", j.sj.Planned.Milliseconds()))
	}
	admission.End()
	_, j.queueSpan = e.tracer.Start(ctx, "hourglass.queue")
	if j.streaming {
		e.streamers++
	}
	if !e.dispatchLocked() {
		e.postPositionsLocked() // j's own, and those of the jobs it overtook
	}
	e.mu.Unlock()

	// A job still queued at its latest start (deadline − planned run time)
	// cannot finish in time: it leaves the queue then, unstarted, and its
	// caller learns at once instead of at the deadline.
	var unreachable <-chan time.Time
	if e.sch.Policy() == sched.Schedulable {
		t := time.NewTimer(time.Until(j.sj.Latest()))
		defer t.Stop()
		unreachable = t.C
	}

	for {
		select {
		case <-j.notify:
			deliver()
		case <-unreachable:
			e.mu.Lock()
			left := e.sch.Remove(j.sj)
			if left {
				e.leftQueueLocked(j, "unreachable")
				e.postPositionsLocked()
			}
			e.mu.Unlock()
			if left {
				if time.Until(j.deadline) < DeadlineSlack {
					return nil, j.deadlineErr() // planned at ~0: this is the deadline
				}
				e.metrics.unreachable.Add(ctx, 1)
				return nil, unreachableErr(j)
			}
		case <-j.done:
			deliver()
			return j.result, j.withRunTime(j.err)
		case <-ctx.Done():
			select {
			case <-j.done: // finished at the same moment: the result wins
				deliver()
				return j.result, j.withRunTime(j.err)
			default:
			}
			err := j.withRunTime(j.abandoned())
			if e.cfg.Cancellation {
				e.mu.Lock()
				if e.sch.Remove(j.sj) {
					e.leftQueueLocked(j, "left the queue: "+KindOf(err).String())
					e.postPositionsLocked()
				}
				e.mu.Unlock()
			}
			return nil, err
		}
	}
}

// Close fails queued jobs, stops every worker and spare (SIGTERM, then
// SIGKILL of its process group after StopGrace), waits for the executor's
// goroutines and removes the runtime directory. Safe to call more than once.
func (e *Executor) Close() { e.CloseWithin(e.cfg.StopGrace) }

// CloseWithin is Close with another stop grace; 0 kills every worker at once.
func (e *Executor) CloseWithin(grace time.Duration) {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	e.closed = true
	close(e.stop)
	var queued []*job
	e.sch.Each(func(_ int, sj *sched.Job) { queued = append(queued, sj.Value.(*job)) })
	for _, j := range queued {
		e.sch.Remove(j.sj)
		e.leftQueueLocked(j, "server shutting down")
	}
	workers := append([]*workerProc(nil), e.spares...)
	e.spares = nil
	for _, s := range e.slots {
		if s.w != nil {
			workers = append(workers, s.w)
		}
		s.state = StateStopped
	}
	e.mu.Unlock()

	for _, j := range queued {
		j.finish(nil, &Error{Kind: KindUnavailable, Msg: "server is shutting down"})
	}
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Add(1)
		go func() { defer wg.Done(); w.stop(grace) }()
	}
	wg.Wait()
	e.wg.Wait()
	if err := os.RemoveAll(e.dir); err != nil {
		e.log.Warn("remove runtime dir", "dir", e.dir, "err", err)
	}
}

// job is one Run call as the executor sees it.
type job struct {
	ctx        context.Context
	spec       *workerv1.Job
	tenant     string
	deadline   time.Time
	stepsTotal uint32
	enqueued   time.Time
	// sj is the job as the scheduling core sees it (estimates, queue
	// state); guarded by the executor's lock.
	sj        *sched.Job
	streaming bool // the caller wants events (queue position updates)
	queueSpan trace.Span
	position  int // last queue position reported; guarded by the executor's lock

	stepsDone atomic.Uint32
	started   atomic.Int64  // unix nanoseconds when a worker took it, 0 before
	done      chan struct{} // closed by finish
	result    *Result
	err       error

	// Events wait here for Run's goroutine. Posting never blocks, so a
	// slow stream reader never stalls the worker: consecutive progress
	// events merge into the latest, an unread preview is replaced by a
	// newer one, and everything else (started, images) is kept in order.
	evMu     sync.Mutex
	pending  []Event
	progress *Event
	preview  *Event
	notify   chan struct{} // capacity 1: "something is pending"
}

// leftQueueLocked is the bookkeeping of a job that left the queue (to a
// worker, or not): its span ends and it stops counting as a streamer.
func (e *Executor) leftQueueLocked(j *job, why string) {
	if j.streaming {
		e.streamers--
	}
	j.endQueueSpan(why)
}

// endQueueSpan ends the job's hourglass.queue span; called once, under the
// executor's lock, when the job leaves the queue.
func (j *job) endQueueSpan(why string) {
	j.queueSpan.SetAttributes(attribute.String("hourglass.queue.left", why))
	j.queueSpan.End()
}

// post queues an event for Run's goroutine without ever blocking.
func (j *job) post(ev Event) {
	j.evMu.Lock()
	switch ev.Kind {
	case EventProgress:
		j.progress = &ev
	case EventPreview:
		j.preview = &ev
	default:
		j.flushLocked()
		j.pending = append(j.pending, ev)
	}
	j.evMu.Unlock()
	select {
	case j.notify <- struct{}{}:
	default:
	}
}

// flushLocked moves the merged progress and preview into the ordered list,
// so that they stay before the event that follows them.
func (j *job) flushLocked() {
	if j.progress != nil {
		j.pending = append(j.pending, *j.progress)
		j.progress = nil
	}
	if j.preview != nil {
		j.pending = append(j.pending, *j.preview)
		j.preview = nil
	}
}

// take returns the pending events in order and clears them.
func (j *job) take() []Event {
	j.evMu.Lock()
	defer j.evMu.Unlock()
	j.flushLocked()
	out := j.pending
	j.pending = nil
	return out
}

// finish records the outcome. Called exactly once per dispatched or
// drained job, after its last post.
func (j *job) finish(res *Result, err error) {
	j.result, j.err = res, err
	close(j.done)
}

// DeadlineSlack: a cancellation this close to the deadline is the deadline.
// The server's deadline is the caller's timeout counted from the request's
// arrival, so it falls the request's delay after the caller's own (on a
// loaded machine, tens of milliseconds: scheduling, not the network); the
// caller's cancellation, sent at its deadline, can arrive before ours. A
// caller that really cancels this late is told the deadline passed, which
// changes nothing for it.
const DeadlineSlack = 100 * time.Millisecond

// abandoned is the outcome of a job whose context ended first. The deadline
// is judged by the clock, not by ctx.Err(): when a caller's deadline passes,
// grpc-go usually ends the server context with Canceled (the caller's
// RST_STREAM wins the race), yet the caller's deadline is what happened.
func (j *job) abandoned() error {
	if !time.Now().Before(j.deadline.Add(-DeadlineSlack)) {
		return j.deadlineErr()
	}
	done, total := j.stepsDone.Load(), j.stepsTotal
	return &Error{Kind: KindCanceled, StepsDone: done, StepsTotal: total,
		Msg: fmt.Sprintf("cancelled by the caller after %d of %d steps", done, total)}
}

func (j *job) deadlineErr() error {
	done, total := j.stepsDone.Load(), j.stepsTotal
	return &Error{Kind: KindDeadline, StepsDone: done, StepsTotal: total,
		Msg: fmt.Sprintf("deadline passed after %d of %d steps", done, total)}
}

// withRunTime records in a job error how long the job had been on a
// worker, so that the tenant is charged for it.
func (j *job) withRunTime(err error) error {
	var je *Error
	if started := j.started.Load(); started != 0 && errors.As(err, &je) {
		je.RunTime = time.Since(time.Unix(0, started))
	}
	return err
}

// RunTime is how long a finished or failed job used a worker.
func RunTime(res *Result, err error) time.Duration {
	if res != nil {
		return res.RunTime
	}
	var je *Error
	if errors.As(err, &je) {
		return je.RunTime
	}
	return 0
}
