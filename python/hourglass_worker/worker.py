"""The worker side of hourglass.worker.v1.WorkerService, for Python pipelines.

A pipeline author writes one function (or an object with a ``generate``
method) that receives the :class:`Job` and a :class:`Context`; this module
does the protocol, with the same semantics as the Go SDK (``worker/``):

- one job at a time: a second Run is refused with FAILED_PRECONDITION;
- Describe reports ``busy`` and ``job_id`` until the generate function has
  really returned, which is how the executor learns that a cancelled job let
  go of the device (it polls Describe, and SIGKILLs the worker's process
  group when busy does not turn false within its cancel grace);
- every ``ctx.progress`` doubles as heartbeat and cancellation check: once the
  call is cancelled or past its deadline it raises :class:`Cancelled` or
  :class:`DeadlineExceeded`, and the function must let that propagate;
- errors become the codes the executor expects: OutOfMemory (and PyTorch's
  CUDA out-of-memory errors) RESOURCE_EXHAUSTED with ErrorInfo reason
  WORKER_OUT_OF_MEMORY, domain hourglass.dev; InvalidJob INVALID_ARGUMENT
  with a BadRequest; anything else INTERNAL, with the traceback in the log;
- prompts never reach the log (their length and a 12-hex-digit SHA-256
  prefix only).

The job runs in a thread of its own; the gRPC handler thread streams its
events. Python threads cannot be killed, which is the point of hourglass: the
executor kills the whole worker process when a job does not stop.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import queue
import socket as _socket
import stat
import threading
import time
import traceback
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Tuple

import grpc

from . import _rpcstatus, _telemetry
from ._faults import Faults, parse_faults
from ._log import Logger, nanoseconds
from .proto import generate_pb2, worker_pb2, worker_pb2_grpc

# ErrorInfo reason and domain of out-of-memory failures, as in the Go SDK.
REASON_OUT_OF_MEMORY = "WORKER_OUT_OF_MEMORY"
ERROR_DOMAIN = "hourglass.dev"

# Structural limits a worker enforces on its own, mirroring the public API's
# validation, so that a buggy executor cannot make it allocate gigabytes.
MAX_SIDE = 2048
MAX_IMAGE_COUNT = 32
MAX_STEPS = 150

# Bounds how long a stopping worker waits for a cancelled job to return.
DEFAULT_STOP_TIMEOUT = 5.0
# Longest error text an INTERNAL or RESOURCE_EXHAUSTED status carries.
MAX_STATUS_MESSAGE = 256
# Largest message the worker sends (a 2048x2048 PNG of noise exceeds 4 MiB);
# the executor accepts up to 256 MiB.
MAX_SEND_MESSAGE = 256 << 20

SOCKET_ENV = "HOURGLASS_WORKER_SOCKET"

# Go's names of the gRPC codes (codes.Code.String()), for log lines that
# read like the Go worker's.
_GO_CODE_NAMES = {
    grpc.StatusCode.OK: "OK", grpc.StatusCode.CANCELLED: "Canceled", grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument", grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound", grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied", grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition", grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange", grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal", grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss", grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}


# --- what a pipeline author sees ---------------------------------------------


class JobStopped(Exception):
    """The job's call was cancelled or passed its deadline. Raised by the
    Context at a step boundary; let it propagate out of generate."""

    code = grpc.StatusCode.CANCELLED
    message = "job cancelled"


class Cancelled(JobStopped):
    """The executor cancelled the call (the caller went away, the server is
    stopping, or the worker looked wedged)."""


class DeadlineExceeded(JobStopped):
    """The job's deadline passed."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    message = "job deadline exceeded"


class OutOfMemory(Exception):
    """The device ran out of memory. The executor answers RESOURCE_EXHAUSTED
    with reason WORKER_OUT_OF_MEMORY and keeps the worker: the job was too
    big, the worker is fine. PyTorch's torch.cuda.OutOfMemoryError maps to
    the same status without being wrapped."""


