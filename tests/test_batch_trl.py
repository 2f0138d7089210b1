"""GPMRewardTrainer with gpmkit.data batches: packed by default, same loss as the padded path, multi-response data."""

from __future__ import annotations

import random

import pytest
import torch

pytest.importorskip("trl")

from datasets import Dataset
from gpmkit import functional as F
from gpmkit.data import PreferenceCollator
from gpmkit.exceptions import ArgumentError
from gpmkit.models import GPMModel
from gpmkit.trl import GPMDataCollator, GPMRewardTrainer
from test_trl import _args, _backbone, _dataset, _logged, tokenizer  # noqa: F401


def test_packing_is_the_default_for_decoders_and_gives_the_padded_loss(tmp_path, tokenizer):  # noqa: F811
    ds = _dataset("conversational_explicit", margin=True)
    losses = {}
    for packing in (None, False):
        model = GPMModel.from_backbone(_backbone(), value_head_dim=4, gate=True)
        args = _args(tmp_path, gate=True, tau=0.3, packing=packing, seed=0)
        trainer = GPMRewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer)
        assert trainer.packing is (packing is None)
        assert isinstance(trainer.data_collator, PreferenceCollator if packing is None else GPMDataCollator)
        batch = next(iter(trainer.get_train_dataloader()))
        model.eval()
        with torch.no_grad():
            losses[packing] = trainer.compute_loss(model, dict(batch))
        if packing is None:
            assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1
            # six different prompts: nothing to deduplicate, 12 sequences, no pad tokens
            assert batch["num_sequences"] == 12 and batch["cu_seq_lens_q"].numel() == 13
            with torch.no_grad():
                v, gate = model(**batch)
                rows = batch["pair_rows"]
                expected = F.gpm_loss(
                    v[rows[:, 0]], v[rows[:, 1]], gate=gate[rows[:, 0]], tau=0.3, margin=batch["margin"]
                )
            torch.testing.assert_close(losses[packing], expected, rtol=1e-6, atol=1e-7)
    # the same examples (same seed → same sampler order) give the same loss either way
    torch.testing.assert_close(losses[None], losses[False], rtol=1e-5, atol=1e-6)


def _records(n: int, k: int = 4, seed: int = 0) -> list[dict]:
    """Multi-response records: response quality = its number of 7s; all K(K−1)/2 pairs, better first."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = [rng.randrange(20, 300) for _ in range(rng.randint(2, 6))]
        responses = []
        for i in range(k):
            resp = [7] * (i + 1) + [rng.randrange(20, 300) for _ in range(rng.randint(1, 5))]
            rng.shuffle(resp)
            responses.append(resp)
        order = list(range(k))
        rng.shuffle(order)
        responses = [responses[i] for i in order]
        scores = [float(r.count(7)) for r in responses]
        out.append({"prompt_ids": prompt, "response_ids": responses, "scores": scores})
    return out


def test_multi_response_records_train_deduplicated_and_packed(tmp_path, tokenizer):  # noqa: F811
    ds = Dataset.from_list(_records(24))
    args = _args(tmp_path, max_steps=6, per_device_train_batch_size=4, learning_rate=1e-2, gate=True)
    trainer = GPMRewardTrainer(model=_backbone(), args=args, train_dataset=ds, processing_class=tokenizer)
    assert trainer.packing
    batch = next(iter(trainer.get_train_dataloader()))
    # 4 records × 4 responses embedded once each for 4 × 6 comparisons
    assert batch["num_sequences"] == 16 and batch["cu_seq_lens_q"].numel() == 17
    assert batch["pair_rows"].shape == (24, 2) and batch["label"].tolist() == [1.0] * 24
    trainer.train()
    loss = _logged(trainer, "loss")
    assert loss[-1] < loss[0]
    assert trainer.dropped_pairs == {"train": 0}


def test_multi_response_records_padded_and_max_length(tmp_path, tokenizer):  # noqa: F811
    rows = _records(8)
    rows[3]["response_ids"][0] = list(range(20, 100))  # too long for max_length=64: the record is dropped
    ds = Dataset.from_list(rows)
    args = _args(tmp_path, max_steps=2, per_device_train_batch_size=4, packing=False)
    trainer = GPMRewardTrainer(model=_backbone("qwen2"), args=args, train_dataset=ds, processing_class=tokenizer)
    assert not trainer.packing and isinstance(trainer.data_collator, PreferenceCollator)
    assert trainer.dropped_pairs == {"train": 1} and len(trainer.train_dataset) == 7
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["attention_mask"].shape[0] == 16
    trainer.train()


def test_packing_true_with_an_encoder_is_refused(tmp_path, tokenizer):  # noqa: F811
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(vocab_size=320, hidden_size=32, num_hidden_layers=1, num_attention_heads=2))
    ds = Dataset.from_list(_records(2))
    with pytest.raises(ArgumentError, match="packing"):
        GPMRewardTrainer(model=bert, args=_args(tmp_path, packing=True), train_dataset=ds, processing_class=tokenizer)
    trainer = GPMRewardTrainer(model=bert, args=_args(tmp_path), train_dataset=ds, processing_class=tokenizer)
    assert not trainer.packing  # auto: padded for an encoder


def test_bad_record_columns(tmp_path, tokenizer):  # noqa: F811
    ds = Dataset.from_list([{"response_ids": [[1], [2]], "pairs": [[0, 1]]}])
    with pytest.raises(ArgumentError, match="prompt_ids"):
        GPMRewardTrainer(model=_backbone(), args=_args(tmp_path), train_dataset=ds, processing_class=tokenizer)


def test_max_tokens_budget_batches(tmp_path, tokenizer):  # noqa: F811
    rows = _records(16)
    ds = Dataset.from_list(rows)
    budget = 120
    args = _args(tmp_path, max_steps=3, max_tokens=budget, seed=3)
    trainer = GPMRewardTrainer(model=_backbone(), args=args, train_dataset=ds, processing_class=tokenizer)
    loader = trainer.get_train_dataloader()
    batches = list(loader)
    n_records = sum(b["pair_rows"].shape[0] // 6 for b in batches)
    assert n_records == 16 and len(batches) == len(loader) > 1
    assert all(b["input_ids"].shape[1] <= budget for b in batches)
    trainer.train()
    with pytest.raises(ArgumentError, match="max_tokens"):
        _args(tmp_path, max_tokens=0)
    with pytest.raises(ArgumentError, match="fits record"):
        GPMRewardTrainer(
            model=_backbone(), args=_args(tmp_path, max_tokens=10), train_dataset=ds, processing_class=tokenizer
        ).get_train_dataloader()
