"""Helpers shared by the test files: input builders, error bounds and comparisons against the oracle.

Error bounds. The kernels compute sums of products; in floating point with unit roundoff ``u = eps/2``
a sum of ``n`` products obeys ``|computed − exact| ≤ γ_n · Σ|terms|`` with ``γ_n ≈ n·u`` (Higham,
*Accuracy and Stability of Numerical Algorithms*, §3.1). ``Σ|terms|`` is computed below by running the
same polynomial in float64 with every input replaced by its absolute value and every minus sign by a
plus (the ``mag_*`` functions); their autograd gradients, fed ``|upstream|``, give ``Σ|terms|`` of every
gradient too (including the sums autograd adds over broadcast dimensions). We allow ``n·eps = 2n·u``
(a 2× margin over the classical bound), with ``n`` the longest chain of roundings. For the losses the
score error is propagated through the loss with its derivative bounds (``|ℓ'(z)| ≤ 1``,
``|σ'| ≤ ¼``, ``|σ''| ≤ ¼``). A wrong sign or index gives O(1) errors, far above these bounds; the bounds
themselves are ~1e-5 relative for k = 65 in float32 and ~1e-14 in float64.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from gpmkit import _reference
from torch import Tensor

F64 = torch.float64
EPS = {dt: torch.finfo(dt).eps for dt in (torch.float32, torch.float64, torch.bfloat16, torch.float16)}


# ---------------------------------------------------------------------------------------------------
# inputs


def randn(*shape, dtype=torch.float32, scale: float = 1.0) -> Tensor:
    return (torch.randn(shape, dtype=F64) * scale).to(dtype)


def emb(*shape, dtype=torch.float32) -> Tensor:
    """Embeddings ``[..., 2k]`` scaled so that scores are O(1) (so losses are not saturated)."""
    k = shape[-1] // 2
    return randn(*shape, dtype=dtype, scale=1.0 / math.sqrt(2 * k))


def gate_like(*shape, dtype=torch.float32) -> Tensor:
    """Gates ``λ ≥ 0``, with a few exact zeros."""
    g = torch.rand(*shape, dtype=F64) * 2
    g[torch.rand(*shape) < 0.1] = 0.0
    return g.to(dtype)


def soft_label(*shape, dtype=torch.float32) -> Tensor:
    """Soft labels in [0, 1], including exact 0, ½ and 1."""
    p = torch.rand(*shape, dtype=F64)
    r = torch.rand(*shape)
    p[r < 0.1] = 0.0
    p[(r >= 0.1) & (r < 0.2)] = 1.0
    p[(r >= 0.2) & (r < 0.3)] = 0.5
    return p.to(dtype)


def leaf(t: Optional[Tensor], dtype=None) -> Optional[Tensor]:
    """A fresh leaf copy (in ``dtype``) that requires grad when it is floating point."""
    if t is None:
        return None
    t = t.detach().clone() if dtype is None else t.detach().to(dtype).clone()
    return t.requires_grad_(t.is_floating_point())


def grads_of(out: Tensor, inputs: dict, upstream: Tensor) -> dict:
    """``torch.autograd.grad`` of ``out`` w.r.t. every floating-point tensor in ``inputs``."""
    names = [k for k, t in inputs.items() if isinstance(t, Tensor) and t.requires_grad]
    gs = torch.autograd.grad(out, [inputs[k] for k in names], upstream, allow_unused=True, materialize_grads=True)
    return dict(zip(names, gs))


# ---------------------------------------------------------------------------------------------------
# magnitude polynomials: Σ|terms| of the scores (inputs must be ≥ 0)


def mag_score(a: Tensor, b: Tensor, gate: Optional[Tensor] = None) -> Tensor:
    term = a[..., 0::2] * b[..., 1::2] + a[..., 1::2] * b[..., 0::2]
    if gate is not None:
        term = term * gate
    return term.sum(-1)


def mag_matrix(v: Tensor, gate: Optional[Tensor] = None) -> Tensor:
    left = v if gate is None else v * gate.repeat_interleave(2, dim=-1).unsqueeze(-2)
    swap = torch.stack((v[..., 1::2], v[..., 0::2]), dim=-1).flatten(-2)
    return left @ swap.transpose(-1, -2)


def mag_win(v: Tensor, weights: Optional[Tensor] = None, gate: Optional[Tensor] = None) -> Tensor:
    v_bar = v.mean(-2) if weights is None else (weights.unsqueeze(-1) * v).sum(-2)
    return mag_score(v, v_bar.unsqueeze(-2), None if gate is None else gate.unsqueeze(-2))


def _abs_leaves(x: dict) -> dict:
    return {k: (t.detach().to(F64).abs().requires_grad_() if isinstance(t, Tensor) else t) for k, t in x.items()}


# ---------------------------------------------------------------------------------------------------
# comparisons


def assert_within(actual: Tensor, expected: Tensor, bound: Tensor, what: str = "") -> None:
    """Same shape, same NaN/±inf pattern, and ``|actual − expected| ≤ bound`` elsewhere."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    a, e = actual.detach().to(F64), expected.detach().to(F64)
    bound = torch.broadcast_to(bound.detach().to(F64), e.shape)
    assert torch.equal(torch.isnan(a), torch.isnan(e)), f"{what}: NaN pattern differs"
    inf = torch.isinf(e)
    assert torch.equal(a[inf], e[inf]), f"{what}: infinities differ"
    ok = ~torch.isnan(e) & ~inf
    err = (a[ok] - e[ok]).abs()
    b = bound[ok]
    if err.numel():
        worst = int(torch.argmax(err - b))
        assert bool((err <= b).all()), (
            f"{what}: error {err[worst].item():.3e} exceeds the bound {b[worst].item():.3e} "
            f"(value {a[ok][worst].item():.9g}, expected {e[ok][worst].item():.9g}); max error {err.max().item():.3e}"
        )


