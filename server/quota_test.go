package server

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hourglass-dev/hourglass/executor"
	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
	"github.com/hourglass-dev/hourglass/quota"
)

// quotaRefusal is what a tenant-quota status carries.
type quotaRefusal struct {
	code        codes.Code
	subject     string
	description string
	retry       time.Duration
	reason      string
	limit       string
}

func refusalOf(err error) quotaRefusal {
	st := status.Convert(err)
	r := quotaRefusal{code: st.Code()}
	for _, d := range st.Details() {
		switch v := d.(type) {
		case *errdetails.QuotaFailure:
			if len(v.GetViolations()) == 1 {
				r.subject, r.description = v.GetViolations()[0].GetSubject(), v.GetViolations()[0].GetDescription()
			}
		case *errdetails.RetryInfo:
			r.retry = v.GetRetryDelay().AsDuration()
		case *errdetails.ErrorInfo:
			if v.GetDomain() == ErrorDomain {
				r.reason, r.limit = v.GetReason(), v.GetMetadata()["limit"]
			}
		}
	}
	return r
}

// quotaClock is the limiter's clock; the tests do not move it, so retry
// delays are exact.
type quotaClock struct{ now time.Time }

func (c *quotaClock) Now() time.Time { return c.now }

// serveQuota serves svc behind auth (tokens: acme has "t-acme", globex
// "t-globex") and a QuotaGate on limiter.
func serveQuota(t *testing.T, svc hourglassv1.GenerateServiceServer, cfg quota.Config) *grpc.ClientConn {
	t.Helper()
	tokens, err := parseTokens("tokens", strings.NewReader("acme "+tokenHash("t-acme")+"\nglobex "+tokenHash("t-globex")+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	clock := &quotaClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	cfg.Now = clock.Now
	limiter, err := quota.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	auth, gate := NewAuthenticator(tokens, false), NewQuotaGate(limiter)
	addr := serveEcho(t, svc,
		grpc.ChainUnaryInterceptor(auth.UnaryServerInterceptor(), gate.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(auth.StreamServerInterceptor(), gate.StreamServerInterceptor()))
	return dialEcho(t, addr, nil)
}

func TestQuotaConcurrentJobs(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	svc := &echoService{generate: func(ctx context.Context, req *hourglassv1.GenerateRequest) error {
		if req.GetPrompt() == "hold" {
			once.Do(func() { close(entered) })
			<-release
		}
		return nil
	}}
	cc := serveQuota(t, svc, quota.Config{MaxConcurrent: 1})
	client := hourglassv1.NewGenerateServiceClient(cc)
	acme := withAuthorization(context.Background(), "Bearer t-acme")
	held := make(chan error, 1)
	go func() {
		_, err := client.Generate(acme, &hourglassv1.GenerateRequest{Prompt: "hold"})
		held <- err
	}()
	<-entered

	want := quotaRefusal{code: codes.ResourceExhausted, subject: "tenant:acme", retry: time.Second,
		reason: ReasonTenantQuota, limit: string(quota.LimitConcurrent)}
	for _, call := range []authCall{callGenerate, callStream} {
		_, err := call.do(acme, cc)
		got := refusalOf(err)
		desc := got.description
		got.description = ""
		if got != want || !strings.HasPrefix(desc, "concurrent jobs") {
			t.Errorf("%s(acme, one job in flight) = %+v, description %q; want %+v, description \"concurrent jobs…\"", call.name, got, desc, want)
		}
	}
	if tenant, err := callGenerate.do(withAuthorization(context.Background(), "Bearer t-globex"), cc); err != nil || tenant != "globex" {
		t.Errorf("Generate(globex) while acme is at its limit = %q, %v; want served", tenant, err)
	}
	if _, err := client.GetServerInfo(acme, &hourglassv1.GetServerInfoRequest{}); err != nil {
		t.Errorf("GetServerInfo(acme at its limit) = %v; want OK: it runs no job", err)
	}
	close(release)
	if err := <-held; err != nil {
		t.Fatalf("held Generate = %v", err)
	}
	if _, err := callGenerate.do(acme, cc); err != nil {
		t.Errorf("Generate(acme) after its job ended = %v; want OK", err)
	}
}

// TestQuotaWorkerSeconds drives the bucket through the handler helpers:
// the request's steps are the estimate in seconds, its width the run time.
func TestQuotaWorkerSeconds(t *testing.T) {
	svc := &echoService{generate: func(ctx context.Context, req *hourglassv1.GenerateRequest) error {
		if err := chargeQuota(ctx, time.Duration(req.GetSteps())*time.Second); err != nil {
			return err
		}
		settleQuota(ctx, time.Duration(req.GetWidth())*time.Second)
		return nil
	}}
	cc := serveQuota(t, svc, quota.Config{Rate: 1, Burst: 10})
	client := hourglassv1.NewGenerateServiceClient(cc)
	u32 := func(v uint32) *uint32 { return &v }
	tests := []struct {
		tenant          string
		estimate, ran   uint32
		wantRetry       time.Duration // 0: served
		wantDescription string
	}{
		{"acme", 8, 2, 0, ""},                         // refund: 8 left
		{"acme", 9, 9, time.Second, "worker-seconds"}, // 1 short at 1 per second
		{"acme", 8, 8, 0, ""},                         // 0 left
		{"acme", 1, 1, time.Millisecond, "worker-seconds"},
		{"globex", 10, 10, 0, ""}, // another tenant has its own bucket
		{"globex", 0, 3, time.Millisecond, "worker-seconds"},
	}
	for _, tt := range tests {
		ctx := withAuthorization(context.Background(), "Bearer t-"+tt.tenant)
		_, err := client.Generate(ctx, &hourglassv1.GenerateRequest{Steps: u32(tt.estimate), Width: u32(tt.ran)})
		if tt.wantRetry == 0 {
			if err != nil {
				t.Errorf("Generate(%s, estimate %ds) = %v; want served", tt.tenant, tt.estimate, err)
			}
			continue
		}
		got := refusalOf(err)
		if got.code != codes.ResourceExhausted || got.retry != tt.wantRetry || got.subject != "tenant:"+tt.tenant ||
			!strings.HasPrefix(got.description, tt.wantDescription) || got.limit != string(quota.LimitWorkerTime) {
			t.Errorf("Generate(%s, estimate %ds) = %+v; want RESOURCE_EXHAUSTED for tenant:%s, %q, retry %v",
				tt.tenant, tt.estimate, got, tt.tenant, tt.wantDescription, tt.wantRetry)
		}
	}
}

func TestQuotaGateNil(t *testing.T) {
	addr := serveEcho(t, &echoService{generate: func(ctx context.Context, _ *hourglassv1.GenerateRequest) error {
		if err := chargeQuota(ctx, time.Hour); err != nil {
			return err
		}
		settleQuota(ctx, time.Hour)
		return nil
	}}, grpc.ChainUnaryInterceptor(NewQuotaGate(nil).UnaryServerInterceptor()))
	if _, err := callGenerate.do(context.Background(), dialEcho(t, addr, nil)); err != nil {
		t.Errorf("Generate(no limiter) = %v; want OK", err)
	}
}

func TestQuotaStatusPassesOtherErrors(t *testing.T) {
	other := errors.New("not a quota error")
	if got := quotaStatus(other); got != other {
		t.Errorf("quotaStatus(%v) = %v; want it unchanged", other, got)
	}
}

func TestRunClock(t *testing.T) {
	var c runClock
	if got := c.ran(nil); got != 0 {
		t.Errorf("ran(never started, no result) = %v; want 0", got)
	}
	if got := c.ran(&executor.Result{RunTime: 3 * time.Second}); got != 3*time.Second {
		t.Errorf("ran(result 3s) = %v; want 3s", got)
	}
	c.observe(executor.Event{Kind: executor.EventQueued})
	if !c.started.IsZero() {
		t.Errorf("a queued event started the clock")
	}
	c.observe(executor.Event{Kind: executor.EventStarted})
	first := c.started
	c.observe(executor.Event{Kind: executor.EventStarted})
	if first.IsZero() || c.started != first {
		t.Errorf("started = %v after two started events; want the first", c.started)
	}
	if got := c.ran(nil); got <= 0 {
		t.Errorf("ran(started, cut at deadline) = %v; want the time since it started", got)
	}
}
