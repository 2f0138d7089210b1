"""Training GPMs with Hugging Face TRL: :class:`GPMRewardConfig` and :class:`GPMRewardTrainer`.

:class:`GPMRewardTrainer` is TRL's ``RewardTrainer`` (TRL ≥ 1.16) with three changes:

- **Model**: a :class:`~gpmkit.models.GPMModel`, a model id / path (a gpmkit checkpoint is loaded with
  :meth:`GPMModel.from_pretrained`; anything else is a backbone for :meth:`GPMModel.from_backbone`) or a plain
  ``PreTrainedModel`` backbone (wrapped with ``GPMModel.from_backbone`` using the config's head fields).
- **Data**: TRL's four preference formats (standard / conversational × implicit / explicit prompt) are tokenized
  exactly as TRL does it (explicit prompt concatenated to the completions, EOS appended to standard text,
  conversations through the chat template), **and** the prompt length in tokens is kept per example in a
  ``prompt_length`` column, so that the gate λ(x) is read at the last prompt token (DESIGN §1):

  - standard, explicit prompt: the longest common prefix of ``tokenize(prompt)`` with ``tokenize(prompt + chosen)``
    and with ``tokenize(prompt + rejected)`` (the smaller of the two). Without BPE merges across the boundary
    this is the prompt's token count; with a merge it stops before the merged token, so the gate never sees
    completion text;
  - conversational, explicit prompt: the same with the chat template of the prompt messages (rendered **without**
    a generation prompt, like :meth:`GPMModel.score` at inference) against the templated prompt + completion;
  - conversational, implicit prompt: the leading messages shared by ``chosen`` and ``rejected`` are the prompt,
    then as the explicit case (when no message is shared, as the standard implicit case);
  - standard, implicit prompt (and pre-tokenized ``chosen_ids``/``rejected_ids`` without a ``prompt_length``
    column): the longest common prefix of the chosen and rejected token ids. This is the best available guess
    of the prompt: it includes any shared start of the two responses.

  Every prompt length is clamped to ``[1, min(len(chosen_ids), len(rejected_ids))]``.
- **Loss**: one forward pass of the model on the 2B sequences (chosen first), then
  :func:`gpmkit.functional.gpm_loss` (with the chosen half's gate, i.e. the prompt's gate) or
  :func:`gpmkit.functional.bt_loss` for ``loss="bt"``, with the ``margin`` column when present.

Logged metrics (averaged over the logging interval, ``eval_``-prefixed in evaluation): ``loss``, ``accuracy``
(fraction of pairs with s > 0), ``mean_score`` (mean s), ``mean_abs_score`` (mean |s|), ``gate_entropy`` (gated
models only: batch mean of ``−Σ_l p_l log p_l`` with ``p = λ / Σλ``, which is λ itself for the ``softmax`` gate)
and ``num_tokens`` (as TRL). Scores s are raw (not divided by τ).

This module imports torch, transformers and trl; ``import gpmkit`` does not (``gpmkit.trl`` is a lazy attribute).
It needs the ``trl`` extra (``pip install gpmkit[trl]``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Union

import torch
from datasets import Dataset, IterableDataset
from transformers import AutoModel, AutoTokenizer, PreTrainedModel
from transformers.data.data_collator import DataCollatorMixin
from trl import RewardConfig, RewardTrainer
from trl.data_utils import get_dataset_column_names, is_conversational
from trl.trainer.utils import global_then_local_main_first

from . import functional as F
from .exceptions import ArgumentError, ShapeError
from .models import GPMConfig, GPMModel
from .nn import _GATE_ACTIVATIONS

__all__ = ["GPMDataCollator", "GPMRewardConfig", "GPMRewardTrainer", "check_preference_row"]

logger = logging.getLogger(__name__)

_LOSSES = ("gpm", "bt")
# multi-response records (gpmkit.data): prompt with K responses and the comparisons among them
_RECORD_COLUMNS = ("prompt_ids", "response_ids", "pairs", "scores", "labels", "margins")


@dataclass
class GPMRewardConfig(RewardConfig):
    """``trl.RewardConfig`` plus the GPM head and loss fields.

    Head fields (used when the trainer builds the :class:`GPMModel` itself, i.e. from a model id/path or a plain
    backbone; a :class:`GPMModel` passed in keeps its own heads, and must agree with ``loss``):

    Args:
        value_head_dim: embedding width 2k (even, positive). Ignored for ``loss="bt"`` (one scalar reward).
        gate: add the prompt gate λ(x) (``prompt_head [k, H]``, read at the last prompt token).
        gate_activation: ``"softmax"`` (Σλ = 1) or ``"scaled_softmax"`` (Σλ = k).
        l2_normalize: L2-normalise the embeddings (always off for ``loss="bt"``).
        loss: ``"gpm"`` (:func:`gpmkit.functional.gpm_loss`) or ``"bt"`` (Bradley-Terry,
            :func:`gpmkit.functional.bt_loss`; the model is built with ``bt=True``).
        tau: temperature τ of ``σ(s/τ)``. ``None`` (default) means 0.1 for ``loss="gpm"`` and 1.0 for
            ``loss="bt"`` (DESIGN §1; with τ = 1, BT is exactly TRL's reward loss).

    Defaults that differ from ``trl.RewardConfig`` (so CPU runs and tests need no extra flags):

    - ``bf16``: ``None`` (default) resolves to ``False`` when ``use_cpu=True``; otherwise TRL's default
      (``True`` unless ``fp16``). Pass ``bf16=True`` explicitly for bf16 autocast on CPU.
    - ``gradient_checkpointing``: ``None`` (default) resolves to ``False`` when ``use_cpu=True`` (it only trades
      compute for memory) and to TRL's ``True`` otherwise. With transformers ≥ 5.23 the default is applied to
      ``activation_checkpointing`` (the new name), so the default config raises no deprecation warning; an
      explicit ``gradient_checkpointing=`` still gets transformers' ``FutureWarning``.

    Batching:

    - ``packing``: ``None`` (default) packs batches (:class:`gpmkit.data.PreferenceCollator`: each unique
      (prompt, response) sequence of a batch embedded once, no pad tokens, ``position_ids`` restarting per
      sequence) when the backbone supports it (:attr:`GPMModel.supports_packing`: causal decoders built on
      transformers' ``create_causal_mask``, or flash attention) and pads otherwise; ``True`` requires it;
      ``False`` pads (TRL-format data keeps :class:`GPMDataCollator`; multi-response data is still
      deduplicated, in padded form).
    - ``max_tokens``: when set, training batches are cut by :class:`gpmkit.data.TokenBudgetBatchSampler` (whole
      examples, shuffled with ``seed`` + epoch, sharded over the data-parallel ranks with equal step counts and
      similar tokens per step; an example over the budget raises) instead of ``per_device_train_batch_size``
      examples. Map-style datasets only.

    Everything else (``learning_rate=1e-4``, ``max_length=1024`` with too-long pairs *filtered out*, ``margin``
    column, ``center_rewards_coefficient``...) is TRL's. ``center_rewards_coefficient`` applies to ``loss="bt"``
    only (GPM scores are shift-free); it is rejected with ``loss="gpm"``.
    """

    value_head_dim: int = field(default=2, metadata={"help": "Embedding width 2k (even)."})
    gate: bool = field(default=False, metadata={"help": "Prompt-dependent gate λ(x)."})
    gate_activation: str = field(default="softmax", metadata={"help": "'softmax' (Σλ=1) or 'scaled_softmax' (Σλ=k)."})
    l2_normalize: bool = field(default=True, metadata={"help": "L2-normalise the embeddings (GPM only)."})
    loss: str = field(default="gpm", metadata={"help": "'gpm' or 'bt' (Bradley-Terry)."})
    tau: Optional[float] = field(default=None, metadata={"help": "Temperature τ; default 0.1 (gpm) or 1.0 (bt)."})
    gradient_checkpointing: Optional[bool] = field(
        default=None,
        metadata={"help": "Gradient checkpointing; default False with use_cpu=True, else True (TRL's default)."},
    )
    max_tokens: Optional[int] = field(
        default=None,
        metadata={
            "help": "Token budget per training batch (gpmkit.data.TokenBudgetBatchSampler), instead of a fixed "
            "per_device_train_batch_size: unique tokens when packed, examples × longest sequence when padded."
        },
    )
    packing: Optional[bool] = field(
        default=None,
        metadata={
            "help": "Deduplicated, padding-free batches (gpmkit.data). None: on when the backbone supports it "
            "(causal decoders, flash attention); False: padded batches."
        },
    )

    def __post_init__(self):
        if self.loss not in _LOSSES:
            raise ArgumentError(f"loss: expected one of {_LOSSES}, got {self.loss!r}")
        if self.loss == "gpm":
            if isinstance(self.value_head_dim, bool) or not isinstance(self.value_head_dim, int):
                raise ShapeError(f"value_head_dim: expected an even, positive int 2k, got {self.value_head_dim!r}")
            if self.value_head_dim <= 0 or self.value_head_dim % 2:
                raise ShapeError(f"value_head_dim: expected an even, positive int 2k, got {self.value_head_dim!r}")
            if self.center_rewards_coefficient is not None:
                raise ArgumentError(
                    "center_rewards_coefficient: only meaningful for loss='bt' (GPM scores are shift-free), "
                    f"got {self.center_rewards_coefficient!r}"
                )
        elif self.gate:
            raise ArgumentError("gate: the Bradley-Terry loss (loss='bt') has no gate, got gate=True")
        if self.gate_activation not in _GATE_ACTIVATIONS:
            raise ArgumentError(f"gate_activation: expected one of {_GATE_ACTIVATIONS}, got {self.gate_activation!r}")
        if self.max_tokens is not None and (
            isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1
        ):
            raise ArgumentError(f"max_tokens: expected a positive int or None, got {self.max_tokens!r}")
        if self.tau is None:
            self.tau = 0.1 if self.loss == "gpm" else 1.0
        if isinstance(self.tau, bool) or not isinstance(self.tau, (int, float)) or not self.tau > 0:
            raise ArgumentError(f"tau: expected a positive number, got {self.tau!r}")
        self.tau = float(self.tau)
        if self.bf16 is None and self.use_cpu:
            self.bf16 = False
        if self.gradient_checkpointing is None:
            default = not self.use_cpu
            if "activation_checkpointing" in self.__dataclass_fields__:  # transformers ≥ 5.23: the new name
                if self.activation_checkpointing is None:
                    self.activation_checkpointing = default
            else:
                self.gradient_checkpointing = default
        super().__post_init__()


@dataclass
class GPMDataCollator(DataCollatorMixin):
    """Pads tokenized preference pairs for :class:`GPMRewardTrainer` (right padding).

    Input examples: ``{"chosen_ids": [...], "rejected_ids": [...], "prompt_length": int, ("margin": float)}``.
    Output: ``input_ids [2B, T]`` and ``attention_mask [2B, T]`` (rows ``:B`` chosen, ``B:`` rejected),
    ``prompt_lengths [2B]`` (each example's prompt length, for its chosen and its rejected row) and, when the
    examples have it, ``margin [B]`` (float32).

    Args:
        pad_token_id: token id used for padding.
        pad_to_multiple_of: pad T up to a multiple of this (``None``: the batch maximum).
        return_tensors: only ``"pt"``.
    """

    pad_token_id: int
    pad_to_multiple_of: Optional[int] = None
    return_tensors: str = "pt"

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        """Collates a list of examples into a padded batch (see the class docstring)."""
        seqs = [list(e["chosen_ids"]) for e in examples] + [list(e["rejected_ids"]) for e in examples]
        width = max(len(s) for s in seqs)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, ids in enumerate(seqs):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        lengths = torch.tensor([int(e["prompt_length"]) for e in examples], dtype=torch.long)
        out = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "prompt_lengths": torch.cat([lengths, lengths]),
        }
        if "margin" in examples[0]:
            out["margin"] = torch.tensor([float(e["margin"]) for e in examples], dtype=torch.float32)
        return out


# --------------------------------------------------------------------------------------------------
# tokenization with the prompt boundary


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _clamp(n: int, chosen_ids: list[int], rejected_ids: list[int]) -> int:
    return max(1, min(n, len(chosen_ids), len(rejected_ids)))


def _template(processing_class: Any, messages: list, kwargs: dict) -> list[int]:
    return list(processing_class.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"])


def _shared_messages(chosen: list, rejected: list) -> int:
    n = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        n += 1
    return n


def _check_text(value: Any, field_name: str, where: str) -> str:
    """``"text"`` or ``"messages"``; raises :class:`ArgumentError` naming ``where`` and the field otherwise."""
    if value is None:
        raise ArgumentError(f"{where}: field {field_name!r} is missing (null)")
    if isinstance(value, str):
        if not value.strip():
            raise ArgumentError(f"{where}: field {field_name!r} is empty")
        return "text"
    if isinstance(value, (list, tuple)):
        if len(value) == 0:
            raise ArgumentError(f"{where}: field {field_name!r} is an empty message list")
        for i, message in enumerate(value):
            if not isinstance(message, dict):
                raise ArgumentError(
                    f"{where}: field {field_name!r}[{i}]: expected a message dict with 'role' and 'content', "
                    f"got {type(message).__name__}"
                )
            if not isinstance(message.get("role"), str):
                raise ArgumentError(
                    f"{where}: field {field_name!r}[{i}]['role']: expected a string, got "
                    f"{type(message.get('role')).__name__}"
                )
            if not isinstance(message.get("content"), str):
                raise ArgumentError(
                    f"{where}: field {field_name!r}[{i}]['content']: expected a string, got "
                    f"{type(message.get('content')).__name__}"
                )
        return "messages"
    raise ArgumentError(
        f"{where}: field {field_name!r}: expected a non-empty string or a list of chat messages, "
        f"got {type(value).__name__} {value!r:.40}"
    )


def check_preference_row(row: Any, where: str = "row") -> None:
    """Validates one raw preference example; raises :class:`ArgumentError` naming ``where`` and the field.

    Accepted: a dict with ``chosen`` and ``rejected`` (non-empty strings, or non-empty lists of
    ``{"role": str, "content": str}`` messages), an optional ``prompt`` of the same kind (a message list
    prompt with message list completions), an optional numeric ``margin``; or pre-tokenized ``chosen_ids`` /
    ``rejected_ids`` (non-empty lists of ints). A ``prompt`` key whose value is ``None``/empty is an error
    (a column that exists must be filled in every row).

    Args:
        row: the example.
        where: how errors name the example, e.g. ``"train_dataset row 3"`` or ``"train.jsonl line 4"``.
    """
    if not isinstance(row, Mapping):
        raise ArgumentError(f"{where}: expected a JSON object (dict), got {type(row).__name__}")
    if "chosen_ids" in row or "rejected_ids" in row:
        for key in ("chosen_ids", "rejected_ids"):
            ids = row.get(key)
            if (
                not isinstance(ids, (list, tuple))
                or not ids
                or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids)
            ):
                raise ArgumentError(f"{where}: field {key!r}: expected a non-empty list of token ids, got {ids!r:.40}")
        return
    kinds = {key: _check_text(row.get(key), key, where) for key in ("chosen", "rejected")}
    if "prompt" in row:
        kinds["prompt"] = _check_text(row["prompt"], "prompt", where)
    if len(set(kinds.values())) > 1:
        raise ArgumentError(
            f"{where}: fields mix plain strings and message lists ({', '.join(f'{k}: {v}' for k, v in kinds.items())})"
        )
    margin = row.get("margin", 0.0)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
        raise ArgumentError(f"{where}: field 'margin': expected a finite number, got {margin!r:.40}")


def _tokenize_pair(example: dict[str, Any], processing_class: Any) -> dict[str, Any]:
    """``chosen_ids``, ``rejected_ids`` (as TRL tokenizes them) and ``prompt_length`` of one raw example."""
    prompt = example.get("prompt")
    if is_conversational(example):
        tools = example.get("tools")
        tools = json.loads(tools) if isinstance(tools, str) else tools
        kwargs = {"tools": tools, **(example.get("chat_template_kwargs") or {})}
        chosen, rejected = list(example["chosen"]), list(example["rejected"])
        if prompt is None:  # implicit: the shared leading messages are the prompt
            n = _shared_messages(chosen, rejected)
            if 0 < n < min(len(chosen), len(rejected)):
                prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
        if prompt is None:
            chosen_ids, rejected_ids = (
                _template(processing_class, chosen, kwargs),
                _template(processing_class, rejected, kwargs),
            )
            n_prompt = _common_prefix(chosen_ids, rejected_ids)
        else:
            prompt = list(prompt)
            chosen_ids = _template(processing_class, prompt + chosen, kwargs)
            rejected_ids = _template(processing_class, prompt + rejected, kwargs)
            prompt_ids = _template(processing_class, prompt, {**kwargs, "add_generation_prompt": False})
            n_prompt = min(_common_prefix(prompt_ids, chosen_ids), _common_prefix(prompt_ids, rejected_ids))
    else:
        eos = processing_class.eos_token
        if eos is None:
            raise ArgumentError(
                "processing_class.eos_token: standard (plain text) preference data gets an EOS appended to each "
                "sequence, as in TRL, but the tokenizer has no eos_token; set tokenizer.eos_token"
            )
        chosen, rejected = example["chosen"], example["rejected"]
        if not chosen.endswith(eos):
            chosen = chosen + eos
        if not rejected.endswith(eos):
            rejected = rejected + eos
        if prompt is None:
            chosen_ids = list(processing_class(text=chosen)["input_ids"])
            rejected_ids = list(processing_class(text=rejected)["input_ids"])
            n_prompt = _common_prefix(chosen_ids, rejected_ids)
        else:
            chosen_ids = list(processing_class(text=prompt + chosen)["input_ids"])
            rejected_ids = list(processing_class(text=prompt + rejected)["input_ids"])
            prompt_ids = list(processing_class(text=prompt)["input_ids"])
            n_prompt = min(_common_prefix(prompt_ids, chosen_ids), _common_prefix(prompt_ids, rejected_ids))
    return {
        "chosen_ids": chosen_ids,
        "rejected_ids": rejected_ids,
        "prompt_length": _clamp(n_prompt, chosen_ids, rejected_ids),
    }


def _check_and_tokenize(example: dict[str, Any], index: int, processing_class: Any, dataset_name: str):
    """:func:`check_preference_row` (naming ``<dataset_name>_dataset row <index>``), then :func:`_tokenize_pair`."""
    check_preference_row(example, f"{dataset_name}_dataset row {index}")
    return _tokenize_pair(example, processing_class)


def _add_prompt_length(example: dict[str, Any]) -> dict[str, Any]:
    """Pre-tokenized pairs without a ``prompt_length``: the longest common prefix of the two sequences."""
    c, r = list(example["chosen_ids"]), list(example["rejected_ids"])
    return {"prompt_length": _clamp(_common_prefix(c, r), c, r)}


class _FitsMaxLength:
    """Filter predicate ``len(chosen_ids) <= max_length and len(rejected_ids) <= max_length``.

    For streamed (``IterableDataset``) data the drops are counted in ``counts[name]`` as the pairs go by, with a
    warning at the first one; for ``Dataset`` the trainer counts them exactly after filtering.
    """

    def __init__(self, max_length: int, counts: dict, name: str, warn: bool) -> None:
        self.max_length, self.counts, self.name, self.warn = max_length, counts, name, warn

    def __call__(self, example: dict[str, Any]) -> bool:
        return self.check(
            len(example["chosen_ids"]) <= self.max_length and len(example["rejected_ids"]) <= self.max_length
        )

    def check(self, ok: bool) -> bool:
        """Counts (and warns about the first) ``not ok``; returns ``ok``."""
        if not ok:
            self.counts[self.name] = self.counts.get(self.name, 0) + 1
            if self.warn and self.counts[self.name] == 1:
                logger.warning(
                    "%s_dataset: dropping preference pairs longer than max_length=%d tokens (counted in "
                    "trainer.dropped_pairs[%r])", self.name, self.max_length, self.name,
                )  # fmt: skip
        return ok


# --------------------------------------------------------------------------------------------------
# trainer


def _is_gpm_checkpoint(path: str) -> bool:
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        return False
    with open(config_file, encoding="utf-8") as fh:
        return json.load(fh).get("model_type") == GPMConfig.model_type


def _example_costs(dataset: Any) -> tuple:
    """``(n_seqs, tokens, longest)`` int64 arrays of a tokenized dataset's examples (TRL rows or records)."""
    import numpy as np

    columns = get_dataset_column_names(dataset)
    if "response_ids" in columns:
        prompts, responses = dataset["prompt_ids"], dataset["response_ids"]
        lengths = [[len(p) + len(r) for r in rs] for p, rs in zip(prompts, responses)]
    else:
        lengths = [[len(c), len(r)] for c, r in zip(dataset["chosen_ids"], dataset["rejected_ids"])]
    n = np.array([len(x) for x in lengths], dtype=np.int64)
    return n, np.array([sum(x) for x in lengths], dtype=np.int64), np.array([max(x) for x in lengths], dtype=np.int64)


try:  # transformers ≥ 5.23: a batch sampler the Trainer passes as `batch_sampler` without re-sharding it
    from transformers.trainer_pt_utils import BatchRebalanceSampler as _RankAwareBatchSampler
except ImportError:  # pragma: no cover - older transformers
    _RankAwareBatchSampler = None


if _RankAwareBatchSampler is not None:

    class _TokenBudgetSampler(_RankAwareBatchSampler):
        """:class:`gpmkit.data.TokenBudgetBatchSampler` presented as transformers' rank-aware batch sampler."""

        def __init__(self, costs: tuple, **kwargs: Any) -> None:  # no super().__init__: nothing to set up
            from .data import TokenBudgetBatchSampler

            self.inner = TokenBudgetBatchSampler(costs, **kwargs)

        def __len__(self) -> int:
            return len(self.inner)

        def __iter__(self):
            return iter(self.inner)

        def set_epoch(self, epoch: int) -> None:
            self.inner.set_epoch(epoch)

else:  # pragma: no cover

    def _TokenBudgetSampler(costs: tuple, **kwargs: Any):
        raise ArgumentError("max_tokens: needs transformers ≥ 5.23 (BatchRebalanceSampler)")


_MODEL_KEYS = (
    "input_ids", "attention_mask", "prompt_lengths", "position_ids", "last_index", "prompt_last_index",
    "cu_seq_lens_q", "max_length_q",
)  # fmt: skip


class GPMRewardTrainer(RewardTrainer):
    """TRL ``RewardTrainer`` for General Preference Models (see the module docstring for the data conventions).

    Args:
        model: a :class:`GPMModel`; a model id / local path (a gpmkit checkpoint → :meth:`GPMModel.from_pretrained`,
            any other → :meth:`GPMModel.from_backbone` with ``args.model_init_kwargs`` and the config's head fields;
            ``dtype`` defaults to float32 like TRL); or a plain ``PreTrainedModel`` (e.g. ``LlamaForCausalLM``)
            whose base model becomes the backbone.
        args: a :class:`GPMRewardConfig` (a plain ``RewardConfig`` is upgraded with the GPM defaults).
        data_collator: default :class:`GPMDataCollator`.
        train_dataset, eval_dataset: TRL preference datasets (standard or conversational, implicit or explicit
            prompt, optional ``margin``), or pre-tokenized ones with ``chosen_ids``/``rejected_ids`` (and optionally
            ``prompt_length``).
        processing_class: the tokenizer (default: loaded from the model id/path).
        **kwargs: the other ``RewardTrainer`` arguments (``callbacks``, ``optimizers``, ``peft_config``...).

    Attributes:
        dropped_pairs: ``{"train": n, "eval": m}``, the number of pairs of each dataset dropped for being longer
            than ``args.max_length`` (also logged as a warning by the ``gpmkit.trl`` logger when non-zero).

    Raises:
        ArgumentError: a dataset without ``chosen``/``rejected`` (or ``chosen_ids``/``rejected_ids``) columns, a
            row with a missing (``None``), empty or non-text ``prompt``/``chosen``/``rejected`` or a non-numeric
            ``margin`` (the message names ``<train|eval>_dataset row <i>`` and the field), standard text data with
            a tokenizer without ``eos_token``, a tokenizer with neither ``pad_token`` nor ``eos_token``, a
            :class:`GPMModel` that disagrees with ``args.loss``, or an unsupported model type.
        ShapeError: an odd ``value_head_dim`` (from :class:`GPMRewardConfig`).
    """

    _tag_names: ClassVar[list[str]] = ["trl", "reward-trainer", "gpmkit", "gpm"]
    _name = "GPM Reward"

    def __init__(
        self,
        model: Union[str, os.PathLike, PreTrainedModel],
        args: Optional[RewardConfig] = None,
        data_collator: Any = None,
        train_dataset: Optional[Union[Dataset, IterableDataset]] = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        **kwargs: Any,
    ) -> None:
        if args is None:
            args = GPMRewardConfig(output_dir="gpm-reward")
        elif not isinstance(args, GPMRewardConfig):
            raise ArgumentError(f"args: expected a GPMRewardConfig, got {type(args).__name__}")
        if isinstance(model, (str, os.PathLike)):
            path = os.fspath(model)
            if processing_class is None:
                revision = (args.model_init_kwargs or {}).get("revision")
                processing_class = AutoTokenizer.from_pretrained(
                    path, revision=revision, trust_remote_code=args.trust_remote_code
                )
            model = self._load_model(path, args)
        elif isinstance(model, GPMModel):
            if model.config.bt != (args.loss == "bt"):
                raise ArgumentError(
                    f"model: a GPMModel with bt={model.config.bt} cannot be trained with loss={args.loss!r}; build "
                    "it with bt=True for loss='bt' (or pass a backbone and let the trainer add the heads)"
                )
        elif isinstance(model, PreTrainedModel):
            model = self._wrap(model, args)
        else:
            raise ArgumentError(
                f"model: expected a GPMModel, a model id/path or a PreTrainedModel, got {type(model).__name__}"
            )
        self.dropped_pairs: dict[str, int] = {}
        if processing_class is not None and hasattr(processing_class, "get_vocab"):
            pad_token = args.pad_token or processing_class.pad_token or processing_class.eos_token
            if pad_token is None:
                raise ArgumentError(
                    f"processing_class: the tokenizer ({type(processing_class).__name__}) has neither pad_token nor "
                    "eos_token, so batches cannot be padded; set tokenizer.pad_token (or args.pad_token)"
                )
        if args.packing and not model.supports_packing:
            raise ArgumentError(
                f"packing: the backbone {type(model.model).__name__} cannot run packed batches (not a causal decoder "
                "on transformers' create_causal_mask, nor flash attention); use packing=False or None"
            )
        self.packing = model.supports_packing if args.packing is None else bool(args.packing)
        records = train_dataset is not None and "response_ids" in (get_dataset_column_names(train_dataset) or [])
        if data_collator is None and (processing_class is not None or self.packing or records):
            pad = 0
            if processing_class is not None:
                pad = processing_class.pad_token_id
                if args.pad_token is not None:
                    pad = processing_class.convert_tokens_to_ids(args.pad_token)
                if pad is None:
                    pad = processing_class.eos_token_id
            multiple = args.pad_to_multiple_of if isinstance(args.pad_to_multiple_of, int) else None
            if self.packing or records:
                from .data import PreferenceCollator

                data_collator = PreferenceCollator(
                    packing=self.packing, pad_token_id=pad if pad is not None else 0, pad_to_multiple_of=multiple
                )
            else:
                data_collator = GPMDataCollator(pad_token_id=pad, pad_to_multiple_of=args.pad_to_multiple_of)
        # RewardTrainer rejects models whose config.num_labels != 1 (a sequence-classification convention that a
        # GPM does not use); present num_labels = 1 for the duration of its __init__ only.
        config = model.config
        saved = (config.id2label, config.label2id)
        config.num_labels = 1
        try:
            super().__init__(
                model=model,
                args=args,
                data_collator=data_collator,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                **kwargs,
            )
        finally:
            config.id2label, config.label2id = saved

    @staticmethod
    def _head_kwargs(args: GPMRewardConfig) -> dict[str, Any]:
        if args.loss == "bt":
            return {"bt": True, "tau": args.tau}
        return {
            "value_head_dim": args.value_head_dim,
            "gate": args.gate,
            "gate_activation": args.gate_activation,
            "l2_normalize": args.l2_normalize,
            "tau": args.tau,
        }

    def _load_model(self, path: str, args: GPMRewardConfig) -> GPMModel:
        """A :class:`GPMModel` from a model id/path (gpmkit checkpoint, or a backbone plus fresh heads)."""
        from transformers import set_seed

        kwargs = dict(args.model_init_kwargs or {})
        kwargs.setdefault("dtype", torch.float32)
        kwargs.setdefault("trust_remote_code", args.trust_remote_code)
        if _is_gpm_checkpoint(path):
            model = GPMModel.from_pretrained(path, **kwargs)
            if model.config.bt != (args.loss == "bt"):
                raise ArgumentError(f"model: checkpoint {path!r} has bt={model.config.bt}, but loss={args.loss!r}")
            return model
        backbone = AutoModel.from_pretrained(path, **kwargs)
        set_seed(args.seed)  # the heads are random: same seed, same heads (as RewardTrainer does)
        return self._wrap(backbone, args)

    @classmethod
    def _wrap(cls, backbone: PreTrainedModel, args: GPMRewardConfig) -> GPMModel:
        """``GPMModel.from_backbone`` with the config's head fields."""
        return GPMModel.from_backbone(backbone, **cls._head_kwargs(args))

    # ----------------------------------------------------------------------------------------------
    # data

    def _prepare_dataset(
        self,
        dataset: Union[Dataset, IterableDataset],
        processing_class: Any,
        args: RewardConfig,
        dataset_name: str,
    ) -> Union[Dataset, IterableDataset]:
        """Tokenizes a preference dataset like TRL and adds the ``prompt_length`` column; filters by ``max_length``."""
        columns = get_dataset_column_names(dataset)
        if "response_ids" in columns:
            return self._prepare_records(dataset, args, dataset_name)
        is_processed = "chosen_ids" in columns and "rejected_ids" in columns
        if not is_processed and not ("chosen" in columns and "rejected" in columns):
            raise ArgumentError(
                f"{dataset_name}_dataset: expected 'chosen' and 'rejected' columns (optionally 'prompt' and "
                f"'margin'), or pre-tokenized 'chosen_ids' and 'rejected_ids', got columns {sorted(columns)}"
            )
        map_kwargs: dict[str, Any] = {}
        if isinstance(dataset, Dataset):
            map_kwargs["num_proc"] = args.dataset_num_proc
        with global_then_local_main_first():
            if not is_processed:
                if isinstance(dataset, Dataset):
                    map_kwargs["desc"] = f"Tokenizing {dataset_name} dataset"
                dataset = dataset.map(
                    _check_and_tokenize,
                    with_indices=True,
                    fn_kwargs={"processing_class": processing_class, "dataset_name": dataset_name},
                    **map_kwargs,
                )
            elif "prompt_length" not in columns:
                if isinstance(dataset, Dataset):
                    map_kwargs["desc"] = f"Prompt lengths of {dataset_name} dataset"
                dataset = dataset.map(_add_prompt_length, **map_kwargs)
            if args.max_length is not None:
                if isinstance(dataset, Dataset):
                    map_kwargs["desc"] = f"Filtering {dataset_name} >{args.max_length} tokens"
                max_length = args.max_length
                dropped = getattr(self, "dropped_pairs", None)
                if dropped is None:
                    dropped = self.dropped_pairs = {}
                dropped[dataset_name] = 0
                keep = _FitsMaxLength(max_length, dropped, dataset_name, warn=not isinstance(dataset, Dataset))
                n_before = len(dataset) if isinstance(dataset, Dataset) else None
                dataset = dataset.filter(keep, **map_kwargs)
                if n_before is not None:  # exact count (num_proc workers cannot update the shared counter)
                    dropped[dataset_name] = n_before - len(dataset)
                    if dropped[dataset_name]:
                        logger.warning(
                            "%s_dataset: dropped %d of %d preference pairs longer than max_length=%d tokens",
                            dataset_name, dropped[dataset_name], n_before, max_length,
                        )  # fmt: skip
        return dataset

    def _prepare_records(
        self, dataset: Union[Dataset, IterableDataset], args: RewardConfig, dataset_name: str
    ) -> Union[Dataset, IterableDataset]:
        """Multi-response records (``prompt_ids``, ``response_ids``, ``pairs`` or ``scores``; see :mod:`gpmkit.data`)
        are already tokenized; records with a sequence longer than ``max_length`` are dropped (counted), as TRL
        drops long pairs."""
        columns = get_dataset_column_names(dataset)
        if "prompt_ids" not in columns or not ({"pairs", "scores"} & set(columns)):
            raise ArgumentError(
                f"{dataset_name}_dataset: multi-response records need 'prompt_ids', 'response_ids' and 'pairs' or "
                f"'scores' columns, got {sorted(columns)}"
            )
        dropped = getattr(self, "dropped_pairs", None)
        if dropped is None:
            dropped = self.dropped_pairs = {}
        dropped[dataset_name] = 0
        if args.max_length is None:
            return dataset
        max_length = args.max_length

        def fits(example: dict[str, Any]) -> bool:
            n = len(example["prompt_ids"])
            return all(n + len(r) <= max_length for r in example["response_ids"])

        if isinstance(dataset, Dataset):
            n_before = len(dataset)
            dataset = dataset.filter(fits, num_proc=args.dataset_num_proc, desc=f"Filtering {dataset_name} records")
            dropped[dataset_name] = n_before - len(dataset)
            if dropped[dataset_name]:
                logger.warning(
                    "%s_dataset: dropped %d of %d records with a sequence longer than max_length=%d tokens",
                    dataset_name, dropped[dataset_name], n_before, max_length,
                )  # fmt: skip
            return dataset
        keep = _FitsMaxLength(max_length, dropped, dataset_name, warn=True)
        return dataset.filter(lambda e: keep.check(fits(e)))

    def _get_train_sampler(self, train_dataset=None):
        """With ``args.max_tokens``: a token-budget batch sampler (rank-aware; see :class:`GPMRewardConfig`)."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.max_tokens is None or dataset is None or not hasattr(dataset, "__len__"):
            return super()._get_train_sampler(train_dataset)
        return _TokenBudgetSampler(
            _example_costs(dataset),
            max_tokens=self.args.max_tokens,
            padded=not self.packing,
            seed=self.args.seed,
            world_size=max(1, self.args.world_size),
            rank=self.args.process_index if self.args.world_size > 1 else 0,
            drop_last=self.args.dataloader_drop_last,
        )

    def _set_signature_columns_if_needed(self):
        """Keeps the columns the :class:`GPMDataCollator` needs when ``remove_unused_columns`` is on."""
        if self._signature_columns is None:
            self._signature_columns = [
                "chosen_ids", "rejected_ids", "prompt_length", "margin",
                *_RECORD_COLUMNS,
            ]  # fmt: skip

    # ----------------------------------------------------------------------------------------------
    # loss and metrics

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """GPM (or BT) loss of a collated batch; logs accuracy, scores, gate entropy and token counts.

        The model's forward (= :meth:`GPMModel.embed`, called through the wrapped model so DDP and autocast
        hooks apply) runs once on the 2B sequences; the loss is :func:`gpmkit.functional.gpm_loss` on
        ``(v[:B], v[B:], gate[:B])`` (the chosen rows' gate is the prompt's gate) or
        :func:`gpmkit.functional.bt_loss` on ``(r[:B], r[B:])``, with ``tau = args.tau`` and the margin.
        ``return_outputs`` gives ``{"scores": s [B]}`` (what evaluation collects as predictions).
        """
        mode = "train" if self.model.training else "eval"
        attention_mask = inputs.get("attention_mask")
        label = None
        if "pair_rows" in inputs:  # gpmkit.data batch: unique sequences (packed or padded) + comparison rows
            forward = {k: inputs[k] for k in _MODEL_KEYS if inputs.get(k) is not None}
            v, gate = model(**forward)
            rows = inputs["pair_rows"]
            v_chosen, v_rejected = v[rows[:, 0]], v[rows[:, 1]]
            gate_chosen = None if gate is None else gate[rows[:, 0]]
            label = inputs.get("label")
            n_tokens = inputs["input_ids"].numel() if attention_mask is None else attention_mask.sum()
        else:
            v, gate = model(
                input_ids=inputs["input_ids"],
                attention_mask=attention_mask,
                prompt_lengths=inputs.get("prompt_lengths"),
            )
            v_chosen, v_rejected = torch.chunk(v, 2)
            gate_chosen = None if gate is None else torch.chunk(gate, 2)[0]
            n_tokens = attention_mask.sum()
        margin = inputs.get("margin")
        tau = self.args.tau
        if self.args.loss == "bt":
            r_chosen, r_rejected = v_chosen.squeeze(-1), v_rejected.squeeze(-1)
            loss = F.bt_loss(r_chosen, r_rejected, tau=tau, margin=margin, label=label)
            if self.args.center_rewards_coefficient is not None:
                loss = loss + self.args.center_rewards_coefficient * torch.mean((r_chosen + r_rejected) ** 2)
            with torch.no_grad():
                scores = (r_chosen - r_rejected).float()
        else:
            loss = F.gpm_loss(v_chosen, v_rejected, gate=gate_chosen, tau=tau, margin=margin, label=label)
            with torch.no_grad():
                scores = F.preference_score(v_chosen.detach(), v_rejected.detach(), gate_chosen).float()

        if mode == "train":
            n_tokens = torch.as_tensor(n_tokens, device=v.device)
            num_tokens = self.accelerator.gather_for_metrics(n_tokens).sum().item()
            self._total_train_tokens += num_tokens // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        with torch.no_grad():
            gather = self.accelerator.gather_for_metrics
            metrics = {
                "accuracy": (scores > 0).float().mean(),
                "mean_score": scores.mean(),
                "mean_abs_score": scores.abs().mean(),
            }
            if gate_chosen is not None:
                p = gate_chosen.detach().float()
                p = p / p.sum(-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
                metrics["gate_entropy"] = torch.special.entr(p).sum(-1).mean()
            for key, value in metrics.items():
                self._metrics[mode][key].append(gather(value).mean().item())
        return (loss, {"scores": scores}) if return_outputs else loss


# --------------------------------------------------------------------------------------------------
# GPO (issue 7): the self-play trainer and the GPM reward adapters live in gpmkit._gpo (torch/transformers only;
# accelerate is imported when a GPOTrainer is built). Re-exported here; ``import gpmkit`` still imports none of it.

from ._gpo import GPOConfig, GPOTrainer, gpm_pairwise_reward_func, gpm_reward_func, gpo_targets  # noqa: E402

__all__ += ["GPOConfig", "GPOTrainer", "gpm_pairwise_reward_func", "gpm_reward_func", "gpo_targets"]
