"""GPU check of gpmkit's CUDA kernels (run by ``scripts/gpu_check.sh`` on a machine with a CUDA GPU).

Prints, for every CUDA operator: forward and gradient errors against the float64 oracle
(:mod:`gpmkit._reference`) for float32/bfloat16/float16/float64 on awkward shapes; bitwise determinism;
ordering on a non-default stream behind a long torch op (and that the call does not block the host);
CUDA-graph capture and replay; ``torch.cuda.memory_allocated`` growth equal to the outputs. Exits 1 if
anything failed. ``--one`` runs one small call of each loss/matrix op and exits (for compute-sanitizer).
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import gpmkit
import gpmkit.functional as F
import torch
from gpmkit import _reference as ref
from gpmkit.ops import OPS, active_impl

FAILED: list[str] = []
DEV = torch.device("cuda")


def report(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {name}  {detail}", flush=True)
    if not ok:
        FAILED.append(name)


def _inputs(op: str, n: int, k: int, kk: int, dtype: torch.dtype, g: torch.Generator):
    """float64 master inputs (on the GPU) of one op; the gate is non-negative, labels in [0, 1]."""

    def r(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, device=DEV, dtype=torch.float64) * scale

    def u(*shape):
        return torch.rand(*shape, generator=g, device=DEV, dtype=torch.float64)

    d = 2 * k
    if op in ("preference_score", "preference_prob"):
        return [r(n, d), r(n, d), u(n, k)]
    if op == "preference_matrix":
        return [r(n, kk, d), u(n, k)]
    if op == "win_score":
        return [r(n, kk, d), u(n, kk), u(n, k)]
    if op == "gpm_loss":
        return [r(n, d, scale=0.3), r(n, d, scale=0.3), u(n, k), r(n, scale=0.1), u(n)]
    if op == "bt_loss":
        return [r(n), r(n), r(n, scale=0.1), u(n)]
    if op == "gpo_loss":
        return [r(n), r(n), r(n), 1 + 9 * u(n)]
    return [r(n), r(n), u(n)]  # sppo_loss


def _fn(op: str, impl):
    """The op with fixed non-tensor arguments; ``impl`` is gpmkit.functional or gpmkit._reference."""
    return {
        "preference_score": lambda a, b, gt: impl.preference_score(a, b, gt),
        "preference_prob": lambda a, b, gt: impl.preference_prob(a, b, gt, 0.2),
        "preference_matrix": lambda v, gt: impl.preference_matrix(v, gt),
        "win_score": lambda v, w, gt: impl.win_score(v, w, gt),
        "gpm_loss": lambda a, b, gt, m, lab: impl.gpm_loss(a, b, gt, 0.3, m, lab, "none"),
        "bt_loss": lambda a, b, m, lab: impl.bt_loss(a, b, 0.5, m, lab, "sum"),
        "gpo_loss": lambda a, b, t, ln: impl.gpo_loss(a, b, t, 0.5, ln, 1.0, 1.5, "mean"),
        "sppo_loss": lambda a, b, t: impl.sppo_loss(a, b, t, 0.5),
    }[op]


def _run(fn, xs, upstream):
    xs = [x.detach().clone().requires_grad_() for x in xs]
    out = fn(*xs)
    grads = torch.autograd.grad(out, xs, upstream.to(out.dtype))
    return out.detach(), [gr.detach() for gr in grads]


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return 0.0 if a.numel() == 0 else float((a.double() - b.double()).abs().max())


def check_correctness() -> None:
    g = torch.Generator(device=DEV).manual_seed(0)
    # (n, k, K): batch 1/37/…, k 1/3/65; K also picks the matrix kernel's path: 4 entries per thread (K = 16, 20),
    # shared-memory tiles (K = 64, odd and even k: rows padded differently), one thread per entry (K = 1, 5, 7)
    shapes = [(1, 1, 1), (37, 3, 5), (1000, 65, 7), (4099, 4, 16), (53, 2, 20), (40, 3, 64), (30, 4, 64)]
    for op in OPS:
        for n, k, kk in shapes:
            if op in ("preference_matrix", "win_score"):
                n = max(1, n // 10)
            x64 = _inputs(op, n, k, kk, torch.float64, g)
            with torch.no_grad():
                shape = _fn(op, ref)(*x64).shape
            up = torch.randn(shape, generator=g, device=DEV, dtype=torch.float64)
            out64, g64 = _run(_fn(op, ref), x64, up)
            scale = 1.0 + float(out64.abs().max()) if out64.numel() else 1.0
            for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
                xs = [x.to(dtype) for x in x64]
                out, grads = _run(_fn(op, F), xs, up)
                e_out = _err(out, out64)
                e_grad = max((_err(a, b) for a, b in zip(grads, g64)), default=0.0)
                if dtype in (torch.float32, torch.float64):
                    tol = (1e-4 if dtype == torch.float32 else 1e-10) * scale
                    gtol = (1e-4 if dtype == torch.float32 else 1e-10) * (1 + max(float(t.abs().max()) for t in g64))
                    ok = e_out <= tol and e_grad <= gtol
                    rule = f"tol {tol:.1e}/{gtol:.1e}"
                else:  # flash-attention rule: ≤ 2× the error of the same-precision torch reference (+ ulp floor)
                    t_out, t_grads = _run(_fn(op, ref), xs, up)
                    te_out = _err(t_out, out64)
                    te_grad = max((_err(a, b) for a, b in zip(t_grads, g64)), default=0.0)
                    eps = torch.finfo(dtype).eps
                    gscale = 1 + max((float(t.abs().max()) for t in g64 if t.numel()), default=0.0)
                    ok = e_out <= 2 * te_out + eps * scale and e_grad <= 2 * te_grad + eps * gscale
                    rule = f"torch-{str(dtype)[6:]} err {te_out:.2e}/{te_grad:.2e}"
                name = f"{op} {str(dtype)[6:]} n={n} k={k}" + (
                    f" K={kk}" if op in ("preference_matrix", "win_score") else ""
                )
                report(name, ok, f"fwd err {e_out:.2e}, grad err {e_grad:.2e} ({rule})")
    # reductions and optional arguments of the fused losses, and empty batches
    a, b = (torch.randn(513, 8, device=DEV) for _ in range(2))
    for red in ("mean", "sum", "none"):
        for kw in ({}, {"margin": 0.05}, {"label": 0.7}):
            got = F.gpm_loss(a, b, reduction=red, **kw)
            want = ref.gpm_loss(a.double(), b.double(), None, 0.1, kw.get("margin"), kw.get("label"), red)
            report(f"gpm_loss reduction={red} {kw}", _err(got, want) <= 1e-4 * (1 + float(want.abs().max())))
    e = torch.empty(0, 4, device=DEV)
    report(
        "empty batch: mean NaN, sum 0, none empty",
        bool(F.gpm_loss(e, e).isnan())
        and float(F.gpm_loss(e, e, reduction="sum")) == 0.0
        and F.gpm_loss(e, e, reduction="none").shape == (0,),
    )


def check_fast_path() -> None:
    """F.gpm_loss's shortcut for plain [N, 2k] inputs gives the general path's bits and gradients."""
    g = torch.Generator(device=DEV).manual_seed(1)
    for dtype in (torch.float32, torch.bfloat16):
        for with_gate in (False, True):
            vc, vr = (torch.randn(1001, 8, generator=g, device=DEV).to(dtype) for _ in range(2))
            gate = torch.rand(1001, 4, generator=g, device=DEV).to(dtype) if with_gate else None
            fast_ok = F._pair_fast_path(vc, vr, gate) is not None
            results = []
            for shortcut in (True, False):
                saved = F._pair_fast_path
                if not shortcut:
                    F._pair_fast_path = lambda *a: None
                try:
                    xs = [t.clone().requires_grad_() for t in (vc, vr, gate) if t is not None]
                    loss = F.gpm_loss(xs[0], xs[1], xs[2] if with_gate else None)
                    results.append((loss, *torch.autograd.grad(loss, xs)))
                finally:
                    F._pair_fast_path = saved
            same = all(torch.equal(a, b) for a, b in zip(*results))
            report(f"gpm_loss shortcut == general path, {str(dtype)[6:]}, gate={with_gate}", fast_ok and same)


def check_matrix_64bit_index() -> None:
    """preference_matrix past 2^32 entries (the kernel's 64-bit index path; K odd, so not the 4-entry path):
    1 × 65537² bfloat16 = 8 GiB."""
    kk = (1 << 16) + 1
    if torch.cuda.mem_get_info()[0] < 10 << 30:
        print("SKIP  preference_matrix 64-bit index path: needs 10 GiB free")
        return
    g = torch.Generator(device=DEV).manual_seed(2)
    v = torch.randn(1, kk, 2, generator=g, device=DEV).to(torch.bfloat16)
    out = F.preference_matrix(v)[0]
    i = torch.randint(0, kk, (4096,), generator=g, device=DEV)
    j = torch.randint(0, kk, (4096,), generator=g, device=DEV)
    i[-1], j[-1] = kk - 1, kk - 2  # the very last entries
    x = v[0].float()
    want = x[i, 0] * x[j, 1] - x[i, 1] * x[j, 0]
    ok = torch.allclose(out[i, j].float(), want, rtol=1e-2, atol=1e-2)  # bfloat16 rounding of a float32 value
    ok = ok and torch.allclose(out[kk - 1].float(), -out[:, kk - 1].float(), rtol=1e-2, atol=1e-2)
    report("preference_matrix with 2^32 entries (64-bit index path), sampled entries", ok)
    del out


def check_dispatch() -> None:
    report("gpmkit.cuda_available()", gpmkit.cuda_available())
    impls = {op: active_impl(op, "cuda") for op in OPS}
    report("active_impl(op, 'cuda') == 'cuda' for every op", set(impls.values()) == {"cuda"}, str(impls))


def check_determinism() -> None:
    a, b = (torch.randn(1 << 20, 8, device=DEV, requires_grad=True) for _ in range(2))
    runs = []
    for _ in range(3):
        loss = F.gpm_loss(a, b)
        ga, gb = torch.autograd.grad(loss, (a, b))
        runs.append((loss, ga, gb))
    same = all(torch.equal(x, y) for r in runs[1:] for x, y in zip(r, runs[0]))
    report("bitwise-identical gpm_loss fwd+bwd over 3 runs (B=1M, d=8)", same)


def check_stream_ordering() -> None:
    n, d = 1 << 20, 8
    src = torch.randn(n, d, device=DEV)
    vr = torch.randn(n, d, device=DEV)
    big = torch.randn(8192, 8192, device=DEV)
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        vc = torch.empty(n, d, device=DEV)
        acc = big
        for _ in range(8):  # ~ tens of ms of work queued before the input is written
            acc = acc @ big * 1e-4
        vc.copy_(src + acc[0, 0] * 0)
        t0 = time.perf_counter()
        loss = F.gpm_loss(vc, vr, reduction="none")
        host_ms = (time.perf_counter() - t0) * 1e3
        busy = not s.query()
    s.synchronize()
    want = ref.gpm_loss(src, vr, reduction="none")
    ok = _err(loss, want) <= 1e-4 * (1 + float(want.abs().max()))
    report("non-default stream: result ordered after a long torch op", ok)
    report("no host sync: the call returned while the stream was still busy", busy, f"host time {host_ms:.2f} ms")


def check_graphs() -> None:
    gpmkit.ops.cuda_warmup()
    n, k, kk = 4096, 4, 8
    vc = torch.randn(n, 2 * k, device=DEV, requires_grad=True)
    vr = torch.randn(n, 2 * k, device=DEV, requires_grad=True)
    v = torch.randn(64, kk, 2 * k, device=DEV)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up outside capture, as torch requires
        for _ in range(2):
            loss = F.gpm_loss(vc, vr)
            torch.autograd.grad(loss, (vc, vr))
            F.preference_matrix(v)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = F.gpm_loss(vc, vr)
        gc, gr = torch.autograd.grad(loss, (vc, vr))
        mat = F.preference_matrix(v)
    for trial in range(2):
        with torch.no_grad():
            vc.copy_(torch.randn_like(vc))
            vr.copy_(torch.randn_like(vr))
            v.copy_(torch.randn_like(v))
        graph.replay()
        torch.cuda.synchronize()
        x, y = vc.detach().double().requires_grad_(), vr.detach().double().requires_grad_()
        want = ref.gpm_loss(x, y)
        wc, wr = torch.autograd.grad(want, (x, y))
        ok = _err(loss, want) < 1e-5 and _err(gc, wc) < 1e-6 and _err(gr, wr) < 1e-6
        ok = ok and _err(mat, ref.preference_matrix(v.double())) < 1e-4
        report(f"CUDA graph capture + replay #{trial + 1} (gpm_loss fwd+bwd, preference_matrix)", ok)


def check_memory() -> None:
    def rounded(t: torch.Tensor) -> int:  # the caching allocator's 512-byte blocks
        return 512 * math.ceil(t.untyped_storage().nbytes() / 512)

    a, b = (torch.randn(1 << 16, 8, device=DEV, requires_grad=True) for _ in range(2))
    v = torch.randn(256, 16, 8, device=DEV)
    F.gpm_loss(a, b)  # warm-up: module load, allocator pools
    torch.cuda.synchronize()
    for name, fn in [
        ("preference_matrix", lambda: [F.preference_matrix(v)]),
        ("win_score", lambda: [F.win_score(v)]),
        ("gpm_loss mean fwd", lambda: [F.gpm_loss(a.detach(), b.detach())]),
        ("gpm_loss fwd+bwd", lambda: [*torch.autograd.grad(F.gpm_loss(a, b), (a, b))]),
    ]:
        torch.cuda.synchronize()
        m0 = torch.cuda.memory_allocated()
        outs = fn()
        torch.cuda.synchronize()
        grew = torch.cuda.memory_allocated() - m0
        expected = sum(rounded(t) for t in outs)
        report(f"memory_allocated grows by the outputs only: {name}", grew == expected, f"{grew} B vs {expected} B")
        del outs


def one_call() -> None:
    a, b = (torch.randn(1000, 6, device=DEV, requires_grad=True) for _ in range(2))
    gate = torch.rand(1000, 3, device=DEV, requires_grad=True)
    loss = F.gpm_loss(a, b, gate, margin=0.1, label=0.8)
    torch.autograd.grad(loss, (a, b, gate))
    v = torch.randn(7, 5, 6, device=DEV, requires_grad=True)
    torch.autograd.grad(F.preference_matrix(v).sum() + F.win_score(v).sum(), v)
    torch.cuda.synchronize()
    print("one call of gpm_loss/preference_matrix/win_score fwd+bwd done")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--one", action="store_true", help="one small call per op (for compute-sanitizer)")
    args = p.parse_args()
    print(f"gpmkit {gpmkit.__version__}, torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    if args.one:
        one_call()
        return 0
    for check in (
        check_dispatch,
        check_correctness,
        check_fast_path,
        check_matrix_64bit_index,
        check_determinism,
        check_stream_ordering,
        check_graphs,
        check_memory,
    ):
        try:
            check()
        except Exception as e:  # keep going: one failure must not hide the others
            report(check.__name__, False, f"{type(e).__name__}: {e}")
    print(f"\n{len(FAILED)} check(s) failed" + (": " + "; ".join(FAILED) if FAILED else ""), flush=True)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
