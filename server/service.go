package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hourglass-dev/hourglass/executor"
	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
	workerv1 "github.com/hourglass-dev/hourglass/gen/hourglass/worker/v1"
	"github.com/hourglass-dev/hourglass/internal/config"
	"github.com/hourglass-dev/hourglass/internal/gpu"
)

// Version is the server's version, reported by GetServerInfo.
const Version = "0.1.0-dev"

// FaultMetadataKey selects a test fault for one call; honoured only when the
// server runs with --unsafe-fault-injection.
const FaultMetadataKey = "hourglass-fault"

// FaultServerPanic, as the hourglass-fault value, makes the handler itself
// panic (tests of the recovery interceptor); every other value goes to the
// worker.
const FaultServerPanic = "server-panic"

// generateService implements hourglass.v1.GenerateService on the executor.
type generateService struct {
	hourglassv1.UnimplementedGenerateServiceServer

	cfg            config.Config
	log            *slog.Logger
	faultInjection bool
	// exec is nil while the workers start; calls then get UNAVAILABLE.
	exec atomic.Pointer[executor.Executor]
	// jobs counts finished jobs by gRPC status code.
	jobs metric.Int64Counter
	// gpus reads GPU memory; empty without NVML.
	gpus *gpu.Monitor
}

func (s *generateService) executor() (*executor.Executor, error) {
	if e := s.exec.Load(); e != nil {
		return e, nil
	}
	return nil, unavailable(ReasonDraining, "workers are starting; retry shortly")
}

// prepare resolves the request into a worker job and charges the caller's
// tenant the job's estimated worker time.
func (s *generateService) prepare(ctx context.Context, req *hourglassv1.GenerateRequest) (*executor.Executor, *workerv1.Job, error) {
	e, err := s.executor()
	if err != nil {
		return nil, nil, err
	}
	job, err := resolveJob(req, e.Catalog(), s.cfg.Limits.MaxCostPixelSteps)
	if err != nil {
		return nil, nil, err
	}
	job.Id = newJobID()
	if d, ok := ctx.Deadline(); ok {
		job.Deadline = timestamppb.New(d)
	}
	if s.faultInjection {
		if v := metadata.ValueFromIncomingContext(ctx, FaultMetadataKey); len(v) > 0 {
			if v[0] == FaultServerPanic {
				panic("injected by " + FaultMetadataKey + ": " + FaultServerPanic)
			}
			job.Fault = v[0]
		}
	}
	plen, phash := promptDigest(job.GetPrompt())
	AddLogFields(ctx, slog.String("job", job.GetId()), slog.String("model", job.GetModel()),
		slog.Int("width", int(job.GetWidth())), slog.Int("height", int(job.GetHeight())),
		slog.Int("steps", int(job.GetSteps())), slog.Int("images", int(job.GetImageCount())),
		// The prompt is user content and may be sensitive: its length and
		// a short hash only, enough to correlate with the caller's records.
		slog.Int("prompt_len", plen), slog.String("prompt_sha256", phash))
	if err := chargeQuota(ctx, e.Estimate(job)); err != nil {
		return nil, nil, err
	}
	return e, job, nil
}

// run runs the job, settles the tenant's quota with the real worker time,
// and returns the caller's status on failure.
func (s *generateService) run(ctx context.Context, e *executor.Executor, job *workerv1.Job, onEvent func(executor.Event)) (*executor.Result, error) {
	res, err := e.Run(ctx, job, TenantFromContext(ctx), onEvent)
	settleQuota(ctx, executor.RunTime(res, err))
	if res != nil {
		AddLogFields(ctx, slog.String("worker", res.WorkerID), slog.Duration("queue_wait", res.QueueWait),
			slog.Duration("run_time", res.RunTime))
	}
	if err != nil {
		AddLogFields(ctx, slog.String("outcome", executor.KindOf(err).String()))
		return nil, s.jobStatus(ctx, err)
	}
	s.countJob(ctx, nil)
	return res, nil
}

func (s *generateService) Generate(ctx context.Context, req *hourglassv1.GenerateRequest) (*hourglassv1.GenerateResponse, error) {
	e, job, err := s.prepare(ctx, req)
	if err != nil {
		return nil, err
	}
	res, err := s.run(ctx, e, job, nil)
	if err != nil {
		return nil, err
	}
	return &hourglassv1.GenerateResponse{Images: res.Images, Stats: statsOf(job, res)}, nil
}

func (s *generateService) GenerateStream(req *hourglassv1.GenerateRequest, stream hourglassv1.GenerateService_GenerateStreamServer) error {
	ctx := stream.Context()
	e, job, err := s.prepare(ctx, req)
	if err != nil {
		return err
	}
	perImage := float32(job.GetSteps())
	total := perImage * float32(job.GetImageCount())
	// A failed Send means the caller is gone; its context ends at the
	// same moment and Run returns, so the errors can be dropped here.
	res, err := s.run(ctx, e, job, func(ev executor.Event) {
		var out hourglassv1.GenerateEvent
		switch ev.Kind {
		case executor.EventQueued:
			out.Event = &hourglassv1.GenerateEvent_Queued_{Queued: &hourglassv1.GenerateEvent_Queued{Position: uint32(ev.Position)}}
		case executor.EventStarted:
			out.Event = &hourglassv1.GenerateEvent_Started_{Started: &hourglassv1.GenerateEvent_Started{WorkerId: ev.WorkerID, Seed: job.GetSeed()}}
		case executor.EventProgress:
			p := ev.Progress
			done := float32(p.GetImageIndex())*perImage + float32(p.GetStep())
			out.Event = &hourglassv1.GenerateEvent_Progress_{Progress: &hourglassv1.GenerateEvent_Progress{
				Step: p.GetStep(), TotalSteps: p.GetTotalSteps(), ImageIndex: p.GetImageIndex(), Percent: min(100, 100*done/total)}}
		case executor.EventImage:
			out.Event = &hourglassv1.GenerateEvent_Image{Image: ev.Image}
		case executor.EventPreview:
			out.Event = &hourglassv1.GenerateEvent_Preview{Preview: ev.Preview}
		default:
			return
		}
		_ = stream.Send(&out)
	})
	if err != nil {
		return err
	}
	if err := stream.Send(&hourglassv1.GenerateEvent{Event: &hourglassv1.GenerateEvent_Done_{
		Done: &hourglassv1.GenerateEvent_Done{Stats: statsOf(job, res)}}}); err != nil {
		return sendFailed(ctx, err)
	}
	return nil
}

