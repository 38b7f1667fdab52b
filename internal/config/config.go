// Package config is the one place where hourglassd's settings are declared,
// given defaults, loaded and validated. Every default is visible in Default;
// every key a YAML file may use is a field below, and every key has an
// environment variable that overrides it (see env.go for the naming rule).
//
// Precedence, lowest first: Default, the YAML file, HOURGLASS_* environment
// variables (Load), flags (applied by hourglassd after Load, followed by
// another Validate).
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is hourglassd's whole configuration.
type Config struct {
	// Listen is the TCP address of the gRPC server.
	Listen   string   `yaml:"listen"`
	Workers  Workers  `yaml:"workers"`
	Timeouts Timeouts `yaml:"timeouts"`
	Queue    Queue    `yaml:"queue"`
	Limits   Limits   `yaml:"limits"`
	// Admission and Cancellation exist so that benchmarks can compare
	// hourglass with a naive FIFO pool (both off). Leave them on.
	Admission    Admission    `yaml:"admission"`
	Cancellation Cancellation `yaml:"cancellation"`
	Auth         Auth         `yaml:"auth"`
	TLS          TLS          `yaml:"tls"`
	Tenants      Tenants      `yaml:"tenants"`
	Metrics      Metrics      `yaml:"metrics"`
}

// Auth configures caller authentication.
type Auth struct {
	// TokensFile, when set, requires every call (but health and
	// reflection) to carry "authorization: Bearer TOKEN". Each line of the
	// file is "TENANT SHA256-HEX-OF-TOKEN"; "#" starts a comment. The file
	// holds hashes only, so it holds no usable secret.
	TokensFile string `yaml:"tokens_file"`
}

// TLS configures transport security. Cert and Key together turn TLS on;
// ClientCA additionally requires client certificates signed by it, whose
// subject common name then names the caller's tenant.
type TLS struct {
	Cert     string `yaml:"cert"`
	Key      string `yaml:"key"`
	ClientCA string `yaml:"client_ca"`
}

// Tenants bounds what one tenant may use, so that one tenant flooding
// cannot starve another. All zero (the default) means no limit. The quota
// package enforces these.
type Tenants struct {
	// MaxConcurrent is the most jobs one tenant may have queued or running;
	// 0 means no limit.
	MaxConcurrent int `yaml:"max_concurrent"`
	// WorkerSecondsPerSecond refills each tenant's worker-time budget: 1.0
	// lets a tenant keep one worker busy all the time. 0 means no budget.
	WorkerSecondsPerSecond float64 `yaml:"worker_seconds_per_second"`
	// BurstWorkerSeconds is the budget's capacity: how much worker time a
	// tenant may use at once after being idle. It is set together with
	// WorkerSecondsPerSecond or not at all: a rate with no burst admits
	// nothing, and a burst with no rate is a lifetime limit. It is not
	// filled in when only the rate is set, so that every value in effect
	// is one the operator can see; 60 (one default deadline's worth) is a
	// reasonable start.
	BurstWorkerSeconds float64 `yaml:"burst_worker_seconds"`
}

// Metrics configures the Prometheus endpoint.
type Metrics struct {
	// Listen is the TCP address of the /metrics page; empty means off. It
	// is not checked here: the listener reports a bad address.
	Listen string `yaml:"listen"`
}

// Workers configures the worker processes.
type Workers struct {
	// Count is the number of worker processes that take jobs.
	Count int `yaml:"count"`
	// Spares is the number of hot spares: started workers that take no
	// jobs and replace a killed or crashed worker at once.
	Spares int `yaml:"spares"`
	// Command is the worker program and its arguments. Empty means the
	// built-in CPU worker, hourglass-worker, found next to the hourglassd
	// executable or on PATH. The executor appends --socket PATH.
	Command []string `yaml:"command"`
	// GPUs, when set, are given to the workers in turn as
	// CUDA_VISIBLE_DEVICES: worker i gets GPUs[i mod len(GPUs)], so
	// [0, 0, 1] runs two workers on GPU 0 and one on GPU 1 (with
	// workers.count 3). An entry may name several devices ("0,1") in YAML;
	// HOURGLASS_WORKERS_GPUS splits on commas, one device per entry.
	GPUs []string `yaml:"gpus"`
}

// Timeouts are the deadlines hourglassd applies.
type Timeouts struct {
	// Default is the deadline of a call that carries none (the seed's
	// generation_timeout).
	Default time.Duration `yaml:"default"`
	// Max caps every call's deadline, the caller's included.
	Max time.Duration `yaml:"max"`
	// CancelGrace is how long a worker has to become idle after its job
	// was cancelled before its process group is killed.
	CancelGrace time.Duration `yaml:"cancel_grace"`
	// Heartbeat is how long a busy worker may send no event (each step
	// sends one) before it is treated as wedged: cancelled, then killed.
	Heartbeat time.Duration `yaml:"heartbeat"`
	// WorkerStart bounds how long a worker process may take to serve.
	WorkerStart time.Duration `yaml:"worker_start"`
	// Drain is how long a stopping server lets running jobs finish before
	// cancelling them with UNAVAILABLE.
	Drain time.Duration `yaml:"drain"`
}

