package worker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
	workerv1 "github.com/hourglass-dev/hourglass/gen/hourglass/worker/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// previewingGenerator steps like steppingGenerator and sends a preview
// after every job.PreviewEveryNSteps-th step but the last of each image.
func previewingGenerator() generateFunc {
	return func(ctx context.Context, job *workerv1.Job, out Emitter) error {
		every := job.GetPreviewEveryNSteps()
		for i := range job.GetImageCount() {
			for step := uint32(1); step <= job.GetSteps(); step++ {
				if err := out.Progress(step, job.GetSteps(), i); err != nil {
					return err
				}
				if every == 0 || step%every != 0 || step == job.GetSteps() {
					continue
				}
				err := out.Preview(&hourglassv1.Preview{
					Data: fmt.Appendf(nil, "preview %d/%d", i, step), MimeType: "image/jpeg",
					ImageIndex: i, Step: step, Width: 32, Height: 24,
				})
				if err != nil {
					return err
				}
			}
			if err := out.Image(&hourglassv1.Image{Data: []byte{byte(i)}, MimeType: "image/png", Index: i}); err != nil {
				return err
			}
		}
		return nil
	}
}

func TestRunStreamsPreviews(t *testing.T) {
	w := startWorker(t, previewingGenerator())
	job := validJob("job-previews")
	job.Steps = 5
	job.PreviewEveryNSteps = 2
	res := w.run(t.Context(), job)
	if res.err != nil {
		t.Fatalf("Run: %v", res.err)
	}
	// Previews follow the progress of their step, in the order sent.
	if want := "ppvppvpi" + "ppvppvpi"; res.order != want {
		t.Errorf("events %q, want %q", res.order, want)
	}
	var want []*hourglassv1.Preview
	for i := range uint32(2) {
		for _, step := range []uint32{2, 4} {
			want = append(want, &hourglassv1.Preview{
				Data: fmt.Appendf(nil, "preview %d/%d", i, step), MimeType: "image/jpeg",
				ImageIndex: i, Step: step, Width: 32, Height: 24,
			})
		}
	}
	if len(res.previews) != len(want) {
		t.Fatalf("got %d previews, want %d", len(res.previews), len(want))
	}
	for i := range want {
		if !proto.Equal(res.previews[i], want[i]) {
			t.Errorf("preview %d = %v, want %v", i, res.previews[i], want[i])
		}
	}
	w.waitIdle(t)
	if logs := w.logs.String(); !strings.Contains(logs, `"previews_sent":4`) || !strings.Contains(logs, `"preview_every_n_steps":2`) {
		t.Errorf("log lacks the preview counts:\n%s", logs)
	}

	// Previews are optional: the same generator, not asked for any, sends
	// none and the job is otherwise the same.
	job.PreviewEveryNSteps = 0
	res = w.run(t.Context(), job)
	if res.err != nil || len(res.previews) != 0 || res.order != "pppppi"+"pppppi" {
		t.Errorf("without previews: err %v, events %q", res.err, res.order)
	}
}

// Preview has the semantics of Progress: it reports the job's cancellation
// and it refuses to write once Generate has returned.
func TestPreviewCancellationAndClosed(t *testing.T) {
	leaked := make(chan Emitter, 1)
	problems := make(chan string, 2)
	w := startWorker(t, generateFunc(func(ctx context.Context, job *workerv1.Job, out Emitter) error {
		leaked <- out
		if err := out.Preview(nil); err == nil {
			problems <- "a nil preview was accepted"
		}
		<-ctx.Done()
		err := out.Preview(&hourglassv1.Preview{MimeType: "image/jpeg", Step: 1})
		if !errors.Is(err, context.Canceled) {
			problems <- fmt.Sprintf("Preview after cancel: %v, want context.Canceled", err)
		}
		return err
	}))

	ctx, cancel := context.WithCancel(t.Context())
	res := make(chan runResult, 1)
	go func() { res <- w.run(ctx, validJob("job-preview-cancel")) }()
	out := <-leaked
	cancel()
	if r := <-res; status.Code(r.err) != codes.Canceled || len(r.previews) != 0 {
		t.Errorf("Run: %v with %d previews, want Canceled and none", r.err, len(r.previews))
	}
	w.waitIdle(t)
	close(problems)
	for p := range problems {
		t.Error(p)
	}
	// A goroutine the generator left behind cannot write into the stream of
	// a later job.
	if err := out.Preview(&hourglassv1.Preview{MimeType: "image/jpeg", Step: 1}); err == nil {
		t.Error("Preview after Generate returned succeeded")
	}
}

// A closed emitter refuses previews even while its context is live, as it
// does progress and images.
func TestClosedEmitterRefusesPreview(t *testing.T) {
	e := &emitter{ctx: t.Context()} // no stream: a send would panic
	e.close()
	if err := e.Preview(&hourglassv1.Preview{MimeType: "image/jpeg", Step: 1}); !errors.Is(err, errEmitterClosed) {
		t.Errorf("Preview on a closed emitter: %v, want errEmitterClosed", err)
	}
	if n := e.previewCount(); n != 0 {
		t.Errorf("previewCount %d, want 0", n)
	}
}
