package executor

import (
	"testing"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
	workerv1 "github.com/hourglass-dev/hourglass/gen/hourglass/worker/v1"
)

// FuzzWorkerEvents drives the job's handling of worker events with an
// arbitrary sequence (each byte: an event kind, or a read by the caller),
// including empty events a buggy worker could send. Whatever the order:
// nothing panics, every image reaches the caller once and in order, the
// step count matches the progress events, progress the caller sees never
// goes back, and the last progress posted is delivered.
func FuzzWorkerEvents(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 4, 0, 2, 0, 4, 1})
	f.Add([]byte{4, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4})
	f.Add([]byte{3, 5, 6, 7, 1, 1, 2, 2, 4})
	f.Fuzz(func(t *testing.T, ops []byte) {
		j := &job{done: make(chan struct{}), notify: make(chan struct{}, 1)}
		var images []*hourglassv1.Image
		var delivered []Event
		posted, postedImages := 0, 0
		lastStep := uint32(0)
		for _, op := range ops {
			var msg *workerv1.RunResponse
			switch op % 8 {
			case 0:
				posted++
				msg = &workerv1.RunResponse{Event: &workerv1.RunResponse_Progress{Progress: &workerv1.Progress{Step: uint32(posted)}}}
				lastStep = uint32(posted)
			case 1:
				msg = &workerv1.RunResponse{Event: &workerv1.RunResponse_Image{Image: &hourglassv1.Image{Index: uint32(postedImages)}}}
				postedImages++
			case 2:
				msg = &workerv1.RunResponse{Event: &workerv1.RunResponse_Preview{Preview: &hourglassv1.Preview{Step: uint32(posted)}}}
			case 3:
				msg = &workerv1.RunResponse{}
			case 4:
				delivered = append(delivered, j.take()...)
				continue
			case 5:
				msg = &workerv1.RunResponse{Event: &workerv1.RunResponse_Image{}}
			case 6:
				msg = &workerv1.RunResponse{Event: &workerv1.RunResponse_Progress{}}
			case 7:
				msg = nil
			}
			images = j.onWorkerEvent(msg, images)
		}
		delivered = append(delivered, j.take()...)

		if len(images) != postedImages || int(j.stepsDone.Load()) != posted {
			t.Fatalf("collected %d images, %d steps; want %d and %d", len(images), j.stepsDone.Load(), postedImages, posted)
		}
		next, prevStep, finalStep := uint32(0), uint32(0), uint32(0)
		for _, ev := range delivered {
			switch ev.Kind {
			case EventImage:
				if ev.Image.GetIndex() != next {
					t.Fatalf("image %d delivered; want %d next", ev.Image.GetIndex(), next)
				}
				next++
			case EventProgress:
				if ev.Progress.GetStep() <= prevStep {
					t.Fatalf("progress went from step %d to %d", prevStep, ev.Progress.GetStep())
				}
				prevStep, finalStep = ev.Progress.GetStep(), ev.Progress.GetStep()
			}
		}
		if int(next) != postedImages || finalStep != lastStep {
			t.Fatalf("delivered %d images and last step %d; want %d and %d", next, finalStep, postedImages, lastStep)
		}
	})
}
