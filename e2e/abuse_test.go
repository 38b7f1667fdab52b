package e2e

// The bad-input catalog (issue 8): malformed and hostile requests against
// one real hourglassd in its default configuration, each answered with the
// status the README documents, never UNKNOWN, and the server healthy
// afterwards (SERVING, a normal job runs, every worker READY, none
// restarted). A second hourglassd (timeouts.max 1s) checks the deadline cap.
//
// INTERNAL appears only where grpc-go's HTTP/2 transport refuses a request
// before any hourglass code runs, as the gRPC protocol spec has it for
// protocol errors: a malformed grpc-timeout, malformed binary metadata, the
// compressed flag without an encoding, a unary call with zero or two
// request messages, a message cut short. hourglass cannot change those.
//
// Some cases speak HTTP/2 by hand (abuseH2Conn), to send what no gRPC
// library sends: a malformed grpc-timeout, a header flood, a reader that
// never opens its flow-control window and never resets its stream.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	_ "google.golang.org/grpc/encoding/gzip" // registers the gzip compressor for the gzip-bomb case
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

// abuseMethods are the two job calls; most cases run on both.
var abuseMethods = []string{"Generate", "GenerateStream"}

// abuseFullMethod is the full gRPC method name of Generate or
// GenerateStream.
func abuseFullMethod(method string) string {
	if method == "Generate" {
		return hourglassv1.GenerateService_Generate_FullMethodName
	}
	return hourglassv1.GenerateService_GenerateStream_FullMethodName
}

// abuseRequest is a valid request that costs almost nothing (64×64, one
// step), so that the cases meant to pass stay cheap on a CPU worker.
func abuseRequest() *hourglassv1.GenerateRequest {
	return &hourglassv1.GenerateRequest{
		Prompt: "an abused lighthouse", Seed: proto.Uint64(7),
		Width: proto.Uint32(64), Height: proto.Uint32(64), Steps: proto.Uint32(1),
	}
}

// abuseCall runs one Generate or GenerateStream with the generated client on
// conn and returns its status: nil for a call that ended OK (a stream that
// ended with io.EOF after its done event).
func abuseCall(ctx context.Context, conn *grpc.ClientConn, method string, req *hourglassv1.GenerateRequest, opts ...grpc.CallOption) error {
	c := hourglassv1.NewGenerateServiceClient(conn)
	if method == "Generate" {
		_, err := c.Generate(ctx, req, opts...)
		return err
	}
	stream, err := c.GenerateStream(ctx, req, opts...)
	if err != nil {
		return err
	}
	done := false
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			if !done {
				return status.Error(codes.Unknown, "stream ended without a done event")
			}
			return nil
		}
		if err != nil {
			return err
		}
		done = done || ev.GetDone() != nil
	}
}

// abuseRawCodec sends bytes as they are: what a hostile or buggy client can
// put on the wire, which the generated client would refuse to marshal.
type abuseRawCodec struct{}

func (abuseRawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*(v.(*[]byte)))}, nil
}
func (abuseRawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*(v.(*[]byte)) = data.Materialize()
	return nil
}
func (abuseRawCodec) Name() string { return "proto" }

// abuseRawCall sends body as the request message of method (a full method
// name) and returns the call's status; a stream's messages are read and
// dropped.
func abuseRawCall(ctx context.Context, conn *grpc.ClientConn, fullMethod string, body []byte) error {
	codec := grpc.ForceCodecV2(abuseRawCodec{})
	if fullMethod != hourglassv1.GenerateService_GenerateStream_FullMethodName {
		var out []byte
		return conn.Invoke(ctx, fullMethod, &body, &out, codec)
	}
	stream, err := conn.NewStream(ctx, &hourglassv1.GenerateService_ServiceDesc.Streams[0], fullMethod, codec)
	if err != nil {
		return err
	}
	if err := stream.SendMsg(&body); err != nil {
		return err
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	for {
		var out []byte
		if err := stream.RecvMsg(&out); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return err
		}
	}
}

// abuseField is one length-delimited protobuf field.
func abuseField(num protowire.Number, value []byte) []byte {
	b := protowire.AppendTag(nil, num, protowire.BytesType)
	return protowire.AppendBytes(b, value)
}

// abuseMarshal is the wire form of a valid request, for cases that add
// bytes to it.
func abuseMarshal(t *testing.T, req *hourglassv1.GenerateRequest) []byte {
	t.Helper()
	b, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// catalogCase is one bad input. call runs it with method ("Generate" or
// "GenerateStream") and returns the call's error; want is the status code
// and, for INVALID_ARGUMENT, fields lists the BadRequest field violations
// that must all be named ("" names the whole message). msg, when set, must
// be in the status message. only restricts the case to one method.
type catalogCase struct {
	name   string
	only   string
	call   func(ctx context.Context, method string) error
	want   codes.Code
	fields []string
	msg    string
}

// catalogRow is one line of the summary table: want and got are status
// codes, or what happened when there is no status (a connection closed).
type catalogRow struct {
	name, method, want, got string
}

// catalogTable collects the summary table.
type catalogTable struct {
	mu   sync.Mutex
	rows []catalogRow
}

func (c *catalogTable) add(name, method, want, got string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rows = append(c.rows, catalogRow{name: name, method: method, want: want, got: got})
}

// record adds a call's status.
func (c *catalogTable) record(name, method string, want codes.Code, err error) {
	c.add(name, method, want.String(), status.Code(err).String())
}

func (c *catalogTable) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "bad-input catalog: %d calls\n", len(c.rows))
	fmt.Fprintf(&b, "%-64s %-15s %-18s %s\n", "case", "method", "want", "got")
	for _, r := range c.rows {
		mark := ""
		if r.got != r.want {
			mark = "  <-- MISMATCH"
		}
		fmt.Fprintf(&b, "%-64s %-15s %-18s %s%s\n", r.name, r.method, r.want, r.got, mark)
	}
	return b.String()
}

