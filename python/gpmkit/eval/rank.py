"""Ranking K responses to one prompt: win score, Copeland, Borda, best-of-n and the von Neumann winner.

Input is either the K preference embeddings of one prompt (``v [K, 2k]``, optional ``gate [k]``: K forward
passes, never K²) or a K×K matrix (skew-symmetric scores or probabilities, see
:func:`gpmkit.eval.cycles.as_score_matrix`).

When preferences cycle there may be no response that beats every other one (no Condorcet winner); the
**von Neumann winner** is then the right notion of "best": the mixed strategy ``p`` of the symmetric
zero-sum game with payoff ``M`` that no response beats in expectation, ``min_j (pᵀM)_j ≥ 0`` (the game value
of a skew-symmetric game is 0). It is computed exactly by a dense simplex (anti-cycling Bland's rule after
degenerate pivots, so it terminates) and verified by its duality gap.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from .. import _core
from ..exceptions import ArgumentError, ShapeError
from .cycles import _resolve_kind, _square, _to_numpy

__all__ = [
    "Ranking",
    "VonNeumannResult",
    "best_of_n",
    "borda_scores",
    "copeland_scores",
    "rank_responses",
    "von_neumann_winner",
]

METHODS = ("win_score", "copeland", "borda", "von_neumann")


# --------------------------------------------------------------------------------------------------
# von Neumann winner


@dataclass(frozen=True)
class VonNeumannResult:
    """Maximin mixed strategy of the symmetric zero-sum game with skew-symmetric payoff ``A``.

    Attributes:
        p: ``[K]`` probabilities (``p ≥ 0``, ``Σ p = 1``).
        value: guaranteed payoff ``min_j (pᵀA)_j`` (0 up to rounding for an optimal p; the game value is 0).
        gap: duality gap ``max_i (A p)_i − min_j (pᵀA)_j ≥ 0`` (0 iff p is optimal; ~1e-15 relative).
        iterations: simplex pivots.
        payoff: the payoff matrix ``A`` used (the score matrix, or ``P − ½`` for probabilities).
    """

    p: np.ndarray
    value: float
    gap: float
    iterations: int
    payoff: np.ndarray

    @property
    def support(self) -> np.ndarray:
        """Indices with ``p_i > 1e-9``, by decreasing probability."""
        idx = np.flatnonzero(self.p > 1e-9)
        return idx[np.argsort(-self.p[idx], kind="stable")]


def _payoff(M: Any, kind: str) -> np.ndarray:
    arr = _square(M, "M")
    if _resolve_kind(arr, kind, "M") == "prob":
        arr = arr - 0.5
    return 0.5 * (arr - arr.T)


def von_neumann_winner(M: Any, *, kind: str = "auto", max_iter: Optional[int] = None) -> VonNeumannResult:
    """Von Neumann winner (maximin mixed strategy) of the game with payoff ``M``.

    Payoff: a skew-symmetric score matrix is used as is; a probability matrix as ``P − ½`` (the usual choice
    for dueling-bandit von Neumann winners; the winner depends on the payoff's magnitudes, not only signs).
    The strategy solves ``max_p min_j (pᵀA)_j`` over the simplex. With ``A`` normalised to ``max|A| = 1`` and
    ``B = A + 2 > 0``, the LP ``max 1ᵀy s.t. B y ≤ 1, y ≥ 0`` gives the column player's minimax strategy
    ``q = y / 1ᵀy``; for a skew-symmetric game that is also the row player's maximin strategy. Solved exactly
    (up to floating point) by a dense tableau simplex in the Rust core (:func:`gpmkit._core.maximin_strategy`:
    Dantzig's rule, Bland's rule after stalling, so it terminates); ``gap`` certifies the result.

    Examples: rock–paper–scissors → uniform; a Condorcet winner (beats every other response) → that response
    with probability 1; weighted RPS ``[[0, a, −b], [−a, 0, c], [b, −c, 0]]`` → ``(c, b, a)/(a + b + c)``.

    Raises:
        ShapeError / ArgumentError: not a square skew-symmetric score or probability matrix, or K = 0.
        ArgumentError: non-finite payoffs, a bad ``max_iter``, or no optimum within ``max_iter`` pivots.
    """
    A = _payoff(M, kind)
    K = A.shape[0]
    if K == 0:
        raise ShapeError("M: expected at least one response (K ≥ 1), got a 0×0 matrix")
    if max_iter is not None and not (isinstance(max_iter, (int, np.integer)) and max_iter >= 0):
        raise ArgumentError(f"max_iter: expected an integer ≥ 0 or None, got {max_iter!r}")
    p = np.empty(K)  # an all-zero payoff (every strategy optimal) gives the uniform strategy, 0 pivots
    it = _core.maximin_strategy(
        np.ascontiguousarray(A, dtype=np.float64), int(max_iter) if max_iter is not None else 50 * (K + 10) ** 2, p
    )
    value = float(np.min(p @ A))
    gap = float(np.max(A @ p) - value)
    return VonNeumannResult(p=p, value=value, gap=max(gap, 0.0), iterations=it, payoff=A)


# --------------------------------------------------------------------------------------------------
# rankings


def _score_matrix_and_win(
    v: Any, M: Any, gate: Any, weights: Any, kind: str
) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """``(S or P−½-free score matrix, win scores, P or None)`` from embeddings or a matrix."""
    if (v is None) == (M is None):
        raise ArgumentError("v, M: expected exactly one of embeddings v [K, 2k] or a K×K matrix M")
    if v is not None:
        import torch

        from .. import functional as F

        vt = torch.as_tensor(_to_numpy(v, "v"))
        if vt.dim() != 2:
            raise ShapeError(f"v: expected [K, 2k] embeddings of one prompt, got shape {tuple(vt.shape)}")
        gt = None if gate is None else torch.as_tensor(_to_numpy(gate, "gate"))
        wt = None if weights is None else torch.as_tensor(_to_numpy(weights, "weights"))
        S = F.preference_matrix(vt, gt).numpy()
        win = F.win_score(vt, wt, gt).numpy()
        return 0.5 * (S - S.T), win, None
    arr = _square(M, "M")
    K = arr.shape[0]
    prob = _resolve_kind(arr, kind, "M") == "prob"
    S = arr - 0.5 if prob else arr
    S = 0.5 * (S - S.T)
    w = np.full(K, 1.0 / K) if weights is None else _to_numpy(weights, "weights")
    if w.shape != (K,):
        raise ShapeError(f"weights: expected shape ({K},), got {tuple(w.shape)}")
    return S, S @ w, (arr if prob else None)


def copeland_scores(M: Any, *, kind: str = "auto", tie_tol: float = 0.0) -> np.ndarray:
    """Copeland score ``#wins + ½·#ties`` over the other K − 1 responses (``|S[i, j]| ≤ tie_tol`` is a tie)."""
    S, _, _ = _score_matrix_and_win(None, M, None, None, kind)
    K = S.shape[0]
    wins = (S > tie_tol).sum(axis=1)
    ties = (np.abs(S) <= tie_tol).sum(axis=1) - 1  # minus the diagonal
    return wins + 0.5 * ties if K else np.zeros(0)


def borda_scores(M: Any, *, kind: str = "auto", tau: float = 0.1) -> np.ndarray:
    """Borda score ``Σ_{j≠i} P(i ≻ j)``: expected number of pairwise wins.

    ``P`` is the given probability matrix, or ``σ(S/τ)`` for a score matrix (τ = 0.1, the GPM default; use
    ``tau=1`` for BT rewards).
    """
    if not (isinstance(tau, (int, float)) and tau > 0 and math.isfinite(tau)):
        raise ArgumentError(f"tau: expected a finite number > 0, got {tau!r}")
    S, _, P = _score_matrix_and_win(None, M, None, None, kind)
    if P is None:
        P = 1.0 / (1.0 + np.exp(-np.clip(S / tau, -700, 700)))
    return P.sum(axis=1) - np.diag(P)


def _ranks(scores: np.ndarray) -> np.ndarray:
    """1 = best; ties broken by index (stable)."""
    order = np.argsort(-scores, kind="stable")
    ranks = np.empty(len(scores), dtype=np.int64)
    ranks[order] = np.arange(1, len(scores) + 1)
    return ranks


@dataclass(frozen=True)
class Ranking:
    """Scores and ranks (1 = best) of K responses under each method; prints as a table.

    Attributes:
        labels: K labels. matrix: the K×K skew-symmetric score matrix (``P − ½`` for probability input).
        win_score: population win score ``ŝ_i`` (Eq. 5.2, uniform or given weights).
        copeland: ``#wins + ½·#ties``. borda: ``Σ_j P(i ≻ j)``.
        von_neumann: :class:`VonNeumannResult` (its ``p`` is the score of method ``"von_neumann"``).
    """

    labels: list[str]
    matrix: np.ndarray
    win_score: np.ndarray
    copeland: np.ndarray
    borda: np.ndarray
    von_neumann: VonNeumannResult

    def scores(self, method: str) -> np.ndarray:
        """Scores of ``method`` (one of ``"win_score"``, ``"copeland"``, ``"borda"``, ``"von_neumann"``)."""
        if method not in METHODS:
            raise ArgumentError(f"method: expected one of {METHODS}, got {method!r}")
        return self.von_neumann.p if method == "von_neumann" else getattr(self, method)

    def ranks(self, method: str = "win_score") -> np.ndarray:
        """Ranks (1 = best, ties by index) under ``method``."""
        return _ranks(self.scores(method))

    def best(self, method: str = "win_score") -> int:
        """Index of the best response under ``method``."""
        return int(np.argmax(self.scores(method))) if len(self.labels) else -1

    @property
    def condorcet_winner(self) -> Optional[int]:
        """The response that beats every other one (``S[i, j] > 0`` for all j ≠ i), or ``None``."""
        K = len(self.labels)
        for i in range(K):
            if all(self.matrix[i, j] > 0 for j in range(K) if j != i):
                return i
        return None

    def to_dict(self) -> dict:
        """JSON-serialisable scores, ranks and the von Neumann mixture."""
        return {
            "labels": list(self.labels),
            "win_score": [float(x) for x in self.win_score],
            "copeland": [float(x) for x in self.copeland],
            "borda": [float(x) for x in self.borda],
            "von_neumann": [float(x) for x in self.von_neumann.p],
            "ranks": {m: [int(r) for r in self.ranks(m)] for m in METHODS},
            "condorcet_winner": self.condorcet_winner,
            "von_neumann_gap": self.von_neumann.gap,
        }

    def _rows(self) -> list[list[str]]:
        order = np.argsort(-self.win_score, kind="stable")
        ranks = {m: self.ranks(m) for m in METHODS[:3]}
        return [
            [
                self.labels[i],
                f"{self.win_score[i]:.4g}",
                str(ranks["win_score"][i]),
                f"{self.copeland[i]:g}",
                str(ranks["copeland"][i]),
                f"{self.borda[i]:.3f}",
                str(ranks["borda"][i]),
                f"{self.von_neumann.p[i]:.3f}",
            ]
            for i in order
        ]

    _HEAD = ("response", "win score", "rank", "Copeland", "rank", "Borda", "rank", "von Neumann p")

    def to_text(self) -> str:
        """Plain-text table sorted by win score (what the CLI prints)."""
        rows = [[r[0][:40], *r[1:]] for r in self._rows()]
        widths = [max(len(h), *(len(r[c]) for r in rows)) if rows else len(h) for c, h in enumerate(self._HEAD)]
        fmt = lambda cells: "  ".join(  # noqa: E731
            c.ljust(w) if n == 0 else c.rjust(w) for n, (c, w) in enumerate(zip(cells, widths))
        )
        cw = self.condorcet_winner
        lines = [fmt(self._HEAD), *(fmt(r) for r in rows)]
        lines.append(f"Condorcet winner: {self.labels[cw] if cw is not None else 'none (preferences cycle)'}")
        mix = ", ".join(f"{self.labels[i][:20]}: {self.von_neumann.p[i]:.3f}" for i in self.von_neumann.support)
        lines.append(f"von Neumann winner: {mix} (duality gap {self.von_neumann.gap:.1e})")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

    def _repr_html_(self) -> str:
        esc = html.escape
        head = "".join(f"<th>{esc(h)}</th>" for h in self._HEAD)
        body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in self._rows())
        cw = self.condorcet_winner
        note = esc(self.labels[cw]) if cw is not None else "none (preferences cycle)"
        return (
            f"<div><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            f"<p>Condorcet winner: {note}; von Neumann duality gap {self.von_neumann.gap:.1e}</p></div>"
        )


