// Command hourglassd is the hourglass server: it starts a pool of worker
// processes and serves hourglass.v1.GenerateService, grpc.health.v1 and
// server reflection over gRPC, and Prometheus metrics over HTTP.
//
// Settings come from the defaults, then the YAML file given by --config,
// then HOURGLASS_* environment variables, then flags, each overriding the
// one before. An unknown key or a bad value exits 2 before anything listens.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/hourglass-dev/hourglass/executor"
	"github.com/hourglass-dev/hourglass/executor/sched"
	"github.com/hourglass-dev/hourglass/internal/config"
	"github.com/hourglass-dev/hourglass/internal/gpu"
	"github.com/hourglass-dev/hourglass/internal/telemetry"
	"github.com/hourglass-dev/hourglass/quota"
	"github.com/hourglass-dev/hourglass/server"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// flags are the command line; each overrides its config key when given.
type flags struct {
	configPath    string
	printConfig   bool
	listen        string
	workers       int
	metricsListen string
	insecure      bool
	unsafeFaults  bool
}

// run returns the process exit status: 0 after a clean stop, 1 when serving
// failed, 2 for bad flags or configuration (before anything listens).
func run(args []string, stdout, stderr io.Writer) int {
	var f flags
	fs := flag.NewFlagSet("hourglassd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.configPath, "config", "", "YAML configuration `file`")
	fs.BoolVar(&f.printConfig, "print-config", false, "print the effective configuration (secrets masked) and exit")
	fs.StringVar(&f.listen, "listen", config.Default().Listen, "TCP `address` to serve gRPC on (listen)")
	fs.IntVar(&f.workers, "workers", config.Default().Workers.Count, "number of worker processes (workers.count)")
	fs.StringVar(&f.metricsListen, "metrics-listen", "", "TCP `address` of the Prometheus /metrics page (metrics.listen); off when empty")
	fs.BoolVar(&f.insecure, "insecure", false,
		"allow a non-loopback listen address without TLS (behind a mesh sidecar that terminates mTLS)")
	fs.BoolVar(&f.unsafeFaults, "unsafe-fault-injection", false,
		"TESTS ONLY: let the hourglass-fault metadata key inject faults (hang, crash, ...) into workers")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "hourglassd: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	cfg, err := loadConfig(fs, f)
	if err != nil {
		fmt.Fprintf(stderr, "hourglassd: %v\n", err)
		return 2
	}
	if err := checkPlaintext(cfg, f.insecure); err != nil {
		fmt.Fprintf(stderr, "hourglassd: %v\n", err)
		return 2
	}
	if f.printConfig {
		out, err := cfg.YAML()
		if err != nil {
			fmt.Fprintf(stderr, "hourglassd: %v\n", err)
			return 1
		}
		_, _ = stdout.Write(out)
		return 0
	}
	command, err := workerCommand(cfg.Workers.Command, f.unsafeFaults)
	if err != nil {
		fmt.Fprintf(stderr, "hourglassd: %v\n", err)
		return 2
	}

	log := slog.New(slog.NewJSONHandler(stderr, nil))
	if f.unsafeFaults {
		log.Warn("UNSAFE: fault injection is on; any caller can hang, crash or slow down workers. Never use this in production.")
	}
	// The first SIGINT or SIGTERM drains; a second one stops at once.
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(signals)
	// Files the config names (tokens, TLS) are read now: a bad one is a
	// configuration error, exit 2, before anything listens.
	sec, err := loadSecurity(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "hourglassd: %v\n", err)
		return 2
	}
	if err := serve(log, cfg, sec, command, f.unsafeFaults, signals); err != nil {
		log.Error("hourglassd failed", "err", err)
		return 1
	}
	return 0
}

// loadConfig applies defaults, file, environment, then the flags given.
func loadConfig(fs *flag.FlagSet, f flags) (config.Config, error) {
	cfg, err := config.Load(f.configPath, os.Environ())
	if err != nil {
		return cfg, err
	}
	fs.Visit(func(fl *flag.Flag) {
		switch fl.Name {
		case "listen":
			cfg.Listen = f.listen
		case "workers":
			cfg.Workers.Count = f.workers
		case "metrics-listen":
			cfg.Metrics.Listen = f.metricsListen
		}
	})
	return cfg, cfg.Validate()
}

