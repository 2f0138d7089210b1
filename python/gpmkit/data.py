"""Preference-embedding batching over the Rust core (``src/batch.rs``): dedup, packing, token budgets, sharding.

Every unique (prompt, response) sequence of a batch is embedded **once**, however many comparisons it takes
part in, and packed batches carry **no padding**. Tokenization stays with the Hugging Face tokenizer; this
module starts from token ids.

Records
    A record is one prompt with K ≥ 2 responses and the comparisons among them::

        {"prompt_ids": [...], "response_ids": [[...], ...],          # K responses
         "pairs": [[i, j], ...],                                     # i compared with j (i preferred by default)
         "labels": [...], "margins": [...]}                          # optional, one per pair

    or, instead of ``pairs``, ``"scores": [s_0, ..., s_{K-1}]`` (a rating per response, higher is better): every
    pair ``i < j`` becomes a comparison of the better with the worse response, ties with label ½ (kept, not
    dropped). TRL's pre-tokenized format ``{"chosen_ids", "rejected_ids", "prompt_length", "margin"}`` is the
    case K = 2 with the pair ``(0, 1)``; ``prompt_length`` defaults to the common prefix of the two sequences
    (and moves one token left when a completion would be empty).

Batches (``dict`` of torch tensors; U unique sequences, P comparisons)
    packed (``packing=True``): ``input_ids [1, total]``, ``position_ids [1, total]`` restarting at 0 per
    sequence, ``cu_seq_lens_q``/``cu_seq_lens_k [U + 1]`` (int32) and ``max_length_q``/``max_length_k`` (int),
    i.e. transformers' padding-free / flash-attention varlen form (no ``attention_mask``), plus
    ``last_index [U]`` and ``prompt_last_index [U]`` (flat token indices where the embedding and the gate are
    read); padded (``packing=False``): ``input_ids``/``attention_mask [U, T]`` and ``prompt_lengths [U]``.
    Both: ``pair_rows [P, 2]`` (the rows of the two sequences of each comparison; the gate of a comparison is
    read from its first row), ``label [P]`` and ``margin [P]`` (float32, when any record has them),
    ``num_sequences`` (before dedup), ``num_truncated``.

Building blocks
    :class:`TokenStore` (all records' tokens in flat numpy arrays: cheap to fork into DataLoader workers, no
    per-token Python objects), :class:`PreferenceCollator` (list-of-examples collator for ``DataLoader`` and
    ``transformers.Trainer``), :class:`StoreCollator` + :class:`TokenBudgetBatchSampler` (zero-copy collation of
    record indices under a token budget, sharded over ranks), :func:`stream_batches` (JSONL / Parquet / any
    iterable of records, in windows, without loading everything).

Bad input raises :class:`~gpmkit.exceptions.ArgumentError` / :class:`~gpmkit.exceptions.ShapeError` naming the
record (empty prompt or response, K < 2, pair index out of range, self-pair, duplicate pair, ``scores`` or
``labels`` whose length disagrees with K or with the pairs, a sequence longer than ``max_length`` unless
``overlong="truncate"`` (counted), a record larger than ``max_tokens`` unless ``oversize="drop"|"alone"``
(counted), ``rank``/``world_size`` out of range).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np

from . import _core
from .exceptions import ArgumentError, ShapeError

__all__ = [
    "PreferenceCollator",
    "StoreCollator",
    "StoreDataset",
    "TokenBudgetBatchSampler",
    "TokenStore",
    "pairs_to_records",
    "read_jsonl",
    "read_parquet",
    "records_to_store",
    "stream_batches",
]

_STORE_FIELDS = ("tokens", "seg_offsets", "rec_prompt", "rec_resp_offsets", "resp_seg", "rec_pair_offsets", "pairs")


# --------------------------------------------------------------------------------------------------
# records → store


def _pairs_from_scores(scores: Sequence[float], where: str) -> tuple[list[tuple[int, int]], list[float]]:
    """All pairs ``i < j`` as (better, worse) with label 1, ties as (i, j) with label ½."""
    pairs, labels = [], []
    for i in range(len(scores)):
        for j in range(i + 1, len(scores)):
            a, b = scores[i], scores[j]
            if not (math.isfinite(a) and math.isfinite(b)):
                raise ArgumentError(f"{where}: field 'scores': expected finite numbers, got {a!r} and {b!r}")
            if a > b:
                pairs.append((i, j))
                labels.append(1.0)
            elif b > a:
                pairs.append((j, i))
                labels.append(1.0)
            else:
                pairs.append((i, j))
                labels.append(0.5)
    return pairs, labels


def _float_list(row: Mapping, key: str, n: int, where: str) -> Optional[list[float]]:
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and n == 1:
        value = [value]
    if not isinstance(value, (list, tuple, np.ndarray)) or len(value) != n:
        got = len(value) if isinstance(value, (list, tuple, np.ndarray)) else type(value).__name__
        raise ShapeError(f"{where}: field {key!r}: expected one number per comparison ({n}), got {got}")
    out = [float(x) for x in value]
    if not all(math.isfinite(x) for x in out):
        raise ArgumentError(f"{where}: field {key!r}: expected finite numbers, got {value!r:.60}")
    if key == "labels" and not all(0.0 <= x <= 1.0 for x in out):
        raise ArgumentError(f"{where}: field 'labels': expected soft labels in [0, 1], got {value!r:.60}")
    return out


@dataclass
class _Parsed:
    """Records split into the columns the Rust store builder takes (pairs-format and TRL-format rows)."""

    prompts: list = field(default_factory=list)
    responses: list = field(default_factory=list)
    pairs: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    margins: list = field(default_factory=list)
    has_labels: bool = False
    has_margins: bool = False


def _parse(rows: Iterable[Mapping], start: int = 0) -> tuple[str, Any]:
    """Splits rows into store-builder inputs. Returns ``("pairs", (chosen, rejected, prompt_lengths, margins))``
    when every row is TRL-format, else ``("records", _Parsed)``."""
    rows = rows if isinstance(rows, list) else list(rows)
    if rows and all(isinstance(r, Mapping) and "chosen_ids" in r for r in rows):
        chosen, rejected, lengths, margins = [], [], [], []
        has_margin = False
        for n, row in enumerate(rows, start):
            if "rejected_ids" not in row:
                raise ArgumentError(f"record {n}: expected 'rejected_ids' next to 'chosen_ids', got {sorted(row)}")
            c, r = row["chosen_ids"], row["rejected_ids"]
            if not isinstance(c, (list, tuple, np.ndarray)) or not isinstance(r, (list, tuple, np.ndarray)):
                raise ArgumentError(f"record {n}: 'chosen_ids'/'rejected_ids': expected lists of token ids")
            if len(c) == 0 or len(r) == 0:
                raise ArgumentError(f"record {n}: 'chosen_ids'/'rejected_ids': expected non-empty token lists")
            pl = row.get("prompt_length")
            if pl is None:
                pl = -1  # the common prefix, computed in Rust
            chosen.append(c)
            rejected.append(r)
            lengths.append(int(pl))
            m = row.get("margin")
            if m is not None:
                has_margin = True
                if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m):
                    raise ArgumentError(f"record {n}: field 'margin': expected a finite number, got {m!r}")
            margins.append(0.0 if m is None else float(m))
        return "pairs", (chosen, rejected, lengths, margins if has_margin else None)
    p = _Parsed()
    for n, row in enumerate(rows, start):
        where = f"record {n}"
        if not isinstance(row, Mapping):
            raise ArgumentError(f"{where}: expected a dict, got {type(row).__name__}")
        if "chosen_ids" in row:
            raise ArgumentError(f"{where}: TRL rows (chosen_ids/rejected_ids) cannot be mixed with multi-response rows")
        for key in ("prompt_ids", "response_ids"):
            if key not in row:
                raise ArgumentError(
                    f"{where}: expected fields 'prompt_ids', 'response_ids' and 'pairs' or 'scores' "
                    f"(or TRL's 'chosen_ids'/'rejected_ids'), got {sorted(row)}"
                )
        resp = row["response_ids"]
        if not isinstance(resp, (list, tuple)):
            raise ArgumentError(
                f"{where}: field 'response_ids': expected a list of K token lists, got {type(resp).__name__}"
            )
        k = len(resp)
        labels = None
        if row.get("pairs") is not None:
            if row.get("scores") is not None:
                raise ArgumentError(f"{where}: give 'pairs' or 'scores', not both")
            pairs = [tuple(x) for x in row["pairs"]]
        elif row.get("scores") is not None:
            scores = row["scores"]
            if len(scores) != k:
                raise ShapeError(
                    f"{where}: field 'scores': expected one score per response (K = {k}), got {len(scores)}"
                )
            pairs, labels = _pairs_from_scores([float(s) for s in scores], where)
        else:
            raise ArgumentError(f"{where}: expected 'pairs' ([[i, j], ...]) or 'scores' (one per response)")
        given = _float_list(row, "labels", len(pairs), where)
        if given is not None:
            if labels is not None:
                raise ArgumentError(f"{where}: 'labels' cannot be combined with 'scores' (scores define the labels)")
            labels = given
        margins = _float_list(row, "margins", len(pairs), where)
        p.prompts.append(row["prompt_ids"])
        p.responses.append(resp)
        p.pairs.append(pairs)
        p.has_labels |= labels is not None
        p.has_margins |= margins is not None
        p.labels.extend(labels if labels is not None else [1.0] * len(pairs))
        p.margins.extend(margins if margins is not None else [0.0] * len(pairs))
    return "records", p


@dataclass
class TokenStore:
    """All records' tokens and comparisons in flat int64 numpy arrays (the layout ``src/batch.rs`` reads).

    ``tokens`` is cut into segments by ``seg_offsets``; record r has prompt segment ``rec_prompt[r]``, response
    segments ``resp_seg[rec_resp_offsets[r]:rec_resp_offsets[r+1]]`` and comparisons
    ``pairs[rec_pair_offsets[r]:rec_pair_offsets[r+1]]`` (``[P, 2]`` local response indices), with optional
    per-comparison ``labels`` / ``margins`` (float32 ``[P]``). Arrays are read-only after construction, so the
    store can be shared by forked DataLoader workers without copies.
    """

    tokens: np.ndarray
    seg_offsets: np.ndarray
    rec_prompt: np.ndarray
    rec_resp_offsets: np.ndarray
    resp_seg: np.ndarray
    rec_pair_offsets: np.ndarray
    pairs: np.ndarray
    labels: Optional[np.ndarray] = None
    margins: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        for name in _STORE_FIELDS:
            arr = np.ascontiguousarray(np.asarray(getattr(self, name), dtype=np.int64))
            if name == "pairs":
                arr = arr.reshape(-1)
            arr.setflags(write=False)
            setattr(self, name, arr)
        n_pairs = self.pairs.shape[0] // 2
        for name in ("labels", "margins"):
            value = getattr(self, name)
            if value is not None:
                value = np.ascontiguousarray(np.asarray(value, dtype=np.float32))
                if value.shape != (n_pairs,):
                    raise ShapeError(f"{name}: expected shape ({n_pairs},) (one per comparison), got {value.shape}")
                value.setflags(write=False)
                setattr(self, name, value)
        _core.batch_validate_store(self.as_tuple())

    def as_tuple(self) -> tuple:
        """The seven int64 arrays in the order ``gpmkit._core.batch_*`` takes them."""
        return tuple(getattr(self, name) for name in _STORE_FIELDS)

    def __len__(self) -> int:
        return int(self.rec_prompt.shape[0])

    @property
    def num_pairs(self) -> int:
        """Number of comparisons."""
        return int(self.pairs.shape[0] // 2)

    @property
    def num_sequences(self) -> int:
        """Number of (prompt, response) sequences before dedup."""
        return int(self.resp_seg.shape[0])

    @classmethod
    def from_records(cls, records: Iterable[Mapping], start: int = 0) -> TokenStore:
        """A store from records (see the module docstring; TRL rows or multi-response rows, not mixed).

        ``start`` is the index of the first record in error messages (for windows of a stream).
        """
        kind, parsed = _parse(records, start)
        if kind == "pairs":
            chosen, rejected, lengths, margins = parsed
            arrays = _core.batch_store_from_pairs(chosen, rejected, lengths)
            return cls(*arrays, margins=None if margins is None else np.asarray(margins, np.float32))
        p: _Parsed = parsed
        try:
            arrays = _core.batch_store_from_lists(p.prompts, p.responses, p.pairs)
        except (ArgumentError, ShapeError) as err:
            raise type(err)(_renumber(str(err), start)) from None
        return cls(
            *arrays,
            labels=np.asarray(p.labels, np.float32) if p.has_labels else None,
            margins=np.asarray(p.margins, np.float32) if p.has_margins else None,
        )

    def costs(self, max_length: Optional[int] = None, overlong: str = "error") -> tuple[np.ndarray, ...]:
        """Per-record ``(n_seqs, tokens, longest)`` (after truncation to ``max_length`` and in-record dedup)."""
        return _core.batch_record_costs(self.as_tuple(), max_length, overlong)


def _renumber(msg: str, start: int) -> str:
    """Shifts 'record N' / 'prompts[N]' in a Rust error by ``start`` (errors of a window of a stream)."""
    if not start:
        return msg
    import re

    pattern = r"(record |prompts\[|responses\[|pairs\[)(\d+)"
    return re.sub(pattern, lambda m: f"{m.group(1)}{int(m.group(2)) + start}", msg)


def pairs_to_records(rows: Iterable[Mapping]) -> list[dict]:
    """Groups TRL pair rows (``chosen_ids``, ``rejected_ids``, ``prompt_length``?, ``margin``?) by prompt into
    multi-response records, so that each distinct response is embedded once however many pairs it is in.

    The prompt of a row is its first ``prompt_length`` tokens (default: the common prefix of the two sequences,
    moved one token left when a completion would be empty, as :class:`PreferenceCollator` does). Rows are kept
    in order: a record's pairs (and ``margins``, when any row has one) follow the rows' order; duplicate
    comparisons (the same two responses again, in either order) are kept as separate records, never dropped.
    """
    groups: dict[tuple, dict] = {}
    out: list[dict] = []
    for n, row in enumerate(rows):
        c, r = list(row["chosen_ids"]), list(row["rejected_ids"])
        if not c or not r:
            raise ArgumentError(f"row {n}: 'chosen_ids'/'rejected_ids': expected non-empty token lists")
        pl = row.get("prompt_length")
        if pl is None:
            pl = 0
            for a, b in zip(c, r):
                if a != b:
                    break
                pl += 1
        pl = max(1, min(int(pl), len(c) - 1, len(r) - 1))
        if pl < 1 or c[:pl] != r[:pl]:
            raise ArgumentError(f"row {n}: expected chosen_ids and rejected_ids to share a prompt of ≥ 1 token")
        key = tuple(c[:pl])
        rec = groups.get(key)
        resp_c, resp_r = tuple(c[pl:]), tuple(r[pl:])
        if resp_c == resp_r:
            raise ArgumentError(f"row {n}: chosen_ids and rejected_ids are identical (a self-comparison)")
        if rec is not None:
            seen = rec["_pairs"]
            i, j = rec["_index"].get(resp_c), rec["_index"].get(resp_r)
            if i is not None and j is not None and (min(i, j), max(i, j)) in seen:
                rec = None  # a repeated comparison: start a new record for this prompt
        if rec is None:
            rec = {
                "prompt_ids": list(key),
                "response_ids": [],
                "pairs": [],
                "margins": [],
                "_index": {},
                "_pairs": set(),
            }
            groups[key] = rec
            out.append(rec)
        ids = []
        for resp in (resp_c, resp_r):
            if resp not in rec["_index"]:
                rec["_index"][resp] = len(rec["response_ids"])
                rec["response_ids"].append(list(resp))
            ids.append(rec["_index"][resp])
        rec["pairs"].append(ids)
        rec["_pairs"].add((min(ids), max(ids)))
        m = row.get("margin")
        rec["margins"].append(None if m is None else float(m))
    for rec in out:
        del rec["_index"], rec["_pairs"]
        if all(m is None for m in rec["margins"]):
            del rec["margins"]
        else:
            rec["margins"] = [0.0 if m is None else m for m in rec["margins"]]
        if len(rec["response_ids"]) < 2:  # defensive: identical chosen/rejected are refused above
            raise ArgumentError(f"prompt {rec['prompt_ids'][:8]}...: expected two different responses")
    return out


def records_to_store(records: Iterable[Mapping]) -> TokenStore:
    """Alias of :meth:`TokenStore.from_records`."""
    return TokenStore.from_records(records)


# --------------------------------------------------------------------------------------------------
# collation


def _to_torch(out: dict, store: TokenStore, packing: bool, device: Any = None) -> dict[str, Any]:
    import torch

    t = torch.from_numpy
    batch: dict[str, Any] = {}
    if packing:
        batch["input_ids"] = t(out["input_ids"]).unsqueeze(0)
        batch["position_ids"] = t(out["position_ids"]).unsqueeze(0)
        cu = t(out["cu_seq_lens"])
        batch["cu_seq_lens_q"] = cu
        batch["cu_seq_lens_k"] = cu
        batch["max_length_q"] = batch["max_length_k"] = int(out["max_length"])
        batch["last_index"] = t(out["last_index"])
        batch["prompt_last_index"] = t(out["prompt_last_index"])
    else:
        batch["input_ids"] = t(out["input_ids"])
        batch["attention_mask"] = t(out["attention_mask"])
    batch["prompt_lengths"] = t(out["prompt_lengths"])
    batch["pair_rows"] = t(out["pair_rows"])
    idx = out["pair_index"]
    if store.labels is not None:
        batch["label"] = t(store.labels[idx])
    if store.margins is not None:
        batch["margin"] = t(store.margins[idx])
    batch["num_sequences"] = int(out["n_sequences"])
    batch["num_truncated"] = int(out["n_truncated"])
    return batch


@dataclass
class _LayoutOptions:
    packing: bool = True
    pad_token_id: int = 0
    padding_side: str = "right"
    pad_to_multiple_of: Optional[int] = None
    max_length: Optional[int] = None
    overlong: str = "error"

    def _collate(self, store: TokenStore, records: np.ndarray, validate: bool) -> dict[str, Any]:
        out = _core.batch_collate(
            store.as_tuple(),
            np.ascontiguousarray(records, dtype=np.int64),
            packing=self.packing,
            pad_id=int(self.pad_token_id),
            padding_side=self.padding_side,
            pad_to_multiple_of=int(self.pad_to_multiple_of or 1),
            max_length=self.max_length,
            overlong=self.overlong,
            validate=validate,
        )
        return _to_torch(out, store, self.packing)


@dataclass
class PreferenceCollator(_LayoutOptions):
    """Collates a list of examples (records or TRL rows, see the module docstring) into one deduplicated batch.

    Works as ``DataLoader(..., collate_fn=PreferenceCollator())`` and as a ``transformers.Trainer`` data
    collator. Sequences shared by several examples of the batch (the same response in several TRL pairs, a
    prompt's K responses in its K(K−1)/2 pairs) are embedded once.

    Args:
        packing: padding-free layout (default) or padded ``[U, T]``.
        pad_token_id, padding_side, pad_to_multiple_of: padded layout only.
        max_length: longest sequence (prompt + response); ``None``: no limit.
        overlong: ``"error"`` (default) or ``"truncate"`` (cut the response's tail; counted in
            ``num_truncated``) for sequences longer than ``max_length``.
    """

    def __call__(self, examples: Sequence[Mapping]) -> dict[str, Any]:
        if len(examples) == 0:
            raise ArgumentError("examples: expected at least one example, got an empty batch")
        store = TokenStore.from_records(examples)
        return self._collate(store, np.arange(len(store), dtype=np.int64), validate=False)


@dataclass
class StoreCollator(_LayoutOptions):
    """Collates batches of record indices of a :class:`TokenStore` (zero-copy gather in Rust).

    Use with a dataset whose items are record indices (:class:`StoreDataset`) and a batch sampler such as
    :class:`TokenBudgetBatchSampler`; an element may also be a list/array of indices (a whole batch).
    """

    store: Optional[TokenStore] = None

    def __call__(self, indices: Union[Sequence[int], np.ndarray]) -> dict[str, Any]:
        if self.store is None:
            raise ArgumentError("store: expected a TokenStore, got None")
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            raise ArgumentError("indices: expected at least one record index, got an empty batch")
        return self._collate(self.store, idx, validate=False)


class StoreDataset:
    """Map-style dataset over a :class:`TokenStore` whose items are the record indices themselves.

    Cheap to pickle into DataLoader workers (forked workers share the read-only arrays).
    """

    def __init__(self, store: TokenStore) -> None:
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> int:
        if not -len(self) <= i < len(self):
            raise IndexError(f"record index {i} out of range for {len(self)} records")
        return int(i) % len(self)


# --------------------------------------------------------------------------------------------------
# token budgets and sharding


class TokenBudgetBatchSampler:
    """Batches of record indices under a token budget, shuffled with a seed, sharded over ranks.

    Every rank builds the same global plan (from the seed and the epoch) and takes its share: all ranks get
    the same number of batches, and the batches that run in the same step have similar token counts. Use
    as ``DataLoader(StoreDataset(store), batch_sampler=sampler, collate_fn=StoreCollator(store=store))``;
    call :meth:`set_epoch` each epoch for a new order.

    Args:
        store: the :class:`TokenStore` (or precomputed ``(n_seqs, tokens, longest)`` cost arrays).
        max_tokens: budget per batch: tokens of the unique sequences (packed), or ``n_seqs · longest`` with
            ``padded=True``. A record larger than the budget raises (``oversize="error"``), is left out
            (``"drop"``, listed in :attr:`dropped`) or gets its own over-budget batch (``"alone"``).
        max_records: at most this many records per batch.
        shuffle, seed: deterministic shuffling (``seed + epoch``).
        bucket_size: sort records by length inside windows of this many (length bucketing; 0 = off).
        world_size, rank: data-parallel sharding (``rank`` in ``[0, world_size)``).
        drop_last: drop the last ``n_batches mod world_size`` batches instead of repeating the first ones.
        max_length, overlong: sequence truncation used for the costs (same as the collator's).
    """

    def __init__(
        self,
        store: Union[TokenStore, tuple],
        max_tokens: int,
        max_records: Optional[int] = None,
        padded: bool = False,
        shuffle: bool = True,
        seed: int = 0,
        bucket_size: int = 0,
        oversize: str = "error",
        world_size: int = 1,
        rank: int = 0,
        drop_last: bool = False,
        max_length: Optional[int] = None,
        overlong: str = "error",
    ) -> None:
        for name, value in (("max_tokens", max_tokens), ("world_size", world_size), ("rank", rank)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ArgumentError(f"{name}: expected an int, got {type(value).__name__}")
        if isinstance(store, TokenStore):
            self.costs = store.costs(max_length, overlong)
        else:
            self.costs = tuple(np.ascontiguousarray(c, dtype=np.int64) for c in store)
        self.kwargs = dict(
            max_tokens=int(max_tokens),
            max_records=max_records,
            padded=padded,
            shuffle=shuffle,
            bucket_size=bucket_size,
            oversize=oversize,
            world_size=int(world_size),
            rank=int(rank),
            drop_last=drop_last,
        )
        self.seed = int(seed)
        self.epoch = 0
        self._plan = self._make_plan()

    def _make_plan(self) -> dict:
        return _core.batch_plan(*self.costs, seed=(self.seed + self.epoch) % 2**64, **self.kwargs)

    def set_epoch(self, epoch: int) -> None:
        """Re-plans with seed ``seed + epoch`` (same on every rank)."""
        self.epoch = int(epoch)
        self._plan = self._make_plan()

    @property
    def plan(self) -> dict:
        """The raw plan: ``batches``, ``costs``, ``steps``, ``dropped``, ``over_budget``, ``repeated``, ..."""
        return self._plan

    @property
    def dropped(self) -> list[int]:
        """Records left out for not fitting ``max_tokens`` (``oversize="drop"``)."""
        return list(self._plan["dropped"])

    def __len__(self) -> int:
        return int(self._plan["steps"])

    def __iter__(self) -> Iterator[list[int]]:
        for b in self._plan["batches"]:
            yield b.tolist()


# --------------------------------------------------------------------------------------------------
# streaming


def read_jsonl(path: str) -> Iterator[dict]:
    """Records of a JSON Lines file, one at a time (blank lines skipped; bad JSON → ArgumentError with the line)."""
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as err:
                raise ArgumentError(f"{path} line {n}: expected a JSON object, got invalid JSON ({err.msg})") from None


def read_parquet(path: str, batch_rows: int = 1024) -> Iterator[dict]:
    """Records of a Parquet file, read ``batch_rows`` rows at a time (needs ``pyarrow``)."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as f:
        for table in f.iter_batches(batch_size=batch_rows):
            yield from table.to_pylist()


def stream_batches(
    records: Union[str, Iterable[Mapping]],
    max_tokens: int,
    window: int = 4096,
    collator: Optional[_LayoutOptions] = None,
    **sampler_kwargs: Any,
) -> Iterator[dict[str, Any]]:
    """Batches of a large record stream without loading it: ``window`` records at a time are stored, planned
    under the token budget (shuffled within the window, sharded with ``world_size``/``rank`` so every rank
    gets the same number of batches per window) and collated.

    Args:
        records: a ``.jsonl`` / ``.parquet`` path or any iterable of records.
        max_tokens: token budget per batch.
        window: records held in memory at a time.
        collator: layout options (a :class:`StoreCollator` or :class:`PreferenceCollator`; default packed).
        **sampler_kwargs: :class:`TokenBudgetBatchSampler` options (``seed``, ``world_size``, ``rank``, ...).
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ArgumentError(f"window: expected a positive int, got {window!r}")
    if isinstance(records, str):
        records = read_parquet(records) if records.endswith(".parquet") else read_jsonl(records)
    layout = collator if collator is not None else StoreCollator()
    seed = int(sampler_kwargs.pop("seed", 0))
    buf: list = []
    start = 0
    n_window = 0

    def flush(rows: list, start: int, n_window: int) -> Iterator[dict[str, Any]]:
        store = TokenStore.from_records(rows, start=start)
        sampler = TokenBudgetBatchSampler(
            store,
            max_tokens,
            seed=seed + n_window,
            max_length=layout.max_length,
            overlong=layout.overlong,
            **sampler_kwargs,
        )
        for b in sampler:
            yield layout._collate(store, np.asarray(b, dtype=np.int64), validate=False)

    for row in records:
        buf.append(row)
        if len(buf) == window:
            yield from flush(buf, start, n_window)
            start += len(buf)
            n_window += 1
            buf = []
    if buf:
        yield from flush(buf, start, n_window)
