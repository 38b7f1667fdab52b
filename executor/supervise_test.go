package executor

import (
	"context"
	"errors"
	"fmt"
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

// The supervision state machine with a scripted fake worker and a virtual
// clock: no program is started, and every wait (cancel grace, heartbeat,
// crash-loop hold-back) passes exactly when the test advances the clock.
// The same promises with real processes are in pool_test.go.

// fakeClock is a virtual clock: timers fire only in Advance.
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
// that is due.
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

// fakeWorker is a worker process and its gRPC client at once. Its Run
// follows the job's fault: "" finishes; "hang" ignores the cancel and
// stays busy; "cooperative" stops when cancelled; "crash" dies mid-job;
// "silent" sends nothing and stays busy.
type fakeWorker struct {
	pid      int
	gpu      string
	exited   chan struct{}
	exitOnce sync.Once
	busy     atomic.Bool
	kills    atomic.Int32
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

// fakeStream is one Run call's events.
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
	case "crash":
		w.die()
		return nil, status.Error(codes.Unavailable, "error reading from server: EOF")
	}
	// hang, cooperative, silent: nothing until the call is cancelled (by
	// the caller, or by the heartbeat) or the worker dies.
	select {
	case <-s.ctx.Done():
	case <-w.exited:
		return nil, status.Error(codes.Unavailable, "error reading from server: EOF")
	}
	if s.fault == "cooperative" {
		w.setBusy(false)
	}
	return nil, status.FromContextError(s.ctx.Err()).Err()
}

// fakeLauncher starts fake workers; failStarts makes that many starts fail.
type fakeLauncher struct {
	mu         sync.Mutex
	workers    []*fakeWorker
	failStarts int
	nextPID    int
}

func (l *fakeLauncher) launch(_ context.Context, name, gpu string, _ <-chan struct{}) (*workerProc, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.failStarts > 0 {
		l.failStarts--
		return nil, errors.New("fake worker failed to start")
	}
	l.nextPID++
	w := &fakeWorker{pid: 10000 + l.nextPID, gpu: gpu, exited: make(chan struct{})}
	l.workers = append(l.workers, w)
	desc, _ := w.Describe(context.Background(), nil)
	return &workerProc{name: name, proc: w, client: w, desc: desc, gpu: gpu}, nil
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

func (l *fakeLauncher) started() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.workers)
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// supervised is an executor on fakes.
type supervised struct {
	*Executor
	clock    *fakeClock
	launcher *fakeLauncher
}

func newSupervised(t *testing.T, cfg Config) *supervised {
	t.Helper()
	if cfg.Workers == 0 {
		cfg.Workers = 1
	}
	cfg.QueueMax = 16
	cfg.Cancellation = true
	cfg.CancelGrace = 2 * time.Second
	cfg.Command = []string{"fake"}
	cfg.WorkerLogs = io.Discard
	cfg.Logger = discardLogger()
	clk, l := newFakeClock(), &fakeLauncher{}
	e, err := newExecutor(context.Background(), cfg, l, clk)
	if err != nil {
		t.Fatalf("newExecutor: %v", err)
	}
	t.Cleanup(e.Close)
	return &supervised{e, clk, l}
}

// start runs a job with fault on the executor in the background; the
// returned cancel ends the caller's call, wait returns Run's error.
func (s *supervised) start(fault string) (cancel func(), wait func() error) {
	ctx, cancelCtx := context.WithTimeout(context.Background(), time.Hour)
	errc := make(chan error, 1)
	job := &workerv1.Job{Id: "fake", Width: 64, Height: 64, Steps: 1, ImageCount: 1, Model: "m", Fault: fault}
	go func() {
		_, err := s.Run(ctx, job, "tenant", nil)
		errc <- err
	}()
	return cancelCtx, func() error { defer cancelCtx(); return <-errc }
}

func (s *supervised) slot(t *testing.T, i int) WorkerStatus {
	t.Helper()
	return s.Status().Workers[i]
}

func (s *supervised) spareReady() bool { return s.spareStatus().PID != 0 }

// spareStatus is the first ready spare, zero when there is none.
func (s *supervised) spareStatus() WorkerStatus {
	for _, w := range s.Status().Workers {
		if w.Spare && w.State == StateReady {
			return w
		}
	}
	return WorkerStatus{}
}

// The wait points of the state machine are the fake clock's timers: these
// helpers let the executor's goroutines reach them before time moves.
const settle = 10 * time.Second

