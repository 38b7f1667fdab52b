"""hourglass_worker: write an hourglass worker in Python.

A worker is a process that serves hourglass.worker.v1.WorkerService on the
Unix socket hourglassd gives it (``--socket PATH`` or $HOURGLASS_WORKER_SOCKET)
and runs one job at a time. This package does the protocol; you write one
function::

    import hourglass_worker as hw

    def generate(job: hw.Job, ctx: hw.Context) -> None:
        for i in range(job.image_count):
            for step in range(1, job.steps + 1):
                ...                                  # one sampling step
                ctx.progress(step, job.steps, i)     # heartbeat + cancellation check
            ctx.image(png_bytes, "image/png", job.image_seed(i), job.width, job.height, i)

    if __name__ == "__main__":
        hw.main(generate)

or a class with ``generate(job, ctx)`` and ``describe() -> Description``
(models, styles, device, memory). See python/README.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any, List, Optional

from . import _telemetry
from ._log import Logger
from .worker import (DEFAULT_STOP_TIMEOUT, ERROR_DOMAIN, REASON_OUT_OF_MEMORY, SOCKET_ENV, Cancelled, Context,
                     DeadlineExceeded, Description, InvalidJob, Job, JobStopped, Model, OutOfMemory, SocketError,
                     WorkerServer, is_out_of_memory, to_status, validate_job)

__version__ = "0.1.0"

__all__ = [
    "Cancelled", "Context", "DeadlineExceeded", "Description", "InvalidJob", "Job", "JobStopped", "Logger", "Model",
    "OutOfMemory", "SocketError", "WorkerServer", "argument_parser", "exit_process", "is_out_of_memory", "main",
    "serve", "to_status", "validate_job", "ERROR_DOMAIN", "REASON_OUT_OF_MEMORY", "SOCKET_ENV",
]


def argument_parser(prog: Optional[str] = None, description: Optional[str] = None) -> argparse.ArgumentParser:
    """The flags every worker takes: --socket and --unsafe-fault-injection.
    Add your own and pass the result to serve()."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--socket", metavar="PATH", default="",
                   help="Unix socket to serve on (default $%s)" % SOCKET_ENV)
    p.add_argument("--unsafe-fault-injection", action="store_true",
                   help="honour Job.fault; TEST-ONLY, lets a job hang, crash or exhaust the worker")
    return p


def serve(generator: Any, socket_path: Optional[str] = None, *, unsafe_fault_injection: bool = False,
          stop_timeout: float = DEFAULT_STOP_TIMEOUT, logger: Optional[Logger] = None,
          service_name: str = "hourglass-python-worker") -> int:
    """Serves generator until SIGTERM or SIGINT and returns the exit status:
    0 after a clean stop, 1 when serving fails or the running job ignored
    cancellation, 2 without a socket path. Call it from the main thread.

    On the first signal the worker stops accepting calls, cancels the running
    job (it stops at its next step), waits up to stop_timeout for it, and
    removes its socket. A second signal kills the process at once.
    """
    log = logger or Logger()
    path = socket_path or os.environ.get(SOCKET_ENV, "")
    if not path:
        log.error("no socket path: pass --socket or set " + SOCKET_ENV)
        return 2
    if unsafe_fault_injection:
        log.warn("UNSAFE: fault injection is ON; jobs may make this worker hang, crash or fail on purpose. "
                 "Never use this in production.")
    stop = threading.Event()
    received: List[int] = []

    def on_signal(signum, _frame) -> None:
        received.append(signum)
        # A second signal kills at once, as an operator pressing Ctrl-C
        # twice expects.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    flush_telemetry = _telemetry.setup(service_name, log)
    srv = WorkerServer(generator, path, unsafe_fault_injection=unsafe_fault_injection, logger=log)
    try:
        srv.start()
    except (SocketError, OSError, RuntimeError) as e:
        log.error("worker failed", error=str(e))
        flush_telemetry()
        return 1
    stop.wait()
    log.info("worker stopping", signal=signal.Signals(received[0]).name if received else "")
    clean = srv.stop(stop_timeout)
    flush_telemetry()
    log.info("worker stopped", clean=clean)
    return 0 if clean else 1


def exit_process(code: int) -> None:
    """Exits at once with code, after flushing stdout and stderr. A job thread
    that ignored cancellation must not keep the process alive, and Python's
    normal exit would wait for the gRPC threads."""
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def main(generator: Any, argv: Optional[List[str]] = None, *, prog: Optional[str] = None) -> None:
    """Parses --socket and --unsafe-fault-injection, serves generator, and
    exits the process with serve()'s status."""
    args = argument_parser(prog).parse_args(argv)
    exit_process(serve(generator, args.socket, unsafe_fault_injection=args.unsafe_fault_injection))