def check_polynomial(
    fn: Callable,
    ref: Callable,
    mag: Callable,
    tensors: dict,
    n_terms: int,
    dtype=torch.float32,
) -> None:
    """Values and gradients (random upstream) of a score op in ``dtype`` against the float64 oracle."""
    x = {k: leaf(t, dtype) for k, t in tensors.items()}
    out = fn(**x)
    assert out.dtype == dtype
    u = randn(*out.shape, dtype=dtype)
    g = grads_of(out, x, u)
    x64 = {k: leaf(t, F64) for k, t in x.items()}
    out64 = ref(**x64)
    g64 = grads_of(out64, x64, u.to(F64))
    xa = _abs_leaves(x)
    m = mag(**xa)
    gm = grads_of(m, xa, u.to(F64).abs())
    tol = n_terms * EPS[dtype]
    assert_within(out, out64, tol * m, "value")
    assert set(g) == set(g64) == {k for k, t in x.items() if t is not None}
    for k in g:
        assert g[k].dtype == dtype, k
        assert_within(g[k], g64[k], tol * gm[k], f"grad {k}")


def _reduce_bound(per: Tensor, reduction: str, out64: Tensor, eps: float) -> Tensor:
    if reduction == "none":
        return per
    scale = 1.0 / per.numel() if reduction == "mean" and per.numel() else 1.0
    return scale * per.sum() + 4 * eps * out64.abs()


