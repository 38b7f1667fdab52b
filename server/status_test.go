package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"buf.build/go/protovalidate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hourglass-dev/hourglass/executor"
	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
	"github.com/hourglass-dev/hourglass/internal/config"
)

var discardLog = slog.New(slog.DiscardHandler)

// detailsOf sorts the details of a status by type. A detail that failed to
// unmarshal (an error in Details()) fails the test.
type statusDetails struct {
	info       *errdetails.ErrorInfo
	retry      *errdetails.RetryInfo
	badRequest *errdetails.BadRequest
	violations *validate.Violations
	count      int
}

func detailsOf(t *testing.T, st *status.Status) statusDetails {
	t.Helper()
	var d statusDetails
	for _, x := range st.Details() {
		d.count++
		switch v := x.(type) {
		case *errdetails.ErrorInfo:
			d.info = v
		case *errdetails.RetryInfo:
			d.retry = v
		case *errdetails.BadRequest:
			d.badRequest = v
		case *validate.Violations:
			d.violations = v
		case error:
			t.Fatalf("status %v: detail does not unmarshal: %v", st, v)
		default:
			t.Fatalf("status %v: unexpected detail %T", st, v)
		}
	}
	return d
}

func TestStatusFromJob(t *testing.T) {
	progress := map[string]string{"steps_done": "7", "steps_total": "30"}
	admission := map[string]string{"estimate_ms": "1500", "remaining_ms": "250"}
	base := func(k executor.Kind) *executor.Error {
		return &executor.Error{
			Kind: k, Msg: "msg of " + k.String(), StepsDone: 7, StepsTotal: 30,
			RetryAfter: 3 * time.Second, Estimate: 1500 * time.Millisecond, Remaining: 250 * time.Millisecond,
			Cause: errors.New("secret cause: prompt=a cat"),
		}
	}
	tests := []struct {
		kind     executor.Kind
		code     codes.Code
		msg      string // "" means the job's Msg
		reason   string // "" means no ErrorInfo
		metadata map[string]string
		retry    time.Duration // 0 means no RetryInfo
	}{
		{kind: executor.KindDeadline, code: codes.DeadlineExceeded, reason: ReasonDeadlineExceeded, metadata: progress},
		{kind: executor.KindTooLate, code: codes.DeadlineExceeded, reason: ReasonDeadlineTooShort, metadata: admission},
		{kind: executor.KindUnreachable, code: codes.DeadlineExceeded, reason: ReasonDeadlineUnreachable, metadata: admission},
		{kind: executor.KindOverloaded, code: codes.ResourceExhausted, reason: ReasonOverloaded, metadata: admission, retry: 3 * time.Second},
		{kind: executor.KindQueueFull, code: codes.ResourceExhausted, reason: ReasonQueueFull, retry: 3 * time.Second},
		{kind: executor.KindWorkerCrashed, code: codes.Unavailable, reason: ReasonWorkerCrashed, metadata: progress},
		{kind: executor.KindOutOfMemory, code: codes.ResourceExhausted, reason: ReasonOutOfMemory, metadata: progress},
		{kind: executor.KindCanceled, code: codes.Canceled},
		{kind: executor.KindInvalid, code: codes.InvalidArgument},
		{kind: executor.KindUnavailable, code: codes.Unavailable, reason: ReasonDraining},
		{kind: executor.KindInternal, code: codes.Internal, msg: "internal error"},
	}

	// Every Kind the executor defines must be in the table: a new Kind
	// without a row would silently become INTERNAL.
	covered := map[executor.Kind]bool{}
	for _, tt := range tests {
		covered[tt.kind] = true
	}
	for k := executor.Kind(0); !strings.HasPrefix(k.String(), "kind("); k++ {
		if !covered[k] {
			t.Errorf("executor.Kind %v has no row in the status table", k)
		}
	}

	for _, tt := range tests {
		t.Run(tt.kind.String(), func(t *testing.T) {
			je := base(tt.kind)
			// A wrapped executor error maps the same as a bare one.
			for _, in := range []error{je, fmt.Errorf("run: %w", je)} {
				got := statusFromJob(discardLog, in)
				st, ok := status.FromError(got)
				if !ok {
					t.Fatalf("statusFromJob(%v) = %v; want a gRPC status", in, got)
				}
				if st.Code() != tt.code {
					t.Errorf("statusFromJob(%v) code = %v; want %v", in, st.Code(), tt.code)
				}
				wantMsg := tt.msg
				if wantMsg == "" {
					wantMsg = je.Msg
				}
				if st.Message() != wantMsg {
					t.Errorf("statusFromJob(%v) message = %q; want %q", in, st.Message(), wantMsg)
				}
				if strings.Contains(st.Message(), "secret cause") {
					t.Errorf("statusFromJob(%v) message = %q; leaks the cause", in, st.Message())
				}
				d := detailsOf(t, st)
				switch {
				case tt.reason == "" && d.info != nil:
					t.Errorf("statusFromJob(%v) ErrorInfo = %v; want none", in, d.info)
				case tt.reason != "" && d.info == nil:
					t.Errorf("statusFromJob(%v) has no ErrorInfo; want reason %s", in, tt.reason)
				case tt.reason != "":
					if d.info.GetReason() != tt.reason || d.info.GetDomain() != ErrorDomain {
						t.Errorf("statusFromJob(%v) ErrorInfo = %s/%s; want %s/%s",
							in, d.info.GetDomain(), d.info.GetReason(), ErrorDomain, tt.reason)
					}
					if !maps.Equal(d.info.GetMetadata(), tt.metadata) {
						t.Errorf("statusFromJob(%v) ErrorInfo.metadata = %v; want %v", in, d.info.GetMetadata(), tt.metadata)
					}
				}
				switch {
				case tt.retry == 0 && d.retry != nil:
					t.Errorf("statusFromJob(%v) RetryInfo = %v; want none", in, d.retry)
				case tt.retry != 0 && d.retry == nil:
					t.Errorf("statusFromJob(%v) has no RetryInfo; want delay %v", in, tt.retry)
				case tt.retry != 0 && d.retry.GetRetryDelay().AsDuration() != tt.retry:
					t.Errorf("statusFromJob(%v) RetryInfo.delay = %v; want %v", in, d.retry.GetRetryDelay().AsDuration(), tt.retry)
				}
				if d.badRequest != nil || d.violations != nil {
					t.Errorf("statusFromJob(%v) carries validation details; want none", in)
				}
			}
		})
	}
}