class InvalidJob(Exception):
    """A job this generator cannot run (unknown model or style, say). It
    becomes INVALID_ARGUMENT with a BadRequest violation on ``job.FIELD``."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__("invalid job: %s: %s" % (field, reason))
        self.field = field
        self.reason = reason


@dataclass
class Model:
    """A model the worker can run; exactly one should be the default."""

    name: str
    default: bool = False


@dataclass
class Description:
    """What Describe reports besides busy/job_id, which the SDK tracks."""

    models: List[Model] = field(default_factory=lambda: [Model("default", True)])
    styles: List[str] = field(default_factory=list)
    device: str = "cpu"
    memory_total_bytes: int = 0
    memory_used_bytes: int = 0
    version: str = "hourglass-python-worker/0.1.0"


_FORMATS = {
    generate_pb2.OUTPUT_FORMAT_UNSPECIFIED: ("png", "image/png"),
    generate_pb2.OUTPUT_FORMAT_PNG: ("png", "image/png"),
    generate_pb2.OUTPUT_FORMAT_JPEG: ("jpeg", "image/jpeg"),
}


class Job:
    """One fully resolved generation job (every default already applied by
    the server). Attributes mirror hourglass.worker.v1.Job:

    id, prompt, negative_prompt, styles (list), steps, width, height,
    image_count, seed (image i uses ``image_seed(i)``), guidance_scale,
    sharpness, model, output_format ("png" or "jpeg"), mime_type,
    preview_every_n_steps, deadline (Unix seconds, or None), fault (the
    test fault; empty unless fault injection is on), and the caller's trace
    context: traceparent and tracestate (W3C strings, empty when the call
    carries none). ``proto`` is the message itself.
    """

    def __init__(self, pb: "worker_pb2.Job", metadata: Sequence[Tuple[str, Any]] = ()) -> None:
        self.proto = pb
        self.id = pb.id
        self.prompt = pb.prompt
        self.negative_prompt = pb.negative_prompt
        self.styles = list(pb.styles)
        self.steps = pb.steps
        self.width = pb.width
        self.height = pb.height
        self.image_count = pb.image_count
        self.seed = pb.seed
        self.guidance_scale = pb.guidance_scale
        self.sharpness = pb.sharpness
        self.model = pb.model
        self.output_format, self.mime_type = _FORMATS.get(pb.output_format, ("png", "image/png"))
        self.preview_every_n_steps = pb.preview_every_n_steps
        self.deadline: Optional[float] = None
        if pb.HasField("deadline"):
            self.deadline = pb.deadline.seconds + pb.deadline.nanos / 1e9
        self.fault = pb.fault
        md = {k: v for k, v in metadata if isinstance(v, str)}
        self.traceparent = md.get("traceparent", "")
        self.tracestate = md.get("tracestate", "")

    def image_seed(self, index: int) -> int:
        """The seed of image ``index``: seed+index, wrapping at 2^64."""
        return (self.seed + index) % (1 << 64)

    def time_remaining(self) -> Optional[float]:
        """Seconds until the job's deadline, or None without one."""
        return None if self.deadline is None else self.deadline - time.time()

    def wants_preview(self, step: int) -> bool:
        """Whether the job asked for a preview at this step (from 1)."""
        n = self.preview_every_n_steps
        return n > 0 and step % n == 0

    def __repr__(self) -> str:  # never the prompt
        return "Job(id=%r, model=%r, %dx%d, steps=%d, images=%d, seed=%d)" % (
            self.id, self.model, self.width, self.height, self.steps, self.image_count, self.seed)


