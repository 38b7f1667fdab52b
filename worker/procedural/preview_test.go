package procedural

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/jpeg"
	"math"
	"testing"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

func decodePreview(t *testing.T, p *hourglassv1.Preview) image.Image {
	t.Helper()
	if p.GetMimeType() != "image/jpeg" {
		t.Fatalf("preview mime type %q, want image/jpeg", p.GetMimeType())
	}
	m, err := jpeg.Decode(bytes.NewReader(p.GetData()))
	if err != nil {
		t.Fatalf("decode preview of image %d step %d: %v", p.GetImageIndex(), p.GetStep(), err)
	}
	return m
}

func TestPreviews(t *testing.T) {
	tests := []struct {
		w, h           uint32
		wantW, wantH   int
		previewImages  uint32
		wantPreviewsAt []uint32
	}{
		// Small enough: the preview is the image's own size.
		{96, 64, 96, 64, 2, []uint32{2, 4}},
		{256, 256, 256, 256, 1, []uint32{2, 4}},
		// Wide, tall and square images are scaled to a long side of 256,
		// keeping the aspect ratio.
		{520, 320, 256, 158, 1, []uint32{2, 4}},
		{64, 520, 32, 256, 1, []uint32{2, 4}},
		{600, 400, 256, 171, 1, []uint32{2, 4}},
		{512, 512, 256, 256, 1, []uint32{2, 4}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%dx%d", tt.w, tt.h), func(t *testing.T) {
			job := testJob()
			job.Width, job.Height, job.Steps = tt.w, tt.h, 6
			job.ImageCount = tt.previewImages
			job.PreviewEveryNSteps = 2
			rec := generate(t, job)

			// Previews after steps 2 and 4, not after 6: the image follows.
			want := ""
			for range tt.previewImages {
				want += "ppvppvppi"
			}
			if rec.order != want {
				t.Errorf("events %q, want %q", rec.order, want)
			}
			if len(rec.previews) != len(tt.wantPreviewsAt)*int(tt.previewImages) {
				t.Fatalf("got %d previews, want %d", len(rec.previews), len(tt.wantPreviewsAt)*int(tt.previewImages))
			}
			for n, p := range rec.previews {
				i, step := uint32(n/len(tt.wantPreviewsAt)), tt.wantPreviewsAt[n%len(tt.wantPreviewsAt)]
				if p.GetImageIndex() != i || p.GetStep() != step {
					t.Errorf("preview %d is of image %d step %d, want image %d step %d", n, p.GetImageIndex(), p.GetStep(), i, step)
				}
				m := decodePreview(t, p)
				b := m.Bounds()
				if b.Dx() != tt.wantW || b.Dy() != tt.wantH || p.GetWidth() != uint32(tt.wantW) || p.GetHeight() != uint32(tt.wantH) {
					t.Errorf("preview %d decodes to %v, reports %dx%d, want %dx%d", n, b, p.GetWidth(), p.GetHeight(), tt.wantW, tt.wantH)
				}
				if max(b.Dx(), b.Dy()) > previewMaxSide {
					t.Errorf("preview %d is %v, long side over %d", n, b, previewMaxSide)
				}
				// Aspect kept to within the rounding of the short side.
				if d := math.Abs(float64(b.Dx())/float64(b.Dy()) - float64(tt.w)/float64(tt.h)); d > float64(tt.w)/float64(tt.h)/float64(min(b.Dx(), b.Dy())) {
					t.Errorf("preview %d is %v, aspect off by %.3f from %dx%d", n, b, d, tt.w, tt.h)
				}
			}
		})
	}
}

