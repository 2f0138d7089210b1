"""Autograd: gradcheck of every op, torch.library.opcheck of every custom op, torch.compile, and the
semantics of backward through the fused losses (upstream gradients ≠ 1, reuse, retain_graph)."""

from __future__ import annotations

import gpmkit._reference as R
import gpmkit.functional as F
import pytest
import torch
from _helpers import F64, emb, gate_like, soft_label

ops = torch.ops.gpmkit


def _r(*shape, scale=1.0):
    return (torch.randn(*shape, dtype=F64) * scale).requires_grad_()


def _pos(*shape, lo=0.2):
    return (lo + torch.rand(*shape, dtype=F64)).requires_grad_()


def _label(*shape):
    return (0.05 + 0.9 * torch.rand(*shape, dtype=F64)).requires_grad_()


def _target(*shape, beta, clamp):
    """GPO targets whose ŝ/β stays ≥ 0.2 away from ±clamp, so finite differences never cross the kink."""
    inside = torch.rand(*shape) < 0.5
    mag = torch.where(inside, torch.rand(*shape) * 0.6, 1.4 + torch.rand(*shape))
    sign = torch.where(torch.rand(*shape) < 0.5, -1.0, 1.0)
    return (sign * mag * clamp * beta).to(F64).requires_grad_()


# ---------------------------------------------------------------------------------------------------
# gradcheck (float64, every float input requires grad)


def _gradcheck_cases():
    n, k, p, kk = 4, 3, 3, 4
    cases = {
        "score": (F.preference_score, (_r(n, 2 * k), _r(n, 2 * k))),
        "score_gate": (F.preference_score, (_r(n, 2 * k), _r(n, 2 * k), _pos(n, k))),
        "score_broadcast": (F.preference_score, (_r(3, 1, 2 * k), _r(1, 2, 2 * k), _pos(2, k))),
        "prob_gate": (lambda a, b, g: F.preference_prob(a, b, g, tau=0.7), (_r(n, 2 * k), _r(n, 2 * k), _pos(n, k))),
        "matrix": (F.preference_matrix, (_r(p, kk, 2 * k),)),
        "matrix_gate": (F.preference_matrix, (_r(p, kk, 2 * k), _pos(p, k))),
        "matrix_broadcast": (F.preference_matrix, (_r(2, 1, kk, 2 * k), _pos(3, k))),
        "win": (F.win_score, (_r(p, kk, 2 * k),)),
        "win_weights_gate": (F.win_score, (_r(p, kk, 2 * k), _r(p, kk), _pos(p, k))),
        "win_broadcast": (F.win_score, (_r(2, 1, kk, 2 * k), _r(kk), _pos(3, k))),
    }
    for red in ("none", "mean", "sum"):
        cases[f"gpm_{red}"] = (
            lambda a, b, red=red: F.gpm_loss(a, b, tau=0.5, reduction=red),
            (_r(n, 2 * k), _r(n, 2 * k)),
        )
        cases[f"gpm_all_{red}"] = (
            lambda a, b, g, m, lab, red=red: F.gpm_loss(a, b, g, 0.5, m, lab, red),
            (_r(n, 2 * k), _r(n, 2 * k), _pos(n, k), _r(n, scale=0.1), _label(n)),
        )
        cases[f"gpm_broadcast_{red}"] = (
            lambda a, b, g, m, lab, red=red: F.gpm_loss(a, b, g, 0.5, m, lab, red),
            (_r(3, 1, 2 * k), _r(1, 2, 2 * k), _pos(2, k), _r(3, 1, scale=0.1), _label(2)),
        )
        cases[f"bt_{red}"] = (lambda a, b, red=red: F.bt_loss(a, b, reduction=red), (_r(n), _r(n)))
        cases[f"bt_all_{red}"] = (
            lambda a, b, m, lab, red=red: F.bt_loss(a, b, 0.7, m, lab, red),
            (_r(3, 1), _r(2), _r(3, 1, scale=0.1), _label(2)),
        )
        cases[f"gpo_{red}"] = (lambda a, b, t, red=red: F.gpo_loss(a, b, t, 0.5, reduction=red), (_r(n), _r(n), _r(n)))
        cases[f"gpo_all_{red}"] = (
            lambda a, b, t, ln, red=red: F.gpo_loss(a, b, t, 0.5, ln, 1.0, 0.8, red),
            (_r(n), _r(n), _target(n, beta=0.5, clamp=0.8), _pos(n, lo=2.0)),
        )
        cases[f"gpo_gamma_{red}"] = (
            lambda a, b, t, ln, red=red: F.gpo_loss(a, b, t, 0.5, ln, 0.6, None, red),
            (_r(3, 1), _r(2), _r(2), _pos(3, 1, lo=1.0)),
        )
        cases[f"sppo_{red}"] = (
            lambda a, b, t, red=red: F.sppo_loss(a, b, t, 0.5, red),
            (_r(n), _r(n), _label(n)),
        )
    return cases


