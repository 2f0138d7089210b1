"""Backend dispatch: which implementation runs, GPMKIT_IMPL, and the lazy torch import."""

from __future__ import annotations

import subprocess
import sys

import gpmkit
import gpmkit.functional as F
import pytest
import torch
from _helpers import emb, gate_like, graph_names, randn, soft_label
from gpmkit.exceptions import DeviceError
from gpmkit.ops import OPS, active_impl


@pytest.mark.parametrize("op", OPS)
def test_active_impl_default(op):
    assert active_impl(op, "cpu") == "rust"
    assert active_impl(op, torch.device("cpu")) == "rust"
    assert active_impl(op) == "rust"
    on_cuda = "cuda" if gpmkit.cuda_available() else "torch"  # the CUDA kernels where a driver+GPU exist
    assert active_impl(op, "cuda") == on_cuda
    assert active_impl(op, torch.device("cuda", 0)) == on_cuda
    assert active_impl(op, "meta") == "torch"


@pytest.mark.parametrize("value", ["torch", "TORCH", " torch "])
def test_forcing_torch(monkeypatch, value):
    monkeypatch.setenv("GPMKIT_IMPL", value)
    assert active_impl("gpm_loss", "cpu") == "torch"
    assert active_impl("gpm_loss", "cuda") == "torch"


def test_forcing_rust(monkeypatch):
    monkeypatch.setenv("GPMKIT_IMPL", "rust")
    assert active_impl("gpm_loss", "cpu") == "rust"
    if not gpmkit.cuda_available():
        with pytest.raises(DeviceError, match="GPMKIT_IMPL"):
            active_impl("gpm_loss", "cuda")
    monkeypatch.setenv("GPMKIT_IMPL", "")
    assert active_impl("gpm_loss", "cpu") == "rust"


# (op name in OPS, the kernel behind it, inputs, call)
def _cases():
    n, k, p, kk = 9, 3, 4, 5
    return {
        "preference_score": ("preference_score", [emb(n, 2 * k), emb(n, 2 * k), gate_like(n, k)],
                             F.preference_score),
        "preference_prob": ("preference_score", [emb(n, 2 * k), emb(n, 2 * k), gate_like(n, k)],
                            lambda a, b, g: F.preference_prob(a, b, g, 0.2)),
        "preference_matrix": ("preference_matrix", [emb(p, kk, 2 * k), gate_like(p, k)], F.preference_matrix),
        "win_score": ("win_score", [emb(p, kk, 2 * k), torch.rand(p, kk), gate_like(p, k)], F.win_score),
        "gpm_loss": ("gpm_loss", [emb(n, 2 * k), emb(n, 2 * k), gate_like(n, k), randn(n, scale=0.1), soft_label(n)],
                     lambda a, b, g, m, lab: F.gpm_loss(a, b, g, 0.3, m, lab)),
        "bt_loss": ("bt_loss", [randn(n), randn(n), randn(n, scale=0.1), soft_label(n)],
                    lambda a, b, m, lab: F.bt_loss(a, b, 0.5, m, lab, "none")),
        "gpo_loss": ("policy_loss", [randn(n), randn(n), randn(n), 1 + 9 * torch.rand(n)],
                     lambda a, b, t, ln: F.gpo_loss(a, b, t, 0.5, ln, 1.0, 1.5, "sum")),
        "sppo_loss": ("policy_loss", [randn(n), randn(n), soft_label(n)],
                      lambda a, b, t: F.sppo_loss(a, b, t, 0.5)),
    }  # fmt: skip


def test_every_op_has_a_case():
    assert set(_cases()) == set(OPS)


def _uses_kernel(names: set, kernel: str) -> bool:
    # eager: the autograd.Function over the kernel; compiled/traced: the torch.ops.gpmkit custom op
    return f"{kernel}_functionBackward" in names or any(f"gpmkit_{kernel}" in n for n in names)


@pytest.mark.parametrize("op", OPS)
def test_cpu_results_come_from_the_rust_kernels(op):
    kernel, x, fn = _cases()[op]
    x = [t.requires_grad_() for t in x]
    out = fn(*x)
    assert _uses_kernel(graph_names(out), kernel), graph_names(out)


@pytest.mark.parametrize("op", OPS)
def test_forced_torch_matches_rust(op, monkeypatch):
    kernel, x, fn = _cases()[op]
    x64 = [t.double() for t in x]
    xs = [t.clone().requires_grad_() for t in x64]
    out_rust = fn(*xs)
    u = torch.randn(out_rust.shape, dtype=torch.float64)
    g_rust = torch.autograd.grad(out_rust, xs, u)
    monkeypatch.setenv("GPMKIT_IMPL", "torch")
    xt = [t.clone().requires_grad_() for t in x64]
    out_torch = fn(*xt)
    assert not _uses_kernel(graph_names(out_torch), kernel), graph_names(out_torch)
    g_torch = torch.autograd.grad(out_torch, xt, u)
    torch.testing.assert_close(out_torch, out_rust, rtol=1e-12, atol=1e-13)
    for a, b in zip(g_torch, g_rust):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


def test_compiled_graph_calls_the_custom_ops():
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    torch._dynamo.reset()
    vc, vr = emb(4, 6), emb(4, 6)

    def fn(a, b):
        return F.gpm_loss(a, b) + F.preference_matrix(a.reshape(2, 2, 6)).sum()

    torch.compile(fn, backend=capture, fullgraph=True)(vc, vr)
    assert graphs and "gpmkit.gpm_loss" in graphs[0] and "gpmkit.preference_matrix" in graphs[0]


def _run(code: str) -> str:
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_import_gpmkit_does_not_import_torch():
    """``import gpmkit`` stays cheap (no torch); ``gpmkit.functional`` and the lazy attributes import it."""
    code = (
        "import sys, gpmkit, gpmkit.exceptions\n"
        "assert 'torch' not in sys.modules, 'import gpmkit imported torch'\n"
        "assert isinstance(gpmkit.__version__, str) and 'functional' in dir(gpmkit)\n"
        "gpmkit.set_num_threads(1); assert gpmkit.get_num_threads() == 1\n"
        "assert 'torch' not in sys.modules\n"
        "import gpmkit.functional\n"
        "assert 'torch' in sys.modules\n"
        "assert gpmkit.functional.preference_score is not None\n"
        "print(gpmkit.GPMHead.__name__)\n"
    )
    assert _run(code) == "GPMHead"
