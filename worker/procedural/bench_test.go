package procedural

import (
	"math/rand/v2"
	"testing"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

func benchmarkStep(b *testing.B, side int) {
	n := side * side * 3
	x, target := make([]float32, n), make([]float32, n)
	initLatent(x, rand.NewPCG(1, streamInit))
	sc := newScene("a red lighthouse on a cliff at dusk", "", 4, 2, nil)
	if err := sc.render(b.Context(), target, side, side, 1); err != nil {
		b.Fatal(err)
	}
	rng := rand.NewPCG(1, streamSteps)
	b.SetBytes(int64(n * 4))
	for b.Loop() {
		denoiseStep(x, target, side, 0.1, 0.05, rng)
	}
}

// BenchmarkStep512 is one sampling step at 512×512, the unit the executor's
// cost estimate is calibrated in.
func BenchmarkStep512(b *testing.B) { benchmarkStep(b, 512) }

// BenchmarkStep2048 is one sampling step at the largest size.
func BenchmarkStep2048(b *testing.B) { benchmarkStep(b, 2048) }

func benchmarkPreview(b *testing.B, side int) {
	x := make([]float32, side*side*3)
	initLatent(x, rand.NewPCG(1, streamInit))
	for b.Loop() {
		if _, err := encodePreview(downscalePreview(x, side, side)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPreview512 and BenchmarkPreview2048 are one preview (downscale
// and JPEG encode) of a noisy latent; compare with BenchmarkStep512 and
// BenchmarkStep2048: a preview must cost a small fraction of a step.
func BenchmarkPreview512(b *testing.B)  { benchmarkPreview(b, 512) }
func BenchmarkPreview2048(b *testing.B) { benchmarkPreview(b, 2048) }

// discard is an Emitter that drops everything.
type discard struct{ bytes int }

func (*discard) Progress(uint32, uint32, uint32) error { return nil }
func (*discard) Preview(*hourglassv1.Preview) error    { return nil }
func (d *discard) Image(img *hourglassv1.Image) error {
	d.bytes = len(img.GetData())
	return nil
}

// BenchmarkGenerate512 is a whole default job (30 steps, 512×512, one PNG):
// steps plus the fixed cost of rendering the target and encoding.
func BenchmarkGenerate512(b *testing.B) {
	job := testJob()
	job.Width, job.Height, job.Steps = 512, 512, 30
	out := &discard{}
	for b.Loop() {
		if err := New().Generate(b.Context(), job, out); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(out.bytes), "png-bytes")
}

// BenchmarkGenerateTrivial is the overhead benchmark's job (64×64, one
// step): everything here is fixed cost per job, not per step.
func BenchmarkGenerateTrivial(b *testing.B) {
	job := testJob()
	job.Width, job.Height, job.Steps = 64, 64, 1
	out := &discard{}
	for b.Loop() {
		if err := New().Generate(b.Context(), job, out); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(out.bytes), "png-bytes")
}
