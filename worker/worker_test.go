package worker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
	workerv1 "github.com/hourglass-dev/hourglass/gen/hourglass/worker/v1"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// generateFunc adapts a function to Generator.
type generateFunc func(ctx context.Context, job *workerv1.Job, out Emitter) error

func (f generateFunc) Describe() Description {
	return Description{
		Models:  []Model{{Name: "test-model", Default: true}},
		Styles:  []string{"Plain"},
		Device:  "cpu",
		Version: "test/1",
	}
}

func (f generateFunc) Generate(ctx context.Context, job *workerv1.Job, out Emitter) error {
	return f(ctx, job, out)
}

// steppingGenerator emits every step of every image, then the image.
func steppingGenerator() generateFunc {
	return func(ctx context.Context, job *workerv1.Job, out Emitter) error {
		for i := range job.GetImageCount() {
			for step := uint32(1); step <= job.GetSteps(); step++ {
				if err := out.Progress(step, job.GetSteps(), i); err != nil {
					return err
				}
			}
			err := out.Image(&hourglassv1.Image{
				Data: []byte{byte(i)}, MimeType: "image/png",
				Seed: job.GetSeed() + uint64(i), Width: job.GetWidth(), Height: job.GetHeight(), Index: i,
			})
			if err != nil {
				return err
			}
		}
		return nil
	}
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a logger.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type testWorker struct {
	socket string
	client workerv1.WorkerServiceClient
	logs   *syncBuffer
}

// startWorker serves gen on a real Unix socket and returns a connected
// client. The worker is stopped, and Serve's result checked, at cleanup.
func startWorker(t *testing.T, gen Generator) *testWorker {
	t.Helper()
	socket := filepath.Join(t.TempDir(), "w.sock")
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- Serve(ctx, Options{
			SocketPath:  socket,
			Generator:   gen,
			Logger:      slog.New(slog.NewJSONHandler(logs, nil)),
			StopTimeout: time.Second,
		})
	}()
	conn := dial(t, socket)
	t.Cleanup(func() {
		conn.Close()
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	w := &testWorker{socket: socket, client: workerv1.NewWorkerServiceClient(conn), logs: logs}
	// Readiness is Describe answering, exactly as the executor checks it.
	w.describe(t, grpc.WaitForReady(true))
	return w
}

func dial(t *testing.T, socket string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// Retry quickly while the socket does not exist yet.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 5 * time.Millisecond, Multiplier: 1.5, MaxDelay: 50 * time.Millisecond},
			MinConnectTimeout: time.Second,
		}))
	if err != nil {
		t.Fatalf("grpc.NewClient: %v", err)
	}
	return conn
}

func (w *testWorker) describe(t *testing.T, opts ...grpc.CallOption) *workerv1.DescribeResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := w.client.Describe(ctx, &workerv1.DescribeRequest{}, opts...)
	if err != nil {
		t.Fatalf("Describe: %v", err)
	}
	return resp
}

// waitIdle polls Describe until the worker reports idle, as the executor
// does after cancelling a job.
func (w *testWorker) waitIdle(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp := w.describe(t)
		if !resp.GetBusy() {
			if resp.GetJobId() != "" {
				t.Errorf("idle worker reports job_id %q", resp.GetJobId())
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker still busy with job %q after 10s", resp.GetJobId())
		}
		time.Sleep(time.Millisecond) // poll interval, not synchronisation
	}
}

type runResult struct {
	progress []*workerv1.Progress
	images   []*hourglassv1.Image
	previews []*hourglassv1.Preview
	// order is the kind of every event as it arrived: 'p'rogress,
	// 'i'mage or pre'v'iew.
	order string
	err   error
}

