package sim

import (
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/hourglass-dev/hourglass/executor/sched"
)

// testJobs is the size of each simulated run in the tests: large enough
// that a kept rate of 99.9 % is measured on thousands of admitted jobs,
// small enough for -race.
const testJobs = 60000

// The scheduler's targets at run-time noise CV 0.2 with one straggler in
// 2,000, on fixed seeds: every admitted job but one in a thousand keeps
// its deadline at every load from 0.5× to 8× capacity, Poisson or bursty,
// and at 4× the workers spend at least 0.9 of their time on jobs that
// finish in time. No job starts after its latest start and the queue
// never exceeds its bound.
func TestSchedulableTargets(t *testing.T) {
	pools := []int{2, 4, 8}
	if testing.Short() {
		pools = pools[:1]
	}
	for _, workers := range pools {
		for _, bursty := range []bool{false, true} {
			t.Run(fmt.Sprintf("%d workers, bursty %v", workers, bursty), func(t *testing.T) {
				t.Parallel()
				for _, load := range Loads {
					r := Run(Standard(1, testJobs, workers, load, 0.2, bursty), sched.Schedulable)
					if r.Kept() < 0.999 {
						t.Errorf("%g× load: kept %.4f (%d of %d admitted); want ≥ 0.999\n%v", load, r.Kept(), r.OK, r.Admitted, r)
					}
					if load == 4 && r.Goodput() < 0.9 {
						t.Errorf("4× load: goodput %.3f of capacity; want ≥ 0.9\n%v", r.Goodput(), r)
					}
					if r.StartedLate != 0 || r.QueueOverflow != 0 {
						t.Errorf("%g× load: %d jobs started after their latest start, %d queue overflows; want none", load, r.StartedLate, r.QueueOverflow)
					}
				}
			})
		}
	}
}

// One worker has no slack to absorb an overrun: the fluid bound of the
// schedulability test is exact there, so a job that runs past its plan
// delays every promise behind it, and a straggler holds the only worker
// until its deadline. The kept rate is lower than on several workers; this
// test pins how much lower, so that a change that makes it worse shows.
func TestOneWorker(t *testing.T) {
	for _, load := range Loads {
		r := Run(Standard(1, testJobs, 1, load, 0.2, false), sched.Schedulable)
		if r.Kept() < 0.995 || r.StartedLate != 0 {
			t.Errorf("%g× load on one worker: kept %.4f, %d started late; want ≥ 0.995 and none\n%v", load, r.Kept(), r.StartedLate, r)
		}
		if load == 4 && r.Goodput() < 0.9 {
			t.Errorf("4× load on one worker: goodput %.3f; want ≥ 0.9", r.Goodput())
		}
	}
}

// Stragglers are not foreseeable: a job 5× slower than planned misses any
// deadline under 5× its run time, whatever the policy. With one run in 500
// a straggler, the promises that noise alone puts at risk are still kept
// 99.9 %; the stragglers themselves are what the kept rate loses.
func TestStragglers(t *testing.T) {
	for _, load := range []float64{1, 4} {
		w := Standard(1, testJobs, 2, load, 0.2, false)
		w.Stragglers = 0.002
		r := Run(w, sched.Schedulable)
		if r.KeptNonStragglers() < 0.999 {
			t.Errorf("%g× load, 0.2 %% stragglers: kept %.4f of the other jobs; want ≥ 0.999\n%v", load, r.KeptNonStragglers(), r)
		}
		if r.Stragglers == 0 || r.Kept() < 0.998 {
			t.Errorf("%g× load, 0.2 %% stragglers: %d stragglers admitted, kept %.4f; want some, and ≥ 0.998", load, r.Stragglers, r.Kept())
		}
	}
}

