"""gpmkit: General Preference Models (GPM) and General Preference Optimization (GPO).

A GPM embeds each response in ``R^{2k}`` and scores pairs with a skew-symmetric operator, so it can
represent cyclic (intransitive) preferences while needing one forward pass per response.

``import gpmkit`` is cheap: torch is imported only when :mod:`gpmkit.functional`, :mod:`gpmkit.nn`
or :mod:`gpmkit.ops` is first used, and transformers only when :mod:`gpmkit.models` (``gpmkit.GPMModel``,
``gpmkit.GPMConfig``) is, and trl only when :mod:`gpmkit.trl` is.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import exceptions
from ._core import __version__, cuda_available, get_num_threads, set_num_threads
from .exceptions import ArgumentError, DeviceError, DTypeError, GPMError, ShapeError

__all__ = [
    "ArgumentError",
    "DTypeError",
    "DeviceError",
    "GPMConfig",
    "GPMError",
    "GPMHead",
    "GPMModel",
    "ShapeError",
    "__version__",
    "cuda_available",
    "data",
    "datasets",
    "eval",
    "exceptions",
    "functional",
    "get_num_threads",
    "models",
    "nn",
    "ops",
    "pairwise",
    "set_num_threads",
    "trl",
]

_LAZY_MODULES = {"data", "datasets", "eval", "functional", "models", "nn", "ops", "pairwise", "trl"}
_LAZY_ATTRS = {"GPMConfig": "models", "GPMHead": "nn", "GPMModel": "models"}


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY_ATTRS:
        return getattr(importlib.import_module(f".{_LAZY_ATTRS[name]}", __name__), name)
    raise AttributeError(f"module 'gpmkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