// Anything that is not an executor.Error, and any Kind the table does not
// know, is a bug: INTERNAL, a fixed message, no details, nothing of the cause.
func TestStatusFromJobInternal(t *testing.T) {
	tests := []error{
		errors.New("foreign failure: /home/user/secret path"),
		context.DeadlineExceeded,
		&executor.Error{Kind: executor.KindInternal, Msg: "worker said garbage", Cause: errors.New("secret")},
		&executor.Error{Kind: executor.Kind(99), Msg: "unknown kind", Cause: errors.New("secret")},
		status.Error(codes.NotFound, "a status from below is not passed through"),
	}
	for _, in := range tests {
		got := statusFromJob(discardLog, in)
		st, ok := status.FromError(got)
		if !ok || st.Code() != codes.Internal || st.Message() != "internal error" || len(st.Details()) != 0 {
			t.Errorf("statusFromJob(%v) = %v (details %v); want INTERNAL \"internal error\" without details", in, got, st.Details())
		}
	}
}

// invalidStatus validates req with the real protovalidate validator and
// builds the status as the go-grpc-middleware protovalidate interceptor
// does: INVALID_ARGUMENT with the buf.validate.Violations as detail.
func invalidStatus(t *testing.T, req proto.Message) (*validate.Violations, error) {
	t.Helper()
	v, err := protovalidate.New()
	if err != nil {
		t.Fatalf("protovalidate.New() = %v", err)
	}
	verr := v.Validate(req)
	var valErr *protovalidate.ValidationError
	if !errors.As(verr, &valErr) {
		t.Fatalf("Validate(%v) = %v; want a *protovalidate.ValidationError", req, verr)
	}
	vs := valErr.ToProto()
	st, err := status.New(codes.InvalidArgument, verr.Error()).WithDetails(vs)
	if err != nil {
		t.Fatalf("WithDetails(%v) = %v", vs, err)
	}
	return vs, st.Err()
}

func fieldsOf(br *errdetails.BadRequest) []string {
	var fields []string
	for _, fv := range br.GetFieldViolations() {
		fields = append(fields, fv.GetField())
	}
	return fields
}

