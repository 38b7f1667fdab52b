// Command hourglass-sim runs the scheduling core's simulator (package
// executor/sched/sim) over the standard experiments and prints their
// tables in markdown: the load sweep (every policy at 0.5× to 8× capacity,
// Poisson and bursty arrivals), the worker sweep (1 to 16 workers, run-time
// noise CV 0 to 0.3) and the flood (light tenants beside one that floods).
// It is deterministic: the same -seed and -jobs print the same numbers,
// except the simulation times.
//
//	hourglass-sim [-seed N] [-jobs N] [-workers N]
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/hourglass-dev/hourglass/executor/sched/sim"
)

func main() {
	seed := flag.Uint64("seed", 1, "workload `seed`")
	jobs := flag.Int("jobs", 1_000_000, "simulated jobs per run")
	workers := flag.Int("workers", 2, "workers of the load sweep and the flood")
	flag.Parse()
	if *jobs < 1 || *workers < 1 {
		fmt.Fprintln(os.Stderr, "hourglass-sim: -jobs and -workers must be at least 1")
		os.Exit(2)
	}
	start := time.Now()
	fmt.Printf("# hourglass scheduling simulation\n\n%s\n\n", sim.Describe(*seed, *jobs))
	fmt.Printf("## Load sweep, %d workers, CV 0.2\n\n%s\n", *workers, sim.LoadTable(append(
		sim.LoadSweep(*seed, *jobs, *workers, 0.2, false), sim.LoadSweep(*seed, *jobs, *workers, 0.2, true)...)))
	fmt.Printf("## Workers and noise, schedulable, 4× load\n\n%s\n", sim.LoadTable(sim.WorkerSweep(*seed, *jobs, []float64{0, 0.1, 0.2, 0.3})))
	fmt.Printf("## A flooding tenant, %d workers, CV 0.2\n\nLight tenants share 0.5× capacity; one more tenant floods at 4×. "+
		"*Alone*: the same light tenants' jobs without the flood.\n\n%s\n", *workers, sim.FloodTable(sim.Flood(*seed, *jobs, *workers, 0.2)))
	fmt.Printf("All runs: %v.\n", time.Since(start).Round(100*time.Millisecond))
}
