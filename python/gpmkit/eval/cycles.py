"""Cyclicity diagnostics of a preference matrix: cyclic triads, Hodge decomposition, skew spectrum, gates.

Conventions (DESIGN §1): a **score matrix** ``S`` is K×K skew-symmetric with ``S[i, j] = s(y_i ≻ y_j)`` (``> 0``
means i is preferred to j); a **probability matrix** ``P`` has ``P[i, j] = P(y_i ≻ y_j)``, ``P + Pᵀ = 1`` and
diagonal ½ (``> ½`` means i is preferred). Every function takes either kind (``kind="auto"`` tells them apart)
as a numpy array, a torch tensor (any device/dtype; copied to float64 on the CPU) or nested lists.

Only numpy is needed; torch is imported only when a torch tensor or a model is passed.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from ..exceptions import ArgumentError, ShapeError

__all__ = [
    "CyclicityReport",
    "HodgeDecomposition",
    "SkewSpectrum",
    "as_score_matrix",
    "cyclic_triad_count",
    "cyclic_triad_fraction",
    "cyclicity_report",
    "embed_responses",
    "gate_weights",
    "hodge_decomposition",
    "skew_spectrum",
]

_KINDS = ("auto", "score", "prob")
_PROB_EPS = 1e-6


# --------------------------------------------------------------------------------------------------
# input handling


def _to_numpy(m: Any, name: str) -> np.ndarray:
    """A float64 numpy copy of a numpy array, torch tensor or nested list (no torch import for numpy input)."""
    if type(m).__module__.startswith("torch"):
        m = m.detach().to("cpu").double().numpy()
    try:
        arr = np.array(m, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ArgumentError(f"{name}: expected a numeric K×K array or tensor, got {type(m).__name__} ({exc})") from None
    return arr


def _square(m: Any, name: str) -> np.ndarray:
    arr = _to_numpy(m, name)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ShapeError(f"{name}: expected a square K×K matrix, got shape {tuple(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        raise ArgumentError(f"{name}: expected finite values, got NaN or inf")
    return arr


def _tol(arr: np.ndarray) -> float:
    scale = float(np.max(np.abs(arr))) if arr.size else 0.0
    return 1e-6 * max(1.0, scale)


def _is_prob(arr: np.ndarray) -> bool:
    if arr.size == 0:
        return False
    return bool(
        np.all(arr >= -1e-9)
        and np.all(arr <= 1 + 1e-9)
        and np.allclose(np.diag(arr), 0.5, atol=1e-6)
        and np.allclose(arr + arr.T, 1.0, atol=1e-6)
    )


def _is_skew(arr: np.ndarray) -> bool:
    return bool(np.all(np.abs(arr + arr.T) <= _tol(arr)))


def _resolve_kind(arr: np.ndarray, kind: str, name: str) -> str:
    if kind not in _KINDS:
        raise ArgumentError(f"kind: expected one of {_KINDS}, got {kind!r}")
    if kind == "auto":
        if _is_prob(arr):
            return "prob"
        if _is_skew(arr):
            return "score"
        raise ArgumentError(
            f"{name}: expected a skew-symmetric score matrix (M = −Mᵀ) or a probability matrix "
            f"(diagonal ½, P + Pᵀ = 1), got neither (max |M + Mᵀ| = {np.max(np.abs(arr + arr.T)):.3g}, "
            f"diagonal range [{np.min(np.diag(arr)):.3g}, {np.max(np.diag(arr)):.3g}])"
        )
    if kind == "prob" and not _is_prob(arr):
        raise ArgumentError(f"{name}: kind='prob' expects entries in [0, 1], diagonal ½ and P + Pᵀ = 1")
    if kind == "score" and not _is_skew(arr):
        raise ArgumentError(
            f"{name}: kind='score' expects a skew-symmetric matrix, "
            f"got max |M + Mᵀ| = {np.max(np.abs(arr + arr.T)):.3g}"
        )
    return kind


def as_score_matrix(M: Any, *, kind: str = "auto", name: str = "M") -> np.ndarray:
    """Float64 skew-symmetric score matrix of ``M``.

    A score matrix is returned as ``(M − Mᵀ)/2`` (exactly skew-symmetric). A probability matrix becomes its
    log-odds ``logit(P)`` (clipped to ``[1e-6, 1 − 1e-6]``), which is skew-symmetric and has the same signs as
    ``P − ½``; for a GPM ``logit σ(s/τ) = s/τ``, so every diagnostic is the same for ``P`` and ``S`` up to scale.

    Raises:
        ShapeError: ``M`` is not square. ArgumentError: not finite, unknown ``kind``, or not of the given kind.
    """
    arr = _square(M, name)
    if _resolve_kind(arr, kind, name) == "prob":
        p = np.clip(arr, _PROB_EPS, 1 - _PROB_EPS)
        arr = np.log(p) - np.log1p(-p)
    return 0.5 * (arr - arr.T)


# --------------------------------------------------------------------------------------------------
# cyclic triads


def _edges(S: np.ndarray, tie_tol: float) -> np.ndarray:
    if tie_tol < 0 or not math.isfinite(tie_tol):
        raise ArgumentError(f"tie_tol: expected a finite number ≥ 0, got {tie_tol!r}")
    return (S > tie_tol).astype(np.int64)


def cyclic_triad_count(M: Any, *, kind: str = "auto", tie_tol: float = 0.0, method: str = "auto") -> int:
    """Number of unordered triads {i, j, l} that form a directed 3-cycle (i ≻ j ≻ l ≻ i or the reverse).

    ``i → j`` is an edge iff ``S[i, j] > tie_tol`` (``P[i, j] − ½`` has the same sign as the log-odds used
    for probability input); a pair with ``|S[i, j]| ≤ tie_tol`` is a **tie: no edge**, so a triad with a tie is
    never cyclic.

    Methods:
        ``"exact"``: ``trace(A³)/3`` for the 0/1 adjacency A — each cyclic triad is exactly one directed
        3-cycle, which ``trace(A³)`` counts three times (A has no 2-cycles since S is skew). O(K³) integer
        matmul; valid with ties.
        ``"kendall"``: the Kendall–Babington Smith formula for tournaments,
        ``C(K, 3) − Σ_i C(d_i, 2)`` with out-degrees ``d_i``. O(K²); requires no ties (raises otherwise).
        ``"auto"`` (default): ``"kendall"`` when there are no ties, else ``"exact"``. Both give the same
        integer on tournaments.
    """
    if method not in ("auto", "exact", "kendall"):
        raise ArgumentError(f"method: expected 'auto', 'exact' or 'kendall', got {method!r}")
    S = as_score_matrix(M, kind=kind)
    K = S.shape[0]
    if K < 3:
        return 0
    A = _edges(S, tie_tol)
    off = ~np.eye(K, dtype=bool)
    tournament = bool(np.all((A + A.T)[off] == 1))
    if method == "kendall" and not tournament:
        raise ArgumentError("method: 'kendall' needs a tournament (no ties); use method='exact' or 'auto'")
    if method == "kendall" or (method == "auto" and tournament):
        d = A.sum(axis=1)
        return int(math.comb(K, 3) - int(np.sum(d * (d - 1) // 2)))
    return int(np.trace(A @ A @ A) // 3)


def cyclic_triad_fraction(M: Any, *, kind: str = "auto", tie_tol: float = 0.0, method: str = "auto") -> float:
    """Fraction of the ``C(K, 3)`` triads of ``M`` that are cyclic (0.0 for K < 3).

    See :func:`cyclic_triad_count` for edges, ties (no edge) and the two exact methods. A transitive
    (Bradley–Terry-like) matrix gives 0; the maximum for a tournament is ``(K+1)/(4(K−2))`` for odd K
    (regular tournaments), e.g. 1.0 for rock–paper–scissors (K = 3).

    Args:
        M: K×K skew-symmetric score matrix or probability matrix (numpy, torch or lists).
        kind: ``"auto"`` (probability iff diagonal ≈ ½ and ``P + Pᵀ ≈ 1``), ``"score"`` or ``"prob"``.
        tie_tol: ``|S[i, j]| ≤ tie_tol`` counts as a tie (for probabilities, on the log-odds scale).
        method: ``"auto"``, ``"exact"`` or ``"kendall"``.
    """
    S = as_score_matrix(M, kind=kind)
    K = S.shape[0]
    if K < 3:
        return 0.0
    return cyclic_triad_count(S, kind="score", tie_tol=tie_tol, method=method) / math.comb(K, 3)


# --------------------------------------------------------------------------------------------------
# Hodge decomposition


@dataclass(frozen=True)
class HodgeDecomposition:
    """``S = gradient + cyclic`` on the complete graph (HodgeRank; no harmonic part on a complete graph).

    Attributes:
        potential: ``r [K]``, ``Σ r = 0``, the least-squares fit ``r_i − r_j ≈ S[i, j]``; equals the row mean
            of S, i.e. the uniform population win score ``ŝ_i`` of DESIGN §1.
        gradient: ``G[i, j] = r_i − r_j`` (the transitive part).
        cyclic: ``C = S − G`` (divergence-free: every row of C sums to 0).
        cyclic_share: ``‖C‖² / ‖S‖²`` in [0, 1] (0 for S = 0); ``‖S‖² = ‖G‖² + ‖C‖²`` exactly.
    """

    potential: np.ndarray
    gradient: np.ndarray
    cyclic: np.ndarray
    cyclic_share: float

    @property
    def transitive_share(self) -> float:
        """``1 − cyclic_share`` (0 for S = 0)."""
        total = float(np.sum(self.gradient**2) + np.sum(self.cyclic**2))
        return 0.0 if total == 0 else 1.0 - self.cyclic_share


def hodge_decomposition(S: Any, *, kind: str = "auto") -> HodgeDecomposition:
    """Split a skew-symmetric score matrix into its transitive (gradient) and cyclic parts.

    On the complete graph the least-squares potential solves ``L r = div S`` with ``L = K·I − 11ᵀ``, whose
    solution with ``Σ r = 0`` is ``r_i = (1/K) Σ_j S[i, j]``. The two parts are orthogonal in the Frobenius
    inner product, so ``cyclic_share = ‖S − G‖² / ‖S‖²`` is the fraction of the preference "energy" that no
    ranking can explain. A probability matrix is first converted to log-odds (:func:`as_score_matrix`).
    """
    S = as_score_matrix(S, kind=kind, name="S")
    K = S.shape[0]
    r = S.mean(axis=1) if K else np.zeros(0)
    G = r[:, None] - r[None, :]
    C = S - G
    total = float(np.sum(S**2))
    share = 0.0 if total == 0 else float(np.sum(C**2) / total)
    return HodgeDecomposition(potential=r, gradient=G, cyclic=C, cyclic_share=min(1.0, max(0.0, share)))


# --------------------------------------------------------------------------------------------------
# spectrum (paper Thm 4.5)


@dataclass(frozen=True)
class SkewSpectrum:
    """Real canonical form of a skew-symmetric matrix: ``S = Σ_l σ_l (b_l a_lᵀ − a_l b_lᵀ)``.

    The eigenvalues of S are ``±iσ_l`` with ``σ_1 ≥ σ_2 ≥ … ≥ 0`` (``m = ⌊K/2⌋`` pairs; odd K adds one 0).
    Block l is a 2-D plane spanned by orthonormal ``a_l, b_l``; in DESIGN §1's coordinates
    ``coords[i, l] = (b_l[i], a_l[i])`` so that ``preference_matrix(coords.reshape(K, 2m), gate=σ) == S``
    (paper Thm 4.5: the "eigenvalue scale" is σ and the "eigenvector embedding" is the plane coordinates).

    Attributes:
        strengths: ``σ [m]`` descending (the block strengths).
        coords: ``[K, m, 2]`` per-block plane coordinates of each item.
    """

    strengths: np.ndarray
    coords: np.ndarray

    @property
    def energy_share(self) -> np.ndarray:
        """``σ_l² / Σ σ²`` per block (``‖S‖_F² = 2 Σ σ_l²``); zeros for S = 0."""
        total = float(np.sum(self.strengths**2))
        return np.zeros_like(self.strengths) if total == 0 else self.strengths**2 / total

    def rank(self, rtol: float = 1e-8) -> int:
        """Number of blocks with ``σ_l > rtol · σ_1`` (the matrix rank is twice this)."""
        if self.strengths.size == 0 or self.strengths[0] == 0:
            return 0
        return int(np.sum(self.strengths > rtol * self.strengths[0]))

    def embeddings(self, blocks: Optional[int] = None, gated: bool = True) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """``(v [K, 2b], gate [b])`` of the first ``b`` blocks (all by default) reproducing S (exactly for all).

        ``gated=True`` returns the unit-plane coordinates and ``gate = σ``; ``gated=False`` folds ``√σ`` into v
        and returns ``gate = None``.
        """
        b = self.strengths.size if blocks is None else int(blocks)
        if not 0 <= b <= self.strengths.size:
            raise ArgumentError(f"blocks: expected 0 ≤ blocks ≤ {self.strengths.size}, got {blocks!r}")
        c = self.coords[:, :b, :]
        if gated:
            return c.reshape(c.shape[0], 2 * b), self.strengths[:b].copy()
        return (c * np.sqrt(self.strengths[:b])[None, :, None]).reshape(c.shape[0], 2 * b), None


def skew_spectrum(S: Any, *, kind: str = "auto") -> SkewSpectrum:
    """Block strengths ``σ_l`` and planes of a skew-symmetric score matrix (paper Thm 4.5).

    Computed with a Hermitian eigendecomposition of ``iS`` (eigenvalues ``±σ_l``): an eigenvector
    ``w = a + ib`` of ``+σ`` gives ``S a = σ b``, ``S b = −σ a`` with ``a ⟂ b``, ``‖a‖ = ‖b‖ = 1/√2``.
    """
    S = as_score_matrix(S, kind=kind, name="S")
    K = S.shape[0]
    m = K // 2
    if m == 0:
        return SkewSpectrum(strengths=np.zeros(0), coords=np.zeros((K, 0, 2)))
    w, U = np.linalg.eigh(1j * S)
    order = np.argsort(w)[::-1][:m]
    sig = np.clip(w[order].real, 0.0, None)
    vecs = U[:, order] * math.sqrt(2.0)
    a, b = vecs.real, vecs.imag
    # S = Σ σ (b aᵀ − a bᵀ) → S[i,j] = Σ σ (b_i a_j − a_i b_j) = Σ σ (x_i y_j − y_i x_j) with (x, y) = (b, a)
    coords = np.stack([b, a], axis=-1)
    return SkewSpectrum(strengths=sig, coords=coords)


# --------------------------------------------------------------------------------------------------
# gate weights


def gate_weights(
    model: Any,
    prompts: Any,
    tokenizer: Any = None,
    *,
    batch_size: int = 8,
    bf16: bool = False,
) -> np.ndarray:
    """Gate weights ``λ(x) [P, k]`` of a :class:`gpmkit.GPMModel` for P prompts (one forward pass each).

    Args:
        model: a non-BT ``GPMModel``. Without a gate every ``λ_l = 1`` (DESIGN §1) and no pass is run.
        prompts: a prompt (string or chat messages) or a list of them.
        tokenizer: a chat tokenizer (default ``model.tokenizer``).

    The gate is read at the last prompt token (:meth:`GPMModel.embed`), so each prompt is templated with an
    empty assistant turn; the response does not affect λ for causal backbones.
    """
    from ..models import GPMModel, _is_messages

    if not isinstance(model, GPMModel):
        raise ArgumentError(f"model: expected a gpmkit.GPMModel, got {type(model).__name__}")
    if model.config.bt:
        raise ArgumentError("model: a Bradley–Terry (bt=True) model has no 2-D blocks and no gate")
    if isinstance(prompts, str) or _is_messages(prompts):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ArgumentError("prompts: expected at least one prompt, got an empty list")
    k = model.config.value_head_dim // 2
    if not model.has_gate:
        return np.ones((len(prompts), k))
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    if tokenizer is None:
        raise ArgumentError("tokenizer: required (pass it, or give it to from_backbone/from_pretrained)")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ArgumentError(f"batch_size: expected a positive int, got {batch_size!r}")
    _, gate = model._embed_texts([(p, "") for p in prompts], tokenizer, batch_size, bf16)
    return gate.double().cpu().numpy()


def embed_responses(
    model: Any,
    prompt: Any,
    responses: Sequence[str],
    tokenizer: Any = None,
    *,
    batch_size: int = 8,
    bf16: bool = False,
) -> tuple[Any, Any]:
    """``(v [K, 2k], gate [k] or None)`` of K responses to one prompt: K forward passes, float64 CPU tensors.

    The input of :func:`cyclicity_report`, :func:`gpmkit.eval.rank.rank_responses` and the plots. A BT model gives
    ``v = [r, 1]`` (k = 1, ``s = r_i − r_j``). Same templating as :meth:`GPMModel.score`.
    """
    from ..models import GPMModel

    if not isinstance(model, GPMModel):
        raise ArgumentError(f"model: expected a gpmkit.GPMModel, got {type(model).__name__}")
    if isinstance(responses, str) or not responses or not all(isinstance(r, str) for r in responses):
        raise ArgumentError(f"responses: expected a non-empty list of strings, got {responses!r:.80}")
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    if tokenizer is None:
        raise ArgumentError("tokenizer: required (pass it, or give it to from_backbone/from_pretrained)")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ArgumentError(f"batch_size: expected a positive int, got {batch_size!r}")
    v, gate = model._embed_texts([(prompt, r) for r in responses], tokenizer, batch_size, bf16)
    return v.double().cpu(), (None if gate is None else gate[0].double().cpu())


# --------------------------------------------------------------------------------------------------
# report


def _fmt(x: float) -> str:
    return f"{x:.4g}"


@dataclass
class CyclicityReport:
    """All cyclicity diagnostics of one K×K preference matrix; prints as a table, renders in Jupyter.

    Attributes:
        scores: the float64 skew-symmetric score matrix analysed (log-odds for probability input).
        labels: K item labels.
        cyclic_triads / total_triads / triad_fraction: see :func:`cyclic_triad_fraction`.
        hodge: :class:`HodgeDecomposition`. spectrum: :class:`SkewSpectrum`.
        gate: optional gate weights ``[k]`` of the prompt (from a GPM).
    """

    scores: np.ndarray
    labels: list[str]
    cyclic_triads: int
    total_triads: int
    triad_fraction: float
    hodge: HodgeDecomposition
    spectrum: SkewSpectrum
    gate: Optional[np.ndarray] = None
    extra: dict = field(default_factory=dict)

    @property
    def cyclic_share(self) -> float:
        """Hodge cyclic share of the energy."""
        return self.hodge.cyclic_share

    def to_dict(self) -> dict:
        """JSON-serialisable summary (no matrices except the potential and block strengths)."""
        out = {
            "K": len(self.labels),
            "labels": list(self.labels),
            "cyclic_triads": self.cyclic_triads,
            "total_triads": self.total_triads,
            "cyclic_triad_fraction": self.triad_fraction,
            "cyclic_share": self.hodge.cyclic_share,
            "potential": [float(x) for x in self.hodge.potential],
            "block_strengths": [float(x) for x in self.spectrum.strengths],
            "block_energy_share": [float(x) for x in self.spectrum.energy_share],
        }
        if self.gate is not None:
            out["gate"] = [float(x) for x in np.asarray(self.gate).reshape(-1)]
        return out

    def _summary_rows(self) -> list[tuple[str, str]]:
        rows = [
            ("items K", str(len(self.labels))),
            ("cyclic triads", f"{self.cyclic_triads} / {self.total_triads} ({self.triad_fraction:.1%})"),
            ("Hodge cyclic share", f"{self.hodge.cyclic_share:.1%}"),
            ("block strengths σ", ", ".join(_fmt(x) for x in self.spectrum.strengths) or "-"),
            ("block energy share", ", ".join(f"{x:.1%}" for x in self.spectrum.energy_share) or "-"),
        ]
        if self.gate is not None:
            rows.append(("gate λ", ", ".join(_fmt(x) for x in np.asarray(self.gate).reshape(-1))))
        return rows

    def _item_rows(self) -> list[tuple[str, str, str]]:
        order = np.argsort(-self.hodge.potential, kind="stable")
        return [(str(rank + 1), self.labels[i], _fmt(self.hodge.potential[i])) for rank, i in enumerate(order)]

    def to_text(self) -> str:
        """Plain-text table (what the CLI prints)."""
        rows = self._summary_rows()
        w = max(len(k) for k, _ in rows)
        lines = ["Cyclicity report", *(f"  {k.ljust(w)}  {v}" for k, v in rows), "", "  rank  potential  item"]
        for rank, label, pot in self._item_rows():
            lines.append(f"  {rank:>4}  {pot:>9}  {label}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

    def _repr_html_(self) -> str:
        esc = html.escape
        summary = "".join(
            f"<tr><th style='text-align:left'>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in self._summary_rows()
        )
        items = "".join(
            f"<tr><td>{r}</td><td>{esc(label)}</td><td>{esc(p)}</td></tr>" for r, label, p in self._item_rows()
        )
        return (
            "<div><b>Cyclicity report</b><table>" + summary + "</table>"
            "<table><thead><tr><th>rank</th><th>item</th><th>potential (win score)</th></tr></thead><tbody>"
            + items
            + "</tbody></table></div>"
        )


def cyclicity_report(
    M: Any = None,
    *,
    v: Any = None,
    gate: Any = None,
    labels: Optional[Sequence[str]] = None,
    kind: str = "auto",
    tie_tol: float = 0.0,
) -> CyclicityReport:
    """Cyclic triads, Hodge decomposition and skew spectrum of a preference matrix, as one report.

    Give either ``M`` (K×K score or probability matrix) or GPM embeddings ``v [K, 2k]`` (optional ``gate [k]``),
    from which ``M = preference_matrix(v, gate)`` is computed with :mod:`gpmkit.functional` (K embeddings, no
    K² forward passes).
    """
    if (M is None) == (v is None):
        raise ArgumentError("M, v: expected exactly one of a K×K matrix M or embeddings v [K, 2k]")
    gate_arr = None
    if v is not None:
        import torch

        from .. import functional as F

        vt = torch.as_tensor(_to_numpy(v, "v"))
        gt = None if gate is None else torch.as_tensor(_to_numpy(gate, "gate"))
        M = F.preference_matrix(vt, gt).detach().numpy()
        kind = "score"
        gate_arr = None if gt is None else gt.numpy().reshape(-1)
    elif gate is not None:
        gate_arr = _to_numpy(gate, "gate").reshape(-1)
    S = as_score_matrix(M, kind=kind)
    K = S.shape[0]
    if labels is None:
        labels = [str(i) for i in range(K)]
    labels = [str(x) for x in labels]
    if len(labels) != K:
        raise ShapeError(f"labels: expected {K} labels (one per item), got {len(labels)}")
    count = cyclic_triad_count(S, kind="score", tie_tol=tie_tol)
    total = math.comb(K, 3)
    return CyclicityReport(
        scores=S,
        labels=labels,
        cyclic_triads=count,
        total_triads=total,
        triad_fraction=count / total if total else 0.0,
        hodge=hodge_decomposition(S, kind="score"),
        spectrum=skew_spectrum(S, kind="score"),
        gate=gate_arr,
    )
