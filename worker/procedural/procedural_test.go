package procedural

import (
	"bytes"
	"context"
	"errors"
	"image"
	"image/jpeg"
	"image/png"
	"sync"
	"testing"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
	workerv1 "github.com/hourglass-dev/hourglass/gen/hourglass/worker/v1"
	"github.com/hourglass-dev/hourglass/worker"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// recorder is an in-memory worker.Emitter.
type recorder struct {
	mu       sync.Mutex
	progress []*workerv1.Progress
	images   []*hourglassv1.Image
	previews []*hourglassv1.Preview
	// order is the kind of every event as it arrived: 'p'rogress, 'i'mage
	// or pre'v'iew.
	order string
	// onProgress, when set, decides what Progress returns.
	onProgress func(n int) error
	// onPreview, when set, decides what Preview returns.
	onPreview func(n int) error
}

func (r *recorder) Progress(step, total, index uint32) error {
	r.mu.Lock()
	r.progress = append(r.progress, &workerv1.Progress{Step: step, TotalSteps: total, ImageIndex: index})
	r.order += "p"
	n := len(r.progress)
	r.mu.Unlock()
	if r.onProgress != nil {
		return r.onProgress(n)
	}
	return nil
}

func (r *recorder) Image(img *hourglassv1.Image) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.images = append(r.images, img)
	r.order += "i"
	return nil
}

func (r *recorder) Preview(p *hourglassv1.Preview) error {
	r.mu.Lock()
	r.previews = append(r.previews, p)
	r.order += "v"
	n := len(r.previews)
	r.mu.Unlock()
	if r.onPreview != nil {
		return r.onPreview(n)
	}
	return nil
}

func testJob() *workerv1.Job {
	return &workerv1.Job{
		Id:            "job-test",
		Prompt:        "a red lighthouse on a cliff at dusk",
		Steps:         6,
		Width:         96,
		Height:        64,
		ImageCount:    1,
		Seed:          1234,
		GuidanceScale: 4,
		Sharpness:     2,
		Model:         ModelName,
		OutputFormat:  hourglassv1.OutputFormat_OUTPUT_FORMAT_PNG,
	}
}

func generate(t *testing.T, job *workerv1.Job) *recorder {
	t.Helper()
	rec := &recorder{}
	if err := New().Generate(t.Context(), job, rec); err != nil {
		t.Fatalf("Generate: %v", err)
	}
	return rec
}

func decode(t *testing.T, img *hourglassv1.Image) image.Image {
	t.Helper()
	var (
		m   image.Image
		err error
	)
	switch img.GetMimeType() {
	case "image/png":
		m, err = png.Decode(bytes.NewReader(img.GetData()))
	case "image/jpeg":
		m, err = jpeg.Decode(bytes.NewReader(img.GetData()))
	default:
		t.Fatalf("unexpected mime type %q", img.GetMimeType())
	}
	if err != nil {
		t.Fatalf("decode %s: %v", img.GetMimeType(), err)
	}
	return m
}

// meanAbsDiff is the mean absolute difference of two equally sized images,
// in 0..255 levels per channel.
func meanAbsDiff(a, b image.Image) float64 {
	var sum, n float64
	bounds := a.Bounds()
	for y := bounds.Min.Y; y < bounds.Max.Y; y++ {
		for x := bounds.Min.X; x < bounds.Max.X; x++ {
			r1, g1, b1, _ := a.At(x, y).RGBA()
			r2, g2, b2, _ := b.At(x, y).RGBA()
			for _, d := range []int64{int64(r1) - int64(r2), int64(g1) - int64(g2), int64(b1) - int64(b2)} {
				sum += float64(max(d, -d)) / 257
				n++
			}
		}
	}
	return sum / n
}

func TestDeterministic(t *testing.T) {
	for _, format := range []hourglassv1.OutputFormat{hourglassv1.OutputFormat_OUTPUT_FORMAT_PNG, hourglassv1.OutputFormat_OUTPUT_FORMAT_JPEG} {
		t.Run(format.String(), func(t *testing.T) {
			job := testJob()
			job.OutputFormat = format
			job.Styles = []string{"Cinematic", "Fooocus Sharp"}
			job.NegativePrompt = "blurry, blue"
			a, b := generate(t, job), generate(t, job)
			if !bytes.Equal(a.images[0].GetData(), b.images[0].GetData()) {
				t.Error("the same job gave different bytes")
			}
		})
	}
}

// Every input a user can see must change the picture, visibly.
func TestInputsChangeTheImage(t *testing.T) {
	base := decode(t, generate(t, testJob()).images[0])
	tests := []struct {
		name   string
		mutate func(*workerv1.Job)
	}{
		{"prompt", func(j *workerv1.Job) { j.Prompt = "a green forest with a blue river" }},
		{"negative prompt", func(j *workerv1.Job) { j.NegativePrompt = "red" }},
		{"style", func(j *workerv1.Job) { j.Styles = []string{"Monochrome"} }},
		{"guidance", func(j *workerv1.Job) { j.GuidanceScale = 15 }},
		{"seed", func(j *workerv1.Job) { j.Seed = 99 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			job := testJob()
			tt.mutate(job)
			got := decode(t, generate(t, job).images[0])
			d := meanAbsDiff(base, got)
			t.Logf("mean difference %.2f levels", d)
			if d < 3 {
				t.Errorf("changing the %s moved pixels by %.2f levels on average, want a visible change", tt.name, d)
			}
		})
	}
}

