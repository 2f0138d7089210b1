"""Batching benchmarks: collation throughput and end-to-end GPM training throughput vs TRL's RewardTrainer.

Data (synthetic, token ids only; no real LLM preference text is available offline): P prompts with K = 4
responses each and all K(K−1)/2 = 6 comparisons. Lengths are log-normal, like chat data (a long right tail):
prompt tokens ``exp(N(ln 48, 0.8))`` clipped to [8, 384], response tokens ``exp(N(ln 96, 0.7))`` clipped to
[4, 512] (medians 48 / 96; ``--length-scale`` divides both for the CPU training run). TRL sees the same
comparisons flattened into ``chosen_ids``/``rejected_ids`` rows (6 rows per prompt, prompt + response
concatenated), as a user of ``trl.RewardTrainer`` would prepare them.

1. Collation (per batch of ``--prompts`` prompts = 6·prompts comparisons), in one process, alternating:
   TRL's ``DataCollatorForPreference`` on the flattened rows; a straightforward pure-Python dedup + packing
   collator (dict of tuples, list ``extend``, ``torch.tensor``); gpmkit's ``PreferenceCollator`` on the records
   (list input, packed) and on the flattened TRL rows; gpmkit's ``StoreCollator`` on record indices (the
   zero-copy path). Reported: comparisons/s and input sequences/s, and the speed-up over each baseline.
2. Training (same backbone weights, data, optimizer, learning rate, comparisons per step; fp32, no gradient
   checkpointing): ``trl.RewardTrainer`` (``LlamaForSequenceClassification``, padded pairs) vs
   ``GPMRewardTrainer`` on the flattened pairs (padded, no dedup), on the records padded (dedup) and on the
   records packed (dedup + padding-free, the default). Each step = fetch+collate a batch, then
   ``trainer.training_step`` + optimizer step, competitors interleaved step by step after warm-up; median
   step time. Reported: comparisons/s, real (non-pad) tokens/s, pad fraction, sequences embedded per
   comparison, collation share of a step.

Usage: ``python benches/bench_batching.py --threads 1`` (appends a section to BENCHMARKS.md; ``--no-append``
to print only, ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benches"))

import gpmkit  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_kernels import cpu_name, interleaved, rustc_version  # noqa: E402
from gpmkit.data import PreferenceCollator, StoreCollator, TokenStore  # noqa: E402

K = 4
PAIRS = [(i, j) for i in range(K) for j in range(i + 1, K)]


def make_records(n: int, vocab: int, seed: int, scale: float = 1.0, avoid: int = 0) -> list[dict]:
    """Records with log-normal prompt / response lengths (see the module docstring); token ids avoid ``avoid``."""
    rng = np.random.default_rng(seed)

    def length(median, sigma, lo, hi):
        return int(np.clip(np.exp(rng.normal(np.log(median), sigma)), lo, hi) / scale) or 1

    def tokens(n_tok):
        t = rng.integers(1, vocab, size=n_tok)
        t[t == avoid] = avoid + 1 if avoid + 1 < vocab else 1
        return t.tolist()

    out = []
    for _ in range(n):
        scores = rng.permutation(K).astype(float).tolist()
        out.append(
            {
                "prompt_ids": tokens(max(2, length(48, 0.8, 8, 384))),
                "response_ids": [tokens(max(2, length(96, 0.7, 4, 512))) for _ in range(K)],
                "pairs": [(i, j) if scores[i] > scores[j] else (j, i) for i, j in PAIRS],
            }
        )
    return out


def flatten(records: list[dict]) -> list[dict]:
    """TRL rows: one (chosen_ids, rejected_ids) row per comparison, prompt concatenated."""
    rows = []
    for r in records:
        p = r["prompt_ids"]
        for i, j in r["pairs"]:
            rows.append({"chosen_ids": p + r["response_ids"][i], "rejected_ids": p + r["response_ids"][j]})
    return rows


def python_collate(records: list[dict]) -> dict:
    """A straightforward pure-Python dedup + packing collator (the baseline the Rust path replaces)."""
    rows, key_to_row, pair_rows = [], {}, []
    for rec in records:
        p = rec["prompt_ids"]
        local = []
        for resp in rec["response_ids"]:
            key = (len(p), tuple(p), tuple(resp))
            u = key_to_row.get(key)
            if u is None:
                u = key_to_row[key] = len(rows)
                rows.append((p, resp))
            local.append(u)
        pair_rows.extend([local[i], local[j]] for i, j in rec["pairs"])
    ids, pos, last, plast, cu = [], [], [], [], [0]
    for p, r in rows:
        n = len(p) + len(r)
        ids.extend(p)
        ids.extend(r)
        pos.extend(range(n))
        plast.append(cu[-1] + len(p) - 1)
        cu.append(cu[-1] + n)
        last.append(cu[-1] - 1)
    return {
        "input_ids": torch.tensor(ids).unsqueeze(0),
        "position_ids": torch.tensor(pos).unsqueeze(0),
        "cu_seq_lens_q": torch.tensor(cu, dtype=torch.int32),
        "last_index": torch.tensor(last),
        "prompt_last_index": torch.tensor(plast),
        "pair_rows": torch.tensor(pair_rows),
    }


def python_collate_pairs(rows: list[dict]) -> dict:
    """The same pure-Python dedup + packing on flattened TRL rows (prompt = common prefix of the pair)."""
    records = []
    for r in rows:
        c, j = r["chosen_ids"], r["rejected_ids"]
        n = 0
        for a, b in zip(c, j):
            if a != b:
                break
            n += 1
        n = max(1, min(n, len(c) - 1, len(j) - 1))
        records.append({"prompt_ids": c[:n], "response_ids": [c[n:], j[n:]], "pairs": [(0, 1)]})
    return python_collate(records)


def fmt_time(s: float) -> str:
    return f"{s * 1e6:.1f} µs" if s < 1e-3 else f"{s * 1e3:.2f} ms"


# --------------------------------------------------------------------------------------------------
# 1. collation


def bench_collation(n_prompts: int, rounds: int, seed: int) -> tuple[list[str], dict]:
    from trl.trainer.reward_trainer import DataCollatorForPreference

    records = make_records(n_prompts * rounds, 32000, seed)
    batches = [records[i * n_prompts : (i + 1) * n_prompts] for i in range(rounds)]
    flat = [flatten(b) for b in batches]
    store = TokenStore.from_records(records)
    idx = [np.arange(i * n_prompts, (i + 1) * n_prompts) for i in range(rounds)]
    trl_coll = DataCollatorForPreference(pad_token_id=0)
    ours, store_coll = PreferenceCollator(), StoreCollator(store=store)
    it = {"i": 0}

    def cycling(fn, data):
        def run():
            fn(data[it["i"] % rounds])

        return run

    fns = {
        "TRL DataCollatorForPreference (flattened pairs, padded)": cycling(trl_coll, flat),
        "pure-Python dedup + packing (records)": cycling(python_collate, batches),
        "pure-Python dedup + packing (flattened pairs)": cycling(python_collate_pairs, flat),
        "gpmkit PreferenceCollator (flattened pairs, packed + dedup)": cycling(ours, flat),
        "gpmkit PreferenceCollator (records, packed)": cycling(ours, batches),
        "gpmkit StoreCollator (record indices, packed)": cycling(store_coll, idx),
    }
    # sanity: the Rust and the Python collators agree on a batch
    for a, b in ((ours(batches[0]), python_collate(batches[0])), (ours(flat[0]), python_collate_pairs(flat[0]))):
        for key in ("input_ids", "position_ids", "last_index", "prompt_last_index", "pair_rows"):
            assert torch.equal(a[key], b[key]), key
    times = {}
    for r in range(rounds):
        it["i"] = r
        one = interleaved(fns, rounds=1, warmup=1 if r == 0 else 0)
        for k, v in one.items():
            times.setdefault(k, []).append(v)
    med = {k: statistics.median(v) for k, v in times.items()}
    comps = 6 * n_prompts
    seqs_in = 2 * comps  # sequences as the flattened TRL rows present them
    names = list(fns)
    base = {k: med[k] for k in names[:2]}
    flat_base = med[names[2]]
    lines = [
        f"Collation of one batch of {n_prompts} prompts × K = {K} responses = {comps} comparisons "
        f"({seqs_in} sequences as TRL pairs, {K * n_prompts} unique); median of {rounds} interleaved rounds.",
        "",
        "| collator | time / batch | comparisons/s | sequences/s (TRL-pair count) | vs TRL | vs pure Python "
        "(records) | vs pure Python (same input) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, t in med.items():
        ours = name.startswith("gpmkit")
        vs = [f"**{b / t:.1f}×**" if ours else ("1×" if b == t else f"{b / t:.2f}×") for b in base.values()]
        same = "–"
        if ours:
            same = f"**{(flat_base if 'pairs' in name else base[names[1]]) / t:.1f}×**"
        lines.append(f"| {name} | {fmt_time(t)} | {comps / t:,.0f} | {seqs_in / t:,.0f} | {vs[0]} | {vs[1]} | {same} |")
    return lines, med


# --------------------------------------------------------------------------------------------------
# 2. end-to-end training


def bench_training(args) -> list[str]:
    import logging

    import transformers
    from _helpers import chat_tokenizer
    from datasets import Dataset
    from gpmkit.models import GPMModel
    from gpmkit.trl import GPMRewardConfig, GPMRewardTrainer
    from transformers import LlamaConfig, LlamaForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    transformers.logging.set_verbosity_error()
    logging.getLogger("gpmkit.trl").setLevel(logging.ERROR)
    if args.backbone:
        from transformers import AutoConfig, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.backbone)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        args.vocab = AutoConfig.from_pretrained(args.backbone).vocab_size
    else:
        tok = chat_tokenizer(["the quick brown fox jumps over the lazy dog"] * 10)
    vocab = args.vocab
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    n_steps = args.warmup + args.steps
    records = make_records(args.train_prompts * n_steps, vocab, args.seed + 1, args.length_scale, avoid=pad)
    flat = flatten(records)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=args.hidden, intermediate_size=int(args.hidden * 8 / 3) // 8 * 8,
        num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64, num_key_value_heads=args.hidden // 64,
        max_position_embeddings=4096, pad_token_id=pad, num_labels=1,
    )  # fmt: skip
    cfg._attn_implementation = "sdpa"
    if args.backbone:  # a real pretrained decoder: TRL's seq-cls model and our backbone from the same weights
        from transformers import AutoModelForSequenceClassification

        seq_cls = AutoModelForSequenceClassification.from_pretrained(
            args.backbone, num_labels=1, dtype=torch.float32, attn_implementation="sdpa"
        )
        seq_cls.config.pad_token_id = pad
        cfg = seq_cls.config
    else:
        seq_cls = LlamaForSequenceClassification(cfg)
    state = {k: v.clone() for k, v in seq_cls.model.state_dict().items()}
    bs_pairs, bs_records = 6 * args.train_prompts, args.train_prompts
    common = dict(
        output_dir=str(ROOT / "target" / "bench_batching"), max_steps=n_steps, learning_rate=1e-4,
        logging_steps=10**6, report_to="none", save_strategy="no", use_cpu=True, bf16=False, disable_tqdm=True,
        seed=0, dataloader_num_workers=0, max_length=None,
    )  # fmt: skip

    def gpm_model():
        from transformers import AutoModel

        bb = AutoModel.from_config(cfg, attn_implementation="sdpa")
        bb.load_state_dict(state)
        return GPMModel.from_backbone(bb, value_head_dim=4)

    trainers = {}
    trl_args = RewardConfig(per_device_train_batch_size=bs_pairs, activation_checkpointing=False, **common)
    trainers["TRL RewardTrainer (pairs, padded)"] = RewardTrainer(
        model=seq_cls, args=trl_args, train_dataset=Dataset.from_list(flat), processing_class=tok
    )
    for name, data, packing, bs in (
        ("GPMRewardTrainer (pairs, padded, no dedup)", flat, False, bs_pairs),
        ("GPMRewardTrainer (records, dedup, padded)", records, False, bs_records),
        ("GPMRewardTrainer (records, dedup, packed: default)", records, None, bs_records),
    ):
        a = GPMRewardConfig(per_device_train_batch_size=bs, packing=packing, **common)
        trainers[name] = GPMRewardTrainer(
            model=gpm_model(), args=a, train_dataset=Dataset.from_list(data), processing_class=tok
        )

    state_per = {}
    for name, tr in trainers.items():
        tr.model.train()
        tr.create_optimizer_and_scheduler(num_training_steps=n_steps)
        tr.current_gradient_accumulation_steps = 1
        loader = tr.get_train_dataloader()
        # the data order: a plain sequential pass (same comparisons per step for everyone)
        state_per[name] = {"it": iter(loader), "collate": [], "step": [], "tokens": [], "padded": [], "seqs": []}

    def one_step(name):
        tr, st = trainers[name], state_per[name]
        t0 = time.perf_counter()
        batch = next(st["it"])
        t1 = time.perf_counter()
        loss = tr.training_step(tr.model, batch)
        tr.optimizer.step()
        tr.optimizer.zero_grad()
        t2 = time.perf_counter()
        assert torch.isfinite(loss)
        mask = batch.get("attention_mask")
        st["collate"].append(t1 - t0)
        st["step"].append(t2 - t0)
        n_ids = batch["input_ids"].numel()
        st["padded"].append(n_ids)
        st["tokens"].append(n_ids if mask is None else int(mask.sum()))
        st["seqs"].append(batch["input_ids"].shape[0] if mask is not None else batch["cu_seq_lens_q"].numel() - 1)

    for s in range(n_steps):
        for name in trainers:
            if s == args.warmup:
                for k in ("collate", "step", "tokens", "padded", "seqs"):
                    state_per[name][k].clear()
            one_step(name)
    comps = 6 * args.train_prompts
    base = statistics.median(state_per["TRL RewardTrainer (pairs, padded)"]["step"])
    n_params = sum(p.numel() for p in seq_cls.model.parameters())
    what = (
        f"pretrained {Path(args.backbone).name} ({type(seq_cls.model).__name__}, "
        if args.backbone
        else f"random Llama backbone {args.layers} layers × hidden {args.hidden} ("
    )
    lines = [
        f"Training: {what}{n_params / 1e6:.1f} M parameters, vocab {vocab}), fp32, sdpa, AdamW lr 1e-4, "
        f"{comps} comparisons per step ({args.train_prompts} prompts × 6); "
        f"lengths ÷ {args.length_scale:g}; median of {args.steps} interleaved steps after {args.warmup} warm-up steps.",
        "",
        "| trainer | step | comparisons/s | real tokens/s | pad fraction | sequences / comparison "
        "| collation share | speed-up vs TRL |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, st in state_per.items():
        t = statistics.median(st["step"])
        real, padded = sum(st["tokens"]), sum(st["padded"])
        seqs = statistics.mean(st["seqs"]) / comps
        share = statistics.median(st["collate"]) / t
        lines.append(
            f"| {name} | {fmt_time(t)} | {comps / t:,.1f} | {real / len(st['step']) / t:,.0f} | "
            f"{1 - real / padded:.0%} | {seqs:.2f} | {share:.1%} | **{base / t:.2f}×** |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="threads for torch and gpmkit (default 1)")
    ap.add_argument("--prompts", type=int, default=16, help="prompts per collation batch (default 16)")
    ap.add_argument("--rounds", type=int, default=30, help="collation rounds (default 30)")
    ap.add_argument("--train-prompts", type=int, default=2, help="prompts per training step (default 2)")
    ap.add_argument("--steps", type=int, default=6, help="timed training steps per trainer (default 6)")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up training steps (default 2)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--length-scale", type=float, default=2.0, help="divide sequence lengths for training")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--backbone", default=None, help="a local pretrained decoder (e.g. SmolLM2) instead of a random one"
    )
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--skip-collation", action="store_true")
    ap.add_argument("--quick", action="store_true", help="smoke run: few rounds and steps")
    ap.add_argument("--no-append", action="store_true", help="print only; do not append to BENCHMARKS.md")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.steps, args.warmup = 5, 2, 1
    torch.set_num_threads(args.threads)
    gpmkit.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    cmd = "python benches/bench_batching.py " + " ".join(sys.argv[1:])
    lines: list[str] = []
    if not args.skip_collation:
        print("collation ...", file=sys.stderr)
        lines, _ = bench_collation(args.prompts, args.rounds, args.seed)
    if not args.skip_training:
        print("training ...", file=sys.stderr)
        lines += ["", *bench_training(args)]
    import transformers
    import trl

    versions = (
        f"gpmkit {gpmkit.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"trl {trl.__version__}, rustc {rustc_version()}, Python {platform.python_version()}"
    )
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join(
        [
            f"## {now}: `{cmd.strip()}`",
            "",
            f"{cpu_name()}, {os.cpu_count()} CPUs, {args.threads} thread(s) for torch and gpmkit; {versions}.",
            "",
            *lines,
            "",
        ]
    )
    print(text)
    if not args.no_append:
        with (ROOT / "BENCHMARKS.md").open("a") as f:
            f.write(text + "\n")
        print("appended to BENCHMARKS.md", file=sys.stderr)


if __name__ == "__main__":
    main()
