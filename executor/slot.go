package executor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	grpccodes "google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hourglass-dev/hourglass/executor/sched"
	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
	workerv1 "github.com/hourglass-dev/hourglass/gen/hourglass/worker/v1"
)

// State is where a worker slot is in its life.
type State int

const (
	StateStarting   State = iota + 1 // process started, not yet serving
	StateReady                       // idle, takes the next job
	StateBusy                        // running a job
	StateCancelling                  // job cancelled, waiting for the worker to go idle
	StateBackoff                     // died; waiting before a restart
	StateStopped                     // shut down for good
)

var stateNames = map[State]string{
	StateStarting: "starting", StateReady: "ready", StateBusy: "busy",
	StateCancelling: "cancelling", StateBackoff: "backoff", StateStopped: "stopped",
}

func (s State) String() string { return stateNames[s] }

// Crash-loop policy: a slot whose worker died crashLoopDeaths times within
// crashLoopWindow is held back before each further restart, 1 s doubling
// per extra death up to crashLoopMaxDelay. Below that, a dead worker is
// replaced at once (by a hot spare when one is ready).
const (
	crashLoopDeaths   = 5
	crashLoopWindow   = 30 * time.Second
	crashLoopMaxDelay = 30 * time.Second
)

// idlePollInterval is how often a cancelled worker is asked whether it is
// idle. A Describe call on a Unix socket costs well under a millisecond.
const idlePollInterval = 10 * time.Millisecond

// errWedged ends a worker call whose worker sent nothing for the heartbeat.
var errWedged = errors.New("worker sent no event within the heartbeat")

// slot is one position in the pool: at most one job at a time, served by
// one worker process, which is replaced when it dies. Fields are guarded by
// the executor's mutex, except w while a job goroutine owns the slot
// (busy or cancelling).
type slot struct {
	id    string
	gpu   string // CUDA_VISIBLE_DEVICES of its workers, empty when none
	state State
	w     *workerProc // nil while starting or in backoff

	job      *job // the running job, for the queue-wait estimate
	jobStart time.Time

	jobsDone uint64
	restarts uint32
	deaths   []time.Time // within crashLoopWindow
}

// recentDeaths drops deaths older than the crash-loop window and counts
// the rest.
func (s *slot) recentDeaths(now time.Time) int {
	keep := s.deaths[:0]
	for _, d := range s.deaths {
		if now.Sub(d) < crashLoopWindow {
			keep = append(keep, d)
		}
	}
	s.deaths = keep
	return len(keep)
}

// WorkerStatus is a snapshot of one slot or spare.
type WorkerStatus struct {
	ID       string
	State    State
	PID      int
	Device   string
	JobsDone uint64
	Restarts uint32
	Spare    bool
	GPU      string
}

// Status is a snapshot of the pool.
type Status struct {
	Workers    []WorkerStatus
	QueueDepth int
	// Serving is true while at least one slot has a live worker.
	Serving bool
}

// Status returns a snapshot of the workers, the spares and the queue.
func (e *Executor) Status() Status {
	e.mu.Lock()
	defer e.mu.Unlock()
	st := Status{QueueDepth: e.sch.Len(), Serving: e.servingLocked()}
	for _, s := range e.slots {
		ws := WorkerStatus{ID: s.id, State: s.state, JobsDone: s.jobsDone, Restarts: s.restarts, GPU: s.gpu}
		if s.w != nil {
			ws.PID, ws.Device = s.w.proc.PID(), s.w.desc.GetDevice()
		}
		st.Workers = append(st.Workers, ws)
	}
	for i, w := range e.spares {
		st.Workers = append(st.Workers, WorkerStatus{ID: fmt.Sprintf("spare%d", i), State: StateReady,
			PID: w.proc.PID(), Device: w.desc.GetDevice(), Spare: true, GPU: w.gpu})
	}
	for i := range e.sparesStarting {
		st.Workers = append(st.Workers, WorkerStatus{ID: fmt.Sprintf("spare%d", len(e.spares)+i), State: StateStarting, Spare: true})
	}
	return st
}

// servingLocked: some slot has a live worker (ready, busy or cancelling).
func (e *Executor) servingLocked() bool {
	for _, s := range e.slots {
		switch s.state {
		case StateReady, StateBusy, StateCancelling:
			return true
		}
	}
	return false
}

