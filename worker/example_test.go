package worker_test

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
	workerv1 "github.com/hourglass-dev/hourglass/gen/hourglass/worker/v1"
	"github.com/hourglass-dev/hourglass/worker"
)

// blank draws nothing, slowly: the smallest useful Generator.
type blank struct{}

func (blank) Describe() worker.Description {
	return worker.Description{
		Models:  []worker.Model{{Name: "blank", Default: true}},
		Device:  "cpu",
		Version: "blank/1",
	}
}

func (blank) Generate(ctx context.Context, job *workerv1.Job, out worker.Emitter) error {
	for i := range job.GetImageCount() {
		for step := uint32(1); step <= job.GetSteps(); step++ {
			// ... one step of real work ...
			if err := out.Progress(step, job.GetSteps(), i); err != nil {
				return err // cancelled or past the deadline: stop now
			}
		}
		if err := out.Image(&hourglassv1.Image{MimeType: "image/png", Seed: job.GetSeed() + uint64(i), Index: i}); err != nil {
			return err
		}
	}
	return nil
}

func ExampleServe() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	err := worker.Serve(ctx, worker.Options{
		SocketPath: os.Getenv("HOURGLASS_WORKER_SOCKET"),
		Generator:  blank{},
	})
	if err != nil {
		os.Exit(1)
	}
}
