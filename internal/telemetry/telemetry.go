// Package telemetry builds the OpenTelemetry tracer and meter providers that
// hourglassd and hourglass-worker share, from the standard OTEL_* environment.
//
// Traces. OTEL_TRACES_EXPORTER picks the exporters, as a comma-separated
// list:
//
//   - none (the default): no exporter. The tracer provider is still a real
//     SDK provider, so spans get real trace and span ids: request logs carry a
//     trace id, and hourglassd still starts traces and hands their context to
//     workers, which may export even when hourglassd does not.
//   - otlp: OTLP over gRPC (otlptracegrpc). The exporter reads
//     OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, _INSECURE, _HEADERS, _TIMEOUT,
//     _CERTIFICATE and _COMPRESSION itself. Only the grpc protocol is built
//     in, so OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL set to anything else is an
//     error rather than a silent mismatch.
//   - console: one JSON object per span on stderr (stdouttrace), for
//     debugging.
//
// Any other value is an error naming it. Spans go through a batch processor
// (OTEL_BSP_* apply); Shutdown flushes it. The sampler is the SDK's default,
// parent-based always-on, and the SDK itself honours OTEL_TRACES_SAMPLER and
// OTEL_TRACES_SAMPLER_ARG.
//
// Environment. Setup reads the variables it interprets itself
// (OTEL_TRACES_EXPORTER and the OTLP protocol) from Options.Environ, so tests
// can inject them. Everything the OpenTelemetry libraries read on their own
// (OTLP endpoint and headers, OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
// the sampler, OTEL_BSP_*) comes from the real process environment; the
// libraries offer no way to pass another. Workers inherit hourglassd's
// environment, so both processes export to the same place.
//
// Metrics. With Options.Metrics, one SDK meter provider feeds a Prometheus
// exporter on a registry of its own (never the global default one), served
// in the Prometheus text format by MetricsHandler. Everything goes through
// that one provider — otelgrpc's rpc.server.* metrics and hourglass's own
// instruments — so there is one metrics stack and one /metrics page.
// OTEL_METRICS_EXPORTER is not consulted: the metrics listen address is
// hourglass's own setting.
//
// Propagation. Setup sets otel's global propagator to W3C trace context plus
// baggage, which otelgrpc uses by default, so trace context crosses the
// process boundary to workers. It does not set the global providers: callers
// pass the providers explicitly, and binaries that want globals call
// SetGlobal.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// Environment variables Setup interprets itself.
const (
	EnvTracesExporter      = "OTEL_TRACES_EXPORTER"
	envOTLPProtocol        = "OTEL_EXPORTER_OTLP_PROTOCOL"
	envOTLPTracesProtocol  = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
	otlpProtocolGRPC       = "grpc"
	exporterNone           = "none"
	exporterOTLP           = "otlp"
	exporterConsole        = "console"
	defaultTracesExporters = exporterNone
)

// Options configure Setup.
type Options struct {
	// ServiceName is the service.name resource attribute, such as
	// "hourglassd" or "hourglass-worker". OTEL_SERVICE_NAME overrides it,
	// as the specification asks.
	ServiceName string
	// ServiceVersion is the service.version resource attribute; optional.
	ServiceVersion string
	// Metrics builds the Prometheus exporter and MetricsHandler. Without it
	// the meter provider is a no-op and MetricsHandler is nil.
	Metrics bool
	// Environ is the environment Setup reads OTEL_TRACES_EXPORTER and the
	// OTLP protocol from, in os.Environ's "KEY=value" form; nil means
	// os.Environ(). See the package documentation for what is read from
	// the process environment regardless.
	Environ []string
	// Stderr receives the console exporter's spans; nil means os.Stderr.
	Stderr io.Writer
	// SpanProcessor, when set, replaces the exporters OTEL_TRACES_EXPORTER
	// would choose; OTEL_TRACES_EXPORTER is then not read at all. Tests pass
	// a tracetest.SpanRecorder here.
	SpanProcessor sdktrace.SpanProcessor
}

// Telemetry holds the providers Setup built. Pass them explicitly to what
// should be instrumented, and call Shutdown before the process exits.
type Telemetry struct {
	// TracerProvider is always an SDK provider, even with no exporter.
	TracerProvider trace.TracerProvider
	// MeterProvider is an SDK provider feeding MetricsHandler when
	// Options.Metrics is set, a no-op one otherwise.
	MeterProvider metric.MeterProvider
	// MetricsHandler serves the metrics in the Prometheus text format; nil
	// when Options.Metrics is not set.
	MetricsHandler http.Handler

	tp *sdktrace.TracerProvider
	mp *sdkmetric.MeterProvider // nil without metrics

	shutdownOnce sync.Once
	shutdownErr  error
}

// Propagator is the propagator hourglass uses across processes: W3C trace
// context and baggage. Setup installs it globally; it is exported for code
// that wants to pass it explicitly.
func Propagator() propagation.TextMapPropagator {
	return propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
}

