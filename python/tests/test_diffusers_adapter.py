"""The diffusers adapter with a fake pipeline that calls
callback_on_step_end as diffusers does: progress per image per step,
cancellation at the next step (the callback raises out of the pipeline),
out-of-memory mapping, images from output_type="np"."""

import threading
import time
import types
import unittest

from tests.helpers import WorkerTestCase, make_job, status_details, wait_until

import grpc
import numpy as np

import hourglass_worker as hw
from hourglass_torch.diffusers_adapter import DiffusersGenerator, StepCallback, to_rgb8


class FakePipeline:
    """Mimics a diffusers text-to-image pipeline's call convention."""

    def __init__(self, step_delay=0.0, fail_at=None, exc=None, block_at=None):
        self.step_delay = step_delay
        self.block_at = block_at  # step index at which to wait for gate
        self.blocked = threading.Event()
        self.fail_at = fail_at
        self.exc = exc
        self.calls = []
        self.steps_run = 0
        self.returned = threading.Event()
        self.gate = threading.Event()  # cleared: the next step blocks
        self.gate.set()
        self.device = None

    def __call__(self, prompt, negative_prompt=None, num_inference_steps=50, guidance_scale=5.0, width=None,
                 height=None, num_images_per_prompt=1, generator=None, callback_on_step_end=None, output_type="pil",
                 **kw):
        self.calls.append(dict(prompt=prompt, negative_prompt=negative_prompt, steps=num_inference_steps,
                               guidance_scale=guidance_scale, width=width, height=height,
                               n=num_images_per_prompt, output_type=output_type, kw=kw))
        try:
            n = num_images_per_prompt
            latents = np.stack([g.standard_normal((4, height // 8, width // 8)) for g in generator])
            assert len(generator) == n
            for i, t in enumerate(np.linspace(999, 0, num_inference_steps)):
                if self.step_delay:
                    time.sleep(self.step_delay)
                if self.fail_at is not None and i == self.fail_at:
                    raise self.exc
                if i == self.block_at:
                    self.blocked.set()
                    self.gate.wait()
                latents = latents * 0.9
                self.steps_run += 1
                if callback_on_step_end is not None:
                    out = callback_on_step_end(self, i, t, {"latents": latents})
                    latents = out.pop("latents", latents)
            img = np.clip(0.5 + 0.1 * latents[:, :3].repeat(8, axis=2).repeat(8, axis=3), 0, 1)
            return types.SimpleNamespace(images=img.transpose(0, 2, 3, 1))  # (N, H, W, 3) floats
        finally:
            self.returned.set()


def job(**kw):
    kw.setdefault("model", "fake-sd")
    return make_job(**kw)


class AdapterTest(WorkerTestCase):
    def test_generates_with_progress_per_image(self):
        pipe = FakePipeline()
        self.make_worker(DiffusersGenerator(pipe, "fake-sd"))
        events, err = self.run_job(job(steps=4, image_count=3, width=64, height=48, negative_prompt="dull"))
        self.assertIsNone(err)
        prog = [(e.progress.step, e.progress.total_steps, e.progress.image_index) for e in events if e.HasField("progress")]
        self.assertEqual(prog, [(s, 4, i) for s in range(1, 5) for i in range(3)])
        imgs = [e.image for e in events if e.HasField("image")]
        self.assertEqual([(i.index, i.seed, i.width, i.height, i.mime_type) for i in imgs],
                         [(k, 42 + k, 64, 48, "image/png") for k in range(3)])
        c = pipe.calls[0]
        self.assertEqual((c["steps"], c["n"], c["width"], c["height"], c["negative_prompt"], c["output_type"]),
                         (4, 3, 64, 48, "dull", "np"))

    def test_same_seed_same_images(self):
        pipe = FakePipeline()
        self.make_worker(DiffusersGenerator(pipe, "fake-sd"))
        a, _ = self.run_job(job(steps=2, seed=9))
        b, _ = self.run_job(job(steps=2, seed=9))
        self.assertEqual([e.image.data for e in a if e.HasField("image")], [e.image.data for e in b if e.HasField("image")])

    def test_cancellation_stops_the_pipeline_at_the_next_step(self):
        pipe = FakePipeline(block_at=3)
        pipe.gate.clear()  # the pipeline waits inside its fourth step
        self.make_worker(DiffusersGenerator(pipe, "fake-sd"))
        call, events, result, done = self.start_job(job(steps=150))
        self.assertTrue(pipe.blocked.wait(5), "the pipeline reached its fourth step")
        run = self.server.service.running()
        at_cancel = pipe.steps_run
        self.assertEqual(at_cancel, 3)
        call.cancel()
        wait_until(run.stop_event.is_set, what="the worker sees the cancellation")
        pipe.gate.set()
        self.assertTrue(pipe.returned.wait(3), "the pipeline did not stop")
        self.assertEqual(pipe.steps_run, at_cancel + 1, "stopped by the callback of the step in flight")
        wait_until(lambda: not self.describe().busy, what="idle")
        stopped = [r for r in self.logs() if r["msg"] == "job stopped"]
        self.assertEqual(stopped[0]["outcome"], "Canceled")

    def test_deadline(self):
        pipe = FakePipeline(step_delay=0.03)
        self.make_worker(DiffusersGenerator(pipe, "fake-sd"))
        _, err = self.run_job(job(steps=150), timeout=0.3)
        self.assertEqual(err.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertTrue(pipe.returned.wait(3))
        self.assertLess(pipe.steps_run, 30)

    def test_torch_oom_in_pipeline(self):
        TorchOOM = type("OutOfMemoryError", (RuntimeError,), {"__module__": "torch.cuda"})
        pipe = FakePipeline(fail_at=2, exc=TorchOOM("CUDA out of memory. Tried to allocate 8.00 GiB"))
        self.make_worker(DiffusersGenerator(pipe, "fake-sd"))
        events, err = self.run_job(job(steps=10))
        self.assertEqual(err.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        info = status_details(err)["error_info"]
        self.assertEqual((info["reason"], info["domain"]), ("WORKER_OUT_OF_MEMORY", "hourglass.dev"))
        self.assertFalse(self.describe().busy)

    def test_unknown_model_and_style(self):
        self.make_worker(DiffusersGenerator(FakePipeline(), "fake-sd", styles=["cinematic"]))
        _, err = self.run_job(job(model="other"))
        self.assertEqual(err.code(), grpc.StatusCode.INVALID_ARGUMENT)
        _, err = self.run_job(job(styles=["nope"]))
        self.assertEqual(err.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(self.describe().styles, ["cinematic"])


class StepCallbackTest(unittest.TestCase):
    def test_returns_kwargs_and_previews(self):
        calls, previews = [], []

        class Ctx:
            job = hw.Job(job(steps=4, preview_every_n_steps=2))

            def progress(self, step, total, i):
                calls.append((step, total, i))

        cb = StepCallback(Ctx(), 4, [0, 1], preview=lambda ctx, s, kw: previews.append(s))
        kw = {"latents": np.zeros(1)}
        for i in range(4):
            self.assertIs(cb(None, i, 999 - i, kw), kw)
        self.assertEqual(calls, [(s, 4, i) for s in range(1, 5) for i in (0, 1)])
        self.assertEqual(previews, [2, 4])
        self.assertEqual(cb.steps_done, 4)

    def test_stop_propagates(self):
        class Ctx:
            job = hw.Job(job())

            def progress(self, step, total, i):
                raise hw.Cancelled("job cancelled")

        with self.assertRaises(hw.Cancelled):
            StepCallback(Ctx(), 4, [0])(None, 0, 999, {})

    def test_to_rgb8(self):
        self.assertEqual(to_rgb8(np.ones((4, 5, 3))).dtype, np.uint8)
        self.assertEqual(to_rgb8(np.ones((3, 4, 5))).shape, (4, 5, 3))
        self.assertEqual(int(to_rgb8(np.full((2, 2, 3), 0.5)).max()), 128)


if __name__ == "__main__":
    unittest.main()
