package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/hourglass-dev/hourglass/client"
	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

func TestMain(m *testing.M) {
	// A token in the developer's environment would change every test.
	os.Unsetenv(tokenEnv)
	goleak.VerifyTestMain(m)
}

// fakeServer answers GenerateStream with canned events chosen by the prompt.
// It tests the CLI's client behaviour only, not hourglass itself.
type fakeServer struct {
	hourglassv1.UnimplementedGenerateServiceServer
	// hadDeadline records whether the last call carried a deadline, and
	// remaining how long it had left then.
	hadDeadline atomic.Bool
	remaining   atomic.Int64
	// auth is the authorization metadata of the last call.
	auth atomic.Value
	// entered is closed by a "wait" call once it is inside the handler.
	entered chan struct{}
	// calls counts GenerateStream calls; crashed is set once a "crash
	// once" call failed.
	calls   atomic.Int32
	crashed atomic.Bool
	health  *health.Server
}

func (f *fakeServer) GenerateStream(req *hourglassv1.GenerateRequest, stream grpc.ServerStreamingServer[hourglassv1.GenerateEvent]) error {
	ctx := stream.Context()
	d, ok := ctx.Deadline()
	f.hadDeadline.Store(ok)
	f.remaining.Store(int64(time.Until(d)))
	auth := ""
	if v := metadata.ValueFromIncomingContext(ctx, "authorization"); len(v) > 0 {
		auth = v[0]
	}
	f.auth.Store(auth)
	f.calls.Add(1)
	switch req.GetPrompt() {
	case "invalid":
		st, err := status.New(codes.InvalidArgument, "invalid request").WithDetails(&errdetails.BadRequest{
			FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "width", Description: "must be a multiple of 8"}},
		})
		if err != nil {
			return err
		}
		return st.Err()
	case "crash once":
		// Fail mid-job the first time, as a crashed worker does.
		if !f.crashed.Swap(true) {
			if err := stream.Send(queued(0)); err != nil {
				return err
			}
			if err := stream.Send(&hourglassv1.GenerateEvent{Event: &hourglassv1.GenerateEvent_Started_{
				Started: &hourglassv1.GenerateEvent_Started{WorkerId: "w1", Seed: req.GetSeed()}}}); err != nil {
				return err
			}
			st, err := status.New(codes.Unavailable, "worker crashed").WithDetails(&errdetails.ErrorInfo{Reason: "WORKER_CRASHED", Domain: "hourglass.dev"})
			if err != nil {
				return err
			}
			return st.Err()
		}
	case "wait":
		// Stay queued until the caller's deadline or cancel ends the call.
		if err := stream.Send(queued(0)); err != nil {
			return err
		}
		close(f.entered)
		<-ctx.Done()
		return status.FromContextError(ctx.Err()).Err()
	}

	count := req.GetImageCount()
	if count == 0 {
		count = 1
	}
	seed := req.GetSeed()
	if req.Seed == nil {
		seed = 1234
	}
	mime := "image/png"
	if req.GetOutputFormat() == hourglassv1.OutputFormat_OUTPUT_FORMAT_JPEG {
		mime = "image/jpeg"
	}
	const steps = 4
	events := []*hourglassv1.GenerateEvent{queued(1), queued(0), {Event: &hourglassv1.GenerateEvent_Started_{
		Started: &hourglassv1.GenerateEvent_Started{WorkerId: "w0", Seed: seed}}}}
	for i := range count {
		for s := range uint32(steps) {
			events = append(events, &hourglassv1.GenerateEvent{Event: &hourglassv1.GenerateEvent_Progress_{
				Progress: &hourglassv1.GenerateEvent_Progress{Step: s + 1, TotalSteps: steps, ImageIndex: i,
					Percent: float32(i*steps+s+1) * 100 / float32(count*steps)}}})
			if n := req.GetPreviewEveryNSteps(); n > 0 && (s+1)%n == 0 && s+1 < steps {
				events = append(events, &hourglassv1.GenerateEvent{Event: &hourglassv1.GenerateEvent_Preview{Preview: &hourglassv1.Preview{
					Data: fmt.Appendf(nil, "preview %d/%d", i, s+1), MimeType: "image/jpeg", ImageIndex: i, Step: s + 1, Width: 32, Height: 32}}})
			}
		}
		events = append(events, &hourglassv1.GenerateEvent{Event: &hourglassv1.GenerateEvent_Image{Image: &hourglassv1.Image{
			Data: fmt.Appendf(nil, "image %d", i), MimeType: mime, Seed: seed + uint64(i), Width: 64, Height: 64, Index: i}}})
	}
	if req.GetPrompt() != "no done" {
		events = append(events, &hourglassv1.GenerateEvent{Event: &hourglassv1.GenerateEvent_Done_{Done: &hourglassv1.GenerateEvent_Done{
			Stats: &hourglassv1.GenerateStats{
				QueueWait: durationpb.New(100 * time.Millisecond), RunTime: durationpb.New(1500 * time.Millisecond),
				StepsDone: steps * count, StepsTotal: steps * count, WorkerId: "w0", Seed: seed, Model: "fake-xl",
			}}}})
	}
	for _, ev := range events {
		if err := stream.Send(ev); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeServer) GetServerInfo(context.Context, *hourglassv1.GetServerInfoRequest) (*hourglassv1.GetServerInfoResponse, error) {
	return &hourglassv1.GetServerInfoResponse{
		Version: "v0.0.0-test",
		Models:  []*hourglassv1.Model{{Name: "fake-xl", Default: true}, {Name: "fake-mini"}},
		Styles:  []string{"Fooocus V2", "Fooocus Sharp"},
		Limits: &hourglassv1.Limits{MaxCostPixelSteps: 1 << 30, DefaultTimeout: durationpb.New(time.Minute),
			MaxTimeout: durationpb.New(5 * time.Minute), MaxQueue: 64},
		Workers: []*hourglassv1.WorkerInfo{
			{Id: "w0", State: hourglassv1.WorkerState_WORKER_STATE_BUSY, Pid: 4242, Device: "cpu", JobsDone: 7},
			{Id: "w1", State: hourglassv1.WorkerState_WORKER_STATE_BACKOFF, Device: "cpu", Restarts: 3},
		},
		QueueDepth: 2,
	}, nil
}