func TestSupervisionCancelAndKill(t *testing.T) {
	tests := []struct {
		name   string
		fault  string
		spares int
		// wantSame: the slot keeps its worker; else it is killed after
		// exactly the cancel grace and replaced.
		wantSame bool
	}{
		{name: "cooperative cancel keeps the worker", fault: "cooperative", wantSame: true},
		{name: "hung job: killed after the grace, the spare takes over", fault: "hang", spares: 1},
		{name: "hung job without a spare: killed, a new worker starts", fault: "hang"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSupervised(t, Config{Spares: tt.spares})
			var spare WorkerStatus
			if tt.spares > 0 {
				waitFor(t, settle, "the spare", s.spareReady)
				spare = s.spareStatus()
			}
			before := s.slot(t, 0)
			cancel, wait := s.start(tt.fault)
			waitFor(t, settle, "the job to run", func() bool { return s.slot(t, 0).State == StateBusy })
			cancel()
			if err := wait(); KindOf(err) != KindCanceled {
				t.Fatalf("Run = %v; want canceled", err)
			}
			if tt.wantSame {
				waitFor(t, settle, "the worker to be ready again", func() bool { return s.slot(t, 0).State == StateReady })
				if w := s.slot(t, 0); w.PID != before.PID || w.Restarts != 0 {
					t.Fatalf("after a cooperative cancel w0 = %+v; want pid %d, no restart", w, before.PID)
				}
				return
			}
			waitFor(t, settle, "the cancel-grace wait", func() bool {
				return s.slot(t, 0).State == StateCancelling && s.clock.sleepers() > 0
			})
			s.clock.Advance(2*time.Second - time.Millisecond)
			waitFor(t, settle, "the idle poll to rearm", func() bool { return s.clock.sleepers() > 0 })
			if w := s.launcher.byPID(before.PID); w.isKilled() || s.slot(t, 0).State != StateCancelling {
				t.Fatalf("1 ms before the grace expired: killed %v, state %v; want still cancelling", w.isKilled(), s.slot(t, 0).State)
			}
			s.clock.Advance(time.Millisecond)
			waitFor(t, settle, "the slot to be ready with a new worker", func() bool {
				w := s.slot(t, 0)
				return w.State == StateReady && w.PID != before.PID && w.Restarts == 1
			})
			// The kill (and reap) runs beside the takeover, which does
			// not wait for it.
			waitFor(t, settle, "the hung worker to be killed", s.launcher.byPID(before.PID).isKilled)
			wantStarted := 2 // the slot's worker and its replacement
			if tt.spares > 0 {
				if w := s.slot(t, 0); w.PID != spare.PID {
					t.Fatalf("after the kill w0 has pid %d; want the spare's, %d, at once", w.PID, spare.PID)
				}
				wantStarted = 3 // the slot's, the spare (now the slot's), the new spare
				waitFor(t, settle, "a new spare", s.spareReady)
			}
			if got := s.launcher.started(); got != wantStarted {
				t.Fatalf("%d workers started; want %d", got, wantStarted)
			}
		})
	}
}

// A crash is reaped and replaced at once; a hung job's kill does not
// count toward the crash loop; the fifth crash within the window holds the
// slot back 1 s, the sixth 2 s, exactly; once the window has passed, a
// crash is replaced at once again.
func TestSupervisionCrashLoop(t *testing.T) {
	s := newSupervised(t, Config{})
	restarts := uint32(0)
	crash := func() {
		t.Helper()
		pid := s.slot(t, 0).PID
		_, wait := s.start("crash")
		if err := wait(); KindOf(err) != KindWorkerCrashed {
			t.Fatalf("Run(crash) = %v; want worker_crashed", err)
		}
		// Dead by itself, yet killed all the same: the kill takes the
		// rest of its process group and reaps it.
		waitFor(t, settle, "the crashed worker to be reaped", s.launcher.byPID(pid).isKilled)
		restarts++
	}
	replacedAtOnce := func(what string) {
		t.Helper()
		waitFor(t, settle, what+": the replacement", func() bool {
			w := s.slot(t, 0)
			return w.Restarts == restarts && w.State != StateCancelling
		})
		if st := s.slot(t, 0).State; st == StateBackoff {
			t.Fatalf("%s: the slot is held back; want a restart at once", what)
		}
		waitFor(t, settle, what+": ready", func() bool { return s.slot(t, 0).State == StateReady })
	}
	for i := 1; i < crashLoopDeaths; i++ {
		crash()
		replacedAtOnce(fmt.Sprintf("crash %d", i))
	}
	// A hung job's kill is the job's fault, not the worker's.
	cancel, wait := s.start("hang")
	waitFor(t, settle, "the job to run", func() bool { return s.slot(t, 0).State == StateBusy })
	cancel()
	_ = wait()
	waitFor(t, settle, "the cancel-grace wait", func() bool { return s.slot(t, 0).State == StateCancelling && s.clock.sleepers() > 0 })
	s.clock.Advance(2 * time.Second)
	restarts++
	replacedAtOnce("the hung job's kill")

	for _, hold := range []time.Duration{time.Second, 2 * time.Second} {
		crash()
		waitFor(t, settle, "the hold-back", func() bool {
			return s.slot(t, 0).State == StateBackoff && s.clock.sleepers() > 0
		})
		s.clock.Advance(hold - time.Millisecond)
		if st := s.slot(t, 0).State; st != StateBackoff {
			t.Fatalf("1 ms before the %v hold-back ended: %v; want backoff", hold, st)
		}
		s.clock.Advance(time.Millisecond)
		waitFor(t, settle, "the restart after the hold-back", func() bool { return s.slot(t, 0).State == StateReady })
	}
	s.clock.Advance(crashLoopWindow)
	crash()
	replacedAtOnce("a crash after the window")
}

