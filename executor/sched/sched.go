package sched

import (
	"fmt"
	"math"
	"time"
)

// Policy is how the scheduler admits and orders jobs.
type Policy int

const (
	// Schedulable admits a job only if, by the planned run times, it and
	// every job already admitted finish before their deadlines; the queue
	// is served earliest deadline first; a job whose latest start has
	// passed leaves the queue unstarted; tenants share by demand.
	Schedulable Policy = iota
	// PointEstimate is the policy hourglass had before Schedulable, kept
	// for comparison: it plans with the mean (no spread), checks only the
	// new job's own wait (work ahead of it ÷ workers) against its deadline,
	// serves earliest deadline first and starts every job it dispatches.
	PointEstimate
	// FIFO admits everything the queue has room for and serves it in
	// arrival order: the naive pool the benchmarks compare with.
	FIFO
)

var policyNames = map[Policy]string{Schedulable: "schedulable", PointEstimate: "point-estimate", FIFO: "fifo"}

func (p Policy) String() string {
	if s, ok := policyNames[p]; ok {
		return s
	}
	return fmt.Sprintf("policy(%d)", int(p))
}

// ParsePolicy is the inverse of Policy.String.
func ParsePolicy(s string) (Policy, error) {
	for p, name := range policyNames {
		if name == s {
			return p, nil
		}
	}
	return 0, fmt.Errorf("unknown scheduling policy %q (want schedulable, point-estimate or fifo)", s)
}

// Config configures a Scheduler.
type Config struct {
	Policy Policy
	// Workers is the number of workers that serve the queue (at least 1).
	Workers int
	// QueueMax is the most jobs that may wait while no worker is idle.
	QueueMax int
	// Quantile is the quantile of actual ÷ mean run time that plans a job
	// (default 0.97). Ignored by PointEstimate, which plans with the mean.
	Quantile float64
	// Overhead and SecondsPerMegapixelStep seed the estimator.
	Overhead                time.Duration
	SecondsPerMegapixelStep float64
	// DemandWindow is the time constant of each tenant's remembered
	// demand, for the fair share (default 10 s).
	DemandWindow time.Duration
}

const (
	defaultQuantile     = 0.97
	defaultDemandWindow = 10 * time.Second
	// minRetryAfter keeps a computed retry delay from being zero.
	minRetryAfter = 10 * time.Millisecond
)

// Job is one job as the scheduler sees it. The caller fills the first
// fields; Admit fills the rest.
type Job struct {
	Tenant   string
	Model    string
	Cost     float64 // megapixel-steps: width × height / 10⁶ × steps × images
	Deadline time.Time
	// Value is the caller's own handle, carried along untouched.
	Value any

	// Mean and Planned are the estimates Admit planned the job with.
	Mean, Planned time.Duration
	// Enqueued and Started are when it was admitted and dispatched.
	Enqueued, Started time.Time

	seq      uint64
	deadline int64 // ticks (nanoseconds since the scheduler's epoch)
	latest   int64 // deadline − planned
	started  int64
	state    jobState
}

type jobState int

const (
	jobNew jobState = iota
	jobQueued
	jobRunning
	jobGone
)

// Latest is the job's latest start: its deadline minus its planned run
// time. A job not started by then is not started at all (Schedulable).
func (j *Job) Latest() time.Time { return j.Deadline.Add(-j.Planned) }

// Reason says why Admit refused a job.
type Reason int

const (
	// TooShort: the planned run time exceeds the time left, even on an
	// idle worker.
	TooShort Reason = iota + 1
	// Overloaded: with the work ahead of it the job would miss its
	// deadline, or admitting it would make a job admitted earlier miss
	// its own.
	Overloaded
	// OverShare: the tenant already holds more than its fair share of
	// the workers' time before this job's deadline.
	OverShare
	// QueueFull: no room to wait.
	QueueFull
)

var reasonNames = map[Reason]string{TooShort: "too_short", Overloaded: "overloaded", OverShare: "over_share", QueueFull: "queue_full"}

func (r Reason) String() string {
	if s, ok := reasonNames[r]; ok {
		return s
	}
	return fmt.Sprintf("reason(%d)", int(r))
}

// Refusal explains an admission refusal; its Error is safe to show to
// the caller.
type Refusal struct {
	Reason Reason
	// Planned is the job's planned run time; Remaining the time that was
	// left before its deadline; Wait the planned wait for a worker.
	Planned, Remaining, Wait time.Duration
	// RetryAfter is when a job of this cost and timeout would fit, by the
	// schedule as it stands.
	RetryAfter time.Duration
	// Queued and QueueMax describe a full queue.
	Queued, QueueMax int
	// Blocked is true when the job itself would finish in time but would
	// make an earlier-admitted job miss its deadline.
	Blocked bool
}

