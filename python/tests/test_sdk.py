"""The SDK over a real Unix socket with a grpcio client, as the executor uses
it: progress stream, cancellation at the next step, one job at a time,
Describe's busy semantics, the status mapping, faults, the socket file."""

import os
import socket
import stat
import threading
import time
import unittest

from tests.helpers import WorkerTestCase, make_job, status_details, wait_until  # noqa: I001

import grpc

import hourglass_worker as hw


class Steps:
    """A generator with controllable steps: each step waits `delay`, and,
    while `gate` is cleared, blocks before reporting. It records what it saw."""

    def __init__(self, delay: float = 0.0, block_at: int = 0):
        self.delay = delay
        self.block_at = block_at  # step at which to wait for gate (0: none)
        self.blocked = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.returned = threading.Event()
        self.steps_run = 0
        self.raised = None
        self.jobs = []

    def describe(self):
        return hw.Description(models=[hw.Model("default", True)], styles=["s1"], device="cpu",
                              memory_total_bytes=10, memory_used_bytes=3, version="test/1")

    def generate(self, job, ctx):
        self.jobs.append(job)
        self.started.set()
        try:
            for i in range(job.image_count):
                for step in range(1, job.steps + 1):
                    if self.delay:
                        time.sleep(self.delay)
                    if step == self.block_at:
                        self.blocked.set()
                        self.gate.wait()
                    elif not self.block_at:
                        self.gate.wait()
                    self.steps_run += 1
                    ctx.progress(step, job.steps, i)
                ctx.image(b"img%d" % i, "image/png", job.image_seed(i), job.width, job.height, i)
        except hw.JobStopped as e:
            self.raised = e
            raise
        finally:
            self.returned.set()


class ProgressTest(WorkerTestCase):
    def test_progress_stream_and_images(self):
        gen = Steps()
        self.make_worker(gen)
        events, err = self.run_job(make_job(steps=3, image_count=2, seed=2**64 - 1))
        self.assertIsNone(err)
        kinds = [ev.WhichOneof("event") for ev in events]
        self.assertEqual(kinds, ["progress"] * 3 + ["image"] + ["progress"] * 3 + ["image"])
        self.assertEqual([(e.progress.step, e.progress.total_steps, e.progress.image_index) for e in events[:3]],
                         [(1, 3, 0), (2, 3, 0), (3, 3, 0)])
        img1 = events[-1].image
        self.assertEqual((img1.index, img1.seed, img1.mime_type, img1.data), (1, 0, "image/png", b"img1"))  # wraps at 2^64
        finished = [r for r in self.logs() if r["msg"] == "job finished"]
        self.assertEqual(len(finished), 1)
        self.assertEqual((finished[0]["steps_reported"], finished[0]["images_sent"], finished[0]["outcome"]), (6, 2, "OK"))

    def test_job_fields_reach_the_generator(self):
        gen = Steps()
        self.make_worker(gen)
        deadline = time.time() + 30
        job = make_job(styles=["s1"], negative_prompt="blurry", preview_every_n_steps=2, output_format=2)
        job.deadline.seconds, job.deadline.nanos = int(deadline), int((deadline % 1) * 1e9)
        tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        _, err = self.run_job(job, metadata=(("traceparent", tp),))
        self.assertIsNone(err)
        j = gen.jobs[0]
        self.assertEqual((j.prompt, j.negative_prompt, j.styles, j.output_format, j.mime_type), (
            "a red fox in the snow", "blurry", ["s1"], "jpeg", "image/jpeg"))
        self.assertAlmostEqual(j.deadline, deadline, places=3)
        self.assertEqual(j.traceparent, tp)
        self.assertTrue(j.wants_preview(2) and not j.wants_preview(3))
        self.assertNotIn("red fox", repr(j))

    def test_prompt_never_logged(self):
        self.make_worker(Steps())
        self.run_job(make_job(prompt="my secret prompt", negative_prompt="hidden negative"))
        text = self.logbuf.getvalue()
        self.assertNotIn("secret", text)
        self.assertNotIn("hidden negative", text)
        started = [r for r in self.logs() if r["msg"] == "job started"][0]
        self.assertEqual(started["prompt_len"], len("my secret prompt"))
        self.assertEqual(len(started["prompt_sha256"]), 12)


