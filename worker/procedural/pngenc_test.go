package procedural

import (
	"bytes"
	"image"
	"image/png"
	"math/rand/v2"
	"testing"
)

// TestEncodePNGRoundTrips decodes encodePNG's output with image/png and
// checks every pixel, including values outside [0,1] that must clamp.
func TestEncodePNGRoundTrips(t *testing.T) {
	tests := []struct {
		name string
		w, h int
	}{
		{"one pixel", 1, 1},
		{"one row", 17, 1},
		{"one column", 1, 9},
		{"square", 64, 64},
		{"wide", 96, 64},
	}
	rng := rand.New(rand.NewPCG(7, 7))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pix := make([]float32, tt.w*tt.h*3)
			for i := range pix {
				pix[i] = rng.Float32()*1.4 - 0.2 // some below 0, some above 1
			}
			var buf bytes.Buffer
			if err := encodePNG(&buf, pix, tt.w, tt.h); err != nil {
				t.Fatal(err)
			}
			m, err := png.Decode(bytes.NewReader(buf.Bytes()))
			if err != nil {
				t.Fatalf("image/png cannot decode the output: %v", err)
			}
			if got := m.Bounds(); got != image.Rect(0, 0, tt.w, tt.h) {
				t.Fatalf("bounds %v, want %dx%d", got, tt.w, tt.h)
			}
			rgba, ok := m.(*image.RGBA)
			if !ok {
				t.Fatalf("decoded as %T, want *image.RGBA (8-bit RGB)", m)
			}
			for p := range tt.w * tt.h {
				for c := range 3 {
					want := quantise(pix[3*p+c])
					if got := rgba.Pix[4*p+c]; got != want {
						t.Fatalf("pixel %d channel %d: %d, want %d", p, c, got, want)
					}
				}
			}
		})
	}
}

func TestEncodePNGRefusesMismatchedSize(t *testing.T) {
	var buf bytes.Buffer
	if err := encodePNG(&buf, make([]float32, 10), 2, 2); err == nil {
		t.Fatal("10 floats for a 2×2 image: want an error")
	}
}

// TestPNGSizeNearAdaptive holds the encoder to its promise: on a real
// default-size image its file is no larger than image/png's with per-row
// adaptive filters at BestSpeed (plus 5% slack for changes to the sampler).
func TestPNGSizeNearAdaptive(t *testing.T) {
	job := testJob()
	job.Width, job.Height, job.Steps = 512, 512, 30
	p, err := newParams(job)
	if err != nil {
		t.Fatal(err)
	}
	pixBuf, err := p.sample(t.Context(), job.GetSeed(), func(uint32, []float32) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	pix := *pixBuf
	var ours, std bytes.Buffer
	if err := encodePNG(&ours, pix, 512, 512); err != nil {
		t.Fatal(err)
	}
	if err := (&png.Encoder{CompressionLevel: png.BestSpeed}).Encode(&std, toRGBA(pix, 512, 512)); err != nil {
		t.Fatal(err)
	}
	t.Logf("512×512: %d bytes here, %d with image/png's adaptive filters (%.3f×)", ours.Len(), std.Len(), float64(ours.Len())/float64(std.Len()))
	if float64(ours.Len()) > 1.05*float64(std.Len()) {
		t.Errorf("%d bytes, more than 1.05× image/png's %d", ours.Len(), std.Len())
	}
}

func benchmarkEncode(b *testing.B, side int, enc func(*bytes.Buffer, []float32) error) {
	pix := make([]float32, side*side*3)
	initLatent(pix, rand.NewPCG(1, streamInit))
	var buf bytes.Buffer
	for b.Loop() {
		buf.Reset()
		if err := enc(&buf, pix); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(buf.Len()), "png-bytes")
}

// BenchmarkEncodePNG64 against BenchmarkEncodeImagePNG64: the sampler's
// encoder and image/png (adaptive filters, pooled buffers, BestSpeed) on the
// same noisy 64×64 image, the overhead benchmark's job.
func BenchmarkEncodePNG64(b *testing.B) {
	benchmarkEncode(b, 64, func(buf *bytes.Buffer, pix []float32) error { return encodePNG(buf, pix, 64, 64) })
}

func BenchmarkEncodeImagePNG64(b *testing.B) {
	enc := png.Encoder{CompressionLevel: png.BestSpeed, BufferPool: &stdPNGBuffers{}}
	benchmarkEncode(b, 64, func(buf *bytes.Buffer, pix []float32) error {
		return enc.Encode(buf, toRGBA(pix, 64, 64))
	})
}

type stdPNGBuffers struct{ b *png.EncoderBuffer }

func (p *stdPNGBuffers) Get() *png.EncoderBuffer  { return p.b }
func (p *stdPNGBuffers) Put(b *png.EncoderBuffer) { p.b = b }