func ms(d time.Duration) time.Duration { return d.Round(time.Millisecond) }

func (r *Refusal) Error() string {
	switch r.Reason {
	case TooShort:
		return fmt.Sprintf("cannot finish before the deadline: planned run time %v on an idle worker, %v remain",
			ms(r.Planned), ms(r.Remaining))
	case Overloaded:
		if r.Blocked {
			return fmt.Sprintf("too busy: admitting this job (planned run time %v) would make an admitted job miss its deadline; retry in %v",
				ms(r.Planned), ms(r.RetryAfter))
		}
		return fmt.Sprintf("too busy to meet the deadline: planned wait %v plus run time %v, %v remain",
			ms(r.Wait), ms(r.Planned), ms(r.Remaining))
	case OverShare:
		return fmt.Sprintf("too busy: this tenant already holds its fair share of the workers before this deadline; retry in %v",
			ms(r.RetryAfter))
	case QueueFull:
		return fmt.Sprintf("queue full: %d jobs waiting, limit %d", r.Queued, r.QueueMax)
	}
	return r.Reason.String()
}

// Scheduler is the scheduling core. It is not safe for concurrent use:
// the executor calls it under its own lock, the simulator from one loop.
type Scheduler struct {
	cfg     Config
	epoch   time.Time
	est     *estimator
	queue   tree
	running []*Job
	tenants map[string]*tenant
	order   []*tenant // the tenants in tenants, in a fixed order
	seq     uint64
	workers int64
	// vtime is the fair share's virtual time: the served time of the
	// tenant dispatched last. A tenant that starts waiting begins there,
	// so it cannot bank credit while idle.
	vtime int64
}

// New returns a scheduler whose clock starts at now; every later time
// passed in must not be before it.
func New(cfg Config, now time.Time) *Scheduler {
	if cfg.Quantile <= 0 || cfg.Quantile > 1 {
		cfg.Quantile = defaultQuantile
	}
	if cfg.DemandWindow <= 0 {
		cfg.DemandWindow = defaultDemandWindow
	}
	q := cfg.Quantile
	s := &Scheduler{
		cfg:     cfg,
		epoch:   now,
		est:     newEstimator(q, cfg.Overhead, cfg.SecondsPerMegapixelStep),
		queue:   tree{fifo: cfg.Policy == FIFO},
		tenants: map[string]*tenant{},
	}
	s.SetWorkers(cfg.Workers)
	return s
}

func (s *Scheduler) tick(t time.Time) int64 { return int64(t.Sub(s.epoch)) }

// Policy returns the scheduler's policy.
func (s *Scheduler) Policy() Policy { return s.cfg.Policy }

// SetWorkers changes the number of workers that serve the queue (a worker
// died, or came back). It costs O(n) in the waiting jobs.
func (s *Scheduler) SetWorkers(n int) {
	s.workers = int64(max(n, 1))
	s.queue.setWorkers(s.workers)
}

// Workers is the number of workers the schedule is planned on.
func (s *Scheduler) Workers() int { return int(s.workers) }

// Len is the number of waiting jobs.
func (s *Scheduler) Len() int { return s.queue.Len() }

// Running is the number of dispatched jobs not yet Done.
func (s *Scheduler) Running() int { return len(s.running) }

// Estimate returns the mean and planned run times of a job of this model
// and cost. PointEstimate and FIFO plan with the mean.
func (s *Scheduler) Estimate(model string, cost float64) (mean, planned time.Duration) {
	mean, planned = s.est.estimate(model, cost)
	if s.cfg.Policy != Schedulable {
		planned = mean
	}
	return mean, planned
}

// Calibrate seeds the estimator from two measured runs of different cost.
func (s *Scheduler) Calibrate(smallCost float64, small time.Duration, bigCost float64, big time.Duration) {
	s.est.calibrate(smallCost, small, bigCost, big)
}

// Calibration returns the estimator's overhead and base rate.
func (s *Scheduler) Calibration() (overhead time.Duration, secondsPerMegapixelStep float64) {
	return s.est.overhead, s.est.base
}

// remainingWork is R: the planned work left on the running jobs (see left).
func (s *Scheduler) remainingWork(now int64) int64 {
	var r int64
	for _, j := range s.running {
		r += s.left(j, now)
	}
	return r
}

