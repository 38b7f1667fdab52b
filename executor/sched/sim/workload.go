// Package sim is a deterministic discrete-event simulator of hourglass's
// scheduling core. It drives the real sched.Scheduler in virtual time
// against seeded workloads (arrivals, job sizes, run-time noise,
// stragglers, deadline classes, tenants) and reports what each policy made
// of them: goodput, kept promises, wasted worker time, refusals, and each
// tenant's share. The same seed gives the same workload, so policies are
// compared on identical jobs, and tests may assert on the results.
//
// The simulated executor behaves as the real one: on arrival it calls
// Unreachable, then Admit; while a worker is idle and jobs wait it calls
// Next and answers the jobs it drops as DEADLINE_UNREACHABLE, unstarted; a
// running job whose deadline passes is cancelled then (its worker time is
// wasted) and a queued one is Removed; Done reports every job that leaves a
// worker, completed only when it finished. The naive FIFO pool cancels
// nothing, so its jobs run to their end however late, queued ones too. The
// estimator starts from Calibrate on two noisy runs, as hourglassd's does,
// and learns from completions. Workers are identical and never fail;
// dispatch and cancellation cost no time.
//
// Events are kept by value in a binary heap and jobs are recycled, so a
// run allocates next to nothing beyond what the scheduler does; a million
// jobs take seconds on one core.
package sim

import (
	"math"
	"math/rand/v2"
	"time"
)

// DeadlineClass is a share of the jobs whose deadline is a multiple of the
// job's own idle run time (its true mean, T0).
type DeadlineClass struct {
	Name  string
	Share float64
	Mult  float64
}

// Figure4Deadlines is the deadline mix of the real benchmark (figure 4):
// a fifth of the jobs cannot finish even on an idle worker.
var Figure4Deadlines = []DeadlineClass{
	{"impossible", 0.20, 0.5},
	{"tight", 0.30, 2},
	{"moderate", 0.30, 5},
	{"generous", 0.20, 20},
}

// SizeClass is one component of the job-cost mixture: a log-normal cost in
// megapixel-steps with the given median and log-space spread.
type SizeClass struct {
	Share  float64
	Median float64
	Sigma  float64
}

// DefaultSizes is a mixture of small jobs (previews, thumbnails) and large
// ones (full-size images), about 8× apart.
var DefaultSizes = []SizeClass{
	{Share: 0.7, Median: 0.5, Sigma: 0.4},
	{Share: 0.3, Median: 4, Sigma: 0.4},
}

// Tenant is one caller's stream of jobs.
type Tenant struct {
	Name string
	// Load is the tenant's offered load, in multiples of the workers'
	// capacity (1 = as much work as the workers can do).
	Load float64
	// Bursty alternates on and off periods (mean BurstPeriod each) with
	// arrivals only while on, at twice the rate, so the mean load is
	// unchanged.
	Bursty bool
}

// Workload describes one simulated run. Zero fields take the defaults
// noted.
type Workload struct {
	Seed uint64
	// Jobs is how many jobs arrive, over all tenants; or, when Duration is
	// set, arrivals stop at that simulated time instead (so that runs with
	// different tenants offer a tenant the very same jobs).
	Jobs     int
	Duration time.Duration
	Workers  int
	// QueueMax bounds the queue (default 256, as hourglassd).
	QueueMax int
	Tenants  []Tenant
	// Deadlines defaults to Figure4Deadlines, Sizes to DefaultSizes.
	Deadlines []DeadlineClass
	Sizes     []SizeClass
	// Overhead and Rate are the true cost model: a job's mean run time is
	// Overhead + Rate × cost (defaults 20 ms and 0.2 s per megapixel-step,
	// so jobs take about 0.1 s to 1 s).
	Overhead time.Duration
	Rate     float64
	// CV is the run-time noise: each run is its mean times a log-normal
	// factor of mean 1 and this coefficient of variation.
	CV float64
	// Stragglers is the share of runs StragglerFactor (default 5) times
	// slower than their noisy time.
	Stragglers      float64
	StragglerFactor float64
	// CalibrationError: the estimator starts, as the executor's does, from
	// sched.Scheduler.Calibrate on two measured runs of the executor's
	// calibration jobs (64×64 at 2 steps and 512×512 at 8 steps), each
	// with the workload's run-time noise and, on top, this relative
	// slowdown (a machine busy while it calibrates). Then it learns from
	// the jobs that complete.
	CalibrationError float64
	// Exact makes every run take exactly the scheduler's mean estimate
	// made at admission (no noise, no stragglers), with the estimator
	// seeded with the true cost model instead of a calibration: the case
	// in which no admitted job may miss.
	Exact bool
	// Patience marks the jobs whose slack (timeout minus true mean run
	// time) is at least this long: jobs that can wait for a busy worker to
	// free. TenantResult counts them apart (0: none marked).
	Patience time.Duration
	// BurstPeriod is the mean length of a bursty tenant's on and off
	// periods (default 2 s).
	BurstPeriod time.Duration
	// Quantile is the scheduler's planning quantile (0: the scheduler's
	// default).
	Quantile float64
}

