"""``python -m hourglass_torch --socket PATH [flags]``: the PyTorch worker.

hourglassd starts it from workers.command and appends ``--socket PATH``.
Flags besides the SDK's (--socket, --unsafe-fault-injection):

  --backend auto|torch|numpy   auto: torch when importable, else numpy
  --device auto|cpu|cuda|cuda:N  auto: CUDA when available (the executor's
                               workers.gpus sets CUDA_VISIBLE_DEVICES)
  --dtype bf16|fp16|fp32       the denoiser's precision on CUDA
  --channels N, --depth N      the denoiser's width and number of hidden
                               convs (defaults: 256/4 on CUDA, 32/2 torch CPU,
                               16/1 numpy)
  --max-batch N                images per batch (default 32: a whole job)
"""

import hourglass_worker as hw

from .generator import MODEL, SyntheticDiffusion
from .workload import make_backend


def main(argv=None) -> None:
    p = hw.argument_parser("hourglass_torch", "hourglass PyTorch worker: synthetic diffusion workload")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "numpy"])
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--channels", type=int, default=None)
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--model", default=MODEL)
    args = p.parse_args(argv)
    log = hw.Logger()
    try:
        backend = make_backend(args.backend, args.device, args.channels, args.depth, args.dtype)
    except (RuntimeError, ValueError) as e:
        log.error("cannot set up the workload", error=str(e))
        hw.exit_process(2)
    gen = SyntheticDiffusion(backend, model=args.model, max_batch=args.max_batch)
    device, total, _ = backend.describe_device()
    log.info("workload ready", backend=backend.name, device=device, memory_total_bytes=total,
             channels=backend.params.channels, depth=backend.params.depth)
    hw.exit_process(hw.serve(gen, args.socket, unsafe_fault_injection=args.unsafe_fault_injection, logger=log,
                             service_name="hourglass-torch-worker"))


if __name__ == "__main__":
    main()