class Context:
    """The running job's link to the executor. Methods are safe to call from
    any thread; they raise :class:`JobStopped` once the call is cancelled or
    past its deadline, and RuntimeError once generate has returned."""

    def __init__(self, run: "_Run") -> None:
        self._run = run

    @property
    def job(self) -> Job:
        return self._run.job

    @property
    def log(self) -> Logger:
        """The worker's logger, with the job id on every line."""
        return self._run.log

    @property
    def cancelled(self) -> bool:
        """True once the call is cancelled or past its deadline."""
        if self._run.faults.ignore_cancel:
            return False
        self._run.check_deadline()
        return self._run.stop_event.is_set()

    @property
    def stop_event(self) -> threading.Event:
        """Set when the call is cancelled or past its deadline, for code that
        waits on something else (never set under the ignore-cancel fault)."""
        return self._run.stop_event if not self._run.faults.ignore_cancel else threading.Event()

    def check(self) -> None:
        """Raises Cancelled or DeadlineExceeded once the call is cancelled or
        past its deadline. progress() does this already; call it at step
        boundaries that report no progress."""
        if not self._run.faults.ignore_cancel:
            self._run.raise_if_stopped()

    def wait(self, seconds: float) -> None:
        """Sleeps for seconds, but raises as soon as the call is cancelled or
        past its deadline."""
        if self._run.faults.ignore_cancel:
            time.sleep(seconds)
            return
        self._run.stop_event.wait(seconds)
        self.check()

    def progress(self, step: int, total_steps: Optional[int] = None, image_index: int = 0) -> None:
        """Reports that step (from 1) of total_steps (default: the job's
        steps) finished for image image_index (from 0). It is the worker's
        heartbeat and its cancellation check: it raises when the job must
        stop, and generate must let that propagate."""
        run = self._run
        if total_steps is None:
            total_steps = run.job.steps
        f = run.faults
        if f.slow > 0:
            self.wait(f.slow)
        ev = worker_pb2.RunResponse(progress=worker_pb2.Progress(step=step, total_steps=total_steps,
                                                                  image_index=image_index))
        try:
            run.send(ev, "progress")
        except JobStopped as e:
            run.spans.cancel_observed(step, image_index, e.message)
            if not f.ignore_cancel:
                raise
        run.fault_steps += 1
        if run.fault_steps == 1 and (f.hang or f.crash or f.oom):
            run.strike_fault(step)

    def image(self, data: bytes, mime_type: Optional[str] = None, seed: Optional[int] = None,
              width: Optional[int] = None, height: Optional[int] = None, index: int = 0) -> None:
        """Sends one finished, encoded image. Defaults: the job's mime type,
        image_seed(index), the job's width and height."""
        job = self._run.job
        img = generate_pb2.Image(
            data=bytes(data),
            mime_type=mime_type or job.mime_type,
            seed=job.image_seed(index) if seed is None else seed,
            width=job.width if width is None else width,
            height=job.height if height is None else height,
            index=index)
        self._send_ignoring(worker_pb2.RunResponse(image=img), "image")
        self._run.spans.image(index, len(img.data), img.mime_type)

    def preview(self, data: bytes, image_index: int, step: int, width: int, height: int,
                mime_type: str = "image/jpeg") -> None:
        """Sends a small, lossy look at the image being sampled: a JPEG whose
        long side is at most 256 pixels. Optional: send one only when
        job.wants_preview(step), and skip any that would cost too much."""
        p = generate_pb2.Preview(data=bytes(data), mime_type=mime_type, image_index=image_index, step=step,
                                 width=width, height=height)
        self._send_ignoring(worker_pb2.RunResponse(preview=p), "preview")

    def _send_ignoring(self, ev, kind: str) -> None:
        try:
            self._run.send(ev, kind)
        except JobStopped:
            if not self._run.faults.ignore_cancel:
                raise


# --- one running job ---------------------------------------------------------

_DONE = object()  # the job returned; its status is in run.status
_WAKE = object()  # the call ended; the handler may be able to return early


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


