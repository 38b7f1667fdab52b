package executor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
	workerv1 "github.com/hourglass-dev/hourglass/gen/hourglass/worker/v1"
)

// admitLocked decides, before any worker is touched, whether a job may wait
// for a worker. A job that cannot finish before its deadline even on an
// idle worker is refused with KindTooLate: running it would only waste the
// worker. A job that could finish on an idle worker but not after the
// estimated queue wait is refused with KindOverloaded, so that the caller
// (or its balancer) can try a less loaded replica at once.
func (e *Executor) admitLocked(j *job) error {
	if e.closed {
		return &Error{Kind: KindUnavailable, Msg: "server is shutting down"}
	}
	idle := e.idleSlotLocked() != nil
	if !idle && e.queue.Len() >= e.cfg.QueueMax {
		return &Error{Kind: KindQueueFull, RetryAfter: max(time.Second, e.queueWaitLocked(j)),
			Msg: fmt.Sprintf("queue full: %d jobs waiting, limit %d", e.queue.Len(), e.cfg.QueueMax)}
	}
	if !e.cfg.Admission {
		return nil
	}
	remaining := time.Until(j.deadline)
	if j.estimate > remaining {
		return &Error{Kind: KindTooLate, Estimate: j.estimate, Remaining: remaining,
			Msg: fmt.Sprintf("cannot finish before the deadline: estimated run time %v on an idle worker, %v remain",
				j.estimate.Round(time.Millisecond), remaining.Round(time.Millisecond))}
	}
	if idle {
		return nil
	}
	wait := e.queueWaitLocked(j)
	if wait+j.estimate > remaining {
		return &Error{Kind: KindOverloaded, Estimate: j.estimate, Remaining: remaining, RetryAfter: max(wait, 100*time.Millisecond),
			Msg: fmt.Sprintf("too busy to meet the deadline: estimated queue wait %v plus run time %v, %v remain",
				wait.Round(time.Millisecond), j.estimate.Round(time.Millisecond), remaining.Round(time.Millisecond))}
	}
	return nil
}

// queueWaitLocked estimates how long j would wait for a worker: the work
// still left on the running jobs plus that of the queued jobs that run
// before j, spread over the slots.
func (e *Executor) queueWaitLocked(j *job) time.Duration {
	var backlog time.Duration
	now := time.Now()
	for _, s := range e.slots {
		if s.job != nil {
			backlog += max(0, s.job.estimate-now.Sub(s.jobStart))
		}
	}
	_, queued := e.queue.ahead(j)
	return (backlog + queued) / time.Duration(len(e.slots))
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
	e.est.calibrate(megapixelSteps(small), tSmall, megapixelSteps(big), tBig)
	overhead, rate := e.est.snapshot()
	e.log.Info("calibrated run-time estimate", "model", cat.DefaultModel, "overhead", overhead,
		"seconds_per_megapixel_step", rate, "small_run", tSmall, "big_run", tBig)
	return nil
}
