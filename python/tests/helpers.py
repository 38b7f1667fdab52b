"""Shared test helpers: a worker served in-process on a real Unix socket, and
a gRPC client for it, as the executor would use it."""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
import threading
import time
import unittest

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if PYTHON_DIR not in sys.path:
    sys.path.insert(0, PYTHON_DIR)

import grpc  # noqa: E402

import hourglass_worker as hw  # noqa: E402
from hourglass_worker import _rpcstatus  # noqa: E402
from hourglass_worker.proto import generate_pb2, worker_pb2, worker_pb2_grpc  # noqa: E402


def make_job(**kw) -> "worker_pb2.Job":
    base = dict(id="job-1", prompt="a red fox in the snow", steps=3, width=64, height=64, image_count=1, seed=42,
                guidance_scale=4.0, sharpness=2.0, model="default", output_format=generate_pb2.OUTPUT_FORMAT_PNG)
    base.update(kw)
    return worker_pb2.Job(**base)


def wait_until(cond, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(0.005)


def status_details(err: grpc.RpcError):
    return _rpcstatus.status_from_trailers(err.trailing_metadata())


class WorkerTestCase(unittest.TestCase):
    """Serves self.generator (set by make_worker) on a socket in a private
    directory; self.stub talks to it."""

    def make_worker(self, generator, *, faults: bool = False):
        self.dir = tempfile.mkdtemp(prefix="hgw-")
        os.chmod(self.dir, 0o700)
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.socket = os.path.join(self.dir, "w.sock")
        self.logbuf = io.StringIO()
        self.server = hw.WorkerServer(generator, self.socket, unsafe_fault_injection=faults,
                                      logger=hw.Logger(stream=self.logbuf))
        self.server.start()
        self.addCleanup(self.server.stop, 2.0)
        self.channel = grpc.insecure_channel("unix:" + self.socket)
        self.addCleanup(self.channel.close)
        self.stub = worker_pb2_grpc.WorkerServiceStub(self.channel)
        return self.server

    def describe(self):
        return self.stub.Describe(worker_pb2.DescribeRequest(), timeout=5)

    def run_job(self, job, timeout: float = 10, metadata=None):
        """Runs job to the end; returns (events, error or None)."""
        events = []
        try:
            for ev in self.stub.Run(worker_pb2.RunRequest(job=job), timeout=timeout, metadata=metadata):
                events.append(ev)
        except grpc.RpcError as e:
            return events, e
        return events, None

    def start_job(self, job, timeout: float = 30):
        """Starts job in the background; returns (call, events, done)."""
        call = self.stub.Run(worker_pb2.RunRequest(job=job), timeout=timeout)
        events, result = [], {}
        done = threading.Event()

        def consume():
            try:
                for ev in call:
                    events.append(ev)
            except grpc.RpcError as e:
                result["error"] = e
            finally:
                done.set()

        threading.Thread(target=consume, daemon=True).start()
        return call, events, result, done

    def logs(self):
        import json

        return [json.loads(line) for line in self.logbuf.getvalue().splitlines() if line.strip()]
