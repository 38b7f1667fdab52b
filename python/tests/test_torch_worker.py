"""The PyTorch worker's synthetic diffusion workload: the numpy fallback
(always), torch on the CPU when PyTorch is installed, and the worker served
over a socket: images, determinism, cancellation at the next step."""

import io
import time
import unittest

from tests.helpers import WorkerTestCase, make_job, status_details, wait_until

import grpc
import numpy as np

import hourglass_worker as hw
from hourglass_torch import MODEL, STYLES, SyntheticDiffusion, workload
from hourglass_worker import imaging

try:
    import torch
except ImportError:
    torch = None


def job(**kw):
    kw.setdefault("model", MODEL)
    return make_job(**kw)


def run_direct(gen, pb):
    """Runs a generator without a server, collecting its images."""
    images, progress = [], []

    class Ctx:
        job = hw.Job(pb)
        log = hw.Logger(stream=io.StringIO())

        def progress(self, step, total, i):
            progress.append((step, total, i))

        def image(self, data, mime, seed, w, h, i):
            images.append((data, mime, seed, w, h, i))

        def preview(self, *a):
            pass

    ctx = Ctx()
    gen.generate(ctx.job, ctx)
    return images, progress


class NumpyWorkloadTest(unittest.TestCase):
    def setUp(self):
        self.gen = SyntheticDiffusion(workload.NumpyBackend())

    def test_deterministic_for_the_seed(self):
        a, prog = run_direct(self.gen, job(width=96, height=64, steps=4, seed=7))
        b, _ = run_direct(self.gen, job(width=96, height=64, steps=4, seed=7))
        c, _ = run_direct(self.gen, job(width=96, height=64, steps=4, seed=8))
        self.assertEqual(a[0][0], b[0][0])
        self.assertNotEqual(a[0][0], c[0][0])
        self.assertEqual(prog, [(s, 4, 0) for s in range(1, 5)])
        w, h, px = imaging.decode_png_zlib(a[0][0]) if not imaging.have_pillow() else (96, 64, None)
        self.assertEqual((w, h, a[0][1], a[0][3], a[0][4]), (96, 64, "image/png", 96, 64))

    def test_image_i_uses_seed_plus_i(self):
        two, prog = run_direct(self.gen, job(steps=3, seed=100, image_count=2))
        self.assertEqual([(t[2], t[5]) for t in two], [(100, 0), (101, 1)])
        self.assertEqual(len(prog), 6)
        one, _ = run_direct(self.gen, job(steps=3, seed=101, image_count=1))
        px_two = workload_pixels(two[1][0])
        px_one = workload_pixels(one[0][0])
        # Same seed, same picture (a batch of two may round differently in
        # the last bit; allow one level of difference).
        self.assertLessEqual(int(np.abs(px_two.astype(int) - px_one.astype(int)).max()), 1)

    def test_prompt_and_styles_change_the_image(self):
        base, _ = run_direct(self.gen, job(steps=3))
        other, _ = run_direct(self.gen, job(steps=3, prompt="a lighthouse"))
        styled, _ = run_direct(self.gen, job(steps=3, styles=["Fooocus Cinematic"]))
        self.assertNotEqual(base[0][0], other[0][0])
        self.assertNotEqual(base[0][0], styled[0][0])

    def test_refuses_unknown_model_style_and_jpeg_without_pillow(self):
        with self.assertRaises(hw.InvalidJob) as cm:
            run_direct(self.gen, job(model="sdxl"))
        self.assertEqual(cm.exception.field, "model")
        with self.assertRaises(hw.InvalidJob):
            run_direct(self.gen, job(styles=["Nope"]))
        if not imaging.have_pillow():
            with self.assertRaises(hw.InvalidJob) as cm:
                run_direct(self.gen, job(output_format=2))
            self.assertEqual(cm.exception.field, "output_format")

    def test_describe(self):
        d = self.gen.describe()
        self.assertEqual((d.device, d.models[0].name, d.models[0].default), ("cpu", MODEL, True))
        self.assertEqual(d.styles, list(STYLES))
        self.assertIn("numpy", d.version)

    def test_upsample_taps_match_bilinear(self):
        i0, i1, w0, w1 = workload.upsample_taps(16, 2)
        np.testing.assert_allclose(w0 + w1, 1.0, rtol=1e-6)
        self.assertEqual((i0.min(), i1.max()), (0, 1))

    def test_make_backend_fallback(self):
        b = workload.make_backend("numpy")
        self.assertEqual(b.name, "numpy")
        if torch is None:
            self.assertEqual(workload.make_backend("auto").name, "numpy")
            with self.assertRaises(RuntimeError):
                workload.make_backend("torch")