func TestAbuseCatalog(t *testing.T) {
	d := startDaemon(t, "") // the default configuration: 2 workers, 1 hot spare
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("hourglassd log:\n%s", d.Logs())
		}
	})
	infoCtx, infoCancel := context.WithTimeout(context.Background(), 10*time.Second)
	info, err := d.client.GetServerInfo(infoCtx, &hourglassv1.GetServerInfoRequest{})
	infoCancel()
	if err != nil {
		t.Fatalf("GetServerInfo: %v", err)
	}
	if len(info.GetStyles()) == 0 {
		t.Fatal("GetServerInfo lists no styles; the style cases need one")
	}
	style := info.GetStyles()[0]

	// req builds a generated-client case from a mutation of abuseRequest.
	req := func(mutate func(*hourglassv1.GenerateRequest), opts ...grpc.CallOption) func(context.Context, string) error {
		return func(ctx context.Context, method string) error {
			r := abuseRequest()
			mutate(r)
			return abuseCall(ctx, d.conn, method, r, opts...)
		}
	}
	// raw builds a case that sends body as it is.
	raw := func(body []byte) func(context.Context, string) error {
		return func(ctx context.Context, method string) error {
			return abuseRawCall(ctx, d.conn, abuseFullMethod(method), body)
		}
	}
	u32 := proto.Uint32
	f32 := proto.Float32
	nan := float32(math.NaN())
	inf := float32(math.Inf(1))
	invalid := func(name string, mutate func(*hourglassv1.GenerateRequest), fields ...string) catalogCase {
		return catalogCase{name: name, call: req(mutate), want: codes.InvalidArgument, fields: fields}
	}
	ok := func(name string, mutate func(*hourglassv1.GenerateRequest)) catalogCase {
		return catalogCase{name: name, call: req(mutate), want: codes.OK}
	}
	seventeen := make([]string, 17)
	for i := range seventeen {
		seventeen[i] = fmt.Sprintf("style-%02d", i)
	}
	tenThousand := make([]string, 10000)
	for i := range tenThousand {
		tenThousand[i] = fmt.Sprintf("s%d", i)
	}
	valid := abuseMarshal(t, abuseRequest())

	cases := []catalogCase{
		// First, while admission's learned rate is close to the
		// calibrated one: the largest job of the catalog. (Admission
		// learns from every job, and one tiny job slowed by a noisy
		// machine can inflate its rate enough to refuse this one.)
		{name: "empty body (every default: 512×512, 30 steps)", call: raw(nil), want: codes.OK},
		// Every numeric field below and above its range.
		invalid("steps 0", func(r *hourglassv1.GenerateRequest) { r.Steps = u32(0) }, "steps"),
		invalid("steps 151", func(r *hourglassv1.GenerateRequest) { r.Steps = u32(151) }, "steps"),
		invalid("steps 2^32-1", func(r *hourglassv1.GenerateRequest) { r.Steps = u32(math.MaxUint32) }, "steps"),
		invalid("width 0", func(r *hourglassv1.GenerateRequest) { r.Width = u32(0) }, "width"),
		invalid("width 56", func(r *hourglassv1.GenerateRequest) { r.Width = u32(56) }, "width"),
		invalid("width 63", func(r *hourglassv1.GenerateRequest) { r.Width = u32(63) }, "width"),
		invalid("width 100 (not a multiple of 8)", func(r *hourglassv1.GenerateRequest) { r.Width = u32(100) }, "width"),
		invalid("width 2049", func(r *hourglassv1.GenerateRequest) { r.Width = u32(2049) }, "width"),
		invalid("width 2056", func(r *hourglassv1.GenerateRequest) { r.Width = u32(2056) }, "width"),
		invalid("width 2^32-1", func(r *hourglassv1.GenerateRequest) { r.Width = u32(math.MaxUint32) }, "width"),
		invalid("height 0", func(r *hourglassv1.GenerateRequest) { r.Height = u32(0) }, "height"),
		invalid("height 56", func(r *hourglassv1.GenerateRequest) { r.Height = u32(56) }, "height"),
		invalid("height 63", func(r *hourglassv1.GenerateRequest) { r.Height = u32(63) }, "height"),
		invalid("height 100 (not a multiple of 8)", func(r *hourglassv1.GenerateRequest) { r.Height = u32(100) }, "height"),
		invalid("height 2049", func(r *hourglassv1.GenerateRequest) { r.Height = u32(2049) }, "height"),
		invalid("height 2056", func(r *hourglassv1.GenerateRequest) { r.Height = u32(2056) }, "height"),
		invalid("image_count 0", func(r *hourglassv1.GenerateRequest) { r.ImageCount = u32(0) }, "image_count"),
		invalid("image_count 33", func(r *hourglassv1.GenerateRequest) { r.ImageCount = u32(33) }, "image_count"),
		invalid("guidance_scale 0.5", func(r *hourglassv1.GenerateRequest) { r.GuidanceScale = f32(0.5) }, "guidance_scale"),
		invalid("guidance_scale 31", func(r *hourglassv1.GenerateRequest) { r.GuidanceScale = f32(31) }, "guidance_scale"),
		invalid("guidance_scale NaN", func(r *hourglassv1.GenerateRequest) { r.GuidanceScale = f32(nan) }, "guidance_scale"),
		invalid("guidance_scale +Inf", func(r *hourglassv1.GenerateRequest) { r.GuidanceScale = f32(inf) }, "guidance_scale"),
		invalid("guidance_scale -Inf", func(r *hourglassv1.GenerateRequest) { r.GuidanceScale = f32(-inf) }, "guidance_scale"),
		invalid("sharpness -1", func(r *hourglassv1.GenerateRequest) { r.Sharpness = f32(-1) }, "sharpness"),
		invalid("sharpness 31", func(r *hourglassv1.GenerateRequest) { r.Sharpness = f32(31) }, "sharpness"),
		invalid("sharpness NaN", func(r *hourglassv1.GenerateRequest) { r.Sharpness = f32(nan) }, "sharpness"),
		invalid("sharpness +Inf", func(r *hourglassv1.GenerateRequest) { r.Sharpness = f32(inf) }, "sharpness"),
		invalid("sharpness -Inf", func(r *hourglassv1.GenerateRequest) { r.Sharpness = f32(-inf) }, "sharpness"),
		invalid("preview_every_n_steps 151", func(r *hourglassv1.GenerateRequest) { r.PreviewEveryNSteps = 151 }, "preview_every_n_steps"),
		// Unknown enum values (the generated client sends any number).
		invalid("performance 99", func(r *hourglassv1.GenerateRequest) { r.Performance = 99 }, "performance"),
		invalid("performance -1", func(r *hourglassv1.GenerateRequest) { r.Performance = -1 }, "performance"),
		invalid("output_format 7", func(r *hourglassv1.GenerateRequest) { r.OutputFormat = 7 }, "output_format"),
		// Names.
		{name: "unknown model", call: req(func(r *hourglassv1.GenerateRequest) { r.Model = "no-such-model" }), want: codes.NotFound},
		invalid("model of 129 characters", func(r *hourglassv1.GenerateRequest) { r.Model = strings.Repeat("m", 129) }, "model"),
		invalid("unknown style", func(r *hourglassv1.GenerateRequest) { r.Styles = []string{"No Such Style"} }, "styles[0]"),
		invalid("unknown style after a known one", func(r *hourglassv1.GenerateRequest) { r.Styles = []string{style, "No Such Style"} }, "styles[1]"),
		invalid("17 styles", func(r *hourglassv1.GenerateRequest) { r.Styles = seventeen }, "styles"),
		invalid("10,000 styles", func(r *hourglassv1.GenerateRequest) { r.Styles = tenThousand }, "styles"),
		invalid("duplicate styles", func(r *hourglassv1.GenerateRequest) { r.Styles = []string{style, style} }, "styles"),
		invalid("empty style name", func(r *hourglassv1.GenerateRequest) { r.Styles = []string{""} }, "styles[0]"),
		invalid("style name of 65 characters", func(r *hourglassv1.GenerateRequest) { r.Styles = []string{strings.Repeat("s", 65)} }, "styles[0]"),
		ok("a known style", func(r *hourglassv1.GenerateRequest) { r.Styles = []string{style} }),
		// Prompt lengths: the limit counts characters (code points), not bytes.
		ok("prompt of 4000 characters", func(r *hourglassv1.GenerateRequest) { r.Prompt = strings.Repeat("a", 4000) }),
		invalid("prompt of 4001 characters", func(r *hourglassv1.GenerateRequest) { r.Prompt = strings.Repeat("a", 4001) }, "prompt"),
		ok("prompt of 4000 é (8000 bytes)", func(r *hourglassv1.GenerateRequest) { r.Prompt = strings.Repeat("é", 4000) }),
		invalid("prompt of 4001 é", func(r *hourglassv1.GenerateRequest) { r.Prompt = strings.Repeat("é", 4001) }, "prompt"),
		ok("prompt of 4000 🦊 (16000 bytes)", func(r *hourglassv1.GenerateRequest) { r.Prompt = strings.Repeat("🦊", 4000) }),
		ok("negative_prompt of 4000 é", func(r *hourglassv1.GenerateRequest) { r.NegativePrompt = strings.Repeat("é", 4000) }),
		invalid("negative_prompt of 4001 characters", func(r *hourglassv1.GenerateRequest) { r.NegativePrompt = strings.Repeat("n", 4001) }, "negative_prompt"),
		invalid("negative_prompt of 4001 é", func(r *hourglassv1.GenerateRequest) { r.NegativePrompt = strings.Repeat("é", 4001) }, "negative_prompt"),
		// The per-request cost ceiling: every factor is in range, the
		// product is not (2048×2048×150×2 > 2^30).
		invalid("pixels × steps × images over the ceiling", func(r *hourglassv1.GenerateRequest) {
			r.Width, r.Height, r.Steps, r.ImageCount = u32(2048), u32(2048), u32(150), u32(2)
		}, "width", "height", "steps", "image_count"),
		// Bytes the generated client would not send.
		{name: "invalid UTF-8 prompt", call: raw(append(valid, abuseField(1, []byte{0xff, 0xfe, 'a'})...)), want: codes.InvalidArgument, fields: []string{"prompt"}},
		{name: "invalid UTF-8 negative_prompt", call: raw(append(valid, abuseField(2, []byte("ok\xc3\x28"))...)), want: codes.InvalidArgument, fields: []string{"negative_prompt"}},
		{name: "invalid UTF-8 style", call: raw(append(valid, abuseField(3, []byte{0xc0, 0xaf})...)), want: codes.InvalidArgument, fields: []string{"styles"}},
		{name: "invalid UTF-8 model", call: raw(append(valid, abuseField(12, []byte{0xed, 0xa0, 0x80})...)), want: codes.InvalidArgument, fields: []string{"model"}},
		{name: "truncated protobuf", call: raw([]byte{0x0a, 0x10, 'a'}), want: codes.InvalidArgument, fields: []string{""}},
		{name: "invalid wire type", call: raw([]byte{0x0f}), want: codes.InvalidArgument, fields: []string{""}},
		{name: "field number 0", call: raw(append(valid, 0x02, 0x00)), want: codes.InvalidArgument, fields: []string{""}},
		{name: "length prefix of 2^63", call: raw(append(valid, 0x0a, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01)), want: codes.InvalidArgument, fields: []string{""}},
		// A known field with the wrong wire type is an unknown field to
		// protobuf: ignored.
		{name: "prompt sent as a varint (ignored)", call: raw(protowire.AppendVarint(protowire.AppendTag(append([]byte(nil), valid...), 1, protowire.VarintType), 5)), want: codes.OK},
		{name: "unknown fields (ignored)", call: raw(append(append(append([]byte(nil), valid...), abuseField(99, []byte("surprise"))...),
			protowire.AppendVarint(protowire.AppendTag(nil, 1000, protowire.VarintType), 1)...)), want: codes.OK},
		// Message size: grpc-go's default server receive limit is 4 MiB.
		{name: "5 MiB prompt", call: req(func(r *hourglassv1.GenerateRequest) { r.Prompt = strings.Repeat("a", 5<<20) }),
			want: codes.ResourceExhausted, msg: "grpc: received message larger than max"},
		{name: "gzip bomb (5 MiB prompt, gzip-compressed)", call: req(func(r *hourglassv1.GenerateRequest) { r.Prompt = strings.Repeat("a", 5<<20) }, grpc.UseCompressor("gzip")),
			want: codes.ResourceExhausted, msg: "grpc: received message after decompression larger than max"},
		// Credentials when auth is off: none needed, any ignored.
		ok("no token, auth off", func(*hourglassv1.GenerateRequest) {}),
		{name: "junk token, auth off (ignored)", call: func(ctx context.Context, method string) error {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer junk-token-auth-is-off")
			return abuseCall(ctx, d.conn, method, abuseRequest())
		}, want: codes.OK},
		// Metadata within limits.max_metadata_bytes (64 KiB): 300
		// headers, about 40 KB as HTTP/2 counts them. Accepted and ignored.
		{name: "300 metadata headers (40 KB, within the limit)", call: func(ctx context.Context, method string) error {
			return abuseCall(metadata.AppendToOutgoingContext(ctx, abuseMetadata(300)...), d.conn, method, abuseRequest())
		}, want: codes.OK},
		// Beyond it: 1,000 headers, about 130 KB. hourglassd advertises its
		// limit in SETTINGS, so a grpc-go client refuses to send the call at
		// all; the hand-made client below shows the server's own refusal.
		{name: "1,000 metadata headers (130 KB, over the limit)", call: func(ctx context.Context, method string) error {
			return abuseCall(metadata.AppendToOutgoingContext(ctx, abuseMetadata(1000)...), d.conn, method, abuseRequest())
		}, want: codes.Internal, msg: "header list size to send violates the maximum size (65536 bytes) set by server"},
		// A method that does not exist.
		{name: "unknown method", only: "Generate", call: func(ctx context.Context, _ string) error {
			return abuseRawCall(ctx, d.conn, "/hourglass.v1.GenerateService/Nope", valid)
		}, want: codes.Unimplemented},
		{name: "GetServerInfo with undecodable bytes", only: "Generate", call: func(ctx context.Context, _ string) error {
			return abuseRawCall(ctx, d.conn, hourglassv1.GenerateService_GetServerInfo_FullMethodName, []byte{0x0f})
		}, want: codes.InvalidArgument, fields: []string{""}},
	}

	table := &catalogTable{}
	defer func() { t.Log(table) }()
	record := table.record

	t.Run("stream never read", func(t *testing.T) {
		// A GenerateStream of 32 images whose events the caller never
		// reads, on a connection whose flow-control window stays at 64 KiB
		// (a fixed window turns off grpc-go's BDP growth): hourglassd
		// cannot send the images (about 1 MB), yet the call must end at
		// its deadline and leave no worker busy. It runs first, while
		// admission's rate is the calibrated one: the job is small in
		// pixel-steps (0.5 M) so that admission lets it in.
		conn, err := grpc.NewClient(d.addr,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		const deadline = 3 * time.Second
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		r := abuseRequest()
		r.ImageCount = u32(32)
		r.Width, r.Height = u32(128), u32(128)
		start := time.Now()
		stream, err := hourglassv1.NewGenerateServiceClient(conn).GenerateStream(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		// Never Recv: wait for the deadline, then see how it ended.
		<-ctx.Done()
		var last error
		for {
			if _, err := stream.Recv(); err != nil {
				last = err
				break
			}
		}
		record("stream never read", "GenerateStream", codes.DeadlineExceeded, last)
		if status.Code(last) != codes.DeadlineExceeded {
			t.Errorf("unread GenerateStream ended with %v; want DEADLINE_EXCEEDED", last)
		}
		// hourglassd logs the call's end; it must come at the deadline,
		// not when the job or the sends would have finished.
		local := abuseLocalAddr(t, conn)
		var line map[string]any
		waitFor(t, 10*time.Second, "hourglassd's log line of the unread stream", func() bool {
			for _, rec := range abuseCallLines(d) {
				if rec["peer"] == local && rec["method"] == hourglassv1.GenerateService_GenerateStream_FullMethodName {
					line = rec
					return true
				}
			}
			return false
		})
		if ms, _ := line["duration_ms"].(float64); time.Duration(ms)*time.Millisecond > deadline+2*time.Second {
			t.Errorf("hourglassd ended the unread stream after %v ms (call began %v ago); want about %v: %v", ms, time.Since(start), deadline, line)
		}
		t.Logf("hourglassd's line for the unread stream: %v", line)
		table.add("stream never read (server log)", "GenerateStream", codes.DeadlineExceeded.String(), fmt.Sprint(line["code"]))
		// The README: "hourglass decides by the clock, so the caller's
		// deadline is reported as such", in its log, metrics and span.
		if line["code"] != codes.DeadlineExceeded.String() {
			t.Errorf("hourglassd logged the unread stream, whose deadline passed, as %v (%v); want DeadlineExceeded", line["code"], line["error"])
		}
		abuseWaitWorkersReady(t, context.Background(), d, 0)
	})

	t.Run("admission", func(t *testing.T) {
		// A deadline that has not passed when the call arrives but is far
		// too short for the job (1 s for 2048×2048 at 150 steps, tens of
		// seconds on a CPU worker): hourglass refuses it at admission,
		// DEADLINE_EXCEEDED with ErrorInfo DEADLINE_TOO_SHORT, at once and
		// touching no worker. Early, while admission's rate is close to
		// its calibration: the rate it learns from the catalog's many tiny
		// jobs is unreliable.
		big := abuseMarshal(t, &hourglassv1.GenerateRequest{Prompt: "a slow lighthouse",
			Width: proto.Uint32(2048), Height: proto.Uint32(2048), Steps: proto.Uint32(150)})
		for _, method := range abuseMethods {
			res := abuseH2Call(t, d.addr, abuseH2Request{path: abuseFullMethod(method), timeout: "1S", body: big})
			got, reason := res.code(t), res.reason(t)
			record("grpc-timeout 1S, 2048×2048×150 (admission)", method, codes.DeadlineExceeded, status.Error(got, res.grpcMessage))
			if got != codes.DeadlineExceeded || reason != "DEADLINE_TOO_SHORT" {
				t.Errorf("%s with grpc-timeout 1S = %s (reason %q); want DEADLINE_EXCEEDED, ErrorInfo DEADLINE_TOO_SHORT", method, res, reason)
			}
		}
	})

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, method := range abuseMethods {
				if tc.only != "" && tc.only != method {
					continue
				}
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				err := tc.call(ctx, method)
				cancel()
				record(tc.name, method, tc.want, err)
				checkCatalogStatus(t, method, tc.name, err, tc.want, tc.fields, tc.msg)
			}
		})
	}

	t.Run("deadline", func(t *testing.T) {
		// A deadline already past, and one of 1 ns: grpc-go's client
		// refuses to start a call whose deadline has passed (it checks
		// before it sends the headers) and answers DEADLINE_EXCEEDED
		// itself; the server never sees these calls. A dedicated
		// connection lets the end of the test check that no call line
		// from it reached hourglassd's log.
		conn := abuseDial(t, d.addr)
		local := abuseLocalAddr(t, conn)
		for _, method := range abuseMethods {
			past, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Hour))
			err := abuseCall(past, conn, method, abuseRequest())
			cancel()
			record("deadline an hour past (client library)", method, codes.DeadlineExceeded, err)
			checkCatalogStatus(t, method, "deadline an hour past", err, codes.DeadlineExceeded, nil, "")

			tiny, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
			err = abuseCall(tiny, conn, method, abuseRequest())
			cancel()
			record("deadline of 1 ns (client library)", method, codes.DeadlineExceeded, err)
			checkCatalogStatus(t, method, "deadline of 1 ns", err, codes.DeadlineExceeded, nil, "")
		}
		t.Cleanup(func() {
			for _, rec := range abuseCallLines(d) {
				if rec["peer"] == local && rec["method"] != hourglassv1.GenerateService_GetServerInfo_FullMethodName {
					t.Errorf("a call with an expired deadline reached hourglassd: %v", rec)
				}
			}
		})

		// The same deadlines on the wire (grpc-timeout "0n" and "1n",
		// which only a hand-made client sends): grpc-go's server transport
		// sees the stream's context already done when it reads the headers
		// and answers DEADLINE_EXCEEDED itself ("context deadline
		// exceeded"), before hourglass sees the call.
		for _, timeout := range []string{"0n", "1n"} {
			for _, method := range abuseMethods {
				res := abuseH2Call(t, d.addr, abuseH2Request{path: abuseFullMethod(method), timeout: timeout, body: valid})
				got := res.code(t)
				record("grpc-timeout "+timeout+" (grpc-go transport)", method, codes.DeadlineExceeded, status.Error(got, res.grpcMessage))
				if got != codes.DeadlineExceeded || (timeout == "0n" && res.grpcMessage != "context deadline exceeded") {
					t.Errorf("%s with grpc-timeout %s = %s; want DEADLINE_EXCEEDED", method, timeout, res)
				}
			}
		}
		// The longest grpc-timeout the protocol can say (99999999 hours,
		// beyond time.Duration): accepted, capped at timeouts.max (10 min),
		// and the small job finishes.
		for _, method := range abuseMethods {
			res := abuseH2Call(t, d.addr, abuseH2Request{path: abuseFullMethod(method), timeout: "99999999H", body: valid})
			got := res.code(t)
			record("grpc-timeout 99999999H (capped)", method, codes.OK, status.Error(got, res.grpcMessage))
			if got != codes.OK {
				t.Errorf("%s with grpc-timeout 99999999H = %s; want OK", method, res)
			}
		}
	})

	t.Run("transport refusals", func(t *testing.T) {
		// grpc-go's HTTP/2 transport refuses these before any handler or
		// interceptor runs, with the status the gRPC protocol spec gives
		// protocol errors. With the grpc-go client's own refusal to send
		// metadata over the server's limit, they are the catalog's only
		// INTERNAL answers; hourglass cannot change them (and need not).
		frame := abuseGRPCFrame(valid)
		refusals := []struct {
			name string
			req  abuseH2Request
			want codes.Code
			msg  string
		}{
			{"malformed grpc-timeout \"tomorrow\"", abuseH2Request{timeout: "tomorrow", body: valid}, codes.Internal, "malformed grpc-timeout"},
			{"malformed grpc-timeout \"-1S\"", abuseH2Request{timeout: "-1S", body: valid}, codes.Internal, "malformed grpc-timeout"},
			{"content-type text/plain", abuseH2Request{contentType: "text/plain", body: valid}, codes.InvalidArgument, "invalid gRPC request content-type"},
			{"unknown grpc-encoding", abuseH2Request{extra: []hpack.HeaderField{{Name: "grpc-encoding", Value: "br"}}, rawBody: abuseCompressedFrame(valid)}, codes.Unimplemented, "Decompressor is not installed"},
			{"compressed flag without grpc-encoding", abuseH2Request{rawBody: abuseCompressedFrame(valid)}, codes.Internal, "compressed flag set"},
			{"malformed binary metadata", abuseH2Request{extra: []hpack.HeaderField{{Name: "x-data-bin", Value: "!!not base64!!"}}, body: valid}, codes.Internal, "malformed binary metadata"},
			{"no request message", abuseH2Request{noBody: true}, codes.Internal, "cardinality violation"},
			{"two request messages", abuseH2Request{rawBody: append(append([]byte(nil), frame...), frame...)}, codes.Internal, "cardinality violation"},
			{"message cut short", abuseH2Request{rawBody: frame[:len(frame)-3]}, codes.Internal, ""},
			{"length prefix of 2 GiB", abuseH2Request{rawBody: []byte{0, 0x80, 0, 0, 0}}, codes.ResourceExhausted, "larger than max"},
		}
		for _, tt := range refusals {
			for _, method := range abuseMethods {
				r := tt.req
				r.path = abuseFullMethod(method)
				res := abuseH2Call(t, d.addr, r)
				got := res.code(t)
				record(tt.name+" (grpc-go transport)", method, tt.want, status.Error(got, res.grpcMessage))
				if got != tt.want || !strings.Contains(res.grpcMessage, tt.msg) {
					t.Errorf("%s(%s) = %s; want %v with %q in the message", method, tt.name, res, tt.want, tt.msg)
				}
			}
		}

		// Metadata over limits.max_metadata_bytes (100 KiB against 64 KiB)
		// from a client that ignores the SETTINGS advertising the limit,
		// and far beyond it (17 MiB, past grpc-go's own default too). The
		// server's HTTP/2 framer stops decoding a header block once it is
		// over the limit and answers any further CONTINUATION frame with a
		// connection error (x/net/http2: it will not parse headers it
		// would discard; only an overage inside the block's last frame
		// would get a RST_STREAM instead). No handler runs and there is no
		// status: the connection is gone.
		for _, flood := range []struct {
			name  string
			bytes int
		}{{"100 KiB of metadata", 100 << 10}, {"17 MiB of metadata", 17 << 20}} {
			res := abuseH2Call(t, d.addr, abuseH2Request{path: abuseFullMethod("Generate"), body: valid, flood: flood.bytes})
			t.Logf("%s: %s", flood.name, res)
			got := "connection closed"
			if !res.closed {
				got = res.String()
			}
			table.add(flood.name+" (grpc-go transport)", "Generate", "connection closed", got)
			if res.grpcStatus != "" || !(res.closed || res.goAway != nil) {
				t.Errorf("%s = %s; want the connection closed without a status", flood.name, res)
			}
		}
	})

	t.Run("deadline cap (second daemon, timeouts.max 1s)", func(t *testing.T) {
		catalogDeadlineCap(t, table)
	})

	// After everything: healthy, a normal job runs, every worker ready and
	// none restarted.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hc, err := d.health.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health after the catalog = %v, %v; want SERVING", hc, err)
	}
	if _, err := d.client.Generate(ctx, smallRequest("a lighthouse after the storm", 1)); err != nil {
		t.Errorf("Generate after the catalog = %v; want OK", err)
	}
	abuseWaitWorkersReady(t, context.Background(), d, 0)
	if strings.Contains(d.Logs(), `"msg":"panic in handler"`) {
		t.Errorf("hourglassd recovered a panic during the catalog")
	}
}

