"""The functional API: preference scores, matrices, win scores and the GPM / BT / GPO / SPPO losses.

Conventions (DESIGN §1). A response has a preference embedding ``v ∈ R^{2k}`` and, optionally, the
prompt a gate ``λ ∈ R^k`` (one non-negative scale per 2-D block)::

    s(i ≻ j) = Σ_l λ_l · (v_i[2l] · v_j[2l+1] − v_i[2l+1] · v_j[2l])        P(i ≻ j) = σ(s / τ)

``s(i, j) = −s(j, i)`` and ``s(i, i) = 0`` hold exactly. Every function accepts CPU or CUDA tensors of
float32/float64 (bfloat16/float16 are computed in float32 and cast back), broadcasts leading (batch)
dimensions like PyTorch, and is differentiable with respect to every floating-point tensor argument.
On CPU the Rust kernels run (``torch.ops.gpmkit.*``), on CUDA the CUDA kernels
(``torch.ops.gpmkit.cuda_*``, bfloat16/float16 read directly with float32 arithmetic) when
:func:`gpmkit.cuda_available`; elsewhere the vectorised PyTorch path runs (:func:`gpmkit.ops.active_impl`
says which). Empty batches give empty results; ``reduction='mean'`` of an empty batch is NaN and
``'sum'`` is 0, as in PyTorch. NaN/Inf propagate to the outputs that depend on them and nowhere else.
"""

from __future__ import annotations

import math
import os
from numbers import Real
from typing import Optional, Union

import torch
from torch import Tensor

from . import _reference as ref
from .exceptions import ArgumentError, DeviceError, DTypeError, ShapeError
from .ops import _cpu, _cuda, active_impl

__all__ = [
    "bt_loss",
    "gpm_loss",
    "gpo_loss",
    "preference_matrix",
    "preference_prob",
    "preference_score",
    "sppo_loss",
    "win_score",
]

Scalar = Union[float, int]
_REDUCTIONS = ("none", "mean", "sum")


# ---------------------------------------------------------------------------------------------------
# validation


def _tensor(x, name: str, *, ref_tensor: Optional[Tensor] = None) -> Tensor:
    """A floating-point tensor, or a Python number turned into one next to ``ref_tensor``."""
    if isinstance(x, Real) and not isinstance(x, bool) and ref_tensor is not None:
        return torch.tensor(float(x), dtype=ref_tensor.dtype, device=ref_tensor.device)
    if not isinstance(x, Tensor):
        raise DTypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise DTypeError(f"{name}: expected a floating-point tensor (float32/float64/bfloat16/float16), got {x.dtype}")
    return x


def _common(named: dict[str, Optional[Tensor]]) -> tuple[torch.device, torch.dtype]:
    """Checks that all given tensors share one device; returns it and their promoted dtype."""
    first_name, first = next(iter(named.items()))
    device, dtype = first.device, first.dtype
    for name, t in named.items():
        if t is None:
            continue
        if t.device != device:
            raise DeviceError(f"{name}: expected a tensor on {device} (like {first_name}), got one on {t.device}")
        if t.dtype != dtype:
            dtype = torch.promote_types(dtype, t.dtype)
    return device, dtype


def _width(v: Tensor, name: str, min_dim: int = 1) -> int:
    if v.dim() < min_dim:
        raise ShapeError(f"{name}: expected at least {min_dim} dimension(s), got shape {tuple(v.shape)}")
    d = v.shape[-1]
    if d == 0 or d % 2:
        raise ShapeError(f"{name}: expected an even, positive last dimension 2k, got shape {tuple(v.shape)}")
    return d // 2


def _check_gate(gate: Optional[Tensor], k: int) -> None:
    if gate is not None and (gate.dim() < 1 or gate.shape[-1] != k):
        raise ShapeError(f"gate: expected shape [..., {k}] (one scale per 2-D block), got {tuple(gate.shape)}")


def _batch(named: dict[str, Optional[tuple]]) -> torch.Size:
    """Broadcasts the batch shapes, with an error naming the arguments that do not fit."""
    shapes = {k: v for k, v in named.items() if v is not None}
    first, *rest = shapes.values()
    if all(s == first for s in rest):  # the common case, ~10x cheaper than torch.broadcast_shapes
        return torch.Size(first)
    try:
        return torch.broadcast_shapes(*shapes.values())
    except RuntimeError:
        got = ", ".join(f"{k} {tuple(s)}" for k, s in shapes.items())
        raise ShapeError(f"batch dimensions: expected shapes that broadcast together, got {got}") from None


