package e2e

// End-to-end tests of what stands between a caller and the workers: bearer
// token authentication (auth.tokens_file), per-tenant limits (concurrent
// jobs, a worker-seconds budget) with fair sharing of the workers between
// tenants, and the recovery interceptor that turns a panic into INTERNAL.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

// tenantTokens are the bearer tokens of the test tenants. The tokens file
// holds only their SHA-256 hashes.
var tenantTokens = map[string]string{
	"alice": "alice-7Qm2-secret-token",
	"bob":   "bob-K9x4-secret-token",
}

func tokenHash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// writeTokensFile writes a tokens file ("TENANT SHA256-HEX" lines, with
// comments) for tokens, with mode, and returns its path.
func writeTokensFile(t *testing.T, mode os.FileMode, tokens map[string]string) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("# tenant  sha256-hex-of-token\n\n")
	tenants := make([]string, 0, len(tokens))
	for tenant := range tokens {
		tenants = append(tenants, tenant)
	}
	sort.Strings(tenants)
	for _, tenant := range tenants {
		fmt.Fprintf(&b, "%s %s   # %s's token\n", tenant, tokenHash(tokens[tenant]), tenant)
	}
	return writeFileMode(t, "tokens", b.String(), mode)
}

// writeFileMode writes a file with exactly mode, whatever the umask.
func writeFileMode(t *testing.T, name, content string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	return path
}

// withAuthorization sets the call's authorization metadata.
func withAuthorization(ctx context.Context, value string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", value)
}

// asTenant authenticates the calls made with ctx as tenant.
func asTenant(ctx context.Context, tenant string) context.Context {
	return withAuthorization(ctx, "Bearer "+tenantTokens[tenant])
}

// detailOf is the first status detail of type T in err, if any.
func detailOf[T any](err error) (T, bool) {
	for _, det := range status.Convert(err).Details() {
		if v, ok := det.(T); ok {
			return v, true
		}
	}
	var zero T
	return zero, false
}

// callLogs are hourglassd's request log lines ("grpc call") for method
// (a full method name, "/hourglass.v1.GenerateService/Generate").
func callLogs(d *daemon, method string) []map[string]any {
	var out []map[string]any
	for _, rec := range logRecords(d, "grpc call") {
		if rec["method"] == method {
			out = append(out, rec)
		}
	}
	return out
}

const (
	methodGenerate       = "/" + "hourglass.v1.GenerateService/Generate"
	methodGenerateStream = "/" + "hourglass.v1.GenerateService/GenerateStream"
)

// authYAML is a one-worker config with a configured admission rate (no
// start-up calibration) and the tokens file at path; extra is appended.
func authYAML(path, extra string) string {
	return "workers:\n  count: 1\n  spares: 0\n" +
		"admission:\n  seconds_per_megapixel_step: 0.05\n" +
		"auth:\n  tokens_file: " + path + "\n" + extra
}