// Queue configures the queue of jobs waiting for a worker.
type Queue struct {
	// Max is the most jobs that may wait; one more is refused with
	// RESOURCE_EXHAUSTED.
	Max int `yaml:"max"`
}

// Limits bound what one request may ask for.
type Limits struct {
	// MaxCostPixelSteps is the ceiling of width × height × steps ×
	// image_count for one request, so one request cannot ask for hours.
	MaxCostPixelSteps uint64 `yaml:"max_cost_pixel_steps"`
	// MaxMetadataBytes bounds the request metadata (HTTP/2 header list, as
	// HTTP/2 counts it: name + value + 32 bytes per entry) hourglassd
	// accepts on one call. A queued call holds its metadata until it ends,
	// so grpc-go's default of 16 MiB would let a few hundred queued calls
	// pin gigabytes. Larger lists never reach hourglass: grpc-go clients
	// refuse to send them (INTERNAL "header list size to send violates the
	// maximum size … set by server"), and other clients get RST_STREAM.
	MaxMetadataBytes int `yaml:"max_metadata_bytes"`
	// MaxRequestBytes bounds one request message, enforced by the gRPC
	// transport before the message is decoded: a larger one is answered
	// RESOURCE_EXHAUSTED at once and its bytes are discarded as they
	// arrive. The default, DefaultMaxRequestBytes, is derived from the
	// API's own limits: the largest valid GenerateRequest (two prompts of
	// 4,000 characters at 4 bytes each, 16 styles of 64 characters, a
	// 128-character model name, the scalar fields) is about 37 KB, so a
	// valid request fits with more than 3× headroom, and a request a
	// thousand times larger never costs a thousand times the memory.
	MaxRequestBytes int `yaml:"max_request_bytes"`
	// MaxStreamsPerConnection bounds the calls one HTTP/2 connection may
	// have open at once (grpc.MaxConcurrentStreams); a client that opens
	// more waits for one to end.
	MaxStreamsPerConnection uint32 `yaml:"max_streams_per_connection"`
	// IdleTimeout closes (GOAWAY) a connection that has had no call for
	// this long. A call that stalls is ended by its own deadline.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// HandshakeTimeout disconnects a client that has not completed the
	// connection's handshake (TLS, then the HTTP/2 preface and settings)
	// within it: a stalled or silent client holds no connection longer.
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"`
	// MemorySoftLimitBytes is the Go runtime's soft memory limit (as
	// GOMEMLIMIT sets it): near it the garbage collector works harder
	// rather than letting the heap grow. 0 leaves the runtime's own
	// (GOMEMLIMIT from the environment, or none).
	MemorySoftLimitBytes int64 `yaml:"memory_soft_limit_bytes"`
}

// Request-size limits: DefaultMaxRequestBytes is limits.max_request_bytes's
// default; below MinRequestBytes a valid request might not fit.
const (
	DefaultMaxRequestBytes = 128 << 10
	MinRequestBytes        = 40 << 10
	MaxRequestBytesCeiling = 64 << 20
)

// Bounds of limits.max_metadata_bytes: below the lower one, ordinary
// metadata (authorization, traceparent, baggage, grpc-go's own headers)
// might not fit; the upper one is grpc-go's default.
const (
	MinMetadataBytes = 8 << 10
	MaxMetadataBytes = 16 << 20
)

// Admission configures deadline-aware admission: a job that cannot finish
// before its deadline is refused at once instead of occupying a worker.
type Admission struct {
	// Enabled turns admission on. Off, every job is queued (FIFO, not
	// earliest deadline first) however hopeless: for benchmarks only.
	Enabled bool `yaml:"enabled"`
	// SecondsPerMegapixelStep is the starting estimate of run time per
	// (width × height / 10^6) × steps × images. 0 means calibrate: run two
	// small jobs on a worker at start-up and measure. Completed jobs refine
	// it either way.
	SecondsPerMegapixelStep float64 `yaml:"seconds_per_megapixel_step"`
	// Overhead is the starting estimate of a job's fixed cost (encoding,
	// transfer); used with SecondsPerMegapixelStep, ignored when calibrating.
	Overhead time.Duration `yaml:"overhead"`
	// Quantile is the quantile of actual ÷ estimated run time a job is
	// planned with (default 0.97: in the simulator 0.95 kept 99.85 % of
	// the promises under bursty 2× load, 0.97 kept 99.9 % at every load
	// for about 1 % less goodput): the estimator learns each model's
	// spread, and admission promises only what the quantile says finishes.
	Quantile float64 `yaml:"quantile"`
	// Policy is "schedulable" (the default: admit only what keeps every
	// promise) or "point-estimate" (the previous policy, which plans with
	// the mean and checks only the new job's own wait; for comparison).
	Policy string `yaml:"policy"`
}

