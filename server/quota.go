package server

// This file puts the per-tenant limits of package quota on the job calls.
//
// The interceptor opens a ticket for each Generate and GenerateStream call
// (concurrent jobs, and a bucket not in debt) and ends it when the call
// returns; the handler, which alone knows the job, charges the admission
// estimate before it runs the job and settles the real run time after:
//
//	if err := chargeQuota(ctx, e.Estimate(job)); err != nil {
//		return nil, err
//	}
//	res, err := e.Run(ctx, job, TenantFromContext(ctx), onEvent) // onEvent feeds clock.observe
//	settleQuota(ctx, clock.ran(res))

import (
	"context"
	"errors"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"google.golang.org/grpc"

	"github.com/hourglass-dev/hourglass/executor"
	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
	"github.com/hourglass-dev/hourglass/quota"
)

// QuotaGate applies a quota.Limiter to the calls that run jobs.
type QuotaGate struct {
	limiter *quota.Limiter
}

// NewQuotaGate gates job calls with limiter; a nil limiter lets every call
// through.
func NewQuotaGate(limiter *quota.Limiter) *QuotaGate {
	return &QuotaGate{limiter: limiter}
}

// UnaryServerInterceptor gates Generate. It must run inside the auth
// interceptor: it bills TenantFromContext.
func (g *QuotaGate) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return selector.UnaryServerInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, end, err := g.begin(ctx)
		if err != nil {
			return nil, err
		}
		defer end()
		return handler(ctx, req)
	}, selector.MatchFunc(runsJob))
}

// StreamServerInterceptor gates GenerateStream, inside auth like the unary
// one.
func (g *QuotaGate) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return selector.StreamServerInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, end, err := g.begin(ss.Context())
		if err != nil {
			return err
		}
		defer end()
		wrapped := middleware.WrapServerStream(ss)
		wrapped.WrappedContext = ctx
		return handler(srv, wrapped)
	}, selector.MatchFunc(runsJob))
}

// runsJob selects the calls that take worker time. GetServerInfo, health
// and reflection are free.
func runsJob(_ context.Context, c interceptors.CallMeta) bool {
	switch c.FullMethod() {
	case hourglassv1.GenerateService_Generate_FullMethodName, hourglassv1.GenerateService_GenerateStream_FullMethodName:
		return true
	}
	return false
}

type ticketKey struct{}

func (g *QuotaGate) begin(ctx context.Context) (context.Context, func(), error) {
	if g.limiter == nil {
		return ctx, func() {}, nil
	}
	t, err := g.limiter.Begin(TenantFromContext(ctx))
	if err != nil {
		return nil, nil, quotaStatus(err)
	}
	return context.WithValue(ctx, ticketKey{}, t), t.End, nil
}

// chargeQuota charges the caller's tenant the job's admission estimate, or
// refuses with RESOURCE_EXHAUSTED when its worker-seconds cannot cover it.
// Without a QuotaGate on the call it does nothing.
func chargeQuota(ctx context.Context, estimate time.Duration) error {
	t, _ := ctx.Value(ticketKey{}).(*quota.Ticket)
	if t == nil {
		return nil
	}
	if err := t.Charge(estimate); err != nil {
		return quotaStatus(err)
	}
	return nil
}

// settleQuota replaces the charge by the worker time the job really used:
// 0 for a job refused or cancelled before it ran. It must be called before
// the handler returns (the interceptor ends the ticket then); without it
// the tenant pays the estimate.
func settleQuota(ctx context.Context, ran time.Duration) {
	if t, _ := ctx.Value(ticketKey{}).(*quota.Ticket); t != nil {
		t.Settle(ran)
	}
}

// quotaStatus maps a quota refusal to its status (see status.go).
func quotaStatus(err error) error {
	var qe *quota.Error
	if !errors.As(err, &qe) {
		return err
	}
	return tenantQuotaExceeded(qe.Tenant, string(qe.Limit), qe.Msg, qe.RetryAfter)
}

// runClock measures how long a job held a worker, for settling its charge,
// from the executor's events: Run calls onEvent on the handler's goroutine
// and never after it returns, so it needs no lock.
type runClock struct {
	started time.Time
}

// observe notes when the job started on a worker.
func (c *runClock) observe(ev executor.Event) {
	if ev.Kind == executor.EventStarted && c.started.IsZero() {
		c.started = time.Now()
	}
}

// ran is the job's worker time: the result's run time when it finished;
// when it failed after it started (cut at its deadline, cancelled, worker
// crashed), the time since it started; 0 when it never reached a worker
// (refused at admission, queue full, cancelled while queued).
func (c *runClock) ran(res *executor.Result) time.Duration {
	switch {
	case res != nil:
		return res.RunTime
	case c.started.IsZero():
		return 0
	}
	return time.Since(c.started)
}