class _Run:
    def __init__(self, service: "_Service", job: Job, grpc_context) -> None:
        self.service = service
        self.job = job
        self.grpc_context = grpc_context
        self.log = service.log.with_fields(job_id=job.id)
        self.events: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self.stop_event = threading.Event()
        self.stop_reason: Optional[type] = None
        self.lock = threading.Lock()
        self.closed = False
        self.finished = False
        self.counts = {"progress": 0, "image": 0, "preview": 0}
        self.status: Tuple[grpc.StatusCode, str, Optional[bytes]] = (grpc.StatusCode.OK, "", None)
        self.faults = Faults()
        self.fault_steps = 0
        self.hang_hook: Optional[Callable[[], None]] = None
        # The effective deadline: the job's, or the call's when earlier.
        self.deadline = job.deadline
        remaining = grpc_context.time_remaining() if grpc_context is not None else None
        if remaining is not None and remaining < 1e8:
            call_deadline = time.time() + remaining
            self.deadline = call_deadline if self.deadline is None else min(self.deadline, call_deadline)
        self.timer: Optional[threading.Timer] = None
        if self.deadline is not None:
            self.timer = threading.Timer(max(0.0, self.deadline - time.time()), self.stop, (DeadlineExceeded,))
            self.timer.daemon = True
        self.pending_error: Optional[BaseException] = None
        self.spans = _telemetry.JobSpans.none()

    def begin(self) -> None:
        """Starts the job's spans and its deadline timer, once it holds the
        worker."""
        md = self.grpc_context.invocation_metadata() if self.grpc_context is not None else ()
        job = self.job
        self.spans = _telemetry.JobSpans(md or (), {
            "hourglass.job.id": job.id, "hourglass.model": job.model, "hourglass.width": job.width,
            "hourglass.height": job.height, "hourglass.steps": job.steps, "hourglass.image_count": job.image_count,
            "hourglass.steps.total": job.steps * job.image_count})
        if self.timer is not None:
            self.timer.start()

    # Cancellation.

    def stop(self, reason: type) -> None:
        with self.lock:
            if self.stop_reason is None and not self.finished:
                self.stop_reason = reason
                self.stop_event.set()

    def check_deadline(self) -> None:
        if self.deadline is not None and not self.stop_event.is_set() and time.time() >= self.deadline:
            self.stop(DeadlineExceeded)

    def raise_if_stopped(self) -> None:
        self.check_deadline()
        if self.stop_event.is_set():
            reason = self.stop_reason or Cancelled
            raise reason(reason.message)

    def on_rpc_done(self) -> None:
        """gRPC calls this when the call ends, however it ends."""
        if not self.finished:
            past = self.deadline is not None and time.time() >= self.deadline - 0.001
            self.stop(DeadlineExceeded if past else Cancelled)
        self.events.put(_WAKE)

    # Events.

    def send(self, ev, kind: str) -> None:
        self.raise_if_stopped()
        with self.lock:
            if self.closed:
                raise RuntimeError("hourglass_worker: context used after generate returned")
            self.events.put(ev)
            self.counts[kind] += 1
        # Check again after the send: the call may have been cancelled while
        # the step ran, and the job must stop now, not a step later.
        self.raise_if_stopped()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.finished = True
        if self.timer is not None:
            self.timer.cancel()

    # Faults (tests only).

    def strike_fault(self, step: int) -> None:
        f = self.faults
        if f.hang:
            self.log.warn("fault: hanging after the first step")
            if self.hang_hook is not None:
                self.hang_hook()
            threading.Event().wait()  # forever, ignoring cancellation
        elif f.crash:
            self.log.warn("fault: crashing after the first step", exit_code=3)
            os._exit(3)
        elif f.oom:
            raise OutOfMemory("fault injection after step %d: device out of memory" % step)


