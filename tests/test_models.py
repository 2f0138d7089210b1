"""gpmkit.models: GPMConfig / GPMModel over tiny random transformers backbones (offline, CPU, seconds)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from _helpers import chat_tokenizer

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from gpmkit import functional as F  # noqa: E402
from gpmkit.exceptions import ArgumentError, GPMError, ShapeError  # noqa: E402
from gpmkit.models import GPMConfig, GPMModel  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoConfig, AutoModel, BertConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config  # noqa: E402

PROMPT = "Which fruit is the best?"
RESPONSES = ["Apples, clearly.", "Bananas are great", "pears", "I like cherries a lot.", "None of them"]


@pytest.fixture(scope="module")
def tokenizer():
    """A tiny in-process BPE tokenizer with a ChatML template."""
    corpus = [PROMPT, *RESPONSES, "the quick brown fox jumps over the lazy dog", "user assistant system"]
    return chat_tokenizer(corpus * 20)


def _backbone_config(kind: str, vocab: int = 320):
    if kind == "llama":
        return LlamaConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
        )  # fmt: skip
    if kind == "qwen2":
        return Qwen2Config(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
        )  # fmt: skip
    return BertConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, pad_token_id=0,
    )  # fmt: skip


def _gpm(kind: str = "llama", **kw) -> GPMModel:
    torch.manual_seed(0)
    kw.setdefault("value_head_dim", 6)
    return GPMModel(GPMConfig(backbone_config=_backbone_config(kind), **kw)).eval()


def _pad(seqs: list[list[int]], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        cols = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, cols], mask[i, cols] = torch.tensor(s), 1
    return ids, mask


SEQS = [[5, 9, 17, 3, 44, 2], [8, 8, 100, 7], [31, 32, 33, 34, 35, 36, 37, 38], [12, 250]]
PROMPT_LENGTHS = torch.tensor([3, 2, 5, 1])


def _dense_score(v_c: torch.Tensor, v_r: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Official formulation: s = (R(x) v_c) · v_r with R[2l,2l+1] = −λ_l, R[2l+1,2l] = +λ_l."""
    d = v_c.shape[-1]
    R = torch.zeros(d, d, dtype=v_c.dtype)
    for l_ in range(d // 2):
        R[2 * l_, 2 * l_ + 1] = -lam[l_]
        R[2 * l_ + 1, 2 * l_] = lam[l_]
    return (R @ v_c) @ v_r


# ------------------------------------------------------------------------------------------------
# config, construction


def test_config_validation_and_auto_registration():
    cfg = GPMConfig(backbone_config=_backbone_config("llama").to_dict(), value_head_dim=4, gate=True)
    assert isinstance(cfg.backbone_config, LlamaConfig)
    assert AutoConfig.for_model("gpm").__class__ is GPMConfig
    assert isinstance(AutoModel.from_config(cfg), GPMModel)
    with pytest.raises(ShapeError, match="value_head_dim"):
        GPMConfig(backbone_config=_backbone_config("llama"), value_head_dim=3)
    with pytest.raises(ArgumentError, match="gate_activation"):
        GPMConfig(backbone_config=_backbone_config("llama"), gate_activation="relu")
    with pytest.raises(ArgumentError, match="gate"):
        GPMConfig(backbone_config=_backbone_config("llama"), bt=True, gate=True)
    with pytest.raises(ArgumentError, match="tau"):
        GPMConfig(backbone_config=_backbone_config("llama"), tau=0.0)


@pytest.mark.parametrize("gate", [False, True])
def test_weight_names_shapes_and_init(gate):
    m = _gpm(value_head_dim=8, gate=gate)
    sd = m.state_dict()
    assert sd["value_head.weight"].shape == (8, 32)
    assert ("prompt_head.weight" in sd) == gate
    if gate:
        assert sd["prompt_head.weight"].shape == (4, 32)
    assert all(k.startswith(("model.", "value_head.", "prompt_head.")) for k in sd)
    assert m.supports_gradient_checkpointing
    # N(0, 1/(H+1)): the std of 8·32 samples is within 25 % of 1/33
    assert abs(sd["value_head.weight"].std().item() * 33 - 1) < 0.25


def test_from_backbone_instance_uses_base_model_and_keeps_its_weights(tokenizer):
    torch.manual_seed(0)
    lm = LlamaForCausalLM(_backbone_config("llama"))
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    m = GPMModel.from_backbone(lm, value_head_dim=4, gate=True, tokenizer=tokenizer)
    assert m.model is lm.model and m.tokenizer is tokenizer
    assert all(torch.equal(before[k], v) for k, v in m.model.state_dict().items())
    assert m.config.backbone_config.model_type == "llama" and m.config.gate
    with pytest.raises(ArgumentError, match="name_or_model"):
        GPMModel.from_backbone(42)


def test_from_backbone_path(tmp_path):
    torch.manual_seed(0)
    backbone = AutoModel.from_config(_backbone_config("qwen2"))
    backbone.save_pretrained(tmp_path)
    m = GPMModel.from_backbone(str(tmp_path), value_head_dim=4)
    for k, v in backbone.state_dict().items():
        assert torch.equal(m.model.state_dict()[k], v)
    assert m.value_head.weight.shape == (4, 32) and not m.has_gate


# ------------------------------------------------------------------------------------------------
# embed


@pytest.mark.parametrize("kind", ["llama", "qwen2", "bert"])
def test_embed_shapes_and_left_right_padding_agree(kind):
    m = _gpm(kind, value_head_dim=6, gate=True)
    with torch.no_grad():
        v_r, g_r = m.embed(*_pad(SEQS, left=False), PROMPT_LENGTHS)
        v_l, g_l = m.embed(*_pad(SEQS, left=True), PROMPT_LENGTHS)
    assert v_r.shape == (4, 6) and g_r.shape == (4, 3)
    torch.testing.assert_close(v_l, v_r, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_l, g_r, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(v_r.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(g_r.sum(-1), torch.ones(4))
    assert m(*_pad(SEQS, left=False), PROMPT_LENGTHS)[0].shape == (4, 6)  # forward == embed


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_embed_and_gate_read_at_the_right_tokens(kind):
    m = _gpm(kind, value_head_dim=4, gate=True, gate_activation="scaled_softmax", l2_normalize=False)
    with torch.no_grad():
        v, g = m.embed(*_pad(SEQS, left=True), PROMPT_LENGTHS)
        for i, s in enumerate(SEQS):
            h = m.model(torch.tensor([s])).last_hidden_state[0]
            torch.testing.assert_close(v[i], h[-1] @ m.value_head.weight.T, rtol=1e-5, atol=1e-6)
            lam = 2 * torch.softmax(h[PROMPT_LENGTHS[i] - 1] @ m.prompt_head.weight.T, -1)
            torch.testing.assert_close(g[i], lam, rtol=1e-5, atol=1e-6)


def test_embed_errors():
    m = _gpm(gate=True)
    ids, mask = _pad(SEQS, left=False)
    with pytest.raises(ArgumentError, match="prompt_lengths"):
        m.embed(ids, mask)
    with pytest.raises(ShapeError, match="prompt_lengths"):
        m.embed(ids, mask, torch.tensor([1, 2]))
    with pytest.raises(ArgumentError, match="prompt_lengths"):
        m.embed(ids, mask, torch.tensor([1, 5, 1, 1]))  # row 1 has 4 tokens
    with pytest.raises(ShapeError, match="attention_mask"):
        m.embed(ids, mask[:, :-1], PROMPT_LENGTHS)
    with pytest.raises(ShapeError, match="input_ids"):
        m.embed(ids[0], None, PROMPT_LENGTHS)
    v, g = _gpm(gate=False).embed(ids, mask)  # no gate: prompt_lengths not needed
    assert g is None and v.shape == (4, 6)


def test_gradient_checkpointing_trains_the_heads():
    m = _gpm(gate=True).train()
    m.activation_checkpointing_enable()
    v, g = m.embed(*_pad(SEQS, left=True), PROMPT_LENGTHS)
    F.gpm_loss(v[:2], v[2:], g[:2]).backward()
    assert m.value_head.weight.grad is not None and m.prompt_head.weight.grad is not None
    assert m.model.embed_tokens.weight.grad is not None


# ------------------------------------------------------------------------------------------------
# checkpoints


@pytest.mark.parametrize("bt", [False, True])
def test_save_load_round_trip(tmp_path, bt, tokenizer):
    m = _gpm(value_head_dim=4, gate=not bt, bt=bt)
    m.tokenizer = tokenizer
    m.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "tokenizer.json").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "gpm"
    m2 = GPMModel.from_pretrained(tmp_path).eval()
    assert m2.config.bt == bt and m2.has_gate == (not bt)
    sd, sd2 = m.state_dict(), m2.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    ids, mask = _pad(SEQS, left=True)
    with torch.no_grad():
        a, b = m.embed(ids, mask, PROMPT_LENGTHS), m2.embed(ids, mask, PROMPT_LENGTHS)
    assert torch.equal(a[0], b[0]) and (a[1] is None or torch.equal(a[1], b[1]))
    assert isinstance(AutoModel.from_pretrained(tmp_path), GPMModel)


def test_sharded_round_trip_and_missing_checkpoint(tmp_path):
    m = _gpm(value_head_dim=4, gate=True)
    m.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    m2 = GPMModel.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
    with pytest.raises(GPMError, match="cannot find checkpoint"):
        GPMModel.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GPMError, match=r"model\.safetensors"):
        GPMModel.from_pretrained(tmp_path / "empty")


def _official_checkpoint(path, tokenizer, heads: dict) -> tuple[torch.nn.Module, dict]:
    """A tiny Llama saved by hand in the general-preference/GPM-* layout (backbone config.json, model.* keys)."""
    torch.manual_seed(1)
    cfg = _backbone_config("llama", vocab=len(tokenizer))
    backbone = AutoModel.from_config(cfg).eval()
    cfg.save_pretrained(path)
    tensors = {f"model.{k}": v.contiguous() for k, v in backbone.state_dict().items()}
    tensors["lm_head.weight"] = torch.randn(len(tokenizer), 32)
    tensors.update(heads)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    return backbone, tensors


def test_official_layout_loads_and_matches_the_official_formulas(tmp_path, tokenizer):
    w_v, w_p = torch.randn(6, 32) * 0.3, torch.randn(3, 32)
    backbone, _ = _official_checkpoint(tmp_path, tokenizer, {"value_head.weight": w_v, "prompt_head.weight": w_p})
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llama"
    m = GPMModel.from_pretrained(tmp_path, tokenizer=tokenizer).eval()
    assert m.config.value_head_dim == 6 and m.has_gate and m.config.l2_normalize and m.config.force_eos
    assert m.config.gate_activation == "softmax"
    assert torch.equal(m.value_head.weight, w_v) and torch.equal(m.prompt_head.weight, w_p)
    M = m.preference_matrix(PROMPT, RESPONSES, batch_size=2)

    # the official inference code, written out: template, overwrite the last token with EOS, one sequence at a time
    user = [{"role": "user", "content": PROMPT}]
    prompt_len = len(tokenizer(tokenizer.apply_chat_template(user, tokenize=False), add_special_tokens=False).input_ids)
    vs, lams = [], []
    with torch.no_grad():
        for r in RESPONSES:
            text = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": r}], tokenize=False)
            ids = tokenizer(text, add_special_tokens=False).input_ids
            ids[-1] = tokenizer.eos_token_id
            h = backbone(torch.tensor([ids])).last_hidden_state[0]
            vs.append(torch.nn.functional.normalize(h[-1] @ w_v.T, dim=-1))
            lams.append(torch.softmax(h[prompt_len - 1] @ w_p.T, dim=-1))
    expected = torch.stack([torch.stack([_dense_score(vi, vj, lams[i]) for vj in vs]) for i, vi in enumerate(vs)])
    torch.testing.assert_close(M, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(m.score(PROMPT, RESPONSES), expected.mean(-1), rtol=1e-4, atol=1e-5)


def test_official_layout_without_gate_and_bt(tmp_path, tokenizer):
    (tmp_path / "a").mkdir()
    _official_checkpoint(tmp_path / "a", tokenizer, {"value_head.weight": torch.randn(4, 32)})
    m = GPMModel.from_pretrained(tmp_path / "a")
    assert m.config.value_head_dim == 4 and not m.has_gate
    (tmp_path / "b").mkdir()
    _official_checkpoint(tmp_path / "b", tokenizer, {"value_head.weight": torch.randn(1, 32)})
    assert GPMModel.from_pretrained(tmp_path / "b").config.bt


@pytest.mark.parametrize(
    ("heads", "error", "key"),
    [
        ({"prompt_head.weight": torch.randn(2, 32)}, GPMError, "value_head.weight"),
        ({"value_head.weight": torch.randn(5, 32)}, ShapeError, "value_head.weight"),
        (
            {"value_head.weight": torch.randn(4, 32), "prompt_head.weight": torch.randn(3, 32)},
            ShapeError,
            "prompt_head",
        ),
        ({"value_head.weight": torch.randn(4, 31)}, ShapeError, "value_head.weight"),
    ],
)
def test_official_layout_bad_heads_name_the_key(tmp_path, tokenizer, heads, error, key):
    _official_checkpoint(tmp_path, tokenizer, heads)
    with pytest.raises(error, match=re.escape(key)):
        GPMModel.from_pretrained(tmp_path)


def test_gpm_checkpoint_with_missing_gate_weight(tmp_path):
    m = _gpm(value_head_dim=4, gate=True)
    m.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["prompt_head.weight"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(GPMError, match=r"prompt_head\.weight"):
        GPMModel.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------------------
# scoring


@pytest.mark.parametrize(("kind", "gate", "batch_size"), [("llama", True, 2), ("qwen2", False, 5), ("bert", True, 3)])
def test_scores_skew_symmetric_and_k_forward_passes(tokenizer, kind, gate, batch_size):
    torch.manual_seed(0)
    backbone = AutoModel.from_config(_backbone_config(kind, vocab=len(tokenizer)))
    m = GPMModel.from_backbone(backbone, value_head_dim=4, gate=gate, tokenizer=tokenizer).train()
    calls = []
    handle = m.model.register_forward_hook(lambda mod, args, out: calls.append(1))
    M = m.preference_matrix(PROMPT, RESPONSES, batch_size=batch_size)
    assert len(calls) == math.ceil(len(RESPONSES) / batch_size)
    s = m.score([{"role": "user", "content": PROMPT}], RESPONSES, batch_size=batch_size)
    handle.remove()
    K = len(RESPONSES)
    assert M.shape == (K, K) and s.shape == (K,) and M.dtype == torch.float32
    torch.testing.assert_close(M, -M.T)
    assert torch.all(M.diagonal() == 0)
    torch.testing.assert_close(s, M.mean(-1), rtol=1e-5, atol=1e-6)
    assert m.training  # scoring runs in eval mode and restores the caller's mode
    assert M.abs().max() > 0


def test_score_batched_over_prompts_and_bf16(tokenizer):
    torch.manual_seed(0)
    m = GPMModel.from_backbone(
        AutoModel.from_config(_backbone_config("llama", vocab=len(tokenizer))), value_head_dim=4, gate=True
    )
    groups = [RESPONSES[:3], RESPONSES[2:]]
    out = m.score([PROMPT, "Tell me about dogs"], groups, tokenizer=tokenizer, batch_size=4)
    assert [t.shape for t in out] == [(3,), (3,)]
    torch.testing.assert_close(out[0], m.score(PROMPT, groups[0], tokenizer=tokenizer), rtol=1e-4, atol=1e-5)
    mats = m.preference_matrix([PROMPT, "Tell me about dogs"], groups, tokenizer=tokenizer)
    assert [t.shape for t in mats] == [(3, 3), (3, 3)]
    lo = m.preference_matrix(PROMPT, RESPONSES, tokenizer=tokenizer, bf16=True)
    hi = m.preference_matrix(PROMPT, RESPONSES, tokenizer=tokenizer)
    assert lo.dtype == torch.float32
    torch.testing.assert_close(lo, -lo.T)
    assert (lo - hi).abs().max() < 0.2


def test_bt_baseline_scores_are_reward_differences(tokenizer):
    torch.manual_seed(0)
    m = GPMModel.from_backbone(
        AutoModel.from_config(_backbone_config("llama", vocab=len(tokenizer))), bt=True, tokenizer=tokenizer
    )
    assert m.value_head.weight.shape == (1, 32) and "prompt_head.weight" not in m.state_dict()
    M = m.preference_matrix(PROMPT, RESPONSES)
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": r}], tokenize=False
        )
        for r in RESPONSES
    ]
    ids, mask = _pad([tokenizer(t, add_special_tokens=False).input_ids for t in texts], left=False)
    with torch.no_grad():
        r, gate = m.embed(ids, mask)
    assert gate is None and r.shape == (5, 1)
    r = r[:, 0]
    torch.testing.assert_close(M, r[:, None] - r[None, :], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m.score(PROMPT, RESPONSES), r - r.mean(), rtol=1e-5, atol=1e-6)


def test_score_errors(tokenizer):
    m = _gpm()
    with pytest.raises(ArgumentError, match="tokenizer"):
        m.score(PROMPT, RESPONSES)
    with pytest.raises(ArgumentError, match="batch_size"):
        m.score(PROMPT, RESPONSES, tokenizer=tokenizer, batch_size=0)
    with pytest.raises(ArgumentError, match="responses"):
        m.score(PROMPT, "just one string", tokenizer=tokenizer)
    with pytest.raises(ShapeError, match="responses"):
        m.score([PROMPT, PROMPT], [RESPONSES], tokenizer=tokenizer)


def test_import_gpmkit_does_not_import_transformers():
    code = (
        "import sys, gpmkit; assert 'transformers' not in sys.modules and 'torch' not in sys.modules; "
        "assert 'GPMModel' in dir(gpmkit)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _prefix_is_causal(model: GPMModel) -> bool:
    """Hidden states of a prefix do not depend on later tokens (the decoder's causal mask is in force)."""
    ids = torch.randint(1, 300, (1, 10))
    later = ids.clone()
    later[0, 7:] = 5
    mask = torch.ones_like(ids)
    with torch.no_grad():
        h1 = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        h2 = model.model(input_ids=later, attention_mask=mask).last_hidden_state
    return torch.allclose(h1[0, :7], h2[0, :7])


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_from_backbone_keeps_the_decoder_causal(tmp_path, kind):
    """Regression: building the composite config once reset the backbone's attention implementation to None,
    which made decoders attend in both directions (the gate at the last prompt token then saw the response)."""
    torch.manual_seed(0)
    lm = transformers.AutoModelForCausalLM.from_config(_backbone_config(kind))
    impl = lm.config._attn_implementation
    from_instance = GPMModel.from_backbone(lm, value_head_dim=4, gate=True)
    assert from_instance.model.config._attn_implementation == impl
    assert _prefix_is_causal(from_instance)
    lm.save_pretrained(tmp_path / "lm")
    from_path = GPMModel.from_backbone(tmp_path / "lm", value_head_dim=4, gate=True)
    assert _prefix_is_causal(from_path)
    from_instance.save_pretrained(tmp_path / "gpm")
    assert _prefix_is_causal(GPMModel.from_pretrained(tmp_path / "gpm"))