// catalogDeadlineCap checks, on a second server whose timeouts.max is 1 s,
// the cap on absurd deadlines and on a hand-made HTTP/2 reader that never
// opens its window.
func catalogDeadlineCap(t *testing.T, table *catalogTable) {
	// Admission is off so that a job longer than the cap still runs: the
	// cap, not admission, must end it.
	d := startDaemon(t, "workers:\n  count: 2\n  spares: 1\ntimeouts:\n  default: 1s\n  max: 1s\n"+
		"tenants:\n  max_concurrent: 1\n"+noAdmission, "--unsafe-fault-injection")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("hourglassd log:\n%s", d.Logs())
		}
	})

	t.Run("reader that never opens its window", func(t *testing.T) {
		// A hand-made client: no grpc-timeout (the server's default and
		// cap, 1 s, apply), a stream window of 0 bytes that it never
		// raises, and it never resets the stream. Only hourglassd's own
		// deadline can end this call. 32 images of 512×512 at 30 steps
		// take many seconds on a CPU worker, so the job is still running
		// when the cap passes.
		r := abuseRequest()
		r.ImageCount = proto.Uint32(32)
		r.Width, r.Height, r.Steps = proto.Uint32(512), proto.Uint32(512), proto.Uint32(30)
		c := abuseH2Dial(t, d.addr, 0)
		start := time.Now()
		c.send(t, 1, abuseH2Request{path: abuseFullMethod("GenerateStream"), body: abuseMarshal(t, r)})

		// The worker is cancelled at the cap and goes back to READY.
		abuseWaitWorkersReady(t, context.Background(), d, 0)
		// The call itself must end then too: its log line is written when
		// the handler returns. (With tenants.max_concurrent set, a call
		// that never ends also holds its tenant's slot for good.)
		var line map[string]any
		logged := func() bool {
			for _, rec := range abuseCallLines(d) {
				if rec["peer"] == c.local && rec["method"] == hourglassv1.GenerateService_GenerateStream_FullMethodName {
					line = rec
					return true
				}
			}
			return false
		}
		ended := abusePoll(5*time.Second, logged)
		defer func() {
			// Closing the connection ends the call in any case; wait for
			// that, so that the next subtest finds the tenant's slot free.
			c.close()
			if !ended && !abusePoll(10*time.Second, logged) {
				t.Errorf("GenerateStream with an unread stream did not end when its connection closed")
			}
		}()
		got := "not ended after 5s"
		if ended {
			got = fmt.Sprint(line["code"])
		}
		table.add("stream never read, raw h2, no grpc-timeout (cap 1s, server log)", "GenerateStream", codes.DeadlineExceeded.String(), got)
		if !ended {
			t.Errorf("GenerateStream with an unread stream still not ended %v after the call, though timeouts.max is 1s "+
				"(its job ended at the cap; the handler is blocked sending an event the client never reads)", time.Since(start))
		} else if line["code"] != codes.DeadlineExceeded.String() {
			t.Errorf("log line of the unread stream = %v; want code DeadlineExceeded", line)
		}
		// A normal call from the same tenant runs: the tenant's slot
		// (tenants.max_concurrent: 1) is free.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := abuseCall(ctx, d.conn, "Generate", abuseRequest()); err != nil {
			t.Errorf("Generate after the unread stream's deadline = %v; want OK", err)
		}
		if !ended {
			return
		}
		// Opening the window lets the buffered events through, then the
		// status: DEADLINE_EXCEEDED.
		c.openWindow(t, 1, 1<<30)
		res := c.result(t, 1, 10*time.Second)
		if res.code(t) != codes.DeadlineExceeded {
			t.Errorf("unread stream's status once read = %s; want DEADLINE_EXCEEDED", res)
		}
	})

	t.Run("ten-year deadline", func(t *testing.T) {
		// A deadline ten years away is cut to timeouts.max: a job that
		// hangs is answered DEADLINE_EXCEEDED by hourglassd (ErrorInfo
		// DEADLINE_EXCEEDED: the caller's own library would not have given
		// up for ten years) about 1 s after the call.
		for _, method := range abuseMethods {
			ctx, cancel := context.WithTimeout(context.Background(), 10*365*24*time.Hour)
			ctx = metadata.AppendToOutgoingContext(ctx, "hourglass-fault", "hang")
			r := abuseRequest()
			r.Steps = proto.Uint32(20)
			start := time.Now()
			err := abuseCall(ctx, d.conn, method, r)
			took := time.Since(start)
			cancel()
			table.record("10-year deadline, hang fault (cap 1s)", method, codes.DeadlineExceeded, err)
			t.Logf("%s(hang, 10-year deadline): %v after %v", method, status.Code(err), took)
			if status.Code(err) != codes.DeadlineExceeded {
				t.Fatalf("%s(hang, 10-year deadline) = %v; want DEADLINE_EXCEEDED", method, err)
			}
			var reason string
			for _, det := range status.Convert(err).Details() {
				if ei, ok := det.(*errdetails.ErrorInfo); ok {
					reason = ei.GetReason()
				}
			}
			if reason != "DEADLINE_EXCEEDED" {
				t.Errorf("%s(hang, 10-year deadline) details = %v; want ErrorInfo DEADLINE_EXCEEDED from hourglassd", method, status.Convert(err).Details())
			}
			if took < 900*time.Millisecond || took > 3*time.Second {
				t.Errorf("%s(hang, 10-year deadline) answered after %v; want about 1s (timeouts.max)", method, took)
			}
		}
		// The hung workers are killed after the cancel grace and
		// replaced: the server is healthy again.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		waitFor(t, 20*time.Second, "health SERVING after the hung jobs", func() bool {
			hc, err := d.health.Check(ctx, &healthpb.HealthCheckRequest{})
			return err == nil && hc.GetStatus() == healthpb.HealthCheckResponse_SERVING
		})
	})
}

