package executor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	grpccodes "google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hourglass-dev/hourglass/executor/sched"
	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
	workerv1 "github.com/hourglass-dev/hourglass/gen/hourglass/worker/v1"
)

// Dispatch: handing queued jobs to idle slots in the order the scheduling
// core chooses, and running a job's worker call to its end.

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