// run calls Run and collects the whole stream.
func (w *testWorker) run(ctx context.Context, job *workerv1.Job) runResult {
	var res runResult
	stream, err := w.client.Run(ctx, &workerv1.RunRequest{Job: job})
	if err != nil {
		res.err = err
		return res
	}
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			return res
		}
		if err != nil {
			res.err = err
			return res
		}
		switch ev := resp.GetEvent().(type) {
		case *workerv1.RunResponse_Progress:
			res.progress = append(res.progress, ev.Progress)
			res.order += "p"
		case *workerv1.RunResponse_Image:
			res.images = append(res.images, ev.Image)
			res.order += "i"
		case *workerv1.RunResponse_Preview:
			res.previews = append(res.previews, ev.Preview)
			res.order += "v"
		}
	}
}

func validJob(id string) *workerv1.Job {
	return &workerv1.Job{
		Id:            id,
		Prompt:        "a lighthouse at dusk",
		Steps:         3,
		Width:         64,
		Height:        64,
		ImageCount:    2,
		Seed:          42,
		GuidanceScale: 4,
		Sharpness:     2,
		Model:         "test-model",
		OutputFormat:  hourglassv1.OutputFormat_OUTPUT_FORMAT_PNG,
	}
}

func TestRunStreamsProgressAndImages(t *testing.T) {
	w := startWorker(t, steppingGenerator())
	res := w.run(t.Context(), validJob("job-1"))
	if res.err != nil {
		t.Fatalf("Run: %v", res.err)
	}
	if got, want := len(res.progress), 6; got != want {
		t.Fatalf("got %d progress events, want %d", got, want)
	}
	for i, p := range res.progress {
		want := &workerv1.Progress{Step: uint32(i%3 + 1), TotalSteps: 3, ImageIndex: uint32(i / 3)}
		if p.GetStep() != want.Step || p.GetTotalSteps() != want.TotalSteps || p.GetImageIndex() != want.ImageIndex {
			t.Errorf("progress %d = %v, want %v", i, p, want)
		}
	}
	if len(res.images) != 2 {
		t.Fatalf("got %d images, want 2", len(res.images))
	}
	for i, img := range res.images {
		if img.GetIndex() != uint32(i) || img.GetSeed() != 42+uint64(i) {
			t.Errorf("image %d: index %d seed %d", i, img.GetIndex(), img.GetSeed())
		}
	}

	d := w.describe(t)
	if d.GetBusy() || d.GetJobId() != "" {
		t.Errorf("after the job: busy=%v job_id=%q, want idle", d.GetBusy(), d.GetJobId())
	}
	if d.GetDevice() != "cpu" || d.GetVersion() != "test/1" || len(d.GetModels()) != 1 || !d.GetModels()[0].GetDefault() {
		t.Errorf("Describe = %v", d)
	}
}

// gatedGenerator runs one step per token on gate and reports what it did.
type gatedGenerator struct {
	gate     chan struct{}
	started  chan struct{} // closed when Generate starts
	returned chan error    // receives Generate's result
	// stepsAfterDone counts Progress calls made after ctx was done.
	mu             sync.Mutex
	stepsAfterDone int
}

func newGatedGenerator() *gatedGenerator {
	return &gatedGenerator{
		gate:     make(chan struct{}),
		started:  make(chan struct{}),
		returned: make(chan error, 1),
	}
}

func (g *gatedGenerator) Describe() Description { return generateFunc(nil).Describe() }

func (g *gatedGenerator) Generate(ctx context.Context, job *workerv1.Job, out Emitter) (err error) {
	defer func() { g.returned <- err }()
	close(g.started)
	for step := uint32(1); step <= job.GetSteps(); step++ {
		select {
		case <-g.gate:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			g.mu.Lock()
			g.stepsAfterDone++
			g.mu.Unlock()
		}
		if err := out.Progress(step, job.GetSteps(), 0); err != nil {
			return err
		}
	}
	return nil
}

