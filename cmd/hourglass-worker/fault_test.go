package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
	workerv1 "github.com/hourglass-dev/hourglass/gen/hourglass/worker/v1"
	"github.com/hourglass-dev/hourglass/worker"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func TestParseFaults(t *testing.T) {
	tests := []struct {
		in      string
		want    faults
		wantErr bool
	}{
		{in: "hang", want: faults{hang: true}},
		{in: "ignore-cancel", want: faults{ignoreCancel: true}},
		{in: "crash", want: faults{crash: true}},
		{in: "oom", want: faults{oom: true}},
		{in: "replay", want: faults{replay: true}},
		{in: "slow=200ms", want: faults{slow: 200 * time.Millisecond}},
		{in: "slow=50ms, ignore-cancel", want: faults{slow: 50 * time.Millisecond, ignoreCancel: true}},
		{in: "slow", wantErr: true},
		{in: "slow=", wantErr: true},
		{in: "slow=-1s", wantErr: true},
		{in: "slow=fast", wantErr: true},
		{in: "explode", wantErr: true},
		{in: "hang,", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseFaults(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseFaults(%q) error %v, wantErr %v", tt.in, err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("parseFaults(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

// stepper is a Generator that runs job.steps steps and relies on Progress
// alone to learn of cancellation, so the faults' own cancel checks show.
type stepper struct{}

func (stepper) Describe() worker.Description { return worker.Description{Version: "stepper"} }

func (stepper) Generate(_ context.Context, job *workerv1.Job, out worker.Emitter) error {
	for step := uint32(1); step <= job.GetSteps(); step++ {
		if err := out.Progress(step, job.GetSteps(), 0); err != nil {
			return err
		}
	}
	return out.Image(&hourglassv1.Image{})
}

// ctxEmitter behaves like the library's emitter: it fails once ctx is done.
// cancelAt cancels the job's context when that step is reported.
type ctxEmitter struct {
	ctx      context.Context
	cancel   context.CancelFunc
	cancelAt int

	mu     sync.Mutex
	steps  int
	images int
}

func (e *ctxEmitter) Progress(uint32, uint32, uint32) error {
	if err := e.ctx.Err(); err != nil {
		return err
	}
	e.mu.Lock()
	e.steps++
	n := e.steps
	e.mu.Unlock()
	if n == e.cancelAt {
		e.cancel()
	}
	return e.ctx.Err()
}

func (e *ctxEmitter) Image(*hourglassv1.Image) error {
	if err := e.ctx.Err(); err != nil {
		return err
	}
	e.mu.Lock()
	e.images++
	e.mu.Unlock()
	return nil
}

func (e *ctxEmitter) Preview(*hourglassv1.Preview) error { return e.ctx.Err() }

func TestFaultGenerator(t *testing.T) {
	tests := []struct {
		name      string
		fault     string
		enabled   bool
		cancelAt  int
		wantErr   error
		wantSteps int
		wantExit  int
		wantHang  bool
		invalid   bool
	}{
		{name: "no fault", wantSteps: 5},
		{name: "disabled ignores fault", fault: "crash", wantSteps: 5},
		{name: "oom after first step", fault: "oom", enabled: true, wantErr: worker.ErrOutOfMemory, wantSteps: 1},
		{name: "crash after first step", fault: "crash", enabled: true, wantExit: 3, wantSteps: 1},
		{name: "hang after first step", fault: "hang", enabled: true, wantHang: true, wantSteps: 1},
		{name: "ignore-cancel runs every step", fault: "ignore-cancel", enabled: true, cancelAt: 2, wantErr: context.Canceled, wantSteps: 2},
		{name: "slow completes", fault: "slow=1ms", enabled: true, wantSteps: 5},
		{name: "slow still honours cancel", fault: "slow=1h", enabled: true, cancelAt: -1, wantErr: context.Canceled},
		{name: "unknown fault", fault: "explode", enabled: true, invalid: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs bytes.Buffer
			g := newFaultGenerator(stepper{}, tt.enabled, slog.New(slog.NewJSONHandler(&logs, nil)))
			exitCode := 0
			g.exit = func(code int) { exitCode = code }
			hung := false
			g.hang = func() { hung = true }

			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			out := &ctxEmitter{ctx: ctx, cancel: cancel, cancelAt: tt.cancelAt}
			if tt.cancelAt == -1 {
				cancel() // cancelled before the first slow step finishes
			}
			job := &workerv1.Job{Id: "job-f", Steps: 5, Fault: tt.fault}
			start := time.Now()
			err := g.Generate(ctx, job, out)

			switch {
			case tt.invalid:
				var invalid *worker.InvalidJobError
				if !errors.As(err, &invalid) || invalid.Field != "fault" {
					t.Fatalf("Generate: %v, want an InvalidJobError on fault", err)
				}
				return
			case tt.wantExit != 0 || tt.wantHang:
				if err == nil {
					t.Error("Generate returned nil after a crash or hang")
				}
			case !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil):
				t.Fatalf("Generate: %v, want %v", err, tt.wantErr)
			}
			if exitCode != tt.wantExit {
				t.Errorf("exit code %d, want %d", exitCode, tt.wantExit)
			}
			if hung != tt.wantHang {
				t.Errorf("hung %v, want %v", hung, tt.wantHang)
			}
			// ignore-cancel keeps stepping: the emitter saw the steps up
			// to the cancel, the generator ran them all.
			if out.steps != tt.wantSteps {
				t.Errorf("%d steps reported, want %d", out.steps, tt.wantSteps)
			}
			if tt.fault == "slow=1ms" && time.Since(start) < 5*time.Millisecond {
				t.Errorf("slow=1ms took %v for 5 steps", time.Since(start))
			}
		})
	}
}

// ignore-cancel must run the inner generator to its last step, which the
// emitter cannot show once the call is cancelled; count inside instead.
func TestIgnoreCancelRunsAllSteps(t *testing.T) {
	var ran int
	inner := generatorFunc(func(ctx context.Context, job *workerv1.Job, out worker.Emitter) error {
		for step := uint32(1); step <= job.GetSteps(); step++ {
			if err := ctx.Err(); err != nil {
				return err
			}
			ran++
			if err := out.Progress(step, job.GetSteps(), 0); err != nil {
				return err
			}
		}
		return nil
	})
	g := newFaultGenerator(inner, true, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	err := g.Generate(ctx, &workerv1.Job{Steps: 7, Fault: "ignore-cancel"}, &ctxEmitter{ctx: ctx, cancel: cancel, cancelAt: 1})
	if !errors.Is(err, context.Canceled) || ran != 7 {
		t.Errorf("ran %d steps and returned %v, want 7 steps and context.Canceled", ran, err)
	}
}

type generatorFunc func(ctx context.Context, job *workerv1.Job, out worker.Emitter) error

func (generatorFunc) Describe() worker.Description { return worker.Description{} }

func (f generatorFunc) Generate(ctx context.Context, job *workerv1.Job, out worker.Emitter) error {
	return f(ctx, job, out)
}

// eventLog is an Emitter that records what it is sent.
type eventLog struct{ events []string }

func (l *eventLog) Progress(step, total, index uint32) error {
	l.events = append(l.events, fmt.Sprintf("progress %d/%d image %d", step, total, index))
	return nil
}

func (l *eventLog) Image(img *hourglassv1.Image) error {
	l.events = append(l.events, fmt.Sprintf("image %d %q", img.GetIndex(), img.GetData()))
	return nil
}

func (l *eventLog) Preview(*hourglassv1.Preview) error { return nil }

// The replay fault runs a job once, then answers the same job (other id,
// deadline) with the recorded events without calling the generator; a job
// with other parameters, or one whose first run failed, runs for real.
func TestReplayFault(t *testing.T) {
	runs := 0
	failNext := false
	inner := generatorFunc(func(ctx context.Context, job *workerv1.Job, out worker.Emitter) error {
		runs++
		for step := uint32(1); step <= job.GetSteps(); step++ {
			if err := out.Progress(step, job.GetSteps(), 0); err != nil {
				return err
			}
		}
		if failNext {
			failNext = false
			return context.Canceled
		}
		return out.Image(&hourglassv1.Image{Data: []byte(fmt.Sprintf("seed %d run %d", job.GetSeed(), runs))})
	})
	g := newFaultGenerator(inner, true, slog.New(slog.DiscardHandler))
	generate := func(id string, seed uint64) ([]string, error) {
		var out eventLog
		job := &workerv1.Job{Id: id, Steps: 2, Seed: seed, Fault: "replay", Deadline: timestamppb.New(time.Now().Add(time.Minute))}
		err := g.Generate(t.Context(), job, &out)
		return out.events, err
	}

	first, err := generate("a", 1)
	if err != nil || runs != 1 {
		t.Fatalf("first job: %v after %d runs; want it run once", err, runs)
	}
	again, err := generate("b", 1)
	if err != nil || runs != 1 {
		t.Fatalf("same job again: %v after %d runs; want it replayed, not run", err, runs)
	}
	if !slices.Equal(first, again) {
		t.Fatalf("replayed events %q; want the first run's %q", again, first)
	}
	if _, err := generate("c", 2); err != nil || runs != 2 {
		t.Fatalf("other seed: %v after %d runs; want a real run", err, runs)
	}

	failNext = true
	if _, err := generate("d", 3); !errors.Is(err, context.Canceled) || runs != 3 {
		t.Fatalf("failing first run: %v after %d runs; want context.Canceled from a real run", err, runs)
	}
	if _, err := generate("e", 3); err != nil || runs != 4 {
		t.Fatalf("after a failed first run: %v after %d runs; want it run again, not replayed", err, runs)
	}
}
