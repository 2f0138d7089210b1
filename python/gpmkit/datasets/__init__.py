"""Built-in preference data: synthetic cyclic benchmarks (:mod:`gpmkit.datasets.cyclic`) and real human
pairwise-comparison data sets (:mod:`gpmkit.datasets.real`). Submodules are imported on first use."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["cyclic", "real"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'gpmkit.datasets' has no attribute {name!r}")
