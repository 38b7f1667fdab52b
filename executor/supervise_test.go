package executor

import (
	"fmt"
	"testing"
	"time"
)

// The supervision state machine on a scripted fake worker and a virtual
// clock (fake_test.go): no program is started, and every wait (cancel
// grace, heartbeat, crash-loop hold-back, start backoff) passes exactly
// when the test advances the clock, so each is asserted 1 ms before and at
// its end. The same promises with real processes are in pool_test.go.
//
// The tests wait, in real time, only for the executor's goroutines to reach
// the next wait point (waitFor with settle): a state, or a timer armed on
// the fake clock.

func TestBackoffSchedules(t *testing.T) {
	ms := time.Millisecond
	for _, tt := range []struct {
		failures int
		want     time.Duration
	}{{1, 100 * ms}, {2, 200 * ms}, {3, 400 * ms}, {4, 800 * ms}, {5, 1600 * ms}, {6, 3200 * ms},
		{7, 6400 * ms}, {8, 10 * time.Second}, {9, 10 * time.Second}, {100, 10 * time.Second}} {
		if got := startBackoff(tt.failures); got != tt.want {
			t.Errorf("startBackoff(%d) = %v; want %v", tt.failures, got, tt.want)
		}
	}
	for _, tt := range []struct {
		deaths int
		want   time.Duration
	}{{0, 0}, {1, 0}, {crashLoopDeaths - 1, 0}, {crashLoopDeaths, time.Second}, {crashLoopDeaths + 1, 2 * time.Second},
		{crashLoopDeaths + 2, 4 * time.Second}, {crashLoopDeaths + 4, 16 * time.Second},
		{crashLoopDeaths + 5, crashLoopMaxDelay}, {crashLoopDeaths + 100, crashLoopMaxDelay}} {
		if got := crashLoopDelay(tt.deaths); got != tt.want {
			t.Errorf("crashLoopDelay(%d) = %v; want %v", tt.deaths, got, tt.want)
		}
	}
}

// The fake clock fires a timer exactly at its time, in time order, never
// after Stop, again after Reset, and at once when it is due at once.
func TestFakeClock(t *testing.T) {
	c := newFakeClock()
	start := c.Now()
	fired := func(tm clockTimer) bool {
		select {
		case <-tm.C():
			return true
		default:
			return false
		}
	}
	a, b, stopped := c.NewTimer(2*time.Second), c.NewTimer(time.Second), c.NewTimer(time.Second)
	calls := make(chan time.Time, 1)
	f := c.AfterFunc(3*time.Second, func() { calls <- c.Now() })
	if !stopped.Stop() || stopped.Stop() {
		t.Fatalf("Stop of an armed timer, then again: want true, then false")
	}
	c.Advance(time.Second - time.Nanosecond)
	if fired(a) || fired(b) {
		t.Fatalf("a timer fired before its time")
	}
	c.Advance(time.Nanosecond)
	if !fired(b) || fired(a) || fired(stopped) {
		t.Fatalf("at 1 s: want only the 1 s timer fired")
	}
	if c.sleepers() != 1 || c.funcs() != 1 {
		t.Fatalf("armed: %d timers, %d funcs; want 1 and 1", c.sleepers(), c.funcs())
	}
	if !f.Reset(4 * time.Second) {
		t.Fatalf("Reset of an armed timer = false; want true")
	}
	if d, ok := c.funcDue(); !ok || d != 4*time.Second {
		t.Fatalf("funcDue after Reset = %v, %v; want 4s", d, ok)
	}
	c.Advance(4 * time.Second)
	if !fired(a) {
		t.Fatalf("the 2 s timer did not fire by 5 s")
	}
	if at := <-calls; !at.Equal(start.Add(5 * time.Second)) {
		t.Fatalf("AfterFunc saw the clock at %v; want 5 s", at.Sub(start))
	}
	if now := c.NewTimer(0); !fired(now) {
		t.Fatalf("a timer due at once did not fire")
	}
}

