"""gpmkit.nn: the GPM head (names, shapes, init, normalisation, gate) and the loss modules."""

from __future__ import annotations

import gpmkit
import gpmkit.functional as F
import pytest
import torch
from _helpers import emb, gate_like, randn, soft_label
from gpmkit.exceptions import ArgumentError, ShapeError
from gpmkit.nn import BTLoss, GPMHead, GPMLoss, GPOLoss, SPPOLoss


def test_lazy_attribute():
    assert gpmkit.GPMHead is GPMHead


@pytest.mark.parametrize("gate", [False, True])
def test_parameter_names_and_shapes_match_the_official_checkpoints(gate):
    head = GPMHead(hidden_size=24, value_head_dim=8, gate=gate)
    params = {name: tuple(p.shape) for name, p in head.named_parameters()}
    want = {"value_head.weight": (8, 24)}
    if gate:
        want["prompt_head.weight"] = (4, 24)
    assert params == want
    assert head.value_head.bias is None
    assert not gate or head.prompt_head.bias is None
    assert set(head.state_dict()) == set(want)
    assert head.has_gate is gate


@pytest.mark.parametrize("gate", [False, True])
@pytest.mark.parametrize("l2", [False, True])
def test_output_shapes(gate, l2):
    head = GPMHead(16, 6, gate=gate, l2_normalize=l2)
    hidden, prompt = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    v, lam = head(hidden, prompt if gate else None)
    assert v.shape == (2, 5, 6)
    if gate:
        assert lam.shape == (2, 5, 3)
    else:
        assert lam is None
    v1, _ = head(torch.randn(16), torch.randn(16) if gate else None)
    assert v1.shape == (6,)


def test_init_std_is_one_over_hidden_plus_one():
    torch.manual_seed(0)
    h = 255
    head = GPMHead(h, 64, gate=True)
    std = 1.0 / (h + 1)
    for w in (head.value_head.weight, head.prompt_head.weight):
        n = w.numel()
        # the sample std of n normal draws is within ~1/sqrt(2n) (relative) of the true one: 5 sigma
        assert abs(w.std().item() / std - 1) < 5 / (2 * n) ** 0.5
        assert abs(w.mean().item()) < 5 * std / n**0.5


def test_l2_normalised_embeddings_have_unit_norm():
    head = GPMHead(32, 10)
    v, _ = head(torch.randn(7, 32) * 100)
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(7))
    raw = GPMHead(32, 10, l2_normalize=False)
    raw.load_state_dict(head.state_dict())
    x = torch.randn(7, 32)
    v_raw, _ = raw(x)
    torch.testing.assert_close(v_raw, x @ head.value_head.weight.T)
    torch.testing.assert_close(head(x)[0], v_raw / v_raw.norm(dim=-1, keepdim=True))


@pytest.mark.parametrize("activation,total", [("softmax", 1.0), ("scaled_softmax", 5.0)])
def test_gate_activation(activation, total):
    head = GPMHead(12, 10, gate=True, gate_activation=activation)
    x = torch.randn(4, 12) * 10
    _, lam = head(torch.randn(4, 12), x)
    assert (lam >= 0).all()
    torch.testing.assert_close(lam.sum(-1), torch.full((4,), total))
    logits = x @ head.prompt_head.weight.T
    torch.testing.assert_close(lam, torch.softmax(logits, -1) * total)
    torch.testing.assert_close(head.gate_weights(x), lam)


def test_bad_head_arguments():
    head = GPMHead(8, 4, gate=True)
    with pytest.raises(ArgumentError, match="prompt_hidden"):
        head(torch.randn(2, 8))
    with pytest.raises(ArgumentError, match="gate"):
        GPMHead(8, 4).gate_weights(torch.randn(8))
    for bad in (3, 0, -2, 4.0):
        with pytest.raises(ShapeError, match="value_head_dim"):
            GPMHead(8, bad)
    for bad in (0, -1, 2.5):
        with pytest.raises(ArgumentError, match="hidden_size"):
            GPMHead(bad, 4)
    with pytest.raises(ArgumentError, match="gate_activation"):
        GPMHead(8, 4, gate=True, gate_activation="sigmoid")


def test_head_trains_end_to_end_with_the_loss():
    torch.manual_seed(0)
    head = GPMHead(16, 8, gate=True)
    h_c, h_r, h_p = torch.randn(5, 16), torch.randn(5, 16), torch.randn(5, 16)
    v_c, lam = head(h_c, h_p)
    v_r, _ = head(h_r, h_p)
    F.gpm_loss(v_c, v_r, lam).backward()
    grads = {name: p.grad for name, p in head.named_parameters()}
    # same through the oracle
    head2 = GPMHead(16, 8, gate=True)
    head2.load_state_dict(head.state_dict())
    v_c, lam = head2(h_c, h_p)
    v_r, _ = head2(h_r, h_p)
    gpmkit._reference.gpm_loss(v_c, v_r, lam).backward()
    for name, p in head2.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-5, atol=1e-7)


def _same(module_out, functional_out, inputs):
    torch.testing.assert_close(module_out, functional_out, rtol=0, atol=0)
    u = torch.randn(module_out.shape)
    for a, b in zip(torch.autograd.grad(module_out, inputs, u), torch.autograd.grad(functional_out, inputs, u)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_loss_modules_equal_the_functional_forms(reduction):
    n, k = 6, 3
    vc, vr = emb(n, 2 * k).requires_grad_(), emb(n, 2 * k).requires_grad_()
    gate, margin, label = gate_like(n, k).requires_grad_(), randn(n, scale=0.1), soft_label(n)
    mod = GPMLoss(tau=0.3, reduction=reduction)
    _same(mod(vc, vr, gate, margin, label), F.gpm_loss(vc, vr, gate, 0.3, margin, label, reduction), [vc, vr, gate])
    _same(GPMLoss()(vc, vr), F.gpm_loss(vc, vr, tau=0.1), [vc, vr])

    rc, rr = randn(n).requires_grad_(), randn(n).requires_grad_()
    _same(BTLoss(0.5, reduction)(rc, rr, margin, label), F.bt_loss(rc, rr, 0.5, margin, label, reduction), [rc, rr])
    _same(BTLoss()(rc, rr), F.bt_loss(rc, rr, tau=1.0), [rc, rr])

    lp, rl, t = randn(n).requires_grad_(), randn(n), randn(n).requires_grad_()
    lengths = 1 + 9 * torch.rand(n)
    mod = GPOLoss(beta=0.5, gamma=1.0, clamp=1.5, reduction=reduction)
    _same(mod(lp, rl, t, lengths), F.gpo_loss(lp, rl, t, 0.5, lengths, 1.0, 1.5, reduction), [lp, t])
    _same(GPOLoss(0.5)(lp, rl, t), F.gpo_loss(lp, rl, t, 0.5), [lp, t])

    p = soft_label(n).requires_grad_()
    _same(SPPOLoss(0.5, reduction)(lp, rl, p), F.sppo_loss(lp, rl, p, 0.5, reduction), [lp, p])


def test_loss_modules_have_no_parameters_and_a_repr():
    for mod in (GPMLoss(), BTLoss(), GPOLoss(0.5), SPPOLoss(0.5)):
        assert list(mod.parameters()) == []
    assert "tau=0.1" in repr(GPMLoss()) and "reduction='mean'" in repr(GPMLoss())
    assert "beta=0.5" in repr(GPOLoss(0.5)) and "gate=True" in repr(GPMHead(4, 2, gate=True))