// serve listens first, so health checks answer NOT_SERVING while workers
// start (a GPU worker may load a model for minutes), then starts the pool
// and serves until a signal.
func serve(log *slog.Logger, cfg config.Config, sec *security, command []string, faults bool, signals <-chan os.Signal) error {
	ctx := context.Background()
	tel, err := telemetry.Setup(ctx, telemetry.Options{ServiceName: "hourglassd", ServiceVersion: server.Version,
		Metrics: cfg.Metrics.Listen != ""})
	if err != nil {
		return fmt.Errorf("telemetry: %w", err)
	}
	tel.SetGlobal(log)
	// The soft memory limit: limits.memory_soft_limit_bytes, unless the
	// environment sets GOMEMLIMIT, which the runtime has applied already
	// and which wins, as it does for every Go program.
	if limit := cfg.Limits.MemorySoftLimitBytes; limit > 0 && os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(limit)
	}
	defer func() {
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := tel.Shutdown(shutdownCtx); err != nil {
			log.Warn("telemetry shutdown", "err", err)
		}
	}()

	if err := sec.countThrottles(tel.MeterProvider); err != nil {
		return err
	}
	opts := sec.opts
	opts.Config, opts.Logger, opts.FaultInjection = cfg, log, faults
	opts.TracerProvider, opts.MeterProvider = tel.TracerProvider, tel.MeterProvider
	// NVML where the NVIDIA driver is installed; quietly nothing elsewhere.
	opts.GPUs = gpu.Open()
	defer opts.GPUs.Close()
	srv, err := server.New(opts)
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(lis) }()
	log.Info("listening", "addr", lis.Addr().String(), "workers", cfg.Workers.Count)

	if cfg.Metrics.Listen != "" {
		stopMetrics, err := serveMetrics(log, cfg.Metrics.Listen, tel.MetricsHandler)
		if err != nil {
			srv.Stop()
			return err
		}
		defer stopMetrics()
	}

	// Workers start in the background of the first signal: a stop while
	// they start must not wait for them.
	startCtx, cancelStart := context.WithCancel(ctx)
	defer cancelStart()
	type started struct {
		pool *executor.Executor
		err  error
	}
	// Validated with the config: only schedulable or point-estimate.
	policy, err := sched.ParsePolicy(cfg.Admission.Policy)
	if err != nil {
		return fmt.Errorf("admission.policy: %w", err)
	}
	poolc := make(chan started, 1)
	go func() {
		pool, err := executor.New(startCtx, executor.Config{
			Workers:                 cfg.Workers.Count,
			Spares:                  cfg.Workers.Spares,
			GPUs:                    cfg.Workers.GPUs,
			Command:                 command,
			QueueMax:                cfg.Queue.Max,
			CancelGrace:             cfg.Timeouts.CancelGrace,
			Heartbeat:               cfg.Timeouts.Heartbeat,
			WorkerStart:             cfg.Timeouts.WorkerStart,
			Admission:               cfg.Admission.Enabled,
			Policy:                  policy,
			Quantile:                cfg.Admission.Quantile,
			SecondsPerMegapixelStep: cfg.Admission.SecondsPerMegapixelStep,
			Overhead:                cfg.Admission.Overhead,
			Cancellation:            cfg.Cancellation.Enabled,
			OnServingChange:         srv.SetServing,
			TracerProvider:          tel.TracerProvider,
			MeterProvider:           tel.MeterProvider,
			Logger:                  log,
		})
		poolc <- started{pool, err}
	}()
	var pool *executor.Executor
	select {
	case s := <-poolc:
		if s.err != nil {
			srv.Stop()
			return fmt.Errorf("start workers: %w", s.err)
		}
		pool = s.pool
	case sig := <-signals:
		log.Info("stopping while workers start", "signal", sig.String())
		cancelStart()
		if s := <-poolc; s.pool != nil {
			s.pool.Close()
		}
		srv.Stop()
		return nil
	}
	srv.SetExecutor(pool)
	log.Info("serving", "addr", lis.Addr().String())

	select {
	case sig := <-signals:
		log.Info("draining", "signal", sig.String(), "timeout", cfg.Timeouts.Drain)
	case err = <-serveErr:
		pool.Close()
		return err
	}
	drainCtx, cancelDrain := context.WithTimeout(ctx, cfg.Timeouts.Drain)
	defer cancelDrain()
	drained := make(chan struct{})
	go func() {
		srv.Shutdown(drainCtx)
		close(drained)
	}()
	select {
	case <-drained:
		pool.Close()
	case sig := <-signals:
		log.Warn("second signal: stopping at once", "signal", sig.String())
		srv.Stop()
		cancelDrain()
		pool.CloseWithin(0)
		<-drained
	}
	log.Info("stopped")
	return nil
}

// checkPlaintext refuses to serve plaintext beyond this machine: bearer
// tokens and prompts would cross the network in clear. A mesh sidecar that
// terminates mTLS in front of hourglassd is the one good reason, and
// --insecure says so explicitly.
func checkPlaintext(cfg config.Config, insecure bool) error {
	if cfg.TLS.Cert != "" || insecure {
		return nil
	}
	host, _, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("listen: %q is reachable from other machines and TLS is off: set tls.cert and tls.key, "+
		"or pass --insecure if a sidecar terminates TLS in front of hourglassd", cfg.Listen)
}

// security is what authenticates callers and limits tenants: the token
// file, the TLS credentials, the per-tenant limiter.
type security struct {
	opts      server.Options
	throttles metric.Int64Counter // set by countThrottles before serving
}

func loadSecurity(cfg config.Config) (*security, error) {
	sec := &security{}
	if cfg.Auth.TokensFile != "" {
		tokens, err := server.LoadTokens(cfg.Auth.TokensFile)
		if err != nil {
			return nil, fmt.Errorf("auth.tokens_file: %w", err)
		}
		sec.opts.Tokens = tokens
	}
	if cfg.TLS.Cert != "" {
		creds, err := tlsCredentials(cfg.TLS)
		if err != nil {
			return nil, err
		}
		sec.opts.ServerOptions = append(sec.opts.ServerOptions, grpc.Creds(creds))
		sec.opts.ClientCerts = cfg.TLS.ClientCA != ""
	}
	limiter, err := quota.New(quota.Config{
		MaxConcurrent: cfg.Tenants.MaxConcurrent,
		Rate:          cfg.Tenants.WorkerSecondsPerSecond,
		Burst:         cfg.Tenants.BurstWorkerSeconds,
		OnThrottle: func(tenant string, limit quota.Limit) {
			if sec.throttles != nil {
				sec.throttles.Add(context.Background(), 1, metric.WithAttributes(
					attribute.String("tenant", tenant), attribute.String("limit", string(limit))))
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("tenants: %w", err)
	}
	sec.opts.Limiter = limiter
	return sec, nil
}

// countThrottles makes per-tenant refusals a metric. Called before the
// server serves, so the limiter's callback sees the counter.
func (sec *security) countThrottles(mp metric.MeterProvider) error {
	c, err := mp.Meter("github.com/hourglass-dev/hourglass/cmd/hourglassd").Int64Counter("hourglass.tenant.throttles",
		metric.WithDescription("Calls refused by a per-tenant limit, by tenant and limit."))
	sec.throttles = c
	return err
}

// tlsCredentials builds the server's TLS: 1.2 at least (1.3 preferred by
// Go's defaults), and with a client CA, verified client certificates
// required.
func tlsCredentials(c config.TLS) (credentials.TransportCredentials, error) {
	cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
	if err != nil {
		return nil, fmt.Errorf("tls.cert/tls.key: %w", err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if c.ClientCA != "" {
		pem, err := os.ReadFile(c.ClientCA)
		if err != nil {
			return nil, fmt.Errorf("tls.client_ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls.client_ca: no PEM certificate in %s", c.ClientCA)
		}
		tc.ClientCAs, tc.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return credentials.NewTLS(tc), nil
}

// serveMetrics serves the Prometheus page on its own port, so that it can
// stay inside the cluster while gRPC is exposed.
func serveMetrics(log *slog.Logger, addr string, h http.Handler) (stop func(), err error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(lis) }()
	log.Info("metrics listening", "addr", lis.Addr().String())
	return func() { _ = hs.Close() }, nil
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
