"""Benchmark the Rust CPU kernels against the official and vectorised PyTorch formulations.

Usage: ``make bench`` or ``python benches/bench_kernels.py [--threads T] [--quick] [--no-append]``.

All competitors run in one process, interleaved round by round after a warm-up, and the median over
rounds is reported with the ratio to gpmkit. Each run appends a section (date, CPU, threads, versions)
to BENCHMARKS.md. Measured:

* ``gpm_loss`` forward+backward with a gate, d = 8 (k = 4), float32, B ∈ {4096, 65536, 262144}, against
  (a) the official formulation (dense R(x) per pair + ``bmm``), (b) the vectorised PyTorch formulation
  (``gpmkit._reference``) eager and under ``torch.compile``;
* ``preference_matrix`` and ``win_score`` forward+backward, P = 256 prompts × K = 64, d = 8, with a gate;
* the machine's copy bandwidth (one thread, numpy ``copyto`` of 64 MiB, read + write counted) and each
  kernel's effective bandwidth (bytes it must read and write) as a fraction of it;
* per-call overhead at B = 1 against a plain torch op.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import gpmkit
import gpmkit.functional as F
import numpy as np
import torch
from gpmkit import _reference as ref

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def rustc_version() -> str:
    try:
        return subprocess.run(["rustc", "--version"], capture_output=True, text=True, check=True).stdout.split()[1]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "?"


def copy_bandwidth(nbytes: int = 64 << 20, rounds: int = 15) -> float:
    """Single-threaded copy bandwidth in bytes/s, counting the read and the write."""
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    return 2 * nbytes / statistics.median(times[3:])


def interleaved(fns: dict, rounds: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each function, run round-robin so drift hits all of them alike."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def fwd_bwd(loss_fn, inputs):
    """A closure running ``loss_fn(*inputs)`` forward and backward (fresh .grad each call)."""

    def run():
        for t in inputs:
            t.grad = None
        loss_fn(*inputs).backward()

    return run


def official_gpm_loss(vc, vr, gate, tau=0.1):
    """The official code's gated GPM loss: dense R(x) per pair, bmm, −logσ(s/τ), mean."""
    return -torch.nn.functional.logsigmoid(ref.dense_operator_score(vc, vr, gate) / tau).mean()


def vectorised_gpm_loss(vc, vr, gate):
    return ref.gpm_loss(vc, vr, gate, tau=0.1)


def rust_gpm_loss(vc, vr, gate):
    return F.gpm_loss(vc, vr, gate, tau=0.1)


def leaf(*shape):
    return torch.randn(*shape).requires_grad_()


def kernel_only(vc, vr, gate):
    """The Rust kernel alone on preallocated outputs: no autograd, no allocation, no validation."""
    from gpmkit import _core

    a, b, g = (t.detach().numpy() for t in (vc, vr, gate))
    gc, gr, gg, loss = np.empty_like(a), np.empty_like(b), np.empty_like(g), np.empty(1, np.float32)
    return lambda: _core.gpm_loss(a, b, g, None, None, 0.1, "mean", loss, None, gc, gr, gg)


