package server

import (
	"context"
	"errors"
	"sync"

	"google.golang.org/grpc"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

// errDraining is the cancel cause of calls still running when the drain
// timeout ends; the service answers them UNAVAILABLE (retry elsewhere).
var errDraining = errors.New("server draining")

// drainGate refuses new calls once draining starts and tracks running
// calls so that a drain can wait for them, then cancel the rest.
// Health and reflection stay open, so probes can watch the drain.
type drainGate struct {
	mu       sync.Mutex
	draining bool
	calls    map[*callEntry]struct{}
	idle     chan struct{} // closed when draining and no call remains
}

type callEntry struct{ cancel context.CancelCauseFunc }

func newDrainGate() *drainGate {
	return &drainGate{calls: map[*callEntry]struct{}{}}
}

// enter registers a call; it fails once draining started.
func (g *drainGate) enter(ctx context.Context) (context.Context, func(), error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.draining {
		return nil, nil, unavailable(ReasonDraining, "server is draining; retry on another replica")
	}
	ctx, cancel := context.WithCancelCause(ctx)
	c := &callEntry{cancel: cancel}
	g.calls[c] = struct{}{}
	return ctx, func() {
		cancel(nil)
		g.mu.Lock()
		delete(g.calls, c)
		if g.draining && len(g.calls) == 0 && g.idle != nil {
			close(g.idle)
			g.idle = nil
		}
		g.mu.Unlock()
	}, nil
}

// drain refuses new calls, waits until running ones end or ctx ends, then
// cancels what remains with errDraining and waits for those to return.
func (g *drainGate) drain(ctx context.Context) (cancelled int) {
	g.mu.Lock()
	g.draining = true
	if len(g.calls) == 0 {
		g.mu.Unlock()
		return 0
	}
	idle := make(chan struct{})
	g.idle = idle
	g.mu.Unlock()
	select {
	case <-idle:
		return 0
	case <-ctx.Done():
	}
	g.mu.Lock()
	for c := range g.calls {
		c.cancel(errDraining)
		cancelled++
	}
	g.mu.Unlock()
	// Cancelled handlers return at once: Run answers on ctx.Done.
	<-idle
	return cancelled
}

// drainExempt: health, reflection and GetServerInfo (which runs no job and
// shows an operator how the drain goes) stay open while draining.
func drainExempt(method string) bool {
	return publicService(serviceOf(method)) || method == hourglassv1.GenerateService_GetServerInfo_FullMethodName
}

func (g *drainGate) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if drainExempt(info.FullMethod) {
		return handler(ctx, req)
	}
	ctx, leave, err := g.enter(ctx)
	if err != nil {
		return nil, err
	}
	defer leave()
	return handler(ctx, req)
}

func (g *drainGate) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if drainExempt(info.FullMethod) {
		return handler(srv, ss)
	}
	ctx, leave, err := g.enter(ss.Context())
	if err != nil {
		return err
	}
	defer leave()
	return handler(srv, wrapContext(ss, ctx))
}
