// Package sched is hourglass's scheduling core: admission, queue order,
// the per-tenant fair share, dispatch and the run-time estimator. It has
// no goroutines, processes, sockets or clock: the executor passes time and
// events in under its own lock, and the simulator drives the very same
// code in virtual time, so that its promises are tested over millions of
// simulated jobs as well as over a few real ones.
//
// # The promise
//
// An admitted job finishes before its deadline unless a worker fails or
// runs slower than planned. Admission is a schedulability test: a job is
// admitted only if, by the planned run times, it and every job already
// admitted still finish before their deadlines, in the order the queue
// will serve them. Admitting a job never breaks a promise made to an
// earlier one.
//
// # The test
//
// The queue is served earliest deadline first (ties in arrival order) by
// W identical workers, each taking the next job when it frees. Let R be
// the planned work left on the running jobs (see "A running job" below)
// and A(k) the planned work of the queued jobs served
// before job k. Until k starts, every worker is busy with a running job
// or one served before k, so k starts no later than now + (R + A(k)) / W
// (list scheduling's bound, exact on one worker and conservative by less
// than one job on several). Job k therefore keeps its promise if
//
//	W·latest(k) − A(k) ≥ W·now + R,   latest(k) = deadline(k) − planned(k).
//
// A new job x changes nothing for the jobs served before it and adds
// planned(x) to A(k) of every job served after it. So x is admitted when
// its own inequality holds and, over the jobs after it, the least of
// W·latest(k) − A(k) minus planned(x) still covers W·now + R. The queue is
// a treap whose nodes carry, per subtree, the job count, the summed planned
// work and that least key (relative to the subtree's start), so both
// checks, insertion, removal and dispatch take O(log n); with 10,000
// waiting jobs an admission costs microseconds. The bound holds for the
// schedule that runs as planned, whatever happens after admission: later
// admissions and dispatches are checked against it, and run times shorter
// than planned only make jobs start earlier. (Re-evaluated later, R may
// grow while a job runs long, see below: that makes later admissions
// more careful, it does not revoke a promise.)
//
// # Estimates carry their spread
//
// The estimator learns per model a rate (an exponentially weighted mean of
// seconds per megapixel-step) and the distribution of actual ÷ mean run
// time over the model's last 256 completed jobs. A job is planned with the
// Config.Quantile (default 0.97) of that distribution times its mean, not
// with the mean. A model with fewer than 20 completed jobs is planned with
// ColdFactor (1.5) times the mean, or the observed quantile if larger. A
// straggler moves the quantile by one sample in 256 and the rate by at
// most a fifth, so one slow job does not make admission refuse everything
// after it. Jobs that did not complete (cancelled, past their deadline,
// crashed) are not learned from.
//
// # A running job
//
// What is left of a running job is planned from the same spread, given how
// long it has run: the Quantile of its model's ratios among those above
// its elapsed ÷ mean, times its mean, less the time elapsed (never less
// than what is left of its plan). A job that has run long is likely to run
// longer, and new promises are planned behind it accordingly. Past every
// ratio observed (a straggler) it is planned to need its planned run time
// once more; and never past its deadline, where the executor cancels it.
// A job that overruns can still break the promises made behind it before
// it did (workers are not preempted); this keeps admission from piling new
// promises onto a worker that is not about to free.
//
// # A job that can no longer finish is not started
//
// Next drops every job at the head of the queue whose latest start has
// passed, and Unreachable drops them wherever they are; the executor
// answers them DEADLINE_EXCEEDED (reason DEADLINE_UNREACHABLE) without
// touching a worker, and also arms a timer at each queued job's latest
// start so that the caller learns at once.
//
// # The fair share
//
// Earliest deadline first alone would let a tenant that floods the queue
// book all of the workers' future. So a tenant is also refused (OverShare)
// when the planned work it holds (queued, plus what is left of its running
// jobs) would exceed its share of the workers' time before the new job's
// deadline. Its share is what the other recently active tenants leave: each
// keeps min(its recent demand, 1/n) with a quarter of headroom, where n
// counts tenants with work held or demand in the last DemandWindow, and
// no share falls below 1/n. Demand is the planned work a tenant asked for,
// admitted or not, except jobs that could not finish even on an idle
// worker. A tenant whose own demand is within its share (with the same
// headroom) is never refused over it: it is not the one booking the
// others' time. A tenant that holds nothing may always queue one job, and
// the schedulability test applies to every tenant alike. The share is
// checked at admission rather than by reordering the queue, because
// reordering would break promises already made; dispatch serves the
// least-served tenant first only where that keeps every promise.
//
// What the share cannot do is free a worker: a light tenant's job whose
// slack is shorter than the flooder's jobs already running waits for one
// of them to end (workers are not preempted), so such impatient jobs fit
// beside a flood far less often than on an idle pool. Jobs with slack for
// a busy worker to free are served nearly as if the flooder were absent
// (the simulator's flood experiment measures both).
//
// # Refusals say when to come back
//
// Every refusal carries RetryAfter from the schedule: for a job that does
// not fit, the time until enough planned work drains that the same job,
// sent again with the same timeout, would fit (counting the work that its
// later deadline lets go ahead of it); for a full queue, when the first
// running job is planned to end; for a tenant over its share, when its held
// work drains at its share.
//
// # Policies
//
// Schedulable is the above. PointEstimate is the previous policy, kept
// for side-by-side comparison: it plans with the mean, checks only the new
// job's own wait and starts whatever it dispatches. FIFO admits whatever
// the queue has room for and serves it in arrival order.
package sched
