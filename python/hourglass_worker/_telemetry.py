"""Optional OpenTelemetry tracing.

When the ``opentelemetry`` API is importable, each Run gets a server span that
joins the executor's trace (W3C ``traceparent`` in the call's metadata: the
executor sends it on every worker call) and, under it, a ``worker.generate``
span with the job's shape and outcome, like the Go SDK's. The generate span is
current in the job's thread, so spans the pipeline starts nest under it.

When the opentelemetry SDK is importable too, ``setup()`` configures a tracer
provider from the standard environment, as the Go worker does:
OTEL_TRACES_EXPORTER=otlp|console|none (default none); otlp needs the OTLP
exporter package. Without any of it, everything here is a silent no-op.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator, Optional, Sequence, Tuple

try:  # the API alone: no-op spans unless a provider is configured
    from opentelemetry import trace as _trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator as _TraceContext

    try:
        from opentelemetry.trace import Status as _Status, StatusCode as _StatusCode
    except ImportError:  # pragma: no cover
        _Status = _StatusCode = None
except ImportError:
    _trace = None

INSTRUMENTATION_NAME = "hourglass_worker"
RUN_SPAN_NAME = "hourglass.worker.v1.WorkerService/Run"


def available() -> bool:
    return _trace is not None


def setup(service_name: str, log=None) -> Callable[[], None]:
    """Configures a tracer provider from OTEL_* when the SDK is importable.
    Returns a function that flushes and shuts it down."""
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
    if _trace is None or exporter_name in ("", "none"):
        return lambda: None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        if log:
            log.warn("OTEL_TRACES_EXPORTER is set but the opentelemetry SDK is not installed; no spans are exported",
                     exporter=exporter_name)
        return lambda: None
    exporters = []
    for name in exporter_name.split(","):
        name = name.strip()
        try:
            if name == "console":
                import sys

                from opentelemetry.sdk.trace.export import ConsoleSpanExporter

                exporters.append(ConsoleSpanExporter(out=sys.stderr))
            elif name == "otlp":
                protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                                          os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"))
                if protocol.startswith("http"):
                    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
                else:
                    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
                exporters.append(OTLPSpanExporter())
            elif log:
                log.warn("unknown OTEL_TRACES_EXPORTER value; ignored", exporter=name)
        except ImportError as e:
            if log:
                log.warn("trace exporter not installed; no spans are exported", exporter=name, error=str(e))
    if not exporters:
        return lambda: None
    attrs = {"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)}
    provider = TracerProvider(resource=Resource.create(attrs))
    for exp in exporters:
        provider.add_span_processor(BatchSpanProcessor(exp))
    _trace.set_tracer_provider(provider)

    def shutdown() -> None:
        try:
            provider.shutdown()
        except Exception as e:  # noqa: BLE001
            if log:
                log.warn("could not flush telemetry", error=str(e))

    return shutdown


class JobSpans:
    """The spans of one job; every method is a no-op without OpenTelemetry."""

    def __init__(self, metadata: Sequence[Tuple[str, object]], attributes: Optional[dict]) -> None:
        self._run = self._gen = None
        self._cancel_recorded = False
        if _trace is None or attributes is None:
            return
        carrier = {k: v for k, v in metadata if isinstance(v, str)}
        parent = _TraceContext().extract(carrier)
        tracer = _trace.get_tracer(INSTRUMENTATION_NAME)
        self._run = tracer.start_span(RUN_SPAN_NAME, context=parent, kind=_trace.SpanKind.SERVER,
                                      attributes={"rpc.system": "grpc", "rpc.service": "hourglass.worker.v1.WorkerService",
                                                  "rpc.method": "Run"})
        self._gen = tracer.start_span("worker.generate", context=_trace.set_span_in_context(self._run),
                                      attributes=attributes)

    @classmethod
    def none(cls) -> "JobSpans":
        return cls((), None)

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        """Makes worker.generate the current span (in the job's thread)."""
        if self._gen is None:
            yield
            return
        with _trace.use_span(self._gen, end_on_exit=False):
            yield

    def cancel_observed(self, step: int, image_index: int, reason: str) -> None:
        if self._gen is None or self._cancel_recorded:
            return
        self._cancel_recorded = True
        self._gen.add_event("cancel observed", {"hourglass.step": step, "hourglass.image.index": image_index,
                                                "reason": reason})

    def image(self, index: int, size: int, mime_type: str) -> None:
        if self._gen is not None:
            self._gen.add_event("image", {"hourglass.image.index": index, "hourglass.image.bytes": size,
                                          "hourglass.image.mime_type": mime_type})

    def end(self, outcome: str, code: int, steps_done: int, images_done: int, error: Optional[str]) -> None:
        if self._gen is None:
            return
        self._gen.set_attributes({"hourglass.steps.done": steps_done, "hourglass.images.done": images_done,
                                  "hourglass.outcome": outcome})
        if error is not None and _Status is not None:
            self._gen.set_status(_Status(_StatusCode.ERROR, error))
            self._run.set_status(_Status(_StatusCode.ERROR, error))
        self._run.set_attribute("rpc.grpc.status_code", code)
        self._gen.end()
        self._run.end()