// Cancellation configures what happens to a job whose caller is gone.
type Cancellation struct {
	// Enabled cancels the worker call at the deadline and kills a worker
	// that does not stop. Off, a job runs to completion once queued, like a
	// naive pool: for benchmarks only.
	Enabled bool `yaml:"enabled"`
}

// Default returns the configuration used when nothing overrides it.
func Default() Config {
	return Config{
		Listen:  "127.0.0.1:50051",
		Workers: Workers{Count: 2, Spares: 1},
		Timeouts: Timeouts{
			Default:     60 * time.Second,
			Max:         10 * time.Minute,
			CancelGrace: 2 * time.Second,
			Heartbeat:   30 * time.Second,
			WorkerStart: 30 * time.Second,
			Drain:       30 * time.Second,
		},
		Queue: Queue{Max: 256},
		// 2048×2048 at 150 steps, or 1024×1024 × 30 steps × 32 images,
		// both fit; anything larger is refused at once.
		// 64 KiB of metadata: Envoy's default limit is 60 KiB, so
		// anything that crossed a proxy fits.
		Limits: Limits{MaxCostPixelSteps: 1 << 30, MaxMetadataBytes: 64 << 10, MaxRequestBytes: DefaultMaxRequestBytes,
			MaxStreamsPerConnection: 128, IdleTimeout: 5 * time.Minute, HandshakeTimeout: 10 * time.Second,
			MemorySoftLimitBytes: 1 << 30},
		Admission:    Admission{Enabled: true, Quantile: 0.97, Policy: "schedulable"},
		Cancellation: Cancellation{Enabled: true},
	}
}

// Load returns the effective configuration: Default, then the YAML file at
// path (none when path is ""), then the HOURGLASS_* variables in environ
// (os.Environ's "KEY=VALUE" form), then Validate. An unknown YAML key, an
// unknown HOURGLASS_* variable or a bad value is an error that names it, so a
// typo never silently leaves a default in place.
func Load(path string, environ []string) (Config, error) {
	cfg := Default()
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return cfg, fmt.Errorf("read config: %w", err)
		}
		if err := decodeStrict(data, &cfg); err != nil {
			return cfg, fmt.Errorf("config %s: %w", path, err)
		}
	}
	setBy, err := applyEnv(&cfg, environ)
	if err != nil {
		return cfg, err
	}
	normalize(&cfg)
	if err := checkNotMasked(&cfg); err != nil {
		return cfg, err
	}
	if err := cfg.Validate(); err != nil {
		var ke *keyError
		if errors.As(err, &ke) && setBy[ke.key] != "" {
			return cfg, fmt.Errorf("%w (set by %s)", err, setBy[ke.key])
		}
		return cfg, err
	}
	return cfg, nil
}

func decodeStrict(data []byte, cfg *Config) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // an empty file keeps every default
		}
		return err
	}
	return nil
}

// keyError is a setting that cannot work; key is its YAML key path, so Load
// can add which environment variable set it.
type keyError struct {
	key, problem string
}

func (e *keyError) Error() string { return e.key + ": " + e.problem }

func invalid(key, format string, args ...any) error {
	return &keyError{key: key, problem: fmt.Sprintf(format, args...)}
}

