package main

import (
	"bytes"
	"math"
	"strings"
	"testing"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

func TestLineProgressThrottles(t *testing.T) {
	var b bytes.Buffer
	p := newProgress(&b, 2) // a buffer is not a terminal
	p.queued(2)
	p.queued(2) // unchanged: not printed again
	p.queued(0)
	p.started("w0", 42)
	const steps = 150
	for i := range uint32(2 * steps) {
		p.step(&hourglassv1.GenerateEvent_Progress{
			Step: i%steps + 1, TotalSteps: steps, ImageIndex: i / steps,
			Percent: float32(i+1) * 100 / (2 * steps),
		})
	}
	p.finish()
	out := b.String()
	if got := strings.Count(out, "queued:"); got != 2 {
		t.Errorf("%d queued lines, want 2:\n%s", got, out)
	}
	// The first step, then one line per 10% mark: 0, 10, 20, ..., 100.
	if got := strings.Count(out, "progress:"); got != 11 {
		t.Errorf("%d progress lines for 300 steps, want 11:\n%s", got, out)
	}
	if !strings.Contains(out, "progress: 100% (image 2/2, step 150/150)") {
		t.Errorf("no final progress line:\n%s", out)
	}
}

func TestBar(t *testing.T) {
	tests := []struct {
		percent float32
		want    string
	}{
		{0, "[----------]"},
		{45, "[####------]"},
		{100, "[##########]"},
		{250, "[##########]"},
		{-5, "[----------]"},
		{float32(math.NaN()), "[----------]"},
	}
	for _, tt := range tests {
		if got := bar(tt.percent, 10); got != tt.want {
			t.Errorf("bar(%v) = %q, want %q", tt.percent, got, tt.want)
		}
	}
}

func TestTTYProgressEndsItsLine(t *testing.T) {
	var b bytes.Buffer
	p := &ttyProgress{w: &b}
	p.step(&hourglassv1.GenerateEvent_Progress{Step: 1, TotalSteps: 4, Percent: 25})
	p.finish()
	p.finish()
	if got, want := b.String(), "\r\x1b[K[#######-----------------------]  25% image 1, step 1/4\r\x1b[K"; got != want {
		t.Errorf("tty output %q, want %q", got, want)
	}
}
