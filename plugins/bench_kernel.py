"""Time TokenSelect on a GPU: the plugin's CUDA kernels vs the PyTorch-ops reference, with CUDA events.

    python plugins/bench_kernel.py [--batch 64 --tokens 197 --channels 384 --keep 0.5 --dtype float32]

Prints microseconds per call for
  kernels            the two launches alone (preallocated buffers, no host sync): what the TensorRT plugin costs;
  token_select_cuda  the ctypes wrapper: allocations plus reading K back to the host;
  torch reference    token_select_reference on the GPU (its int(counts.max()) syncs too).
The target for the kernels is < 20 us at B=64, N=197, C=384 on an H100. Not a test: numbers depend on the GPU.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline import cuda_kernels  # noqa: E402
from pipeline.models.token_ops import token_select_reference  # noqa: E402


def time_us(fn, iters: int, warmup: int = 20) -> float:
    """Mean GPU time per call between CUDA events over `iters` back-to-back calls."""
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1000.0 / iters


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=197, help="N, prefix tokens included")
    parser.add_argument("--channels", type=int, default=384)
    parser.add_argument("--prefix", type=int, default=1)
    parser.add_argument("--min-keep", type=int, default=1)
    parser.add_argument("--keep", type=float, default=0.5, help="fraction of patch tokens above the threshold")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    parser.add_argument("--iters", type=int, default=500)
    parser.add_argument("--library", type=Path, default=None, help="libtokengate_kernels.so (default: make plugins')")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_kernel: no CUDA GPU visible to torch; nothing to time", file=sys.stderr)
        return 2

    dtype = getattr(torch, args.dtype)
    b, n, c, p = args.batch, args.tokens, args.channels, args.prefix
    x = torch.randn(b, n, c, device="cuda", dtype=dtype)
    scores = torch.randn(b, n - p, device="cuda").to(dtype)
    threshold = torch.quantile(scores.float(), 1.0 - args.keep).to(dtype)
    lib = cuda_kernels.load_library(args.library)

    # The plugin's view: buffers exist, two launches per call, K stays on the device.
    launch = cuda_kernels.prepare_launch(lib, x, scores, threshold, p, args.min_keep)

    def kernels():
        status = launch.run()
        if status != 0:
            raise RuntimeError(lib.tokengate_status_string(status).decode())

    results = {
        "kernels": time_us(kernels, args.iters),
        "token_select_cuda": time_us(lambda: cuda_kernels.token_select_cuda(x, scores, threshold, p, args.min_keep,
                                                                            args.library), args.iters // 5),
        "torch reference": time_us(lambda: token_select_reference(x, scores, threshold, p, args.min_keep),
                                   args.iters // 5),
    }
    kept = float(launch.lengths.float().mean()) - p
    print(f"TokenSelect B={b} N={n} C={c} P={p} {args.dtype} on {torch.cuda.get_device_name()}, "
          f"K={int(launch.k.item())}, mean kept patches {kept:.1f}/{n - p}:")
    for name, us in results.items():
        print(f"  {name:<18} {us:9.2f} us")
    print(f"  speedup of the kernels over the torch reference: {results['torch reference'] / results['kernels']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
