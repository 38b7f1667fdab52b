package executor

import (
	"errors"
	"fmt"
	"time"
)

// Kind classifies why a job did not produce its images. The server maps each
// kind to a gRPC status in one place (server/status.go); the executor knows
// nothing of gRPC codes for its callers.
type Kind int

const (
	// KindInternal is a bug or an unexpected worker answer.
	KindInternal Kind = iota
	// KindDeadline: the job's deadline passed, queued or running.
	KindDeadline
	// KindCanceled: the caller went away before the deadline.
	KindCanceled
	// KindQueueFull: no room to wait for a worker.
	KindQueueFull
	// KindWorkerCrashed: the worker process died or was killed mid-job.
	// Safe to retry: the same seed gives the same images.
	KindWorkerCrashed
	// KindOutOfMemory: the worker ran out of device memory.
	KindOutOfMemory
	// KindInvalid: the worker refused the job as invalid.
	KindInvalid
	// KindUnavailable: the executor is shutting down or has no workers.
	KindUnavailable
	// KindTooLate: admission refused the job because its estimated run
	// time on an idle worker exceeds the time left before its deadline.
	KindTooLate
	// KindOverloaded: admission refused the job because, with the work
	// already promised, it (or a job admitted before it) would miss its
	// deadline, or its tenant holds its fair share already.
	KindOverloaded
	// KindUnreachable: the job waited until its deadline could no longer
	// cover its planned run time, and left the queue unstarted.
	KindUnreachable
)

var kindNames = map[Kind]string{
	KindInternal:      "internal",
	KindDeadline:      "deadline",
	KindCanceled:      "canceled",
	KindQueueFull:     "queue_full",
	KindWorkerCrashed: "worker_crashed",
	KindOutOfMemory:   "out_of_memory",
	KindInvalid:       "invalid",
	KindUnavailable:   "unavailable",
	KindTooLate:       "too_late",
	KindOverloaded:    "overloaded",
	KindUnreachable:   "unreachable",
}

func (k Kind) String() string {
	if s, ok := kindNames[k]; ok {
		return s
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Error is the typed outcome of a job that failed. It carries what the caller
// needs to act (how far the job got, when to retry) and wraps the cause.
type Error struct {
	Kind Kind
	// Msg is safe to show to the caller: it never holds prompt text.
	Msg string
	// StepsDone and StepsTotal say how far the job got.
	StepsDone, StepsTotal uint32
	// RetryAfter suggests when a retry may succeed (queue full,
	// overloaded), 0 if none.
	RetryAfter time.Duration
	// Estimate and Remaining explain an admission refusal: the planned
	// run time and the time that was left before the deadline.
	Estimate, Remaining time.Duration
	// Reason is the scheduling core's reason for a refusal (too_short,
	// overloaded, over_share, queue_full), for metrics and logs.
	Reason string
	// RunTime is how long the job had been on a worker when it ended for
	// its caller (0 if it never started), so its tenant pays for it.
	RunTime time.Duration
	// Cause is the underlying error, for logs.
	Cause error
}

func (e *Error) Error() string {
	if e.Cause != nil {
		return fmt.Sprintf("%s: %s: %v", e.Kind, e.Msg, e.Cause)
	}
	return fmt.Sprintf("%s: %s", e.Kind, e.Msg)
}

func (e *Error) Unwrap() error { return e.Cause }

// KindOf returns the kind of a job error, KindInternal for foreign errors.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindInternal
}
