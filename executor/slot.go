package executor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

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

// maxWorkerMessage bounds one worker→executor message: a 2048×2048 PNG
// of noise can exceed grpc-go's default 4 MiB receive limit.
const maxWorkerMessage = 256 << 20

// idlePollInterval is how often a cancelled worker is asked whether it is
// idle. A Describe call on a Unix socket costs well under a millisecond.
const idlePollInterval = 10 * time.Millisecond

// slot is one worker position in the pool. Its fields are guarded by the
// executor's mutex, except while a job goroutine owns the slot (state busy or
// cancelling), when that goroutine alone uses proc and client.
type slot struct {
	id     string
	socket string
	state  State
	proc   *process
	conn   *grpc.ClientConn
	client workerv1.WorkerServiceClient
	device string

	jobsDone uint64
	restarts uint32
	failures int // consecutive failed starts, for the restart backoff
}

// WorkerStatus is a snapshot of one slot, for GetServerInfo and health.
type WorkerStatus struct {
	ID       string
	State    State
	PID      int
	Device   string
	JobsDone uint64
	Restarts uint32
}

// Status is a snapshot of the pool.
type Status struct {
	Workers    []WorkerStatus
	QueueDepth int
}

// Status returns a snapshot of the workers and the queue.
func (e *Executor) Status() Status {
	e.mu.Lock()
	defer e.mu.Unlock()
	st := Status{QueueDepth: e.queue.Len()}
	for _, s := range e.slots {
		ws := WorkerStatus{ID: s.id, State: s.state, Device: s.device, JobsDone: s.jobsDone, Restarts: s.restarts}
		if s.proc != nil && s.proc.alive() {
			ws.PID = s.proc.pid
		}
		st.Workers = append(st.Workers, ws)
	}
	return st
}

// startSlot starts the slot's worker process and waits until it serves.
func (e *Executor) startSlot(ctx context.Context, s *slot) error {
	argv := append(append([]string(nil), e.cfg.Command...), "--socket", s.socket)
	p, err := startProcess(argv, []string{"HOURGLASS_WORKER_SOCKET=" + s.socket}, e.cfg.WorkerLogs)
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient("unix://"+s.socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxWorkerMessage)),
		// The socket appears a few milliseconds after the process starts;
		// grpc-go's default 1 s first backoff would make every start slow.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 5 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 250 * time.Millisecond},
			MinConnectTimeout: time.Second,
		}))
	if err != nil {
		p.kill()
		return fmt.Errorf("worker %s: dial %s: %w", s.id, s.socket, err)
	}
	client := workerv1.NewWorkerServiceClient(conn)

	// Ready means serving: wait for Describe, but give up at once if the
	// process exits or the executor closes.
	ctx, cancel := context.WithTimeout(ctx, e.cfg.WorkerStart)
	defer cancel()
	go func() {
		select {
		case <-p.exited:
		case <-e.stop:
		case <-ctx.Done():
		}
		cancel()
	}()
	desc, err := client.Describe(ctx, &workerv1.DescribeRequest{}, grpc.WaitForReady(true))
	if err != nil {
		p.kill()
		_ = conn.Close()
		if !p.alive() && p.waitErr != nil {
			return fmt.Errorf("worker %s exited while starting (%v): %w", s.id, p.waitErr, err)
		}
		return fmt.Errorf("worker %s: not serving within %v: %w", s.id, e.cfg.WorkerStart, err)
	}

	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		p.kill()
		_ = conn.Close()
		return errors.New("executor closed while a worker started")
	}
	if s.conn != nil {
		_ = s.conn.Close()
	}
	s.proc, s.conn, s.client, s.device = p, conn, client, desc.GetDevice()
	s.state, s.failures = StateReady, 0
	if len(e.catalog.Models) == 0 {
		e.catalog = catalogOf(desc)
	}
	e.log.Info("worker ready", "worker", s.id, "pid", p.pid, "device", s.device)
	e.dispatchLocked()
	return nil
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

func (e *Executor) idleSlotLocked() *slot {
	for _, s := range e.slots {
		if s.state == StateReady {
			return s
		}
	}
	return nil
}

