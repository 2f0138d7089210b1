"""Backend selection and the native operators.

``active_impl(op, device)`` tells which implementation a call on ``device`` runs: ``"rust"`` (the
native CPU kernels, registered as ``torch.ops.gpmkit.*`` custom operators) or ``"torch"`` (the
vectorised PyTorch path in :mod:`gpmkit._reference`). ``GPMKIT_IMPL=rust|torch`` forces one; it is
read on every call.
"""

from __future__ import annotations

import os

import torch

from ..exceptions import ArgumentError, DeviceError

__all__ = ["OPS", "active_impl"]

#: Every operator of :mod:`gpmkit.functional`.
OPS = (
    "preference_score",
    "preference_matrix",
    "win_score",
    "preference_prob",
    "gpm_loss",
    "bt_loss",
    "gpo_loss",
    "sppo_loss",
)

#: Device types with native kernels.
NATIVE_DEVICES = ("cpu",)


def active_impl(op: str, device: torch.device | str = "cpu") -> str:
    """Return ``"rust"`` or ``"torch"``: the implementation ``op`` runs on ``device`` right now.

    CPU tensors run the Rust kernels; CUDA tensors run the vectorised PyTorch path until the CUDA
    kernels land. ``GPMKIT_IMPL=torch`` forces the PyTorch path everywhere; ``GPMKIT_IMPL=rust`` forces
    the Rust kernels and raises :class:`~gpmkit.exceptions.DeviceError` for a device they do not serve.
    """
    if op not in OPS:
        raise ArgumentError(f"op: expected one of {', '.join(OPS)}, got {op!r}")
    dev = device.type if isinstance(device, torch.device) else torch.device(device).type
    forced = os.environ.get("GPMKIT_IMPL", "").strip().lower()
    if forced not in ("", "rust", "torch"):
        raise ArgumentError(f"GPMKIT_IMPL: expected 'rust', 'torch' or unset, got {forced!r}")
    if forced == "torch":
        return "torch"
    if dev in NATIVE_DEVICES:
        return "rust"
    if forced == "rust":
        raise DeviceError(f"GPMKIT_IMPL=rust: expected a tensor on {'/'.join(NATIVE_DEVICES)}, got one on {dev}")
    return "torch"


from . import _cpu  # noqa: E402, F401  (registers torch.ops.gpmkit.*)
