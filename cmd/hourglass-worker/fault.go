package main

// TEST-ONLY fault injection.
//
// hourglass promises that a job past its deadline stops using its worker even
// when the worker misbehaves. The end-to-end tests prove that by asking the
// built-in worker to misbehave on purpose, through Job.fault. None of this is
// reachable unless both the server and this worker run with
// --unsafe-fault-injection; without the flag a job's fault is ignored.

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
	workerv1 "github.com/hourglass-dev/hourglass/gen/hourglass/worker/v1"
	"github.com/hourglass-dev/hourglass/worker"
	"google.golang.org/protobuf/proto"
)

// faults is a parsed Job.fault: a comma-separated list such as
// "slow=200ms,ignore-cancel".
type faults struct {
	// hang: after the first step, block forever without using CPU and
	// without looking at cancellation; only a kill ends it.
	hang bool
	// ignoreCancel: keep stepping after cancellation until every step is
	// done, so the worker stays busy past the cancel grace.
	ignoreCancel bool
	// crash: exit with status 3 after the first step.
	crash bool
	// oom: fail with worker.ErrOutOfMemory after the first step.
	oom bool
	// slow: extra time per step, still cancellable unless ignoreCancel.
	slow time.Duration
	// replay: answer a job whose parameters this worker has seen before
	// by replaying the first such job's progress events and images,
	// without sampling. It isolates what a job costs outside its compute
	// (executor, two gRPC hops, worker process) with the same bytes on the
	// wire: the overhead benchmark's "no compute" series. The first job of
	// each kind runs for real and is recorded (previews are not); other
	// faults in the same list apply to that run only.
	replay bool
}

func parseFaults(s string) (faults, error) {
	var f faults
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		name, arg, hasArg := strings.Cut(item, "=")
		switch {
		case item == "hang":
			f.hang = true
		case item == "ignore-cancel":
			f.ignoreCancel = true
		case item == "crash":
			f.crash = true
		case item == "oom":
			f.oom = true
		case item == "replay":
			f.replay = true
		case name == "slow" && hasArg:
			d, err := time.ParseDuration(arg)
			if err != nil || d <= 0 {
				return faults{}, fmt.Errorf("fault %q: want slow=DURATION with a positive duration such as slow=200ms", item)
			}
			f.slow = d
		default:
			return faults{}, fmt.Errorf("unknown fault %q; known: hang, ignore-cancel, crash, oom, slow=DURATION, replay", item)
		}
	}
	return f, nil
}

// faultGenerator wraps a Generator and injects the faults a job asks for.
type faultGenerator struct {
	inner   worker.Generator
	enabled bool
	log     *slog.Logger

	// exit and hang are os.Exit and "block forever"; tests replace them.
	exit func(code int)
	hang func()

	warnOnce sync.Once

	mu         sync.Mutex
	recordings map[string]*recording // replay: by job parameters
}

// maxRecordings bounds the replay fault's memory: jobs of other kinds
// beyond it simply run.
const maxRecordings = 16

// recording is what a job emitted, in order, for the replay fault.
type recording struct {
	events []recordedEvent
}

type recordedEvent struct {
	progress                   bool
	step, totalSteps, imageIdx uint32
	image                      *hourglassv1.Image
}

func newFaultGenerator(inner worker.Generator, enabled bool, log *slog.Logger) *faultGenerator {
	return &faultGenerator{
		inner:   inner,
		enabled: enabled,
		log:     log,
		exit:    os.Exit,
		// A goroutine blocked on a nil channel costs no CPU and cannot be
		// woken: exactly a wedged CUDA call, as far as the executor can tell.
		hang: func() { <-(chan struct{})(nil) },
	}
}

func (g *faultGenerator) Describe() worker.Description { return g.inner.Describe() }

func (g *faultGenerator) Generate(ctx context.Context, job *workerv1.Job, out worker.Emitter) (err error) {
	if job.GetFault() == "" {
		return g.inner.Generate(ctx, job, out)
	}
	if !g.enabled {
		g.warnOnce.Do(func() {
			g.log.Warn("job carries a fault but fault injection is off; ignoring faults (logged once)", "job_id", job.GetId())
		})
		return g.inner.Generate(ctx, job, out)
	}
	f, err := parseFaults(job.GetFault())
	if err != nil {
		return &worker.InvalidJobError{Field: "fault", Reason: err.Error()}
	}
	g.log.Warn("injecting test fault", "job_id", job.GetId(), "fault", job.GetFault())

	if f.replay {
		key := replayKey(job)
		g.mu.Lock()
		rec := g.recordings[key]
		g.mu.Unlock()
		if rec != nil {
			return rec.replay(ctx, out)
		}
		rec = &recording{}
		out = &recordingEmitter{out: out, rec: rec}
		// Kept only if the job completes: a cancelled run's events are
		// not the job's answer.
		defer func() {
			if err == nil {
				g.keep(key, rec)
			}
		}()
	}

	fe := &faultEmitter{ctx: ctx, out: out, faults: f, gen: g}
	innerCtx := ctx
	if f.ignoreCancel {
		innerCtx = context.WithoutCancel(ctx)
	}
	err = g.inner.Generate(innerCtx, job, fe)
	if err == nil && f.ignoreCancel {
		// All steps done; now admit the cancellation we ignored.
		return ctx.Err()
	}
	return err
}