// The baselines are what the figures say they are, on the same jobs: the
// naive pool wastes most of the workers at 4×, and the previous policy
// breaks many of its promises there.
func TestBaselinesOnTheSameWorkload(t *testing.T) {
	w := Standard(1, testJobs, 2, 4, 0.2, false)
	fifo, point, schedulable := Run(w, sched.FIFO), Run(w, sched.PointEstimate), Run(w, sched.Schedulable)
	if fifo.Offered != point.Offered || point.Offered != schedulable.Offered ||
		fifo.Tenants[0].Demand != schedulable.Tenants[0].Demand {
		t.Fatalf("offered %d, %d, %d; want the same workload for every policy", fifo.Offered, point.Offered, schedulable.Offered)
	}
	if fifo.Goodput() > 0.2 || fifo.Refusals[sched.Overloaded] != 0 || fifo.Cancelled != 0 {
		t.Errorf("naive FIFO at 4×: goodput %.3f, %d overloaded, %d cancelled; want the collapse (< 0.2), no admission test, no cancellation",
			fifo.Goodput(), fifo.Refusals[sched.Overloaded], fifo.Cancelled)
	}
	if point.Kept() > 0.95 {
		t.Errorf("point estimate at 4×: kept %.4f; want the broken promises (< 0.95)", point.Kept())
	}
	if schedulable.Goodput() <= point.Goodput() || schedulable.Kept() <= point.Kept() {
		t.Errorf("schedulable (goodput %.3f, kept %.4f) not better than point estimate (%.3f, %.4f)",
			schedulable.Goodput(), schedulable.Kept(), point.Goodput(), point.Kept())
	}
}

// A tenant flooding at 4× beside light tenants (1, 5 or 49 of them, each
// asking less than the equal share) cannot make a light tenant's admitted
// jobs miss (each keeps at least 99 %), and takes from the light tenants'
// patient jobs (those that can wait for a busy worker) at most 5 % of the
// work the pool does for them alone, at most 10 % from any one of them.
// What it still takes from their impatient jobs is a limit of workers that
// are not preempted (see the package doc of sched); it must at least be
// less than under the previous policy.
func TestFloodingTenant(t *testing.T) {
	rows := Flood(3, testJobs, 2, 0.2)
	for _, row := range rows {
		if row.Policy != sched.Schedulable {
			continue
		}
		if each := row.LightDemand / float64(row.Light); each >= 1/float64(row.Light+1) {
			t.Fatalf("%d light tenants ask %.3f of the capacity each; the experiment wants them under the equal share", row.Light, each)
		}
		if row.MinKept < 0.99 {
			t.Errorf("%d light tenants: least kept %.4f; want ≥ 0.99", row.Light, row.MinKept)
		}
		if row.PatientServed < 0.95 || row.MinPatientServed < 0.9 {
			t.Errorf("%d light tenants: patient jobs served %.3f of alone (least tenant %.3f); want ≥ 0.95 (0.9)", row.Light, row.PatientServed, row.MinPatientServed)
		}
		if row.FloodShare+row.LightShare > 1+1e-9 {
			t.Errorf("%d light tenants: flood share %.3f + light %.3f > 1", row.Light, row.FloodShare, row.LightShare)
		}
		for _, point := range rows {
			if point.Policy == sched.PointEstimate && point.Light == row.Light && (row.Served <= point.Served || row.PatientServed <= point.PatientServed) {
				t.Errorf("%d light tenants: served %.3f (patient %.3f), not above the previous policy's %.3f (%.3f)",
					row.Light, row.Served, row.PatientServed, point.Served, point.PatientServed)
			}
		}
	}
}