func queued(pos uint32) *hourglassv1.GenerateEvent {
	return &hourglassv1.GenerateEvent{Event: &hourglassv1.GenerateEvent_Queued_{Queued: &hourglassv1.GenerateEvent_Queued{Position: pos}}}
}

// startServer serves a fakeServer and the health service on a loopback port
// and stops them when the test ends.
func startServer(t *testing.T, opts ...grpc.ServerOption) (*fakeServer, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := health.NewServer()
	fake := &fakeServer{entered: make(chan struct{}), health: hs}
	s := grpc.NewServer(opts...)
	hourglassv1.RegisterGenerateServiceServer(s, fake)
	hs.SetServingStatus("hourglass.v1.GenerateService", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus("draining", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(s, hs)
	served := make(chan error, 1)
	go func() { served <- s.Serve(lis) }()
	t.Cleanup(func() {
		s.Stop()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return fake, lis.Addr().String()
}

// result is what one run of the CLI left behind.
type result struct {
	code           int
	stdout, stderr string
}

func runCLI(ctx context.Context, args ...string) result {
	var stdout, stderr bytes.Buffer
	code := run(ctx, args, &stdout, &stderr)
	return result{code, stdout.String(), stderr.String()}
}

func TestGenerateOneImage(t *testing.T) {
	fake, addr := startServer(t)
	out := filepath.Join(t.TempDir(), "cat.png")
	r := runCLI(t.Context(), "generate", "--addr", addr, "--prompt", "cat", "--seed", "42", "-o", out)
	if r.code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
	}
	if r.stdout != out+"\n" {
		t.Errorf("stdout %q, want the file path", r.stdout)
	}
	if b, err := os.ReadFile(out); err != nil || string(b) != "image 0" {
		t.Errorf("%s = %q, %v", out, b, err)
	}
	if got := dirNames(t, filepath.Dir(out)); !slices.Equal(got, []string{"cat.png"}) {
		t.Errorf("dir holds %v, want only cat.png", got)
	}
	for _, want := range []string{"queued: position 1", "started: worker w0, seed 42", "progress: 100%", "done: 4/4 steps"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
	if !fake.hadDeadline.Load() {
		t.Error("the call carried no deadline; --timeout defaults to 30s")
	}
}

func TestGenerateManyImagesJSON(t *testing.T) {
	_, addr := startServer(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "cat.png")
	r := runCLI(t.Context(), "generate", "--addr", addr+",127.0.0.1:1", "--prompt", "cat", "--count", "3", "--seed", "18446744073709551610", "-o", out, "--json")
	if r.code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
	}
	want := []string{filepath.Join(dir, "cat-0.png"), filepath.Join(dir, "cat-1.png"), filepath.Join(dir, "cat-2.png")}
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if len(lines) != 4 || !slices.Equal(lines[:3], want) {
		t.Fatalf("stdout:\n%s\nwant the 3 paths and a JSON line", r.stdout)
	}
	var stats struct {
		QueueWait  string   `json:"queue_wait"`
		RunTime    string   `json:"run_time"`
		StepsDone  int      `json:"steps_done"`
		StepsTotal int      `json:"steps_total"`
		WorkerID   string   `json:"worker_id"`
		Seed       string   `json:"seed"`
		Model      string   `json:"model"`
		Files      []string `json:"files"`
	}
	if err := json.Unmarshal([]byte(lines[3]), &stats); err != nil {
		t.Fatalf("JSON line %q: %v", lines[3], err)
	}
	if stats.QueueWait != "0.100s" || stats.RunTime != "1.500s" || stats.StepsDone != 12 || stats.StepsTotal != 12 ||
		stats.WorkerID != "w0" || stats.Seed != "18446744073709551610" || stats.Model != "fake-xl" || !slices.Equal(stats.Files, want) {
		t.Errorf("stats %+v", stats)
	}
	for i, f := range want {
		if b, err := os.ReadFile(f); err != nil || string(b) != fmt.Sprintf("image %d", i) {
			t.Errorf("%s = %q, %v", f, b, err)
		}
	}
}

// Without --seed the client library picks the seed, and the files are
// named after it.
func TestGenerateNamesBySeed(t *testing.T) {
	fake, addr := startServer(t)
	t.Chdir(t.TempDir())
	r := runCLI(t.Context(), "generate", "--addr", addr, "--prompt", "cat", "--count", "2", "--format", "jpeg", "--timeout", "0")
	if r.code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
	}
	var seed uint64
	if _, err := fmt.Sscanf(r.stdout, "hourglass-%d.jpg\n", &seed); err != nil {
		t.Fatalf("stdout %q: %v", r.stdout, err)
	}
	want := []string{fmt.Sprintf("hourglass-%d.jpg", seed), fmt.Sprintf("hourglass-%d.jpg", seed+1)}
	if r.stdout != want[0]+"\n"+want[1]+"\n" {
		t.Errorf("stdout %q, want %q", r.stdout, want)
	}
	if got := dirNames(t, "."); !slices.Equal(got, want) {
		t.Errorf("dir holds %v, want %v", got, want)
	}
	if !strings.Contains(r.stderr, fmt.Sprintf("started: worker w0, seed %d\n", seed)) {
		t.Errorf("stderr does not report seed %d:\n%s", seed, r.stderr)
	}
	// --timeout 0: the client library's default deadline.
	if left := time.Duration(fake.remaining.Load()); !fake.hadDeadline.Load() || left > client.DefaultTimeout || left < client.DefaultTimeout-10*time.Second {
		t.Errorf("--timeout 0 sent a deadline of %v (%v), want the default %v", left, fake.hadDeadline.Load(), client.DefaultTimeout)
	}
}

func TestGeneratePreviews(t *testing.T) {
	tests := []struct {
		name      string
		args      []string
		wantLines []string          // on stderr
		wantFiles map[string]string // in the preview directory
	}{
		{
			name:      "none asked",
			wantFiles: map[string]string{},
		},
		{
			name:      "shown, not saved",
			args:      []string{"--preview-every", "2"},
			wantLines: []string{"preview: image 1/2, step 2, 32x32\n", "preview: image 2/2, step 2, 32x32\n"},
			wantFiles: map[string]string{},
		},
		{
			name: "every step but the last, saved",
			args: []string{"--preview-every", "1", "--preview-dir", "{dir}"},
			wantLines: []string{
				"preview: image 1/2, step 1, 32x32, saved as {dir}/preview-0-1.jpg\n",
				"preview: image 2/2, step 3, 32x32, saved as {dir}/preview-1-3.jpg\n",
			},
			wantFiles: map[string]string{
				"preview-0-1.jpg": "preview 0/1", "preview-0-2.jpg": "preview 0/2", "preview-0-3.jpg": "preview 0/3",
				"preview-1-1.jpg": "preview 1/1", "preview-1-2.jpg": "preview 1/2", "preview-1-3.jpg": "preview 1/3",
			},
		},
		{
			name:      "saved into a directory that does not exist yet",
			args:      []string{"--preview-every", "2", "--preview-dir", "{dir}/new/previews"},
			wantLines: []string{"saved as {dir}/new/previews/preview-1-2.jpg\n"},
			wantFiles: map[string]string{"new": ""},
		},
	}
	_, addr := startServer(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			work, dir := t.TempDir(), t.TempDir()
			args := []string{"generate", "--addr", addr, "--prompt", "cat", "--count", "2", "-o", filepath.Join(work, "cat.png")}
			for _, a := range tt.args {
				args = append(args, strings.ReplaceAll(a, "{dir}", dir))
			}
			r := runCLI(t.Context(), args...)
			if r.code != 0 {
				t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
			}
			// Previews never reach stdout, which lists the images only.
			if want := filepath.Join(work, "cat-0.png") + "\n" + filepath.Join(work, "cat-1.png") + "\n"; r.stdout != want {
				t.Errorf("stdout %q, want %q", r.stdout, want)
			}
			for _, want := range tt.wantLines {
				if want = strings.ReplaceAll(want, "{dir}", dir); !strings.Contains(r.stderr, want) {
					t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
				}
			}
			if len(tt.wantLines) == 0 && strings.Contains(r.stderr, "preview") {
				t.Errorf("stderr mentions previews none were asked for:\n%s", r.stderr)
			}
			got := dirNames(t, dir)
			if len(got) != len(tt.wantFiles) {
				t.Errorf("preview dir holds %v, want %d entries", got, len(tt.wantFiles))
			}
			for name, content := range tt.wantFiles {
				if content == "" {
					continue
				}
				if b, err := os.ReadFile(filepath.Join(dir, name)); err != nil || string(b) != content {
					t.Errorf("%s = %q, %v; want %q", name, b, err, content)
				}
			}
			if got := dirNames(t, work); !slices.Equal(got, []string{"cat-0.png", "cat-1.png"}) {
				t.Errorf("work dir holds %v", got)
			}
		})
	}
}