def check_pair_loss(
    fn: Callable,
    ref: Callable,
    kind: str,
    tensors: dict,
    kwargs: dict,
    n_terms: int,
    dtype=torch.float32,
) -> None:
    """GPM / BT losses and the preference probability against the float64 oracle, values and gradients.

    ``kind`` is ``"gpm"``, ``"bt"`` or ``"prob"``. With ``z = (s − m)/τ`` the score error ``δs ≤ n·eps·S``
    (``S = Σ|terms|``) gives ``δz = (n·eps·(S + |m|))/τ + 4·eps·|z|``; the loss moves by at most ``δz``
    (``|ℓ'(z)| = |σ(z) − p| ≤ 1``), the probability by ``δz/4``, and the chain coefficient
    ``∂ℓ/∂s = (σ(z) − p)/τ`` (or ``σ'(z)/τ``) by ``(δz/4 + 4·eps)/τ`` (``|σ'|, |σ''| ≤ ¼``).
    """
    eps = EPS[dtype]
    reduction = kwargs.get("reduction", "none")
    tau = kwargs.get("tau", 1.0 if kind == "bt" else 0.1)
    x = {k: leaf(t, dtype) for k, t in tensors.items()}
    out = fn(**x, **kwargs)
    assert out.dtype == dtype
    u = randn(*out.shape, dtype=dtype)
    g = grads_of(out, x, u)
    x64 = {k: leaf(t, F64) for k, t in x.items()}
    out64 = ref(**x64, **kwargs)
    g64 = grads_of(out64, x64, u.to(F64))

    # bounds
    score_names = ("r_chosen", "r_rejected") if kind == "bt" else tuple(k for k in x if k not in ("margin", "label"))
    xa = _abs_leaves({k: x[k] for k in score_names if x[k] is not None})
    if kind == "bt":
        S = xa["r_chosen"] + xa["r_rejected"]
        s = (x64["r_chosen"] - x64["r_rejected"]).detach()
    else:
        a, b = (xa[k] for k in score_names[:2])
        S = mag_score(a, b, xa.get("gate"))
        s = _reference.preference_score(*(x64[k].detach() for k in score_names[:2]), _opt(x64.get("gate")))
    margin, label = _opt(x64.get("margin")), _opt(x64.get("label"))
    shapes = [S.shape] + [t.shape for t in (margin, label) if t is not None]
    batch = torch.broadcast_shapes(*shapes)
    S_b = S.expand(batch)
    s = s.expand(batch)
    m = torch.zeros(batch, dtype=F64) if margin is None else margin.expand(batch)
    p = torch.ones(batch, dtype=F64) if label is None else label.expand(batch)
    z = (s - m) / tau
    dz = n_terms * eps * (S_b.detach() + m.abs()) / tau + 4 * eps * z.abs()
    sig = torch.sigmoid(z)
    if kind == "prob":
        per = dz / 4 + 4 * eps
        cf = sig * (1 - sig) / tau
    else:
        ell = torch.nn.functional.softplus(-z) + (1 - p) * z
        per = dz + 8 * eps * (ell.abs() + z.abs())
        cf = (sig - p) / tau
    dcf = (dz / 4 + 4 * eps) / tau + 4 * eps * cf.abs()
    n = math.prod(batch)
    scale = 1.0 / n if reduction == "mean" and n else 1.0
    U = u.to(F64).abs().expand(batch)
    W = U * scale * (dcf + n_terms * eps * cf.abs())
    bounds = dict(zip(xa, torch.autograd.grad(S_b, list(xa.values()), W))) if xa else {}
    if margin is not None:
        bounds["margin"] = W.sum_to_size(margin.shape)
    if label is not None:
        bounds["label"] = (U * scale * (dz + (4 + n_terms) * eps * z.abs())).sum_to_size(label.shape)

    assert_within(out, out64, _reduce_bound(per, reduction, out64, eps), "value")
    assert set(g) == set(g64) == {k for k, t in x.items() if t is not None}
    for k in g:
        assert g[k].dtype == dtype, k
        assert_within(g[k], g64[k], bounds[k], f"grad {k}")


def _opt(t):
    return None if t is None else t.detach()


