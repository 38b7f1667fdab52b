package config

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// everything is a valid config with no field at its default and strings
// that YAML would misread if they were printed bare.
func everything() Config {
	return Config{
		Listen: "[::1]:6000",
		Workers: Workers{Count: 8, Spares: 0,
			Command: []string{"python3", "-m", "hourglass.worker", "--tag", "a,b", "#not a comment", "yes", "null", "* star", ""}},
		Timeouts: Timeouts{
			Default: 1500 * time.Millisecond, Max: 2*time.Hour + 30*time.Minute, CancelGrace: 250 * time.Microsecond,
			Heartbeat: time.Hour, WorkerStart: 90 * time.Second, Drain: 1,
		},
		Queue: Queue{Max: 0},
		Limits: Limits{MaxCostPixelSteps: 1<<64 - 1, MaxMetadataBytes: 1 << 20, MaxRequestBytes: 1 << 20,
			MaxStreamsPerConnection: 7, IdleTimeout: 90 * time.Second, HandshakeTimeout: 3 * time.Second, MemorySoftLimitBytes: 3 << 30},
		Admission:    Admission{Enabled: false, SecondsPerMegapixelStep: 0.0123456789, Overhead: 20 * time.Millisecond, Quantile: 0.99, Policy: "point-estimate"},
		Cancellation: Cancellation{Enabled: false},
		Auth:         Auth{TokensFile: "/etc/hourglass/tokens: v2"},
		TLS:          TLS{Cert: "true", Key: "~", ClientCA: "0x10"},
		Tenants:      Tenants{MaxConcurrent: 3, WorkerSecondsPerSecond: 1e-3, BurstWorkerSeconds: 12.5},
		Metrics:      Metrics{Listen: ":9090"},
	}
}

func TestYAMLRoundTrip(t *testing.T) {
	for name, cfg := range map[string]Config{"default": Default(), "everything set": everything()} {
		t.Run(name, func(t *testing.T) {
			if err := cfg.Validate(); err != nil {
				t.Fatalf("test config is invalid: %v", err)
			}
			out, err := cfg.YAML()
			if err != nil {
				t.Fatalf("YAML() = %v", err)
			}
			got, err := Load(writeFile(t, string(out)), nil)
			if err != nil {
				t.Fatalf("Load(YAML()) = %v; printed:\n%s", err, out)
			}
			if !reflect.DeepEqual(got, cfg) {
				t.Fatalf("Load(YAML()) = %+v; want %+v; printed:\n%s", got, cfg, out)
			}
		})
	}
}

func TestYAMLPrintsDurationsAsStrings(t *testing.T) {
	out, err := Default().YAML()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"timeouts:\n  default: 1m\n  max: 10m\n  cancel_grace: 2s\n",
		"  overhead: 0s\n",
		"  command: []\n",
		"metrics:\n  listen: \"\"\n",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("Default().YAML() =\n%s\nwant it to contain %q", out, want)
		}
	}
	if strings.Contains(string(out), "60000000000") {
		t.Errorf("Default().YAML() =\n%s\nprints a duration in nanoseconds", out)
	}
}

func TestFormatDuration(t *testing.T) {
	for _, tt := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0s"}, {30 * time.Second, "30s"}, {time.Minute, "1m"}, {90 * time.Second, "1m30s"},
		{time.Hour, "1h"}, {time.Hour + time.Minute, "1h1m"}, {time.Hour + time.Second, "1h0m1s"},
		{250 * time.Millisecond, "250ms"}, {-time.Minute, "-1m"}, {time.Minute + time.Millisecond, "1m0.001s"},
	} {
		got := formatDuration(tt.d)
		if got != tt.want {
			t.Errorf("formatDuration(%v) = %q; want %q", tt.d, got, tt.want)
		}
		if back, err := time.ParseDuration(got); err != nil || back != tt.d {
			t.Errorf("time.ParseDuration(%q) = %v, %v; want %v", got, back, err, tt.d)
		}
	}
}

// withSecret stands in for a config that holds a secret value: Config has
// none today, and a path must never be tagged secret.
type withSecret struct {
	Name   string `yaml:"name"`
	Token  string `yaml:"token" secret:"true"`
	Unset  string `yaml:"unset" secret:"true"`
	PIN    int    `yaml:"pin" secret:"true"`
	Nested struct {
		Password string        `yaml:"password" secret:"true"`
		Wait     time.Duration `yaml:"wait"`
	} `yaml:"nested"`
}

func TestYAMLMasksSecrets(t *testing.T) {
	var v withSecret
	v.Name, v.Token, v.PIN = "svc", "s3cr3t-token", 1234
	v.Nested.Password, v.Nested.Wait = "hunter2", 5*time.Second
	out, err := renderYAML(v)
	if err != nil {
		t.Fatal(err)
	}
	want := "name: svc\ntoken: '*****'\nunset: \"\"\npin: '*****'\nnested:\n  password: '*****'\n  wait: 5s\n"
	if string(out) != want {
		t.Errorf("renderYAML(%+v) =\n%s\nwant\n%s", v, out, want)
	}
	for _, secret := range []string{"s3cr3t-token", "1234", "hunter2"} {
		if strings.Contains(string(out), secret) {
			t.Errorf("renderYAML() =\n%s\nshows the secret %q", out, secret)
		}
	}
}

func TestSecretsStayOutOfErrors(t *testing.T) {
	var v withSecret
	_, err := applyEnv(&v, []string{"HOURGLASS_PIN=12x4"})
	if err == nil || strings.Contains(err.Error(), "12x4") || !strings.Contains(err.Error(), "HOURGLASS_PIN") {
		t.Errorf("applyEnv(HOURGLASS_PIN=12x4) = %v; want an error naming the variable, not the value", err)
	}
	if _, err := applyEnv(&v, []string{"HOURGLASS_NESTED_PASSWORD=" + Mask}); err != nil {
		t.Fatal(err)
	}
	if err := checkNotMasked(&v); err == nil || !strings.HasPrefix(err.Error(), "nested.password: ") {
		t.Errorf("checkNotMasked(password %q) = %v; want a nested.password error", Mask, err)
	}
}
