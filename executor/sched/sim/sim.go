package sim

import (
	"container/heap"
	"fmt"
	"math"
	"time"

	"github.com/hourglass-dev/hourglass/executor/sched"
)

// Result is what one policy made of one workload.
type Result struct {
	Policy sched.Policy
	// Offered jobs arrived; Admitted were queued; OK finished by their
	// deadline; Unreachable were admitted and then left the queue
	// unstarted at their latest start.
	Offered, Admitted, OK, Unreachable int
	// Refusals counts admission refusals by reason.
	Refusals map[sched.Reason]int
	// Capacity is the workers' time over the run (workers × the time of
	// the last event); Useful the worker time of jobs that finished OK;
	// Wasted the worker time of the others (cancelled at their deadline,
	// or finished too late).
	Capacity, Useful, Wasted time.Duration
	Tenants                  []TenantResult
	// Violations of the scheduler's promises that must never happen:
	// a job started after its latest start (Schedulable), a queue longer
	// than QueueMax, and (Exact workloads) an admitted job that missed.
	StartedLate, QueueOverflow, ExactMisses int
	// Blocked counts Overloaded refusals of jobs that would have made an
	// admitted job miss (rather than missing themselves).
	Blocked int
	// Events is how many events the run processed.
	Events int
}

// TenantResult is one tenant's part.
type TenantResult struct {
	Name                  string
	Offered, Admitted, OK int
	Useful                time.Duration
	// OfferedBy and OKBy count the tenant's jobs by deadline class.
	OfferedBy, OKBy []int
	// Refusals counts its refusals by reason.
	Refusals map[sched.Reason]int
}

// Goodput is the useful share of the capacity.
func (r Result) Goodput() float64 { return ratio(r.Useful, r.Capacity) }

// WastedShare is the wasted share of the capacity.
func (r Result) WastedShare() float64 { return ratio(r.Wasted, r.Capacity) }

// Kept is OK ÷ admitted (1 when nothing was admitted).
func (r Result) Kept() float64 { return keptRate(r.OK, r.Admitted) }

// Kept is the tenant's OK ÷ admitted.
func (t TenantResult) Kept() float64 { return keptRate(t.OK, t.Admitted) }

// Share is the tenant's useful share of the capacity.
func (t TenantResult) Share(r Result) float64 { return ratio(t.Useful, r.Capacity) }

