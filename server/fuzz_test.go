package server

import (
	"testing"

	"buf.build/go/protovalidate"
	"google.golang.org/protobuf/proto"

	"github.com/hourglass-dev/hourglass/executor"
	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

// FuzzRequest feeds arbitrary bytes through what the server does to a
// request before any worker sees it: decode, protovalidate, resolveJob.
// Whatever the bytes, nothing panics, and a request that passes produces a
// job inside every limit a worker relies on.
func FuzzRequest(f *testing.F) {
	seeds := []*hourglassv1.GenerateRequest{
		{Prompt: "a red fox"},
		{Prompt: "x", Width: proto.Uint32(2048), Height: proto.Uint32(2048), Steps: proto.Uint32(150)},
		{Prompt: "x", Width: proto.Uint32(2048), Height: proto.Uint32(2048), Steps: proto.Uint32(150), ImageCount: proto.Uint32(32)},
		{Styles: []string{"Cinematic", "Unknown"}, Model: "nope", GuidanceScale: proto.Float32(31)},
		{Performance: hourglassv1.Performance_PERFORMANCE_LIGHTNING, Seed: proto.Uint64(1<<64 - 1), PreviewEveryNSteps: 2},
	}
	for _, s := range seeds {
		b, err := proto.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	validator, err := protovalidate.New()
	if err != nil {
		f.Fatal(err)
	}
	cat := executor.Catalog{Models: []string{"procedural-v1"}, DefaultModel: "procedural-v1", Styles: []string{"Cinematic"}}
	const maxCost = 1 << 30
	f.Fuzz(func(t *testing.T, data []byte) {
		var req hourglassv1.GenerateRequest
		if proto.Unmarshal(data, &req) != nil {
			return // the codec turns these into INVALID_ARGUMENT; see codec_test
		}
		if validator.Validate(&req) != nil {
			return
		}
		job, err := resolveJob(&req, cat, maxCost)
		if err != nil {
			return
		}
		w, h, steps, n := uint64(job.GetWidth()), uint64(job.GetHeight()), uint64(job.GetSteps()), uint64(job.GetImageCount())
		switch {
		case w < 64 || w > 2048 || w%8 != 0 || h < 64 || h > 2048 || h%8 != 0:
			t.Fatalf("resolveJob(%v) size %dx%d; want multiples of 8 in 64..2048", &req, w, h)
		case steps < 1 || steps > 150 || n < 1 || n > 32:
			t.Fatalf("resolveJob(%v) steps %d images %d; want 1..150 and 1..32", &req, steps, n)
		case w*h*steps*n > maxCost:
			t.Fatalf("resolveJob(%v) cost %d; want at most %d", &req, w*h*steps*n, maxCost)
		case job.GetModel() != "procedural-v1":
			t.Fatalf("resolveJob(%v) model %q; want the catalog's", &req, job.GetModel())
		case job.GetOutputFormat() == hourglassv1.OutputFormat_OUTPUT_FORMAT_UNSPECIFIED:
			t.Fatalf("resolveJob(%v) left the output format unset", &req)
		}
	})
}