// A preview shows the latent as it is: later previews come closer to the
// finished image, and previews change nothing about it.
func TestPreviewsShowTheLatent(t *testing.T) {
	job := testJob()
	job.Steps = 6
	plain := generate(t, job)
	job.PreviewEveryNSteps = 1
	rec := generate(t, job)
	if !bytes.Equal(plain.images[0].GetData(), rec.images[0].GetData()) {
		t.Error("asking for previews changed the image")
	}
	if len(rec.previews) != 5 {
		t.Fatalf("got %d previews at every step of 6, want 5", len(rec.previews))
	}
	final := decode(t, rec.images[0])
	first := meanAbsDiff(final, decodePreview(t, rec.previews[0]))
	last := meanAbsDiff(final, decodePreview(t, rec.previews[4]))
	t.Logf("mean difference from the image: step 1 %.2f, step 5 %.2f levels", first, last)
	if last > first/3 || last > 15 {
		t.Errorf("preview of step 5 is %.2f levels from the image, step 1 %.2f: want it close and closer", last, first)
	}
}

func TestNoPreviews(t *testing.T) {
	for _, tt := range []struct {
		name  string
		every uint32
		steps uint32
	}{
		{"not asked", 0, 6},
		{"every step of a one-step job", 1, 1},
		{"every more steps than the job has", 7, 6},
		{"every step count of the job: only its last", 6, 6},
	} {
		t.Run(tt.name, func(t *testing.T) {
			job := testJob()
			job.Steps, job.PreviewEveryNSteps, job.ImageCount = tt.steps, tt.every, 2
			if rec := generate(t, job); len(rec.previews) != 0 {
				t.Errorf("got %d previews, want none", len(rec.previews))
			}
		})
	}
}

func TestPreviewsDeterministic(t *testing.T) {
	job := testJob()
	job.Width, job.Height, job.Steps, job.ImageCount = 520, 320, 6, 2
	job.PreviewEveryNSteps = 2
	a, b := generate(t, job), generate(t, job)
	if len(a.previews) != 4 || len(b.previews) != 4 {
		t.Fatalf("got %d and %d previews, want 4", len(a.previews), len(b.previews))
	}
	for i := range a.previews {
		if !bytes.Equal(a.previews[i].GetData(), b.previews[i].GetData()) {
			t.Errorf("preview %d: the same job gave different bytes", i)
		}
	}
	// Different images and steps do differ.
	if bytes.Equal(a.previews[0].GetData(), a.previews[1].GetData()) || bytes.Equal(a.previews[0].GetData(), a.previews[2].GetData()) {
		t.Error("previews of different steps or images are identical")
	}
}

// An error from Preview stops the job, as one from Progress does.
func TestPreviewErrorStopsTheJob(t *testing.T) {
	errStop := errors.New("stop")
	rec := &recorder{onPreview: func(int) error { return errStop }}
	job := testJob()
	job.PreviewEveryNSteps = 2
	if err := New().Generate(t.Context(), job, rec); !errors.Is(err, errStop) {
		t.Fatalf("Generate: %v, want the preview's error", err)
	}
	if rec.order != "ppv" {
		t.Errorf("events %q, want to stop right after the first preview", rec.order)
	}
}

func TestPreviewTaps(t *testing.T) {
	for _, tt := range []struct{ n, p int }{{512, 256}, {2048, 256}, {1368, 171}, {600, 256}, {96, 96}, {520, 256}} {
		start, idx := previewTapsFor(tt.n, tt.p)
		if len(start) != tt.p+1 || start[0] != 0 || start[tt.p] != len(idx) {
			t.Fatalf("n=%d p=%d: start %v…", tt.n, tt.p, start[:min(len(start), 4)])
		}
		for o := range tt.p {
			taps := idx[start[o]:start[o+1]]
			a, b := o*tt.n/tt.p, (o+1)*tt.n/tt.p
			if len(taps) == 0 || len(taps) > previewTaps || len(taps) > b-a {
				t.Errorf("n=%d p=%d: position %d has %d taps for a box of %d", tt.n, tt.p, o, len(taps), b-a)
			}
			for j, s := range taps {
				if s < a || s >= b || (j > 0 && s <= taps[j-1]) {
					t.Errorf("n=%d p=%d: position %d taps %v, want increasing within [%d,%d)", tt.n, tt.p, o, taps, a, b)
					break
				}
			}
		}
	}
}
