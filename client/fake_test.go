package client_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/hourglass-dev/hourglass/client"
	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

// fakeServer stands in for hourglassd: it answers by the request's prompt
// (see answer) and records what it received. It tests the client's
// behaviour, not hourglass's.
type fakeServer struct {
	hourglassv1.UnimplementedGenerateServiceServer
	addr   string
	health *health.Server

	mu sync.Mutex
	// calls are the Generate and GenerateStream calls received, retries
	// included, in order.
	calls []call
	// attempts counts calls by prompt.
	attempts map[string]int
	// streamEnded receives when a "wait" stream's handler returns.
	streamEnded chan struct{}
	// refusal, when set, answers every job call, whatever its prompt, as
	// a saturated hourglassd refuses for load; a stream gets a queued
	// event first when refuseQueued.
	refusal      error
	refuseQueued bool
}

// call is what the fake saw of one call.
type call struct {
	method    string
	req       *hourglassv1.GenerateRequest
	at        time.Time     // when it arrived
	remaining time.Duration // until the deadline; 0 without one
	auth      string        // the authorization metadata
	clientCN  string        // the verified client certificate's common name
}

// Prompts with a meaning for the fake; every other prompt succeeds.
const (
	promptCrashOnce  = "crash once"      // fails UNAVAILABLE WORKER_CRASHED on the first try
	promptAlwaysDown = "always down"     // fails UNAVAILABLE on every try
	promptCrashMid   = "crash mid-job"   // stream: fails after started on the first try
	promptCrashLate  = "crash after one" // stream: fails after the first of two images, every try
	promptOverloaded = "overloaded"      // RESOURCE_EXHAUSTED OVERLOADED, retry after 2s
	promptQuota      = "over quota"      // RESOURCE_EXHAUSTED TENANT_QUOTA_EXCEEDED
	promptOOM        = "out of memory"   // RESOURCE_EXHAUSTED WORKER_OUT_OF_MEMORY
	promptInvalid    = "invalid"         // INVALID_ARGUMENT with two field violations
	promptTooShort   = "too short"       // DEADLINE_EXCEEDED DEADLINE_TOO_SHORT
	promptWait       = "wait"            // waits for the caller's deadline or cancel
	promptNoDone     = "no done"         // stream: ends without the done event
	promptHuge       = "huge"            // one 8 MiB image
)

// startFake serves a fakeServer and the health service (ServiceName
// SERVING) on a loopback port, with TLS when tlsCfg is not nil, until the
// test ends.
func startFake(t testing.TB, tlsCfg *tls.Config) *fakeServer {
	t.Helper()
	f, stop, err := serveFake(tlsCfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return f
}

func serveFake(tlsCfg *tls.Config) (*fakeServer, func(), error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	var opts []grpc.ServerOption
	if tlsCfg != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(tlsCfg)))
	}
	s := grpc.NewServer(opts...)
	f := &fakeServer{addr: lis.Addr().String(), health: health.NewServer(), attempts: map[string]int{},
		streamEnded: make(chan struct{}, 16)}
	hourglassv1.RegisterGenerateServiceServer(s, f)
	f.health.SetServingStatus(client.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(s, f.health)
	served := make(chan error, 1)
	go func() { served <- s.Serve(lis) }()
	return f, func() {
		s.Stop()
		<-served
	}, nil
}

// setServing sets the health of ServiceName, as hourglassd does when it
// drains.
func (f *fakeServer) setServing(ok bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if ok {
		st = healthpb.HealthCheckResponse_SERVING
	}
	f.health.SetServingStatus(client.ServiceName, st)
}

// record notes a call and returns its attempt number for its prompt.
func (f *fakeServer) record(ctx context.Context, method string, req *hourglassv1.GenerateRequest) int {
	c := call{method: method, req: proto.CloneOf(req), at: time.Now()}
	if d, ok := ctx.Deadline(); ok {
		c.remaining = time.Until(d)
	}
	if v := metadata.ValueFromIncomingContext(ctx, "authorization"); len(v) > 0 {
		c.auth = v[0]
	}
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 {
			c.clientCN = ti.State.VerifiedChains[0][0].Subject.CommonName
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, c)
	f.attempts[req.GetPrompt()]++
	return f.attempts[req.GetPrompt()]
}