def rank_responses(
    v: Any = None,
    *,
    M: Any = None,
    gate: Any = None,
    weights: Any = None,
    labels: Optional[Sequence[Any]] = None,
    kind: str = "auto",
    tau: float = 0.1,
    tie_tol: float = 0.0,
) -> Ranking:
    """Rank the K responses of one prompt by win score, Copeland, Borda and the von Neumann winner.

    Args:
        v: ``[K, 2k]`` embeddings of the responses (numpy or torch); the matrix is ``preference_matrix(v, gate)``
            and the win score ``gpmkit.functional.win_score(v, weights, gate)`` (O(K·d)).
        M: a K×K score or probability matrix instead of ``v`` (win score = ``M @ w`` on scores / ``P − ½``).
        gate: ``[k]`` gate of the prompt (with ``v``). weights: ``[K]`` population weights (default uniform).
        labels: K labels (default ``"0" … "K-1"``).
        kind: matrix kind for ``M`` (``"auto"``, ``"score"``, ``"prob"``).
        tau: temperature for Borda on scores (``P = σ(s/τ)``).
        tie_tol: Copeland tie threshold.
    """
    S, win, P = _score_matrix_and_win(v, M, gate, weights, kind)
    K = S.shape[0]
    if K == 0:
        raise ShapeError("v/M: expected at least one response, got K = 0")
    names = [str(i) for i in range(K)] if labels is None else [str(x) for x in labels]
    if len(names) != K:
        raise ShapeError(f"labels: expected {K} labels, got {len(names)}")
    src = P if P is not None else S
    src_kind = "prob" if P is not None else "score"
    return Ranking(
        labels=names,
        matrix=S,
        win_score=np.asarray(win, dtype=np.float64),
        copeland=copeland_scores(src, kind=src_kind, tie_tol=tie_tol),
        borda=borda_scores(src, kind=src_kind, tau=tau),
        von_neumann=von_neumann_winner(src, kind=src_kind),
    )


def best_of_n(
    v: Any = None,
    *,
    M: Any = None,
    gate: Any = None,
    method: str = "win_score",
    rng: Any = None,
    **kwargs: Any,
) -> int:
    """Index of the best of N responses under ``method`` (``"win_score"``, ``"copeland"``, ``"borda"``,
    ``"von_neumann"``).

    For ``"von_neumann"`` the response is **sampled** from the mixed strategy when ``rng`` (a
    ``numpy.random.Generator`` or seed) is given — the game-theoretically sound choice under cycles — and is
    otherwise the most probable response of the mixture. Other keyword arguments go to :func:`rank_responses`.
    """
    if method not in METHODS:
        raise ArgumentError(f"method: expected one of {METHODS}, got {method!r}")
    ranking = rank_responses(v, M=M, gate=gate, **kwargs)
    if method == "von_neumann" and rng is not None:
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        return int(gen.choice(len(ranking.labels), p=ranking.von_neumann.p))
    return ranking.best(method)
