package executor

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
	workerv1 "github.com/hourglass-dev/hourglass/gen/hourglass/worker/v1"
)

// Fakes for the supervision tests (supervise_test.go): a virtual clock, and
// a launcher whose workers are in-memory WorkerServiceClients scripted by
// the job's fault. No program is started and no socket opened.

// fakeClock is a virtual clock: time moves, and timers fire, only in
// Advance.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	c      *fakeClock
	at     time.Time
	ch     chan time.Time
	f      func()
	active bool
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) clockTimer { return c.add(d, nil) }

func (c *fakeClock) AfterFunc(d time.Duration, f func()) clockTimer { return c.add(d, f) }

func (c *fakeClock) add(d time.Duration, f func()) *fakeTimer {
	c.mu.Lock()
	t := &fakeTimer{c: c, at: c.now.Add(d), ch: make(chan time.Time, 1), f: f, active: true}
	c.timers = append(c.timers, t)
	c.mu.Unlock()
	if d <= 0 {
		c.Advance(0)
	}
	return t
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := t.active
	t.active = false
	return was
}

func (t *fakeTimer) Reset(d time.Duration) bool {
	t.c.mu.Lock()
	was := t.active
	t.at, t.active = t.c.now.Add(d), true
	if !slices.Contains(t.c.timers, t) {
		t.c.timers = append(t.c.timers, t)
	}
	t.c.mu.Unlock()
	return was
}

// Advance moves the clock on by d and fires, in time order, every timer
// that is due: a channel timer gets the new time (dropped, like
// time.Timer's, when the last one is unread), an AfterFunc timer calls its
// function on a goroutine of its own.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due, keep []*fakeTimer
	for _, t := range c.timers {
		switch {
		case !t.active:
		case !t.at.After(c.now):
			t.active = false
			due = append(due, t)
		default:
			keep = append(keep, t)
		}
	}
	c.timers = keep
	now := c.now
	c.mu.Unlock()
	slices.SortStableFunc(due, func(a, b *fakeTimer) int { return a.at.Compare(b.at) })
	for _, t := range due {
		if t.f != nil {
			go t.f()
			continue
		}
		select {
		case t.ch <- now:
		default:
		}
	}
}

// sleepers is the number of NewTimer timers armed and not yet fired: each
// is a goroutine of the executor waiting on the clock (a cancel grace, an
// idle poll, a backoff), which Advance can now wake. AfterFunc timers (the
// heartbeat of every running call) are counted apart, by funcs, so that a
// job running on another slot does not pass for the wait a test expects.
func (c *fakeClock) sleepers() int { return c.armed(false) }

// funcs is the number of AfterFunc timers armed and not yet fired.
func (c *fakeClock) funcs() int { return c.armed(true) }

func (c *fakeClock) armed(funcs bool) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, t := range c.timers {
		if t.active && (t.f != nil) == funcs {
			n++
		}
	}
	return n
}

// sleeperDue and funcDue are how long from now the next NewTimer or
// AfterFunc timer fires; false when none is armed. A test checks the due
// time before it advances the clock: a wait armed for the wrong time is
// then an exact failure, not a race with the goroutine it would wake.
func (c *fakeClock) sleeperDue() (time.Duration, bool) { return c.due(false) }

func (c *fakeClock) funcDue() (time.Duration, bool) { return c.due(true) }

func (c *fakeClock) due(funcs bool) (time.Duration, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var next time.Duration
	found := false
	for _, t := range c.timers {
		if d := t.at.Sub(c.now); t.active && (t.f != nil) == funcs && (!found || d < next) {
			next, found = d, true
		}
	}
	return next, found
}

// expectSleeper waits until a NewTimer timer is armed and checks that the
// next one fires want from now.
func (c *fakeClock) expectSleeper(t *testing.T, what string, want time.Duration) {
	t.Helper()
	waitFor(t, settle, what, func() bool { return c.sleepers() > 0 })
	if d, _ := c.sleeperDue(); d != want {
		t.Fatalf("%s: the next wait ends in %v; want %v", what, d, want)
	}
}

