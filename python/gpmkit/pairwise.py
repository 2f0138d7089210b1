"""Fit Bradley-Terry or a General Preference Model to comparison data over a finite item set.

:func:`fit` takes comparisons ``winners[n]`` vs ``losers[n]`` with an optional soft outcome
``outcome[n] = P(winners[n] ≻ losers[n]) ∈ [0, 1]`` (default 1; a tie or draw is 0.5) and optional
per-comparison covariates ``context[n]`` (e.g. a respondent's attributes) that feed the GPM's gate.
Each item gets a learned embedding (a table, no text encoder); losses and scores go through
:mod:`gpmkit.functional` (:func:`~gpmkit.functional.gpm_loss`, :func:`~gpmkit.functional.bt_loss`,
:func:`~gpmkit.functional.preference_score`), i.e. the same kernels as every other part of gpmkit.

**How GPM nests BT here (the defaults and why).** The paper (§4) shows BT is the GPM with
``v_i = [r_i, c]``. ``fit(model="gpm")`` parameterises every embedding as that BT embedding plus a
deviation::

    v_i = √τ · ([r_i, 1, 0, …, 0] + δ_i),      δ_i ∈ R^{2k} (first coordinate fixed to 0)

so ``s(i, j)/τ = (r_i − r_j) + (terms that vanish at δ = 0)``: ``δ = 0`` is exactly BT, every
embedding in ``R^{2k}`` is still reachable, and a Gaussian prior on ``δ`` (the L2 penalty
``cyclic_l2``) shrinks the model towards BT unless the data pay for the deviation. The fit is
warm-started at the BT solution and, should the optimiser end above the BT point's objective, returns
that point, so it never ends above BT's training objective. Penalties are prior precisions on the
summed log-likelihood (objective = (Σ_n w_n ℓ_n + ½α‖θ‖²) / Σ_n w_n), so they fade as data grow, like
a MAP estimate. ``cyclic_l2 = 16`` (the default) was chosen with ``gpmkit bench real`` (5-fold CV on
the five real data sets of :mod:`gpmkit.datasets.real`; sweep α ∈ {0, 8, 16, 64}): with it the
item-only GPM's held-out log-loss is within 0.5 % of BT's on every set, and the context-gated GPM is
1.7–3.2 % better than BT on SoundQuality and CEMS, 0.4–0.5 % on GermanParties2009 and 0.5 % worse on
football. α = 0 over-fits (football: +85 % at d = 6); α = 8 costs 1 % on football; α = 64 gives up
most of the gated gains (CEMS −0.3 % instead of −3.2 %, SoundQuality −0.5 % instead of −2.3 %).
On these data the aggregate (population) preferences are nearly transitive — the saturated model of
all K(K−1)/2 pairwise win rates (the bench's ``saturated`` row) beats BT held-out only on
GermanParties2009, by 0.1 % — so the cycles a GPM can exploit there are those between groups of
judges, which the gate sees through ``context``.

The temperature ``τ`` only rescales the reported embeddings (``P(i ≻ j) = σ(s(v_i, v_j)/τ)`` with
``s`` the preference score): for a free embedding table τ is absorbed into the embedding norm, so the
fitted probabilities do not depend on it and the penalties are defined on the logit scale.

The gate: with ``context`` of width C, ``λ(c) = k · softmax(W c)`` with a bias-free ``W ∈ R^{k×C}``
(L2-penalised by ``gate_l2``): ``λ = 1`` at ``W = 0``, so the gated model nests the ungated one; the
fit first fits the ungated GPM and then adds the gate from ``W = 0``; should that stage end above the
ungated model's objective (possible with ``optimizer="adam"``, which is not monotone) or at NaN, it
returns the ungated model (``W = 0``), so its training objective never ends above the ungated model's.
It needs at least two blocks (``value_head_dim ≥ 4``); BT has no gate.

Optimisation is full-batch and deterministic: identical comparisons are merged into weighted rows,
then L-BFGS (two-loop recursion, Armijo backtracking, float64; a small implementation here rather than
``torch.optim``, whose first use imports ``torch._dynamo`` and costs seconds) runs from a seeded
initialisation, so the same call gives the same fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any, Optional, Union

import numpy as np

from .exceptions import ArgumentError, DTypeError, ShapeError

__all__ = ["PairwiseModel", "fit"]

ArrayLike = Any
_MODELS = ("gpm", "bt")


# ---------------------------------------------------------------------------------------------------
# validation


def _int_array(x: ArrayLike, name: str, n_items: int) -> np.ndarray:
    """A 1-D int64 array of item ids in ``[0, n_items)``."""
    try:
        arr = np.asarray(x)
    except Exception as err:  # pragma: no cover - exotic inputs
        raise DTypeError(f"{name}: expected a 1-D array of integer item ids, got {type(x).__name__} ({err})") from None
    if arr.ndim != 1:
        raise ShapeError(f"{name}: expected a 1-D array of item ids, got shape {arr.shape}")
    if arr.size and not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise DTypeError(f"{name}: expected integer item ids, got dtype {arr.dtype}")
    if arr.dtype == bool:
        raise DTypeError(f"{name}: expected integer item ids, got dtype bool")
    arr = arr.astype(np.int64)
    bad = np.flatnonzero((arr < 0) | (arr >= n_items))
    if bad.size:
        raise ArgumentError(
            f"{name}: expected item ids in [0, {n_items}) (n_items={n_items}), got {int(arr[bad[0]])} at index "
            f"{int(bad[0])} ({bad.size} out of range)"
        )
    return arr


def _float_array(x: ArrayLike, name: str, ndim: Optional[int]) -> np.ndarray:
    """``x`` as a float64 array with ``ndim`` dimensions (any when ``None``); typed errors naming ``name``."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise DTypeError(f"{name}: expected a real-valued array, got {type(x).__name__} ({err})") from None
    if ndim is not None and arr.ndim != ndim:
        want = "[N]" if ndim == 1 else "[N, C]"
        raise ShapeError(f"{name}: expected shape {want}, got shape {arr.shape}")
    return arr


