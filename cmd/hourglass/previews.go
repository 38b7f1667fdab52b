package main

import (
	"fmt"
	"os"
	"path/filepath"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

// previewSaver writes streamed previews to a directory as
// preview-IMAGE-STEP.jpg, IMAGE counted from 0 like the -o names. Each is
// written to a temporary file and renamed, so that a viewer watching the
// directory never opens half a JPEG. Unlike images, previews stay when the
// job fails: they are a view of work in progress, not its result.
type previewSaver struct {
	dir string
}

// newPreviewSaver makes dir (and its parents) when it does not exist.
func newPreviewSaver(dir string) (*previewSaver, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, localf("preview directory: %v", err)
	}
	return &previewSaver{dir: dir}, nil
}

// previewName is the file name of a preview.
func previewName(p *hourglassv1.Preview) string {
	return fmt.Sprintf("preview-%d-%d%s", p.GetImageIndex(), p.GetStep(), extension(p.GetMimeType()))
}

// save writes p and returns its path. A preview of the same image and step
// (a retried job) replaces the earlier one.
func (s *previewSaver) save(p *hourglassv1.Preview) (string, error) {
	name := filepath.Join(s.dir, previewName(p))
	fail := func(err error) (string, error) {
		return "", localf("save preview of image %d step %d: %v", p.GetImageIndex(), p.GetStep(), err)
	}
	f, err := os.CreateTemp(s.dir, ".hourglass-preview-*.tmp")
	if err != nil {
		return fail(err)
	}
	_, err = f.Write(p.GetData())
	if err == nil {
		// CreateTemp makes the file private (0600); a preview is not a secret.
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), name)
	}
	if err != nil {
		os.Remove(f.Name())
		return fail(err)
	}
	return name, nil
}