GRADCHECK = list(_gradcheck_cases())


@pytest.mark.parametrize("case", GRADCHECK)
def test_gradcheck(case):
    fn, inputs = _gradcheck_cases()[case]
    assert all(t.requires_grad for t in inputs)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------
# opcheck of the registered custom operators


def _d(*shape):
    return torch.randn(*shape, dtype=F64)


def _opcheck_cases():
    n, k, d, p, kk = 5, 3, 6, 2, 4
    cases = {
        "score": (ops.preference_score, (_r(n, d), _r(n, d), _pos(n, k))),
        "score_nogate": (ops.preference_score, (_r(n, d), _r(n, d), None)),
        "score_f32_empty": (ops.preference_score, (torch.zeros(0, d, requires_grad=True), torch.zeros(0, d), None)),
        "score_backward": (ops.preference_score_backward, (_d(n), _d(n, d), _d(n, d), _d(n, k), True, True, True)),
        "score_backward_some": (ops.preference_score_backward, (_d(n), _d(n, d), _d(n, d), None, False, True, False)),
        "matrix": (ops.preference_matrix, (_r(p, kk, d), _pos(p, k))),
        "matrix_nogate": (ops.preference_matrix, (_r(p, kk, d), None)),
        "matrix_backward": (ops.preference_matrix_backward, (_d(p, kk, kk), _d(p, kk, d), _d(p, k), True, True)),
        "matrix_backward_v": (ops.preference_matrix_backward, (_d(p, kk, kk), _d(p, kk, d), None, True, False)),
        "win": (ops.win_score, (_r(p, kk, d), _r(p, kk), _pos(p, k))),
        "win_plain": (ops.win_score, (_r(p, kk, d), None, None)),
        "win_backward": (
            ops.win_score_backward,
            (_d(p, kk), _d(p, kk, d), _d(p, kk), _d(p, k), True, True, True),
        ),
        "win_backward_v": (ops.win_score_backward, (_d(p, kk), _d(p, kk, d), None, None, True, False, False)),
    }
    for red in ("none", "mean", "sum"):
        cases[f"gpm_{red}"] = (
            ops.gpm_loss,
            (_r(n, d), _r(n, d), _pos(n, k), _r(n), _label(n), 0.3, red, True, True, True, True, True),
        )
        cases[f"gpm_plain_{red}"] = (
            ops.gpm_loss,
            (_r(n, d), _d(n, d), None, None, None, 0.3, red, True, False, False, False, False),
        )
        cases[f"bt_{red}"] = (ops.bt_loss, (_r(n), _r(n), _r(n), _label(n), 0.7, red, True, True, True, True))
        cases[f"bt_plain_{red}"] = (ops.bt_loss, (_r(n), _d(n), None, None, 1.0, red, True, False, False, False))
        cases[f"policy_{red}"] = (
            ops.policy_loss,
            (_r(n), _r(n), _target(n, beta=0.5, clamp=0.8), _pos(n, lo=1.0), 0.5, 0.0, 1.0, 0.8, red,
             True, True, True, True),
        )  # fmt: skip
        cases[f"policy_sppo_{red}"] = (
            ops.policy_loss,
            (_r(n), _d(n), _label(n), None, 0.5, 0.5, 0.0, None, red, True, False, True, False),
        )
    return cases


OPCHECK = list(_opcheck_cases())


@pytest.mark.parametrize("case", OPCHECK)
def test_opcheck(case):
    op, args = _opcheck_cases()[case]
    result = torch.library.opcheck(op, args)
    assert all(v == "SUCCESS" for v in result.values()), result


def test_every_custom_op_is_opchecked():
    checked = {_opcheck_cases()[c][0] for c in OPCHECK}
    names = {
        "preference_score", "preference_score_backward", "preference_matrix", "preference_matrix_backward",
        "win_score", "win_score_backward", "gpm_loss", "bt_loss", "policy_loss",
    }  # fmt: skip
    assert {getattr(ops, name).default for name in names} <= {op.default for op in checked}