def _check_comparisons(
    n_items: int,
    winners: ArrayLike,
    losers: ArrayLike,
    outcome: Optional[ArrayLike],
    context: Optional[ArrayLike],
    weights: Optional[ArrayLike] = None,
    context_dim: Optional[int] = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Optional[np.ndarray], np.ndarray]:
    """Validated ``(winners, losers, outcome, context, weights)`` as numpy arrays."""
    w = _int_array(winners, "winners", n_items)
    ell = _int_array(losers, "losers", n_items)
    if ell.shape != w.shape:
        raise ShapeError(f"losers: expected {w.shape[0]} ids (like winners), got {ell.shape[0]}")
    n = w.shape[0]
    if outcome is None:
        p = np.ones(n)
    else:
        p = _float_array(outcome, "outcome", 1)
        if p.shape[0] != n:
            raise ShapeError(f"outcome: expected {n} values (one per comparison), got {p.shape[0]}")
        bad = np.flatnonzero(~((p >= 0) & (p <= 1)))  # NaN fails both
        if bad.size:
            raise ArgumentError(
                f"outcome: expected values in [0, 1] (1 = winner preferred, 0.5 = tie), got {p[bad[0]]!r} at "
                f"index {int(bad[0])}"
            )
    c = None
    if context is not None:
        c = _float_array(context, "context", 2)
        if c.shape[0] != n:
            raise ShapeError(f"context: expected {n} rows (one per comparison), got shape {c.shape}")
        if context_dim is not None and c.shape[1] != context_dim:
            raise ShapeError(f"context: expected {context_dim} columns (as in the fit), got shape {c.shape}")
        if not np.isfinite(c).all():
            raise ArgumentError("context: expected finite values, got NaN or Inf")
    if weights is None:
        wt = np.ones(n)
    else:
        wt = _float_array(weights, "weights", 1)
        if wt.shape[0] != n:
            raise ShapeError(f"weights: expected {n} values (one per comparison), got {wt.shape[0]}")
        if not (np.isfinite(wt).all() and (wt >= 0).all()):
            raise ArgumentError("weights: expected finite non-negative values")
    return w, ell, p, c, wt