// A preview directory that cannot be made fails before the call: nothing
// listens at the address.
func TestGeneratePreviewDirError(t *testing.T) {
	addr := "127.0.0.1:1"
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	r := runCLI(t.Context(), "generate", "--addr", addr, "--prompt", "cat", "--preview-every", "1", "--preview-dir", filepath.Join(file, "sub"))
	if r.code != exitLocal || !strings.Contains(r.stderr, "hourglass: preview directory: ") {
		t.Errorf("exit %d, want %d; stderr:\n%s", r.code, exitLocal, r.stderr)
	}
}

func TestGenerateInvalidArgument(t *testing.T) {
	_, addr := startServer(t)
	dir := t.TempDir()
	r := runCLI(t.Context(), "generate", "--addr", addr, "--prompt", "invalid", "-o", filepath.Join(dir, "x.png"))
	if r.code != 13 {
		t.Errorf("exit %d, want 13 (INVALID_ARGUMENT)", r.code)
	}
	if want := "hourglass: INVALID_ARGUMENT: invalid request\n  width: must be a multiple of 8\n"; !strings.HasSuffix(r.stderr, want) {
		t.Errorf("stderr:\n%s\nwant it to end with:\n%s", r.stderr, want)
	}
	if r.stdout != "" || len(dirNames(t, dir)) != 0 {
		t.Errorf("a failed job left stdout %q and files %v", r.stdout, dirNames(t, dir))
	}
}