// checkCatalogStatus checks one case's status: the code, and for
// INVALID_ARGUMENT each wanted field in BadRequest; never UNKNOWN.
func checkCatalogStatus(t *testing.T, method, name string, err error, want codes.Code, fields []string, msg string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != want {
		t.Errorf("%s(%s) = %v; want %v", method, name, err, want)
		return
	}
	if !strings.Contains(st.Message(), msg) {
		t.Errorf("%s(%s) message %q; want it to contain %q", method, name, st.Message(), msg)
	}
	if want != codes.InvalidArgument {
		return
	}
	var got []string
	var found bool
	for _, det := range st.Details() {
		if br, ok := det.(*errdetails.BadRequest); ok {
			found = true
			for _, v := range br.GetFieldViolations() {
				got = append(got, v.GetField())
			}
		}
	}
	if !found {
		t.Errorf("%s(%s) = %v; want google.rpc.BadRequest details", method, name, err)
		return
	}
	for _, f := range fields {
		if !contains(got, f) {
			t.Errorf("%s(%s) field violations = %q; want %q named", method, name, got, f)
		}
	}
}

// abuseCallLines are hourglassd's "grpc call" log lines.
func abuseCallLines(d *daemon) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(d.Logs(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "grpc call" {
			out = append(out, rec)
		}
	}
	return out
}

