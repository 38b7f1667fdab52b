package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

// syncBuffer is a log sink the server's goroutines and the test share.
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

// lines parses the JSON lines logged so far.
func (b *syncBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(b.String()))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line %q is not JSON: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

// callLine is the log line of the call to method; it fails the test
// unless there is exactly one.
func (b *syncBuffer) callLine(t *testing.T, method string) map[string]any {
	t.Helper()
	var found []map[string]any
	for _, l := range b.lines(t) {
		if l["msg"] == "grpc call" && l["method"] == method {
			found = append(found, l)
		}
	}
	if len(found) != 1 {
		t.Fatalf("log has %d lines for %s; want 1:\n%s", len(found), method, b.String())
	}
	return found[0]
}

// testSpan stands in for the otelgrpc stats handler, which in hourglassd
// starts the server span before any interceptor runs.
var testSpan = trace.NewSpanContext(trace.SpanContextConfig{
	TraceID:    trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36},
	SpanID:     trace.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7},
	TraceFlags: trace.FlagsSampled,
})

func withTestSpan(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	return handler(trace.ContextWithSpanContext(ctx, testSpan), req)
}

// logServer serves svc behind span, logging, recovery and auth (tokens:
// acme has the token returned), and returns a client connection and the
// log.
func logServer(t *testing.T, svc hourglassv1.GenerateServiceServer, level slog.Level) (*grpc.ClientConn, *syncBuffer, string) {
	t.Helper()
	return logServerOrder(t, svc, level, false)
}

// logServerOrder is logServer with recovery outside logging when
// recoveryFirst is set.
func logServerOrder(t *testing.T, svc hourglassv1.GenerateServiceServer, level slog.Level, recoveryFirst bool) (*grpc.ClientConn, *syncBuffer, string) {
	t.Helper()
	const token = "secret-token-7f3a9c2e"
	tokens, err := parseTokens("tokens", strings.NewReader("acme "+tokenHash(token)+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	var buf syncBuffer
	logger := NewCallLogger(slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: level})))
	auth := NewAuthenticator(tokens, false)
	panicToInternal := recovery.WithRecoveryHandler(func(any) error { return status.Error(codes.Internal, "internal error") })
	unary := []grpc.UnaryServerInterceptor{logger.UnaryServerInterceptor(), recovery.UnaryServerInterceptor(panicToInternal)}
	stream := []grpc.StreamServerInterceptor{logger.StreamServerInterceptor(), recovery.StreamServerInterceptor(panicToInternal)}
	if recoveryFirst {
		unary[0], unary[1] = unary[1], unary[0]
		stream[0], stream[1] = stream[1], stream[0]
	}
	unary = append([]grpc.UnaryServerInterceptor{withTestSpan}, append(unary, auth.UnaryServerInterceptor())...)
	stream = append(stream, auth.StreamServerInterceptor())
	addr := serveEcho(t, svc, grpc.ChainUnaryInterceptor(unary...), grpc.ChainStreamInterceptor(stream...))
	return dialEcho(t, addr, nil), &buf, token
}

