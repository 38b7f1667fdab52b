package sched

import (
	"math"
	"slices"
	"time"
)

// Estimator constants. They are documented in the package doc; the
// simulator's figures were made with these values.
const (
	// rateWeight is the weight of the newest run in a model's learned rate
	// (an exponentially weighted moving average): high enough to follow a
	// warming GPU within a few jobs, low enough that one straggler moves
	// the mean by a fifth at most.
	rateWeight = 0.2
	// maxRateStep bounds one sample against the current rate: a job 5×
	// slower than planned moves the rate as a job 2× slower would.
	maxRateStep = 2
	// minLearnCost is the smallest job (in megapixel-steps) the rate
	// learns from: below it (about a 512×512 image at 2 steps) a job's
	// time is mostly overhead, and dividing jitter by a tiny cost swings
	// the rate by orders of magnitude. The ratio distribution learns from
	// every job.
	minLearnCost = 0.5
	// ratioWindow is how many recent actual ÷ mean ratios a model keeps.
	ratioWindow = 256
	// minRatioSamples is how many ratios a model needs before its quantile
	// is trusted; until then the planning factor is ColdFactor.
	minRatioSamples = 20
	// ColdFactor is the planning factor (planned = mean × factor) of a
	// model with fewer than minRatioSamples completed jobs, or the observed
	// quantile if that is larger. At coefficient of variation 0.3 a
	// log-normal run time exceeds 1.5× its mean once in a hundred.
	ColdFactor = 1.5
	// minFactor keeps a planned run time from collapsing when a model's
	// mean is far too high for a while.
	minFactor = 0.25
)

// estimator predicts a job's run time on an idle worker:
//
//	mean    = overhead + rate(model) × cost
//	planned = mean × quantile_q(actual ÷ mean, over the model's last runs)
//
// where cost is in megapixel-steps (width × height / 10⁶ × steps ×
// images). The rate starts from a calibration or a configured value and
// follows completed jobs; the ratio distribution is what makes planning
// honest about noise: admission plans with planned, not with mean. A zero
// rate and zero overhead estimate every job at 0, which admits everything:
// the safe answer when nothing is known yet.
type estimator struct {
	quantile float64
	overhead time.Duration
	base     float64 // seconds per megapixel-step for models without a learned rate
	models   map[string]*modelStats
}

type modelStats struct {
	rate    float64
	hasRate bool
	ring    [ratioWindow]float64
	n, next int
	sorted  []float64 // the ring's values, ascending
	factor  float64   // planning factor from sorted, cached
}

func newEstimator(quantile float64, overhead time.Duration, base float64) *estimator {
	return &estimator{quantile: quantile, overhead: overhead, base: base, models: map[string]*modelStats{}}
}

func (e *estimator) model(name string) *modelStats {
	m := e.models[name]
	if m == nil {
		m = &modelStats{factor: ColdFactor}
		e.models[name] = m
	}
	return m
}

// estimate returns the mean and planned run times of a job.
func (e *estimator) estimate(model string, cost float64) (mean, planned time.Duration) {
	rate, factor := e.base, ColdFactor
	if m := e.models[model]; m != nil {
		if m.hasRate {
			rate = m.rate
		}
		factor = m.factor
	}
	mean = e.overhead + time.Duration(rate*cost*float64(time.Second))
	return mean, time.Duration(float64(mean) * factor)
}

// observe learns from a job that ran to completion: took is its actual
// run time, mean the mean estimate it was planned with. Jobs cut short
// (cancelled, past their deadline, crashed) are not observed: their run
// time says only that the job was at least that slow, and ignoring them
// biases the estimate low by the few runs the deadline censors.
func (e *estimator) observe(model string, cost float64, mean, took time.Duration) {
	m := e.model(model)
	if mean > 0 {
		m.addRatio(float64(took) / float64(mean))
		m.factor = m.planningFactor(e.quantile)
	}
	if cost < minLearnCost {
		return
	}
	sample := max(0, (took-e.overhead).Seconds()) / cost
	rate := e.base
	if m.hasRate {
		rate = m.rate
	}
	m.hasRate = true
	if rate <= 0 {
		m.rate = sample
		return
	}
	sample = min(max(sample, rate/maxRateStep), rate*maxRateStep)
	m.rate = rate + rateWeight*(sample-rate)
}

func (m *modelStats) addRatio(r float64) {
	if math.IsNaN(r) || math.IsInf(r, 0) {
		return
	}
	if m.n == ratioWindow {
		old := m.ring[m.next]
		i, _ := slices.BinarySearch(m.sorted, old)
		m.sorted = slices.Delete(m.sorted, i, i+1)
	} else {
		m.n++
	}
	m.ring[m.next] = r
	m.next = (m.next + 1) % ratioWindow
	i, _ := slices.BinarySearch(m.sorted, r)
	m.sorted = slices.Insert(m.sorted, i, r)
}

// planningFactor is the q-quantile of the ratios (nearest rank), or the
// cold factor while there are too few.
func (m *modelStats) planningFactor(q float64) float64 {
	if m.n == 0 {
		return ColdFactor
	}
	rank := int(math.Ceil(q*float64(m.n))) - 1
	f := m.sorted[min(max(rank, 0), m.n-1)]
	if m.n < minRatioSamples {
		f = max(f, ColdFactor)
	}
	return max(f, minFactor)
}

// calibrate sets the overhead and base rate from two measured runs of
// different cost. Noise can make the slope negative on a busy machine; it is
// clamped so that estimates never shrink with cost.
func (e *estimator) calibrate(smallCost float64, small time.Duration, bigCost float64, big time.Duration) {
	rate := 0.0
	if bigCost > smallCost {
		rate = max(0, (big-small).Seconds()/(bigCost-smallCost))
	}
	e.base = rate
	e.overhead = max(0, small-time.Duration(rate*smallCost*float64(time.Second)))
}

// conditional is the planned time left of a job of this model that has
// run for elapsed and was planned with mean: the quantile of the model's
// actual ÷ mean ratios among those above elapsed ÷ mean, times mean, less
// elapsed. ok is false when the model has too few ratios, or none above.
func (e *estimator) conditional(model string, mean, elapsed time.Duration) (left time.Duration, ok bool) {
	m := e.models[model]
	if m == nil || m.n < minRatioSamples || mean <= 0 {
		return 0, false
	}
	x := float64(elapsed) / float64(mean)
	i, _ := slices.BinarySearch(m.sorted, math.Nextafter(x, math.Inf(1)))
	c := m.n - i
	if c == 0 {
		return 0, false
	}
	rank := i + int(math.Ceil(e.quantile*float64(c))) - 1
	f := m.sorted[min(max(rank, i), m.n-1)]
	return max(0, time.Duration(f*float64(mean))-elapsed), true
}
