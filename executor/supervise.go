package executor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	workerv1 "github.com/hourglass-dev/hourglass/gen/hourglass/worker/v1"
)

// Supervision: what happens to a worker process once its job has ended,
// or when it dies on its own; the hot spares; restarts and their backoffs.
// It is written against the launcher, workerProcess and clock interfaces,
// so that supervise_test.go drives the state machine with fakes
// (fake_test.go) and virtual time; pool_test.go checks the same promises
// with real processes.

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

	delay := crashLoopDelay(deaths)
	if delay > 0 {
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

// crashLoopDelay is how long a slot whose worker died deaths times within
// the crash-loop window waits before its next restart: nothing below
// crashLoopDeaths, then 1 s doubling per further death, capped. (The
// shift is bounded too, so that no count of deaths can overflow it.)
func crashLoopDelay(deaths int) time.Duration {
	if deaths < crashLoopDeaths {
		return 0
	}
	return min(crashLoopMaxDelay, time.Second<<min(deaths-crashLoopDeaths, 16))
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
