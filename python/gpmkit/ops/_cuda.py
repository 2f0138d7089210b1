"""The CUDA kernels (``src/cuda/kernels/*.cu``) as PyTorch operators with autograd.

Each forward and backward is a ``torch.library`` custom operator (``torch.ops.gpmkit.cuda_<name>``)
with a fake (meta) implementation, so the same path serves eager mode, ``torch.compile`` and CUDA-graph
capture. :func:`call` has the signature of :func:`gpmkit.ops._cpu.call`, so :mod:`gpmkit.functional`
dispatches to either with the same arguments.

Zero-copy and stream-ordered: tensors are passed to the Rust launcher as ``data_ptr()`` integers together
with torch's current stream of their device; outputs and scratch buffers are allocated here with
``torch.empty`` (torch's caching allocator); nothing synchronises with the host. Kernels read float32,
float64, bfloat16 and float16 directly (arithmetic in float32, or float64 for float64; losses summed in
float64) and write results and gradients in the input dtype. The loss backward recomputes the score
instead of storing per-pair derivatives, so ``loss.backward()`` costs one read of the inputs and one
write of each gradient.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
from torch import Tensor

from .. import _core
from ..exceptions import DeviceError
from ._cpu import _buf, _empty, _opt, _refuse_double_backward, _shape_of, _win_bufs

__all__ = ["available", "call", "gpm_loss_step", "warmup"]

_LIB = "gpmkit"
_DTYPES = {torch.float32: "f32", torch.float64: "f64", torch.bfloat16: "bf16", torch.float16: "f16"}
_REDUCTIONS = {"none": 0.0, "mean": 1.0, "sum": 2.0}


@functools.cache
def available() -> bool:
    """True when the extension has its CUDA launcher and a CUDA driver with a device is present (cached)."""
    return bool(_core.cuda_available())


# torch's raw current-stream and current-device queries (what inductor's generated code calls) skip
# building a torch.cuda.Stream object: a few µs per launch, which matters at GPU speed.
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
_raw_device = getattr(torch._C, "_cuda_getDevice", None)


def _current_device() -> int:
    return _raw_device() if _raw_device is not None else torch.cuda.current_device()


def _current_stream(idx: int) -> int:
    return _raw_stream(idx) if _raw_stream is not None else torch.cuda.current_stream(idx).cuda_stream


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else _current_device()


def warmup(device: Optional[torch.device | str | int] = None) -> None:
    """Load the kernels on ``device`` (default: the current CUDA device) now, e.g. before graph capture.

    Raises:
        DeviceError: no CUDA driver/device, or the PTX cannot be loaded.
    """
    if device is None:
        idx = _current_device()
    elif isinstance(device, int):
        idx = device
    else:
        idx = _index(torch.device(device))
    _core.cuda_warmup(idx)


# ---------------------------------------------------------------------------------------------------
# launching


def _prep(t: Optional[Tensor]) -> Optional[Tensor]:
    """Contiguous, and aligned for the kernels' two-element vector loads (a view may start mid-pair)."""
    if t is None:
        return None
    if not t.is_contiguous():
        t = t.contiguous()
    if t.data_ptr() % (2 * t.element_size()):
        t = t.clone()
    return t


def _launch(op: str, ref: Tensor, tensors: tuple, sizes: tuple, scalars: tuple = ()) -> None:
    """Enqueue ``op`` on torch's current stream of ``ref``'s device."""
    dtype = _DTYPES.get(ref.dtype)
    if dtype is None:
        raise DeviceError(f"{op}: expected float32/float64/bfloat16/float16 CUDA tensors, got {ref.dtype}")
    idx = ref.device.index
    current = _current_device()
    if idx is None:
        idx = current
    ptrs = [0 if t is None else t.data_ptr() for t in tensors]
    if idx == current:
        _core.cuda_launch(op, dtype, idx, _current_stream(idx), ptrs, sizes, scalars)
    else:  # the launcher binds the device's primary context: keep torch's current device in step
        with torch.cuda.device(idx):
            _core.cuda_launch(op, dtype, idx, _current_stream(idx), ptrs, sizes, scalars)


@functools.lru_cache(maxsize=1024)
def _scratch_bytes(op: str, dtype: str, sizes: tuple) -> int:
    return max(int(_core.cuda_scratch_bytes(op, dtype, list(sizes))), 8)


