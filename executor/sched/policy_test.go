package sched

import (
	"math/rand/v2"
	"testing"
	"time"
)

// advance runs s's schedule as planned up to now: each running job ends at
// its planned run time, and a freed worker takes the next job. The runs do
// not teach the estimator, so that plans stay as they were.
func advance(s *Scheduler, now time.Time) {
	for {
		var first *Job
		for _, r := range s.running {
			if first == nil || r.Started.Add(r.Planned).Before(first.Started.Add(first.Planned)) {
				first = r
			}
		}
		if first == nil || first.Started.Add(first.Planned).After(now) {
			break
		}
		end := first.Started.Add(first.Planned)
		s.Done(first, first.Planned, false)
		for s.Running() < s.Workers() {
			if j, _ := s.Next(end); j == nil {
				break
			}
		}
	}
	for s.Running() < s.Workers() {
		if j, _ := s.Next(now); j == nil {
			break
		}
	}
}

// RetryAfter comes from the schedule: it differs with the work queued, a
// job sent again after it is admitted, and one sent again after half of it
// is not.
func TestRetryAfterIsComputedAndPlausible(t *testing.T) {
	seen := map[time.Duration]bool{}
	for _, queued := range []int{0, 1, 3, 6} {
		s := newSched(1, 100)
		mustAdmit(t, s, job("a", 4, time.Hour)) // planned 6 s, starts now
		s.Next(epoch)
		for range queued {
			mustAdmit(t, s, job("a", 1, time.Hour)) // planned 1.5 s each
		}
		// Its deadline falls before the queued jobs', so it would go
		// ahead of them and wait for the running job only.
		const timeout = 3 * time.Second
		r := s.Admit(epoch, job("b", 0.2, timeout))
		if r == nil || r.Reason != Overloaded {
			t.Fatalf("%d queued: Admit = %v; want overloaded", queued, r)
		}
		seen[r.RetryAfter] = true
		if r.RetryAfter < time.Second || r.RetryAfter > 10*time.Second {
			t.Fatalf("%d queued: RetryAfter %v; want about the 3.3 s the running job's plan overruns the deadline", queued, r.RetryAfter)
		}
		half, full := s.cloneAt(epoch.Add(r.RetryAfter/2)), s
		advance(full, epoch.Add(r.RetryAfter))
		if r2 := full.Admit(epoch.Add(r.RetryAfter), job("b", 0.2, r.RetryAfter+timeout)); r2 != nil {
			t.Errorf("%d queued: sent again after RetryAfter %v: %v; want admitted", queued, r.RetryAfter, r2)
		}
		if r2 := half.Admit(epoch.Add(r.RetryAfter/2), job("b", 0.2, r.RetryAfter/2+timeout)); r2 == nil {
			t.Errorf("%d queued: sent again after half of RetryAfter %v: admitted; want still refused", queued, r.RetryAfter)
		}
	}
	// With a later deadline the work queued ahead counts, so RetryAfter
	// grows with it: 6 s running, then 1.5 s per queued job, then the new
	// job's 15 s, which must end by 31 s.
	var last time.Duration
	for _, queued := range []int{7, 9, 12} {
		s := newSched(1, 100)
		mustAdmit(t, s, job("a", 4, time.Hour))
		s.Next(epoch)
		for range queued {
			mustAdmit(t, s, job("a", 1, 30*time.Second))
		}
		r := s.Admit(epoch, job("b", 10, 31*time.Second))
		if r == nil {
			t.Fatalf("%d queued: admitted; want overloaded", queued)
		}
		seen[r.RetryAfter] = true
		if want := time.Duration(queued)*1500*time.Millisecond - 10*time.Second; r.RetryAfter < want {
			t.Errorf("%d queued: RetryAfter %v; want at least the %v its plan overruns", queued, r.RetryAfter, want)
		}
		if r.RetryAfter <= last {
			t.Errorf("%d queued: RetryAfter %v, not above %v with less queued", queued, r.RetryAfter, last)
		}
		last = r.RetryAfter
	}
	if len(seen) < 3 {
		t.Errorf("RetryAfter took %d values over different schedules; want it computed, not constant", len(seen))
	}
}

// cloneAt rebuilds s's schedule advanced to now, for a second try on the
// same state.
func (s *Scheduler) cloneAt(now time.Time) *Scheduler {
	c := New(s.cfg, s.epoch)
	c.est.base, c.est.overhead = s.est.base, s.est.overhead
	for _, r := range s.running {
		j := &Job{Tenant: r.Tenant, Model: r.Model, Cost: r.Cost, Deadline: r.Deadline}
		c.Admit(r.Started, j)
		c.Next(r.Started)
	}
	s.Each(func(_ int, q *Job) {
		c.Admit(q.Enqueued, &Job{Tenant: q.Tenant, Model: q.Model, Cost: q.Cost, Deadline: q.Deadline})
	})
	advance(c, now)
	return c
}