func TestLogLineFields(t *testing.T) {
	const prompt = "a red fox in the snow, by secret-prompt-51c0"
	svc := &echoService{generate: func(ctx context.Context, req *hourglassv1.GenerateRequest) error {
		AddLogFields(ctx, slog.String("job", "j-1"), slog.Int("prompt_len", len(req.GetPrompt())))
		AddLogFields(ctx, slog.Duration("queue_wait", 3*time.Millisecond), slog.String("job", "j-2"))
		AddLogFields(ctx, slog.String("method", "forged"), slog.String("code", "OK")) // reserved: dropped
		return nil
	}}
	cc, buf, token := logServer(t, svc, slog.LevelInfo)
	ctx, cancel := context.WithTimeout(withAuthorization(context.Background(), "Bearer "+token), time.Minute)
	defer cancel()
	deadline, _ := ctx.Deadline()
	if _, err := hourglassv1.NewGenerateServiceClient(cc).Generate(ctx, &hourglassv1.GenerateRequest{Prompt: prompt}); err != nil {
		t.Fatalf("Generate = %v", err)
	}
	line := buf.callLine(t, hourglassv1.GenerateService_Generate_FullMethodName)
	want := map[string]any{
		"level": "INFO", "code": "OK", "tenant": "acme",
		"trace_id": testSpan.TraceID().String(), "span_id": testSpan.SpanID().String(),
		"job": "j-2", "prompt_len": float64(len(prompt)), "queue_wait": float64(3 * time.Millisecond),
	}
	for k, v := range want {
		if line[k] != v {
			t.Errorf("log line %s = %v; want %v", k, line[k], v)
		}
	}
	if d, ok := line["duration_ms"].(float64); !ok || d < 0 {
		t.Errorf("log line duration_ms = %v; want a number >= 0", line["duration_ms"])
	}
	if p, _ := line["peer"].(string); !strings.HasPrefix(p, "127.0.0.1:") {
		t.Errorf("log line peer = %v; want 127.0.0.1:PORT", line["peer"])
	}
	// The wire carries the deadline as a timeout: the server's is within
	// a second of the client's.
	if s, _ := line["deadline"].(string); s == "" {
		t.Errorf("log line has no deadline")
	} else if d, err := time.Parse(time.RFC3339Nano, s); err != nil || d.Sub(deadline).Abs() > time.Second {
		t.Errorf("log line deadline = %q; want about %v (RFC 3339)", s, deadline.UTC())
	}
	if strings.Count(buf.String(), `"method"`) != 1 {
		t.Errorf("a handler wrote the reserved key method: %s", buf.String())
	}
	for _, secret := range []string{token, "secret-token", prompt, "secret-prompt", "red fox"} {
		if strings.Contains(buf.String(), secret) {
			t.Errorf("log holds %q:\n%s", secret, buf.String())
		}
	}
}

// A refused call is logged too, with its tenant unknown (anonymous), its
// code and message, and still without the token it presented.
func TestLogRefusedCallHidesToken(t *testing.T) {
	cc, buf, token := logServer(t, &echoService{}, slog.LevelInfo)
	wrong := token + "-but-wrong"
	ctx := withAuthorization(context.Background(), "Bearer "+wrong)
	_, err := hourglassv1.NewGenerateServiceClient(cc).Generate(ctx, &hourglassv1.GenerateRequest{Prompt: "secret-prompt-9d1e"})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("Generate(wrong token) = %v; want Unauthenticated", err)
	}
	line := buf.callLine(t, hourglassv1.GenerateService_Generate_FullMethodName)
	if line["code"] != "Unauthenticated" || line["level"] != "INFO" || line["tenant"] != AnonymousTenant || line["error"] == nil {
		t.Errorf("log line = %v; want code Unauthenticated at INFO, tenant anonymous, an error message", line)
	}
	for _, secret := range []string{"secret-token", "secret-prompt"} {
		if strings.Contains(buf.String(), secret) {
			t.Errorf("log holds %q:\n%s", secret, buf.String())
		}
	}
}

func TestLogStream(t *testing.T) {
	svc := &echoService{generate: func(ctx context.Context, req *hourglassv1.GenerateRequest) error {
		AddLogFields(ctx, slog.String("job", "s-1"))
		return nil
	}}
	cc, buf, token := logServer(t, svc, slog.LevelInfo)
	ctx := withAuthorization(context.Background(), "Bearer "+token)
	if _, err := callStream.do(ctx, cc); err != nil {
		t.Fatalf("GenerateStream = %v", err)
	}
	// The server logs after the handler returned, which the client may
	// see before the line is written: poll, with a deadline.
	var line map[string]any
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if strings.Contains(buf.String(), hourglassv1.GenerateService_GenerateStream_FullMethodName) {
			line = buf.callLine(t, hourglassv1.GenerateService_GenerateStream_FullMethodName)
			break
		}
	}
	if line["code"] != "OK" || line["tenant"] != "acme" || line["job"] != "s-1" {
		t.Errorf("stream log line = %v; want code OK, tenant acme, job s-1", line)
	}
}

func TestLogHealthAtDebug(t *testing.T) {
	for _, level := range []slog.Level{slog.LevelInfo, slog.LevelDebug} {
		cc, buf, _ := logServer(t, &echoService{}, level)
		if _, err := callHealth.do(context.Background(), cc); err != nil {
			t.Fatalf("Health.Check = %v", err)
		}
		// Health is unary: the line is written before the answer leaves.
		n := strings.Count(buf.String(), "/grpc.health.v1.Health/Check")
		switch {
		case level == slog.LevelInfo && n != 0:
			t.Errorf("health check logged at INFO level:\n%s", buf.String())
		case level == slog.LevelDebug && (n != 1 || buf.callLine(t, "/grpc.health.v1.Health/Check")["level"] != "DEBUG"):
			t.Errorf("health check with a DEBUG logger:\n%s\nwant one DEBUG line", buf.String())
		}
	}
}

