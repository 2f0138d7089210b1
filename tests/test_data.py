"""gpmkit.data over src/batch.rs: collation against a pure-Python reference, planning, sharding, streaming, errors."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from gpmkit import _core
from gpmkit.data import (
    PreferenceCollator,
    StoreCollator,
    StoreDataset,
    TokenBudgetBatchSampler,
    TokenStore,
    stream_batches,
)
from gpmkit.exceptions import ArgumentError, DTypeError, GPMError, ShapeError

# --------------------------------------------------------------------------------------------------
# a straightforward pure-Python reference


def reference_collate(records, packing=True, pad_id=0, side="right", multiple=1):
    """Dedup (first appearance order) of prompt+response sequences keyed by (prompt length, tokens), then layout."""
    rows, key_to_row, pair_rows = [], {}, []
    for rec in records:
        local = []
        for resp in rec["response_ids"]:
            key = (len(rec["prompt_ids"]), tuple(rec["prompt_ids"]) + tuple(resp))
            if key not in key_to_row:
                key_to_row[key] = len(rows)
                rows.append((list(rec["prompt_ids"]), list(resp)))
            local.append(key_to_row[key])
        pair_rows += [[local[i], local[j]] for i, j in rec["pairs"]]
    out = {"pair_rows": pair_rows, "prompt_lengths": [len(p) for p, _ in rows]}
    if packing:
        ids, pos, last, plast, start = [], [], [], [], 0
        for p, r in rows:
            ids += p + r
            pos += list(range(len(p) + len(r)))
            last.append(start + len(p) + len(r) - 1)
            plast.append(start + len(p) - 1)
            start += len(p) + len(r)
        out.update(input_ids=[ids], position_ids=[pos], last_index=last, prompt_last_index=plast)
    else:
        width = max(len(p) + len(r) for p, r in rows)
        width = -(-width // multiple) * multiple
        ids, mask = [], []
        for p, r in rows:
            pad = [pad_id] * (width - len(p) - len(r))
            zeros = [0] * len(pad)
            ids.append(pad + p + r if side == "left" else p + r + pad)
            mask.append(zeros + [1] * (len(p) + len(r)) if side == "left" else [1] * (len(p) + len(r)) + zeros)
        out.update(input_ids=ids, attention_mask=mask)
    return out


def random_records(n, seed, vocab=6, max_k=5):
    """Records with many exact duplicates (small vocabulary, short responses) and shared prompts."""
    rng = random.Random(seed)
    prompts = [[rng.randrange(vocab) for _ in range(rng.randint(1, 4))] for _ in range(max(1, n // 3))]
    out = []
    for _ in range(n):
        k = rng.randint(2, max_k)
        pairs = [(i, j) for i in range(k) for j in range(i + 1, k) if rng.random() < 0.7] or [(0, 1)]
        pairs = [(j, i) if rng.random() < 0.5 else (i, j) for i, j in pairs]
        out.append(
            {
                "prompt_ids": rng.choice(prompts),
                "response_ids": [[rng.randrange(vocab) for _ in range(rng.randint(1, 3))] for _ in range(k)],
                "pairs": pairs,
            }
        )
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("packing", [True, False])
def test_collate_matches_reference(seed, packing):
    records = random_records(25, seed)
    side = ["left", "right"][seed % 2]
    got = PreferenceCollator(packing=packing, pad_token_id=-7, padding_side=side, pad_to_multiple_of=1 + seed % 3)(
        records
    )
    ref = reference_collate(records, packing, -7, side, 1 + seed % 3)
    for key, value in ref.items():
        assert got[key].tolist() == value, key
    n_seq = sum(len(r["response_ids"]) for r in records)
    assert got["num_sequences"] == n_seq
    assert got["input_ids"].dtype == torch.long and got["pair_rows"].dtype == torch.long
    if packing:
        cu = got["cu_seq_lens_q"]
        assert cu.dtype == torch.int32 and cu[-1] == got["input_ids"].shape[1]
        assert torch.equal(got["last_index"], cu[1:].long() - 1)
        assert got["max_length_q"] == int((cu[1:] - cu[:-1]).max())


def test_dedup_counts_and_pair_rows_point_at_equal_sequences():
    records = random_records(40, 11)
    batch = PreferenceCollator()(records)
    cu = batch["cu_seq_lens_q"].tolist()
    seqs = [batch["input_ids"][0, cu[u] : cu[u + 1]].tolist() for u in range(len(cu) - 1)]
    assert len(set(map(tuple, zip(map(tuple, seqs), batch["prompt_lengths"].tolist())))) == len(seqs), "unique rows"
    q = 0
    for rec in records:
        for i, j in rec["pairs"]:
            a, b = batch["pair_rows"][q].tolist()
            assert seqs[a] == rec["prompt_ids"] + rec["response_ids"][i]
            assert seqs[b] == rec["prompt_ids"] + rec["response_ids"][j]
            q += 1
    assert len(seqs) < batch["num_sequences"]


def test_trl_rows_are_the_k2_case_and_share_sequences():
    rows = [
        {"chosen_ids": [1, 2, 3, 9], "rejected_ids": [1, 2, 3, 8], "prompt_length": 3, "margin": 0.5},
        {"chosen_ids": [1, 2, 3, 9], "rejected_ids": [1, 2, 3, 7], "prompt_length": 3},
        {"chosen_ids": [4, 5], "rejected_ids": [4, 5, 6]},  # prompt = common prefix (2), moved left to 1
    ]
    b = PreferenceCollator()(rows)
    assert b["num_sequences"] == 6 and b["input_ids"].shape == (1, 4 + 4 + 4 + 2 + 3)
    assert b["pair_rows"].tolist() == [[0, 1], [0, 2], [3, 4]]
    assert b["margin"].tolist() == [0.5, 0.0, 0.0]
    assert b["prompt_lengths"].tolist() == [3, 3, 3, 1, 1]
    bad = [{"chosen_ids": [1, 2, 3], "rejected_ids": [1, 9, 3], "prompt_length": 2}]
    with pytest.raises(ArgumentError, match="same first prompt_length"):
        PreferenceCollator()(bad)


def test_scores_labels_and_margins():
    rec = {"prompt_ids": [1], "response_ids": [[2], [3], [4]], "scores": [0.1, 0.9, 0.1]}
    b = PreferenceCollator()([rec])
    # (0,1): 1 better → (1, 0); (0,2): tie → label ½; (1,2): (1, 2)
    assert b["pair_rows"].tolist() == [[1, 0], [0, 2], [1, 2]]
    assert b["label"].tolist() == [1.0, 0.5, 1.0]
    rec = {"prompt_ids": [1], "response_ids": [[2], [3]], "pairs": [[1, 0]], "labels": [0.25], "margins": [2.0]}
    b = PreferenceCollator(packing=False)([rec])
    assert b["label"].tolist() == [0.25] and b["margin"].tolist() == [2.0]


BAD_RECORDS = [
    ({"prompt_ids": [], "response_ids": [[2], [3]], "pairs": [[0, 1]]}, ArgumentError, "record 1: a non-empty prompt"),
    ({"prompt_ids": [1], "response_ids": [[2], []], "pairs": [[0, 1]]}, ArgumentError, "response 1: a non-empty"),
    ({"prompt_ids": [1], "response_ids": [[2]], "pairs": []}, ArgumentError, "at least 2 responses"),
    ({"prompt_ids": [1], "response_ids": [[2], [3]], "pairs": [[0, 2]]}, ArgumentError, r"response index in \[0, 2\)"),
    ({"prompt_ids": [1], "response_ids": [[2], [3]], "pairs": [[1, 1]]}, ArgumentError, "self-pair"),
    ({"prompt_ids": [1], "response_ids": [[2], [3]], "pairs": [[0, 1], [1, 0]]}, ArgumentError, "repeats"),
    ({"prompt_ids": [1], "response_ids": [[2], [3]], "scores": [1.0]}, ShapeError, "one score per response"),
    ({"prompt_ids": [1], "response_ids": [[2], [3]], "pairs": [[0, 1]], "labels": [1, 0]}, ShapeError, "labels"),
    ({"prompt_ids": [1], "response_ids": [[2], [3]], "pairs": [[0, 1]], "labels": [2.0]}, ArgumentError, "0, 1"),
    ({"prompt_ids": [1], "response_ids": [[2], ["a"]], "pairs": [[0, 1]]}, ArgumentError, r"responses\[1\]\[1\]"),
    ({"prompt_ids": [1], "response_ids": [[2], [3]]}, ArgumentError, "'pairs'"),
    ({"response_ids": [[2], [3]], "pairs": [[0, 1]]}, ArgumentError, "prompt_ids"),
]


@pytest.mark.parametrize("record, error, match", BAD_RECORDS)
def test_bad_records_raise_typed_errors(record, error, match):
    good = {"prompt_ids": [1], "response_ids": [[2], [3]], "pairs": [[0, 1]]}
    with pytest.raises(error, match=match):
        PreferenceCollator()([good, record])  # the error names record 1


def test_errors_name_the_record_in_a_batch():
    good = {"prompt_ids": [1], "response_ids": [[2], [3]], "pairs": [[0, 1]]}
    bad = {"prompt_ids": [1], "response_ids": [[2], [3]], "pairs": [[0, 5]]}
    with pytest.raises(ArgumentError, match="record 2 pair 2"):
        PreferenceCollator()([good, good, bad])
    with pytest.raises(ArgumentError, match="empty batch"):
        PreferenceCollator()([])


def test_max_length_truncate_or_error():
    rec = {"prompt_ids": [1, 2], "response_ids": [[3, 4, 5], [3, 4, 6], [7]], "pairs": [[0, 1], [1, 2]]}
    b = PreferenceCollator(max_length=3, overlong="truncate")([rec])
    # [1,2,3] twice (both cut) and [1,2,7]: two unique rows, both pairs kept
    assert b["num_truncated"] == 2 and b["input_ids"].tolist() == [[1, 2, 3, 1, 2, 7]]
    assert b["pair_rows"].tolist() == [[0, 0], [0, 1]]
    with pytest.raises(ArgumentError, match="max_length = 3"):
        PreferenceCollator(max_length=3)([rec])
    with pytest.raises(ArgumentError, match="prompt shorter than max_length"):
        PreferenceCollator(max_length=2, overlong="truncate")([rec])
    with pytest.raises(ArgumentError, match="overlong"):
        PreferenceCollator(max_length=3, overlong="cut")([rec])


def test_low_level_bindings_validate_arrays():
    store = TokenStore.from_records(random_records(5, 0))
    t = store.as_tuple()
    with pytest.raises(DTypeError, match="tokens: expected int64"):
        _core.batch_validate_store((t[0].astype(np.int32), *t[1:]))
    with pytest.raises(ShapeError, match="7 arrays"):
        _core.batch_validate_store(t[:6])
    with pytest.raises(ShapeError, match="contiguous"):
        _core.batch_collate((np.repeat(t[0], 2)[::2], *t[1:]), np.array([0]))
    with pytest.raises(ArgumentError, match=r"record indices in \[0, 5\)"):
        _core.batch_collate(t, np.array([5]))
    broken = list(t)
    broken[1] = broken[1].copy()
    broken[1][1] = 10**9
    with pytest.raises(GPMError):
        _core.batch_collate(tuple(broken), np.array([0]), validate=False)
    with pytest.raises(ArgumentError, match="padding_side"):
        _core.batch_collate(t, np.array([0]), packing=False, padding_side="middle")


# --------------------------------------------------------------------------------------------------
# planning and sharding


def test_sampler_respects_budget_covers_everything_and_is_deterministic():
    store = TokenStore.from_records(random_records(200, 3))
    n_seqs, tokens, longest = store.costs()
    s = TokenBudgetBatchSampler(store, max_tokens=64, seed=5, bucket_size=32)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(200))
    assert all(tokens[b].sum() <= 64 for b in batches)
    assert batches == list(TokenBudgetBatchSampler(store, max_tokens=64, seed=5, bucket_size=32))
    s.set_epoch(1)
    assert list(s) != batches
    padded = TokenBudgetBatchSampler(store, max_tokens=64, padded=True, shuffle=False)
    assert all(n_seqs[b].sum() * longest[b].max() <= 64 for b in padded)
    # the collated batch never exceeds the planned token count (cross-record dedup only removes tokens)
    coll = StoreCollator(store=store)
    for b, cost in zip(s, s.plan["costs"]):
        assert coll(b)["input_ids"].shape[1] <= cost


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_sharding_gives_equal_steps_and_balanced_tokens(world_size, drop_last):
    store = TokenStore.from_records(random_records(301, 4))
    _, tokens, _ = store.costs()
    samplers = [
        TokenBudgetBatchSampler(store, max_tokens=80, world_size=world_size, rank=r, drop_last=drop_last, seed=2)
        for r in range(world_size)
    ]
    steps = {len(s) for s in samplers}
    assert len(steps) == 1
    per_step = np.array([[tokens[b].sum() for b in s] for s in samplers])  # [rank, step]
    seen = {i for s in samplers for b in s for i in b}
    if not drop_last:
        assert seen == set(range(301))
    # the batches of one step have similar sizes: the per-step spread is well below the budget
    assert (per_step.max(0) - per_step.min(0)).mean() < 0.25 * 80
    loads = per_step.sum(1)
    assert loads.max() - loads.min() <= 0.1 * loads.max()


def test_plan_bad_arguments():
    store = TokenStore.from_records(random_records(10, 1))
    with pytest.raises(ArgumentError, match=r"rank: expected a rank in \[0, world_size = 2\)"):
        TokenBudgetBatchSampler(store, max_tokens=100, world_size=2, rank=2)
    with pytest.raises(ArgumentError, match="world_size"):
        TokenBudgetBatchSampler(store, max_tokens=100, world_size=0)
    with pytest.raises(ArgumentError, match="max_tokens"):
        TokenBudgetBatchSampler(store, max_tokens=0)
    with pytest.raises(ArgumentError, match="fits record"):
        TokenBudgetBatchSampler(store, max_tokens=3)
    s = TokenBudgetBatchSampler(store, max_tokens=8, oversize="drop")
    kept = {i for b in s for i in b}
    assert set(s.dropped) | kept == set(range(10)) and not set(s.dropped) & kept
    s = TokenBudgetBatchSampler(store, max_tokens=3, oversize="alone")
    assert len(s.plan["over_budget"]) == 10 and len(s) == 10
    with pytest.raises(ArgumentError, match="oversize"):
        TokenBudgetBatchSampler(store, max_tokens=100, oversize="skip")


def test_dataloader_with_forked_workers():
    store = TokenStore.from_records(random_records(60, 7))
    sampler = TokenBudgetBatchSampler(store, max_tokens=50, seed=1)
    coll = StoreCollator(store=store)
    loader = torch.utils.data.DataLoader(
        StoreDataset(store), batch_sampler=sampler, collate_fn=coll, num_workers=2, multiprocessing_context="fork"
    )
    got = [b["input_ids"] for b in loader]
    want = [coll(b)["input_ids"] for b in sampler]
    assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want))


def test_stream_batches_from_jsonl(tmp_path):
    records = random_records(50, 9)
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    batches = list(stream_batches(str(path), max_tokens=60, window=16, seed=3))
    assert sum(len(b["pair_rows"]) for b in batches) == sum(len(r["pairs"]) for r in records)
    assert all(b["input_ids"].shape[1] <= 60 for b in batches)
    ranks = [list(stream_batches(str(path), max_tokens=60, window=16, world_size=2, rank=r)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])
    path.write_text(json.dumps(records[0]) + "\n{oops\n")
    with pytest.raises(ArgumentError, match="line 2"):
        list(stream_batches(str(path), max_tokens=60))
    bad = [*records[:20], {"prompt_ids": [1], "response_ids": [[1], [2]], "pairs": [[0, 0]]}]
    with pytest.raises(ArgumentError, match="record 20 pair"):
        list(stream_batches(bad, max_tokens=60, window=16))


def test_stream_batches_from_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    records = [dict(r, pairs=[list(p) for p in r["pairs"]]) for r in random_records(30, 5)]
    path = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist(records), path, row_group_size=7)
    batches = list(stream_batches(str(path), max_tokens=50, window=8, shuffle=False))
    assert sum(len(b["pair_rows"]) for b in batches) == sum(len(r["pairs"]) for r in records)
    direct = list(stream_batches(records, max_tokens=50, window=8, shuffle=False))
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, direct))


def test_pairs_to_records_groups_flattened_pairs():
    from gpmkit.data import pairs_to_records

    p, a, b, c = [1, 2], [10, 11], [12], [13, 14, 15]
    rows = [
        {"chosen_ids": p + a, "rejected_ids": p + b, "prompt_length": 2},
        {"chosen_ids": p + a, "rejected_ids": p + c, "prompt_length": 2, "margin": 1.5},
        {"chosen_ids": p + c, "rejected_ids": p + b, "prompt_length": 2},
        {"chosen_ids": [7, 8, 9], "rejected_ids": [7, 8, 6]},  # another prompt (common prefix)
        {"chosen_ids": p + b, "rejected_ids": p + a, "prompt_length": 2},  # repeats a comparison: new record
    ]
    recs = pairs_to_records(rows)
    assert [r["prompt_ids"] for r in recs] == [p, [7, 8], p]
    assert recs[0]["response_ids"] == [a, b, c] and recs[0]["pairs"] == [[0, 1], [0, 2], [2, 1]]
    assert recs[0]["margins"] == [0.0, 1.5, 0.0] and "margins" not in recs[1]
    assert recs[2]["pairs"] == [[0, 1]] and recs[2]["response_ids"] == [b, a]
    # same comparisons, same sequences: 5 pairs embedded with 3 + 2 + 2 = 7 sequences instead of 10
    batch = PreferenceCollator()(recs)
    flat = PreferenceCollator()(rows)
    assert batch["cu_seq_lens_q"].numel() - 1 == flat["cu_seq_lens_q"].numel() - 1 == 5  # dedup across the batch
    assert batch["num_sequences"] == 7 and flat["num_sequences"] == 10
    with pytest.raises(ArgumentError, match="share a prompt"):
        pairs_to_records([{"chosen_ids": [1, 2], "rejected_ids": [3, 4], "prompt_length": 1}])
    same = {"chosen_ids": p + a, "rejected_ids": p + a, "prompt_length": 2}
    with pytest.raises(ArgumentError, match="row 1: chosen_ids and rejected_ids are identical"):
        pairs_to_records([rows[0], same])
