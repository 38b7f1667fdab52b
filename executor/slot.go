package executor

import (
	"fmt"
	"time"
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

// servingLocked: some slot has a live worker.
func (e *Executor) servingLocked() bool { return e.liveLocked() > 0 }

// liveLocked counts the slots with a live worker (ready, busy or
// cancelling): the workers that serve the queue.
func (e *Executor) liveLocked() int {
	live := 0
	for _, s := range e.slots {
		switch s.state {
		case StateReady, StateBusy, StateCancelling:
			live++
		}
	}
	return live
}

// changedLocked reports health changes to the server after any slot
// moved, and tells the scheduling core how many workers serve the queue.
func (e *Executor) changedLocked() {
	if e.closed {
		return
	}
	live := e.liveLocked()
	// Before the first worker serves, plan on the configured pool: the
	// workers are starting, and a queue planned on none would refuse all.
	if live > 0 && live != e.sch.Workers() {
		e.sch.SetWorkers(live)
	}
	serving := live > 0
	if serving != e.serving {
		e.serving = serving
		if e.cfg.OnServingChange != nil {
			e.cfg.OnServingChange(serving)
		}
	}
}
