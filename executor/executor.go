// Package executor runs generation jobs on a pool of supervised worker
// processes. It owns admission to a bounded, earliest-deadline-first queue,
// dispatch of one job per idle worker over a Unix-socket gRPC connection,
// and the life of every worker process. It returns typed outcomes (*Error);
// mapping them to gRPC statuses is the server's business.
//
// The promise it keeps: Run returns when the job's context ends, at the
// deadline, never later because a worker is slow. The worker call is
// cancelled at the same moment; a worker that does not become idle within
// the cancel grace is killed, process group and all, and replaced. A slot
// never gets a new job before its worker is known idle or replaced.
package executor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
	workerv1 "github.com/hourglass-dev/hourglass/gen/hourglass/worker/v1"
)

// Config is what the executor needs; hourglassd fills it from its config.
type Config struct {
	// Workers is the number of worker processes.
	Workers int
	// Command is the worker program and its arguments; the executor appends
	// "--socket PATH" and sets HOURGLASS_WORKER_SOCKET.
	Command []string
	// QueueMax is the most jobs that may wait for a worker.
	QueueMax int
	// CancelGrace is how long a worker has to become idle after its job was
	// cancelled before its process group is killed.
	CancelGrace time.Duration
	// WorkerStart bounds how long a worker may take to serve its socket.
	WorkerStart time.Duration
	// StopGrace is how long a worker has to exit after SIGTERM at shutdown.
	StopGrace time.Duration
	// WorkerLogs receives the workers' stdout and stderr (default os.Stderr).
	WorkerLogs io.Writer
	// Logger receives the executor's own logs (default slog.Default()).
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.CancelGrace <= 0 {
		c.CancelGrace = 2 * time.Second
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
)

// Event is one step in the life of a job, for streaming callers.
type Event struct {
	Kind     EventKind
	Position int
	WorkerID string
	Progress *workerv1.Progress
	Image    *hourglassv1.Image
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

	mu      sync.Mutex
	slots   []*slot
	queue   jobQueue
	closed  bool
	catalog Catalog

	stop chan struct{} // closed by Close: ends restarts and backoffs
	wg   sync.WaitGroup
}

// New creates the runtime directory and starts every worker, returning once
// all serve their sockets (or the first fails, in which case all are stopped).
func New(ctx context.Context, cfg Config) (*Executor, error) {
	cfg.setDefaults()
	if cfg.Workers < 1 {
		return nil, errors.New("executor: need at least one worker")
	}
	if len(cfg.Command) == 0 {
		return nil, errors.New("executor: empty worker command")
	}
	// MkdirTemp creates the directory 0700: only this user may reach the
	// worker sockets, which accept jobs without credentials.
	dir, err := os.MkdirTemp("", "hourglass-")
	if err != nil {
		return nil, fmt.Errorf("executor: create runtime dir: %w", err)
	}
	e := &Executor{cfg: cfg, log: cfg.Logger, dir: dir, stop: make(chan struct{})}
	for i := range cfg.Workers {
		id := fmt.Sprintf("w%d", i)
		e.slots = append(e.slots, &slot{id: id, socket: filepath.Join(dir, id+".sock"), state: StateStarting})
	}

	errs := make(chan error, len(e.slots))
	for _, s := range e.slots {
		go func() { errs <- e.startSlot(ctx, s) }()
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
	return e, nil
}

// Catalog returns the models and styles the workers offer.
func (e *Executor) Catalog() Catalog {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.catalog
}

// Run queues a job and waits for its result. It returns when the job
// finished, or as soon as ctx ends: at the deadline with a KindDeadline
// error, on cancellation with KindCanceled, never waiting for the worker.
// ctx must carry a deadline. onEvent, if not nil, is called on Run's own
// goroutine, in order, and never after Run returns.
func (e *Executor) Run(ctx context.Context, spec *workerv1.Job, onEvent func(Event)) (*Result, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		return nil, &Error{Kind: KindInternal, Msg: "job has no deadline"}
	}
	if onEvent == nil {
		onEvent = func(Event) {}
	}
	steps := spec.GetSteps() * spec.GetImageCount()
	j := &job{
		ctx:        ctx,
		spec:       spec,
		deadline:   deadline,
		stepsTotal: steps,
		enqueued:   time.Now(),
		index:      -1,
		events:     make(chan Event, 16),
		gone:       make(chan struct{}),
		done:       make(chan struct{}),
	}
	defer close(j.gone)

	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil, &Error{Kind: KindUnavailable, Msg: "server is shutting down"}
	}
	if e.idleSlotLocked() == nil && e.queue.Len() >= e.cfg.QueueMax {
		depth := e.queue.Len()
		e.mu.Unlock()
		return nil, &Error{Kind: KindQueueFull, RetryAfter: time.Second,
			Msg: fmt.Sprintf("queue full: %d jobs waiting, limit %d", depth, e.cfg.QueueMax)}
	}
	e.queue.push(j)
	e.dispatchLocked()
	position := -1
	if j.index >= 0 {
		position = e.queue.ahead(j.deadline, j.seq)
	}
	e.mu.Unlock()
	if position >= 0 {
		onEvent(Event{Kind: EventQueued, Position: position})
	}

	for {
		select {
		case ev := <-j.events:
			onEvent(ev)
		case <-j.done:
			j.drain(onEvent)
			return j.result, j.err
		case <-ctx.Done():
			select {
			case <-j.done: // finished at the same moment: the result wins
				j.drain(onEvent)
				return j.result, j.err
			default:
			}
			e.mu.Lock()
			e.queue.remove(j)
			e.mu.Unlock()
			return nil, j.abandoned()
		}
	}
}

