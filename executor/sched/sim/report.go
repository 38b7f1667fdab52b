package sim

import (
	"fmt"
	"strings"
	"time"

	"github.com/hourglass-dev/hourglass/executor/sched"
)

var reasonOrder = []sched.Reason{sched.TooShort, sched.Overloaded, sched.OverShare, sched.QueueFull}

// LoadTable is a markdown table of a load or worker sweep.
func LoadTable(rows []Row) string {
	var b strings.Builder
	b.WriteString("| policy | workers | load | CV | offered | admitted | **kept** | **goodput ÷ capacity** | wasted ÷ capacity | refused: too short / overloaded / over share / queue full | unreachable | sim time |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|\n")
	for _, r := range rows {
		res := r.Result
		var refused []string
		for _, reason := range reasonOrder {
			refused = append(refused, fmt.Sprint(res.Refusals[reason]))
		}
		load := fmt.Sprintf("%g×", r.Load)
		if r.Bursty {
			load += " bursty"
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %.1f | %d | %d | **%.2f%%** | **%.3f** | %.3f | %s | %d | %v |\n",
			r.Policy, r.Workers, load, r.CV, res.Offered, res.Admitted, 100*res.Kept(), res.Goodput(), res.WastedShare(),
			strings.Join(refused, " / "), res.Unreachable, r.Elapsed.Round(time.Millisecond))
	}
	return b.String()
}

// FloodTable is a markdown table of the flood experiment.
func FloodTable(rows []FloodRow) string {
	var b strings.Builder
	b.WriteString("| policy | light tenants | light share (alone) | light moderate+generous served (alone) | light tight served (alone) | least light kept | flood share | kept, all | goodput ÷ capacity |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %d | %.3f (%.3f) | %.1f%% (%.1f%%) | %.1f%% (%.1f%%) | %.2f%% | %.3f | %.2f%% | %.3f |\n",
			r.Policy, r.Light, r.LightShare, r.AloneShare, 100*r.LightServed, 100*r.AloneServed,
			100*r.LightTightServed, 100*r.AloneTightServed, 100*r.MinLightKept, r.FloodShare, 100*r.Result.Kept(), r.Result.Goodput())
	}
	return b.String()
}

// Describe says in words what the standard workload is, for reports.
func Describe(seed uint64, jobs int) string {
	w := Standard(seed, jobs, 1, 1, 0.2, false)
	w.setDefaults()
	return fmt.Sprintf("%d jobs per run, seed %d (arrivals, sizes and run times come from the seed alone, so every policy sees the same jobs). "+
		"Job cost: a mixture of log-normal sizes, 70%% around 0.5 and 30%% around 4 megapixel-steps (σ 0.4); true run time %v + %g s per megapixel-step "+
		"(mean %v), times log-normal noise of the given CV, and one run in 2,000 a 5× straggler. Deadlines: the figure-4 mix (impossible 0.5×, tight 2×, "+
		"moderate 5×, generous 20× the job's own mean run time; 20/30/30/20 %%). The estimator starts 10 %% off the true rate and learns; queue bound %d. "+
		"*Kept* = OK ÷ admitted; *goodput* and *wasted* = worker time of jobs that finished OK / did not, ÷ workers × the simulated time.",
		jobs, seed, w.Overhead, w.Rate, w.meanRunTime().Round(time.Millisecond), w.QueueMax)
}
