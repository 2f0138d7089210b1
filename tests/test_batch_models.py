"""Packed (padding-free) GPMModel forward vs the padded one: same embeddings and gates, no attention leak.

Tolerance: float32 backbones; the packed and padded paths run the same matmuls on differently shaped inputs
(SDPA/eager with a block-diagonal mask vs a padding mask), so results agree to float32 rounding of a few
layers: we allow 2e-5 absolute on L2-normalised embeddings (observed ~1e-7) — a leak across sequences or
a wrong index gives O(1e-2..1) differences.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from gpmkit import functional as F  # noqa: E402
from gpmkit.data import PreferenceCollator  # noqa: E402
from gpmkit.exceptions import ArgumentError, ShapeError  # noqa: E402
from gpmkit.models import GPMConfig, GPMModel  # noqa: E402
from test_models import _backbone_config  # noqa: E402
from test_real_backbones import smollm2_dir  # noqa: E402, F401  (the cached SmolLM2 fixture)

ATOL = 2e-5

RECORDS = [
    {"prompt_ids": [5, 9, 17], "response_ids": [[3, 44, 2], [8, 8, 100, 7], [31, 32], [3, 44, 2]],
     "pairs": [[0, 1], [1, 2], [2, 0], [3, 1]]},
    {"prompt_ids": [12], "response_ids": [[250, 7, 7, 7, 7, 7], [40]], "pairs": [[1, 0]]},
    {"prompt_ids": [5, 9, 17], "response_ids": [[31, 32], [60, 61, 62, 63, 64, 65, 66]], "pairs": [[0, 1]]},
]  # fmt: skip


def _model(kind: str, attn: str, **kw) -> GPMModel:
    torch.manual_seed(0)
    cfg = _backbone_config(kind)
    cfg._attn_implementation = attn
    kw.setdefault("value_head_dim", 6)
    return GPMModel(GPMConfig(backbone_config=cfg, **kw)).eval()


def _padded(model, batch):
    return model.embed(batch["input_ids"], batch["attention_mask"], batch["prompt_lengths"])


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_packed_equals_padded(kind, attn, side):
    model = _model(kind, attn, gate=True)
    assert model.supports_packing
    packed = PreferenceCollator()(RECORDS)
    padded = PreferenceCollator(packing=False, padding_side=side)(RECORDS)
    assert packed["input_ids"].shape[1] < padded["input_ids"].numel()
    with torch.no_grad():
        v1, g1 = model(**packed)
        v2, g2 = _padded(model, padded)
    torch.testing.assert_close(v1, v2, atol=ATOL, rtol=0)
    torch.testing.assert_close(g1, g2, atol=ATOL, rtol=0)
    # and against each unique sequence embedded alone (no batch at all)
    cu = packed["cu_seq_lens_q"].tolist()
    for u in range(len(cu) - 1):
        ids = packed["input_ids"][:, cu[u] : cu[u + 1]]
        with torch.no_grad():
            v, g = model.embed(ids, None, packed["prompt_lengths"][u : u + 1])
        torch.testing.assert_close(v[0], v1[u], atol=ATOL, rtol=0)
        torch.testing.assert_close(g[0], g1[u], atol=ATOL, rtol=0)


def test_packed_loss_and_gradients_equal_padded():
    model = _model("llama", "sdpa", gate=True).train()
    packed = PreferenceCollator()(RECORDS)
    padded = PreferenceCollator(packing=False)(RECORDS)

    def loss_and_grads(forward):
        model.zero_grad()
        v, g = forward()
        rows = packed["pair_rows"]
        loss = F.gpm_loss(v[rows[:, 0]], v[rows[:, 1]], gate=g[rows[:, 0]], tau=0.1)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    torch.manual_seed(1)
    l1, g1 = loss_and_grads(lambda: model(**packed))
    l2, g2 = loss_and_grads(lambda: _padded(model, padded))
    torch.testing.assert_close(l1, l2, atol=1e-5, rtol=1e-5)
    assert len(g1) == len(g2) > 0
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_attention_does_not_leak_across_packed_sequences():
    """Negative control: with positions that do not restart (one long sequence), later embeddings change."""
    model = _model("llama", "sdpa")
    packed = PreferenceCollator()(RECORDS)
    with torch.no_grad():
        v1, _ = model(**packed)
        leak = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1]).unsqueeze(0))
        v2, _ = model(**leak)
    torch.testing.assert_close(v1[0], v2[0], atol=ATOL, rtol=0)  # the first sequence sees nothing before it
    assert (v1[1:] - v2[1:]).abs().max() > 1e-2


def test_bt_model_packs_too():
    model = _model("qwen2", "sdpa", bt=True)
    packed, padded = PreferenceCollator()(RECORDS), PreferenceCollator(packing=False)(RECORDS)
    with torch.no_grad():
        torch.testing.assert_close(model(**packed)[0], _padded(model, padded)[0], atol=ATOL, rtol=1e-5)


def test_encoder_backbone_refuses_packing_and_bad_packed_inputs():
    bert = _model("bert", "sdpa")
    packed = PreferenceCollator()(RECORDS)
    assert not bert.supports_packing
    with pytest.raises(ArgumentError, match="packing=False"):
        bert(**packed)
    model = _model("llama", "sdpa", gate=True)
    n = packed["input_ids"].shape[1]
    with pytest.raises(ShapeError, match="packed"):
        model.embed_packed(packed["input_ids"].expand(2, -1), packed["position_ids"], packed["last_index"])
    with pytest.raises(ShapeError, match="position_ids"):
        model.embed_packed(packed["input_ids"], packed["position_ids"][:, :-1], packed["last_index"])
    with pytest.raises(ShapeError, match="last_index"):
        model.embed_packed(packed["input_ids"], packed["position_ids"], torch.tensor([n]), torch.tensor([0]))
    with pytest.raises(ArgumentError, match="prompt_last_index"):
        model.embed_packed(packed["input_ids"], packed["position_ids"], packed["last_index"])
    with pytest.raises(ShapeError, match="prompt_last_index"):
        model.embed_packed(packed["input_ids"], packed["position_ids"], packed["last_index"], packed["last_index"] + 1)


@pytest.mark.slow
def test_packed_equals_padded_on_smollm2(smollm2_dir):  # noqa: F811
    """A real 135M chat LM (SmolLM2, Llama architecture, sdpa): packed and padded embeddings agree."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    torch.manual_seed(0)
    gpm = GPMModel.from_backbone(smollm2_dir, value_head_dim=8, gate=True, dtype=torch.float32).eval()
    assert gpm.supports_packing
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    answers = ["Paris.", "It is Paris, on the Seine, a city of two million people.", "Lyon, I think."]
    records = [
        {
            "prompt_ids": p_ids,
            "response_ids": [tok(a, add_special_tokens=False)["input_ids"] for a in answers],
            "pairs": [[0, 1], [0, 2], [1, 2]],
        }
    ]
    packed = PreferenceCollator()(records)
    padded = PreferenceCollator(packing=False, pad_token_id=tok.pad_token_id or 0)(records)
    with torch.no_grad():
        v1, g1 = gpm(**packed)
        v2, g2 = _padded(gpm, padded)
    torch.testing.assert_close(v1, v2, atol=1e-4, rtol=0)
    torch.testing.assert_close(g1, g2, atol=1e-4, rtol=0)


def test_score_packed_equals_padded():
    from _helpers import chat_tokenizer
    from test_models import PROMPT, RESPONSES

    tok = chat_tokenizer([PROMPT, *RESPONSES, "user assistant system"] * 20)
    model = _model("llama", "sdpa", gate=True)
    for bs in (2, 8):
        packed = model.score(PROMPT, RESPONSES, tok, batch_size=bs)
        padded = model.score(PROMPT, RESPONSES, tok, batch_size=bs, packing=False)
        torch.testing.assert_close(packed, padded, atol=ATOL, rtol=0)
    m1 = model.preference_matrix([PROMPT, PROMPT], [RESPONSES, RESPONSES[:2]], tok, packing=True)
    m2 = model.preference_matrix([PROMPT, PROMPT], [RESPONSES, RESPONSES[:2]], tok, packing=False)
    for a, b in zip(m1, m2):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    bert = _model("bert", "sdpa")
    with pytest.raises(ArgumentError, match="packing"):
        bert.score(PROMPT, RESPONSES, tok, packing=True)
    assert torch.isfinite(bert.score(PROMPT, RESPONSES, tok)).all()  # auto: padded for an encoder