// changedLocked reports health changes to the server after any slot
// moved, and tells the scheduling core how many workers serve the queue.
func (e *Executor) changedLocked() {
	if e.closed {
		return
	}
	live := 0
	for _, s := range e.slots {
		switch s.state {
		case StateReady, StateBusy, StateCancelling:
			live++
		}
	}
	// Before the first worker serves, plan on the configured pool: the
	// workers are starting, and a queue planned on none would refuse all.
	if live > 0 && live != e.sch.Workers() {
		e.sch.SetWorkers(live)
	}
	serving := e.servingLocked()
	if serving != e.serving {
		e.serving = serving
		if e.cfg.OnServingChange != nil {
			e.cfg.OnServingChange(serving)
		}
	}
}

func (e *Executor) idleSlotLocked() *slot {
	for _, s := range e.slots {
		if s.state == StateReady {
			return s
		}
	}
	return nil
}

// dispatchLocked hands queued jobs to idle slots in queue order, then
// tells the streaming callers still waiting their new positions, once. It
// reports whether it dispatched anything.
func (e *Executor) dispatchLocked() (dispatched bool) {
	defer func() {
		if dispatched {
			e.postPositionsLocked()
		}
	}()
	for e.sch.Len() > 0 && !e.closed {
		s := e.idleSlotLocked()
		if s == nil {
			return dispatched
		}
		next, dropped := e.sch.Next(time.Now())
		for _, sj := range dropped {
			// Its latest start passed while it waited: it cannot finish
			// in time, so no worker is touched.
			j := sj.Value.(*job)
			dispatched = true
			e.leftQueueLocked(j, "unreachable")
			e.metrics.unreachable.Add(context.Background(), 1)
			j.finish(nil, unreachableErr(j))
		}
		if next == nil {
			return dispatched
		}
		j := next.Value.(*job)
		dispatched = true
		if e.cfg.Cancellation && j.ctx.Err() != nil {
			e.sch.Done(next, 0, false)
			e.leftQueueLocked(j, "caller gone")
			continue // its Run is answering already; don't touch a worker
		}
		e.leftQueueLocked(j, "dispatched to "+s.id)
		s.state, s.job, s.jobStart = StateBusy, j, time.Now()
		wait := s.jobStart.Sub(j.enqueued)
		e.metrics.queueWait.Record(context.Background(), wait.Seconds())
		e.wg.Add(1)
		go e.runJob(s, s.w, j)
	}
	return dispatched
}

// postPositionsLocked tells streaming callers their new queue positions.
// It costs O(n log n), so it runs only while some queued caller streams.
func (e *Executor) postPositionsLocked() {
	if e.streamers == 0 {
		return
	}
	e.sch.Each(func(pos int, sj *sched.Job) {
		if j := sj.Value.(*job); j.streaming && pos != j.position {
			j.position = pos
			j.post(Event{Kind: EventQueued, Position: pos})
		}
	})
}

// outcome is what a finished worker call says about the worker itself.
type outcome int

const (
	workerIdle    outcome = iota // finished or refused the job and is idle
	workerCancel                 // the caller is gone: wait for idle, else kill
	workerWedged                 // silent past the heartbeat: wait for idle, else kill
	workerCrashed                // the process died: reap and replace
	workerStuck                  // busy with an earlier job: replace
)

