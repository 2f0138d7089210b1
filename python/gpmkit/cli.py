"""The ``gpmkit`` command (also ``python -m gpmkit``): train a GPM on JSONL preference data, score responses.

``gpmkit train`` runs :class:`gpmkit.trl.GPMRewardTrainer` on a JSONL file in any of TRL's preference formats and
saves the final model and tokenizer (``GPMModel.from_pretrained(DIR)`` loads them); ``gpmkit score`` prints the
K×K preference matrix and the win scores of K responses to a prompt. Run ``gpmkit <command> --help``.

Errors in the input (a missing file, a bad JSONL line, an unknown loss, a bad row...) print one line
``gpmkit: error: ...`` on stderr and exit with status 2; an interrupted run (Ctrl-C) exits with 130.

Importing this module is cheap: torch, transformers and trl are imported by the commands that need them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any, Optional, Sequence

from .exceptions import ArgumentError, GPMError

__all__ = ["main", "read_jsonl"]

# Modules that add a subcommand: each has ``add_subparser(subparsers, formatter_class)`` which adds its parser and
# sets ``func`` (taking the parsed args, returning the exit status). Importing them must not import torch.
_COMMAND_MODULES = ("demo", "eval._cli", "_bench_real")

# Extra transformers TrainerCallbacks given to the trainer of `gpmkit train` (a test hook).
_CALLBACKS: list = []


def read_jsonl(path: str, what: str = "--data") -> list[tuple[int, Any]]:
    """The rows of a JSONL file as ``(line_number, value)`` pairs (1-based; blank lines skipped).

    Raises:
        ArgumentError: the file does not exist or cannot be read, a line is not valid JSON (naming the line),
            or the file has no rows.
    """
    if not os.path.isfile(path):
        raise ArgumentError(f"{what}: no such file {path!r}")
    rows = []
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rows.append((lineno, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise ArgumentError(
                        f"{what}: {path}:{lineno}: invalid JSON ({err.msg}, column {err.colno})"
                    ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ArgumentError(f"{what}: cannot read {path!r} ({err})") from None
    if not rows:
        raise ArgumentError(f"{what}: {path!r} has no rows")
    return rows


def _preference_rows(path: str, what: str) -> list[dict]:
    """Validated preference rows of a JSONL file; every row must have the same fields and format."""
    from .trl import check_preference_row

    rows = read_jsonl(path, what)
    first_line, first = rows[0]
    out = []
    for lineno, row in rows:
        where = f"{what}: {path}:{lineno}"
        check_preference_row(row, where)
        if set(row) != set(first):
            raise ArgumentError(
                f"{where}: fields {sorted(row)} differ from those of line {first_line} ({sorted(first)}); "
                "every row needs the same fields"
            )
        for key in ("prompt", "chosen"):
            if key in row and isinstance(row[key], str) != isinstance(first[key], str):
                raise ArgumentError(
                    f"{where}: field {key!r} mixes plain text and message lists with line {first_line}; use one "
                    "format per file"
                )
        out.append(row)
    return out


# --------------------------------------------------------------------------------------------------
# train


def _train(args: argparse.Namespace) -> int:
    train_rows = _preference_rows(args.data, "--data")
    eval_rows = _preference_rows(args.eval_data, "--eval-data") if args.eval_data else None
    if args.resume:
        from transformers.trainer_utils import get_last_checkpoint

        if not os.path.isdir(args.output_dir) or get_last_checkpoint(args.output_dir) is None:
            raise ArgumentError(f"--resume: no checkpoint-N directory in {args.output_dir!r} to resume from")
    if args.backbone.startswith((".", os.sep)) and not os.path.exists(args.backbone):
        raise ArgumentError(f"--backbone: no such directory {args.backbone!r}")

    import torch
    from datasets import Dataset

    from .trl import GPMRewardConfig, GPMRewardTrainer

    use_cpu = not torch.cuda.is_available()
    steps: dict[str, Any] = {"max_steps": args.max_steps} if args.max_steps else {"num_train_epochs": args.epochs}
    config = GPMRewardConfig(
        output_dir=args.output_dir,
        value_head_dim=args.value_head_dim,
        gate=args.gate,
        loss=args.loss,
        tau=args.tau,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        learning_rate=args.lr,
        max_length=args.max_length,
        seed=args.seed,
        data_seed=args.seed,
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        eval_strategy="epoch" if eval_rows else "no",
        logging_steps=args.logging_steps,
        report_to="none",
        use_cpu=use_cpu,
        bf16=True if args.bf16 else (False if use_cpu else None),  # None: TRL's default (bf16 on GPU)
        dataloader_num_workers=0,
        **steps,
    )
    try:
        trainer = GPMRewardTrainer(
            model=args.backbone,
            args=config,
            train_dataset=Dataset.from_list(train_rows),
            eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
            callbacks=list(_CALLBACKS) or None,
        )
    except GPMError:
        raise
    except (OSError, ValueError) as err:  # transformers: not a model directory / not in the offline cache
        raise ArgumentError(f"--backbone: cannot train from {args.backbone!r}: {str(err).splitlines()[0]}") from None
    for name, n in trainer.dropped_pairs.items():
        if n:
            print(
                f"gpmkit: warning: dropped {n} {name} pair(s) longer than --max-length {args.max_length}",
                file=sys.stderr,
            )
    if len(trainer.train_dataset) == 0:
        raise ArgumentError(f"--data: every pair is longer than --max-length {args.max_length}; nothing to train on")
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    trainer.save_model(args.output_dir)
    if eval_rows:
        metrics = trainer.evaluate()
        print(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()}))
    print(f"gpmkit: saved the model and tokenizer to {args.output_dir} (global step {trainer.state.global_step})")
    return 0


# --------------------------------------------------------------------------------------------------
# score


def _read_lines(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise ArgumentError(f"--responses: no such file {path!r}")
    with open(path, encoding="utf-8") as fh:
        lines = [line.rstrip("\n") for line in fh if line.strip()]
    if not lines:
        raise ArgumentError(f"--responses: {path!r} has no responses (one per line)")
    return lines


def _score_rows(args: argparse.Namespace) -> list[tuple[str, Any, list[str]]]:
    """``(where, prompt, responses)`` of each item to score."""
    if args.data:
        if args.prompt is not None or args.response or args.responses:
            raise ArgumentError("--data: cannot be combined with --prompt/--response/--responses")
        items = []
        for lineno, row in read_jsonl(args.data, "--data"):
            where = f"--data: {args.data}:{lineno}"
            if not isinstance(row, dict):
                raise ArgumentError(f"{where}: expected a JSON object, got {type(row).__name__}")
            prompt, responses = row.get("prompt"), row.get("responses")
            if not (isinstance(prompt, str) and prompt.strip()) and not (isinstance(prompt, list) and prompt):
                raise ArgumentError(f"{where}: field 'prompt': expected a non-empty string or message list")
            if not isinstance(responses, list) or not responses or not all(isinstance(r, str) for r in responses):
                raise ArgumentError(f"{where}: field 'responses': expected a non-empty list of strings")
            items.append((where, prompt, responses))
        return items
    if args.prompt is None:
        raise ArgumentError("--prompt: required (or --data FILE.jsonl)")
    responses = list(args.response or [])
    if args.responses:
        responses += _read_lines(args.responses)
    if len(responses) < 1:
        raise ArgumentError("--response/--responses: give at least one response")
    return [("--prompt", args.prompt, responses)]


def _table(matrix: list[list[float]], wins: list[float], responses: list[str]) -> str:
    k = len(wins)
    width = max(9, max(len(f"{x:+.4f}") for row in matrix for x in row) + 1)
    head = " " * 5 + "".join(f"{j:>{width}}" for j in range(k)) + f"{'win':>{width + 2}}"
    lines = ["preference matrix M[i, j] = s(response i ≻ response j)", head]
    for i, row in enumerate(matrix):
        lines.append(f"{i:>4} " + "".join(f"{x:>+{width}.4f}" for x in row) + f"  {wins[i]:>+{width}.4f}")
    lines.append("responses:")
    for i, r in enumerate(responses):
        text = r.replace("\n", " ")
        lines.append(f"{i:>4}  {text[:70]}{'…' if len(text) > 70 else ''}")
    return "\n".join(lines)


def _score(args: argparse.Namespace) -> int:
    if not isinstance(args.batch_size, int) or args.batch_size < 1:
        raise ArgumentError(f"--batch-size: expected a positive int, got {args.batch_size!r}")
    items = _score_rows(args)
    if not os.path.isdir(args.model):
        raise ArgumentError(f"--model: no such directory {args.model!r}")

    from transformers import AutoTokenizer

    from .models import GPMModel

    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    except (OSError, ValueError) as err:
        raise ArgumentError(
            f"--model: cannot load a tokenizer from {args.model!r} ({str(err).splitlines()[0]})"
        ) from None
    model = GPMModel.from_pretrained(args.model, tokenizer=tokenizer).eval()
    if tokenizer.chat_template is None:
        raise ArgumentError(f"--model: the tokenizer in {args.model!r} has no chat_template (needed to score)")
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for _, prompt, responses in items:
            m = model.preference_matrix(prompt, responses, batch_size=args.batch_size, bf16=args.bf16)
            matrix = m.tolist()
            wins = m.mean(-1).tolist()  # ŝ_i = mean_j s(i ≻ j), = GPMModel.score
            if args.json or args.data:
                out.write(json.dumps({"matrix": matrix, "win_scores": wins}) + "\n")
            else:
                out.write(_table(matrix, wins, responses) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


# --------------------------------------------------------------------------------------------------
# parser and entry point


def command_group(subparsers: Any, name: str, formatter_class: Any, *, dest: str, metavar: str, **kw: Any):
    """A subcommand that only groups others (``gpmkit eval …``, ``gpmkit bench …``): returns the parser and its
    subparsers; given no subcommand it prints its help to stderr and exits with status 2. ``kw``: ``help``,
    ``description`` of ``add_parser``."""
    group = subparsers.add_parser(name, formatter_class=formatter_class, **kw)

    def _no_command(args: argparse.Namespace) -> int:
        group.print_help(sys.stderr)
        return 2

    group.set_defaults(func=_no_command)
    return group, group.add_subparsers(dest=dest, metavar=metavar)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``gpmkit`` argument parser (``train``, ``score``, and ``demo``/``eval``/``bench`` from their modules)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="gpmkit",
        description="General Preference Models: train a GPM reward model on preference pairs, score responses.",
        epilog="Run 'gpmkit <command> --help' for a command's options. Errors exit with status 2.",
    )
    parser.add_argument("--version", action="version", version=f"gpmkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")

    fmt = argparse.ArgumentDefaultsHelpFormatter
    train = sub.add_parser(
        "train",
        formatter_class=fmt,
        help="train a GPM (or Bradley-Terry) reward model on JSONL preference pairs",
        description=(
            "Train a GPM with gpmkit.trl.GPMRewardTrainer. Each JSONL line is one pair in a TRL preference format: "
            '{"chosen": str, "rejected": str} (implicit prompt), {"prompt": str, "chosen": str, "rejected": str}, '
            'or the same with lists of chat messages ({"role", "content"}); optional "margin". Checkpoints go '
            "to OUTPUT_DIR/checkpoint-N every --save-steps steps; the final model and tokenizer to OUTPUT_DIR "
            "(load with gpmkit.GPMModel.from_pretrained). Pairs longer than --max-length tokens are dropped and "
            "counted. Runs on CUDA when available, otherwise on CPU."
        ),
    )
    train.add_argument("--data", required=True, metavar="TRAIN.jsonl", help="training pairs (JSONL)")
    train.add_argument("--eval-data", metavar="EVAL.jsonl", help="evaluation pairs (JSONL), evaluated every epoch")
    train.add_argument("--backbone", required=True, help="backbone model id or local path (with its tokenizer)")
    train.add_argument("--output-dir", required=True, help="checkpoints and the final model go here")
    train.add_argument("--value-head-dim", type=int, default=2, help="embedding width 2k (even, ≥ 2)")
    train.add_argument("--gate", action="store_true", help="add the prompt gate λ(x)")
    train.add_argument("--loss", default="gpm", help="'gpm' or 'bt' (Bradley-Terry)")
    train.add_argument("--tau", type=float, default=None, help="temperature τ (default 0.1 for gpm, 1.0 for bt)")
    train.add_argument("--epochs", type=float, default=1.0, help="number of epochs (ignored with --max-steps)")
    train.add_argument("--max-steps", type=_positive_int, default=None, help="number of optimizer steps")
    train.add_argument("--batch-size", type=_positive_int, default=8, help="pairs per device per step")
    train.add_argument("--lr", type=float, default=1e-4, help="learning rate")
    train.add_argument("--max-length", type=_positive_int, default=1024, help="drop pairs longer than this (tokens)")
    train.add_argument("--save-steps", type=_positive_int, default=500, help="checkpoint every N steps")
    train.add_argument("--save-total-limit", type=_positive_int, default=None, help="keep at most N checkpoints")
    train.add_argument("--logging-steps", type=_positive_int, default=10, help="log every N steps")
    train.add_argument("--seed", type=int, default=42, help="random seed (heads, data order)")
    train.add_argument("--bf16", action="store_true", help="bf16 mixed precision (default: on with CUDA)")
    train.add_argument(
        "--resume", action="store_true", help="continue from the last OUTPUT_DIR/checkpoint-N (same other options)"
    )
    train.set_defaults(func=_train)

    score = sub.add_parser(
        "score",
        formatter_class=fmt,
        help="print the K×K preference matrix and win scores of K responses",
        description=(
            "Score K responses to a prompt with a trained GPM: the K×K skew-symmetric matrix "
            "M[i, j] = s(response i ≻ response j) and the win scores ŝ_i = mean_j M[i, j]. With --data, each "
            'JSONL line {"prompt": ..., "responses": [...]} gives one JSON line '
            '{"matrix": [[...]], "win_scores": [...]} on stdout or in --output.'
        ),
    )
    score.add_argument("--model", required=True, help="a trained gpmkit (or official GPM) checkpoint directory")
    score.add_argument("--prompt", help="the user prompt")
    score.add_argument("--response", action="append", help="a response (repeat for each)")
    score.add_argument("--responses", metavar="FILE.txt", help="a text file with one response per line")
    score.add_argument("--data", metavar="FILE.jsonl", help='JSONL rows {"prompt": ..., "responses": [...]}')
    score.add_argument("--output", help="write the JSON lines here instead of stdout")
    score.add_argument("--batch-size", type=_positive_int, default=8, help="sequences per forward pass")
    score.add_argument("--bf16", action="store_true", help="bf16 autocast")
    score.add_argument("--json", action="store_true", help='print {"matrix": ..., "win_scores": ...} as JSON')
    score.set_defaults(func=_score)
    for name in _COMMAND_MODULES:
        importlib.import_module(f".{name}", __package__).add_subparser(sub, fmt)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the ``gpmkit`` command line; returns the exit status (0 ok, 2 bad input, 130 interrupted).

    Args:
        argv: the arguments (default ``sys.argv[1:]``).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, usage errors (status 2, argparse's message)
        return int(exit_.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args)
    except GPMError as err:
        message = " ".join(str(err).split("\n"))
        print(f"gpmkit: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gpmkit: interrupted", file=sys.stderr)
        return 130
