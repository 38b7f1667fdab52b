"""SyntheticDiffusion: the hourglass_worker generator around the workload."""

from __future__ import annotations

from typing import List, Optional

import hourglass_worker as hw
from hourglass_worker import imaging

from .workload import STYLES, conditioning, initial_noise, make_backend, now, style_look

MODEL = "synthetic-diffusion-v1"
VERSION = "hourglass-torch/0.1.0"


class SyntheticDiffusion:
    """Serves the synthetic diffusion workload (see workload.py).

    ``max_batch`` bounds how many images share one batch; a job with more
    runs in several batches.
    """

    def __init__(self, backend=None, *, model: str = MODEL, max_batch: int = 32) -> None:
        self.backend = backend if backend is not None else make_backend()
        self.model = model
        self.max_batch = max(1, max_batch)

    def describe(self) -> hw.Description:
        device, total, used = self.backend.describe_device()
        return hw.Description(models=[hw.Model(self.model, True)], styles=list(STYLES), device=device,
                              memory_total_bytes=total, memory_used_bytes=used,
                              version="%s (%s)" % (VERSION, self.backend.name))

    def _check(self, job: hw.Job) -> None:
        if job.model != self.model:
            raise hw.InvalidJob("model", "unknown model %r; this worker runs %r" % (job.model, self.model))
        for s in job.styles:
            if s not in STYLES:
                raise hw.InvalidJob("styles", "unknown style %r" % s)
        if job.output_format == "jpeg" and not imaging.have_pillow():
            raise hw.InvalidJob("output_format", "JPEG output needs pillow, which this worker's Python lacks")

    def generate(self, job: hw.Job, ctx: hw.Context) -> None:
        self._check(job)
        b = self.backend
        lh, lw = job.height // 8, job.width // 8
        cond = conditioning(job.prompt, job.negative_prompt, job.guidance_scale)
        tint, contrast = style_look(job.styles, job.sharpness)
        previews = job.preview_every_n_steps > 0 and imaging.have_pillow()
        step_times: List[float] = []
        decode_time = encode_time = 0.0
        for first in range(0, job.image_count, self.max_batch):
            idx = list(range(first, min(job.image_count, first + self.max_batch)))
            state: dict = {}
            oom: Optional[str] = None
            try:
                state = b.start(initial_noise([job.image_seed(i) for i in idx], lh, lw), cond)
                for k in range(1, job.steps + 1):
                    t0 = now()
                    b.step(state, k, job.steps)
                    b.sync()  # the step is done on the device before it is reported
                    step_times.append(now() - t0)
                    for i in idx:
                        ctx.progress(k, job.steps, i)
                    if previews and job.wants_preview(k):
                        self._previews(ctx, job, state, idx, k, tint, contrast)
                t0 = now()
                pixels = b.decode(state, job.height, job.width, tint, contrast)
                decode_time += now() - t0
                b.free(state)
                for i, px in zip(idx, pixels):
                    t0 = now()
                    data, mime = imaging.encode(px, job.width, job.height, job.output_format)
                    encode_time += now() - t0
                    ctx.image(data, mime, job.image_seed(i), job.width, job.height, i)
            except Exception as e:  # noqa: BLE001
                if not hw.is_out_of_memory(e):
                    raise
                oom = (str(e).splitlines() or ["device out of memory"])[0]
            finally:
                b.free(state)
            if oom is not None:
                # Outside the except block, so that the traceback no longer
                # holds the failed step's tensors when the cache is emptied.
                b.empty_cache()
                raise hw.OutOfMemory(oom)
        n = len(step_times)
        ctx.log.info("synthetic diffusion timings", backend=b.name, device=b.device, batches=-(-job.image_count // self.max_batch),
                     steps=n, step_ms_mean=round(1000 * sum(step_times) / n, 3) if n else 0,
                     step_ms_max=round(1000 * max(step_times), 3) if n else 0,
                     compute_ms=round(1000 * sum(step_times), 3), decode_ms=round(1000 * decode_time, 3),
                     encode_ms=round(1000 * encode_time, 3))

    def _previews(self, ctx: hw.Context, job: hw.Job, state, idx, step: int, tint, contrast) -> None:
        pw, ph = imaging.preview_size(job.width, job.height)
        for i, px in zip(idx, self.backend.decode(state, ph, pw, tint, contrast)):
            enc = imaging.encode_preview(px, pw, ph)
            if enc is not None:
                ctx.preview(enc[0], i, step, enc[1], enc[2])

    def fault_hang(self, job: hw.Job, ctx: hw.Context) -> None:
        """TEST-ONLY (hang fault): on a GPU, wedge inside one long CUDA
        kernel, as a real stuck job would; elsewhere the SDK blocks."""
        wedge = getattr(self.backend, "wedge", None)
        if wedge is not None and getattr(self.backend, "cuda", False):
            ctx.log.warn("fault: wedging the GPU inside one long kernel")
            wedge()