func TestGenerateDeadlineExceeded(t *testing.T) {
	_, addr := startServer(t)
	dir := t.TempDir()
	r := runCLI(t.Context(), "generate", "--addr", addr, "--prompt", "wait", "--timeout", "100ms", "-o", filepath.Join(dir, "x.png"))
	if r.code != 14 {
		t.Errorf("exit %d, want 14 (DEADLINE_EXCEEDED); stderr:\n%s", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, "hourglass: DEADLINE_EXCEEDED: ") {
		t.Errorf("stderr:\n%s", r.stderr)
	}
	if len(dirNames(t, dir)) != 0 {
		t.Errorf("files left: %v", dirNames(t, dir))
	}
}

func TestGenerateCancelled(t *testing.T) {
	fake, addr := startServer(t)
	ctx, cancel := context.WithCancel(t.Context())
	// Cancel as Ctrl-C would, once the job is running on the server.
	go func() {
		select {
		case <-fake.entered:
		case <-ctx.Done():
		}
		cancel()
	}()
	r := runCLI(ctx, "generate", "--addr", addr, "--prompt", "wait", "-o", filepath.Join(t.TempDir(), "x.png"))
	if r.code != 11 || !strings.Contains(r.stderr, "hourglass: CANCELLED: ") {
		t.Errorf("exit %d, want 11 (CANCELLED); stderr:\n%s", r.code, r.stderr)
	}
}

func TestGenerateStreamWithoutDone(t *testing.T) {
	_, addr := startServer(t)
	dir := t.TempDir()
	r := runCLI(t.Context(), "generate", "--addr", addr, "--prompt", "no done", "--count", "2", "-o", filepath.Join(dir, "x.png"))
	if r.code != 12 || !strings.Contains(r.stderr, "without a done event") {
		t.Errorf("exit %d, want 12 (UNKNOWN); stderr:\n%s", r.code, r.stderr)
	}
	if len(dirNames(t, dir)) != 0 {
		t.Errorf("temporary files left: %v", dirNames(t, dir))
	}
}

func TestGenerateWriteError(t *testing.T) {
	_, addr := startServer(t)
	r := runCLI(t.Context(), "generate", "--addr", addr, "--prompt", "cat", "-o", filepath.Join(t.TempDir(), "missing", "x.png"))
	if r.code != exitLocal || !strings.Contains(r.stderr, "hourglass: save image 0: ") {
		t.Errorf("exit %d, want %d; stderr:\n%s", r.code, exitLocal, r.stderr)
	}
}

func TestUnavailable(t *testing.T) {
	// A port that was just free: nothing listens there.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	r := runCLI(t.Context(), "info", "--addr", addr)
	if r.code != 24 || !strings.Contains(r.stderr, "hourglass: UNAVAILABLE: ") {
		t.Errorf("exit %d, want 24 (UNAVAILABLE); stderr:\n%s", r.code, r.stderr)
	}
}

func TestInfo(t *testing.T) {
	_, addr := startServer(t)
	r := runCLI(t.Context(), "info", "--addr", addr)
	if r.code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
	}
	for _, want := range []string{
		"version:  v0.0.0-test\n",
		"models:   fake-xl (default), fake-mini\n",
		"styles:   Fooocus V2, Fooocus Sharp\n",
		"limits:   max cost 1073741824 pixel-steps, default timeout 1m0s, max timeout 5m0s, max queue 64\n",
		"queue:    2 waiting\n",
		"  ID  STATE    PID   DEVICE  JOBS  RESTARTS\n",
		"  w0  busy     4242  cpu     7     0\n",
		"  w1  backoff  0     cpu     0     3\n",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("info output lacks %q:\n%s", want, r.stdout)
		}
	}

	r = runCLI(t.Context(), "info", "--addr", addr, "--json")
	var info map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &info); r.code != 0 || err != nil || info["queue_depth"] != 2.0 {
		t.Errorf("info --json: exit %d, %v, %v:\n%s", r.code, err, info, r.stdout)
	}
}

