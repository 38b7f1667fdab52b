"""The worker as a process, as hourglassd runs it: flags and environment,
SIGTERM (stop accepting, cancel the running job, exit 0), the crash fault,
and the launcher scripts."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

from tests.helpers import PYTHON_DIR, make_job, wait_until

import grpc

from hourglass_worker.proto import worker_pb2, worker_pb2_grpc

TORCH_LAUNCHER = os.path.join(PYTHON_DIR, "launch", "hourglass-torch-worker")
EXAMPLE_LAUNCHER = os.path.join(PYTHON_DIR, "launch", "hourglass-python-worker")


class WorkerProcess:
    def __init__(self, testcase, argv, env_socket=False):
        self.dir = tempfile.mkdtemp(prefix="hgw-")
        os.chmod(self.dir, 0o700)
        testcase.addCleanup(shutil.rmtree, self.dir, True)
        self.socket = os.path.join(self.dir, "w.sock")
        env = dict(os.environ)
        env.pop("HOURGLASS_WORKER_SOCKET", None)
        if env_socket:
            env["HOURGLASS_WORKER_SOCKET"] = self.socket
        else:
            argv = argv + ["--socket", self.socket]
        self.stderr = open(os.path.join(self.dir, "stderr"), "w+")
        testcase.addCleanup(self.stderr.close)
        self.proc = subprocess.Popen([sys.executable] + argv, env=env, stderr=self.stderr, stdout=subprocess.DEVNULL)
        testcase.addCleanup(self.kill)
        self.channel = grpc.insecure_channel("unix:" + self.socket)
        testcase.addCleanup(self.channel.close)
        self.stub = worker_pb2_grpc.WorkerServiceStub(self.channel)

    def wait_ready(self, timeout=30):
        # Readiness is what the executor uses: Describe answers.
        return self.stub.Describe(worker_pb2.DescribeRequest(), timeout=timeout, wait_for_ready=True)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def logs(self):
        self.stderr.flush()
        self.stderr.seek(0)
        out = []
        for line in self.stderr.read().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out


class ProcessTest(unittest.TestCase):
    def test_sigterm_idle_exits_zero_and_removes_socket(self):
        w = WorkerProcess(self, [TORCH_LAUNCHER, "--backend", "numpy"])
        d = w.wait_ready()
        self.assertEqual((d.device, d.busy), ("cpu", False))
        w.proc.send_signal(signal.SIGTERM)
        self.assertEqual(w.proc.wait(10), 0)
        self.assertFalse(os.path.exists(w.socket))
        msgs = [r["msg"] for r in w.logs()]
        self.assertIn("worker stopping", msgs)
        self.assertIn("worker stopped", msgs)

    def test_sigterm_cancels_the_running_job(self):
        w = WorkerProcess(self, [TORCH_LAUNCHER, "--backend", "numpy", "--unsafe-fault-injection"], env_socket=True)
        w.wait_ready()
        job = make_job(model="synthetic-diffusion-v1", steps=150, fault="slow=50ms")
        call = w.stub.Run(worker_pb2.RunRequest(job=job), timeout=30)
        it = iter(call)
        next(it)  # the first step is done: the job runs
        start = time.monotonic()
        w.proc.send_signal(signal.SIGTERM)
        with self.assertRaises(grpc.RpcError) as cm:
            for _ in it:
                pass
        self.assertIn(cm.exception.code(), (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE))
        self.assertEqual(w.proc.wait(10), 0)
        self.assertLess(time.monotonic() - start, 5, "stopped at the next step, not after 150 (7.5 s)")
        stopped = [r for r in w.logs() if r["msg"] == "job stopped"]
        self.assertEqual(len(stopped), 1)
        self.assertEqual(stopped[0]["outcome"], "Canceled")
        self.assertLess(stopped[0]["steps_reported"], 100)

    def test_crash_fault_exits_3(self):
        w = WorkerProcess(self, [TORCH_LAUNCHER, "--backend", "numpy", "--unsafe-fault-injection"])
        w.wait_ready()
        job = make_job(model="synthetic-diffusion-v1", steps=10, fault="crash")
        with self.assertRaises(grpc.RpcError):
            list(w.stub.Run(worker_pb2.RunRequest(job=job), timeout=30))
        self.assertEqual(w.proc.wait(10), 3)

    def test_hang_fault_stays_busy(self):
        w = WorkerProcess(self, [TORCH_LAUNCHER, "--backend", "numpy", "--unsafe-fault-injection"])
        w.wait_ready()
        job = make_job(id="stuck", model="synthetic-diffusion-v1", steps=10, fault="hang")
        with self.assertRaises(grpc.RpcError) as cm:
            list(w.stub.Run(worker_pb2.RunRequest(job=job), timeout=0.5))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        time.sleep(0.3)
        d = w.stub.Describe(worker_pb2.DescribeRequest(), timeout=5)
        self.assertEqual((d.busy, d.job_id), (True, "stuck"), "a wedged job keeps the worker busy: the executor kills it")

    def test_no_socket_is_usage_error(self):
        env = dict(os.environ)
        env.pop("HOURGLASS_WORKER_SOCKET", None)
        p = subprocess.run([sys.executable, TORCH_LAUNCHER, "--backend", "numpy"], env=env, capture_output=True, timeout=30)
        self.assertEqual(p.returncode, 2)
        self.assertIn(b"no socket path", p.stderr)
        p = subprocess.run([sys.executable, TORCH_LAUNCHER, "--bogus"], env=env, capture_output=True, timeout=30)
        self.assertEqual(p.returncode, 2)

    def test_example_worker(self):
        w = WorkerProcess(self, [EXAMPLE_LAUNCHER])
        d = w.wait_ready()
        self.assertEqual(d.models[0].name, "python-gradient-v1")
        events = list(w.stub.Run(worker_pb2.RunRequest(job=make_job(model="python-gradient-v1", image_count=2)), timeout=30))
        self.assertEqual(sum(1 for e in events if e.HasField("image")), 2)
        w.proc.send_signal(signal.SIGTERM)
        self.assertEqual(w.proc.wait(10), 0)

    def test_second_signal_kills_at_once(self):
        w = WorkerProcess(self, [TORCH_LAUNCHER, "--backend", "numpy", "--unsafe-fault-injection"])
        w.wait_ready()
        job = make_job(model="synthetic-diffusion-v1", steps=10, fault="hang")
        call = w.stub.Run(worker_pb2.RunRequest(job=job), timeout=30)
        next(iter(call))
        w.proc.send_signal(signal.SIGTERM)  # the job ignores it: stop waits
        wait_until(lambda: any(r["msg"] == "worker stopping" for r in w.logs()), what="stopping")
        w.proc.send_signal(signal.SIGTERM)
        self.assertEqual(w.proc.wait(5), -signal.SIGTERM)


if __name__ == "__main__":
    unittest.main()
