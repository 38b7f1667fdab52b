package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hourglass-dev/hourglass/executor"
	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
	workerv1 "github.com/hourglass-dev/hourglass/gen/hourglass/worker/v1"
	"github.com/hourglass-dev/hourglass/internal/config"
)

// Version is the server's version, reported by GetServerInfo.
const Version = "0.1.0-dev"

// FaultMetadataKey selects a test fault for one call; honoured only when the
// server runs with --unsafe-fault-injection.
const FaultMetadataKey = "hourglass-fault"

// generateService implements hourglass.v1.GenerateService on the executor.
type generateService struct {
	hourglassv1.UnimplementedGenerateServiceServer

	cfg            config.Config
	log            *slog.Logger
	faultInjection bool
	// exec is nil while the workers start; calls then get UNAVAILABLE.
	exec atomic.Pointer[executor.Executor]
}

func (s *generateService) executor() (*executor.Executor, error) {
	if e := s.exec.Load(); e != nil {
		return e, nil
	}
	return nil, unavailable(ReasonDraining, "workers are starting; retry shortly")
}

// prepare resolves the request into a worker job.
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
			job.Fault = v[0]
		}
	}
	return e, job, nil
}

func (s *generateService) Generate(ctx context.Context, req *hourglassv1.GenerateRequest) (*hourglassv1.GenerateResponse, error) {
	e, job, err := s.prepare(ctx, req)
	if err != nil {
		return nil, err
	}
	res, err := e.Run(ctx, job, nil)
	s.logJob(ctx, job, res, err)
	if err != nil {
		return nil, statusFromJob(s.log, err)
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
	res, err := e.Run(ctx, job, func(ev executor.Event) {
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
		default:
			return
		}
		_ = stream.Send(&out)
	})
	s.logJob(ctx, job, res, err)
	if err != nil {
		return statusFromJob(s.log, err)
	}
	return stream.Send(&hourglassv1.GenerateEvent{Event: &hourglassv1.GenerateEvent_Done_{
		Done: &hourglassv1.GenerateEvent_Done{Stats: statsOf(job, res)}}})
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
	resp.QueueDepth = uint32(st.QueueDepth)
	for _, w := range st.Workers {
		resp.Workers = append(resp.Workers, &hourglassv1.WorkerInfo{
			Id: w.ID, State: workerState(w.State), Pid: int32(w.PID), Device: w.Device,
			JobsDone: w.JobsDone, Restarts: w.Restarts, Spare: w.Spare,
		})
	}
	return resp, nil
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

// logJob writes one line per job. The prompt appears only as length and
// hash: prompts are user content and may be sensitive.
func (s *generateService) logJob(ctx context.Context, job *workerv1.Job, res *executor.Result, err error) {
	plen, phash := promptDigest(job.GetPrompt())
	attrs := []any{
		"job", job.GetId(), "model", job.GetModel(), "width", job.GetWidth(), "height", job.GetHeight(),
		"steps", job.GetSteps(), "images", job.GetImageCount(), "prompt_len", plen, "prompt_sha256", phash,
	}
	if d, ok := ctx.Deadline(); ok {
		attrs = append(attrs, "deadline", d.Format(time.RFC3339Nano))
	}
	if res != nil {
		attrs = append(attrs, "worker", res.WorkerID, "queue_wait", res.QueueWait, "run_time", res.RunTime)
	}
	if err != nil {
		attrs = append(attrs, "outcome", executor.KindOf(err).String(), "err", err)
		s.log.Info("job failed", attrs...)
		return
	}
	s.log.Info("job done", attrs...)
}

func newJobID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b[:])
}
