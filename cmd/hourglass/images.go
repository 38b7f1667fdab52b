package main

import (
	"fmt"
	"mime"
	"os"
	"path/filepath"
	"strings"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

// imageSaver writes streamed images to files. Each image goes to a temporary
// file in the destination directory as soon as it arrives, so that memory
// stays flat however many images a job has; commit renames them to their
// final names once the job succeeded. A failed or cancelled job leaves no
// files behind, and a reader never sees a half-written image under its
// final name. (There is no fsync: a crash can lose an image, not corrupt
// one that was there before.)
type imageSaver struct {
	output  string // the -o value; empty names files by seed
	pending []pendingImage
}

// pendingImage is an image written to a temporary file, not yet renamed.
type pendingImage struct {
	tmp  string
	meta imageMeta
}

// imageMeta is what naming an image needs to know about it.
type imageMeta struct {
	index uint32
	seed  uint64
	mime  string
}

func newImageSaver(output string) *imageSaver {
	return &imageSaver{output: output}
}

// dir is where the images end up, and so where their temporary files go:
// a rename is atomic only within one file system.
func (s *imageSaver) dir() string {
	if s.output == "" {
		return "."
	}
	return filepath.Dir(s.output)
}

// add writes img to a temporary file.
func (s *imageSaver) add(img *hourglassv1.Image) error {
	f, err := os.CreateTemp(s.dir(), ".hourglass-*.tmp")
	if err != nil {
		return localf("save image %d: %v", img.GetIndex(), err)
	}
	s.pending = append(s.pending, pendingImage{
		tmp:  f.Name(),
		meta: imageMeta{index: img.GetIndex(), seed: img.GetSeed(), mime: img.GetMimeType()},
	})
	_, err = f.Write(img.GetData())
	if err == nil {
		// CreateTemp makes the file private (0600); an image is not a secret.
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return localf("save image %d: %v", img.GetIndex(), err)
	}
	return nil
}

// commit renames every temporary file to its final name and returns the
// final names, in the order the images arrived. On error it returns the
// names renamed so far; discard removes the rest.
func (s *imageSaver) commit() ([]string, error) {
	var done []string
	for len(s.pending) > 0 {
		p := s.pending[0]
		name := outputPath(s.output, len(s.pending)+len(done), p.meta)
		if err := os.Rename(p.tmp, name); err != nil {
			return done, localf("save image %d: %v", p.meta.index, err)
		}
		done = append(done, name)
		s.pending = s.pending[1:]
	}
	return done, nil
}

// discard removes the temporary files not yet committed.
func (s *imageSaver) discard() {
	for _, p := range s.pending {
		os.Remove(p.tmp)
	}
	s.pending = nil
}

// outputPath names one of total images. With -o and a single image the name
// is -o itself; with several, the image index goes before the extension
// (out.png → out-0.png, out-1.png). Without -o, images are named by seed
// (hourglass-42.png), which is also what a retry needs to reproduce them.
func outputPath(output string, total int, m imageMeta) string {
	if output == "" {
		return fmt.Sprintf("hourglass-%d%s", m.seed, extension(m.mime))
	}
	if total == 1 {
		return output
	}
	ext := filepath.Ext(output)
	return fmt.Sprintf("%s-%d%s", strings.TrimSuffix(output, ext), m.index, ext)
}

// extension is the file extension for an image mime type.
func extension(mimeType string) string {
	switch mimeType {
	case "image/png":
		return ".png"
	case "image/jpeg":
		return ".jpg"
	}
	if exts, err := mime.ExtensionsByType(mimeType); err == nil && len(exts) > 0 {
		return exts[0]
	}
	return ".img"
}
