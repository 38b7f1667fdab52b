package sim

import (
	"reflect"
	"testing"

	"github.com/hourglass-dev/hourglass/executor/sched"
)

// testJobs is the size of each simulated run in the tests: large enough
// that a kept rate of 99.9 % is measured on tens of thousands of admitted
// jobs, small enough for -race.
const testJobs = 60000

// The scheduler's targets at run-time noise CV 0.2 (one straggler in
// 2,000), fixed seeds: every admitted job but one in a thousand keeps its
// deadline at every load from 0.5× to 8× capacity, and at 4× the workers
// spend at least 0.9 of their time on jobs that finish in time.
func TestSchedulableTargets(t *testing.T) {
	for _, workers := range []int{2, 4} {
		for _, bursty := range []bool{false, true} {
			for _, load := range Loads {
				r := Run(Standard(1, testJobs, workers, load, 0.2, bursty), sched.Schedulable)
				if r.Kept() < 0.999 {
					t.Errorf("%d workers, %.1f× load, bursty %v: kept %.4f (%d of %d admitted); want ≥ 0.999\n%v",
						workers, load, bursty, r.Kept(), r.OK, r.Admitted, r)
				}
				if load == 4 && r.Goodput() < 0.9 {
					t.Errorf("%d workers, 4× load, bursty %v: goodput %.3f of capacity; want ≥ 0.9\n%v", workers, bursty, r.Goodput(), r)
				}
				if r.StartedLate != 0 || r.QueueOverflow != 0 {
					t.Errorf("%d workers, %.1f× load: %d jobs started after their latest start, %d queue overflows; want none",
						workers, load, r.StartedLate, r.QueueOverflow)
				}
			}
		}
	}
}

// The baselines are what the figures say they are, on the same jobs: the
// naive pool wastes most of the workers at 4×, and the previous policy
// breaks many of its promises there.
func TestBaselinesOnTheSameWorkload(t *testing.T) {
	w := Standard(1, testJobs, 2, 4, 0.2, false)
	fifo, point, schedulable := Run(w, sched.FIFO), Run(w, sched.PointEstimate), Run(w, sched.Schedulable)
	if fifo.Offered != point.Offered || point.Offered != schedulable.Offered {
		t.Fatalf("offered %d, %d, %d; want the same workload for every policy", fifo.Offered, point.Offered, schedulable.Offered)
	}
	if fifo.Goodput() > 0.2 {
		t.Errorf("naive FIFO at 4×: goodput %.3f; want the collapse (< 0.2)", fifo.Goodput())
	}
	if point.Kept() > 0.95 {
		t.Errorf("point estimate at 4×: kept %.4f; want the broken promises (< 0.95)", point.Kept())
	}
	if schedulable.Goodput() <= point.Goodput() || schedulable.Kept() <= point.Kept() {
		t.Errorf("schedulable (goodput %.3f, kept %.4f) not better than point estimate (%.3f, %.4f)",
			schedulable.Goodput(), schedulable.Kept(), point.Goodput(), point.Kept())
	}
}

// A tenant flooding at 4× cannot make the light tenants' admitted jobs
// miss (they keep at least 99 %), and the flood takes from them no more
// than it does under the previous policy. (How much it still takes is
// reported by the simulator's flood table: on busy workers that cannot be
// preempted, a light tenant's short jobs do not fit beside the flood's
// long running ones; see the package doc of sched.)
func TestFloodingTenant(t *testing.T) {
	rows := Flood(3, testJobs, 4, 0.2)
	for _, row := range rows {
		if row.Policy != sched.Schedulable {
			continue
		}
		if row.MinLightKept < 0.99 {
			t.Errorf("%d light tenants: least kept %.4f; want ≥ 0.99", row.Light, row.MinLightKept)
		}
		if row.FloodShare > 1-row.LightShare+1e-9 {
			t.Errorf("%d light tenants: flood share %.3f + light %.3f > 1", row.Light, row.FloodShare, row.LightShare)
		}
		for _, point := range rows {
			if point.Policy == sched.PointEstimate && point.Light == row.Light && row.LightShare < point.LightShare {
				t.Errorf("%d light tenants: share %.3f, below the previous policy's %.3f", row.Light, row.LightShare, point.LightShare)
			}
		}
	}
}

// The same workload gives the same result.
func TestDeterministic(t *testing.T) {
	w := Workload{Seed: 9, Jobs: 5000, Workers: 3, CV: 0.3, Stragglers: 0.01,
		Tenants: []Tenant{{Name: "a", Load: 3, Bursty: true}, {Name: "b", Load: 1}}}
	a, b := Run(w, sched.Schedulable), Run(w, sched.Schedulable)
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("two runs of one workload differ:\n%v\n%v", a, b)
	}
}

// FuzzWorkload checks the scheduler's invariants on random workloads:
// when run times equal the estimates exactly, no admitted job misses its
// deadline; no job starts after its latest start; the queue never holds
// more than its bound.
func FuzzWorkload(f *testing.F) {
	f.Add(uint64(1), uint8(2), uint8(40), uint8(1), false, uint16(256), uint8(20), true)
	f.Add(uint64(7), uint8(1), uint8(200), uint8(3), true, uint16(4), uint8(0), true)
	f.Add(uint64(3), uint8(16), uint8(80), uint8(5), true, uint16(50), uint8(30), false)
	f.Add(uint64(11), uint8(4), uint8(5), uint8(2), false, uint16(1), uint8(10), false)
	f.Fuzz(func(t *testing.T, seed uint64, workers, load10, tenants uint8, bursty bool, queueMax uint16, cv100 uint8, exact bool) {
		w := Workload{Seed: seed, Jobs: 3000, Workers: 1 + int(workers%16), QueueMax: 1 + int(queueMax%512),
			CV: float64(cv100%31) / 100, Stragglers: 0.002, CalibrationError: 0.2, Exact: exact}
		for i := range 1 + int(tenants%5) {
			w.Tenants = append(w.Tenants, Tenant{Name: string(rune('a' + i)), Load: (0.1 + float64(load10%80)/10) / float64(1+i), Bursty: bursty && i == 0})
		}
		r := Run(w, sched.Schedulable)
		if r.StartedLate != 0 {
			t.Errorf("%d jobs started after their latest start", r.StartedLate)
		}
		if r.QueueOverflow != 0 {
			t.Errorf("the queue exceeded %d jobs %d times", w.QueueMax, r.QueueOverflow)
		}
		if exact && r.ExactMisses != 0 {
			t.Errorf("run times equal to the estimates, yet %d of %d admitted jobs missed\n%v", r.ExactMisses, r.Admitted, r)
		}
		if r.OK > r.Admitted || r.Admitted > r.Offered {
			t.Errorf("ok %d, admitted %d, offered %d: counts out of order", r.OK, r.Admitted, r.Offered)
		}
	})
}
