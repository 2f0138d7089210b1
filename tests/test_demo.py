"""End-to-end test of ``gpmkit demo`` on the tiny random backbone, its results.json schema, plots and bad options.

The end-to-end run (``--backbone tiny --quick --skip-real``) takes about 10 s of CPU after imports (marked slow).
"""

from __future__ import annotations

import json
import os

import pytest
from gpmkit import cli, demo

SETS = ("cyclic_no1", "cyclic_no2", "cyclic_no3", "cyclic_no4")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    status = cli.main(["demo", "--backbone", "tiny", "--quick", "--skip-real", "--out", str(out), "--seed", "1"])
    return status, out


@pytest.mark.slow
def test_demo_writes_results_and_plots(tiny_run):
    status, out = tiny_run
    assert status == 0
    with open(out / "results.json", encoding="utf-8") as fh:
        res = json.load(fh)
    for name in (*SETS, "cyclic_general"):
        entry = res[name]
        for model in ("bt", "gpm"):
            assert 0.0 <= entry[model] <= 1.0
        assert entry["n_pairs"] > 0
    for name in SETS:
        assert res[name]["n_pairs"] == 3 * res[name]["n_triples"]
        # a scalar model cannot be right on more than 2 of the 3 edges of any cycle
        assert res[name]["bt"] <= 2 / 3 + 1e-9
        # even on random features the GPM top separates every training cycle of the replicas
        assert res[name]["gpm"] >= 0.99
        assert res[name]["paper_gpm"] == 1.0
    assert res["cyclic_no1"]["paper_bt"] == pytest.approx(0.624)
    general = res["cyclic_general"]
    assert general["bt"] <= 2 / 3 + 1e-9 and general["bt_no_centering"] <= 2 / 3 + 1e-9
    assert general["bt_ceiling"] == pytest.approx(2 / 3)
    ref = general["reference_candidate_mean"]
    assert 0.0 <= ref["gpm"] <= 1.0 and ref["bt"] <= 2 / 3 + 1e-9 and "reference only" in ref["note"]
    assert "real" not in res  # --skip-real
    cfg = res["config"]
    assert cfg["quick"] is True and cfg["seed"] == 1 and cfg["backbone_arg"] == "tiny"
    assert "frozen" in cfg["features"] and "NOT pretrained" in cfg["backbone"]
    assert "phi(x,y) - phi(x)" in cfg["features"] and "candidate" not in cfg["features"]
    for name in ("embeddings.png", "preference_matrix.png"):
        path = out / name
        assert path.stat().st_size > 1000
        with open(path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.path.basename(p) for p in cfg["plots"]) == ["embeddings.png", "preference_matrix.png"]


@pytest.mark.slow
def test_format_results_shows_paper_numbers(tiny_run):
    _, out = tiny_run
    with open(out / "results.json", encoding="utf-8") as fh:
        res = json.load(fh)
    table = demo.format_results(res)
    for paper in ("62.4", "61.6", "50.0", "62.9", "100.0"):
        assert paper in table
    assert "Cyclic No.3" in table and "held-out" in table


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "nonsense"], "invalid choice"),
        (["demo", "--seed", "x"], "invalid int"),
        (["demo", "--backbone", "no-such-backbone", "--skip-real"], "--backbone"),
        (["demo", "gpo", "--skip-real"], "only valid for the 'cyclic' target"),
    ],
)
def test_bad_options_exit_2(argv, message, capsys, tmp_path):
    status = cli.main([*argv, "--out", str(tmp_path / "o")])
    assert status == 2
    assert message in capsys.readouterr().err


def test_out_must_be_a_directory(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert cli.main(["demo", "--backbone", "tiny", "--skip-real", "--out", str(target)]) == 2
    assert "--out" in capsys.readouterr().err


def test_help_lists_the_options(capsys):
    assert cli.main(["demo", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--backbone", "--quick", "--out", "--seed", "--skip-real", "cyclic", "gpo"):
        assert option in text


def test_gpo_target_delegates(monkeypatch, tmp_path):
    import sys
    import types

    calls = []
    fake = types.ModuleType("gpmkit._demo_gpo")
    fake.run_gpo_demo = lambda out_dir, quick=False, seed=0: calls.append((out_dir, quick, seed)) or {}
    monkeypatch.setitem(sys.modules, "gpmkit._demo_gpo", fake)
    assert cli.main(["demo", "gpo", "--quick", "--seed", "3", "--out", str(tmp_path)]) == 0
    assert calls == [(str(tmp_path), True, 3)]


def test_pair_features_are_a_function_of_the_pair_alone():
    import torch

    torch.manual_seed(0)
    X, P = torch.randn(5, 4), torch.randn(5, 4)
    out = demo._pair_features(X, P)
    assert out.shape == (5, 12)
    # hand computation of [phi(x,y), phi(x,y) - phi(x), phi(x)] for row 2
    assert torch.equal(out[2], torch.tensor([*X[2].tolist(), *(X[2] - P[2]).tolist(), *P[2].tolist()]))
    # a row does not change when the other candidates change or are left out ...
    X2 = X.clone()
    X2[1:] += 10.0
    assert torch.equal(demo._pair_features(X2, P)[0], out[0])
    assert torch.equal(demo._pair_features(X[:1], P[:1])[0], out[0])
    # ... unlike the reference centring by the mean over a prompt's candidates
    texts = [("p", str(i)) for i in range(5)]
    assert not torch.allclose(demo._center_by_candidates(X2, texts)[0], demo._center_by_candidates(X, texts)[0])
    assert torch.allclose(demo._center_by_candidates(X, texts).sum(0), torch.zeros(4), atol=1e-5)


class _FakeTokenizer:
    """Records the texts it encodes; BERT-like pair encoding, a one-line chat template."""

    def __call__(self, text, pair=None, add_special_tokens=True):
        words = text.split() + (["[SEP]", *pair.split()] if pair is not None else [])
        ids = [len(w) for w in words]
        return {"input_ids": ([101, *ids, 102] if add_special_tokens else ids)}

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        text = " ".join(f"<{m['role']}> {m['content']}" for m in messages)
        return text + (" <assistant>" if add_generation_prompt else "")


def test_encode_prompt_alone_and_pair():
    tok = _FakeTokenizer()
    # encoder (no chat template): [CLS] prompt [SEP] vs [CLS] prompt [SEP] response [SEP]
    assert demo._encode(tok, "ab c", None, chat=False) == [101, 2, 1, 102]
    assert demo._encode(tok, "ab c", "dddd", chat=False) == [101, 2, 1, 5, 4, 102]
    # chat: the user turn alone ends with the generation prompt; with a response the assistant turn follows
    assert demo._encode(tok, "ab", None, chat=True) == [len("<user>"), 2, len("<assistant>")]
    assert demo._encode(tok, "ab", "dddd", chat=True) == [len("<user>"), 2, len("<assistant>"), 4]