// refuse makes the fake answer every job call with err (nil: answer by
// the prompt again), after a queued event on a stream when queued.
func (f *fakeServer) refuse(err error, queued bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refusal, f.refuseQueued = err, queued
}

// refusing is the fake's refusal, and whether a stream gets a queued event
// first.
func (f *fakeServer) refusing() (error, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.refusal, f.refuseQueued
}

// received returns the calls so far.
func (f *fakeServer) received() []call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]call(nil), f.calls...)
}

// failure is the status the fake answers for prompt on the given try, nil
// to succeed.
func failure(prompt string, attempt int) error {
	switch prompt {
	case promptCrashOnce:
		if attempt == 1 {
			return detailed(codes.Unavailable, "worker crashed", errInfo(client.ReasonWorkerCrashed))
		}
	case promptAlwaysDown:
		return detailed(codes.Unavailable, "server is draining; retry on another replica", errInfo(client.ReasonDraining))
	case promptOverloaded:
		return detailed(codes.ResourceExhausted, "overloaded", errInfo(client.ReasonOverloaded),
			&errdetails.RetryInfo{RetryDelay: durationpb.New(2 * time.Second)})
	case promptQuota:
		return detailed(codes.ResourceExhausted, `tenant "alice" is over its quota`, errInfo(client.ReasonTenantQuota),
			&errdetails.QuotaFailure{Violations: []*errdetails.QuotaFailure_Violation{{Subject: "tenant:alice", Description: "concurrent jobs: 4 of 4"}}},
			&errdetails.RetryInfo{RetryDelay: durationpb.New(1500 * time.Millisecond)})
	case promptOOM:
		return detailed(codes.ResourceExhausted, "out of memory", errInfo(client.ReasonOutOfMemory))
	case promptInvalid:
		return detailed(codes.InvalidArgument, "invalid request: width: must be a multiple of 8 (and 1 more)",
			&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
				{Field: "width", Description: "must be a multiple of 8"},
				{Field: "image_count", Description: "must be at most 32"},
			}})
	case promptTooShort:
		return detailed(codes.DeadlineExceeded, "the job needs about 12s; 1s is left", errInfo(client.ReasonDeadlineTooShort))
	}
	return nil
}

func errInfo(reason string) *errdetails.ErrorInfo {
	return &errdetails.ErrorInfo{Reason: reason, Domain: client.ErrorDomain, Metadata: map[string]string{"steps_done": "1"}}
}

func detailed(c codes.Code, msg string, details ...protoadapt.MessageV1) error {
	st, err := status.New(c, msg).WithDetails(details...)
	if err != nil {
		panic(err)
	}
	return st.Err()
}

// images are the images of a job: their bytes depend on the prompt and the
// seed only, as a real worker's do.
func images(req *hourglassv1.GenerateRequest) []*hourglassv1.Image {
	n := max(req.GetImageCount(), 1)
	imgs := make([]*hourglassv1.Image, n)
	for i := range n {
		data := fmt.Appendf(nil, "%q seed %d", req.GetPrompt(), req.GetSeed()+uint64(i))
		if req.GetPrompt() == promptHuge {
			data = []byte(strings.Repeat("x", 8<<20))
		}
		imgs[i] = &hourglassv1.Image{Data: data, MimeType: "image/png", Seed: req.GetSeed() + uint64(i),
			Width: 64, Height: 64, Index: i}
	}
	return imgs
}

func stats(req *hourglassv1.GenerateRequest) *hourglassv1.GenerateStats {
	n := max(req.GetImageCount(), 1)
	return &hourglassv1.GenerateStats{QueueWait: durationpb.New(0), RunTime: durationpb.New(time.Second),
		StepsDone: 4 * n, StepsTotal: 4 * n, WorkerId: "w0", Seed: req.GetSeed(), Model: "fake-xl"}
}

