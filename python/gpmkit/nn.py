"""``torch.nn`` modules: the GPM embedding/gate head and the loss modules."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from . import functional as F
from .exceptions import ArgumentError, ShapeError

__all__ = ["BTLoss", "GPMHead", "GPMLoss", "GPOLoss", "SPPOLoss"]

_GATE_ACTIVATIONS = ("softmax", "scaled_softmax")


class GPMHead(nn.Module):
    """Preference-embedding head (and optional eigenvalue-scale gate) over a backbone's hidden states.

    ``value_head``: bias-free ``Linear(hidden_size, 2k)`` giving ``v``, L2-normalised over all 2k
    coordinates when ``l2_normalize``. ``prompt_head`` (when ``gate``): bias-free ``Linear(hidden_size, k)``
    on the hidden state at the last prompt token, then ``softmax`` (Σλ = 1, the official inference
    convention) or ``"scaled_softmax"`` (``k·softmax``, Σλ = k). Both are initialised N(0, 1/(H+1)) as
    in the official code, and the parameter names match the official checkpoints
    (``value_head.weight [2k, H]``, ``prompt_head.weight [k, H]``).

    Args:
        hidden_size: backbone hidden size H.
        value_head_dim: embedding width 2k (even).
        gate: add the prompt-dependent gate λ(x).
        gate_activation: ``"softmax"`` or ``"scaled_softmax"``.
        l2_normalize: normalise embeddings to unit length.
    """

    def __init__(
        self,
        hidden_size: int,
        value_head_dim: int,
        gate: bool = False,
        gate_activation: str = "softmax",
        l2_normalize: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(hidden_size, int) or hidden_size <= 0:
            raise ArgumentError(f"hidden_size: expected a positive int, got {hidden_size!r}")
        if not isinstance(value_head_dim, int) or value_head_dim <= 0 or value_head_dim % 2:
            raise ShapeError(f"value_head_dim: expected an even, positive int 2k, got {value_head_dim!r}")
        if gate_activation not in _GATE_ACTIVATIONS:
            raise ArgumentError(f"gate_activation: expected one of {_GATE_ACTIVATIONS}, got {gate_activation!r}")
        self.hidden_size, self.value_head_dim = hidden_size, value_head_dim
        self.gate_activation, self.l2_normalize = gate_activation, l2_normalize
        std = 1.0 / (hidden_size + 1)
        self.value_head = nn.Linear(hidden_size, value_head_dim, bias=False)
        nn.init.normal_(self.value_head.weight, std=std)
        self.prompt_head: Optional[nn.Linear] = None
        if gate:
            self.prompt_head = nn.Linear(hidden_size, value_head_dim // 2, bias=False)
            nn.init.normal_(self.prompt_head.weight, std=std)

    @property
    def has_gate(self) -> bool:
        return self.prompt_head is not None

    def embed(self, hidden: Tensor) -> Tensor:
        """``[..., H] → [..., 2k]`` preference embeddings."""
        v = self.value_head(hidden)
        return nn.functional.normalize(v, p=2, dim=-1) if self.l2_normalize else v

    def gate_weights(self, prompt_hidden: Tensor) -> Tensor:
        """``[..., H] → [..., k]`` block scales λ(x) ≥ 0 from the hidden state at the last prompt token."""
        if self.prompt_head is None:
            raise ArgumentError("gate_weights: this head was built with gate=False")
        lam = torch.softmax(self.prompt_head(prompt_hidden), dim=-1)
        return lam * lam.shape[-1] if self.gate_activation == "scaled_softmax" else lam

    def forward(self, hidden: Tensor, prompt_hidden: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """Embeddings ``[..., 2k]`` and gate ``[..., k]`` (``None`` without a gate).

        ``prompt_hidden`` is the hidden state at the last prompt token; it is required when the head
        has a gate.
        """
        v = self.embed(hidden)
        if self.prompt_head is None:
            return v, None
        if prompt_hidden is None:
            raise ArgumentError(
                "prompt_hidden: required when the head has a gate (hidden state at the last prompt token)"
            )
        return v, self.gate_weights(prompt_hidden)

    def extra_repr(self) -> str:
        return (
            f"hidden_size={self.hidden_size}, value_head_dim={self.value_head_dim}, gate={self.has_gate}, "
            f"gate_activation={self.gate_activation!r}, l2_normalize={self.l2_normalize}"
        )


class GPMLoss(nn.Module):
    """Module form of :func:`gpmkit.functional.gpm_loss`."""

    def __init__(self, tau: float = 0.1, reduction: str = "mean") -> None:
        super().__init__()
        self.tau, self.reduction = tau, reduction

    def forward(self, v_chosen, v_rejected, gate=None, margin=None, label=None) -> Tensor:
        return F.gpm_loss(v_chosen, v_rejected, gate, self.tau, margin, label, self.reduction)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, reduction={self.reduction!r}"


class BTLoss(nn.Module):
    """Module form of :func:`gpmkit.functional.bt_loss`."""

    def __init__(self, tau: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        self.tau, self.reduction = tau, reduction

    def forward(self, r_chosen, r_rejected, margin=None, label=None) -> Tensor:
        return F.bt_loss(r_chosen, r_rejected, self.tau, margin, label, self.reduction)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, reduction={self.reduction!r}"


class GPOLoss(nn.Module):
    """Module form of :func:`gpmkit.functional.gpo_loss`."""

    def __init__(self, beta: float, gamma: float = 0.0, clamp: Optional[float] = None, reduction: str = "mean"):
        super().__init__()
        self.beta, self.gamma, self.clamp, self.reduction = beta, gamma, clamp, reduction

    def forward(self, logp, ref_logp, win_score, lengths=None) -> Tensor:
        return F.gpo_loss(logp, ref_logp, win_score, self.beta, lengths, self.gamma, self.clamp, self.reduction)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, gamma={self.gamma}, clamp={self.clamp}, reduction={self.reduction!r}"


class SPPOLoss(nn.Module):
    """Module form of :func:`gpmkit.functional.sppo_loss`."""

    def __init__(self, beta: float, reduction: str = "mean") -> None:
        super().__init__()
        self.beta, self.reduction = beta, reduction

    def forward(self, logp, ref_logp, win_prob) -> Tensor:
        return F.sppo_loss(logp, ref_logp, win_prob, self.beta, self.reduction)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, reduction={self.reduction!r}"
