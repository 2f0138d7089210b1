"""The CUDA backend on a machine without CUDA: import, availability, dispatch fallback, typed errors of
the launcher, and the autograd plumbing of the CUDA operators traced on meta tensors (their fake kernels).
The kernels themselves run in ``scripts/gpu_check.sh`` on a GPU machine."""

from __future__ import annotations

import subprocess
import sys

import gpmkit
import gpmkit.functional as F
import pytest
import torch
from gpmkit import _core
from gpmkit.exceptions import ArgumentError, DeviceError
from gpmkit.ops import CUDA_FALLBACKS, OPS, _cuda, active_impl

no_cuda = pytest.mark.skipif(gpmkit.cuda_available(), reason="a CUDA device is present")


def test_import_and_cuda_available_without_torch():
    code = (
        "import sys, gpmkit\n"
        "ok = gpmkit.cuda_available()\n"
        "assert isinstance(ok, bool)\n"
        "assert 'torch' not in sys.modules\n"
        "print(ok)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(gpmkit.cuda_available())


@no_cuda
def test_cuda_unavailable_here():
    assert gpmkit.cuda_available() is False
    assert _cuda.available() is False


@no_cuda
@pytest.mark.parametrize("op", OPS)
def test_dispatch_falls_back_to_torch_without_cuda(op, monkeypatch):
    assert active_impl(op, "cuda") == "torch"
    assert active_impl(op, "cpu") == "rust"
    monkeypatch.setenv("GPMKIT_IMPL", "rust")
    with pytest.raises(DeviceError, match=r"GPMKIT_IMPL=rust.*no usable CUDA"):
        active_impl(op, "cuda")


def test_fallback_list_names_only_known_ops():
    assert "preference_prob" in CUDA_FALLBACKS
    assert set(CUDA_FALLBACKS) <= set(OPS) | {"double backward"}


@no_cuda
def test_launch_and_warmup_without_a_driver_raise_device_error():
    with pytest.raises(DeviceError, match="CUDA"):
        _core.cuda_warmup(0)
    with pytest.raises(DeviceError, match="CUDA"):
        _core.cuda_launch("score_fwd", "f32", 0, 0, [256, 512, 0, 1024], [3, 2], [])


def test_launch_checks_the_request_before_touching_cuda():
    with pytest.raises(ArgumentError, match="op: expected one of"):
        _core.cuda_launch("bmm", "f32", 0, 0, [], [], [])
    with pytest.raises(ArgumentError, match="dtype"):
        _core.cuda_launch("score_fwd", "i8", 0, 0, [0, 0, 0, 0], [1, 1], [])
    with pytest.raises(ArgumentError, match="ptrs: expected 4 pointers"):
        _core.cuda_launch("score_fwd", "f32", 0, 0, [0, 0], [1, 1], [])
    with pytest.raises(ArgumentError, match="v_j: expected a device pointer aligned to 8 bytes, got 0x104"):
        _core.cuda_launch("score_fwd", "f32", 0, 0, [256, 260, 0, 512], [1, 1], [])
    with pytest.raises(ArgumentError, match="tau"):
        _core.cuda_launch("gpm_fwd", "f32", 0, 0, [0] * 7, [1, 1], [-1.0, 1.0])
    with pytest.raises(ArgumentError, match="reduction"):
        _core.cuda_launch("bt_fwd", "bf16", 0, 0, [0] * 6, [1], [1.0, 7.0])
    with pytest.raises(ArgumentError, match="beta"):
        _core.cuda_launch("policy_bwd", "f16", 0, 0, [0] * 9, [1], [0.0, 0.0, 0.0, -1.0, 1.0])


def test_scratch_sizes():
    # 1000 pairs × 4 lanes, 4 pairs per group and round = 1000 threads → 4 blocks → 4 float64 partial sums
    assert _core.cuda_scratch_bytes("gpm_fwd", "f32", [1000, 4]) == 4 * 8
    # win-score statistics: B·k entries of (v̄, u) in the accumulation type
    assert _core.cuda_scratch_bytes("win_fwd", "bf16", [3, 5, 2]) == 3 * 2 * 4 * 4
    assert _core.cuda_scratch_bytes("win_bwd", "f64", [3, 5, 2]) == 3 * 2 * 4 * 8
    assert _core.cuda_scratch_bytes("score_fwd", "f32", [10, 2]) == 0


def _meta(*shape):
    return torch.randn(*shape, device="meta", requires_grad=True)


# op, meta inputs (None = absent optional), non-tensor arguments, expected output shape
_CASES = {
    "preference_score": ([_meta(5, 6), _meta(5, 6), _meta(5, 3)], (), (5,)),
    "preference_matrix": ([_meta(2, 4, 6), None], (), (2, 4, 4)),
    "win_score": ([_meta(2, 4, 6), _meta(2, 4), _meta(2, 3)], (), (2, 4)),
    "gpm_loss": ([_meta(5, 6), _meta(5, 6), None, _meta(5), _meta(5)], (0.1, "mean"), ()),
    "bt_loss": ([_meta(5), _meta(5), None, _meta(5)], (1.0, "none"), (5,)),
    "policy_loss": ([_meta(5), _meta(5), _meta(5), _meta(5)], (0.5, 0.0, 1.0, None, "sum"), ()),
}


@pytest.mark.parametrize("op", sorted(_CASES))
def test_cuda_ops_autograd_plumbing_on_meta(op):
    """Forward and backward of the CUDA operators through their fake kernels: the saved inputs, the
    needs-grad flags and the gradient shapes line up, and absent optionals get no gradient."""
    tensors, others, shape = _CASES[op]
    out = getattr(torch.ops.gpmkit, f"cuda_{op}")(*tensors, *others)
    assert out.shape == shape and out.device.type == "meta"
    inputs = [t for t in tensors if t is not None]
    grads = torch.autograd.grad(out, inputs, torch.ones(shape, device="meta"))
    assert [g.shape for g in grads] == [t.shape for t in inputs]


@pytest.mark.parametrize("op", sorted(_CASES))
def test_cuda_ops_refuse_double_backward(op):
    """create_graph=True raises (as on CPU) instead of returning gradients that act as constants."""
    tensors, others, shape = _CASES[op]
    out = getattr(torch.ops.gpmkit, f"cuda_{op}")(*tensors, *others)
    inputs = [t for t in tensors if t is not None]
    with pytest.raises(NotImplementedError, match="double backward"):
        torch.autograd.grad(out, inputs, torch.ones(shape, device="meta"), create_graph=True)


def test_functional_on_meta_uses_the_torch_path():
    assert active_impl("gpm_loss", "meta") == "torch"
    loss = F.gpm_loss(torch.randn(4, 2, device="meta"), torch.randn(4, 2, device="meta"))
    assert loss.shape == () and loss.device.type == "meta"


def _cpu(*shape):
    return torch.randn(*shape)


@no_cuda
def test_every_launch_request_passes_the_plan_checks(monkeypatch):
    """Each implementation's request (pointer count and order, alignment, sizes, scalars) is accepted by the
    Rust planner; with no driver the launch then fails with DeviceError, never with an ArgumentError."""

    monkeypatch.setattr(_cuda, "_current_device", lambda: 0)
    monkeypatch.setattr(_cuda, "_current_stream", lambda idx: 0)
    n, k, b, kk = 7, 3, 2, 5
    vi, vj, gate, w, m, lab = _cpu(n, 2 * k), _cpu(n, 2 * k), _cpu(n, k), _cpu(b, kk), _cpu(n), _cpu(n)
    v, pg = _cpu(b, kk, 2 * k), _cpu(b, k)
    calls = [
        lambda: _cuda._score(vi, vj, gate),
        lambda: _cuda._score_bwd(_cpu(n), vi, vj, gate, True, True, True),
        lambda: _cuda._matrix(v, pg),
        lambda: _cuda._matrix_bwd(_cpu(b, kk, kk), v, pg, True, True),
        lambda: _cuda._win(v, w, pg),
        lambda: _cuda._win_bwd(_cpu(b, kk), v, w, pg, True, True, True),
        lambda: _cuda._gpm(vi, vj, gate, m, lab, 0.1, "mean"),
        lambda: _cuda._gpm(vi, vj, None, None, None, 0.1, "none"),
        lambda: _cuda._gpm_bwd(_cpu(()), vi, vj, gate, m, lab, 0.1, "mean", True, True, True, True, True),
        lambda: _cuda._bt(m, lab, None, lab, 1.0, "sum"),
        lambda: _cuda._bt_bwd(_cpu(n), m, lab, m, None, 1.0, "none", True, True, True, False),
        lambda: _cuda._policy(m, lab, m, lab.abs() + 1, 0.5, 0.0, 1.0, 2.0, "mean"),
        lambda: _cuda._policy_bwd(_cpu(()), m, lab, m, None, 0.5, 0.5, 0.0, None, "sum", True, True, True, False),
        lambda: _cuda.gpm_loss_step(vi, vj, gate, 0.1, "mean"),
        lambda: _cuda.gpm_loss_step(vi.requires_grad_(), vj, None, 0.1, "none"),  # through _GpmLoss
        # the eager variants (None instead of placeholder gradients) send the same requests
        lambda: _cuda._score_bwd_eager(_cpu(n), vi, vj, gate, True, False, True),
        lambda: _cuda._matrix_bwd_eager(_cpu(b, kk, kk), v, None, True, False),
        lambda: _cuda._win_bwd_eager(_cpu(b, kk), v, None, pg, False, False, True),
        lambda: _cuda._gpm_bwd_eager(_cpu(()), vi, vj, None, m, None, 0.1, "sum", True, False, False, True, False),
        lambda: _cuda._bt_bwd_eager(_cpu(n), m, lab, None, None, 1.0, "none", False, True, False, False),
        lambda: _cuda._policy_bwd_eager(_cpu(()), m, lab, m, None, 0.5, 0.5, 0.0, None, "mean", True, *[False] * 3),
    ]
    for i, call in enumerate(calls):
        with pytest.raises(DeviceError, match="no CUDA driver"):
            call()
            pytest.fail(f"call {i} launched without a driver")


needs_cuda = pytest.mark.skipif(not gpmkit.cuda_available(), reason="needs gpmkit's CUDA backend and a GPU")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_kernels_match_the_oracle(dtype):
    """A short version of scripts/gpu_check.py for GPU machines that run pytest."""
    from gpmkit import _reference as ref

    assert active_impl("gpm_loss", "cuda") == "cuda"
    vc, vr = (torch.randn(37, 6, device="cuda", dtype=torch.float64) for _ in range(2))
    gate = torch.rand(37, 3, device="cuda", dtype=torch.float64)
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    xs = [t.to(dtype).requires_grad_() for t in (vc, vr, gate)]
    loss = F.gpm_loss(*xs, margin=0.1, label=0.8)
    grads = torch.autograd.grad(loss, xs)
    x64 = [t.detach().double().requires_grad_() for t in xs]
    want = ref.gpm_loss(*x64, 0.1, torch.tensor(0.1, device="cuda"), torch.tensor(0.8, device="cuda"))
    torch.testing.assert_close(loss.double(), want, atol=tol, rtol=tol)
    for g, w in zip(grads, torch.autograd.grad(want, x64)):
        torch.testing.assert_close(g.double(), w, atol=tol, rtol=tol)
    v = torch.randn(3, 5, 6, device="cuda", dtype=dtype)
    torch.testing.assert_close(F.preference_matrix(v).double(), ref.preference_matrix(v.double()), atol=tol, rtol=tol)
    with pytest.raises(NotImplementedError, match="double backward"):
        torch.autograd.grad(F.gpm_loss(*xs), xs, create_graph=True)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("with_gate", [False, True])
def test_gpm_loss_training_step_shortcut_matches_the_general_path(with_gate, reduction, monkeypatch):
    vc, vr = (torch.randn(301, 8, device="cuda") for _ in range(2))
    gate = torch.rand(301, 4, device="cuda") if with_gate else None
    up = torch.randn(301, device="cuda") if reduction == "none" else torch.tensor(0.7, device="cuda")
    assert F._pair_fast_path(vc, vr, gate) is _cuda

    def run():
        xs = [t.clone().requires_grad_() for t in (vc, vr, gate) if t is not None]
        loss = F.gpm_loss(xs[0], xs[1], xs[2] if with_gate else None, reduction=reduction)
        return (loss, *torch.autograd.grad(loss, xs, up))

    fast = run()
    xs = [vc.clone().requires_grad_(), vr.clone().requires_grad_()]
    with pytest.raises(NotImplementedError, match="double backward"):  # the shortcut's autograd function too
        torch.autograd.grad(F.gpm_loss(*xs), xs, create_graph=True)
    monkeypatch.setattr(F, "_pair_fast_path", lambda *a: None)
    for a, b in zip(fast, run()):
        assert torch.equal(a, b)
