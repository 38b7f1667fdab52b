"""Serving a real diffusers pipeline as an hourglass worker.

diffusers pipelines call ``callback_on_step_end(pipe, step, timestep,
callback_kwargs)`` after every denoising step and expect the kwargs dict
back. :class:`StepCallback` turns that into hourglass progress (one Progress
per image in the batch) and a cancellation check: when the job's call is
cancelled or past its deadline, ``ctx.progress`` raises, the exception leaves
the pipeline, and the worker is idle again within one step. On CUDA it first
waits for the step's kernels, so that a stopped job leaves no queued GPU work.

:class:`DiffusersGenerator` is a complete generator around a pipeline::

    import torch
    from diffusers import StableDiffusionXLPipeline
    import hourglass_worker as hw
    from hourglass_torch.diffusers_adapter import DiffusersGenerator

    pipe = StableDiffusionXLPipeline.from_pretrained(
        "/models/sdxl", torch_dtype=torch.float16).to("cuda")
    hw.main(DiffusersGenerator(pipe, model="sdxl-base-1.0"))

and in hourglassd's config::

    workers:
      command: ["/usr/bin/python3", "/srv/my_sdxl_worker.py"]
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np

import hourglass_worker as hw
from hourglass_worker import imaging


def _is_cuda_tensor(x: Any) -> bool:
    return bool(getattr(x, "is_cuda", False))


class StepCallback:
    """``callback_on_step_end`` for a diffusers pipeline.

    Reports step+1 of total_steps for every image index in image_indices and
    raises the SDK's JobStopped when the job must stop. preview, if given, is
    called as ``preview(ctx, step, callback_kwargs)`` on the steps the job
    asked previews for (job.wants_preview); it may send ctx.preview(...).
    """

    def __init__(self, ctx: hw.Context, total_steps: int, image_indices: Iterable[int],
                 preview: Optional[Callable[[hw.Context, int, Dict[str, Any]], None]] = None,
                 sync_cuda: bool = True) -> None:
        self.ctx = ctx
        self.total_steps = total_steps
        self.image_indices = list(image_indices)
        self.preview = preview
        self.sync_cuda = sync_cuda
        self.steps_done = 0

    def __call__(self, pipe: Any, step: int, timestep: Any, callback_kwargs: Dict[str, Any]) -> Dict[str, Any]:
        latents = callback_kwargs.get("latents") if callback_kwargs else None
        if self.sync_cuda and _is_cuda_tensor(latents):
            import torch  # noqa: PLC0415  (a CUDA tensor means torch is there)

            torch.cuda.synchronize(latents.device)
        s = step + 1
        for i in self.image_indices:
            self.ctx.progress(s, self.total_steps, i)  # raises when the job must stop
        self.steps_done = s
        if self.preview is not None and self.ctx.job.wants_preview(s):
            self.preview(self.ctx, s, callback_kwargs)
        return callback_kwargs


def to_rgb8(image: Any) -> np.ndarray:
    """A pipeline's output image as (H, W, 3) uint8: a PIL image, or a numpy
    array (H, W, 3) of floats in [0, 1] (output_type="np") or of uint8."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)  # CHW
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.ascontiguousarray(a[..., :3])


class DiffusersGenerator:
    """An hourglass generator around a diffusers text-to-image pipeline.

    Each job runs as one pipeline call with num_images_per_prompt =
    image_count and one torch.Generator per image seeded with seed+i, so a
    retry with the same seed gives the same images. Extra keyword arguments
    for the pipeline go in ``pipeline_kwargs``; ``styles`` lists the style
    names the worker accepts (applied by ``apply_styles(job) -> (prompt,
    negative_prompt)`` when given).
    """

    def __init__(self, pipe: Any, model: str, *, styles: Sequence[str] = (),
                 apply_styles: Optional[Callable[[hw.Job], Any]] = None,
                 pipeline_kwargs: Optional[Dict[str, Any]] = None, version: str = "hourglass-diffusers/0.1.0") -> None:
        self.pipe = pipe
        self.model = model
        self.styles = list(styles)
        self.apply_styles = apply_styles
        self.pipeline_kwargs = dict(pipeline_kwargs or {})
        self.version = version

    def _device(self):
        return getattr(self.pipe, "device", None)

    def describe(self) -> hw.Description:
        dev = self._device()
        d = hw.Description(models=[hw.Model(self.model, True)], styles=list(self.styles), device="cpu",
                           version=self.version)
        if dev is not None and getattr(dev, "type", "") == "cuda":
            import torch  # noqa: PLC0415

            idx = dev.index if dev.index is not None else torch.cuda.current_device()
            d.device = "cuda:%d (%s)" % (idx, torch.cuda.get_device_name(idx))
            try:
                free, total = torch.cuda.mem_get_info(idx)
                d.memory_total_bytes, d.memory_used_bytes = int(total), int(total - free)
            except Exception:  # noqa: BLE001
                pass
        return d

    def generators(self, job: hw.Job) -> List[Any]:
        """One seeded random generator per image: torch.Generator on the
        pipeline's device when torch is there, else numpy Generators (for
        pipelines, such as test doubles, that take those)."""
        seeds = [job.image_seed(i) for i in range(job.image_count)]
        try:
            import torch  # noqa: PLC0415
        except ImportError:
            return [np.random.Generator(np.random.PCG64(s)) for s in seeds]
        dev = self._device() or "cpu"
        return [torch.Generator(device=dev).manual_seed(s) for s in seeds]

    def generate(self, job: hw.Job, ctx: hw.Context) -> None:
        if job.model != self.model:
            raise hw.InvalidJob("model", "unknown model %r; this worker runs %r" % (job.model, self.model))
        for s in job.styles:
            if s not in self.styles:
                raise hw.InvalidJob("styles", "unknown style %r" % s)
        if job.output_format == "jpeg" and not imaging.have_pillow():
            raise hw.InvalidJob("output_format", "JPEG output needs pillow, which this worker's Python lacks")
        prompt, negative = job.prompt, job.negative_prompt
        if self.apply_styles is not None and job.styles:
            prompt, negative = self.apply_styles(job)
        callback = StepCallback(ctx, job.steps, range(job.image_count))
        kwargs = dict(self.pipeline_kwargs)
        kwargs.update(prompt=prompt, negative_prompt=negative or None, num_inference_steps=job.steps,
                      guidance_scale=job.guidance_scale, width=job.width, height=job.height,
                      num_images_per_prompt=job.image_count, generator=self.generators(job),
                      callback_on_step_end=callback, output_type="np")
        out = self.pipe(**kwargs)
        ctx.check()  # a pipeline that swallowed the stop must not send images
        images = getattr(out, "images", out)
        for i, img in enumerate(images):
            px = to_rgb8(img)
            h, w = px.shape[0], px.shape[1]
            data, mime = imaging.encode(px, w, h, job.output_format)
            ctx.image(data, mime, job.image_seed(i), w, h, i)