def _scratch(op: str, ref: Tensor, sizes: tuple) -> Tensor:
    nbytes = _scratch_bytes(op, _DTYPES[ref.dtype], tuple(int(x) for x in sizes))
    return torch.empty(nbytes, dtype=torch.uint8, device=ref.device)


def _grad(grad: Tensor, ref: Tensor) -> Tensor:
    return _prep(grad if grad.dtype == ref.dtype else grad.to(ref.dtype))


# op name → (custom operator, bare implementation, autograd function, number of arguments)
_CALLS: dict[str, tuple[Callable, Callable, type, int]] = {}
_IMPLS: dict[Callable, Callable] = {}


def call(op: str, *args) -> Tensor:
    """Run operator ``op`` on CUDA tensors; arguments as :func:`gpmkit.ops._cpu.call` (the losses' trailing
    ``need_*`` flags are ignored: autograd knows which inputs need a gradient).

    While compiling this is the custom operator; in eager mode an autograd function over the same
    implementation (the custom-operator dispatcher costs tens of µs of host time per call, which at
    GPU speed is more than the kernels themselves), or the bare implementation when no gradient is needed.
    """
    custom, impl, function, n_args = _CALLS[op]
    args = args[:n_args]
    if torch.compiler.is_compiling():
        return custom(*args)
    if torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args):
        return function.apply(*args)
    return impl(*args)


def _define(name: str, impl: Callable, fake: Callable, eager: Optional[Callable] = None) -> Callable:
    """The custom operator ``gpmkit::cuda_<name>``; ``eager`` (default ``impl``) is what eager calls run:
    for the backward operators a variant that returns ``None`` instead of allocating a placeholder for
    each gradient nobody asked for (the custom-operator schema needs a tensor in every slot)."""
    op = torch.library.custom_op(f"{_LIB}::cuda_{name}", impl, mutates_args=(), device_types="cuda")
    op.register_fake(fake)
    _IMPLS[op] = impl if eager is None else eager
    return op


def _fill(ref: Tensor, grads: tuple) -> tuple:
    """``None`` gradients replaced by empty placeholders (the custom operators' fixed schema)."""
    return tuple(_empty(ref) if g is None else g for g in grads)


def _new(need: bool, ref: Tensor, shape=None) -> Optional[Tensor]:
    """A gradient buffer shaped like ``ref`` (or ``shape``) when needed, else ``None``."""
    return ref.new_empty(ref.shape if shape is None else shape) if need else None


def _pick(op: Callable, probe: Tensor) -> Callable:
    """The bare implementation in eager mode on real CUDA tensors, else the custom operator (traced, fake
    or meta tensors)."""
    eager = type(probe) is Tensor and probe.is_cuda and not torch.compiler.is_compiling()
    return _IMPLS[op] if eager else op


def _register(name: str, op: Callable, backward: Callable, n_args: int) -> None:
    """Autograd for ``op`` (compiled path) and an eager autograd function with the same backward."""
    op.register_autograd(backward, setup_context=_save_inputs)
    impl = _IMPLS[op]

    def forward(ctx, *args):
        out = impl(*args)
        _save_inputs(ctx, args, out)
        return out

    function = type(
        f"cuda_{name}_function",
        (torch.autograd.Function,),
        {"forward": staticmethod(forward), "backward": staticmethod(backward)},
    )
    _CALLS[name] = (op, impl, function, n_args)


def _save_inputs(ctx, inputs, output) -> None:
    ctx.save_for_backward(*(t if isinstance(t, Tensor) else None for t in inputs))
    ctx.others = tuple(None if isinstance(t, Tensor) else t for t in inputs)


# ---------------------------------------------------------------------------------------------------
# pair scores


