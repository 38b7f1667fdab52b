package server

import (
	"encoding/hex"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hourglass-dev/hourglass/executor"
	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
	workerv1 "github.com/hourglass-dev/hourglass/gen/hourglass/worker/v1"
)

var testCatalog = executor.Catalog{
	Models:       []string{"sdxl-base", "juggernaut"},
	DefaultModel: "sdxl-base",
	Styles:       []string{"Fooocus V2", "Fooocus Sharp", "Fooocus Enhance"},
}

// noCeiling is a cost ceiling no valid request reaches.
const noCeiling = 1 << 62

// defaultJob is what an empty request resolves to, seed aside.
func defaultJob(steps uint32) *workerv1.Job {
	return &workerv1.Job{
		Steps: steps, Width: 512, Height: 512, ImageCount: 1, GuidanceScale: 4, Sharpness: 2,
		Model: "sdxl-base", OutputFormat: hourglassv1.OutputFormat_OUTPUT_FORMAT_PNG,
	}
}

func TestResolveJobDefaults(t *testing.T) {
	tests := []struct {
		name string
		req  *hourglassv1.GenerateRequest
		want *workerv1.Job
	}{
		{"empty", &hourglassv1.GenerateRequest{}, defaultJob(30)},
		{"speed", &hourglassv1.GenerateRequest{Performance: hourglassv1.Performance_PERFORMANCE_SPEED}, defaultJob(30)},
		{"quality", &hourglassv1.GenerateRequest{Performance: hourglassv1.Performance_PERFORMANCE_QUALITY}, defaultJob(60)},
		{"extreme speed", &hourglassv1.GenerateRequest{Performance: hourglassv1.Performance_PERFORMANCE_EXTREME_SPEED}, defaultJob(8)},
		{"lightning", &hourglassv1.GenerateRequest{Performance: hourglassv1.Performance_PERFORMANCE_LIGHTNING}, defaultJob(4)},
		{"explicit steps override quality", &hourglassv1.GenerateRequest{
			Performance: hourglassv1.Performance_PERFORMANCE_QUALITY, Steps: proto.Uint32(12)}, defaultJob(12)},
		{"explicit steps override lightning", &hourglassv1.GenerateRequest{
			Performance: hourglassv1.Performance_PERFORMANCE_LIGHTNING, Steps: proto.Uint32(150)}, defaultJob(150)},
		{
			name: "explicit values kept",
			req: &hourglassv1.GenerateRequest{
				Prompt: "a cat", NegativePrompt: "a dog", Styles: []string{"Fooocus Sharp", "Fooocus V2"},
				Performance: hourglassv1.Performance_PERFORMANCE_QUALITY, Steps: proto.Uint32(20),
				Width: proto.Uint32(1024), Height: proto.Uint32(768), ImageCount: proto.Uint32(3),
				Seed: proto.Uint64(42), GuidanceScale: proto.Float32(7.5), Sharpness: proto.Float32(0),
				Model: "juggernaut", OutputFormat: hourglassv1.OutputFormat_OUTPUT_FORMAT_JPEG,
			},
			want: &workerv1.Job{
				Prompt: "a cat", NegativePrompt: "a dog", Styles: []string{"Fooocus Sharp", "Fooocus V2"},
				Steps: 20, Width: 1024, Height: 768, ImageCount: 3, Seed: 42, GuidanceScale: 7.5, Sharpness: 0,
				Model: "juggernaut", OutputFormat: hourglassv1.OutputFormat_OUTPUT_FORMAT_JPEG,
			},
		},
		{
			// Explicit zeros are values, not "unset": sharpness 0 is a
			// valid Fooocus setting and seed 0 a valid seed.
			name: "explicit zero sharpness and seed",
			req:  &hourglassv1.GenerateRequest{Sharpness: proto.Float32(0), Seed: proto.Uint64(0)},
			want: func() *workerv1.Job { j := defaultJob(30); j.Sharpness = 0; return j }(),
		},
		{"explicit PNG", &hourglassv1.GenerateRequest{OutputFormat: hourglassv1.OutputFormat_OUTPUT_FORMAT_PNG}, defaultJob(30)},
		{"explicit default model", &hourglassv1.GenerateRequest{Model: "sdxl-base"}, defaultJob(30)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := resolveJob(tt.req, testCatalog, noCeiling)
			if err != nil {
				t.Fatalf("resolveJob(%v) = %v; want success", tt.req, err)
			}
			want := proto.Clone(tt.want).(*workerv1.Job)
			if tt.req.Seed == nil {
				want.Seed = got.GetSeed() // random; checked in TestResolveJobSeed
			}
			if !proto.Equal(got, want) {
				t.Errorf("resolveJob(%v) = %v; want %v", tt.req, got, want)
			}
		})
	}
}