func (w *Workload) setDefaults() {
	if w.Workers < 1 {
		w.Workers = 1
	}
	if w.QueueMax <= 0 {
		w.QueueMax = 256
	}
	if len(w.Deadlines) == 0 {
		w.Deadlines = Figure4Deadlines
	}
	if len(w.Sizes) == 0 {
		w.Sizes = DefaultSizes
	}
	if w.Overhead <= 0 {
		w.Overhead = 20 * time.Millisecond
	}
	if w.Rate <= 0 {
		w.Rate = 0.2
	}
	if w.StragglerFactor <= 0 {
		w.StragglerFactor = 5
	}
	if w.BurstPeriod <= 0 {
		w.BurstPeriod = 2 * time.Second
	}
	if len(w.Tenants) == 0 {
		w.Tenants = []Tenant{{Name: "t0", Load: 1}}
	}
}

// meanCost is the mean of the size mixture, in megapixel-steps.
func (w *Workload) meanCost() float64 {
	m, total := 0.0, 0.0
	for _, c := range w.Sizes {
		m += c.Share * c.Median * math.Exp(c.Sigma*c.Sigma/2)
		total += c.Share
	}
	return m / total
}

// meanRunTime is the mean true run time of a job of the mixture.
func (w *Workload) meanRunTime() time.Duration {
	return w.Overhead + time.Duration(w.Rate*w.meanCost()*float64(time.Second))
}

// The costs of the executor's calibration jobs, in megapixel-steps.
const (
	calibrationSmall = 64 * 64 / 1e6 * 2
	calibrationBig   = 512 * 512 / 1e6 * 8
)

// calibration draws the two measured calibration runs, from a stream of
// their own so that the jobs do not depend on it.
func (w *Workload) calibration() (small, big time.Duration) {
	rng := rand.New(rand.NewPCG(w.Seed, 0))
	run := func(cost float64) time.Duration {
		mean := float64(w.Overhead) + w.Rate*cost*float64(time.Second)
		return time.Duration(mean * w.noise(rng) * (1 + w.CalibrationError))
	}
	return run(calibrationSmall), run(calibrationBig)
}

// noise draws a log-normal factor of mean 1 and coefficient of variation
// w.CV.
func (w *Workload) noise(rng *rand.Rand) float64 {
	if w.CV <= 0 {
		return 1
	}
	sigma := math.Sqrt(math.Log(1 + w.CV*w.CV))
	return math.Exp(sigma*rng.NormFloat64() - sigma*sigma/2)
}

// arrivals generates one tenant's jobs.
type arrivals struct {
	w       *Workload
	tenant  int
	rng     *rand.Rand
	rate    float64 // jobs per second while on
	now     float64 // seconds
	on      bool
	switch_ float64 // when a bursty stream turns on or off
}

func newArrivals(w *Workload, tenant int) *arrivals {
	t := w.Tenants[tenant]
	a := &arrivals{w: w, tenant: tenant, rng: rand.New(rand.NewPCG(w.Seed, uint64(tenant)+1)), on: true}
	// Load × workers ÷ mean run time jobs per second.
	a.rate = t.Load * float64(w.Workers) / w.meanRunTime().Seconds()
	if t.Bursty {
		a.rate *= 2
		a.switch_ = a.rng.ExpFloat64() * w.BurstPeriod.Seconds()
	}
	return a
}

// next returns the time of the tenant's next arrival, in seconds.
func (a *arrivals) next() float64 {
	if a.rate <= 0 {
		return math.Inf(1)
	}
	for {
		gap := a.rng.ExpFloat64() / a.rate
		if !a.w.Tenants[a.tenant].Bursty {
			a.now += gap
			return a.now
		}
		if !a.on {
			a.now = a.switch_
			a.on = true
			a.switch_ = a.now + a.rng.ExpFloat64()*a.w.BurstPeriod.Seconds()
			continue
		}
		if a.now+gap < a.switch_ {
			a.now += gap
			return a.now
		}
		// Memoryless: the arrivals after an off period start afresh.
		a.now = a.switch_
		a.on = false
		a.switch_ = a.now + a.rng.ExpFloat64()*a.w.BurstPeriod.Seconds()
	}
}

// drawn is one job as drawn from a tenant's stream.
type drawn struct {
	cost      float64
	class     int
	size      int
	noise     float64
	straggler bool
}

// job draws the next job's cost, deadline class and run-time factor.
func (a *arrivals) job() drawn {
	w := a.w
	var d drawn
	u := a.rng.Float64()
	total := 0.0
	for _, c := range w.Sizes {
		total += c.Share
	}
	d.size = len(w.Sizes) - 1
	for acc, i := 0.0, 0; i < len(w.Sizes); i++ {
		acc += w.Sizes[i].Share / total
		if u < acc {
			d.size = i
			break
		}
	}
	size := w.Sizes[d.size]
	d.cost = size.Median * math.Exp(size.Sigma*a.rng.NormFloat64())
	u = a.rng.Float64()
	d.class = len(w.Deadlines) - 1
	for acc, i := 0.0, 0; i < len(w.Deadlines); i++ {
		acc += w.Deadlines[i].Share
		if u < acc {
			d.class = i
			break
		}
	}
	d.noise = w.noise(a.rng)
	if w.Stragglers > 0 && a.rng.Float64() < w.Stragglers {
		d.noise *= w.StragglerFactor
		d.straggler = true
	}
	return d
}
