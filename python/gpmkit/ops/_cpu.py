"""The Rust CPU kernels as PyTorch operators with autograd.

Every kernel is registered twice over the same implementation and backward:

* as a ``torch.library`` custom operator (``torch.ops.gpmkit.<name>``), which is what ``torch.compile``,
  ``torch.export`` and ``opcheck`` see;
* as a ``torch.autograd.Function``, which eager mode calls directly: the custom-operator dispatcher costs
  ~14 µs per call, the autograd function ~3 µs, and the kernels themselves well under 1 µs at small sizes.

:func:`call` picks the path. Operators take 1-D/2-D/3-D tensors of one float dtype (float32 or
float64); broadcasting, promotion and validation happen in :mod:`gpmkit.functional`. Tensors reach Rust
as numpy views of the same memory (no copies); outputs are allocated here with ``torch.empty`` and
filled in place.

The losses are fused: with ``reduction`` ``'mean'``/``'sum'`` one pass computes the loss *and* the
gradient of every input that needs one, and backward only scales those by the upstream gradient (and
skips even that when it is exactly 1, the usual ``loss.backward()``). With ``reduction='none'`` the
forward saves per-element derivatives instead. Double backward (``create_graph=True``) is not supported.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
from torch import Tensor

from .. import _core

__all__ = ["call"]

_LIB = "gpmkit"
_IMPLS: dict[str, Callable] = {}
_FUNCTIONS: dict[str, type] = {}


def call(op: str, *args):
    """Run operator ``op``: the custom operator while compiling, else the autograd function (when a
    gradient is needed) or the bare implementation."""
    if torch.compiler.is_compiling():
        return getattr(torch.ops.gpmkit, op)(*args)
    if torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args):
        return _FUNCTIONS[op].apply(*args)
    return _IMPLS[op](*args)


def _register(name: str, impl: Callable, fake: Callable, setup: Callable, backward: Callable) -> None:
    """Register ``impl`` as ``torch.ops.gpmkit.<name>`` and as an autograd function with one backward.

    Multi-output implementations may return ``None`` for outputs nobody asked for (cheaper in eager
    mode); the custom operator, which cannot return ``None``, gets empty tensors in their place.
    """

    @functools.wraps(impl)
    def filled(*args):
        out = impl(*args)
        return _filled(args[0], out) if isinstance(out, tuple) else out

    op = torch.library.custom_op(f"{_LIB}::{name}", filled, mutates_args=(), device_types="cpu")
    op.register_fake(fake)
    op.register_autograd(backward, setup_context=setup)

    def forward(ctx, *args):
        out = impl(*args)
        setup(ctx, args, out)
        return out

    _IMPLS[name] = impl
    _FUNCTIONS[name] = type(
        f"{name}_function",
        (torch.autograd.Function,),
        {"forward": staticmethod(forward), "backward": staticmethod(backward)},
    )


def _np(t: Optional[Tensor]):
    """A numpy view of a CPU tensor's memory (``force=True`` detaches; it copies nothing on CPU)."""
    return None if t is None else t.numpy(force=True)


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
    return g * t


def _eager(probe: Tensor) -> bool:
    """True when running eagerly on real tensors (not traced by torch.compile / AOTAutograd)."""
    return type(probe) is Tensor and not torch.compiler.is_compiling()


def _save_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _shape_of(t: Optional[Tensor]):
    return None if t is None else t.shape


# ---------------------------------------------------------------------------------------------------
# pair scores


def preference_score(v_i: Tensor, v_j: Tensor, gate: Optional[Tensor]) -> Tensor:
    out = v_i.new_empty(v_i.shape[0])
    _core.preference_score(_np(v_i), _np(v_j), _np(gate), _np(out))
    return out


def preference_score_backward(
    grad: Tensor, v_i: Tensor, v_j: Tensor, gate: Optional[Tensor], need_v_i: bool, need_v_j: bool, need_gate: bool
) -> tuple[Tensor, Tensor, Tensor]:
    need_gate = need_gate and gate is not None
    gi, gj, gg = _buf(need_v_i, v_i), _buf(need_v_j, v_j), _buf(need_gate, v_i, _shape_of(gate))
    _core.preference_score_backward(
        _np(grad.contiguous()), _np(v_i), _np(v_j), _np(gate),
        _np(_opt(need_v_i, gi)), _np(_opt(need_v_j, gj)), _np(_opt(need_gate, gg)),
    )  # fmt: skip
    return gi, gj, gg