// left is the planned time until running job j frees its worker.
//
// Under Schedulable it is the larger of what is left of j's plan and what
// its model's spread says is left given how long j has already run: the
// Quantile of the model's recent actual ÷ mean ratios among those above
// j's elapsed ÷ mean, times its mean, less the time elapsed. A job that has
// run long is likely to run longer, and the promises made behind it from
// now on are planned with that. Past every ratio observed, j is planned to
// need its planned run time once more. Either way no more than the time to
// j's deadline, where it is cancelled.
//
// PointEstimate and FIFO keep the previous rule: what is left of the plan,
// 0 once the job has overrun it.
func (s *Scheduler) left(j *Job, now int64) int64 {
	elapsed := now - j.started
	left := int64(j.Planned) - elapsed
	if s.cfg.Policy != Schedulable {
		return max(0, left)
	}
	if more, ok := s.est.conditional(j.Model, j.Mean, time.Duration(elapsed)); ok {
		left = max(left, int64(more))
	} else if left < 0 {
		left = int64(j.Planned)
	}
	return max(0, min(left, j.deadline-now))
}

// Admit decides whether j may wait for a worker. On nil, j is queued; on a
// refusal, nothing changed but the tenant's remembered demand.
func (s *Scheduler) Admit(now time.Time, j *Job) *Refusal {
	t := s.tick(now)
	j.Mean, j.Planned = s.Estimate(j.Model, j.Cost)
	j.deadline = s.tick(j.Deadline)
	j.latest = j.deadline - int64(j.Planned)
	s.seq++
	j.seq = s.seq
	ten := s.tenant(j.Tenant)
	remaining := time.Duration(j.deadline - t)
	if j.Planned <= remaining {
		// Demand is work the tenant could use: a job that cannot finish
		// even on an idle worker asks for none.
		ten.ask(t, int64(j.Planned), int64(s.cfg.DemandWindow))
	}

	idle := int64(len(s.running)) < s.workers
	if !idle && s.queue.Len() >= s.cfg.QueueMax {
		return &Refusal{Reason: QueueFull, Queued: s.queue.Len(), QueueMax: s.cfg.QueueMax,
			RetryAfter: s.nextFree(t)}
	}
	if s.cfg.Policy != FIFO {
		if r := s.check(t, j, ten, remaining); r != nil {
			return r
		}
	}
	j.state = jobQueued
	j.Enqueued = now
	s.queue.insert(j)
	if ten.jobs == 0 {
		ten.served = max(ten.served, s.vtime)
	}
	ten.waiting.insert(j)
	ten.queued += int64(j.Planned)
	ten.jobs++
	return nil
}

// check is the admission test of Schedulable and PointEstimate.
func (s *Scheduler) check(t int64, j *Job, ten *tenant, remaining time.Duration) *Refusal {
	if j.Planned > remaining {
		return &Refusal{Reason: TooShort, Planned: j.Planned, Remaining: remaining}
	}
	if int64(len(s.running)) < s.workers && s.queue.Len() == 0 {
		// A worker is idle and nothing waits: j starts now, ahead of no
		// one (the fluid bound below would charge it a share of the
		// running jobs' work for nothing).
		return nil
	}
	w := s.workers
	r := s.remainingWork(t)
	_, ahead, minAfter := s.queue.probe(j)
	base := w*t + r
	// j's own promise: it starts by now + (R + work ahead) / W.
	lateness := base + ahead - w*j.latest
	if lateness > 0 {
		wait := time.Duration((r + ahead) / w)
		return &Refusal{Reason: Overloaded, Planned: j.Planned, Remaining: remaining, Wait: wait,
			RetryAfter: s.retryAfter(j, lateness)}
	}
	if s.cfg.Policy != Schedulable {
		return nil
	}
	if wait := s.overShare(t, j, ten, int64(remaining)); wait > 0 {
		return &Refusal{Reason: OverShare, Planned: j.Planned, Remaining: remaining,
			RetryAfter: max(minRetryAfter, time.Duration(wait))}
	}
	// The promises made to the jobs that will run after j: each is delayed
	// by j's planned run time over W workers.
	if shortfall := base + int64(j.Planned) - minAfter; minAfter != math.MaxInt64 && shortfall > 0 {
		return &Refusal{Reason: Overloaded, Planned: j.Planned, Remaining: remaining, Blocked: true,
			Wait: time.Duration((r + ahead) / w), RetryAfter: s.retryAfter(j, shortfall)}
	}
	return nil
}