def is_out_of_memory(err: BaseException) -> bool:
    """OutOfMemory, or PyTorch's CUDA out-of-memory error (directly or as the
    cause of another exception)."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, OutOfMemory):
            return True
        t = type(err)
        if t.__name__ == "OutOfMemoryError" and t.__module__.startswith("torch"):
            return True
        if isinstance(err, RuntimeError) and "out of memory" in str(err) and "CUDA" in str(err):
            return True
        err = err.__cause__ or err.__context__
        seen += 1
    return False


def _truncate(s: str, n: int = MAX_STATUS_MESSAGE) -> str:
    return s if len(s) <= n else s[:n] + "…"


def to_status(err: Optional[BaseException], stop_reason: Optional[type] = None) -> Tuple[grpc.StatusCode, str, Optional[bytes]]:
    """Maps what generate raised to (code, message, grpc-status-details-bin).
    The worker side of the status mapping in DESIGN.md; the executor decides
    what the caller finally sees."""
    if err is None:
        return grpc.StatusCode.OK, "", None
    if isinstance(err, JobStopped):
        return err.code, err.message, None
    if is_out_of_memory(err):
        msg = _truncate("worker: " + (str(err) or "device out of memory"))
        code = grpc.StatusCode.RESOURCE_EXHAUSTED
        return code, msg, _rpcstatus.encode_status(code.value[0], msg,
                                                   [_rpcstatus.error_info(REASON_OUT_OF_MEMORY, ERROR_DOMAIN)])
    if isinstance(err, InvalidJob):
        code = grpc.StatusCode.INVALID_ARGUMENT
        msg = str(err)
        return code, msg, _rpcstatus.encode_status(code.value[0], msg,
                                                   [_rpcstatus.bad_request([("job." + err.field, err.reason)])])
    if stop_reason is not None:
        # A job that fails while being cancelled usually fails because it is
        # being cancelled; the executor must see the cancellation.
        return stop_reason.code, stop_reason.message, None
    # A generator may already speak gRPC (an error of a model server it
    # proxies, say); keep its code rather than flattening it.
    code_fn = getattr(err, "code", None)
    if isinstance(err, grpc.RpcError) and callable(code_fn):
        code = code_fn()
        if code not in (grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN):
            details = err.details() if callable(getattr(err, "details", None)) else ""
            return code, _truncate(details or str(err)), None
    return grpc.StatusCode.INTERNAL, _truncate("worker: %s: %s" % (type(err).__name__, err)), None


def validate_job(job: Optional["worker_pb2.Job"]) -> List[Tuple[str, str]]:
    """Structural checks; model and style names are the generator's business."""
    if job is None:
        return [("job", "is required")]
    v: List[Tuple[str, str]] = []
    for name, side in (("width", job.width), ("height", job.height)):
        if side == 0:
            v.append(("job." + name, "must be set"))
        elif side % 8:
            v.append(("job." + name, "must be a multiple of 8, got %d" % side))
        elif side > MAX_SIDE:
            v.append(("job." + name, "must be at most %d, got %d" % (MAX_SIDE, side)))
    if not 1 <= job.steps <= MAX_STEPS:
        v.append(("job.steps", "must be in 1..%d, got %d" % (MAX_STEPS, job.steps)))
    if not 1 <= job.image_count <= MAX_IMAGE_COUNT:
        v.append(("job.image_count", "must be in 1..%d, got %d" % (MAX_IMAGE_COUNT, job.image_count)))
    if not math.isfinite(job.guidance_scale):
        v.append(("job.guidance_scale", "must be finite"))
    if not math.isfinite(job.sharpness):
        v.append(("job.sharpness", "must be finite"))
    return v


# --- the service ---------------------------------------------------------------


def _set_status(context, code: grpc.StatusCode, msg: str, details: Optional[bytes]) -> None:
    if details is not None:
        context.set_trailing_metadata(((_rpcstatus.STATUS_DETAILS_KEY, details),))
    context.set_code(code)
    context.set_details(msg)


