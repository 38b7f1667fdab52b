package server

// This file is the request log: one JSON line per call, written when the
// call ends.
//
// What a line holds: method, code, duration_ms, tenant, trace_id and
// span_id (when the call is traced), the caller's deadline, the peer
// address, the status message of a failed call, and what the handler added
// with AddLogFields (job id, queue wait, run time, prompt length and hash).
// What it never holds: the request or response messages, the prompt text,
// or any metadata (the authorization header is metadata). Status messages
// are safe to log because status.go builds them and quotes no user text
// beyond names (models, styles).
//
// Where it goes in the chain: first, right after the otelgrpc stats
// handler (which makes the trace id exist) and before recovery, so that a
// panicked call's line carries the INTERNAL status recovery made of it, and
// so that every refusal by auth, quota, validation or drain is logged. If
// recovery runs outside it instead, a panic passes through unrecovered and
// the line says code Internal, panic true.

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// callFields is what inner code hands back to the call's log line. The
// context carries a pointer to it: the logging interceptor runs outside
// auth and the handler, and a context value set in there never flows back
// out.
type callFields struct {
	mu     sync.Mutex
	tenant string
	attrs  []slog.Attr
}

type callFieldsKey struct{}

func callFieldsFrom(ctx context.Context) *callFields {
	f, _ := ctx.Value(callFieldsKey{}).(*callFields)
	return f
}

func (f *callFields) setTenant(tenant string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tenant = tenant
}

// AddLogFields adds attributes to the call's log line; a key added twice
// keeps the last value. It does nothing outside a call logged by
// CallLogger, and is safe for concurrent use. Never add the prompt or a
// credential: add a length and a hash.
func AddLogFields(ctx context.Context, attrs ...slog.Attr) {
	f := callFieldsFrom(ctx)
	if f == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, a := range attrs {
		if i := slices.IndexFunc(f.attrs, func(b slog.Attr) bool { return b.Key == a.Key }); i >= 0 {
			f.attrs[i] = a
			continue
		}
		f.attrs = append(f.attrs, a)
	}
}

// reservedLogKeys are the keys the interceptor writes itself; a handler's
// attribute with one of them is dropped rather than written twice.
var reservedLogKeys = []string{"method", "code", "duration_ms", "tenant", "trace_id", "span_id",
	"deadline", "peer", "error", "panic"}

// CallLogger writes the request log.
type CallLogger struct {
	log *slog.Logger
}

// NewCallLogger logs to log (slog.Default() when nil); hourglassd gives it
// its JSON logger.
func NewCallLogger(log *slog.Logger) *CallLogger {
	if log == nil {
		log = slog.Default()
	}
	return &CallLogger{log: log}
}

// UnaryServerInterceptor logs unary calls.
func (l *CallLogger) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		c, ctx := l.begin(ctx, info.FullMethod)
		defer func() { c.end(err) }()
		resp, err = handler(ctx, req)
		c.finished = true
		return resp, err
	}
}

// StreamServerInterceptor logs streaming calls, one line when the stream
// ends.
func (l *CallLogger) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
		c, ctx := l.begin(ss.Context(), info.FullMethod)
		defer func() { c.end(err) }()
		wrapped := middleware.WrapServerStream(ss)
		wrapped.WrappedContext = ctx
		err = handler(srv, wrapped)
		c.finished = true
		return err
	}
}

// loggedCall is one call being logged.
type loggedCall struct {
	l        *CallLogger
	ctx      context.Context
	method   string
	start    time.Time
	fields   *callFields
	finished bool // the handler returned; false in end means it panicked
}

func (l *CallLogger) begin(ctx context.Context, method string) (*loggedCall, context.Context) {
	f := &callFields{}
	ctx = context.WithValue(ctx, callFieldsKey{}, f)
	c := &loggedCall{l: l, ctx: ctx, method: method, start: time.Now(), fields: f}
	return c, ctx
}

// end writes the line. It runs deferred, so it also runs when the handler
// panics: the line then says INTERNAL and panic=true, as the recovery
// interceptor will answer, and the panic goes on unrecovered to it.
func (c *loggedCall) end(err error) {
	code := status.Code(err)
	panicked := !c.finished
	if panicked {
		code = codes.Internal
	}
	level := callLevel(c.method, code)
	if !c.l.log.Enabled(c.ctx, level) {
		return
	}
	attrs := make([]slog.Attr, 0, 12)
	attrs = append(attrs,
		slog.String("method", c.method),
		slog.String("code", code.String()),
		slog.Float64("duration_ms", float64(time.Since(c.start).Microseconds())/1e3),
	)
	c.fields.mu.Lock()
	tenant, extra := c.fields.tenant, slices.Clone(c.fields.attrs)
	c.fields.mu.Unlock()
	if tenant == "" {
		tenant = TenantFromContext(c.ctx)
	}
	attrs = append(attrs, slog.String("tenant", tenant))
	if sc := trace.SpanContextFromContext(c.ctx); sc.IsValid() {
		attrs = append(attrs, slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	if d, ok := c.ctx.Deadline(); ok {
		attrs = append(attrs, slog.String("deadline", d.UTC().Format(time.RFC3339Nano)))
	}
	if p, ok := peer.FromContext(c.ctx); ok && p.Addr != nil {
		attrs = append(attrs, slog.String("peer", p.Addr.String()))
	}
	if panicked {
		attrs = append(attrs, slog.Bool("panic", true))
	} else if err != nil {
		attrs = append(attrs, slog.String("error", status.Convert(err).Message()))
	}
	for _, a := range extra {
		if !slices.Contains(reservedLogKeys, a.Key) {
			attrs = append(attrs, a)
		}
	}
	c.l.log.LogAttrs(c.ctx, level, "grpc call", attrs...)
}

// callLevel: INFO for success and for what the caller caused (invalid,
// not found, deadline, cancelled, over quota, unauthenticated), WARN for
// UNAVAILABLE (workers gone, draining: operators should look) and
// UNIMPLEMENTED (a client built against another API, or a method not
// wired), ERROR for bugs. Health checks log at DEBUG, errors aside:
// balancers probe every few seconds and would drown the log.
func callLevel(method string, code codes.Code) slog.Level {
	switch code {
	case codes.Internal, codes.Unknown, codes.DataLoss:
		return slog.LevelError
	}
	if serviceOf(method) == "grpc.health.v1.Health" {
		return slog.LevelDebug
	}
	switch code {
	case codes.Unavailable, codes.Unimplemented:
		return slog.LevelWarn
	}
	return slog.LevelInfo
}

// serviceOf is the service of a full method name, "/package.Service/Method".
func serviceOf(fullMethod string) string {
	service, _, _ := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/")
	return service
}
