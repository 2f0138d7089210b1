"""Host-side cost of gpmkit's CUDA path, piece by piece (run on a CUDA machine; ``scripts/gpu_check.sh`` runs it).

At B ≲ 1M pairs an eager ``gpm_loss`` forward+backward is limited by host time (Python, autograd, the
caching allocator, kernel launches), not by the kernels. This prints the per-call host time of each piece
on small inputs (B = 4096, so the GPU keeps up and the numbers are CPU time), timed with
``time.perf_counter`` over back-to-back calls (median of rounds), and a cProfile of the gpmkit step:

* torch primitives: an allocation, a tiny elementwise op, an empty ``autograd.Function`` forward+backward;
* gpmkit pieces: the Rust launcher on an empty request (argument conversion + plan) and on one real
  launch, the functional forward with and without autograd, the whole forward+backward;
* the vectorised PyTorch formulation (``gpmkit._reference.gpm_loss``) forward+backward, for scale.

Usage: ``python benches/bench_cuda_host.py [--profile]``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time

import gpmkit.functional as F
import torch
from gpmkit import _core
from gpmkit import _reference as ref
from gpmkit.ops import _cuda

DEV = torch.device("cuda")


def host_time(fn, n: int = 400, rounds: int = 7) -> float:
    """Median over rounds of the host seconds per call of ``fn`` (calls back to back, synchronised per round)."""
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t) / n)
        torch.cuda.synchronize()
    return statistics.median(times)


class _Empty(torch.autograd.Function):
    """The floor of any Python autograd function: allocates its outputs, computes nothing."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a.new_empty(())

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        return a.new_empty(a.shape), b.new_empty(b.shape)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", action="store_true", help="also print a cProfile of the gpmkit step")
    args = ap.parse_args()
    b, d = 4096, 8
    vc = torch.randn(b, d, device=DEV, requires_grad=True)
    vr = torch.randn(b, d, device=DEV, requires_grad=True)
    x = torch.randn(b, d, device=DEV)
    out = torch.empty(b, device=DEV)
    stream = _cuda._current_stream(torch.cuda.current_device())
    dev = torch.cuda.current_device()
    empty_ptrs = [x.data_ptr(), x.data_ptr(), 0, out.data_ptr()]
    _cuda.warmup()

    def step(loss_fn):
        def run():
            return torch.autograd.grad(loss_fn(vc, vr), (vc, vr))

        return run

    def no_grad(fn):
        def run():
            with torch.no_grad():
                return fn(vc, vr)

        return run

    cases = {
        "torch.empty (CUDA, 128 KiB)": lambda: torch.empty(b * d, device=DEV),
        "torch elementwise op (x * 2)": lambda: x * 2,
        "empty autograd.Function fwd+bwd (floor)": step(_Empty.apply),
        "_core.cuda_launch, nothing to launch (N = 0)": lambda: _core.cuda_launch(
            "score_fwd", "f32", dev, stream, empty_ptrs, (0, d // 2), ()
        ),
        "_core.cuda_launch, one score_fwd launch": lambda: _core.cuda_launch(
            "score_fwd", "f32", dev, stream, empty_ptrs, (b, d // 2), ()
        ),
        "F.preference_score fwd (no grad)": no_grad(F.preference_score),
        "F.gpm_loss fwd (no grad)": no_grad(F.gpm_loss),
        "F.gpm_loss fwd (grad enabled)": lambda: F.gpm_loss(vc, vr),
        "F.gpm_loss fwd+bwd": step(F.gpm_loss),
        "torch eager reference gpm_loss fwd+bwd": step(ref.gpm_loss),
    }
    print(f"\n### Host time per call on {torch.cuda.get_device_name()} (B = {b}, d = {d}, float32)\n")
    print("| piece | host time per call |")
    print("|---|---|")
    res = {}
    for name, fn in cases.items():
        res[name] = host_time(fn)
        print(f"| {name} | {res[name] * 1e6:.1f} µs |", flush=True)
    ours, theirs = res["F.gpm_loss fwd+bwd"], res["torch eager reference gpm_loss fwd+bwd"]
    floor = res["empty autograd.Function fwd+bwd (floor)"]
    print(
        f"\ngpmkit fwd+bwd host time: {ours * 1e6:.1f} µs = {theirs / ours:.2f}× less than eager PyTorch's "
        f"{theirs * 1e6:.1f} µs; {(ours - floor) * 1e6:.1f} µs above an empty autograd function."
    )
    if args.profile:
        prof = cProfile.Profile()
        run = step(F.gpm_loss)
        prof.enable()
        for _ in range(2000):
            run()
        prof.disable()
        torch.cuda.synchronize()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(22)
        print("\ncProfile of 2000 gpmkit fwd+bwd steps (tottime order):\n" + buf.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