// A running job's planned time left follows its model's spread: within
// its plan it is what is left of the plan; past every run time observed it
// is planned to need its planned run time again, but never beyond its
// deadline, where it is cancelled. The previous policy counts an overrun
// job as about to finish.
func TestRunningJobTimeLeft(t *testing.T) {
	for _, tt := range []struct {
		name     string
		policy   Policy
		elapsed  float64 // × mean
		deadline time.Duration
		want     func(j *Job, now time.Time) time.Duration
	}{
		{name: "within the plan", elapsed: 0.5, deadline: time.Hour,
			want: func(j *Job, now time.Time) time.Duration { return j.Started.Add(j.Planned).Sub(now) }},
		{name: "past every ratio seen", elapsed: 3, deadline: time.Hour,
			want: func(j *Job, _ time.Time) time.Duration { return j.Planned }},
		{name: "past every ratio seen, deadline near", elapsed: 3, deadline: 1300 * time.Millisecond,
			want: func(j *Job, now time.Time) time.Duration { return j.Deadline.Sub(now) }},
		{name: "previous policy: overrun counts 0", policy: PointEstimate, elapsed: 3, deadline: time.Hour,
			want: func(*Job, time.Time) time.Duration { return 0 }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := New(Config{Policy: tt.policy, Workers: 1, QueueMax: 10, SecondsPerMegapixelStep: 1}, epoch)
			// Ratios 1.00 … 1.99; cost below minLearnCost, so the rate
			// stays 1 s per megapixel-step.
			for i := range 100 {
				mean, _ := s.est.estimate("m", 0.4)
				s.est.observe("m", 0.4, mean, time.Duration(float64(mean)*(1+float64(i)/100)))
			}
			j := job("a", 0.4, tt.deadline)
			mustAdmit(t, s, j)
			s.Next(epoch)
			now := epoch.Add(time.Duration(tt.elapsed * float64(j.Mean)))
			if got, want := s.Wait(now), max(0, tt.want(j, now)); got != want {
				t.Fatalf("time left at %.1f× its mean = %v; want %v (planned %v, mean %v)", tt.elapsed, got, want, j.Planned, j.Mean)
			}
		})
	}
	// Within the spread, the time left given how long the job has run is
	// at least what is left of its plan.
	e := newEstimator(0.9, 0, 1)
	for i := range 100 {
		e.observe("m", 0.4, 400*time.Millisecond, time.Duration(400e6*(1+float64(i)/100)))
	}
	left, ok := e.conditional("m", 400*time.Millisecond, 700*time.Millisecond) // 1.75× the mean
	if want := time.Duration(400e6*1.97) - 700*time.Millisecond; !ok || left != want {
		t.Fatalf("conditional time left at 1.75× = %v, %v; want %v (the 0.9 quantile of 1.76 … 1.99 is 1.97)", left, ok, want)
	}
}

// One 5× straggler neither makes admission refuse most later jobs nor
// moves their plans far: it moves the learned rate by a fifth at most and
// the planning quantile by one sample, so the same arrivals are admitted
// nearly alike before and after it.
func TestStragglerDoesNotBlockAdmission(t *testing.T) {
	train := func(straggler bool) *Scheduler {
		s := New(Config{Workers: 2, QueueMax: 1000, SecondsPerMegapixelStep: 0.2}, epoch)
		rng := rand.New(rand.NewPCG(3, 4))
		for range 200 {
			mean, _ := s.est.estimate("m", 2)
			s.est.observe("m", 2, mean, time.Duration(float64(mean)*(0.8+0.4*rng.Float64())))
		}
		if straggler {
			mean, _ := s.est.estimate("m", 2)
			s.est.observe("m", 2, mean, 5*mean)
		}
		return s
	}
	admitted := func(s *Scheduler) int {
		rng := rand.New(rand.NewPCG(5, 6))
		n := 0
		for i := range 400 {
			now := epoch.Add(time.Duration(i) * 100 * time.Millisecond)
			advance(s, now)
			d := time.Duration((1 + 9*rng.Float64()) * float64(time.Second))
			if s.Admit(now, &Job{Tenant: "a", Model: "m", Cost: 0.5 + 3*rng.Float64(), Deadline: now.Add(d)}) == nil {
				n++
			}
		}
		return n
	}
	before, after := train(false), train(true)
	_, p0 := before.Estimate("m", 2)
	_, p1 := after.Estimate("m", 2)
	if ratio := float64(p1) / float64(p0); ratio > 1.25 {
		t.Errorf("one straggler moved the planned run time by %.2f×; want at most 1.25×", ratio)
	}
	a0, a1 := admitted(before), admitted(after)
	if a0 < 50 || float64(a1) < 0.8*float64(a0) {
		t.Errorf("admitted %d of 400 before the straggler, %d after; want at least 80 %% as many", a0, a1)
	}
}

// A tenant whose demand is within its share is not refused over it, even
// when its one running job counts against a short deadline; the flooder
// beside it is. A job that cannot finish even on an idle worker is no
// demand.
func TestOverShareSparesTheLightTenant(t *testing.T) {
	s := New(Config{Workers: 2, QueueMax: 1000, SecondsPerMegapixelStep: 1}, epoch)
	light := job("light", 2, time.Hour) // planned 3 s
	mustAdmit(t, s, light)
	s.Next(epoch)
	var refused *Refusal
	for range 500 {
		if r := s.Admit(epoch, job("flood", 1, 200*time.Second)); r != nil {
			refused = r
			break
		}
	}
	if refused == nil || refused.Reason != OverShare {
		t.Fatalf("the flood: %v; want refused over_share", refused)
	}
	// The light tenant holds 3 s of a running job; a 0.3 s job due in
	// 3.2 s exceeds its half of two workers over that horizon (3.2 s),
	// but its demand is far below its share.
	if r := s.Admit(epoch, job("light", 0.2, 3200*time.Millisecond)); r != nil && r.Reason == OverShare {
		t.Errorf("the light tenant: %v; want not refused over its share", r)
	}
	before := s.tenants["light"].demand
	if r := s.Admit(epoch, job("light", 10, time.Second)); r == nil || r.Reason != TooShort {
		t.Fatalf("an impossible job: %v; want too_short", r)
	}
	if got := s.tenants["light"].demand; got != before {
		t.Errorf("a too-short job moved the tenant's demand from %g to %g", before, got)
	}
}
