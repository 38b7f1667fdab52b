package executor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	workerv1 "github.com/hourglass-dev/hourglass/gen/hourglass/worker/v1"
	"github.com/hourglass-dev/hourglass/internal/telemetry"
)

// maxWorkerMessage bounds one worker→executor message: a 2048×2048 PNG
// of noise can exceed grpc-go's default 4 MiB receive limit.
const maxWorkerMessage = 256 << 20

// workerProc is one started worker process that serves its socket, with
// the gRPC connection to it. Slots and the spare pool hold these.
type workerProc struct {
	name   string // p0, p1, ...: unique per process, names its socket
	socket string
	proc   *process
	conn   *grpc.ClientConn
	client workerv1.WorkerServiceClient
	desc   *workerv1.DescribeResponse
	gpu    string // its CUDA_VISIBLE_DEVICES, empty when none was set
}

// spawn starts a worker process with a fresh socket and returns once it
// serves (Describe answers), or fails when it exits, the start timeout
// passes or the executor closes.
func (e *Executor) spawn(ctx context.Context, gpu string) (*workerProc, error) {
	e.mu.Lock()
	name := fmt.Sprintf("p%d", e.spawned)
	e.spawned++
	e.mu.Unlock()
	socket := filepath.Join(e.dir, name+".sock")
	argv := append(append([]string(nil), e.cfg.Command...), "--socket", socket)
	env := []string{"HOURGLASS_WORKER_SOCKET=" + socket}
	if gpu != "" {
		env = append(env, "CUDA_VISIBLE_DEVICES="+gpu)
	}
	p, err := startProcess(argv, env, e.cfg.WorkerLogs)
	if err != nil {
		return nil, err
	}
	w := &workerProc{name: name, socket: socket, proc: p, gpu: gpu}
	w.conn, err = grpc.NewClient("unix://"+socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxWorkerMessage)),
		// Client spans of worker calls carry the caller's trace context to
		// the worker process (W3C traceparent in the gRPC metadata).
		grpc.WithStatsHandler(otelgrpc.NewClientHandler(
			otelgrpc.WithTracerProvider(e.tracerProvider()),
			otelgrpc.WithMeterProvider(e.meterProvider()),
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
	w.client = workerv1.NewWorkerServiceClient(w.conn)

	ctx, cancel := context.WithTimeout(ctx, e.cfg.WorkerStart)
	defer cancel()
	go func() {
		select {
		case <-p.exited:
		case <-e.stop:
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
		return nil, fmt.Errorf("worker %s: not serving within %v: %w", name, e.cfg.WorkerStart, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		w.kill()
		return nil, errors.New("executor closed while a worker started")
	}
	e.wg.Add(1)
	go e.watch(w)
	e.log.Info("worker process ready", "process", name, "pid", p.pid, "device", w.desc.GetDevice(), "gpu", gpu)
	return w, nil
}

// kill SIGKILLs the worker's process group, reaps it, and releases the
// connection and socket file.
func (w *workerProc) kill() {
	w.proc.kill()
	w.release()
}

// stop asks the worker to exit (SIGTERM), kills its group after grace.
func (w *workerProc) stop(grace time.Duration) {
	w.proc.stop(grace)
	w.release()
}

func (w *workerProc) release() {
	if w.conn != nil {
		_ = w.conn.Close()
	}
	// A killed worker cannot remove its own socket.
	_ = os.Remove(w.socket)
}
