"""gpmkit.eval.rewardbench: official section weighting on a hand-checked fixture, GPM/BT/callable models, RB2."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from gpmkit.eval import rewardbench as RB
from gpmkit.exceptions import ArgumentError

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = FIXTURES / "rewardbench_small.jsonl"
SMALL2 = FIXTURES / "rewardbench2_small.jsonl"

# Hand-computed from the fixture with reward = number of words (see the comments in the test below).
CHAT = Fraction(1 * 100 + Fraction(1, 2) * 28, 100 + 28)  # alpacaeval-easy 2/2, mt-bench-easy 1/2 (one tie)
CHAT_HARD = Fraction(Fraction(1, 2) * 100 + 0 * 37, 100 + 37)  # llmbar-natural 1/2, mt-bench-hard 0/1
SAFETY = Fraction(1 * 136 + Fraction(1, 3) * 250, 136 + 250)  # donotanswer 2/2, xstest-should-respond 1/3
REASONING = Fraction(Fraction(1, 2) * 984 + 1 * 164, 984 + 164)  # math-prm 1/2 (weight 984), hep-python 2/2
SCORE = (CHAT + CHAT_HARD + SAFETY + REASONING) / 4


class WordCount:
    """A deterministic scalar reward: the number of words of the response (records its batches)."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.items: list[tuple] = []

    def __call__(self, prompts: list, responses: list) -> list[float]:
        self.batches.append(len(responses))
        self.items += list(zip(prompts, responses))
        return [float(len(r.split())) for r in responses]


def test_official_constants():
    assert RB.EXAMPLE_COUNTS["math-prm"] == 984
    assert sum(RB.EXAMPLE_COUNTS[s] for s in RB.SUBSET_MAPPING["Reasoning"]) == 984 + 6 * 164
    assert sum(RB.EXAMPLE_COUNTS[s] for s in RB.SUBSET_MAPPING["Chat"]) == 358
    assert sum(RB.EXAMPLE_COUNTS[s] for s in RB.SUBSET_MAPPING["Chat Hard"]) == 456
    assert sum(RB.EXAMPLE_COUNTS[s] for s in RB.SUBSET_MAPPING["Safety"]) == 740
    assert sorted(s for v in RB.SUBSET_MAPPING.values() for s in v) == sorted(RB.EXAMPLE_COUNTS)
    assert RB.SECTIONS == ("Chat", "Chat Hard", "Safety", "Reasoning")


def test_section_scores_formula():
    accs = {"math-prm": 0.5, "hep-python": 1.0, "alpacaeval-easy": 0.2, "not-a-subset": 1.0}
    sec = RB.section_scores(accs)
    assert sec["Reasoning"] == pytest.approx((0.5 * 984 + 164) / (984 + 164))
    assert sec["Chat"] == pytest.approx(0.2)
    assert sec["Chat Hard"] is None and sec["Safety"] is None


def test_fixture_scores_by_hand():
    fn = WordCount()
    res = RB.evaluate(fn, SMALL, batch_size=4, progress=False)
    assert res.benchmark == "rewardbench" and res.source == str(SMALL)
    acc = {k: (v["correct"], v["total"]) for k, v in res.subsets.items()}
    assert acc == {
        "alpacaeval-easy": (2, 2),
        "mt-bench-easy": (1, 2),
        "llmbar-natural": (1, 2),
        "mt-bench-hard": (0, 1),
        "donotanswer": (2, 2),
        "xstest-should-respond": (1, 3),
        "math-prm": (1, 2),
        "hep-python": (2, 2),
    }
    assert res.unknown_subsets == {"my-custom": {"correct": 1, "total": 1, "accuracy": 1.0}}
    expected = {"Chat": CHAT, "Chat Hard": CHAT_HARD, "Safety": SAFETY, "Reasoning": REASONING}
    for name, value in expected.items():
        assert res.sections[name] == pytest.approx(float(value), abs=1e-12), name
    assert res.score == pytest.approx(float(SCORE), abs=1e-12)
    assert res.complete and res.n_pairs == 17 and res.skipped == 0
    # math-prm's 984 weight matters: with its real 447 prompts Reasoning would be different
    assert res.sections["Reasoning"] != pytest.approx((0.5 * 447 + 164) / (447 + 164))
    # each unique (prompt, response) scored once, in batches of at most 4 (one duplicate "Blue" in the fixture)
    assert len(fn.items) == 33 == len(set(fn.items))
    assert max(fn.batches) <= 4
    # the tie (2 words vs 2 words) counts as wrong; its margin is 0
    assert res.scores[2] == 0.0 and res.scores[3] == 2.0