func TestBadRequestDetails(t *testing.T) {
	tests := []struct {
		name   string
		req    *hourglassv1.GenerateRequest
		fields []string
	}{
		{
			name:   "width 7",
			req:    &hourglassv1.GenerateRequest{Prompt: "a cat", Width: proto.Uint32(7)},
			fields: []string{"width", "width"}, // below 64 and not a multiple of 8
		},
		{
			name:   "empty style",
			req:    &hourglassv1.GenerateRequest{Prompt: "a cat", Styles: []string{"Fooocus V2", ""}},
			fields: []string{"styles[1]"},
		},
		{
			name:   "two fields",
			req:    &hourglassv1.GenerateRequest{Prompt: "a cat", Steps: proto.Uint32(0), ImageCount: proto.Uint32(33)},
			fields: []string{"steps", "image_count"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vs, in := invalidStatus(t, tt.req)
			got := badRequestDetails(in)
			st, ok := status.FromError(got)
			if !ok || st.Code() != codes.InvalidArgument {
				t.Fatalf("badRequestDetails(%v) = %v; want INVALID_ARGUMENT", in, got)
			}
			if want := status.Convert(in).Message(); st.Message() != want {
				t.Errorf("badRequestDetails(%v) message = %q; want %q (unchanged)", in, st.Message(), want)
			}
			d := detailsOf(t, st)
			if d.count != 2 {
				t.Errorf("badRequestDetails(%v) has %d details; want 2 (Violations and BadRequest)", in, d.count)
			}
			if !proto.Equal(d.violations, vs) {
				t.Errorf("badRequestDetails(%v) Violations = %v; want %v (kept)", in, d.violations, vs)
			}
			if d.badRequest == nil {
				t.Fatalf("badRequestDetails(%v) has no BadRequest", in)
			}
			if got := fieldsOf(d.badRequest); !slices.Equal(got, tt.fields) {
				t.Errorf("badRequestDetails(%v) BadRequest fields = %q; want %q", in, got, tt.fields)
			}
			for i, fv := range d.badRequest.GetFieldViolations() {
				if want := vs.GetViolations()[i].GetMessage(); fv.GetDescription() != want || want == "" {
					t.Errorf("badRequestDetails(%v) field %d description = %q; want %q", in, i, fv.GetDescription(), want)
				}
			}
		})
	}
}

func TestBadRequestDetailsPassThrough(t *testing.T) {
	tests := []struct {
		name string
		err  error
	}{
		{"nil", nil},
		{"not a status", errors.New("plain")},
		{"not found", status.Error(codes.NotFound, "no model")},
		{"unavailable with ErrorInfo", unavailable(ReasonDraining, "draining")},
		{"invalid argument without details", status.Error(codes.InvalidArgument, "bad")},
		// resolveJob's own INVALID_ARGUMENT already has a BadRequest; it
		// must not get a second one.
		{"invalid argument with BadRequest", invalidArgument(fieldViolation("styles[0]", "unknown style"))},
	}
	for _, tt := range tests {
		if got := badRequestDetails(tt.err); got != tt.err {
			t.Errorf("badRequestDetails(%v) = %v; want it unchanged", tt.err, got)
		}
	}
}

func TestInvalidArgument(t *testing.T) {
	tests := []struct {
		violations []*errdetails.BadRequest_FieldViolation
		msg        string
	}{
		{nil, "invalid request"},
		{[]*errdetails.BadRequest_FieldViolation{fieldViolation("width", "too wide")}, "invalid request: width: too wide"},
		{[]*errdetails.BadRequest_FieldViolation{fieldViolation("width", "w"), fieldViolation("height", "h"), fieldViolation("steps", "s")},
			"invalid request: width: w (and 2 more)"},
	}
	for _, tt := range tests {
		got := invalidArgument(tt.violations...)
		st := status.Convert(got)
		d := detailsOf(t, st)
		if st.Code() != codes.InvalidArgument || st.Message() != tt.msg || d.badRequest == nil ||
			len(d.badRequest.GetFieldViolations()) != len(tt.violations) {
			t.Errorf("invalidArgument(%v) = %v; want INVALID_ARGUMENT %q with %d field violations",
				tt.violations, got, tt.msg, len(tt.violations))
		}
	}
}