// The same workload gives the same result, and each tenant's jobs do not
// depend on the other tenants (the flood experiment relies on it).
func TestDeterministic(t *testing.T) {
	w := Workload{Seed: 9, Jobs: 5000, Workers: 3, CV: 0.3, Stragglers: 0.01,
		Tenants: []Tenant{{Name: "a", Load: 3, Bursty: true}, {Name: "b", Load: 1}, {Name: "c", Load: 0.2}}}
	for _, p := range Policies {
		a, b := Run(w, p), Run(w, p)
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("%v: two runs of one workload differ:\n%v\n%v", p, a, b)
		}
	}
	alone := FloodWorkload(4, 3000, 2, 3, 0.2, false)
	flooded := FloodWorkload(4, 3000, 2, 3, 0.2, true)
	ra, rf := Run(alone, sched.Schedulable), Run(flooded, sched.Schedulable)
	for i := range 3 {
		if ra.Tenants[i].Offered != rf.Tenants[i].Offered || ra.Tenants[i].Demand != rf.Tenants[i].Demand {
			t.Errorf("light tenant %d: offered %d (%v) alone, %d (%v) beside the flood; want the same jobs",
				i, ra.Tenants[i].Offered, ra.Tenants[i].Demand, rf.Tenants[i].Offered, rf.Tenants[i].Demand)
		}
	}
}

// The generator offers what the workload says: the load, the deadline
// classes' shares, the straggler rate and the noise.
func TestWorkloadGenerator(t *testing.T) {
	w := Standard(5, 200000, 4, 2, 0.3, true)
	w.Stragglers = 0.01
	w.setDefaults()
	a := newArrivals(&w, 0)
	classes := make([]int, len(w.Deadlines))
	var work, last float64
	var sum, sumSq float64
	stragglers, n := 0, 200000
	for range n {
		last = a.next()
		d := a.job()
		classes[d.class]++
		work += (w.Overhead.Seconds() + w.Rate*d.cost)
		if d.straggler {
			stragglers++
			continue
		}
		sum += d.noise
		sumSq += d.noise * d.noise
	}
	if load := work / (last * float64(w.Workers)); math.Abs(load-2) > 0.1 {
		t.Errorf("offered load %.3f; want 2", load)
	}
	for i, c := range w.Deadlines {
		if got := float64(classes[i]) / float64(n); math.Abs(got-c.Share) > 0.01 {
			t.Errorf("class %s: %.3f of the jobs; want %.2f", c.Name, got, c.Share)
		}
	}
	if got := float64(stragglers) / float64(n); math.Abs(got-0.01) > 0.002 {
		t.Errorf("stragglers %.4f; want 0.01", got)
	}
	m := sum / float64(n-stragglers)
	cv := math.Sqrt(sumSq/float64(n-stragglers)-m*m) / m
	if math.Abs(m-1) > 0.01 || math.Abs(cv-0.3) > 0.01 {
		t.Errorf("noise mean %.3f, CV %.3f; want 1, 0.3", m, cv)
	}
}

// The event heap pops in time order, then finish before deadline before
// arrival, then in the order pushed.
func TestEventHeap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	var h eventHeap
	var want []event
	for i := range 2000 {
		e := event{at: rng.Int64N(50), kind: eventKind(rng.IntN(3)), seq: uint64(i)}
		h.push(e)
		want = append(want, e)
	}
	slices.SortFunc(want, func(a, b event) int {
		switch {
		case a.before(&b):
			return -1
		case b.before(&a):
			return 1
		}
		return 0
	})
	for i := range want {
		if got := h.pop(); got != want[i] {
			t.Fatalf("pop %d = %+v; want %+v", i, got, want[i])
		}
	}
}

// The simulator itself allocates next to nothing per event: the heap
// holds events by value and jobs are recycled. What remains is the
// scheduler's: a Refusal per refused job and a queue node (two: the queue
// and the tenant's) per admitted one.
func TestAllocationsPerEvent(t *testing.T) {
	for _, load := range []float64{0.5, 4} {
		w := Standard(2, 20000, 2, load, 0.2, false)
		var r Result
		allocs := testing.AllocsPerRun(1, func() { r = Run(w, sched.Schedulable) })
		if sim := allocs - float64(r.Refused()+2*r.Admitted); sim > 2000 {
			t.Errorf("%g× load: %.0f allocations for %d events, %.0f besides the scheduler's; want under 2,000", load, allocs, r.Events, sim)
		}
	}
}