def test_result_json_text_html(tmp_path):
    res = RB.evaluate(WordCount(), SMALL, progress=False)
    d = json.loads(res.to_json(tmp_path / "r.json", per_row=True))
    assert d == json.loads((tmp_path / "r.json").read_text())
    assert d["score"] == pytest.approx(float(SCORE)) and len(d["row_scores"]) == 17
    assert d["sections"]["Reasoning"] == pytest.approx(4 / 7)
    text = res.to_text()
    assert f"{100 * float(SCORE):.2f}" in text and "unknown subsets (reported, not weighted)" in text
    assert "my-custom" in text and "math-prm" in text
    assert "<table>" in res._repr_html_() and str(res) == text


def test_inputs_rows_parquet_and_datasets(tmp_path):
    rows = [json.loads(line) for line in SMALL.read_text().splitlines()]
    base = RB.evaluate(WordCount(), SMALL, progress=False).score
    assert RB.evaluate(WordCount(), rows, progress=False).score == base
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rb.parquet")
    assert RB.evaluate(WordCount(), tmp_path / "rb.parquet", progress=False).score == base
    datasets = pytest.importorskip("datasets")
    assert RB.evaluate(WordCount(), datasets.Dataset.from_list(rows), progress=False).score == base
    # tensors and numpy arrays are accepted as reward outputs
    assert RB.evaluate(lambda p, r: torch.tensor([len(x.split()) for x in r]), rows, progress=False).score == base
    # chat-message prompts work too
    msgs = [{**r, "prompt": [{"role": "user", "content": r["prompt"]}]} for r in rows]
    assert RB.evaluate(WordCount(), msgs, progress=False).score == base


def test_partial_data_reports_missing_sections():
    rows = [json.loads(line) for line in SMALL.read_text().splitlines()]
    res = RB.evaluate(WordCount(), [r for r in rows if r["subset"] in ("math-prm", "hep-python")], progress=False)
    assert res.sections["Chat"] is None and not res.complete
    assert res.score == pytest.approx(4 / 7)
    assert "only 1 of 4 sections" in res.to_text()
    only_unknown = RB.evaluate(WordCount(), [rows[-1]], progress=False)
    assert only_unknown.score is None and only_unknown.unknown_subsets["my-custom"]["total"] == 1


def test_empty_responses_policy():
    rows = [json.loads(line) for line in SMALL.read_text().splitlines()]
    rows[0] = {**rows[0], "chosen": "   "}
    with pytest.raises(ArgumentError, match=r"data row 0: column\(s\) \['chosen'\] empty"):
        RB.evaluate(WordCount(), rows, progress=False)
    wrong = RB.evaluate(WordCount(), rows, empty="wrong", progress=False)
    assert wrong.subsets["alpacaeval-easy"] == {"correct": 1, "total": 2, "accuracy": 0.5}
    skip = RB.evaluate(WordCount(), rows, empty="skip", progress=False)
    assert skip.subsets["alpacaeval-easy"] == {"correct": 1, "total": 1, "accuracy": 1.0} and skip.skipped == 1
    with pytest.raises(ArgumentError, match="empty"):
        RB.evaluate(WordCount(), rows, empty="ignore")


def test_bad_data_errors(tmp_path):
    rows = [json.loads(line) for line in SMALL.read_text().splitlines()]
    bad = [dict(rows[0]), {k: v for k, v in rows[1].items() if k != "subset"}]
    with pytest.raises(ArgumentError, match=r"data row 1: missing column\(s\) \['subset'\]"):
        RB.evaluate(WordCount(), bad)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "p", "chosen": "a"}) + "\n")
    with pytest.raises(ArgumentError, match=r"bad.jsonl:1: missing column\(s\) \['rejected', 'subset'\]"):
        RB.evaluate(WordCount(), tmp_path / "bad.jsonl")
    with pytest.raises(ArgumentError, match="'chosen': expected a response string"):
        RB.evaluate(WordCount(), [{**rows[0], "chosen": ["a", "b"]}])
    with pytest.raises(ArgumentError, match="'prompt'"):
        RB.evaluate(WordCount(), [{**rows[0], "prompt": 3}])
    with pytest.raises(ArgumentError, match="no such file"):
        RB.evaluate(WordCount(), tmp_path / "missing.jsonl")
    with pytest.raises(ArgumentError, match="no such file"):
        RB.evaluate(WordCount(), tmp_path / "missing.parquet")
    with pytest.raises(ArgumentError, match="no rows"):
        RB.evaluate(WordCount(), [])
    with pytest.raises(ArgumentError, match="model"):
        RB.evaluate(42, rows)
    with pytest.raises(ArgumentError, match="batch_size"):
        RB.evaluate(WordCount(), rows, batch_size=0)
    with pytest.raises(ArgumentError, match="returned 1 scores"):
        RB.evaluate(lambda p, r: [1.0], rows)


def test_no_file_and_no_cache_is_a_clear_error(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants as hub

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "ds"))
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ArgumentError, match="not in the local Hugging Face cache"):
        RB.evaluate(WordCount(), None)


def test_rewardbench2_needs_data():
    with pytest.raises(ArgumentError, match="RewardBench 2 needs a file"):
        RB.evaluate_best_of_n(WordCount(), None)


