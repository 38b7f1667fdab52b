package client_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/hourglass-dev/hourglass/client"
	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

// newClient makes a plain-text client for target, closed when the test
// ends.
func newClient(t *testing.T, target string, opts ...client.Option) *client.Client {
	t.Helper()
	c, err := client.New(target, append([]client.Option{client.WithInsecure()}, opts...)...)
	if err != nil {
		t.Fatalf("New(%q) = %v", target, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// ctxTimeout is a context that ends after d or with the test.
func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestNewErrors(t *testing.T) {
	pki := newTestPKI(t)
	tests := []struct {
		name   string
		target string
		opts   []client.Option
		want   string // in the error
	}{
		{"empty target", " ", nil, "empty target"},
		{"list with a scheme", "a:1,dns:///b:2", []client.Option{client.WithInsecure()}, "use one dns:/// target"},
		{"list entry without port", "a:1,b", []client.Option{client.WithInsecure()}, "missing port"},
		{"list of nothing", ", ,", []client.Option{client.WithInsecure()}, "holds no address"},
		{"no attempts", "a:1", []client.Option{client.WithInsecure(), client.WithMaxAttempts(0)}, "want 1 to 5"},
		{"too many attempts", "a:1", []client.Option{client.WithInsecure(), client.WithMaxAttempts(6)}, "want 1 to 5"},
		{"negative default timeout", "a:1", []client.Option{client.WithInsecure(), client.WithDefaultTimeout(-time.Second)}, "must not be negative"},
		{"zero message size", "a:1", []client.Option{client.WithInsecure(), client.WithMaxRecvMsgSize(0)}, "must be positive"},
		{"insecure and a CA", "a:1", []client.Option{client.WithInsecure(), client.WithCAFile(pki.caFile)}, "cannot be combined"},
		{"token over plain text", "a:1", []client.Option{client.WithInsecure(), client.WithToken("t")}, "AllowTokenOverPlaintext"},
		{"certificate without key", "a:1", []client.Option{client.WithClientCertificate(pki.clientCert, "")}, "both a certificate and a key"},
		{"missing CA file", "a:1", []client.Option{client.WithCAFile(pki.caFile + ".missing")}, "no such file"},
		{"CA file without PEM", "a:1", []client.Option{client.WithCAFile(pki.clientKey)}, "holds no PEM certificate"},
		{"key that does not match", "a:1", []client.Option{client.WithClientCertificate(pki.clientCert, pki.serverKey)}, "client certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := client.New(tt.target, tt.opts...)
			if err == nil {
				c.Close()
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New(%q) = %v; want an error containing %q", tt.target, err, tt.want)
			}
		})
	}
}

func TestGenerateFixesSeed(t *testing.T) {
	f := startFake(t, nil)
	c := newClient(t, f.addr)
	tests := []struct {
		name string
		seed *uint64
	}{
		{"no seed", nil},
		{"seed 0 is a seed", new(uint64)},
		{"largest seed", func() *uint64 { s := ^uint64(0); return &s }()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := &hourglassv1.GenerateRequest{Prompt: "fox " + tt.name, Seed: tt.seed}
			resp, err := c.Generate(ctxTimeout(t, 10*time.Second), req)
			if err != nil {
				t.Fatal(err)
			}
			calls := f.received()
			sent := calls[len(calls)-1].req
			if sent.Seed == nil {
				t.Fatal("the request went out without a seed")
			}
			if tt.seed == nil {
				if req.Seed != nil {
					t.Errorf("the caller's request was changed: seed %d", req.GetSeed())
				}
				if sent.GetSeed() >= 1<<63 {
					t.Errorf("random seed %d, want it below 2^63", sent.GetSeed())
				}
			} else if sent.GetSeed() != *tt.seed {
				t.Errorf("sent seed %d, want the caller's %d", sent.GetSeed(), *tt.seed)
			}
			if got := resp.GetStats().GetSeed(); got != sent.GetSeed() {
				t.Errorf("stats seed %d, want the sent %d", got, sent.GetSeed())
			}
		})
	}
}

// A try that fails UNAVAILABLE is retried by grpc-go's retry policy, on
// Generate and on a stream that failed before its first event, with the
// request, and so the seed, of the first try.
func TestRetryKeepsSeed(t *testing.T) {
	for _, method := range []string{"Generate", "GenerateStream"} {
		t.Run(method, func(t *testing.T) {
			f := startFake(t, nil)
			c := newClient(t, f.addr)
			req := &hourglassv1.GenerateRequest{Prompt: promptCrashOnce}
			var (
				resp *hourglassv1.GenerateResponse
				err  error
			)
			if method == "Generate" {
				resp, err = c.Generate(ctxTimeout(t, 10*time.Second), req)
			} else {
				resp, err = c.GenerateWithProgress(ctxTimeout(t, 10*time.Second), req, nil)
			}
			if err != nil {
				t.Fatalf("%s = %v; want OK after a retry", method, err)
			}
			calls := f.received()
			if len(calls) != 2 {
				t.Fatalf("server got %d calls, want 2 (a crash, then the retry)", len(calls))
			}
			if a, b := calls[0].req.GetSeed(), calls[1].req.GetSeed(); a != b || calls[0].req.Seed == nil {
				t.Errorf("seeds of the two tries: %d, %d; want one fixed seed", a, b)
			}
			if got, want := string(resp.GetImages()[0].GetData()), string(images(calls[0].req)[0].GetData()); got != want {
				t.Errorf("image %q, want %q: the first try's", got, want)
			}
		})
	}
}

func TestRetriesExhausted(t *testing.T) {
	tests := []struct {
		opts []client.Option
		want int
	}{
		{nil, client.DefaultMaxAttempts},
		{[]client.Option{client.WithMaxAttempts(1)}, 1},
		{[]client.Option{client.WithMaxAttempts(5)}, 5},
	}
	for _, tt := range tests {
		f := startFake(t, nil)
		c := newClient(t, f.addr, tt.opts...)
		_, err := c.Generate(ctxTimeout(t, 10*time.Second), &hourglassv1.GenerateRequest{Prompt: promptAlwaysDown})
		if client.Code(err) != codes.Unavailable || client.Reason(err) != client.ReasonDraining || !client.IsRetryable(err) {
			t.Errorf("Generate = %v (reason %q); want UNAVAILABLE SERVER_DRAINING, retryable", err, client.Reason(err))
		}
		if got := len(f.received()); got != tt.want {
			t.Errorf("server got %d tries, want %d", got, tt.want)
		}
	}
}

// eventKinds names each event, for comparing streams: "queued", "started",
// "progress", "image", "done", and "error" for a failure.
func eventKinds(t *testing.T, seq func(func(*hourglassv1.GenerateEvent, error) bool)) ([]string, error) {
	t.Helper()
	var (
		kinds []string
		last  error
	)
	for ev, err := range seq {
		if err != nil {
			kinds, last = append(kinds, "error"), err
			continue
		}
		switch {
		case ev.GetQueued() != nil:
			kinds = append(kinds, "queued")
		case ev.GetStarted() != nil:
			kinds = append(kinds, "started")
		case ev.GetProgress() != nil:
			kinds = append(kinds, "progress")
		case ev.GetImage() != nil:
			kinds = append(kinds, "image")
		case ev.GetDone() != nil:
			kinds = append(kinds, "done")
		}
	}
	return kinds, last
}

// A stream that failed UNAVAILABLE after its first events, which grpc-go
// cannot retry, is started again by the client until it yields an image.
func TestStreamRestarts(t *testing.T) {
	tests := []struct {
		name      string
		prompt    string
		opts      []client.Option
		wantKinds string
		wantCalls int
		wantCode  codes.Code
	}{
		{
			name: "crash before the first image", prompt: promptCrashMid,
			wantKinds: "queued queued started progress queued queued started progress image image done",
			wantCalls: 2,
		},
		{
			name: "no restart with one attempt", prompt: promptCrashMid, opts: []client.Option{client.WithMaxAttempts(1)},
			wantKinds: "queued queued started progress error", wantCalls: 1, wantCode: codes.Unavailable,
		},
		{
			name: "no restart after an image", prompt: promptCrashLate,
			wantKinds: "queued queued started progress image error", wantCalls: 1, wantCode: codes.Unavailable,
		},
		{
			name: "no done event", prompt: promptNoDone,
			wantKinds: "queued queued started progress image image error", wantCalls: 1, wantCode: codes.Unknown,
		},
		{
			name: "not restartable", prompt: promptInvalid,
			wantKinds: "error", wantCalls: 1, wantCode: codes.InvalidArgument,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t, nil)
			var retries []string
			c := newClient(t, f.addr, append(tt.opts, client.OnStreamRetry(func(attempt int, err error) {
				retries = append(retries, client.Code(err).String())
				if attempt != len(retries)+1 {
					t.Errorf("OnStreamRetry attempt %d, want %d", attempt, len(retries)+1)
				}
			}))...)
			req := &hourglassv1.GenerateRequest{Prompt: tt.prompt, ImageCount: new(uint32(2))}
			kinds, err := eventKinds(t, c.GenerateStream(ctxTimeout(t, 10*time.Second), req))
			if got := strings.Join(kinds, " "); got != tt.wantKinds {
				t.Errorf("events %q, want %q", got, tt.wantKinds)
			}
			if client.Code(err) != tt.wantCode {
				t.Errorf("error %v, want code %v", err, tt.wantCode)
			}
			calls := f.received()
			if len(calls) != tt.wantCalls {
				t.Fatalf("server got %d calls, want %d", len(calls), tt.wantCalls)
			}
			if len(retries) != tt.wantCalls-1 {
				t.Errorf("OnStreamRetry called for %v, want %d times", retries, tt.wantCalls-1)
			}
			for _, c := range calls[1:] {
				if c.req.GetSeed() != calls[0].req.GetSeed() {
					t.Errorf("restart with seed %d, want %d", c.req.GetSeed(), calls[0].req.GetSeed())
				}
			}
		})
	}
}

