"""``gpmkit eval``: RewardBench scores, rankings with the von Neumann winner, cyclicity reports (with PNGs).

Added to the ``gpmkit`` command by :func:`add_subparser` (``gpmkit.cli._COMMAND_MODULES``). Importing this module
imports neither torch nor transformers nor matplotlib; each subcommand imports what it needs. Bad input raises
:class:`gpmkit.exceptions.GPMError`, which ``gpmkit.cli.main`` prints as ``gpmkit: error: ...`` with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any

from ..exceptions import ArgumentError

__all__ = ["add_subparser"]


def _load_model(path: str) -> tuple[Any, Any]:
    """``(GPMModel in eval mode, tokenizer)`` from a checkpoint directory (as ``gpmkit score`` loads it)."""
    if not os.path.isdir(path):
        raise ArgumentError(f"--model: no such directory {path!r}")
    from transformers import AutoTokenizer

    from ..models import GPMModel

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ArgumentError(f"--model: cannot load a tokenizer from {path!r} ({str(err).splitlines()[0]})") from None
    if tokenizer.chat_template is None:
        raise ArgumentError(f"--model: the tokenizer in {path!r} has no chat_template (needed to score)")
    model = GPMModel.from_pretrained(path, tokenizer=tokenizer).eval()
    return model, tokenizer


def _reward_fn(spec: str) -> Any:
    """``MODULE:FUNCTION`` → the callable ``reward_fn(prompts, responses) -> scores``."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ArgumentError(f"--reward-fn: expected MODULE:FUNCTION, got {spec!r}")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ArgumentError(f"--reward-fn: cannot import {spec!r} ({err})") from None
    if not callable(fn):
        raise ArgumentError(f"--reward-fn: {spec!r} is not callable")
    return fn


# --------------------------------------------------------------------------------------------------
# rewardbench


def _rewardbench(args: argparse.Namespace) -> int:
    from . import rewardbench

    if (args.model is None) == (args.reward_fn is None):
        raise ArgumentError("--model/--reward-fn: give exactly one")
    if args.data is None and args.best_of_n:
        raise ArgumentError("--data: required with --best-of-n (RewardBench 2 rows)")
    if args.data is not None and not os.path.isfile(args.data):
        raise ArgumentError(f"--data: no such file {args.data!r}")
    if args.model is not None:
        model, tokenizer = _load_model(args.model)
    else:
        model, tokenizer = _reward_fn(args.reward_fn), None
    fn = rewardbench.evaluate_best_of_n if args.best_of_n else rewardbench.evaluate
    kwargs = {"split": args.split} if not args.best_of_n else {}
    result = fn(
        model,
        args.data,
        tokenizer=tokenizer,
        batch_size=args.batch_size,
        bf16=args.bf16,
        progress=False if args.no_progress else None,
        empty=args.empty,
        **kwargs,
    )
    print(result.to_text())
    if args.output:
        result.to_json(args.output, per_row=args.per_row)
    return 0


# --------------------------------------------------------------------------------------------------
# rank / cycles: K responses per prompt


def _embedded_items(args: argparse.Namespace) -> tuple[Any, list[tuple[Any, list[str], Any, Any]]]:
    """``(model, [(prompt, responses, v [K, 2k], gate [k] or None)])`` for every item of ``--data``/``--prompt``."""
    from ..cli import _score_rows
    from .cycles import embed_responses

    items = _score_rows(args)
    model, tokenizer = _load_model(args.model)
    out = []
    for _, prompt, responses in items:
        v, gate = embed_responses(model, prompt, responses, tokenizer, batch_size=args.batch_size, bf16=args.bf16)
        out.append((prompt, responses, v, gate))
    return model, out


