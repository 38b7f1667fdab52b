// Package procedural is hourglass's built-in sampler: a CPU stand-in for a
// diffusion model that behaves like one where the executor can tell.
//
// It is iterative (every step does real work proportional to width × height,
// so cost and deadlines scale as with a real model), deterministic (the same
// job gives byte-identical images from the same binary, so a retry with the
// returned seed reproduces the picture), and it reacts to every job field a
// user can see: the prompt sets the composition and palette, the negative
// prompt pushes colours and shapes away, guidance sets contrast, sharpness
// sets edge emphasis and styles change the look. It lets hourglass run, and
// be tested end to end, on machines without a GPU.
//
// When a job asks for previews (Job.preview_every_n_steps), it sends a
// small JPEG of the latent after every that many steps of an image, except
// after the last step, which the finished image follows at once. Previews
// are deterministic too. Their cost is dominated by encoding the 256-pixel
// JPEG (a millisecond or two), so relative to a step it is largest for small
// images: about a step at 512×512, a small fraction at 2048×2048.
//
// Determinism holds for one binary on one architecture: the float work may
// round differently on another architecture or compiler. The noise comes
// from math/rand/v2's PCG, whose output Go keeps stable across releases.
package procedural

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/jpeg"
	"math/rand/v2"
	"runtime/debug"
	"slices"
	"sync"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
	workerv1 "github.com/hourglass-dev/hourglass/gen/hourglass/worker/v1"
	"github.com/hourglass-dev/hourglass/worker"
)

// ModelName is the one model this sampler offers.
const ModelName = "procedural-v1"

// jpegQuality is the quality the public API documents for JPEG output.
const jpegQuality = 90

// Seed streams: independent PCG streams for one image seed, so that adding
// noise draws in one place never shifts another.
const (
	streamInit  = 0x68676c2d696e6974 // initial latent
	streamSteps = 0x68676c2d73746570 // per-step noise
)

// Sampler is the procedural generator; it implements worker.Generator. The
// zero value is ready to use and holds no state between jobs.
type Sampler struct{}

// New returns a Sampler.
func New() *Sampler { return &Sampler{} }

var _ worker.Generator = (*Sampler)(nil)

// Describe reports the one model, the styles and the CPU device. Memory is
// left at zero (unknown): the CPU's memory is not this worker's to report.
func (*Sampler) Describe() worker.Description {
	return worker.Description{
		Models:  []worker.Model{{Name: ModelName, Default: true}},
		Styles:  slices.Clone(styleNames),
		Device:  "cpu",
		Version: "hourglass-worker/" + version(),
	}
}

