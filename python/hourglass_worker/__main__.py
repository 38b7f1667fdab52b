"""``python -m hourglass_worker --socket PATH``: a tiny example worker.

It needs nothing but the standard library and the SDK: each image is a
gradient whose colours come from the prompt's hash, built one "step" at a
time. It exists to show the SDK's shape and to try hourglassd with a Python
worker quickly; the PyTorch worker is ``python -m hourglass_torch``.
"""

import hashlib
import time

import hourglass_worker as hw
from hourglass_worker import imaging

MODEL = "python-gradient-v1"


class Gradient:
    def describe(self) -> hw.Description:
        return hw.Description(models=[hw.Model(MODEL, default=True)], device="cpu",
                              version="hourglass-python-example/" + hw.__version__)

    def generate(self, job: hw.Job, ctx: hw.Context) -> None:
        if job.model != MODEL:
            raise hw.InvalidJob("model", "unknown model %r" % job.model)
        if job.styles:
            raise hw.InvalidJob("styles", "this worker has no styles")
        fmt = "png" if not imaging.have_pillow() else job.output_format
        if job.output_format != fmt:
            raise hw.InvalidJob("output_format", "JPEG needs pillow, which this worker lacks")
        for i in range(job.image_count):
            h = hashlib.sha256(("%d:%s" % (job.image_seed(i), job.prompt)).encode()).digest()
            for step in range(1, job.steps + 1):
                time.sleep(0.001)  # the "work" of one step
                ctx.progress(step, job.steps, i)
            w, ht = job.width, job.height
            row = bytearray()
            for y in range(ht):
                for x in range(w):
                    row += bytes(((h[0] + x * 255 // w) & 255, (h[1] + y * 255 // ht) & 255, h[2]))
            data, mime = imaging.encode(bytes(row), w, ht, fmt)
            ctx.image(data, mime, job.image_seed(i), w, ht, i)


if __name__ == "__main__":
    hw.main(Gradient(), prog="python -m hourglass_worker")
