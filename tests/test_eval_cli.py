"""``gpmkit eval`` (rewardbench / rank / cycles) in-process on a tiny saved GPM; errors exit with status 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

from _helpers import chat_tokenizer
from gpmkit import cli
from gpmkit.eval import rank as R
from gpmkit.eval import rewardbench as RB
from gpmkit.eval.cycles import cyclicity_report
from gpmkit.models import GPMConfig, GPMModel
from transformers import LlamaConfig

SMALL = Path(__file__).parent / "fixtures" / "rewardbench_small.jsonl"
ITEMS = [
    {"prompt": "Name a colour.", "responses": ["Blue", "Red is warm", "green", "a nice yellow"]},
    {"prompt": "Say hi.", "responses": ["hi", "hello there", "hey"]},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    texts = [json.loads(line) for line in SMALL.read_text().splitlines()]
    corpus = [t for r in texts for t in (r["prompt"], r["chosen"], r["rejected"])]
    corpus += [t for it in ITEMS for t in (it["prompt"], *it["responses"])]
    cfg = LlamaConfig(
        vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = GPMModel(GPMConfig(backbone_config=cfg, value_head_dim=4, gate=True)).eval()
    model.tokenizer = chat_tokenizer([*corpus, "user assistant"] * 10)
    path = tmp_path_factory.mktemp("gpm")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def loaded(model_dir):
    from transformers import AutoTokenizer

    return GPMModel.from_pretrained(model_dir, tokenizer=AutoTokenizer.from_pretrained(model_dir)).eval()


def _items(tmp_path) -> str:
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(it) + "\n" for it in ITEMS))
    return str(path)


def test_rewardbench_command(model_dir, loaded, tmp_path, capsys):
    out = tmp_path / "rb.json"
    argv = ["eval", "rewardbench", "--model", str(model_dir), "--data", str(SMALL), "--output", str(out)]
    assert cli.main([*argv, "--batch-size", "4", "--no-progress", "--per-row"]) == 0
    text = capsys.readouterr().out
    assert "Chat Hard" in text and "math-prm" in text and "unknown subsets" in text
    got = json.loads(out.read_text())
    expected = RB.evaluate(loaded, SMALL, tokenizer=loaded.tokenizer, progress=False)
    assert got["score"] == pytest.approx(expected.score) and got["sections"] == pytest.approx(expected.sections)
    assert len(got["row_scores"]) == 17


def test_rewardbench_with_a_reward_fn(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_rewards.py").write_text(
        "def words(prompts, responses):\n    return [len(r.split()) for r in responses]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "r.json"
    argv = ["eval", "rewardbench", "--reward-fn", "my_rewards:words", "--data", str(SMALL), "--output", str(out)]
    assert cli.main(argv) == 0
    assert json.loads(out.read_text())["sections"]["Reasoning"] == pytest.approx(4 / 7)
    sys.modules.pop("my_rewards", None)


def test_rank_command(model_dir, loaded, tmp_path, capsys):
    assert cli.main(["eval", "rank", "--model", str(model_dir), "--data", _items(tmp_path), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2
    for it, row in zip(ITEMS, lines):
        v, gate = loaded._embed_texts([(it["prompt"], r) for r in it["responses"]], loaded.tokenizer, 8, False)
        expected = R.rank_responses(v.double(), gate=gate[0].double(), labels=it["responses"])
        np.testing.assert_allclose(row["win_score"], expected.win_score, atol=1e-6)
        assert sum(row["von_neumann"]) == pytest.approx(1.0) and row["von_neumann_gap"] < 1e-9
        assert row["ranks"]["copeland"] == expected.ranks("copeland").tolist()
    argv = ["eval", "rank", "--model", str(model_dir), "--prompt", "Say hi.", "--response", "hi", "--response", "hey"]
    assert cli.main(argv) == 0
    table = capsys.readouterr().out
    assert "von Neumann winner" in table and "Copeland" in table


def test_cycles_command_writes_figures(model_dir, loaded, tmp_path, capsys):
    plots = tmp_path / "figs"
    argv = ["eval", "cycles", "--model", str(model_dir), "--data", _items(tmp_path), "--plot-dir", str(plots)]
    assert cli.main([*argv, "--dpi", "40"]) == 0
    text = capsys.readouterr().out
    assert text.count("Cyclicity report") == 2 and "Hodge cyclic share" in text
    names = sorted(p.name for p in plots.iterdir())
    expected = [f"prompt{n}_{k}.png" for n in (0, 1) for k in ("decomposition", "embeddings", "matrix")]
    assert names == sorted(["gates.png", *expected])
    assert all((plots / n).read_bytes()[:4] == b"\x89PNG" for n in names)
    out = tmp_path / "c.jsonl"
    assert cli.main([*argv[:6], "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    it = ITEMS[0]
    v, gate = loaded._embed_texts([(it["prompt"], r) for r in it["responses"]], loaded.tokenizer, 8, False)
    rep = cyclicity_report(v=v.double(), gate=gate[0].double())
    assert rows[0]["cyclic_share"] == pytest.approx(rep.cyclic_share, abs=1e-6)
    assert rows[0]["cyclic_triads"] == rep.cyclic_triads and len(rows[0]["gate"]) == 2


def test_errors_exit_2(model_dir, tmp_path, capsys):
    def err(argv):
        assert cli.main(argv) == 2
        return capsys.readouterr().err

    assert "rewardbench" in err(["eval"])
    assert "--data: no such file" in err(["eval", "rewardbench", "--model", str(model_dir), "--data", "nope.jsonl"])
    assert "--model: no such directory" in err(["eval", "rewardbench", "--model", "nodir", "--data", str(SMALL)])
    assert "exactly one" in err(["eval", "rewardbench", "--data", str(SMALL)])
    assert "MODULE:FUNCTION" in err(["eval", "rewardbench", "--reward-fn", "x", "--data", str(SMALL)])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    assert "missing column(s) ['subset']" in err(["eval", "rewardbench", "--model", str(model_dir), "--data", str(bad)])
    assert "--prompt: required" in err(["eval", "rank", "--model", str(model_dir)])
    assert "'responses'" in err(["eval", "cycles", "--model", str(model_dir), "--data", str(bad)])
    assert "invalid choice" in err(["eval", "rewardbench", "--empty", "maybe"])


@pytest.mark.slow
def test_eval_walkthrough_example_runs(tmp_path):
    """examples/eval_walkthrough.py (README "Evaluation walkthrough") end to end on the tiny backbone."""
    import subprocess

    pytest.importorskip("trl")
    script = Path(__file__).resolve().parents[1] / "examples" / "eval_walkthrough.py"
    out = tmp_path / "walk"
    proc = subprocess.run(
        [sys.executable, str(script), str(out), "--backbone", "tiny", "--warmup-steps", "0", "--steps", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "score (mean of sections)" in proc.stdout and "von Neumann winner" in proc.stdout
    for name in ("matrix", "decomposition", "embeddings", "gates", "spectrum"):
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG", name
    summary = json.loads((out / "results.json").read_text())
    assert summary["rewardbench"]["unknown_subsets"]["cyclic-heldout"]["total"] == 72
    assert sum(summary["ranking"]["von_neumann"]) == pytest.approx(1.0)
