"""A synthetic diffusion workload that behaves like a real one on the GPU.

Per image, a latent of shape (4, height/8, width/8) starts as Gaussian noise
drawn from the image's seed. Each step applies a fixed-seed convolutional
denoiser (conv 4→C, ``depth`` convs C→C, conv C→4, SiLU between, a timestep
embedding) and moves the latent a little towards a blurred copy of itself plus
the denoiser's output, pulled by the prompt's conditioning and the guidance
scale. A decoder (conv 4→3 and an ×8
bilinear upsampling) turns the final latent into
pixels. All images of a job run as one batch, so device memory and time grow
with the size and the count, as in a real pipeline.

Two backends compute the same thing:

- ``TorchBackend``: PyTorch on CUDA (bf16 or fp16 denoiser) or on the CPU;
  the step waits for the device before reporting progress, so a cancelled
  job leaves no queued GPU work behind;
- ``NumpyBackend``: numpy on the CPU, for machines without PyTorch (CI).

Weights come from a fixed seed and the initial noise from numpy's PCG64
seeded with the image's seed, so a job is deterministic for its seed on the
same device and backend (a retry after a crash gives the same bytes).
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

WEIGHT_SEED = 20240601

# Style names this worker understands, with what they do to the decoded
# picture: an RGB tint and a contrast factor.
STYLES: Dict[str, Tuple[float, float, float, float]] = {
    "Fooocus V2": (0.0, 0.0, 0.0, 1.0),
    "Fooocus Enhance": (0.08, 0.04, 0.0, 1.2),
    "Fooocus Sharp": (0.0, 0.0, 0.0, 1.5),
    "Fooocus Masterpiece": (0.12, 0.08, -0.04, 1.1),
    "Fooocus Photograph": (0.04, 0.0, -0.04, 0.9),
    "Fooocus Cinematic": (-0.08, 0.0, 0.12, 1.15),
}


@dataclass
class Params:
    """The denoiser's and decoder's weights, from a fixed seed (numpy)."""

    channels: int
    depth: int
    w_in: np.ndarray
    b_in: np.ndarray
    w_hidden: List[np.ndarray]
    b_hidden: List[np.ndarray]
    w_out: np.ndarray
    b_out: np.ndarray
    w_dec: np.ndarray
    b_dec: np.ndarray
    freqs: np.ndarray
    phases: np.ndarray

    @classmethod
    def make(cls, channels: int, depth: int) -> "Params":
        rng = np.random.Generator(np.random.PCG64(WEIGHT_SEED))

        def conv(cout: int, cin: int, gain: float = 1.0) -> np.ndarray:
            return (rng.standard_normal((cout, cin, 3, 3)) * gain / math.sqrt(cin * 9)).astype(np.float32)

        def bias(n: int) -> np.ndarray:
            return (rng.standard_normal(n) * 0.1).astype(np.float32)

        w_in, b_in = conv(channels, 4, 1.5), bias(channels)
        w_hidden, b_hidden = [], []
        for _ in range(depth):
            w_hidden.append(conv(channels, channels, 1.4))
            b_hidden.append(bias(channels))
        w_out, b_out = conv(4, channels, 2.0), bias(4)
        w_dec, b_dec = conv(3, 4, 1.5), bias(3)
        freqs = (rng.uniform(0.5, 8.0, channels)).astype(np.float32)
        phases = (rng.uniform(0, 2 * math.pi, channels)).astype(np.float32)
        return cls(channels, depth, w_in, b_in, w_hidden, b_hidden, w_out, b_out, w_dec, b_dec, freqs, phases)


def text_embedding(text: str) -> np.ndarray:
    """Four numbers in [-1, 1] from the text's hash: the "conditioning"."""
    h = hashlib.sha256(text.encode("utf-8")).digest()
    return np.array([(h[i] / 127.5) - 1.0 for i in range(4)], dtype=np.float32)


def conditioning(prompt: str, negative_prompt: str, guidance_scale: float) -> np.ndarray:
    """Per-latent-channel pull: (prompt - negative) scaled by guidance."""
    g = guidance_scale / 4.0  # the API's default guidance is 4
    return ((text_embedding(prompt) - 0.5 * text_embedding(negative_prompt)) * 0.6 * g).astype(np.float32)