class _Service(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(self, generator: Any, log: Logger, unsafe_fault_injection: bool) -> None:
        if callable(getattr(generator, "generate", None)):
            self._generate = generator.generate
        elif callable(generator):
            self._generate = generator
        else:
            raise TypeError("hourglass_worker: the generator must be a function or have a generate(job, ctx) method")
        self._describe = getattr(generator, "describe", None)
        self._hang = getattr(generator, "fault_hang", None)
        self.log = log
        self.faults_enabled = unsafe_fault_injection
        self._fault_warned = False
        self._mu = threading.Lock()
        self._run: Optional[_Run] = None
        self._threads: List[threading.Thread] = []

    def description(self) -> Description:
        return self._describe() if self._describe is not None else Description()

    # Describe never blocks on a running job.
    def Describe(self, request, context):
        try:
            d = self.description()
        except Exception as e:  # noqa: BLE001
            self.log.error("describe failed", error="%s: %s" % (type(e).__name__, e), stack=traceback.format_exc())
            context.abort(grpc.StatusCode.INTERNAL, "worker: describe failed")
        resp = worker_pb2.DescribeResponse(
            models=[worker_pb2.Model(name=m.name, default=m.default) for m in d.models],
            styles=list(d.styles), device=d.device, memory_total_bytes=int(d.memory_total_bytes),
            memory_used_bytes=int(d.memory_used_bytes), version=d.version)
        with self._mu:
            if self._run is not None:
                resp.busy, resp.job_id = True, self._run.job.id
        return resp

    def Run(self, request, context):
        pb = request.job if request.HasField("job") else None
        violations = validate_job(pb)
        if violations:
            msg = "invalid job: %s %s" % violations[0]
            if len(violations) > 1:
                msg += " (and %d more)" % (len(violations) - 1)
            self.log.warn("job rejected", job_id=pb.id if pb is not None else "", error=msg)
            code = grpc.StatusCode.INVALID_ARGUMENT
            _set_status(context, code, msg, _rpcstatus.encode_status(code.value[0], msg, [_rpcstatus.bad_request(violations)]))
            return
        # A call cancelled before it arrived must not take the worker: the
        # executor may already have seen it idle and sent the next job.
        if not context.is_active():
            _set_status(context, grpc.StatusCode.CANCELLED, "job cancelled", None)
            return
        job = Job(pb, context.invocation_metadata() or ())
        run = _Run(self, job, context)
        with self._mu:
            if self._run is not None:
                busy_with = self._run.job.id
            else:
                busy_with = None
                self._run = run
        if busy_with is not None:
            msg = "worker busy with job %r" % busy_with
            self.log.warn("job rejected", job_id=job.id, error=msg)
            _set_status(context, grpc.StatusCode.FAILED_PRECONDITION, msg, None)
            return
        try:
            self._prepare_faults(run)
            run.log.info("job started", model=job.model, steps=job.steps, width=job.width, height=job.height,
                         image_count=job.image_count, styles=len(job.styles),
                         preview_every_n_steps=job.preview_every_n_steps,
                         # Never the prompt text: its length and a short hash
                         # are enough to correlate with the caller's records.
                         prompt_len=len(job.prompt), prompt_sha256=_short_hash(job.prompt),
                         negative_prompt_len=len(job.negative_prompt),
                         negative_prompt_sha256=_short_hash(job.negative_prompt))
            run.begin()
            if not context.add_callback(run.on_rpc_done):
                run.stop(Cancelled)
            t = threading.Thread(target=self._execute, args=(run,), name="hourglass-job-" + job.id, daemon=True)
            t.start()
        except BaseException:
            run.close()
            self._release(run)
            raise
        while True:
            ev = run.events.get()
            if ev is _DONE:
                break
            if ev is _WAKE:
                if not context.is_active():
                    return  # the call is over; the job thread frees the worker itself
                continue
            yield ev
        code, msg, details = run.status
        if code != grpc.StatusCode.OK:
            _set_status(context, code, msg, details)

    def _prepare_faults(self, run: _Run) -> None:
        spec = run.job.fault
        if not spec:
            return
        if not self.faults_enabled:
            if not self._fault_warned:
                self._fault_warned = True
                run.log.warn("job carries a fault but fault injection is off; ignoring faults (logged once)")
            return
        try:
            run.faults = parse_faults(spec)
        except ValueError as e:
            run.pending_error = InvalidJob("fault", str(e))
            return
        run.log.warn("injecting test fault", fault=spec)
        if self._hang is not None:
            run.hang_hook = lambda: self._hang(run.job, Context(run))

    def _execute(self, run: _Run) -> None:
        start = time.monotonic()
        err: Optional[BaseException] = None
        ctx = Context(run)
        try:
            if run.pending_error is not None:
                raise run.pending_error
            with run.spans.current():
                self._generate(run.job, ctx)
            if run.faults.ignore_cancel and run.stop_event.is_set():
                # All steps done; now admit the cancellation we ignored.
                raise (run.stop_reason or Cancelled)((run.stop_reason or Cancelled).message)
        except BaseException as e:  # noqa: BLE001  (SystemExit in a thread, too)
            err = e
        finally:
            stop_reason = run.stop_reason
            run.close()
            # Idle as soon as generate has returned, and before the stream
            # ends: the executor polls Describe after cancelling a job and
            # sends the next job the moment it reads busy=false, so busy must
            # never read false while generate might still touch the device.
            self._release(run)
        code, msg, details = to_status(err, stop_reason)
        run.status = (code, msg, details)
        fields = dict(duration=nanoseconds(time.monotonic() - start), steps_reported=run.counts["progress"],
                      images_sent=run.counts["image"], previews_sent=run.counts["preview"],
                      outcome=_GO_CODE_NAMES.get(code, code.name))
        if code == grpc.StatusCode.OK:
            run.log.info("job finished", **fields)
        elif code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
            run.log.info("job stopped", **fields)
        else:
            tb = "".join(traceback.format_exception(type(err), err, err.__traceback__)) if err else ""
            expected = isinstance(err, (InvalidJob, OutOfMemory))
            run.log.error("job failed", error=msg, **fields, **({} if expected else {"stack": tb}))
        run.spans.end(_GO_CODE_NAMES.get(code, code.name), code.value[0], run.counts["progress"], run.counts["image"],
                      None if code in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED) else msg)
        run.events.put(_DONE)

    def _release(self, run: _Run) -> None:
        with self._mu:
            if self._run is run:
                self._run = None

    def running(self) -> Optional[_Run]:
        with self._mu:
            return self._run

    def cancel_running(self) -> Optional[_Run]:
        run = self.running()
        if run is not None:
            run.stop(Cancelled)
        return run