// dispatchLocked hands queued jobs, earliest deadline first, to idle slots.
func (e *Executor) dispatchLocked() {
	for e.queue.Len() > 0 && !e.closed {
		s := e.idleSlotLocked()
		if s == nil {
			return
		}
		j := e.queue.pop()
		if j.ctx.Err() != nil {
			continue // its Run is answering already; don't touch a worker
		}
		s.state = StateBusy
		e.wg.Add(1)
		go e.runJob(s, j)
	}
}

// outcome is what a finished worker call says about the worker itself.
type outcome int

const (
	workerIdle    outcome = iota // the worker finished or refused the job and is idle
	workerCancel                 // the call was cancelled: wait for idle, else kill
	workerCrashed                // the process died or must be replaced
)

// runJob runs j on s and then frees or replaces the worker.
func (e *Executor) runJob(s *slot, j *job) {
	defer e.wg.Done()
	start := time.Now()
	j.send(Event{Kind: EventStarted, WorkerID: s.id})
	images, out, err := e.call(s, j)
	res := &Result{
		Images: images, QueueWait: start.Sub(j.enqueued), RunTime: time.Since(start),
		StepsDone: j.stepsDone.Load(), StepsTotal: j.stepsTotal, WorkerID: s.id,
	}
	if err != nil {
		res = nil
	}
	j.finish(res, err)

	if out == workerCancel {
		e.setState(s, StateCancelling)
		if e.waitIdle(s) {
			out = workerIdle
		} else {
			e.log.Warn("worker did not stop after cancel; killing its process group",
				"worker", s.id, "pid", s.proc.pid, "grace", e.cfg.CancelGrace, "job", j.spec.GetId())
			out = workerCrashed
		}
	}
	e.log.Info("job finished", "job", j.spec.GetId(), "worker", s.id, "outcome", outcomeName(err),
		"steps_done", j.stepsDone.Load(), "steps_total", j.stepsTotal,
		"queue_wait", start.Sub(j.enqueued), "run_time", time.Since(start))

	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return
	}
	if out == workerIdle {
		s.state = StateReady
		s.jobsDone++
		e.dispatchLocked()
		return
	}
	// Replace the worker. kill waits for the reap, so no zombie stays.
	s.state = StateBackoff
	s.restarts++
	p := s.proc
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		p.kill()
		e.restart(s)
	}()
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
	e.mu.Unlock()
}

// call runs the job's worker RPC, collecting images and forwarding events.
// It returns the images, what the call says about the worker, and the job's
// error (nil on success).
func (e *Executor) call(s *slot, j *job) ([]*hourglassv1.Image, outcome, error) {
	stream, err := s.client.Run(j.ctx, &workerv1.RunRequest{Job: j.spec})
	if err != nil {
		out, jobErr := e.classify(s, j, err)
		return nil, out, jobErr
	}
	var images []*hourglassv1.Image
	for retried := false; ; {
		msg, err := stream.Recv()
		if status.Code(err) == codes.FailedPrecondition && !retried && len(images) == 0 && j.ctx.Err() == nil {
			// The worker still runs an earlier, cancelled job: its Describe
			// said idle a moment before a late Run of that job arrived.
			// Wait for it to go idle and try once more.
			retried = true
			if !e.waitIdle(s) {
				return nil, workerCrashed, &Error{Kind: KindWorkerCrashed, Msg: fmt.Sprintf("worker %s stayed busy with an earlier job", s.id), Cause: err}
			}
			if stream, err = s.client.Run(j.ctx, &workerv1.RunRequest{Job: j.spec}); err != nil {
				out, jobErr := e.classify(s, j, err)
				return nil, out, jobErr
			}
			continue
		}
		if errors.Is(err, io.EOF) {
			if n := uint32(len(images)); n != j.spec.GetImageCount() {
				return nil, workerIdle, &Error{Kind: KindInternal,
					Msg: fmt.Sprintf("worker returned %d images, want %d", n, j.spec.GetImageCount())}
			}
			return images, workerIdle, nil
		}
		if err != nil {
			out, jobErr := e.classify(s, j, err)
			return nil, out, jobErr
		}
		switch ev := msg.GetEvent().(type) {
		case *workerv1.RunResponse_Progress:
			j.stepsDone.Add(1)
			j.send(Event{Kind: EventProgress, Progress: ev.Progress})
		case *workerv1.RunResponse_Image:
			images = append(images, ev.Image)
			j.send(Event{Kind: EventImage, Image: ev.Image})
		}
	}
}