// abuseWaitWorkersReady waits until every worker and spare is READY, and
// checks that no slot restarted more than restarts times. base carries the
// calls' credentials, if the server wants any.
func abuseWaitWorkersReady(t *testing.T, base context.Context, d *daemon, restarts uint32) {
	t.Helper()
	var last *hourglassv1.GetServerInfoResponse
	failed := t.Failed()
	defer func() {
		if !failed && t.Failed() {
			t.Logf("last GetServerInfo: %v", last)
		}
	}()
	waitFor(t, 20*time.Second, "every worker READY", func() bool {
		ctx, cancel := context.WithTimeout(base, 5*time.Second)
		defer cancel()
		info, err := d.client.GetServerInfo(ctx, &hourglassv1.GetServerInfoRequest{})
		if err != nil {
			t.Logf("GetServerInfo: %v", err)
			return false
		}
		last = info
		for _, w := range info.GetWorkers() {
			if w.GetState() != hourglassv1.WorkerState_WORKER_STATE_READY {
				return false
			}
		}
		return len(info.GetWorkers()) > 0
	})
	for _, w := range last.GetWorkers() {
		if w.GetRestarts() > restarts {
			t.Errorf("worker %s restarted %d times; want at most %d", w.GetId(), w.GetRestarts(), restarts)
		}
	}
}