def _positive(x, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, Real) or not (math.isfinite(x) and x > 0):
        raise ArgumentError(f"{name}: expected a finite number > 0, got {x!r}")
    return float(x)


def _reduction(reduction) -> str:
    if reduction not in _REDUCTIONS:
        raise ArgumentError(f"reduction: expected one of 'none', 'mean', 'sum', got {reduction!r}")
    return reduction


def _kernel_dtype(dtype: torch.dtype, impl: str = "rust") -> torch.dtype:
    if impl == "cuda" and dtype in (torch.bfloat16, torch.float16):
        return dtype  # the CUDA kernels read half precision directly
    return torch.float64 if dtype == torch.float64 else torch.float32


def _flat(t: Optional[Tensor], batch: torch.Size, tail: tuple, dtype: torch.dtype) -> Optional[Tensor]:
    """Broadcast to ``batch + tail``, flatten the batch, cast to the kernel dtype (views where possible)."""
    if t is None:
        return None
    if t.dim() != 1 + len(tail) or t.shape[:1] != batch:  # already [N, *tail] when nothing broadcasts
        t = t.expand(*batch, *tail).reshape(math.prod(batch), *tail)
    return t if t.dtype == dtype else t.to(dtype)


def _native(op: str, device: torch.device, dtype: torch.dtype):
    """``(kernels, kernel dtype)`` for a native implementation, ``(None, None)`` for the PyTorch path."""
    impl = active_impl(op, device)
    if impl == "torch":
        return None, None
    return (_cuda if impl == "cuda" else _cpu), _kernel_dtype(dtype, impl)


