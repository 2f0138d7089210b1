"""The Rust CPU kernels as ``torch.library`` custom operators with autograd (``torch.ops.gpmkit.*``).

Each operator takes 2-D (or 1-D/3-D) tensors of one float dtype (float32 or float64); broadcasting,
dtype promotion and validation happen in :mod:`gpmkit.functional`. Tensors reach Rust as numpy views
of the same memory (no copies); outputs are allocated here with ``torch.empty`` and filled in place.

The losses are fused: with ``reduction`` ``'mean'``/``'sum'`` one pass computes the loss *and* the
gradient of every input that needs one, and backward only scales those by the upstream gradient
(and skips even that when it is exactly 1, the usual case of ``loss.backward()``). With
``reduction='none'`` the forward saves the per-element derivative instead.

Double backward (``create_graph=True``) is not supported.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _core

_LIB = "gpmkit"


def _np(t: Optional[Tensor]):
    return None if t is None else t.detach().numpy()


def _empty(ref: Tensor) -> Tensor:
    return ref.new_empty(0)


def _buf(need: bool, ref: Tensor, shape=None) -> Tensor:
    """A new buffer shaped like ``ref`` (or ``shape``) when needed, else an empty placeholder."""
    return ref.new_empty(ref.shape if shape is None else shape) if need else _empty(ref)


def _opt(need: bool, t: Tensor) -> Optional[Tensor]:
    return t if need else None


def _is_one(g: Tensor) -> bool:
    """True for a concrete CPU scalar equal to 1 (never for the fake/functional tensors of tracing)."""
    return type(g) is Tensor and g.numel() == 1 and g.device.type == "cpu" and g.item() == 1.0


def _scale(g: Tensor, t: Tensor) -> Tensor:
    """Chain rule for a saved derivative ``t``: ``g * t``, without the pass when ``g`` is exactly 1."""
    if _is_one(g):
        return t
    if g.dim() == 0 or t.dim() <= 1:
        return g * t
    return g.reshape(g.shape + (1,) * (t.dim() - g.dim())) * t


# ---------------------------------------------------------------------------------------------------
# pair scores


@torch.library.custom_op(f"{_LIB}::preference_score", mutates_args=(), device_types="cpu")
def preference_score(v_i: Tensor, v_j: Tensor, gate: Optional[Tensor]) -> Tensor:
    out = v_i.new_empty(v_i.shape[0])
    _core.preference_score(_np(v_i), _np(v_j), _np(gate), _np(out))
    return out


@preference_score.register_fake
def _(v_i, v_j, gate):
    return v_i.new_empty(v_i.shape[0])


@torch.library.custom_op(f"{_LIB}::preference_score_backward", mutates_args=(), device_types="cpu")
def preference_score_backward(
    grad: Tensor, v_i: Tensor, v_j: Tensor, gate: Optional[Tensor], need_v_i: bool, need_v_j: bool, need_gate: bool
) -> tuple[Tensor, Tensor, Tensor]:
    gi, gj = _buf(need_v_i, v_i), _buf(need_v_j, v_j)
    gg = _buf(need_gate and gate is not None, v_i, None if gate is None else gate.shape)
    _core.preference_score_backward(
        _np(grad.contiguous()), _np(v_i), _np(v_j), _np(gate),
        _np(_opt(need_v_i, gi)), _np(_opt(need_v_j, gj)), _np(_opt(need_gate and gate is not None, gg)),
    )  # fmt: skip
    return gi, gj, gg


@preference_score_backward.register_fake
def _(grad, v_i, v_j, gate, need_v_i, need_v_j, need_gate):
    gg = _buf(need_gate and gate is not None, v_i, None if gate is None else gate.shape)
    return _buf(need_v_i, v_i), _buf(need_v_j, v_j), gg


def _score_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _score_backward(ctx, grad):
    v_i, v_j, gate = ctx.saved_tensors
    n = ctx.needs_input_grad
    need_gate = bool(n[2]) and gate is not None
    gi, gj, gg = preference_score_backward(grad, v_i, v_j, gate, n[0], n[1], need_gate)
    return _opt(n[0], gi), _opt(n[1], gj), _opt(need_gate, gg)


preference_score.register_autograd(_score_backward, setup_context=_score_setup)


# ---------------------------------------------------------------------------------------------------
# K×K matrices


@torch.library.custom_op(f"{_LIB}::preference_matrix", mutates_args=(), device_types="cpu")
def preference_matrix(v: Tensor, gate: Optional[Tensor]) -> Tensor:
    p, k = v.shape[0], v.shape[1]
    out = v.new_empty(p, k, k)
    _core.preference_matrix(_np(v), _np(gate), _np(out))
    return out


@preference_matrix.register_fake
def _(v, gate):
    return v.new_empty(v.shape[0], v.shape[1], v.shape[1])


@torch.library.custom_op(f"{_LIB}::preference_matrix_backward", mutates_args=(), device_types="cpu")
def preference_matrix_backward(
    grad: Tensor, v: Tensor, gate: Optional[Tensor], need_v: bool, need_gate: bool
) -> tuple[Tensor, Tensor]:
    need_gate = need_gate and gate is not None
    gv, gg = _buf(need_v, v), _buf(need_gate, v, None if gate is None else gate.shape)
    _core.preference_matrix_backward(
        _np(grad.contiguous()), _np(v), _np(gate), _np(_opt(need_v, gv)), _np(_opt(need_gate, gg))
    )
    return gv, gg


@preference_matrix_backward.register_fake
def _(grad, v, gate, need_v, need_gate):
    need_gate = need_gate and gate is not None
    return _buf(need_v, v), _buf(need_gate, v, None if gate is None else gate.shape)


def _matrix_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _matrix_backward(ctx, grad):
    v, gate = ctx.saved_tensors
    n = ctx.needs_input_grad
    need_gate = bool(n[1]) and gate is not None
    gv, gg = preference_matrix_backward(grad, v, gate, n[0], need_gate)
    return _opt(n[0], gv), _opt(need_gate, gg)


preference_matrix.register_autograd(_matrix_backward, setup_context=_matrix_setup)


# ---------------------------------------------------------------------------------------------------
# win scores


@torch.library.custom_op(f"{_LIB}::win_score", mutates_args=(), device_types="cpu")
def win_score(v: Tensor, weights: Optional[Tensor], gate: Optional[Tensor]) -> Tensor:
    out = v.new_empty(v.shape[0], v.shape[1])
    _core.win_score(_np(v), _np(weights), _np(gate), _np(out))
    return out


@win_score.register_fake
def _(v, weights, gate):
    return v.new_empty(v.shape[0], v.shape[1])


@torch.library.custom_op(f"{_LIB}::win_score_backward", mutates_args=(), device_types="cpu")
def win_score_backward(
    grad: Tensor,
    v: Tensor,
    weights: Optional[Tensor],
    gate: Optional[Tensor],
    need_v: bool,
    need_weights: bool,
    need_gate: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    need_weights = need_weights and weights is not None
    need_gate = need_gate and gate is not None
    gv = _buf(need_v, v)
    gw = _buf(need_weights, v, None if weights is None else weights.shape)
    gg = _buf(need_gate, v, None if gate is None else gate.shape)
    _core.win_score_backward(
        _np(grad.contiguous()), _np(v), _np(weights), _np(gate),
        _np(_opt(need_v, gv)), _np(_opt(need_weights, gw)), _np(_opt(need_gate, gg)),
    )  # fmt: skip
    return gv, gw, gg


@win_score_backward.register_fake
def _(grad, v, weights, gate, need_v, need_weights, need_gate):
    need_weights = need_weights and weights is not None
    need_gate = need_gate and gate is not None
    return (
        _buf(need_v, v),
        _buf(need_weights, v, None if weights is None else weights.shape),
        _buf(need_gate, v, None if gate is None else gate.shape),
    )


def _win_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _win_backward(ctx, grad):
    v, weights, gate = ctx.saved_tensors
    n = ctx.needs_input_grad
    need_w = bool(n[1]) and weights is not None
    need_g = bool(n[2]) and gate is not None
    gv, gw, gg = win_score_backward(grad, v, weights, gate, n[0], need_w, need_g)
    return _opt(n[0], gv), _opt(need_w, gw), _opt(need_g, gg)


win_score.register_autograd(_win_backward, setup_context=_win_setup)


# ---------------------------------------------------------------------------------------------------
# GPM loss


def _loss_buf(ref: Tensor, n: int, reduction: str) -> Tensor:
    return ref.new_empty(n) if reduction == "none" else ref.new_empty(())


def _loss_np(loss: Tensor):
    return loss.detach().numpy().reshape(-1)


def _outs(ref: Tensor, spec) -> list[Optional[Tensor]]:
    """One new buffer per ``(needed, shape)`` of ``spec``; ``None`` where it is not needed."""
    return [ref.new_empty(shape) if need else None for need, shape in spec]


def _filled(outs) -> tuple[Tensor, ...]:
    """Custom operators cannot return ``None``: unused outputs become empty tensors."""
    ref = next(t for t in outs if t is not None)
    return tuple(_empty(ref) if t is None else t for t in outs)


def _gpm_spec(v_chosen, gate, margin, label, reduction, need_c, need_r, need_g, need_m, need_l):
    n = v_chosen.shape[0]
    need_g = need_g and gate is not None
    need_m = need_m and margin is not None
    need_l = need_l and label is not None
    if reduction == "none":  # coef = ∂ℓ_n/∂s_n, chained through the score backward later
        coef = need_c or need_r or need_g or need_m
        return [(coef, (n,)), (False, 0), (False, 0), (False, 0), (False, 0), (need_l, (n,))]
    gate_shape = None if gate is None else gate.shape
    return [(False, 0), (need_c, v_chosen.shape), (need_r, v_chosen.shape), (need_g, gate_shape),
            (need_m, (n,)), (need_l, (n,))]  # fmt: skip


@torch.library.custom_op(f"{_LIB}::gpm_loss", mutates_args=(), device_types="cpu")
def gpm_loss(
    v_chosen: Tensor,
    v_rejected: Tensor,
    gate: Optional[Tensor],
    margin: Optional[Tensor],
    label: Optional[Tensor],
    tau: float,
    reduction: str,
    need_chosen: bool,
    need_rejected: bool,
    need_gate: bool,
    need_margin: bool,
    need_label: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    loss = _loss_buf(v_chosen, v_chosen.shape[0], reduction)
    outs = _outs(v_chosen, _gpm_spec(v_chosen, gate, margin, label, reduction, need_chosen, need_rejected,
                                     need_gate, need_margin, need_label))  # fmt: skip
    _core.gpm_loss(
        _np(v_chosen), _np(v_rejected), _np(gate), _np(margin), _np(label), tau, reduction, _loss_np(loss),
        *(_np(t) for t in outs),
    )  # fmt: skip
    return _filled([loss, *outs])


@gpm_loss.register_fake
def _(v_chosen, v_rejected, gate, margin, label, tau, reduction, nc, nr, ng, nm, nl):
    loss = _loss_buf(v_chosen, v_chosen.shape[0], reduction)
    return _filled([loss, *_outs(v_chosen, _gpm_spec(v_chosen, gate, margin, label, reduction, nc, nr, ng, nm, nl))])


def _gpm_setup(ctx, inputs, output):
    v_chosen, v_rejected, gate, margin, label, _tau, reduction, *_ = inputs
    ctx.reduction = reduction
    ctx.has = (gate is not None, margin is not None, label is not None)
    ctx.save_for_backward(v_chosen, v_rejected, gate, *output[1:])


def _gpm_backward(ctx, grad, *_unused):
    v_chosen, v_rejected, gate, coef, gc, gr, gg, gm, gl = ctx.saved_tensors
    n = ctx.needs_input_grad
    has_gate, has_margin, has_label = ctx.has
    need = (n[0], n[1], n[2] and has_gate, n[3] and has_margin, n[4] and has_label)
    if ctx.reduction == "none":
        gs = grad * coef if any(need[:4]) else None
        gc = gr = gg = None
        if any(need[:3]):
            gc, gr, gg = preference_score_backward(gs, v_chosen, v_rejected, gate, need[0], need[1], need[2])
        gm = -gs if need[3] else None
        gl = grad * gl if need[4] else None
        grads = (gc, gr, gg, gm, gl)
    else:
        grads = tuple(_scale(grad, t) for t in (gc, gr, gg, gm, gl))
    return (*(g if nd else None for g, nd in zip(grads, need)), None, None, None, None, None, None, None)


gpm_loss.register_autograd(_gpm_backward, setup_context=_gpm_setup)


# ---------------------------------------------------------------------------------------------------
# element-wise losses: Bradley-Terry and the GPO/SPPO policy loss
#
# All their inputs are [N], so forward always returns the derivative of the loss w.r.t. each input
# that needs one (per element for 'none', already scaled for 'mean'); backward multiplies.


def _elementwise_backward(ctx, grad, *_unused):
    saved = ctx.saved_tensors
    grads = [_scale(grad, t) if need else None for t, need in zip(saved, ctx.wanted)]
    return (*grads, *([None] * ctx.n_rest))


def _bt_spec(r_chosen, margin, label, need_c, need_r, need_m, need_l):
    n = (r_chosen.shape[0],)
    return [(need_c, n), (need_r, n), (need_m and margin is not None, n), (need_l and label is not None, n)]


@torch.library.custom_op(f"{_LIB}::bt_loss", mutates_args=(), device_types="cpu")
def bt_loss(
    r_chosen: Tensor,
    r_rejected: Tensor,
    margin: Optional[Tensor],
    label: Optional[Tensor],
    tau: float,
    reduction: str,
    need_chosen: bool,
    need_rejected: bool,
    need_margin: bool,
    need_label: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    loss = _loss_buf(r_chosen, r_chosen.shape[0], reduction)
    outs = _outs(r_chosen, _bt_spec(r_chosen, margin, label, need_chosen, need_rejected, need_margin, need_label))
    gc, gr, gm, gl = (_np(t) for t in outs)
    _core.bt_loss(
        _np(r_chosen), _np(r_rejected), _np(margin), _np(label), tau, reduction, _loss_np(loss),
        grad_chosen=gc, grad_rejected=gr, grad_margin=gm, grad_label=gl,
    )  # fmt: skip
    return _filled([loss, *outs])


@bt_loss.register_fake
def _(r_chosen, r_rejected, margin, label, tau, reduction, nc, nr, nm, nl):
    loss = _loss_buf(r_chosen, r_chosen.shape[0], reduction)
    return _filled([loss, *_outs(r_chosen, _bt_spec(r_chosen, margin, label, nc, nr, nm, nl))])


def _bt_setup(ctx, inputs, output):
    _rc, _rr, margin, label, _tau, _red, nc, nr, nm, nl = inputs
    ctx.wanted = (nc, nr, nm and margin is not None, nl and label is not None)
    ctx.n_rest = 6
    ctx.save_for_backward(*output[1:])


bt_loss.register_autograd(_elementwise_backward, setup_context=_bt_setup)


def _policy_spec(logp, lengths, need_lp, need_ref, need_t, need_len):
    n = (logp.shape[0],)
    return [(need_lp, n), (need_ref, n), (need_t, n), (need_len and lengths is not None, n)]


@torch.library.custom_op(f"{_LIB}::policy_loss", mutates_args=(), device_types="cpu")
def policy_loss(
    logp: Tensor,
    ref_logp: Tensor,
    target: Tensor,
    lengths: Optional[Tensor],
    beta: float,
    offset: float,
    gamma: float,
    clamp: Optional[float],
    reduction: str,
    need_logp: bool,
    need_ref_logp: bool,
    need_target: bool,
    need_lengths: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    loss = _loss_buf(logp, logp.shape[0], reduction)
    outs = _outs(logp, _policy_spec(logp, lengths, need_logp, need_ref_logp, need_target, need_lengths))
    g1, g2, g3, g4 = (_np(t) for t in outs)
    _core.policy_loss(
        _np(logp), _np(ref_logp), _np(target), _np(lengths), beta, offset, gamma, clamp, reduction,
        _loss_np(loss), grad_logp=g1, grad_ref_logp=g2, grad_target=g3, grad_lengths=g4,
    )  # fmt: skip
    return _filled([loss, *outs])


@policy_loss.register_fake
def _(logp, ref_logp, target, lengths, beta, offset, gamma, clamp, reduction, n1, n2, n3, n4):
    loss = _loss_buf(logp, logp.shape[0], reduction)
    return _filled([loss, *_outs(logp, _policy_spec(logp, lengths, n1, n2, n3, n4))])


def _policy_setup(ctx, inputs, output):
    lengths = inputs[3]
    n1, n2, n3, n4 = inputs[9:]
    ctx.wanted = (n1, n2, n3, n4 and lengths is not None)
    ctx.n_rest = 9
    ctx.save_for_backward(*output[1:])


policy_loss.register_autograd(_elementwise_backward, setup_context=_policy_setup)
