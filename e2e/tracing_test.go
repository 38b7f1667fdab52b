package e2e

import (
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	grpccodes "google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/hourglass-dev/hourglass/executor"
	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
	"github.com/hourglass-dev/hourglass/internal/config"
	"github.com/hourglass-dev/hourglass/internal/telemetry"
	"github.com/hourglass-dev/hourglass/server"
)

// otlpReceiver is a minimal OTLP/gRPC trace collector: the worker processes
// export their spans to it, so that the test sees both sides of the
// executor→worker process boundary.
type otlpReceiver struct {
	coltracepb.UnimplementedTraceServiceServer
	mu    sync.Mutex
	spans []*tracepb.Span
}

func (r *otlpReceiver) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			r.spans = append(r.spans, ss.GetSpans()...)
		}
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

func (r *otlpReceiver) named(name string) []*tracepb.Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*tracepb.Span
	for _, s := range r.spans {
		if s.GetName() == name {
			out = append(out, s)
		}
	}
	return out
}

// The span tree of a call that runs past its deadline, across hourglassd's
// code (in this process, recorded in memory) and a real worker process
// (exported over OTLP to a receiver in this test):
//
//	client Generate
//	└─ server Generate: Error, rpc.response.status_code DEADLINE_EXCEEDED
//	   ├─ hourglass.admission
//	   ├─ hourglass.queue
//	   └─ hourglass.execute: events "cancel sent", "worker idle"
//	      └─ client WorkerService/Run
//	         └─ (worker process) server WorkerService/Run
//	            └─ (worker process) worker.generate
func TestTraceOfTimedOutCall(t *testing.T) {
	// The worker processes inherit this environment.
	receiver := &otlpReceiver{}
	collector := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(collector, receiver)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = collector.Serve(lis) }()
	defer collector.Stop()
	t.Setenv("OTEL_TRACES_EXPORTER", "otlp")
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+lis.Addr().String())
	t.Setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "50")

	recorder := tracetest.NewSpanRecorder()
	tel, err := telemetry.Setup(context.Background(), telemetry.Options{ServiceName: "hourglassd-test", SpanProcessor: recorder})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tel.Shutdown(context.Background()) }()

	cfg := config.Default()
	srv, err := server.New(server.Options{Config: cfg, FaultInjection: true, TracerProvider: tel.TracerProvider, Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	pool, err := executor.New(context.Background(), executor.Config{
		Workers: 1, Command: []string{filepath.Join(binDir, "hourglass-worker"), "--unsafe-fault-injection"},
		QueueMax: 4, CancelGrace: 2 * time.Second, Admission: true, SecondsPerMegapixelStep: 1e-9, Cancellation: true,
		TracerProvider: tel.TracerProvider, Logger: discardLogger(), WorkerLogs: discardWriter{},
	})
	if err != nil {
		t.Fatal(err)
	}
	srv.SetExecutor(pool)
	glis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(glis) }()

	conn, err := grpc.NewClient(glis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler(otelgrpc.WithTracerProvider(tel.TracerProvider),
			otelgrpc.WithPropagators(telemetry.Propagator()))))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	ctx = metadata.AppendToOutgoingContext(ctx, server.FaultMetadataKey, "slow=50ms")
	_, err = hourglassv1.NewGenerateServiceClient(conn).Generate(ctx, smallRequestSteps("a traced request", 1, 100))
	cancel()
	if status.Code(err) != grpccodes.DeadlineExceeded {
		t.Fatalf("Generate(slow, 300ms) = %v; want DEADLINE_EXCEEDED", err)
	}
	_ = conn.Close()
	// Closing the pool stops the worker with SIGTERM; it flushes its
	// spans to the receiver before it exits.
	waitFor(t, 10*time.Second, "the execute span to end", func() bool { return len(ended(recorder, "hourglass.execute")) == 1 })
	srv.Shutdown(context.Background())
	pool.Close()

	serverSpan := only(t, ended(recorder, "hourglass.v1.GenerateService/Generate"), sdktraceKind(true))
	if serverSpan.Status().Code != codes.Error {
		t.Errorf("server span status = %v; want Error", serverSpan.Status())
	}
	if v := attr(serverSpan, "rpc.response.status_code"); v != "DEADLINE_EXCEEDED" {
		t.Errorf("server span rpc.response.status_code = %q; want DEADLINE_EXCEEDED", v)
	}
	clientSpan := only(t, ended(recorder, "hourglass.v1.GenerateService/Generate"), sdktraceKind(false))
	if serverSpan.Parent().SpanID() != clientSpan.SpanContext().SpanID() {
		t.Errorf("server span's parent = %v; want the client span %v", serverSpan.Parent().SpanID(), clientSpan.SpanContext().SpanID())
	}
	for _, name := range []string{"hourglass.admission", "hourglass.queue", "hourglass.execute"} {
		s := only(t, ended(recorder, name), nil)
		if s.Parent().SpanID() != serverSpan.SpanContext().SpanID() {
			t.Errorf("%s's parent = %v; want the server span", name, s.Parent().SpanID())
		}
	}
	execute := only(t, ended(recorder, "hourglass.execute"), nil)
	for _, want := range []string{"cancel sent", "worker idle"} {
		if !slices.ContainsFunc(execute.Events(), func(e sdktrace.Event) bool { return e.Name == want }) {
			t.Errorf("execute span events = %v; want %q", eventNames(execute), want)
		}
	}
	if attr(execute, "hourglass.steps.done") == "0" || attr(execute, "hourglass.worker.id") != "w0" {
		t.Errorf("execute span attributes = %v; want steps done and worker w0", execute.Attributes())
	}
	runClient := only(t, ended(recorder, "hourglass.worker.v1.WorkerService/Run"), sdktraceKind(false))
	if runClient.Parent().SpanID() != execute.SpanContext().SpanID() {
		t.Errorf("worker call's parent = %v; want the execute span", runClient.Parent().SpanID())
	}

	// The worker's side, from another process.
	var runServer *tracepb.Span
	waitFor(t, 10*time.Second, "the worker's spans at the OTLP receiver", func() bool {
		rs := receiver.named("hourglass.worker.v1.WorkerService/Run")
		if len(rs) == 0 || len(receiver.named("worker.generate")) == 0 {
			return false
		}
		runServer = rs[0]
		return true
	})
	traceID := serverSpan.SpanContext().TraceID()
	if string(runServer.GetTraceId()) != string(traceID[:]) {
		t.Errorf("worker Run span trace id = %x; want the caller's %s", runServer.GetTraceId(), traceID)
	}
	clientID := runClient.SpanContext().SpanID()
	if string(runServer.GetParentSpanId()) != string(clientID[:]) {
		t.Errorf("worker Run span parent = %x; want the executor's client span %s", runServer.GetParentSpanId(), clientID)
	}
	generate := receiver.named("worker.generate")[0]
	if string(generate.GetParentSpanId()) != string(runServer.GetSpanId()) {
		t.Errorf("worker.generate parent = %x; want the worker's Run span %x", generate.GetParentSpanId(), runServer.GetSpanId())
	}
}

