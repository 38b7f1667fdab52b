// Command hourglass-sim runs the scheduling core's simulator (package
// executor/sched/sim) over the standard experiments and prints their
// tables in markdown: the load sweep (every policy at 0.5× to 8× capacity,
// Poisson and bursty arrivals), the worker sweep (1 to 16 workers, run-time
// noise CV 0 to 0.3), the straggler sweep, and the flood (light tenants
// beside one that floods, with each tenant's share). It is deterministic:
// the same -seed and -jobs print the same numbers, except the wall-clock
// times of the runs, which run one after another on one goroutine.
//
//	hourglass-sim [-seed N] [-jobs N] [-side N] [-workers N]
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/hourglass-dev/hourglass/executor/sched"
	"github.com/hourglass-dev/hourglass/executor/sched/sim"
)

func main() {
	seed := flag.Uint64("seed", 1, "workload `seed`")
	jobs := flag.Int("jobs", 1_000_000, "simulated jobs per run of the load sweep")
	side := flag.Int("side", 300_000, "simulated jobs per run of the worker, straggler and flood experiments")
	workers := flag.Int("workers", 2, "workers of the load, straggler and flood experiments")
	flag.Parse()
	if *jobs < 1 || *side < 1 || *workers < 1 {
		fmt.Fprintln(os.Stderr, "hourglass-sim: -jobs, -side and -workers must be at least 1")
		os.Exit(2)
	}
	start := time.Now()
	fmt.Printf("# hourglass scheduling simulation\n\n%s\n\n", sim.Describe(*seed, *jobs))

	load := append(sim.LoadSweep(*seed, *jobs, *workers, 0.2, false), sim.LoadSweep(*seed, *jobs, *workers, 0.2, true)...)
	fmt.Printf("## Load sweep, %d workers, CV 0.2, %d jobs per run\n\n%s\n", *workers, *jobs, sim.LoadTable(load))
	var slowest time.Duration
	for _, r := range load {
		slowest = max(slowest, r.Elapsed)
	}
	fmt.Printf("The slowest run of %d jobs took %v of wall-clock time on one goroutine.\n\n", *jobs, slowest.Round(time.Millisecond))

	fmt.Printf("## Workers and noise, schedulable, 4× load, %d jobs per run\n\n%s\n", *side,
		sim.LoadTable(sim.WorkerSweep(*seed, *side, []float64{0, 0.1, 0.2, 0.3})))
	fmt.Printf("## Stragglers, schedulable, %d workers, CV 0.2, %d jobs per run\n\n%s\n", *workers, *side,
		sim.LoadTable(sim.StragglerSweep(*seed, *side, *workers)))

	flood := sim.Flood(*seed, *side, *workers, 0.2)
	fmt.Printf("## A flooding tenant, %d workers, CV 0.2, about %d jobs per run\n\n%s\n\n%s\n", *workers, *side, sim.DescribeFlood(), sim.FloodTable(flood))
	for _, r := range flood {
		if r.Policy == sched.Schedulable && r.Light == 5 {
			fmt.Printf("Each tenant, schedulable, 5 light tenants:\n\n%s\n", sim.TenantTable(r.Result))
		}
	}
	fmt.Printf("All runs: %v.\n", time.Since(start).Round(100*time.Millisecond))
}