// classify turns a failed worker call into the job's error and the worker's
// state.
func (e *Executor) classify(s *slot, j *job, err error) (outcome, error) {
	done := j.stepsDone.Load()
	if j.ctx.Err() != nil {
		// Run has answered (or is answering) the caller already; this
		// error only decides what happens to the worker.
		return workerCancel, j.abandoned()
	}
	st := status.Convert(err)
	switch st.Code() {
	case codes.ResourceExhausted:
		return workerIdle, &Error{Kind: KindOutOfMemory, StepsDone: done, StepsTotal: j.stepsTotal,
			Msg: "worker ran out of memory: " + st.Message()}
	case codes.InvalidArgument:
		return workerIdle, &Error{Kind: KindInvalid, Msg: "worker refused the job: " + st.Message()}
	case codes.Unavailable, codes.Unknown, codes.Canceled:
		// The connection broke: the process died or is about to. Give it
		// the grace to be reaped; a live worker that broke its connection
		// is replaced all the same.
		select {
		case <-s.proc.exited:
		case <-time.After(e.cfg.CancelGrace):
		}
		return workerCrashed, &Error{Kind: KindWorkerCrashed, StepsDone: done, StepsTotal: j.stepsTotal,
			Msg:   fmt.Sprintf("worker %s died after %d of %d steps; safe to retry with the same seed", s.id, done, j.stepsTotal),
			Cause: exitCause(s.proc, err)}
	default:
		return workerIdle, &Error{Kind: KindInternal, Msg: "worker failed: " + st.Message(), Cause: err}
	}
}

func exitCause(p *process, err error) error {
	if !p.alive() && p.waitErr != nil {
		return fmt.Errorf("%w (process: %v)", err, p.waitErr)
	}
	return err
}

// waitIdle polls the worker until it reports no job, for at most the cancel
// grace. It reports false when the worker is still busy or has died.
func (e *Executor) waitIdle(s *slot) bool {
	deadline := time.Now().Add(e.cfg.CancelGrace)
	tick := time.NewTicker(idlePollInterval)
	defer tick.Stop()
	for {
		remaining := time.Until(deadline)
		if remaining <= 0 || !s.proc.alive() {
			return false
		}
		ctx, cancel := context.WithTimeout(context.Background(), remaining)
		d, err := s.client.Describe(ctx, &workerv1.DescribeRequest{})
		cancel()
		if err == nil && !d.GetBusy() {
			return true
		}
		select {
		case <-tick.C:
		case <-s.proc.exited:
			return false
		case <-e.stop:
			return false
		}
	}
}

// restart starts a new process for s, backing off exponentially while
// starts keep failing, until it serves or the executor closes.
func (e *Executor) restart(s *slot) {
	for {
		e.mu.Lock()
		if e.closed {
			e.mu.Unlock()
			return
		}
		s.state = StateStarting
		e.mu.Unlock()

		err := e.startSlot(context.Background(), s)
		if err == nil {
			return
		}
		e.mu.Lock()
		s.failures++
		delay := restartBackoff(s.failures)
		s.state = StateBackoff
		e.mu.Unlock()
		e.log.Error("worker restart failed", "worker", s.id, "err", err, "retry_in", delay)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-e.stop:
			t.Stop()
			return
		}
	}
}

// restartBackoff is 100 ms doubled per consecutive failure, capped at 10 s.
func restartBackoff(failures int) time.Duration {
	d := 100 * time.Millisecond
	for i := 1; i < failures && d < 10*time.Second; i++ {
		d *= 2
	}
	return min(d, 10*time.Second)
}
