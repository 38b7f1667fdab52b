package e2e

// Log hygiene: a job's prompt and negative prompt, and the caller's bearer
// token (valid or not), never appear in anything hourglassd or its workers
// write: their JSON logs, and the OpenTelemetry spans the console exporter
// prints. Only a length and a short hash of a prompt may be logged.

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

func TestHygieneLogs(t *testing.T) {
	t.Run("logs", func(t *testing.T) { hygieneRun(t, false) })
	t.Run("logs and console spans", func(t *testing.T) {
		// Workers inherit hourglassd's environment: their spans are
		// printed too. A short batch delay gets every span out while the
		// test waits for them.
		t.Setenv("OTEL_TRACES_EXPORTER", "console")
		t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
		hygieneRun(t, true)
	})
}

// hygieneSecret is prefix and 32 random hex digits: a string no log holds
// by chance.
func hygieneSecret(t *testing.T, prefix string) string {
	t.Helper()
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return prefix + hex.EncodeToString(b)
}

func hygieneSHA256(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func hygieneRun(t *testing.T, spans bool) {
	prompt := hygieneSecret(t, "hygiene-prompt-")
	negative := hygieneSecret(t, "hygiene-negative-")
	token := hygieneSecret(t, "hygiene-token-")
	badToken := hygieneSecret(t, "hygiene-bad-token-")

	// The tokens file holds the valid token's SHA-256: that is where it
	// belongs, not in a log.
	tokens := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(tokens, []byte("hygiene "+hygieneSHA256(token)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(tokens, 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, "workers:\n  count: 1\n  spares: 1\n"+
		"admission:\n  seconds_per_megapixel_step: 0.05\n"+
		"auth:\n  tokens_file: "+tokens+"\n", "--unsafe-fault-injection")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("hourglassd log:\n%s", d.Logs())
		}
	})

	base := context.Background()
	authed := metadata.AppendToOutgoingContext(base, "authorization", "Bearer "+token)
	bad := metadata.AppendToOutgoingContext(base, "authorization", "Bearer "+badToken)
	fault := func(ctx context.Context, f string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "hourglass-fault", f)
	}
	req := func(mutate func(*hourglassv1.GenerateRequest)) *hourglassv1.GenerateRequest {
		r := &hourglassv1.GenerateRequest{
			Prompt: prompt, NegativePrompt: negative, Seed: proto.Uint64(3),
			Width: proto.Uint32(128), Height: proto.Uint32(96), Steps: proto.Uint32(4),
		}
		if mutate != nil {
			mutate(r)
		}
		return r
	}
	type hygieneCall struct {
		name    string
		ctx     context.Context
		timeout time.Duration
		method  string
		req     *hourglassv1.GenerateRequest
		want    codes.Code
		worker  bool // the job reaches a worker that lives to export its span
	}
	calls := []hygieneCall{
		{"valid token", authed, 0, "Generate", req(nil), codes.OK, true},
		{"valid token, previews", authed, 0, "GenerateStream", req(func(r *hourglassv1.GenerateRequest) { r.PreviewEveryNSteps = 1 }), codes.OK, true},
		{"invalid token", bad, 0, "Generate", req(nil), codes.Unauthenticated, false},
		{"invalid token", bad, 0, "GenerateStream", req(nil), codes.Unauthenticated, false},
		{"width 7", authed, 0, "Generate", req(func(r *hourglassv1.GenerateRequest) { r.Width = proto.Uint32(7) }), codes.InvalidArgument, false},
		{"width 7", authed, 0, "GenerateStream", req(func(r *hourglassv1.GenerateRequest) { r.Width = proto.Uint32(7) }), codes.InvalidArgument, false},
		{"unknown style", authed, 0, "Generate", req(func(r *hourglassv1.GenerateRequest) { r.Styles = []string{"No Such Style"} }), codes.InvalidArgument, false},
		{"oom fault", fault(authed, "oom"), 0, "GenerateStream", req(nil), codes.ResourceExhausted, true},
		{"oom fault", fault(authed, "oom"), 0, "Generate", req(nil), codes.ResourceExhausted, true},
		{"deadline mid-run", fault(authed, "slow=200ms"), 500 * time.Millisecond, "GenerateStream", req(nil), codes.DeadlineExceeded, true},
		{"handler panic", fault(authed, "server-panic"), 0, "Generate", req(nil), codes.Internal, false},
		// Last: the crash kills the worker that ran the jobs above, and
		// with it any span it had not exported yet (see the wait below).
		{"crash fault", fault(authed, "crash"), 0, "Generate", req(nil), codes.Unavailable, false},
	}
	workerSpans := 0
	for _, c := range calls {
		timeout := c.timeout
		if timeout == 0 {
			timeout = 30 * time.Second
		}
		ctx, cancel := context.WithTimeout(c.ctx, timeout)
		err := hygieneCallOnce(ctx, d, c.method, c.req)
		cancel()
		if got := status.Code(err); got != c.want {
			t.Errorf("%s(%s) = %v; want %v", c.method, c.name, err, c.want)
		}
		for _, secret := range []string{prompt, negative, token, badToken} {
			if err != nil && strings.Contains(err.Error(), secret) {
				t.Errorf("%s(%s): the caller's error %q echoes a secret", c.method, c.name, err)
			}
		}
		if c.worker {
			workerSpans++
		}
		if spans && c.want == codes.Internal {
			// Before the crash: every worker span so far is out.
			waitFor(t, 15*time.Second, "the console exporter's worker spans", func() bool {
				return strings.Count(d.Logs(), `"Name":"worker.generate"`) >= workerSpans
			})
		}
	}
	// The crash left the slot to the spare; a new spare starts.
	abuseWaitWorkersReady(t, authed, d, 1)

	// Everything must be written before it is searched: every call's log
	// line, and with the console exporter every server span and the
	// worker spans of the jobs that reached a living worker.
	waitFor(t, 15*time.Second, "a log line for every call", func() bool {
		n := 0
		for _, rec := range abuseCallLines(d) {
			if m, _ := rec["method"].(string); strings.HasPrefix(m, "/hourglass.v1.GenerateService/Generate") {
				n++
			}
		}
		return n >= len(calls)
	})
	if spans {
		waitFor(t, 15*time.Second, "the console exporter's spans", func() bool {
			logs := d.Logs()
			return strings.Count(logs, `"Name":"hourglass.v1.GenerateService/Generate`) >= len(calls)
		})
	}
	logs := d.Logs()

	// Positive control: the logs are about these calls. The request log
	// has the prompt's short hash for the valid token's tenant.
	digest := hygieneSHA256(prompt)[:12]
	if !strings.Contains(logs, `"prompt_sha256":"`+digest+`"`) || !strings.Contains(logs, `"tenant":"hygiene"`) {
		t.Errorf("hourglassd's log has no line with tenant hygiene and prompt_sha256 %s: the search below would prove nothing", digest)
	}

	secrets := []struct{ what, value string }{
		{"the prompt", prompt},
		{"the prompt's random part", strings.TrimPrefix(prompt, "hygiene-prompt-")},
		{"the negative prompt", negative},
		{"the negative prompt's random part", strings.TrimPrefix(negative, "hygiene-negative-")},
		{"the valid token", token},
		{"the valid token's random part", strings.TrimPrefix(token, "hygiene-token-")},
		{"the valid token's SHA-256", hygieneSHA256(token)},
		{"the invalid token", badToken},
		{"the invalid token's random part", strings.TrimPrefix(badToken, "hygiene-bad-token-")},
		{"the invalid token's SHA-256", hygieneSHA256(badToken)},
		{"the negative prompt's SHA-256", hygieneSHA256(negative)},
	}
	for _, s := range secrets {
		if i := strings.Index(logs, s.value); i >= 0 {
			start := strings.LastIndexByte(logs[:i], '\n') + 1
			end := i + strings.IndexByte(logs[i:], '\n')
			if end < i {
				end = len(logs)
			}
			t.Errorf("%s (%s) appears in hourglassd's output:\n%s", s.what, s.value, logs[start:end])
		}
	}
	t.Logf("searched %d bytes of logs (%d lines) for %d secrets", len(logs), strings.Count(logs, "\n"), len(secrets))
}

// hygieneCallOnce is one Generate or GenerateStream whose stream is read to
// its end; nil when it ended OK.
func hygieneCallOnce(ctx context.Context, d *daemon, method string, req *hourglassv1.GenerateRequest) error {
	if method == "Generate" {
		_, err := d.client.Generate(ctx, req)
		return err
	}
	stream, err := d.client.GenerateStream(ctx, req)
	if err != nil {
		return err
	}
	for {
		if _, err := stream.Recv(); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return err
		}
	}
}
