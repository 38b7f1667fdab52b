// Command hourglass-worker is hourglass's built-in CPU worker: it serves
// hourglass.worker.v1.WorkerService on a Unix socket with the procedural
// sampler, one job at a time.
//
// hourglassd starts it, one process per worker slot, in its own process
// group with the socket in a private 0700 directory, and treats it as ready
// once Describe answers. It is not meant to be started by hand, but it can
// be:
//
//	hourglass-worker --socket /run/hourglass/w0/worker.sock
//
// Flags:
//
//	--socket PATH               Unix socket to serve on; defaults to
//	                            $HOURGLASS_WORKER_SOCKET.
//	--unsafe-fault-injection    honour Job.fault. TEST-ONLY: lets a job
//	                            hang, crash or exhaust the worker.
//
// Tracing comes from the standard OTEL_* environment, which the worker
// inherits from hourglassd (see internal/telemetry): OTEL_TRACES_EXPORTER=
// otlp|console|none, default none. The worker's Run span joins the trace of
// the executor's call, and each job gets a "worker.generate" span. Spans are
// batched and flushed on a graceful stop; a worker that is killed, or that
// crashes (including the "crash" fault), loses the spans it had not sent
// yet, which is why the executor's own spans record kills and crashes.
//
// Exit status: 0 after a graceful stop on SIGTERM or SIGINT, 1 when serving
// fails, 2 on bad usage or a bad OTEL_* setting.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hourglass-dev/hourglass/internal/telemetry"
	"github.com/hourglass-dev/hourglass/worker"
	"github.com/hourglass-dev/hourglass/worker/procedural"
)

// socketEnv names the environment variable the socket path falls back to,
// so that a supervisor can pass it without building a command line.
const socketEnv = "HOURGLASS_WORKER_SOCKET"

// telemetryFlushTimeout bounds the span flush on exit. It stays well under
// the executor's stop grace (5 s by default), after which it kills the
// worker and the flush would be lost anyway.
const telemetryFlushTimeout = 2 * time.Second

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stderr))
}

func run(args []string, getenv func(string) string, stderr io.Writer) int {
	log := slog.New(slog.NewJSONHandler(stderr, nil))

	fs := flag.NewFlagSet("hourglass-worker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", "", "Unix socket `path` to serve on (default $"+socketEnv+")")
	unsafeFaults := fs.Bool("unsafe-fault-injection", false, "honour Job.fault; TEST-ONLY, lets a job hang, crash or exhaust the worker")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "hourglass-worker: unexpected arguments: %q\n", fs.Args())
		return 2
	}
	path := *socket
	if path == "" {
		path = getenv(socketEnv)
	}
	if path == "" {
		log.Error("no socket path: pass --socket or set " + socketEnv)
		return 2
	}
	if *unsafeFaults {
		log.Warn("UNSAFE: fault injection is ON; jobs may make this worker hang, crash or fail on purpose. Never use this in production.")
	}

	// The OTEL_* variables come from the process environment: the
	// OpenTelemetry exporters read most of them there regardless.
	tel, err := telemetry.Setup(context.Background(), telemetry.Options{ServiceName: "hourglass-worker", Stderr: stderr})
	if err != nil {
		log.Error("bad telemetry settings", "error", err.Error())
		return 2
	}
	tel.SetGlobal(log)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), telemetryFlushTimeout)
		defer cancel()
		if err := tel.Shutdown(ctx); err != nil {
			log.Warn("could not flush telemetry", "error", err.Error())
		}
	}()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	// Once a signal started the graceful stop, a second one kills at once,
	// as an operator pressing Ctrl-C twice expects.
	context.AfterFunc(ctx, stop)

	err = worker.Serve(ctx, worker.Options{
		SocketPath:     path,
		Generator:      newFaultGenerator(procedural.New(), *unsafeFaults, log),
		Logger:         log,
		TracerProvider: tel.TracerProvider,
		MeterProvider:  tel.MeterProvider,
	})
	if err != nil {
		log.Error("worker failed", "error", err.Error())
		return 1
	}
	return 0
}
