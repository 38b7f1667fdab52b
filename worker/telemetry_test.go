package worker

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	workerv1 "github.com/hourglass-dev/hourglass/gen/hourglass/worker/v1"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	grpccodes "google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// tracedWorker is a worker whose spans go to server, called by a client
// that traces its calls into client, the way the executor does.
type tracedWorker struct {
	*testWorker
	server, client *tracetest.SpanRecorder
	clientTracer   trace.Tracer
}

func startTracedWorker(t *testing.T, gen Generator) *tracedWorker {
	t.Helper()
	server, client := tracetest.NewSpanRecorder(), tracetest.NewSpanRecorder()
	stp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(server))
	ctp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(client))

	socket := filepath.Join(t.TempDir(), "w.sock")
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- Serve(ctx, Options{
			SocketPath:     socket,
			Generator:      gen,
			Logger:         slog.New(slog.NewJSONHandler(logs, nil)),
			StopTimeout:    time.Second,
			TracerProvider: stp,
		})
	}()
	conn, err := grpc.NewClient("unix://"+socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 5 * time.Millisecond, Multiplier: 1.5, MaxDelay: 50 * time.Millisecond},
			MinConnectTimeout: time.Second,
		}),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler(
			otelgrpc.WithTracerProvider(ctp),
			otelgrpc.WithPropagators(propagation.TraceContext{}),
		)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	w := &tracedWorker{
		testWorker:   &testWorker{socket: socket, client: workerv1.NewWorkerServiceClient(conn), logs: logs},
		server:       server,
		client:       client,
		clientTracer: ctp.Tracer("test"),
	}
	w.describe(t, grpc.WaitForReady(true))
	return w
}

// serverSpans waits until the worker ended n spans and returns them. The
// Run span ends in the stats handler, which may be a moment after the
// client read the end of the stream.
func (w *tracedWorker) serverSpans(t *testing.T, n int) map[string]sdktrace.ReadOnlySpan {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(w.server.Ended()) < n && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	spans := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range w.server.Ended() {
		spans[s.Name()] = s
	}
	if len(spans) != n {
		t.Fatalf("worker spans %v, want %d", names(w.server.Ended()), n)
	}
	return spans
}

func names(spans []sdktrace.ReadOnlySpan) []string {
	var out []string
	for _, s := range spans {
		out = append(out, s.Name())
	}
	return out
}

func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		m[kv.Key] = kv.Value
	}
	return m
}

const runSpanName = "hourglass.worker.v1.WorkerService/Run"

