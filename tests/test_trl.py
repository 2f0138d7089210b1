"""gpmkit.trl: GPMRewardConfig / GPMRewardTrainer on tiny random backbones (offline, CPU, a few seconds each)."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from _helpers import chat_tokenizer

pytest.importorskip("trl")
pytest.importorskip("tokenizers")

from datasets import Dataset
from gpmkit import functional as F
from gpmkit.exceptions import ArgumentError, GPMError, ShapeError
from gpmkit.models import GPMModel
from gpmkit.trl import GPMDataCollator, GPMRewardConfig, GPMRewardTrainer
from transformers import AutoModel, LlamaConfig, LlamaForCausalLM, Qwen2Config

QUESTIONS = ["What colour is the sky?", "Name a fruit.", "Is water wet?", "Pick a number.", "Say hello.", "Any pet?"]
GOOD, BAD = "yes yes yes", "no"


@pytest.fixture(scope="module")
def tokenizer():
    """A tiny in-process BPE tokenizer with a ChatML template."""
    return chat_tokenizer([*QUESTIONS, GOOD, BAD, "the quick brown fox jumps over the lazy dog", "user assistant"] * 20)


def _backbone(kind: str = "llama", vocab: int = 320, causal_lm: bool = False):
    torch.manual_seed(0)
    kw = dict(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
    )  # fmt: skip
    cfg = LlamaConfig(**kw) if kind == "llama" else Qwen2Config(**kw)
    return LlamaForCausalLM(cfg) if causal_lm else AutoModel.from_config(cfg)


def _args(tmp_path, **kw) -> GPMRewardConfig:
    base = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=6, per_device_eval_batch_size=6, max_steps=8,
        learning_rate=3e-3, logging_steps=1, report_to="none", save_strategy="no", max_length=64,
        use_cpu=True, bf16=False, disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )  # fmt: skip
    base.update(kw)
    return GPMRewardConfig(**base)


def _dataset(fmt: str, margin: bool = False) -> Dataset:
    rows = []
    for q in QUESTIONS:
        if fmt == "standard_implicit":
            row = {"chosen": f"{q} {GOOD}", "rejected": f"{q} {BAD}"}
        elif fmt == "standard_explicit":
            row = {"prompt": q, "chosen": f" {GOOD}", "rejected": f" {BAD}"}
        elif fmt == "conversational_implicit":
            user = {"role": "user", "content": q}
            row = {
                "chosen": [user, {"role": "assistant", "content": GOOD}],
                "rejected": [user, {"role": "assistant", "content": BAD}],
            }
        else:
            row = {
                "prompt": [{"role": "user", "content": q}],
                "chosen": [{"role": "assistant", "content": GOOD}],
                "rejected": [{"role": "assistant", "content": BAD}],
            }
        if margin:
            row["margin"] = 0.5
        rows.append(row)
    return Dataset.from_list(rows)


FORMATS = ["standard_implicit", "standard_explicit", "conversational_implicit", "conversational_explicit"]


def _logged(trainer, key: str) -> list[float]:
    return [h[key] for h in trainer.state.log_history if key in h]


# ------------------------------------------------------------------------------------------------
# training on the four formats


@pytest.mark.parametrize("fmt", FORMATS)
def test_four_formats_train_and_separate(tmp_path, tokenizer, fmt):
    model = GPMModel.from_backbone(_backbone(), value_head_dim=4, gate=True)
    ds = _dataset(fmt)
    trainer = GPMRewardTrainer(
        model=model, args=_args(tmp_path, gate=True), train_dataset=ds, eval_dataset=ds, processing_class=tokenizer
    )
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    losses = _logged(trainer, "loss")
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert after["eval_loss"] < before["eval_loss"]
    assert after["eval_accuracy"] == 1.0
    for key in ("loss", "accuracy", "mean_score", "mean_abs_score", "gate_entropy", "num_tokens"):
        assert _logged(trainer, key), key
    for key in ("eval_accuracy", "eval_mean_abs_score", "eval_gate_entropy", "eval_num_tokens"):
        assert key in after, key
    # softmax gate over k = 2 blocks: entropy in [0, log 2]
    assert all(0.0 <= e <= math.log(2) + 1e-6 for e in _logged(trainer, "gate_entropy"))
    # num_labels was only presented as 1 during RewardTrainer.__init__
    assert model.config.num_labels == 2


def test_qwen2_backbone_is_wrapped(tmp_path, tokenizer):
    lm = _backbone("qwen2", causal_lm=False)
    trainer = GPMRewardTrainer(
        model=lm, args=_args(tmp_path, value_head_dim=6), train_dataset=_dataset("conversational_explicit"),
        processing_class=tokenizer,
    )  # fmt: skip
    assert isinstance(trainer.model, GPMModel) and trainer.model.config.value_head_dim == 6
    assert not trainer.model.has_gate and trainer.model.config.backbone_config.model_type == "qwen2"
    trainer.train()
    losses = _logged(trainer, "loss")
    assert losses[-1] < losses[0] and _logged(trainer, "accuracy")[-1] == 1.0
    assert not _logged(trainer, "gate_entropy")


def test_model_from_path_and_causal_lm_instance(tmp_path, tokenizer):
    lm = _backbone(causal_lm=True)
    lm.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    args = _args(tmp_path / "out", max_steps=1, gate=True, value_head_dim=4)
    t1 = GPMRewardTrainer(model=str(tmp_path / "lm"), args=args, train_dataset=_dataset("standard_explicit"))
    assert isinstance(t1.model, GPMModel) and t1.model.has_gate and t1.model.config.value_head_dim == 4
    assert torch.equal(t1.model.model.embed_tokens.weight, lm.model.embed_tokens.weight)
    t2 = GPMRewardTrainer(model=lm, args=args, train_dataset=_dataset("standard_explicit"), processing_class=tokenizer)
    assert t2.model.model is lm.model
    # wrapping keeps a causal (sdpa) backbone: GPMConfig(backbone_config=...) resets it to None (worked around)
    assert t1.model.model.config._attn_implementation == t2.model.model.config._attn_implementation == "sdpa"


# ------------------------------------------------------------------------------------------------
# prompt boundary


def _prepared(tokenizer, fmt, tmp_path):
    model = GPMModel.from_backbone(_backbone(), value_head_dim=2, gate=True)
    trainer = GPMRewardTrainer(
        model=model, args=_args(tmp_path, gate=True, max_steps=1), train_dataset=_dataset(fmt),
        processing_class=tokenizer,
    )  # fmt: skip
    return trainer.train_dataset


def test_prompt_lengths_match_hand_tokenisation(tmp_path, tokenizer):
    eos = tokenizer.eos_token
    for fmt in FORMATS:
        ds = _prepared(tokenizer, fmt, tmp_path)
        for q, ex in zip(QUESTIONS, ds):
            if fmt.startswith("conversational"):
                user = [{"role": "user", "content": q}]
                prompt_ids = tokenizer.apply_chat_template(user, tokenize=True, return_dict=True)["input_ids"]
                full = tokenizer.apply_chat_template(
                    [*user, {"role": "assistant", "content": GOOD}], tokenize=True, return_dict=True
                )["input_ids"]
                expected = len(prompt_ids)  # "<|im_start|>user\n{q}<|im_end|>\n"
                last = "\n"
            else:
                full = tokenizer(f"{q} {GOOD}{eos}")["input_ids"]
                if fmt == "standard_explicit":
                    expected = len(tokenizer(q)["input_ids"])
                else:  # implicit: common prefix of "q yes yes yes" and "q no" includes the space before the answer
                    rej = tokenizer(f"{q} {BAD}{eos}")["input_ids"]
                    expected = next(i for i, (a, b) in enumerate(zip(full, rej)) if a != b)
                last = q[-1]
            assert ex["chosen_ids"] == list(full), fmt
            assert ex["prompt_length"] == expected, fmt
            # the gate reads the last prompt token
            last_prompt_token = tokenizer.decode([ex["chosen_ids"][ex["prompt_length"] - 1]])
            if fmt != "standard_implicit":
                assert last_prompt_token.endswith(last), (fmt, last_prompt_token)
            assert ex["chosen_ids"][: ex["prompt_length"]] == ex["rejected_ids"][: ex["prompt_length"]]


def test_collator_shapes_and_pretokenized_prompt_length(tmp_path, tokenizer):
    coll = GPMDataCollator(pad_token_id=0, pad_to_multiple_of=4)
    out = coll(
        [
            {"chosen_ids": [5, 6, 7], "rejected_ids": [5, 8], "prompt_length": 1, "margin": 0.5},
            {"chosen_ids": [9], "rejected_ids": [9, 1, 2, 3, 4], "prompt_length": 1, "margin": 0.0},
        ]
    )
    assert out["input_ids"].shape == (4, 8) and out["attention_mask"].sum(-1).tolist() == [3, 1, 2, 5]
    assert out["input_ids"][0].tolist() == [5, 6, 7, 0, 0, 0, 0, 0]
    assert out["prompt_lengths"].tolist() == [1, 1, 1, 1] and out["margin"].tolist() == [0.5, 0.0]
    ds = Dataset.from_list([{"chosen_ids": [5, 6, 7, 3], "rejected_ids": [5, 6, 9, 3]}] * 4)
    trainer = GPMRewardTrainer(
        model=GPMModel.from_backbone(_backbone(), gate=True), args=_args(tmp_path, gate=True, max_steps=1),
        train_dataset=ds, processing_class=tokenizer,
    )  # fmt: skip
    assert trainer.train_dataset[0]["prompt_length"] == 2


# ------------------------------------------------------------------------------------------------
# loss


def test_loss_equals_functional_gpm_loss_with_margin(tmp_path, tokenizer):
    model = GPMModel.from_backbone(_backbone(), value_head_dim=4, gate=True, gate_activation="scaled_softmax")
    ds = _dataset("conversational_explicit", margin=True)
    # the padded path (GPMDataCollator); the packed default is checked against it in test_batch_trl.py
    args = _args(tmp_path, gate=True, gate_activation="scaled_softmax", tau=0.3, packing=False)
    trainer = GPMRewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "prompt_lengths", "margin"}
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        v, gate = model.embed(batch["input_ids"], batch["attention_mask"], batch["prompt_lengths"])
        b = v.shape[0] // 2
        expected = F.gpm_loss(v[:b], v[b:], gate=gate[:b], tau=0.3, margin=batch["margin"])
        without_margin = F.gpm_loss(v[:b], v[b:], gate=gate[:b], tau=0.3)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(loss, without_margin)
    # the gate of the chosen and the rejected row of a pair agree (same prompt tokens, causal backbone)
    torch.testing.assert_close(gate[:b], gate[b:])
    assert trainer._metrics["eval"]["gate_entropy"]


def test_bt_loss_option(tmp_path, tokenizer):
    args = _args(tmp_path, loss="bt", max_steps=6, packing=False)
    assert args.tau == 1.0 and _args(tmp_path).tau == 0.1
    ds = _dataset("standard_explicit", margin=True)
    trainer = GPMRewardTrainer(
        model=_backbone(), args=args, train_dataset=ds, eval_dataset=ds, processing_class=tokenizer
    )
    assert trainer.model.config.bt and trainer.model.value_head.weight.shape[0] == 1
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch))
        r, _ = trainer.model.embed(batch["input_ids"], batch["attention_mask"])
        r = r.squeeze(-1)
        b = r.shape[0] // 2
        # TRL's own reward loss (τ = 1): −log σ(r_c − r_r − m)
        trl_loss = -torch.nn.functional.logsigmoid(r[:b] - r[b:] - batch["margin"]).mean()
    torch.testing.assert_close(loss, trl_loss, rtol=1e-5, atol=1e-6)
    trainer._metrics["eval"].clear()  # the manual eval-mode call above logged metrics of the untrained model
    trainer.model.train()
    trainer.train()
    assert trainer.evaluate()["eval_accuracy"] == 1.0
    with pytest.raises(ArgumentError, match="bt"):
        GPMRewardTrainer(
            model=GPMModel.from_backbone(_backbone()), args=args, train_dataset=ds, processing_class=tokenizer
        )


# ------------------------------------------------------------------------------------------------
# errors and defaults


def test_typed_errors(tmp_path, tokenizer):
    with pytest.raises(ShapeError, match="value_head_dim"):
        _args(tmp_path, value_head_dim=3)
    with pytest.raises(ArgumentError, match="loss"):
        _args(tmp_path, loss="hinge")
    with pytest.raises(ArgumentError, match="gate"):
        _args(tmp_path, loss="bt", gate=True)
    with pytest.raises(ArgumentError, match="tau"):
        _args(tmp_path, tau=0.0)
    bad = Dataset.from_list([{"prompt": "a", "response": "b"}])
    with pytest.raises(ArgumentError, match="chosen") as err:
        GPMRewardTrainer(model=_backbone(), args=_args(tmp_path), train_dataset=bad, processing_class=tokenizer)
    assert isinstance(err.value, GPMError) and "response" in str(err.value)


def test_cpu_defaults(tmp_path):
    args = GPMRewardConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert args.bf16 is False and args.gradient_checkpointing is False and args.tau == 0.1
    assert args.value_head_dim == 2 and args.loss == "gpm" and not args.gate


def test_import_gpmkit_does_not_import_trl():
    import subprocess

    code = (
        "import sys, gpmkit; assert 'trl' in dir(gpmkit)\n"
        "assert 'trl' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