def check_policy_loss(
    fn: Callable,
    ref: Callable,
    tensors: dict,
    kwargs: dict,
    offset: float,
    dtype=torch.float32,
) -> None:
    """GPO / SPPO losses against the float64 oracle.

    ``e = (logp − ref_logp)·len^{−γ} − clamp((t − offset)/β)`` is a handful of roundings: ``δe ≤ 16·eps·E``
    with ``E = (|logp| + |ref_logp|)·len^{−γ} + (|t| + |offset|)/β``; ``ℓ = e²`` moves by ``2|e|δe``, and
    every gradient ``2e·(…)`` by ``2·δe·|…|`` plus its own few roundings.
    """
    eps = EPS[dtype]
    reduction = kwargs.get("reduction", "mean")
    beta = kwargs["beta"]
    gamma = kwargs.get("gamma", 0.0)
    clamp = kwargs.get("clamp")
    x = {k: leaf(t, dtype) for k, t in tensors.items()}
    out = fn(**x, **kwargs)
    assert out.dtype == dtype
    u = randn(*out.shape, dtype=dtype)
    g = grads_of(out, x, u)
    x64 = {k: leaf(t, F64) for k, t in x.items()}
    out64 = ref(**x64, **kwargs)
    g64 = grads_of(out64, x64, u.to(F64))

    names = list(tensors)  # logp, ref_logp, target, [lengths]
    lp, rl, t = (x64[k].detach() for k in names[:3])
    ln = x64["lengths"].detach() if x64.get("lengths") is not None else None
    batch = torch.broadcast_shapes(*(v.shape for v in (lp, rl, t, ln) if v is not None))
    lp, rl, t = lp.expand(batch), rl.expand(batch), t.expand(batch)
    use_len = ln is not None and gamma != 0
    norm = ln.expand(batch) ** (-gamma) if use_len else torch.ones(batch, dtype=F64)
    raw = (t - offset) / beta
    passing = torch.ones(batch, dtype=torch.bool) if clamp is None else raw.abs() <= clamp
    tgt = raw if clamp is None else raw.clamp(-clamp, clamp)
    delta = lp - rl
    e = delta * norm - tgt
    E = (lp.abs() + rl.abs()) * norm + (t.abs() + abs(offset)) / beta
    de = 16 * eps * E
    per = 2 * e.abs() * de + 4 * eps * e * e
    n = math.prod(batch)
    scale = 1.0 / n if reduction == "mean" and n else 1.0
    U = u.to(F64).abs().expand(batch)
    ge = 2 * e.abs() * scale * U
    dge = 2 * scale * U * (de + 4 * eps * e.abs())
    nb = 8 + n  # roundings of the chain plus the sums autograd adds over broadcast dimensions
    bounds = {
        names[0]: dge * norm + nb * eps * ge * norm,
        names[1]: dge * norm + nb * eps * ge * norm,
        names[2]: torch.where(passing, dge / beta + nb * eps * ge / beta, torch.zeros_like(ge)),
    }
    if ln is not None:
        lnb = ln.expand(batch)
        fac = abs(gamma) * norm / lnb if use_len else torch.zeros(batch, dtype=F64)
        # δ = logp − ref_logp itself carries eps·(|logp| + |ref_logp|) of rounding
        bounds["lengths"] = fac * (dge * delta.abs() + ge * (eps * (lp.abs() + rl.abs()) + nb * eps * delta.abs()))
    for k in list(bounds):
        bounds[k] = bounds[k].sum_to_size(x[k].shape)

    assert_within(out, out64, _reduce_bound(per, reduction, out64, eps), "value")
    assert set(g) == set(g64) == {k for k, v in x.items() if v is not None}
    for k in g:
        assert g[k].dtype == dtype, k
        assert_within(g[k], g64[k], bounds[k], f"grad {k}")


def policy_target(*shape, beta: float, clamp: Optional[float], offset: float = 0.0, dtype=torch.float32) -> Tensor:
    """Targets whose ``(t − offset)/β`` is either well inside ``±clamp`` or well outside (never at the edge)."""
    if clamp is None:
        return randn(*shape, dtype=dtype)
    inside = torch.rand(*shape) < 0.5
    mag = torch.where(inside, torch.rand(*shape) * 0.5, 1.5 + torch.rand(*shape))
    sign = torch.where(torch.rand(*shape) < 0.5, -1.0, 1.0)
    return (sign * mag * clamp * beta + offset).to(F64).to(dtype)


def graph_names(t: Tensor) -> set:
    """Class names of every node of the autograd graph behind ``t``."""
    seen, todo, names = set(), [t.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo.extend(n for n, _ in node.next_functions)
    return names


# ---------------------------------------------------------------------------------------------------
# a tiny offline chat tokenizer (for the model, trainer, CLI and example tests)


def chat_tokenizer(corpus: list[str], vocab_size: int = 300):
    """A byte-level BPE trained in-process on ``corpus``, with a ChatML chat template (offline.md §1)."""
    from gpmkit._backbones import chat_tokenizer as build

    return build(corpus, vocab_size)


def save_tiny_llama(path, corpus: list[str], seed: int = 0) -> str:
    """Save a tiny random Llama causal LM and a :func:`chat_tokenizer` on ``corpus`` into one directory,
    laid out like a hub model, so ``from_pretrained(path)`` / ``--backbone PATH`` load both offline."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(path)
    chat_tokenizer(corpus).save_pretrained(path)
    return str(path)
