package sim

import (
	"fmt"
	"time"

	"github.com/hourglass-dev/hourglass/executor/sched"
)

// Policies are the policies every experiment compares, baseline first.
var Policies = []sched.Policy{sched.FIFO, sched.PointEstimate, sched.Schedulable}

// Loads are the offered loads of the load sweep, × capacity.
var Loads = []float64{0.5, 1, 2, 4, 8}

// Standard is the reference workload of the experiments: one tenant with
// Poisson arrivals (bursty: on/off at twice the rate) at load × capacity,
// the default size mixture, run-time noise cv, one run in 2,000 a 5×
// straggler, the figure-4 deadline mix, and an estimator that starts 10 %
// off (as a calibration on a busy machine may).
func Standard(seed uint64, jobs, workers int, load, cv float64, bursty bool) Workload {
	return Workload{Seed: seed, Jobs: jobs, Workers: workers, CV: cv, Stragglers: 0.0005, CalibrationError: 0.1,
		Tenants: []Tenant{{Name: "t0", Load: load, Bursty: bursty}}}
}

// Row is one run of an experiment.
type Row struct {
	Policy  sched.Policy
	Workers int
	Load    float64
	CV      float64
	Bursty  bool
	Result  Result
	Elapsed time.Duration // wall-clock time of the simulation
}

func run(w Workload, p sched.Policy, load float64) Row {
	start := time.Now()
	r := Run(w, p)
	return Row{Policy: p, Workers: w.Workers, Load: load, CV: w.CV, Bursty: w.Tenants[0].Bursty, Result: r, Elapsed: time.Since(start)}
}

// LoadSweep runs every policy at every load of Loads.
func LoadSweep(seed uint64, jobs, workers int, cv float64, bursty bool) []Row {
	var rows []Row
	for _, p := range Policies {
		for _, load := range Loads {
			rows = append(rows, run(Standard(seed, jobs, workers, load, cv, bursty), p, load))
		}
	}
	return rows
}

// WorkerSweep runs the schedulable policy at 4× load on 1 to 16 workers,
// for each noise level.
func WorkerSweep(seed uint64, jobs int, cvs []float64) []Row {
	var rows []Row
	for _, cv := range cvs {
		for _, w := range []int{1, 2, 4, 8, 16} {
			rows = append(rows, run(Standard(seed, jobs, w, 4, cv, false), sched.Schedulable, 4))
		}
	}
	return rows
}

// FloodRow is one run of the flood experiment.
type FloodRow struct {
	Policy sched.Policy
	// Light is the number of light tenants, sharing 0.5× capacity; one
	// more tenant floods at 4×.
	Light int
	// LightShare is the light tenants' useful share of the capacity, and
	// AloneShare the same with the flooder absent.
	LightShare, AloneShare float64
	// LightServed is the light tenants' OK ÷ offered in the classes that
	// a fully busy pool can serve (moderate and generous deadlines), and
	// AloneServed the same with the flooder absent.
	LightServed, AloneServed float64
	// LightTightServed is OK ÷ offered of their tight class.
	LightTightServed, AloneTightServed float64
	// MinLightKept is the least kept rate of a light tenant (over the
	// tenants with at least 50 admitted jobs; all light tenants together
	// when none has).
	MinLightKept float64
	FloodShare   float64
	Result       Result
}

// Flood runs light tenants (1, 5 and 49 of them, 0.5× capacity between
// them) with and without a tenant flooding at 4×, under each policy.
func Flood(seed uint64, jobs, workers int, cv float64) []FloodRow {
	var rows []FloodRow
	for _, n := range []int{1, 5, 49} {
		var light []Tenant
		for i := range n {
			light = append(light, Tenant{Name: fmt.Sprintf("light%d", i), Load: 0.5 / float64(n)})
		}
		flooded := append(append([]Tenant(nil), light...), Tenant{Name: "flood", Load: 4})
		for _, p := range Policies[1:] {
			// Alone, the light tenants send as many jobs as they do in
			// the flooded run: 0.5 of 4.5 of the arrivals.
			alone := Run(Workload{Seed: seed, Jobs: jobs / 9, Workers: workers, CV: cv, Stragglers: 0.0005, CalibrationError: 0.1, Tenants: light}, p)
			r := Run(Workload{Seed: seed, Jobs: jobs, Workers: workers, CV: cv, Stragglers: 0.0005, CalibrationError: 0.1, Tenants: flooded}, p)
			row := FloodRow{Policy: p, Light: n, Result: r, FloodShare: r.Tenants[n].Share(r), MinLightKept: 1}
			var ok, admitted, big int
			var served, offered, aloneServed, aloneOffered, tight, tightOff, aloneTight, aloneTightOff int
			for i := range light {
				lt, at := r.Tenants[i], alone.Tenants[i]
				row.LightShare += lt.Share(r)
				row.AloneShare += at.Share(alone)
				ok += lt.OK
				admitted += lt.Admitted
				if lt.Admitted >= 50 {
					big++
					row.MinLightKept = min(row.MinLightKept, lt.Kept())
				}
				for c := 2; c < len(lt.OKBy); c++ {
					served += lt.OKBy[c]
					offered += lt.OfferedBy[c]
					aloneServed += at.OKBy[c]
					aloneOffered += at.OfferedBy[c]
				}
				tight += lt.OKBy[1]
				tightOff += lt.OfferedBy[1]
				aloneTight += at.OKBy[1]
				aloneTightOff += at.OfferedBy[1]
			}
			if big == 0 {
				row.MinLightKept = keptRate(ok, admitted)
			}
			row.LightServed, row.AloneServed = frac(served, offered), frac(aloneServed, aloneOffered)
			row.LightTightServed, row.AloneTightServed = frac(tight, tightOff), frac(aloneTight, aloneTightOff)
			rows = append(rows, row)
		}
	}
	return rows
}

func frac(a, b int) float64 {
	if b == 0 {
		return 1
	}
	return float64(a) / float64(b)
}
