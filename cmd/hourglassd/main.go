// Command hourglassd is the hourglass server: it starts a pool of worker
// processes and serves hourglass.v1.GenerateService, grpc.health.v1 and
// server reflection over gRPC.
//
// Settings come from the defaults, then the YAML file given by --config,
// then flags, each overriding the one before.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hourglass-dev/hourglass/executor"
	"github.com/hourglass-dev/hourglass/internal/config"
	"github.com/hourglass-dev/hourglass/server"
)

// drainTimeout bounds how long a stopping server waits for running calls.
const drainTimeout = 10 * time.Second

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

// run returns the process exit status: 0 after a clean stop, 1 when serving
// failed, 2 for bad flags or configuration (before anything listens).
func run(args []string, stderr io.Writer) int {
	log := slog.New(slog.NewJSONHandler(stderr, nil))
	fs := flag.NewFlagSet("hourglassd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "YAML configuration `file`")
	listen := fs.String("listen", config.Default().Listen, "TCP `address` to serve gRPC on")
	workers := fs.Int("workers", config.Default().Workers.Count, "number of worker processes")
	unsafeFaults := fs.Bool("unsafe-fault-injection", false,
		"TESTS ONLY: let the hourglass-fault metadata key inject faults (hang, crash, ...) into workers")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "hourglassd: unexpected argument %q\n", fs.Arg(0))
		return 2
	}

	cfg := config.Default()
	if *configPath != "" {
		var err error
		if cfg, err = config.Load(*configPath); err != nil {
			fmt.Fprintf(stderr, "hourglassd: %v\n", err)
			return 2
		}
	}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "listen":
			cfg.Listen = *listen
		case "workers":
			cfg.Workers.Count = *workers
		}
	})
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "hourglassd: %v\n", err)
		return 2
	}
	command, err := workerCommand(cfg.Workers.Command, *unsafeFaults)
	if err != nil {
		fmt.Fprintf(stderr, "hourglassd: %v\n", err)
		return 2
	}
	if *unsafeFaults {
		log.Warn("UNSAFE: fault injection is on; any caller can hang, crash or slow down workers. Never use this in production.")
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, log, cfg, command, *unsafeFaults); err != nil {
		log.Error("hourglassd failed", "err", err)
		return 1
	}
	return 0
}

// serve listens first, so health checks answer NOT_SERVING while workers
// start (a GPU worker may load a model for minutes), then starts the pool
// and serves until ctx ends.
func serve(ctx context.Context, log *slog.Logger, cfg config.Config, command []string, faults bool) error {
	srv, err := server.New(server.Options{Config: cfg, Logger: log, FaultInjection: faults})
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	log.Info("listening", "addr", lis.Addr().String(), "workers", cfg.Workers.Count)
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(lis) }()

	pool, err := executor.New(ctx, executor.Config{
		Workers:                 cfg.Workers.Count,
		Spares:                  cfg.Workers.Spares,
		Command:                 command,
		QueueMax:                cfg.Queue.Max,
		CancelGrace:             cfg.Timeouts.CancelGrace,
		Heartbeat:               cfg.Timeouts.Heartbeat,
		WorkerStart:             cfg.Timeouts.WorkerStart,
		Admission:               cfg.Admission.Enabled,
		SecondsPerMegapixelStep: cfg.Admission.SecondsPerMegapixelStep,
		Overhead:                cfg.Admission.Overhead,
		Cancellation:            cfg.Cancellation.Enabled,
		OnServingChange:         srv.SetServing,
		Logger:                  log,
	})
	if err != nil {
		srv.Shutdown(context.Background())
		return fmt.Errorf("start workers: %w", err)
	}
	srv.SetExecutor(pool)
	log.Info("serving", "addr", lis.Addr().String())

	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err = <-serveErr:
	}
	drainCtx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	srv.Shutdown(drainCtx)
	pool.Close()
	log.Info("stopped")
	return err
}

// workerCommand is the configured worker argv, or the built-in CPU worker:
// hourglass-worker next to this executable, else on PATH.
func workerCommand(configured []string, faults bool) ([]string, error) {
	if len(configured) > 0 {
		return configured, nil
	}
	path := "hourglass-worker"
	if self, err := os.Executable(); err == nil {
		if p := filepath.Join(filepath.Dir(self), "hourglass-worker"); fileExists(p) {
			path = p
		}
	}
	path, err := exec.LookPath(path)
	if err != nil {
		return nil, fmt.Errorf("find the built-in worker (run `make build`, or set workers.command): %w", err)
	}
	argv := []string{path}
	if faults {
		argv = append(argv, "--unsafe-fault-injection")
	}
	return argv, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return !errors.Is(err, os.ErrNotExist)
}
