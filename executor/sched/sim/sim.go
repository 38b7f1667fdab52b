package sim

import (
	"fmt"
	"math"
	"time"

	"github.com/hourglass-dev/hourglass/executor/sched"
)

// Result is what one policy made of one workload.
type Result struct {
	Policy  sched.Policy
	Workers int
	// Offered jobs arrived; Admitted were queued; OK finished by their
	// deadline. Of the admitted jobs that did not: Unreachable left the
	// queue unstarted at their latest start (answered at once), Expired
	// were still queued at their deadline, Cancelled were running at their
	// deadline and were stopped there, Late ran to their end after it
	// (the naive pool cancels nothing).
	Offered, Admitted, OK                 int
	Unreachable, Expired, Cancelled, Late int
	// Refusals counts admission refusals by reason.
	Refusals map[sched.Reason]int
	// Blocked counts the Overloaded refusals of jobs that would have made
	// an admitted job miss (rather than missing themselves).
	Blocked int
	// Duration is the simulated time, from the start to the last event;
	// Capacity is Workers × Duration. Useful is the worker time of the jobs
	// that finished OK, Wasted the worker time of the others (cancelled at
	// their deadline, or finished too late).
	Duration, Capacity, Useful, Wasted time.Duration
	// Stragglers is how many admitted jobs ran StragglerFactor × slower,
	// and StragglersMissed how many of those did not finish OK.
	Stragglers, StragglersMissed int
	Tenants                      []TenantResult
	// Violations of the scheduler's promises, which must never happen: a
	// job started after its latest start (Schedulable), a queue longer
	// than QueueMax, and (Exact workloads) an admitted job that missed.
	StartedLate, QueueOverflow, ExactMisses int
	// MaxQueue is the longest the queue was.
	MaxQueue int
	// Events is how many events the run processed.
	Events int
}

// TenantResult is one tenant's part of a Result.
type TenantResult struct {
	Name                  string
	Offered, Admitted, OK int
	// Useful is the worker time of its jobs that finished OK.
	Useful time.Duration
	// Demand is the true mean run time of the jobs it offered, all of
	// them, feasible or not.
	Demand time.Duration
	// OfferedBy, AdmittedBy and OKBy count its jobs by deadline class.
	OfferedBy, AdmittedBy, OKBy []int
	// Patient counts its offered jobs with patience (see
	// Workload.Patience), and PatientOK those that finished OK;
	// PatientUseful is their useful worker time.
	Patient, PatientOK int
	PatientUseful      time.Duration
	// Refusals counts its refusals by reason; Blocked its Overloaded
	// refusals for another job's sake.
	Refusals map[sched.Reason]int
	Blocked  int
}

// Goodput is the useful share of the capacity: the worker time of jobs
// that finished OK ÷ (workers × the simulated time).
func (r Result) Goodput() float64 { return ratio(r.Useful, r.Capacity) }

// WastedShare is the wasted share of the capacity.
func (r Result) WastedShare() float64 { return ratio(r.Wasted, r.Capacity) }

// Kept is OK ÷ admitted (1 when nothing was admitted).
func (r Result) Kept() float64 { return keptRate(r.OK, r.Admitted) }

// KeptNonStragglers is the kept rate of the admitted jobs that were not
// stragglers: the promises that noise alone, not an unforeseeable 5× run,
// put at risk.
func (r Result) KeptNonStragglers() float64 {
	return keptRate(r.OK-(r.Stragglers-r.StragglersMissed), r.Admitted-r.Stragglers)
}

// Refused is the number of refused jobs.
func (r Result) Refused() int {
	n := 0
	for _, c := range r.Refusals {
		n += c
	}
	return n
}

// Kept is the tenant's OK ÷ admitted.
func (t TenantResult) Kept() float64 { return keptRate(t.OK, t.Admitted) }

// Share is the tenant's useful share of the capacity.
func (t TenantResult) Share(r Result) float64 { return ratio(t.Useful, r.Capacity) }

// DemandShare is the tenant's offered work ÷ the capacity.
func (t TenantResult) DemandShare(r Result) float64 { return ratio(t.Demand, r.Capacity) }

