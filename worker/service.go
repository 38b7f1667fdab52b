package worker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"runtime/debug"
	"sync"
	"time"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
	workerv1 "github.com/hourglass-dev/hourglass/gen/hourglass/worker/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Job limits a worker enforces on its own. They mirror the public API's
// validation so that a worker reached by a buggy executor refuses a job
// instead of allocating gigabytes for it.
const (
	maxSide       = 2048
	maxImageCount = 32
	maxSteps      = 150
)

// service implements workerv1.WorkerServiceServer around a Generator.
type service struct {
	workerv1.UnimplementedWorkerServiceServer

	gen Generator
	log *slog.Logger

	mu    sync.Mutex
	busy  bool
	jobID string
}

func newService(gen Generator, log *slog.Logger) *service {
	return &service{gen: gen, log: log}
}

// Describe reports the generator's description and whether a job runs.
func (s *service) Describe(context.Context, *workerv1.DescribeRequest) (resp *workerv1.DescribeResponse, err error) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("describe panicked", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			resp, err = nil, status.Error(codes.Internal, "worker: describe panicked")
		}
	}()
	d := s.gen.Describe()
	resp = &workerv1.DescribeResponse{
		Styles:           d.Styles,
		Device:           d.Device,
		MemoryTotalBytes: d.MemoryTotalBytes,
		MemoryUsedBytes:  d.MemoryUsedBytes,
		Version:          d.Version,
	}
	for _, m := range d.Models {
		resp.Models = append(resp.Models, &workerv1.Model{Name: m.Name, Default: m.Default})
	}
	s.mu.Lock()
	resp.Busy, resp.JobId = s.busy, s.jobID
	s.mu.Unlock()
	return resp, nil
}

// Run executes one job and streams its events.
func (s *service) Run(req *workerv1.RunRequest, stream grpc.ServerStreamingServer[workerv1.RunResponse]) error {
	job := req.GetJob()
	if err := validateJob(job); err != nil {
		s.log.Warn("job rejected", "job_id", job.GetId(), "error", err.Error())
		return err
	}
	// A call cancelled before it arrived must not take the worker: the
	// executor may already have seen it idle and sent the next job.
	if err := stream.Context().Err(); err != nil {
		return status.FromContextError(err).Err()
	}
	if err := s.acquire(job.GetId()); err != nil {
		s.log.Warn("job rejected", "job_id", job.GetId(), "error", err.Error())
		return err
	}

	ctx := stream.Context()
	// The job's deadline is the call's, so this changes nothing when the
	// executor sets both; when a buggy executor forgets the call deadline,
	// the job still stops on time.
	if d := job.GetDeadline(); d != nil && d.IsValid() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, d.AsTime())
		defer cancel()
	}
	log := s.log.With("job_id", job.GetId())
	log.Info("job started",
		"model", job.GetModel(),
		"steps", job.GetSteps(),
		"width", job.GetWidth(),
		"height", job.GetHeight(),
		"image_count", job.GetImageCount(),
		"styles", len(job.GetStyles()),
		"preview_every_n_steps", job.GetPreviewEveryNSteps(),
		// Never the prompt text: its length and a short hash are enough to
		// correlate a job with the caller's own records.
		"prompt_len", len(job.GetPrompt()),
		"prompt_sha256", shortHash(job.GetPrompt()),
		"negative_prompt_len", len(job.GetNegativePrompt()),
		"negative_prompt_sha256", shortHash(job.GetNegativePrompt()),
	)

	start := time.Now()
	out := &emitter{ctx: ctx, stream: stream}
	genErr := s.generate(ctx, job, out, log)
	out.close()
	// Idle as soon as Generate has returned and before the stream ends: the
	// executor polls Describe after cancelling a job and hands the worker
	// the next job the moment it reads busy=false, so busy must never read
	// false while Generate might still be touching the device.
	s.release()

	st := toStatus(genErr)
	attrs := []any{
		"duration", time.Since(start),
		"steps_reported", out.progressCount(),
		"images_sent", out.imageCount(),
		"previews_sent", out.previewCount(),
		"outcome", status.Code(st).String(),
	}
	switch {
	case st == nil:
		log.Info("job finished", attrs...)
	case errors.Is(genErr, context.Canceled), errors.Is(genErr, context.DeadlineExceeded):
		log.Info("job stopped", attrs...)
	default:
		log.Error("job failed", append(attrs, "error", genErr.Error())...)
	}
	return st
}