// Setup builds the tracer and meter providers from opts and the
// environment. An unknown exporter name or an unsupported OTLP protocol is
// an error naming it. On error nothing is left running.
func Setup(ctx context.Context, opts Options) (*Telemetry, error) {
	if opts.ServiceName == "" {
		return nil, errors.New("telemetry: no service name")
	}
	environ := opts.Environ
	if environ == nil {
		environ = os.Environ()
	}
	stderr := opts.Stderr
	if stderr == nil {
		stderr = os.Stderr
	}

	res, err := newResource(ctx, opts)
	if err != nil {
		return nil, err
	}

	processors := []sdktrace.SpanProcessor{opts.SpanProcessor}
	if opts.SpanProcessor == nil {
		processors, err = processorsFromEnv(ctx, lookupFunc(environ), stderr)
		if err != nil {
			return nil, err
		}
	}
	tpOpts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	for _, p := range processors {
		tpOpts = append(tpOpts, sdktrace.WithSpanProcessor(p))
	}
	t := &Telemetry{tp: sdktrace.NewTracerProvider(tpOpts...)}
	t.TracerProvider = t.tp

	t.MeterProvider = metricnoop.NewMeterProvider()
	if opts.Metrics {
		reg := prometheus.NewRegistry()
		exp, err := otelprom.New(otelprom.WithRegisterer(reg))
		if err != nil {
			_ = t.tp.Shutdown(ctx)
			return nil, fmt.Errorf("telemetry: prometheus exporter: %w", err)
		}
		t.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp), sdkmetric.WithResource(res))
		t.MeterProvider = t.mp
		// ContinueOnError: one metric that fails to collect should not
		// blank the whole page an operator is looking at.
		t.MetricsHandler = promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
	}

	otel.SetTextMapPropagator(Propagator())
	return t, nil
}

// Shutdown flushes pending spans and stops the exporters. It is safe to
// call more than once; later calls return the first call's result. Spans
// ended after Shutdown are dropped.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	t.shutdownOnce.Do(func() {
		err := t.tp.Shutdown(ctx)
		if t.mp != nil {
			err = errors.Join(err, t.mp.Shutdown(ctx))
		}
		if err != nil {
			t.shutdownErr = fmt.Errorf("telemetry: shutdown: %w", err)
		}
	})
	return t.shutdownErr
}

// SetGlobal makes t's providers otel's global ones, for libraries that only
// look there. When log is not nil, otel's internal errors (a collector that
// cannot be reached, a dropped batch) go to log at warn level instead of the
// standard library logger, so they come out as the same JSON as the rest.
func (t *Telemetry) SetGlobal(log *slog.Logger) {
	otel.SetTracerProvider(t.TracerProvider)
	otel.SetMeterProvider(t.MeterProvider)
	if log != nil {
		otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
			log.Warn("telemetry error", "error", err.Error())
		}))
	}
}

func newResource(ctx context.Context, opts Options) (*resource.Resource, error) {
	attrs := []resource.Option{
		resource.WithAttributes(semconv.ServiceName(opts.ServiceName)),
	}
	if opts.ServiceVersion != "" {
		attrs = append(attrs, resource.WithAttributes(semconv.ServiceVersion(opts.ServiceVersion)))
	}
	// Later options win, so OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
	// override the defaults above. The pid tells workers apart.
	attrs = append(attrs, resource.WithTelemetrySDK(), resource.WithProcessPID(), resource.WithFromEnv())
	res, err := resource.New(ctx, attrs...)
	if err != nil {
		return nil, fmt.Errorf("telemetry: resource (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES): %w", err)
	}
	return res, nil
}

// processorsFromEnv builds one batch span processor per exporter named in
// OTEL_TRACES_EXPORTER.
func processorsFromEnv(ctx context.Context, lookup func(string) string, stderr io.Writer) (procs []sdktrace.SpanProcessor, err error) {
	names := lookup(EnvTracesExporter)
	if strings.TrimSpace(names) == "" {
		names = defaultTracesExporters
	}
	defer func() {
		if err != nil {
			for _, p := range procs {
				_ = p.Shutdown(ctx)
			}
			procs = nil
		}
	}()
	seen := map[string]bool{}
	for name := range strings.SplitSeq(names, ",") {
		name = strings.TrimSpace(name)
		if name == "" || seen[name] {
			continue
		}
		seen[name] = true
		var exp sdktrace.SpanExporter
		switch name {
		case exporterNone:
			continue
		case exporterOTLP:
			exp, err = newOTLPExporter(ctx, lookup)
		case exporterConsole:
			exp, err = stdouttrace.New(stdouttrace.WithWriter(stderr))
		default:
			return procs, fmt.Errorf("telemetry: %s: unknown exporter %q (want otlp, console or none)", EnvTracesExporter, name)
		}
		if err != nil {
			return procs, fmt.Errorf("telemetry: %s exporter: %w", name, err)
		}
		procs = append(procs, sdktrace.NewBatchSpanProcessor(exp))
	}
	return procs, nil
}

func newOTLPExporter(ctx context.Context, lookup func(string) string) (sdktrace.SpanExporter, error) {
	for _, key := range []string{envOTLPTracesProtocol, envOTLPProtocol} {
		if v := strings.TrimSpace(lookup(key)); v != "" {
			if v != otlpProtocolGRPC {
				return nil, fmt.Errorf("%s=%q is not supported: only %q is built in", key, v, otlpProtocolGRPC)
			}
			break // the traces-specific variable wins
		}
	}
	// The exporter connects lazily, so an unreachable collector does not
	// stop the process from starting; export errors go to otel's error
	// handler (see SetGlobal).
	return otlptracegrpc.New(ctx)
}

// lookupFunc returns a getenv over an os.Environ-style list. The last
// assignment of a key wins, as it does in exec.Cmd.Env.
func lookupFunc(environ []string) func(string) string {
	m := make(map[string]string, len(environ))
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return func(key string) string { return m[key] }
}
