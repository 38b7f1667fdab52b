package server

import (
	"fmt"
	"math"
	"strings"
	"testing"

	"buf.build/go/protovalidate"
	"google.golang.org/protobuf/proto"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
	"github.com/hourglass-dev/hourglass/internal/config"
)

// limits.max_request_bytes is derived from the API's own limits: the
// largest request that passes validation (every string at its longest,
// in 4-byte characters; every field set to its largest value) fits the
// default with at least 3× headroom, and the floor of the setting still
// holds it.
func TestLargestValidRequestFitsTheTransportLimit(t *testing.T) {
	long := func(n int) string { return strings.Repeat("🦊", n) }
	var styles []string
	for i := range 16 {
		styles = append(styles, fmt.Sprintf("%02d", i)+long(62))
	}
	req := &hourglassv1.GenerateRequest{
		Prompt: long(4000), NegativePrompt: long(4000), Styles: styles,
		Performance: hourglassv1.Performance_PERFORMANCE_QUALITY,
		Steps:       proto.Uint32(150), Width: proto.Uint32(2048), Height: proto.Uint32(2048), ImageCount: proto.Uint32(32),
		Seed: proto.Uint64(math.MaxUint64), GuidanceScale: proto.Float32(30), Sharpness: proto.Float32(30),
		Model: long(128), OutputFormat: hourglassv1.OutputFormat_OUTPUT_FORMAT_JPEG, PreviewEveryNSteps: 150,
	}
	v, err := protovalidate.New()
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Validate(req); err != nil {
		t.Fatalf("the largest request is not valid, so it does not measure the limit: %v", err)
	}
	size := proto.Size(req)
	if 3*size > config.DefaultMaxRequestBytes {
		t.Errorf("the largest valid request is %d bytes; the default limit %d leaves less than 3× headroom", size, config.DefaultMaxRequestBytes)
	}
	if size > config.MinRequestBytes {
		t.Errorf("the largest valid request is %d bytes, above the floor of limits.max_request_bytes (%d)", size, config.MinRequestBytes)
	}
	t.Logf("largest valid GenerateRequest: %d bytes; limit %d", size, config.DefaultMaxRequestBytes)
}