func TestCancelStopsAtNextStep(t *testing.T) {
	g := newGatedGenerator()
	w := startWorker(t, g)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	job := validJob("job-cancel")
	job.Steps = 150
	stream, err := w.client.Run(ctx, &workerv1.RunRequest{Job: job})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	g.gate <- struct{}{}
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("first progress: %v", err)
	}
	cancel()

	if err := <-g.returned; !errors.Is(err, context.Canceled) {
		t.Errorf("Generate returned %v, want context.Canceled", err)
	}
	g.mu.Lock()
	after := g.stepsAfterDone
	g.mu.Unlock()
	if after > 1 {
		t.Errorf("generator ran %d steps after cancellation, want at most 1", after)
	}
	w.waitIdle(t)
	if _, err := stream.Recv(); status.Code(err) != codes.Canceled {
		t.Errorf("stream ended with %v, want Canceled", err)
	}
}

func TestIdleOnlyAfterGenerateReturned(t *testing.T) {
	g := newGatedGenerator()
	w := startWorker(t, g)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	stream, err := w.client.Run(ctx, &workerv1.RunRequest{Job: validJob("job-x")})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	<-g.started
	cancel()
	w.waitIdle(t)
	// busy=false must imply that Generate has returned.
	select {
	case <-g.returned:
	default:
		t.Fatal("Describe reported idle while Generate was still running")
	}
	_, _ = stream.Recv()
}

func TestJobDeadlineStopsJobWithoutCallDeadline(t *testing.T) {
	g := newGatedGenerator()
	w := startWorker(t, g)
	job := validJob("job-deadline")
	job.Deadline = timestamppb.New(time.Now().Add(50 * time.Millisecond))
	res := w.run(t.Context(), job) // the call itself has no deadline
	if status.Code(res.err) != codes.DeadlineExceeded {
		t.Errorf("Run: %v, want DeadlineExceeded", res.err)
	}
	if err := <-g.returned; !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Generate returned %v, want context.DeadlineExceeded", err)
	}
	w.waitIdle(t)
}

func TestBusyWorkerRefusesSecondJob(t *testing.T) {
	g := newGatedGenerator()
	w := startWorker(t, g)

	first := make(chan runResult, 1)
	job := validJob("job-first")
	job.Steps = 1
	go func() { first <- w.run(t.Context(), job) }()
	<-g.started

	d := w.describe(t)
	if !d.GetBusy() || d.GetJobId() != "job-first" {
		t.Errorf("while running: busy=%v job_id=%q, want busy with job-first", d.GetBusy(), d.GetJobId())
	}
	res := w.run(t.Context(), validJob("job-second"))
	if status.Code(res.err) != codes.FailedPrecondition || !strings.Contains(res.err.Error(), "job-first") {
		t.Errorf("second Run: %v, want FailedPrecondition naming job-first", res.err)
	}

	g.gate <- struct{}{}
	if res := <-first; res.err != nil {
		t.Errorf("first job: %v", res.err)
	}
	w.waitIdle(t)
}

