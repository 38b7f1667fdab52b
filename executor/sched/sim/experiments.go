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

// StandardStragglers is the straggler rate of the standard workload: one
// run in 2,000 takes StragglerFactor (5) times its time. The straggler
// sweep adds 0, 0.2 % and 1 %.
const StandardStragglers = 0.0005

// StandardPatience is the slack (timeout minus run time) from which a job
// counts as patient: about the planned run time of the size mixture's
// 99th percentile, so that a patient job can wait for any busy worker to
// free.
const StandardPatience = 2 * time.Second

// Standard is the reference workload of the experiments: one tenant with
// Poisson arrivals (bursty: on/off at twice the rate) at load × capacity,
// the default size mixture, run-time noise cv, StandardStragglers, the
// figure-4 deadline mix, and an estimator calibrated on two noisy runs
// that took 10 % longer than they should (a busy machine).
func Standard(seed uint64, jobs, workers int, load, cv float64, bursty bool) Workload {
	return Workload{Seed: seed, Jobs: jobs, Workers: workers, CV: cv, Stragglers: StandardStragglers, CalibrationError: 0.1,
		Patience: StandardPatience, Tenants: []Tenant{{Name: "t0", Load: load, Bursty: bursty}}}
}

// Row is one run of an experiment.
type Row struct {
	Policy     sched.Policy
	Workers    int
	Load       float64
	CV         float64
	Stragglers float64
	Bursty     bool
	Result     Result
	Elapsed    time.Duration // wall-clock time of the simulation
}

