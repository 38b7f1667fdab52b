package executor

import (
	"context"
	"errors"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// instrumentationName names the executor's tracer and meter.
const instrumentationName = "github.com/hourglass-dev/hourglass/executor"

// Kill reasons, the "reason" attribute of hourglass.worker.kills.
const (
	killCancelGrace = "cancel_grace" // not idle within the grace after a cancel
	killHeartbeat   = "heartbeat"    // silent past the heartbeat
	killCrashed     = "crashed"      // died by itself (the kill reaps it)
	killBusy        = "stuck_busy"   // still busy with an earlier job
	killIdleDeath   = "died_idle"    // died while no job ran (reaped, replaced)
)

// instruments are the executor's metrics. Gauges (queue depth, workers by
// state) are observed from Status at collection time, so they cannot drift.
type instruments struct {
	queueWait metric.Float64Histogram
	runTime   metric.Float64Histogram
	kills     metric.Int64Counter
	respawns  metric.Int64Counter
	refusals  metric.Int64Counter
	// unreachable counts admitted jobs that left the queue unstarted
	// because their latest start passed.
	unreachable metric.Int64Counter
}

func (e *Executor) tracerProvider() trace.TracerProvider {
	if e.cfg.TracerProvider == nil {
		return tracenoop.NewTracerProvider()
	}
	return e.cfg.TracerProvider
}

func (e *Executor) meterProvider() metric.MeterProvider {
	if e.cfg.MeterProvider == nil {
		return metricnoop.NewMeterProvider()
	}
	return e.cfg.MeterProvider
}

func (e *Executor) initTelemetry() error {
	e.tracer = e.tracerProvider().Tracer(instrumentationName)
	m := e.meterProvider().Meter(instrumentationName)
	var (
		in   instruments
		errs = make([]error, 8)
	)
	in.queueWait, errs[0] = m.Float64Histogram("hourglass.queue.wait", metric.WithUnit("s"),
		metric.WithDescription("Time jobs waited for a worker."),
		metric.WithExplicitBucketBoundaries(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
	in.runTime, errs[1] = m.Float64Histogram("hourglass.job.run_time", metric.WithUnit("s"),
		metric.WithDescription("Time jobs ran on a worker, whatever their outcome."),
		metric.WithExplicitBucketBoundaries(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
	in.kills, errs[2] = m.Int64Counter("hourglass.worker.kills", metric.WithDescription("Worker process groups killed, by reason."))
	in.respawns, errs[3] = m.Int64Counter("hourglass.worker.respawns", metric.WithDescription("Dead workers replaced, by a hot spare or a new process."))
	in.refusals, errs[4] = m.Int64Counter("hourglass.admission.refusals", metric.WithDescription("Jobs refused before queueing, by reason."))
	in.unreachable, errs[7] = m.Int64Counter("hourglass.queue.unreachable",
		metric.WithDescription("Admitted jobs that left the queue unstarted: their deadline could no longer cover their planned run time."))
	queueDepth, err5 := m.Int64ObservableGauge("hourglass.queue.depth", metric.WithDescription("Jobs waiting for a worker."))
	workers, err6 := m.Int64ObservableGauge("hourglass.workers", metric.WithDescription("Worker processes by state (ready hot spares as state spare)."))
	errs[5], errs[6] = err5, err6
	if err := errors.Join(errs...); err != nil {
		return err
	}
	e.metrics = in
	_, err := m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		st := e.Status()
		o.ObserveInt64(queueDepth, int64(st.QueueDepth))
		counts := map[string]int64{}
		for _, s := range []State{StateStarting, StateReady, StateBusy, StateCancelling, StateBackoff} {
			counts[s.String()] = 0
		}
		counts["spare"] = 0
		for _, w := range st.Workers {
			if w.Spare {
				if w.State == StateReady {
					counts["spare"]++
				}
				continue
			}
			counts[w.State.String()]++
		}
		for state, n := range counts {
			o.ObserveInt64(workers, n, metric.WithAttributes(attribute.String("state", state)))
		}
		return nil
	}, queueDepth, workers)
	return err
}