// Stopping the loop cancels the job on the server.
func TestStreamStopEarly(t *testing.T) {
	f := startFake(t, nil)
	c := newClient(t, f.addr)
	for ev, err := range c.GenerateStream(ctxTimeout(t, 10*time.Second), &hourglassv1.GenerateRequest{Prompt: promptWait}) {
		if err != nil {
			t.Fatal(err)
		}
		if ev.GetStarted() != nil {
			break
		}
	}
	select {
	case <-f.streamEnded:
	case <-time.After(10 * time.Second):
		t.Fatal("the server's stream did not end after the loop stopped")
	}
}

func TestGenerateWithProgress(t *testing.T) {
	f := startFake(t, nil)
	c := newClient(t, f.addr)
	var events int
	resp, err := c.GenerateWithProgress(ctxTimeout(t, 10*time.Second),
		&hourglassv1.GenerateRequest{Prompt: "cat", Seed: new(uint64(7)), ImageCount: new(uint32(3))},
		func(*hourglassv1.GenerateEvent) { events++ })
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetImages()) != 3 || resp.GetImages()[2].GetSeed() != 9 || resp.GetStats().GetSeed() != 7 {
		t.Errorf("response %v; want 3 images from seed 7 and the stats", resp)
	}
	if events != 8 { // queued ×2, started, progress, 3 images, done
		t.Errorf("onEvent called %d times, want 8", events)
	}
	if _, err := c.GenerateWithProgress(ctxTimeout(t, 10*time.Second), &hourglassv1.GenerateRequest{Prompt: promptInvalid}, nil); client.Code(err) != codes.InvalidArgument {
		t.Errorf("GenerateWithProgress(invalid) = %v, want INVALID_ARGUMENT", err)
	}
}