// generate calls the Generator and turns a panic into errPanic, so that a
// bug in one job leaves the worker alive and idle for the next one.
// Panics in goroutines the generator starts itself cannot be caught here;
// they crash the process, which the executor treats like any other crash.
func (s *service) generate(ctx context.Context, job *workerv1.Job, out Emitter, log *slog.Logger) (err error) {
	defer func() {
		if r := recover(); r != nil {
			log.Error("generator panicked", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			err = errPanic
		}
	}()
	return s.gen.Generate(ctx, job, out)
}

func (s *service) acquire(jobID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.busy {
		return status.Errorf(codes.FailedPrecondition, "worker busy with job %q", s.jobID)
	}
	s.busy, s.jobID = true, jobID
	return nil
}

func (s *service) release() {
	s.mu.Lock()
	s.busy, s.jobID = false, ""
	s.mu.Unlock()
}

// validateJob checks the structural limits of a job. Model and style names
// are the generator's business: only it knows what it offers.
func validateJob(job *workerv1.Job) error {
	if job == nil {
		return invalidArgument("job", "is required")
	}
	var violations []*errdetails.BadRequest_FieldViolation
	add := func(field, format string, args ...any) {
		violations = append(violations, &errdetails.BadRequest_FieldViolation{
			Field:       "job." + field,
			Description: fmt.Sprintf(format, args...),
		})
	}
	for _, side := range []struct {
		name string
		v    uint32
	}{{"width", job.GetWidth()}, {"height", job.GetHeight()}} {
		switch {
		case side.v == 0:
			add(side.name, "must be set")
		case side.v%8 != 0:
			add(side.name, "must be a multiple of 8, got %d", side.v)
		case side.v > maxSide:
			add(side.name, "must be at most %d, got %d", maxSide, side.v)
		}
	}
	if n := job.GetSteps(); n == 0 || n > maxSteps {
		add("steps", "must be in 1..%d, got %d", maxSteps, n)
	}
	if n := job.GetImageCount(); n == 0 || n > maxImageCount {
		add("image_count", "must be in 1..%d, got %d", maxImageCount, n)
	}
	if g := float64(job.GetGuidanceScale()); math.IsNaN(g) || math.IsInf(g, 0) {
		add("guidance_scale", "must be finite")
	}
	if v := float64(job.GetSharpness()); math.IsNaN(v) || math.IsInf(v, 0) {
		add("sharpness", "must be finite")
	}
	if len(violations) == 0 {
		return nil
	}
	msg := "invalid job: " + violations[0].Field + " " + violations[0].Description
	if len(violations) > 1 {
		msg += fmt.Sprintf(" (and %d more)", len(violations)-1)
	}
	return statusWithDetails(codes.InvalidArgument, msg, &errdetails.BadRequest{FieldViolations: violations})
}

func invalidArgument(field, reason string) error {
	return statusWithDetails(codes.InvalidArgument, "invalid job: "+field+" "+reason,
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: reason}}})
}

func statusWithDetails(code codes.Code, msg string, detail *errdetails.BadRequest) error {
	st := status.New(code, msg)
	if withDetails, err := st.WithDetails(detail); err == nil {
		st = withDetails
	}
	return st.Err()
}

// shortHash is the first 12 hex digits of the text's SHA-256: enough to tell
// prompts apart in logs, too short to be a useful lookup key.
func shortHash(text string) string {
	sum := sha256.Sum256([]byte(text))
	return hex.EncodeToString(sum[:6])
}

// errEmitterClosed is returned by an Emitter used after Generate returned.
var errEmitterClosed = errors.New("worker: emitter used after Generate returned")

// emitter sends a job's events on its Run stream.
type emitter struct {
	ctx    context.Context
	stream grpc.ServerStreamingServer[workerv1.RunResponse]

	mu       sync.Mutex // serialises Send, which grpc-go does not allow concurrently
	closed   bool
	progress int
	images   int
	previews int
}

func (e *emitter) Progress(step, totalSteps, imageIndex uint32) error {
	return e.send(&workerv1.RunResponse{Event: &workerv1.RunResponse_Progress{Progress: &workerv1.Progress{
		Step:       step,
		TotalSteps: totalSteps,
		ImageIndex: imageIndex,
	}}}, &e.progress)
}

func (e *emitter) Image(img *hourglassv1.Image) error {
	if img == nil {
		return errors.New("worker: nil image")
	}
	return e.send(&workerv1.RunResponse{Event: &workerv1.RunResponse_Image{Image: img}}, &e.images)
}

func (e *emitter) Preview(p *hourglassv1.Preview) error {
	if p == nil {
		return errors.New("worker: nil preview")
	}
	return e.send(&workerv1.RunResponse{Event: &workerv1.RunResponse_Preview{Preview: p}}, &e.previews)
}

func (e *emitter) send(resp *workerv1.RunResponse, counter *int) error {
	if err := e.ctx.Err(); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return errEmitterClosed
	}
	if err := e.stream.Send(resp); err != nil {
		// A send usually fails because the call ended; report that as the
		// context error so the generator's return maps to the right code.
		if cerr := e.ctx.Err(); cerr != nil {
			return cerr
		}
		return fmt.Errorf("worker: send event: %w", err)
	}
	*counter++
	// Check again after the send: the call may have been cancelled while
	// the step ran, and the generator must stop now, not a step later.
	return e.ctx.Err()
}

func (e *emitter) close() {
	e.mu.Lock()
	e.closed = true
	e.mu.Unlock()
}

func (e *emitter) progressCount() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.progress
}

func (e *emitter) imageCount() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.images
}

func (e *emitter) previewCount() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.previews
}
