package executor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/timestamppb"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
	workerv1 "github.com/hourglass-dev/hourglass/gen/hourglass/worker/v1"
)

// workerBin is the real built-in worker, built on first use for these
// tests: the executor's promises are about processes, so its tests use real
// ones. Lazily, so that fuzzing workers (which run no such test) skip it.
var (
	buildOnce sync.Once
	binDir    string
	workerBin string
	buildErr  error
)

func buildWorker(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "hourglass-executor-test-")
		if buildErr != nil {
			return
		}
		workerBin = filepath.Join(binDir, "hourglass-worker")
		out, err := exec.Command("go", "build", "-o", workerBin, "../cmd/hourglass-worker").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("build worker: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return workerBin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// pidLog is a slog handler that remembers every worker process started, so
// that a test can check none survives Close.
type pidLog struct {
	mu   *sync.Mutex
	pids *[]int
}

func (h pidLog) Enabled(context.Context, slog.Level) bool { return true }
func (h pidLog) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h pidLog) WithGroup(string) slog.Handler            { return h }
func (h pidLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "worker process ready" {
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "pid" {
			h.mu.Lock()
			*h.pids = append(*h.pids, int(a.Value.Int64()))
			h.mu.Unlock()
		}
		return true
	})
	return nil
}

// newPool starts an executor on the real worker with fault injection on,
// and on cleanup closes it and checks that no worker process it ever
// started exists any more, not even as a zombie.
func newPool(t *testing.T, cfg Config) *Executor {
	t.Helper()
	var mu sync.Mutex
	var pids []int
	cfg.Command = []string{buildWorker(t), "--unsafe-fault-injection"}
	cfg.Logger = slog.New(pidLog{mu: &mu, pids: &pids})
	cfg.WorkerLogs = testLogWriter{t}
	if cfg.Workers == 0 {
		cfg.Workers = 1
	}
	if cfg.QueueMax == 0 {
		cfg.QueueMax = 16
	}
	e, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		e.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, pid := range pids {
			if err := syscall.Kill(pid, 0); err != syscall.ESRCH {
				t.Errorf("worker pid %d still exists after Close (kill -0: %v)", pid, err)
			}
		}
	})
	return e
}

// testLogWriter sends worker output to the test log, shown on failure.
type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Logf("worker: %s", p)
	return len(p), nil
}

func testJob(fault string, side, steps uint32) *workerv1.Job {
	return &workerv1.Job{
		Id: "test", Prompt: "a test pattern", Steps: steps, Width: side, Height: side, ImageCount: 1,
		Seed: 1, GuidanceScale: 4, Sharpness: 2, Model: "procedural-v1",
		OutputFormat: hourglassv1.OutputFormat_OUTPUT_FORMAT_PNG, Fault: fault,
	}
}

// run calls Run with a deadline d from now and reports how long after the
// deadline it returned (negative: before).
func run(e *Executor, d time.Duration, job *workerv1.Job, onEvent func(Event)) (*Result, time.Duration, error) {
	deadline := time.Now().Add(d)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	job.Deadline = timestamppb.New(deadline)
	res, err := e.Run(ctx, job, "tenant", onEvent)
	return res, time.Since(deadline), err
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

func slot0(e *Executor) WorkerStatus { return e.Status().Workers[0] }

func kindOf(err error) string {
	if err == nil {
		return "ok"
	}
	return KindOf(err).String()
}

// Job is a short name for the worker job type in tests.
type Job = workerv1.Job

func asError(err error, target **Error) bool { return errors.As(err, target) }
