package main

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

func TestParseGenerateArgs(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want *hourglassv1.GenerateRequest
	}{
		{
			name: "only the prompt: every optional field unset",
			args: []string{"--prompt", "a cat"},
			want: &hourglassv1.GenerateRequest{Prompt: "a cat"},
		},
		{
			name: "zero values given are set, not unset",
			args: []string{"--prompt", "a cat", "--seed", "0", "--sharpness", "0", "--steps", "0"},
			want: &hourglassv1.GenerateRequest{Prompt: "a cat", Seed: proto.Uint64(0), Sharpness: proto.Float32(0), Steps: proto.Uint32(0)},
		},
		{
			name: "every flag",
			args: []string{
				"--prompt", "a cat", "--negative-prompt", "dogs", "--style", "Fooocus V2", "--style", "Fooocus Sharp",
				"--performance", "quality", "--width", "768", "--height", "512", "--steps", "20", "--count", "4",
				"--seed", "18446744073709551615", "--guidance", "7.5", "--sharpness", "3", "--model", "juggernaut",
				"--format", "jpeg",
			},
			want: &hourglassv1.GenerateRequest{
				Prompt: "a cat", NegativePrompt: "dogs", Styles: []string{"Fooocus V2", "Fooocus Sharp"},
				Performance: hourglassv1.Performance_PERFORMANCE_QUALITY,
				Width:       proto.Uint32(768), Height: proto.Uint32(512), Steps: proto.Uint32(20), ImageCount: proto.Uint32(4),
				Seed: proto.Uint64(18446744073709551615), GuidanceScale: proto.Float32(7.5), Sharpness: proto.Float32(3),
				Model: "juggernaut", OutputFormat: hourglassv1.OutputFormat_OUTPUT_FORMAT_JPEG,
			},
		},
		{
			name: "previews",
			args: []string{"--prompt", "a cat", "--preview-every", "5"},
			want: &hourglassv1.GenerateRequest{Prompt: "a cat", PreviewEveryNSteps: 5},
		},
		{
			name: "previews saved",
			args: []string{"--prompt", "a cat", "--preview-every=1", "--preview-dir", "previews"},
			want: &hourglassv1.GenerateRequest{Prompt: "a cat", PreviewEveryNSteps: 1},
		},
		{
			name: "previews explicitly off",
			args: []string{"--prompt", "a cat", "--preview-every", "0"},
			want: &hourglassv1.GenerateRequest{Prompt: "a cat"},
		},
		{
			name: "single-dash flags and = syntax",
			args: []string{"-prompt=x", "-performance=extreme-speed", "-format=png"},
			want: &hourglassv1.GenerateRequest{Prompt: "x", Performance: hourglassv1.Performance_PERFORMANCE_EXTREME_SPEED, OutputFormat: hourglassv1.OutputFormat_OUTPUT_FORMAT_PNG},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseGenerateArgs(tt.args, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(cfg.req, tt.want) {
				t.Errorf("request\n got: %v\nwant: %v", cfg.req, tt.want)
			}
		})
	}
}

