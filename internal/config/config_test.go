package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoad(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		check   func(Config) bool
		wantErr string // substring; empty means success
	}{
		{name: "empty file keeps defaults", yaml: "", check: func(c Config) bool { return c.Workers.Count == 2 && c.Timeouts.Default == time.Minute }},
		{name: "all issue keys", yaml: "workers:\n  count: 3\ntimeouts:\n  default: 300ms\n  max: 5m\nqueue:\n  max: 10\n",
			check: func(c Config) bool {
				return c.Workers.Count == 3 && c.Timeouts.Default == 300*time.Millisecond && c.Timeouts.Max == 5*time.Minute && c.Queue.Max == 10
			}},
		{name: "worker command", yaml: "workers:\n  command: [python3, -m, worker]\n", check: func(c Config) bool { return len(c.Workers.Command) == 3 }},
		{name: "unknown top-level key", yaml: "wrokers:\n  count: 3\n", wantErr: "wrokers"},
		{name: "unknown nested key", yaml: "timeouts:\n  defualt: 1s\n", wantErr: "defualt"},
		{name: "bad duration", yaml: "timeouts:\n  default: soon\n", wantErr: "soon"},
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
		{name: "negative spares", yaml: "workers:\n  spares: -1\n", wantErr: "workers.spares"},
		{name: "zero heartbeat", yaml: "timeouts:\n  heartbeat: 0s\n", wantErr: "timeouts.heartbeat"},
		{name: "negative queue", yaml: "queue:\n  max: -1\n", wantErr: "queue.max"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "hourglass.yaml")
			if err := os.WriteFile(path, []byte(tt.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, err := Load(path)
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

func TestDefaultIsValid(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v; want nil", err)
	}
}