func ratio(a, b time.Duration) float64 {
	if b <= 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func keptRate(ok, admitted int) float64 {
	if admitted == 0 {
		return 1
	}
	return float64(ok) / float64(admitted)
}

func (r Result) String() string {
	return fmt.Sprintf("%s: offered %d admitted %d ok %d kept %.4f goodput %.3f wasted %.3f unreachable %d refusals %v",
		r.Policy, r.Offered, r.Admitted, r.OK, r.Kept(), r.Goodput(), r.WastedShare(), r.Unreachable, r.Refusals)
}

type eventKind int

// At equal times a run that ends at its deadline finishes (OK) before the
// deadline fires, and arrivals come last.
const (
	evFinish eventKind = iota
	evDeadline
	evArrival
)

type event struct {
	at     int64 // nanoseconds since the epoch
	kind   eventKind
	seq    uint64 // ties: the order events were made
	job    *simJob
	tenant int
}

type eventHeap []event

func (h eventHeap) Len() int { return len(h) }
func (h eventHeap) Less(i, j int) bool {
	a, b := &h[i], &h[j]
	if a.at != b.at {
		return a.at < b.at
	}
	if a.kind != b.kind {
		return a.kind < b.kind
	}
	return a.seq < b.seq
}
func (h eventHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *eventHeap) Push(x any)   { *h = append(*h, x.(event)) }
func (h *eventHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

type jobState int

const (
	stWaiting jobState = iota
	stRunning
	stEnded
)

type simJob struct {
	sched.Job
	tenant   int
	class    int
	noise    float64
	trueMean time.Duration
	state    jobState
	start    int64
	end      int64
}

// runner is one simulation in progress.
type runner struct {
	w       Workload
	policy  sched.Policy
	s       *sched.Scheduler
	epoch   time.Time
	events  eventHeap
	seq     uint64
	idle    int
	res     Result
	streams []*arrivals
	made    int
	now     int64
	last    int64
}

func (r *runner) push(e event) {
	r.seq++
	e.seq = r.seq
	heap.Push(&r.events, e)
}

func (r *runner) at(ns int64) time.Time { return r.epoch.Add(time.Duration(ns)) }

// Run simulates workload w under policy p. It is deterministic: the same
// workload gives the same result.
func Run(w Workload, p sched.Policy) Result {
	w.setDefaults()
	rate, overhead := w.Rate*(1+w.CalibrationError), w.Overhead
	if w.Exact {
		rate = w.Rate
	}
	r := &runner{w: w, policy: p, epoch: time.Unix(0, 0), idle: w.Workers}
	r.s = sched.New(sched.Config{Policy: p, Workers: w.Workers, QueueMax: w.QueueMax, Quantile: w.Quantile,
		Overhead: overhead, SecondsPerMegapixelStep: rate}, r.epoch)
	r.res = Result{Policy: p, Refusals: map[sched.Reason]int{}, Tenants: make([]TenantResult, len(w.Tenants))}
	for i, t := range w.Tenants {
		r.res.Tenants[i] = TenantResult{Name: t.Name, OfferedBy: make([]int, len(w.Deadlines)), OKBy: make([]int, len(w.Deadlines)),
			Refusals: map[sched.Reason]int{}}
		a := newArrivals(&r.w, i)
		r.streams = append(r.streams, a)
		if at := a.next(); !math.IsInf(at, 1) {
			r.push(event{at: int64(at * 1e9), kind: evArrival, tenant: i})
		}
	}
	for r.events.Len() > 0 {
		e := heap.Pop(&r.events).(event)
		r.now = e.at
		r.last = max(r.last, e.at)
		r.res.Events++
		switch e.kind {
		case evArrival:
			r.arrive(e.tenant)
		case evFinish:
			r.finish(e.job)
		case evDeadline:
			r.deadline(e.job)
		}
	}
	r.res.Capacity = time.Duration(w.Workers) * time.Duration(r.last)
	return r.res
}

func (r *runner) arrive(tenant int) {
	a := r.streams[tenant]
	r.made++
	if r.made < r.w.Jobs {
		if at := a.next(); !math.IsInf(at, 1) {
			r.push(event{at: int64(at * 1e9), kind: evArrival, tenant: tenant})
		}
	}
	cost, class, noise := a.job()
	j := &simJob{tenant: tenant, class: class, noise: noise,
		trueMean: r.w.Overhead + time.Duration(r.w.Rate*cost*float64(time.Second))}
	deadline := r.now + int64(r.w.Deadlines[class].Mult*float64(j.trueMean))
	j.Job = sched.Job{Tenant: r.w.Tenants[tenant].Name, Model: "m", Cost: cost, Deadline: r.at(deadline), Value: j}
	r.res.Offered++
	r.res.Tenants[tenant].Offered++
	r.res.Tenants[tenant].OfferedBy[class]++

	now := r.at(r.now)
	r.unreachable(r.s.Unreachable(now))
	if refusal := r.s.Admit(now, &j.Job); refusal != nil {
		r.res.Refusals[refusal.Reason]++
		r.res.Tenants[tenant].Refusals[refusal.Reason]++
		if refusal.Blocked {
			r.res.Blocked++
		}
		return
	}
	r.res.Admitted++
	r.res.Tenants[tenant].Admitted++
	if r.s.Len() > r.w.QueueMax {
		r.res.QueueOverflow++
	}
	if r.policy != sched.FIFO {
		r.push(event{at: deadline, kind: evDeadline, job: j})
	}
	r.dispatch()
}

func (r *runner) unreachable(jobs []*sched.Job) {
	for _, sj := range jobs {
		j := sj.Value.(*simJob)
		j.state = stEnded
		r.res.Unreachable++
		r.missed()
	}
}

// missed records an admitted job that did not finish OK.
func (r *runner) missed() {
	if r.w.Exact {
		r.res.ExactMisses++
	}
}

func (r *runner) dispatch() {
	for r.idle > 0 {
		now := r.at(r.now)
		next, dropped := r.s.Next(now)
		r.unreachable(dropped)
		if next == nil {
			return
		}
		j := next.Value.(*simJob)
		if r.policy == sched.Schedulable && now.After(next.Latest()) {
			r.res.StartedLate++
		}
		run := time.Duration(float64(j.trueMean) * j.noise)
		if r.w.Exact {
			run = next.Mean
		}
		j.state, j.start, j.end = stRunning, r.now, r.now+int64(run)
		r.idle--
		r.push(event{at: j.end, kind: evFinish, job: j})
	}
}

func (r *runner) finish(j *simJob) {
	if j.state != stRunning {
		return // cancelled at its deadline
	}
	j.state = stEnded
	took := time.Duration(j.end - j.start)
	r.s.Done(&j.Job, took, true)
	r.idle++
	if !r.at(j.end).After(j.Deadline) {
		r.res.OK++
		r.res.Useful += took
		r.res.Tenants[j.tenant].OK++
		r.res.Tenants[j.tenant].OKBy[j.class]++
		r.res.Tenants[j.tenant].Useful += took
	} else {
		r.res.Wasted += took
		r.missed()
	}
	r.dispatch()
}

func (r *runner) deadline(j *simJob) {
	switch j.state {
	case stWaiting:
		if r.s.Remove(&j.Job) {
			j.state = stEnded
			r.missed()
		}
	case stRunning:
		j.state = stEnded
		took := time.Duration(r.now - j.start)
		r.s.Done(&j.Job, took, false)
		r.res.Wasted += took
		r.idle++
		r.missed()
		r.dispatch()
	}
}