// Generate samples job.ImageCount images, reporting every step to out.
func (*Sampler) Generate(ctx context.Context, job *workerv1.Job, out worker.Emitter) error {
	p, err := newParams(job)
	if err != nil {
		return err
	}
	for i := range job.GetImageCount() {
		seed := job.GetSeed() + uint64(i) // wraps, like the seed itself
		pix, err := p.sample(ctx, seed, func(step uint32, x []float32) error {
			if err := out.Progress(step, p.steps, i); err != nil {
				return err
			}
			return p.preview(out, x, i, step)
		})
		if err != nil {
			return err
		}
		data, mime, err := encode(*pix, p.w, p.h, job.GetOutputFormat())
		putFloats(pix)
		if err != nil {
			return fmt.Errorf("procedural: encode image %d: %w", i, err)
		}
		err = out.Image(&hourglassv1.Image{
			Data:     data,
			MimeType: mime,
			Seed:     seed,
			Width:    uint32(p.w),
			Height:   uint32(p.h),
			Index:    i,
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// params is a job resolved into what sampling needs.
type params struct {
	w, h  int
	steps uint32
	scene scene
	// previewEvery is Job.preview_every_n_steps: send a preview after
	// every this many steps of an image; 0 sends none.
	previewEvery uint32
}

// preview sends a preview of the latent x after step of image index when
// the job asked for one at this step. None follows the last step: the
// finished image comes right after it. A preview that cannot be encoded is
// skipped, since nothing may depend on previews; an error from out is
// returned, as it is for Progress.
func (p *params) preview(out worker.Emitter, x []float32, index, step uint32) error {
	if p.previewEvery == 0 || step%p.previewEvery != 0 || step >= p.steps {
		return nil
	}
	img := downscalePreview(x, p.w, p.h)
	data, err := encodePreview(img)
	if err != nil {
		return nil
	}
	return out.Preview(&hourglassv1.Preview{
		Data:       data,
		MimeType:   "image/jpeg",
		ImageIndex: index,
		Step:       step,
		Width:      uint32(img.Rect.Dx()),
		Height:     uint32(img.Rect.Dy()),
	})
}

func newParams(job *workerv1.Job) (*params, error) {
	if job == nil {
		return nil, &worker.InvalidJobError{Field: "job", Reason: "is required"}
	}
	if job.GetModel() != ModelName {
		return nil, &worker.InvalidJobError{Field: "model", Reason: fmt.Sprintf("unknown model %q; this worker offers %q", job.GetModel(), ModelName)}
	}
	if job.GetWidth() == 0 || job.GetHeight() == 0 || job.GetSteps() == 0 {
		return nil, &worker.InvalidJobError{Field: "width", Reason: "width, height and steps must be set"}
	}
	var ls []look
	for _, name := range job.GetStyles() {
		l, ok := looks[name]
		if !ok {
			return nil, &worker.InvalidJobError{Field: "styles", Reason: fmt.Sprintf("unknown style %q", name)}
		}
		ls = append(ls, l)
	}
	return &params{
		w:            int(job.GetWidth()),
		h:            int(job.GetHeight()),
		steps:        job.GetSteps(),
		previewEvery: job.GetPreviewEveryNSteps(),
		scene:        newScene(job.GetPrompt(), job.GetNegativePrompt(), job.GetGuidanceScale(), job.GetSharpness(), ls),
	}, nil
}

// sample runs the denoising loop for one image and returns its pixels
// (w×h×3, 0..1), which live in a buffer from floatBuffers: the caller puts
// it back once done with them. afterStep is called after every step with the
// step (from 1) and the current latent, which it must not keep or modify;
// its error stops the loop at once.
func (p *params) sample(ctx context.Context, seed uint64, afterStep func(step uint32, x []float32) error) (*[]float32, error) {
	n := p.w * p.h * 3
	targetBuf := getFloats(n)
	defer putFloats(targetBuf)
	target := *targetBuf
	if err := p.scene.render(ctx, target, p.w, p.h, seed); err != nil {
		return nil, err
	}

	xBuf := getFloats(n)
	x := *xBuf
	initLatent(x, rand.NewPCG(seed, streamInit))
	rng := rand.NewPCG(seed, streamSteps)
	for t := range p.steps {
		alpha, sigma := schedule(t, p.steps)
		denoiseStep(x, target, p.w, alpha, sigma, rng)
		if err := afterStep(t+1, x); err != nil {
			putFloats(xBuf)
			return nil, err
		}
		if err := ctx.Err(); err != nil {
			putFloats(xBuf)
			return nil, err
		}
	}
	return xBuf, nil
}

// floatBuffers recycles the sampler's float32 planes (the target, the
// latent, the blur's scratch) across jobs. For a small job, allocating and
// zeroing them, and collecting them afterwards, costs as much as the
// sampling; every user overwrites the whole plane, so none needs zeroing.
var floatBuffers sync.Pool

// getFloats returns a buffer of n floats with unspecified contents.
func getFloats(n int) *[]float32 {
	if b, ok := floatBuffers.Get().(*[]float32); ok && cap(*b) >= n {
		*b = (*b)[:n]
		return b
	}
	b := make([]float32, n)
	return &b
}

func putFloats(b *[]float32) { floatBuffers.Put(b) }

// schedule gives step t's pull toward the target and its fresh noise. The
// pull grows to 2/3 at the last step and the noise falls to zero, so that
// the residual of the initial noise is 2/((T+1)(T+2)): a little grain left
// at 4 steps, none visible at 30, as with a real sampler.
func schedule(t, steps uint32) (alpha, sigma float32) {
	remaining := float32(steps - t)
	alpha = 2 / (remaining + 2)
	sigma = 0.2 * (remaining - 1) / float32(steps)
	return alpha, sigma
}

// initLatent fills x with seeded noise around mid-grey.
func initLatent(x []float32, rng *rand.PCG) {
	for i := 0; i < len(x); i += 4 {
		r := rng.Uint64()
		for k := 0; k < 4 && i+k < len(x); k++ {
			x[i+k] = 0.5 + 0.5*noise16(r>>(16*k))
		}
	}
}

// noise16 maps the low 16 bits of r to -1..1.
func noise16(r uint64) float32 {
	return float32(int16(uint16(r))) * (1.0 / 32768)
}

// denoiseStep moves every value of x toward the smoothed prediction: the
// target blended with a horizontal [1 2 1] smoothing of x, which is this
// sampler's stand-in for a denoising network, then adds fresh noise. It
// touches every one of the w×h×3 values, so its cost scales with the image.
func denoiseStep(x, target []float32, w int, alpha, sigma float32, rng *rand.PCG) {
	row := w * 3
	for r0 := 0; r0+row <= len(x); r0 += row {
		xs := x[r0 : r0+row : r0+row]
		ts := target[r0 : r0+row : r0+row]
		// Values of the previous pixel before this step changed them.
		prev := [3]float32{xs[0], xs[1], xs[2]}
		var bits uint64
		for i := 0; i < row; i += 3 {
			// 16 bits of noise per value: one PCG draw covers 4 values,
			// refilled every fourth value across the three channels.
			for c := range 3 {
				j := i + c
				if j%4 == 0 {
					bits = rng.Uint64()
				}
				cur := xs[j]
				next := cur
				if i+3 < row {
					next = xs[j+3]
				}
				smooth := 0.25*prev[c] + 0.5*cur + 0.25*next
				pred := 0.8*ts[j] + 0.2*smooth
				xs[j] = cur + (pred-cur)*alpha + sigma*noise16(bits>>(16*(j%4)))
				prev[c] = cur
			}
		}
	}
}

// encode quantises pix to 8 bits and encodes it as PNG or JPEG.
func encode(pix []float32, w, h int, format hourglassv1.OutputFormat) (data []byte, mime string, err error) {
	var buf bytes.Buffer
	if format != hourglassv1.OutputFormat_OUTPUT_FORMAT_JPEG {
		if err := encodePNG(&buf, pix, w, h); err != nil {
			return nil, "", err
		}
		return buf.Bytes(), "image/png", nil
	}
	if err := jpeg.Encode(&buf, toRGBA(pix, w, h), &jpeg.Options{Quality: jpegQuality}); err != nil {
		return nil, "", err
	}
	return buf.Bytes(), "image/jpeg", nil
}

// toRGBA quantises pix (w×h RGB floats) into an opaque image.RGBA, the
// form the standard library's encoders take.
func toRGBA(pix []float32, w, h int) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for i, j := 0, 0; i < len(pix); i, j = i+3, j+4 {
		img.Pix[j] = quantise(pix[i])
		img.Pix[j+1] = quantise(pix[i+1])
		img.Pix[j+2] = quantise(pix[i+2])
		img.Pix[j+3] = 0xff
	}
	return img
}

func quantise(v float32) uint8 {
	return uint8(clamp01(v)*255 + 0.5)
}

// version is the module version this binary was built from, or "devel".
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	const module = "github.com/hourglass-dev/hourglass"
	v := ""
	if bi.Main.Path == module {
		v = bi.Main.Version
	} else {
		for _, dep := range bi.Deps {
			if dep.Path == module {
				v = dep.Version
			}
		}
	}
	if v == "" || v == "(devel)" {
		return "devel"
	}
	return v
}