// One million simulated jobs run in well under a minute on one core.
func TestMillionJobs(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("a million jobs: skipped in -short and -race runs")
	}
	start := time.Now()
	r := Run(Standard(1, 1_000_000, 2, 4, 0.2, true), sched.Schedulable)
	if elapsed := time.Since(start); elapsed > 30*time.Second || r.Offered != 1_000_000 {
		t.Errorf("%d jobs in %v; want 1,000,000 in under 30 s", r.Offered, elapsed)
	}
}

// FuzzWorkload checks the scheduler's invariants on random workloads: when
// run times equal the estimates exactly (no noise, the estimator seeded
// with the true cost model), no admitted job misses its deadline; no job
// starts after its deadline minus its planned run time; the queue never
// holds more than its bound. The seed corpus is the f.Add calls and
// testdata/fuzz/FuzzWorkload.
func FuzzWorkload(f *testing.F) {
	f.Add(uint64(1), uint8(2), uint8(40), uint8(1), false, uint16(256), uint8(20), uint8(2), uint8(10), true)
	f.Add(uint64(7), uint8(1), uint8(200), uint8(3), true, uint16(4), uint8(0), uint8(0), uint8(10), true)
	f.Add(uint64(3), uint8(16), uint8(80), uint8(5), true, uint16(50), uint8(30), uint8(10), uint8(3), false)
	f.Add(uint64(11), uint8(4), uint8(5), uint8(2), false, uint16(1), uint8(10), uint8(1), uint8(40), false)
	f.Add(uint64(5), uint8(8), uint8(79), uint8(49), true, uint16(511), uint8(25), uint8(5), uint8(1), true)
	f.Fuzz(func(t *testing.T, seed uint64, workers, load10, tenants uint8, bursty bool, queueMax uint16, cv100, straggle1000, deadline10 uint8, exact bool) {
		w := Workload{Seed: seed, Jobs: 3000, Workers: 1 + int(workers%16), QueueMax: 1 + int(queueMax%512),
			CV: float64(cv100%31) / 100, Stragglers: float64(straggle1000%21) / 1000, CalibrationError: 0.2, Exact: exact}
		// The deadline mix, stretched or squeezed by 0.1× to 5×.
		scale := 0.1 + float64(deadline10%50)/10
		for _, c := range Figure4Deadlines {
			w.Deadlines = append(w.Deadlines, DeadlineClass{Name: c.Name, Share: c.Share, Mult: c.Mult * scale})
		}
		n := 1 + int(tenants%50)
		for i := range n {
			// The first tenant may flood; the others share a load between them.
			load := 0.1 + float64(load10%80)/10
			if i > 0 {
				load = 1 / float64(n)
			}
			w.Tenants = append(w.Tenants, Tenant{Name: fmt.Sprint("t", i), Load: load, Bursty: bursty && i == 0})
		}
		for _, p := range []sched.Policy{sched.Schedulable, sched.PointEstimate} {
			r := Run(w, p)
			if r.QueueOverflow != 0 {
				t.Errorf("%v: the queue reached %d jobs, over its bound %d", p, r.MaxQueue, w.QueueMax)
			}
			if r.OK > r.Admitted || r.Admitted > r.Offered || r.Offered != r.Admitted+r.Refused() {
				t.Errorf("%v: ok %d, admitted %d, refused %d, offered %d: counts do not add up", p, r.OK, r.Admitted, r.Refused(), r.Offered)
			}
			if missed := r.Unreachable + r.Expired + r.Cancelled + r.Late; r.OK+missed != r.Admitted {
				t.Errorf("%v: ok %d + missed %d ≠ admitted %d", p, r.OK, missed, r.Admitted)
			}
			if p != sched.Schedulable {
				continue
			}
			if r.StartedLate != 0 {
				t.Errorf("%d jobs started after their latest start", r.StartedLate)
			}
			if exact && r.ExactMisses != 0 {
				t.Errorf("run times equal to the estimates, yet %d of %d admitted jobs missed\n%v", r.ExactMisses, r.Admitted, r)
			}
		}
	})
}
