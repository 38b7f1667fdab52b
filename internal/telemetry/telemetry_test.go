package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func setup(t *testing.T, opts Options) *Telemetry {
	t.Helper()
	if opts.ServiceName == "" {
		opts.ServiceName = "telemetry-test"
	}
	tel, err := Setup(context.Background(), opts)
	if err != nil {
		t.Fatalf("Setup: %v", err)
	}
	t.Cleanup(func() {
		if err := tel.Shutdown(context.Background()); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return tel
}

func TestConsoleExporterWritesSpans(t *testing.T) {
	var out syncBuffer
	tel := setup(t, Options{Environ: []string{"OTEL_TRACES_EXPORTER=console"}, Stderr: &out})
	_, span := tel.TracerProvider.Tracer("test").Start(context.Background(), "hello")
	span.SetAttributes(attribute.Int("answer", 42))
	span.End()
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	var got struct {
		Name        string
		SpanContext struct{ TraceID string }
		Resource    []struct {
			Key   string
			Value struct{ Value any }
		}
	}
	if err := json.Unmarshal([]byte(out.String()), &got); err != nil {
		t.Fatalf("console output is not one JSON span: %v\n%s", err, out.String())
	}
	if got.Name != "hello" || got.SpanContext.TraceID != span.SpanContext().TraceID().String() {
		t.Errorf("span = %q trace %s, want hello trace %s", got.Name, got.SpanContext.TraceID, span.SpanContext().TraceID())
	}
	var service any
	for _, kv := range got.Resource {
		if kv.Key == "service.name" {
			service = kv.Value.Value
		}
	}
	// OTEL_SERVICE_NAME from the test runner's environment would win; the
	// test does not set it.
	if service != "telemetry-test" {
		t.Errorf("service.name = %v, want telemetry-test", service)
	}
}

func TestNoExporterByDefaultStillMakesTraceIDs(t *testing.T) {
	for _, environ := range [][]string{{}, {"OTEL_TRACES_EXPORTER=none"}, {"OTEL_TRACES_EXPORTER= "}} {
		var out syncBuffer
		tel := setup(t, Options{Environ: environ, Stderr: &out})
		ctx, span := tel.TracerProvider.Tracer("test").Start(context.Background(), "parent")
		_, child := tel.TracerProvider.Tracer("test").Start(ctx, "child")
		sc := span.SpanContext()
		if !sc.IsValid() || !sc.IsSampled() {
			t.Errorf("%q: span context %v is not valid and sampled", environ, sc)
		}
		if child.SpanContext().TraceID() != sc.TraceID() {
			t.Errorf("%q: child is not in its parent's trace", environ)
		}
		// The context still propagates, so a worker can join the trace.
		carrier := propagation.MapCarrier{}
		otel.GetTextMapPropagator().Inject(ctx, carrier)
		if !strings.Contains(carrier.Get("traceparent"), sc.TraceID().String()) {
			t.Errorf("%q: traceparent = %q, want trace %s", environ, carrier.Get("traceparent"), sc.TraceID())
		}
		child.End()
		span.End()
		if err := tel.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		if out.String() != "" {
			t.Errorf("%q: wrote %q, want nothing", environ, out.String())
		}
		if tel.MetricsHandler != nil {
			t.Errorf("%q: metrics handler without Metrics", environ)
		}
	}
}

func TestBadEnvironmentIsAnErrorNamingIt(t *testing.T) {
	for _, tc := range []struct {
		environ []string
		want    string
	}{
		{[]string{"OTEL_TRACES_EXPORTER=zipkin"}, `"zipkin"`},
		{[]string{"OTEL_TRACES_EXPORTER=console,jaeger"}, `"jaeger"`},
		{[]string{"OTEL_TRACES_EXPORTER=otlp", "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"}, "OTEL_EXPORTER_OTLP_PROTOCOL"},
		{[]string{"OTEL_TRACES_EXPORTER=otlp", "OTEL_EXPORTER_OTLP_PROTOCOL=grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/json"}, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"},
	} {
		_, err := Setup(context.Background(), Options{ServiceName: "x", Environ: tc.environ, Stderr: io.Discard})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want one naming %s", tc.environ, err, tc.want)
		}
	}
	if _, err := Setup(context.Background(), Options{Environ: []string{}}); err == nil {
		t.Error("no service name: no error")
	}
}

func TestSpanProcessorOverridesEnvironment(t *testing.T) {
	var out syncBuffer
	rec := tracetest.NewSpanRecorder()
	tel := setup(t, Options{Environ: []string{"OTEL_TRACES_EXPORTER=console"}, Stderr: &out, SpanProcessor: rec})
	_, span := tel.TracerProvider.Tracer("test").Start(context.Background(), "recorded")
	span.End()
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if ended := rec.Ended(); len(ended) != 1 || ended[0].Name() != "recorded" {
		t.Errorf("recorder got %v, want the one span", ended)
	}
	if out.String() != "" {
		t.Errorf("console exporter ran despite the override: %q", out.String())
	}
}

func TestMetricsHandlerServesPrometheusText(t *testing.T) {
	// Two Setups in one process must not collide: each has its own registry.
	for range 2 {
		tel := setup(t, Options{Environ: []string{}, Metrics: true})
		counter, err := tel.MeterProvider.Meter("test").Int64Counter("hourglass.test.jobs")
		if err != nil {
			t.Fatal(err)
		}
		counter.Add(context.Background(), 3, metric.WithAttributes(attribute.String("code", "OK")))

		rr := httptest.NewRecorder()
		tel.MetricsHandler.ServeHTTP(rr, httptest.NewRequest(http.MethodGet, "/metrics", nil))
		body := rr.Body.String()
		if rr.Code != http.StatusOK || !strings.HasPrefix(rr.Header().Get("Content-Type"), "text/plain") {
			t.Fatalf("GET /metrics = %d %q", rr.Code, rr.Header().Get("Content-Type"))
		}
		if !strings.Contains(body, "# TYPE hourglass_test_jobs_total counter") ||
			!strings.Contains(body, `code="OK"`) {
			t.Errorf("metrics page lacks the counter:\n%s", body)
		}
		for line := range strings.SplitSeq(body, "\n") {
			if strings.HasPrefix(line, "hourglass_test_jobs_total{") && !strings.HasSuffix(line, " 3") {
				t.Errorf("counter line %q, want value 3", line)
			}
		}
		if !strings.Contains(body, `service_name="telemetry-test"`) {
			t.Errorf("metrics page lacks target_info with the service name:\n%s", body)
		}
	}
}

// TestOTLPExporterSendsToCollector runs a fake OTLP collector and points
// the exporter at it through the process environment, which is where
// otlptracegrpc reads its endpoint.
func TestOTLPExporterSendsToCollector(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	col := &fakeCollector{}
	srv := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(srv, col)
	go srv.Serve(lis)
	defer srv.Stop()
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+lis.Addr().String())
	t.Setenv("OTEL_SERVICE_NAME", "from-env")

	tel, err := Setup(context.Background(), Options{
		ServiceName: "hourglass-worker",
		Environ:     []string{"OTEL_TRACES_EXPORTER=otlp", "OTEL_EXPORTER_OTLP_PROTOCOL=grpc"},
	})
	if err != nil {
		t.Fatal(err)
	}
	_, span := tel.TracerProvider.Tracer("test").Start(context.Background(), "exported")
	span.End()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tel.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}

	col.mu.Lock()
	defer col.mu.Unlock()
	var names []string
	var service string
	for _, req := range col.reqs {
		for _, rs := range req.GetResourceSpans() {
			for _, kv := range rs.GetResource().GetAttributes() {
				if kv.GetKey() == "service.name" {
					service = kv.GetValue().GetStringValue()
				}
			}
			for _, ss := range rs.GetScopeSpans() {
				for _, s := range ss.GetSpans() {
					names = append(names, s.GetName())
				}
			}
		}
	}
	if len(names) != 1 || names[0] != "exported" {
		t.Errorf("collector got spans %q, want [exported]", names)
	}
	if service != "from-env" {
		t.Errorf("service.name = %q, want OTEL_SERVICE_NAME's from-env", service)
	}
}

type fakeCollector struct {
	collectortrace.UnimplementedTraceServiceServer
	mu   sync.Mutex
	reqs []*collectortrace.ExportTraceServiceRequest
}

func (c *fakeCollector) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reqs = append(c.reqs, req)
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