// runJob runs j on the slot's worker w, then frees or replaces the worker.
// Its span, hourglass.execute, lasts until the worker is known idle or has
// been killed: the events after the caller's answer (cancel sent, grace
// expired, worker killed) are the part the caller never waits for.
func (e *Executor) runJob(s *slot, w *workerProc, j *job) {
	defer e.wg.Done()
	start := time.Now()
	ctx, span := e.tracer.Start(j.ctx, "hourglass.execute", trace.WithAttributes(
		attribute.String("hourglass.worker.id", s.id),
		attribute.Int("hourglass.worker.pid", w.proc.PID()),
		attribute.String("hourglass.tenant", j.tenant),
		attribute.String("hourglass.job.id", j.spec.GetId()),
		attribute.String("hourglass.model", j.spec.GetModel()),
		attribute.Int("hourglass.width", int(j.spec.GetWidth())),
		attribute.Int("hourglass.height", int(j.spec.GetHeight())),
		attribute.Int("hourglass.image_count", int(j.spec.GetImageCount())),
		attribute.Int("hourglass.steps.total", int(j.stepsTotal)),
	))
	defer span.End()
	j.started.Store(start.UnixNano())
	j.post(Event{Kind: EventStarted, WorkerID: s.id})
	images, out, err := e.call(ctx, s, w, j)
	took := time.Since(start)
	e.metrics.runTime.Record(context.Background(), took.Seconds())
	var res *Result
	if err == nil {
		res = &Result{Images: images, QueueWait: start.Sub(j.enqueued), RunTime: took,
			StepsDone: j.stepsDone.Load(), StepsTotal: j.stepsTotal, WorkerID: s.id}
	}
	j.finish(res, err)
	span.SetAttributes(attribute.Int("hourglass.steps.done", int(j.stepsDone.Load())),
		attribute.String("hourglass.outcome", outcomeName(err)))
	if err != nil {
		span.SetStatus(codes.Error, outcomeName(err))
	}

	reason := ""
	switch out {
	case workerCancel, workerWedged:
		span.AddEvent("cancel sent")
		e.setState(s, StateCancelling)
		if e.waitIdle(w) {
			out = workerIdle
			span.AddEvent("worker idle")
			break
		}
		if alive(w.proc) {
			span.AddEvent("grace expired")
			e.log.Warn("worker did not stop within the cancel grace; killing its process group",
				"job", j.spec.GetId(), "worker", s.id, "pid", w.proc.PID(), "grace", e.cfg.CancelGrace)
		}
		reason = killCancelGrace
		if out == workerWedged {
			reason = killHeartbeat
		}
	case workerCrashed:
		reason = killCrashed
	case workerStuck:
		reason = killBusy
	}
	e.log.Info("job finished", "job", j.spec.GetId(), "worker", s.id, "outcome", outcomeName(err),
		"steps_done", j.stepsDone.Load(), "steps_total", j.stepsTotal,
		"queue_wait", start.Sub(j.enqueued), "run_time", took)

	e.mu.Lock()
	defer e.mu.Unlock()
	s.job = nil
	// The worker is free (or replaced) only now: until here the core
	// counted its job as running, cancelled or not.
	e.sch.Done(j.sj, took, err == nil)
	if e.closed {
		return
	}
	if out == workerIdle {
		s.jobsDone++
		e.readyLocked(s)
		return
	}
	span.AddEvent("worker killed", trace.WithAttributes(attribute.String("reason", reason)))
	if e.replaceLocked(s, w, reason) {
		span.AddEvent("respawned", trace.WithAttributes(attribute.String("by", "hot spare")))
	} else {
		span.AddEvent("respawn scheduled")
	}
}

func outcomeName(err error) string {
	if err == nil {
		return "ok"
	}
	return KindOf(err).String()
}

func (e *Executor) setState(s *slot, st State) {
	e.mu.Lock()
	s.state = st
	e.changedLocked()
	e.mu.Unlock()
}

// call runs the job's worker RPC, collecting images and forwarding events.
// It returns the images, what the call says about the worker, and the job's
// error (nil on success).
func (e *Executor) call(parent context.Context, s *slot, w *workerProc, j *job) ([]*hourglassv1.Image, outcome, error) {
	spec := j.spec
	if !e.cfg.Cancellation {
		// The naive pool: nothing stops a job once it runs.
		parent = context.WithoutCancel(parent)
		spec = proto.CloneOf(spec)
		spec.Deadline = nil
	}
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	// Every event is a heartbeat; a busy worker silent for longer is wedged.
	heartbeat := e.clock.AfterFunc(e.cfg.Heartbeat, func() { cancel(errWedged) })
	defer heartbeat.Stop()

	stream, err := w.client.Run(ctx, &workerv1.RunRequest{Job: spec})
	if err != nil {
		out, jobErr := e.classify(ctx, s, w, j, err)
		return nil, out, jobErr
	}
	var images []*hourglassv1.Image
	for retried := false; ; {
		msg, err := stream.Recv()
		if status.Code(err) == grpccodes.FailedPrecondition && !retried && len(images) == 0 && ctx.Err() == nil {
			// The worker still runs an earlier, cancelled job: its Describe
			// said idle a moment before a late Run of that job arrived.
			// Wait for it to go idle and try once more.
			retried = true
			if !e.waitIdle(w) {
				return nil, workerStuck, &Error{Kind: KindWorkerCrashed, Msg: fmt.Sprintf("worker %s stayed busy with an earlier job", s.id), Cause: err}
			}
			if stream, err = w.client.Run(ctx, &workerv1.RunRequest{Job: spec}); err != nil {
				out, jobErr := e.classify(ctx, s, w, j, err)
				return nil, out, jobErr
			}
			continue
		}
		if errors.Is(err, io.EOF) {
			if n := uint32(len(images)); n != spec.GetImageCount() {
				return nil, workerIdle, &Error{Kind: KindInternal,
					Msg: fmt.Sprintf("worker returned %d images, want %d", n, spec.GetImageCount())}
			}
			return images, workerIdle, nil
		}
		if err != nil {
			out, jobErr := e.classify(ctx, s, w, j, err)
			return nil, out, jobErr
		}
		heartbeat.Reset(e.cfg.Heartbeat)
		images = j.onWorkerEvent(msg, images)
	}
}

// onWorkerEvent applies one event from the worker to the job and returns
// the images so far. A worker is another program, possibly buggy: an event
// with nothing in it is ignored rather than passed on to the caller.
func (j *job) onWorkerEvent(msg *workerv1.RunResponse, images []*hourglassv1.Image) []*hourglassv1.Image {
	switch ev := msg.GetEvent().(type) {
	case *workerv1.RunResponse_Progress:
		if ev.Progress != nil {
			j.stepsDone.Add(1)
			j.post(Event{Kind: EventProgress, Progress: ev.Progress})
		}
	case *workerv1.RunResponse_Image:
		if ev.Image != nil {
			images = append(images, ev.Image)
			j.post(Event{Kind: EventImage, Image: ev.Image})
		}
	case *workerv1.RunResponse_Preview:
		if ev.Preview != nil {
			j.post(Event{Kind: EventPreview, Preview: ev.Preview})
		}
	}
	return images
}

// classify turns a failed worker call into the job's error and the worker's
// state. ctx is the call's context.
func (e *Executor) classify(ctx context.Context, s *slot, w *workerProc, j *job, err error) (outcome, error) {
	done := j.stepsDone.Load()
	if errors.Is(context.Cause(ctx), errWedged) {
		e.log.Warn("worker wedged: no event within the heartbeat; cancelling", "worker", s.id, "pid", w.proc.PID(),
			"heartbeat", e.cfg.Heartbeat, "job", j.spec.GetId())
		return workerWedged, &Error{Kind: KindWorkerCrashed, StepsDone: done, StepsTotal: j.stepsTotal,
			Msg: fmt.Sprintf("worker %s sent no progress for %v after %d of %d steps and was replaced; safe to retry with the same seed",
				s.id, e.cfg.Heartbeat, done, j.stepsTotal)}
	}
	if j.ctx.Err() != nil && e.cfg.Cancellation {
		// Run has answered (or is answering) the caller already; this
		// error only decides what happens to the worker.
		return workerCancel, j.abandoned()
	}
	st := status.Convert(err)
	switch st.Code() {
	case grpccodes.ResourceExhausted:
		return workerIdle, &Error{Kind: KindOutOfMemory, StepsDone: done, StepsTotal: j.stepsTotal,
			Msg: "worker ran out of memory: " + st.Message()}
	case grpccodes.InvalidArgument:
		return workerIdle, &Error{Kind: KindInvalid, Msg: "worker refused the job: " + st.Message()}
	case grpccodes.DeadlineExceeded:
		// The job's deadline passed on the worker's clock (or the
		// transport's) a moment before ours fired. That does not mean the
		// worker stopped: grpc-go closes a stream at its deadline while
		// the handler may still run (hang, ignore-cancel). Treat it as a
		// cancel: wait for idle, else kill.
		return workerCancel, j.deadlineErr()
	case grpccodes.Unavailable, grpccodes.Unknown, grpccodes.Canceled:
		// The connection broke: the process died or is about to. Give it
		// the grace to be reaped; a live worker that broke its connection
		// is replaced all the same.
		t := e.clock.NewTimer(e.cfg.CancelGrace)
		select {
		case <-w.proc.Exited():
		case <-t.C():
		}
		t.Stop()
		return workerCrashed, &Error{Kind: KindWorkerCrashed, StepsDone: done, StepsTotal: j.stepsTotal,
			Msg:   fmt.Sprintf("worker %s died after %d of %d steps; safe to retry with the same seed", s.id, done, j.stepsTotal),
			Cause: exitCause(w.proc, err)}
	default:
		return workerIdle, &Error{Kind: KindInternal, Msg: "worker failed: " + st.Message(), Cause: err}
	}
}

func exitCause(p workerProcess, err error) error {
	if !alive(p) && p.Err() != nil {
		return fmt.Errorf("%w (process: %v)", err, p.Err())
	}
	return err
}