_CUDA_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _pair_fast_path(a, b, gate):
    """The native kernels for the common case that needs no validation beyond these checks: plain
    ``[N, 2k]`` tensors of one kernel dtype on one device, an optional ``[N, k]`` gate like them, no forced
    implementation. ``None`` sends the call through the general path (checks, broadcasting, casts)."""
    if type(a) is not Tensor or type(b) is not Tensor:
        return None
    shape = a.shape
    if len(shape) != 2 or b.shape != shape or shape[1] % 2 or not shape[1]:
        return None
    dtype = a.dtype
    if b.dtype is not dtype:
        return None
    if a.is_cuda:
        if not b.is_cuda or b.get_device() != a.get_device():
            return None
        kernels = _cuda if dtype in _CUDA_DTYPES and _cuda.available() else None
    elif a.is_cpu and b.is_cpu and (dtype is torch.float32 or dtype is torch.float64):
        kernels = _cpu
    else:
        return None
    if gate is not None:
        if type(gate) is not Tensor or gate.shape != (shape[0], shape[1] // 2) or gate.dtype is not dtype:
            return None
        if not (gate.is_cuda and gate.get_device() == a.get_device() if a.is_cuda else gate.is_cpu):
            return None
    return None if os.environ.get("GPMKIT_IMPL") else kernels


def _needs(*ts: Optional[Tensor]) -> list[bool]:
    grad = torch.is_grad_enabled()
    return [bool(grad and t is not None and t.requires_grad) for t in ts]


# ---------------------------------------------------------------------------------------------------
# scores


def preference_score(v_i: Tensor, v_j: Tensor, gate: Optional[Tensor] = None) -> Tensor:
    """Preference score ``s(v_i ≻ v_j) = Σ_l λ_l (v_i[2l] v_j[2l+1] − v_i[2l+1] v_j[2l])``.

    Args:
        v_i: ``[..., 2k]`` embeddings of the first responses.
        v_j: ``[..., 2k]`` embeddings of the second responses.
        gate: optional ``[..., k]`` block scales ``λ(x) ≥ 0`` (``λ = 1`` when omitted).

    Returns:
        ``[...]`` (the broadcast batch shape) scores, in the promoted dtype of the inputs.
    """
    v_i, v_j = _tensor(v_i, "v_i"), _tensor(v_j, "v_j")
    gate = None if gate is None else _tensor(gate, "gate")
    device, dtype = _common({"v_i": v_i, "v_j": v_j, "gate": gate})
    k = _width(v_i, "v_i")
    if v_j.shape[-1:] != v_i.shape[-1:]:
        raise ShapeError(f"v_j: expected last dimension {2 * k} (like v_i), got shape {tuple(v_j.shape)}")
    _check_gate(gate, k)
    batch = _batch({"v_i": v_i.shape[:-1], "v_j": v_j.shape[:-1], "gate": None if gate is None else gate.shape[:-1]})
    kernels, kd = _native("preference_score", device, dtype)
    if kernels is None:
        return ref.preference_score(v_i, v_j, gate)
    out = kernels.call(
        "preference_score",
        _flat(v_i, batch, (2 * k,), kd),
        _flat(v_j, batch, (2 * k,), kd),
        _flat(gate, batch, (k,), kd),
    )
    return _finish(out, batch, dtype)


def preference_prob(v_i: Tensor, v_j: Tensor, gate: Optional[Tensor] = None, tau: float = 0.1) -> Tensor:
    """Preference probability ``P(v_i ≻ v_j) = σ(s(v_i ≻ v_j) / τ)``; shapes as :func:`preference_score`.

    ``P(a ≻ b) + P(b ≻ a) = 1`` holds for every pair. ``tau`` must be > 0 (0.1 for GPM, 1 for BT).
    """
    tau = _positive(tau, "tau")
    return torch.sigmoid(preference_score(v_i, v_j, gate) / tau)


def _population(v: Tensor, gate: Optional[Tensor], extra: dict) -> tuple[int, int, torch.Size]:
    k = _width(v, "v", min_dim=2)
    _check_gate(gate, k)
    shapes = {"v": v.shape[:-2], "gate": None if gate is None else gate.shape[:-1], **extra}
    return k, v.shape[-2], _batch(shapes)


def preference_matrix(v: Tensor, gate: Optional[Tensor] = None) -> Tensor:
    """All pairwise scores of K responses to one prompt: ``M[..., i, j] = s(v_i ≻ v_j)``.

    Args:
        v: ``[..., K, 2k]`` embeddings of K responses per prompt.
        gate: optional ``[..., k]`` block scales of each prompt.

    Returns:
        ``[..., K, K]``, skew-symmetric (``M = −Mᵀ``, zero diagonal). Cost O(K²·k) per prompt from K
        embeddings: one forward pass per response, never one per pair.
    """
    v = _tensor(v, "v")
    gate = None if gate is None else _tensor(gate, "gate")
    device, dtype = _common({"v": v, "gate": gate})
    k, kk, batch = _population(v, gate, {})
    kernels, kd = _native("preference_matrix", device, dtype)
    if kernels is None:
        return ref.preference_matrix(v, gate)
    out = kernels.call("preference_matrix", _flat(v, batch, (kk, 2 * k), kd), _flat(gate, batch, (k,), kd))
    return _finish(out, (*batch, kk, kk), dtype)


def win_score(v: Tensor, weights: Optional[Tensor] = None, gate: Optional[Tensor] = None) -> Tensor:
    """Population win score (paper Eq. 5.2): ``ŝ_i = Σ_j w_j s(v_i ≻ v_j)``.

    Because ``s`` is bilinear this equals ``s(v_i ≻ v̄)`` with ``v̄ = Σ_j w_j v_j``, so the cost is
    O(K·k) per prompt, not O(K²·k). The self term ``j = i`` is included (it is 0).

    Args:
        v: ``[..., K, 2k]`` embeddings of K responses per prompt.
        weights: optional ``[..., K]`` population weights (default uniform ``1/K``).
        gate: optional ``[..., k]`` block scales of each prompt.

    Returns:
        ``[..., K]`` win scores.
    """
    v = _tensor(v, "v")
    weights = None if weights is None else _tensor(weights, "weights")
    gate = None if gate is None else _tensor(gate, "gate")
    device, dtype = _common({"v": v, "weights": weights, "gate": gate})
    k, kk, batch = _population(v, gate, {"weights": None if weights is None else weights.shape[:-1]})
    if weights is not None and weights.shape[-1] != kk:
        raise ShapeError(f"weights: expected shape [..., {kk}] (one weight per response), got {tuple(weights.shape)}")
    kernels, kd = _native("win_score", device, dtype)
    if kernels is None:
        return ref.win_score(v, weights, gate)
    out = kernels.call(
        "win_score", _flat(v, batch, (kk, 2 * k), kd), _flat(weights, batch, (kk,), kd), _flat(gate, batch, (k,), kd)
    )
    return _finish(out, (*batch, kk), dtype)


# ---------------------------------------------------------------------------------------------------
# losses


def _finish(out: Tensor, shape: tuple, dtype: torch.dtype) -> Tensor:
    """The kernel's output in the caller's batch shape and dtype (no-ops in the common case)."""
    if out.shape != shape:
        out = out.reshape(shape)
    return out if out.dtype == dtype else out.to(dtype)


def gpm_loss(
    v_chosen: Tensor,
    v_rejected: Tensor,
    gate: Optional[Tensor] = None,
    tau: float = 0.1,
    margin: Optional[Union[Tensor, Scalar]] = None,
    label: Optional[Union[Tensor, Scalar]] = None,
    reduction: str = "mean",
) -> Tensor:
    """GPM loss (paper Eq. A.1), fused with its gradient.

    ``ℓ = −[p · log σ((s − m)/τ) + (1 − p) · log σ(−(s − m)/τ)]`` with ``s = s(chosen ≻ rejected)``.

    Args:
        v_chosen, v_rejected: ``[..., 2k]`` embeddings of the preferred and the other response.
        gate: optional ``[..., k]`` block scales.
        tau: temperature τ > 0 (0.1 in the paper).
        margin: optional ``[...]`` margin m (or a number).
        label: optional ``[...]`` soft label p ∈ [0, 1] = P(chosen ≻ rejected) (ties: 0.5); default 1.
        reduction: ``'mean'`` (default), ``'sum'`` or ``'none'`` (per pair, shape ``[...]``).
    """
    if margin is None and label is None and type(tau) is float and 0.0 < tau < math.inf and reduction in _REDUCTIONS:
        kernels = _pair_fast_path(v_chosen, v_rejected, gate)  # a training step's call: skip the general checks
        if kernels is _cuda:
            return _cuda.gpm_loss_step(v_chosen, v_rejected, gate, tau, reduction)
        if kernels is not None:
            needs = _needs(v_chosen, v_rejected, gate, None, None)
            return kernels.call("gpm_loss", v_chosen, v_rejected, gate, None, None, tau, reduction, *needs)
    v_chosen, v_rejected = _tensor(v_chosen, "v_chosen"), _tensor(v_rejected, "v_rejected")
    gate = None if gate is None else _tensor(gate, "gate")
    margin = None if margin is None else _tensor(margin, "margin", ref_tensor=v_chosen)
    label = None if label is None else _tensor(label, "label", ref_tensor=v_chosen)
    tau, reduction = _positive(tau, "tau"), _reduction(reduction)
    named = {"v_chosen": v_chosen, "v_rejected": v_rejected, "gate": gate, "margin": margin, "label": label}
    device, dtype = _common(named)
    k = _width(v_chosen, "v_chosen")
    if v_rejected.shape[-1:] != v_chosen.shape[-1:]:
        raise ShapeError(f"v_rejected: expected last dimension {2 * k} (like v_chosen), got {tuple(v_rejected.shape)}")
    _check_gate(gate, k)
    batch = _batch(
        {
            "v_chosen": v_chosen.shape[:-1],
            "v_rejected": v_rejected.shape[:-1],
            "gate": None if gate is None else gate.shape[:-1],
            "margin": None if margin is None else margin.shape,
            "label": None if label is None else label.shape,
        }
    )
    kernels, kd = _native("gpm_loss", device, dtype)
    if kernels is None:
        return ref.gpm_loss(v_chosen, v_rejected, gate, tau, margin, label, reduction)
    args = (
        _flat(v_chosen, batch, (2 * k,), kd),
        _flat(v_rejected, batch, (2 * k,), kd),
        _flat(gate, batch, (k,), kd),
        _flat(margin, batch, (), kd),
        _flat(label, batch, (), kd),
    )
    loss = kernels.call("gpm_loss", *args, tau, reduction, *_needs(*args))
    return _finish(loss, batch if reduction == "none" else (), dtype)


def bt_loss(
    r_chosen: Tensor,
    r_rejected: Tensor,
    tau: float = 1.0,
    margin: Optional[Union[Tensor, Scalar]] = None,
    label: Optional[Union[Tensor, Scalar]] = None,
    reduction: str = "mean",
) -> Tensor:
    """Bradley-Terry loss: :func:`gpm_loss` with ``s = r_chosen − r_rejected`` (scalar rewards ``[...]``).

    ``ℓ = −[p log σ((r_c − r_r − m)/τ) + (1 − p) log σ(−(r_c − r_r − m)/τ)]``; τ = 1 by default.
    """
    r_chosen, r_rejected = _tensor(r_chosen, "r_chosen"), _tensor(r_rejected, "r_rejected")
    margin = None if margin is None else _tensor(margin, "margin", ref_tensor=r_chosen)
    label = None if label is None else _tensor(label, "label", ref_tensor=r_chosen)
    tau, reduction = _positive(tau, "tau"), _reduction(reduction)
    named = {"r_chosen": r_chosen, "r_rejected": r_rejected, "margin": margin, "label": label}
    device, dtype = _common(named)
    batch = _batch({k: None if t is None else t.shape for k, t in named.items()})
    kernels, kd = _native("bt_loss", device, dtype)
    if kernels is None:
        return ref.bt_loss(r_chosen, r_rejected, tau, margin, label, reduction)
    args = tuple(_flat(t, batch, (), kd) for t in named.values())
    loss = kernels.call("bt_loss", *args, tau, reduction, *_needs(*args))
    return _finish(loss, batch if reduction == "none" else (), dtype)


def _policy(op, logp, ref_logp, target, target_name, beta, lengths, gamma, clamp, offset, reduction, fallback):
    """Validates the policy-loss inputs, then runs the fused kernel or ``fallback(logp, ref_logp, target, lengths)``."""
    logp, ref_logp = _tensor(logp, "logp"), _tensor(ref_logp, "ref_logp")
    target = _tensor(target, target_name)
    if isinstance(lengths, Tensor) and not lengths.is_floating_point() and not lengths.is_complex():
        lengths = lengths.to(logp.dtype)  # token counts: integer lengths are fine (and not differentiable)
    lengths = None if lengths is None else _tensor(lengths, "lengths", ref_tensor=logp)
    beta, reduction = _positive(beta, "beta"), _reduction(reduction)
    if isinstance(gamma, bool) or not isinstance(gamma, Real) or not math.isfinite(gamma):
        raise ArgumentError(f"gamma: expected a finite number, got {gamma!r}")
    if clamp is not None and (isinstance(clamp, bool) or not isinstance(clamp, Real) or not clamp >= 0):
        raise ArgumentError(f"clamp: expected None or a number >= 0, got {clamp!r}")
    named = {"logp": logp, "ref_logp": ref_logp, target_name: target, "lengths": lengths}
    device, dtype = _common(named)
    batch = _batch({k: None if t is None else t.shape for k, t in named.items()})
    kernels, kd = _native(op, device, dtype)
    if kernels is None:
        return fallback(logp, ref_logp, target, lengths)
    args = tuple(_flat(t, batch, (), kd) for t in named.values())
    clamp = None if clamp is None else float(clamp)
    loss = kernels.call("policy_loss", *args, beta, offset, float(gamma), clamp, reduction, *_needs(*args))
    return _finish(loss, batch if reduction == "none" else (), dtype)


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
    """GPO loss (paper Eq. 5.3 with log Z = 0), fused with its gradient.

    ``ℓ_n = ((log π_θ(y_n|x) − log π_ref(y_n|x)) / |y_n|^γ − clamp(ŝ_n / β, ±clamp))²``

    Args:
        logp, ref_logp: ``[...]`` sequence log-probabilities under the policy and the reference.
        win_score: ``[...]`` ŝ(y_n ≻ π_ref), e.g. from :func:`win_score`.
        beta: β > 0 (the MWU step is 1/β).
        lengths: optional ``[...]`` response lengths |y| (needed for γ ≠ 0).
        gamma: length-normalisation exponent γ (0 = off; 1 = the paper's length-normalised GPO).
        clamp: optional bound on the regression target ŝ/β.
        reduction: ``'mean'`` (the paper's 1/N Σ), ``'sum'`` or ``'none'``.
    """

    def fallback(lp, rl, target, ln):
        return ref.gpo_loss(lp, rl, target, beta, ln, gamma, clamp, reduction)

    return _policy(
        "gpo_loss", logp, ref_logp, win_score, "win_score", beta, lengths, gamma, clamp, 0.0, reduction, fallback
    )


def sppo_loss(logp: Tensor, ref_logp: Tensor, win_prob: Tensor, beta: float, reduction: str = "mean") -> Tensor:
    """SPPO loss, the baseline GPO generalises: ``ℓ_n = ((log π_θ − log π_ref)(y_n|x) − (P̂_n − ½)/β)²``.

    ``win_prob`` is P̂(y_n ≻ π_ref) ∈ [0, 1]; shapes ``[...]`` broadcast together.
    """

    def fallback(lp, rl, target, _ln):
        return ref.sppo_loss(lp, rl, target, beta, reduction)

    return _policy("sppo_loss", logp, ref_logp, win_prob, "win_prob", beta, None, 0.0, None, 0.5, reduction, fallback)