def _score_backward(ctx, grad):
    v_i, v_j, gate = ctx.saved_tensors
    n = ctx.needs_input_grad
    need_gate = bool(n[2]) and gate is not None
    bwd = preference_score_backward if _eager(grad) else _op_score_backward
    gi, gj, gg = bwd(grad, v_i, v_j, gate, n[0], n[1], need_gate)
    return _opt(n[0], gi), _opt(n[1], gj), _opt(need_gate, gg)


_op_score_backward = torch.library.custom_op(
    f"{_LIB}::preference_score_backward", preference_score_backward, mutates_args=(), device_types="cpu"
)


@_op_score_backward.register_fake
def _(grad, v_i, v_j, gate, need_v_i, need_v_j, need_gate):
    need_gate = need_gate and gate is not None
    return _buf(need_v_i, v_i), _buf(need_v_j, v_j), _buf(need_gate, v_i, _shape_of(gate))


_register(
    "preference_score",
    preference_score,
    lambda v_i, v_j, gate: v_i.new_empty(v_i.shape[0]),
    _save_inputs,
    _score_backward,
)


# ---------------------------------------------------------------------------------------------------
# K×K matrices


def preference_matrix(v: Tensor, gate: Optional[Tensor]) -> Tensor:
    out = v.new_empty(v.shape[0], v.shape[1], v.shape[1])
    _core.preference_matrix(_np(v), _np(gate), _np(out))
    return out


def preference_matrix_backward(
    grad: Tensor, v: Tensor, gate: Optional[Tensor], need_v: bool, need_gate: bool
) -> tuple[Tensor, Tensor]:
    need_gate = need_gate and gate is not None
    gv, gg = _buf(need_v, v), _buf(need_gate, v, _shape_of(gate))
    _core.preference_matrix_backward(
        _np(grad.contiguous()), _np(v), _np(gate), _np(_opt(need_v, gv)), _np(_opt(need_gate, gg))
    )
    return gv, gg


_op_matrix_backward = torch.library.custom_op(
    f"{_LIB}::preference_matrix_backward", preference_matrix_backward, mutates_args=(), device_types="cpu"
)


@_op_matrix_backward.register_fake
def _(grad, v, gate, need_v, need_gate):
    need_gate = need_gate and gate is not None
    return _buf(need_v, v), _buf(need_gate, v, _shape_of(gate))


def _matrix_backward(ctx, grad):
    v, gate = ctx.saved_tensors
    n = ctx.needs_input_grad
    need_gate = bool(n[1]) and gate is not None
    bwd = preference_matrix_backward if _eager(grad) else _op_matrix_backward
    gv, gg = bwd(grad, v, gate, n[0], need_gate)
    return _opt(n[0], gv), _opt(need_gate, gg)


_register(
    "preference_matrix",
    preference_matrix,
    lambda v, gate: v.new_empty(v.shape[0], v.shape[1], v.shape[1]),
    _save_inputs,
    _matrix_backward,
)


# ---------------------------------------------------------------------------------------------------
# win scores


def win_score(v: Tensor, weights: Optional[Tensor], gate: Optional[Tensor]) -> Tensor:
    out = v.new_empty(v.shape[0], v.shape[1])
    _core.win_score(_np(v), _np(weights), _np(gate), _np(out))
    return out


def _win_bufs(v, weights, gate, need_v, need_weights, need_gate):
    return (
        _buf(need_v, v),
        _buf(need_weights and weights is not None, v, _shape_of(weights)),
        _buf(need_gate and gate is not None, v, _shape_of(gate)),
    )


