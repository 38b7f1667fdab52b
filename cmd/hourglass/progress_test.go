package main

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"slices"
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

func TestPreviewLines(t *testing.T) {
	pv := &hourglassv1.Preview{ImageIndex: 1, Step: 10, Width: 256, Height: 171, MimeType: "image/jpeg"}
	tests := []struct {
		name   string
		images uint32
		path   string
		want   string
	}{
		{"count known", 2, "", "preview: image 2/2, step 10, 256x171\n"},
		{"server default count", 0, "", "preview: image 2, step 10, 256x171\n"},
		{"saved", 4, "p/preview-1-10.jpg", "preview: image 2/4, step 10, 256x171, saved as p/preview-1-10.jpg\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			newProgress(&b, tt.images).preview(pv, tt.path)
			if b.String() != tt.want {
				t.Errorf("line %q, want %q", b.String(), tt.want)
			}
		})
	}

	// A terminal keeps its one status line.
	var b bytes.Buffer
	p := &ttyProgress{w: &b}
	p.preview(pv, "p/preview-1-10.jpg")
	p.finish()
	if b.Len() != 0 {
		t.Errorf("tty printed %q for a preview", b.String())
	}
}

func TestPreviewSaver(t *testing.T) {
	dir := t.TempDir()
	s, err := newPreviewSaver(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, data := range []string{"first", "second"} { // a retry replaces it
		path, err := s.save(&hourglassv1.Preview{Data: []byte(data), MimeType: "image/jpeg", ImageIndex: 3, Step: 12})
		if err != nil {
			t.Fatal(err)
		}
		if want := filepath.Join(dir, "preview-3-12.jpg"); path != want {
			t.Errorf("path %q, want %q", path, want)
		}
		if b, err := os.ReadFile(path); err != nil || string(b) != data {
			t.Errorf("%s = %q, %v; want %q", path, b, err, data)
		}
	}
	if got := dirNames(t, dir); !slices.Equal(got, []string{"preview-3-12.jpg"}) {
		t.Errorf("dir holds %v, want the preview alone", got)
	}
	fi, err := os.Stat(filepath.Join(dir, "preview-3-12.jpg"))
	if err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("preview mode %v, %v; want 0644", fi.Mode(), err)
	}

	// A directory that went away is a local error.
	gone := &previewSaver{dir: filepath.Join(dir, "gone")}
	if _, err := gone.save(&hourglassv1.Preview{MimeType: "image/jpeg"}); exitStatus(err) != exitLocal {
		t.Errorf("save into a missing directory: %v (exit %d), want a local error", err, exitStatus(err))
	}
}
