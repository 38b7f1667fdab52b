package server

import (
	"context"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2"
	"google.golang.org/grpc"
)

// deadlinePolicy gives every call a deadline: the caller's, or def when the
// call has none, never later than max from now. The executor takes the
// deadline from the context; nothing downstream invents its own.
type deadlinePolicy struct {
	def, max time.Duration
}

func (p deadlinePolicy) apply(ctx context.Context) (context.Context, context.CancelFunc) {
	now := time.Now()
	limit := now.Add(p.max)
	if d, ok := ctx.Deadline(); ok && !d.After(limit) {
		return ctx, func() {}
	} else if ok {
		return context.WithDeadline(ctx, limit)
	}
	return context.WithDeadline(ctx, now.Add(min(p.def, p.max)))
}

func (p deadlinePolicy) unary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, cancel := p.apply(ctx)
	defer cancel()
	return handler(ctx, req)
}

func (p deadlinePolicy) stream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, cancel := p.apply(ss.Context())
	defer cancel()
	return handler(srv, wrapContext(ss, ctx))
}

// wrapContext hands a stream handler a stream whose Context is ctx.
func wrapContext(ss grpc.ServerStream, ctx context.Context) grpc.ServerStream {
	wrapped := middleware.WrapServerStream(ss)
	wrapped.WrappedContext = ctx
	return wrapped
}