// abusePoll polls cond every few milliseconds until it holds (true) or
// timeout passes (false).
func abusePoll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
	return true
}

// abuseDial is a plain-text connection to addr, closed at the end of the
// test.
func abuseDial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// abuseLocalAddr is the local address of conn's connection, as hourglassd
// logs it in "peer", found by a GetServerInfo call.
func abuseLocalAddr(t *testing.T, conn *grpc.ClientConn) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var p peer.Peer
	if _, err := hourglassv1.NewGenerateServiceClient(conn).GetServerInfo(ctx, &hourglassv1.GetServerInfoRequest{}, grpc.Peer(&p)); err != nil {
		t.Fatalf("GetServerInfo: %v", err)
	}
	if p.LocalAddr == nil {
		t.Fatal("grpc.Peer gave no local address")
	}
	return p.LocalAddr.String()
}

// abuseGRPCFrame is msg in a gRPC length-prefixed message frame.
func abuseGRPCFrame(msg []byte) []byte {
	b := make([]byte, 5, 5+len(msg))
	binary.BigEndian.PutUint32(b[1:], uint32(len(msg)))
	return append(b, msg...)
}

// abuseCompressedFrame is msg in a frame whose compressed flag is set,
// though msg is not compressed.
func abuseCompressedFrame(msg []byte) []byte {
	b := abuseGRPCFrame(msg)
	b[0] = 1
	return b
}

