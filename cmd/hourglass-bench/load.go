package main

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// loadResult is what a closed-loop run measured.
type loadResult struct {
	lat     []time.Duration // latency of each successful call
	ok      int
	errs    map[codes.Code]int
	elapsed time.Duration
}

func (r loadResult) throughput() float64 { return float64(r.ok) / r.elapsed.Seconds() }

func (r loadResult) errors() int {
	n := 0
	for _, c := range r.errs {
		n += c
	}
	return n
}

// closedLoop runs conc callers, each calling call back to back, starting
// calls for dur; it returns once every call has returned.
func closedLoop(ctx context.Context, conc int, dur time.Duration, call func(context.Context) error) loadResult {
	type part struct {
		lat  []time.Duration
		errs map[codes.Code]int
	}
	parts := make([]part, conc)
	start := time.Now()
	end := start.Add(dur)
	var wg sync.WaitGroup
	for i := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := part{errs: map[codes.Code]int{}}
			for ctx.Err() == nil {
				t0 := time.Now()
				if !t0.Before(end) {
					break
				}
				if err := call(ctx); err != nil {
					p.errs[status.Code(err)]++
					continue
				}
				p.lat = append(p.lat, time.Since(t0))
			}
			parts[i] = p
		}()
	}
	wg.Wait()
	r := loadResult{errs: map[codes.Code]int{}, elapsed: time.Since(start)}
	for _, p := range parts {
		r.lat = append(r.lat, p.lat...)
		for c, n := range p.errs {
			r.errs[c] += n
		}
	}
	r.ok = len(r.lat)
	return r
}

// merge adds another run's calls (rounds of the same configuration).
func (r *loadResult) merge(o loadResult) {
	r.lat = append(r.lat, o.lat...)
	r.ok += o.ok
	r.elapsed += o.elapsed
	if r.errs == nil {
		r.errs = map[codes.Code]int{}
	}
	for c, n := range o.errs {
		r.errs[c] += n
	}
}
