"""Bad input gets a typed error naming the argument; strided inputs work; NaN/Inf stay where they are;
a Rust panic surfaces as GPMError."""

from __future__ import annotations

import subprocess
import sys

import gpmkit
import gpmkit._reference as R
import gpmkit.functional as F
import numpy as np
import pytest
import torch
from _helpers import F64, emb, gate_like, randn, soft_label
from gpmkit import _core
from gpmkit.exceptions import ArgumentError, DeviceError, DTypeError, GPMError, ShapeError

NAN, INF = float("nan"), float("inf")


def test_error_hierarchy():
    assert issubclass(ShapeError, ValueError) and issubclass(ShapeError, GPMError)
    assert issubclass(DTypeError, TypeError) and issubclass(DTypeError, GPMError)
    assert issubclass(DeviceError, RuntimeError) and issubclass(DeviceError, GPMError)
    assert issubclass(ArgumentError, ValueError) and issubclass(ArgumentError, GPMError)
    assert issubclass(GPMError, Exception)
    assert gpmkit.ShapeError is ShapeError and gpmkit.GPMError is GPMError


# ---------------------------------------------------------------------------------------------------
# gpmkit.functional


def v(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


SHAPE_ERRORS = {
    "score_odd_width": (lambda: F.preference_score(v(3, 5), v(3, 5)), "v_i"),
    "score_zero_width": (lambda: F.preference_score(v(3, 0), v(3, 0)), "v_i"),
    "score_scalar": (lambda: F.preference_score(torch.tensor(1.0), torch.tensor(1.0)), "v_i"),
    "score_last_dims": (lambda: F.preference_score(v(3, 4), v(3, 6)), "v_j"),
    "score_batch": (lambda: F.preference_score(v(3, 4), v(2, 4)), r"v_i \(3,\), v_j \(2,\)"),
    "score_gate_width": (lambda: F.preference_score(v(3, 4), v(3, 4), v(3, 3)), "gate"),
    "score_gate_batch": (lambda: F.preference_score(v(3, 4), v(3, 4), v(4, 2)), "gate"),
    "prob_odd_width": (lambda: F.preference_prob(v(3, 3), v(3, 3)), "v_i"),
    "matrix_odd_width": (lambda: F.preference_matrix(v(2, 3, 5)), "v"),
    "matrix_one_dim": (lambda: F.preference_matrix(v(4)), "v"),
    "matrix_gate_width": (lambda: F.preference_matrix(v(2, 3, 4), v(2, 3)), "gate"),
    "matrix_gate_batch": (lambda: F.preference_matrix(v(2, 3, 4), v(5, 2)), "gate"),
    "win_weights_k": (lambda: F.win_score(v(2, 3, 4), v(2, 4)), "weights"),
    "win_weights_batch": (lambda: F.win_score(v(2, 3, 4), v(5, 3)), "weights"),
    "win_gate_width": (lambda: F.win_score(v(2, 3, 4), None, v(2, 1)), "gate"),
    "win_zero_width": (lambda: F.win_score(v(2, 3, 0)), "v"),
    "gpm_odd_width": (lambda: F.gpm_loss(v(3, 3), v(3, 3)), "v_chosen"),
    "gpm_last_dims": (lambda: F.gpm_loss(v(3, 4), v(3, 2)), "v_rejected"),
    "gpm_batch": (lambda: F.gpm_loss(v(3, 4), v(4, 4)), "v_rejected"),
    "gpm_gate_width": (lambda: F.gpm_loss(v(3, 4), v(3, 4), v(3, 1)), "gate"),
    "gpm_margin": (lambda: F.gpm_loss(v(3, 4), v(3, 4), margin=v(4)), "margin"),
    "gpm_label": (lambda: F.gpm_loss(v(3, 4), v(3, 4), label=v(2)), "label"),
    "bt_batch": (lambda: F.bt_loss(v(3), v(4)), "r_rejected"),
    "bt_margin": (lambda: F.bt_loss(v(3), v(3), margin=v(2)), "margin"),
    "gpo_lengths": (lambda: F.gpo_loss(v(3), v(3), v(3), 0.5, lengths=v(2)), "lengths"),
    "gpo_target": (lambda: F.gpo_loss(v(3), v(3), v(4), 0.5), "win_score"),
    "sppo_target": (lambda: F.sppo_loss(v(3), v(3), v(4), 0.5), "win_prob"),
}


@pytest.mark.parametrize("case", SHAPE_ERRORS)
def test_shape_errors(case):
    fn, name = SHAPE_ERRORS[case]
    with pytest.raises(ShapeError, match=name):
        fn()


BAD_POSITIVE = [0.0, -1.0, NAN, INF, -INF, True, "0.1", None]


@pytest.mark.parametrize("bad", BAD_POSITIVE, ids=repr)
@pytest.mark.parametrize(
    "call",
    [
        lambda t: F.preference_prob(v(3, 4), v(3, 4), tau=t),
        lambda t: F.gpm_loss(v(3, 4), v(3, 4), tau=t),
        lambda t: F.bt_loss(v(3), v(3), tau=t),
    ],
    ids=["prob", "gpm", "bt"],
)
def test_bad_tau(call, bad):
    with pytest.raises(ArgumentError, match="tau"):
        call(bad)


@pytest.mark.parametrize("bad", BAD_POSITIVE, ids=repr)
@pytest.mark.parametrize(
    "call",
    [lambda b: F.gpo_loss(v(3), v(3), v(3), b), lambda b: F.sppo_loss(v(3), v(3), v(3).sigmoid(), b)],
    ids=["gpo", "sppo"],
)
def test_bad_beta(call, bad):
    with pytest.raises(ArgumentError, match="beta"):
        call(bad)


LOSS_CALLS = {
    "gpm": lambda red: F.gpm_loss(v(3, 4), v(3, 4), reduction=red),
    "bt": lambda red: F.bt_loss(v(3), v(3), reduction=red),
    "gpo": lambda red: F.gpo_loss(v(3), v(3), v(3), 0.5, reduction=red),
    "sppo": lambda red: F.sppo_loss(v(3), v(3), v(3).sigmoid(), 0.5, reduction=red),
}


@pytest.mark.parametrize("bad", ["avg", "MEAN", "", None, 1], ids=repr)
@pytest.mark.parametrize("loss", LOSS_CALLS)
def test_bad_reduction(loss, bad):
    with pytest.raises(ArgumentError, match="reduction"):
        LOSS_CALLS[loss](bad)


@pytest.mark.parametrize("bad", [-0.1, -INF, NAN, True, "1"], ids=repr)
def test_bad_clamp(bad):
    with pytest.raises(ArgumentError, match="clamp"):
        F.gpo_loss(v(3), v(3), v(3), 0.5, clamp=bad)


@pytest.mark.parametrize("bad", [NAN, INF, -INF, None, "1", True], ids=repr)
def test_bad_gamma(bad):
    with pytest.raises(ArgumentError, match="gamma"):
        F.gpo_loss(v(3), v(3), v(3), 0.5, lengths=torch.ones(3), gamma=bad)


DTYPE_ERRORS = {
    "int_v_i": (lambda: F.preference_score(torch.ones(3, 4, dtype=torch.int64), v(3, 4)), "v_i"),
    "int_v_j": (lambda: F.preference_score(v(3, 4), torch.ones(3, 4, dtype=torch.int32)), "v_j"),
    "bool_gate": (lambda: F.preference_score(v(3, 4), v(3, 4), torch.ones(3, 2, dtype=torch.bool)), "gate"),
    "complex_v": (lambda: F.preference_matrix(torch.ones(2, 3, 4, dtype=torch.complex64)), "v"),
    "int_weights": (lambda: F.win_score(v(2, 3, 4), torch.ones(2, 3, dtype=torch.int64)), "weights"),
    "int_v_chosen": (lambda: F.gpm_loss(torch.ones(3, 4, dtype=torch.int64), v(3, 4)), "v_chosen"),
    "int_margin": (lambda: F.gpm_loss(v(3, 4), v(3, 4), margin=torch.ones(3, dtype=torch.int64)), "margin"),
    "int_label_bt": (lambda: F.bt_loss(v(3), v(3), label=torch.ones(3, dtype=torch.int64)), "label"),
    "int_logp": (lambda: F.gpo_loss(torch.ones(3, dtype=torch.int64), v(3), v(3), 0.5), "logp"),
    "int_win_prob": (lambda: F.sppo_loss(v(3), v(3), torch.ones(3, dtype=torch.int64), 0.5), "win_prob"),
    "list_v_i": (lambda: F.preference_score([[1.0, 2.0]], v(1, 2)), "v_i"),
    "numpy_v_j": (lambda: F.preference_score(v(1, 2), np.ones((1, 2), np.float32)), "v_j"),
    "number_v": (lambda: F.preference_matrix(1.0), "v"),
    "none_v_rejected": (lambda: F.gpm_loss(v(3, 4), None), "v_rejected"),
    "list_r_chosen": (lambda: F.bt_loss([1.0, 2.0], v(2)), "r_chosen"),
    "string_margin": (lambda: F.gpm_loss(v(3, 4), v(3, 4), margin="0.1"), "margin"),
    "bool_label": (lambda: F.gpm_loss(v(3, 4), v(3, 4), label=True), "label"),
    "list_lengths": (lambda: F.gpo_loss(v(3), v(3), v(3), 0.5, lengths=[1, 2, 3], gamma=1.0), "lengths"),
}


@pytest.mark.parametrize("case", DTYPE_ERRORS)
def test_dtype_errors(case):
    fn, name = DTYPE_ERRORS[case]
    with pytest.raises(DTypeError, match=name):
        fn()


def meta(*shape):
    return torch.empty(*shape, device="meta")


DEVICE_ERRORS = {
    "score_v_j": (lambda: F.preference_score(v(3, 4), meta(3, 4)), "v_j"),
    "score_gate": (lambda: F.preference_score(v(3, 4), v(3, 4), meta(3, 2)), "gate"),
    "prob_v_i": (lambda: F.preference_prob(meta(3, 4), v(3, 4)), "v_j"),
    "matrix_gate": (lambda: F.preference_matrix(v(2, 3, 4), meta(2, 2)), "gate"),
    "win_weights": (lambda: F.win_score(v(2, 3, 4), meta(2, 3)), "weights"),
    "gpm_margin": (lambda: F.gpm_loss(v(3, 4), v(3, 4), margin=meta(3)), "margin"),
    "gpm_label": (lambda: F.gpm_loss(v(3, 4), v(3, 4), label=meta(3)), "label"),
    "bt_r_rejected": (lambda: F.bt_loss(v(3), meta(3)), "r_rejected"),
    "gpo_lengths": (lambda: F.gpo_loss(v(3), v(3), v(3), 0.5, lengths=meta(3), gamma=1.0), "lengths"),
    "sppo_win_prob": (lambda: F.sppo_loss(v(3), v(3), meta(3), 0.5), "win_prob"),
}


@pytest.mark.parametrize("case", DEVICE_ERRORS)
def test_device_errors(case):
    fn, name = DEVICE_ERRORS[case]
    with pytest.raises(DeviceError, match=name):
        fn()


def test_gpmkit_impl_invalid_value(monkeypatch):
    monkeypatch.setenv("GPMKIT_IMPL", "cuda")
    with pytest.raises(ArgumentError, match="GPMKIT_IMPL"):
        F.preference_score(v(3, 4), v(3, 4))
    with pytest.raises(ArgumentError, match="GPMKIT_IMPL"):
        gpmkit.ops.active_impl("gpm_loss", "cpu")


def test_active_impl_unknown_op():
    with pytest.raises(ArgumentError, match="op"):
        gpmkit.ops.active_impl("bmm", "cpu")


@pytest.mark.parametrize(
    "call",
    [
        lambda: F.preference_score(meta(3, 4), meta(3, 4)),
        lambda: F.preference_matrix(meta(2, 3, 4)),
        lambda: F.win_score(meta(2, 3, 4)),
        lambda: F.gpm_loss(meta(3, 4), meta(3, 4)),
        lambda: F.bt_loss(meta(3), meta(3)),
        lambda: F.gpo_loss(meta(3), meta(3), meta(3), 0.5),
        lambda: F.sppo_loss(meta(3), meta(3), meta(3), 0.5),
    ],
    ids=["score", "matrix", "win", "gpm", "bt", "gpo", "sppo"],
)
def test_forced_rust_on_an_unsupported_device(monkeypatch, call):
    monkeypatch.setenv("GPMKIT_IMPL", "rust")
    with pytest.raises(DeviceError, match="GPMKIT_IMPL"):
        call()


# ---------------------------------------------------------------------------------------------------
# gpmkit._core called directly (numpy in, numpy out)


def f32(*shape):
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def z32(*shape):
    return np.zeros(shape, np.float32)


CORE_ERRORS = {
    # (callable, error type, argument named in the message)
    "score_odd": (lambda: _core.preference_score(f32(3, 3), f32(3, 3), None, z32(3)), ShapeError, "v_i"),
    "score_v_j": (lambda: _core.preference_score(f32(3, 4), f32(2, 4), None, z32(3)), ShapeError, "v_j"),
    "score_ndim": (lambda: _core.preference_score(f32(4), f32(4), None, z32(1)), ShapeError, "v_i"),
    "score_gate": (lambda: _core.preference_score(f32(3, 4), f32(3, 4), f32(3, 3), z32(3)), ShapeError, "gate"),
    "score_out": (lambda: _core.preference_score(f32(3, 4), f32(3, 4), None, z32(4)), ShapeError, "out"),
    "score_out_strided": (
        lambda: _core.preference_score(f32(3, 4), f32(3, 4), None, z32(6)[::2]),
        ShapeError,
        "out",
    ),
    "score_int": (
        lambda: _core.preference_score(np.ones((3, 4), np.int64), np.ones((3, 4), np.int64), None, z32(3)),
        DTypeError,
        "v_i",
    ),
    "score_mixed": (
        lambda: _core.preference_score(f32(3, 4), f32(3, 4).astype(np.float64), None, z32(3)),
        DTypeError,
        "v_j",
    ),
    "score_out_dtype": (lambda: _core.preference_score(f32(3, 4), f32(3, 4), None, np.zeros(3)), DTypeError, "out"),
    "score_list": (lambda: _core.preference_score([[1.0, 2.0]], f32(1, 2), None, z32(1)), DTypeError, "v_i"),
    "score_out_none": (lambda: _core.preference_score(f32(1, 2), f32(1, 2), None, None), DTypeError, "out"),
    "score_tensor": (
        lambda: _core.preference_score(torch.ones(1, 2), f32(1, 2), None, z32(1)),
        DTypeError,
        "v_i",
    ),
    "score_backward_grad": (
        lambda: _core.preference_score_backward(z32(2), f32(3, 4), f32(3, 4), None, z32(3, 4), None, None),
        ShapeError,
        "grad",
    ),
    "score_backward_grad_gate": (
        lambda: _core.preference_score_backward(z32(3), f32(3, 4), f32(3, 4), None, None, None, z32(3, 2)),
        ArgumentError,
        "grad_gate",
    ),
    "matrix_ndim": (lambda: _core.preference_matrix(f32(3, 4), None, z32(3, 3)), ShapeError, "v"),
    "matrix_out": (lambda: _core.preference_matrix(f32(2, 3, 4), None, z32(2, 3, 2)), ShapeError, "out"),
    "matrix_gate": (lambda: _core.preference_matrix(f32(2, 3, 4), f32(3, 2), z32(2, 3, 3)), ShapeError, "gate"),
    "matrix_backward_grad": (
        lambda: _core.preference_matrix_backward(z32(2, 3, 2), f32(2, 3, 4), None, z32(2, 3, 4), None),
        ShapeError,
        "grad",
    ),
    "win_weights": (lambda: _core.win_score(f32(2, 3, 4), f32(2, 2), None, z32(2, 3)), ShapeError, "weights"),
    "win_out": (lambda: _core.win_score(f32(2, 3, 4), None, None, z32(3, 2)), ShapeError, "out"),
    "win_backward_weights": (
        lambda: _core.win_score_backward(z32(2, 3), f32(2, 3, 4), None, None, None, z32(2, 3), None),
        ArgumentError,
        "grad_weights",
    ),
    "gpm_tau": (
        lambda: _core.gpm_loss(f32(3, 4), f32(3, 4), None, None, None, 0.0, "mean", z32(1)),
        ArgumentError,
        "tau",
    ),
    "gpm_tau_nan": (
        lambda: _core.gpm_loss(f32(3, 4), f32(3, 4), None, None, None, NAN, "mean", z32(1)),
        ArgumentError,
        "tau",
    ),
    "gpm_reduction": (
        lambda: _core.gpm_loss(f32(3, 4), f32(3, 4), None, None, None, 0.1, "avg", z32(1)),
        ArgumentError,
        "reduction",
    ),
    "gpm_loss_out": (
        lambda: _core.gpm_loss(f32(3, 4), f32(3, 4), None, None, None, 0.1, "none", z32(1)),
        ShapeError,
        "loss",
    ),
    "gpm_margin": (
        lambda: _core.gpm_loss(f32(3, 4), f32(3, 4), None, f32(2), None, 0.1, "mean", z32(1)),
        ShapeError,
        "margin",
    ),
    "gpm_label_dtype": (
        lambda: _core.gpm_loss(f32(3, 4), f32(3, 4), None, None, np.ones(3), 0.1, "mean", z32(1)),
        DTypeError,
        "label",
    ),
    "gpm_grad_gate": (
        lambda: _core.gpm_loss(f32(3, 4), f32(3, 4), None, None, None, 0.1, "mean", z32(1), grad_gate=z32(3, 2)),
        ArgumentError,
        "grad_gate",
    ),
    "gpm_grad_chosen": (
        lambda: _core.gpm_loss(f32(3, 4), f32(3, 4), None, None, None, 0.1, "mean", z32(1), grad_chosen=z32(3, 2)),
        ShapeError,
        "grad_chosen",
    ),
    "bt_rejected": (
        lambda: _core.bt_loss(f32(3), f32(4), None, None, 1.0, "mean", z32(1)),
        ShapeError,
        "r_rejected",
    ),
    "bt_tau": (lambda: _core.bt_loss(f32(3), f32(3), None, None, -1.0, "mean", z32(1)), ArgumentError, "tau"),
    "policy_beta": (
        lambda: _core.policy_loss(f32(3), f32(3), f32(3), None, 0.0, 0.0, 0.0, None, "mean", z32(1)),
        ArgumentError,
        "beta",
    ),
    "policy_clamp": (
        lambda: _core.policy_loss(f32(3), f32(3), f32(3), None, 1.0, 0.0, 0.0, -1.0, "mean", z32(1)),
        ArgumentError,
        "clamp",
    ),
    "policy_gamma": (
        lambda: _core.policy_loss(f32(3), f32(3), f32(3), None, 1.0, 0.0, INF, None, "mean", z32(1)),
        ArgumentError,
        "gamma",
    ),
    "policy_target": (
        lambda: _core.policy_loss(f32(3), f32(3), f32(2), None, 1.0, 0.0, 0.0, None, "mean", z32(1)),
        ShapeError,
        "target",
    ),
    "policy_grad_lengths": (
        lambda: _core.policy_loss(
            f32(3), f32(3), f32(3), None, 1.0, 0.0, 0.0, None, "mean", z32(1), grad_lengths=z32(3)
        ),
        ArgumentError,
        "grad_lengths",
    ),
}


@pytest.mark.parametrize("case", CORE_ERRORS)
def test_core_errors(case):
    fn, err, name = CORE_ERRORS[case]
    with pytest.raises(err, match=name):
        fn()


def test_core_computes_into_the_given_buffers():
    a, b = f32(5, 4), np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    out = z32(5)
    assert _core.preference_score(a, b, None, out) is None
    want = R.preference_score(torch.from_numpy(a).double(), torch.from_numpy(b).double()).numpy()
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    out64 = np.zeros(5)
    _core.preference_score(a.astype(np.float64), b.astype(np.float64), None, out64)
    np.testing.assert_allclose(out64, want, rtol=1e-14, atol=1e-15)


def test_rust_panic_becomes_gpmerror(restore_threads):
    with pytest.raises(GPMError, match="boom") as info:
        _core._panic("boom")
    assert type(info.value) is GPMError
    gpmkit.set_num_threads(2)
    with pytest.raises(GPMError, match="boom in the pool"):
        _core._panic("boom in the pool", in_pool=True)
    # the interpreter, the extension and its thread pool all still work
    n = 3 * 4096 + 5
    a, b = emb(n, 4), emb(n, 4)
    got = F.preference_score(a, b)
    gpmkit.set_num_threads(1)
    assert torch.equal(got, F.preference_score(a, b))
    torch.testing.assert_close(got.double(), R.preference_score(a.double(), b.double()), rtol=1e-5, atol=1e-6)


def test_rust_panic_does_not_abort_a_fresh_interpreter():
    code = (
        "import gpmkit\n"
        "from gpmkit import _core\n"
        "gpmkit.set_num_threads(2)\n"
        "for pool in (False, True):\n"
        "    try:\n"
        "        _core._panic('x', in_pool=pool)\n"
        "    except gpmkit.GPMError as e:\n"
        "        print('caught', type(e).__name__)\n"
        "print('alive')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["caught", "GPMError", "caught", "GPMError", "alive"]


# ---------------------------------------------------------------------------------------------------
# strided / non-contiguous inputs


def _strided_cases():
    n, k, p, kk = 9, 3, 4, 5
    d = 2 * k
    vi_t = torch.randn(d, n).t()  # transposed
    vj_s = torch.randn(n, 2 * d)[:, ::2]  # step in the last dimension
    gate_s = torch.rand(3 * n, k)[::3]  # step in the batch dimension
    row = torch.randn(d).expand(n, d)  # stride 0
    v_t = torch.randn(kk, p, d).transpose(0, 1)  # [P, K, D] with permuted strides
    w_s = torch.rand(p, 2 * kk)[:, 1::2]
    g_e = torch.rand(k).expand(p, k)
    return {
        "score": (F.preference_score, (vi_t, vj_s, gate_s)),
        "score_expanded": (F.preference_score, (row, vi_t, gate_s)),
        "matrix": (F.preference_matrix, (v_t, g_e)),
        "win": (F.win_score, (v_t, w_s, g_e)),
        "gpm": (
            lambda a, b, g, m, lab: F.gpm_loss(a, b, g, 0.3, m, lab, "none"),
            (vi_t, vj_s, gate_s, torch.randn(2 * n)[::2], torch.rand(1).expand(n)),
        ),
        "gpm_mean": (
            lambda a, b, g: F.gpm_loss(a, b, g, 0.3, reduction="mean"),
            (vj_s, row, gate_s),
        ),
        "bt": (lambda a, b: F.bt_loss(a, b, reduction="none"), (torch.randn(n, 2)[:, 1], torch.randn(2 * n)[1::2])),
        "gpo": (
            lambda a, b, t, ln: F.gpo_loss(a, b, t, 0.5, ln, 1.0, None, "none"),
            (
                torch.randn(n, 3)[:, 0],
                torch.randn(n, 3)[:, 2],
                torch.randn(2 * n)[::2],
                torch.full((1,), 7.0).expand(n),
            ),
        ),
        "sppo": (lambda a, b, t: F.sppo_loss(a, b, t, 0.5, "sum"), (vi_t[:, 0], vj_s[:, 1], gate_s[:, 0])),
    }


@pytest.mark.parametrize("case", list(_strided_cases()))
def test_strided_inputs_equal_contiguous(case):
    fn, views = _strided_cases()[case]
    assert any(not t.is_contiguous() for t in views)
    strided = [t.detach().requires_grad_() for t in views]  # leaves with the views' strides
    dense = [t.detach().contiguous().requires_grad_() for t in views]
    assert [t.stride() for t in strided] == [t.stride() for t in views]
    out_s, out_d = fn(*strided), fn(*dense)
    assert torch.equal(out_s, out_d)
    u = torch.randn(out_d.shape)
    for a, b in zip(torch.autograd.grad(out_s, strided, u), torch.autograd.grad(out_d, dense, u)):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------
# NaN / Inf stay in their pair


@pytest.mark.parametrize("bad", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["v_i", "v_j", "gate"])
def test_non_finite_pair_score_is_isolated(bad, where):
    n, k, row = 7, 3, 4
    x = {"v_i": emb(n, 2 * k), "v_j": emb(n, 2 * k), "gate": gate_like(n, k)}
    clean = {name: t.clone().requires_grad_() for name, t in x.items()}
    dirty = {name: t.clone() for name, t in x.items()}
    dirty[where][row, 1] = bad
    dirty = {name: t.requires_grad_() for name, t in dirty.items()}
    s_c, s_d = F.preference_score(**clean), F.preference_score(**dirty)
    others = torch.arange(n) != row
    assert torch.equal(s_d[others], s_c[others])
    u = torch.randn(n)
    g_c = torch.autograd.grad(s_c, list(clean.values()), u)
    g_d = torch.autograd.grad(s_d, list(dirty.values()), u)
    for a, b in zip(g_d, g_c):
        assert torch.equal(a[others], b[others])
    # the affected pair: whatever the oracle says (NaN, ±inf, or finite for the coordinates it does not touch)
    want = R.preference_score(*(t.detach() for t in dirty.values()))
    assert torch.equal(torch.isnan(s_d), torch.isnan(want))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("bad", [NAN, INF], ids=["nan", "inf"])
@pytest.mark.parametrize("loss", ["gpm", "bt", "gpo", "sppo"])
def test_non_finite_pair_loss_is_isolated(loss, bad, reduction):
    n, k, row = 9, 2, 3
    if loss == "gpm":
        x = [emb(n, 2 * k), emb(n, 2 * k), gate_like(n, k), randn(n, scale=0.1), soft_label(n)]

        def fn(a, b, g, m, p):
            return F.gpm_loss(a, b, g, 0.3, m, p, reduction)
    elif loss == "bt":
        x = [randn(n), randn(n), randn(n, scale=0.1), soft_label(n)]

        def fn(a, b, m, p):
            return F.bt_loss(a, b, 1.0, m, p, reduction)
    elif loss == "gpo":
        x = [randn(n), randn(n), randn(n), 1 + 9 * torch.rand(n)]

        def fn(a, b, t, ln):
            return F.gpo_loss(a, b, t, 0.5, ln, 1.0, None, reduction)
    else:
        x = [randn(n), randn(n), soft_label(n)]

        def fn(a, b, t):
            return F.sppo_loss(a, b, t, 0.5, reduction)

    others = torch.arange(n) != row
    for i in range(len(x)):  # the bad value in each input in turn
        clean = [t.clone().requires_grad_() for t in x]
        dirty = [t.clone() for t in x]
        dirty[i][row] = bad
        dirty = [t.requires_grad_() for t in dirty]
        out_c, out_d = fn(*clean), fn(*dirty)
        if reduction == "none":
            assert torch.equal(out_d[others], out_c[others])
        u = torch.randn(out_c.shape)
        g_c = torch.autograd.grad(out_c, clean, u)
        g_d = torch.autograd.grad(out_d, dirty, u)
        for a, b in zip(g_d, g_c):
            assert torch.equal(a[others], b[others]), f"input {i}: gradients of the other pairs changed"


@pytest.mark.parametrize("bad", [NAN, INF], ids=["nan", "inf"])
def test_non_finite_response_stays_in_its_prompt(bad):
    p, kk, k, bad_p, bad_i = 4, 5, 3, 2, 1
    v = emb(p, kk, 2 * k)
    gate, w = gate_like(p, k), torch.rand(p, kk)
    vd = v.clone()
    vd[bad_p, bad_i, 0] = bad
    others = torch.arange(p) != bad_p

    m_c = F.preference_matrix(v.requires_grad_(), gate)
    vd.requires_grad_()
    m_d = F.preference_matrix(vd, gate)
    assert torch.equal(m_d[others], m_c[others])
    # in the affected prompt only the row and the column of the bad response may be non-finite
    mask = torch.zeros(kk, kk, dtype=torch.bool)
    mask[bad_i, :] = True
    mask[:, bad_i] = True
    assert torch.isfinite(m_d[bad_p][~mask]).all()
    assert torch.equal(m_d[bad_p][~mask], m_c[bad_p][~mask])
    u = torch.randn(p, kk, kk)
    (g_c,) = torch.autograd.grad(m_c, v, u)
    (g_d,) = torch.autograd.grad(m_d, vd, u)
    assert torch.equal(g_d[others], g_c[others])

    v2, vd2 = v.detach().clone().requires_grad_(), vd.detach().clone().requires_grad_()
    s_c, s_d = F.win_score(v2, w, gate), F.win_score(vd2, w, gate)
    assert torch.equal(s_d[others], s_c[others])
    u = torch.randn(p, kk)
    (g_c,) = torch.autograd.grad(s_c, v2, u)
    (g_d,) = torch.autograd.grad(s_d, vd2, u)
    assert torch.equal(g_d[others], g_c[others])


def test_non_finite_gate_or_weight_stays_in_its_prompt():
    p, kk, k = 3, 4, 2
    v = emb(p, kk, 2 * k)
    gate, w = gate_like(p, k), torch.rand(p, kk)
    gd, wd = gate.clone(), w.clone()
    gd[1, 0] = NAN
    wd[1, 2] = INF
    others = torch.tensor([True, False, True])
    assert torch.equal(F.preference_matrix(v, gd)[others], F.preference_matrix(v, gate)[others])
    assert torch.equal(F.win_score(v, wd, gd)[others], F.win_score(v, w, gate)[others])
    assert not torch.isfinite(F.win_score(v, wd, gate)[1]).all()


def test_float64_inputs_with_huge_values_do_not_overflow_early():
    """The float64 path computes in float64: values that would overflow float32 are fine."""
    a = torch.tensor([[1e30, 0.0]], dtype=F64)
    b = torch.tensor([[0.0, 1e30]], dtype=F64)
    assert F.preference_score(a, b).item() == 1e30 * 1e30
