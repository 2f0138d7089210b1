"""GPU benchmark of gpmkit's CUDA kernels against vectorised PyTorch, eager and ``torch.compile``.

Usage (on a CUDA machine; ``scripts/gpu_check.sh`` runs it):
``python benches/bench_cuda.py [--quick] [--only gpm_loss|preference_matrix]``.

Measured, float32, no gate (plus one gated row):

* ``gpm_loss`` forward+backward (``loss = F.gpm_loss(vc, vr); torch.autograd.grad(loss, (vc, vr))``) at
  B ∈ {64K, 1M, 4M} pairs, d ∈ {2, 8}; competitors: the vectorised PyTorch formulation
  (``gpmkit._reference.gpm_loss``) eager and under ``torch.compile`` (default settings);
* ``preference_matrix`` forward over P prompts × K = 16 responses (P·K² = B entries), d ∈ {2, 8}, and
  K = 64 at the largest B.

Each case is measured twice: as ordinary eager calls (what a training loop sees, host overhead
included: at these sizes both gpmkit and eager PyTorch are limited by Python/autograd launch overhead
up to B ≈ 1M) and as CUDA-graph replays of the same step (GPU time only: the kernels' own speed).
Every competitor runs in the same process, interleaved round by round after a warm-up, timed with CUDA
events; the median per-call time over rounds is reported. The effective bandwidth counts the bytes the
operation must move at least (gpm_loss fwd+bwd: read both inputs twice, write both gradients: 6·B·d·4;
preference_matrix: read P·K·d·4, write P·K²·4), as a fraction of the device-to-device copy bandwidth
(``dst.copy_(src)`` of 1 GiB, read + write counted) measured in the same run. Prints markdown for
BENCHMARKS.md (it does not edit the file: the GPU machine's tree is a throw-away copy).
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys

import gpmkit
import gpmkit.functional as F
import torch
from gpmkit import _reference as ref

DEV = torch.device("cuda")


def timed(fn, reps: int) -> float:
    """Seconds per call of ``fn`` over ``reps`` back-to-back calls (CUDA events)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / reps


def compare(fns: dict, rounds: int = 7) -> dict:
    """Median seconds per call of each competitor, interleaved round by round after a warm-up."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    torch.cuda.synchronize()
    reps = {name: max(3, min(200, int(2e-3 / max(timed(fn, 3), 1e-6)))) for name, fn in fns.items()}
    times: dict = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(timed(fn, reps[name]))
    return {name: statistics.median(t) for name, t in times.items()}


def graphed(step):
    """Capture ``step`` (after a warm-up on a side stream) and return the graph's replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    src = torch.empty(nbytes // 4, device=DEV)
    dst = torch.empty_like(src)
    t = compare({"copy": lambda: dst.copy_(src)})["copy"]
    return 2 * nbytes / t


def fmt_t(s: float) -> str:
    return f"{s * 1e6:.1f} µs" if s < 1e-3 else f"{s * 1e3:.3f} ms"


def gpm_case(b: int, d: int, gate: bool):
    vc = torch.randn(b, d, device=DEV, requires_grad=True)
    vr = torch.randn(b, d, device=DEV, requires_grad=True)
    gt = torch.rand(b, d // 2, device=DEV) if gate else None

    def run(loss_fn):
        def step():
            loss = loss_fn(vc, vr, gt)
            return torch.autograd.grad(loss, (vc, vr))

        return step

    eager = run(lambda a, c, g: ref.gpm_loss(a, c, g))
    compiled_fn = torch.compile(lambda a, c, g: ref.gpm_loss(a, c, g))
    ours = run(lambda a, c, g: F.gpm_loss(a, c, g))
    fns = {"gpmkit": ours, "torch eager": eager, "torch.compile": run(compiled_fn)}
    fns.update({"gpmkit (CUDA graph)": graphed(ours), "torch eager (CUDA graph)": graphed(eager)})
    nbytes = 6 * b * d * 4 + (2 * b * (d // 2) * 4 if gate else 0)  # gate read twice, not differentiated
    return fns, nbytes


def matrix_case(b: int, d: int, kk: int = 16):
    p = max(1, b // (kk * kk))
    v = torch.randn(p, kk, d, device=DEV)
    compiled = torch.compile(lambda x: ref.preference_matrix(x))
    fns = {
        "gpmkit": lambda: F.preference_matrix(v),
        "torch eager": lambda: ref.preference_matrix(v),
        "torch.compile": lambda: compiled(v),
    }
    fns.update(
        {
            "gpmkit (CUDA graph)": graphed(fns["gpmkit"]),
            "torch eager (CUDA graph)": graphed(fns["torch eager"]),
        }
    )
    return fns, p * kk * d * 4 + p * kk * kk * 4


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="B = 64K and 1M only")
    ap.add_argument("--only", choices=("gpm_loss", "preference_matrix"), help="run one operator's rows only")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    sizes = [1 << 16, 1 << 20] if args.quick else [1 << 16, 1 << 20, 1 << 22]
    name = torch.cuda.get_device_name()
    bw = copy_bandwidth()
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"\n## {when}: `python benches/bench_cuda.py` (GPU)\n")
    print(
        f"{name}; gpmkit {gpmkit.__version__} CUDA kernels (PTX, CUDA 13.0), torch {torch.__version__}, "
        f"Python {sys.version.split()[0]}; float32, TF32 off. Device-to-device copy bandwidth (read+write): "
        f"**{bw / 1e9:.0f} GB/s**.\n"
    )
    print("| benchmark | gpmkit | competitor | competitor time | gpmkit speed-up | gpmkit bandwidth (% of copy) |")
    print("|---|---|---|---|---|---|")
    cases = []
    for d in (2, 8):
        for b in sizes:
            cases.append((f"gpm_loss fwd+bwd, d={d}, B={b}", lambda b=b, d=d: gpm_case(b, d, False)))
    cases.append((f"gpm_loss fwd+bwd, gate, d=8, B={1 << 20}", lambda: gpm_case(1 << 20, 8, True)))
    for d in (2, 8):
        for b in sizes:
            label = f"preference_matrix fwd, P={b // 256} K=16 d={d} (B={b} entries)"
            cases.append((label, lambda b=b, d=d: matrix_case(b, d)))
    big = sizes[-1]  # K = 64: the kernel's shared-memory tile path (K = 16 takes the 4-entries-per-thread path)
    label = f"preference_matrix fwd, P={big // 4096} K=64 d=8 (B={big} entries)"
    cases.append((label, lambda: matrix_case(big, 8, 64)))
    if args.only:
        cases = [(label, make) for label, make in cases if label.startswith(args.only)]
    for label, make in cases:
        try:
            fns, nbytes = make()
            res = compare(fns)
        except Exception as e:  # report and continue
            print(f"| {label} | error: {type(e).__name__}: {e} | | | | |", flush=True)
            continue
        pairs = [("gpmkit", "torch eager"), ("gpmkit", "torch.compile")]
        pairs.append(("gpmkit (CUDA graph)", "torch eager (CUDA graph)"))
        for mine, comp in pairs:
            ours, t = res[mine], res[comp]
            eff = nbytes / ours
            print(
                f"| {label} | {fmt_t(ours)}{' (graph)' if 'graph' in mine else ''} | {comp} | {fmt_t(t)} | "
                f"**{t / ours:.2f}×** | {eff / 1e9:.0f} GB/s ({100 * eff / bw:.0f}%) |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
