package server

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"slices"

	"google.golang.org/genproto/googleapis/rpc/errdetails"

	"github.com/hourglass-dev/hourglass/executor"
	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
	workerv1 "github.com/hourglass-dev/hourglass/gen/hourglass/worker/v1"
)

// Request defaults. The proto documents the same values; a worker never
// sees an unset field.
const (
	defaultWidth         = 512
	defaultHeight        = 512
	defaultImageCount    = 1
	defaultGuidanceScale = 4
	defaultSharpness     = 2
)

// stepsFor is the Fooocus step count of each performance preset.
func stepsFor(p hourglassv1.Performance) uint32 {
	switch p {
	case hourglassv1.Performance_PERFORMANCE_QUALITY:
		return 60
	case hourglassv1.Performance_PERFORMANCE_EXTREME_SPEED:
		return 8
	case hourglassv1.Performance_PERFORMANCE_LIGHTNING:
		return 4
	default:
		return 30
	}
}

// maxRandomSeed keeps random seeds below 2^63, as Fooocus does, so that
// every worker language can hold seed+i in a signed 64-bit integer.
const maxRandomSeed = 1<<63 - 1 - 32

// resolveJob applies every default to a request that passed protovalidate
// and checks what the proto cannot: the model and styles the workers offer
// and the per-request cost ceiling.
func resolveJob(req *hourglassv1.GenerateRequest, cat executor.Catalog, maxCost uint64) (*workerv1.Job, error) {
	job := &workerv1.Job{
		Prompt:         req.GetPrompt(),
		NegativePrompt: req.GetNegativePrompt(),
		Styles:         req.GetStyles(),
		Steps:          stepsFor(req.GetPerformance()),
		Width:          defaultWidth,
		Height:         defaultHeight,
		ImageCount:     defaultImageCount,
		GuidanceScale:  defaultGuidanceScale,
		Sharpness:      defaultSharpness,
		Model:          req.GetModel(),
		OutputFormat:   req.GetOutputFormat(),
		// Previews exist only on the stream; Generate drops them.
		PreviewEveryNSteps: req.GetPreviewEveryNSteps(),
	}
	if req.Steps != nil {
		job.Steps = req.GetSteps()
	}
	if req.Width != nil {
		job.Width = req.GetWidth()
	}
	if req.Height != nil {
		job.Height = req.GetHeight()
	}
	if req.ImageCount != nil {
		job.ImageCount = req.GetImageCount()
	}
	if req.GuidanceScale != nil {
		job.GuidanceScale = req.GetGuidanceScale()
	}
	if req.Sharpness != nil {
		job.Sharpness = req.GetSharpness()
	}
	if req.Seed != nil {
		job.Seed = req.GetSeed()
	} else {
		job.Seed = rand.Uint64N(maxRandomSeed)
	}
	if job.OutputFormat == hourglassv1.OutputFormat_OUTPUT_FORMAT_UNSPECIFIED {
		job.OutputFormat = hourglassv1.OutputFormat_OUTPUT_FORMAT_PNG
	}

	var violations []*errdetails.BadRequest_FieldViolation
	for i, st := range job.Styles {
		if !slices.Contains(cat.Styles, st) {
			violations = append(violations, fieldViolation(fmt.Sprintf("styles[%d]", i),
				fmt.Sprintf("unknown style %q; GetServerInfo lists the styles", st)))
		}
	}
	// Each factor is at most 2048, 2048, 150 and 32: the product fits in
	// a uint64 with room to spare.
	cost := uint64(job.Width) * uint64(job.Height) * uint64(job.Steps) * uint64(job.ImageCount)
	if cost > maxCost {
		desc := fmt.Sprintf("width × height × steps × image_count = %d×%d×%d×%d = %d pixel-steps exceeds the per-request ceiling of %d",
			job.Width, job.Height, job.Steps, job.ImageCount, cost, maxCost)
		for _, f := range []string{"width", "height", "steps", "image_count"} {
			violations = append(violations, fieldViolation(f, desc))
		}
	}
	if len(violations) > 0 {
		return nil, invalidArgument(violations...)
	}
	if job.Model == "" {
		job.Model = cat.DefaultModel
	} else if !slices.Contains(cat.Models, job.Model) {
		return nil, notFound("model %q not found; GetServerInfo lists the models", job.Model)
	}
	return job, nil
}

// promptDigest is what logs may say about a prompt: its length and a short
// hash, enough to correlate requests, never the text.
func promptDigest(prompt string) (length int, hash string) {
	sum := sha256.Sum256([]byte(prompt))
	return len(prompt), hex.EncodeToString(sum[:6])
}
