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


def call(op: str, *args) -> Tensor:
    """Run operator ``op`` and return its result (for the losses: the loss alone). While compiling this is
    the custom operator; in eager mode the autograd function when a gradient is needed, else the bare
    implementation."""
    if torch.compiler.is_compiling():
        out = getattr(torch.ops.gpmkit, op)(*args)
    elif torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args):
        out = _FUNCTIONS[op].apply(*args)
    else:
        out = _IMPLS[op](*args)
    return out[0] if isinstance(out, tuple) else out


def _register(
    name: str, impl: Callable, fake: Callable, setup: Callable, backward: Callable, eager: bool = True
) -> None:
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
    if not eager:
        return
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


def _refuse_double_backward(grad: Tensor) -> None:
    """The backward formulas are kernels, not differentiable expressions: refuse ``create_graph=True``
    instead of returning a gradient that silently acts as a constant."""
    if torch.is_grad_enabled() and _eager(grad):
        raise NotImplementedError(
            "gpmkit operators are differentiable once: backward with create_graph=True (double backward) "
            "is not supported"
        )


def _eager(probe: Tensor) -> bool:
    """True when running eagerly on real tensors (not traced by torch.compile / AOTAutograd)."""
    return type(probe) is Tensor and not torch.compiler.is_compiling()


def _save_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _filled(ref: Tensor, outs) -> tuple[Tensor, ...]:
    """Operators cannot return ``None``: unused outputs become empty tensors."""
    return tuple(_empty(ref) if t is None else t for t in outs)


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
    _refuse_double_backward(grad)
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
    _refuse_double_backward(grad)
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
    _refuse_double_backward(grad)
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
# losses
#
# A loss forward returns ``(loss, *pre)``: ``pre`` are the derivatives computed in the same pass (for
# 'mean'/'sum' the final input gradients for a unit upstream gradient; for 'none' per-element factors).
# ``input_grads(grad, args, pre, own)`` turns them into the gradients of the operator's arguments. Two
# autograd paths share it:
#   * the custom operator (compile/export) saves ``pre`` with ``save_for_backward`` and always multiplies;
#   * the eager autograd function returns only the loss and keeps ``pre`` privately on ``ctx``; the first
#     backward hands them out (``own=True``: as they are when the upstream gradient is exactly 1), so no
#     gradient ever aliases a tensor the graph still holds; a second backward through a retained graph
#     recomputes them from the saved inputs.


def _loss_buf(ref: Tensor, n: int, reduction: str) -> Tensor:
    return ref.new_empty(n) if reduction == "none" else ref.new_empty(())


def _loss_np(loss: Tensor):
    return loss.numpy().reshape(-1)


def _outs(ref: Tensor, spec) -> list[Optional[Tensor]]:
    """One new buffer per ``(needed, shape)`` of ``spec``; ``None`` where it is not needed."""
    return [ref.new_empty(shape) if need else None for need, shape in spec]


def _split_args(args) -> tuple[list, list]:
    """Tensors (to save) and the other arguments (to keep on ctx), position by position."""
    return [a if isinstance(a, Tensor) else None for a in args], [None if isinstance(a, Tensor) else a for a in args]


def _merge_args(tensors, others) -> tuple:
    return tuple(t if o is None else o for t, o in zip(tensors, others))


def _only_needed(grads, needs_input_grad) -> tuple:
    return tuple(g if need else None for g, need in zip(grads, needs_input_grad))


def _register_loss(name: str, impl: Callable, spec: Callable, input_grads: Callable) -> None:
    """Register a fused loss as ``torch.ops.gpmkit.<name>`` and as an eager autograd function."""

    def fake(first, *args):
        reduction = next(a for a in args if isinstance(a, str))
        return _filled(first, [_loss_buf(first, first.shape[0], reduction), *_outs(first, spec(first, *args))])

    def setup(ctx, inputs, output):
        tensors, ctx.others = _split_args(inputs)
        ctx.save_for_backward(*tensors, *output[1:])

    def backward(ctx, grad, *_unused):
        _refuse_double_backward(grad)
        saved = ctx.saved_tensors
        n = len(ctx.others)
        grads = input_grads(grad, _merge_args(saved[:n], ctx.others), saved[n:], False)
        return _only_needed(grads, ctx.needs_input_grad)

    _register(name, impl, fake, setup, backward, eager=False)

    def eager_forward(ctx, *args):
        out = impl(*args)
        tensors, ctx.others = _split_args(args)
        ctx.save_for_backward(*tensors)
        ctx.pre = out[1:]
        return out[0]

    def eager_backward(ctx, grad):
        _refuse_double_backward(grad)
        args = _merge_args(ctx.saved_tensors, ctx.others)
        pre, ctx.pre = ctx.pre, None
        if pre is None:  # a second backward through a retained graph
            pre = impl(*args)[1:]
        return _only_needed(input_grads(grad, args, pre, True), ctx.needs_input_grad)

    _FUNCTIONS[name] = type(
        f"{name}_function",
        (torch.autograd.Function,),
        {"forward": staticmethod(eager_forward), "backward": staticmethod(eager_backward)},
    )


def _scale(g: Tensor, t: Tensor, own: bool) -> Tensor:
    """Chain rule for a precomputed derivative ``t``: ``g * t``; just ``t`` when we own it and ``g`` is 1."""
    if own and _is_one(g):
        return t
    return g * t


# GPM ------------------------------------------------------------------------------------------------


def _gpm_need(args) -> tuple:
    _vc, _vr, gate, margin, label, _tau, _red, nc, nr, ng, nm, nl = args
    return nc, nr, ng and gate is not None, nm and margin is not None, nl and label is not None


def _gpm_spec(v_chosen, v_rejected, gate, margin, label, tau, reduction, *flags):
    n = v_chosen.shape[0]
    need_c, need_r, need_g, need_m, need_l = _gpm_need(
        (v_chosen, v_rejected, gate, margin, label, tau, reduction, *flags)
    )
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


def _gpm_input_grads(grad, args, pre, own):
    v_chosen, v_rejected, gate, _margin, _label, _tau, reduction, *_ = args
    need = _gpm_need(args)
    coef, gc, gr, gg, gm, gl = pre
    if reduction == "none":
        gs = grad * coef if any(need[:4]) else None
        gc = gr = gg = None
        if any(need[:3]):
            bwd = preference_score_backward if _eager(gs) else _op_score_backward
            gc, gr, gg = bwd(gs, v_chosen, v_rejected, gate, need[0], need[1], need[2])
        grads = (gc, gr, gg, -gs if need[3] else None, grad * gl if need[4] else None)
    else:
        grads = tuple(_scale(grad, t, own) if nd else None for t, nd in zip((gc, gr, gg, gm, gl), need))
    return (*grads, *([None] * 7))


_register_loss("gpm_loss", gpm_loss, _gpm_spec, _gpm_input_grads)


# Element-wise losses (Bradley-Terry, GPO/SPPO): every input is [N] and each precomputed derivative is
# the gradient of one input (per element for 'none'), so backward only multiplies. -------------------


def _elementwise_input_grads(first_flag: int, n_inputs: int):
    def input_grads(grad, args, pre, own):
        flags = args[first_flag : first_flag + n_inputs]
        grads = [_scale(grad, t, own) if need and t is not None else None for t, need in zip(pre, flags)]
        return (*grads, *([None] * (len(args) - n_inputs)))

    return input_grads


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


_register_loss("bt_loss", bt_loss, _bt_spec, _elementwise_input_grads(6, 4))


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


_register_loss("policy_loss", policy_loss, _policy_spec, _elementwise_input_grads(9, 4))