func TestAuthTokens(t *testing.T) {
	d := startDaemon(t, authYAML(writeTokensFile(t, 0o600, tenantTokens), ""))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := smallRequest("a guarded lighthouse", 1)

	const wrongToken = "wrong-Zp81-token-never-issued"
	refused := []struct {
		name       string
		credential string // the authorization value sent; "" sends none
	}{
		{"no token", ""},
		{"wrong token", "Bearer " + wrongToken},
		// The file holds hashes, so it holds no usable secret: the hash
		// of bob's token is not a token.
		{"a hash from the file", "Bearer " + tokenHash(tenantTokens["bob"])},
		{"not a bearer token", "Basic " + wrongToken},
		{"bearer without token", "Bearer "},
	}
	for _, tt := range refused {
		callCtx := ctx
		if tt.credential != "" {
			callCtx = withAuthorization(ctx, tt.credential)
		}
		for _, call := range []string{"Generate", "GenerateStream"} {
			err := callOnce(callCtx, d, call, req)
			st := status.Convert(err)
			if st.Code() != codes.Unauthenticated {
				t.Fatalf("%s(%s) = %v; want UNAUTHENTICATED", call, tt.name, err)
			}
			if secret := strings.TrimSpace(strings.TrimPrefix(strings.TrimPrefix(tt.credential, "Bearer "), "Basic ")); secret != "" &&
				strings.Contains(st.Message(), secret) {
				t.Errorf("%s(%s): the error %q echoes the credential", call, tt.name, st.Message())
			}
			if len(st.Details()) != 0 {
				t.Errorf("%s(%s): details %v; want none", call, tt.name, st.Details())
			}
		}
	}
	if _, err := d.client.GetServerInfo(ctx, &hourglassv1.GetServerInfoRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("GetServerInfo without a token = %v; want UNAUTHENTICATED", err)
	}

	// Each tenant's token names it, and the call log says so.
	if _, err := d.client.Generate(asTenant(ctx, "alice"), req); err != nil {
		t.Fatalf("Generate as alice = %v; want OK", err)
	}
	if err := callOnce(asTenant(ctx, "bob"), d, "GenerateStream", req); err != io.EOF {
		t.Fatalf("GenerateStream as bob = %v; want OK", err)
	}
	if _, err := d.client.GetServerInfo(asTenant(ctx, "alice"), &hourglassv1.GetServerInfoRequest{}); err != nil {
		t.Fatalf("GetServerInfo as alice = %v; want OK", err)
	}
	okCall := func(method, tenant string) func() bool {
		return func() bool {
			return slices.ContainsFunc(callLogs(d, method), func(rec map[string]any) bool {
				return rec["code"] == "OK" && rec["tenant"] == tenant
			})
		}
	}
	waitFor(t, 10*time.Second, "alice's Generate logged with tenant alice", okCall(methodGenerate, "alice"))
	waitFor(t, 10*time.Second, "bob's GenerateStream logged with tenant bob", okCall(methodGenerateStream, "bob"))
	// Every refused call is logged too, as UNAUTHENTICATED.
	unauthenticated := func() (n int) {
		for _, m := range []string{methodGenerate, methodGenerateStream} {
			for _, rec := range callLogs(d, m) {
				if rec["code"] == "Unauthenticated" {
					n++
				}
			}
		}
		return n
	}
	waitFor(t, 10*time.Second, fmt.Sprintf("%d refused calls logged", 2*len(refused)), func() bool {
		return unauthenticated() == 2*len(refused)
	})

	// Health and reflection need no credentials.
	hc, err := d.health.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health Check without a token = %v, %v; want SERVING", hc, err)
	}
	hc, err = d.health.Check(ctx, &healthpb.HealthCheckRequest{Service: "hourglass.v1.GenerateService"})
	if err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health Check(hourglass.v1.GenerateService) without a token = %v, %v; want SERVING", hc, err)
	}
	services, file := reflectionQuery(t, ctx, d, "hourglass.v1.GenerateService")
	for _, want := range []string{"hourglass.v1.GenerateService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} {
		if !slices.Contains(services, want) {
			t.Errorf("reflection without a token lists %q; want %s among them", services, want)
		}
	}
	if len(file) == 0 {
		t.Errorf("reflection without a token: no file descriptor for hourglass.v1.GenerateService")
	}

	// No credential, refused or accepted, reaches the log.
	logs := d.Logs()
	for _, secret := range []string{wrongToken, tenantTokens["alice"], tenantTokens["bob"], tokenHash(tenantTokens["bob"])} {
		if strings.Contains(logs, secret) {
			t.Errorf("hourglassd's log holds the credential %q:\n%s", secret, logs)
		}
	}
}

// reflectionQuery asks server reflection (v1), without credentials, for the list
// of services and the file descriptors that define symbol.
func reflectionQuery(t *testing.T, ctx context.Context, d *daemon, symbol string) (services []string, file [][]byte) {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := reflectionpb.NewServerReflectionClient(d.conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatalf("ServerReflectionInfo: %v", err)
	}
	ask := func(req *reflectionpb.ServerReflectionRequest) *reflectionpb.ServerReflectionResponse {
		t.Helper()
		if err := stream.Send(req); err != nil {
			t.Fatalf("reflection Send: %v", err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("reflection without a token = %v; want an answer", err)
		}
		if e := resp.GetErrorResponse(); e != nil {
			t.Fatalf("reflection error: %v", e)
		}
		return resp
	}
	list := ask(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{ListServices: ""}})
	for _, s := range list.GetListServicesResponse().GetService() {
		services = append(services, s.GetName())
	}
	fd := ask(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: symbol}})
	file = fd.GetFileDescriptorResponse().GetFileDescriptorProto()
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("reflection stream ended with %v; want EOF", err)
	}
	return services, file
}

