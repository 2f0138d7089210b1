"""Every function of gpmkit.functional against the float64 oracle gpmkit._reference.

Awkward shapes (batch 1 and 37, k = 1 and 65, empty batches, several batch dimensions, broadcasting),
values and the gradients of every float input with random upstream gradients, with and without every
optional argument, all reductions. Tolerances are derived in tests/_helpers.py (module docstring):
sums of n products in float32 are within n·eps32·Σ|terms| of the exact value, float64 within n·eps64.
"""

from __future__ import annotations

import itertools
import math

import gpmkit
import gpmkit._reference as R
import gpmkit.functional as F
import pytest
import torch
from _helpers import (
    EPS,
    F64,
    check_pair_loss,
    check_policy_loss,
    check_polynomial,
    emb,
    gate_like,
    leaf,
    mag_matrix,
    mag_score,
    mag_win,
    policy_target,
    randn,
    soft_label,
)

F32 = torch.float32
REDUCTIONS = ("none", "mean", "sum")
# The kernels are specialised for D = 2k ∈ {2, 4, 6, 8, 16}; any other width (here 130) runs the generic one.
WIDTHS = (1, 2, 3, 4, 8, 65)
LOSS_WIDTHS = (1, 3, 8, 65)

# name: (v_i batch, v_j batch, gate batch, margin batch, label batch, largest broadcast factor)
PAIR_SHAPES = {
    "n1": ((1,), (1,), (1,), (1,), (1,), 1),
    "n37": ((37,), (37,), (37,), (37,), (37,), 1),
    "empty": ((0,), (0,), (0,), (0,), (0,), 1),
    "multi": ((2, 3, 4), (2, 3, 4), (2, 3, 4), (2, 3, 4), (2, 3, 4), 1),
    "broadcast": ((3, 1), (1, 5), (5,), (3, 1), (5,), 5),
}

# name: (v batch, K, gate batch, weights batch, largest broadcast factor)
POP_SHAPES = {
    "p1": ((1,), 5, (1,), (1,), 1),
    "p37": ((37,), 5, (37,), (37,), 1),
    "k1": ((4,), 1, (4,), (4,), 1),
    "empty": ((0,), 5, (0,), (0,), 1),
    "multi": ((2, 3), 4, (2, 3), (2, 3), 1),
    "broadcast": ((3, 1), 4, (5,), (5,), 5),
}


def _pair_n(k: int, bc: int) -> int:
    # 2k products summed (plus the gate product) per score, ~8 roundings of the loss chain, and the
    # sums of up to `bc` terms autograd adds over broadcast dimensions.
    return 2 * k + 16 + bc


def _pop_n(k: int, kk: int, bc: int) -> int:
    # the population mean v̄ / the backward's Σ_j add K (or 2K) more terms to a score's 2k.
    return 2 * k + 2 * kk + 16 + bc


# ---------------------------------------------------------------------------------------------------
# scores


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("with_gate", [False, True], ids=["nogate", "gate"])
@pytest.mark.parametrize("k", WIDTHS)
@pytest.mark.parametrize("shape", PAIR_SHAPES)
def test_preference_score(shape, k, with_gate, dtype):
    si, sj, sg, _, _, bc = PAIR_SHAPES[shape]
    tensors = {
        "v_i": emb(*si, 2 * k),
        "v_j": emb(*sj, 2 * k),
        "gate": gate_like(*sg, k) if with_gate else None,
    }
    check_polynomial(F.preference_score, R.preference_score, mag_score_kw, tensors, _pair_n(k, bc), dtype)


def mag_score_kw(v_i, v_j, gate=None):
    return mag_score(v_i, v_j, gate)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("with_gate", [False, True], ids=["nogate", "gate"])
@pytest.mark.parametrize("k", WIDTHS)
@pytest.mark.parametrize("shape", POP_SHAPES)
def test_preference_matrix(shape, k, with_gate, dtype):
    sv, kk, sg, _, bc = POP_SHAPES[shape]
    tensors = {"v": emb(*sv, kk, 2 * k), "gate": gate_like(*sg, k) if with_gate else None}
    check_polynomial(F.preference_matrix, R.preference_matrix, mag_matrix, tensors, _pop_n(k, kk, bc), dtype)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("with_weights", [False, True], ids=["uniform", "weights"])
