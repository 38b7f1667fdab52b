// Package server is hourglassd's gRPC face: the GenerateService
// implementation, the interceptor chain, health and reflection, and the one
// file (status.go) where job outcomes become gRPC statuses.
package server

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"sync/atomic"
	"time"

	"buf.build/go/protovalidate"
	grpcvalidate "github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/protovalidate"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/hourglass-dev/hourglass/executor"
	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
	"github.com/hourglass-dev/hourglass/internal/config"
	"github.com/hourglass-dev/hourglass/internal/gpu"
	"github.com/hourglass-dev/hourglass/internal/telemetry"
	"github.com/hourglass-dev/hourglass/quota"
)

// Options configure a Server.
type Options struct {
	Config config.Config
	Logger *slog.Logger
	// FaultInjection passes the hourglass-fault metadata key on to workers.
	// Test-only: hourglassd sets it only with --unsafe-fault-injection.
	FaultInjection bool
	// TracerProvider and MeterProvider receive the otelgrpc server spans
	// and metrics and the service's own; nil means no-op.
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
	// Tokens, when not nil, requires a bearer token naming the tenant.
	Tokens *TokenSet
	// ClientCerts lets a verified client certificate's common name name
	// the tenant (the TLS credentials must require and verify them).
	ClientCerts bool
	// Limiter applies per-tenant limits; nil means none.
	Limiter *quota.Limiter
	// ServerOptions are added to the gRPC server's, e.g. TLS credentials
	// and message size limits.
	ServerOptions []grpc.ServerOption
	// GPUs reads GPU memory for GetServerInfo and metrics; nil means none.
	GPUs *gpu.Monitor
}

// Server is the gRPC server with its health service.
type Server struct {
	grpc   *grpc.Server
	health *health.Server
	svc    *generateService
	gate   *drainGate
	log    *slog.Logger
	// draining keeps health NOT_SERVING once Shutdown began, whatever the
	// workers do.
	draining atomic.Bool
}

// instrumentationName names the server's meter.
const instrumentationName = "github.com/hourglass-dev/hourglass/server"

// serviceName is what health checks name for the generate service.
var serviceName = hourglassv1.GenerateService_ServiceDesc.ServiceName