func TestGenerateErrorsMapToStatus(t *testing.T) {
	tests := []struct {
		name       string
		err        error
		panicValue any
		want       codes.Code
		wantReason string
	}{
		{name: "success", err: nil, want: codes.OK},
		{name: "out of memory", err: ErrOutOfMemory, want: codes.ResourceExhausted, wantReason: ReasonOutOfMemory},
		{name: "wrapped out of memory", err: fmt.Errorf("allocating latents: %w", ErrOutOfMemory), want: codes.ResourceExhausted, wantReason: ReasonOutOfMemory},
		{name: "invalid job", err: &InvalidJobError{Field: "model", Reason: `unknown model "x"`}, want: codes.InvalidArgument},
		{name: "wrapped invalid job", err: fmt.Errorf("resolve: %w", &InvalidJobError{Field: "styles", Reason: "unknown"}), want: codes.InvalidArgument},
		{name: "cancelled", err: fmt.Errorf("step 3: %w", context.Canceled), want: codes.Canceled},
		{name: "deadline", err: context.DeadlineExceeded, want: codes.DeadlineExceeded},
		{name: "status error keeps its code", err: status.Error(codes.Unavailable, "model server down"), want: codes.Unavailable},
		{name: "plain error", err: errors.New("boom"), want: codes.Internal},
		{name: "panic", panicValue: "kaboom", want: codes.Internal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := startWorker(t, generateFunc(func(ctx context.Context, job *workerv1.Job, out Emitter) error {
				if err := out.Progress(1, job.GetSteps(), 0); err != nil {
					return err
				}
				if tt.panicValue != nil {
					panic(tt.panicValue)
				}
				return tt.err
			}))
			res := w.run(t.Context(), validJob("job-err"))
			st := status.Convert(res.err)
			if st.Code() != tt.want {
				t.Fatalf("Run: %v, want code %v", res.err, tt.want)
			}
			if strings.Contains(st.Message(), "goroutine ") {
				t.Errorf("status message carries a stack trace: %q", st.Message())
			}
			if tt.wantReason != "" {
				var reason, domain string
				for _, d := range st.Details() {
					if info, ok := d.(*errdetails.ErrorInfo); ok {
						reason, domain = info.GetReason(), info.GetDomain()
					}
				}
				if reason != tt.wantReason || domain != ErrorDomain {
					t.Errorf("ErrorInfo reason=%q domain=%q, want %q %q", reason, domain, tt.wantReason, ErrorDomain)
				}
			}
			// Whatever happened, the worker is idle and still serves.
			w.waitIdle(t)
			if tt.panicValue != nil {
				if !strings.Contains(w.logs.String(), "kaboom") || !strings.Contains(w.logs.String(), "goroutine ") {
					t.Errorf("panic and stack not logged: %s", w.logs.String())
				}
				if res := w.run(t.Context(), validJob("job-after-panic")); status.Code(res.err) != codes.Internal {
					t.Errorf("Run after panic: %v, want the worker to serve it", res.err)
				}
			}
		})
	}
}

func TestInvalidJobsAreRefused(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*workerv1.Job) *workerv1.Job
		field  string
	}{
		{"nil job", func(*workerv1.Job) *workerv1.Job { return nil }, "job"},
		{"zero width", func(j *workerv1.Job) *workerv1.Job { j.Width = 0; return j }, "job.width"},
		{"zero height", func(j *workerv1.Job) *workerv1.Job { j.Height = 0; return j }, "job.height"},
		{"width not multiple of 8", func(j *workerv1.Job) *workerv1.Job { j.Width = 100; return j }, "job.width"},
		{"height too large", func(j *workerv1.Job) *workerv1.Job { j.Height = 2056; return j }, "job.height"},
		{"zero steps", func(j *workerv1.Job) *workerv1.Job { j.Steps = 0; return j }, "job.steps"},
		{"too many steps", func(j *workerv1.Job) *workerv1.Job { j.Steps = 151; return j }, "job.steps"},
		{"zero images", func(j *workerv1.Job) *workerv1.Job { j.ImageCount = 0; return j }, "job.image_count"},
		{"too many images", func(j *workerv1.Job) *workerv1.Job { j.ImageCount = 33; return j }, "job.image_count"},
		{"NaN guidance", func(j *workerv1.Job) *workerv1.Job { j.GuidanceScale = float32(nan()); return j }, "job.guidance_scale"},
	}
	var called bool
	var mu sync.Mutex
	w := startWorker(t, generateFunc(func(context.Context, *workerv1.Job, Emitter) error {
		mu.Lock()
		called = true
		mu.Unlock()
		return nil
	}))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := w.run(t.Context(), tt.mutate(validJob("job-bad")))
			st := status.Convert(res.err)
			if st.Code() != codes.InvalidArgument {
				t.Fatalf("Run: %v, want InvalidArgument", res.err)
			}
			var fields []string
			for _, d := range st.Details() {
				if br, ok := d.(*errdetails.BadRequest); ok {
					for _, v := range br.GetFieldViolations() {
						fields = append(fields, v.GetField())
					}
				}
			}
			if len(fields) == 0 || fields[0] != tt.field {
				t.Errorf("field violations %v, want %s", fields, tt.field)
			}
		})
	}
	mu.Lock()
	defer mu.Unlock()
	if called {
		t.Error("Generate was called for an invalid job")
	}
}