@pytest.mark.parametrize("with_gate", [False, True], ids=["nogate", "gate"])
@pytest.mark.parametrize("k", WIDTHS)
@pytest.mark.parametrize("shape", POP_SHAPES)
def test_win_score(shape, k, with_gate, with_weights, dtype):
    sv, kk, sg, sw, bc = POP_SHAPES[shape]
    tensors = {
        "v": emb(*sv, kk, 2 * k),
        # weights need not sum to 1 (or be positive): Σ_j w_j s(i, j) is defined for any w
        "weights": randn(*sw, kk) if with_weights else None,
        "gate": gate_like(*sg, k) if with_gate else None,
    }
    check_polynomial(F.win_score, R.win_score, mag_win, tensors, _pop_n(k, kk, bc), dtype)


@pytest.mark.parametrize("fn", [F.preference_matrix, F.win_score], ids=["matrix", "win"])
@pytest.mark.parametrize("batch", [(0,), (3,), (2, 3)], ids=str)
def test_population_with_no_responses(fn, batch):
    """K = 0 responses per prompt: an empty [..., 0, 0] matrix / [..., 0] win scores, and empty gradients."""
    v = torch.zeros(*batch, 0, 4, requires_grad=True)
    gate = torch.rand(*batch, 2, requires_grad=True)
    out = fn(v, gate=gate)
    want = R.preference_matrix(v, gate) if fn is F.preference_matrix else R.win_score(v, None, gate)
    assert out.shape == want.shape
    gv, gg = torch.autograd.grad(out.sum(), (v, gate), allow_unused=True, materialize_grads=True)
    assert gv.shape == v.shape and gg.shape == gate.shape
    assert not gg.any()


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("with_gate", [False, True], ids=["nogate", "gate"])
@pytest.mark.parametrize("k", WIDTHS)
@pytest.mark.parametrize("shape", PAIR_SHAPES)
def test_preference_prob(shape, k, with_gate, dtype):
    si, sj, sg, _, _, bc = PAIR_SHAPES[shape]
    tau = 0.1 if with_gate else 1.0
    tensors = {"v_i": emb(*si, 2 * k), "v_j": emb(*sj, 2 * k), "gate": gate_like(*sg, k) if with_gate else None}
    check_pair_loss(F.preference_prob, R.preference_prob, "prob", tensors, {"tau": tau}, _pair_n(k, bc), dtype)


# ---------------------------------------------------------------------------------------------------
# pair losses

OPTIONALS = {"plain": (False, False), "margin": (True, False), "label": (False, True), "both": (True, True)}


def _gpm_cases(dtype):
    """float32: every shape × width × option × reduction; float64 (near exact): a cross-section."""
    if dtype == F32:
        return list(itertools.product(PAIR_SHAPES, LOSS_WIDTHS, (False, True), OPTIONALS, REDUCTIONS))
    return list(itertools.product(("n37", "empty", "broadcast"), (1, 65), (False, True), ("plain", "both"), REDUCTIONS))


def _gpm_id(case):
    shape, k, gate, opt, red = case
    return f"{shape}-k{k}-{'gate' if gate else 'nogate'}-{opt}-{red}"


@pytest.mark.parametrize(
    "dtype,case",
    [(F32, c) for c in _gpm_cases(F32)] + [(F64, c) for c in _gpm_cases(F64)],
    ids=[f"f32-{_gpm_id(c)}" for c in _gpm_cases(F32)] + [f"f64-{_gpm_id(c)}" for c in _gpm_cases(F64)],
)
def test_gpm_loss(case, dtype):
    shape, k, with_gate, opt, reduction = case
    si, sj, sg, sm, sl, bc = PAIR_SHAPES[shape]
    with_margin, with_label = OPTIONALS[opt]
    tensors = {
        "v_chosen": emb(*si, 2 * k),
        "v_rejected": emb(*sj, 2 * k),
        "gate": gate_like(*sg, k) if with_gate else None,
        "margin": randn(*sm, scale=0.1) if with_margin else None,
        "label": soft_label(*sl) if with_label else None,
    }
    kwargs = {"tau": 0.3, "reduction": reduction}
    check_pair_loss(F.gpm_loss, R.gpm_loss, "gpm", tensors, kwargs, _pair_n(k, bc), dtype)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("opt", OPTIONALS)