// A worker silent past the heartbeat is cancelled as wedged, then killed
// after the grace; its caller learns the worker was replaced.
func TestSupervisionHeartbeat(t *testing.T) {
	s := newSupervised(t, Config{Heartbeat: 5 * time.Second})
	before := s.slot(t, 0)
	_, wait := s.start("silent")
	waitFor(t, settle, "the heartbeat timer", func() bool { return s.slot(t, 0).State == StateBusy && s.clock.funcs() > 0 })
	s.clock.Advance(5 * time.Second)
	if err := wait(); KindOf(err) != KindWorkerCrashed {
		t.Fatalf("Run(silent) = %v; want worker_crashed (wedged)", err)
	}
	waitFor(t, settle, "the cancel-grace wait", func() bool { return s.slot(t, 0).State == StateCancelling && s.clock.sleepers() > 0 })
	s.clock.Advance(2 * time.Second)
	waitFor(t, settle, "a new worker", func() bool {
		w := s.slot(t, 0)
		return w.State == StateReady && w.PID != before.PID
	})
	waitFor(t, settle, "the wedged worker to be killed", s.launcher.byPID(before.PID).isKilled)
}

// An idle worker that dies is replaced; failed starts back off 100 ms,
// then 200 ms, on the clock.
func TestSupervisionIdleDeathAndStartBackoff(t *testing.T) {
	s := newSupervised(t, Config{})
	before := s.slot(t, 0)
	s.launcher.mu.Lock()
	s.launcher.failStarts = 2
	s.launcher.mu.Unlock()
	s.launcher.byPID(before.PID).die() // the OOM killer, an operator
	for _, d := range []time.Duration{100 * time.Millisecond, 200 * time.Millisecond} {
		waitFor(t, settle, "the start backoff", func() bool { return s.slot(t, 0).State == StateBackoff && s.clock.sleepers() > 0 })
		s.clock.Advance(d - time.Millisecond)
		if st := s.slot(t, 0).State; st != StateBackoff {
			t.Fatalf("1 ms before the %v start backoff ended: %v; want backoff", d, st)
		}
		s.clock.Advance(time.Millisecond)
	}
	waitFor(t, settle, "a new worker", func() bool {
		w := s.slot(t, 0)
		return w.State == StateReady && w.PID != before.PID
	})
}

// A spare replaces only a worker of its own GPU: a hung job's worker on
// the other GPU is replaced by a fresh start while the spare waits; one on
// the spare's GPU is replaced by the spare.
func TestSupervisionSpareKeepsItsGPU(t *testing.T) {
	s := newSupervised(t, Config{Workers: 2, Spares: 1, GPUs: []string{"0", "1"}})
	waitFor(t, settle, "the spare", s.spareReady)
	spare := s.spareStatus()
	same := 0 // the slot on the spare's GPU
	if s.slot(t, 0).GPU != spare.GPU {
		same = 1
	}
	// hangOn kills slot i's worker through a hung job: killed after the
	// grace, and replaced. Dispatch takes the first ready slot, so slot 0
	// is kept busy with a cooperative job when the hang is for slot 1.
	hangOn := func(i int) (before, after WorkerStatus) {
		t.Helper()
		if i == 1 {
			c0, w0 := s.start("cooperative")
			defer func() {
				c0()
				_ = w0()
				waitFor(t, settle, "slot 0 ready again", func() bool { return s.slot(t, 0).State == StateReady })
			}()
			waitFor(t, settle, "slot 0 busy", func() bool { return s.slot(t, 0).State == StateBusy })
		}
		before = s.slot(t, i)
		cancel, wait := s.start("hang")
		waitFor(t, settle, "the job to run", func() bool { return s.slot(t, i).State == StateBusy })
		cancel()
		_ = wait()
		waitFor(t, settle, "the cancel-grace wait", func() bool { return s.slot(t, i).State == StateCancelling && s.clock.sleepers() > 0 })
		s.clock.Advance(2 * time.Second)
		waitFor(t, settle, "the replacement", func() bool {
			after = s.slot(t, i)
			return after.State == StateReady && after.PID != before.PID
		})
		return before, after
	}

	before, after := hangOn(1 - same)
	if after.PID == spare.PID {
		t.Fatalf("the spare of GPU %s replaced the worker of GPU %s", spare.GPU, before.GPU)
	}
	if sp := s.spareStatus(); sp.PID != spare.PID {
		t.Fatalf("ready spare = %+v; want pid %d still waiting for its own GPU", sp, spare.PID)
	}

	if _, after := hangOn(same); after.PID != spare.PID || after.GPU != spare.GPU {
		t.Fatalf("after the kill on GPU %s the slot is %+v; want the spare, pid %d", spare.GPU, after, spare.PID)
	}
	waitFor(t, settle, "a new spare", func() bool {
		sp := s.spareStatus()
		return sp.PID != 0 && sp.PID != spare.PID && sp.GPU == spare.GPU
	})
}
