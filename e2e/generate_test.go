package e2e

import (
	"bytes"
	"context"
	"image/png"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

func smallRequest(prompt string, seed uint64) *hourglassv1.GenerateRequest {
	return &hourglassv1.GenerateRequest{
		Prompt: prompt, Seed: proto.Uint64(seed),
		Width: proto.Uint32(128), Height: proto.Uint32(96), Steps: proto.Uint32(4),
	}
}

// heavyRequest takes many seconds on the CPU worker.
func heavyRequest() *hourglassv1.GenerateRequest {
	return &hourglassv1.GenerateRequest{
		Prompt: "a very large lighthouse", Seed: proto.Uint64(1),
		Width: proto.Uint32(2048), Height: proto.Uint32(2048), Steps: proto.Uint32(150),
	}
}

func TestGenerateImages(t *testing.T) {
	d := startDaemon(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	generate := func(prompt string, seed uint64) []byte {
		t.Helper()
		resp, err := d.client.Generate(ctx, smallRequest(prompt, seed))
		if err != nil {
			t.Fatalf("Generate(%q, seed %d) = %v; want OK", prompt, seed, err)
		}
		if n := len(resp.GetImages()); n != 1 {
			t.Fatalf("Generate returned %d images; want 1", n)
		}
		img := resp.GetImages()[0]
		if img.GetMimeType() != "image/png" || img.GetSeed() != seed {
			t.Fatalf("image mime %q seed %d; want image/png seed %d", img.GetMimeType(), img.GetSeed(), seed)
		}
		decoded, err := png.Decode(bytes.NewReader(img.GetData()))
		if err != nil {
			t.Fatalf("decode PNG: %v", err)
		}
		if b := decoded.Bounds(); b.Dx() != 128 || b.Dy() != 96 {
			t.Fatalf("PNG is %dx%d; want 128x96", b.Dx(), b.Dy())
		}
		st := resp.GetStats()
		if st.GetStepsDone() != 4 || st.GetStepsTotal() != 4 || st.GetWorkerId() == "" || st.GetSeed() != seed {
			t.Fatalf("stats = %v; want 4 of 4 steps, a worker id and seed %d", st, seed)
		}
		return img.GetData()
	}

	a := generate("a red fox in the snow", 42)
	b := generate("a red fox in the snow", 42)
	if !bytes.Equal(a, b) {
		t.Errorf("same prompt and seed gave different bytes")
	}
	c := generate("a blue whale at night", 42)
	if bytes.Equal(a, c) {
		t.Errorf("different prompts gave identical images")
	}
}

func TestGenerateStreamEvents(t *testing.T) {
	d := startDaemon(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := smallRequest("a lighthouse", 7)
	req.ImageCount = proto.Uint32(2)
	stream, err := d.client.GenerateStream(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	var started, progress, images, done int
	var lastPercent float32
	for {
		ev, err := stream.Recv()
		if err != nil {
			if status.Code(err) != codes.OK && err.Error() != "EOF" {
				t.Fatalf("stream ended with %v", err)
			}
			break
		}
		switch e := ev.GetEvent().(type) {
		case *hourglassv1.GenerateEvent_Started_:
			started++
		case *hourglassv1.GenerateEvent_Progress_:
			progress++
			if e.Progress.GetPercent() < lastPercent {
				t.Errorf("percent went back from %v to %v", lastPercent, e.Progress.GetPercent())
			}
			lastPercent = e.Progress.GetPercent()
		case *hourglassv1.GenerateEvent_Image:
			if e.Image.GetSeed() != 7+uint64(e.Image.GetIndex()) {
				t.Errorf("image %d has seed %d; want %d", e.Image.GetIndex(), e.Image.GetSeed(), 7+e.Image.GetIndex())
			}
			images++
		case *hourglassv1.GenerateEvent_Done_:
			done++
			if e.Done.GetStats().GetStepsDone() != 8 {
				t.Errorf("done stats = %v; want 8 steps", e.Done.GetStats())
			}
		}
	}
	// Progress events may merge when the worker is faster than the
	// stream (a slow reader never blocks the worker); images never do.
	if started != 1 || progress < 1 || progress > 8 || images != 2 || done != 1 || lastPercent != 100 {
		t.Fatalf("events: started %d, progress %d (last %v%%), images %d, done %d; want 1, 1..8 (100%%), 2, 1",
			started, progress, lastPercent, images, done)
	}
}

// noAdmission lets a hopeless job run, so that the deadline ends it mid-run
// rather than admission refusing it up front.
const noAdmission = "admission:\n  enabled: false\n"

func TestCallerDeadlineMidRun(t *testing.T) {
	d := startDaemon(t, noAdmission, "--workers", "1")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := d.client.Generate(ctx, heavyRequest())
	elapsed := time.Since(start)
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("Generate(heavy, 200ms) = %v; want DEADLINE_EXCEEDED", err)
	}
	// The heavy job needs many seconds; an answer this early means the
	// deadline, not the worker, ended the call.
	if elapsed > 2*time.Second {
		t.Fatalf("answered after %v; want about 200ms", elapsed)
	}
	// The only worker stopped cooperatively and takes the next job.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel2()
	if _, err := d.client.Generate(ctx2, smallRequest("after the deadline", 1)); err != nil {
		t.Fatalf("Generate after a deadline-exceeded job = %v; want OK", err)
	}
	if !strings.Contains(d.Logs(), `"outcome":"deadline"`) {
		t.Errorf("server log has no job with outcome deadline:\n%s", d.Logs())
	}
}

func TestServerDefaultDeadline(t *testing.T) {
	d := startDaemon(t, noAdmission+"timeouts:\n  default: 300ms\n", "--workers", "1")
	start := time.Now()
	// No deadline on the call: the server's default must end it.
	_, err := d.client.Generate(context.Background(), heavyRequest())
	elapsed := time.Since(start)
	st := status.Convert(err)
	if st.Code() != codes.DeadlineExceeded {
		t.Fatalf("Generate(heavy, no deadline) = %v; want DEADLINE_EXCEEDED from the server", err)
	}
	if elapsed < 300*time.Millisecond || elapsed > 3*time.Second {
		t.Fatalf("answered after %v; want about 300ms", elapsed)
	}
	var info *errdetails.ErrorInfo
	for _, det := range st.Details() {
		if ei, ok := det.(*errdetails.ErrorInfo); ok {
			info = ei
		}
	}
	if info == nil || info.GetMetadata()["steps_total"] != "150" {
		t.Fatalf("details = %v; want ErrorInfo with steps_total 150", st.Details())
	}
}

func TestInvalidRequests(t *testing.T) {
	d := startDaemon(t, "", "--workers", "1")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tests := []struct {
		name      string
		mutate    func(*hourglassv1.GenerateRequest)
		code      codes.Code
		wantField string
	}{
		{"width 7", func(r *hourglassv1.GenerateRequest) { r.Width = proto.Uint32(7) }, codes.InvalidArgument, "width"},
		{"width not multiple of 8", func(r *hourglassv1.GenerateRequest) { r.Width = proto.Uint32(100) }, codes.InvalidArgument, "width"},
		{"height too big", func(r *hourglassv1.GenerateRequest) { r.Height = proto.Uint32(4096) }, codes.InvalidArgument, "height"},
		{"image_count 0", func(r *hourglassv1.GenerateRequest) { r.ImageCount = proto.Uint32(0) }, codes.InvalidArgument, "image_count"},
		{"image_count 33", func(r *hourglassv1.GenerateRequest) { r.ImageCount = proto.Uint32(33) }, codes.InvalidArgument, "image_count"},
		{"steps 10000", func(r *hourglassv1.GenerateRequest) { r.Steps = proto.Uint32(10000) }, codes.InvalidArgument, "steps"},
		{"prompt over limit", func(r *hourglassv1.GenerateRequest) { r.Prompt = strings.Repeat("a", 4001) }, codes.InvalidArgument, "prompt"},
		{"guidance too high", func(r *hourglassv1.GenerateRequest) { r.GuidanceScale = proto.Float32(31) }, codes.InvalidArgument, "guidance_scale"},
		{"unknown performance", func(r *hourglassv1.GenerateRequest) { r.Performance = 42 }, codes.InvalidArgument, "performance"},
		{"cost beyond ceiling", func(r *hourglassv1.GenerateRequest) {
			r.Width, r.Height, r.Steps, r.ImageCount = proto.Uint32(2048), proto.Uint32(2048), proto.Uint32(150), proto.Uint32(32)
		}, codes.InvalidArgument, "image_count"},
		{"unknown style", func(r *hourglassv1.GenerateRequest) { r.Styles = []string{"No Such Style"} }, codes.InvalidArgument, "styles[0]"},
		{"unknown model", func(r *hourglassv1.GenerateRequest) { r.Model = "sdxl-unknown" }, codes.NotFound, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := smallRequest("an invalid request", 1)
			tt.mutate(req)
			for _, call := range []string{"Generate", "GenerateStream"} {
				err := callOnce(ctx, d, call, req)
				st := status.Convert(err)
				if st.Code() != tt.code {
					t.Fatalf("%s(%s) = %v; want %v", call, tt.name, err, tt.code)
				}
				if tt.wantField == "" {
					continue
				}
				if fields := violatedFields(st); !contains(fields, tt.wantField) {
					t.Fatalf("%s(%s) field violations = %v; want %q named", call, tt.name, fields, tt.wantField)
				}
			}
		})
	}
	resp, err := d.health.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health after invalid requests = %v, %v; want SERVING", resp, err)
	}
	if _, err := d.client.Generate(ctx, smallRequest("still healthy", 3)); err != nil {
		t.Fatalf("Generate after invalid requests = %v; want OK", err)
	}
}

func callOnce(ctx context.Context, d *daemon, call string, req *hourglassv1.GenerateRequest) error {
	if call == "Generate" {
		_, err := d.client.Generate(ctx, req)
		return err
	}
	stream, err := d.client.GenerateStream(ctx, req)
	if err != nil {
		return err
	}
	for {
		if _, err := stream.Recv(); err != nil {
			return err
		}
	}
}

func violatedFields(st *status.Status) []string {
	var fields []string
	for _, det := range st.Details() {
		if br, ok := det.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fields = append(fields, v.GetField())
			}
		}
	}
	return fields
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestStopLeavesNoWorker(t *testing.T) {
	d := startDaemon(t, "", "--workers", "3")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pids := d.workerPIDs(ctx)
	if len(pids) != 3 {
		t.Fatalf("GetServerInfo lists %d worker pids; want 3", len(pids))
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.exited:
	case <-time.After(20 * time.Second):
		t.Fatal("hourglassd did not exit after SIGTERM")
	}
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("hourglassd exit code = %d; want 0\n%s", code, d.Logs())
	}
	// hourglassd reaps its workers before it exits: they must be gone
	// outright, not even zombies.
	for _, pid := range pids {
		if !processGone(pid) {
			t.Errorf("worker pid %d still exists after hourglassd stopped", pid)
		}
	}
}