@pytest.mark.parametrize("tau", [1.0, 0.25])
@pytest.mark.parametrize("shape", PAIR_SHAPES)
def test_bt_loss(shape, tau, opt, reduction, dtype):
    si, sj, _, sm, sl, bc = PAIR_SHAPES[shape]
    with_margin, with_label = OPTIONALS[opt]
    tensors = {
        "r_chosen": randn(*si),
        "r_rejected": randn(*sj),
        "margin": randn(*sm, scale=0.3) if with_margin else None,
        "label": soft_label(*sl) if with_label else None,
    }
    kwargs = {"tau": tau, "reduction": reduction}
    check_pair_loss(F.bt_loss, R.bt_loss, "bt", tensors, kwargs, 16 + bc, dtype)


# ---------------------------------------------------------------------------------------------------
# policy losses

# name: (logp batch, ref_logp batch, target batch, lengths batch)
POLICY_SHAPES = {
    "n1": ((1,), (1,), (1,), (1,)),
    "n37": ((37,), (37,), (37,), (37,)),
    "empty": ((0,), (0,), (0,), (0,)),
    "multi": ((2, 3, 4), (2, 3, 4), (2, 3, 4), (2, 3, 4)),
    "broadcast": ((3, 1), (1, 5), (5,), (3, 1)),
}

GPO_VARIANTS = {
    "plain": {"gamma": 0.0, "clamp": None, "lengths": False},
    "lengths_gamma0": {"gamma": 0.0, "clamp": None, "lengths": True},
    "gamma1": {"gamma": 1.0, "clamp": None, "lengths": True},
    "gamma0.7": {"gamma": 0.7, "clamp": None, "lengths": True},
    "clamp": {"gamma": 0.0, "clamp": 0.8, "lengths": False},
    "gamma1_clamp": {"gamma": 1.0, "clamp": 0.8, "lengths": True},
    "clamp0": {"gamma": 0.0, "clamp": 0.0, "lengths": False},
}


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("variant", GPO_VARIANTS)
@pytest.mark.parametrize("shape", POLICY_SHAPES)
def test_gpo_loss(shape, variant, reduction, dtype):
    sl, sr, st, sn = POLICY_SHAPES[shape]
    v = GPO_VARIANTS[variant]
    beta = 0.5
    if v["clamp"] == 0.0:  # clamp 0 pins every target at 0: no gradient reaches win_score at all
        target = 2.0 + torch.rand(*st)
    else:  # with a clamp, half the targets hit it (and none sits at its edge)
        target = policy_target(*st, beta=beta, clamp=v["clamp"])
    tensors = {
        "logp": randn(*sl, scale=3.0) - 20,
        "ref_logp": randn(*sr, scale=3.0) - 20,
        "win_score": target,
        "lengths": (1 + 60 * torch.rand(*sn)).round() if v["lengths"] else None,
    }
    kwargs = {"beta": beta, "gamma": v["gamma"], "clamp": v["clamp"], "reduction": reduction}
    check_policy_loss(F.gpo_loss, R.gpo_loss, tensors, kwargs, 0.0, dtype)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("beta", [0.5, 2.0])
@pytest.mark.parametrize("shape", POLICY_SHAPES)
def test_sppo_loss(shape, beta, reduction, dtype):
    sl, sr, st, _ = POLICY_SHAPES[shape]
    tensors = {
        "logp": randn(*sl, scale=3.0) - 20,
        "ref_logp": randn(*sr, scale=3.0) - 20,
        "win_prob": soft_label(*st),
    }
    check_policy_loss(F.sppo_loss, R.sppo_loss, tensors, {"beta": beta, "reduction": reduction}, 0.5, dtype)


# ---------------------------------------------------------------------------------------------------
# reductions and empty batches