def _aggregate(w, ell, p, c, wt):
    """Merges identical comparisons into weighted rows (``(i, j, p) ≡ (j, i, 1 − p)`` by skew-symmetry)."""
    swap = w > ell
    i = np.where(swap, ell, w)
    j = np.where(swap, w, ell)
    q = np.where(swap, 1.0 - p, p)
    cols = [i.astype(np.float64), j.astype(np.float64), q]
    key = np.column_stack(cols if c is None else [*cols, c])
    uniq, inverse = np.unique(key, axis=0, return_inverse=True)
    counts = np.bincount(inverse.reshape(-1), weights=wt, minlength=uniq.shape[0])
    keep = counts > 0
    uniq, counts = uniq[keep], counts[keep]
    ctx = None if c is None else uniq[:, 3:]
    return uniq[:, 0].astype(np.int64), uniq[:, 1].astype(np.int64), uniq[:, 2], ctx, counts


def _positive_float(x, name: str, allow_zero: bool = False) -> float:
    ok = isinstance(x, Real) and not isinstance(x, bool) and math.isfinite(x) and (x >= 0 if allow_zero else x > 0)
    if not ok:
        raise ArgumentError(f"{name}: expected a finite number {'≥' if allow_zero else '>'} 0, got {x!r}")
    return float(x)


def _positive_int(x, name: str, minimum: int = 1) -> int:
    if not isinstance(x, Integral) or isinstance(x, bool) or x < minimum:
        raise ArgumentError(f"{name}: expected an integer ≥ {minimum}, got {x!r}")
    return int(x)


# ---------------------------------------------------------------------------------------------------
# fitted model


@dataclass
class PairwiseModel:
    """A fitted BT or GPM over ``n_items`` items (returned by :func:`fit`).

    ``P(i ≻ j | c) = σ(s(v_i, v_j; λ(c)) / τ)`` with ``v = embeddings``; for BT ``v_i = [r_i, 1]`` so
    ``P(i ≻ j) = σ((r_i − r_j)/τ)`` with ``r = abilities``.

    Attributes:
        model: ``"gpm"`` or ``"bt"``.
        n_items: number of items K.
        tau: temperature τ.
        embeddings: ``[K, 2k]`` float64 preference embeddings (``2k = value_head_dim``; 2 for BT).
        abilities: ``[K]`` BT abilities (centred to mean 0), ``None`` for a GPM.
        gate_weight: ``[k, C]`` gate weight W (``λ(c) = k·softmax(W c)``), ``None`` without context.
        objective: final penalised objective (per unit weight).
        n_iter: optimiser iterations run.
        n_comparisons: number of comparisons fitted (sum of weights).
        options: the fit options (penalties, seed, ...).
    """

    model: str
    n_items: int
    tau: float
    embeddings: np.ndarray
    abilities: Optional[np.ndarray]
    gate_weight: Optional[np.ndarray]
    objective: float
    n_iter: int
    n_comparisons: float
    options: dict = field(default_factory=dict)

    @property
    def value_head_dim(self) -> int:
        """Embedding width 2k."""
        return int(self.embeddings.shape[1])

    @property
    def context_dim(self) -> Optional[int]:
        """Width C of the context covariates the gate takes (``None``: no gate)."""
        return None if self.gate_weight is None else int(self.gate_weight.shape[1])

    def gate(self, context: Optional[ArrayLike] = None) -> Optional[np.ndarray]:
        """The block scales ``λ(c) = k·softmax(W c)`` (``[k]`` or ``[N, k]``), or ``None`` without a gate.

        A model fitted with context needs ``context`` (one ``[C]`` row or ``[N, C]``) here too.
        """
        if self.gate_weight is None:
            if context is not None:
                raise ArgumentError("context: this model was fitted without context (it has no gate), got context")
            return None
        if context is None:
            raise ArgumentError(f"context: this model has a gate; expected [C] or [N, C] with C={self.context_dim}")
        c = _float_array(context, "context", None)
        if c.ndim not in (1, 2) or c.shape[-1] != self.context_dim:
            raise ShapeError(f"context: expected shape [{self.context_dim}] or [N, {self.context_dim}], got {c.shape}")
        logits = c @ self.gate_weight.T
        logits = logits - logits.max(axis=-1, keepdims=True)
        e = np.exp(logits)
        return self.gate_weight.shape[0] * e / e.sum(axis=-1, keepdims=True)

    def _torch(self):
        import torch

        return torch, torch.from_numpy(self.embeddings)

    def score_matrix(self, context: Optional[ArrayLike] = None) -> np.ndarray:
        """The K×K skew-symmetric score matrix ``M[i, j] = s(i ≻ j | c)`` (``P = σ(M/τ)``).

        ``context``: one ``[C]`` row gives ``[K, K]``; ``[N, C]`` gives ``[N, K, K]``.
        """
        from .functional import preference_matrix

        torch, v = self._torch()
        lam = self.gate(context)
        if lam is None:
            return preference_matrix(v).numpy()
        lam_t = torch.from_numpy(np.ascontiguousarray(lam))
        vv = v if lam_t.ndim == 1 else v.expand(lam_t.shape[0], *v.shape)
        return preference_matrix(vv, lam_t).numpy()

    def prob(self, i: ArrayLike, j: ArrayLike, context: Optional[ArrayLike] = None) -> Union[float, np.ndarray]:
        """``P(i ≻ j | c)`` for item ids ``i``, ``j`` (ints or equal-length 1-D arrays).

        ``context``: one ``[C]`` row for every pair or ``[N, C]`` (one per pair); required iff the model has a gate.
        """
        from .functional import preference_prob

        scalar = np.ndim(i) == 0 and np.ndim(j) == 0
        ii = _int_array(np.atleast_1d(i), "i", self.n_items)
        jj = _int_array(np.atleast_1d(j), "j", self.n_items)
        if ii.shape != jj.shape:
            raise ShapeError(f"j: expected {ii.shape[0]} ids (like i), got {jj.shape[0]}")
        torch, v = self._torch()
        lam = self.gate(context)
        gate = None
        if lam is not None:
            lam = np.broadcast_to(lam, (ii.shape[0], lam.shape[-1])) if lam.ndim == 1 else lam
            if lam.shape[0] != ii.shape[0]:
                raise ShapeError(f"context: expected {ii.shape[0]} rows (one per pair), got {lam.shape[0]}")
            gate = torch.from_numpy(np.array(lam, dtype=np.float64))
        out = preference_prob(v[torch.from_numpy(ii)], v[torch.from_numpy(jj)], gate, tau=self.tau).numpy()
        return float(out[0]) if scalar else out

    def evaluate(
        self,
        winners: ArrayLike,
        losers: ArrayLike,
        outcome: Optional[ArrayLike] = None,
        context: Optional[ArrayLike] = None,
    ) -> dict[str, float]:
        """Held-out metrics on comparisons: ``log_loss`` (soft labels, ties included), ``accuracy``
        (decisive comparisons only; a predicted 0.5 counts half) and ``brier`` (mean ``(P − outcome)²``)."""
        w, ell, p, c, _ = _check_comparisons(self.n_items, winners, losers, outcome, context, None, self.context_dim)
        if c is None and self.gate_weight is not None:
            raise ArgumentError("context: this model has a gate; expected context rows for the comparisons")
        q = np.asarray(self.prob(w, ell, c), dtype=np.float64).reshape(-1)
        return metrics(q, p)


