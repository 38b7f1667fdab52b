package executor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	workerv1 "github.com/hourglass-dev/hourglass/gen/hourglass/worker/v1"
	"github.com/hourglass-dev/hourglass/internal/telemetry"
)

// maxWorkerMessage bounds one worker→executor message, which holds at
// most one image: the API's largest (2048×2048) at 4 bytes a pixel, more
// than any PNG or JPEG of it takes even of noise (PNG stores RGB at 3
// bytes a pixel plus a filter byte a row; JPEG at quality 100 stays under
// raw RGB), plus 1 MiB for the rest of the message. grpc-go's default of
// 4 MiB is too small for such an image; anything larger is a broken worker.
const maxWorkerMessage = 2048*2048*4 + 1<<20

// workerProc is one started worker process that serves its socket, with
// the gRPC connection to it. Slots and the spare pool hold these.
type workerProc struct {
	name   string // p0, p1, ...: unique per process, names its socket
	socket string // removed on release; empty when there is none
	proc   workerProcess
	conn   io.Closer // the connection behind client; nil when none
	client workerv1.WorkerServiceClient
	desc   *workerv1.DescribeResponse
	gpu    string // its CUDA_VISIBLE_DEVICES, empty when none was set
}

// launcher starts worker processes. The real one (processLauncher) runs
// the configured command in its own process group on a fresh Unix socket;
// the supervision tests use a fake one whose workers are scripted.
type launcher interface {
	// launch starts the worker named name for gpu and returns it once it
	// serves, or fails when it exits, the start timeout passes, ctx ends or
	// stop is closed.
	launch(ctx context.Context, name, gpu string, stop <-chan struct{}) (*workerProc, error)
}

// processLauncher starts the real worker program.
type processLauncher struct {
	dir            string // the private runtime directory holding the sockets
	command        []string
	logs           io.Writer
	start          time.Duration
	tracerProvider trace.TracerProvider
	meterProvider  metric.MeterProvider
}

func (l processLauncher) launch(ctx context.Context, name, gpu string, stop <-chan struct{}) (*workerProc, error) {
	socket := filepath.Join(l.dir, name+".sock")
	argv := append(append([]string(nil), l.command...), "--socket", socket)
	env := []string{"HOURGLASS_WORKER_SOCKET=" + socket}
	if gpu != "" {
		env = append(env, "CUDA_VISIBLE_DEVICES="+gpu)
	}
	p, err := startProcess(argv, env, l.logs)
	if err != nil {
		return nil, err
	}
	w := &workerProc{name: name, socket: socket, proc: p, gpu: gpu}
	conn, err := grpc.NewClient("unix://"+socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxWorkerMessage)),
		// Client spans of worker calls carry the caller's trace context to
		// the worker process (W3C traceparent in the gRPC metadata).
		grpc.WithStatsHandler(otelgrpc.NewClientHandler(
			otelgrpc.WithTracerProvider(l.tracerProvider),
			otelgrpc.WithMeterProvider(l.meterProvider),
			otelgrpc.WithPropagators(telemetry.Propagator()),
		)),
		// The socket appears a few milliseconds after the process starts;
		// grpc-go's default 1 s first backoff would make every start slow.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 5 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 250 * time.Millisecond},
			MinConnectTimeout: time.Second,
		}))
	if err != nil {
		p.kill()
		return nil, fmt.Errorf("worker %s: dial %s: %w", name, socket, err)
	}
	w.conn, w.client = conn, workerv1.NewWorkerServiceClient(conn)

	ctx, cancel := context.WithTimeout(ctx, l.start)
	defer cancel()
	go func() {
		select {
		case <-p.exited:
		case <-stop:
		case <-ctx.Done():
		}
		cancel()
	}()
	w.desc, err = w.client.Describe(ctx, &workerv1.DescribeRequest{}, grpc.WaitForReady(true))
	if err != nil {
		w.kill()
		if p.waitErr != nil {
			return nil, fmt.Errorf("worker %s exited while starting (%v): %w", name, p.waitErr, err)
		}
		return nil, fmt.Errorf("worker %s: not serving within %v: %w", name, l.start, err)
	}
	return w, nil
}

// spawn starts a worker and returns once it serves, registered with the
// executor (watched for an idle death), or fails.
func (e *Executor) spawn(ctx context.Context, gpu string) (*workerProc, error) {
	e.mu.Lock()
	name := fmt.Sprintf("p%d", e.spawned)
	e.spawned++
	e.mu.Unlock()
	w, err := e.launcher.launch(ctx, name, gpu, e.stop)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		w.kill()
		return nil, errors.New("executor closed while a worker started")
	}
	e.wg.Add(1)
	go e.watch(w)
	e.log.Info("worker process ready", "process", name, "pid", w.proc.PID(), "device", w.desc.GetDevice(), "gpu", gpu)
	return w, nil
}

// kill SIGKILLs the worker's process group, reaps it, and releases the
// connection and socket file.
func (w *workerProc) kill() {
	w.proc.Kill()
	w.release()
}

// stop asks the worker to exit (SIGTERM), kills its group after grace.
func (w *workerProc) stop(grace time.Duration) {
	w.proc.Stop(grace)
	w.release()
}

func (w *workerProc) release() {
	if w.conn != nil {
		_ = w.conn.Close()
	}
	// A killed worker cannot remove its own socket.
	if w.socket != "" {
		_ = os.Remove(w.socket)
	}
}