func TestImagesDecodeToTheirSize(t *testing.T) {
	tests := []struct {
		format hourglassv1.OutputFormat
		mime   string
	}{
		{hourglassv1.OutputFormat_OUTPUT_FORMAT_PNG, "image/png"},
		{hourglassv1.OutputFormat_OUTPUT_FORMAT_JPEG, "image/jpeg"},
		{hourglassv1.OutputFormat_OUTPUT_FORMAT_UNSPECIFIED, "image/png"},
	}
	for _, tt := range tests {
		t.Run(tt.format.String(), func(t *testing.T) {
			job := testJob()
			job.OutputFormat = tt.format
			img := generate(t, job).images[0]
			if img.GetMimeType() != tt.mime {
				t.Fatalf("mime type %q, want %q", img.GetMimeType(), tt.mime)
			}
			m := decode(t, img)
			if b := m.Bounds(); b.Dx() != 96 || b.Dy() != 64 || img.GetWidth() != 96 || img.GetHeight() != 64 {
				t.Errorf("decoded %v, reported %dx%d, want 96x64", b, img.GetWidth(), img.GetHeight())
			}
		})
	}
}

func TestImageISeedIsSeedPlusI(t *testing.T) {
	job := testJob()
	job.ImageCount = 3
	job.Seed = 1<<64 - 2 // image 2 wraps around to seed 0
	rec := generate(t, job)
	if len(rec.images) != 3 {
		t.Fatalf("got %d images, want 3", len(rec.images))
	}
	for i, img := range rec.images {
		if want := job.Seed + uint64(i); img.GetSeed() != want || img.GetIndex() != uint32(i) {
			t.Errorf("image %d: seed %d index %d, want seed %d", i, img.GetSeed(), img.GetIndex(), want)
		}
	}
	// Image i is exactly the image a job starting at seed+i draws first,
	// which is what makes a retry of one image possible.
	single := testJob()
	single.Seed = rec.images[2].GetSeed()
	if !bytes.Equal(generate(t, single).images[0].GetData(), rec.images[2].GetData()) {
		t.Error("image 2 differs from image 0 of a job seeded with seed+2")
	}
}

func TestProgressAfterEveryStep(t *testing.T) {
	job := testJob()
	job.ImageCount = 2
	rec := generate(t, job)
	if len(rec.progress) != 12 {
		t.Fatalf("got %d progress events, want 12", len(rec.progress))
	}
	for i, p := range rec.progress {
		if p.GetStep() != uint32(i%6+1) || p.GetTotalSteps() != 6 || p.GetImageIndex() != uint32(i/6) {
			t.Errorf("progress %d = %v", i, p)
		}
	}
}

func TestStopsAtTheStepThatFails(t *testing.T) {
	errStop := errors.New("stop")
	tests := []struct {
		name    string
		stopAt  int
		cancel  bool // cancel the context instead of failing Progress
		wantErr error
	}{
		{"progress error on step 1", 1, false, errStop},
		{"progress error on step 4", 4, false, errStop},
		{"progress error in image 2", 8, false, errStop},
		{"context cancelled during step 3", 3, true, context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			rec := &recorder{onProgress: func(n int) error {
				if n == tt.stopAt {
					if tt.cancel {
						cancel()
						return nil
					}
					return errStop
				}
				return nil
			}}
			job := testJob()
			job.ImageCount = 2
			err := New().Generate(ctx, job, rec)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Generate: %v, want %v", err, tt.wantErr)
			}
			if len(rec.progress) != tt.stopAt {
				t.Errorf("%d steps reported, want to stop right after step %d", len(rec.progress), tt.stopAt)
			}
			if want := (tt.stopAt - 1) / 6; len(rec.images) != want {
				t.Errorf("%d images sent, want %d", len(rec.images), want)
			}
		})
	}
}

func TestRefusesUnknownModelAndStyle(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*workerv1.Job)
		field  string
	}{
		{"model", func(j *workerv1.Job) { j.Model = "sdxl" }, "model"},
		{"style", func(j *workerv1.Job) { j.Styles = []string{"Cinematic", "Baroque"} }, "styles"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			job := testJob()
			tt.mutate(job)
			rec := &recorder{}
			err := New().Generate(t.Context(), job, rec)
			var invalid *worker.InvalidJobError
			if !errors.As(err, &invalid) || invalid.Field != tt.field {
				t.Fatalf("Generate: %v, want an InvalidJobError on %s", err, tt.field)
			}
			if len(rec.progress) != 0 {
				t.Error("a refused job reported progress")
			}
		})
	}
}

func TestDescribe(t *testing.T) {
	d := New().Describe()
	if len(d.Models) != 1 || d.Models[0].Name != ModelName || !d.Models[0].Default {
		t.Errorf("models %v, want %s as the default", d.Models, ModelName)
	}
	if d.Device != "cpu" || d.Version == "" {
		t.Errorf("device %q version %q", d.Device, d.Version)
	}
	for _, s := range d.Styles {
		if _, ok := looks[s]; !ok {
			t.Errorf("described style %q has no look", s)
		}
	}
	if len(d.Styles) != len(looks) {
		t.Errorf("%d styles described, %d known", len(d.Styles), len(looks))
	}
}