// waitIdle polls the worker until it reports no job, for at most the cancel
// grace. It reports false when the worker is still busy or has died.
func (e *Executor) waitIdle(w *workerProc) bool {
	deadline := e.clock.Now().Add(e.cfg.CancelGrace)
	for {
		remaining := deadline.Sub(e.clock.Now())
		if remaining <= 0 || !alive(w.proc) {
			return false
		}
		ctx, cancel := context.WithTimeout(context.Background(), remaining)
		d, err := w.client.Describe(ctx, &workerv1.DescribeRequest{})
		cancel()
		if err == nil && !d.GetBusy() {
			return true
		}
		t := e.clock.NewTimer(min(idlePollInterval, remaining))
		select {
		case <-t.C():
		case <-w.proc.Exited():
			t.Stop()
			return false
		case <-e.stop:
			t.Stop()
			return false
		}
	}
}

// replaceLocked kills the slot's worker w (process group, reaped) and puts
// a new one in its place: a hot spare at once when one is ready and the slot
// is not crash-looping, else a fresh process, after a backoff when the slot
// keeps dying.
//
// It reports whether a hot spare took over at once.
func (e *Executor) replaceLocked(s *slot, w *workerProc, why string) bool {
	now := e.clock.Now()
	e.countReplacement(why)
	s.w = nil
	s.restarts++
	// Only deaths of the worker's own making count toward the crash loop.
	// A worker killed because its job hung or went silent is a casualty of
	// that job: holding the slot back would punish everyone for one bad
	// request, and the per-tenant limits are what answer repeated ones.
	if why == killCrashed || why == killIdleDeath {
		s.deaths = append(s.deaths, now)
	}
	deaths := s.recentDeaths(now)
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		w.kill()
		e.log.Info("worker killed", "worker", s.id, "process", w.name, "pid", w.proc.PID(), "why", why, "exit", fmt.Sprint(w.proc.Err()))
	}()

	delay := time.Duration(0)
	if deaths >= crashLoopDeaths {
		delay = min(crashLoopMaxDelay, time.Second<<(deaths-crashLoopDeaths))
		e.log.Warn("worker is crash-looping; holding it back", "worker", s.id, "deaths", deaths, "window", crashLoopWindow, "delay", delay)
	} else if i := slices.IndexFunc(e.spares, func(w *workerProc) bool { return w.gpu == s.gpu }); i >= 0 {
		s.w = e.spares[i]
		e.spares = slices.Delete(e.spares, i, i+1)
		s.state = StateReady
		e.log.Info("hot spare took over", "worker", s.id, "process", s.w.name, "pid", s.w.proc.PID())
		e.refillSparesLocked()
		e.dispatchLocked()
		e.changedLocked()
		return true
	}
	s.state = StateBackoff
	if delay == 0 {
		s.state = StateStarting
	}
	e.changedLocked()
	e.wg.Add(1)
	go e.restartSlot(s, delay)
	return false
}

// countReplacement counts a worker killed (or found dead) and replaced.
func (e *Executor) countReplacement(why string) {
	e.metrics.kills.Add(context.Background(), 1, metric.WithAttributes(attribute.String("reason", why)))
	e.metrics.respawns.Add(context.Background(), 1)
}

// readyLocked makes s (with its worker s.w) take jobs. A worker that died
// while busy, cancelling or not yet placed was not seen by watch (which
// acts only on ready workers and spares): it is replaced instead.
func (e *Executor) readyLocked(s *slot) {
	if !alive(s.w.proc) {
		e.log.Warn("worker died before it was ready again", "worker", s.id, "pid", s.w.proc.PID())
		e.replaceLocked(s, s.w, killIdleDeath)
		return
	}
	s.state = StateReady
	e.dispatchLocked()
	e.changedLocked()
}

// watch replaces a worker that dies while no job runs on it: a ready
// slot's worker or a spare. (A busy worker's death is seen by its job.)
// Without it, a worker killed while idle (the OOM killer, an operator)
// would stay listed as ready and fail the next job.
func (e *Executor) watch(w *workerProc) {
	defer e.wg.Done()
	<-w.proc.Exited()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return
	}
	if i := slices.Index(e.spares, w); i >= 0 {
		e.spares = slices.Delete(e.spares, i, i+1)
		e.log.Warn("spare worker died", "process", w.name, "pid", w.proc.PID(), "exit", fmt.Sprint(w.proc.Err()))
		e.countReplacement(killIdleDeath)
		w.release()
		e.refillSparesLocked()
		return
	}
	for _, s := range e.slots {
		if s.w == w && s.state == StateReady {
			e.log.Warn("idle worker died", "worker", s.id, "pid", w.proc.PID(), "exit", fmt.Sprint(w.proc.Err()))
			e.replaceLocked(s, w, killIdleDeath)
			return
		}
	}
}