// abuseH2Request is one call made by hand over HTTP/2.
type abuseH2Request struct {
	path        string
	timeout     string // grpc-timeout; "" sends none
	contentType string // "" is application/grpc
	extra       []hpack.HeaderField
	body        []byte // the request message, framed
	rawBody     []byte // the DATA bytes as they are, instead of body
	noBody      bool   // no DATA at all: the headers end the stream
	flood       int    // bytes of junk metadata to add
}

// abuseH2Result is how a hand-made call ended.
type abuseH2Result struct {
	httpStatus  string
	grpcStatus  string
	grpcMessage string
	rst         *http2.ErrCode
	goAway      *http2.ErrCode
	details     string // grpc-status-details-bin, as sent
	closed      bool   // the connection ended (EOF, reset) before the stream did
	timedOut    bool
	dataBytes   int
}

func (r abuseH2Result) String() string {
	s := fmt.Sprintf(":status %q grpc-status %q grpc-message %q", r.httpStatus, r.grpcStatus, r.grpcMessage)
	if r.rst != nil {
		s += " RST_STREAM " + r.rst.String()
	}
	if r.goAway != nil {
		s += " GOAWAY " + r.goAway.String()
	}
	if r.closed {
		s += " connection closed"
	}
	if r.timedOut {
		s += " (no end seen)"
	}
	return s
}

// code is the gRPC status of the call; a call that ended without one
// fails the test.
func (r abuseH2Result) code(t *testing.T) codes.Code {
	t.Helper()
	if r.grpcStatus == "" {
		t.Errorf("hand-made call ended without grpc-status: %s", r)
		return codes.Unknown
	}
	var n uint32
	if _, err := fmt.Sscan(r.grpcStatus, &n); err != nil {
		t.Errorf("grpc-status %q: %v", r.grpcStatus, err)
		return codes.Unknown
	}
	return codes.Code(n)
}

// reason is the ErrorInfo reason in the call's status details, or "".
func (r abuseH2Result) reason(t *testing.T) string {
	t.Helper()
	if r.details == "" {
		return ""
	}
	b, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(r.details, "="))
	if err != nil {
		t.Errorf("grpc-status-details-bin %q: %v", r.details, err)
		return ""
	}
	var sp spb.Status
	if err := proto.Unmarshal(b, &sp); err != nil {
		t.Errorf("grpc-status-details-bin: %v", err)
		return ""
	}
	for _, det := range status.FromProto(&sp).Details() {
		if ei, ok := det.(*errdetails.ErrorInfo); ok {
			return ei.GetReason()
		}
	}
	return ""
}

// abuseH2Call makes one call on a fresh hand-made HTTP/2 connection.
func abuseH2Call(t *testing.T, addr string, req abuseH2Request) abuseH2Result {
	t.Helper()
	c := abuseH2Dial(t, addr, 1<<20)
	defer c.close()
	c.send(t, 1, req)
	return c.result(t, 1, 30*time.Second)
}

// abuseMetadata is n metadata entries of about 130 bytes each as HTTP/2
// counts them (a 13-byte name, a 90-byte value, 32 bytes of overhead), in
// metadata.AppendToOutgoingContext's key, value, … form.
func abuseMetadata(n int) []string {
	kv := make([]string, 0, 2*n)
	for i := range n {
		kv = append(kv, fmt.Sprintf("x-flood-%05d", i), strings.Repeat("v", 90))
	}
	return kv
}

// abuseH2Event is a frame as the reader goroutine saw it, copied (the
// framer reuses its buffers).
type abuseH2Event struct {
	stream  uint32
	headers map[string]string // HEADERS
	end     bool              // END_STREAM
	rst     *http2.ErrCode
	goAway  *http2.ErrCode
	data    int
	err     error // the connection ended
}