// TestAuthTokensFileRefused: a tokens file hourglassd cannot trust or read
// is a configuration error: exit status 2 before listening, with stderr
// saying why, and never quoting a line of the file (someone may have
// pasted a token itself).
func TestAuthTokensFileRefused(t *testing.T) {
	const pasted = "alice-pasted-the-token-itself"
	tests := []struct {
		name    string
		content string
		mode    os.FileMode
		missing bool
		want    []string
	}{
		{name: "readable by others", content: "alice " + tokenHash("a") + "\n", mode: 0o644,
			want: []string{"auth.tokens_file", "0644", "chmod 600"}},
		{name: "readable by group", content: "alice " + tokenHash("a") + "\n", mode: 0o640,
			want: []string{"auth.tokens_file", "0640"}},
		{name: "missing", missing: true, want: []string{"auth.tokens_file", "no such file"}},
		{name: "a token instead of its hash", content: "alice " + pasted + "\n", mode: 0o600,
			want: []string{"auth.tokens_file", "SHA-256", ":1"}},
		{name: "no tokens", content: "# nobody yet\n", mode: 0o600, want: []string{"auth.tokens_file", "no tokens"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "missing-tokens")
			if !tt.missing {
				path = writeFileMode(t, "tokens", tt.content, tt.mode)
			}
			res := runHourglassd(t, nil, "--listen", "127.0.0.1:0", "--config",
				writeConfig(t, "auth:\n  tokens_file: "+path+"\n"))
			if res.code != 2 {
				t.Errorf("hourglassd with %s exit status %d; want 2 (a configuration error)\nstderr:\n%s", tt.name, res.code, res.stderr)
			}
			for _, w := range append(tt.want, path) {
				if !strings.Contains(res.stderr, w) {
					t.Errorf("stderr does not say %q:\n%s", w, res.stderr)
				}
			}
			if strings.Contains(res.stderr, pasted) {
				t.Errorf("stderr quotes the tokens file's content:\n%s", res.stderr)
			}
			if strings.Contains(res.stderr, listenedLine) {
				t.Errorf("hourglassd listened before refusing its tokens file:\n%s", res.stderr)
			}
		})
	}
}

// streamRun is one GenerateStream call running in the background.
type streamRun struct {
	// resolved is closed at the call's first event (it was accepted) or
	// at its end, whichever comes first.
	resolved chan struct{}
	accepted bool // set before resolved is closed
	// done is closed when the call ended; then err (nil for OK, with a
	// Done event) and started (when the Started event arrived) are set.
	done    chan struct{}
	err     error
	started time.Time
}

// startStream starts a GenerateStream call with a deadline of timeout from
// now, as a caller sets one per call, and follows it.
func startStream(ctx context.Context, d *daemon, timeout time.Duration, req *hourglassv1.GenerateRequest) *streamRun {
	r := &streamRun{resolved: make(chan struct{}), done: make(chan struct{})}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	go func() {
		defer close(r.done)
		defer cancel()
		resolve := func() {
			select {
			case <-r.resolved:
			default:
				close(r.resolved)
			}
		}
		defer resolve()
		stream, err := d.client.GenerateStream(ctx, req)
		if err != nil {
			r.err = err
			return
		}
		finished := false
		for {
			ev, err := stream.Recv()
			if err == io.EOF && !finished {
				err = fmt.Errorf("stream ended without a Done event")
			}
			if err == io.EOF {
				return
			}
			if err != nil {
				r.err = err
				return
			}
			switch ev.GetEvent().(type) {
			case *hourglassv1.GenerateEvent_Started_:
				r.started = time.Now()
			case *hourglassv1.GenerateEvent_Done_:
				finished = true
			}
			if !r.accepted {
				r.accepted = true
				resolve()
			}
		}
	}()
	return r
}