func ratio(a, b time.Duration) float64 {
	if b <= 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func keptRate(ok, admitted int) float64 {
	if admitted <= 0 {
		return 1
	}
	return float64(ok) / float64(admitted)
}

func (r Result) String() string {
	return fmt.Sprintf("%s on %d workers: offered %d admitted %d ok %d kept %.4f goodput %.3f wasted %.3f unreachable %d expired %d cancelled %d late %d refusals %v",
		r.Policy, r.Workers, r.Offered, r.Admitted, r.OK, r.Kept(), r.Goodput(), r.WastedShare(), r.Unreachable, r.Expired, r.Cancelled, r.Late, r.Refusals)
}

type eventKind uint8

// At equal times a run that ends at its deadline finishes (OK) before the
// deadline fires, and arrivals come last.
const (
	evFinish eventKind = iota
	evDeadline
	evArrival
)

// event is one entry of the event heap. A job event carries the job's
// generation: jobs are recycled, and an event for an earlier life of the
// job is stale.
type event struct {
	at     int64 // nanoseconds since the epoch
	seq    uint64
	job    *simJob
	gen    uint32
	tenant int32
	kind   eventKind
}

func (a *event) before(b *event) bool {
	if a.at != b.at {
		return a.at < b.at
	}
	if a.kind != b.kind {
		return a.kind < b.kind
	}
	return a.seq < b.seq
}

// eventHeap is a binary min-heap of events by value: no boxing, so
// pushing and popping allocate nothing once the slice has grown.
type eventHeap []event

func (h *eventHeap) push(e event) {
	*h = append(*h, e)
	s := *h
	for i := len(s) - 1; i > 0; {
		p := (i - 1) / 2
		if !s[i].before(&s[p]) {
			break
		}
		s[i], s[p] = s[p], s[i]
		i = p
	}
}

func (h *eventHeap) pop() event {
	s := *h
	top := s[0]
	last := len(s) - 1
	s[0] = s[last]
	s = s[:last]
	for i := 0; ; {
		l, m := 2*i+1, i
		if l < len(s) && s[l].before(&s[m]) {
			m = l
		}
		if r := l + 1; r < len(s) && s[r].before(&s[m]) {
			m = r
		}
		if m == i {
			break
		}
		s[i], s[m] = s[m], s[i]
		i = m
	}
	*h = s
	return top
}

type jobState uint8

const (
	stWaiting jobState = iota
	stRunning
	stEnded
)

type simJob struct {
	sched.Job
	gen       uint32
	tenant    int32
	class     int8
	state     jobState
	straggler bool
	patient   bool
	noise     float64
	trueMean  time.Duration
	start     int64
	end       int64
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
	stop    int64 // no arrivals after this (Workload.Duration)
	now     int64
	last    int64
	free    []*simJob
}

func (r *runner) push(e event) {
	r.seq++
	e.seq = r.seq
	r.events.push(e)
}

func (r *runner) at(ns int64) time.Time { return r.epoch.Add(time.Duration(ns)) }

// newJob returns a recycled job or a new one.
func (r *runner) newJob() *simJob {
	if n := len(r.free); n > 0 {
		j := r.free[n-1]
		r.free = r.free[:n-1]
		*j = simJob{gen: j.gen}
		return j
	}
	return &simJob{}
}

// release recycles a job that the scheduler no longer holds; events still
// pending for it are stale from now on.
func (r *runner) release(j *simJob) {
	j.state = stEnded
	j.gen++
	r.free = append(r.free, j)
}

// Run simulates workload w under policy p. It is deterministic: the same
// workload gives the same result.
func Run(w Workload, p sched.Policy) Result {
	w.setDefaults()
	r := &runner{w: w, policy: p, epoch: time.Unix(0, 0), idle: w.Workers, stop: math.MaxInt64}
	if w.Duration > 0 {
		r.stop = int64(w.Duration)
	}
	cfg := sched.Config{Policy: p, Workers: w.Workers, QueueMax: w.QueueMax, Quantile: w.Quantile}
	if w.Exact {
		cfg.Overhead, cfg.SecondsPerMegapixelStep = w.Overhead, w.Rate
	}
	r.s = sched.New(cfg, r.epoch)
	if !w.Exact {
		small, big := w.calibration()
		r.s.Calibrate(calibrationSmall, small, calibrationBig, big)
	}
	r.res = Result{Policy: p, Workers: w.Workers, Refusals: map[sched.Reason]int{}, Tenants: make([]TenantResult, len(w.Tenants))}
	n := len(w.Deadlines)
	for i, t := range w.Tenants {
		r.res.Tenants[i] = TenantResult{Name: t.Name, OfferedBy: make([]int, n), AdmittedBy: make([]int, n), OKBy: make([]int, n),
			Refusals: map[sched.Reason]int{}}
		a := newArrivals(&r.w, i)
		r.streams = append(r.streams, a)
		r.nextArrival(i)
	}
	for len(r.events) > 0 {
		e := r.events.pop()
		if e.kind != evArrival && e.job.gen != e.gen {
			continue // the job ended before this event came due
		}
		r.now = e.at
		r.res.Events++
		switch e.kind {
		case evArrival:
			r.arrive(int(e.tenant))
		case evFinish:
			r.finish(e.job)
		case evDeadline:
			r.deadline(e.job)
		}
		// The run lasts until its last arrival or until the last job
		// leaves, whichever is later; the deadline of a job already gone
		// does not lengthen it.
		r.last = e.at
	}
	r.res.Duration = time.Duration(r.last)
	r.res.Capacity = time.Duration(w.Workers) * time.Duration(r.last)
	return r.res
}

func (r *runner) nextArrival(tenant int) {
	if r.w.Duration <= 0 && r.made >= r.w.Jobs {
		return
	}
	at := r.streams[tenant].next()
	if math.IsInf(at, 1) || at*1e9 >= float64(r.stop) {
		return
	}
	r.push(event{at: int64(at * 1e9), kind: evArrival, tenant: int32(tenant)})
}

func (r *runner) arrive(tenant int) {
	r.made++
	r.nextArrival(tenant)
	job := r.streams[tenant].job()
	j := r.newJob()
	j.tenant, j.class, j.noise, j.straggler = int32(tenant), int8(job.class), job.noise, job.straggler
	j.trueMean = r.w.Overhead + time.Duration(r.w.Rate*job.cost*float64(time.Second))
	mult := r.w.Deadlines[job.class].Mult
	timeout := time.Duration(mult * float64(j.trueMean))
	j.patient = r.w.Patience > 0 && timeout-j.trueMean >= r.w.Patience
	deadline := r.now + int64(timeout)
	j.Job = sched.Job{Tenant: r.w.Tenants[tenant].Name, Model: "m", Cost: job.cost, Deadline: r.at(deadline), Value: j}
	tr := &r.res.Tenants[tenant]
	r.res.Offered++
	tr.Offered++
	tr.OfferedBy[job.class]++
	tr.Demand += j.trueMean
	if j.patient {
		tr.Patient++
	}

	now := r.at(r.now)
	r.unreachable(r.s.Unreachable(now))
	if refusal := r.s.Admit(now, &j.Job); refusal != nil {
		r.res.Refusals[refusal.Reason]++
		tr.Refusals[refusal.Reason]++
		if refusal.Blocked {
			r.res.Blocked++
			tr.Blocked++
		}
		r.release(j)
		return
	}
	r.res.Admitted++
	tr.Admitted++
	tr.AdmittedBy[job.class]++
	if j.straggler {
		r.res.Stragglers++
	}
	if q := r.s.Len(); q > r.res.MaxQueue {
		r.res.MaxQueue = q
		if q > r.w.QueueMax {
			r.res.QueueOverflow++
		}
	}
	if r.policy != sched.FIFO {
		r.push(event{at: deadline, kind: evDeadline, job: j, gen: j.gen})
	}
	r.dispatch()
}

func (r *runner) unreachable(jobs []*sched.Job) {
	for _, sj := range jobs {
		j := sj.Value.(*simJob)
		r.res.Unreachable++
		r.missed(j)
		r.release(j)
	}
}

// missed records an admitted job that did not finish OK.
func (r *runner) missed(j *simJob) {
	if r.w.Exact {
		r.res.ExactMisses++
	}
	if j.straggler {
		r.res.StragglersMissed++
	}
}

func (r *runner) dispatch() {
	for r.idle > 0 && r.s.Len() > 0 {
		now := r.at(r.now)
		next, dropped := r.s.Next(now)
		r.unreachable(dropped)
		if next == nil {
			return
		}
		j := next.Value.(*simJob)
		if r.policy == sched.Schedulable && next.Started.After(next.Latest()) {
			r.res.StartedLate++
		}
		run := time.Duration(float64(j.trueMean) * j.noise)
		if r.w.Exact {
			run = next.Mean
		}
		j.state, j.start, j.end = stRunning, r.now, r.now+int64(run)
		r.idle--
		r.push(event{at: j.end, kind: evFinish, job: j, gen: j.gen})
	}
}

func (r *runner) finish(j *simJob) {
	if j.state != stRunning {
		return
	}
	took := time.Duration(j.end - j.start)
	r.s.Done(&j.Job, took, true)
	r.idle++
	tr := &r.res.Tenants[j.tenant]
	if !r.at(j.end).After(j.Deadline) {
		r.res.OK++
		r.res.Useful += took
		tr.OK++
		tr.OKBy[j.class]++
		tr.Useful += took
		if j.patient {
			tr.PatientOK++
			tr.PatientUseful += took
		}
	} else {
		r.res.Late++
		r.res.Wasted += took
		r.missed(j)
	}
	r.release(j)
	r.dispatch()
}

func (r *runner) deadline(j *simJob) {
	switch j.state {
	case stWaiting:
		if r.s.Remove(&j.Job) {
			r.res.Expired++
			r.missed(j)
			r.release(j)
		}
	case stRunning:
		took := time.Duration(r.now - j.start)
		r.s.Done(&j.Job, took, false)
		r.res.Cancelled++
		r.res.Wasted += took
		r.idle++
		r.missed(j)
		r.release(j)
		r.dispatch()
	}
}