func TestResolveJobSeed(t *testing.T) {
	for _, seed := range []uint64{0, 1, 42, 1<<63 - 1, 1<<64 - 1} {
		req := &hourglassv1.GenerateRequest{Seed: proto.Uint64(seed)}
		got, err := resolveJob(req, testCatalog, noCeiling)
		if err != nil || got.GetSeed() != seed {
			t.Errorf("resolveJob(%v) = seed %d, %v; want seed %d", req, got.GetSeed(), err, seed)
		}
	}

	// Absent: random, below 2^63 so that seed+i fits an int64 in every
	// worker language. Two equal draws out of 64 would mean it is not random.
	seen := map[uint64]bool{}
	const draws = 64
	for range draws {
		req := &hourglassv1.GenerateRequest{ImageCount: proto.Uint32(32)}
		got, err := resolveJob(req, testCatalog, noCeiling)
		if err != nil {
			t.Fatalf("resolveJob(%v) = %v; want success", req, err)
		}
		if s := got.GetSeed(); s >= 1<<63 || s+uint64(got.GetImageCount()) >= 1<<63 {
			t.Errorf("resolveJob(%v) seed = %d; want seed+image_count < 2^63", req, s)
		}
		seen[got.GetSeed()] = true
	}
	if len(seen) != draws {
		t.Errorf("resolveJob without seed gave %d distinct seeds in %d draws; want all distinct", len(seen), draws)
	}
}

func TestResolveJobErrors(t *testing.T) {
	// The cost of the default request: 512×512 × 30 steps × 1 image.
	const defaultCost = 512 * 512 * 30
	costFields := []string{"width", "height", "steps", "image_count"}
	tests := []struct {
		name    string
		req     *hourglassv1.GenerateRequest
		maxCost uint64
		code    codes.Code
		fields  []string // BadRequest field violations, in order
	}{
		{name: "unknown style", req: &hourglassv1.GenerateRequest{Styles: []string{"Fooocus V2", "Nope"}},
			code: codes.InvalidArgument, fields: []string{"styles[1]"}},
		{name: "two unknown styles", req: &hourglassv1.GenerateRequest{Styles: []string{"x", "Fooocus V2", "y"}},
			code: codes.InvalidArgument, fields: []string{"styles[0]", "styles[2]"}},
		{name: "style names are case-sensitive", req: &hourglassv1.GenerateRequest{Styles: []string{"fooocus v2"}},
			code: codes.InvalidArgument, fields: []string{"styles[0]"}},
		{name: "unknown model", req: &hourglassv1.GenerateRequest{Model: "sd15"}, code: codes.NotFound},
		{name: "cost one pixel-step over the ceiling", req: &hourglassv1.GenerateRequest{},
			maxCost: defaultCost - 1, code: codes.InvalidArgument, fields: costFields},
		{name: "cost over the ceiling by explicit values",
			req: &hourglassv1.GenerateRequest{
				Width: proto.Uint32(2048), Height: proto.Uint32(2048), Steps: proto.Uint32(150), ImageCount: proto.Uint32(32)},
			maxCost: 1 << 30, code: codes.InvalidArgument, fields: costFields},
		{name: "unknown style and cost: all violations", req: &hourglassv1.GenerateRequest{Styles: []string{"Nope"}},
			maxCost: defaultCost - 1, code: codes.InvalidArgument, fields: append([]string{"styles[0]"}, costFields...)},
		// Field violations come before the model lookup.
		{name: "unknown style and model", req: &hourglassv1.GenerateRequest{Styles: []string{"Nope"}, Model: "sd15"},
			code: codes.InvalidArgument, fields: []string{"styles[0]"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			maxCost := tt.maxCost
			if maxCost == 0 {
				maxCost = noCeiling
			}
			job, err := resolveJob(tt.req, testCatalog, maxCost)
			if job != nil {
				t.Errorf("resolveJob(%v, max %d) job = %v; want nil with an error", tt.req, maxCost, job)
			}
			st := status.Convert(err)
			if st.Code() != tt.code {
				t.Fatalf("resolveJob(%v, max %d) = %v; want code %v", tt.req, maxCost, err, tt.code)
			}
			d := detailsOf(t, st)
			if got := fieldsOf(d.badRequest); !slices.Equal(got, tt.fields) {
				t.Errorf("resolveJob(%v, max %d) BadRequest fields = %q; want %q", tt.req, maxCost, got, tt.fields)
			}
		})
	}
}