// wait waits for the call to end.
func (r *streamRun) wait(t *testing.T, what string) {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(60 * time.Second):
		t.Fatalf("%s did not end within 60s", what)
	}
}

// checkTenantQuota fails the test unless err is the refusal of tenant's
// call by limit (concurrent_jobs or worker_seconds): RESOURCE_EXHAUSTED
// with QuotaFailure, RetryInfo and ErrorInfo TENANT_QUOTA_EXCEEDED.
func checkTenantQuota(t *testing.T, call string, err error, tenant, limit, description string) {
	t.Helper()
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("%s = %v; want RESOURCE_EXHAUSTED", call, err)
	}
	qf, ok := detailOf[*errdetails.QuotaFailure](err)
	if !ok || len(qf.GetViolations()) != 1 {
		t.Fatalf("%s: details %v; want one QuotaFailure violation", call, status.Convert(err).Details())
	}
	v := qf.GetViolations()[0]
	if v.GetSubject() != "tenant:"+tenant || v.GetQuotaId() != limit || !strings.HasPrefix(v.GetDescription(), description) {
		t.Errorf("%s: QuotaFailure violation %v; want subject tenant:%s, quota id %s, description starting %q",
			call, v, tenant, limit, description)
	}
	ri, ok := detailOf[*errdetails.RetryInfo](err)
	if !ok || ri.GetRetryDelay().AsDuration() <= 0 {
		t.Errorf("%s: RetryInfo %v; want a positive retry delay", call, ri)
	}
	ei, ok := detailOf[*errdetails.ErrorInfo](err)
	if !ok || ei.GetReason() != "TENANT_QUOTA_EXCEEDED" || ei.GetDomain() != "hourglass.dev" ||
		ei.GetMetadata()["tenant"] != tenant || ei.GetMetadata()["limit"] != limit {
		t.Errorf("%s: ErrorInfo %v; want reason TENANT_QUOTA_EXCEEDED, domain hourglass.dev, tenant %s, limit %s",
			call, ei, tenant, limit)
	}
}

// slowRequest is a small job for the slow fault: steps × the fault's step
// time on the worker, however fast the CPU.
func slowRequest(seed uint64, steps uint32) *hourglassv1.GenerateRequest {
	return &hourglassv1.GenerateRequest{Prompt: "a patient lighthouse", Seed: proto.Uint64(seed),
		Width: proto.Uint32(128), Height: proto.Uint32(96), Steps: proto.Uint32(steps)}
}