// What a job's end does to its worker: a finished or refused job keeps
// the worker; a crash has it reaped and replaced, by the ready spare at
// once, else by a fresh start.
func TestSupervisionJobOutcomes(t *testing.T) {
	tests := []struct {
		name     string
		fault    string
		spares   int
		wantKind string
		replaced bool
	}{
		{name: "success keeps the worker", fault: "", wantKind: "ok"},
		{name: "out of memory keeps the worker", fault: "oom", wantKind: "out_of_memory"},
		{name: "crash: a fresh start", fault: "crash", wantKind: "worker_crashed", replaced: true},
		{name: "crash: the spare takes over", fault: "crash", spares: 1, wantKind: "worker_crashed", replaced: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSupervised(t, Config{Spares: tt.spares})
			var spare WorkerStatus
			if tt.spares > 0 {
				spare = s.readySpare(t)
			}
			before := s.slot(t, 0)
			if err := s.start(tt.fault).wait(); kindOf(err) != tt.wantKind {
				t.Fatalf("Run(%q) = %v; want %s", tt.fault, err, tt.wantKind)
			}
			if !tt.replaced {
				waitFor(t, settle, "the slot to be ready", func() bool { return s.slot(t, 0).State == StateReady })
				if w := s.slot(t, 0); w.PID != before.PID || w.Restarts != 0 || w.JobsDone != 1 {
					t.Fatalf("after %q w0 = %+v; want pid %d, 1 job done, no restart", tt.fault, w, before.PID)
				}
				return
			}
			waitFor(t, settle, "the replacement", func() bool {
				w := s.slot(t, 0)
				return w.State == StateReady && w.Restarts == 1
			})
			waitFor(t, settle, "the dead worker to be reaped", s.launcher.byPID(before.PID).isKilled)
			w := s.slot(t, 0)
			if tt.spares > 0 {
				if w.PID != spare.PID {
					t.Fatalf("after the crash w0 has pid %d; want the spare's, %d", w.PID, spare.PID)
				}
				waitFor(t, settle, "a new spare", func() bool { return s.newSpare(spare) })
			} else if w.PID == before.PID || s.launcher.started() != 2 {
				t.Fatalf("after the crash w0 = %+v, %d workers started; want a second worker", w, s.launcher.started())
			}
			if err := s.start("").wait(); err != nil {
				t.Fatalf("Run after the crash = %v; want OK", err)
			}
		})
	}
}

// A cancelled job's worker that goes idle is kept; one that stays busy is
// killed exactly when the cancel grace expires, and replaced.
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
				spare = s.readySpare(t)
			}
			before := s.slot(t, 0)
			c := s.start(tt.fault)
			waitFor(t, settle, "the job to run", func() bool { return s.slot(t, 0).State == StateBusy })
			c.cancel()
			if err := c.wait(); KindOf(err) != KindCanceled {
				t.Fatalf("Run = %v; want canceled", err)
			}
			if tt.wantSame {
				waitFor(t, settle, "the worker to be ready again", func() bool { return s.slot(t, 0).State == StateReady })
				if w := s.slot(t, 0); w.PID != before.PID || w.Restarts != 0 {
					t.Fatalf("after a cooperative cancel w0 = %+v; want pid %d, no restart", w, before.PID)
				}
				return
			}
			waitFor(t, settle, "the cancel-grace wait", func() bool { return s.slot(t, 0).State == StateCancelling })
			s.clock.expectSleeper(t, "the first idle poll", idlePollInterval)
			s.clock.Advance(2*time.Second - time.Millisecond)
			// The last poll waits only for what is left of the grace.
			s.clock.expectSleeper(t, "the last idle poll", time.Millisecond)
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
// slot back 1 s, the sixth 2 s, the seventh 4 s, exactly, while health
// says not serving; once the window has passed, a crash is replaced at
// once again.
func TestSupervisionCrashLoop(t *testing.T) {
	var serving []bool // guarded by the executor's lock, which calls it
	s := newSupervised(t, Config{OnServingChange: func(on bool) { serving = append(serving, on) }})
	servingChanges := func() []bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return append([]bool(nil), serving...)
	}
	restarts := uint32(0)
	crash := func() {
		t.Helper()
		pid := s.slot(t, 0).PID
		if err := s.start("crash").wait(); KindOf(err) != KindWorkerCrashed {
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
	c := s.start("hang")
	waitFor(t, settle, "the job to run", func() bool { return s.slot(t, 0).State == StateBusy })
	c.cancel()
	_ = c.wait()
	waitFor(t, settle, "the cancel-grace wait", func() bool { return s.slot(t, 0).State == StateCancelling })
	s.clock.expectSleeper(t, "the idle poll", idlePollInterval)
	s.clock.Advance(2 * time.Second)
	restarts++
	replacedAtOnce("the hung job's kill")

	for _, hold := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second} {
		crash()
		waitFor(t, settle, "the hold-back", func() bool { return s.slot(t, 0).State == StateBackoff })
		s.clock.expectSleeper(t, "the hold-back", hold)
		if st := s.Status(); st.Serving {
			t.Fatalf("held back %v: Status().Serving = true with the only slot in backoff; want false", hold)
		}
		s.clock.Advance(hold - time.Millisecond)
		if st := s.slot(t, 0).State; st != StateBackoff {
			t.Fatalf("1 ms before the %v hold-back ended: %v; want backoff", hold, st)
		}
		s.clock.Advance(time.Millisecond)
		waitFor(t, settle, "the restart after the hold-back", func() bool { return s.slot(t, 0).State == StateReady })
		if ch := servingChanges(); !s.Status().Serving || len(ch) < 2 || ch[len(ch)-2] || !ch[len(ch)-1] {
			t.Fatalf("after the %v hold-back: serving changes %v; want …, false, true", hold, ch)
		}
	}
	s.clock.Advance(crashLoopWindow)
	crash()
	replacedAtOnce("a crash after the window")
}