// faultEmitter injects faults at step boundaries, which is where a real
// worker would wedge, crash or run out of memory.
type faultEmitter struct {
	ctx    context.Context
	out    worker.Emitter
	faults faults
	gen    *faultGenerator
	steps  int
}

func (e *faultEmitter) Progress(step, totalSteps, imageIndex uint32) error {
	if e.faults.slow > 0 {
		if err := e.wait(e.faults.slow); err != nil {
			return err
		}
	}
	if err := e.ignoreCancel(e.out.Progress(step, totalSteps, imageIndex)); err != nil {
		return err
	}
	e.steps++
	if e.steps != 1 {
		return nil
	}
	switch {
	case e.faults.hang:
		e.gen.log.Warn("fault: hanging after the first step")
		e.gen.hang()
		return fmt.Errorf("fault injection: hang returned")
	case e.faults.crash:
		e.gen.log.Warn("fault: crashing after the first step", "exit_code", 3)
		e.gen.exit(3)
		return fmt.Errorf("fault injection: exit returned")
	case e.faults.oom:
		return fmt.Errorf("fault injection after step %d: %w", step, worker.ErrOutOfMemory)
	}
	return nil
}

func (e *faultEmitter) Image(img *hourglassv1.Image) error {
	return e.ignoreCancel(e.out.Image(img))
}

func (e *faultEmitter) Preview(p *hourglassv1.Preview) error {
	return e.ignoreCancel(e.out.Preview(p))
}

// ignoreCancel drops the error of a cancelled call under ignore-cancel, so
// the generator keeps going as a worker that never checks would.
func (e *faultEmitter) ignoreCancel(err error) error {
	if err != nil && e.faults.ignoreCancel && e.ctx.Err() != nil {
		return nil
	}
	return err
}

// wait sleeps for d on a timer, returning early with the context's error
// when the call is cancelled, unless cancellation is being ignored.
func (e *faultEmitter) wait(d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	done := e.ctx.Done()
	if e.faults.ignoreCancel {
		done = nil
	}
	select {
	case <-t.C:
		return nil
	case <-done:
		return e.ctx.Err()
	}
}

// keep stores a completed job's recording, up to maxRecordings.
func (g *faultGenerator) keep(key string, rec *recording) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.recordings == nil {
		g.recordings = map[string]*recording{}
	}
	if len(g.recordings) < maxRecordings {
		g.recordings[key] = rec
	}
}

// replayKey identifies a job's output: every field the generator reads,
// none of the per-call ones (id, deadline, fault).
func replayKey(job *workerv1.Job) string {
	k := proto.Clone(job).(*workerv1.Job)
	k.Id, k.Deadline, k.Fault = "", nil, ""
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(k) // a valid message always marshals
	return string(b)
}

// recordingEmitter passes events on and keeps the progress and images.
type recordingEmitter struct {
	out worker.Emitter
	rec *recording
}

func (r *recordingEmitter) Progress(step, totalSteps, imageIndex uint32) error {
	r.rec.events = append(r.rec.events, recordedEvent{progress: true, step: step, totalSteps: totalSteps, imageIdx: imageIndex})
	return r.out.Progress(step, totalSteps, imageIndex)
}

func (r *recordingEmitter) Image(img *hourglassv1.Image) error {
	r.rec.events = append(r.rec.events, recordedEvent{image: img})
	return r.out.Image(img)
}

func (r *recordingEmitter) Preview(p *hourglassv1.Preview) error { return r.out.Preview(p) }

// replay sends the recorded events; like a real generator it stops at the
// first error (a cancelled call).
func (r *recording) replay(ctx context.Context, out worker.Emitter) error {
	for _, ev := range r.events {
		var err error
		if ev.progress {
			err = out.Progress(ev.step, ev.totalSteps, ev.imageIdx)
		} else {
			err = out.Image(ev.image)
		}
		if err != nil {
			return err
		}
	}
	return ctx.Err()
}