// A panicking call is logged as the caller sees it: INTERNAL, at ERROR,
// whether recovery runs inside the logging interceptor (it sees the
// INTERNAL status) or outside it (the panic passes through, unrecovered,
// and the line says panic=true).
func TestLogPanic(t *testing.T) {
	svc := &echoService{generate: func(ctx context.Context, req *hourglassv1.GenerateRequest) error {
		panic("handler bug")
	}}
	for _, recoveryFirst := range []bool{false, true} {
		cc, buf, token := logServerOrder(t, svc, slog.LevelInfo, recoveryFirst)
		ctx := withAuthorization(context.Background(), "Bearer "+token)
		_, err := hourglassv1.NewGenerateServiceClient(cc).Generate(ctx, &hourglassv1.GenerateRequest{})
		if status.Code(err) != codes.Internal {
			t.Fatalf("Generate(panics, recovery first %v) = %v; want Internal", recoveryFirst, err)
		}
		line := buf.callLine(t, hourglassv1.GenerateService_Generate_FullMethodName)
		if line["code"] != "Internal" || line["level"] != "ERROR" || line["tenant"] != "acme" || (line["panic"] == true) != recoveryFirst {
			t.Errorf("log line of a panic (recovery first %v) = %v; want code Internal at ERROR, tenant acme, panic %v",
				recoveryFirst, line, recoveryFirst)
		}
	}
}

func TestCallLevel(t *testing.T) {
	const gen, health = "/hourglass.v1.GenerateService/Generate", "/grpc.health.v1.Health/Check"
	tests := []struct {
		method string
		code   codes.Code
		want   slog.Level
	}{
		{gen, codes.OK, slog.LevelInfo},
		{gen, codes.InvalidArgument, slog.LevelInfo},
		{gen, codes.NotFound, slog.LevelInfo},
		{gen, codes.DeadlineExceeded, slog.LevelInfo},
		{gen, codes.Canceled, slog.LevelInfo},
		{gen, codes.ResourceExhausted, slog.LevelInfo},
		{gen, codes.Unauthenticated, slog.LevelInfo},
		{gen, codes.Unavailable, slog.LevelWarn},
		{gen, codes.Internal, slog.LevelError},
		{gen, codes.Unknown, slog.LevelError},
		{health, codes.OK, slog.LevelDebug},
		{health, codes.NotFound, slog.LevelDebug},
		{health, codes.Unavailable, slog.LevelDebug},
		{health, codes.Internal, slog.LevelError},
		{"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", codes.OK, slog.LevelInfo},
	}
	for _, tt := range tests {
		if got := callLevel(tt.method, tt.code); got != tt.want {
			t.Errorf("callLevel(%s, %v) = %v; want %v", tt.method, tt.code, got, tt.want)
		}
	}
}

func TestAddLogFieldsWithoutLogger(t *testing.T) {
	AddLogFields(context.Background(), slog.String("k", "v")) // must not panic
}

func TestAddLogFieldsConcurrent(t *testing.T) {
	var buf syncBuffer
	logger := NewCallLogger(slog.New(slog.NewJSONHandler(&buf, nil)))
	info := &grpc.UnaryServerInfo{FullMethod: "/t.S/M"}
	_, err := logger.UnaryServerInterceptor()(context.Background(), nil, info, func(ctx context.Context, _ any) (any, error) {
		var wg sync.WaitGroup
		for i := range 20 {
			wg.Add(1)
			go func() { defer wg.Done(); AddLogFields(ctx, slog.Int(fmt.Sprintf("k%d", i), i)) }()
		}
		wg.Wait()
		return nil, errors.New("plain error")
	})
	if err == nil {
		t.Fatal("interceptor swallowed the handler's error")
	}
	line := buf.callLine(t, "/t.S/M")
	if line["code"] != "Unknown" || line["k19"] != float64(19) || line["level"] != "ERROR" {
		t.Errorf("log line = %v; want code Unknown at ERROR with k0..k19", line)
	}
}