func TestDeadlines(t *testing.T) {
	f := startFake(t, nil)
	tests := []struct {
		name    string
		opts    []client.Option
		timeout time.Duration // of the caller's context; 0 sets none
		want    time.Duration // the deadline the server sees, about
		wantErr error
	}{
		{name: "caller's deadline", timeout: 5 * time.Second, want: 5 * time.Second},
		{name: "caller's deadline beats the default", opts: []client.Option{client.WithDefaultTimeout(time.Second)}, timeout: 5 * time.Second, want: 5 * time.Second},
		{name: "default timeout", want: client.DefaultTimeout},
		{name: "configured default", opts: []client.Option{client.WithDefaultTimeout(3 * time.Second)}, want: 3 * time.Second},
		{name: "refused without a deadline", opts: []client.Option{client.WithDefaultTimeout(0)}, wantErr: client.ErrNoDeadline},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newClient(t, f.addr, tt.opts...)
			ctx := t.Context()
			if tt.timeout > 0 {
				ctx = ctxTimeout(t, tt.timeout)
			}
			before := len(f.received())
			calls := map[string]func() error{
				"Generate": func() error {
					_, err := c.Generate(ctx, &hourglassv1.GenerateRequest{Prompt: "x"})
					return err
				},
				"GenerateStream": func() error {
					_, err := c.GenerateWithProgress(ctx, &hourglassv1.GenerateRequest{Prompt: "x"}, nil)
					return err
				},
				"ServerInfo": func() error {
					_, err := c.ServerInfo(ctx)
					return err
				},
			}
			for name, call := range calls {
				if err := call(); !errors.Is(err, tt.wantErr) {
					t.Errorf("%s = %v, want %v", name, err, tt.wantErr)
				}
			}
			got := f.received()[before:]
			if tt.wantErr != nil {
				if len(got) != 0 {
					t.Errorf("a refused call reached the server: %v", got)
				}
				return
			}
			for _, call := range got {
				if call.remaining > tt.want || call.remaining < tt.want-2*time.Second {
					t.Errorf("%s: the server saw %v left, want about %v", call.method, call.remaining, tt.want)
				}
			}
		})
	}
}