// sendFailed is the status of a stream whose last event could not be sent:
// the caller stopped reading and the deadline ended the call (judged by the
// clock, as the executor does), or the caller went away.
func sendFailed(ctx context.Context, err error) error {
	if d, ok := ctx.Deadline(); ok && time.Until(d) < executor.DeadlineSlack {
		return status.Error(codes.DeadlineExceeded, "deadline passed before the caller read the results")
	}
	if ctx.Err() != nil {
		return status.Error(codes.Canceled, "the caller went away before reading the results")
	}
	return err
}

func (s *generateService) GetServerInfo(ctx context.Context, _ *hourglassv1.GetServerInfoRequest) (*hourglassv1.GetServerInfoResponse, error) {
	resp := &hourglassv1.GetServerInfoResponse{
		Version: Version,
		Limits: &hourglassv1.Limits{
			MaxCostPixelSteps: s.cfg.Limits.MaxCostPixelSteps,
			DefaultTimeout:    durationpb.New(s.cfg.Timeouts.Default),
			MaxTimeout:        durationpb.New(s.cfg.Timeouts.Max),
			MaxQueue:          uint32(s.cfg.Queue.Max),
		},
	}
	e := s.exec.Load()
	if e == nil {
		return resp, nil
	}
	cat := e.Catalog()
	for _, m := range cat.Models {
		resp.Models = append(resp.Models, &hourglassv1.Model{Name: m, Default: m == cat.DefaultModel})
	}
	resp.Styles = cat.Styles
	st := e.Status()
	gpus := s.gpus.Snapshot()
	resp.QueueDepth = uint32(st.QueueDepth)
	for _, w := range st.Workers {
		resp.Workers = append(resp.Workers, &hourglassv1.WorkerInfo{
			Id: w.ID, State: workerState(w.State), Pid: int32(w.PID), Device: w.Device,
			JobsDone: w.JobsDone, Restarts: w.Restarts, Spare: w.Spare,
			Gpu: w.GPU, GpuMemoryUsedBytes: gpus.ProcessMemory[w.PID],
		})
	}
	for _, d := range gpus.Devices {
		resp.Gpus = append(resp.Gpus, &hourglassv1.Gpu{Index: uint32(d.Index), Name: d.Name,
			MemoryTotalBytes: d.MemoryTotal, MemoryUsedBytes: d.MemoryUsed})
	}
	return resp, nil
}

// jobStatus is the caller's status for a failed job. A job cancelled
// because the server's drain ran out of time is UNAVAILABLE, not CANCELLED:
// the caller did nothing wrong and may retry on another replica.
func (s *generateService) jobStatus(ctx context.Context, err error) error {
	st := statusFromJob(s.log, err)
	if errors.Is(context.Cause(ctx), errDraining) {
		st = unavailable(ReasonDraining, "server is draining: the job was stopped; retry on another replica")
	}
	s.countJob(ctx, st)
	return st
}

// countJob records a job's outcome by its gRPC code.
func (s *generateService) countJob(ctx context.Context, err error) {
	s.jobs.Add(context.WithoutCancel(ctx), 1, metric.WithAttributes(attribute.String("code", status.Code(err).String())))
}

func workerState(s executor.State) hourglassv1.WorkerState {
	switch s {
	case executor.StateStarting:
		return hourglassv1.WorkerState_WORKER_STATE_STARTING
	case executor.StateReady:
		return hourglassv1.WorkerState_WORKER_STATE_READY
	case executor.StateBusy:
		return hourglassv1.WorkerState_WORKER_STATE_BUSY
	case executor.StateCancelling:
		return hourglassv1.WorkerState_WORKER_STATE_CANCELLING
	case executor.StateBackoff:
		return hourglassv1.WorkerState_WORKER_STATE_BACKOFF
	case executor.StateStopped:
		return hourglassv1.WorkerState_WORKER_STATE_STOPPED
	}
	return hourglassv1.WorkerState_WORKER_STATE_UNSPECIFIED
}

func statsOf(job *workerv1.Job, res *executor.Result) *hourglassv1.GenerateStats {
	return &hourglassv1.GenerateStats{
		QueueWait:  durationpb.New(res.QueueWait),
		RunTime:    durationpb.New(res.RunTime),
		StepsDone:  res.StepsDone,
		StepsTotal: res.StepsTotal,
		WorkerId:   res.WorkerID,
		Seed:       job.GetSeed(),
		Model:      job.GetModel(),
	}
}

func newJobID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b[:])
}