// retryAfter is the earliest delay after which a job like j, sent again
// with the same timeout, would fit: the schedule's work drains at W per
// unit of time while the later deadline lets the work due in between go
// ahead of it. shortfall is how much work (× W) it misses by now. A few
// rounds of the fixed point are enough: each adds only the work due in
// the last round's extra time.
func (s *Scheduler) retryAfter(j *Job, shortfall int64) time.Duration {
	w := s.workers
	wait := shortfall / w
	for range 4 {
		extra := s.queue.workBefore(j.deadline+wait) - s.queue.workBefore(j.deadline)
		next := (shortfall + extra) / w
		if next <= wait {
			break
		}
		wait = next
	}
	return max(minRetryAfter, time.Duration(wait))
}

// nextFree is when the first running job is planned to end.
func (s *Scheduler) nextFree(t int64) time.Duration {
	first := int64(math.MaxInt64)
	for _, j := range s.running {
		first = min(first, s.left(j, t))
	}
	if first == math.MaxInt64 {
		first = 0
	}
	return max(minRetryAfter, time.Duration(first))
}

// Next takes the job to start on an idle worker and marks it running.
// Under Schedulable, every waiting job whose latest start has passed
// leaves the queue first, unstarted, and is returned in dropped so that
// the caller answers it; next is nil when nothing startable waits.
//
// The job is the head of the earliest-deadline-first order, unless the
// least-served tenant's earliest job can go first without breaking a
// promise: starting it now delays each job ahead of it in deadline order
// by its planned run time over W, which Next checks against their
// latest starts in O(log n). So tenants are served in turn while there is
// slack, and in deadline order when there is not. (PointEstimate always
// serves tenants in turn, as hourglass did before.)
func (s *Scheduler) Next(now time.Time) (next *Job, dropped []*Job) {
	t := s.tick(now)
	dropped = s.Unreachable(now)
	head := s.queue.first()
	if head == nil {
		return nil, dropped
	}
	pick := head
	if s.cfg.Policy != FIFO && len(s.tenants) > 1 {
		if fair := s.fairCandidate(); fair != nil && fair != head {
			if s.cfg.Policy == PointEstimate {
				pick = fair
			} else if minBefore := s.queue.minBefore(fair); minBefore == math.MaxInt64 ||
				minBefore-int64(fair.Planned) >= s.workers*t+s.remainingWork(t) {
				pick = fair
			}
		}
	}
	s.dequeue(pick)
	pick.state = jobRunning
	pick.started = t
	pick.Started = now
	s.running = append(s.running, pick)
	ten := s.tenant(pick.Tenant)
	ten.running++
	s.vtime = ten.served
	// At least a millisecond, so that jobs with no estimate yet still
	// take turns.
	ten.served += max(int64(pick.Planned), int64(time.Millisecond))
	return pick, dropped
}

// Unreachable removes every waiting job whose latest start has passed
// (Schedulable only) and returns them, so that the caller answers them at
// once rather than at their deadlines.
func (s *Scheduler) Unreachable(now time.Time) []*Job {
	if s.cfg.Policy != Schedulable {
		return nil
	}
	t := s.tick(now)
	if s.queue.root == nil || s.queue.root.minLatest >= t {
		return nil
	}
	out := s.queue.unreachable(t, nil)
	for _, j := range out {
		s.dequeue(j)
		j.state = jobGone
	}
	return out
}

func (s *Scheduler) dequeue(j *Job) {
	s.queue.remove(j)
	ten := s.tenant(j.Tenant)
	ten.waiting.remove(j)
	ten.queued -= int64(j.Planned)
	ten.jobs--
}

// Remove takes a waiting job out (its caller went away); it reports false
// when j was not waiting.
func (s *Scheduler) Remove(j *Job) bool {
	if j.state != jobQueued {
		return false
	}
	s.dequeue(j)
	j.state = jobGone
	return true
}

// Done reports that a running job left its worker after took; completed
// says it ran to its end, so its run time teaches the estimator.
func (s *Scheduler) Done(j *Job, took time.Duration, completed bool) {
	if j.state != jobRunning {
		return
	}
	for i, r := range s.running {
		if r == j {
			last := len(s.running) - 1
			s.running[i] = s.running[last]
			s.running[last] = nil
			s.running = s.running[:last]
			break
		}
	}
	j.state = jobGone
	s.tenant(j.Tenant).running--
	if completed {
		s.est.observe(j.Model, j.Cost, j.Mean, took)
	}
}

// Each calls fn with every waiting job in the order they will be served,
// with the number of jobs ahead of it. O(n).
func (s *Scheduler) Each(fn func(ahead int, j *Job)) { s.queue.each(fn) }

// Wait is the planned wait for a worker of a job that would be queued
// now behind every waiting job: (R + queued planned work) ÷ W.
func (s *Scheduler) Wait(now time.Time) time.Duration {
	t := s.tick(now)
	return time.Duration((s.remainingWork(t) + s.queue.root.sum()) / s.workers)
}