def metrics(q: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """``log_loss``, ``accuracy`` (ties ``p = 0.5`` excluded) and ``brier`` of predictions ``q`` for outcomes ``p``."""
    q = np.clip(np.asarray(q, dtype=np.float64), 1e-12, 1 - 1e-12)
    p = np.asarray(p, dtype=np.float64)
    log_loss = float(np.mean(-(p * np.log(q) + (1 - p) * np.log1p(-q)))) if p.size else float("nan")
    decisive = p != 0.5
    if decisive.any():
        hit = np.where(q[decisive] == 0.5, 0.5, ((q[decisive] > 0.5) == (p[decisive] > 0.5)).astype(np.float64))
        accuracy = float(hit.mean())
    else:
        accuracy = float("nan")
    brier = float(np.mean((q - p) ** 2)) if p.size else float("nan")
    return {"log_loss": log_loss, "accuracy": accuracy, "brier": brier}


# ---------------------------------------------------------------------------------------------------
# fitting


def _flat(params, grad: bool):
    import torch

    return torch.cat([(p.grad if grad else p.detach()).reshape(-1) for p in params])


def _assign(params, x) -> None:
    import torch

    with torch.no_grad():
        offset = 0
        for p in params:
            p.copy_(x[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


def _lbfgs(params, closure, max_iter: int, tol: float, history: int = 20) -> int:
    """Minimises ``closure()`` (which zeroes, fills the parameters' ``.grad`` and returns the objective) by
    L-BFGS with an Armijo backtracking line search; deterministic, float64, no ``torch.optim`` (whose first
    use imports ``torch._dynamo``: seconds of start-up). Stops at ``max |grad| ≤ tol``, when the objective
    stops changing (relative ``tol``), or after ``max_iter`` iterations; returns the iterations run."""
    import torch

    f = float(closure().detach())
    x, g = _flat(params, False).clone(), _flat(params, True).clone()
    hist: list = []
    it = 0
    for it in range(1, max_iter + 1):
        if float(g.abs().max()) <= tol:
            it -= 1
            break
        q = g.clone()
        alphas = []
        for s_k, y_k, rho in reversed(hist):
            a = rho * torch.dot(s_k, q)
            alphas.append(a)
            q -= a * y_k
        if hist:
            s_k, y_k, _ = hist[-1]
            q *= torch.dot(s_k, y_k) / torch.dot(y_k, y_k)
        else:
            q *= min(1.0, 1.0 / float(g.abs().sum()))
        for (s_k, y_k, rho), a in zip(hist, reversed(alphas)):
            q += s_k * (a - rho * torch.dot(y_k, q))
        d = -q
        slope = float(torch.dot(g, d))
        if not slope < 0:  # not a descent direction: restart from steepest descent
            hist.clear()
            d = -g * min(1.0, 1.0 / float(g.abs().sum()))
            slope = float(torch.dot(g, d))
        step = 1.0
        while True:
            _assign(params, x + step * d)
            f_new = float(closure().detach())
            if f_new <= f + 1e-4 * step * slope or step < 1e-12:
                break
            step *= 0.5
        if step < 1e-12:  # the line search failed: retry once from steepest descent, else stop
            _assign(params, x)
            if not hist:
                break
            hist.clear()
            continue
        x_new, g_new = _flat(params, False).clone(), _flat(params, True).clone()
        s_k, y_k = x_new - x, g_new - g
        sy = float(torch.dot(s_k, y_k))
        if sy > 1e-12:
            hist.append((s_k, y_k, 1.0 / sy))
            if len(hist) > history:
                hist.pop(0)
        # a full step that no longer changes the objective: converged (a short backtracked step is not)
        converged = step == 1.0 and abs(f - f_new) <= tol * max(1.0, abs(f)) * 1e-3
        x, g, f = x_new, g_new, f_new
        if converged:
            break
    _assign(params, x)
    return it


def _adam(params, closure, max_iter: int, lr: float) -> int:
    """Full-batch Adam (β = 0.9, 0.999; ε = 1e-8) on ``closure`` without ``torch.optim``."""
    import torch

    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t in range(1, max_iter + 1):
        closure()
        with torch.no_grad():
            for p, m_p, v_p in zip(params, m, v):
                m_p.mul_(0.9).add_(p.grad, alpha=0.1)
                v_p.mul_(0.999).addcmul_(p.grad, p.grad, value=0.001)
                denom = (v_p / (1 - 0.999**t)).sqrt_().add_(1e-8)
                p.sub_(lr * (m_p / (1 - 0.9**t)) / denom)
    return max_iter


def fit(
    n_items: int,
    winners: ArrayLike,
    losers: ArrayLike,
    outcome: Optional[ArrayLike] = None,
    context: Optional[ArrayLike] = None,
    model: str = "gpm",
    value_head_dim: int = 4,
    tau: Optional[float] = None,
    epochs: int = 500,
    *,
    weights: Optional[ArrayLike] = None,
    cyclic_l2: float = 16.0,
    ability_l2: float = 1e-2,
    gate_l2: float = 1.0,
    optimizer: str = "lbfgs",
    lr: float = 0.05,
    seed: int = 0,
    tol: float = 1e-9,
) -> PairwiseModel:
    """Fits BT or a GPM to comparisons ``winners[n]`` vs ``losers[n]`` over items ``0 … n_items−1``.

    Args:
        n_items: number of items K (≥ 2).
        winners, losers: ``[N]`` integer item ids of each comparison's first (preferred) and second item.
        outcome: optional ``[N]`` soft labels ``P(winners[n] ≻ losers[n]) ∈ [0, 1]`` (ties/draws 0.5);
            default all 1.
        context: optional ``[N, C]`` covariates of each comparison; they feed the gate
            ``λ(c) = k·softmax(W c)`` (GPM with ``value_head_dim ≥ 4`` only).
        model: ``"gpm"`` or ``"bt"``.
        value_head_dim: GPM embedding width ``2k`` (even, ≥ 2; ignored for BT, which is ``v = [r, 1]``).
        tau: temperature τ (default 0.1 for GPM, 1 for BT); it only rescales the embeddings.
        epochs: maximum optimiser iterations (full-batch).
        weights: optional ``[N]`` non-negative case weights.
        cyclic_l2: prior precision α of the GPM's deviation δ from BT (see the module docstring).
        ability_l2: prior precision of the BT abilities r (a small value only fixes the location).
        gate_l2: prior precision of the gate weight W.
        optimizer: ``"lbfgs"`` (default; Armijo backtracking) or ``"adam"`` (full-batch, with ``lr``).
        lr: Adam learning rate.
        seed: seed of the deviations' initialisation (the fit is deterministic given the seed).
        tol: L-BFGS gradient tolerance.

    Returns:
        A :class:`PairwiseModel` (``.prob``, ``.score_matrix``, ``.embeddings``, ``.abilities`` for BT).

    Raises:
        ArgumentError: unknown ``model``/``optimizer``, bad scalars, item ids out of range, outcomes
            outside [0, 1] or NaN, a comparison of an item with itself, context with BT or one block.
        ShapeError: arrays of mismatched lengths or wrong dimensionality.
        DTypeError: non-integer item ids.
    """
    if model not in _MODELS:
        raise ArgumentError(f"model: expected one of {list(_MODELS)}, got {model!r}")
    n_items = _positive_int(n_items, "n_items", 2)
    if not isinstance(value_head_dim, Integral) or isinstance(value_head_dim, bool) or value_head_dim < 2:
        raise ArgumentError(f"value_head_dim: expected an even integer ≥ 2, got {value_head_dim!r}")
    if value_head_dim % 2:
        raise ArgumentError(f"value_head_dim: expected an even integer ≥ 2, got {value_head_dim!r}")
    tau = (0.1 if model == "gpm" else 1.0) if tau is None else _positive_float(tau, "tau")
    epochs = _positive_int(epochs, "epochs")
    cyclic_l2 = _positive_float(cyclic_l2, "cyclic_l2", allow_zero=True)
    ability_l2 = _positive_float(ability_l2, "ability_l2", allow_zero=True)
    gate_l2 = _positive_float(gate_l2, "gate_l2", allow_zero=True)
    lr = _positive_float(lr, "lr")
    tol = _positive_float(tol, "tol")
    if optimizer not in ("lbfgs", "adam"):
        raise ArgumentError(f"optimizer: expected 'lbfgs' or 'adam', got {optimizer!r}")
    if not isinstance(seed, Integral) or isinstance(seed, bool):
        raise ArgumentError(f"seed: expected an integer, got {seed!r}")
    w, ell, p, c, wt = _check_comparisons(n_items, winners, losers, outcome, context, weights)
    if w.shape[0] == 0:
        raise ShapeError("winners: expected at least one comparison, got 0")
    same = np.flatnonzero(w == ell)
    if same.size:
        raise ArgumentError(
            f"losers: expected a different item than winners in every comparison, got item {int(w[same[0]])} "
            f"against itself at index {int(same[0])}"
        )
    k = 1 if model == "bt" else value_head_dim // 2
    if c is not None and (model == "bt" or k < 2):
        raise ArgumentError(
            f"context: the gate needs a GPM with value_head_dim ≥ 4 (≥ 2 blocks), got model={model!r}, "
            f"value_head_dim={2 * k}"
        )
    total = float(wt.sum())
    if total <= 0:
        raise ArgumentError("weights: expected a positive total weight, got 0")

    import torch

    from .functional import bt_loss, gpm_loss

    i, j, q, cu, cnt = _aggregate(w, ell, p, c, wt)
    ti, tj = torch.from_numpy(i), torch.from_numpy(j)
    tq, tw = torch.from_numpy(q), torch.from_numpy(cnt)
    dt = torch.float64

    r = torch.zeros(n_items, dtype=dt, requires_grad=True)

    def bt_closure():
        opt_zero([r])
        nll = (bt_loss(r[ti], r[tj], tau=1.0, label=tq, reduction="none") * tw).sum()
        obj = (nll + 0.5 * ability_l2 * (r * r).sum()) / total
        if obj.requires_grad:
            obj.backward()
        return obj

    def opt_zero(ps):
        for t in ps:
            t.grad = None

    def run(params, closure) -> int:
        if optimizer == "lbfgs":
            return _lbfgs(params, closure, epochs, tol)
        return _adam(params, closure, epochs, lr)

    n_iter = run([r], bt_closure)
    options = {
        "cyclic_l2": cyclic_l2,
        "ability_l2": ability_l2,
        "gate_l2": gate_l2,
        "optimizer": optimizer,
        "epochs": epochs,
        "seed": seed,
    }
    if model == "bt":
        with torch.no_grad():
            obj = float(bt_closure())
            rr = r.detach().numpy().copy()
        rr -= rr.mean()
        # P = σ((r_i − r_j)/τ): store abilities on the τ scale; v = [r, 1] gives s = r_i − r_j.
        ab = rr * tau
        emb = np.stack([ab, np.ones(n_items)], axis=1)
        return PairwiseModel("bt", n_items, tau, emb, ab, None, obj, n_iter, total, options)

    gen = torch.Generator().manual_seed(int(seed))
    delta = (0.1 * torch.randn(n_items, 2 * k - 1, generator=gen, dtype=dt)).requires_grad_(True)
    base_r = r.detach().clone().requires_grad_(True)
    ctx = None if cu is None else torch.from_numpy(np.ascontiguousarray(cu))
    # the gate weight is optimised as W' = W·√max(gate_l2, 1) (a diagonal preconditioner: the penalty's
    # curvature in W' is at most 1, so a strong prior does not make the problem ill-conditioned)
    g_scale = 1.0 / math.sqrt(max(gate_l2, 1.0))
    gw = None if ctx is None else torch.zeros(k, ctx.shape[1], dtype=dt, requires_grad=True)
    one = torch.ones(n_items, 1, dtype=dt)
    use_gate = [False]

    def embed():
        # v/√τ = [r, 1, 0...] + [0, δ]: the BT embedding plus a deviation
        return torch.cat([base_r[:, None], one + delta[:, :1], delta[:, 1:]], dim=1)

    params = [base_r, delta]

    def gpm_closure():
        opt_zero(params)
        v = embed()
        gate = k * torch.softmax(ctx @ (g_scale * gw).T, dim=-1) if use_gate[0] else None
        nll = (gpm_loss(v[ti], v[tj], gate, tau=1.0, label=tq, reduction="none") * tw).sum()
        pen = ability_l2 * (base_r * base_r).sum() + cyclic_l2 * (delta * delta).sum()
        if use_gate[0]:
            pen = pen + gate_l2 * g_scale**2 * (gw * gw).sum()
        obj = (nll + 0.5 * pen) / total
        if obj.requires_grad:
            obj.backward()
        return obj

    with torch.no_grad():
        bt_r, bt_obj = r.detach().clone(), float(bt_closure())
    # stage 1: the ungated GPM (λ = 1, i.e. W = 0), from BT + a seeded deviation
    n_iter += run(params, gpm_closure)
    with torch.no_grad():
        obj = float(gpm_closure())
        if not obj <= bt_obj:  # never worse than the BT point it nests (also catches a NaN)
            base_r.copy_(bt_r)
            delta.zero_()
            obj = float(gpm_closure())
    if gw is not None:
        # stage 2: the gate, warm-started at W = 0 (the stage-1 model; λ = 1 there, so the gated objective
        # equals stage 1's). L-BFGS only accepts descent steps; Adam is not monotone, so should stage 2 end
        # above stage 1 (or at NaN), fall back to the stage-1 model with W = 0.
        stage1 = [t.detach().clone() for t in params]
        use_gate[0] = True
        params.append(gw)
        n_iter += run(params, gpm_closure)
        with torch.no_grad():
            if not float(gpm_closure()) <= obj:
                for t, saved in zip(params, stage1):
                    t.copy_(saved)
                gw.zero_()
    with torch.no_grad():
        obj = float(gpm_closure())
        emb = embed().numpy() * math.sqrt(tau)
        gwn = None if gw is None else (g_scale * gw).detach().numpy().copy()
    return PairwiseModel("gpm", n_items, tau, emb.copy(), None, gwn, obj, n_iter, total, options)
