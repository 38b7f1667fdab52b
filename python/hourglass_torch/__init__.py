"""hourglass_torch: a PyTorch worker for hourglass.

``python -m hourglass_torch --socket PATH`` (or python/launch/hourglass-torch-worker)
serves a synthetic diffusion workload that behaves like a real pipeline on the
GPU (see workload.py), falling back to torch on the CPU, or numpy, where there
is no GPU or no PyTorch. ``hourglass_torch.diffusers_adapter`` serves a real
diffusers pipeline the same way.

PyTorch is imported lazily: importing this package does not need it.
"""

from .generator import MODEL, VERSION, SyntheticDiffusion
from .workload import STYLES, NumpyBackend, TorchBackend, make_backend

__all__ = ["MODEL", "VERSION", "STYLES", "SyntheticDiffusion", "NumpyBackend", "TorchBackend", "make_backend"]
