package server

// This file is the one place where outcomes become gRPC statuses: the table
// of DESIGN.md, in code. Handlers return executor errors or the helpers below;
// nothing else builds a status for the caller.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"buf.build/go/protovalidate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/hourglass-dev/hourglass/executor"
)

// ErrorDomain is the domain of every ErrorInfo hourglass sends.
const ErrorDomain = "hourglass.dev"

// ErrorInfo reasons. Callers may switch on them; they are part of the API.
const (
	ReasonDeadlineExceeded = "DEADLINE_EXCEEDED"
	ReasonQueueFull        = "QUEUE_FULL"
	ReasonWorkerCrashed    = "WORKER_CRASHED"
	ReasonOutOfMemory      = "WORKER_OUT_OF_MEMORY"
	ReasonDraining         = "SERVER_DRAINING"
	ReasonDeadlineTooShort = "DEADLINE_TOO_SHORT"
	ReasonOverloaded       = "OVERLOADED"
	// ReasonDeadlineUnreachable: the job was admitted, but waited until
	// its deadline could no longer cover its planned run time, and left
	// the queue without touching a worker (DEADLINE_TOO_SHORT is the same
	// judgement made at admission).
	ReasonDeadlineUnreachable = "DEADLINE_UNREACHABLE"
)

// statusFromJob maps an executor outcome to the caller's status.
func statusFromJob(log *slog.Logger, err error) error {
	var je *executor.Error
	if !errors.As(err, &je) {
		log.Error("unexpected job error", "err", err)
		return status.Error(codes.Internal, "internal error")
	}
	progress := map[string]string{
		"steps_done":  strconv.FormatUint(uint64(je.StepsDone), 10),
		"steps_total": strconv.FormatUint(uint64(je.StepsTotal), 10),
	}
	switch je.Kind {
	case executor.KindDeadline:
		return withDetails(codes.DeadlineExceeded, je.Msg,
			&errdetails.ErrorInfo{Reason: ReasonDeadlineExceeded, Domain: ErrorDomain, Metadata: progress})
	case executor.KindTooLate:
		return withDetails(codes.DeadlineExceeded, je.Msg,
			&errdetails.ErrorInfo{Reason: ReasonDeadlineTooShort, Domain: ErrorDomain, Metadata: estimate(je)})
	case executor.KindUnreachable:
		return withDetails(codes.DeadlineExceeded, je.Msg,
			&errdetails.ErrorInfo{Reason: ReasonDeadlineUnreachable, Domain: ErrorDomain, Metadata: estimate(je)})
	case executor.KindOverloaded:
		return withDetails(codes.ResourceExhausted, je.Msg,
			&errdetails.ErrorInfo{Reason: ReasonOverloaded, Domain: ErrorDomain, Metadata: estimate(je)},
			&errdetails.RetryInfo{RetryDelay: durationpb.New(je.RetryAfter)})
	case executor.KindCanceled:
		return status.Error(codes.Canceled, je.Msg)
	case executor.KindQueueFull:
		return withDetails(codes.ResourceExhausted, je.Msg,
			&errdetails.ErrorInfo{Reason: ReasonQueueFull, Domain: ErrorDomain},
			&errdetails.RetryInfo{RetryDelay: durationpb.New(je.RetryAfter)})
	case executor.KindWorkerCrashed:
		log.Warn("worker crashed mid-job", "err", je)
		return withDetails(codes.Unavailable, je.Msg,
			&errdetails.ErrorInfo{Reason: ReasonWorkerCrashed, Domain: ErrorDomain, Metadata: progress})
	case executor.KindOutOfMemory:
		return withDetails(codes.ResourceExhausted, je.Msg,
			&errdetails.ErrorInfo{Reason: ReasonOutOfMemory, Domain: ErrorDomain, Metadata: progress})
	case executor.KindInvalid:
		return status.Error(codes.InvalidArgument, je.Msg)
	case executor.KindUnavailable:
		return withDetails(codes.Unavailable, je.Msg,
			&errdetails.ErrorInfo{Reason: ReasonDraining, Domain: ErrorDomain})
	default:
		log.Error("job failed", "err", je)
		return status.Error(codes.Internal, "internal error")
	}
}

