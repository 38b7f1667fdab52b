package sched

import (
	"testing"
	"time"
)

var epoch = time.Unix(1_000_000, 0)

// at is epoch + d.
func at(d time.Duration) time.Time { return epoch.Add(d) }

// newSched is one worker, jobs of cost c planned at c seconds (rate 1,
// no overhead) times the cold factor.
func newSched(workers, queueMax int) *Scheduler {
	return New(Config{Workers: workers, QueueMax: queueMax, SecondsPerMegapixelStep: 1}, epoch)
}

func job(tenant string, cost float64, deadline time.Duration) *Job {
	return &Job{Tenant: tenant, Model: "m", Cost: cost, Deadline: at(deadline)}
}

// Each reason of a refusal, from the schedule as it stands.
func TestAdmissionReasons(t *testing.T) {
	const planned = 1500 * time.Millisecond // cost 1 × cold factor 1.5
	tests := []struct {
		name    string
		setup   func(s *Scheduler)
		job     *Job
		want    Reason // 0: admitted
		blocked bool
	}{
		{name: "idle worker, time enough", job: job("a", 1, 2*time.Second)},
		{name: "too short even when idle", job: job("a", 1, time.Second), want: TooShort},
		{name: "own wait too long", setup: func(s *Scheduler) {
			mustAdmit(t, s, job("a", 1, time.Hour)) // runs now
			s.Next(epoch)
		}, job: job("a", 1, 2*time.Second), want: Overloaded},
		{name: "fits after the running job", setup: func(s *Scheduler) {
			mustAdmit(t, s, job("a", 1, time.Hour))
			s.Next(epoch)
		}, job: job("a", 1, 2*planned)},
		{name: "would make an admitted job miss", setup: func(s *Scheduler) {
			mustAdmit(t, s, job("a", 1, time.Hour))
			s.Next(epoch)
			// Queued with no slack at all: starts at 1.5 s, ends at 3 s.
			mustAdmit(t, s, job("a", 1, 2*planned))
		}, job: job("a", 0.2, 2900*time.Millisecond), want: Overloaded, blocked: true},
		{name: "queue full", setup: func(s *Scheduler) {
			mustAdmit(t, s, job("a", 1, time.Hour))
			s.Next(epoch)
			mustAdmit(t, s, job("a", 1, time.Hour))
		}, job: job("a", 1, time.Hour), want: QueueFull},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			queueMax := 2
			if tt.want == QueueFull {
				queueMax = 1
			}
			s := newSched(1, queueMax)
			if tt.setup != nil {
				tt.setup(s)
			}
			r := s.Admit(epoch, tt.job)
			switch {
			case tt.want == 0 && r != nil:
				t.Fatalf("Admit = %v; want admitted", r)
			case tt.want != 0 && r == nil:
				t.Fatalf("Admit admitted; want %v", tt.want)
			case r != nil && (r.Reason != tt.want || r.Blocked != tt.blocked):
				t.Fatalf("Admit = %v (blocked %v); want %v (blocked %v)", r.Reason, r.Blocked, tt.want, tt.blocked)
			case r != nil && r.Reason != TooShort && r.RetryAfter <= 0:
				t.Fatalf("Admit = %v with RetryAfter %v; want a delay", r, r.RetryAfter)
			}
		})
	}
}

func mustAdmit(t *testing.T, s *Scheduler, j *Job) {
	t.Helper()
	if r := s.Admit(epoch, j); r != nil {
		t.Fatalf("Admit(%+v) = %v; want admitted", j, r)
	}
}

