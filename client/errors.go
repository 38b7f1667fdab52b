package client

// Everything about a failed call is here: hourglass's ErrorInfo reasons and
// the helpers that read a status. The errors the client returns are gRPC
// status errors (status.FromError works on them), possibly wrapped by
// grpc-go ("max retries exhausted: ..."), or ErrNoDeadline.

import (
	"context"
	"errors"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrorDomain is the domain of the ErrorInfo details hourglassd sends.
const ErrorDomain = "hourglass.dev"

// ErrorInfo reasons hourglassd sends, by status code. They are part of the
// API: switch on Reason(err).
const (
	// DEADLINE_EXCEEDED: the deadline passed while the job was queued or
	// running; metadata steps_done and steps_total say how far it got.
	ReasonDeadlineExceeded = "DEADLINE_EXCEEDED"
	// DEADLINE_EXCEEDED, at once: the job cannot finish before its
	// deadline even on an idle worker; metadata estimate_ms and
	// remaining_ms. Ask for less, or give it more time.
	ReasonDeadlineTooShort = "DEADLINE_TOO_SHORT"
	// DEADLINE_EXCEEDED, before the deadline: the job was admitted but
	// still waited at its latest start (its deadline minus its planned run
	// time), because a worker overran its plan or failed; it left the
	// queue without running. Metadata estimate_ms and remaining_ms.
	ReasonDeadlineUnreachable = "DEADLINE_UNREACHABLE"
	// RESOURCE_EXHAUSTED with RetryInfo: the server's queue is full. The
	// client moves such a call to the other replicas before it returns
	// this (see the package doc).
	ReasonQueueFull = "QUEUE_FULL"
	// RESOURCE_EXHAUSTED with RetryInfo: with the work the server has
	// already promised, the job (or one admitted before it) would miss its
	// deadline, or the caller's tenant holds its fair share of the
	// workers; RetryInfo is when a job like it would fit. Another replica
	// may have room: the client moves the call there before it returns
	// this (see the package doc).
	ReasonOverloaded = "OVERLOADED"
	// RESOURCE_EXHAUSTED with RetryInfo and QuotaFailure: the caller's
	// tenant is over its own limit (concurrent jobs or worker-seconds);
	// waiting helps, going elsewhere should not.
	ReasonTenantQuota = "TENANT_QUOTA_EXCEEDED"
	// RESOURCE_EXHAUSTED, without RetryInfo: the GPU ran out of memory.
	// The same request will likely fail again: ask for less.
	ReasonOutOfMemory = "WORKER_OUT_OF_MEMORY"
	// UNAVAILABLE: the worker crashed or was killed mid-job. Safe to
	// retry with the same seed; the client already did.
	ReasonWorkerCrashed = "WORKER_CRASHED"
	// UNAVAILABLE: the server is starting or draining; retry on another
	// replica (the client already did).
	ReasonDraining = "SERVER_DRAINING"
)

// Code is the gRPC code of err: codes.OK for nil, DEADLINE_EXCEEDED and
// CANCELLED for bare context errors, UNKNOWN for errors that carry no
// status.
func Code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	if st, ok := status.FromError(err); ok {
		return st.Code()
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return status.FromContextError(err).Code()
	}
	return codes.Unknown
}

// Reason is the reason of the first ErrorInfo in err's status details, ""
// when there is none. See the Reason constants.
func Reason(err error) string {
	if ei := detail[*errdetails.ErrorInfo](err); ei != nil {
		return ei.GetReason()
	}
	return ""
}

// ErrorMetadata is the metadata of the first ErrorInfo in err's status
// details (steps_done, estimate_ms, tenant, ...), nil when there is none.
func ErrorMetadata(err error) map[string]string {
	return detail[*errdetails.ErrorInfo](err).GetMetadata()
}

// IsDeadlineExceeded reports whether the call ran out of time: the
// deadline passed while queued or running, the server refused a job that
// could not finish in time (Reason ReasonDeadlineTooShort), or the
// caller's own context deadline ended the call.
func IsDeadlineExceeded(err error) bool {
	return Code(err) == codes.DeadlineExceeded
}

// IsOverloaded reports whether the call was refused for load, and how long
// to wait before the same call may pass: RESOURCE_EXHAUSTED with a
// RetryInfo (reasons ReasonQueueFull, ReasonOverloaded and
// ReasonTenantQuota; the last is the caller's own quota, see
// QuotaViolations). A GPU out of memory is RESOURCE_EXHAUSTED without
// RetryInfo and is not overload.
func IsOverloaded(err error) (retryAfter time.Duration, ok bool) {
	if Code(err) != codes.ResourceExhausted {
		return 0, false
	}
	ri := detail[*errdetails.RetryInfo](err)
	if ri == nil {
		return 0, false
	}
	return max(ri.GetRetryDelay().AsDuration(), 0), true
}

// IsRetryable reports whether the same request may succeed if sent again
// later: UNAVAILABLE (the client already tried it WithMaxAttempts times),
// RESOURCE_EXHAUSTED with RetryInfo (after IsOverloaded's delay), and
// ABORTED. Keep the seed (GenerateStats.seed, or the started event's) to
// get the same images. A deadline that passed, a bad request, a missing
// model, bad credentials, a GPU out of memory or a cancelled call are not
// retryable as they are.
func IsRetryable(err error) bool {
	switch Code(err) {
	case codes.Unavailable, codes.Aborted:
		return true
	case codes.ResourceExhausted:
		_, ok := IsOverloaded(err)
		return ok
	}
	return false
}

// FieldViolations lists what is wrong with an INVALID_ARGUMENT request:
// the google.rpc.BadRequest field violations ("width": "must be a multiple
// of 8"), nil when err carries none.
func FieldViolations(err error) []*errdetails.BadRequest_FieldViolation {
	return detail[*errdetails.BadRequest](err).GetFieldViolations()
}

// QuotaViolations lists the quotas a RESOURCE_EXHAUSTED call exceeded
// (subject "tenant:NAME"), nil when err carries none.
func QuotaViolations(err error) []*errdetails.QuotaFailure_Violation {
	return detail[*errdetails.QuotaFailure](err).GetViolations()
}

// detail is the first status detail of type T in err, or the zero T.
func detail[T any](err error) T {
	var zero T
	st, ok := status.FromError(err)
	if !ok || err == nil {
		return zero
	}
	for _, d := range st.Details() {
		if v, ok := d.(T); ok {
			return v
		}
	}
	return zero
}