func TestParsePerformance(t *testing.T) {
	tests := []struct {
		in   string
		want hourglassv1.Performance
	}{
		{"speed", hourglassv1.Performance_PERFORMANCE_SPEED},
		{"quality", hourglassv1.Performance_PERFORMANCE_QUALITY},
		{"extreme-speed", hourglassv1.Performance_PERFORMANCE_EXTREME_SPEED},
		{"Extreme_Speed", hourglassv1.Performance_PERFORMANCE_EXTREME_SPEED},
		{"LIGHTNING", hourglassv1.Performance_PERFORMANCE_LIGHTNING},
	}
	for _, tt := range tests {
		got, err := parsePerformance(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("parsePerformance(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	if _, err := parsePerformance("turbo"); exitStatus(err) != exitUsage {
		t.Errorf("parsePerformance(turbo) = %v, want a usage error", err)
	}
}

func TestParseGenerateArgsErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string // in the error message
	}{
		{"no prompt", nil, "--prompt is required"},
		{"bad performance", []string{"--prompt", "x", "--performance", "turbo"}, "--performance must be"},
		{"bad format", []string{"--prompt", "x", "--format", "gif"}, "--format must be"},
		{"width not a number", []string{"--prompt", "x", "--width", "wide"}, "invalid value"},
		{"width over uint32", []string{"--prompt", "x", "--width", "4294967296"}, "invalid value"},
		{"negative count", []string{"--prompt", "x", "--count", "-1"}, "invalid value"},
		{"negative timeout", []string{"--prompt", "x", "--timeout", "-1s"}, "--timeout must not be negative"},
		{"empty addr", []string{"--prompt", "x", "--addr", ","}, "empty address"},
		{"unknown flag", []string{"--prompt", "x", "--upscale"}, "flag provided but not defined"},
		{"stray argument", []string{"--prompt", "a", "cat"}, `unexpected argument "cat"`},
		{"preview dir without previews", []string{"--prompt", "x", "--preview-dir", "p"}, "--preview-dir needs --preview-every"},
		{"preview dir with previews off", []string{"--prompt", "x", "--preview-every", "0", "--preview-dir", "p"}, "--preview-dir needs --preview-every"},
		{"preview every not a number", []string{"--prompt", "x", "--preview-every", "often"}, "invalid value"},
		{"negative preview every", []string{"--prompt", "x", "--preview-every", "-2"}, "invalid value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseGenerateArgs(tt.args, io.Discard)
			if exitStatus(err) != exitUsage || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v (exit %d), want a usage error containing %q", err, exitStatus(err), tt.want)
			}
		})
	}
}

func TestParseGenerateArgsHelp(t *testing.T) {
	var out bytes.Buffer
	_, err := parseGenerateArgs([]string{"-h"}, &out)
	if !errors.Is(err, errHelp) || !strings.Contains(out.String(), "Usage: hourglass generate") {
		t.Errorf("-h: err %v, output %q", err, out.String())
	}
}

func TestConnFlags(t *testing.T) {
	tests := []struct {
		name        string
		args        []string
		wantAddrs   []string
		wantTimeout time.Duration
	}{
		{"defaults", nil, []string{"127.0.0.1:50051"}, 30 * time.Second},
		{"one addr replaces the default", []string{"--addr", "gpu1:1"}, []string{"gpu1:1"}, 30 * time.Second},
		{"repeated", []string{"--addr", "gpu1:1", "--addr", "gpu2:2"}, []string{"gpu1:1", "gpu2:2"}, 30 * time.Second},
		{"comma-separated", []string{"--addr", "gpu1:1, gpu2:2,", "--addr=gpu3:3"}, []string{"gpu1:1", "gpu2:2", "gpu3:3"}, 30 * time.Second},
		{"timeout", []string{"--timeout", "2m"}, []string{"127.0.0.1:50051"}, 2 * time.Minute},
		{"no timeout", []string{"--timeout", "0"}, []string{"127.0.0.1:50051"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseGenerateArgs(append([]string{"--prompt", "x"}, tt.args...), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(cfg.conn.addrs.addrs, tt.wantAddrs) {
				t.Errorf("addrs = %q, want %q", cfg.conn.addrs.addrs, tt.wantAddrs)
			}
			if cfg.conn.timeout != tt.wantTimeout {
				t.Errorf("timeout = %v, want %v", cfg.conn.timeout, tt.wantTimeout)
			}
		})
	}
}

func TestPreviewDirFlag(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--preview-every", "3"}, ""},
		{[]string{"--preview-every", "3", "--preview-dir", "out/previews"}, "out/previews"},
	}
	for _, tt := range tests {
		cfg, err := parseGenerateArgs(append([]string{"--prompt", "x"}, tt.args...), io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.previewDir != tt.want {
			t.Errorf("%q: previewDir %q, want %q", tt.args, cfg.previewDir, tt.want)
		}
	}
}

func TestOutputFlag(t *testing.T) {
	for _, flagName := range []string{"-o", "--output"} {
		cfg, err := parseGenerateArgs([]string{"--prompt", "x", flagName, "cat.png", "--json"}, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.output != "cat.png" || !cfg.json {
			t.Errorf("%s: output %q json %v", flagName, cfg.output, cfg.json)
		}
	}
}