// TestTenantFloodThrottled: alice floods the one worker with concurrent
// calls; beyond tenants.max_concurrent she is refused at once with the
// details a client needs to back off, while bob is accepted, gets the
// worker ahead of alice's backlog, and is served.
func TestTenantFloodThrottled(t *testing.T) {
	const (
		flood   = 8
		maxConc = 3
	)
	d := startDaemon(t, authYAML(writeTokensFile(t, 0o600, tenantTokens),
		fmt.Sprintf("tenants:\n  max_concurrent: %d\n", maxConc)),
		unsafeFaultsFlag, "--metrics-listen", "127.0.0.1:0")
	// Each call has its own deadline, a minute from when it is made, so
	// that a later call has a later deadline, as with real callers.
	const timeout = time.Minute
	ctx := context.Background()

	// Each of alice's jobs holds the worker for 10 steps of 100 ms.
	aliceCtx := withTestFault(asTenant(ctx, "alice"), "slow=100ms")
	runs := make([]*streamRun, flood)
	for i := range runs {
		runs[i] = startStream(aliceCtx, d, timeout, slowRequest(uint64(i), 10))
	}
	var accepted []*streamRun
	refused := 0
	for i, r := range runs {
		select {
		case <-r.resolved:
		case <-time.After(30 * time.Second):
			t.Fatalf("alice's call #%d neither started nor ended within 30s", i)
		}
		if r.accepted {
			accepted = append(accepted, r)
			continue
		}
		r.wait(t, "a refused call")
		checkTenantQuota(t, fmt.Sprintf("alice's GenerateStream #%d", i), r.err, "alice", "concurrent_jobs", "concurrent jobs")
		refused++
	}
	// The first job runs for a second, so all eight calls arrive while
	// the first maxConc are in flight.
	if len(accepted) != maxConc || refused != flood-maxConc {
		t.Fatalf("of %d concurrent calls by alice, %d were accepted and %d refused; want %d and %d",
			flood, len(accepted), refused, maxConc, flood-maxConc)
	}

	// Alice has one job on the worker and two waiting: bob's call is
	// accepted all the same, and is not put behind all of alice's backlog.
	bob := startStream(asTenant(ctx, "bob"), d, timeout, slowRequest(100, 4))
	bob.wait(t, "bob's call")
	if bob.err != nil {
		t.Fatalf("bob's GenerateStream while alice floods = %v; want OK", bob.err)
	}
	for i, r := range accepted {
		r.wait(t, "alice's accepted call")
		if r.err != nil {
			t.Fatalf("alice's accepted call #%d = %v; want OK", i, r.err)
		}
	}
	sort.Slice(accepted, func(i, j int) bool { return accepted[i].started.Before(accepted[j].started) })
	// order is the start order, for messages: "alice@0s, bob@1.02s, ...".
	order := func() string {
		type start struct {
			who string
			at  time.Time
		}
		starts := []start{{"bob", bob.started}}
		for _, r := range accepted {
			starts = append(starts, start{"alice", r.started})
		}
		sort.Slice(starts, func(i, j int) bool { return starts[i].at.Before(starts[j].at) })
		var s []string
		for _, st := range starts {
			s = append(s, fmt.Sprintf("%s@%v", st.who, st.at.Sub(starts[0].at).Round(time.Millisecond)))
		}
		return strings.Join(s, ", ")
	}
	// Under FIFO bob would start last, after every job alice had queued.
	last := accepted[len(accepted)-1]
	if !bob.started.Before(last.started) {
		t.Errorf("bob's job started after all of alice's backlog (start order: %s); want fair sharing to serve him earlier", order())
	}
	// Fair sharing by served worker time: alice has had the worker, bob
	// has not, so bob's job is the next to start once alice's running
	// one ends.
	if !bob.started.Before(accepted[1].started) {
		t.Errorf("bob's job started after alice's queued job (start order: %s); want it right after alice's running job: "+
			"alice has been served worker time, bob none", order())
	}

	// The limit is a bound on jobs in flight, not a ban: alice may call
	// again now that hers have ended.
	callCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := d.client.Generate(asTenant(callCtx, "alice"), smallRequest("after the flood", 9)); err != nil {
		t.Errorf("Generate as alice after her jobs ended = %v; want OK", err)
	}
	waitMetrics(t, d.metricsAddr(), 10*time.Second, []expectation{
		eq(metricThrottles, map[string]string{"tenant": "alice", "limit": "concurrent_jobs"}, flood-maxConc),
		{"no throttle for bob", func(p metricsPage) bool {
			_, ok := p.value(metricThrottles, map[string]string{"tenant": "bob"})
			return !ok
		}},
	})
}

