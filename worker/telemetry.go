package worker

import (
	"context"
	"errors"
	"sync/atomic"

	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
	workerv1 "github.com/hourglass-dev/hourglass/gen/hourglass/worker/v1"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
)

// instrumentationName names the worker library's tracer.
const instrumentationName = "github.com/hourglass-dev/hourglass/worker"

// statsHandler instruments the worker's gRPC server with otelgrpc: a server
// span per Run, joined to the executor's trace, and the standard
// rpc.server.* metrics.
//
// The propagator is W3C trace context plus baggage, set here rather than
// taken from otel's global: it is part of the executor–worker protocol, and
// a worker that never configured OpenTelemetry must still join the trace.
//
// Only Run is instrumented. The executor polls Describe every few
// milliseconds while a cancelled job winds down, mostly without a trace
// context, and every poll would start a trace of its own; the executor's
// client spans already show those calls where they matter.
func statsHandler(tp trace.TracerProvider, mp metric.MeterProvider) stats.Handler {
	opts := []otelgrpc.Option{
		otelgrpc.WithPropagators(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})),
		otelgrpc.WithFilter(func(info *stats.RPCTagInfo) bool {
			return info.FullMethodName == workerv1.WorkerService_Run_FullMethodName
		}),
	}
	if tp != nil {
		opts = append(opts, otelgrpc.WithTracerProvider(tp))
	}
	if mp != nil {
		opts = append(opts, otelgrpc.WithMeterProvider(mp))
	}
	return otelgrpc.NewServerHandler(opts...)
}

// tracedGenerator wraps a Generator in a "worker.generate" span, a child of
// the Run server span. It records the job's shape and outcome, an event per
// image and the step at which cancellation was seen, and never the prompt.
type tracedGenerator struct {
	Generator
	tracer trace.Tracer
}

func newTracedGenerator(gen Generator, tp trace.TracerProvider) tracedGenerator {
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	return tracedGenerator{Generator: gen, tracer: tp.Tracer(instrumentationName)}
}

func (g tracedGenerator) Generate(ctx context.Context, job *workerv1.Job, out Emitter) (err error) {
	ctx, span := g.tracer.Start(ctx, "worker.generate", trace.WithAttributes(
		attribute.String("hourglass.job.id", job.GetId()),
		attribute.String("hourglass.model", job.GetModel()),
		attribute.Int("hourglass.width", int(job.GetWidth())),
		attribute.Int("hourglass.height", int(job.GetHeight())),
		attribute.Int("hourglass.steps", int(job.GetSteps())),
		attribute.Int("hourglass.image_count", int(job.GetImageCount())),
		attribute.Int("hourglass.steps.total", int(job.GetSteps()*job.GetImageCount())),
	))
	te := &tracingEmitter{Emitter: out, span: span}
	returned := false
	// A panic passes through here unrecovered (the service turns it into
	// INTERNAL); the deferred call still ends the span.
	defer func() {
		outcome := status.Code(toStatus(err))
		if !returned {
			outcome = status.Code(toStatus(errPanic))
		}
		span.SetAttributes(
			attribute.Int64("hourglass.steps.done", te.steps.Load()),
			attribute.Int64("hourglass.images.done", te.images.Load()),
			attribute.String("hourglass.outcome", outcome.String()),
		)
		switch {
		case !returned:
			span.SetStatus(codes.Error, errPanic.Error())
		case err == nil, errors.Is(err, context.Canceled):
			// A cancelled job is the caller's choice, not a failure here;
			// otelgrpc treats CANCELLED on a server span the same way.
		default:
			span.SetStatus(codes.Error, truncate(err.Error(), maxInternalMessage))
		}
		span.End()
	}()
	err = g.Generator.Generate(ctx, job, te)
	returned = true
	return err
}

// tracingEmitter counts what a job sent and adds span events for images and
// for the first cancellation Progress reports. Methods it does not override
// (such as Preview) pass straight through.
type tracingEmitter struct {
	Emitter
	span           trace.Span
	steps, images  atomic.Int64
	cancelRecorded atomic.Bool
}

func (e *tracingEmitter) Progress(step, totalSteps, imageIndex uint32) error {
	err := e.Emitter.Progress(step, totalSteps, imageIndex)
	if err == nil {
		e.steps.Add(1)
	} else if (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) && e.cancelRecorded.CompareAndSwap(false, true) {
		e.span.AddEvent("cancel observed", trace.WithAttributes(
			attribute.Int("hourglass.step", int(step)),
			attribute.Int("hourglass.image.index", int(imageIndex)),
			attribute.String("reason", err.Error()),
		))
	}
	return err
}

func (e *tracingEmitter) Image(img *hourglassv1.Image) error {
	err := e.Emitter.Image(img)
	if err == nil {
		e.images.Add(1)
		e.span.AddEvent("image", trace.WithAttributes(
			attribute.Int("hourglass.image.index", int(img.GetIndex())),
			attribute.Int("hourglass.image.bytes", len(img.GetData())),
			attribute.String("hourglass.image.mime_type", img.GetMimeType()),
		))
	}
	return err
}
