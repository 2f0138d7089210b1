"""transformers model classes: :class:`GPMConfig` and :class:`GPMModel` over any ``AutoModel`` backbone.

A :class:`GPMModel` is a backbone (``AutoModel.from_config(config.backbone_config)``, stored under the
attribute ``model`` so its weights are ``model.*``) plus the GPM heads of :class:`gpmkit.nn.GPMHead`:

- ``value_head.weight [2k, H]``: the preference embedding ``v ∈ R^{2k}``, read at the last non-pad token
  (left or right padding), optionally L2-normalised over all 2k coordinates;
- ``prompt_head.weight [k, H]`` (when ``gate``): the gate λ(x) ∈ R^k, read at the last prompt token, then
  ``softmax`` (Σλ = 1, the official inference convention) or ``k·softmax`` (``"scaled_softmax"``).

With ``bt=True`` the same code path is the Bradley-Terry baseline: one scalar head
``value_head.weight [1, H]`` giving a reward r, and every score is ``r_i − r_j``.

The state-dict layout is the one of the published ``general-preference/GPM-*`` checkpoints, and
:meth:`GPMModel.from_pretrained` loads those directly (their ``config.json`` is a plain backbone config).

This module imports torch and transformers; ``import gpmkit`` does not import it (``gpmkit.GPMModel`` and
``gpmkit.GPMConfig`` are lazy attributes). It needs the ``models`` extra (``pip install gpmkit[models]``).
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Any, ClassVar, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers import initialization as hf_init
from transformers.configuration_utils import SubConfigSpec

from . import functional as F
from .exceptions import ArgumentError, GPMError, ShapeError
from .nn import _GATE_ACTIVATIONS, GPMHead

__all__ = ["GPMConfig", "GPMModel"]

_SAFETENSORS_INDEX = "model.safetensors.index.json"
_SAFETENSORS_FILE = "model.safetensors"


class GPMConfig(PreTrainedConfig):
    """Configuration of a :class:`GPMModel` (``model_type = "gpm"``).

    Args:
        backbone_config: the backbone's config (a ``PreTrainedConfig`` or its dict with ``model_type``);
            the backbone is ``AutoModel.from_config(backbone_config)``.
        value_head_dim: embedding width 2k (even). Ignored (taken as 1) when ``bt``.
        gate: add the prompt-dependent gate λ(x) (``prompt_head [k, H]``).
        gate_activation: ``"softmax"`` (Σλ = 1, official inference convention) or ``"scaled_softmax"`` (Σλ = k).
        l2_normalize: normalise embeddings to unit length over all 2k coordinates (official inference
            convention). Always off for ``bt``.
        tau: temperature τ of ``P(i ≻ j) = σ(s/τ)`` (0.1 for GPM; use 1 for BT). Stored for trainers and
            :meth:`GPMModel.preference_prob`-style users; scores are never divided by it.
        bt: Bradley-Terry baseline: scalar head ``value_head [1, H]``, score ``r_i − r_j``.
        force_eos: :meth:`GPMModel.score` overwrites the last token of every templated sequence with the
            tokenizer's EOS, as the official code does (set for checkpoints loaded from the official layout).
    """

    model_type = "gpm"
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="llama", optional=True),
    }

    backbone_config: Optional[Union[dict, PreTrainedConfig]] = None
    value_head_dim: int = 2
    gate: bool = False
    gate_activation: str = "softmax"
    l2_normalize: bool = True
    tau: float = 0.1
    bt: bool = False
    force_eos: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.bt:
            if self.gate:
                raise ArgumentError("gate: the Bradley-Terry baseline (bt=True) has no gate, got gate=True")
            self.value_head_dim, self.l2_normalize = 1, False
        elif not isinstance(self.value_head_dim, int) or self.value_head_dim <= 0 or self.value_head_dim % 2:
            raise ShapeError(f"value_head_dim: expected an even, positive int 2k, got {self.value_head_dim!r}")
        if self.gate_activation not in _GATE_ACTIVATIONS:
            raise ArgumentError(f"gate_activation: expected one of {_GATE_ACTIVATIONS}, got {self.gate_activation!r}")
        if not (isinstance(self.tau, (int, float)) and self.tau > 0):
            raise ArgumentError(f"tau: expected a positive number, got {self.tau!r}")

    @property
    def hidden_size_of_backbone(self) -> int:
        """Hidden size H of the backbone (its text config's ``hidden_size``)."""
        if self.backbone_config is None:
            raise ArgumentError("backbone_config: required to build a GPMModel, got None")
        return int(self.backbone_config.get_text_config().hidden_size)


def _first_and_last(attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Indices ``[B]`` of the first and the last non-pad token of each row (left or right padding)."""
    mask = attention_mask.to(torch.long)
    length = mask.shape[-1]
    first = mask.argmax(-1)
    last = length - 1 - mask.flip(-1).argmax(-1)
    return first, last


class GPMModel(PreTrainedModel):
    """General Preference Model: a transformers backbone plus the GPM embedding (and gate) heads.

    Weights: backbone ``model.*``, ``value_head.weight [2k, H]`` (``[1, H]`` for ``bt``), optional
    ``prompt_head.weight [k, H]``, both N(0, 1/(H+1)) as in :class:`gpmkit.nn.GPMHead` (whose head code this
    class runs). Build one with :meth:`from_backbone` (a model id/path or an instantiated model),
    ``GPMModel(config)`` (random backbone) or :meth:`from_pretrained` (gpmkit or official GPM checkpoints).

    ``model.embed(input_ids, attention_mask, prompt_lengths)`` returns ``(v [B, 2k], gate [B, k] or None)``;
    ``model.score(prompt, responses, tokenizer)`` and ``model.preference_matrix(...)`` score K responses
    with K forward passes.
    """

    config_class = GPMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # official checkpoints carry the unused LM head
    _keys_to_ignore_on_load_unexpected: ClassVar[list[str]] = [r"^lm_head\."]
    _skip_keys_device_placement: ClassVar[list[str]] = ["past_key_values"]

    def __init__(self, config: GPMConfig, backbone: Optional[PreTrainedModel] = None) -> None:
        super().__init__(config)
        hidden = config.hidden_size_of_backbone
        self.model = backbone if backbone is not None else AutoModel.from_config(config.backbone_config)
        self.l2_normalize = bool(config.l2_normalize) and not config.bt
        self.gate_activation = config.gate_activation
        if config.bt:
            self.value_head = nn.Linear(hidden, 1, bias=False)
            self.prompt_head: Optional[nn.Linear] = None
        else:
            head = GPMHead(hidden, config.value_head_dim, config.gate, config.gate_activation, self.l2_normalize)
            self.value_head, self.prompt_head = head.value_head, head.prompt_head
        self._head_std = 1.0 / (hidden + 1)
        self.tokenizer = None
        fwd = inspect.signature(self.model.forward).parameters
        self._pass_position_ids = "position_ids" in fwd
        self._pass_use_cache = "use_cache" in fwd
        self.post_init()

    # ----------------------------------------------------------------------------------------------
    # transformers plumbing

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """N(0, 1/(H+1)) for the heads; nothing else (the backbone keeps its own init or its loaded weights)."""
        if module is self.value_head or (self.prompt_head is not None and module is self.prompt_head):
            hf_init.normal_(module.weight, mean=0.0, std=self._head_std)

    @property
    def has_gate(self) -> bool:
        """Whether the model has the prompt gate λ(x)."""
        return self.prompt_head is not None

    # ----------------------------------------------------------------------------------------------
    # construction

    @classmethod
    def from_backbone(
        cls,
        name_or_model: Union[str, os.PathLike, PreTrainedModel],
        value_head_dim: int = 2,
        gate: bool = False,
        gate_activation: str = "softmax",
        l2_normalize: bool = True,
        tau: float = 0.1,
        bt: bool = False,
        tokenizer: Any = None,
        **from_pretrained_kwargs: Any,
    ) -> GPMModel:
        """A GPM over a pretrained backbone with freshly initialised heads.

        Args:
            name_or_model: a model id / local path (loaded with ``AutoModel.from_pretrained(name,
                **from_pretrained_kwargs)``) or an instantiated ``PreTrainedModel``; a model with a head
                (e.g. ``*ForCausalLM``) contributes its base model (``model.base_model``), shared, not copied.
            value_head_dim, gate, gate_activation, l2_normalize, tau, bt: see :class:`GPMConfig`.
            tokenizer: optional tokenizer stored as ``model.tokenizer`` for :meth:`score`.

        Returns:
            a :class:`GPMModel` whose heads have the backbone's dtype and device.
        """
        if isinstance(name_or_model, PreTrainedModel):
            if from_pretrained_kwargs:
                raise ArgumentError(
                    f"from_pretrained_kwargs: only valid with a model id or path, got {sorted(from_pretrained_kwargs)}"
                )
            backbone = name_or_model.base_model
        elif isinstance(name_or_model, (str, os.PathLike)):
            backbone = AutoModel.from_pretrained(name_or_model, **from_pretrained_kwargs)
            backbone = backbone.base_model
        else:
            raise ArgumentError(
                f"name_or_model: expected a model id, a path or a PreTrainedModel, got {type(name_or_model).__name__}"
            )
        attn = backbone.config._attn_implementation
        config = GPMConfig(
            backbone_config=backbone.config,
            value_head_dim=value_head_dim,
            gate=gate,
            gate_activation=gate_activation,
            l2_normalize=l2_normalize,
            tau=tau,
            bt=bt,
        )
        model = cls(config, backbone=backbone)
        # Building the composite config resets the shared backbone config's attention implementation to
        # None, which silently drops the causal mask of decoders: put the backbone's own choice back.
        backbone.config._attn_implementation = attn
        ref = next(backbone.parameters(), None)
        if ref is not None:
            for head in (model.value_head, model.prompt_head):
                if head is not None:
                    head.to(device=ref.device, dtype=ref.dtype)
        model.tokenizer = tokenizer
        return model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, tokenizer: Any = None, **kwargs) -> GPMModel:
        """Loads a gpmkit checkpoint (``config.json`` with ``model_type = "gpm"``) or an official GPM one.

        An official ``general-preference/GPM-*`` checkpoint has a plain backbone ``config.json`` and weights
        ``model.*``, ``value_head.weight [2k, H]``, optional ``prompt_head.weight [k, H]`` (and an unused
        ``lm_head.weight``). For it, ``value_head_dim = value_head.weight.shape[0]``, ``gate`` is the presence
        of ``prompt_head.weight``, and the official inference convention is used: L2-normalised embedding,
        ``softmax`` gate, τ = 0.1, last token overwritten with EOS by :meth:`score` (``force_eos``).

        Head weights are checked before loading: a missing ``value_head.weight`` (or ``prompt_head.weight``
        of a gated gpmkit model) raises :class:`~gpmkit.exceptions.GPMError`, a mis-shaped one
        :class:`~gpmkit.exceptions.ShapeError`, both naming the key.

        Args:
            pretrained_model_name_or_path: local directory or hub id (from the local cache when offline).
            tokenizer: optional tokenizer stored as ``model.tokenizer``.
            **kwargs: passed to ``PreTrainedModel.from_pretrained`` (``dtype``, ``device_map``, ...).
        """
        path = _resolve(pretrained_model_name_or_path, kwargs)
        config = kwargs.pop("config", None)
        shapes = _checkpoint_shapes(path)
        if config is None:
            with open(os.path.join(path, "config.json"), encoding="utf-8") as fh:
                raw = json.load(fh)
            if raw.get("model_type") == GPMConfig.model_type:
                config = GPMConfig.from_pretrained(path)
            else:
                config = _official_config(path, shapes)
        if not isinstance(config, GPMConfig):
            raise ArgumentError(f"config: expected a GPMConfig, got {type(config).__name__}")
        _check_heads(config, shapes)
        model = super().from_pretrained(path, *model_args, config=config, **kwargs)
        model.tokenizer = tokenizer
        return model

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """``PreTrainedModel.save_pretrained`` (safetensors), plus the stored tokenizer when there is one."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.tokenizer is not None and hasattr(self.tokenizer, "save_pretrained"):
            self.tokenizer.save_pretrained(save_directory)

    # ----------------------------------------------------------------------------------------------
    # embeddings

    def _hidden(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Backbone ``last_hidden_state [B, T, H]`` with pad-aware position ids (left padding safe)."""
        kwargs: dict[str, Any] = {"attention_mask": attention_mask}
        if self._pass_position_ids:
            position_ids = attention_mask.long().cumsum(-1) - 1
            kwargs["position_ids"] = position_ids.masked_fill(attention_mask == 0, 1)
        if self._pass_use_cache:
            kwargs["use_cache"] = False
        return self.model(input_ids=input_ids, **kwargs).last_hidden_state

    def embed(
        self, input_ids: Tensor, attention_mask: Optional[Tensor] = None, prompt_lengths: Optional[Tensor] = None
    ) -> tuple[Tensor, Optional[Tensor]]:
        """Preference embeddings and gate of a batch of (prompt + response) sequences.

        Args:
            input_ids: ``[B, T]`` token ids, left or right padded.
            attention_mask: ``[B, T]`` 1 for tokens, 0 for pads (contiguous tokens); default all ones.
            prompt_lengths: ``[B]`` number of prompt tokens of each sequence (required with a gate). The gate
                is read at the last prompt token: position ``prompt_lengths − 1`` after the row's first token
                (``n_left_pads + prompt_lengths − 1`` with left padding).

        Returns:
            ``(v, gate)``: ``v [B, 2k]`` read at the last non-pad token (``[B, 1]`` rewards r for ``bt``) and
            ``gate [B, k]`` (``None`` without a gate).
        """
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
            shape = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise ShapeError(f"input_ids: expected a [B, T] tensor, got {shape}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask.shape != input_ids.shape:
            raise ShapeError(
                f"attention_mask: expected shape {tuple(input_ids.shape)} (as input_ids), "
                f"got {tuple(attention_mask.shape)}"
            )
        if self.has_gate and prompt_lengths is None:
            raise ArgumentError("prompt_lengths: required when the model has a gate (number of prompt tokens)")
        batch = input_ids.shape[0]
        first, last = _first_and_last(attention_mask)
        if prompt_lengths is not None:
            prompt_lengths = torch.as_tensor(prompt_lengths, device=input_ids.device)
            if prompt_lengths.shape != (batch,):
                raise ShapeError(f"prompt_lengths: expected shape ({batch},), got {tuple(prompt_lengths.shape)}")
            n_tokens = attention_mask.long().sum(-1)
            if bool(((prompt_lengths < 1) | (prompt_lengths > n_tokens)).any()):
                raise ArgumentError(
                    f"prompt_lengths: expected 1 ≤ prompt_lengths ≤ number of tokens {n_tokens.tolist()}, "
                    f"got {prompt_lengths.tolist()}"
                )
        hidden = self._hidden(input_ids, attention_mask)
        rows = torch.arange(batch, device=hidden.device)
        h_last = hidden[rows, last.to(hidden.device)]
        dtype = self.value_head.weight.dtype
        # GPMHead's activation code, run on this model's own value_head/prompt_head (same attribute names), so
        # the state-dict keys stay exactly value_head.weight / prompt_head.weight
        v = GPMHead.embed(self, h_last.to(dtype))
        if not self.has_gate:
            return v, None
        prompt_end = (first + prompt_lengths.to(first.device) - 1).to(hidden.device)
        gate = GPMHead.gate_weights(self, hidden[rows, prompt_end].to(dtype))
        return v, gate

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Optional[Tensor] = None,
        prompt_lengths: Optional[Tensor] = None,
        **kwargs: Any,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """Same as :meth:`embed`: ``(v [B, 2k], gate [B, k] or None)``.

        With ``last_index`` in ``kwargs`` the batch is a packed one (see :meth:`embed_packed`; ``position_ids``,
        ``prompt_last_index``, ``cu_seq_lens_q``/``max_length_q`` are taken from ``kwargs``). Other keyword
        arguments (``pair_rows``, ``label``, ...) are ignored.
        """
        if kwargs.get("last_index") is not None:
            return self.embed_packed(
                input_ids,
                kwargs.get("position_ids"),
                kwargs["last_index"],
                kwargs.get("prompt_last_index"),
                cu_seq_lens=kwargs.get("cu_seq_lens_q"),
                max_length=kwargs.get("max_length_q"),
            )
        return self.embed(input_ids, attention_mask, prompt_lengths)

    @property
    def supports_packing(self) -> bool:
        """Whether the backbone can run packed (padding-free) batches without attention across sequences.

        True for flash-attention backbones (varlen kernels) and for decoders whose mask is built by
        transformers' ``create_causal_mask`` (it turns restarting ``position_ids`` into a block-diagonal causal
        mask under SDPA/eager, e.g. Llama, Qwen2, Mistral, Gemma). Encoders (BERT-like) are not supported.
        """
        cached = getattr(self, "_packing_ok", None)
        if cached is None:
            attn = str(getattr(self.model.config, "_attn_implementation", "") or "")
            try:
                src = inspect.getsource(type(self.model).forward)
            except (OSError, TypeError):
                src = ""
            cached = self._pass_position_ids and ("flash" in attn or "create_causal_mask" in src)
            self._packing_ok = cached
        return bool(cached)

    def embed_packed(
        self,
        input_ids: Tensor,
        position_ids: Tensor,
        last_index: Tensor,
        prompt_last_index: Optional[Tensor] = None,
        cu_seq_lens: Optional[Tensor] = None,
        max_length: Optional[int] = None,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """Embeddings of a packed (padding-free) batch, as built by :mod:`gpmkit.data`.

        Args:
            input_ids: ``[1, N]`` (or ``[N]``) the U sequences back to back, no padding.
            position_ids: same shape, restarting at 0 at each sequence start (this is what keeps sequences
                apart: transformers builds a block-diagonal causal mask from it under SDPA/eager, and the
                flash-attention path derives its varlen boundaries from it or from ``cu_seq_lens``).
            last_index: ``[U]`` flat index of each sequence's last token (where ``v`` is read).
            prompt_last_index: ``[U]`` flat index of each sequence's last prompt token (the gate; required
                with a gate).
            cu_seq_lens, max_length: flash-attention varlen arguments, passed only to flash-attention backbones.

        Returns:
            ``(v [U, 2k], gate [U, k] or None)``, equal (to float rounding) to :meth:`embed` of the same
            sequences padded.

        Raises:
            ArgumentError: a backbone without packing support (:attr:`supports_packing`), or a gate without
                ``prompt_last_index``.
            ShapeError: inconsistent shapes, indices out of range, position ids that do not restart at 0.
        """
        if not self.supports_packing:
            raise ArgumentError(
                f"packing: the backbone {type(self.model).__name__} cannot keep packed sequences apart (it is not a "
                "causal decoder using transformers' create_causal_mask, nor flash attention); use packing=False"
            )
        if (
            not isinstance(input_ids, Tensor)
            or input_ids.dim() not in (1, 2)
            or (input_ids.dim() == 2 and input_ids.shape[0] != 1)
        ):
            shape = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise ShapeError(f"input_ids: expected a packed [1, N] or [N] tensor, got {shape}")
        input_ids = input_ids.reshape(1, -1)
        n = input_ids.shape[1]
        if not isinstance(position_ids, Tensor) or position_ids.numel() != n:
            got = tuple(position_ids.shape) if isinstance(position_ids, Tensor) else type(position_ids).__name__
            raise ShapeError(f"position_ids: expected one position per token ({n}), got {got}")
        position_ids = position_ids.reshape(1, -1).to(input_ids.device)
        if n and int(position_ids[0, 0]) != 0:
            raise ShapeError(f"position_ids: expected 0 at the first token, got {int(position_ids[0, 0])}")
        last_index = torch.as_tensor(last_index, device=input_ids.device).reshape(-1)
        if last_index.numel() and (int(last_index.min()) < 0 or int(last_index.max()) >= n):
            raise ShapeError(f"last_index: expected indices in [0, {n}), got {last_index.tolist()}")
        if self.has_gate:
            if prompt_last_index is None:
                raise ArgumentError("prompt_last_index: required when the model has a gate (last prompt token)")
            prompt_last_index = torch.as_tensor(prompt_last_index, device=input_ids.device).reshape(-1)
            if prompt_last_index.shape != last_index.shape:
                raise ShapeError(
                    f"prompt_last_index: expected shape {tuple(last_index.shape)} (as last_index), "
                    f"got {tuple(prompt_last_index.shape)}"
                )
            if prompt_last_index.numel() and bool(
                (prompt_last_index > last_index).any() | (prompt_last_index < 0).any()
            ):
                raise ShapeError("prompt_last_index: expected 0 ≤ prompt_last_index ≤ last_index for every sequence")
        kwargs: dict[str, Any] = {"attention_mask": None, "position_ids": position_ids}
        if self._pass_use_cache:
            kwargs["use_cache"] = False
        attn = str(getattr(self.model.config, "_attn_implementation", "") or "")
        if "flash" in attn and cu_seq_lens is not None:
            cu = torch.as_tensor(cu_seq_lens, device=input_ids.device).to(torch.int32)
            m = int(max_length) if max_length is not None else int((cu[1:] - cu[:-1]).max())
            kwargs.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=m, max_length_k=m)
        hidden = self.model(input_ids=input_ids, **kwargs).last_hidden_state[0]
        dtype = self.value_head.weight.dtype
        v = GPMHead.embed(self, hidden[last_index].to(dtype))
        if not self.has_gate:
            return v, None
        return v, GPMHead.gate_weights(self, hidden[prompt_last_index].to(dtype))

    def as_embedding(self, v: Tensor) -> Tensor:
        """Embeddings usable by :mod:`gpmkit.functional`: ``v`` itself, or ``[r, 1] [..., 2]`` for ``bt``.

        With ``[r, 1]`` the GPM score is ``s(i ≻ j) = r_i − r_j`` (DESIGN §1: BT is the case k = 1, c = 1).
        """
        if not self.config.bt:
            return v
        return torch.cat([v, torch.ones_like(v)], dim=-1)

    # ----------------------------------------------------------------------------------------------
    # scoring

    def _encode(self, prompt: Any, response: str, tokenizer: Any) -> tuple[list[int], int]:
        """Token ids of the chat-templated (prompt, response) and the prompt's token count."""
        messages = _messages(prompt)
        full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": response}], tokenize=False)
        head = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        n_prompt = len(tokenizer(head, add_special_tokens=False)["input_ids"])
        if not ids:
            raise ArgumentError("responses: the chat template produced an empty sequence")
        if self.config.force_eos:
            if tokenizer.eos_token_id is None:
                raise ArgumentError("tokenizer: force_eos needs a tokenizer with an eos_token")
            ids = [*ids[:-1], tokenizer.eos_token_id]
        return ids, max(1, min(n_prompt, len(ids)))

    @torch.no_grad()
    def _embed_texts(
        self, pairs: list[tuple[Any, str]], tokenizer: Any, batch_size: int, bf16: bool, packing: Optional[bool] = None
    ) -> tuple[Tensor, Optional[Tensor]]:
        """Embeddings ``[N, 2k]`` (functional form) and gates ``[N, k]`` of N (prompt, response) pairs."""
        encoded = [self._encode(p, r, tokenizer) for p, r in pairs]
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad_id is None:
            raise ArgumentError("tokenizer: needs a pad_token or an eos_token to pad batches")
        left = getattr(tokenizer, "padding_side", "right") == "left"
        device = next(self.parameters()).device
        if packing is None:
            packing = self.supports_packing
        vs, gates = [], []
        was_training = self.training
        self.eval()
        try:
            for start in range(0, len(encoded), batch_size):
                chunk = encoded[start : start + batch_size]
                if packing:  # one padding-free row (gpmkit.data layout)
                    lens = torch.tensor([len(ids) for ids, _ in chunk])
                    ends = lens.cumsum(0)
                    flat = torch.tensor([t for ids, _ in chunk for t in ids], dtype=torch.long, device=device)
                    pos = torch.cat([torch.arange(n) for n in lens.tolist()]).to(device)
                    n_prompt = torch.tensor([n for _, n in chunk])
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                        v, gate = self.embed_packed(
                            flat, pos, (ends - 1).to(device), (ends - lens + n_prompt - 1).to(device)
                        )
                    vs.append(self.as_embedding(v.float()))
                    if gate is not None:
                        gates.append(gate.float())
                    continue
                width = max(len(ids) for ids, _ in chunk)
                input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, (ids, _) in enumerate(chunk):
                    cols = slice(width - len(ids), width) if left else slice(0, len(ids))
                    input_ids[row, cols] = torch.tensor(ids, dtype=torch.long)
                    mask[row, cols] = 1
                lengths = torch.tensor([n for _, n in chunk], dtype=torch.long)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    v, gate = self.embed(
                        input_ids.to(device), mask.to(device), lengths.to(device) if self.has_gate else None
                    )
                vs.append(self.as_embedding(v.float()))
                if gate is not None:
                    gates.append(gate.float())
        finally:
            self.train(was_training)
        return torch.cat(vs), (torch.cat(gates) if gates else None)

    def _score_inputs(self, prompt, responses, tokenizer, batch_size) -> tuple[bool, list, list[tuple[Any, str]], Any]:
        """Normalises (prompt, responses) to a flat list of pairs; says whether the input was batched."""
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        if tokenizer is None:
            raise ArgumentError("tokenizer: required (pass it, or give it to from_backbone/from_pretrained)")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ArgumentError(f"batch_size: expected a positive int, got {batch_size!r}")
        batched = isinstance(prompt, (list, tuple)) and len(prompt) > 0 and not _is_messages(prompt)
        prompts = list(prompt) if batched else [prompt]
        groups = list(responses) if batched else [responses]
        if len(prompts) != len(groups):
            raise ShapeError(
                f"responses: expected one list of responses per prompt ({len(prompts)}), got {len(groups)}"
            )
        pairs = []
        for p, group in zip(prompts, groups):
            if isinstance(group, str) or not all(isinstance(r, str) for r in group) or len(group) == 0:
                raise ArgumentError(f"responses: expected a non-empty list of strings per prompt, got {group!r:.80}")
            pairs.extend((p, r) for r in group)
        return batched, [len(g) for g in groups], pairs, tokenizer

    def _scores(self, fn, prompt, responses, tokenizer, batch_size, bf16, packing=None):
        batched, counts, pairs, tokenizer = self._score_inputs(prompt, responses, tokenizer, batch_size)
        v, gate = self._embed_texts(pairs, tokenizer, batch_size, bf16, packing)
        out, start = [], 0
        for k in counts:
            g = None if gate is None else gate[start]  # the gate depends on the prompt only: read from response 0
            out.append(fn(v[start : start + k], g))
            start += k
        return out if batched else out[0]

    def score(
        self,
        prompt: Union[str, Sequence[dict], Sequence[Any]],
        responses: Sequence[Any],
        tokenizer: Any = None,
        batch_size: int = 8,
        bf16: bool = False,
        packing: Optional[bool] = None,
    ) -> Union[Tensor, list[Tensor]]:
        """Population win scores ``ŝ_i = (1/K) Σ_j s(y_i ≻ y_j)`` of K responses to one prompt (Eq. 5.2).

        Each (prompt, response) is chat-templated as ``[user, assistant]`` with ``tokenizer.apply_chat_template``;
        the prompt length (the gate position) is the token count of the user turn templated alone **without**
        a generation prompt, as the official code does. K forward passes in ``ceil(K / batch_size)`` batches,
        under ``torch.no_grad`` (eval mode), optionally under bf16 autocast.

        Args:
            prompt: a user message string or a list of chat messages; or a list of such prompts (batched).
            responses: K response strings; or one list of strings per prompt when ``prompt`` is a list.
            tokenizer: a tokenizer with a chat template (default ``model.tokenizer``).
            batch_size: sequences per forward pass (batches span prompts in the batched form).
            bf16: run the backbone under ``torch.autocast(dtype=torch.bfloat16)``.
            packing: run each batch as one padding-free row (:meth:`embed_packed`); ``None`` (default): when the
                backbone supports it (:attr:`supports_packing`), else padded.

        The gate λ(x) depends on the prompt only (causal backbones), so it is read from the first response's
        sequence of each prompt; with a bidirectional encoder (e.g. BERT) that is the first response's λ.

        Returns:
            ``[K]`` float32 win scores (``r_i − mean(r)`` for ``bt``); a list of them for a list of prompts.
            Scores are raw ``s``, not divided by τ.
        """
        return self._scores(
            lambda v, g: F.win_score(v, gate=g), prompt, responses, tokenizer, batch_size, bf16, packing
        )

    def preference_matrix(
        self,
        prompt: Union[str, Sequence[dict], Sequence[Any]],
        responses: Sequence[Any],
        tokenizer: Any = None,
        batch_size: int = 8,
        bf16: bool = False,
        packing: Optional[bool] = None,
    ) -> Union[Tensor, list[Tensor]]:
        """``[K, K]`` skew-symmetric matrix ``M[i, j] = s(y_i ≻ y_j | x)`` (``r_i − r_j`` for ``bt``).

        Same inputs and conventions as :meth:`score` (K sequences, never K²); a list of ``[K_n, K_n]``
        matrices for a list of prompts.
        """
        return self._scores(
            lambda v, g: F.preference_matrix(v, g), prompt, responses, tokenizer, batch_size, bf16, packing
        )


# --------------------------------------------------------------------------------------------------
# helpers


def _is_messages(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(m, dict) for m in x)


def _messages(prompt: Any) -> list[dict]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if _is_messages(prompt):
        return list(prompt)
    raise ArgumentError(f"prompt: expected a string or a list of chat messages, got {type(prompt).__name__}")


def _resolve(name_or_path: Union[str, os.PathLike], kwargs: dict) -> str:
    """A local directory holding the checkpoint (hub ids resolve through the local cache when offline)."""
    path = os.fspath(name_or_path)
    if os.path.isdir(path):
        return path
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(
            path,
            revision=kwargs.get("revision"),
            cache_dir=kwargs.get("cache_dir"),
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"],
        )
    except Exception as err:
        raise GPMError(f"pretrained_model_name_or_path: cannot find checkpoint {path!r} ({err})") from err


def _checkpoint_shapes(path: str) -> dict[str, list[int]]:
    """Tensor name → shape of a safetensors checkpoint (single file or sharded), from headers only."""
    from safetensors import safe_open

    index = os.path.join(path, _SAFETENSORS_INDEX)
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as fh:
            files = sorted(set(json.load(fh)["weight_map"].values()))
    elif os.path.isfile(os.path.join(path, _SAFETENSORS_FILE)):
        files = [_SAFETENSORS_FILE]
    else:
        raise GPMError(f"pretrained_model_name_or_path: no {_SAFETENSORS_FILE} or {_SAFETENSORS_INDEX} in {path!r}")
    shapes: dict[str, list[int]] = {}
    for name in files:
        with safe_open(os.path.join(path, name), framework="pt") as fh:
            for key in fh.keys():
                shapes[key] = list(fh.get_slice(key).get_shape())
    return shapes


def _official_config(path: str, shapes: dict[str, list[int]]) -> GPMConfig:
    """GPMConfig of an official GPM checkpoint: heads inferred from the weights, official inference convention."""
    if "value_head.weight" not in shapes:
        raise GPMError(
            f"value_head.weight: missing from the checkpoint in {path!r}; an official GPM checkpoint has "
            "value_head.weight [2k, H] (and optionally prompt_head.weight [k, H])"
        )
    dim = shapes["value_head.weight"][0] if len(shapes["value_head.weight"]) == 2 else -1
    backbone = AutoConfig.from_pretrained(path)
    if dim == 1:
        return GPMConfig(backbone_config=backbone, bt=True)
    if dim <= 0 or dim % 2:
        raise ShapeError(
            f"value_head.weight: expected shape [2k, H] with an even 2k, got {shapes['value_head.weight']}"
        )
    return GPMConfig(
        backbone_config=backbone,
        value_head_dim=dim,
        gate="prompt_head.weight" in shapes,
        gate_activation="softmax",
        l2_normalize=True,
        tau=0.1,
        force_eos=True,
    )


def _check_heads(config: GPMConfig, shapes: dict[str, list[int]]) -> None:
    """Missing or mis-shaped head weights → typed errors naming the key (before transformers loads anything)."""
    hidden = config.hidden_size_of_backbone
    expected = {"value_head.weight": [config.value_head_dim, hidden]}
    if config.gate:
        expected["prompt_head.weight"] = [config.value_head_dim // 2, hidden]
    for key, shape in expected.items():
        if key not in shapes:
            raise GPMError(f"{key}: missing from the checkpoint (expected shape {shape})")
        if shapes[key] != shape:
            raise ShapeError(f"{key}: expected shape {shape}, got {shapes[key]}")
    if not any(k.startswith("model.") for k in shapes):
        raise GPMError("model.*: the checkpoint has no backbone weights under the 'model.' prefix")


AutoConfig.register(GPMConfig.model_type, GPMConfig, exist_ok=True)
AutoModel.register(GPMConfig, GPMModel, exist_ok=True)