# ---------------------------------------------------------------------------------------------------
# torch.compile


def _compile_inputs():
    torch.manual_seed(1)
    k = 3
    return {
        "vc": emb(6, 2 * k).requires_grad_(),
        "vr": emb(6, 2 * k).requires_grad_(),
        "gate": gate_like(6, k).requires_grad_(),
        "margin": (0.1 * torch.randn(6)).requires_grad_(),
        "label": soft_label(6).requires_grad_(),
        "v": emb(2, 3, 2 * k).requires_grad_(),
        "w": torch.rand(2, 3).requires_grad_(),
        "lp": torch.randn(6).requires_grad_(),
        "rl": torch.randn(6).requires_grad_(),
        "lengths": (1 + 10 * torch.rand(6)).requires_grad_(),
    }


def _everything(vc, vr, gate, margin, label, v, w, lp, rl, lengths):
    s = F.preference_score(vc, vr, gate)
    m = F.preference_matrix(v, gate[:2])
    ws = F.win_score(v, w, gate[:2])
    total = F.gpm_loss(vc, vr, gate, 0.2, margin, label) + F.gpm_loss(vc, vr, reduction="sum")
    total = total + F.gpm_loss(vc, vr, gate, 0.2, margin, label, "none").square().sum()
    total = total + F.bt_loss(s, s.detach() * 0.5, margin=margin, label=label)
    total = total + F.gpo_loss(lp, rl, s, 0.5, lengths, 1.0, 2.0) + F.sppo_loss(lp, rl, label, 0.5, "sum")
    total = total + F.preference_prob(vc, vr, gate, 0.3).sum()
    return total + (m * m).sum() + (ws * torch.arange(3.0)).sum()


def _compare_compiled(fn, backend):
    x = _compile_inputs()
    eager = fn(**x)
    g_eager = torch.autograd.grad(eager, list(x.values()))
    compiled = torch.compile(fn, backend=backend, fullgraph=True)
    out = compiled(**x)
    g = torch.autograd.grad(out, list(x.values()))
    torch.testing.assert_close(out, eager, rtol=1e-6, atol=1e-6)
    for name, a, b in zip(x, g, g_eager):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=lambda m, name=name: f"grad {name}: {m}")


def test_compile_aot_eager_fullgraph():
    torch._dynamo.reset()
    _compare_compiled(_everything, "aot_eager")


def test_compile_aot_eager_each_op_separately():
    """One graph per op (so a graph break in any one of them fails fullgraph on its own)."""
    torch._dynamo.reset()
    k = 2
    vc, vr, gate = emb(5, 2 * k).requires_grad_(), emb(5, 2 * k).requires_grad_(), gate_like(5, k).requires_grad_()
    fns = [
        (lambda a, b, g: F.preference_score(a, b, g).sum(), (vc, vr, gate)),
        (lambda a, g: F.preference_matrix(a.reshape(1, 5, -1), g[:1]).pow(2).sum(), (vc, gate)),
        (lambda a, g: F.win_score(a.reshape(1, 5, -1), None, g[:1]).pow(2).sum(), (vc, gate)),
        (lambda a, b, g: F.gpm_loss(a, b, g, reduction="mean"), (vc, vr, gate)),
        (lambda a, b: F.bt_loss(a.sum(-1), b.sum(-1), reduction="none").sum(), (vc, vr)),
        (lambda a, b: F.gpo_loss(a[:, 0], b[:, 0], a[:, 1], 0.5, reduction="mean"), (vc, vr)),
        (lambda a, b: F.sppo_loss(a[:, 0], b[:, 0], torch.sigmoid(a[:, 1]), 0.5), (vc, vr)),
    ]
    for fn, args in fns:
        eager = fn(*args)
        g_eager = torch.autograd.grad(eager, args)
        out = torch.compile(fn, backend="aot_eager", fullgraph=True)(*args)
        g = torch.autograd.grad(out, args)
        torch.testing.assert_close(out, eager)
        for a, b in zip(g, g_eager):
            torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_compile_inductor():
    torch._dynamo.reset()

    def fn(vc, vr, gate, margin, label, v, w, lp, rl, lengths):
        loss = F.gpm_loss(vc, vr, gate, 0.2, margin, label)
        return loss + F.win_score(v, w, gate[:2]).square().sum() + F.gpo_loss(lp, rl, label, 0.5, lengths, 1.0)

    _compare_compiled(fn, "inductor")


