package config

import (
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// writeFile writes a config file for one test and returns its path.
func writeFile(t *testing.T, yaml string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hourglass.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoad(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		check   func(Config) bool
		wantErr string // substring; empty means success
	}{
		{name: "empty file keeps defaults", yaml: "", check: func(c Config) bool { return reflect.DeepEqual(c, Default()) }},
		{name: "all issue keys", yaml: "workers:\n  count: 3\ntimeouts:\n  default: 300ms\n  max: 5m\nqueue:\n  max: 10\n",
			check: func(c Config) bool {
				return c.Workers.Count == 3 && c.Timeouts.Default == 300*time.Millisecond && c.Timeouts.Max == 5*time.Minute && c.Queue.Max == 10
			}},
		{name: "worker command", yaml: "workers:\n  command: [python3, -m, worker]\n", check: func(c Config) bool { return len(c.Workers.Command) == 3 }},
		{name: "empty worker command is nil", yaml: "workers:\n  command: []\n", check: func(c Config) bool { return c.Workers.Command == nil }},
		{name: "unknown top-level key", yaml: "wrokers:\n  count: 3\n", wantErr: "wrokers"},
		{name: "unknown nested key", yaml: "timeouts:\n  defualt: 1s\n", wantErr: "defualt"},
		{name: "bad duration", yaml: "timeouts:\n  default: soon\n", wantErr: "soon"},
		{name: "duration without unit", yaml: "timeouts:\n  default: 30\n", wantErr: "line 2"},
		{name: "zero workers", yaml: "workers:\n  count: 0\n", wantErr: "workers.count"},
		{name: "default beyond max", yaml: "timeouts:\n  default: 20m\n", wantErr: "timeouts.default"},
		{name: "benchmark switches", yaml: "admission:\n  enabled: false\ncancellation:\n  enabled: false\n",
			check: func(c Config) bool { return !c.Admission.Enabled && !c.Cancellation.Enabled && c.Workers.Spares == 1 }},
		{name: "configured estimate", yaml: "admission:\n  seconds_per_megapixel_step: 0.05\n  overhead: 20ms\n",
			check: func(c Config) bool {
				return c.Admission.SecondsPerMegapixelStep == 0.05 && c.Admission.Overhead == 20*time.Millisecond
			}},
		{name: "negative estimate", yaml: "admission:\n  seconds_per_megapixel_step: -1\n", wantErr: "admission.seconds_per_megapixel_step"},
		{name: "NaN estimate", yaml: "admission:\n  seconds_per_megapixel_step: .nan\n", wantErr: "admission.seconds_per_megapixel_step"},
		{name: "admission quantile and policy", yaml: "admission:\n  quantile: 0.99\n  policy: point-estimate\n",
			check: func(c Config) bool { return c.Admission.Quantile == 0.99 && c.Admission.Policy == "point-estimate" }},
		{name: "quantile above one", yaml: "admission:\n  quantile: 1.5\n", wantErr: "admission.quantile"},
		{name: "zero quantile", yaml: "admission:\n  quantile: 0\n", wantErr: "admission.quantile"},
		{name: "unknown policy", yaml: "admission:\n  policy: lottery\n", wantErr: "admission.policy"},
		{name: "transport limits", yaml: "limits:\n  max_request_bytes: 65536\n  max_streams_per_connection: 8\n  idle_timeout: 30s\n  memory_soft_limit_bytes: 0\n",
			check: func(c Config) bool {
				return c.Limits.MaxRequestBytes == 65536 && c.Limits.MaxStreamsPerConnection == 8 &&
					c.Limits.IdleTimeout == 30*time.Second && c.Limits.MemorySoftLimitBytes == 0
			}},
		{name: "request limit below the largest valid request", yaml: "limits:\n  max_request_bytes: 1000\n", wantErr: "limits.max_request_bytes"},
		{name: "zero streams", yaml: "limits:\n  max_streams_per_connection: 0\n", wantErr: "limits.max_streams_per_connection"},
		{name: "zero idle timeout", yaml: "limits:\n  idle_timeout: 0s\n", wantErr: "limits.idle_timeout"},
		{name: "negative memory limit", yaml: "limits:\n  memory_soft_limit_bytes: -1\n", wantErr: "limits.memory_soft_limit_bytes"},
		{name: "negative spares", yaml: "workers:\n  spares: -1\n", wantErr: "workers.spares"},
		{name: "zero heartbeat", yaml: "timeouts:\n  heartbeat: 0s\n", wantErr: "timeouts.heartbeat"},
		{name: "negative queue", yaml: "queue:\n  max: -1\n", wantErr: "queue.max"},
		{name: "production sections", yaml: "auth:\n  tokens_file: /etc/hourglass/tokens\ntls:\n  cert: c.pem\n  key: k.pem\n  client_ca: ca.pem\n" +
			"tenants:\n  max_concurrent: 4\n  worker_seconds_per_second: 0.5\n  burst_worker_seconds: 120\nmetrics:\n  listen: :9090\ntimeouts:\n  drain: 5s\n",
			check: func(c Config) bool {
				return c.Auth.TokensFile == "/etc/hourglass/tokens" && c.TLS == TLS{Cert: "c.pem", Key: "k.pem", ClientCA: "ca.pem"} &&
					c.Tenants == Tenants{MaxConcurrent: 4, WorkerSecondsPerSecond: 0.5, BurstWorkerSeconds: 120} &&
					c.Metrics.Listen == ":9090" && c.Timeouts.Drain == 5*time.Second
			}},
		{name: "tenant rate without burst", yaml: "tenants:\n  worker_seconds_per_second: 1\n", wantErr: "tenants.burst_worker_seconds"},
		{name: "infinite burst", yaml: "tenants:\n  burst_worker_seconds: .inf\n", wantErr: "tenants.burst_worker_seconds"},
		{name: "cert without key", yaml: "tls:\n  cert: c.pem\n", wantErr: "tls.key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Load(writeFile(t, tt.yaml), nil)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Load(%q) error = %v; want one naming %q", tt.yaml, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load(%q) = %v; want no error", tt.yaml, err)
			}
			if !tt.check(cfg) {
				t.Fatalf("Load(%q) = %+v; not what the file says", tt.yaml, cfg)
			}
		})
	}
}