# --- serving ---------------------------------------------------------------------


class SocketError(Exception):
    """The socket path cannot be served (in use, not a socket, ...)."""


def _remove_stale_socket(path: str) -> None:
    """Removes a socket file nobody listens on any more (what a killed worker
    leaves behind); refuses anything else. gRPC would unlink even a live
    socket, which is why this check comes first."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketError("%s exists and is not a socket" % path)
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(path)
    except OSError as e:
        if e.errno != errno.ECONNREFUSED:
            raise SocketError("probe %s: %s" % (path, e)) from e
    else:
        raise SocketError("%s is in use by another process" % path)
    finally:
        s.close()
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


class WorkerServer:
    """Serves a generator on a Unix socket. Most workers call :func:`main`
    or :func:`serve` instead; tests and embedders use this directly::

        srv = WorkerServer(generate, "/run/w0/worker.sock")
        srv.start()
        ...
        srv.stop()
    """

    def __init__(self, generator: Any, socket_path: str, *, unsafe_fault_injection: bool = False,
                 logger: Optional[Logger] = None, max_threads: int = 16) -> None:
        if not socket_path:
            raise ValueError("hourglass_worker: no socket path")
        self.socket_path = socket_path
        self.log = logger or Logger()
        self.service = _Service(generator, self.log, unsafe_fault_injection)
        self._max_threads = max_threads
        self._server: Optional[grpc.Server] = None
        self._sock_id: Optional[Tuple[int, int]] = None

    def start(self) -> None:
        path = self.socket_path
        _remove_stale_socket(path)
        parent = os.path.dirname(os.path.abspath(path))
        try:
            mode = stat.S_IMODE(os.stat(parent).st_mode)
            if mode & 0o077:
                self.log.warn("socket directory is accessible to other users", dir=parent, mode=oct(mode))
        except OSError:
            pass
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self._max_threads, thread_name_prefix="hourglass-grpc"),
            options=[
                ("grpc.max_send_message_length", MAX_SEND_MESSAGE),
                # The executor may keep its connection alive with pings while
                # the worker idles; never answer them with GOAWAY.
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 1000),
                ("grpc.http2.max_ping_strikes", 0),
            ])
        worker_pb2_grpc.add_WorkerServiceServicer_to_server(self.service, server)
        if not server.add_insecure_port("unix:" + path):
            raise SocketError("cannot listen on %s" % path)
        # The socket is created with the process umask and narrowed here;
        # the short window is covered by the private 0700 directory the
        # executor puts it in.
        os.chmod(path, 0o600)
        st = os.lstat(path)
        self._sock_id = (st.st_dev, st.st_ino)
        server.start()
        self._server = server
        self.log.info("worker serving", socket=path, version=self.service.description().version,
                      pid=os.getpid(), tracing=_telemetry.available())

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> bool:
        """Stops accepting calls, cancels the running job and waits up to
        timeout for it to return. False when it ignored the cancellation."""
        clean = True
        run = self.service.cancel_running()
        if self._server is not None:
            done = self._server.stop(grace=timeout)
        else:
            done = None
        if run is not None:
            deadline = time.monotonic() + timeout
            while self.service.running() is run and time.monotonic() < deadline:
                time.sleep(0.01)
            if self.service.running() is run:
                self.log.warn("running job ignored cancellation", job_id=run.job.id, timeout_s=timeout)
                clean = False
        if done is not None:
            done.wait(timeout)
        self._remove_socket()
        return clean

    def _remove_socket(self) -> None:
        """Removes the socket file unless another worker has put its own at
        the same path in the meantime."""
        try:
            st = os.lstat(self.socket_path)
        except OSError:
            return
        if (st.st_dev, st.st_ino) == self._sock_id:
            try:
                os.remove(self.socket_path)
            except OSError as e:
                self.log.warn("could not remove socket", socket=self.socket_path, error=str(e))
