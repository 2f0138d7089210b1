"""The ``gpmkit`` command line (gpmkit.cli): train / resume / score / errors, in-process on a tiny random Llama."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import torch
from _helpers import chat_tokenizer, save_tiny_llama

pytest.importorskip("trl")
pytest.importorskip("tokenizers")

from datasets import Dataset
from gpmkit import cli
from gpmkit.exceptions import ArgumentError
from gpmkit.models import GPMModel
from gpmkit.trl import GPMRewardConfig, GPMRewardTrainer
from transformers import TrainerCallback

QUESTIONS = ["What colour is the sky?", "Name a fruit.", "Is water wet?", "Pick a number.", "Say hello.", "Any pet?"]
GOOD, BAD = "yes yes yes", "no"


CORPUS = [*QUESTIONS, GOOD, BAD, "the quick brown fox jumps over the lazy dog", "user assistant"] * 20


def _tokenizer():
    """A tiny in-process BPE tokenizer with a ChatML template."""
    return chat_tokenizer(CORPUS)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """A tiny random Llama and its tokenizer saved in one directory (``--backbone DIR`` loads both offline)."""
    return save_tiny_llama(tmp_path_factory.mktemp("backbone"), CORPUS)


def _rows(fmt: str = "standard_explicit") -> list[dict]:
    rows = []
    for q in QUESTIONS:
        if fmt == "standard_implicit":
            rows.append({"chosen": f"{q} {GOOD}", "rejected": f"{q} {BAD}"})
        elif fmt == "standard_explicit":
            rows.append({"prompt": q, "chosen": f" {GOOD}", "rejected": f" {BAD}"})
        elif fmt == "conversational_implicit":
            user = {"role": "user", "content": q}
            rows.append(
                {
                    "chosen": [user, {"role": "assistant", "content": GOOD}],
                    "rejected": [user, {"role": "assistant", "content": BAD}],
                }
            )
        else:
            rows.append(
                {
                    "prompt": [{"role": "user", "content": q}],
                    "chosen": [{"role": "assistant", "content": GOOD}],
                    "rejected": [{"role": "assistant", "content": BAD}],
                }
            )
    return rows


def _jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _train_argv(data, backbone, out, *extra) -> list[str]:
    return [
        "train", "--data", data, "--backbone", backbone, "--output-dir", str(out), "--batch-size", "2",
        "--lr", "3e-3", "--max-length", "64", "--seed", "0", "--logging-steps", "1", *extra,
    ]  # fmt: skip


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------------
# help


def test_help(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "score" in out
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--data", "--eval-data", "--backbone", "--value-head-dim", "--gate", "--loss", "--resume"):
        assert flag in out, flag
    assert cli.main(["score", "--help"]) == 0
    assert "--responses" in capsys.readouterr().out
    assert cli.main([]) == 2


def test_python_m_gpmkit_help_and_cheap_import():
    res = subprocess.run(
        [sys.executable, "-m", "gpmkit", "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "usage: gpmkit" in res.stdout
    code = "import sys, gpmkit.cli; assert not {'torch', 'transformers', 'trl'} & set(sys.modules), sys.modules.keys()"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ------------------------------------------------------------------------------------------------
# train, resume, score


def test_train_saves_loadable_model_and_scores(tmp_path, backbone, capsys):
    data = _jsonl(tmp_path / "train.jsonl", _rows("conversational_explicit"))
    out = tmp_path / "out"
    argv = _train_argv(data, backbone, out, "--max-steps", "6", "--save-steps", "3", "--gate", "--value-head-dim", "4")
    assert cli.main([*argv, "--eval-data", data]) == 0
    stdout = capsys.readouterr().out
    assert "eval_accuracy" in stdout and "global step 6" in stdout
    assert (out / "checkpoint-3").is_dir() and (out / "checkpoint-6").is_dir()
    model = GPMModel.from_pretrained(out)
    assert model.has_gate and model.config.value_head_dim == 4

    # score: a readable table, JSON, and the JSONL batch form
    responses = tmp_path / "responses.txt"
    responses.write_text(f"{GOOD}\n{BAD}\nmaybe\n", encoding="utf-8")
    assert cli.main(["score", "--model", str(out), "--prompt", QUESTIONS[0], "--responses", str(responses)]) == 0
    table = capsys.readouterr().out
    assert "preference matrix" in table and "win" in table and "maybe" in table
    argv = ["score", "--model", str(out), "--prompt", QUESTIONS[0], "--response", GOOD, "--response", BAD]
    assert cli.main([*argv, "--response", "maybe", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    m = torch.tensor(res["matrix"])
    assert m.shape == (3, 3) and torch.equal(m, -m.T) and len(res["win_scores"]) == 3
    model.tokenizer = _tokenizer()
    expected = model.score(QUESTIONS[0], [GOOD, BAD, "maybe"])
    torch.testing.assert_close(torch.tensor(res["win_scores"]), expected, rtol=1e-5, atol=1e-6)
    assert res["matrix"][0][1] > 0  # trained: the good answer beats the bad one
    rows = [{"prompt": q, "responses": [GOOD, BAD]} for q in QUESTIONS[:2]] + [{"prompt": "x", "responses": ["a"]}]
    batch, dest = _jsonl(tmp_path / "score.jsonl", rows), tmp_path / "scores.jsonl"
    assert cli.main(["score", "--model", str(out), "--data", batch, "--output", str(dest)]) == 0
    lines = [json.loads(line) for line in dest.read_text().splitlines()]
    assert [len(r["win_scores"]) for r in lines] == [2, 2, 1] and lines[2]["matrix"] == [[0.0]]


class _Record(TrainerCallback):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


class _Interrupt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


@pytest.mark.parametrize("fmt", ["standard_implicit"])
def test_resume_equals_uninterrupted_run(tmp_path, backbone, monkeypatch, capsys, fmt):
    data = _jsonl(tmp_path / "train.jsonl", _rows(fmt))
    extra = ("--max-steps", "6", "--save-steps", "2", "--loss", "gpm", "--value-head-dim", "4", "--gate")
    # 6 pairs at batch 2: 3 steps per epoch, so the run crosses an epoch boundary (data reshuffled)
    assert cli.main(_train_argv(data, backbone, tmp_path / "full", *extra)) == 0
    full = _params(GPMModel.from_pretrained(tmp_path / "full"))

    out = tmp_path / "cut"
    monkeypatch.setattr(cli, "_CALLBACKS", [_Interrupt(3)])
    assert cli.main(_train_argv(data, backbone, out, *extra)) == 130
    assert "interrupted" in capsys.readouterr().err
    assert (out / "checkpoint-2").is_dir() and not (out / "checkpoint-4").exists()
    assert not (out / "model.safetensors").exists()
    record = _Record()
    monkeypatch.setattr(cli, "_CALLBACKS", [record])
    assert cli.main([*_train_argv(data, backbone, out, *extra), "--resume"]) == 0
    assert record.steps == [3, 4, 5, 6]  # really resumed from checkpoint-2, not retrained from scratch
    assert "global step 6" in capsys.readouterr().out
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    resumed = _params(GPMModel.from_pretrained(out))
    assert resumed.keys() == full.keys()
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=1e-6, msg=key)  # observed: bit-equal
    # the first run's weights really moved (the comparison is not trivially between two untrained models)
    initial = GPMModel.from_pretrained(out / "checkpoint-2")
    assert not torch.allclose(initial.value_head.weight, full["value_head.weight"])


# ------------------------------------------------------------------------------------------------
# errors


def _err(capsys, argv) -> str:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_clean_errors(tmp_path, backbone, capsys):
    good = _jsonl(tmp_path / "good.jsonl", _rows())
    out = str(tmp_path / "out")
    err = _err(capsys, _train_argv(str(tmp_path / "missing.jsonl"), backbone, out))
    assert err.startswith("gpmkit: error: --data") and "missing.jsonl" in err
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text(json.dumps(_rows()[0]) + "\n\n{not json\n", encoding="utf-8")
    assert "bad.jsonl:3: invalid JSON" in _err(capsys, _train_argv(str(bad_json), backbone, out))
    assert "loss" in _err(capsys, [*_train_argv(good, backbone, out), "--loss", "hinge"])
    for dim in ("3", "0"):
        assert "value_head_dim" in _err(capsys, [*_train_argv(good, backbone, out), "--value-head-dim", dim])
    assert "--resume" in _err(capsys, [*_train_argv(good, backbone, str(tmp_path / "new")), "--resume"])
    assert "--backbone" in _err(capsys, _train_argv(good, str(tmp_path / "nope"), out))
    assert "--model" in _err(capsys, ["score", "--model", str(tmp_path / "nope"), "--prompt", "a", "--response", "b"])
    assert "--responses" in _err(
        capsys, ["score", "--model", backbone, "--prompt", "a", "--responses", str(tmp_path / "none.txt")]
    )
    assert "--prompt" in _err(capsys, ["score", "--model", backbone, "--response", "b"])
    bad_score = _jsonl(tmp_path / "s.jsonl", [{"prompt": "a", "responses": ["b"]}, {"prompt": "a", "responses": 3}])
    assert "s.jsonl:2: field 'responses'" in _err(capsys, ["score", "--model", backbone, "--data", bad_score])


@pytest.mark.parametrize(
    ("row", "field", "what"),
    [
        ({"prompt": "q", "rejected": "b"}, "chosen", "missing"),
        ({"prompt": "q", "chosen": "", "rejected": "b"}, "chosen", "empty"),
        ({"prompt": "q", "chosen": "a", "rejected": None}, "rejected", "missing"),
        ({"prompt": "q", "chosen": 3, "rejected": "b"}, "chosen", "int"),
        ({"prompt": None, "chosen": "a", "rejected": "b"}, "prompt", "missing"),
        ({"prompt": " ", "chosen": "a", "rejected": "b"}, "prompt", "empty"),
        ({"prompt": "q", "chosen": [{"role": "assistant", "content": None}], "rejected": "b"}, "chosen", "content"),
        ({"prompt": "q", "chosen": [], "rejected": "b"}, "chosen", "empty"),
        ({"prompt": "q", "chosen": "a", "rejected": "b", "margin": "big"}, "margin", "number"),
    ],
)
def test_bad_rows_name_line_and_field(tmp_path, capsys, backbone, row, field, what):
    data = _jsonl(tmp_path / "d.jsonl", [*_rows()[:2], row])
    err = _err(capsys, _train_argv(data, backbone, str(tmp_path / "out")))
    assert "d.jsonl:3" in err and repr(field) in err and what in err, err


def test_bad_rows_in_trainer_datasets(tmp_path, backbone):
    args = GPMRewardConfig(output_dir=str(tmp_path), max_steps=1, report_to="none", use_cpu=True, max_length=64)
    tok = _tokenizer()
    rows = [*_rows(), {"prompt": "q", "chosen": " a", "rejected": ""}]
    with pytest.raises(ArgumentError, match=r"train_dataset row 6: field 'rejected' is empty"):
        GPMRewardTrainer(model=backbone, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    rows = [*_rows("conversational_explicit")]
    rows[2] = {**rows[2], "prompt": [{"role": "user", "content": ""}]}
    rows[4] = {**rows[4], "prompt": None}
    with pytest.raises(ArgumentError, match=r"eval_dataset row 4: field 'prompt' is missing"):
        GPMRewardTrainer(
            model=backbone, args=args, train_dataset=Dataset.from_list(_rows()),
            eval_dataset=Dataset.from_list(rows), processing_class=tok,
        )  # fmt: skip


def test_tokenizer_without_pad_or_eos(tmp_path, backbone):
    args = GPMRewardConfig(output_dir=str(tmp_path), max_steps=1, report_to="none", use_cpu=True, max_length=64)
    tok = _tokenizer()
    tok.pad_token = None
    tok.eos_token = None
    with pytest.raises(ArgumentError, match=r"pad_token.*eos_token"):
        GPMRewardTrainer(model=backbone, args=args, train_dataset=Dataset.from_list(_rows()), processing_class=tok)
    tok = _tokenizer()
    tok.eos_token = None  # padding works, but standard text needs the EOS TRL appends
    with pytest.raises(ArgumentError, match=r"eos_token"):
        GPMRewardTrainer(model=backbone, args=args, train_dataset=Dataset.from_list(_rows()), processing_class=tok)


def test_overlong_pairs_are_counted_and_reported(tmp_path, backbone, caplog, capsys):
    long = " ".join(["the quick brown fox"] * 20)
    rows = [
        *_rows(),
        {"prompt": "q", "chosen": long, "rejected": " no"},
        {"prompt": long, "chosen": "a", "rejected": "b"},
    ]
    args = GPMRewardConfig(output_dir=str(tmp_path), max_steps=1, report_to="none", use_cpu=True, max_length=40)
    with caplog.at_level(logging.WARNING, logger="gpmkit.trl"):
        trainer = GPMRewardTrainer(
            model=backbone, args=args, train_dataset=Dataset.from_list(rows),
            eval_dataset=Dataset.from_list(rows[:3] + rows[-1:]), processing_class=_tokenizer(),
        )  # fmt: skip
    assert trainer.dropped_pairs == {"train": 2, "eval": 1}
    assert len(trainer.train_dataset) == 6 and len(trainer.eval_dataset) == 3
    assert "train_dataset: dropped 2 of 8" in caplog.text and "eval_dataset: dropped 1 of 4" in caplog.text
    data = _jsonl(tmp_path / "d.jsonl", rows)
    argv = _train_argv(data, backbone, tmp_path / "out", "--max-steps", "1", "--save-steps", "1")
    argv[argv.index("--max-length") + 1] = "40"
    assert cli.main(argv) == 0
    assert "dropped 2 train pair(s) longer than --max-length 40" in capsys.readouterr().err
    only_long = _jsonl(tmp_path / "long.jsonl", rows[-2:])
    argv[argv.index("--data") + 1] = only_long
    assert cli.main(argv) == 2
    assert "nothing to train on" in capsys.readouterr().err.strip().splitlines()[-1]
