package server

import (
	"context"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/tap"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
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

// Health and reflection are exempt: a health Watch stream lives as long as
// the client's connection, and cutting it at the default deadline would make
// client-side health checking flap.

func (p deadlinePolicy) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if publicService(serviceOf(info.FullMethod)) {
		return handler(ctx, req)
	}
	ctx, cancel := p.apply(ctx)
	defer cancel()
	return handler(ctx, req)
}

func (p deadlinePolicy) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if publicService(serviceOf(info.FullMethod)) {
		return handler(srv, ss)
	}
	ctx, cancel := p.apply(ss.Context())
	defer cancel()
	return handler(srv, wrapContext(ss, ctx))
}

// tap applies the same deadline to the transport's own stream context, for
// the calls that run jobs. The interceptors' deadline bounds the handler;
// this one also bounds grpc-go's flow control: a GenerateStream whose caller
// sent no (or a huge) grpc-timeout and stopped reading would otherwise block
// in Send past timeouts.max, holding its goroutine, its buffered images and
// its tenant's slot until the connection closed.
func (p deadlinePolicy) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	switch info.FullMethodName {
	case hourglassv1.GenerateService_Generate_FullMethodName, hourglassv1.GenerateService_GenerateStream_FullMethodName:
		ctx, cancel := p.apply(ctx)
		// The transport cancels ctx's parent when the stream ends, which
		// ends ctx and runs cancel, releasing the timer.
		context.AfterFunc(ctx, cancel)
		return ctx, nil
	}
	return ctx, nil
}

// wrapContext hands a stream handler a stream whose Context is ctx.
func wrapContext(ss grpc.ServerStream, ctx context.Context) grpc.ServerStream {
	wrapped := middleware.WrapServerStream(ss)
	wrapped.WrappedContext = ctx
	return wrapped
}
