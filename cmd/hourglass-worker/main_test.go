package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
	workerv1 "github.com/hourglass-dev/hourglass/gen/hourglass/worker/v1"
	"github.com/hourglass-dev/hourglass/worker/procedural"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// runMainEnv makes the test binary act as hourglass-worker, so the tests
// exercise the real process (signals, exit codes, the socket) without a
// separate go build.
const runMainEnv = "HOURGLASS_WORKER_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		os.Exit(run(os.Args[1:], os.Getenv, os.Stderr))
	}
	goleak.VerifyTestMain(m)
}

// proc is a worker process started by a test.
type proc struct {
	cmd    *exec.Cmd
	socket string
	stderr *syncBuffer
	conn   *grpc.ClientConn
	client workerv1.WorkerServiceClient
	exited chan struct{}
	err    error // Wait's result, valid after exited is closed
}

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

// startProc starts the worker binary and waits until Describe answers,
// the way the executor does. It is killed at cleanup if still running.
func startProc(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{stderr: &syncBuffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(os.Args[0], args...)
	p.cmd.Env = append(append(os.Environ(), runMainEnv+"=1"), env...)
	p.cmd.Stderr = p.stderr
	// Own process group, as the executor starts workers.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start worker: %v", err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.exited
		}
		if t.Failed() {
			t.Logf("worker stderr:\n%s", p.stderr.String())
		}
	})
	return p
}

func (p *proc) connect(t *testing.T, socket string) {
	t.Helper()
	p.socket = socket
	conn, err := grpc.NewClient("unix://"+socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 10 * time.Millisecond, Multiplier: 1.5, MaxDelay: 100 * time.Millisecond},
			MinConnectTimeout: time.Second,
		}))
	if err != nil {
		t.Fatalf("grpc.NewClient: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	p.conn, p.client = conn, workerv1.NewWorkerServiceClient(conn)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := p.client.Describe(ctx, &workerv1.DescribeRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("worker never became ready: %v\n%s", err, p.stderr.String())
	}
}

// exitCode waits for the process to exit and returns its status.
func (p *proc) exitCode(t *testing.T) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("worker did not exit\n%s", p.stderr.String())
	}
	var exitErr *exec.ExitError
	if errors.As(p.err, &exitErr) {
		return exitErr.ExitCode()
	}
	if p.err != nil {
		t.Fatalf("wait: %v", p.err)
	}
	return 0
}

func (p *proc) busy(t *testing.T) bool {
	t.Helper()
	resp, err := p.client.Describe(t.Context(), &workerv1.DescribeRequest{})
	if err != nil {
		t.Fatalf("Describe: %v", err)
	}
	return resp.GetBusy()
}

func job(id, fault string) *workerv1.Job {
	return &workerv1.Job{
		Id:            id,
		Prompt:        "a red lighthouse on a cliff at dusk",
		Steps:         4,
		Width:         64,
		Height:        64,
		ImageCount:    2,
		Seed:          7,
		GuidanceScale: 4,
		Sharpness:     2,
		Model:         procedural.ModelName,
		OutputFormat:  hourglassv1.OutputFormat_OUTPUT_FORMAT_PNG,
		Fault:         fault,
	}
}

// collect reads a Run stream to its end.
func collect(stream grpc.ServerStreamingClient[workerv1.RunResponse]) (steps, images int, err error) {
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			return steps, images, nil
		}
		if err != nil {
			return steps, images, err
		}
		switch resp.GetEvent().(type) {
		case *workerv1.RunResponse_Progress:
			steps++
		case *workerv1.RunResponse_Image:
			images++
		}
	}
}

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
	}{
		{"no socket", nil, nil},
		{"unknown flag", []string{"--bogus"}, nil},
		{"stray argument", []string{"--socket", "/tmp/x.sock", "extra"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			code := run(tt.args, func(k string) string { return tt.env[k] }, &stderr)
			if code != 2 {
				t.Errorf("exit %d, want 2; stderr:\n%s", code, stderr.String())
			}
		})
	}
}

func TestServeFailureExitsOne(t *testing.T) {
	var stderr bytes.Buffer
	code := run([]string{"--socket", filepath.Join(t.TempDir(), "missing-dir", "w.sock")}, os.Getenv, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "worker failed") {
		t.Errorf("exit %d, want 1 with the error logged; stderr:\n%s", code, stderr.String())
	}
}

