"""Type stubs of the Rust extension ``gpmkit._core`` (hand-written; see src/python/mod.rs).

Low-level kernels over numpy arrays of one dtype (float32 or float64). Every function writes into
caller-allocated, contiguous output arrays and returns ``None``; optional outputs that are ``None`` are
not computed. Inputs may be strided (they are read as they are, copied only when not row-major). The
GIL is released while a kernel runs. Errors: :class:`gpmkit.exceptions.ShapeError`,
:class:`~gpmkit.exceptions.DTypeError`, :class:`~gpmkit.exceptions.ArgumentError`, and
:class:`~gpmkit.exceptions.GPMError` for an internal error (a Rust panic never unwinds into Python).

Shapes: N pairs, P prompts, K responses per prompt, D = 2k embedding width.
Users normally call :mod:`gpmkit.functional` instead, which adds autograd, broadcasting and dispatch.
"""

from typing import Any, Literal, Optional, Union

import numpy as np
import numpy.typing as npt

_Arr = npt.NDArray[np.floating]
_Reduction = Literal["none", "mean", "sum"]

__all__ = [
    "__version__",
    "_panic",
    "batch_collate",
    "batch_plan",
    "batch_record_costs",
    "batch_store_from_lists",
    "batch_store_from_pairs",
    "batch_validate_store",
    "bt_loss",
    "cuda_available",
    "cuda_launch",
    "cuda_scratch_bytes",
    "cuda_warmup",
    "get_num_threads",
    "gpm_loss",
    "maximin_strategy",
    "policy_loss",
    "preference_matrix",
    "preference_matrix_backward",
    "preference_score",
    "preference_score_backward",
    "set_num_threads",
    "win_score",
    "win_score_backward",
]
__version__: str

def preference_score(v_i: _Arr, v_j: _Arr, gate: Optional[_Arr], out: _Arr) -> None:
    """``out[n] = Σ_l gate[n,l] (v_i[n,2l] v_j[n,2l+1] − v_i[n,2l+1] v_j[n,2l])``.

    ``v_i, v_j: [N, D]``, ``gate: [N, k]``, ``out: [N]``.
    """

def preference_score_backward(
    grad: _Arr,
    v_i: _Arr,
    v_j: _Arr,
    gate: Optional[_Arr],
    grad_v_i: Optional[_Arr],
    grad_v_j: Optional[_Arr],
    grad_gate: Optional[_Arr],
) -> None:
    """``grad_* = grad[n] · ∂s_n/∂*`` (``grad: [N]``; outputs shaped like their inputs)."""

def preference_matrix(v: _Arr, gate: Optional[_Arr], out: _Arr) -> None:
    """``out[p,i,j] = s(v[p,i] ≻ v[p,j])``; ``v: [P, K, D]``, ``gate: [P, k]``, ``out: [P, K, K]``."""

def preference_matrix_backward(
    grad: _Arr, v: _Arr, gate: Optional[_Arr], grad_v: Optional[_Arr], grad_gate: Optional[_Arr]
) -> None:
    """Backward of :func:`preference_matrix` (``grad: [P, K, K]``)."""

def win_score(v: _Arr, weights: Optional[_Arr], gate: Optional[_Arr], out: _Arr) -> None:
    """``out[p,i] = Σ_j w[p,j] s(v[p,i] ≻ v[p,j])`` in O(K·D) (uniform ``1/K`` without weights); ``out: [P, K]``."""

def win_score_backward(
    grad: _Arr,
    v: _Arr,
    weights: Optional[_Arr],
    gate: Optional[_Arr],
    grad_v: Optional[_Arr],
    grad_weights: Optional[_Arr],
    grad_gate: Optional[_Arr],
) -> None:
    """Backward of :func:`win_score` (``grad: [P, K]``)."""

def gpm_loss(
    v_chosen: _Arr,
    v_rejected: _Arr,
    gate: Optional[_Arr],
    margin: Optional[_Arr],
    label: Optional[_Arr],
    tau: float,
    reduction: _Reduction,
    loss: _Arr,
    coef: Optional[_Arr] = None,
    grad_chosen: Optional[_Arr] = None,
    grad_rejected: Optional[_Arr] = None,
    grad_gate: Optional[_Arr] = None,
    grad_margin: Optional[_Arr] = None,
    grad_label: Optional[_Arr] = None,
) -> None:
    """Fused GPM loss ``softplus(−z) + (1−p)·z``, ``z = (s − m)/τ``, and its gradient in one pass.

    ``loss`` is ``[N]`` for ``reduction='none'`` and ``[1]`` otherwise. Each gradient output receives the
    gradient of that loss for a unit upstream gradient (scaled by ``1/N`` for ``'mean'``); ``coef`` receives
    ``∂loss/∂s`` per pair.
    """

def bt_loss(
    r_chosen: _Arr,
    r_rejected: _Arr,
    margin: Optional[_Arr],
    label: Optional[_Arr],
    tau: float,
    reduction: _Reduction,
    loss: _Arr,
    coef: Optional[_Arr] = None,
    grad_chosen: Optional[_Arr] = None,
    grad_rejected: Optional[_Arr] = None,
    grad_margin: Optional[_Arr] = None,
    grad_label: Optional[_Arr] = None,
) -> None:
    """Fused Bradley-Terry loss on scalar rewards ``[N]`` (``s = r_chosen − r_rejected``)."""