// The heartbeat: a busy worker silent for it is wedged, its call
// cancelled exactly then and its caller told the worker crashed; a worker
// that then goes idle is kept, one that stays busy is killed after the
// grace; every event starts the heartbeat over.
func TestSupervisionHeartbeat(t *testing.T) {
	const heartbeat = 5 * time.Second
	tests := []struct {
		name   string
		fault  string
		stepAt time.Duration // a progress event this long into the job; 0: none
		killed bool
	}{
		{name: "silent and stays busy: killed after the grace", fault: "silent", killed: true},
		{name: "silent, idle once cancelled: kept", fault: "cooperative"},
		{name: "a progress event starts the heartbeat over", fault: "stepping", stepAt: 4 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSupervised(t, Config{Heartbeat: heartbeat})
			before := s.slot(t, 0)
			c := s.start(tt.fault)
			waitFor(t, settle, "the heartbeat timer", func() bool { return s.slot(t, 0).State == StateBusy && s.clock.funcs() > 0 })
			if d, _ := s.clock.funcDue(); d != heartbeat {
				t.Fatalf("the heartbeat fires in %v; want %v", d, heartbeat)
			}
			if tt.stepAt > 0 {
				s.clock.Advance(tt.stepAt)
				s.launcher.byPID(before.PID).step(t)
				waitFor(t, settle, "the heartbeat to start over", func() bool {
					d, ok := s.clock.funcDue()
					return ok && d == heartbeat
				})
			}
			s.clock.Advance(heartbeat - time.Millisecond)
			if c.returned() || s.slot(t, 0).State != StateBusy {
				t.Fatalf("1 ms before the heartbeat: returned %v, w0 %v; want still running", c.returned(), s.slot(t, 0).State)
			}
			s.clock.Advance(time.Millisecond)
			if err := c.wait(); KindOf(err) != KindWorkerCrashed {
				t.Fatalf("Run(%s) = %v; want worker_crashed (wedged)", tt.fault, err)
			}
			if !tt.killed {
				waitFor(t, settle, "the worker to be ready again", func() bool { return s.slot(t, 0).State == StateReady })
				if w := s.slot(t, 0); w.PID != before.PID || w.Restarts != 0 {
					t.Fatalf("after the wedged call w0 = %+v; want pid %d kept", w, before.PID)
				}
				return
			}
			waitFor(t, settle, "the cancel-grace wait", func() bool { return s.slot(t, 0).State == StateCancelling })
			s.clock.expectSleeper(t, "the idle poll", idlePollInterval)
			s.clock.Advance(2 * time.Second)
			waitFor(t, settle, "a new worker", func() bool {
				w := s.slot(t, 0)
				return w.State == StateReady && w.PID != before.PID && w.Restarts == 1
			})
			waitFor(t, settle, "the wedged worker to be killed", s.launcher.byPID(before.PID).isKilled)
		})
	}
}

// A worker that dies while idle (the OOM killer, an operator) is replaced
// before a job is sent to it: by the ready spare at once, else by a fresh
// start; a dead spare is replaced by a new spare.
func TestSupervisionIdleDeath(t *testing.T) {
	tests := []struct {
		name     string
		spares   int
		dieSpare bool
	}{
		{name: "slot worker, no spare: a fresh start"},
		{name: "slot worker: the spare takes over", spares: 1},
		{name: "spare: a new spare", spares: 1, dieSpare: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSupervised(t, Config{Spares: tt.spares})
			var spare WorkerStatus
			if tt.spares > 0 {
				spare = s.readySpare(t)
			}
			before := s.slot(t, 0)
			switch {
			case tt.dieSpare:
				s.launcher.byPID(spare.PID).die()
				waitFor(t, settle, "a new spare", func() bool { return s.newSpare(spare) })
				if w := s.slot(t, 0); w.PID != before.PID || w.Restarts != 0 || w.State != StateReady {
					t.Fatalf("after the spare died w0 = %+v; want untouched", w)
				}
			case tt.spares > 0:
				s.launcher.byPID(before.PID).die()
				waitFor(t, settle, "the spare to take over", func() bool {
					w := s.slot(t, 0)
					return w.PID == spare.PID && w.State == StateReady && w.Restarts == 1
				})
				waitFor(t, settle, "a new spare", func() bool { return s.newSpare(spare) })
			default:
				s.launcher.byPID(before.PID).die()
				waitFor(t, settle, "a fresh worker", func() bool {
					w := s.slot(t, 0)
					return w.PID != before.PID && w.State == StateReady && w.Restarts == 1
				})
			}
			if err := s.start("").wait(); err != nil {
				t.Fatalf("Run after the death = %v; want OK", err)
			}
		})
	}
}

