"""Plain-PyTorch reference implementation: the specification every kernel is tested against.

Readable, vectorised, differentiable by autograd and exact in float64. It is also the backend that runs
where no native kernel exists yet (CUDA tensors until the CUDA kernels land) or when ``GPMKIT_IMPL=torch``.
Shapes broadcast like ordinary PyTorch expressions. Conventions are those of DESIGN §1:

    s(i ≻ j) = Σ_l λ_l · (v_i[2l] · v_j[2l+1] − v_i[2l+1] · v_j[2l])
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "bt_loss",
    "dense_operator_score",
    "gpm_loss",
    "gpo_loss",
    "preference_matrix",
    "preference_prob",
    "preference_score",
    "reduce",
    "sppo_loss",
    "win_score",
]


def reduce(loss: Tensor, reduction: str) -> Tensor:
    """``'none'`` keeps the per-element losses; ``'mean'`` (NaN on an empty batch) and ``'sum'`` reduce."""
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"reduction: expected one of 'none', 'mean', 'sum', got {reduction!r}")


def _rotate(v: Tensor) -> Tensor:
    """``rot(v)[2l] = v[2l+1]``, ``rot(v)[2l+1] = −v[2l]``, so that ``⟨v_i, rot(v_j)⟩ = s(i ≻ j)``."""
    return torch.stack((v[..., 1::2], -v[..., 0::2]), dim=-1).flatten(-2)


def _expand_gate(gate: Tensor) -> Tensor:
    """``[..., k] → [..., 2k]`` with each λ_l repeated for both coordinates of its block."""
    return gate.repeat_interleave(2, dim=-1)


def preference_score(v_i: Tensor, v_j: Tensor, gate: Optional[Tensor] = None) -> Tensor:
    """``s(v_i ≻ v_j)`` over the last dimension: ``[..., 2k] × [..., 2k] (× [..., k]) → [...]``."""
    term = v_i[..., 0::2] * v_j[..., 1::2] - v_i[..., 1::2] * v_j[..., 0::2]
    if gate is not None:
        term = term * gate
    return term.sum(-1)


def preference_matrix(v: Tensor, gate: Optional[Tensor] = None) -> Tensor:
    """``M[..., i, j] = s(v_i ≻ v_j)``: ``[..., K, 2k] (× [..., k]) → [..., K, K]`` as one batched matmul."""
    left = v if gate is None else v * _expand_gate(gate).unsqueeze(-2)
    return left @ _rotate(v).transpose(-1, -2)


def win_score(v: Tensor, weights: Optional[Tensor] = None, gate: Optional[Tensor] = None) -> Tensor:
    """``ŝ_i = Σ_j w_j s(v_i ≻ v_j) = s(v_i ≻ v̄)`` with ``v̄ = Σ_j w_j v_j`` (uniform ``1/K`` by default)."""
    if weights is None:
        v_bar = v.mean(-2)
    else:
        v_bar = (weights.unsqueeze(-1) * v).sum(-2)
    return preference_score(v, v_bar.unsqueeze(-2), None if gate is None else gate.unsqueeze(-2))


def preference_prob(v_i: Tensor, v_j: Tensor, gate: Optional[Tensor] = None, tau: float = 0.1) -> Tensor:
    """``P(v_i ≻ v_j) = σ(s / τ)``."""
    return torch.sigmoid(preference_score(v_i, v_j, gate) / tau)


def _pair_loss(s: Tensor, tau: float, margin, label, reduction: str) -> Tensor:
    z = (s if margin is None else s - margin) / tau
    if label is None:
        loss = -F.logsigmoid(z)
    else:
        loss = -(label * F.logsigmoid(z) + (1 - label) * F.logsigmoid(-z))
    return reduce(loss, reduction)


def gpm_loss(
    v_chosen: Tensor,
    v_rejected: Tensor,
    gate: Optional[Tensor] = None,
    tau: float = 0.1,
    margin: Optional[Tensor] = None,
    label: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """Paper Eq. A.1: ``−[p log σ((s − m)/τ) + (1 − p) log σ(−(s − m)/τ)]`` with ``s = s(chosen ≻ rejected)``."""
    return _pair_loss(preference_score(v_chosen, v_rejected, gate), tau, margin, label, reduction)


def bt_loss(
    r_chosen: Tensor,
    r_rejected: Tensor,
    tau: float = 1.0,
    margin: Optional[Tensor] = None,
    label: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """Bradley-Terry: the GPM loss with ``s = r_chosen − r_rejected``."""
    return _pair_loss(r_chosen - r_rejected, tau, margin, label, reduction)


def _policy_loss(logp, ref_logp, target, beta, lengths, gamma, clamp, reduction) -> Tensor:
    delta = logp - ref_logp
    if lengths is not None and gamma != 0:
        delta = delta / lengths**gamma
    target = target / beta
    if clamp is not None:
        target = target.clamp(-clamp, clamp)
    return reduce((delta - target) ** 2, reduction)


def gpo_loss(
    logp: Tensor,
    ref_logp: Tensor,
    win_score: Tensor,
    beta: float,
    lengths: Optional[Tensor] = None,
    gamma: float = 0.0,
    clamp: Optional[float] = None,
    reduction: str = "mean",
) -> Tensor:
    """Paper Eq. 5.3 with log Z = 0: ``((logπ − logπ_ref)/|y|^γ − clamp(ŝ/β))²``."""
    return _policy_loss(logp, ref_logp, win_score, beta, lengths, gamma, clamp, reduction)


def sppo_loss(logp: Tensor, ref_logp: Tensor, win_prob: Tensor, beta: float, reduction: str = "mean") -> Tensor:
    """SPPO: ``((logπ − logπ_ref) − (P̂ − ½)/β)²``."""
    return _policy_loss(logp, ref_logp, win_prob - 0.5, beta, None, 0.0, None, reduction)


def dense_operator_score(v_chosen: Tensor, v_rejected: Tensor, gate: Optional[Tensor] = None) -> Tensor:
    """The official code's formulation: build the dense ``R(x)`` per pair and use ``bmm``.

    ``R[2l, 2l+1] = −λ_l``, ``R[2l+1, 2l] = +λ_l``, ``s = (R v_chosen) · v_rejected``. O(N·d²) memory;
    kept as the baseline the benchmarks compare against and as a cross-check of the sign convention.
    """
    n, d = v_chosen.shape
    lam = torch.ones(n, d // 2, dtype=v_chosen.dtype, device=v_chosen.device) if gate is None else gate
    r = torch.zeros(n, d, d, dtype=v_chosen.dtype, device=v_chosen.device)
    idx = torch.arange(0, d, 2, device=v_chosen.device)
    r[:, idx, idx + 1] = -lam
    r[:, idx + 1, idx] = lam
    rv = torch.bmm(v_chosen.unsqueeze(1), r.transpose(1, 2)).squeeze(1)
    return (rv * v_rejected).sum(-1)