def _score(v_i: Tensor, v_j: Tensor, gate: Optional[Tensor]) -> Tensor:
    v_i, v_j, gate = _prep(v_i), _prep(v_j), _prep(gate)
    out = v_i.new_empty(v_i.shape[0])
    _launch("score_fwd", v_i, (v_i, v_j, gate, out), (v_i.shape[0], v_i.shape[1] // 2))
    return out


def _score_bwd_eager(grad, v_i, v_j, gate, need_v_i, need_v_j, need_gate) -> tuple:
    v_i, v_j, gate = _prep(v_i), _prep(v_j), _prep(gate)
    gi, gj, gg = _new(need_v_i, v_i), _new(need_v_j, v_j), _new(need_gate and gate is not None, v_i, _shape_of(gate))
    _launch("score_bwd", v_i, (_grad(grad, v_i), v_i, v_j, gate, gi, gj, gg), (v_i.shape[0], v_i.shape[1] // 2))
    return gi, gj, gg


def _score_bwd(
    grad: Tensor, v_i: Tensor, v_j: Tensor, gate: Optional[Tensor], need_v_i: bool, need_v_j: bool, need_gate: bool
) -> tuple[Tensor, Tensor, Tensor]:
    return _fill(v_i, _score_bwd_eager(grad, v_i, v_j, gate, need_v_i, need_v_j, need_gate))


_score_bwd_op = _define(
    "preference_score_backward",
    _score_bwd,
    lambda grad, v_i, v_j, gate, ni, nj, ng: (
        _buf(ni, v_i),
        _buf(nj, v_j),
        _buf(ng and gate is not None, v_i, _shape_of(gate)),
    ),
    _score_bwd_eager,
)


def _score_backward(ctx, grad):
    _refuse_double_backward(grad)
    v_i, v_j, gate = ctx.saved_tensors
    n = ctx.needs_input_grad
    ng = bool(n[2]) and gate is not None
    gi, gj, gg = _pick(_score_bwd_op, grad)(grad, v_i, v_j, gate, bool(n[0]), bool(n[1]), ng)
    return _opt(n[0], gi), _opt(n[1], gj), _opt(ng, gg)


_score_op = _define("preference_score", _score, lambda v_i, v_j, gate: v_i.new_empty(v_i.shape[0]))
_register("preference_score", _score_op, _score_backward, 3)


# ---------------------------------------------------------------------------------------------------
# K×K matrices


def _matrix(v: Tensor, gate: Optional[Tensor]) -> Tensor:
    v, gate = _prep(v), _prep(gate)
    b, kk, d = v.shape
    out = v.new_empty(b, kk, kk)
    _launch("matrix_fwd", v, (v, gate, out), (b, kk, d // 2))
    return out


def _matrix_bwd_eager(grad, v, gate, need_v, need_gate) -> tuple:
    v, gate = _prep(v), _prep(gate)
    gv, gg = _new(need_v, v), _new(need_gate and gate is not None, v, _shape_of(gate))
    b, kk, d = v.shape
    _launch("matrix_bwd", v, (_grad(grad, v), v, gate, gv, gg), (b, kk, d // 2))
    return gv, gg


def _matrix_bwd(
    grad: Tensor, v: Tensor, gate: Optional[Tensor], need_v: bool, need_gate: bool
) -> tuple[Tensor, Tensor]:
    return _fill(v, _matrix_bwd_eager(grad, v, gate, need_v, need_gate))


_matrix_bwd_op = _define(
    "preference_matrix_backward",
    _matrix_bwd,
    lambda grad, v, gate, nv, ng: (_buf(nv, v), _buf(ng and gate is not None, v, _shape_of(gate))),
    _matrix_bwd_eager,
)


def _matrix_backward(ctx, grad):
    _refuse_double_backward(grad)
    v, gate = ctx.saved_tensors
    n = ctx.needs_input_grad
    ng = bool(n[1]) and gate is not None
    gv, gg = _pick(_matrix_bwd_op, grad)(grad, v, gate, bool(n[0]), ng)
    return _opt(n[0], gv), _opt(ng, gg)


_matrix_op = _define("preference_matrix", _matrix, lambda v, gate: v.new_empty(v.shape[0], v.shape[1], v.shape[1]))
_register("preference_matrix", _matrix_op, _matrix_backward, 2)


# ---------------------------------------------------------------------------------------------------
# win scores


def _win(v: Tensor, weights: Optional[Tensor], gate: Optional[Tensor]) -> Tensor:
    v, weights, gate = _prep(v), _prep(weights), _prep(gate)
    b, kk, d = v.shape
    sizes = (b, kk, d // 2)
    out = v.new_empty(b, kk)
    _launch("win_fwd", v, (v, weights, gate, _scratch("win_fwd", v, sizes), out), sizes)
    return out


def _win_bwd(
    grad: Tensor,
    v: Tensor,
    weights: Optional[Tensor],
    gate: Optional[Tensor],
    need_v: bool,
    need_weights: bool,
    need_gate: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    return _fill(v, _win_bwd_eager(grad, v, weights, gate, need_v, need_weights, need_gate))


def _win_bwd_eager(grad, v, weights, gate, need_v, need_weights, need_gate) -> tuple:
    v, weights, gate = _prep(v), _prep(weights), _prep(gate)
    gv = _new(need_v, v)
    gw = _new(need_weights and weights is not None, v, _shape_of(weights))
    gg = _new(need_gate and gate is not None, v, _shape_of(gate))
    b, kk, d = v.shape
    sizes = (b, kk, d // 2)
    _launch("win_bwd", v, (_grad(grad, v), v, weights, gate, _scratch("win_bwd", v, sizes), gv, gw, gg), sizes)
    return gv, gw, gg


_win_bwd_op = _define(
    "win_score_backward", _win_bwd, lambda g, v, w, gate, nv, nw, ng: _win_bufs(v, w, gate, nv, nw, ng), _win_bwd_eager
)


def _win_backward(ctx, grad):
    _refuse_double_backward(grad)
    v, weights, gate = ctx.saved_tensors
    n = ctx.needs_input_grad
    nw, ng = bool(n[1]) and weights is not None, bool(n[2]) and gate is not None
    gv, gw, gg = _pick(_win_bwd_op, grad)(grad, v, weights, gate, bool(n[0]), nw, ng)
    return _opt(n[0], gv), _opt(nw, gw), _opt(ng, gg)


_win_op = _define("win_score", _win, lambda v, weights, gate: v.new_empty(v.shape[0], v.shape[1]))
_register("win_score", _win_op, _win_backward, 3)


# ---------------------------------------------------------------------------------------------------
# losses: fused forward (score + loss + ordered reduction), backward recomputes the score


def _loss_out(ref: Tensor, n: int, reduction: str) -> Tensor:
    return ref.new_empty(n) if reduction == "none" else ref.new_empty(())


def _gpm(
    v_chosen: Tensor,
    v_rejected: Tensor,
    gate: Optional[Tensor],
    margin: Optional[Tensor],
    label: Optional[Tensor],
    tau: float,
    reduction: str,
) -> Tensor:
    vc, vr, gate, margin, label = (_prep(t) for t in (v_chosen, v_rejected, gate, margin, label))
    sizes = (vc.shape[0], vc.shape[1] // 2)
    loss = _loss_out(vc, sizes[0], reduction)
    scratch = None if reduction == "none" else _scratch("gpm_fwd", vc, sizes)
    _launch("gpm_fwd", vc, (vc, vr, gate, margin, label, loss, scratch), sizes, (tau, _REDUCTIONS[reduction]))
    return loss


def _gpm_bufs(vc, gate, margin, label, nc, nr, ng, nm, nl):
    n = (vc.shape[0],)
    return (
        _buf(nc, vc),
        _buf(nr, vc),
        _buf(ng and gate is not None, vc, _shape_of(gate)),
        _buf(nm and margin is not None, vc, n),
        _buf(nl and label is not None, vc, n),
    )


def _gpm_bwd(
    grad: Tensor,
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
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    needs = (need_chosen, need_rejected, need_gate, need_margin, need_label)
    grads = _gpm_bwd_eager(grad, v_chosen, v_rejected, gate, margin, label, tau, reduction, *needs)
    return _fill(v_chosen, grads)


def _gpm_bwd_eager(grad, v_chosen, v_rejected, gate, margin, label, tau, reduction, nc, nr, ng, nm, nl) -> tuple:
    vc, vr, gate, margin, label = _prep(v_chosen), _prep(v_rejected), _prep(gate), _prep(margin), _prep(label)
    n = vc.shape[0]
    gc, gr = _new(nc, vc), _new(nr, vr)
    gg = _new(ng and gate is not None, vc, _shape_of(gate))
    gm, gl = _new(nm and margin is not None, vc, (n,)), _new(nl and label is not None, vc, (n,))
    tensors = (_grad(grad, vc), vc, vr, gate, margin, label, gc, gr, gg, gm, gl)
    _launch("gpm_bwd", vc, tensors, (n, vc.shape[1] // 2), (tau, _REDUCTIONS[reduction]))
    return gc, gr, gg, gm, gl


_gpm_bwd_op = _define(
    "gpm_loss_backward",
    _gpm_bwd,
    lambda grad, vc, vr, gate, margin, label, tau, red, *needs: _gpm_bufs(vc, gate, margin, label, *needs),
    _gpm_bwd_eager,
)


def _needs(ctx, tensors) -> list[bool]:
    return [bool(n) and t is not None for n, t in zip(ctx.needs_input_grad, tensors)]


def _gpm_backward(ctx, grad):
    _refuse_double_backward(grad)
    tensors = ctx.saved_tensors[:5]
    tau, reduction = ctx.others[5:7]
    needs = _needs(ctx, tensors)
    grads = _pick(_gpm_bwd_op, grad)(grad, *tensors, tau, reduction, *needs)
    return (*(_opt(nd, g) for nd, g in zip(needs, grads)), None, None)


_gpm_op = _define(
    "gpm_loss",
    _gpm,
    lambda vc, vr, gate, margin, label, tau, reduction: _loss_out(vc, vc.shape[0], reduction),
)
_register("gpm_loss", _gpm_op, _gpm_backward, 7)


class _GpmLoss(torch.autograd.Function):
    """Eager autograd of :func:`gpm_loss_step`: the training-step call (no margin, no label) with five
    arguments instead of the general function's seven, and no per-argument bookkeeping."""

    @staticmethod
    def forward(ctx, v_chosen, v_rejected, gate, tau, reduction):
        loss = _gpm(v_chosen, v_rejected, gate, None, None, tau, reduction)
        ctx.save_for_backward(v_chosen, v_rejected, gate)
        ctx.tau_reduction = (tau, reduction)
        return loss

    @staticmethod
    def backward(ctx, grad):
        _refuse_double_backward(grad)
        vc, vr, gate = ctx.saved_tensors
        nc, nr, ng = ctx.needs_input_grad[:3]
        tau, reduction = ctx.tau_reduction
        ng = ng and gate is not None
        bwd = _pick(_gpm_bwd_op, grad)
        gc, gr, gg, _, _ = bwd(grad, vc, vr, gate, None, None, tau, reduction, nc, nr, ng, False, False)
        return (gc if nc else None), (gr if nr else None), (gg if ng else None), None, None


def gpm_loss_step(v_chosen: Tensor, v_rejected: Tensor, gate: Optional[Tensor], tau: float, reduction: str) -> Tensor:
    """``gpm_loss`` without margin and label on validated ``[N, 2k]`` CUDA tensors (``[N, k]`` gate): the
    call of a training step, with as little host work as the autograd machinery allows."""
    if torch.compiler.is_compiling():
        return _gpm_op(v_chosen, v_rejected, gate, None, None, tau, reduction)
    if torch.is_grad_enabled() and (
        v_chosen.requires_grad or v_rejected.requires_grad or (gate is not None and gate.requires_grad)
    ):
        return _GpmLoss.apply(v_chosen, v_rejected, gate, tau, reduction)
    return _gpm(v_chosen, v_rejected, gate, None, None, tau, reduction)


def _bt(
    r_chosen: Tensor,
    r_rejected: Tensor,
    margin: Optional[Tensor],
    label: Optional[Tensor],
    tau: float,
    reduction: str,
) -> Tensor:
    rc, rr, margin, label = (_prep(t) for t in (r_chosen, r_rejected, margin, label))
    n = rc.shape[0]
    loss = _loss_out(rc, n, reduction)
    scratch = None if reduction == "none" else _scratch("bt_fwd", rc, (n,))
    _launch("bt_fwd", rc, (rc, rr, margin, label, loss, scratch), (n,), (tau, _REDUCTIONS[reduction]))
    return loss


def _elementwise_bufs(ref: Tensor, tensors, needs) -> tuple[Tensor, ...]:
    return tuple(_buf(nd and t is not None, ref) for t, nd in zip(tensors, needs))


def _elementwise_bwd(op: str, grad: Tensor, inputs: tuple, needs: tuple, scalars: tuple) -> tuple[Tensor, ...]:
    """Backward of a loss over ``[N]`` inputs (BT, GPO/SPPO): a gradient buffer per needed input, one launch."""
    ins = tuple(_prep(t) for t in inputs)
    ref = ins[0]
    outs = tuple(_new(nd and t is not None, ref) for t, nd in zip(ins, needs))
    _launch(op, ref, (_grad(grad, ref), *ins, *outs), (ref.shape[0],), scalars)
    return outs


def _bt_bwd(
    grad: Tensor,
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
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    needs = (need_chosen, need_rejected, need_margin, need_label)
    return _fill(r_chosen, _bt_bwd_eager(grad, r_chosen, r_rejected, margin, label, tau, reduction, *needs))


def _bt_bwd_eager(grad, r_chosen, r_rejected, margin, label, tau, reduction, *needs) -> tuple:
    inputs = (r_chosen, r_rejected, margin, label)
    return _elementwise_bwd("bt_bwd", grad, inputs, needs, (tau, _REDUCTIONS[reduction]))


_bt_bwd_op = _define(
    "bt_loss_backward",
    _bt_bwd,
    lambda grad, rc, rr, m, lab, tau, red, *needs: _elementwise_bufs(rc, (rc, rr, m, lab), needs),
    _bt_bwd_eager,
)


def _bt_backward(ctx, grad):
    _refuse_double_backward(grad)
    tensors = ctx.saved_tensors[:4]
    tau, reduction = ctx.others[4:6]
    needs = _needs(ctx, tensors)
    grads = _pick(_bt_bwd_op, grad)(grad, *tensors, tau, reduction, *needs)
    return (*(_opt(nd, g) for nd, g in zip(needs, grads)), None, None)


_bt_op = _define("bt_loss", _bt, lambda rc, rr, m, lab, tau, reduction: _loss_out(rc, rc.shape[0], reduction))
_register("bt_loss", _bt_op, _bt_backward, 6)


def _policy_scalars(beta, offset, gamma, clamp, reduction) -> tuple:
    return (beta, offset, gamma, float("nan") if clamp is None else clamp, _REDUCTIONS[reduction])


def _policy(
    logp: Tensor,
    ref_logp: Tensor,
    target: Tensor,
    lengths: Optional[Tensor],
    beta: float,
    offset: float,
    gamma: float,
    clamp: Optional[float],
    reduction: str,
) -> Tensor:
    lp, rl, tg, ln = (_prep(t) for t in (logp, ref_logp, target, lengths))
    n = lp.shape[0]
    loss = _loss_out(lp, n, reduction)
    scratch = None if reduction == "none" else _scratch("policy_fwd", lp, (n,))
    scalars = _policy_scalars(beta, offset, gamma, clamp, reduction)
    _launch("policy_fwd", lp, (lp, rl, tg, ln, loss, scratch), (n,), scalars)
    return loss


def _policy_bwd(
    grad: Tensor,
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
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    needs = (need_logp, need_ref_logp, need_target, need_lengths)
    grads = _policy_bwd_eager(grad, logp, ref_logp, target, lengths, beta, offset, gamma, clamp, reduction, *needs)
    return _fill(logp, grads)


def _policy_bwd_eager(grad, logp, ref_logp, target, lengths, beta, offset, gamma, clamp, reduction, *needs) -> tuple:
    inputs = (logp, ref_logp, target, lengths)
    return _elementwise_bwd("policy_bwd", grad, inputs, needs, _policy_scalars(beta, offset, gamma, clamp, reduction))


_policy_bwd_op = _define(
    "policy_loss_backward",
    _policy_bwd,
    lambda grad, lp, rl, tg, ln, beta, off, gamma, clamp, red, *needs: _elementwise_bufs(lp, (lp, rl, tg, ln), needs),
    _policy_bwd_eager,
)


def _policy_backward(ctx, grad):
    _refuse_double_backward(grad)
    tensors = ctx.saved_tensors[:4]
    needs = _needs(ctx, tensors)
    grads = _pick(_policy_bwd_op, grad)(grad, *tensors, *ctx.others[4:9], *needs)
    return (*(_opt(nd, g) for nd, g in zip(needs, grads)), *([None] * 5))


_policy_op = _define(
    "policy_loss",
    _policy,
    lambda lp, rl, tg, ln, beta, off, gamma, clamp, reduction: _loss_out(lp, lp.shape[0], reduction),
)
_register("policy_loss", _policy_op, _policy_backward, 9)
