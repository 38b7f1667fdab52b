package main

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

func TestOutputPath(t *testing.T) {
	png := "image/png"
	tests := []struct {
		name   string
		output string
		total  int
		meta   imageMeta
		want   string
	}{
		{"one image, -o", "out.png", 1, imageMeta{0, 42, png}, "out.png"},
		{"one image, -o kept verbatim", "pics/cat.jpeg", 1, imageMeta{0, 42, png}, "pics/cat.jpeg"},
		{"many images, first", "out.png", 3, imageMeta{0, 42, png}, "out-0.png"},
		{"many images, last", "out.png", 3, imageMeta{2, 44, png}, "out-2.png"},
		{"many images, directory with a dot", "a.b/out", 2, imageMeta{1, 43, png}, "a.b/out-1"},
		{"many images, nested", "/tmp/x/out.v2.png", 2, imageMeta{1, 43, png}, "/tmp/x/out.v2-1.png"},
		{"no -o, png", "", 1, imageMeta{0, 42, png}, "hourglass-42.png"},
		{"no -o, many", "", 2, imageMeta{1, 18446744073709551615, png}, "hourglass-18446744073709551615.png"},
		{"no -o, jpeg", "", 1, imageMeta{0, 7, "image/jpeg"}, "hourglass-7.jpg"},
		{"no -o, unknown type", "", 1, imageMeta{0, 7, "application/x-unknown-thing"}, "hourglass-7.img"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := outputPath(tt.output, tt.total, tt.meta); got != tt.want {
				t.Errorf("outputPath(%q, %d, %+v) = %q, want %q", tt.output, tt.total, tt.meta, got, tt.want)
			}
		})
	}
}

func TestImageSaver(t *testing.T) {
	dir := t.TempDir()
	s := newImageSaver(filepath.Join(dir, "out.png"))
	for i := range uint32(2) {
		img := &hourglassv1.Image{Data: []byte{byte('a' + i)}, MimeType: "image/png", Index: i, Seed: 10 + uint64(i)}
		if err := s.add(img); err != nil {
			t.Fatal(err)
		}
	}
	if got := dirNames(t, dir); len(got) != 2 {
		t.Fatalf("before commit, dir holds %v, want 2 temporary files", got)
	}
	files, err := s.commit()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(dir, "out-0.png"), filepath.Join(dir, "out-1.png")}
	if !slices.Equal(files, want) {
		t.Errorf("commit = %v, want %v", files, want)
	}
	if got := dirNames(t, dir); !slices.Equal(got, []string{"out-0.png", "out-1.png"}) {
		t.Errorf("after commit, dir holds %v", got)
	}
	b, err := os.ReadFile(want[1])
	if err != nil || string(b) != "b" {
		t.Errorf("out-1.png = %q, %v; want \"b\"", b, err)
	}
	s.discard() // nothing left to remove
}

func TestImageSaverDiscard(t *testing.T) {
	dir := t.TempDir()
	s := newImageSaver(filepath.Join(dir, "out.png"))
	if err := s.add(&hourglassv1.Image{Data: []byte("x"), MimeType: "image/png"}); err != nil {
		t.Fatal(err)
	}
	s.discard()
	if got := dirNames(t, dir); len(got) != 0 {
		t.Errorf("after discard, dir holds %v", got)
	}
}

func TestImageSaverWriteError(t *testing.T) {
	s := newImageSaver(filepath.Join(t.TempDir(), "missing", "out.png"))
	err := s.add(&hourglassv1.Image{Data: []byte("x"), MimeType: "image/png"})
	if got := exitStatus(err); got != exitLocal {
		t.Errorf("add into a missing directory: exit %d (%v), want %d", got, err, exitLocal)
	}
}

// dirNames lists the names in dir, sorted.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}