class CancellationTest(WorkerTestCase):
    def test_cancel_stops_at_next_step(self):
        gen = Steps(block_at=4)
        gen.gate.clear()
        self.make_worker(gen)
        call, events, result, done = self.start_job(make_job(steps=100))
        self.assertTrue(gen.blocked.wait(5), "the generator reached step 4")
        run = self.server.service.running()
        at_cancel = gen.steps_run
        self.assertEqual(at_cancel, 3)
        call.cancel()
        wait_until(run.stop_event.is_set, what="the worker sees the cancellation")
        gen.gate.set()  # the step in flight finishes; its progress call raises
        self.assertTrue(gen.returned.wait(5), "generator did not return after cancellation")
        self.assertIsInstance(gen.raised, hw.Cancelled)
        self.assertEqual(gen.steps_run, at_cancel + 1, "stopped at the first step boundary after the cancel")
        wait_until(lambda: not self.describe().busy, what="worker idle")
        stopped = [r for r in self.logs() if r["msg"] == "job stopped"]
        self.assertEqual(stopped[0]["outcome"], "Canceled")

    def test_call_deadline(self):
        gen = Steps(delay=0.02)
        self.make_worker(gen)
        start = time.monotonic()
        events, err = self.run_job(make_job(steps=150), timeout=0.3)
        self.assertEqual(err.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertTrue(gen.returned.wait(5))
        self.assertIsInstance(gen.raised, hw.DeadlineExceeded)
        self.assertLess(time.monotonic() - start, 2.0)
        self.assertLess(gen.steps_run, 150)

    def test_job_deadline_without_call_deadline(self):
        # A buggy executor that forgets the call deadline: the job's own
        # deadline still stops the job, and the worker says so.
        gen = Steps(delay=0.02)
        self.make_worker(gen)
        job = make_job(steps=150)
        d = time.time() + 0.25
        job.deadline.seconds, job.deadline.nanos = int(d), int((d % 1) * 1e9)
        events, err = self.run_job(job, timeout=None)
        self.assertIsNotNone(err)
        self.assertEqual(err.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertEqual(err.details(), "job deadline exceeded")
        self.assertLess(len(events), 150)
        self.assertFalse(self.describe().busy)

    def test_ctx_wait_and_check(self):
        seen = {}

        def gen(job, ctx):
            seen["cancelled_before"] = ctx.cancelled
            try:
                ctx.wait(30)
            except hw.JobStopped as e:
                seen["raised"] = type(e)
                seen["cancelled_after"] = ctx.cancelled
                raise

        self.make_worker(gen)
        start = time.monotonic()
        _, err = self.run_job(make_job(), timeout=0.2)
        self.assertEqual(err.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        wait_until(lambda: "raised" in seen)
        self.assertLess(time.monotonic() - start, 2)
        self.assertEqual(seen, {"cancelled_before": False, "raised": hw.DeadlineExceeded, "cancelled_after": True})


class BusyTest(WorkerTestCase):
    def test_busy_refuses_second_job_and_describe_is_truthful(self):
        gen = Steps()
        self.make_worker(gen)
        d = self.describe()
        self.assertEqual((d.busy, d.job_id, d.device, d.version, d.memory_total_bytes, d.memory_used_bytes),
                         (False, "", "cpu", "test/1", 10, 3))
        self.assertEqual([(m.name, m.default) for m in d.models], [("default", True)])
        self.assertEqual(list(d.styles), ["s1"])

        gen.gate.clear()  # the job blocks inside its first step
        call, events, result, done = self.start_job(make_job(id="first", steps=5))
        self.assertTrue(gen.started.wait(5))
        d = self.describe()
        self.assertEqual((d.busy, d.job_id), (True, "first"))

        _, err = self.run_job(make_job(id="second"))
        self.assertEqual(err.code(), grpc.StatusCode.FAILED_PRECONDITION)
        self.assertIn("first", err.details())

        # Cancelled, but the generator has not returned: still busy.
        call.cancel()
        self.assertTrue(done.wait(5))
        time.sleep(0.1)
        d = self.describe()
        self.assertEqual((d.busy, d.job_id), (True, "first"), "busy must hold until generate returns")
        gen.gate.set()  # the step ends; progress raises; generate returns
        self.assertTrue(gen.returned.wait(5))
        wait_until(lambda: not self.describe().busy, what="busy=false once generate returned")
        self.assertEqual(self.describe().job_id, "")

        gen.started.clear()
        events, err = self.run_job(make_job(id="third", steps=2))
        self.assertIsNone(err, "the worker takes the next job")

    def test_context_unusable_after_return(self):
        kept = {}

        def gen(job, ctx):
            kept["ctx"] = ctx

        self.make_worker(gen)
        _, err = self.run_job(make_job())
        self.assertIsNone(err)
        with self.assertRaises(RuntimeError):
            kept["ctx"].progress(1, 1, 0)


class StatusMappingTest(WorkerTestCase):
    def check_oom(self, exc):
        def gen(job, ctx):
            ctx.progress(1, job.steps, 0)
            raise exc

        self.make_worker(gen)
        events, err = self.run_job(make_job())
        self.assertEqual(err.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        st = status_details(err)
        self.assertEqual(st["code"], grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
        self.assertEqual((st["error_info"]["reason"], st["error_info"]["domain"]), ("WORKER_OUT_OF_MEMORY", "hourglass.dev"))
        self.assertEqual(len(events), 1)
        self.assertFalse(self.describe().busy, "an out-of-memory job leaves the worker idle")

    def test_out_of_memory(self):
        self.check_oom(hw.OutOfMemory("CUDA: 2 GiB more needed"))

    def test_torch_out_of_memory(self):
        # torch.cuda.OutOfMemoryError, without importing torch.
        TorchOOM = type("OutOfMemoryError", (RuntimeError,), {"__module__": "torch.cuda"})
        self.check_oom(TorchOOM("CUDA out of memory. Tried to allocate 20.00 GiB"))

    def test_wrapped_cuda_oom_message(self):
        try:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        except RuntimeError as inner:
            wrapped = ValueError("pipeline failed")
            wrapped.__cause__ = inner
        self.check_oom(wrapped)

    def test_invalid_job_from_generator(self):
        def gen(job, ctx):
            raise hw.InvalidJob("model", "unknown model 'x'")

        self.make_worker(gen)
        _, err = self.run_job(make_job())
        self.assertEqual(err.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(status_details(err)["field_violations"], [("job.model", "unknown model 'x'")])

    def test_structural_validation(self):
        self.make_worker(Steps())
        _, err = self.run_job(make_job(width=63, steps=0, image_count=33, height=4096))
        self.assertEqual(err.code(), grpc.StatusCode.INVALID_ARGUMENT)
        fields = [f for f, _ in status_details(err)["field_violations"]]
        self.assertEqual(fields, ["job.width", "job.height", "job.steps", "job.image_count"])
        _, err = self.run_job(make_job(guidance_scale=float("nan")))
        self.assertEqual(err.code(), grpc.StatusCode.INVALID_ARGUMENT)
        _, err = self.run_job(None)
        self.assertEqual(err.code(), grpc.StatusCode.INVALID_ARGUMENT)

    def test_bug_is_internal_and_worker_survives(self):
        calls = []

        def gen(job, ctx):
            calls.append(job.id)
            if len(calls) == 1:
                raise ValueError("boom " + "x" * 1000)

        self.make_worker(gen)
        _, err = self.run_job(make_job())
        self.assertEqual(err.code(), grpc.StatusCode.INTERNAL)
        self.assertTrue(err.details().startswith("worker: ValueError: boom"))
        self.assertLessEqual(len(err.details()), 260)
        failed = [r for r in self.logs() if r["msg"] == "job failed"][0]
        self.assertIn("Traceback", failed["stack"])
        _, err = self.run_job(make_job())
        self.assertIsNone(err)

    def test_plain_function_and_default_describe(self):
        self.make_worker(lambda job, ctx: None)
        d = self.describe()
        self.assertEqual(([m.name for m in d.models], d.device, d.busy), (["default"], "cpu", False))


class FaultTest(WorkerTestCase):
    def test_oom_fault(self):
        self.make_worker(Steps(), faults=True)
        events, err = self.run_job(make_job(fault="oom", steps=5))
        self.assertEqual(err.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertEqual(status_details(err)["error_info"]["reason"], "WORKER_OUT_OF_MEMORY")
        self.assertEqual(len(events), 1)

    def test_slow_fault(self):
        self.make_worker(Steps(), faults=True)
        start = time.monotonic()
        _, err = self.run_job(make_job(fault="slow=40ms", steps=5))
        self.assertIsNone(err)
        self.assertGreaterEqual(time.monotonic() - start, 0.2)

    def test_slow_fault_is_cancellable(self):
        gen = Steps()
        self.make_worker(gen, faults=True)
        start = time.monotonic()
        _, err = self.run_job(make_job(fault="slow=10s", steps=5), timeout=0.3)
        self.assertEqual(err.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertTrue(gen.returned.wait(3))
        self.assertLess(time.monotonic() - start, 3)

    def test_ignore_cancel_keeps_the_worker_busy(self):
        gen = Steps()
        self.make_worker(gen, faults=True)
        start = time.monotonic()
        _, err = self.run_job(make_job(fault="slow=20ms,ignore-cancel", steps=40), timeout=0.2)
        self.assertEqual(err.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertTrue(self.describe().busy, "ignore-cancel: still busy after the deadline")
        self.assertTrue(gen.returned.wait(5))
        self.assertEqual(gen.steps_run, 40, "every step ran despite the cancellation")
        self.assertGreaterEqual(time.monotonic() - start, 0.8)
        wait_until(lambda: not self.describe().busy)

    def test_unknown_fault_is_invalid(self):
        self.make_worker(Steps(), faults=True)
        _, err = self.run_job(make_job(fault="explode"))
        self.assertEqual(err.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(status_details(err)["field_violations"][0][0], "job.fault")

    def test_faults_ignored_without_the_flag(self):
        self.make_worker(Steps(), faults=False)
        for fault in ("oom", "crash", "hang"):
            _, err = self.run_job(make_job(fault=fault))
            self.assertIsNone(err, fault)
        warned = [r for r in self.logs() if "fault injection is off" in r["msg"]]
        self.assertEqual(len(warned), 1, "logged once")

    def test_parse_duration(self):
        from hourglass_worker._faults import parse_duration, parse_faults

        self.assertAlmostEqual(parse_duration("1m30s"), 90)
        self.assertAlmostEqual(parse_duration("250ms"), 0.25)
        self.assertAlmostEqual(parse_duration("1.5s"), 1.5)
        f = parse_faults("slow=50ms, ignore-cancel")
        self.assertTrue(f.ignore_cancel)
        self.assertAlmostEqual(f.slow, 0.05)
        for bad in ("slow=", "slow=-1s", "slow=5", "nope"):
            with self.assertRaises(ValueError):
                parse_faults(bad)


class SocketTest(WorkerTestCase):
    def test_socket_mode(self):
        self.make_worker(Steps())
        self.assertEqual(stat.S_IMODE(os.lstat(self.socket).st_mode), 0o600)
        self.server.stop(1)
        self.assertFalse(os.path.exists(self.socket), "socket removed on stop")

    def test_stale_socket_replaced_live_socket_refused(self):
        self.make_worker(Steps())
        # Live: another worker must not take the path over.
        other = hw.WorkerServer(Steps(), self.socket, logger=hw.Logger(stream=self.logbuf))
        with self.assertRaises(hw.SocketError):
            other.start()
        self.server.stop(1)
        # Stale: a socket file nobody listens on (a killed worker's).
        s = socket.socket(socket.AF_UNIX)
        s.bind(self.socket)
        s.close()
        srv = hw.WorkerServer(Steps(), self.socket, logger=hw.Logger(stream=self.logbuf))
        srv.start()
        self.addCleanup(srv.stop, 1)
        self.assertFalse(self.describe().busy)

    def test_not_a_socket_refused(self):
        self.make_worker(Steps())
        path = os.path.join(self.dir, "file")
        open(path, "w").close()
        with self.assertRaises(hw.SocketError):
            hw.WorkerServer(Steps(), path, logger=hw.Logger(stream=self.logbuf)).start()


if __name__ == "__main__":
    unittest.main()