func nan() float64 {
	zero := 0.0
	return zero / zero
}

func TestLogsNeverContainPrompt(t *testing.T) {
	w := startWorker(t, steppingGenerator())
	job := validJob("job-log")
	job.Prompt = "the secret prompt text"
	job.NegativePrompt = "the secret negative"
	if res := w.run(t.Context(), job); res.err != nil {
		t.Fatalf("Run: %v", res.err)
	}
	w.waitIdle(t)
	logs := w.logs.String()
	for _, secret := range []string{"secret prompt", "secret negative"} {
		if strings.Contains(logs, secret) {
			t.Errorf("log contains %q:\n%s", secret, logs)
		}
	}
	for _, want := range []string{`"job_id":"job-log"`, `"prompt_sha256":"` + shortHash(job.Prompt) + `"`, `"prompt_len":22`, `"outcome":"OK"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %s:\n%s", want, logs)
		}
	}
}

func TestSocketFile(t *testing.T) {
	dir := t.TempDir()
	socket := filepath.Join(dir, "w.sock")
	// A stale socket, as a killed worker leaves it.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: socket, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	if _, err := os.Lstat(socket); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}

	ctx, cancel := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() {
		served <- Serve(ctx, Options{SocketPath: socket, Generator: steppingGenerator(), Logger: slog.New(slog.DiscardHandler)})
	}()
	conn := dial(t, socket)
	client := workerv1.NewWorkerServiceClient(conn)
	if _, err := client.Describe(ctx, &workerv1.DescribeRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("Describe: %v", err)
	}
	fi, err := os.Lstat(socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a 0600 socket", fi.Mode())
	}

	// A second worker on the same path must not steal the live socket.
	err = Serve(t.Context(), Options{SocketPath: socket, Generator: steppingGenerator(), Logger: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second Serve on a live socket: %v, want an in-use error", err)
	}

	conn.Close()
	cancel()
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := os.Lstat(socket); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket left behind after Serve returned: %v", err)
	}
}

func TestServeRefusesNonSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "not-a-socket")
	if err := os.WriteFile(path, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := Serve(t.Context(), Options{SocketPath: path, Generator: steppingGenerator(), Logger: slog.New(slog.DiscardHandler)})
	if err == nil {
		t.Fatal("Serve replaced a regular file")
	}
	if data, _ := os.ReadFile(path); string(data) != "keep me" {
		t.Error("Serve clobbered a regular file")
	}
}

// Stopping the worker while a job runs cancels the job after StopTimeout
// and returns only once Generate has returned.
func TestServeStopCancelsRunningJob(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "w.sock")
	g := newGatedGenerator()
	ctx, cancel := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() {
		served <- Serve(ctx, Options{SocketPath: socket, Generator: g, Logger: slog.New(slog.DiscardHandler), StopTimeout: 50 * time.Millisecond})
	}()
	conn := dial(t, socket)
	defer conn.Close()
	client := workerv1.NewWorkerServiceClient(conn)
	stream, err := client.Run(t.Context(), &workerv1.RunRequest{Job: validJob("job-stop")}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	<-g.started
	cancel()
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	select {
	case err := <-g.returned:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Generate returned %v, want context.Canceled", err)
		}
	default:
		t.Fatal("Serve returned while Generate was still running")
	}
	if _, err := stream.Recv(); err == nil {
		t.Error("stream of a stopped worker did not fail")
	}
}