# ---------------------------------------------------------------------------------------------------
# backward semantics of the fused losses


def _loss_fns():
    k = 3

    def gpm(red):
        x = [emb(7, 2 * k), emb(7, 2 * k), gate_like(7, k), 0.1 * torch.randn(7), soft_label(7)]
        return (
            x,
            lambda a, b, g, m, p: F.gpm_loss(a, b, g, 0.3, m, p, red),
            lambda a, b, g, m, p: R.gpm_loss(a, b, g, 0.3, m, p, red),
        )

    def bt(red):
        x = [torch.randn(7), torch.randn(7), 0.1 * torch.randn(7), soft_label(7)]
        return x, lambda a, b, m, p: F.bt_loss(a, b, 0.5, m, p, red), lambda a, b, m, p: R.bt_loss(a, b, 0.5, m, p, red)

    def gpo(red):
        x = [torch.randn(7), torch.randn(7), torch.randn(7), 1 + 9 * torch.rand(7)]
        return (
            x,
            lambda a, b, t, n: F.gpo_loss(a, b, t, 0.5, n, 1.0, 1.5, red),
            lambda a, b, t, n: R.gpo_loss(a, b, t, 0.5, n, 1.0, 1.5, red),
        )

    def sppo(red):
        x = [torch.randn(7), torch.randn(7), soft_label(7)]
        return x, lambda a, b, t: F.sppo_loss(a, b, t, 0.5, red), lambda a, b, t: R.sppo_loss(a, b, t, 0.5, red)

    return {"gpm": gpm, "bt": bt, "gpo": gpo, "sppo": sppo}


def _setup(name, red, n=None):
    x, fn, ref = _loss_fns()[name](red)
    if n is not None:  # a single-element batch: reduction='none' then has a one-element upstream gradient
        x = [t[:n] for t in x]
    leaves = [t.detach().double().requires_grad_() for t in x]
    ref_leaves = [t.detach().double().requires_grad_() for t in x]
    return leaves, fn, ref_leaves, ref


