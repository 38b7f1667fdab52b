"""Tracing is optional: without opentelemetry (Debian, CI) it is silent; with
it, each job's spans join the caller's trace. The second half runs against a
minimal stand-in of the opentelemetry API in a subprocess, since the real
package is not installed here."""

import os
import subprocess
import sys
import tempfile
import textwrap
import unittest

from tests.helpers import PYTHON_DIR, WorkerTestCase, make_job

from hourglass_worker import _telemetry

FAKE_OTEL = {
    "opentelemetry/__init__.py": "",
    "opentelemetry/trace/__init__.py": textwrap.dedent('''
        import contextlib
        SPANS = []
        class SpanKind:
            SERVER = "server"
        class Status:
            def __init__(self, code, description=None):
                self.code, self.description = code, description
        class StatusCode:
            ERROR = "error"
        class Span:
            def __init__(self, name, context, kind, attributes):
                self.name, self.parent, self.kind = name, (context or {}).get("span"), kind
                self.attributes, self.events, self.status, self.ended = dict(attributes or {}), [], None, False
                SPANS.append(self)
            def add_event(self, name, attributes=None):
                self.events.append((name, dict(attributes or {})))
            def set_attributes(self, attrs):
                self.attributes.update(attrs)
            def set_attribute(self, k, v):
                self.attributes[k] = v
            def set_status(self, status):
                self.status = status
            def end(self):
                self.ended = True
        class Tracer:
            def start_span(self, name, context=None, kind=None, attributes=None):
                return Span(name, context, kind, attributes)
        def get_tracer(name):
            return Tracer()
        def set_span_in_context(span):
            return {"span": span}
        CURRENT = []
        @contextlib.contextmanager
        def use_span(span, end_on_exit=False):
            CURRENT.append(span)
            yield span
            CURRENT.pop()
    '''),
    "opentelemetry/trace/propagation/__init__.py": "",
    "opentelemetry/trace/propagation/tracecontext.py": textwrap.dedent('''
        class TraceContextTextMapPropagator:
            def extract(self, carrier):
                return {"span": "remote:" + carrier.get("traceparent", "")}
    '''),
}

SCRIPT = textwrap.dedent('''
    import sys, time
    sys.path[:0] = [sys.argv[1], sys.argv[2]]
    from tests.helpers import make_job
    import hourglass_worker as hw
    from hourglass_worker import worker as W
    from opentelemetry import trace

    seen = {}
    def gen(job, ctx):
        seen["current"] = [s.name for s in trace.CURRENT]
        ctx.progress(1, job.steps, 0)
        ctx.image(b"x", index=0)
        raise hw.OutOfMemory("too big")

    class Ctx:
        def time_remaining(self): return None
        def invocation_metadata(self): return (("traceparent", "00-abc-def-01"),)
        def is_active(self): return True
        def add_callback(self, cb): return True
        def set_trailing_metadata(self, md): pass
        def set_code(self, c): seen["code"] = c
        def set_details(self, d): pass

    svc = W._Service(gen, hw.Logger(stream=open("/dev/null", "w")), False)
    events = list(svc.Run(W.worker_pb2.RunRequest(job=make_job(steps=2)), Ctx()))
    run_span, gen_span = trace.SPANS
    assert run_span.name == "hourglass.worker.v1.WorkerService/Run", run_span.name
    assert run_span.parent == "remote:00-abc-def-01" and run_span.kind == "server"
    assert gen_span.name == "worker.generate" and gen_span.parent is run_span
    assert seen["current"] == ["worker.generate"], seen
    assert gen_span.attributes["hourglass.steps.total"] == 2
    assert gen_span.attributes["hourglass.outcome"] == "ResourceExhausted"
    assert [e[0] for e in gen_span.events] == ["image"], gen_span.events
    assert gen_span.status.code == "error" and run_span.ended and gen_span.ended
    assert run_span.attributes["rpc.grpc.status_code"] == 8
    assert len(events) == 2
    print("ok")
''')


class TelemetryTest(WorkerTestCase):
    def test_silent_without_opentelemetry(self):
        if _telemetry.available():
            self.skipTest("opentelemetry is installed")
        self.assertIsNone(_telemetry.setup("x")())
        self.make_worker(lambda job, ctx: ctx.progress(1, 1, 0))
        _, err = self.run_job(make_job(), metadata=(("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),))
        self.assertIsNone(err)
        serving = [r for r in self.logs() if r["msg"] == "worker serving"][0]
        self.assertFalse(serving["tracing"])

    def test_spans_join_the_callers_trace(self):
        with tempfile.TemporaryDirectory() as fake:
            for rel, text in FAKE_OTEL.items():
                os.makedirs(os.path.dirname(os.path.join(fake, rel)), exist_ok=True)
                with open(os.path.join(fake, rel), "w") as f:
                    f.write(text)
            p = subprocess.run([sys.executable, "-c", SCRIPT, fake, PYTHON_DIR], capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout.strip(), "ok")


if __name__ == "__main__":
    unittest.main()