def _label(text: str, width: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _prompt_text(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else str(prompt[-1].get("content", ""))


def _rank(args: argparse.Namespace) -> int:
    from .rank import rank_responses

    _, items = _embedded_items(args)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for n, (prompt, responses, v, gate) in enumerate(items):
            ranking = rank_responses(v, gate=gate, labels=responses, tau=args.tau)
            if args.json or args.output:
                out.write(json.dumps({"prompt": prompt, **ranking.to_dict()}) + "\n")
            else:
                head = f"prompt {n}: {_label(_prompt_text(prompt), 70)}"
                display = rank_responses(v, gate=gate, labels=[_label(r) for r in responses], tau=args.tau)
                out.write(f"{head}\n{display.to_text()}\n\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def _cycles(args: argparse.Namespace) -> int:
    from .cycles import cyclicity_report

    _, items = _embedded_items(args)
    if args.plot_dir:
        os.makedirs(args.plot_dir, exist_ok=True)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    gates, prompts = [], []
    try:
        for n, (prompt, responses, v, gate) in enumerate(items):
            labels = [_label(r) for r in responses]
            report = cyclicity_report(v=v, gate=gate, labels=labels)
            if args.json or args.output:
                out.write(json.dumps({"prompt": prompt, **report.to_dict()}) + "\n")
            else:
                out.write(f"prompt {n}: {_label(_prompt_text(prompt), 70)}\n{report.to_text()}\n\n")
            if args.plot_dir:
                _plots(args.plot_dir, n, report, v, gate, labels, args.dpi)
            if gate is not None:
                gates.append(gate.numpy())
                prompts.append(_label(_prompt_text(prompt), 30))
    finally:
        if out is not sys.stdout:
            out.close()
    if args.plot_dir and gates:
        from .plots import plot_gate_weights

        plot_gate_weights(gates, prompts).savefig(os.path.join(args.plot_dir, "gates.png"), dpi=args.dpi)
    if args.plot_dir:
        print(f"figures written to {args.plot_dir}", file=sys.stderr)
    return 0


def _plots(directory: str, n: int, report: Any, v: Any, gate: Any, labels: list[str], dpi: int) -> None:
    from .plots import plot_decomposition, plot_embeddings, plot_preference_matrix

    figs = {
        "matrix": plot_preference_matrix(report.scores, labels, title=f"prompt {n}: s(row ≻ col)"),
        "embeddings": plot_embeddings(v, labels=labels, gate=gate, title=f"prompt {n}: 2-D blocks"),
        "decomposition": plot_decomposition(report.hodge, labels),
    }
    for name, fig in figs.items():
        fig.savefig(os.path.join(directory, f"prompt{n}_{name}.png"), dpi=dpi)


# --------------------------------------------------------------------------------------------------
# parser


def _positive_int(text: str) -> int:
    from ..cli import _positive_int as check

    return check(text)


def _items_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a trained gpmkit (or official GPM) checkpoint directory")
    p.add_argument("--prompt", help="the user prompt")
    p.add_argument("--response", action="append", help="a response (repeat for each)")
    p.add_argument("--responses", metavar="FILE.txt", help="a text file with one response per line")
    p.add_argument("--data", metavar="FILE.jsonl", help='JSONL rows {"prompt": ..., "responses": [...]}')
    p.add_argument("--output", help="write JSON lines here instead of the table on stdout")
    p.add_argument("--json", action="store_true", help="print one JSON line per prompt instead of the table")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="sequences per forward pass")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")


def add_subparser(sub: Any, fmt: Any) -> None:
    """Add ``gpmkit eval {rewardbench,rank,cycles}`` to the ``gpmkit`` subparsers."""
    from ..cli import command_group

    _, evsub = command_group(
        sub,
        "eval",
        fmt,
        dest="eval_command",
        metavar="<eval command>",
        help="evaluate a reward model: RewardBench, rankings / von Neumann winner, cyclicity",
        description=(
            "Evaluate and analyse a trained GPM: 'rewardbench' scores RewardBench data (official section weights), "
            "'rank' ranks K responses per prompt (win score, Copeland, Borda, von Neumann winner), 'cycles' reports "
            "the intransitivity of the K×K preference matrix (cyclic triads, Hodge decomposition, block spectrum)."
        ),
    )

    rb = evsub.add_parser(
        "rewardbench",
        formatter_class=fmt,
        help="RewardBench accuracy per subset, section scores and their mean",
        description=(
            "Score RewardBench data (JSONL/Parquet rows with prompt, chosen, rejected, subset). A GPM pair is "
            "correct iff s(chosen ≻ rejected) > 0, a BT/scalar one iff r(chosen) > r(rejected). Section scores use "
            "the official per-subset weights (math-prm 984); the score is the mean of the four sections. Unknown "
            "subsets are reported separately and not weighted. Without --data, allenai/reward-bench is read from "
            "the local Hugging Face cache only. --best-of-n scores RewardBench 2 rows (one chosen, several "
            "rejected: correct iff chosen beats all)."
        ),
    )
    rb.add_argument("--model", help="a gpmkit/official GPM (or BT) checkpoint directory")
    rb.add_argument("--reward-fn", metavar="MODULE:FUNC", help="a scalar reward_fn(prompts, responses) instead")
    rb.add_argument("--data", metavar="FILE", help="RewardBench rows (.jsonl or .parquet)")
    rb.add_argument("--split", default="filtered", help="split of allenai/reward-bench when no --data is given")
    rb.add_argument("--best-of-n", action="store_true", help="RewardBench 2 best-of-n rows")
    rb.add_argument("--batch-size", type=_positive_int, default=8, help="sequences per forward pass")
    rb.add_argument("--bf16", action="store_true", help="bf16 autocast")
    rb.add_argument("--empty", choices=("error", "wrong", "skip"), default="error", help="rows with empty responses")
    rb.add_argument("--output", metavar="RESULTS.json", help="also write the results as JSON")
    rb.add_argument("--per-row", action="store_true", help="include the per-row margins in --output")
    rb.add_argument("--no-progress", action="store_true", help="no progress bar")
    rb.set_defaults(func=_rewardbench)

    rk = evsub.add_parser(
        "rank",
        formatter_class=fmt,
        help="rank K responses per prompt; print the von Neumann winner",
        description=(
            "Embed the K responses of each prompt once (K forward passes) and rank them by win score, Copeland "
            "(wins + ½ ties) and Borda (Σ_j P(i ≻ j), P = σ(s/τ)); print the von Neumann winner, the mixed strategy "
            "no response beats in expectation (exact LP). Same inputs as 'gpmkit score'."
        ),
    )
    _items_args(rk)
    rk.add_argument("--tau", type=float, default=0.1, help="temperature τ of the Borda probabilities")
    rk.set_defaults(func=_rank)

    cy = evsub.add_parser(
        "cycles",
        formatter_class=fmt,
        help="cyclicity report of the K×K preference matrix per prompt (optional PNG figures)",
        description=(
            "For each prompt: fraction of cyclic triads, Hodge decomposition into transitive and cyclic parts (the "
            "cyclic share of the energy), the strengths of the 2-D blocks (skew spectrum) and the gate. "
            "--plot-dir writes promptN_matrix.png, promptN_embeddings.png, promptN_decomposition.png and gates.png."
        ),
    )
    _items_args(cy)
    cy.add_argument("--plot-dir", metavar="DIR", help="write PNG figures here")
    cy.add_argument("--dpi", type=_positive_int, default=110, help="resolution of the PNG figures")
    cy.set_defaults(func=_cycles)