def _loss_calls(batch: tuple):
    """(name, inputs, call) for every loss, with inputs of batch shape ``batch``."""
    k = 3
    return [
        ("gpm", [emb(*batch, 2 * k), emb(*batch, 2 * k), gate_like(*batch, k), randn(*batch), soft_label(*batch)],
         lambda a, b, g, m, p, red: F.gpm_loss(a, b, g, 0.1, m, p, red)),
        ("bt", [randn(*batch), randn(*batch), randn(*batch), soft_label(*batch)],
         lambda a, b, m, p, red: F.bt_loss(a, b, 1.0, m, p, red)),
        ("gpo", [randn(*batch), randn(*batch), randn(*batch), 1 + torch.rand(*batch)],
         lambda a, b, t, n, red: F.gpo_loss(a, b, t, 0.5, n, 1.0, 2.0, red)),
        ("sppo", [randn(*batch), randn(*batch), soft_label(*batch)],
         lambda a, b, t, red: F.sppo_loss(a, b, t, 0.5, red)),
    ]  # fmt: skip


LOSSES = ("gpm", "bt", "gpo", "sppo")


def _call(name, batch, reduction, inputs=None):
    _, fresh, fn = next(c for c in _loss_calls(batch) if c[0] == name)
    inputs = [leaf(t) for t in (fresh if inputs is None else inputs)]
    return fn(*inputs, reduction), inputs