def initial_noise(seeds: Sequence[int], h: int, w: int) -> np.ndarray:
    """(N, 4, h, w) float32 noise, image i from seeds[i]; the same on every
    device, so only the arithmetic differs between backends."""
    out = np.empty((len(seeds), 4, h, w), dtype=np.float32)
    for i, s in enumerate(seeds):
        out[i] = np.random.Generator(np.random.PCG64(s)).standard_normal((4, h, w), dtype=np.float32)
    return out


def upsample_taps(out_size: int, in_size: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear interpolation (half-pixel centres, edges clamped, as torch's
    interpolate with align_corners=False) along one axis: output o is
    in[i0[o]] * w0[o] + in[i1[o]] * w1[o]."""
    scale = in_size / float(out_size)
    src = np.clip((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5, 0.0, in_size - 1.0)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = (src - i0).astype(np.float32)
    return i0, i1, (1.0 - w1).astype(np.float32), w1


def _upsample_np(z: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, C, h, w) to (N, C, height, width), bilinear."""
    i0, i1, w0, w1 = upsample_taps(height, z.shape[2])
    z = z[:, :, i0, :] * w0[None, None, :, None] + z[:, :, i1, :] * w1[None, None, :, None]
    i0, i1, w0, w1 = upsample_taps(width, z.shape[3])
    return z[:, :, :, i0] * w0 + z[:, :, :, i1] * w1


def style_look(styles: Sequence[str], sharpness: float) -> Tuple[np.ndarray, float]:
    tint = np.zeros(3, dtype=np.float32)
    contrast = 1.0 + sharpness / 30.0
    for name in styles:
        r, g, b, c = STYLES[name]
        tint += np.array([r, g, b], dtype=np.float32)
        contrast *= c
    return tint, contrast


def timestep_embedding(params: Params, t: float) -> np.ndarray:
    return (0.5 * np.sin(params.freqs * t + params.phases)).astype(np.float32)


def to_uint8_rgb(img01: np.ndarray) -> np.ndarray:
    """(3, H, W) floats in [0, 1] to (H, W, 3) uint8."""
    return np.ascontiguousarray((np.clip(img01, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(1, 2, 0))


# --- numpy -----------------------------------------------------------------------


def _conv3x3_np(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cross-correlation with zero padding 1, NCHW, like torch's conv2d."""
    n, cin, h, wd = x.shape
    xp = np.zeros((n, cin, h + 2, wd + 2), dtype=np.float32)
    xp[:, :, 1:-1, 1:-1] = x
    out = np.zeros((n, w.shape[0], h, wd), dtype=np.float32)
    for dy in range(3):
        for dx in range(3):
            # (cout, cin) x (n, cin, h, w) -> (cout, n, h, w)
            out += np.tensordot(w[:, :, dy, dx], xp[:, :, dy:dy + h, dx:dx + wd], axes=([1], [1])).transpose(1, 0, 2, 3)
    return out + b[None, :, None, None]


BLUR = np.array([1, 4, 6, 4, 1], dtype=np.float32) / 16.0


def _blur_np(x: np.ndarray) -> np.ndarray:
    """Binomial 5-tap blur along both spatial axes, edges replicated."""
    for ax in (2, 3):
        pad = [(0, 0)] * 4
        pad[ax] = (2, 2)
        xp = np.pad(x, pad, mode="edge")
        n = x.shape[ax]
        x = sum(BLUR[i] * np.take(xp, np.arange(i, i + n), axis=ax) for i in range(5))
    return x.astype(np.float32)


def _silu_np(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp overflows to inf: silu is -0 there
        return x / (1.0 + np.exp(-x))


class NumpyBackend:
    """The workload on the CPU with numpy alone."""

    name = "numpy"
    device = "cpu"

    def __init__(self, channels: int = 16, depth: int = 1) -> None:
        self.params = Params.make(channels, depth)

    def describe_device(self) -> Tuple[str, int, int]:
        return "cpu", 0, 0

    def start(self, noise: np.ndarray, cond: np.ndarray):
        return {"x": noise.copy(), "cond": cond[None, :, None, None]}

    def step(self, state, k: int, steps: int) -> None:
        p, x = self.params, state["x"]
        t = 1.0 - (k - 1) / float(steps)
        h = _silu_np(_conv3x3_np(x, p.w_in, p.b_in) + timestep_embedding(p, t)[None, :, None, None])
        for w, b in zip(p.w_hidden, p.b_hidden):
            h = _silu_np(_conv3x3_np(h, w, b))
        eps = _conv3x3_np(h, p.w_out, p.b_out)
        state["x"] = x + (2.0 / steps) * (1.5 * _blur_np(_blur_np(x)) + 0.3 * np.tanh(eps) + state["cond"] - x)

    def decode(self, state, height: int, width: int, tint: np.ndarray, contrast: float) -> List[np.ndarray]:
        p, x = self.params, state["x"]
        z = _conv3x3_np(x, p.w_dec, p.b_dec) * contrast + tint[None, :, None, None]
        full = _upsample_np(z, height, width)  # (N, 3, H, W)
        with np.errstate(over="ignore"):
            img = 1.0 / (1.0 + np.exp(-1.5 * full))
        return [to_uint8_rgb(img[i]) for i in range(img.shape[0])]

    def sync(self) -> None:
        pass

    def free(self, state) -> None:
        state.clear()

    def empty_cache(self) -> None:
        pass


# --- torch -----------------------------------------------------------------------


class TorchBackend:
    """The workload with PyTorch, on CUDA when there is a GPU."""

    def __init__(self, torch, device: str, channels: int, depth: int, dtype: str = "bf16") -> None:
        self.torch = torch
        self.F = torch.nn.functional
        self.dev = torch.device(device)
        self.cuda = self.dev.type == "cuda"
        self.name = "torch-" + self.dev.type
        if self.cuda:
            self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        else:
            self.dtype = torch.float32
        self.params = Params.make(channels, depth)
        p = self.params

        def t(a: np.ndarray, dtype=None):
            return torch.from_numpy(a).to(self.dev, dtype=dtype or self.dtype)

        self.w_in, self.b_in = t(p.w_in), t(p.b_in)
        self.w_hidden = [t(w) for w in p.w_hidden]
        self.b_hidden = [t(b) for b in p.b_hidden]
        self.w_out, self.b_out = t(p.w_out), t(p.b_out)
        self.w_dec, self.b_dec = t(p.w_dec, torch.float32), t(p.b_dec, torch.float32)
        self._blur_kernel = t(np.tile(np.outer(BLUR, BLUR)[None, None], (4, 1, 1, 1)), torch.float32)
        self.device = str(self.dev) if self.cuda else "cpu"
        if self.cuda:
            idx = self.dev.index if self.dev.index is not None else torch.cuda.current_device()
            self.cuda_index = idx
            self.gpu_name = torch.cuda.get_device_name(idx)
            self.device = "cuda:%d" % idx
        self._nvml = _nvml_handle(torch, self.cuda_index) if self.cuda else None

    def describe_device(self) -> Tuple[str, int, int]:
        """(device, total bytes, used bytes); used is the whole device's, as
        nvidia-smi shows it."""
        if not self.cuda:
            return "cpu", 0, 0
        label = "%s (%s)" % (self.device, self.gpu_name)
        if self._nvml is not None:
            try:
                import pynvml

                mem = pynvml.nvmlDeviceGetMemoryInfo(self._nvml)
                return label, int(mem.total), int(mem.used)
            except Exception:  # noqa: BLE001  (fall back to the CUDA runtime)
                pass
        try:
            free, total = self.torch.cuda.mem_get_info(self.cuda_index)
            return label, int(total), int(total - free)
        except Exception:  # noqa: BLE001
            return label, 0, 0

    def start(self, noise: np.ndarray, cond: np.ndarray):
        torch = self.torch
        x = torch.from_numpy(noise).to(self.dev, dtype=torch.float32)
        c = torch.from_numpy(cond).to(self.dev, dtype=torch.float32)[None, :, None, None]
        return {"x": x, "cond": c}

    def step(self, state, k: int, steps: int) -> None:
        torch, F, p = self.torch, self.F, self.params
        t = 1.0 - (k - 1) / float(steps)
        temb = torch.from_numpy(timestep_embedding(p, t)).to(self.dev, dtype=self.dtype)[None, :, None, None]
        with torch.no_grad():
            x = state["x"]
            h = F.silu(F.conv2d(x.to(self.dtype), self.w_in, self.b_in, padding=1) + temb)
            for w, b in zip(self.w_hidden, self.b_hidden):
                h = F.silu(F.conv2d(h, w, b, padding=1))
            eps = F.conv2d(h, self.w_out, self.b_out, padding=1).float()
            blurred = self._blur(self._blur(x))
            state["x"] = x + (2.0 / steps) * (1.5 * blurred + 0.3 * torch.tanh(eps) + state["cond"] - x)

    def decode(self, state, height: int, width: int, tint: np.ndarray, contrast: float) -> List[np.ndarray]:
        torch, F = self.torch, self.F
        with torch.no_grad():
            x = state["x"]
            z = F.conv2d(x, self.w_dec, self.b_dec, padding=1) * contrast
            z = z + torch.from_numpy(tint).to(self.dev)[None, :, None, None]
            full = self._upsample(z, height, width)
            img = torch.sigmoid(1.5 * full).clamp(0, 1)
            u8 = (img * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()
        return [np.ascontiguousarray(u8[i]) for i in range(u8.shape[0])]

    def _blur(self, x):
        """_blur_np in torch: a depthwise 5x5 binomial kernel."""
        F = self.F
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), self._blur_kernel, groups=x.shape[1])

    def _upsample(self, z, height: int, width: int):
        torch = self.torch

        def taps(n_out: int, n_in: int):
            i0, i1, w0, w1 = upsample_taps(n_out, n_in)
            return (torch.from_numpy(i0).to(self.dev), torch.from_numpy(i1).to(self.dev),
                    torch.from_numpy(w0).to(self.dev), torch.from_numpy(w1).to(self.dev))

        i0, i1, w0, w1 = taps(height, z.shape[2])
        z = z.index_select(2, i0) * w0[None, None, :, None] + z.index_select(2, i1) * w1[None, None, :, None]
        i0, i1, w0, w1 = taps(width, z.shape[3])
        return z.index_select(3, i0) * w0 + z.index_select(3, i1) * w1

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.dev)

    def free(self, state) -> None:
        state.clear()

    def wedge(self) -> None:
        """TEST-ONLY (the hang fault): occupy the GPU with one kernel that
        spins for minutes, and wait for it. Only a kill ends it."""
        if not self.cuda:
            return
        cycles = int(2e9 * 600)  # about ten minutes at 2 GHz
        self.torch.cuda._sleep(cycles)
        self.torch.cuda.synchronize(self.dev)

    def empty_cache(self) -> None:
        if self.cuda:
            self.torch.cuda.empty_cache()


def _nvml_handle(torch, index: int):
    """The NVML handle of CUDA device index (matched by UUID, so it holds
    under CUDA_VISIBLE_DEVICES), or None without pynvml."""
    try:
        import pynvml

        pynvml.nvmlInit()
        uuid = str(torch.cuda.get_device_properties(index).uuid)
        if not uuid.startswith("GPU-"):
            uuid = "GPU-" + uuid
    except Exception:  # noqa: BLE001  (NVML is optional)
        return None
    for arg in (uuid, uuid.encode()):  # pynvml versions differ on str or bytes
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(arg)
        except Exception:  # noqa: BLE001
            continue
    return None


# --- choosing a backend --------------------------------------------------------------


def import_torch():
    """PyTorch, or None when it is not installed (imported lazily: the numpy
    fallback must not pay for it, and CI has no torch)."""
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return None
    return torch


def make_backend(backend: str = "auto", device: str = "auto", channels: Optional[int] = None,
                 depth: Optional[int] = None, dtype: str = "bf16"):
    """auto: torch on CUDA when there is a GPU, else torch on the CPU, else
    numpy. Channel and depth defaults suit each: a GPU gets a denoiser
    that keeps it busy, the CPU one that finishes quickly."""
    if backend not in ("auto", "torch", "numpy"):
        raise ValueError("backend must be auto, torch or numpy")
    torch = import_torch() if backend in ("auto", "torch") else None
    if backend == "torch" and torch is None:
        raise RuntimeError("--backend torch, but PyTorch is not installed")
    if torch is None:
        if device not in ("auto", "cpu"):
            raise RuntimeError("device %s needs PyTorch, which is not installed" % device)
        return NumpyBackend(channels or 16, 1 if depth is None else depth)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("device %s: CUDA is not available" % device)
        return TorchBackend(torch, device, channels or 256, 4 if depth is None else depth, dtype)
    return TorchBackend(torch, "cpu", channels or 32, 2 if depth is None else depth, "fp32")


def now() -> float:
    return time.perf_counter()