// RetryAfter is when the same job, sent again with the same timeout,
// would fit: here when the running job's plan has 2 s left.
func TestRetryAfterFromTheSchedule(t *testing.T) {
	s := newSched(1, 10)
	mustAdmit(t, s, job("a", 4, time.Hour)) // planned 6 s, running from now
	s.Next(epoch)
	r := s.Admit(epoch, job("a", 0.2, 2300*time.Millisecond)) // planned 0.3 s, 2.3 s left
	if r == nil || r.Reason != Overloaded {
		t.Fatalf("Admit = %v; want overloaded", r)
	}
	// Lateness: 6 s + 0.3 s − 2.3 s = 4 s.
	if want := 4 * time.Second; r.RetryAfter != want {
		t.Fatalf("RetryAfter = %v; want %v", r.RetryAfter, want)
	}
	if r2 := s.Admit(at(r.RetryAfter), job("a", 0.2, r.RetryAfter+2300*time.Millisecond)); r2 != nil {
		t.Fatalf("the same job after RetryAfter = %v; want admitted", r2)
	}
}

// A job whose latest start passes while it waits leaves the queue unstarted.
func TestNextDropsUnreachableJobs(t *testing.T) {
	s := newSched(1, 10)
	first := job("a", 1, time.Hour)
	mustAdmit(t, s, first)
	s.Next(epoch)
	late := job("a", 1, 4*time.Second) // planned 1.5 s: latest start 2.5 s
	mustAdmit(t, s, late)
	// The running job overruns its plan: at 3 s the worker frees.
	s.Done(first, 3*time.Second, true)
	next, dropped := s.Next(at(3 * time.Second))
	if next != nil || len(dropped) != 1 || dropped[0] != late {
		t.Fatalf("Next at 3 s = %v, dropped %v; want nothing started and the late job dropped", next, dropped)
	}
	if s.Len() != 0 {
		t.Fatalf("queue length %d; want 0", s.Len())
	}
}

// The planning factor: cold 1.5; then the quantile of actual ÷ mean; one
// straggler neither moves the quantile nor swings the rate far.
func TestEstimatorSpread(t *testing.T) {
	e := newEstimator(0.97, 0, 1) // 1 s per megapixel-step
	if mean, planned := e.estimate("m", 2); mean != 2*time.Second || planned != 3*time.Second {
		t.Fatalf("cold estimate = %v, %v; want 2s, 3s (the cold factor)", mean, planned)
	}
	for i := range 100 {
		// Actual ÷ mean cycles through 0.9, 1.0, 1.1.
		took := time.Duration(float64(2*time.Second) * (0.9 + 0.1*float64(i%3)))
		mean, _ := e.estimate("m", 2)
		e.observe("m", 2, mean, took)
	}
	mean, planned := e.estimate("m", 2)
	factor := float64(planned) / float64(mean)
	if factor < 1.05 || factor > 1.15 {
		t.Fatalf("planning factor after 100 runs = %.3f; want about the 0.97 quantile of the ratios (1.1)", factor)
	}
	e.observe("m", 2, mean, 5*mean) // a straggler
	mean2, planned2 := e.estimate("m", 2)
	if ratio := float64(mean2) / float64(mean); ratio > 1.21 {
		t.Fatalf("one 5× straggler moved the mean by %.2f×; want at most 1.2×", ratio)
	}
	if f2 := float64(planned2) / float64(mean2); f2 > factor+0.05 {
		t.Fatalf("one straggler moved the planning factor from %.3f to %.3f", factor, f2)
	}
}

// A tenant flooding the queue is refused over its share while another
// tenant is still admitted.
func TestFairShareRefusesTheFlood(t *testing.T) {
	s := New(Config{Workers: 1, QueueMax: 1000, SecondsPerMegapixelStep: 1}, epoch)
	// Bob asks a little now and then; alice floods with generous jobs.
	mustAdmit(t, s, job("bob", 0.1, time.Minute))
	var refused *Refusal
	for i := range 200 {
		if r := s.Admit(epoch, job("alice", 1, 100*time.Second)); r != nil {
			refused = r
			break
		}
		_ = i
	}
	if refused == nil || refused.Reason != OverShare {
		t.Fatalf("alice's flood: %v; want refused over_share", refused)
	}
	if r := s.Admit(epoch, job("bob", 0.1, 50*time.Second)); r != nil {
		t.Fatalf("bob after alice's flood: %v; want admitted", r)
	}
}
