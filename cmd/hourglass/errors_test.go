package main

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"
)

func TestCodeName(t *testing.T) {
	tests := []struct {
		code codes.Code
		want string
	}{
		{codes.OK, "OK"},
		{codes.Canceled, "CANCELLED"},
		{codes.Unknown, "UNKNOWN"},
		{codes.InvalidArgument, "INVALID_ARGUMENT"},
		{codes.DeadlineExceeded, "DEADLINE_EXCEEDED"},
		{codes.NotFound, "NOT_FOUND"},
		{codes.AlreadyExists, "ALREADY_EXISTS"},
		{codes.PermissionDenied, "PERMISSION_DENIED"},
		{codes.ResourceExhausted, "RESOURCE_EXHAUSTED"},
		{codes.FailedPrecondition, "FAILED_PRECONDITION"},
		{codes.Aborted, "ABORTED"},
		{codes.OutOfRange, "OUT_OF_RANGE"},
		{codes.Unimplemented, "UNIMPLEMENTED"},
		{codes.Internal, "INTERNAL"},
		{codes.Unavailable, "UNAVAILABLE"},
		{codes.DataLoss, "DATA_LOSS"},
		{codes.Unauthenticated, "UNAUTHENTICATED"},
		{codes.Code(17), "CODE_17"},
	}
	for _, tt := range tests {
		if got := codeName(tt.code); got != tt.want {
			t.Errorf("codeName(%d) = %q, want %q", tt.code, got, tt.want)
		}
	}
}

func TestExitCodeFor(t *testing.T) {
	tests := []struct {
		code codes.Code
		want int
	}{
		{codes.OK, 0},
		{codes.Canceled, 11},
		{codes.Unknown, 12},
		{codes.InvalidArgument, 13},
		{codes.DeadlineExceeded, 14},
		{codes.NotFound, 15},
		{codes.ResourceExhausted, 18},
		{codes.Internal, 23},
		{codes.Unavailable, 24},
		{codes.Unauthenticated, 26},
		{codes.Code(17), 12},
		{codes.Code(1000), 12},
	}
	for _, tt := range tests {
		if got := exitCodeFor(tt.code); got != tt.want {
			t.Errorf("exitCodeFor(%v) = %d, want %d", tt.code, got, tt.want)
		}
	}
}

func TestExitStatus(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want int
	}{
		{"nil", nil, 0},
		{"help", errHelp, 0},
		{"usage", usagef("bad"), 2},
		{"local", localf("disk full"), 1},
		{"wrapped local", fmt.Errorf("x: %w", localf("disk full")), 1},
		{"not serving", &notServingError{status: "NOT_SERVING"}, 3},
		{"status", status.Error(codes.ResourceExhausted, "queue full"), 18},
		{"bare deadline", context.DeadlineExceeded, 14},
		{"bare cancel", context.Canceled, 11},
		{"other", fmt.Errorf("boom"), 12},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := exitStatus(tt.err); got != tt.want {
				t.Errorf("exitStatus(%v) = %d, want %d", tt.err, got, tt.want)
			}
		})
	}
}

// withDetails builds a status error carrying details, as a server would.
func withDetails(t *testing.T, c codes.Code, msg string, details ...proto.Message) error {
	t.Helper()
	st := status.New(c, msg)
	v1 := make([]protoadapt.MessageV1, len(details))
	for i, d := range details {
		v1[i] = protoadapt.MessageV1Of(d)
	}
	st, err := st.WithDetails(v1...)
	if err != nil {
		t.Fatal(err)
	}
	return st.Err()
}

func TestPrintError(t *testing.T) {
	tests := []struct {
		name string
		err  func(t *testing.T) error
		want string
	}{
		{
			name: "usage",
			err:  func(*testing.T) error { return usagef("generate: --prompt is required") },
			want: "hourglass: generate: --prompt is required\nRun 'hourglass help' for usage.\n",
		},
		{
			name: "local",
			err:  func(*testing.T) error { return localf("save image 0: disk full") },
			want: "hourglass: save image 0: disk full\n",
		},
		{
			name: "plain status",
			err: func(*testing.T) error {
				return status.Error(codes.DeadlineExceeded, "deadline passed after 12/30 steps")
			},
			want: "hourglass: DEADLINE_EXCEEDED: deadline passed after 12/30 steps\n",
		},
		{
			name: "bad request",
			err: func(t *testing.T) error {
				return withDetails(t, codes.InvalidArgument, "invalid request",
					&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
						{Field: "width", Description: "must be a multiple of 8"},
						{Field: "image_count", Description: "must be at most 32"},
					}})
			},
			want: "hourglass: INVALID_ARGUMENT: invalid request\n  width: must be a multiple of 8\n  image_count: must be at most 32\n",
		},
		{
			name: "protovalidate violations",
			err: func(t *testing.T) error {
				return withDetails(t, codes.InvalidArgument, "invalid request",
					&validate.Violations{Violations: []*validate.Violation{{
						Field: &validate.FieldPath{Elements: []*validate.FieldPathElement{{
							FieldName: proto.String("styles"),
							Subscript: &validate.FieldPathElement_Index{Index: 2},
						}}},
						RuleId:  proto.String("string.min_len"),
						Message: proto.String("value length must be at least 1 characters"),
					}}})
			},
			want: "hourglass: INVALID_ARGUMENT: invalid request\n  styles[2]: value length must be at least 1 characters [string.min_len]\n",
		},
		{
			name: "quota and retry",
			err: func(t *testing.T) error {
				return withDetails(t, codes.ResourceExhausted, "over quota",
					&errdetails.QuotaFailure{Violations: []*errdetails.QuotaFailure_Violation{
						{Subject: "tenant:acme", Description: "GPU seconds per minute"},
					}},
					&errdetails.RetryInfo{RetryDelay: durationpb.New(1500 * time.Millisecond)})
			},
			want: "hourglass: RESOURCE_EXHAUSTED: over quota\n  quota tenant:acme: GPU seconds per minute\n  retry after 1.5s\n",
		},
		{
			name: "error info",
			err: func(t *testing.T) error {
				return withDetails(t, codes.Unavailable, "worker crashed",
					&errdetails.ErrorInfo{Reason: "WORKER_CRASHED", Domain: "hourglass.dev",
						Metadata: map[string]string{"worker": "w1", "exit": "signal: killed"}})
			},
			want: "hourglass: UNAVAILABLE: worker crashed\n  reason: WORKER_CRASHED (domain hourglass.dev, exit=signal: killed, worker=w1)\n",
		},
		{
			name: "unknown detail type is skipped",
			err: func(t *testing.T) error {
				return withDetails(t, codes.Internal, "bug", &errdetails.DebugInfo{Detail: "stack"})
			},
			want: "hourglass: INTERNAL: bug\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			printError(&b, tt.err(t))
			if got := b.String(); got != tt.want {
				t.Errorf("printError wrote\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

func TestFieldPath(t *testing.T) {
	p := &validate.FieldPath{Elements: []*validate.FieldPathElement{
		{FieldName: proto.String("a"), Subscript: &validate.FieldPathElement_StringKey{StringKey: "k"}},
		{FieldName: proto.String("b"), Subscript: &validate.FieldPathElement_IntKey{IntKey: -1}},
		{FieldName: proto.String("c")},
	}}
	if got, want := fieldPath(p), `a["k"].b[-1].c`; got != want {
		t.Errorf("fieldPath = %q, want %q", got, want)
	}
}
