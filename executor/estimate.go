package executor

import (
	"sync"
	"time"

	workerv1 "github.com/hourglass-dev/hourglass/gen/hourglass/worker/v1"
)

// ewmaWeight is the weight of the newest run in a model's learned rate:
// high enough to follow a warming GPU within a few jobs, low enough that
// one job slowed by a noisy neighbour does not swing admission.
const ewmaWeight = 0.3

// estimator predicts how long a job takes on an idle worker:
//
//	run time = overhead + rate(model) × megapixel-steps
//
// where megapixel-steps = width × height / 10⁶ × steps × images. The rate
// starts from a calibration at start-up (or a configured value) and follows
// completed jobs by an exponentially weighted moving average, per model.
// A zero rate estimates every job at the overhead, which admits everything:
// the safe answer when nothing is known yet.
type estimator struct {
	mu       sync.Mutex
	overhead time.Duration
	base     float64            // seconds per megapixel-step for unseen models
	rates    map[string]float64 // learned per model
}

func newEstimator(secondsPerMegapixelStep float64, overhead time.Duration) *estimator {
	return &estimator{base: secondsPerMegapixelStep, overhead: overhead, rates: map[string]float64{}}
}

// megapixelSteps is a job's cost in the estimator's unit.
func megapixelSteps(j *workerv1.Job) float64 {
	return float64(j.GetWidth()) * float64(j.GetHeight()) / 1e6 *
		float64(j.GetSteps()) * float64(j.GetImageCount())
}

// estimate is the predicted run time of a job of this cost.
func (e *estimator) estimate(model string, mps float64) time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	rate, ok := e.rates[model]
	if !ok {
		rate = e.base
	}
	return e.overhead + time.Duration(rate*mps*float64(time.Second))
}

// minLearnMPS is the smallest job the rate learns from: below it (about a
// 512×512 image at 2 steps) a job's time is mostly overhead and noise, and
// dividing a few milliseconds of jitter by a tiny cost swings the rate by
// orders of magnitude.
const minLearnMPS = 0.5

// maxSampleRatio bounds one sample against the current rate, so that one
// job slowed by a busy machine (or sped up by a warm cache) moves the
// estimate, but cannot make it refuse or admit everything at once.
const maxSampleRatio = 4

// observe learns from a job that ran to completion.
func (e *estimator) observe(model string, mps float64, took time.Duration) {
	if mps < minLearnMPS {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	sample := max(0, (took-e.overhead).Seconds()) / mps
	rate, ok := e.rates[model]
	if !ok {
		rate = e.base
	}
	if rate <= 0 {
		e.rates[model] = sample
		return
	}
	sample = min(max(sample, rate/maxSampleRatio), rate*maxSampleRatio)
	e.rates[model] = rate + ewmaWeight*(sample-rate)
}

// calibrate sets the overhead and base rate from two measured runs of
// different cost. Noise can make the slope negative on a busy machine; it is
// clamped so that estimates never shrink with cost.
func (e *estimator) calibrate(smallMPS float64, small time.Duration, bigMPS float64, big time.Duration) {
	rate := 0.0
	if bigMPS > smallMPS {
		rate = max(0, (big-small).Seconds()/(bigMPS-smallMPS))
	}
	overhead := max(0, small-time.Duration(rate*smallMPS*float64(time.Second)))
	e.mu.Lock()
	defer e.mu.Unlock()
	e.base, e.overhead = rate, overhead
}

// snapshot returns the overhead and base rate, for logs.
func (e *estimator) snapshot() (time.Duration, float64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.overhead, e.base
}
