package sim

import (
	"fmt"
	"strings"
	"time"

	"github.com/hourglass-dev/hourglass/executor/sched"
)

var reasonOrder = []sched.Reason{sched.TooShort, sched.Overloaded, sched.OverShare, sched.QueueFull}

// refusals is "too short / overloaded / over share / queue full /
// unreachable", the last being admitted jobs dropped unstarted.
func refusals(res Result) string {
	var s []string
	for _, reason := range reasonOrder {
		s = append(s, fmt.Sprint(res.Refusals[reason]))
	}
	return strings.Join(append(s, fmt.Sprint(res.Unreachable)), " / ")
}

const refusalsHeader = "refused: too short / overloaded / over share / queue full; unreachable"

// LoadTable is a markdown table of a load, worker or straggler sweep.
func LoadTable(rows []Row) string {
	var b strings.Builder
	b.WriteString("| policy | workers | load | CV | stragglers | offered | admitted | **kept** | kept, stragglers aside | **goodput ÷ capacity** | wasted ÷ capacity | " + refusalsHeader + " | sim time |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|\n")
	for _, r := range rows {
		res := r.Result
		load := fmt.Sprintf("%g×", r.Load)
		if r.Bursty {
			load += " bursty"
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %.1f | %s | %d | %d | **%s** | %s | **%.3f** | %.3f | %s | %v |\n",
			r.Policy, r.Workers, load, r.CV, fmt.Sprintf("%g%%", 100*r.Stragglers), res.Offered, res.Admitted, pct(res.Kept(), 2), pct(res.KeptNonStragglers(), 2),
			res.Goodput(), res.WastedShare(), refusals(res), r.Elapsed.Round(time.Millisecond))
	}
	return b.String()
}

// pct formats a fraction as a percentage, with "100%" only when exact.
func pct(f float64, digits int) string {
	s := fmt.Sprintf("%.*f%%", digits, 100*f)
	if f < 1 && s == fmt.Sprintf("%.*f%%", digits, 100.0) {
		s = fmt.Sprintf("%.*f%%", digits+1, 100*f)
	}
	return s
}

// FloodTable is a markdown table of the flood experiment.
func FloodTable(rows []FloodRow) string {
	var b strings.Builder
	b.WriteString("| policy | light tenants | light demand ÷ capacity | light share (alone) | **patient served** (least tenant) | all served | light kept (least tenant) | flood share | kept, all | goodput ÷ capacity |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %d | %.3f | %.3f (%.3f) | **%.3f** (%.3f) | %.3f | %s (%s) | %.3f | %s | %.3f |\n",
			r.Policy, r.Light, r.LightDemand, r.LightShare, r.AloneShare, r.PatientServed, r.MinPatientServed, r.Served,
			pct(r.LightKept, 2), pct(r.MinKept, 2), r.FloodShare, pct(r.Result.Kept(), 2), r.Result.Goodput())
	}
	return b.String()
}

// TenantTable is a markdown table of every tenant of one run: what it
// offered, what it was refused and why, its kept rate and its share.
func TenantTable(r Result) string {
	var b strings.Builder
	b.WriteString("| tenant | offered | demand ÷ capacity | admitted | refused: too short / overloaded / over share / queue full | OK | kept | **share** | patient OK |\n")
	b.WriteString("|---|---:|---:|---:|---|---:|---:|---:|---:|\n")
	for _, t := range r.Tenants {
		var s []string
		for _, reason := range reasonOrder {
			s = append(s, fmt.Sprint(t.Refusals[reason]))
		}
		fmt.Fprintf(&b, "| %s | %d | %.3f | %d | %s | %d | %s | **%.3f** | %d of %d |\n",
			t.Name, t.Offered, t.DemandShare(r), t.Admitted, strings.Join(s, " / "), t.OK, pct(t.Kept(), 2), t.Share(r), t.PatientOK, t.Patient)
	}
	return b.String()
}

// Describe says in words what the standard workload is and how the
// tables measure it, for reports.
func Describe(seed uint64, jobs int) string {
	w := Standard(seed, jobs, 1, 1, 0.2, false)
	w.setDefaults()
	return fmt.Sprintf("%d jobs per run, seed %d: arrivals, sizes and run times come from the seed alone, so every policy sees the same jobs. "+
		"Job cost: a mixture of log-normal sizes, 70%% around 0.5 and 30%% around 4 megapixel-steps (σ 0.4); true run time %v + %g s per megapixel-step "+
		"(mean %v), times log-normal noise of the given CV; a straggler runs %g× its time (one run in %.0f unless the table says otherwise). "+
		"Deadlines: the figure-4 mix (impossible 0.5×, tight 2×, moderate 5×, generous 20× the job's own mean run time; 20/30/30/20 %%). "+
		"The estimator starts, as hourglassd's does, from two measured calibration runs (64×64 at 2 steps, 512×512 at 8 steps) with the same noise, "+
		"taken on a machine 10 %% slower, and learns from every job that completes; queue bound %d. "+
		"The simulated executor answers every arrival with Unreachable then Admit, hands idle workers Next, cancels a running job at its deadline "+
		"(the naive FIFO pool does not: its jobs run to their end), removes a queued one, and reports Done when the worker frees. "+
		"*Kept* = OK ÷ admitted (OK = finished by its deadline); *kept, stragglers aside* leaves out the admitted jobs that straggled; "+
		"*goodput* and *wasted* = worker time of the jobs that finished OK / did not, ÷ (workers × the simulated time, from the start to the last arrival or departure); "+
		"*unreachable* counts admitted jobs dropped unstarted at their latest start (DEADLINE_UNREACHABLE).",
		jobs, seed, w.Overhead, w.Rate, w.meanRunTime().Round(time.Millisecond), w.StragglerFactor, 1/w.Stragglers, w.QueueMax)
}

// DescribeFlood says in words what the flood experiment measures.
func DescribeFlood() string {
	return fmt.Sprintf("Light tenants share %g× capacity between them (each below the equal share of 1/(tenants)); one more tenant floods at %g×. "+
		"*Alone* is the same light tenants' run without the flooder: the same seed and simulated time, so the very same light jobs. "+
		"*Share* is a tenant's useful worker time ÷ capacity. *Served* is the light tenants' useful worker time with the flooder ÷ alone: "+
		"what the flood takes from the work the pool can do for them (their feasible demand). *Patient* jobs are those whose slack "+
		"(timeout minus run time) is at least %v, so that they can wait for a worker busy with one of the flooder's jobs to free; "+
		"*least tenant* is the lowest single light tenant (over those with at least 50 patient jobs done alone, or 50 admitted for kept).",
		FloodLightLoad, float64(FloodLoad), StandardPatience)
}