// Failed starts back off 100 ms, doubling per failure up to 10 s, on the
// clock: nothing is tried 1 ms before each backoff ends, one start at its
// end. The same for a slot's worker and for a spare.
func TestSupervisionStartBackoff(t *testing.T) {
	ms := time.Millisecond
	schedule := []time.Duration{100 * ms, 200 * ms, 400 * ms, 800 * ms, 1600 * ms, 3200 * ms, 6400 * ms,
		10 * time.Second, 10 * time.Second}
	for _, spare := range []bool{false, true} {
		t.Run(map[bool]string{false: "slot", true: "spare"}[spare], func(t *testing.T) {
			s := newSupervised(t, Config{Spares: map[bool]int{false: 0, true: 1}[spare]})
			dead := s.slot(t, 0)
			if spare {
				dead = s.readySpare(t)
			}
			waiting := func() bool { // the state the failed start left
				if spare {
					return !s.spareReady() && s.Status().Workers[1].State == StateStarting
				}
				return s.slot(t, 0).State == StateBackoff && !s.Status().Serving
			}
			s.launcher.failNext(len(schedule))
			tried := s.launcher.tried()
			s.launcher.byPID(dead.PID).die()
			for i, d := range schedule {
				tried++
				what := fmt.Sprintf("the backoff after failed start %d", i+1)
				waitFor(t, settle, what, func() bool { return s.launcher.tried() == tried && waiting() })
				s.clock.expectSleeper(t, what, d)
				s.clock.Advance(d - ms)
				if got := s.launcher.tried(); got != tried || !waiting() {
					t.Fatalf("1 ms before the %v backoff after failure %d ended: %d starts tried, waiting %v; want %d, true",
						d, i+1, got, waiting(), tried)
				}
				s.clock.Advance(ms)
			}
			waitFor(t, settle, "the start after the last backoff", func() bool {
				if spare {
					return s.newSpare(dead)
				}
				w := s.slot(t, 0)
				return w.State == StateReady && w.PID != dead.PID
			})
			if got := s.launcher.tried(); got != tried+1 {
				t.Fatalf("%d starts tried; want %d", got, tried+1)
			}
		})
	}
}

// A spare replaces only a worker of its own GPU: the worker of the other
// GPU is replaced by a fresh start on that GPU, while the spare waits;
// then the spare takes over its own GPU's worker, and the new spare
// starts on that GPU.
func TestSupervisionSpareKeepsItsGPU(t *testing.T) {
	s := newSupervised(t, Config{Workers: 2, Spares: 1, GPUs: []string{"0", "1"}})
	spare := s.readySpare(t)
	own, other := 0, 1
	if s.slot(t, 0).GPU != spare.GPU {
		own, other = 1, 0
	}
	before := s.slot(t, other)
	s.launcher.byPID(before.PID).die()
	waitFor(t, settle, "the other GPU's replacement", func() bool {
		w := s.slot(t, other)
		return w.State == StateReady && w.PID != before.PID
	})
	if w := s.slot(t, other); w.PID == spare.PID || s.launcher.byPID(w.PID).gpu != before.GPU {
		t.Fatalf("the worker of GPU %s was replaced by pid %d on GPU %q; want a fresh start on GPU %s, not the spare (GPU %s)",
			before.GPU, w.PID, s.launcher.byPID(w.PID).gpu, before.GPU, spare.GPU)
	}
	if sp := s.spareStatus(); sp.PID != spare.PID {
		t.Fatalf("the spare is %+v; want %+v still waiting for its own GPU", sp, spare)
	}

	mine := s.slot(t, own)
	s.launcher.byPID(mine.PID).die()
	waitFor(t, settle, "the spare to take over its own GPU", func() bool {
		w := s.slot(t, own)
		return w.State == StateReady && w.PID == spare.PID
	})
	waitFor(t, settle, "a new spare", func() bool { return s.newSpare(spare) })
	if sp := s.spareStatus(); sp.GPU != spare.GPU || s.launcher.byPID(sp.PID).gpu != spare.GPU {
		t.Fatalf("the new spare is on GPU %q; want %s, where the last one went", sp.GPU, spare.GPU)
	}
}
