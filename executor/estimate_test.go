package executor

import (
	"math"
	"testing"
	"time"

	workerv1 "github.com/hourglass-dev/hourglass/gen/hourglass/worker/v1"
)

func TestMegapixelSteps(t *testing.T) {
	tests := []struct {
		job  *workerv1.Job
		want float64
	}{
		{&workerv1.Job{Width: 1000, Height: 1000, Steps: 1, ImageCount: 1}, 1},
		{&workerv1.Job{Width: 512, Height: 512, Steps: 30, ImageCount: 2}, 512 * 512 / 1e6 * 60},
		{&workerv1.Job{Width: 2048, Height: 2048, Steps: 150, ImageCount: 32}, 2048 * 2048 / 1e6 * 150 * 32},
	}
	for _, tt := range tests {
		if got := megapixelSteps(tt.job); math.Abs(got-tt.want) > 1e-9*tt.want {
			t.Errorf("megapixelSteps(%v) = %v; want %v", tt.job, got, tt.want)
		}
	}
}

func TestEstimator(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name    string
		setup   func(*estimator)
		model   string
		mps     float64
		want    time.Duration
		epsilon time.Duration
	}{
		{name: "unknown admits everything", setup: func(*estimator) {}, mps: 1000, want: 0},
		{name: "configured rate", setup: func(e *estimator) { e.base, e.overhead = 0.01, 5*ms }, mps: 10, want: 105 * ms},
		{name: "calibrated", setup: func(e *estimator) { e.calibrate(1, 20*ms, 11, 120*ms) }, mps: 21, want: 220 * ms, epsilon: ms},
		{name: "calibration noise never gives a negative rate",
			setup: func(e *estimator) { e.calibrate(1, 50*ms, 11, 40*ms) }, mps: 100, want: 50 * ms},
		{name: "first observation sets the model's rate when nothing is known",
			setup: func(e *estimator) { e.observe("m", 10, time.Second) }, model: "m", mps: 20, want: 2 * time.Second, epsilon: ms},
		{name: "later observations move by the EWMA weight",
			setup: func(e *estimator) { e.observe("m", 1, time.Second); e.observe("m", 1, 2*time.Second) },
			model: "m", mps: 1, want: 1300 * ms, epsilon: ms},
		{name: "a model's first observation moves from the base rate",
			setup: func(e *estimator) { e.base = 1; e.observe("m", 1, 2*time.Second) }, model: "m", mps: 1, want: 1300 * ms, epsilon: ms},
		{name: "other models keep the base rate",
			setup: func(e *estimator) { e.base = 0.5; e.observe("m", 1, 10*time.Second) }, model: "other", mps: 2, want: time.Second},
		{name: "tiny jobs teach nothing",
			setup: func(e *estimator) { e.base = 0.01; e.observe("m", 0.004, 70*ms) }, model: "m", mps: 10, want: 100 * ms, epsilon: ms},
		{name: "one slow outlier moves the rate by at most the weight times 4x",
			setup: func(e *estimator) { e.base = 0.01; e.observe("m", 1, time.Hour) }, model: "m", mps: 100,
			want: time.Duration((0.01 + 0.3*(0.04-0.01)) * 100 * float64(time.Second)), epsilon: ms},
		{name: "a too-fast sample cannot collapse the rate",
			setup: func(e *estimator) { e.base = 0.01; e.observe("m", 1, 0) }, model: "m", mps: 100,
			want: time.Duration((0.01 + 0.3*(0.0025-0.01)) * 100 * float64(time.Second)), epsilon: ms},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEstimator(0, 0)
			tt.setup(e)
			got := e.estimate(tt.model, tt.mps)
			if d := got - tt.want; d > tt.epsilon || d < -tt.epsilon {
				t.Fatalf("estimate(%q, %v) = %v; want %v", tt.model, tt.mps, got, tt.want)
			}
		})
	}
}