// restartSlot waits delay, then starts a new worker for s, backing off while
// starts fail, until one serves or the executor closes.
func (e *Executor) restartSlot(s *slot, delay time.Duration) {
	defer e.wg.Done()
	for failures := 0; ; failures++ {
		if !e.sleep(delay) {
			return
		}
		e.setState(s, StateStarting)
		w, err := e.spawn(context.Background(), s.gpu)
		e.mu.Lock()
		if e.closed {
			e.mu.Unlock()
			if w != nil {
				w.kill()
			}
			return
		}
		if err == nil {
			s.w = w
			e.readyLocked(s)
			e.mu.Unlock()
			return
		}
		s.state = StateBackoff
		e.changedLocked()
		e.mu.Unlock()
		delay = startBackoff(failures + 1)
		e.log.Error("worker start failed", "worker", s.id, "err", err, "retry_in", delay)
	}
}

// refillSparesLocked starts spares until the configured number are ready
// or starting.
func (e *Executor) refillSparesLocked() {
	for len(e.spares)+e.sparesStarting < e.cfg.Spares && !e.closed {
		gpu := e.spareGPULocked()
		e.startingSpareGPUs = append(e.startingSpareGPUs, gpu)
		e.sparesStarting++
		e.wg.Add(1)
		go e.startSpare(gpu)
	}
}

// spareGPULocked is the GPU with the fewest spares ready or starting, so
// that a spare replaced on one GPU is replaced on the same GPU.
func (e *Executor) spareGPULocked() string {
	if len(e.cfg.GPUs) == 0 {
		return ""
	}
	best, bestCount := "", -1
	for _, g := range e.cfg.GPUs {
		n := 0
		for _, w := range e.spares {
			if w.gpu == g {
				n++
			}
		}
		for _, sg := range e.startingSpareGPUs {
			if sg == g {
				n++
			}
		}
		if bestCount < 0 || n < bestCount {
			best, bestCount = g, n
		}
	}
	return best
}

// spareStartedLocked forgets one starting spare of gpu.
func (e *Executor) spareStartedLocked(gpu string) {
	e.sparesStarting--
	if i := slices.Index(e.startingSpareGPUs, gpu); i >= 0 {
		e.startingSpareGPUs = slices.Delete(e.startingSpareGPUs, i, i+1)
	}
}

func (e *Executor) startSpare(gpu string) {
	defer e.wg.Done()
	for failures := 0; ; failures++ {
		w, err := e.spawn(context.Background(), gpu)
		e.mu.Lock()
		if e.closed {
			e.spareStartedLocked(gpu)
			e.mu.Unlock()
			if w != nil {
				w.kill()
			}
			return
		}
		if err == nil {
			e.spareStartedLocked(gpu)
			if alive(w.proc) {
				e.spares = append(e.spares, w)
			} else {
				// Died between serving and here, unseen by watch (it
				// was not a spare yet): start another.
				e.countReplacement(killIdleDeath)
				w.release()
				e.refillSparesLocked()
			}
			e.mu.Unlock()
			return
		}
		e.mu.Unlock()
		delay := startBackoff(failures + 1)
		e.log.Error("spare start failed", "err", err, "retry_in", delay)
		if !e.sleep(delay) {
			e.mu.Lock()
			e.spareStartedLocked(gpu)
			e.mu.Unlock()
			return
		}
	}
}

// sleep waits d; false when the executor closed meanwhile.
func (e *Executor) sleep(d time.Duration) bool {
	if d <= 0 {
		select {
		case <-e.stop:
			return false
		default:
			return true
		}
	}
	t := e.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C():
		return true
	case <-e.stop:
		return false
	}
}

// startBackoff is the wait after failed starts: 100 ms doubled per
// consecutive failure, capped at 10 s.
func startBackoff(failures int) time.Duration {
	d := 100 * time.Millisecond
	for i := 1; i < failures && d < 10*time.Second; i++ {
		d *= 2
	}
	return min(d, 10*time.Second)
}