def win_score_backward(
    grad: Tensor,
    v: Tensor,
    weights: Optional[Tensor],
    gate: Optional[Tensor],
    need_v: bool,
    need_weights: bool,
    need_gate: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    gv, gw, gg = _win_bufs(v, weights, gate, need_v, need_weights, need_gate)
    _core.win_score_backward(
        _np(grad.contiguous()), _np(v), _np(weights), _np(gate),
        _np(_opt(need_v, gv)), _np(_opt(need_weights and weights is not None, gw)),
        _np(_opt(need_gate and gate is not None, gg)),
    )  # fmt: skip
    return gv, gw, gg


_op_win_backward = torch.library.custom_op(
    f"{_LIB}::win_score_backward", win_score_backward, mutates_args=(), device_types="cpu"
)
_op_win_backward.register_fake(lambda grad, v, weights, gate, nv, nw, ng: _win_bufs(v, weights, gate, nv, nw, ng))


def _win_backward(ctx, grad):
    v, weights, gate = ctx.saved_tensors
    n = ctx.needs_input_grad
    need_w = bool(n[1]) and weights is not None
    need_g = bool(n[2]) and gate is not None
    bwd = win_score_backward if _eager(grad) else _op_win_backward
    gv, gw, gg = bwd(grad, v, weights, gate, n[0], need_w, need_g)
    return _opt(n[0], gv), _opt(need_w, gw), _opt(need_g, gg)


_register(
    "win_score", win_score, lambda v, weights, gate: v.new_empty(v.shape[0], v.shape[1]), _save_inputs, _win_backward
)


# ---------------------------------------------------------------------------------------------------
# losses: shared helpers


def _loss_buf(ref: Tensor, n: int, reduction: str) -> Tensor:
    return ref.new_empty(n) if reduction == "none" else ref.new_empty(())


def _loss_np(loss: Tensor):
    return loss.numpy().reshape(-1)


def _outs(ref: Tensor, spec) -> list[Optional[Tensor]]:
    """One new buffer per ``(needed, shape)`` of ``spec``; ``None`` where it is not needed."""
    return [ref.new_empty(shape) if need else None for need, shape in spec]


def _filled(ref: Tensor, outs) -> tuple[Tensor, ...]:
    """Operators cannot return ``None``: unused outputs become empty tensors."""
    return tuple(_empty(ref) if t is None else t for t in outs)


def _fake(spec_fn):
    """A fake (meta) implementation from a loss's output spec: same shapes, nothing computed."""

    def fake(first, *args):
        reduction = next(a for a in args if isinstance(a, str))
        return (_loss_buf(first, first.shape[0], reduction), *_outs(first, spec_fn(first, *args)))

    return fake


# ---------------------------------------------------------------------------------------------------
# GPM loss


def _gpm_spec(v_chosen, v_rejected, gate, margin, label, tau, reduction, need_c, need_r, need_g, need_m, need_l):
    n = v_chosen.shape[0]
    need_g = need_g and gate is not None
    need_m = need_m and margin is not None
    need_l = need_l and label is not None
    if reduction == "none":  # coef = ∂ℓ_n/∂s_n, chained through the score backward later
        coef = need_c or need_r or need_g or need_m
        return [(coef, (n,)), (False, 0), (False, 0), (False, 0), (False, 0), (need_l, (n,))]
    return [(False, 0), (need_c, v_chosen.shape), (need_r, v_chosen.shape), (need_g, _shape_of(gate)),
            (need_m, (n,)), (need_l, (n,))]  # fmt: skip


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
    args = (v_chosen, v_rejected, gate, margin, label, tau, reduction)
    loss = _loss_buf(v_chosen, v_chosen.shape[0], reduction)
    outs = _outs(v_chosen, _gpm_spec(*args, need_chosen, need_rejected, need_gate, need_margin, need_label))
    _core.gpm_loss(*(_np(a) if isinstance(a, Tensor) else a for a in args), _loss_np(loss), *(_np(t) for t in outs))
    return (loss, *outs)


def _gpm_setup(ctx, inputs, output):
    v_chosen, v_rejected, gate, margin, label, _tau, reduction, *_ = inputs
    ctx.reduction = reduction
    ctx.has = (gate is not None, margin is not None, label is not None)
    ctx.save_for_backward(v_chosen, v_rejected, gate, *output[1:])
    ctx.mark_non_differentiable(*(t for t in output[1:] if t is not None))


def _gpm_backward(ctx, grad, *_unused):
    v_chosen, v_rejected, gate, coef, gc, gr, gg, gm, gl = ctx.saved_tensors  # unused ones are None/empty
    n = ctx.needs_input_grad
    has_gate, has_margin, has_label = ctx.has
    need = (n[0], n[1], n[2] and has_gate, n[3] and has_margin, n[4] and has_label)
    if ctx.reduction == "none":
        gs = grad * coef if any(need[:4]) else None
        gc = gr = gg = None
        if any(need[:3]):
            bwd = preference_score_backward if _eager(gs) else _op_score_backward
            gc, gr, gg = bwd(gs, v_chosen, v_rejected, gate, need[0], need[1], need[2])
        gm = -gs if need[3] else None
        gl = grad * gl if need[4] else None
        grads = (gc, gr, gg, gm, gl)
    else:
        grads = tuple(_scale(grad, t) if nd else None for t, nd in zip((gc, gr, gg, gm, gl), need))
    return (*(g if nd else None for g, nd in zip(grads, need)), None, None, None, None, None, None, None)


_register("gpm_loss", gpm_loss, _fake(_gpm_spec), _gpm_setup, _gpm_backward)


# ---------------------------------------------------------------------------------------------------
# element-wise losses: Bradley-Terry and the GPO/SPPO policy loss
#
# All their inputs are [N], so forward returns the derivative of the loss w.r.t. each input that needs
# one (per element for 'none', already scaled for 'mean'/'sum'); backward multiplies by the upstream grad.


def _elementwise_backward(ctx, grad, *_unused):
    grads = [_scale(grad, t) if need else None for t, need in zip(ctx.saved_tensors, ctx.wanted)]
    return (*grads, *([None] * ctx.n_rest))


def _bt_spec(r_chosen, r_rejected, margin, label, tau, reduction, need_c, need_r, need_m, need_l):
    n = (r_chosen.shape[0],)
    return [(need_c, n), (need_r, n), (need_m and margin is not None, n), (need_l and label is not None, n)]


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
    args = (r_chosen, r_rejected, margin, label, tau, reduction)
    loss = _loss_buf(r_chosen, r_chosen.shape[0], reduction)
    outs = _outs(r_chosen, _bt_spec(*args, need_chosen, need_rejected, need_margin, need_label))
    gc, gr, gm, gl = (_np(t) for t in outs)
    _core.bt_loss(
        *(_np(a) if isinstance(a, Tensor) else a for a in args), _loss_np(loss),
        grad_chosen=gc, grad_rejected=gr, grad_margin=gm, grad_label=gl,
    )  # fmt: skip
    return (loss, *outs)


def _bt_setup(ctx, inputs, output):
    _rc, _rr, margin, label, _tau, _red, nc, nr, nm, nl = inputs
    ctx.wanted = (nc, nr, nm and margin is not None, nl and label is not None)
    ctx.n_rest = 6
    ctx.save_for_backward(*output[1:])
    ctx.mark_non_differentiable(*(t for t in output[1:] if t is not None))


_register("bt_loss", bt_loss, _fake(_bt_spec), _bt_setup, _elementwise_backward)


def _policy_spec(logp, ref_logp, target, lengths, beta, offset, gamma, clamp, reduction, n1, n2, n3, n4):
    n = (logp.shape[0],)
    return [(n1, n), (n2, n), (n3, n), (n4 and lengths is not None, n)]


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
    args = (logp, ref_logp, target, lengths, beta, offset, gamma, clamp, reduction)
    loss = _loss_buf(logp, logp.shape[0], reduction)
    outs = _outs(logp, _policy_spec(*args, need_logp, need_ref_logp, need_target, need_lengths))
    g1, g2, g3, g4 = (_np(t) for t in outs)
    _core.policy_loss(
        *(_np(a) if isinstance(a, Tensor) else a for a in args), _loss_np(loss),
        grad_logp=g1, grad_ref_logp=g2, grad_target=g3, grad_lengths=g4,
    )  # fmt: skip
    return (loss, *outs)


def _policy_setup(ctx, inputs, output):
    lengths = inputs[3]
    n1, n2, n3, n4 = inputs[9:]
    ctx.wanted = (n1, n2, n3, n4 and lengths is not None)
    ctx.n_rest = 9
    ctx.save_for_backward(*output[1:])
    ctx.mark_non_differentiable(*(t for t in output[1:] if t is not None))


_register("policy_loss", policy_loss, _fake(_policy_spec), _policy_setup, _elementwise_backward)
