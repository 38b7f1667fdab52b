package worker

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	workerv1 "github.com/hourglass-dev/hourglass/gen/hourglass/worker/v1"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
)

// DefaultStopTimeout bounds each phase of shutdown when Options.StopTimeout
// is zero. It is short on purpose: the executor cancels jobs before it stops
// a worker, and it kills workers that linger anyway.
const DefaultStopTimeout = 5 * time.Second

// Options configure Serve.
type Options struct {
	// SocketPath is the Unix socket to serve on. It should lie in a
	// directory only the worker's user can enter (the executor makes a
	// private 0700 one); the socket itself is made 0600.
	SocketPath string
	// Generator runs the jobs.
	Generator Generator
	// Logger receives the worker's logs; nil means JSON on stderr.
	Logger *slog.Logger
	// StopTimeout bounds how long a running job may keep the worker alive
	// after ctx is cancelled, and again how long it may take to stop once
	// its call is cancelled. Zero means DefaultStopTimeout.
	StopTimeout time.Duration
	// TracerProvider traces Run calls, as children of the executor's span
	// when the call carries its trace context, and each Generate inside
	// them ("worker.generate"). Nil means otel's global provider, which is
	// a no-op unless the program set one.
	TracerProvider trace.TracerProvider
	// MeterProvider receives otelgrpc's rpc.server.* metrics for Run. Nil
	// means otel's global provider.
	MeterProvider metric.MeterProvider
}

// Serve serves WorkerService on opts.SocketPath until ctx is cancelled, then
// stops gracefully: a running job gets StopTimeout to finish, after which its
// call is cancelled. Serve returns nil after a clean stop.
//
// The worker is ready as soon as Describe answers on the socket; the
// executor waits for exactly that, so there is no separate readiness signal.
func Serve(ctx context.Context, opts Options) error {
	if opts.SocketPath == "" {
		return errors.New("worker: no socket path")
	}
	if opts.Generator == nil {
		return errors.New("worker: no generator")
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	stopTimeout := opts.StopTimeout
	if stopTimeout <= 0 {
		stopTimeout = DefaultStopTimeout
	}

	lis, err := listen(opts.SocketPath, log)
	if err != nil {
		return err
	}
	defer lis.removeSocket(log)

	srv := grpc.NewServer(
		// The executor is the only client and may keep its connection
		// alive with pings while the worker idles; grpc-go's default
		// policy would answer pings more often than every 5 minutes
		// with GOAWAY and drop the executor's connection.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             time.Second,
			PermitWithoutStream: true,
		}),
		grpc.StatsHandler(statsHandler(opts.TracerProvider, opts.MeterProvider)),
	)
	gen := newTracedGenerator(opts.Generator, opts.TracerProvider)
	workerv1.RegisterWorkerServiceServer(srv, newService(gen, log))

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(lis) }()
	log.Info("worker serving", "socket", opts.SocketPath, "version", opts.Generator.Describe().Version)

	select {
	case err := <-serveErr:
		srv.Stop()
		return fmt.Errorf("worker: serve %s: %w", opts.SocketPath, err)
	case <-ctx.Done():
	}

	log.Info("worker stopping")
	if err := stop(srv, stopTimeout, log); err != nil {
		return err
	}
	// Serve returns nil after a stop; anything else is a real failure.
	if err := <-serveErr; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("worker: serve %s: %w", opts.SocketPath, err)
	}
	log.Info("worker stopped")
	return nil
}

// stop lets a running job finish, then cancels it, and returns once its
// handler has returned, so that Serve never returns while Generate still
// runs. A generator that ignores cancellation gets one more timeout; after
// that Serve gives up on it and reports the fact, and the process exits
// around it.
func stop(srv *grpc.Server, timeout time.Duration, log *slog.Logger) error {
	done := make(chan struct{})
	go func() {
		srv.GracefulStop() // also waits for running handlers
		close(done)
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-done:
		return nil
	case <-timer.C:
	}
	log.Warn("running job did not finish in time; cancelling it", "timeout", timeout)
	srv.Stop() // cancels the running call; GracefulStop above keeps waiting for its handler
	timer.Reset(timeout)
	select {
	case <-done:
		return nil
	case <-timer.C:
		return fmt.Errorf("worker: running job ignored cancellation for %s after shutdown", timeout)
	}
}

// listener is the socket listener plus what we need to remove the socket
// file safely on exit.
type listener struct {
	*net.UnixListener
	path string
	info fs.FileInfo // the socket file we created
}

// listen creates the socket with mode 0600. A stale socket from a previous,
// killed worker is removed first; a live one is left alone.
//
// The socket is created with the process umask and narrowed with chmod
// right after. The short window in between is covered by the private 0700
// directory the executor puts the socket in; we warn when that directory is
// not private. Changing the umask instead would race with every other file
// the process creates, because the umask is process-wide.
func listen(path string, log *slog.Logger) (*listener, error) {
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	if fi, err := os.Stat(filepath.Dir(path)); err == nil && fi.Mode().Perm()&0o077 != 0 {
		log.Warn("socket directory is accessible to other users", "dir", filepath.Dir(path), "mode", fi.Mode().Perm().String())
	}
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("worker: listen on %s: %w", path, err)
	}
	// We remove the file ourselves, and only if it is still ours (see
	// removeSocket).
	ul.SetUnlinkOnClose(false)
	if err := os.Chmod(path, 0o600); err != nil {
		ul.Close()
		os.Remove(path)
		return nil, fmt.Errorf("worker: chmod socket %s: %w", path, err)
	}
	info, err := os.Lstat(path)
	if err != nil {
		ul.Close()
		os.Remove(path)
		return nil, fmt.Errorf("worker: stat socket %s: %w", path, err)
	}
	return &listener{UnixListener: ul, path: path, info: info}, nil
}

// removeSocket removes the socket file, unless another worker has put its
// own socket at the same path in the meantime.
func (l *listener) removeSocket(log *slog.Logger) {
	fi, err := os.Lstat(l.path)
	if err != nil || !os.SameFile(fi, l.info) {
		return
	}
	if err := os.Remove(l.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		log.Warn("could not remove socket", "socket", l.path, "error", err.Error())
	}
}

// removeStaleSocket removes a socket file nobody listens on any more, which
// is what a killed worker leaves behind. It refuses to remove anything that
// is not a socket, or a socket that still accepts connections.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("worker: stat %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("worker: %s exists and is not a socket", path)
	}
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		conn.Close()
		return fmt.Errorf("worker: %s is in use by another process", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("worker: probe %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("worker: remove stale socket %s: %w", path, err)
	}
	return nil
}
