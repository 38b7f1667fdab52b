package e2e

import (
	"context"
	"errors"
	"io"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// startSlowStreams starts n GenerateStream calls of a slow job and returns
// once every one has started on a worker; each call's final error arrives
// on the returned channel (nil for a stream that ended with its done event).
func startSlowStreams(t *testing.T, d *daemon, n int, fault string, steps uint32) <-chan error {
	t.Helper()
	results := make(chan error, n)
	started := make(chan struct{}, n)
	for i := range n {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			ctx = metadata.AppendToOutgoingContext(ctx, "hourglass-fault", fault)
			stream, err := d.client.GenerateStream(ctx, smallRequestSteps("draining", uint64(i), steps))
			if err != nil {
				results <- err
				return
			}
			for {
				ev, err := stream.Recv()
				if errors.Is(err, io.EOF) {
					results <- nil
					return
				}
				if err != nil {
					results <- err
					return
				}
				if ev.GetStarted() != nil {
					started <- struct{}{}
				}
			}
		}()
	}
	for range n {
		select {
		case <-started:
		case err := <-results:
			t.Fatalf("a stream ended before it started: %v", err)
		case <-time.After(20 * time.Second):
			t.Fatal("streams did not start within 20s")
		}
	}
	return results
}

func waitExit(t *testing.T, d *daemon, within time.Duration) {
	t.Helper()
	select {
	case <-d.exited:
	case <-time.After(within):
		t.Fatalf("hourglassd still running %v after the signal", within)
	}
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("hourglassd exit code = %d; want 0\n%s", code, d.Logs())
	}
}

func reasonOf(err error) string {
	for _, det := range status.Convert(err).Details() {
		if ei, ok := det.(*errdetails.ErrorInfo); ok {
			return ei.GetReason()
		}
	}
	return ""
}

// SIGTERM under load: health says NOT_SERVING at once, new calls are refused
// with UNAVAILABLE, running jobs finish, and hourglassd exits 0 leaving no
// worker behind (the harness checks that).
func TestDrainLetsRunningJobsFinish(t *testing.T) {
	d := startDaemon(t, "workers: {count: 2, spares: 0}\ntimeouts: {drain: 20s}\n", "--unsafe-fault-injection")
	running := startSlowStreams(t, d, 2, "slow=50ms", 20)
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	waitFor(t, 2*time.Second, "health NOT_SERVING", func() bool {
		resp, err := d.health.Check(ctx, &healthpb.HealthCheckRequest{})
		return err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_NOT_SERVING
	})
	_, err := d.client.Generate(ctx, smallRequest("too late", 1))
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("Generate while draining = %v; want UNAVAILABLE", err)
	}
	for range 2 {
		if err := <-running; err != nil {
			t.Errorf("a job running at SIGTERM ended with %v; want it to finish", err)
		}
	}
	waitExit(t, d, 20*time.Second)
}

// When the drain timeout ends first, the jobs still running are stopped
// and answered UNAVAILABLE (SERVER_DRAINING: retry elsewhere).
func TestDrainTimeoutCancelsWithUnavailable(t *testing.T) {
	d := startDaemon(t, "workers: {count: 2, spares: 0}\ntimeouts: {drain: 300ms}\n", "--unsafe-fault-injection")
	running := startSlowStreams(t, d, 2, "slow=100ms", 100) // 10 s each
	start := time.Now()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		err := <-running
		if status.Code(err) != codes.Unavailable || reasonOf(err) != "SERVER_DRAINING" {
			t.Errorf("a job cut by the drain timeout ended with %v (reason %q); want UNAVAILABLE SERVER_DRAINING", err, reasonOf(err))
		}
	}
	waitExit(t, d, 10*time.Second)
	if took := time.Since(start); took > 8*time.Second {
		t.Errorf("drain took %v; want about the 300ms drain timeout, not the jobs' 10s", took)
	}
}

// A second signal stops at once, without waiting for the drain.
func TestSecondSignalStopsAtOnce(t *testing.T) {
	d := startDaemon(t, "workers: {count: 1, spares: 0}\ntimeouts: {drain: 60s}\n", "--unsafe-fault-injection")
	running := startSlowStreams(t, d, 1, "slow=100ms", 150) // 15 s
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the drain to start", func() bool { return strings.Contains(d.Logs(), `"msg":"draining"`) })
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitExit(t, d, 5*time.Second)
	if err := <-running; err == nil {
		t.Errorf("the running job finished OK; want it cut off by the second signal")
	}
}