// startServer serves the real server, without an executor, on loopback and
// returns a client connection. Cleanup closes the client, shuts the server
// down and waits for Serve to return.
func startServer(t *testing.T) (*Server, *grpc.ClientConn) {
	t.Helper()
	cfg := config.Default()
	s, err := New(Options{Config: cfg, Logger: discardLog})
	if err != nil {
		t.Fatalf("New(%+v) = %v", cfg, err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc.NewClient(%s) = %v", lis.Addr(), err)
	}
	t.Cleanup(func() {
		if err := conn.Close(); err != nil {
			t.Errorf("conn.Close() = %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			t.Errorf("Serve() = %v; want nil after Shutdown", err)
		}
	})
	return s, conn
}

// TestServerInterceptors drives the real interceptor chain over loopback:
// validation runs before the handler, and the handler answers UNAVAILABLE
// while no executor is set.
func TestServerInterceptors(t *testing.T) {
	_, conn := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := hourglassv1.NewGenerateServiceClient(conn)
	cfg := config.Default()

	t.Run("GetServerInfo", func(t *testing.T) {
		info, err := client.GetServerInfo(ctx, &hourglassv1.GetServerInfoRequest{})
		if err != nil {
			t.Fatalf("GetServerInfo() = %v; want success", err)
		}
		lim := info.GetLimits()
		if info.GetVersion() != Version || lim.GetMaxCostPixelSteps() != cfg.Limits.MaxCostPixelSteps ||
			lim.GetDefaultTimeout().AsDuration() != cfg.Timeouts.Default || lim.GetMaxTimeout().AsDuration() != cfg.Timeouts.Max ||
			lim.GetMaxQueue() != uint32(cfg.Queue.Max) {
			t.Errorf("GetServerInfo() = %v; want version %s and the limits of config.Default()", info, Version)
		}
		if len(info.GetModels()) != 0 || len(info.GetWorkers()) != 0 {
			t.Errorf("GetServerInfo() = %v; want no models or workers before SetExecutor", info)
		}
	})

	valid := &hourglassv1.GenerateRequest{Prompt: "a cat", Width: proto.Uint32(768)}
	invalid := &hourglassv1.GenerateRequest{Prompt: "a cat", Width: proto.Uint32(7)}

	wantStarting := func(t *testing.T, call string, err error) {
		t.Helper()
		st := status.Convert(err)
		d := detailsOf(t, st)
		if st.Code() != codes.Unavailable || d.info.GetReason() != ReasonDraining || !strings.Contains(st.Message(), "workers are starting") {
			t.Errorf("%s(valid) = %v (ErrorInfo %v); want UNAVAILABLE %s \"workers are starting\"", call, err, d.info, ReasonDraining)
		}
	}
	wantInvalidWidth := func(t *testing.T, call string, err error) {
		t.Helper()
		st := status.Convert(err)
		d := detailsOf(t, st)
		if st.Code() != codes.InvalidArgument || d.violations == nil || !slices.Contains(fieldsOf(d.badRequest), "width") {
			t.Errorf("%s(width 7) = %v (details %v); want INVALID_ARGUMENT with Violations and a BadRequest naming width", call, err, st.Details())
		}
	}

	t.Run("Generate valid", func(t *testing.T) {
		_, err := client.Generate(ctx, valid)
		wantStarting(t, "Generate", err)
	})
	t.Run("Generate invalid", func(t *testing.T) {
		_, err := client.Generate(ctx, invalid)
		wantInvalidWidth(t, "Generate", err)
	})
	recvErr := func(t *testing.T, req *hourglassv1.GenerateRequest) error {
		t.Helper()
		stream, err := client.GenerateStream(ctx, req)
		if err != nil {
			return err
		}
		for {
			if _, err := stream.Recv(); err != nil {
				if err == io.EOF {
					t.Fatalf("GenerateStream(%v) ended without an error", req)
				}
				return err
			}
		}
	}
	t.Run("GenerateStream valid", func(t *testing.T) {
		wantStarting(t, "GenerateStream", recvErr(t, valid))
	})
	t.Run("GenerateStream invalid", func(t *testing.T) {
		wantInvalidWidth(t, "GenerateStream", recvErr(t, invalid))
	})

	t.Run("health", func(t *testing.T) {
		hc := healthpb.NewHealthClient(conn)
		for _, svc := range []string{"", serviceName} {
			resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
			if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
				t.Errorf("Health.Check(%q) = %v, %v; want NOT_SERVING before SetExecutor", svc, resp, err)
			}
		}
	})
}