// New builds the server. It reports NOT_SERVING until SetExecutor is called.
//
// The otelgrpc stats handler sees every call first (span, rpc metrics).
// Then the interceptors, outermost first:
//  1. recovery: a panic becomes INTERNAL; the stack goes to the log only.
//  2. logging: one JSON line per call (never the prompt or a token).
//  3. drain gate: UNAVAILABLE once draining; tracks running calls.
//  4. auth: UNAUTHENTICATED without a valid token or client certificate;
//     names the tenant. Health and reflection need no credentials.
//  5. decode errors: a request the codec could not decode (invalid UTF-8,
//     malformed bytes) is INVALID_ARGUMENT, not grpc-go's INTERNAL.
//  6. bad-request details: adds google.rpc.BadRequest to validation errors.
//  7. validation (protovalidate): INVALID_ARGUMENT before any work.
//  8. tenant limits: concurrent jobs per tenant. After validation, so an
//     invalid request never takes a tenant's slot. The worker-time budget
//     is charged in the handler, by the job's estimate, once it is resolved.
//  9. deadline: the caller's deadline, or the default, capped at the max.
func New(opts Options) (*Server, error) {
	validator, err := protovalidate.New()
	if err != nil {
		return nil, fmt.Errorf("server: build validator: %w", err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	deadlines := deadlinePolicy{def: opts.Config.Timeouts.Default, max: opts.Config.Timeouts.Max}
	panicToInternal := recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		log.Error("panic in handler", "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
		return status.Error(codes.Internal, "internal error")
	})
	calls := NewCallLogger(log)
	auth := NewAuthenticator(opts.Tokens, opts.ClientCerts)
	quotas := NewQuotaGate(opts.Limiter)
	tp, mp := opts.TracerProvider, opts.MeterProvider
	if tp == nil {
		tp = tracenoop.NewTracerProvider()
	}
	if mp == nil {
		mp = metricnoop.NewMeterProvider()
	}
	jobs, err := mp.Meter(instrumentationName).Int64Counter("hourglass.jobs",
		metric.WithDescription("Generate and GenerateStream calls that reached the executor, by gRPC status code."))
	if err != nil {
		return nil, fmt.Errorf("server: metrics: %w", err)
	}
	gate := newDrainGate()
	gs := grpc.NewServer(append([]grpc.ServerOption{
		// Undecodable requests become INVALID_ARGUMENT (see codec.go).
		grpc.ForceServerCodecV2(newLenientCodec()),
		// Bounded metadata: see config.Limits.MaxMetadataBytes.
		grpc.MaxHeaderListSize(uint32(opts.Config.Limits.MaxMetadataBytes)),
		// Bounded requests, refused by the transport before decoding, and
		// bounded calls per connection: see config.Limits.
		grpc.MaxRecvMsgSize(opts.Config.Limits.MaxRequestBytes),
		grpc.MaxConcurrentStreams(opts.Config.Limits.MaxStreamsPerConnection),
		// Fixed flow-control windows (which turns off grpc-go's dynamic
		// window growth, up to 16 MiB per connection): a connection can
		// have at most a request's worth of unread bytes per call and
		// twice that in all buffered here, however fast its client sends.
		grpc.InitialWindowSize(int32(opts.Config.Limits.MaxRequestBytes)),
		grpc.InitialConnWindowSize(int32(2 * opts.Config.Limits.MaxRequestBytes)),
		// Keepalive, explicit: clients may ping every 10 s, with or without
		// calls (more often is answered GOAWAY "too_many_pings"); the
		// server pings a connection silent for a minute and closes it when
		// the ping is not answered in 20 s (a dead peer, a stalled
		// client), and closes connections idle for limits.idle_timeout.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: opts.Config.Limits.IdleTimeout,
			Time: time.Minute, Timeout: 20 * time.Second}),
		// A client that connects and does not complete the handshake
		// (TLS, the HTTP/2 preface) in time is disconnected.
		grpc.ConnectionTimeout(opts.Config.Limits.HandshakeTimeout),
		// Job calls' transport streams end at the capped deadline too.
		grpc.InTapHandle(deadlines.tap),
		// The stats handler runs before every interceptor: each call has
		// its server span (joined to the caller's trace) and the standard
		// rpc.server.* metrics, whatever an interceptor decides.
		grpc.StatsHandler(otelgrpc.NewServerHandler(
			otelgrpc.WithTracerProvider(tp),
			otelgrpc.WithMeterProvider(mp),
			otelgrpc.WithPropagators(telemetry.Propagator()),
		)),
		grpc.ChainUnaryInterceptor(
			recovery.UnaryServerInterceptor(panicToInternal),
			calls.UnaryServerInterceptor(),
			gate.unary,
			auth.UnaryServerInterceptor(),
			unaryDecodeErrors,
			unaryBadRequest,
			grpcvalidate.UnaryServerInterceptor(validator),
			quotas.UnaryServerInterceptor(),
			deadlines.unary,
		),
		grpc.ChainStreamInterceptor(
			recovery.StreamServerInterceptor(panicToInternal),
			calls.StreamServerInterceptor(),
			gate.stream,
			auth.StreamServerInterceptor(),
			streamDecodeErrors,
			streamBadRequest,
			grpcvalidate.StreamServerInterceptor(validator),
			quotas.StreamServerInterceptor(),
			deadlines.stream,
		),
	}, opts.ServerOptions...)...)
	svc := &generateService{cfg: opts.Config, log: log, faultInjection: opts.FaultInjection, jobs: jobs, gpus: opts.GPUs}
	if err := registerGPUMetrics(mp.Meter(instrumentationName), svc); err != nil {
		return nil, fmt.Errorf("server: metrics: %w", err)
	}
	hourglassv1.RegisterGenerateServiceServer(gs, svc)
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	hs.SetServingStatus(serviceName, healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	reflection.Register(gs)
	return &Server{grpc: gs, health: hs, svc: svc, gate: gate, log: log}, nil
}

// Serve accepts connections on lis until Shutdown.
func (s *Server) Serve(lis net.Listener) error { return s.grpc.Serve(lis) }

// SetExecutor hands the started worker pool to the service and reports
// its health.
func (s *Server) SetExecutor(e *executor.Executor) {
	s.svc.exec.Store(e)
	s.SetServing(e.Status().Serving)
}

// SetServing reports SERVING or NOT_SERVING; the executor calls it when its
// last live worker dies (crash loop) or its first comes back.
func (s *Server) SetServing(ok bool) {
	if s.draining.Load() {
		return
	}
	s.setServing(ok)
}

func (s *Server) setServing(ok bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if ok {
		st = healthpb.HealthCheckResponse_SERVING
	}
	s.health.SetServingStatus("", st)
	s.health.SetServingStatus(serviceName, st)
}

// Shutdown drains: health reports NOT_SERVING at once, new calls get
// UNAVAILABLE, running calls may finish until ctx ends; those still running
// then are cancelled and answered UNAVAILABLE. Finally every connection is
// closed.
func (s *Server) Shutdown(ctx context.Context) {
	s.draining.Store(true)
	s.setServing(false)
	if n := s.gate.drain(ctx); n > 0 {
		s.log.Warn("drain timed out; cancelled running calls", "calls", n)
	}
	s.health.Shutdown()
	// Every job call has returned; GracefulStop now only waits for their
	// statuses to be written and for untracked streams (health watches,
	// reflection), which never end by themselves: bound it and close them.
	done := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(done)
	}()
	t := time.NewTimer(closeGrace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		s.grpc.Stop()
		<-done
	}
}

// closeGrace bounds the last step of a drain, after every job call ended.
const closeGrace = 2 * time.Second

// Stop closes every connection and call at once: the second signal.
func (s *Server) Stop() {
	s.draining.Store(true)
	s.setServing(false)
	s.grpc.Stop()
}