func (f *fakeServer) Generate(ctx context.Context, req *hourglassv1.GenerateRequest) (*hourglassv1.GenerateResponse, error) {
	attempt := f.record(ctx, "Generate", req)
	if err, _ := f.refusing(); err != nil {
		return nil, err
	}
	if req.GetPrompt() == promptWait {
		<-ctx.Done()
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	if err := failure(req.GetPrompt(), attempt); err != nil {
		return nil, err
	}
	return &hourglassv1.GenerateResponse{Images: images(req), Stats: stats(req)}, nil
}

func (f *fakeServer) GenerateStream(req *hourglassv1.GenerateRequest, stream grpc.ServerStreamingServer[hourglassv1.GenerateEvent]) error {
	ctx := stream.Context()
	attempt := f.record(ctx, "GenerateStream", req)
	if req.GetPrompt() == promptWait {
		// The caller may cancel before the events are all sent: then a
		// send fails and the handler returns early.
		defer func() { f.streamEnded <- struct{}{} }()
	}
	send := func(evs ...*hourglassv1.GenerateEvent) error {
		for _, ev := range evs {
			if err := stream.Send(ev); err != nil {
				return err
			}
		}
		return nil
	}
	if refusal, queued := f.refusing(); refusal != nil {
		if queued {
			if err := send(queuedEvent(3)); err != nil {
				return err
			}
		}
		return refusal
	}
	if err := failure(req.GetPrompt(), attempt); err != nil {
		return err
	}
	if err := send(queuedEvent(1), queuedEvent(0), startedEvent(req.GetSeed()), progressEvent(1, 4, 25)); err != nil {
		return err
	}
	switch req.GetPrompt() {
	case promptWait:
		<-ctx.Done()
		return status.FromContextError(ctx.Err()).Err()
	case promptCrashMid:
		if attempt == 1 {
			return detailed(codes.Unavailable, "worker crashed", errInfo(client.ReasonWorkerCrashed))
		}
	}
	for i, img := range images(req) {
		if err := send(&hourglassv1.GenerateEvent{Event: &hourglassv1.GenerateEvent_Image{Image: img}}); err != nil {
			return err
		}
		if i == 0 && req.GetPrompt() == promptCrashLate {
			return detailed(codes.Unavailable, "worker crashed", errInfo(client.ReasonWorkerCrashed))
		}
	}
	if req.GetPrompt() == promptNoDone {
		return nil
	}
	return send(&hourglassv1.GenerateEvent{Event: &hourglassv1.GenerateEvent_Done_{Done: &hourglassv1.GenerateEvent_Done{Stats: stats(req)}}})
}

func (f *fakeServer) GetServerInfo(ctx context.Context, _ *hourglassv1.GetServerInfoRequest) (*hourglassv1.GetServerInfoResponse, error) {
	return &hourglassv1.GetServerInfoResponse{Version: "fake", QueueDepth: 3,
		Models: []*hourglassv1.Model{{Name: "fake-xl", Default: true}}}, nil
}

func queuedEvent(pos uint32) *hourglassv1.GenerateEvent {
	return &hourglassv1.GenerateEvent{Event: &hourglassv1.GenerateEvent_Queued_{Queued: &hourglassv1.GenerateEvent_Queued{Position: pos}}}
}

func startedEvent(seed uint64) *hourglassv1.GenerateEvent {
	return &hourglassv1.GenerateEvent{Event: &hourglassv1.GenerateEvent_Started_{Started: &hourglassv1.GenerateEvent_Started{WorkerId: "w0", Seed: seed}}}
}

func progressEvent(step, total uint32, percent float32) *hourglassv1.GenerateEvent {
	return &hourglassv1.GenerateEvent{Event: &hourglassv1.GenerateEvent_Progress_{Progress: &hourglassv1.GenerateEvent_Progress{
		Step: step, TotalSteps: total, Percent: percent}}}
}