// A call returns at its deadline, whatever the server does.
func TestDeadlineExceeded(t *testing.T) {
	f := startFake(t, nil)
	c := newClient(t, f.addr)
	for _, stream := range []bool{false, true} {
		ctx := ctxTimeout(t, 200*time.Millisecond)
		deadline, _ := ctx.Deadline()
		var err error
		if stream {
			_, err = c.GenerateWithProgress(ctx, &hourglassv1.GenerateRequest{Prompt: promptWait}, nil)
		} else {
			_, err = c.Generate(ctx, &hourglassv1.GenerateRequest{Prompt: promptWait})
		}
		if late := time.Since(deadline); late > time.Second {
			t.Errorf("stream %v: returned %v after the deadline", stream, late)
		}
		if !client.IsDeadlineExceeded(err) || client.IsRetryable(err) {
			t.Errorf("stream %v: %v; want DEADLINE_EXCEEDED, not retryable", stream, err)
		}
	}
}

func TestMaxRecvMsgSize(t *testing.T) {
	f := startFake(t, nil)
	req := &hourglassv1.GenerateRequest{Prompt: promptHuge}
	if _, err := newClient(t, f.addr).Generate(ctxTimeout(t, 10*time.Second), req); err != nil {
		t.Errorf("an 8 MiB response with the default limit: %v", err)
	}
	_, err := newClient(t, f.addr, client.WithMaxRecvMsgSize(1<<20)).Generate(ctxTimeout(t, 10*time.Second), req)
	if client.Code(err) != codes.ResourceExhausted {
		t.Errorf("an 8 MiB response over a 1 MiB limit: %v, want RESOURCE_EXHAUSTED", err)
	}
}