def workload_pixels(png: bytes) -> np.ndarray:
    if imaging.have_pillow():
        import io

        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    w, h, raw = imaging.decode_png_zlib(png)
    return np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3)


@unittest.skipIf(torch is None, "PyTorch is not installed")
class TorchCPUWorkloadTest(unittest.TestCase):
    def test_torch_cpu_matches_numpy(self):
        t = SyntheticDiffusion(workload.TorchBackend(torch, "cpu", 16, 1, "fp32"))
        n = SyntheticDiffusion(workload.NumpyBackend(16, 1))
        a, _ = run_direct(t, job(steps=4, seed=3))
        b, _ = run_direct(n, job(steps=4, seed=3))
        diff = np.abs(workload_pixels(a[0][0]).astype(int) - workload_pixels(b[0][0]).astype(int))
        self.assertLessEqual(int(diff.max()), 2, "the two backends compute the same workload")
        a2, _ = run_direct(t, job(steps=4, seed=3))
        self.assertEqual(a[0][0], a2[0][0], "deterministic on the same device")


@unittest.skipIf(torch is None or not torch.cuda.is_available(), "no CUDA")
class TorchCUDAWorkloadTest(unittest.TestCase):
    def test_cuda_deterministic_and_reports_memory(self):
        gen = SyntheticDiffusion(workload.make_backend("torch", "cuda"))
        a, _ = run_direct(gen, job(steps=6, seed=5, width=512, height=512, image_count=2))
        b, _ = run_direct(gen, job(steps=6, seed=5, width=512, height=512, image_count=2))
        self.assertEqual([x[0] for x in a], [x[0] for x in b])
        d = gen.describe()
        self.assertTrue(d.device.startswith("cuda:"), d.device)
        self.assertGreater(d.memory_total_bytes, 0)
        self.assertGreater(d.memory_used_bytes, 0)

    def test_cuda_oom_maps_to_resource_exhausted(self):
        class Huge(workload.TorchBackend):
            def step(self, state, k, steps):
                torch.empty(1 << 50, dtype=torch.uint8, device=self.dev)  # 1 PiB

        gen = SyntheticDiffusion(Huge(torch, "cuda", 8, 1))
        with self.assertRaises(hw.OutOfMemory):
            run_direct(gen, job(steps=2))


class ServedWorkerTest(WorkerTestCase):
    def test_served_over_socket(self):
        self.make_worker(SyntheticDiffusion(workload.NumpyBackend()))
        events, err = self.run_job(job(steps=5, image_count=2, width=128, height=96))
        self.assertIsNone(err)
        prog = [e for e in events if e.HasField("progress")]
        imgs = [e.image for e in events if e.HasField("image")]
        self.assertEqual(len(prog), 10)
        self.assertEqual([(i.index, i.seed, i.width, i.height) for i in imgs], [(0, 42, 128, 96), (1, 43, 128, 96)])
        timings = [r for r in self.logs() if r["msg"] == "synthetic diffusion timings"]
        self.assertEqual(timings[0]["steps"], 5)

    def test_cancellation_at_next_step(self):
        self.make_worker(SyntheticDiffusion(workload.NumpyBackend()), faults=True)
        call, events, result, done = self.start_job(job(steps=150, fault="slow=30ms", width=64, height=64))
        wait_until(lambda: len(events) >= 2, what="2 steps")
        call.cancel()
        start = time.monotonic()
        wait_until(lambda: not self.describe().busy, timeout=5, what="idle after cancel")
        self.assertLess(time.monotonic() - start, 3.0)
        stopped = [r for r in self.logs() if r["msg"] == "job stopped"]
        self.assertLess(stopped[0]["steps_reported"], 150)

    def test_unknown_model_is_invalid_argument(self):
        self.make_worker(SyntheticDiffusion(workload.NumpyBackend()))
        _, err = self.run_job(job(model="nope"))
        self.assertEqual(err.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(status_details(err)["field_violations"][0][0], "job.model")


if __name__ == "__main__":
    unittest.main()
