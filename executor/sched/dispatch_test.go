package sched

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// The prefix and suffix queries of the treap agree with a walk over the
// queue in run order, for random queues and workers.
func TestTreeQueriesMatchBruteForce(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		w := int64(1 + rng.IntN(8))
		tr := tree{workers: w}
		var jobs []*Job
		for i := range 1 + rng.IntN(40) {
			j := &Job{Planned: time.Duration(rng.Int64N(1000)), seq: uint64(i + 1), deadline: rng.Int64N(5000)}
			j.latest = j.deadline - int64(j.Planned)
			tr.insert(j)
			jobs = append(jobs, j)
		}
		// Remove a few, as dispatch and callers do.
		for range rng.IntN(5) {
			if len(jobs) == 0 {
				break
			}
			k := rng.IntN(len(jobs))
			tr.remove(jobs[k])
			jobs = append(jobs[:k], jobs[k+1:]...)
		}
		var order []*Job
		tr.each(func(_ int, j *Job) { order = append(order, j) })
		keys := make([]int64, len(order))
		var pre int64
		for i, j := range order {
			keys[i] = w*j.latest - pre
			pre += int64(j.Planned)
		}
		probe := &Job{seq: 1 << 40, deadline: rng.Int64N(5000)}
		wantAhead, wantAfter, wantCount := int64(0), int64(math.MaxInt64), 0
		for i, j := range order {
			if tr.before(j, probe) {
				wantAhead += int64(j.Planned)
				wantCount++
			} else {
				wantAfter = min(wantAfter, keys[i])
			}
		}
		count, ahead, after := tr.probe(probe)
		if count != wantCount || ahead != wantAhead || after != wantAfter {
			t.Fatalf("round %d: probe = %d, %d, %d; want %d, %d, %d", round, count, ahead, after, wantCount, wantAhead, wantAfter)
		}
		if len(order) == 0 {
			continue
		}
		pivot := order[rng.IntN(len(order))]
		wantBefore := int64(math.MaxInt64)
		for i, j := range order {
			if j == pivot {
				break
			}
			wantBefore = min(wantBefore, keys[i])
		}
		if got := tr.minBefore(pivot); got != wantBefore {
			t.Fatalf("round %d: minBefore = %d; want %d", round, got, wantBefore)
		}
		if tr.root.minKey != slicesMin(keys) {
			t.Fatalf("round %d: root minKey = %d; want %d", round, tr.root.minKey, slicesMin(keys))
		}
		// The work due before a deadline, and the keys after the workers
		// change.
		cut := rng.Int64N(5000)
		var wantDue int64
		for _, j := range order {
			if j.deadline < cut {
				wantDue += int64(j.Planned)
			}
		}
		if got := tr.workBefore(cut); got != wantDue {
			t.Fatalf("round %d: workBefore(%d) = %d; want %d", round, cut, got, wantDue)
		}
		w2 := int64(1 + rng.IntN(16))
		tr.setWorkers(w2)
		pre = 0
		for i, j := range order {
			keys[i] = w2*j.latest - pre
			pre += int64(j.Planned)
		}
		if tr.root.minKey != slicesMin(keys) {
			t.Fatalf("round %d: after setWorkers(%d), root minKey = %d; want %d", round, w2, tr.root.minKey, slicesMin(keys))
		}
	}
}

func slicesMin(v []int64) int64 {
	m := int64(math.MaxInt64)
	for _, x := range v {
		m = min(m, x)
	}
	return m
}

// A tenant that has not been served goes ahead of a flooding tenant's
// earlier deadlines when their slack allows, and waits its turn in
// deadline order when it does not.
func TestNextServesTenantsInTurnWhenSlackAllows(t *testing.T) {
	epoch := time.Unix(1000, 0)
	tests := []struct {
		name        string
		aliceSlack  time.Duration // deadline of alice's jobs beyond what they need
		wantFirst   string
		bobDeadline time.Duration
	}{
		{name: "slack: bob goes first", aliceSlack: time.Minute, bobDeadline: 2 * time.Minute, wantFirst: "bob"},
		{name: "no slack: deadline order", aliceSlack: 0, bobDeadline: 2 * time.Minute, wantFirst: "alice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(Config{Workers: 1, QueueMax: 100, Overhead: time.Second}, epoch)
			// Alice is served once, then queues three more jobs.
			first := &Job{Tenant: "alice", Deadline: epoch.Add(time.Hour)}
			if r := s.Admit(epoch, first); r != nil {
				t.Fatal(r)
			}
			if j, _ := s.Next(epoch); j != first {
				t.Fatalf("Next = %v; want alice's first job", j)
			}
			planned := first.Planned
			for i := range 3 {
				// Job i must start by its latest start: (i+1) plans
				// after now, plus the slack.
				d := epoch.Add(planned*time.Duration(i+2) + tt.aliceSlack)
				if r := s.Admit(epoch, &Job{Tenant: "alice", Deadline: d}); r != nil {
					t.Fatalf("alice #%d: %v", i, r)
				}
			}
			bob := &Job{Tenant: "bob", Deadline: epoch.Add(planned*5 + tt.bobDeadline)}
			if r := s.Admit(epoch, bob); r != nil {
				t.Fatalf("bob: %v", r)
			}
			s.Done(first, planned, true)
			now := epoch.Add(planned)
			j, dropped := s.Next(now)
			if len(dropped) != 0 || j == nil || j.Tenant != tt.wantFirst {
				t.Fatalf("Next = %+v (dropped %d); want %s's job", j, len(dropped), tt.wantFirst)
			}
		})
	}
}