func TestRunSpanJoinsCallersTrace(t *testing.T) {
	w := startTracedWorker(t, steppingGenerator())
	ctx, parent := w.clientTracer.Start(context.Background(), "executor.execute")
	job := validJob("j1")
	res := w.run(ctx, job)
	parent.End()
	if res.err != nil {
		t.Fatalf("Run: %v", res.err)
	}
	// Describe polls are not traced on the worker side.
	w.describe(t)

	spans := w.serverSpans(t, 2)
	run, gen := spans[runSpanName], spans["worker.generate"]
	if run == nil || gen == nil {
		t.Fatalf("worker spans %v, want %s and worker.generate", names(w.server.Ended()), runSpanName)
	}
	var clientRun sdktrace.ReadOnlySpan
	for _, s := range w.client.Ended() {
		if s.Name() == runSpanName {
			clientRun = s
		}
	}
	if clientRun == nil {
		t.Fatalf("client spans %v lack the Run call", names(w.client.Ended()))
	}
	// Across the process boundary: the worker's Run span is the remote
	// child of the caller's client span, in the caller's trace.
	if run.SpanKind() != trace.SpanKindServer || !run.Parent().IsRemote() ||
		run.Parent().SpanID() != clientRun.SpanContext().SpanID() ||
		run.SpanContext().TraceID() != parent.SpanContext().TraceID() {
		t.Errorf("Run span parent %v (remote %v) trace %s; want client span %s in trace %s",
			run.Parent().SpanID(), run.Parent().IsRemote(), run.SpanContext().TraceID(),
			clientRun.SpanContext().SpanID(), parent.SpanContext().TraceID())
	}
	if gen.Parent().SpanID() != run.SpanContext().SpanID() {
		t.Errorf("worker.generate parent = %s, want the Run span %s", gen.Parent().SpanID(), run.SpanContext().SpanID())
	}
	if got := attrs(run)["rpc.response.status_code"].AsString(); got != "OK" {
		t.Errorf("Run span rpc.response.status_code = %q, want OK", got)
	}

	a := attrs(gen)
	for key, want := range map[attribute.Key]attribute.Value{
		"hourglass.job.id":      attribute.StringValue("j1"),
		"hourglass.model":       attribute.StringValue("test-model"),
		"hourglass.width":       attribute.Int64Value(64),
		"hourglass.height":      attribute.Int64Value(64),
		"hourglass.steps":       attribute.Int64Value(3),
		"hourglass.image_count": attribute.Int64Value(2),
		"hourglass.steps.total": attribute.Int64Value(6),
		"hourglass.steps.done":  attribute.Int64Value(6),
		"hourglass.images.done": attribute.Int64Value(2),
		"hourglass.outcome":     attribute.StringValue("OK"),
	} {
		if a[key] != want {
			t.Errorf("worker.generate %s = %v, want %v", key, a[key].String(), want.String())
		}
	}
	if gen.Status().Code != codes.Unset {
		t.Errorf("worker.generate status = %v, want unset", gen.Status())
	}
	var images []int64
	for _, ev := range gen.Events() {
		if ev.Name == "image" {
			for _, kv := range ev.Attributes {
				if kv.Key == "hourglass.image.index" {
					images = append(images, kv.Value.AsInt64())
				}
			}
		}
	}
	if len(images) != 2 || images[0] != 0 || images[1] != 1 {
		t.Errorf("image events for indexes %v, want [0 1]", images)
	}

	// Never the prompt, anywhere in the worker's spans.
	for _, s := range w.server.Ended() {
		kvs := s.Attributes()
		for _, ev := range s.Events() {
			kvs = append(kvs, ev.Attributes...)
		}
		for _, kv := range kvs {
			if strings.Contains(kv.Value.String(), job.GetPrompt()) {
				t.Errorf("span %s attribute %s holds the prompt", s.Name(), kv.Key)
			}
		}
	}
}

func TestExpiredJobSpansAreErrors(t *testing.T) {
	w := startTracedWorker(t, generateFunc(func(ctx context.Context, job *workerv1.Job, out Emitter) error {
		<-ctx.Done()
		// The next step's progress is where a generator sees the deadline.
		return out.Progress(1, job.GetSteps(), 0)
	}))
	job := validJob("late")
	// The job's own deadline, not the call's: the worker then sees
	// DeadlineExceeded for certain rather than racing the client's cancel.
	job.Deadline = timestamppb.New(time.Now().Add(50 * time.Millisecond))
	res := w.run(context.Background(), job)
	if status.Code(res.err) != grpccodes.DeadlineExceeded {
		t.Fatalf("Run: %v, want DEADLINE_EXCEEDED", res.err)
	}

	spans := w.serverSpans(t, 2)
	run, gen := spans[runSpanName], spans["worker.generate"]
	if run.Status().Code != codes.Error || attrs(run)["rpc.response.status_code"].AsString() != "DEADLINE_EXCEEDED" {
		t.Errorf("Run span status %v code %q, want Error DEADLINE_EXCEEDED", run.Status(), attrs(run)["rpc.response.status_code"].AsString())
	}
	if gen.Status().Code != codes.Error || attrs(gen)["hourglass.outcome"].AsString() != "DeadlineExceeded" {
		t.Errorf("worker.generate status %v outcome %q, want Error DeadlineExceeded", gen.Status(), attrs(gen)["hourglass.outcome"].AsString())
	}
	var observed bool
	for _, ev := range gen.Events() {
		observed = observed || ev.Name == "cancel observed"
	}
	if !observed {
		t.Errorf("worker.generate events %v lack \"cancel observed\"", gen.Events())
	}
}

func TestPanickingGeneratorSpanIsAnError(t *testing.T) {
	w := startTracedWorker(t, generateFunc(func(context.Context, *workerv1.Job, Emitter) error {
		panic("boom")
	}))
	if res := w.run(context.Background(), validJob("p")); status.Code(res.err) != grpccodes.Internal {
		t.Fatalf("Run: %v, want INTERNAL", res.err)
	}
	gen := w.serverSpans(t, 2)["worker.generate"]
	if gen.Status().Code != codes.Error || attrs(gen)["hourglass.outcome"].AsString() != "Internal" {
		t.Errorf("worker.generate status %v outcome %q, want Error Internal", gen.Status(), attrs(gen)["hourglass.outcome"].AsString())
	}
}