// Calls go round-robin to every replica whose health is SERVING, and stop
// going to one that reports NOT_SERVING (a draining hourglassd).
func TestReplicas(t *testing.T) {
	fakes := []*fakeServer{startFake(t, nil), startFake(t, nil), startFake(t, nil)}
	fakes[1].setServing(false)
	addrs := fakes[0].addr + ", " + fakes[1].addr + "," + fakes[2].addr
	c := newClient(t, addrs)
	counts := func() []int {
		n := make([]int, len(fakes))
		for i, f := range fakes {
			n[i] = len(f.received())
		}
		return n
	}
	generate := func() {
		t.Helper()
		if _, err := c.Generate(ctxTimeout(t, 10*time.Second), &hourglassv1.GenerateRequest{Prompt: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	// The first calls go to whichever replica was ready first.
	waitFor(t, 10*time.Second, "both serving replicas to get calls", func() bool {
		generate()
		n := counts()
		return n[0] > 0 && n[2] > 0
	})
	before := counts()
	for range 20 {
		generate()
	}
	if n := counts(); n[1] != 0 || n[0]-before[0] != 10 || n[2]-before[2] != 10 {
		t.Errorf("calls per replica %v, then %v; want 10 more each on the serving ones, none on the other", before, n)
	}

	fakes[1].setServing(true)
	waitFor(t, 10*time.Second, "calls to the replica that came back", func() bool {
		generate()
		return counts()[1] > 0
	})

	// Drain replica 0: once the client has seen it (6 calls in a row
	// elsewhere), it gets no more calls.
	fakes[0].setServing(false)
	streak, last := 0, counts()[0]
	waitFor(t, 10*time.Second, "calls to leave the draining replica", func() bool {
		generate()
		if n := counts()[0]; n != last {
			streak, last = 0, n
		} else {
			streak++
		}
		return streak >= 6
	})
	for range 20 {
		generate()
	}
	if n := counts()[0]; n != last {
		t.Errorf("the draining replica got %d more calls", n-last)
	}
	if _, err := c.Health(ctxTimeout(t, 10*time.Second), client.ServiceName); err != nil {
		t.Errorf("Health with two replicas serving: %v", err)
	}

	// Without health checks, a connected replica gets calls whatever its
	// health says.
	c2 := newClient(t, addrs, client.WithoutHealthCheck())
	before0 := counts()[0]
	waitFor(t, 10*time.Second, "a call to the NOT_SERVING replica without health checks", func() bool {
		if _, err := c2.Generate(ctxTimeout(t, 10*time.Second), &hourglassv1.GenerateRequest{Prompt: "x"}); err != nil {
			t.Fatal(err)
		}
		return counts()[0] > before0
	})
}

// An address where nothing listens is skipped.
func TestDeadReplica(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := lis.Addr().String()
	lis.Close()
	f := startFake(t, nil)
	c := newClient(t, dead+","+f.addr)
	for range 6 {
		if _, err := c.Generate(ctxTimeout(t, 10*time.Second), &hourglassv1.GenerateRequest{Prompt: "x"}); err != nil {
			t.Fatalf("Generate with one dead replica: %v", err)
		}
	}
	// With no replica at all, calls fail fast with UNAVAILABLE.
	_, err = newClient(t, dead).Generate(ctxTimeout(t, 10*time.Second), &hourglassv1.GenerateRequest{Prompt: "x"})
	if client.Code(err) != codes.Unavailable {
		t.Errorf("Generate with no replica = %v, want UNAVAILABLE", err)
	}
}

func TestServerInfoAndHealth(t *testing.T) {
	f := startFake(t, nil)
	c := newClient(t, f.addr)
	info, err := c.ServerInfo(ctxTimeout(t, 10*time.Second))
	if err != nil || info.GetVersion() != "fake" {
		t.Errorf("ServerInfo = %v, %v", info, err)
	}
	f.setServing(false)
	// Asked through a health-checked client, a NOT_SERVING replica is not
	// there at all; asked directly, it says NOT_SERVING.
	waitFor(t, 10*time.Second, "the client to see NOT_SERVING", func() bool {
		_, err := c.Health(ctxTimeout(t, 10*time.Second), "")
		return client.Code(err) == codes.Unavailable
	})
	direct := newClient(t, f.addr, client.WithoutHealthCheck())
	if st, err := direct.Health(ctxTimeout(t, 10*time.Second), client.ServiceName); err != nil || st != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("Health(%s) = %v, %v; want NOT_SERVING", client.ServiceName, st, err)
	}
	if _, err := direct.Health(ctxTimeout(t, 10*time.Second), "no.such.Service"); client.Code(err) != codes.NotFound {
		t.Errorf("Health(no.such.Service) = %v, want NOT_FOUND", err)
	}
}

func TestTLS(t *testing.T) {
	pki := newTestPKI(t)
	tlsFake := startFake(t, pki.serverTLS(t, false))
	mtlsFake := startFake(t, pki.serverTLS(t, true))
	plainFake := startFake(t, nil)
	tests := []struct {
		name     string
		fake     *fakeServer
		opts     []client.Option
		wantCode codes.Code
		wantAuth string
		wantCN   string
	}{
		{name: "CA file", fake: tlsFake, opts: []client.Option{client.WithCAFile(pki.caFile)}},
		{name: "token over TLS", fake: tlsFake, opts: []client.Option{client.WithCAFile(pki.caFile), client.WithToken("s3cret")}, wantAuth: "Bearer s3cret"},
		{name: "system roots do not know the CA", fake: tlsFake, wantCode: codes.Unavailable},
		{name: "plain text to a TLS server", fake: tlsFake, opts: []client.Option{client.WithInsecure()}, wantCode: codes.Unavailable},
		{name: "mutual TLS", fake: mtlsFake, opts: []client.Option{client.WithCAFile(pki.caFile), client.WithClientCertificate(pki.clientCert, pki.clientKey)}, wantCN: "alice"},
		{name: "mutual TLS without a certificate", fake: mtlsFake, opts: []client.Option{client.WithCAFile(pki.caFile)}, wantCode: codes.Unavailable},
		{name: "TLS config", fake: tlsFake, opts: []client.Option{client.WithTLSConfig(pki.clientTLS())}},
		{name: "token over plain text, allowed", fake: plainFake, opts: []client.Option{client.WithInsecure(), client.WithToken("s3cret"), client.AllowTokenOverPlaintext()}, wantAuth: "Bearer s3cret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A list of one address checks the list resolver's server
			// names too.
			for _, target := range []string{tt.fake.addr, tt.fake.addr + ","} {
				c, err := client.New(target, tt.opts...)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				before := len(tt.fake.received())
				_, err = c.Generate(ctxTimeout(t, 10*time.Second), &hourglassv1.GenerateRequest{Prompt: "x"})
				if client.Code(err) != tt.wantCode {
					t.Fatalf("%q: Generate = %v, want %v", target, err, tt.wantCode)
				}
				if err != nil {
					continue
				}
				got := tt.fake.received()[before]
				if got.auth != tt.wantAuth || got.clientCN != tt.wantCN {
					t.Errorf("%q: server saw authorization %q, client CN %q; want %q, %q", target, got.auth, got.clientCN, tt.wantAuth, tt.wantCN)
				}
			}
		})
	}
}