func run(w Workload, p sched.Policy, load float64) Row {
	start := time.Now()
	r := Run(w, p)
	return Row{Policy: p, Workers: w.Workers, Load: load, CV: w.CV, Stragglers: w.Stragglers, Bursty: w.Tenants[0].Bursty,
		Result: r, Elapsed: time.Since(start)}
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

// WorkerCounts are the pool sizes of the worker sweep.
var WorkerCounts = []int{1, 2, 4, 8, 16}

// WorkerSweep runs the schedulable policy at 4× load on 1 to 16 workers,
// for each noise level.
func WorkerSweep(seed uint64, jobs int, cvs []float64) []Row {
	var rows []Row
	for _, cv := range cvs {
		for _, w := range WorkerCounts {
			rows = append(rows, run(Standard(seed, jobs, w, 4, cv, false), sched.Schedulable, 4))
		}
	}
	return rows
}

// StragglerRates are the straggler rates of the straggler sweep.
var StragglerRates = []float64{0, StandardStragglers, 0.002, 0.01}

// StragglerSweep runs the schedulable policy at 1× and 4× load with each
// straggler rate, at CV 0.2.
func StragglerSweep(seed uint64, jobs, workers int) []Row {
	var rows []Row
	for _, s := range StragglerRates {
		for _, load := range []float64{1, 4} {
			w := Standard(seed, jobs, workers, load, 0.2, false)
			w.Stragglers = s
			rows = append(rows, run(w, sched.Schedulable, load))
		}
	}
	return rows
}

// FloodLightLoad is the light tenants' offered load, together, and
// FloodLoad the flooder's, × capacity.
const (
	FloodLightLoad = 0.4
	FloodLoad      = 4
)

// FloodTenantCounts are the numbers of light tenants of the flood
// experiment; with the flooder, 2 to 50 tenants.
var FloodTenantCounts = []int{1, 5, 49}

// FloodRow is one run of the flood experiment: Light light tenants share
// FloodLightLoad × capacity between them, and one more tenant floods at
// FloodLoad ×. Every light tenant asks for less than the equal share
// 1/(Light+1). Alone is the same light tenants' run without the flooder:
// the same seed and duration, so the very same light jobs.
//
// The fair-share measure compares what the light tenants get with what
// they get alone, in useful worker time (of jobs that finished OK):
// Served is that ratio over all their jobs, PatientServed over their
// patient jobs (slack at least StandardPatience, see Workload.Patience),
// the jobs that can wait for a worker busy with the flooder's job to free.
type FloodRow struct {
	Policy sched.Policy
	Light  int
	// LightShare and AloneShare are the light tenants' useful share of the
	// capacity with and without the flooder; FloodShare the flooder's.
	LightShare, AloneShare, FloodShare float64
	// LightDemand is the light tenants' offered work ÷ capacity.
	LightDemand float64
	// Served and PatientServed: with ÷ alone, as above (1 when alone is 0).
	Served, PatientServed float64
	// MinPatientServed is the least PatientServed of a single light
	// tenant, over the tenants with at least 50 patient jobs OK alone
	// (the aggregate when none has).
	MinPatientServed float64
	// MinKept is the least kept rate of a light tenant, over those with
	// at least 50 admitted jobs (all light tenants together when none
	// has), and LightKept theirs together.
	MinKept, LightKept float64
	Result, Alone      Result
}

// floodDuration is the simulated time in which the flooded workload offers
// about jobs jobs.
func floodDuration(jobs, workers int) time.Duration {
	w := Workload{Workers: workers}
	w.setDefaults()
	perSecond := (FloodLightLoad + FloodLoad) * float64(workers) / w.meanRunTime().Seconds()
	return time.Duration(float64(jobs) / perSecond * float64(time.Second))
}

// FloodWorkload is the flood experiment's workload with light light
// tenants, with or without the flooder.
func FloodWorkload(seed uint64, jobs, workers, light int, cv float64, flood bool) Workload {
	w := Workload{Seed: seed, Duration: floodDuration(jobs, workers), Workers: workers, CV: cv, Stragglers: StandardStragglers,
		CalibrationError: 0.1, Patience: StandardPatience}
	for i := range light {
		w.Tenants = append(w.Tenants, Tenant{Name: fmt.Sprintf("light%d", i), Load: FloodLightLoad / float64(light)})
	}
	if flood {
		w.Tenants = append(w.Tenants, Tenant{Name: "flood", Load: FloodLoad})
	}
	return w
}

// Flood runs the flood experiment for each count of FloodTenantCounts,
// under the point-estimate and schedulable policies (the naive pool has
// no fair share to measure).
func Flood(seed uint64, jobs, workers int, cv float64) []FloodRow {
	var rows []FloodRow
	for _, n := range FloodTenantCounts {
		for _, p := range Policies[1:] {
			alone := Run(FloodWorkload(seed, jobs, workers, n, cv, false), p)
			r := Run(FloodWorkload(seed, jobs, workers, n, cv, true), p)
			rows = append(rows, floodRow(p, n, r, alone))
		}
	}
	return rows
}

func floodRow(p sched.Policy, n int, r, alone Result) FloodRow {
	row := FloodRow{Policy: p, Light: n, Result: r, Alone: alone, FloodShare: r.Tenants[n].Share(r), MinKept: 1, MinPatientServed: 1}
	var useful, aloneUseful, patient, alonePatient time.Duration
	var ok, admitted, keptTenants, servedTenants int
	for i := range n {
		lt, at := r.Tenants[i], alone.Tenants[i]
		row.LightShare += lt.Share(r)
		row.AloneShare += at.Share(alone)
		row.LightDemand += lt.DemandShare(r)
		useful += lt.Useful
		aloneUseful += at.Useful
		patient += lt.PatientUseful
		alonePatient += at.PatientUseful
		ok += lt.OK
		admitted += lt.Admitted
		if lt.Admitted >= 50 {
			keptTenants++
			row.MinKept = min(row.MinKept, lt.Kept())
		}
		if at.PatientOK >= 50 {
			servedTenants++
			row.MinPatientServed = min(row.MinPatientServed, served(lt.PatientUseful, at.PatientUseful))
		}
	}
	row.LightKept = keptRate(ok, admitted)
	if keptTenants == 0 {
		row.MinKept = row.LightKept
	}
	row.Served, row.PatientServed = served(useful, aloneUseful), served(patient, alonePatient)
	if servedTenants == 0 {
		row.MinPatientServed = row.PatientServed
	}
	return row
}

func served(with, alone time.Duration) float64 {
	if alone <= 0 {
		return 1
	}
	return float64(with) / float64(alone)
}