def _ref_grads(ref, leaves, scale=1.0):
    out = ref(*leaves)
    return torch.autograd.grad(out, leaves, torch.full_like(out, scale))


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("red", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", ["gpm", "bt", "gpo", "sppo"])
def test_backward_with_scaled_upstream(name, red):
    leaves, fn, ref_leaves, ref = _setup(name, red)
    (2.5 * fn(*leaves)).sum().backward()
    for t, want in zip(leaves, _ref_grads(ref, ref_leaves, 2.5)):
        _close(t.grad, want)


@pytest.mark.parametrize("red", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", ["gpm", "bt", "gpo", "sppo"])
def test_backward_when_the_loss_is_used_twice(name, red):
    leaves, fn, ref_leaves, ref = _setup(name, red)
    loss = fn(*leaves)
    (loss + loss).sum().backward()
    for t, want in zip(leaves, _ref_grads(ref, ref_leaves, 2.0)):
        _close(t.grad, want)
    # and two separate uses that flow back to different consumers
    for t in leaves:
        t.grad = None
    loss = fn(*leaves)
    (loss.sum() * 3 - loss.sum()).backward()
    for t, want in zip(leaves, _ref_grads(ref, ref_leaves, 2.0)):
        _close(t.grad, want)


@pytest.mark.parametrize("n", [None, 1], ids=["batch7", "batch1"])
@pytest.mark.parametrize("red", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", ["gpm", "bt", "gpo", "sppo"])
def test_retain_graph_backward_accumulates(name, red, n):
    """Three backward passes through one retained graph accumulate 1×, 2×, 3× the gradient.

    The usual ``loss.backward()`` has an upstream gradient of exactly 1, the case the fused kernels
    short-cut: the gradient handed to autograd must not share memory with what the graph saved.
    """
    leaves, fn, ref_leaves, ref = _setup(name, red, n)
    loss = fn(*leaves).sum()
    want = _ref_grads(ref, ref_leaves)
    for i in (1, 2, 3):
        loss.backward(retain_graph=True)
        for t, w in zip(leaves, want):
            _close(t.grad, i * w)


@pytest.mark.parametrize("red", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", ["gpm", "bt", "gpo", "sppo"])
def test_zeroed_grads_do_not_corrupt_the_graph(name, red):
    """``optimizer.zero_grad(set_to_none=False)`` zeroes ``.grad`` in place; a retained graph must survive."""
    leaves, fn, ref_leaves, ref = _setup(name, red)
    loss = fn(*leaves).sum()
    want = _ref_grads(ref, ref_leaves)
    loss.backward(retain_graph=True)
    for t in leaves:
        t.grad.zero_()
    loss.backward()
    for t, w in zip(leaves, want):
        _close(t.grad, w)


@pytest.mark.parametrize("red", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", ["gpm", "bt", "gpo", "sppo"])
def test_autograd_grad_returns_plain_tensors(name, red):
    """Gradients from ``torch.autograd.grad`` (no create_graph) are ordinary tensors: no grad, writable."""
    leaves, fn, ref_leaves, ref = _setup(name, red)
    loss = fn(*leaves).sum()
    grads = torch.autograd.grad(loss, leaves, retain_graph=True)
    want = _ref_grads(ref, ref_leaves)
    for g, w in zip(grads, want):
        assert not g.requires_grad and g.grad_fn is None
        _close(g, w)
        g.mul_(0)  # e.g. gradient clipping in place
    again = torch.autograd.grad(loss, leaves)
    for g, w in zip(again, want):
        _close(g, w)


def test_score_ops_backward_twice_and_scaled():
    v = emb(3, 4, 6).double().requires_grad_()
    gate = gate_like(3, 3).double().requires_grad_()
    out = F.preference_matrix(v, gate).sum() + F.win_score(v, None, gate).sum() + F.preference_score(v, v.flip(1)).sum()
    want = torch.autograd.grad(
        R.preference_matrix(v, gate).sum() + R.win_score(v, None, gate).sum() + R.preference_score(v, v.flip(1)).sum(),
        (v, gate),
    )
    (1.5 * out).backward(retain_graph=True)
    out.backward()
    for t, w in zip((v, gate), want):
        _close(t.grad, 2.5 * w)


def test_no_grad_forward_computes_no_gradients():
    vc, vr = emb(5, 4).requires_grad_(), emb(5, 4).requires_grad_()
    with torch.no_grad():
        loss = F.gpm_loss(vc, vr)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, R.gpm_loss(vc, vr).detach())


def test_gradient_only_for_inputs_that_need_it():
    vc = emb(5, 4).requires_grad_()
    vr = emb(5, 4)
    gate, margin, label = gate_like(5, 2), 0.1 * torch.randn(5), soft_label(5)
    loss = F.gpm_loss(vc, vr, gate, 0.1, margin, label)
    loss.backward()
    assert vc.grad is not None and vr.grad is None and gate.grad is None
    want = torch.autograd.grad(R.gpm_loss(vc, vr, gate, 0.1, margin, label), vc)[0]
    torch.testing.assert_close(vc.grad, want)


DOUBLE = {
    "score": (lambda a, b: F.preference_score(a, b).sum(), lambda a, b: R.preference_score(a, b).sum()),
    "matrix": (lambda a, b: F.preference_matrix(a.reshape(2, 2, 4)).pow(2).sum(),
               lambda a, b: R.preference_matrix(a.reshape(2, 2, 4)).pow(2).sum()),
    "gpm": (lambda a, b: F.gpm_loss(a, b, reduction="sum"), lambda a, b: R.gpm_loss(a, b, reduction="sum")),
    "bt": (lambda a, b: F.bt_loss(a[:, 0], b[:, 0]), lambda a, b: R.bt_loss(a[:, 0], b[:, 0])),
}  # fmt: skip


@pytest.mark.parametrize("name", DOUBLE)
def test_double_backward_is_refused_not_silently_wrong(name):
    """``create_graph=True`` is documented as unsupported. Unsupported must mean an error, not a gradient
    that silently acts as a constant: a gradient penalty (``loss + g.pow(2).sum()``) would get no gradient
    at all. So: either the first grad call raises, or the result is differentiable and correct."""
    fn, ref = DOUBLE[name]
    vc, vr = emb(4, 4).double().requires_grad_(), emb(4, 4).double()
    try:
        (g,) = torch.autograd.grad(fn(vc, vr), vc, create_graph=True)
        assert g.requires_grad, "create_graph=True returned a gradient without a graph (a constant)"
        (h,) = torch.autograd.grad(g.pow(2).sum(), vc)
    except RuntimeError:  # refused (e.g. torch.autograd.function.once_differentiable): fine
        return
    (gr,) = torch.autograd.grad(ref(vc, vr), vc, create_graph=True)
    (hr,) = torch.autograd.grad(gr.pow(2).sum(), vc)
    _close(h, hr)