// TestTenantWorkerSecondsBudget: with a worker-seconds budget, a job is
// charged its admission estimate when it is admitted; alice's second job,
// which her bucket cannot cover while the first runs, is refused with limit
// worker_seconds, while bob, with a bucket of his own, is served.
func TestTenantWorkerSecondsBudget(t *testing.T) {
	// Every job is estimated at about 0.6 s (the configured overhead; the
	// rate adds a fraction of a millisecond), and the bucket holds 1 s.
	d := startDaemon(t, "workers:\n  count: 1\n  spares: 0\n"+
		"admission:\n  seconds_per_megapixel_step: 0.001\n  overhead: 600ms\n"+
		"tenants:\n  worker_seconds_per_second: 0.1\n  burst_worker_seconds: 1\n"+
		"auth:\n  tokens_file: "+writeTokensFile(t, 0o600, tenantTokens)+"\n",
		unsafeFaultsFlag, "--metrics-listen", "127.0.0.1:0")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// Alice's first job fits (0.6 of 1 worker-second) and keeps the
	// worker for a second.
	first := startStream(withTestFault(asTenant(ctx, "alice"), "slow=100ms"), d, 30*time.Second, slowRequest(1, 10))
	select {
	case <-first.resolved:
	case <-time.After(30 * time.Second):
		t.Fatal("alice's first job neither started nor ended within 30s")
	}
	if !first.accepted {
		first.wait(t, "alice's first job")
		t.Fatalf("alice's first job = %v; want it accepted", first.err)
	}
	// The bucket holds about 0.4 and refills at 0.1 per second: the
	// second 0.6 s job does not fit.
	_, err := d.client.Generate(asTenant(ctx, "alice"), smallRequest("alice again", 2))
	checkTenantQuota(t, "alice's second Generate", err, "alice", "worker_seconds", "worker-seconds")

	if _, err := d.client.Generate(asTenant(ctx, "bob"), smallRequest("bob meanwhile", 3)); err != nil {
		t.Fatalf("Generate as bob while alice is over budget = %v; want OK", err)
	}
	first.wait(t, "alice's first job")
	if first.err != nil {
		t.Fatalf("alice's first job = %v; want OK", first.err)
	}
	waitMetrics(t, d.metricsAddr(), 10*time.Second, []expectation{
		eq(metricThrottles, map[string]string{"tenant": "alice", "limit": "worker_seconds"}, 1),
		eq(metricJobs, map[string]string{"code": "OK"}, 2),
	})
}

// TestPanicBecomesInternal: a panic in the handler (the server-panic test
// fault) reaches the caller as INTERNAL "internal error" and nothing more;
// the stack goes to the server log; the server goes on serving, and the
// panicked call's tenant slot is given back.
func TestPanicBecomesInternal(t *testing.T) {
	// One concurrent job per tenant: a slot the panics failed to give
	// back would refuse the calls that follow them.
	d := startDaemon(t, "workers:\n  count: 1\n  spares: 0\n"+
		"admission:\n  seconds_per_megapixel_step: 0.05\n"+
		"tenants:\n  max_concurrent: 1\n", unsafeFaultsFlag)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	panicCtx := withTestFault(ctx, "server-panic")

	for _, call := range []string{"Generate", "GenerateStream"} {
		err := callOnce(panicCtx, d, call, smallRequest("a panic", 1))
		st := status.Convert(err)
		if st.Code() != codes.Internal || st.Message() != "internal error" {
			t.Fatalf("%s(server-panic) = %v; want INTERNAL \"internal error\"", call, err)
		}
		if len(st.Details()) != 0 {
			t.Errorf("%s(server-panic): details %v; want none", call, st.Details())
		}
		for _, leak := range []string{"goroutine", ".go:", "panic", "server-panic"} {
			if strings.Contains(err.Error(), leak) {
				t.Errorf("%s(server-panic): the caller's error %q holds %q", call, err, leak)
			}
		}
	}

	// The log has each panic with its stack, and each call's line says
	// INTERNAL and that it panicked.
	waitFor(t, 10*time.Second, "two panics in the log", func() bool {
		return len(logRecords(d, "panic in handler")) == 2
	})
	for _, rec := range logRecords(d, "panic in handler") {
		stack, _ := rec["stack"].(string)
		if !strings.Contains(fmt.Sprint(rec["panic"]), "server-panic") || !strings.Contains(stack, "goroutine") ||
			!strings.Contains(stack, "server/service.go") {
			t.Errorf("panic log line %v; want the panic value and a stack through server/service.go", rec)
		}
		if rec["level"] != "ERROR" {
			t.Errorf("panic logged at %v; want ERROR", rec["level"])
		}
	}
	for _, method := range []string{methodGenerate, methodGenerateStream} {
		waitFor(t, 10*time.Second, method+"'s panicked call in the request log", func() bool {
			return slices.ContainsFunc(callLogs(d, method), func(rec map[string]any) bool {
				return rec["code"] == "Internal" && rec["panic"] == true
			})
		})
	}

	hc, err := d.health.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health after the panics = %v, %v; want SERVING", hc, err)
	}
	for _, call := range []string{"Generate", "GenerateStream"} {
		if err := callOnce(ctx, d, call, smallRequest("after the panic", 2)); err != nil && err != io.EOF {
			t.Fatalf("%s after the panics = %v; want OK", call, err)
		}
	}
}