func TestHealth(t *testing.T) {
	_, addr := startServer(t)
	tests := []struct {
		service    string
		wantCode   int
		wantStdout string
	}{
		{"", 0, "SERVING\n"},
		{"hourglass.v1.GenerateService", 0, "SERVING\n"},
		{"draining", exitNotServing, "NOT_SERVING\n"},
		{"no.such.Service", 15, ""}, // NOT_FOUND
	}
	for _, tt := range tests {
		r := runCLI(t.Context(), "health", "--addr", addr, "--service", tt.service)
		if r.code != tt.wantCode || r.stdout != tt.wantStdout {
			t.Errorf("health --service %q: exit %d stdout %q, want %d %q; stderr:\n%s",
				tt.service, r.code, r.stdout, tt.wantCode, tt.wantStdout, r.stderr)
		}
	}
}

func TestUsage(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string // substring
		wantStderr string // substring
	}{
		{"no arguments", nil, exitUsage, "", "Usage: hourglass SUBCOMMAND"},
		{"help", []string{"help"}, 0, "Usage: hourglass SUBCOMMAND", ""},
		{"--help", []string{"--help"}, 0, "Usage: hourglass SUBCOMMAND", ""},
		{"help generate", []string{"help", "generate"}, 0, "Usage: hourglass generate", ""},
		{"help health", []string{"help", "health"}, 0, "-service NAME", ""},
		{"help unknown", []string{"help", "paint"}, exitUsage, "", `unknown subcommand "paint"`},
		{"unknown subcommand", []string{"paint"}, exitUsage, "", `unknown subcommand "paint"`},
		{"subcommand -h", []string{"info", "-h"}, 0, "", "Usage: hourglass info"},
		{"generate without prompt", []string{"generate"}, exitUsage, "", "hourglass: generate: --prompt is required"},
		{"bad flag", []string{"health", "--nope"}, exitUsage, "", "hourglass: health: flag provided but not defined: -nope"},
		{"stray argument", []string{"info", "extra"}, exitUsage, "", `unexpected argument "extra"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCLI(t.Context(), tt.args...)
			if r.code != tt.wantCode || !strings.Contains(r.stdout, tt.wantStdout) || !strings.Contains(r.stderr, tt.wantStderr) {
				t.Errorf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, tt.wantCode, r.stdout, r.stderr)
			}
		})
	}
}
