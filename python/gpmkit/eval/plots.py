"""Matplotlib figures for preference analysis: heatmaps, 2-D block embeddings, gates, Hodge decomposition.

Every function returns a :class:`matplotlib.figure.Figure` (``fig.savefig(path)`` writes it; in Jupyter it
displays inline). Figures are built with ``matplotlib.figure.Figure`` directly, not ``pyplot``, so nothing is
opened on a display and nothing accumulates in pyplot's figure registry: the functions are safe in headless
scripts and servers (Agg). Pass ``ax=`` to draw into an existing pyplot/Jupyter axes instead. matplotlib is
imported only when a function is called.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..exceptions import ShapeError
from .cycles import HodgeDecomposition, _resolve_kind, _square, _to_numpy, as_score_matrix, hodge_decomposition

__all__ = [
    "plot_decomposition",
    "plot_embeddings",
    "plot_gate_weights",
    "plot_preference_matrix",
    "plot_spectrum",
]

_CMAP = "RdBu_r"


def _figure(nrows: int = 1, ncols: int = 1, size: Optional[tuple[float, float]] = None):
    """A pyplot-free Figure and its axes array (always 2-D)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size or (4.2 * ncols, 3.8 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _labels(labels: Optional[Sequence[Any]], n: int, name: str = "labels") -> list[str]:
    if labels is None:
        return [str(i) for i in range(n)]
    out = [str(x) for x in labels]
    if len(out) != n:
        raise ShapeError(f"{name}: expected {n} labels, got {len(out)}")
    return out


def _short(text: str, width: int = 18) -> str:
    """``text`` on one line, at most ``width`` characters; long ones keep their start and end (``"ab…yz"``)."""
    text = " ".join(str(text).split())
    if len(text) <= width:
        return text
    head = max(1, (width - 1) * 2 // 5)
    return text[:head] + "…" + text[len(text) - (width - 1 - head) :]


def _heatmap(ax, M: np.ndarray, labels: list[str], center: float, lim: float, annotate: bool, fmt: str = "{:.2g}"):
    im = ax.imshow(M, cmap=_CMAP, vmin=center - lim, vmax=center + lim, interpolation="nearest")
    K = M.shape[0]
    ticks = [_short(x) for x in labels]
    ax.set_xticks(range(K), ticks, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(K), ticks, fontsize=8)
    if annotate:
        for i in range(K):
            for j in range(K):
                strong = abs(M[i, j] - center) > 0.6 * lim
                ax.text(j, i, fmt.format(M[i, j]), ha="center", va="center", fontsize=7, color="w" if strong else "k")
    return im


def plot_preference_matrix(
    M: Any,
    labels: Optional[Sequence[Any]] = None,
    ax: Any = None,
    title: Optional[str] = None,
    *,
    kind: str = "auto",
    annotate: Optional[bool] = None,
):
    """Diverging heatmap of a K×K preference matrix; row i, column j shows ``i ≻ j``.

    Colour limits are symmetric about the neutral value (0 for scores, ½ for probabilities), so red means the
    row item wins and blue that it loses, with equal intensity for equal strength.

    Args:
        M: K×K skew-symmetric score matrix or probability matrix (numpy, torch or lists).
        labels: K item labels (truncated to 18 characters on the axes).
        ax: draw into this Axes (its figure is returned) instead of a new figure.
        title: axes title (default names the kind).
        kind: ``"auto"``, ``"score"`` or ``"prob"`` (see :func:`gpmkit.eval.cycles.as_score_matrix`).
        annotate: write the values in the cells (default: K ≤ 12).
    """
    arr = _square(M, "M")
    kind = _resolve_kind(arr, kind, "M")
    K = arr.shape[0]
    names = _labels(labels, K)
    center = 0.5 if kind == "prob" else 0.0
    lim = float(np.max(np.abs(arr - center))) if K else 0.0
    lim = lim if lim > 0 else (0.5 if kind == "prob" else 1.0)
    if ax is None:
        fig, axes = _figure(size=(max(5.0, 1.8 + 0.45 * K), max(4.2, 1.4 + 0.45 * K)))
        ax = axes[0, 0]
    else:
        fig = ax.figure
    im = _heatmap(ax, arr, names, center, lim, annotate if annotate is not None else K <= 12)
    fig.colorbar(im, ax=ax, shrink=0.8, label="P(row ≻ col)" if kind == "prob" else "s(row ≻ col)")
    ax.set_title(
        title if title is not None else ("preference probabilities" if kind == "prob" else "preference scores")
    )
    return fig


def plot_embeddings(
    v: Any,
    labels: Optional[Sequence[Any]] = None,
    groups: Optional[Sequence[Any]] = None,
    gate: Any = None,
    ax: Any = None,
    *,
    title: Optional[str] = None,
    connect: bool = True,
):
    """One subplot per 2-D block: each response as a point ``(v[2l], v[2l+1])`` on the plane of block l.

    The score of block l is ``λ_l·(x_i y_j − y_i x_j)``: λ times the signed area spanned by the two points, i.e.
    i beats j in that block when j lies counter-clockwise from i (less than half a turn). The unit circle is drawn
    (L2-normalised embeddings lie inside it). Points of the same group (e.g. the responses to one prompt) share a
    colour and are joined in order when ``connect``.

    Args:
        v: ``[N, 2k]`` embeddings (numpy or torch); a BT ``[N, 2]`` embedding ``[r, 1]`` works too.
        labels: N point labels (written next to the points when N ≤ 30).
        groups: N group keys (any hashable).
        gate: ``[k]`` gate weights (one prompt) shown in the titles; or ``[N, k]`` (the first row is shown).
        ax: one Axes (k must be 1) or a sequence of k Axes.
        title: figure title.
        connect: join the points of each group with lines.
    """
    arr = _to_numpy(v, "v")
    if arr.ndim != 2 or arr.shape[1] == 0 or arr.shape[1] % 2:
        raise ShapeError(f"v: expected [N, 2k] embeddings with an even, positive width, got shape {tuple(arr.shape)}")
    N, k = arr.shape[0], arr.shape[1] // 2
    names = _labels(labels, N)
    keys = list(groups) if groups is not None else [None] * N
    if len(keys) != N:
        raise ShapeError(f"groups: expected {N} group keys, got {len(keys)}")
    lam = None
    if gate is not None:
        lam = _to_numpy(gate, "gate")
        lam = lam[0] if lam.ndim == 2 else lam.reshape(-1)
        if lam.shape != (k,):
            raise ShapeError(f"gate: expected {k} gate weights (one per block), got shape {tuple(lam.shape)}")
    if ax is None:
        ncols = min(k, 4)
        fig, axes2 = _figure(math.ceil(k / ncols), ncols, size=(3.8 * ncols, 3.8 * math.ceil(k / ncols)))
        axes = list(axes2.reshape(-1))
        for extra in axes[k:]:
            extra.set_visible(False)
    else:
        axes = list(ax) if isinstance(ax, (list, tuple, np.ndarray)) else [ax]
        if len(axes) != k:
            raise ShapeError(f"ax: expected {k} Axes (one per 2-D block), got {len(axes)}")
        fig = axes[0].figure
    order = list(dict.fromkeys(keys))
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    colours = {g: cmap(i % 10) for i, g in enumerate(order)}
    t = np.linspace(0, 2 * np.pi, 200)
    for block in range(k):
        a = axes[block]
        x, y = arr[:, 2 * block], arr[:, 2 * block + 1]
        a.plot(np.cos(t), np.sin(t), color="0.75", lw=0.8, zorder=0)
        a.axhline(0, color="0.85", lw=0.6, zorder=0)
        a.axvline(0, color="0.85", lw=0.6, zorder=0)
        for g in order:
            idx = [i for i, key in enumerate(keys) if key == g]
            c = colours[g]
            if connect and len(idx) > 1 and g is not None:
                a.plot(x[idx], y[idx], color=c, lw=0.8, alpha=0.6)
            a.scatter(x[idx], y[idx], color=c, s=28, zorder=3, label=None if g is None else _short(str(g)))
        if N <= 30:
            for i in range(N):
                a.annotate(_short(names[i], 14), (x[i], y[i]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        r = max(1.05, float(np.max(np.abs(np.concatenate([x, y])))) * 1.1 if N else 1.05)
        a.set_xlim(-r, r)
        a.set_ylim(-r, r)
        a.set_aspect("equal")
        head = f"block {block}" + (f"  (λ = {lam[block]:.3g})" if lam is not None else "")
        a.set_title(head, fontsize=10)
        if groups is not None and block == 0 and len(order) <= 10:
            a.legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title)
    return fig


def plot_gate_weights(
    gates: Any,
    prompts: Optional[Sequence[Any]] = None,
    ax: Any = None,
    *,
    title: Optional[str] = None,
):
    """Stacked horizontal bars of the gate weights ``λ(x) [P, k]``: one bar per prompt, one colour per block.

    ``gates`` may be ``[k]`` for one prompt (e.g. from :func:`gpmkit.eval.cycles.gate_weights`).
    """
    arr = _to_numpy(gates, "gates")
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ShapeError(f"gates: expected [P, k] or [k] gate weights, got shape {tuple(arr.shape)}")
    P, k = arr.shape
    names = _labels(prompts, P, "prompts")
    if ax is None:
        fig, axes = _figure(size=(7.5, 1.8 + 0.35 * P))
        ax = axes[0, 0]
    else:
        fig = ax.figure
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    left = np.zeros(P)
    rows = np.arange(P)
    for block in range(k):
        ax.barh(rows, arr[:, block], left=left, color=cmap(block % 10), label=f"block {block}")
        left = left + arr[:, block]
    ax.set_yticks(rows, [_short(x, 44) for x in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("gate weight λ_l")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_title(title if title is not None else "gate weights per prompt")
    return fig


def plot_decomposition(
    M: Union[Any, HodgeDecomposition],
    labels: Optional[Sequence[Any]] = None,
    *,
    kind: str = "auto",
    title: Optional[str] = None,
    annotate: Optional[bool] = None,
):
    """Hodge decomposition side by side: the score matrix, its transitive (gradient) and its cyclic part.

    The three heatmaps share one symmetric colour scale; a fourth panel shows the potential (the transitive
    ranking). ``M`` is a K×K matrix (probabilities become log-odds) or a :class:`HodgeDecomposition`.
    """
    h = M if isinstance(M, HodgeDecomposition) else hodge_decomposition(as_score_matrix(M, kind=kind))
    S = h.gradient + h.cyclic
    K = S.shape[0]
    names = _labels(labels, K)
    lim = float(np.max(np.abs(S))) if K else 1.0
    lim = lim if lim > 0 else 1.0
    ann = annotate if annotate is not None else K <= 8
    side = 1.4 + 0.4 * max(K, 4)
    fig, axes = _figure(1, 4, size=(4 * side, side + 0.6))
    parts = (
        (S, "scores S"),
        (h.gradient, f"transitive part ({1 - h.cyclic_share:.0%})" if S.any() else "transitive part"),
        (h.cyclic, f"cyclic part ({h.cyclic_share:.0%})" if S.any() else "cyclic part"),
    )
    im = None
    for a, (part, head) in zip(axes[0, :3], parts):
        im = _heatmap(a, part, names, 0.0, lim, ann)
        a.set_title(head, fontsize=10)
    fig.colorbar(im, ax=list(axes[0, :3]), shrink=0.8, label="s(row ≻ col)")
    a = axes[0, 3]
    order = np.argsort(-h.potential, kind="stable")
    a.barh(np.arange(K), h.potential[order], color=["#b2182b" if x >= 0 else "#2166ac" for x in h.potential[order]])
    a.set_yticks(np.arange(K), [_short(names[i]) for i in order], fontsize=8)
    a.invert_yaxis()
    a.axvline(0, color="0.5", lw=0.6)
    a.set_xlim(-lim, lim)  # the scale of S, so a small transitive part looks small
    a.set_title("potential r (row mean of S)", fontsize=10)
    fig.suptitle(title if title is not None else f"Hodge decomposition: cyclic share {h.cyclic_share:.1%}")
    return fig


def plot_spectrum(S: Any, *, kind: str = "auto", ax: Any = None, title: Optional[str] = None, max_blocks: int = 16):
    """Bar chart of the block strengths σ_l of a skew-symmetric matrix (paper Thm 4.5), with energy shares.

    Only the ``max_blocks`` strongest blocks are drawn; the x-label gives the energy share of the rest.
    """
    from .cycles import skew_spectrum

    sp = skew_spectrum(S, kind=kind)
    n = min(sp.strengths.size, max(1, int(max_blocks)))
    if ax is None:
        fig, axes = _figure(size=(min(9.0, 2.0 + 0.45 * max(n, 4)), 3.2))
        ax = axes[0, 0]
    else:
        fig = ax.figure
    idx = np.arange(n)
    bars = ax.bar(idx, sp.strengths[:n], color="#4393c3")
    for b, share in zip(bars, sp.energy_share[:n]):
        ax.annotate(
            f"{share:.0%}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=7
        )
    ax.set_xticks(idx, [str(i) for i in idx])
    rest = float(sp.energy_share[n:].sum()) if sp.strengths.size > n else 0.0
    ax.set_xlabel("block l" + (f"  ({sp.strengths.size - n} weaker blocks: {rest:.1%} of the energy)" if rest else ""))
    ax.set_ylabel("strength σ_l")
    ax.set_title(title if title is not None else "skew spectrum (±iσ_l)")
    return fig