def test_rewardbench2_scalar_best_of_4():
    res = RB.evaluate_best_of_n(WordCount(), SMALL2, progress=False)
    # Factuality: 4 words beats all (1), 2 words ties one rejected at the max (1/2); Math: 1 loses (0), 3 wins (1)
    assert res.subsets["Factuality"] == {"correct": 1.5, "total": 2, "accuracy": 0.75}
    assert res.subsets["Math"] == {"correct": 1.0, "total": 2, "accuracy": 0.5}
    assert res.skipped == 1 and "Ties" not in res.subsets  # several chosen responses
    assert res.score == pytest.approx(0.625)
    assert "RewardBench 2" in res.to_text() and res.to_dict()["benchmark"] == "rewardbench2"


# --------------------------------------------------------------------------------------------------
# GPM and BT models (tiny random Llama)


@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("transformers")
    from _helpers import chat_tokenizer
    from gpmkit.models import GPMConfig, GPMModel
    from transformers import LlamaConfig

    texts = []
    for path in (SMALL, SMALL2):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            texts += [row["prompt"], *np.atleast_1d(row["chosen"]).tolist(), *np.atleast_1d(row["rejected"]).tolist()]
    tok = chat_tokenizer([*texts, "user assistant"] * 10)
    cfg = LlamaConfig(
        vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    gpm = GPMModel(GPMConfig(backbone_config=cfg, value_head_dim=4, gate=True)).eval()
    torch.manual_seed(1)
    bt = GPMModel(GPMConfig(backbone_config=cfg, bt=True)).eval()
    return tok, gpm, bt


def test_gpm_pairs_match_direct_scoring_and_embed_once(tiny, monkeypatch):
    tok, gpm, _ = tiny
    rows = [json.loads(line) for line in SMALL.read_text().splitlines()]
    seen = []
    original = type(gpm)._embed_texts

    def counting(self, pairs, tokenizer, batch_size, bf16):
        seen.extend(pairs)
        assert len(pairs) <= 5
        return original(self, pairs, tokenizer, batch_size, bf16)

    monkeypatch.setattr(type(gpm), "_embed_texts", counting)
    res = RB.evaluate(gpm, SMALL, tokenizer=tok, batch_size=5, progress=True)
    monkeypatch.undo()
    assert len(seen) == 33  # each unique (prompt, response) once: K passes, not K²
    expected = {}
    margins = []
    for row in rows:
        m = gpm.preference_matrix(row["prompt"], [row["chosen"], row["rejected"]], tok)
        margins.append(float(m[0, 1]))
        d = expected.setdefault(row["subset"], [0, 0])
        d[0] += int(m[0, 1] > 0)
        d[1] += 1
    got = {**res.subsets, **res.unknown_subsets}
    assert {k: [v["correct"], v["total"]] for k, v in got.items()} == expected
    np.testing.assert_allclose(res.scores, margins, atol=1e-5)
    sec = RB.section_scores({k: v["accuracy"] for k, v in res.subsets.items()})
    assert res.sections == sec
    assert res.model.startswith("GPM")
    # bf16 autocast runs and gives a valid result
    res16 = RB.evaluate(gpm, rows, tokenizer=tok, bf16=True, progress=False)
    assert res16.n_pairs == 17


def test_bt_model_uses_reward_differences(tiny):
    tok, _, bt = tiny
    rows = [json.loads(line) for line in SMALL.read_text().splitlines()]
    res = RB.evaluate(bt, rows, tokenizer=tok, progress=False)
    assert res.model.startswith("BT")
    for n, row in enumerate(rows):
        r = bt.score(row["prompt"], [row["chosen"], row["rejected"]], tok)  # r_i − mean(r)
        assert res.scores[n] == pytest.approx(float(r[0] - r[1]), abs=1e-5)
    with pytest.raises(ArgumentError, match="tokenizer"):
        RB.evaluate(bt, rows)


def test_rewardbench2_pairwise_gpm_must_beat_all(tiny):
    tok, gpm, bt = tiny
    res = RB.evaluate_best_of_n(gpm, SMALL2, tokenizer=tok, progress=False)
    expected: dict[str, list] = {}
    for line in SMALL2.read_text().splitlines():
        row = json.loads(line)
        chosen = np.atleast_1d(row["chosen"]).tolist()
        if len(chosen) != 1:
            continue
        m = gpm.preference_matrix(row["prompt"], [*chosen, *row["rejected"]], tok)
        d = expected.setdefault(row["subset"], [0.0, 0])
        d[0] += float(bool((m[0, 1:] > 0).all()))
        d[1] += 1
    assert {k: [v["correct"], v["total"]] for k, v in res.subsets.items()} == expected
    assert res.score == pytest.approx(np.mean([c / t for c, t in expected.values()]))
    assert RB.evaluate_best_of_n(bt, SMALL2, tokenizer=tok, progress=False).n_pairs == 4
