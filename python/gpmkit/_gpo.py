"""General Preference Optimization (paper §5): :class:`GPOConfig`, :class:`GPOTrainer` and GPM reward adapters.

**GPO** (Eq. 5.3, iterative self-play). At iteration t, with π_t the policy at the start of the iteration:

1. sample K responses per training prompt from π_t (transformers ``generate``, batched over prompts);
2. embed every (prompt, response) with a :class:`~gpmkit.models.GPMModel` (K forward passes per prompt, batched)
   and compute the population win scores ``ŝ(y_i ≻ π_t) = (1/K) Σ_j s(y_i ≻ y_j)`` with
   :func:`gpmkit.functional.win_score` (O(K·d), Eq. 5.2);
3. compute the log-probabilities ``log π_t(y|x)`` once (π_t is the reference of the iteration, as in SPPO);
4. train with :func:`gpmkit.functional.gpo_loss`:
   ``((log π_θ(y|x) − log π_t(y|x)) / |y|^γ − clamp((c·ŝ − β·log Z)/β))²`` averaged over the samples, where
   ``c = score_scale`` (1 by default; the paper's pipeline feeds ``2ŝ/τ``, i.e. ``c = 2/τ``) and log Z = 0 (the
   paper's choice, default) or its estimate ``log (1/K) Σ_k exp(c·ŝ_k/β)`` (``log_z="estimate"``).

Two data modes: ``mode="all"`` trains on all K samples of each prompt (Eq. 5.3); ``mode="pair"`` trains on the
paper's practical chosen/rejected pair, the argmax and argmin of ŝ, with targets ŝ_w and ŝ_l (the mean of the two
squared errors per prompt, as the SPPO trainer's loss). ``loss="sppo"`` replaces the target by SPPO's
``(P̂ − ½)/β`` with ``P̂_i = (1/K) Σ_j σ(s(y_i ≻ y_j)/τ)`` (self term ½ included, as the paper's pipeline) through
:func:`gpmkit.functional.sppo_loss`; the same GPM or a Bradley-Terry one (``GPMModel`` with ``bt=True``:
``s = r_i − r_j``) gives the scores, so GPO vs SPPO and GPM vs BT compare like paper Table 3.

Distributed: the trainer uses ``accelerate`` (run it under ``torchrun`` or ``accelerate launch``). Prompts are
sharded across processes (each process generates and scores *all* K responses of its prompts, so a group is never
split), the policy is wrapped for DDP and gradients are averaged; per-iteration metrics are averaged over all processes.
When the prompt count does not divide by the number of processes, the last prompts are repeated to even the shards
(they are trained on, but excluded from the metrics).

Metrics (``trainer.history``, one dict per iteration, logged and shown by the progress bar): training ``loss``,
``mean_win_score`` / ``mean_target`` of the trained samples, ``response_length`` (tokens, EOS included),
``empty_fraction`` (responses whose text is empty), and on held-out prompts (``eval_prompts``) ``eval_win_score``
(mean ŝ(y ≻ π_0) of π_t's samples against π_0's samples of the same prompt: 0 in expectation for π_t = π_0, > 0
when the GPM prefers π_t), ``eval_win_rate`` (mean σ(s/τ) against π_0's samples), ``eval_kl`` (Monte-Carlo
``E_{y∼π_t}[log π_t(y|x) − log π_0(y|x)]``, sequence level; needs a frozen copy of π_0, ``kl_to_initial``) and
``eval_response_length``. Row 0 of the history is π_0 itself (iteration 0, before any update).

Bad input. K < 2 (no population), β ≤ 0, an unknown mode/loss, an empty prompt list or an empty prompt raise
:class:`~gpmkit.exceptions.ArgumentError`. **Tokenizers**: responses reach the GPM as *text* (decoded with the
policy tokenizer, re-encoded with the GPM's chat template), so a GPM with its own tokenizer works; the GPM tokenizer
is ``gpm_tokenizer``, else ``gpm.tokenizer``, else the policy tokenizer — and a tokenizer with more tokens than the
GPM's embedding table (the sign of a mismatch) or without a chat template raises ArgumentError. **Empty
generations** (the policy emits EOS first): kept by default; the GPM scores the empty assistant turn like any
response and the policy is trained on the log-probability of that EOS (counted in ``empty_fraction``);
``empty_generations="error"`` raises :class:`~gpmkit.exceptions.GPMError` naming the prompt instead.

Not implemented: vLLM generation (``use_vllm=True`` raises ArgumentError), checkpoint resumption inside an
iteration, DeepSpeed ZeRO-3 generation (generation uses the unwrapped local model).

This module imports torch, transformers and accelerate; it is reached through the lazy ``gpmkit.trl`` names.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from . import functional as F
from .exceptions import ArgumentError, GPMError

__all__ = ["GPOConfig", "GPOTrainer", "gpm_pairwise_reward_func", "gpm_reward_func", "gpo_targets"]

logger = logging.getLogger(__name__)

_MODES = ("all", "pair")
_LOSSES = ("gpo", "sppo")
_LOG_Z = ("zero", "estimate")
_OPTIMS = ("adamw", "rmsprop", "sgd")
_EMPTY = ("keep", "error")


def _check_positive(name: str, value: Any, integer: bool = False, allow_zero: bool = False) -> None:
    kind = int if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        want = "an int" if integer else "a finite number"
        raise ArgumentError(f"{name}: expected {want} {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ArgumentError(f"{name}: expected one of {choices}, got {value!r}")


@dataclass
class GPOConfig:
    """Hyper-parameters of :class:`GPOTrainer` (defaults: the paper's GPO recipe where it has one, paper §4.5).

    Args:
        output_dir: where :meth:`GPOTrainer.save_model` (and ``save_each_iteration``) write; ``None``: nowhere.
        loss: ``"gpo"`` (:func:`gpmkit.functional.gpo_loss` on ŝ) or ``"sppo"`` (:func:`~gpmkit.functional.sppo_loss`
            on P̂ = mean σ(s/τ)).
        mode: ``"pair"`` (argmax/argmin chosen/rejected per prompt, the paper's practical pipeline) or ``"all"``
            (all K samples, Eq. 5.3).
        num_iterations: self-play iterations T (paper: 3).
        num_generations: K responses per prompt (paper: 5); at least 2.
        max_new_tokens, temperature, top_p: sampling (paper: 2048, 0.7, 0.9; max_new_tokens defaults to 128 here).
        beta: β > 0 (paper: 0.001); the MWU step is 1/β.
        gamma: length-normalisation exponent γ (0 = off; 1 = the paper's LN-GPO, App. E.2).
        clamp: bound on the regression target (paper's scripts: 1000); ``None`` = no clamp.
        log_z: ``"zero"`` (paper) or ``"estimate"`` (``log (1/K) Σ_k exp(target_k)`` per prompt, GPO only).
        score_scale: multiplier c on ŝ before the loss (1; the paper's ``prb = 2s/τ`` pipeline is c = 2/τ).
        tau: temperature of SPPO's σ(s/τ) and of ``eval_win_rate``; ``None``: the GPM's ``config.tau``.
        learning_rate, optim, weight_decay, max_grad_norm: optimiser (paper: 5e-7, rmsprop); one optimiser for all
            iterations, constant learning rate. Only parameters with ``requires_grad`` are trained.
        per_device_train_batch_size, gradient_accumulation_steps, num_epochs_per_iteration: training passes over
            each iteration's samples (paper: 8, 1, 1).
        generation_batch_size: prompts per ``generate`` call (each gives K sequences).
        scoring_batch_size: sequences per GPM / log-probability forward pass.
        eval_num_generations: responses per held-out prompt for the eval metrics (π_t and π_0 alike).
        kl_to_initial: keep a frozen copy of π_0 for ``eval_kl`` (doubles the policy's memory).
        empty_generations: ``"keep"`` (default, see the module docstring) or ``"error"``.
        bf16: run the GPM under bf16 autocast (the policy stays in its own dtype).
        use_cpu: force CPU (otherwise accelerate picks the device).
        use_vllm: not supported (raises); reserved.
        seed: base seed (generation at iteration t on process r uses ``seed + 1000·t + r``).
        disable_tqdm: no progress bars.
        save_each_iteration: save the policy to ``output_dir/iter-{t}`` after each iteration.
    """

    output_dir: Optional[str] = None
    loss: str = "gpo"
    mode: str = "pair"
    num_iterations: int = 3
    num_generations: int = 5
    max_new_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 0.9
    beta: float = 0.001
    gamma: float = 0.0
    clamp: Optional[float] = None
    log_z: str = "zero"
    score_scale: float = 1.0
    tau: Optional[float] = None
    learning_rate: float = 5e-7
    optim: str = "rmsprop"
    weight_decay: float = 0.0
    max_grad_norm: Optional[float] = 1.0
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    num_epochs_per_iteration: int = 1
    generation_batch_size: int = 8
    scoring_batch_size: int = 16
    eval_num_generations: int = 4
    kl_to_initial: bool = True
    empty_generations: str = "keep"
    bf16: bool = False
    use_cpu: bool = False
    use_vllm: bool = False
    seed: int = 0
    disable_tqdm: bool = False
    save_each_iteration: bool = False

    def __post_init__(self) -> None:
        _check_choice("loss", self.loss, _LOSSES)
        _check_choice("mode", self.mode, _MODES)
        _check_choice("log_z", self.log_z, _LOG_Z)
        _check_choice("optim", self.optim, _OPTIMS)
        _check_choice("empty_generations", self.empty_generations, _EMPTY)
        if isinstance(self.num_generations, bool) or not isinstance(self.num_generations, int):
            raise ArgumentError(f"num_generations: expected an int K >= 2, got {self.num_generations!r}")
        if self.num_generations < 2:
            raise ArgumentError(
                f"num_generations: expected K >= 2 (the win score compares each response with the other samples "
                f"of its prompt; with K = 1 it is identically 0), got {self.num_generations}"
            )
        if not (isinstance(self.beta, (int, float)) and not isinstance(self.beta, bool)) or not (
            math.isfinite(self.beta) and self.beta > 0
        ):
            raise ArgumentError(f"beta: expected a finite number > 0 (the KL weight; MWU step 1/β), got {self.beta!r}")
        for name in ("num_iterations", "max_new_tokens", "per_device_train_batch_size", "gradient_accumulation_steps",
                     "num_epochs_per_iteration", "generation_batch_size", "scoring_batch_size",
                     "eval_num_generations"):  # fmt: skip
            _check_positive(name, getattr(self, name), integer=True)
        for name in ("temperature", "top_p", "learning_rate", "score_scale"):
            _check_positive(name, getattr(self, name))
        if self.top_p > 1:
            raise ArgumentError(f"top_p: expected a number in (0, 1], got {self.top_p!r}")
        _check_positive("weight_decay", self.weight_decay, allow_zero=True)
        if self.tau is not None:
            _check_positive("tau", self.tau)
        if self.clamp is not None:
            _check_positive("clamp", self.clamp, allow_zero=True)
        if self.max_grad_norm is not None:
            _check_positive("max_grad_norm", self.max_grad_norm)
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float)) or not math.isfinite(self.gamma):
            raise ArgumentError(f"gamma: expected a finite number, got {self.gamma!r}")
        if self.loss == "sppo" and (self.gamma != 0 or self.log_z != "zero" or self.clamp is not None):
            raise ArgumentError(
                "loss: 'sppo' has no length normalisation, log Z or clamp (gamma=0, log_z='zero', clamp=None), got "
                f"gamma={self.gamma!r}, log_z={self.log_z!r}, clamp={self.clamp!r}"
            )
        if self.use_vllm:
            raise ArgumentError("use_vllm: vLLM generation is not implemented in GPOTrainer; got use_vllm=True")

    def to_dict(self) -> dict:
        """The config as a JSON-serialisable dict."""
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# shared helpers: tokenizers, text, scoring


def _embedding_rows(model: Any) -> Optional[int]:
    try:
        return int(model.get_input_embeddings().num_embeddings)
    except Exception:  # models without a standard embedding table: no check
        return None


def _resolve_gpm_tokenizer(gpm: Any, gpm_tokenizer: Any, fallback: Any, fallback_name: str) -> Any:
    """The tokenizer the GPM reads text with, checked against the GPM's embedding table and for a chat template."""
    from .models import GPMModel

    if not isinstance(gpm, GPMModel):
        raise ArgumentError(f"gpm: expected a gpmkit.GPMModel, got {type(gpm).__name__}")
    tok, source = gpm_tokenizer, "gpm_tokenizer"
    if tok is None:
        tok, source = gpm.tokenizer, "gpm.tokenizer"
    if tok is None:
        tok, source = fallback, fallback_name
    if tok is None:
        raise ArgumentError("gpm_tokenizer: required (the GPM has no stored tokenizer), got None")
    rows = _embedding_rows(gpm)
    if rows is not None and len(tok) > rows:
        raise ArgumentError(
            f"{source}: has {len(tok)} tokens but the GPM's embedding table has {rows} rows, so it is not the GPM's "
            "tokenizer (a GPM and a policy with different tokenizers are fine: pass the GPM's own tokenizer as "
            "gpm_tokenizer, responses are handed over as text)"
        )
    if not getattr(tok, "chat_template", None):
        raise ArgumentError(f"{source}: the GPM scores chat-templated (prompt, response) pairs, got no chat_template")
    return tok


def _completion_text(completion: Any) -> str:
    """A completion as plain text: a string, or the content of the last message of a message list."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, (list, tuple)) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content", "")
        if isinstance(content, str):
            return content
        if isinstance(content, (list, tuple)):  # content blocks
            return "".join(b.get("text", "") for b in content if isinstance(b, dict))
    raise ArgumentError(
        f"completions: expected strings or lists of chat messages, got {type(completion).__name__} {completion!r:.60}"
    )


def _prompt_key(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, default=str)


def _embed(gpm: Any, tokenizer: Any, prompts: Sequence[Any], texts: Sequence[str], batch_size: int, bf16: bool):
    """GPM embeddings ``[N, 2k]`` (``[r, 1]`` for BT) and gates ``[N, k]`` (or None) of N (prompt, text) pairs."""
    return gpm._embed_texts(list(zip(prompts, texts)), tokenizer, batch_size, bf16)


# --------------------------------------------------------------------------------------------------
# reward adapters for TRL's online trainers


def gpm_reward_func(
    model: Any,
    tokenizer: Any = None,
    *,
    reference_column: Optional[str] = None,
    gather_groups: bool = False,
    batch_size: int = 8,
    bf16: bool = False,
    scale: float = 1.0,
) -> Callable[..., list[float]]:
    """A reward function for ``trl.GRPOTrainer(reward_funcs=...)`` / ``trl.RLOOTrainer`` (TRL 1.16) from a GPM.

    The returned callable has TRL's custom reward signature ``f(prompts, completions, **kwargs) -> list[float]``
    (standard text or conversational prompts/completions; the other keyword arguments TRL passes —
    ``completion_ids``, ``trainer_state``, ``log_extra``, ``log_metric``, dataset columns — are accepted).

    Scoring (one GPM forward pass per completion, O(G·d) per group):

    - default: each completion's **win score against its group**, ``ŝ_i = (1/G) Σ_j s(y_i ≻ y_j)`` (Eq. 5.2), where a
      group is a run of consecutive completions of the same prompt — TRL's ``RepeatSampler`` puts the G generations
      of a prompt next to each other. TRL calls reward functions on each process's *local* slice; when G divides
      each process's share of the generation batch (e.g. ``per_device_train_batch_size`` a multiple of
      ``num_generations``, with ``steps_per_generation = 1``) groups are whole and the score is exact. Otherwise a
      group split across processes is scored against its local part only (a smaller-population estimate), and a
      lone completion gets 0 (with a one-time warning) — unless ``gather_groups=True``;
    - ``gather_groups=True``: the embeddings and prompt keys are all-gathered over ``torch.distributed`` (every
      process must call the function at the same time, as TRL does), groups are formed over the global batch in
      process order, and each process gets the scores of its own completions: exact for any split;
    - ``reference_column="col"``: the score of each completion against a reference completion from the dataset
      column ``col`` (``s(y ≻ y_ref | x)``); no groups, no communication.

    Args:
        model: a :class:`~gpmkit.models.GPMModel` (a BT one gives ``r_i − mean r``).
        tokenizer: the GPM's tokenizer (default ``model.tokenizer``); must have a chat template.
        reference_column, gather_groups: see above (mutually exclusive).
        batch_size: sequences per GPM forward pass.
        bf16: bf16 autocast for the GPM.
        scale: multiplier on the returned scores (e.g. ``1/τ`` for logit units).

    Returns:
        the reward callable (``__name__ = "gpm_win_score"``).
    """
    tokenizer = _resolve_gpm_tokenizer(model, tokenizer, None, "tokenizer")
    _check_positive("batch_size", batch_size, integer=True)
    if reference_column is not None and gather_groups:
        raise ArgumentError("gather_groups: not used with reference_column (no groups); got both")
    warned = []

    def gpm_win_score(prompts: list, completions: list, **kwargs: Any) -> list[float]:
        if len(prompts) != len(completions):
            raise ArgumentError(f"completions: expected {len(prompts)} (one per prompt), got {len(completions)}")
        if not completions:
            return []
        texts = [_completion_text(c) for c in completions]
        if reference_column is not None:
            if reference_column not in kwargs:
                raise ArgumentError(
                    f"reference_column: column {reference_column!r} is not among the reward function's keyword "
                    f"arguments {sorted(k for k in kwargs if k not in ('trainer_state', 'log_extra', 'log_metric'))}"
                )
            refs = [_completion_text(c) for c in kwargs[reference_column]]
            v, gate = _embed(model, tokenizer, list(prompts) * 2, texts + refs, batch_size, bf16)
            n = len(texts)
            s = F.preference_score(v[:n], v[n:], None if gate is None else gate[:n])
            return (scale * s).tolist()
        v, gate = _embed(model, tokenizer, prompts, texts, batch_size, bf16)
        keys = [_prompt_key(p) for p in prompts]
        start = 0
        import torch.distributed as dist

        if gather_groups and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            world, rank = dist.get_world_size(), dist.get_rank()
            payload = (keys, v.cpu(), None if gate is None else gate.cpu())
            parts: list = [None] * world
            dist.all_gather_object(parts, payload)
            start = sum(len(p[0]) for p in parts[:rank])
            keys = [k for p in parts for k in p[0]]
            v = torch.cat([p[1] for p in parts])
            gate = None if gate is None else torch.cat([p[2] for p in parts])
        scores = torch.zeros(len(keys))
        i = 0
        while i < len(keys):
            j = i
            while j < len(keys) and keys[j] == keys[i]:
                j += 1
            if j - i == 1 and not warned:
                warned.append(True)
                logger.warning(
                    "gpm_reward_func: a completion has no other completion of its prompt in the batch, so its win "
                    "score is 0 (groups split across processes? see gather_groups / reference_column)"
                )
            g = None if gate is None else gate[i]
            scores[i:j] = F.win_score(v[i:j], gate=g).float()
            i = j
        return (scale * scores[start : start + len(texts)]).tolist()

    return gpm_win_score


def gpm_pairwise_reward_func(
    model: Any, tokenizer: Any = None, *, batch_size: int = 8, bf16: bool = False, scale: float = 1.0
) -> Callable[..., list[float]]:
    """A pairwise reward function for ``trl.experimental.online_dpo.OnlineDPOTrainer(reward_funcs=...)`` (TRL 1.16).

    TRL 1.16 removed judges; its OnlineDPOTrainer generates 2 completions per prompt and calls each reward
    function once with ``prompts = 2 * prompts`` and ``completions = [first completions..., second completions...]``,
    then takes ``first >= second`` as "first is chosen" (``online_dpo_trainer.py``, ``training_step``). This adapter
    returns the antisymmetric scores ``[+s_1/2, …, +s_n/2, −s_1/2, …, −s_n/2]`` with ``s_i = s(a_i ≻ b_i | x_i)``,
    so the chosen completion is exactly the one the GPM prefers (ties: the first) and the trainer's logged reward
    margin is ``s`` itself. Both halves of a pair are always on the same process. This relies on TRL's ordering:
    the prompts of the two halves must be equal, otherwise ArgumentError.

    Args:
        model: a :class:`~gpmkit.models.GPMModel`.
        tokenizer: the GPM's tokenizer (default ``model.tokenizer``).
        batch_size, bf16, scale: as :func:`gpm_reward_func`.

    Returns:
        the reward callable (``__name__ = "gpm_pairwise_score"``).
    """
    tokenizer = _resolve_gpm_tokenizer(model, tokenizer, None, "tokenizer")
    _check_positive("batch_size", batch_size, integer=True)

    def gpm_pairwise_score(prompts: list, completions: list, **kwargs: Any) -> list[float]:
        if len(prompts) != len(completions) or len(completions) % 2:
            raise ArgumentError(
                f"completions: expected an even number of completions, one per prompt (OnlineDPOTrainer's "
                f"[first..., second...] layout), got {len(completions)} completions for {len(prompts)} prompts"
            )
        n = len(completions) // 2
        if n == 0:
            return []
        if [_prompt_key(p) for p in prompts[:n]] != [_prompt_key(p) for p in prompts[n:]]:
            raise ArgumentError(
                "prompts: expected the second half to repeat the first (OnlineDPOTrainer's 2 * prompts layout)"
            )
        texts = [_completion_text(c) for c in completions]
        v, gate = _embed(model, tokenizer, prompts, texts, batch_size, bf16)
        s = F.preference_score(v[:n], v[n:], None if gate is None else gate[:n]).float() * (scale / 2)
        return torch.cat([s, -s]).tolist()

    return gpm_pairwise_score


# --------------------------------------------------------------------------------------------------
# targets


def gpo_targets(
    v: torch.Tensor,
    gate: Optional[torch.Tensor],
    config: GPOConfig,
    tau: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Win scores, regression targets and the trained sample indices of P prompts × K responses.

    Args:
        v: ``[P, K, 2k]`` embeddings; gate: ``[P, k]`` or None.
        config: the :class:`GPOConfig` (loss, mode, score_scale, log_z, beta).
        tau: the SPPO temperature.

    Returns:
        ``(win [P, K], target [P, K], index [P, M])``: ŝ; the quantity handed to the loss as ``win_score``
        (GPO: ``c·ŝ − β·log Z``) or ``win_prob`` (SPPO: P̂); and the trained responses of each prompt
        (M = K for ``"all"``, ``[argmax, argmin]`` of ŝ for ``"pair"``).
    """
    win = F.win_score(v, gate=gate)
    if config.loss == "sppo":
        m = F.preference_matrix(v, gate)
        target = torch.sigmoid(m / tau).mean(-1)
    else:
        target = config.score_scale * win
        if config.log_z == "estimate":
            k = target.shape[-1]
            log_z = torch.logsumexp(target / config.beta, dim=-1, keepdim=True) - math.log(k)
            target = target - config.beta * log_z
    if config.mode == "all":
        index = torch.arange(v.shape[1]).expand(v.shape[0], -1)
    else:
        order = torch.sort(win, dim=-1, descending=True, stable=True).indices
        index = torch.stack([order[:, 0], order[:, -1]], dim=-1)
    return win, target, index


# --------------------------------------------------------------------------------------------------
# the trainer


def _as_prompts(prompts: Any, name: str) -> list:
    if prompts is None:
        return []
    if hasattr(prompts, "column_names"):  # datasets.Dataset
        if "prompt" not in prompts.column_names:
            raise ArgumentError(f"{name}: expected a 'prompt' column, got columns {prompts.column_names}")
        prompts = prompts["prompt"]
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise ArgumentError(f"{name}: expected a list of prompts (strings or chat message lists), got {type(prompts)}")
    out = list(prompts)
    for i, p in enumerate(out):
        if isinstance(p, str):
            if not p.strip():
                raise ArgumentError(f"{name}[{i}]: empty prompt")
        elif not (isinstance(p, (list, tuple)) and p and all(isinstance(m, dict) and "content" in m for m in p)):
            raise ArgumentError(f"{name}[{i}]: expected a string or a non-empty list of chat messages, got {p!r:.60}")
    return out


class GPOTrainer:
    """Iterative GPO / SPPO self-play against a General Preference Model (see the module docstring).

    Args:
        model: the policy, a transformers causal LM (``*ForCausalLM``); trained in place.
        gpm: the preference model, a :class:`~gpmkit.models.GPMModel` (``bt=True`` for a Bradley-Terry RM); frozen.
        args: a :class:`GPOConfig`.
        train_prompts: prompts (strings = one user turn, or chat message lists), or a ``datasets.Dataset`` with a
            ``prompt`` column.
        eval_prompts: optional held-out prompts for the per-iteration metrics against π_0.
        processing_class: the policy tokenizer (needs a pad or EOS token; prompts are chat-templated when it has a
            chat template).
        gpm_tokenizer: the GPM's tokenizer (default ``gpm.tokenizer``, else the policy tokenizer).

    Attributes:
        history: one metrics dict per iteration (row 0: π_0 before training).
        accelerator: the ``accelerate.Accelerator``.
    """

    def __init__(
        self,
        model: Any,
        gpm: Any,
        args: Optional[GPOConfig] = None,
        train_prompts: Any = None,
        eval_prompts: Any = None,
        processing_class: Any = None,
        gpm_tokenizer: Any = None,
    ) -> None:
        from accelerate import Accelerator
        from transformers import PreTrainedModel

        self.args = args if args is not None else GPOConfig()
        if not isinstance(self.args, GPOConfig):
            raise ArgumentError(f"args: expected a GPOConfig, got {type(self.args).__name__}")
        if not isinstance(model, PreTrainedModel) or not hasattr(model, "generate"):
            raise ArgumentError(f"model: expected a transformers causal LM (PreTrainedModel), got {type(model)}")
        if processing_class is None:
            raise ArgumentError("processing_class: the policy tokenizer is required, got None")
        self.tokenizer = processing_class
        rows = _embedding_rows(model)
        if rows is not None and len(processing_class) > rows:
            raise ArgumentError(
                f"processing_class: has {len(processing_class)} tokens but the policy's embedding table has {rows} rows"
            )
        self.pad_id = processing_class.pad_token_id
        if self.pad_id is None:
            self.pad_id = processing_class.eos_token_id
        if self.pad_id is None:
            raise ArgumentError("processing_class: needs a pad_token or an eos_token, has neither")
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos = eos if eos is not None else processing_class.eos_token_id
        self.eos_ids = set([eos] if isinstance(eos, int) else list(eos or []))
        self.gpm = gpm
        self.gpm_tokenizer = _resolve_gpm_tokenizer(gpm, gpm_tokenizer, processing_class, "processing_class")
        self.tau = float(self.args.tau if self.args.tau is not None else gpm.config.tau)
        self.train_prompts = _as_prompts(train_prompts, "train_prompts")
        if not self.train_prompts:
            raise ArgumentError("train_prompts: expected at least one prompt, got none")
        self.eval_prompts = _as_prompts(eval_prompts, "eval_prompts")

        self.accelerator = Accelerator(cpu=self.args.use_cpu)
        device = self.accelerator.device
        gpm.requires_grad_(False)
        gpm.eval()
        gpm.to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ArgumentError("model: no parameter requires grad, nothing to train")
        if self.args.optim == "adamw":
            opt = torch.optim.AdamW(params, lr=self.args.learning_rate, weight_decay=self.args.weight_decay)
        elif self.args.optim == "rmsprop":
            opt = torch.optim.RMSprop(params, lr=self.args.learning_rate, weight_decay=self.args.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=self.args.learning_rate, weight_decay=self.args.weight_decay)
        self.initial_model = None
        if self.args.kl_to_initial and self.eval_prompts:
            self.initial_model = copy.deepcopy(model).requires_grad_(False).eval().to(device)
        self.model, self.optimizer = self.accelerator.prepare(model, opt)
        fwd = inspect.signature(self._unwrapped.forward).parameters
        self._logits_to_keep = "logits_to_keep" in fwd
        self.history: list[dict[str, float]] = []
        self._initial_eval: Optional[dict] = None
        self._last_eval_texts: list[str] = []
        self.iteration = 0

    # ----------------------------------------------------------------------------------------------
    # plumbing

    @property
    def _unwrapped(self) -> Any:
        return self.accelerator.unwrap_model(self.model)

    def _shard(self, prompts: list) -> tuple[list, list[bool]]:
        """This process's prompts (contiguous shard, the list padded by repetition) and which are real."""
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        n = len(prompts)
        per = -(-n // world)
        idx = list(range(rank * per, (rank + 1) * per))
        return [prompts[i % n] for i in idx], [i < n for i in idx]

    def _policy_text(self, prompt: Any) -> tuple[str, bool]:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), False
        if not isinstance(prompt, str):
            raise ArgumentError("processing_class: chat-message prompts need a tokenizer with a chat_template")
        return prompt, True

    def _progress(self, total: int, desc: str):
        from tqdm.auto import tqdm

        disable = self.args.disable_tqdm or not self.accelerator.is_local_main_process
        return tqdm(total=total, desc=desc, disable=disable, leave=False)

    def _cut(self, ids: list[int]) -> list[int]:
        """A generated tail up to and including its first EOS (the pads after it dropped)."""
        for i, t in enumerate(ids):
            if t in self.eos_ids:
                return ids[: i + 1]
        while ids and ids[-1] == self.pad_id and self.pad_id not in self.eos_ids:
            ids = ids[:-1]
        return ids

    @torch.no_grad()
    def generate(self, prompts: list, k: int, seed: int, desc: str = "generate") -> dict:
        """K sampled responses per prompt from the current policy.

        Returns:
            ``{"prompt_ids": [P] token lists, "completion_ids": [P·K] token lists (EOS included),
            "texts": [P·K] decoded responses}``, responses of prompt p at rows ``p·K … p·K + K − 1``.
        """
        model = self._unwrapped
        was_training = model.training
        model.eval()
        device = self.accelerator.device
        torch.manual_seed(seed)
        prompt_ids, completion_ids = [], []
        bs = self.args.generation_batch_size
        bar = self._progress(len(prompts), desc)
        try:
            for start in range(0, len(prompts), bs):
                chunk = prompts[start : start + bs]
                enc = [self._policy_text(p) for p in chunk]
                ids = [self.tokenizer(t, add_special_tokens=special)["input_ids"] for t, special in enc]
                width = max(len(x) for x in ids)
                input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(ids), width), dtype=torch.long)
                for r, x in enumerate(ids):
                    input_ids[r, width - len(x) :] = torch.tensor(x, dtype=torch.long)
                    mask[r, width - len(x) :] = 1
                out = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=mask.to(device),
                    do_sample=True,
                    temperature=self.args.temperature,
                    top_p=self.args.top_p,
                    top_k=0,
                    max_new_tokens=self.args.max_new_tokens,
                    num_return_sequences=k,
                    pad_token_id=self.pad_id,
                    eos_token_id=sorted(self.eos_ids) or None,
                )
                tails = out[:, width:].tolist()
                prompt_ids.extend(ids)
                completion_ids.extend(self._cut(t) for t in tails)
                bar.update(len(chunk))
        finally:
            bar.close()
            model.train(was_training)
        texts = self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        if self.args.empty_generations == "error":
            for i, t in enumerate(texts):
                if not t.strip():
                    raise GPMError(
                        f"prompts: prompt {prompts[i // k]!r:.80} produced an empty generation (EOS first); "
                        "set empty_generations='keep' to train on it"
                    )
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "texts": texts}

    def _batch_logps(self, model: Any, prompt_ids: list, completion_ids: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequence log-probabilities ``Σ_t log π(y_t | x, y_<t)`` ``[B]`` and lengths ``[B]`` of B responses."""
        device = self.accelerator.device
        b = len(prompt_ids)
        pw = max(len(x) for x in prompt_ids)
        cw = max(1, max(len(y) for y in completion_ids))
        ids = torch.full((b, pw + cw), self.pad_id, dtype=torch.long)
        mask = torch.zeros((b, pw + cw), dtype=torch.long)
        cmask = torch.zeros((b, cw), dtype=torch.float32)
        for r, (x, y) in enumerate(zip(prompt_ids, completion_ids)):
            ids[r, pw - len(x) : pw] = torch.tensor(x, dtype=torch.long)
            mask[r, pw - len(x) : pw + len(y)] = 1
            if y:
                ids[r, pw : pw + len(y)] = torch.tensor(y, dtype=torch.long)
            cmask[r, : len(y)] = 1
        ids, mask, cmask = ids.to(device), mask.to(device), cmask.to(device)
        position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
        kwargs: dict[str, Any] = {"attention_mask": mask, "position_ids": position_ids, "use_cache": False}
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = cw + 1
        logits = model(input_ids=ids, **kwargs).logits[:, -(cw + 1) : -1].float()
        logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, pw:].unsqueeze(-1)).squeeze(-1)
        return (logp * cmask).sum(-1), cmask.sum(-1)

    @torch.no_grad()
    def _logps(self, model: Any, prompt_ids: list, completion_ids: list) -> torch.Tensor:
        bs = self.args.scoring_batch_size
        model_was_training = model.training
        model.eval()
        try:
            out = [
                self._batch_logps(model, prompt_ids[i : i + bs], completion_ids[i : i + bs])[0]
                for i in range(0, len(prompt_ids), bs)
            ]
        finally:
            model.train(model_was_training)
        return torch.cat(out) if out else torch.zeros(0)

    def _embed(self, prompts: list, texts: list, k: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """GPM embeddings ``[P, K, 2k]`` and gates ``[P, k]`` of K responses per prompt."""
        flat = [p for p in prompts for _ in range(k)]
        v, gate = _embed(self.gpm, self.gpm_tokenizer, flat, texts, self.args.scoring_batch_size, self.args.bf16)
        v = v.reshape(len(prompts), k, -1)
        return v, None if gate is None else gate.reshape(len(prompts), k, -1)[:, 0]

    def _sum(self, values: dict[str, tuple[float, float]]) -> dict[str, float]:
        """Cross-process weighted means of ``{name: (sum, count)}``."""
        names = sorted(values)
        t = torch.tensor([[values[n][0], values[n][1]] for n in names], dtype=torch.float64)
        t = self.accelerator.reduce(t.to(self.accelerator.device), reduction="sum").cpu()
        return {n: (t[i, 0] / t[i, 1]).item() if t[i, 1] > 0 else float("nan") for i, n in enumerate(names)}

    # ----------------------------------------------------------------------------------------------
    # evaluation

    def evaluate(self) -> dict[str, float]:
        """Metrics of the current policy on ``eval_prompts`` against π_0 (see the module docstring); {} without them.

        π_0's responses are sampled once, at the first call (so call it before training to get a true π_0 baseline;
        :meth:`train` does).
        """
        if not self.eval_prompts:
            return {}
        k = self.args.eval_num_generations
        prompts, real = self._shard(self.eval_prompts)
        rank = self.accelerator.process_index
        if self._initial_eval is None:
            gen0 = self.generate(prompts, k, self.args.seed + 7919 + rank, desc="eval π_0")
            v0, _ = self._embed(prompts, gen0["texts"], k)
            self._initial_eval = {"v": v0, **gen0}
        gen = self.generate(prompts, k, self.args.seed + 7919 * (self.iteration + 2) + rank, desc="eval π_t")
        self._last_eval_texts = [t for i, t in enumerate(gen["texts"]) if real[i // k]]  # this process's
        v, gate = self._embed(prompts, gen["texts"], k)
        v0 = self._initial_eval["v"]
        both = torch.cat([v, v0], dim=1)  # [P, 2K, 2k]: weights put the population on π_0's K samples
        weights = torch.cat([torch.zeros(k), torch.full((k,), 1.0 / k)]).to(both.dtype)
        win = F.win_score(both, weights=weights, gate=gate)[:, :k]  # ŝ(y ≻ π_0) of π_t's samples
        m = F.preference_matrix(both, gate)[:, :k, k:]
        rate = torch.sigmoid(m / self.tau).mean(-1)
        w = torch.tensor(real, dtype=torch.float64).unsqueeze(-1).expand(-1, k)
        lengths = torch.tensor([len(c) for c in gen["completion_ids"]], dtype=torch.float64).reshape(-1, k)
        vals = {
            "eval_win_score": ((win.double() * w).sum().item(), w.sum().item()),
            "eval_win_rate": ((rate.double() * w).sum().item(), w.sum().item()),
            "eval_response_length": ((lengths * w).sum().item(), w.sum().item()),
        }
        if self.initial_model is not None:
            pids = [p for p in gen["prompt_ids"] for _ in range(k)]
            lp = self._logps(self._unwrapped, pids, gen["completion_ids"]).double().cpu()
            lp0 = self._logps(self.initial_model, pids, gen["completion_ids"]).double().cpu()
            vals["eval_kl"] = (((lp - lp0).reshape(-1, k) * w).sum().item(), w.sum().item())
        return self._sum(vals)

    # ----------------------------------------------------------------------------------------------
    # one iteration

    def make_samples(self, prompts: list, real: Optional[list[bool]] = None) -> dict[str, Any]:
        """Steps 1–3 of an iteration: sample, score, select, reference log-probs (no parameter update).

        Returns:
            ``{"prompt_ids", "completion_ids", "texts"`` (all P·K responses), ``"win" [P, K], "target" [P, K],
            "index" [P, M]``, and the trained samples' ``"samples"``: a list of dicts with ``prompt_ids``,
            ``completion_ids``, ``target``, ``win``, ``ref_logp``, ``real``.
        """
        k = self.args.num_generations
        real = real if real is not None else [True] * len(prompts)
        seed = self.args.seed + 1000 * (self.iteration + 1) + self.accelerator.process_index
        gen = self.generate(prompts, k, seed, desc=f"iter {self.iteration + 1}: generate")
        v, gate = self._embed(prompts, gen["texts"], k)
        win, target, index = gpo_targets(v, gate, self.args, self.tau)
        samples = []
        for p in range(len(prompts)):
            for i in index[p].tolist():
                samples.append(
                    {
                        "prompt_ids": gen["prompt_ids"][p],
                        "completion_ids": gen["completion_ids"][p * k + i],
                        "empty": not gen["texts"][p * k + i].strip(),
                        "target": float(target[p, i]),
                        "win": float(win[p, i]),
                        "real": real[p],
                    }
                )
        ref = self._logps(self._unwrapped, [s["prompt_ids"] for s in samples], [s["completion_ids"] for s in samples])
        for s, r in zip(samples, ref.tolist()):
            s["ref_logp"] = r
        return {**gen, "win": win, "target": target, "index": index, "samples": samples}

    def compute_loss(self, model: Any, samples: list[dict]) -> torch.Tensor:
        """The GPO (or SPPO) loss of a mini-batch of samples from :meth:`make_samples` (mean over the batch)."""
        prompt_ids, completion_ids = [s["prompt_ids"] for s in samples], [s["completion_ids"] for s in samples]
        logp, lengths = self._batch_logps(model, prompt_ids, completion_ids)
        device = logp.device
        ref = torch.tensor([s["ref_logp"] for s in samples], dtype=logp.dtype, device=device)
        target = torch.tensor([s["target"] for s in samples], dtype=logp.dtype, device=device)
        a = self.args
        if a.loss == "sppo":
            return F.sppo_loss(logp, ref, target, a.beta)
        return F.gpo_loss(logp, ref, target, a.beta, lengths=lengths.clamp_min(1), gamma=a.gamma, clamp=a.clamp)

    def _train_on(self, samples: list[dict], bar) -> float:
        a = self.args
        gen = torch.Generator().manual_seed(a.seed + 31 * self.iteration)  # same order on every process
        bs, ga = a.per_device_train_batch_size, a.gradient_accumulation_steps
        total, count = 0.0, 0
        # dropout off (like TRL's disable_dropout): the log-ratio is measured against log π_t computed without it,
        # so at θ = θ_t it is exactly 0 and the loss is the pure regression of Eq. 5.3
        self.model.eval()
        for _ in range(a.num_epochs_per_iteration):
            order = torch.randperm(len(samples), generator=gen).tolist()
            batches = [[samples[i] for i in order[s : s + bs]] for s in range(0, len(order), bs)]
            for start in range(0, len(batches), ga):
                group = batches[start : start + ga]
                for j, batch in enumerate(group):
                    last = j == len(group) - 1
                    ctx = self.accelerator.no_sync(self.model) if not last else contextlib.nullcontext()
                    with ctx:
                        loss = self.compute_loss(self.model, batch)
                        self.accelerator.backward(loss / len(group))
                    total += loss.item() * len(batch)
                    count += len(batch)
                if a.max_grad_norm is not None:
                    self.accelerator.clip_grad_norm_(self.model.parameters(), a.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                bar.update(1)
        return total / max(count, 1)

    def train(self) -> list[dict[str, float]]:
        """Runs ``num_iterations`` iterations; returns (and stores in ``history``) the per-iteration metrics."""
        a = self.args
        prompts, real = self._shard(self.train_prompts)
        if not self.history:
            row = {"iteration": 0, **self.evaluate()}
            self.history.append(row)
            self._log(row)
        outer = self._progress(a.num_iterations, "GPO" if a.loss == "gpo" else "SPPO")
        try:
            for _ in range(a.num_iterations):
                data = self.make_samples(prompts, real)
                samples = data["samples"]
                n_batches = -(-len(samples) // a.per_device_train_batch_size)
                steps = a.num_epochs_per_iteration * -(-n_batches // a.gradient_accumulation_steps)
                bar = self._progress(steps, f"iter {self.iteration + 1}: train")
                try:
                    loss = self._train_on(samples, bar)
                finally:
                    bar.close()
                self.iteration += 1
                w = [float(s["real"]) for s in samples]
                n = sum(w)
                row_vals = {
                    "loss": (loss * len(samples), len(samples)),
                    "mean_win_score": (sum(s["win"] * x for s, x in zip(samples, w)), n),
                    "mean_target": (sum(s["target"] * x for s, x in zip(samples, w)), n),
                    "response_length": (sum(len(s["completion_ids"]) * x for s, x in zip(samples, w)), n),
                    "empty_fraction": (sum(s["empty"] * x for s, x in zip(samples, w)), n),
                }
                row = {"iteration": self.iteration, **self._sum(row_vals), **self.evaluate()}
                self.history.append(row)
                self._log(row)
                outer.update(1)
                outer.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k in ("loss", "eval_win_score")})
                if a.save_each_iteration and a.output_dir:
                    self.save_model(os.path.join(a.output_dir, f"iter-{self.iteration}"))
        finally:
            outer.close()
        return self.history

    def _log(self, row: dict) -> None:
        if self.accelerator.is_main_process:
            logger.info("GPO %s", json.dumps(row))

    def save_model(self, output_dir: Optional[str] = None) -> None:
        """Saves the policy and its tokenizer (main process; waits for all processes)."""
        output_dir = output_dir or self.args.output_dir
        if output_dir is None:
            raise ArgumentError("output_dir: expected a directory (args.output_dir is None), got None")
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self._unwrapped.save_pretrained(output_dir)
            self.tokenizer.save_pretrained(output_dir)