// Validate reports the first setting that cannot work, naming its key. It
// reads nothing but c, so hourglassd can call it again after applying flags.
func (c Config) Validate() error {
	switch {
	case c.Listen == "":
		return invalid("listen", "must not be empty")
	case c.Workers.Count < 1 || c.Workers.Count > 256:
		return invalid("workers.count", "%d is outside 1..256", c.Workers.Count)
	case slices.Contains(c.Workers.GPUs, ""):
		return errors.New("workers.gpus: an entry is empty")
	case c.Workers.Spares < 0 || c.Workers.Spares > 64:
		return invalid("workers.spares", "%d is outside 0..64", c.Workers.Spares)
	case c.Timeouts.Default <= 0:
		return invalid("timeouts.default", "%v must be positive", c.Timeouts.Default)
	case c.Timeouts.Max <= 0:
		return invalid("timeouts.max", "%v must be positive", c.Timeouts.Max)
	case c.Timeouts.Default > c.Timeouts.Max:
		return invalid("timeouts.default", "%v is longer than timeouts.max %v", c.Timeouts.Default, c.Timeouts.Max)
	case c.Timeouts.CancelGrace <= 0:
		return invalid("timeouts.cancel_grace", "%v must be positive", c.Timeouts.CancelGrace)
	case c.Timeouts.Heartbeat <= 0:
		return invalid("timeouts.heartbeat", "%v must be positive", c.Timeouts.Heartbeat)
	case c.Timeouts.WorkerStart <= 0:
		return invalid("timeouts.worker_start", "%v must be positive", c.Timeouts.WorkerStart)
	case c.Timeouts.Drain <= 0:
		return invalid("timeouts.drain", "%v must be positive", c.Timeouts.Drain)
	case c.Queue.Max < 0:
		return invalid("queue.max", "%d must not be negative", c.Queue.Max)
	case c.Limits.MaxCostPixelSteps == 0:
		return invalid("limits.max_cost_pixel_steps", "must be positive")
	case c.Limits.MaxMetadataBytes < MinMetadataBytes || c.Limits.MaxMetadataBytes > MaxMetadataBytes:
		return invalid("limits.max_metadata_bytes", "%d is outside %d..%d", c.Limits.MaxMetadataBytes, MinMetadataBytes, MaxMetadataBytes)
	case c.Limits.MaxRequestBytes < MinRequestBytes || c.Limits.MaxRequestBytes > MaxRequestBytesCeiling:
		return invalid("limits.max_request_bytes", "%d is outside %d..%d", c.Limits.MaxRequestBytes, MinRequestBytes, MaxRequestBytesCeiling)
	case c.Limits.MaxStreamsPerConnection == 0:
		return invalid("limits.max_streams_per_connection", "must be positive")
	case c.Limits.IdleTimeout <= 0:
		return invalid("limits.idle_timeout", "%v must be positive", c.Limits.IdleTimeout)
	case c.Limits.HandshakeTimeout <= 0:
		return invalid("limits.handshake_timeout", "%v must be positive", c.Limits.HandshakeTimeout)
	case c.Limits.MemorySoftLimitBytes < 0:
		return invalid("limits.memory_soft_limit_bytes", "%d must not be negative", c.Limits.MemorySoftLimitBytes)
	case !finiteNonNegative(c.Admission.SecondsPerMegapixelStep):
		return invalid("admission.seconds_per_megapixel_step", "%v must be a finite number >= 0", c.Admission.SecondsPerMegapixelStep)
	case c.Admission.Overhead < 0:
		return invalid("admission.overhead", "%v must not be negative", c.Admission.Overhead)
	case !(c.Admission.Quantile > 0 && c.Admission.Quantile <= 1):
		return invalid("admission.quantile", "%v must be in (0, 1]", c.Admission.Quantile)
	case c.Admission.Policy != "schedulable" && c.Admission.Policy != "point-estimate":
		return invalid("admission.policy", "%q must be schedulable or point-estimate", c.Admission.Policy)
	case c.TLS.Cert != "" && c.TLS.Key == "":
		return invalid("tls.key", "must be set with tls.cert")
	case c.TLS.Key != "" && c.TLS.Cert == "":
		return invalid("tls.cert", "must be set with tls.key")
	case c.TLS.ClientCA != "" && c.TLS.Cert == "":
		return invalid("tls.client_ca", "needs tls.cert and tls.key: client certificates are checked only over TLS")
	case c.Tenants.MaxConcurrent < 0:
		return invalid("tenants.max_concurrent", "%d must not be negative (0 means no limit)", c.Tenants.MaxConcurrent)
	case !finiteNonNegative(c.Tenants.WorkerSecondsPerSecond):
		return invalid("tenants.worker_seconds_per_second", "%v must be a finite number >= 0 (0 means no limit)", c.Tenants.WorkerSecondsPerSecond)
	case !finiteNonNegative(c.Tenants.BurstWorkerSeconds):
		return invalid("tenants.burst_worker_seconds", "%v must be a finite number >= 0", c.Tenants.BurstWorkerSeconds)
	case c.Tenants.WorkerSecondsPerSecond > 0 && c.Tenants.BurstWorkerSeconds == 0:
		return invalid("tenants.burst_worker_seconds", "must be positive when tenants.worker_seconds_per_second is set: an empty budget admits nothing")
	case c.Tenants.WorkerSecondsPerSecond == 0 && c.Tenants.BurstWorkerSeconds > 0:
		return invalid("tenants.worker_seconds_per_second", "must be positive when tenants.burst_worker_seconds is set: a budget that never refills is a lifetime limit")
	}
	return nil
}

// finiteNonNegative is false for NaN, which every comparison rejects.
func finiteNonNegative(f float64) bool {
	return f >= 0 && !math.IsInf(f, 0)
}
