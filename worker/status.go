package worker

import (
	"context"
	"errors"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// errPanic marks a Generate that panicked; the stack is in the worker's log,
// never in the status, because the status travels to the caller.
var errPanic = errors.New("generator panicked")

// maxInternalMessage bounds the error text an INTERNAL status carries, so
// that an error which happens to embed a huge value cannot blow up the
// executor's logs or the caller's error message.
const maxInternalMessage = 256

// toStatus turns the error Generate returned into the status the executor
// expects. This is the worker side of the status mapping in DESIGN.md; the
// executor decides what the caller finally sees.
//
// Order matters: a context error wins over everything else, because a
// generator that fails while being cancelled usually fails *because* it is
// being cancelled, and the executor must see that to account the job right.
func toStatus(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "job cancelled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "job deadline exceeded")
	case errors.Is(err, ErrOutOfMemory):
		return oomStatus(err).Err()
	case errors.Is(err, errPanic):
		return status.Error(codes.Internal, "worker: generator panicked")
	}
	var invalid *InvalidJobError
	if errors.As(err, &invalid) {
		return invalid.GRPCStatus().Err()
	}
	// A generator may already speak gRPC (for instance an error from a
	// model server it proxies); keep its code rather than flattening it.
	if st, ok := status.FromError(err); ok && st.Code() != codes.OK && st.Code() != codes.Unknown {
		return st.Err()
	}
	return status.Error(codes.Internal, truncate("worker: "+err.Error(), maxInternalMessage))
}

func oomStatus(err error) *status.Status {
	st := status.New(codes.ResourceExhausted, truncate("worker: "+err.Error(), maxInternalMessage))
	withDetails, derr := st.WithDetails(&errdetails.ErrorInfo{
		Reason: ReasonOutOfMemory,
		Domain: ErrorDomain,
	})
	if derr != nil {
		return st
	}
	return withDetails
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	// Cut on a rune boundary so the status message stays valid UTF-8, which
	// gRPC requires.
	for n > 0 && !isRuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

func isRuneStart(b byte) bool { return b&0xC0 != 0x80 }
