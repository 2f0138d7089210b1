"""Backend selection and the native operators.

``active_impl(op, device)`` tells which implementation a call on ``device`` runs: ``"rust"`` (the
native CPU kernels, registered as ``torch.ops.gpmkit.*`` custom operators), ``"cuda"`` (the CUDA
kernels of ``src/cuda/kernels``, launched by the Rust core on torch's current stream, registered as
``torch.ops.gpmkit.cuda_*``) or ``"torch"`` (the vectorised PyTorch path in :mod:`gpmkit._reference`).
``GPMKIT_IMPL=rust|torch`` forces the native kernels or PyTorch; it is read on every call.

Every operator of :data:`OPS` has a CUDA kernel (``preference_prob`` is ``σ(preference_score / τ)``
in PyTorch on top of the score kernel); :data:`CUDA_FALLBACKS` lists what still runs in PyTorch on CUDA.
"""

from __future__ import annotations

import os

import torch

from ..exceptions import ArgumentError, DeviceError

__all__ = ["CUDA_FALLBACKS", "OPS", "active_impl", "cuda_warmup"]

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
NATIVE_DEVICES = ("cpu", "cuda")

#: Parts of the CUDA path that are not CUDA kernels (honest list; empty means everything listed in OPS
#: runs our kernels on CUDA tensors).
CUDA_FALLBACKS = {
    "preference_prob": "the sigmoid σ(s/τ) after the score kernel is a PyTorch op",
    "double backward": "not supported (create_graph=True raises in the kernels' backward, as on CPU)",
}


def active_impl(op: str, device: torch.device | str = "cpu") -> str:
    """Return ``"rust"``, ``"cuda"`` or ``"torch"``: the implementation ``op`` runs on ``device`` right now.

    CPU tensors run the Rust kernels; CUDA tensors run the CUDA kernels when the CUDA backend is usable
    (:func:`gpmkit.cuda_available`), else the vectorised PyTorch path. ``GPMKIT_IMPL=torch`` forces the
    PyTorch path everywhere; ``GPMKIT_IMPL=rust`` forces the native kernels and raises
    :class:`~gpmkit.exceptions.DeviceError` for a device they cannot serve here.
    """
    if op not in OPS:
        raise ArgumentError(f"op: expected one of {', '.join(OPS)}, got {op!r}")
    dev = device.type if isinstance(device, torch.device) else torch.device(device).type
    forced = os.environ.get("GPMKIT_IMPL", "").strip().lower()
    if forced not in ("", "rust", "torch"):
        raise ArgumentError(f"GPMKIT_IMPL: expected 'rust', 'torch' or unset, got {forced!r}")
    if forced == "torch":
        return "torch"
    if dev == "cpu":
        return "rust"
    if dev == "cuda" and _cuda.available():
        return "cuda"
    if forced == "rust":
        why = " (gpmkit's CUDA backend found no usable CUDA driver/device)" if dev == "cuda" else ""
        raise DeviceError(f"GPMKIT_IMPL=rust: expected a tensor on {'/'.join(NATIVE_DEVICES)}, got one on {dev}{why}")
    return "torch"


def cuda_warmup(device=None) -> None:
    """Load gpmkit's CUDA kernels on ``device`` now; call it once before capturing a CUDA graph."""
    _cuda.warmup(device)


from . import _cpu, _cuda  # noqa: E402, F401  (register torch.ops.gpmkit.*)