func ended(r *tracetest.SpanRecorder, name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range r.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

// sdktraceKind filters spans by kind: server (true) or client (false).
func sdktraceKind(server bool) func(sdktrace.ReadOnlySpan) bool {
	return func(s sdktrace.ReadOnlySpan) bool {
		return (s.SpanKind().String() == "server") == server
	}
}

func only(t *testing.T, spans []sdktrace.ReadOnlySpan, keep func(sdktrace.ReadOnlySpan) bool) sdktrace.ReadOnlySpan {
	t.Helper()
	var out []sdktrace.ReadOnlySpan
	for _, s := range spans {
		if keep == nil || keep(s) {
			out = append(out, s)
		}
	}
	if len(out) != 1 {
		t.Fatalf("found %d matching spans; want exactly 1", len(out))
	}
	return out[0]
}

func attr(s sdktrace.ReadOnlySpan, key string) string {
	for _, kv := range s.Attributes() {
		if kv.Key == attribute.Key(key) {
			return kv.Value.String()
		}
	}
	return ""
}

func eventNames(s sdktrace.ReadOnlySpan) []string {
	var names []string
	for _, e := range s.Events() {
		names = append(names, e.Name)
	}
	return names
}

func smallRequestSteps(prompt string, seed uint64, steps uint32) *hourglassv1.GenerateRequest {
	r := smallRequest(prompt, seed)
	r.Steps = &steps
	return r
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

type discardWriter struct{}

func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }
