"""The sign convention, pinned against the official GPM code's own formulations and hand-computed numbers.

The official code (general_preference/models/rw_model_general_preference.py, reference/paper.md §1.7):

- k = 1: ``s = chosen[0] * rejected[1] - chosen[1] * rejected[0]``;
- gated: a dense ``R(x)`` per pair with ``R[2l, 2l+1] = -λ_l`` and ``R[2l+1, 2l] = +λ_l``, and
  ``s = bmm(chosen, Rᵀ) · rejected`` (i.e. ``(R v_chosen) · v_rejected``).

Both are written out below, independently of gpmkit._reference.
"""

from __future__ import annotations

import math

import gpmkit._reference as R
import gpmkit.functional as F
import pytest
import torch

F64 = torch.float64


def official_k1(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    return chosen[:, 0] * rejected[:, 1] - chosen[:, 1] * rejected[:, 0]


def official_gated(chosen: torch.Tensor, rejected: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    b, d = chosen.shape
    r_matrix = torch.zeros(b, d, d, dtype=chosen.dtype)
    for l in range(d // 2):  # noqa: E741 (the paper's block index)
        r_matrix[:, 2 * l, 2 * l + 1] = -lam[:, l]
        r_matrix[:, 2 * l + 1, 2 * l] = lam[:, l]
    transformed_chosen = torch.bmm(chosen.view(b, 1, d), r_matrix.transpose(1, 2))
    return torch.bmm(transformed_chosen, rejected.view(b, d, 1)).view(b)


def test_k1_matches_the_official_formula():
    torch.manual_seed(0)
    chosen, rejected = torch.randn(50, 2, dtype=F64), torch.randn(50, 2, dtype=F64)
    torch.testing.assert_close(F.preference_score(chosen, rejected), official_k1(chosen, rejected), rtol=0, atol=0)
    torch.testing.assert_close(
        F.preference_score(chosen.float(), rejected.float()), official_k1(chosen.float(), rejected.float())
    )


@pytest.mark.parametrize("k", [1, 2, 5])
def test_gated_matches_the_official_dense_operator(k):
    torch.manual_seed(k)
    chosen, rejected = torch.randn(20, 2 * k, dtype=F64), torch.randn(20, 2 * k, dtype=F64)
    lam = torch.softmax(torch.randn(20, k, dtype=F64), -1)
    want = official_gated(chosen, rejected, lam)
    torch.testing.assert_close(F.preference_score(chosen, rejected, lam), want, rtol=1e-14, atol=1e-15)
    # without a gate the operator is blockdiag([[0, -1], [1, 0]]): λ = 1
    ones = torch.ones(20, k, dtype=F64)
    torch.testing.assert_close(
        F.preference_score(chosen, rejected), official_gated(chosen, rejected, ones), rtol=1e-14, atol=1e-15
    )
    # and the oracle's dense baseline agrees too
    torch.testing.assert_close(R.dense_operator_score(chosen, rejected, lam), want, rtol=1e-14, atol=1e-15)


def test_hand_computed_example():
    # blocks: 1·6 − 2·5 = −4 and 3·8 − 4·7 = −4; gate [0.5, 2] → 0.5·(−4) + 2·(−4) = −10
    vi = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    vj = torch.tensor([[5.0, 6.0, 7.0, 8.0]])
    gate = torch.tensor([[0.5, 2.0]])
    for dtype in (torch.float32, F64, torch.bfloat16):
        assert F.preference_score(vi.to(dtype), vj.to(dtype)).item() == -8.0
        assert F.preference_score(vi.to(dtype), vj.to(dtype), gate.to(dtype)).item() == -10.0
        assert F.preference_score(vj.to(dtype), vi.to(dtype), gate.to(dtype)).item() == 10.0
    m = F.preference_matrix(torch.cat([vi, vj]).unsqueeze(0), gate)
    assert m.tolist() == [[[0.0, -10.0], [10.0, 0.0]]]
    # ŝ_i = Σ_j w_j M[i, j]: uniform weights → [−5, 5]; weights [0.25, 0.75] → [−7.5, 2.5]
    assert F.win_score(torch.cat([vi, vj]).unsqueeze(0), None, gate).tolist() == [[-5.0, 5.0]]
    assert F.win_score(torch.cat([vi, vj]).unsqueeze(0), torch.tensor([[0.25, 0.75]]), gate).tolist() == [[-7.5, 2.5]]
    # unit basis vectors: s([1, 0] ≻ [0, 1]) = 1
    assert F.preference_score(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])).item() == 1.0


def test_hand_computed_gradients():
    # ∂s/∂v_i = λ ⊙ rot(v_j) = [0.5·6, −0.5·5, 2·8, −2·7]; ∂s/∂v_j = [−0.5·2, 0.5·1, −2·4, 2·3];
    # ∂s/∂λ = per-block terms [−4, −4]
    vi = torch.tensor([[1.0, 2.0, 3.0, 4.0]], requires_grad=True)
    vj = torch.tensor([[5.0, 6.0, 7.0, 8.0]], requires_grad=True)
    gate = torch.tensor([[0.5, 2.0]], requires_grad=True)
    F.preference_score(vi, vj, gate).sum().backward()
    assert vi.grad.tolist() == [[3.0, -2.5, 16.0, -14.0]]
    assert vj.grad.tolist() == [[-1.0, 0.5, -8.0, 6.0]]
    assert gate.grad.tolist() == [[-4.0, -4.0]]


@pytest.mark.parametrize("c", [1.0, 0.5, -2.0])
def test_bradley_terry_is_the_k1_special_case(c):
    """v = [r, c] → s(i ≻ j) = c·(r_i − r_j), and the GPM loss at τ is the BT loss at τ/c (c > 0)."""
    torch.manual_seed(1)
    r_i, r_j = torch.randn(30, dtype=F64), torch.randn(30, dtype=F64)
    v_i = torch.stack([r_i, torch.full_like(r_i, c)], -1)
    v_j = torch.stack([r_j, torch.full_like(r_j, c)], -1)
    torch.testing.assert_close(F.preference_score(v_i, v_j), c * (r_i - r_j), rtol=1e-14, atol=1e-15)
    if c > 0:
        for red in ("none", "mean", "sum"):
            torch.testing.assert_close(
                F.gpm_loss(v_i, v_j, tau=0.3, reduction=red),
                F.bt_loss(r_i, r_j, tau=0.3 / c, reduction=red),
                rtol=1e-13,
                atol=1e-15,
            )


def test_loss_values_by_hand():
    # s = 0 → −log σ(0) = log 2
    z = torch.zeros(1, 2, dtype=F64)
    assert math.isclose(F.gpm_loss(z, z).item(), math.log(2), rel_tol=1e-15)
    # s = 0.1, τ = 0.1 → z = 1, ℓ = softplus(−1) = log(1 + e^{−1})
    a, b = torch.tensor([[1.0, 0.0]], dtype=F64), torch.tensor([[0.0, 0.1]], dtype=F64)
    assert math.isclose(F.gpm_loss(a, b, tau=0.1).item(), math.log1p(math.exp(-1)), rel_tol=1e-14)
    # soft label ½: softplus(−1) + ½·1
    half = torch.tensor([0.5], dtype=F64)
    assert math.isclose(F.gpm_loss(a, b, tau=0.1, label=half).item(), math.log1p(math.exp(-1)) + 0.5, rel_tol=1e-14)
    # margin 0.1 cancels the score: log 2 again
    assert math.isclose(F.gpm_loss(a, b, tau=0.1, margin=0.1).item(), math.log(2), rel_tol=1e-14)
    # BT: r_c − r_r = 1 at τ = 1 → softplus(−1); ∂/∂r_c = −σ(−1)
    rc = torch.tensor([2.0], dtype=F64, requires_grad=True)
    loss = F.bt_loss(rc, torch.tensor([1.0], dtype=F64))
    loss.backward()
    assert math.isclose(loss.item(), math.log1p(math.exp(-1)), rel_tol=1e-14)
    assert math.isclose(rc.grad.item(), -1 / (1 + math.e), rel_tol=1e-14)
    # P(a ≻ b) = σ(s/τ): s = 0.1, τ = 0.1 → σ(1)
    assert math.isclose(F.preference_prob(a, b).item(), 1 / (1 + math.exp(-1)), rel_tol=1e-15)


def test_policy_loss_values_by_hand():
    lp, rl = torch.tensor([-1.0], dtype=F64), torch.tensor([-2.0], dtype=F64)
    # GPO: logπ − logπ_ref = 1, ŝ/β = 0.5 → (1 − 0.5)² = 0.25
    assert F.gpo_loss(lp, rl, torch.tensor([0.5], dtype=F64), 1.0).item() == 0.25
    # length-normalised (γ = 1, |y| = 4): (1/4 − 0.5)² = 0.0625
    assert F.gpo_loss(lp, rl, torch.tensor([0.5], dtype=F64), 1.0, torch.tensor([4.0], dtype=F64), 1.0).item() == (
        0.0625
    )
    # clamp 0.2: (1 − 0.2)² = 0.64
    assert math.isclose(F.gpo_loss(lp, rl, torch.tensor([0.5], dtype=F64), 1.0, clamp=0.2).item(), 0.64, rel_tol=1e-15)
    # SPPO: P̂ = 0.75, β = 0.5 → target (0.75 − 0.5)/0.5 = 0.5 → 0.25
    assert F.sppo_loss(lp, rl, torch.tensor([0.75], dtype=F64), 0.5).item() == 0.25