@pytest.mark.parametrize("name", LOSSES)
def test_reduction_none_keeps_the_broadcast_batch_shape(name):
    out, inputs = _call(name, (2, 3, 4), "none")
    assert out.shape == (2, 3, 4)
    mean, _ = _call(name, (2, 3, 4), "mean", inputs)
    total, _ = _call(name, (2, 3, 4), "sum", inputs)
    assert mean.shape == total.shape == ()
    torch.testing.assert_close(mean, out.mean(), rtol=1e-6, atol=0)
    torch.testing.assert_close(total, out.sum(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch(name, reduction):
    out, inputs = _call(name, (0,), reduction)
    if reduction == "none":
        assert out.shape == (0,)
    elif reduction == "mean":
        assert out.shape == () and math.isnan(out.item())  # as torch.mean of nothing
    else:
        assert out.shape == () and out.item() == 0.0
    grads = torch.autograd.grad(out, inputs, torch.ones_like(out))
    for g, t in zip(grads, inputs):
        assert g.shape == t.shape and g.dtype == t.dtype


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_multi_dim_batch(reduction):
    v = torch.randn(3, 0, 2, 4, requires_grad=True)
    out = F.gpm_loss(v, v.detach().flip(-1), reduction=reduction)
    assert out.shape == ((3, 0, 2) if reduction == "none" else ())
    (g,) = torch.autograd.grad(out, v, torch.ones_like(out))
    assert g.shape == v.shape
    assert F.preference_score(v, v).shape == (3, 0, 2)
    assert F.preference_matrix(v).shape == (3, 0, 2, 2)


# ---------------------------------------------------------------------------------------------------
# low precision, mixed dtypes, Python numbers, integer lengths


def _low_precision_cases():
    n, k, kk, p = 37, 65, 5, 6
    return {
        "score": (F.preference_score, R.preference_score,
                  {"v_i": emb(n, 2 * k), "v_j": emb(n, 2 * k), "gate": gate_like(n, k)}, {}),
        "prob": (F.preference_prob, R.preference_prob,
                 {"v_i": emb(n, 2 * k), "v_j": emb(n, 2 * k), "gate": gate_like(n, k)}, {"tau": 0.3}),
        "matrix": (F.preference_matrix, R.preference_matrix, {"v": emb(p, kk, 2 * k), "gate": gate_like(p, k)}, {}),
        "win": (F.win_score, R.win_score,
                {"v": emb(p, kk, 2 * k), "weights": torch.rand(p, kk), "gate": gate_like(p, k)}, {}),
        "gpm_mean": (F.gpm_loss, R.gpm_loss,
                     {"v_chosen": emb(n, 2 * k), "v_rejected": emb(n, 2 * k), "gate": gate_like(n, k),
                      "margin": randn(n, scale=0.1), "label": soft_label(n)}, {"tau": 0.3, "reduction": "mean"}),
        "gpm_none": (F.gpm_loss, R.gpm_loss,
                     {"v_chosen": emb(n, 2 * k), "v_rejected": emb(n, 2 * k), "gate": gate_like(n, k),
                      "margin": randn(n, scale=0.1), "label": soft_label(n)}, {"tau": 0.3, "reduction": "none"}),
        "bt": (F.bt_loss, R.bt_loss,
               {"r_chosen": randn(n), "r_rejected": randn(n), "margin": randn(n, scale=0.1), "label": soft_label(n)},
               {"reduction": "none"}),
        "gpo": (F.gpo_loss, R.gpo_loss,
                {"logp": randn(n) - 5, "ref_logp": randn(n) - 5, "win_score": randn(n),
                 "lengths": 1 + (20 * torch.rand(n)).round()},
                {"beta": 0.5, "gamma": 1.0, "clamp": None, "reduction": "none"}),
        "sppo": (F.sppo_loss, R.sppo_loss, {"logp": randn(n) - 5, "ref_logp": randn(n) - 5, "win_prob": soft_label(n)},
                 {"beta": 0.5, "reduction": "none"}),
    }  # fmt: skip


LOW_PRECISION = list(_low_precision_cases())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", LOW_PRECISION)
def test_low_precision_is_at_least_as_accurate_as_torch(case, dtype):
    """bf16/f16 in, the same dtype out; error vs float64 ≤ 2× that of the same-precision torch reference.

    The kernels compute in float32 and round once at the end, so they should be *more* accurate than the
    reference evaluated in bf16/f16. The slack of half an ulp of the largest value covers the cases where
    the reference happens to be exact.
    """
    fn, ref, tensors, kwargs = _low_precision_cases()[case]
    x = {k: leaf(t, dtype) for k, t in tensors.items()}
    out = fn(**x, **kwargs)
    assert out.dtype == dtype
    u = randn(*out.shape, dtype=dtype)
    names = list(x)
    g = torch.autograd.grad(out, [x[k] for k in names], u)
    xr = {k: leaf(t) for k, t in x.items()}
    out_r = ref(**xr, **kwargs)
    assert out_r.dtype == dtype
    g_r = torch.autograd.grad(out_r, [xr[k] for k in names], u)
    x64 = {k: leaf(t, F64) for k, t in x.items()}
    out64 = ref(**x64, **kwargs)
    g64 = torch.autograd.grad(out64, [x64[k] for k in names], u.to(F64))
    eps = EPS[dtype]
    for what, a, r, o in [("value", out, out_r, out64)] + [
        (f"grad {k}", ga, gr, go) for k, ga, gr, go in zip(names, g, g_r, g64)
    ]:
        assert a.dtype == dtype, what
        err = (a.to(F64) - o).abs().max().item()
        err_ref = (r.to(F64) - o).abs().max().item()
        slack = 0.5 * eps * o.abs().max().item()
        assert err <= 2 * err_ref + slack, f"{what}: error {err:.3e} vs torch {dtype} reference {err_ref:.3e}"


def test_mixed_dtypes_promote():
    a = torch.randn(5, 4, requires_grad=True)
    b = torch.randn(5, 4, dtype=F64, requires_grad=True)
    g = torch.rand(5, 2, dtype=torch.bfloat16, requires_grad=True)
    s = F.preference_score(a, b, g)
    assert s.dtype == F64
    torch.testing.assert_close(s, R.preference_score(a.double(), b.double(), g.double()), rtol=1e-12, atol=1e-12)
    ga, gb, gg = torch.autograd.grad(s.sum(), (a, b, g))
    assert (ga.dtype, gb.dtype, gg.dtype) == (torch.float32, F64, torch.bfloat16)
    assert F.preference_score(a.bfloat16(), a.half()).dtype == torch.float32  # bf16 + f16 → f32, as torch
    assert F.gpm_loss(a, b, margin=torch.zeros(5, dtype=F64)).dtype == F64
    assert F.gpm_loss(a, a.detach(), label=torch.ones(5, dtype=F64)).dtype == F64
    assert F.bt_loss(torch.randn(3), torch.randn(3, dtype=F64)).dtype == F64
    assert F.win_score(a.reshape(5, 2, 2), torch.rand(5, 2, dtype=F64)).dtype == F64
    assert F.preference_matrix(a.reshape(5, 2, 2), g[:, :1]).dtype == torch.float32
    assert F.sppo_loss(torch.randn(3), torch.randn(3), torch.rand(3, dtype=F64), 0.5).dtype == F64
    assert F.gpo_loss(torch.randn(3), torch.randn(3, dtype=F64), torch.randn(3), 0.5).dtype == F64


def test_python_number_margin_and_label():
    vc, vr = emb(6, 4, dtype=F64), emb(6, 4, dtype=F64)
    for red in REDUCTIONS:
        got = F.gpm_loss(vc, vr, tau=0.3, margin=0.05, label=0.75, reduction=red)
        want = R.gpm_loss(vc, vr, None, 0.3, torch.tensor(0.05, dtype=F64), torch.tensor(0.75, dtype=F64), red)
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
        assert got.dtype == F64
    got = F.gpm_loss(vc, vr, margin=0, label=1)  # ints are numbers too
    torch.testing.assert_close(got, R.gpm_loss(vc, vr), rtol=1e-13, atol=1e-13)
    rc, rr = randn(6), randn(6)
    got = F.bt_loss(rc, rr, margin=0.5, label=0.25)
    want = R.bt_loss(rc.double(), rr.double(), 1.0, torch.tensor(0.5, dtype=F64), torch.tensor(0.25, dtype=F64))
    torch.testing.assert_close(got, want.float(), rtol=1e-6, atol=1e-7)
    assert got.dtype == torch.float32


@pytest.mark.parametrize("int_dtype", [torch.int64, torch.int32])
def test_gpo_loss_accepts_integer_lengths(int_dtype):
    lp = torch.randn(7, dtype=F64, requires_grad=True)
    rl, t = torch.randn(7, dtype=F64), torch.randn(7, dtype=F64)
    lengths = torch.randint(1, 50, (7,), dtype=int_dtype)
    got = F.gpo_loss(lp, rl, t, 0.5, lengths=lengths, gamma=1.0, reduction="none")
    want = R.gpo_loss(lp, rl, t, 0.5, lengths.to(F64), 1.0, None, "none")
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
    (g,) = torch.autograd.grad(got.sum(), lp)
    (gw,) = torch.autograd.grad(want.sum(), lp)
    torch.testing.assert_close(g, gw, rtol=1e-13, atol=1e-13)


def test_saturated_losses_stay_finite_and_exact():
    """Scores far beyond ±τ: log σ must not overflow (loss → 0 or → |z|, gradient → 0 or ∓1/τ)."""
    vc = torch.tensor([[1e3, 0.0], [0.0, 1.0], [30.0, 0.0]], dtype=F64, requires_grad=True)
    vr = torch.tensor([[0.0, 1.0], [1e3, 0.0], [0.0, 1.0]], dtype=F64, requires_grad=True)
    for red in REDUCTIONS:
        for label in (None, torch.tensor([0.0, 1.0, 0.3], dtype=F64)):
            got = F.gpm_loss(vc, vr, tau=0.1, label=label, reduction=red)
            want = R.gpm_loss(vc, vr, None, 0.1, None, label, red)
            assert torch.isfinite(got).all()
            torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
            g = torch.autograd.grad(got.sum(), (vc, vr))
            gw = torch.autograd.grad(want.sum(), (vc, vr))
            for a, b in zip(g, gw):
                torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
    r = torch.tensor([1e4, -1e4, 88.0, -88.0], dtype=torch.float32)
    got = F.bt_loss(r, torch.zeros(4), reduction="none")
    want = R.bt_loss(r.double(), torch.zeros(4, dtype=F64), reduction="none")
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-30)


def test_preference_prob_default_tau_and_complement():
    vi, vj = emb(9, 6, dtype=F64), emb(9, 6, dtype=F64)
    p = F.preference_prob(vi, vj)
    torch.testing.assert_close(p, torch.sigmoid(R.preference_score(vi, vj) / 0.1), rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(p + F.preference_prob(vj, vi), torch.ones(9, dtype=F64), rtol=0, atol=1e-15)


def test_gpm_loss_default_tau_is_a_tenth():
    vc, vr = emb(9, 6, dtype=F64), emb(9, 6, dtype=F64)
    torch.testing.assert_close(F.gpm_loss(vc, vr), R.gpm_loss(vc, vr, tau=0.1), rtol=1e-13, atol=0)
    rc, rr = randn(9, dtype=F64), randn(9, dtype=F64)
    torch.testing.assert_close(F.bt_loss(rc, rr), R.bt_loss(rc, rr, tau=1.0), rtol=1e-13, atol=0)


def test_mean_over_large_batch_reduces_in_float64():
    """The fused losses accumulate in float64: the float32 mean of 50k pairs is within one f32 rounding."""
    n = 50_000
    rc, rr = randn(n), randn(n)
    got = F.bt_loss(rc, rr).double()
    want = R.bt_loss(rc.double(), rr.double())
    # per-pair loss rounding (≈ 4·eps32 relative, averaging out) + the final rounding to float32
    assert abs(got - want) <= 4 * EPS[torch.float32] * abs(want)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("with_gate", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gpm_loss_fast_path_matches_the_general_path(reduction, with_gate, dtype, monkeypatch):
    """The training-step shortcut (plain [N, 2k] tensors, no margin/label) gives the same bits and gradients
    as the general path, which it skips; anything unusual still takes the general path."""
    g = torch.Generator().manual_seed(3)
    vc, vr = (torch.randn(9, 6, generator=g, dtype=dtype) for _ in range(2))
    gate = torch.rand(9, 3, generator=g, dtype=dtype) if with_gate else None
    assert F._pair_fast_path(vc, vr, gate) is not None

    def run():
        xs = [t.clone().requires_grad_() for t in (vc, vr) + ((gate,) if with_gate else ())]
        loss = F.gpm_loss(xs[0], xs[1], xs[2] if with_gate else None, tau=0.3, reduction=reduction)
        return loss, torch.autograd.grad(loss.sum(), xs)

    fast = run()
    monkeypatch.setattr(F, "_pair_fast_path", lambda *a: None)
    general = run()
    assert torch.equal(fast[0], general[0])
    for a, b in zip(fast[1], general[1]):
        assert torch.equal(a, b)


def test_gpm_loss_fast_path_declines_unusual_inputs(monkeypatch):
    vc, vr = torch.randn(4, 6), torch.randn(4, 6)
    assert F._pair_fast_path(vc, vr, None) is F._cpu
    assert F._pair_fast_path(vc[None], vr[None], None) is None  # 3-D: broadcasting rules apply
    assert F._pair_fast_path(vc, vr.double(), None) is None  # mixed dtypes: promotion
    assert F._pair_fast_path(vc.half(), vr.half(), None) is None  # CPU kernels compute half in float32
    assert F._pair_fast_path(vc, vr[:, :4], None) is None
    assert F._pair_fast_path(vc[:, :5], vr[:, :5], None) is None  # odd width
    assert F._pair_fast_path(vc, vr, torch.rand(4, 2)) is None  # gate of the wrong width
    assert F._pair_fast_path(vc, vr, torch.rand(1, 3)) is None  # broadcast gate
    assert F._pair_fast_path(vc, vr.to("meta"), None) is None
    assert F._pair_fast_path(vc, vr, torch.rand(4, 3, device="meta")) is None  # same index (-1), other device
    monkeypatch.setenv("GPMKIT_IMPL", "torch")
    assert F._pair_fast_path(vc, vr, None) is None
    # errors are still the general path's: a bad tau/reduction never takes the shortcut
    monkeypatch.delenv("GPMKIT_IMPL")
    with pytest.raises(gpmkit.exceptions.ArgumentError, match="tau"):
        F.gpm_loss(vc, vr, tau=0.0)
    with pytest.raises(gpmkit.exceptions.ArgumentError, match="reduction"):
        F.gpm_loss(vc, vr, reduction="avg")
