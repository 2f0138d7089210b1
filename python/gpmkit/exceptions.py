"""Errors raised by gpmkit.

Every error names the offending argument, what was expected and what was received. They subclass the
builtin a caller would catch anyway (``ValueError`` for shapes and values, ``TypeError`` for dtypes,
``RuntimeError`` for devices), so existing ``except`` clauses keep working.
"""

from __future__ import annotations

__all__ = ["ArgumentError", "DTypeError", "DeviceError", "GPMError", "ShapeError"]


class GPMError(Exception):
    """Base class of every gpmkit error (also raised for internal errors of the Rust core)."""


class ShapeError(GPMError, ValueError):
    """A tensor has the wrong number of dimensions, an odd embedding width, or sizes that do not match."""


class DTypeError(GPMError, TypeError):
    """A tensor has a dtype the operation does not accept (e.g. an integer embedding)."""


class DeviceError(GPMError, RuntimeError):
    """Tensors that must live together are on different devices, or the device is not supported."""


class ArgumentError(GPMError, ValueError):
    """A scalar argument is out of its domain (``tau <= 0``, ``beta <= 0``, unknown ``reduction``...)."""