func TestResolveJobCostCeiling(t *testing.T) {
	tests := []struct {
		req  *hourglassv1.GenerateRequest
		cost uint64
	}{
		{&hourglassv1.GenerateRequest{}, 512 * 512 * 30},
		{&hourglassv1.GenerateRequest{Performance: hourglassv1.Performance_PERFORMANCE_LIGHTNING}, 512 * 512 * 4},
		{&hourglassv1.GenerateRequest{Width: proto.Uint32(1024), Height: proto.Uint32(64), Steps: proto.Uint32(7), ImageCount: proto.Uint32(5)},
			1024 * 64 * 7 * 5},
		{&hourglassv1.GenerateRequest{Width: proto.Uint32(2048), Height: proto.Uint32(2048), Steps: proto.Uint32(150), ImageCount: proto.Uint32(32)},
			2048 * 2048 * 150 * 32},
	}
	for _, tt := range tests {
		if _, err := resolveJob(tt.req, testCatalog, tt.cost); err != nil {
			t.Errorf("resolveJob(%v, max %d) = %v; want success at exactly the ceiling", tt.req, tt.cost, err)
		}
		_, err := resolveJob(tt.req, testCatalog, tt.cost-1)
		if st := status.Convert(err); st.Code() != codes.InvalidArgument {
			t.Errorf("resolveJob(%v, max %d) = %v; want INVALID_ARGUMENT one pixel-step over", tt.req, tt.cost-1, err)
		}
	}
}

func TestPromptDigest(t *testing.T) {
	tests := []struct {
		prompt string
		length int
		hash   string // first 6 bytes of SHA-256
	}{
		{"", 0, "e3b0c44298fc"},
		{"abc", 3, "ba7816bf8f01"},
		{"a cat in a hat", 14, ""},
	}
	hashes := map[string]string{}
	for _, tt := range tests {
		n, h := promptDigest(tt.prompt)
		if n != tt.length {
			t.Errorf("promptDigest(%q) length = %d; want %d", tt.prompt, n, tt.length)
		}
		if b, err := hex.DecodeString(h); err != nil || len(h) != 12 || len(b) != 6 {
			t.Errorf("promptDigest(%q) hash = %q; want 12 hex characters", tt.prompt, h)
		}
		if tt.hash != "" && h != tt.hash {
			t.Errorf("promptDigest(%q) hash = %q; want %q", tt.prompt, h, tt.hash)
		}
		if n2, h2 := promptDigest(tt.prompt); n2 != n || h2 != h {
			t.Errorf("promptDigest(%q) = %d, %q then %d, %q; want the same twice", tt.prompt, n, h, n2, h2)
		}
		if other, ok := hashes[h]; ok {
			t.Errorf("promptDigest(%q) hash = %q, the same as for %q; want different", tt.prompt, h, other)
		}
		hashes[h] = tt.prompt
	}
	_, h1 := promptDigest("a cat")
	_, h2 := promptDigest("a cat.")
	if h1 == h2 {
		t.Errorf("promptDigest(%q) and promptDigest(%q) hash alike (%q); want different", "a cat", "a cat.", h1)
	}
}