func TestLoadWithoutFile(t *testing.T) {
	cfg, err := Load("", nil)
	if err != nil || !reflect.DeepEqual(cfg, Default()) {
		t.Fatalf(`Load("", nil) = %+v, %v; want Default(), nil`, cfg, err)
	}
	missing := filepath.Join(t.TempDir(), "missing.yaml")
	if _, err := Load(missing, nil); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Fatalf("Load(%q, nil) error = %v; want one naming the file", missing, err)
	}
}

func TestDefaultIsValid(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v; want nil", err)
	}
}

// TestValidate covers the rules of the production sections directly, the
// way hourglassd uses Validate after applying flags to a loaded config.
func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		change  func(*Config)
		wantErr string // the key the error must start with; empty means valid
	}{
		{name: "TLS off", change: func(c *Config) {}},
		{name: "TLS on", change: func(c *Config) { c.TLS.Cert, c.TLS.Key = "c.pem", "k.pem" }},
		{name: "mutual TLS", change: func(c *Config) { c.TLS = TLS{Cert: "c.pem", Key: "k.pem", ClientCA: "ca.pem"} }},
		{name: "cert without key", change: func(c *Config) { c.TLS.Cert = "c.pem" }, wantErr: "tls.key"},
		{name: "key without cert", change: func(c *Config) { c.TLS.Key = "k.pem" }, wantErr: "tls.cert"},
		{name: "client CA without TLS", change: func(c *Config) { c.TLS.ClientCA = "ca.pem" }, wantErr: "tls.client_ca"},
		{name: "client CA with key only", change: func(c *Config) { c.TLS.Key, c.TLS.ClientCA = "k.pem", "ca.pem" }, wantErr: "tls.cert"},
		{name: "tenant limits", change: func(c *Config) {
			c.Tenants = Tenants{MaxConcurrent: 2, WorkerSecondsPerSecond: 1, BurstWorkerSeconds: 10}
		}},
		{name: "no tenant limits, no burst", change: func(c *Config) { c.Tenants = Tenants{} }},
		{name: "negative max_concurrent", change: func(c *Config) { c.Tenants.MaxConcurrent = -1 }, wantErr: "tenants.max_concurrent"},
		{name: "negative rate", change: func(c *Config) { c.Tenants.WorkerSecondsPerSecond = -0.5 }, wantErr: "tenants.worker_seconds_per_second"},
		{name: "NaN rate", change: func(c *Config) { c.Tenants.WorkerSecondsPerSecond = math.NaN() }, wantErr: "tenants.worker_seconds_per_second"},
		{name: "infinite rate", change: func(c *Config) { c.Tenants.WorkerSecondsPerSecond = math.Inf(1) }, wantErr: "tenants.worker_seconds_per_second"},
		{name: "concurrency limit alone", change: func(c *Config) { c.Tenants.MaxConcurrent = 1 }},
		{name: "negative burst", change: func(c *Config) { c.Tenants.BurstWorkerSeconds = -1 }, wantErr: "tenants.burst_worker_seconds"},
		{name: "NaN burst", change: func(c *Config) { c.Tenants.BurstWorkerSeconds = math.NaN() }, wantErr: "tenants.burst_worker_seconds"},
		{name: "burst without rate", change: func(c *Config) { c.Tenants.BurstWorkerSeconds = 60 }, wantErr: "tenants.worker_seconds_per_second"},
		{name: "rate with empty burst", change: func(c *Config) { c.Tenants = Tenants{WorkerSecondsPerSecond: 1} }, wantErr: "tenants.burst_worker_seconds"},
		{name: "zero drain", change: func(c *Config) { c.Timeouts.Drain = 0 }, wantErr: "timeouts.drain"},
		{name: "negative drain", change: func(c *Config) { c.Timeouts.Drain = -time.Second }, wantErr: "timeouts.drain"},
		{name: "metrics on", change: func(c *Config) { c.Metrics.Listen = "0.0.0.0:9090" }},
		{name: "empty listen, as a flag may set it", change: func(c *Config) { c.Listen = "" }, wantErr: "listen"},
		{name: "workers over the range", change: func(c *Config) { c.Workers.Count = 257 }, wantErr: "workers.count"},
		{name: "metadata limit at its floor", change: func(c *Config) { c.Limits.MaxMetadataBytes = MinMetadataBytes }},
		{name: "metadata limit at grpc-go's default", change: func(c *Config) { c.Limits.MaxMetadataBytes = MaxMetadataBytes }},
		{name: "metadata limit unset", change: func(c *Config) { c.Limits.MaxMetadataBytes = 0 }, wantErr: "limits.max_metadata_bytes"},
		{name: "metadata limit too small", change: func(c *Config) { c.Limits.MaxMetadataBytes = MinMetadataBytes - 1 }, wantErr: "limits.max_metadata_bytes"},
		{name: "metadata limit over grpc-go's default", change: func(c *Config) { c.Limits.MaxMetadataBytes = MaxMetadataBytes + 1 }, wantErr: "limits.max_metadata_bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			tt.change(&c)
			err := c.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("%+v.Validate() = %v; want nil", c, err)
			case tt.wantErr != "" && (err == nil || !strings.HasPrefix(err.Error(), tt.wantErr+": ")):
				t.Fatalf("%+v.Validate() = %v; want an error starting %q", c, err, tt.wantErr+": ")
			}
		})
	}
}