// fakeWorker is a worker process and its gRPC client at once. Its Run
// follows the job's fault:
//
//	""            one progress event, one image, done
//	"oom"         out of device memory; stays idle
//	"crash"       dies mid-job
//	"hang"        nothing until cancelled; ignores the cancel, stays busy
//	"silent"      the same, named for the heartbeat tests
//	"cooperative" nothing until cancelled; then idle
//	"stepping"    a progress event per step() of the test; cooperative
type fakeWorker struct {
	pid      int
	gpu      string
	exited   chan struct{}
	exitOnce sync.Once
	busy     atomic.Bool
	kills    atomic.Int32
	steps    chan struct{}
}

func (w *fakeWorker) PID() int                { return w.pid }
func (w *fakeWorker) Exited() <-chan struct{} { return w.exited }
func (w *fakeWorker) Err() error {
	if alive(w) {
		return nil
	}
	return errors.New("signal: killed")
}
func (w *fakeWorker) Kill()              { w.kills.Add(1); w.die() }
func (w *fakeWorker) Stop(time.Duration) { w.die() }

// die ends the process by itself: a crash, the OOM killer, an operator.
func (w *fakeWorker) die()               { w.exitOnce.Do(func() { close(w.exited) }) }
func (w *fakeWorker) isKilled() bool     { return w.kills.Load() > 0 }
func (w *fakeWorker) describeBusy() bool { return w.busy.Load() }
func (w *fakeWorker) setBusy(busy bool)  { w.busy.Store(busy) }

func (w *fakeWorker) Describe(_ context.Context, _ *workerv1.DescribeRequest, _ ...grpc.CallOption) (*workerv1.DescribeResponse, error) {
	if !alive(w) {
		return nil, status.Error(codes.Unavailable, "connection refused")
	}
	return &workerv1.DescribeResponse{Busy: w.describeBusy(), Device: "fake",
		Models: []*workerv1.Model{{Name: "m", Default: true}}}, nil
}

func (w *fakeWorker) Run(ctx context.Context, req *workerv1.RunRequest, _ ...grpc.CallOption) (grpc.ServerStreamingClient[workerv1.RunResponse], error) {
	if w.describeBusy() {
		return nil, status.Error(codes.FailedPrecondition, "busy")
	}
	w.setBusy(true)
	return &fakeStream{w: w, ctx: ctx, fault: req.GetJob().GetFault()}, nil
}

// step makes a "stepping" job send one progress event; it fails the test
// when no such job takes it.
func (w *fakeWorker) step(t *testing.T) {
	t.Helper()
	select {
	case w.steps <- struct{}{}:
	case <-time.After(settle):
		t.Fatalf("no stepping job on worker %d took the step", w.pid)
	}
}

// fakeStream is one Run call's events. Like a real gRPC stream, it ends
// with the call's context whatever the worker does; the fault decides
// whether the worker itself goes idle then.
type fakeStream struct {
	grpc.ClientStream // unused: the executor only calls Recv
	w                 *fakeWorker
	ctx               context.Context
	fault             string
	sent              int
}

func (s *fakeStream) Recv() (*workerv1.RunResponse, error) {
	w := s.w
	switch s.fault {
	case "":
		s.sent++
		switch s.sent {
		case 1:
			return &workerv1.RunResponse{Event: &workerv1.RunResponse_Progress{Progress: &workerv1.Progress{Step: 1}}}, nil
		case 2:
			return &workerv1.RunResponse{Event: &workerv1.RunResponse_Image{Image: &hourglassv1.Image{}}}, nil
		}
		w.setBusy(false)
		return nil, io.EOF
	case "oom":
		w.setBusy(false)
		return nil, status.Error(codes.ResourceExhausted, "CUDA out of memory")
	case "crash":
		w.die()
		return nil, status.Error(codes.Unavailable, "error reading from server: EOF")
	}
	// Nothing until a step, the call's end (by the caller, or by the
	// heartbeat) or the worker's death.
	select {
	case <-w.steps:
		s.sent++
		return &workerv1.RunResponse{Event: &workerv1.RunResponse_Progress{Progress: &workerv1.Progress{Step: uint32(s.sent)}}}, nil
	case <-s.ctx.Done():
	case <-w.exited:
		return nil, status.Error(codes.Unavailable, "error reading from server: EOF")
	}
	if s.fault == "cooperative" || s.fault == "stepping" {
		w.setBusy(false)
	}
	return nil, status.FromContextError(s.ctx.Err()).Err()
}

// fakeLauncher starts fake workers; failStarts makes that many starts fail.
type fakeLauncher struct {
	mu         sync.Mutex
	workers    []*fakeWorker
	attempts   int // launches tried, failed ones included
	failStarts int
	nextPID    int
}