def bench_gpm_loss(sizes, rounds, with_compile, bw):
    rows = []
    compiled = torch.compile(vectorised_gpm_loss, dynamic=False) if with_compile else None
    d, k = 8, 4
    for b in sizes:
        vc, vr = leaf(b, d), leaf(b, d)
        gate = torch.softmax(torch.randn(b, k), -1).requires_grad_()
        inputs = (vc, vr, gate)
        fns = {
            "gpmkit": fwd_bwd(rust_gpm_loss, inputs),
            "torch eager": fwd_bwd(vectorised_gpm_loss, inputs),
            "official (dense R, bmm)": fwd_bwd(official_gpm_loss, inputs),
        }
        if compiled is not None:
            fns["torch.compile"] = fwd_bwd(compiled, inputs)
        fns["(gpmkit Rust kernel alone)"] = kernel_only(*inputs)
        r = rounds if b <= 65536 else max(10, rounds // 2)
        t = interleaved(fns, r)
        moved = 2 * 4 * b * (2 * d + k)  # read the inputs, write their gradients
        rows.append((f"gpm_loss fwd+bwd, gate, d=8, B={b}", t, moved, bw))
    return rows


def bench_population(p, kk, rounds, with_compile, bw):
    d, k = 8, 4
    v = leaf(p, kk, d)
    gate = torch.softmax(torch.randn(p, k), -1).requires_grad_()
    g_mat = torch.randn(p, kk, kk)
    g_win = torch.randn(p, kk)
    rows = []
    for name, rust, torch_fn, g_out, moved in (
        ("preference_matrix", F.preference_matrix, ref.preference_matrix, g_mat, 4 * 2 * p * kk * (kk + d)),
        ("win_score", lambda v, g: F.win_score(v, None, g), lambda v, g: ref.win_score(v, None, g), g_win,
         4 * 2 * p * kk * (1 + d)),
    ):  # fmt: skip

        def mk(fn, g_out=g_out):
            def run():
                v.grad = gate.grad = None
                fn(v, gate).backward(g_out)

            return run

        fns = {"gpmkit": mk(rust), "torch eager": mk(torch_fn)}
        if with_compile:
            fns["torch.compile"] = mk(torch.compile(torch_fn, dynamic=False))
        t = interleaved(fns, rounds)
        rows.append((f"{name} fwd+bwd, gate, P={p} K={kk} d=8", t, moved, bw))
    return rows


def bench_overhead(rounds):
    """Forward-only and forward+backward calls at B = 1, against one plain torch op."""
    vc, vr = leaf(1, 8), leaf(1, 8)
    gate = torch.rand(1, 4)
    x = leaf(1)
    fns = {
        "gpmkit preference_score fwd": lambda: F.preference_score(vc, vr, gate),
        "gpmkit gpm_loss fwd": lambda: F.gpm_loss(vc, vr, gate),
        "gpmkit gpm_loss fwd+bwd": fwd_bwd(rust_gpm_loss, (vc, vr, gate)),
        "torch.mul fwd": lambda: torch.mul(x, x),
        "torch (x*x).sum() fwd+bwd": fwd_bwd(lambda x: (x * x).sum(), (x,)),
    }
    with torch.no_grad():
        t_ng = interleaved({k: v for k, v in fns.items() if k.endswith("fwd")}, rounds * 20)
    t = interleaved({k: v for k, v in fns.items() if "bwd" in k}, rounds * 20)
    return t_ng, t


def fmt_time(s: float) -> str:
    return f"{s * 1e3:.3f} ms" if s >= 1e-3 else f"{s * 1e6:.1f} µs"


def render(rows, overhead, bw, threads, quick) -> str:
    lines = []
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines.append(f"## {now}: `python benches/bench_kernels.py --threads {threads}{' --quick' if quick else ''}`")
    lines.append("")
    versions = (
        f"gpmkit {gpmkit.__version__}, torch {torch.__version__}, numpy {np.__version__}, rustc {rustc_version()}, "
        f"Python {platform.python_version()}"
    )
    lines.append(
        f"{cpu_name()}, {os.cpu_count()} CPUs, {threads} thread(s) for torch and gpmkit; {versions}. "
        f"Copy bandwidth (1 thread, read+write): **{bw / 1e9:.1f} GB/s**."
    )
    lines.append("")
    lines.append(
        "| benchmark | gpmkit | competitor | competitor time | gpmkit speed-up | gpmkit bandwidth (% of copy) |"
    )
    lines.append("|---|---|---|---|---|---|")
    for name, t, moved, bw_ in rows:
        ours = t["gpmkit"]
        eff = moved / ours
        for comp, tc in t.items():
            if comp == "gpmkit":
                continue
            if comp.startswith("(gpmkit"):  # the kernel alone: its own time and bandwidth, no ratio
                k_eff = moved / tc
                lines.append(
                    f"| {name} | {fmt_time(tc)} | {comp} | – | – | {k_eff / 1e9:.1f} GB/s ({100 * k_eff / bw_:.0f}%) |"
                )
                continue
            lines.append(
                f"| {name} | {fmt_time(ours)} | {comp} | {fmt_time(tc)} | **{tc / ours:.2f}×** | "
                f"{eff / 1e9:.1f} GB/s ({100 * eff / bw_:.0f}%) |"
            )
    t_ng, t = overhead
    lines.append("")
    lines.append("Per-call overhead at B = 1 (median):")
    lines.append("")
    base_f = t_ng["torch.mul fwd"]
    base_b = t["torch (x*x).sum() fwd+bwd"]
    for k, v in t_ng.items():
        if k.startswith("gpmkit"):
            lines.append(
                f"- {k} (no_grad): {fmt_time(v)}, **{fmt_time(v - base_f)} above** `torch.mul` ({fmt_time(base_f)})"
            )
    for k, v in t.items():
        if k.startswith("gpmkit"):
            lines.append(
                f"- {k}: {fmt_time(v)}, **{fmt_time(v - base_b)} above** `(x*x).sum()` fwd+bwd ({fmt_time(base_b)})"
            )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="threads for torch and gpmkit (default 2)")
    ap.add_argument("--rounds", type=int, default=20, help="timed rounds per benchmark (median reported)")
    ap.add_argument("--quick", action="store_true", help="smaller sizes, no torch.compile (smoke run)")
    ap.add_argument("--no-append", action="store_true", help="print only; do not append to BENCHMARKS.md")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    gpmkit.set_num_threads(args.threads)
    torch.manual_seed(0)
    rounds = 3 if args.quick else args.rounds
    with_compile = not args.quick

    print("measuring copy bandwidth ... ", end="", flush=True, file=sys.stderr)
    bw = copy_bandwidth()
    print(f"{bw / 1e9:.1f} GB/s", file=sys.stderr)
    sizes = [4096] if args.quick else [4096, 65536, 262144]
    rows = []
    print("gpm_loss ...", file=sys.stderr)
    rows += bench_gpm_loss(sizes, rounds, with_compile, bw)
    print("preference_matrix, win_score ...", file=sys.stderr)
    rows += bench_population(32 if args.quick else 256, 64, rounds, with_compile, bw)
    print("per-call overhead ...", file=sys.stderr)
    overhead = bench_overhead(rounds)

    text = render(rows, overhead, bw, args.threads, args.quick)
    print(text)
    if not args.no_append:
        path = ROOT / "BENCHMARKS.md"
        if not path.exists():
            path.write_text(
                "# Benchmarks\n\nEvery section below was appended by the command in its heading "
                "(`make bench` runs `benches/bench_kernels.py`). Ratios are measured within one run; absolute "
                "times on the 2-core development machines are noisy.\n\n"
            )
        with path.open("a") as f:
            f.write(text + "\n")
        print(f"appended to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