def policy_loss(
    logp: _Arr,
    ref_logp: _Arr,
    target: _Arr,
    lengths: Optional[_Arr],
    beta: float,
    offset: float,
    gamma: float,
    clamp: Optional[float],
    reduction: _Reduction,
    loss: _Arr,
    grad_logp: Optional[_Arr] = None,
    grad_ref_logp: Optional[_Arr] = None,
    grad_target: Optional[_Arr] = None,
    grad_lengths: Optional[_Arr] = None,
) -> None:
    """Fused GPO/SPPO loss ``((logp − ref_logp)·lengths^{−γ} − clamp((target − offset)/β, ±clamp))²``."""

def maximin_strategy(a: npt.NDArray[np.float64], max_iter: int, out: npt.NDArray[np.float64]) -> int:
    """Maximin mixed strategy (von Neumann winner) of the symmetric zero-sum game with skew-symmetric payoff.

    ``a: [K, K]`` float64 (``a = −aᵀ``, finite, K ≥ 1), written into ``out: [K]`` (``out ≥ 0``, ``Σ out = 1``).
    Dense tableau simplex on ``a / max|a| + 2`` (Dantzig's rule, Bland's rule after K degenerate pivots);
    returns the number of pivots. More than ``max_iter`` pivots raises ``ArgumentError``.
    """

def set_num_threads(n: int) -> None:
    """Threads of the kernels' own pool (0 = default: GPMKIT_NUM_THREADS, RAYON_NUM_THREADS or the CPU count)."""

def get_num_threads() -> int:
    """Threads of the kernels' own pool. Results are bit-identical for any value."""

def cuda_available() -> bool:
    """``True`` when gpmkit's CUDA backend can run here: the launcher is compiled in (cargo feature ``cuda``)
    and a CUDA driver (``libcuda.so.1``, loaded at run time) reports at least one device. Never raises."""

def cuda_scratch_bytes(op: str, dtype: str, sizes: list[int]) -> int:
    """Bytes of scratch device memory ``cuda_launch(op, ...)`` needs (the caller allocates it with torch)."""

def cuda_warmup(device: int) -> None:
    """Retain device ``device``'s primary context and load the kernels' PTX (before CUDA-graph capture)."""

def cuda_launch(
    op: str, dtype: str, device: int, stream: int, ptrs: list[int], sizes: list[int], scalars: list[float]
) -> None:
    """Enqueue CUDA operation ``op`` (``score_fwd``, ``gpm_bwd``, ...; see ``src/cuda/plan.rs``) on ``stream``
    of ``device`` over the device pointers ``ptrs`` (0 = absent). Asynchronous: never synchronises."""

def _panic(message: str, in_pool: bool = False) -> None:
    """Test hook: panics inside Rust; surfaces as :class:`gpmkit.exceptions.GPMError`."""

# --------------------------------------------------------------------------------------------------
# batching (src/batch.rs): token stores are tuples of 7 contiguous int64 arrays
# (tokens, seg_offsets, rec_prompt, rec_resp_offsets, resp_seg, rec_pair_offsets, pairs[2P]);
# see gpmkit.data.TokenStore for their meaning.

_I64 = npt.NDArray[np.int64]
_Store = tuple[_I64, _I64, _I64, _I64, _I64, _I64, _I64]
_Tokens = Union[list[int], tuple[int, ...], npt.NDArray[Any]]

def batch_validate_store(store: _Store) -> None:
    """Checks every structural invariant; raises ShapeError/ArgumentError naming the record."""

def batch_record_costs(
    store: _Store, max_length: Optional[int] = None, overlong: Literal["error", "truncate"] = "error"
) -> tuple[_I64, _I64, _I64]:
    """Per-record ``(n_seqs, tokens, longest)`` after truncation and in-record dedup."""

def batch_plan(
    n_seqs: _I64,
    tokens: _I64,
    longest: _I64,
    max_tokens: int,
    max_records: Optional[int] = None,
    padded: bool = False,
    shuffle: bool = True,
    seed: int = 0,
    bucket_size: int = 0,
    oversize: Literal["error", "drop", "alone"] = "error",
    world_size: int = 1,
    rank: int = 0,
    drop_last: bool = False,
) -> dict[str, Any]:
    """Token-budget batches of one rank: ``batches`` (list of int64 record-index arrays), ``costs``, ``steps``,
    ``dropped``, ``over_budget``, ``repeated``, ``dropped_batches``, ``total_batches``."""

def batch_collate(
    store: _Store,
    records: _I64,
    packing: bool = True,
    pad_id: int = 0,
    padding_side: Literal["left", "right"] = "right",
    pad_to_multiple_of: int = 1,
    max_length: Optional[int] = None,
    overlong: Literal["error", "truncate"] = "error",
    validate: bool = True,
) -> dict[str, Any]:
    """Dedup + layout of the records' sequences: ``input_ids``, ``position_ids`` (``[total]`` packed or
    ``[U, T]`` padded, then also ``attention_mask``), ``cu_seq_lens`` (int32), ``max_length``, ``last_index``,
    ``prompt_last_index``, ``prompt_lengths``, ``seq_lengths``, ``pair_rows [P, 2]``, ``pair_index``,
    ``pair_record``, ``row_record``, ``row_response``, ``n_sequences``, ``n_truncated``."""

def batch_store_from_lists(prompts: list[_Tokens], responses: list[list[_Tokens]], pairs: list[Any]) -> _Store:
    """A validated store from per-record prompt ids, K response ids and ``(i, j)`` pairs."""

def batch_store_from_pairs(chosen_ids: list[_Tokens], rejected_ids: list[_Tokens], prompt_lengths: list[int]) -> _Store:
    """A validated K = 2 store from TRL rows (full sequences sharing their first ``prompt_lengths`` tokens;
    -1: their longest common prefix, at least 1)."""