func (l *fakeLauncher) launch(_ context.Context, name, gpu string, _ <-chan struct{}) (*workerProc, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.attempts++
	if l.failStarts > 0 {
		l.failStarts--
		return nil, errors.New("fake worker failed to start")
	}
	l.nextPID++
	w := &fakeWorker{pid: 10000 + l.nextPID, gpu: gpu, exited: make(chan struct{}), steps: make(chan struct{})}
	l.workers = append(l.workers, w)
	desc, _ := w.Describe(context.Background(), nil)
	return &workerProc{name: name, proc: w, client: w, desc: desc, gpu: gpu}, nil
}

func (l *fakeLauncher) failNext(n int) {
	l.mu.Lock()
	l.failStarts = n
	l.mu.Unlock()
}

func (l *fakeLauncher) byPID(pid int) *fakeWorker {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, w := range l.workers {
		if w.pid == pid {
			return w
		}
	}
	return nil
}

// started is the number of workers started; tried counts failed starts too.
func (l *fakeLauncher) started() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.workers)
}

func (l *fakeLauncher) tried() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.attempts
}

// supervised is an executor on fakes.
type supervised struct {
	*Executor
	clock    *fakeClock
	launcher *fakeLauncher
}

// newSupervised starts an executor on a fake launcher and clock, with a
// cancel grace of 2 s of virtual time; on cleanup it closes it and checks
// that every worker it ever started has exited.
func newSupervised(t *testing.T, cfg Config) *supervised {
	t.Helper()
	if cfg.Workers == 0 {
		cfg.Workers = 1
	}
	cfg.QueueMax = 16
	cfg.Cancellation = true
	cfg.CancelGrace = 2 * time.Second
	cfg.WorkerLogs = io.Discard
	cfg.Logger = slog.New(slog.DiscardHandler)
	clk, l := newFakeClock(), &fakeLauncher{}
	e, err := newExecutor(context.Background(), cfg, l, clk)
	if err != nil {
		t.Fatalf("newExecutor: %v", err)
	}
	t.Cleanup(func() {
		e.Close()
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, w := range l.workers {
			if alive(w) {
				t.Errorf("fake worker %d still alive after Close", w.pid)
			}
		}
	})
	return &supervised{e, clk, l}
}

// fakeCall is a Run call in the background.
type fakeCall struct {
	cancel context.CancelFunc // ends the caller's call
	errc   chan error
}

// start runs a job with fault on the executor in the background.
func (s *supervised) start(fault string) *fakeCall {
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	c := &fakeCall{cancel: cancel, errc: make(chan error, 1)}
	job := &workerv1.Job{Id: "fake", Width: 64, Height: 64, Steps: 1, ImageCount: 1, Model: "m", Fault: fault}
	go func() {
		_, err := s.Run(ctx, job, "tenant", nil)
		c.errc <- err
	}()
	return c
}

// wait returns Run's error.
func (c *fakeCall) wait() error {
	defer c.cancel()
	return <-c.errc
}

// returned reports, without waiting, whether Run has returned; its error
// is then left for wait.
func (c *fakeCall) returned() bool {
	select {
	case err := <-c.errc:
		c.errc <- err
		return true
	default:
		return false
	}
}

func (s *supervised) slot(t *testing.T, i int) WorkerStatus {
	t.Helper()
	return s.Status().Workers[i]
}

func (s *supervised) spareReady() bool { return s.spareStatus().PID != 0 }

// readySpare waits for a ready spare and returns it.
func (s *supervised) readySpare(t *testing.T) WorkerStatus {
	t.Helper()
	waitFor(t, settle, "the spare", s.spareReady)
	return s.spareStatus()
}

// newSpare reports whether a ready spare other than old is there.
func (s *supervised) newSpare(old WorkerStatus) bool {
	sp := s.spareStatus()
	return sp.PID != 0 && sp.PID != old.PID
}

// spareStatus is the first ready spare, zero when there is none.
func (s *supervised) spareStatus() WorkerStatus {
	for _, w := range s.Status().Workers {
		if w.Spare && w.State == StateReady {
			return w
		}
	}
	return WorkerStatus{}
}

// settle bounds, in real time, how long a test waits for the executor's
// goroutines to reach the next wait point (a state, a timer armed). They
// get there in microseconds; the bound only turns a bug into a failure
// instead of a hang.
const settle = 10 * time.Second