// Close fails queued jobs, stops every worker (SIGTERM, then SIGKILL of its
// process group after StopGrace), waits for the executor's goroutines and
// removes the runtime directory. Safe to call more than once.
func (e *Executor) Close() {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	e.closed = true
	close(e.stop)
	var queued []*job
	for e.queue.Len() > 0 {
		queued = append(queued, e.queue.pop())
	}
	procs := make([]*process, 0, len(e.slots))
	for _, s := range e.slots {
		if s.proc != nil {
			procs = append(procs, s.proc)
		}
		s.state = StateStopped
	}
	e.mu.Unlock()

	for _, j := range queued {
		j.finish(nil, &Error{Kind: KindUnavailable, Msg: "server is shutting down"})
	}
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Add(1)
		go func() { defer wg.Done(); p.stop(e.cfg.StopGrace) }()
	}
	wg.Wait()
	e.wg.Wait()
	for _, s := range e.slots {
		if s.conn != nil {
			_ = s.conn.Close()
		}
	}
	if err := os.RemoveAll(e.dir); err != nil {
		e.log.Warn("remove runtime dir", "dir", e.dir, "err", err)
	}
}

// job is one Run call as the executor sees it.
type job struct {
	ctx        context.Context
	spec       *workerv1.Job
	deadline   time.Time
	stepsTotal uint32
	enqueued   time.Time
	index      int    // position in the queue heap, -1 when not queued
	seq        uint64 // arrival order, breaks deadline ties

	stepsDone atomic.Uint32
	events    chan Event
	gone      chan struct{} // closed when Run returned: nobody reads events
	done      chan struct{} // closed by finish
	result    *Result
	err       error
}

// send hands an event to Run; it never blocks once Run has returned.
func (j *job) send(ev Event) {
	select {
	case j.events <- ev:
	case <-j.gone:
	}
}

// finish records the outcome. Called exactly once per dispatched or
// drained job.
func (j *job) finish(res *Result, err error) {
	j.result, j.err = res, err
	close(j.done)
}

// drain delivers events sent before finish; every send happened before
// done was closed, so a non-blocking drain sees them all.
func (j *job) drain(onEvent func(Event)) {
	for {
		select {
		case ev := <-j.events:
			onEvent(ev)
		default:
			return
		}
	}
}

// abandoned is the outcome of a job whose context ended first. The deadline
// is judged by the clock, not by ctx.Err(): when a caller's deadline passes,
// grpc-go usually ends the server context with Canceled (the caller's
// RST_STREAM wins the race), yet the caller's deadline is what happened.
func (j *job) abandoned() error {
	done, total := j.stepsDone.Load(), j.stepsTotal
	if !time.Now().Before(j.deadline) {
		return &Error{Kind: KindDeadline, StepsDone: done, StepsTotal: total,
			Msg: fmt.Sprintf("deadline passed after %d of %d steps", done, total)}
	}
	return &Error{Kind: KindCanceled, StepsDone: done, StepsTotal: total,
		Msg: fmt.Sprintf("cancelled by the caller after %d of %d steps", done, total)}
}
