"""Evaluation and analysis of preference models (issue 8).

Submodules (imported lazily; ``import gpmkit.eval`` imports neither torch nor matplotlib):

- :mod:`gpmkit.eval.cycles`: cyclic triads, Hodge decomposition, skew spectrum (paper Thm 4.5), gate weights,
  :func:`cyclicity_report`.
- :mod:`gpmkit.eval.rank`: win-score / Copeland / Borda rankings, best-of-n, von Neumann winner.
- :mod:`gpmkit.eval.rewardbench`: RewardBench (v1 section scores, v2 best-of-4) for GPM, BT and scalar models.
- :mod:`gpmkit.eval.plots`: matplotlib figures (heatmap, 2-D block embeddings, gates, decomposition).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    # cycles
    "CyclicityReport": "cycles",
    "HodgeDecomposition": "cycles",
    "SkewSpectrum": "cycles",
    "as_score_matrix": "cycles",
    "cyclic_triad_count": "cycles",
    "cyclic_triad_fraction": "cycles",
    "cyclicity_report": "cycles",
    "embed_responses": "cycles",
    "gate_weights": "cycles",
    "hodge_decomposition": "cycles",
    "skew_spectrum": "cycles",
    # rank
    "Ranking": "rank",
    "VonNeumannResult": "rank",
    "best_of_n": "rank",
    "borda_scores": "rank",
    "copeland_scores": "rank",
    "rank_responses": "rank",
    "von_neumann_winner": "rank",
    # rewardbench
    "EXAMPLE_COUNTS": "rewardbench",
    "SECTIONS": "rewardbench",
    "SUBSET_MAPPING": "rewardbench",
    "RewardBenchResult": "rewardbench",
    "evaluate": "rewardbench",
    "evaluate_best_of_n": "rewardbench",
    "load_rewardbench": "rewardbench",
    "section_scores": "rewardbench",
    # plots
    "plot_decomposition": "plots",
    "plot_embeddings": "plots",
    "plot_gate_weights": "plots",
    "plot_preference_matrix": "plots",
    "plot_spectrum": "plots",
}
_SUBMODULES = ("cycles", "plots", "rank", "rewardbench")

__all__ = sorted([*_LAZY, *_SUBMODULES])


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'gpmkit.eval' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