// estimate is the admission numbers of a refusal, in milliseconds.
func estimate(je *executor.Error) map[string]string {
	return map[string]string{
		"estimate_ms":  strconv.FormatInt(je.Estimate.Milliseconds(), 10),
		"remaining_ms": strconv.FormatInt(je.Remaining.Milliseconds(), 10),
	}
}

// fieldViolation builds one BadRequest entry.
func fieldViolation(field, description string) *errdetails.BadRequest_FieldViolation {
	return &errdetails.BadRequest_FieldViolation{Field: field, Description: description}
}

// invalidArgument is INVALID_ARGUMENT with BadRequest field violations.
func invalidArgument(violations ...*errdetails.BadRequest_FieldViolation) error {
	msg := "invalid request"
	if len(violations) > 0 {
		msg = fmt.Sprintf("invalid request: %s: %s", violations[0].GetField(), violations[0].GetDescription())
		if len(violations) > 1 {
			msg += fmt.Sprintf(" (and %d more)", len(violations)-1)
		}
	}
	return withDetails(codes.InvalidArgument, msg, &errdetails.BadRequest{FieldViolations: violations})
}

func notFound(format string, args ...any) error {
	return status.Errorf(codes.NotFound, format, args...)
}

func unavailable(reason, msg string) error {
	return withDetails(codes.Unavailable, msg, &errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain})
}

func withDetails(code codes.Code, msg string, details ...protoadapt.MessageV1) error {
	st, err := status.New(code, msg).WithDetails(details...)
	if err != nil {
		return status.Error(code, msg) // details never fail to marshal; keep the code
	}
	return st.Err()
}

// badRequestDetails adds a google.rpc.BadRequest to the INVALID_ARGUMENT
// statuses of the protovalidate interceptor. That interceptor attaches only
// buf.validate.Violations, which few clients know; BadRequest is what
// grpcurl, the gRPC error model and every Google-style SDK understand. Both
// are kept.
func badRequestDetails(err error) error {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.InvalidArgument {
		return err
	}
	var br errdetails.BadRequest
	for _, d := range st.Details() {
		vs, ok := d.(*validate.Violations)
		if !ok {
			continue
		}
		for _, v := range vs.GetViolations() {
			br.FieldViolations = append(br.FieldViolations,
				fieldViolation(protovalidate.FieldPathString(v.GetField()), v.GetMessage()))
		}
	}
	if len(br.FieldViolations) == 0 {
		return err
	}
	withBR, detErr := st.WithDetails(&br)
	if detErr != nil {
		return err
	}
	return withBR.Err()
}

func unaryBadRequest(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	return resp, badRequestDetails(err)
}

func streamBadRequest(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return badRequestDetails(handler(srv, ss))
}

// ReasonTenantQuota is the ErrorInfo reason of a call refused because its
// tenant is over a limit of its own (concurrent jobs or worker-seconds),
// as opposed to the server being full (QUEUE_FULL, OVERLOADED): retrying
// elsewhere does not help, waiting does.
const ReasonTenantQuota = "TENANT_QUOTA_EXCEEDED"

// unauthenticated is UNAUTHENTICATED with a short message. It carries no
// details and never what the caller presented: an error must not echo a
// credential back, nor into a log.
func unauthenticated(msg string) error {
	return status.Error(codes.Unauthenticated, msg)
}

// tenantQuotaExceeded is RESOURCE_EXHAUSTED for a tenant over a limit:
// QuotaFailure with subject "tenant:NAME" and a description that starts
// with the limit ("concurrent jobs" or "worker-seconds"), RetryInfo with
// when the same call may pass, and ErrorInfo TENANT_QUOTA_EXCEEDED whose
// metadata names the tenant and the limit id (concurrent_jobs or
// worker_seconds).
func tenantQuotaExceeded(tenant, limitID, description string, retryAfter time.Duration) error {
	return withDetails(codes.ResourceExhausted, fmt.Sprintf("tenant %q is over its quota: %s", tenant, description),
		&errdetails.ErrorInfo{Reason: ReasonTenantQuota, Domain: ErrorDomain,
			Metadata: map[string]string{"tenant": tenant, "limit": limitID}},
		&errdetails.QuotaFailure{Violations: []*errdetails.QuotaFailure_Violation{{
			Subject: "tenant:" + tenant, Description: description, QuotaId: limitID}}},
		&errdetails.RetryInfo{RetryDelay: durationpb.New(retryAfter)})
}