// abuseH2Conn is a hand-made HTTP/2 client connection: it writes frames as
// told and reads every frame on its own goroutine, acknowledging SETTINGS
// and PING, never sending WINDOW_UPDATE unless told to.
type abuseH2Conn struct {
	conn   net.Conn
	local  string
	addr   string
	wmu    sync.Mutex
	fr     *http2.Framer
	events chan abuseH2Event
	done   chan struct{}
}

// abuseH2Dial connects to addr, sends the preface and SETTINGS with the
// given initial stream window.
func abuseH2Dial(t *testing.T, addr string, window uint32) *abuseH2Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := &abuseH2Conn{conn: conn, local: conn.LocalAddr().String(), addr: addr,
		events: make(chan abuseH2Event, 1024), done: make(chan struct{})}
	c.fr = http2.NewFramer(conn, conn)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.fr.MaxHeaderListSize = 1 << 20
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	if err := c.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: window}); err != nil {
		t.Fatal(err)
	}
	go c.read()
	return c
}

func (c *abuseH2Conn) read() {
	defer close(c.done)
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			c.events <- abuseH2Event{err: err}
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				c.wmu.Lock()
				_ = c.fr.WriteSettingsAck()
				c.wmu.Unlock()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				c.wmu.Lock()
				_ = c.fr.WritePing(true, f.Data)
				c.wmu.Unlock()
			}
		case *http2.MetaHeadersFrame:
			h := make(map[string]string, len(f.Fields))
			for _, hf := range f.Fields {
				h[hf.Name] = hf.Value
			}
			c.events <- abuseH2Event{stream: f.StreamID, headers: h, end: f.StreamEnded()}
		case *http2.DataFrame:
			c.events <- abuseH2Event{stream: f.StreamID, data: len(f.Data()), end: f.StreamEnded()}
		case *http2.RSTStreamFrame:
			code := f.ErrCode
			c.events <- abuseH2Event{stream: f.StreamID, rst: &code}
		case *http2.GoAwayFrame:
			code := f.ErrCode
			c.events <- abuseH2Event{goAway: &code}
		}
	}
}

// close closes the connection and waits for the reader.
func (c *abuseH2Conn) close() {
	_ = c.conn.Close()
	for {
		select {
		case <-c.events:
		case <-c.done:
			return
		}
	}
}

// send writes req's HEADERS (with CONTINUATION frames as needed) and DATA
// on stream id. A write error (the server closed the connection) is left
// for result to see.
func (c *abuseH2Conn) send(t *testing.T, id uint32, req abuseH2Request) {
	t.Helper()
	ct := req.contentType
	if ct == "" {
		ct = "application/grpc"
	}
	fields := []hpack.HeaderField{
		{Name: ":method", Value: "POST"},
		{Name: ":scheme", Value: "http"},
		{Name: ":path", Value: req.path},
		{Name: ":authority", Value: c.addr},
		{Name: "content-type", Value: ct},
		{Name: "te", Value: "trailers"},
	}
	if req.timeout != "" {
		fields = append(fields, hpack.HeaderField{Name: "grpc-timeout", Value: req.timeout})
	}
	fields = append(fields, req.extra...)
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range fields {
		if err := enc.WriteField(f); err != nil {
			t.Fatal(err)
		}
	}
	value := strings.Repeat("f", 1000)
	for i := 0; block.Len() < req.flood; i++ {
		if err := enc.WriteField(hpack.HeaderField{Name: fmt.Sprintf("x-flood-%07d", i), Value: value, Sensitive: true}); err != nil {
			t.Fatal(err)
		}
	}
	data := req.rawBody
	if data == nil && !req.noBody {
		data = abuseGRPCFrame(req.body)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	const maxFrame = 16 << 10 // the server's SETTINGS_MAX_FRAME_SIZE (the default)
	frag := block.Bytes()
	first := true
	for first || len(frag) > 0 {
		n := min(len(frag), maxFrame)
		chunk, last := frag[:n], n == len(frag)
		var err error
		if first {
			err = c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: chunk,
				EndStream: req.noBody, EndHeaders: last})
		} else {
			err = c.fr.WriteContinuation(id, last, chunk)
		}
		if err != nil {
			return
		}
		frag, first = frag[n:], false
	}
	if req.noBody {
		return
	}
	for first := true; first || len(data) > 0; first = false {
		n := min(len(data), maxFrame)
		if err := c.fr.WriteData(id, n == len(data), data[:n]); err != nil {
			return
		}
		data = data[n:]
	}
}

// openWindow lets the server send n more bytes on stream id and on the
// connection.
func (c *abuseH2Conn) openWindow(t *testing.T, id uint32, n uint32) {
	t.Helper()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.fr.WriteWindowUpdate(0, n); err != nil {
		t.Fatal(err)
	}
	if err := c.fr.WriteWindowUpdate(id, n); err != nil {
		t.Fatal(err)
	}
}

// result reads events until stream id ends, the connection ends, or
// within passes.
func (c *abuseH2Conn) result(t *testing.T, id uint32, within time.Duration) abuseH2Result {
	t.Helper()
	var r abuseH2Result
	timer := time.NewTimer(within)
	defer timer.Stop()
	for {
		select {
		case ev := <-c.events:
			switch {
			case ev.err != nil:
				r.closed = true
				return r
			case ev.goAway != nil:
				r.goAway = ev.goAway
			case ev.stream != id:
			case ev.rst != nil:
				r.rst = ev.rst
				return r
			case ev.headers != nil:
				if s, ok := ev.headers[":status"]; ok {
					r.httpStatus = s
				}
				if s, ok := ev.headers["grpc-status"]; ok {
					r.grpcStatus = s
				}
				if s, ok := ev.headers["grpc-status-details-bin"]; ok {
					r.details = s
				}
				if s, ok := ev.headers["grpc-message"]; ok {
					r.grpcMessage = abuseDecodeGRPCMessage(s)
				}
			default:
				r.dataBytes += ev.data
				if ev.data > 0 {
					// Keep the connection window open for what we read;
					// the stream window is the test's to manage.
					c.wmu.Lock()
					_ = c.fr.WriteWindowUpdate(0, uint32(ev.data))
					c.wmu.Unlock()
				}
			}
			if ev.end {
				return r
			}
		case <-timer.C:
			r.timedOut = true
			return r
		}
	}
}

// abuseDecodeGRPCMessage undoes grpc-message's percent-encoding.
func abuseDecodeGRPCMessage(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			var v byte
			if _, err := fmt.Sscanf(s[i+1:i+3], "%02x", &v); err == nil {
				b.WriteByte(v)
				i += 2
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