func TestServesAndStopsOnSignal(t *testing.T) {
	for _, tt := range []struct {
		name   string
		signal syscall.Signal
		viaEnv bool
	}{
		{"SIGTERM, socket flag", syscall.SIGTERM, false},
		{"SIGINT, socket from env", syscall.SIGINT, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			socket := filepath.Join(t.TempDir(), "w.sock")
			var p *proc
			if tt.viaEnv {
				p = startProc(t, []string{socketEnv + "=" + socket})
			} else {
				p = startProc(t, nil, "--socket", socket)
			}
			p.connect(t, socket)

			stream, err := p.client.Run(t.Context(), &workerv1.RunRequest{Job: job("job-ok", "")})
			if err != nil {
				t.Fatal(err)
			}
			steps, images, err := collect(stream)
			if err != nil || steps != 8 || images != 2 {
				t.Fatalf("Run: %d steps, %d images, %v; want 8, 2, nil", steps, images, err)
			}

			if err := p.cmd.Process.Signal(tt.signal); err != nil {
				t.Fatal(err)
			}
			if code := p.exitCode(t); code != 0 {
				t.Errorf("exit %d after %v, want 0", code, tt.signal)
			}
			if _, err := os.Lstat(socket); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("socket left behind: %v", err)
			}
		})
	}
}

func TestFaultsThroughTheBinary(t *testing.T) {
	t.Run("crash exits 3 mid-job", func(t *testing.T) {
		socket := filepath.Join(t.TempDir(), "w.sock")
		p := startProc(t, nil, "--socket", socket, "--unsafe-fault-injection")
		p.connect(t, socket)
		stream, err := p.client.Run(t.Context(), &workerv1.RunRequest{Job: job("job-crash", "crash")})
		if err != nil {
			t.Fatal(err)
		}
		steps, _, err := collect(stream)
		if status.Code(err) != codes.Unavailable {
			t.Errorf("Run: %v after %d steps, want Unavailable", err, steps)
		}
		if code := p.exitCode(t); code != 3 {
			t.Errorf("exit %d, want 3", code)
		}
	})

	t.Run("hang stays busy after cancel until killed", func(t *testing.T) {
		socket := filepath.Join(t.TempDir(), "w.sock")
		p := startProc(t, nil, "--socket", socket, "--unsafe-fault-injection")
		p.connect(t, socket)
		ctx, cancel := context.WithCancel(t.Context())
		stream, err := p.client.Run(ctx, &workerv1.RunRequest{Job: job("job-hang", "hang")})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != nil {
			t.Fatalf("first step: %v", err)
		}
		cancel()
		if _, err := stream.Recv(); status.Code(err) != codes.Canceled {
			t.Errorf("stream after cancel: %v, want Canceled", err)
		}
		// Still busy: a hung worker never goes idle; the executor kills it.
		if !p.busy(t) {
			t.Error("hung worker reports idle")
		}
		if err := syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if code := p.exitCode(t); code != -1 {
			t.Errorf("exit %d, want killed by signal", code)
		}
	})

	t.Run("oom answers ResourceExhausted", func(t *testing.T) {
		socket := filepath.Join(t.TempDir(), "w.sock")
		p := startProc(t, nil, "--socket", socket, "--unsafe-fault-injection")
		p.connect(t, socket)
		stream, err := p.client.Run(t.Context(), &workerv1.RunRequest{Job: job("job-oom", "oom")})
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = collect(stream)
		st := status.Convert(err)
		var reason string
		for _, d := range st.Details() {
			if info, ok := d.(*errdetails.ErrorInfo); ok {
				reason = info.GetReason()
			}
		}
		if st.Code() != codes.ResourceExhausted || reason != "WORKER_OUT_OF_MEMORY" {
			t.Errorf("Run: %v (reason %q), want ResourceExhausted WORKER_OUT_OF_MEMORY", err, reason)
		}
	})

	t.Run("faults ignored without the flag", func(t *testing.T) {
		socket := filepath.Join(t.TempDir(), "w.sock")
		p := startProc(t, nil, "--socket", socket)
		p.connect(t, socket)
		for _, id := range []string{"job-a", "job-b"} {
			stream, err := p.client.Run(t.Context(), &workerv1.RunRequest{Job: job(id, "crash")})
			if err != nil {
				t.Fatal(err)
			}
			if steps, images, err := collect(stream); err != nil || steps != 8 || images != 2 {
				t.Fatalf("Run: %d steps, %d images, %v; want the fault ignored", steps, images, err)
			}
		}
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := p.exitCode(t); code != 0 {
			t.Errorf("exit %d, want 0", code)
		}
		if n := strings.Count(p.stderr.String(), "fault injection is off"); n != 1 {
			t.Errorf("warning logged %d times, want once:\n%s", n, p.stderr.String())
		}
	})
}
