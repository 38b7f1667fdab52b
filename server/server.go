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

	"buf.build/go/protovalidate"
	grpcvalidate "github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/protovalidate"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/hourglass-dev/hourglass/executor"
	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
	"github.com/hourglass-dev/hourglass/internal/config"
)

// Options configure a Server.
type Options struct {
	Config config.Config
	Logger *slog.Logger
	// FaultInjection passes the hourglass-fault metadata key on to workers.
	// Test-only: hourglassd sets it only with --unsafe-fault-injection.
	FaultInjection bool
}

// Server is the gRPC server with its health service.
type Server struct {
	grpc   *grpc.Server
	health *health.Server
	svc    *generateService
	log    *slog.Logger
	// draining keeps health NOT_SERVING once Shutdown began, whatever the
	// workers do.
	draining atomic.Bool
}

// serviceName is what health checks name for the generate service.
var serviceName = hourglassv1.GenerateService_ServiceDesc.ServiceName

// New builds the server. It reports NOT_SERVING until SetExecutor is called.
//
// Interceptor order, outermost first:
//  1. recovery: a panic becomes INTERNAL; the stack goes to the log only.
//  2. bad-request details: adds google.rpc.BadRequest to validation errors.
//  3. validation (protovalidate): INVALID_ARGUMENT before any work.
//  4. deadline: the caller's deadline, or the default, capped at the max.
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
	gs := grpc.NewServer(
		grpc.ChainUnaryInterceptor(
			recovery.UnaryServerInterceptor(panicToInternal),
			unaryBadRequest,
			grpcvalidate.UnaryServerInterceptor(validator),
			deadlines.unary,
		),
		grpc.ChainStreamInterceptor(
			recovery.StreamServerInterceptor(panicToInternal),
			streamBadRequest,
			grpcvalidate.StreamServerInterceptor(validator),
			deadlines.stream,
		),
	)
	svc := &generateService{cfg: opts.Config, log: log, faultInjection: opts.FaultInjection}
	hourglassv1.RegisterGenerateServiceServer(gs, svc)
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	hs.SetServingStatus(serviceName, healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	reflection.Register(gs)
	return &Server{grpc: gs, health: hs, svc: svc, log: log}, nil
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

// Shutdown reports NOT_SERVING, so balancers stop sending calls, then lets
// running calls finish until ctx ends, then closes every connection.
func (s *Server) Shutdown(ctx context.Context) {
	s.draining.Store(true)
	s.setServing(false)
	s.health.Shutdown()
	done := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		s.log.Warn("drain timed out; closing remaining calls")
		s.grpc.Stop()
		<-done
	}
}
