package executor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hourglass-dev/hourglass/executor/sched"
	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
	workerv1 "github.com/hourglass-dev/hourglass/gen/hourglass/worker/v1"
)

// megapixelSteps is a job's cost in the estimator's unit.
func megapixelSteps(j *workerv1.Job) float64 {
	return float64(j.GetWidth()) * float64(j.GetHeight()) / 1e6 *
		float64(j.GetSteps()) * float64(j.GetImageCount())
}

// policyOf is the scheduling policy the configuration asks for.
func policyOf(cfg Config) sched.Policy {
	if !cfg.Admission {
		return sched.FIFO
	}
	return cfg.Policy
}

// admitLocked decides, before any worker is touched, whether a job may wait
// for a worker; the decision is the scheduling core's (see package sched):
// a job is admitted only if, by the planned run times, it and every job
// admitted before it finish before their deadlines.
func (e *Executor) admitLocked(j *job) error {
	if e.closed {
		return &Error{Kind: KindUnavailable, Msg: "server is shutting down"}
	}
	refusal := e.sch.Admit(time.Now(), j.sj)
	if refusal == nil {
		return nil
	}
	err := &Error{Msg: refusal.Error(), Estimate: refusal.Planned, Remaining: refusal.Remaining,
		RetryAfter: refusal.RetryAfter, Reason: refusal.Reason.String()}
	switch refusal.Reason {
	case sched.TooShort:
		err.Kind = KindTooLate
	case sched.QueueFull:
		err.Kind = KindQueueFull
	default: // Overloaded, OverShare: another replica may take it at once
		err.Kind = KindOverloaded
	}
	return err
}

// unreachableErr answers a job that left the queue unstarted because its
// latest start (deadline − planned run time) passed.
func unreachableErr(j *job) error {
	return &Error{Kind: KindUnreachable, Estimate: j.sj.Planned, Remaining: max(0, time.Until(j.deadline)),
		StepsTotal: j.stepsTotal,
		Msg: fmt.Sprintf("cannot finish before the deadline any more: planned run time %v, %v remain; not started",
			j.sj.Planned.Round(time.Millisecond), max(0, time.Until(j.deadline)).Round(time.Millisecond))}
}

// calibrate measures a worker with two small jobs of different cost (after
// one warm-up run, which on a GPU pays for kernel compilation) and seeds the
// estimator with the result.
func (e *Executor) calibrate(ctx context.Context, w *workerProc) error {
	cat := catalogOf(w.desc)
	small := &workerv1.Job{Id: "calibrate-small", Prompt: "calibration", Width: 64, Height: 64, Steps: 2, ImageCount: 1,
		GuidanceScale: 4, Sharpness: 2, Model: cat.DefaultModel, OutputFormat: hourglassv1.OutputFormat_OUTPUT_FORMAT_PNG}
	big := &workerv1.Job{Id: "calibrate-big", Prompt: "calibration", Width: 512, Height: 512, Steps: 8, ImageCount: 1,
		GuidanceScale: 4, Sharpness: 2, Model: cat.DefaultModel, OutputFormat: hourglassv1.OutputFormat_OUTPUT_FORMAT_PNG}
	run := func(job *workerv1.Job) (time.Duration, error) {
		ctx, cancel := context.WithTimeout(ctx, e.cfg.WorkerStart)
		defer cancel()
		start := time.Now()
		stream, err := w.client.Run(ctx, &workerv1.RunRequest{Job: job})
		if err != nil {
			return 0, err
		}
		for {
			_, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return time.Since(start), nil
			}
			if err != nil {
				return 0, err
			}
		}
	}
	if _, err := run(small); err != nil {
		return fmt.Errorf("calibrate on worker %s: %w", w.name, err)
	}
	tSmall, err := run(small)
	if err != nil {
		return fmt.Errorf("calibrate on worker %s: %w", w.name, err)
	}
	tBig, err := run(big)
	if err != nil {
		return fmt.Errorf("calibrate on worker %s: %w", w.name, err)
	}
	e.mu.Lock()
	e.sch.Calibrate(megapixelSteps(small), tSmall, megapixelSteps(big), tBig)
	overhead, rate := e.sch.Calibration()
	e.mu.Unlock()
	e.log.Info("calibrated run-time estimate", "model", cat.DefaultModel, "overhead", overhead,
		"seconds_per_megapixel_step", rate, "small_run", tSmall, "big_run", tBig)
	return nil
}
