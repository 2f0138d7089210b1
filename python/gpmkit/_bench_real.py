"""``gpmkit bench real``: Bradley-Terry vs GPM on real human pairwise-comparison data, with k-fold CV.

For every data set of :mod:`gpmkit.datasets.real` it fits BT and a GPM for each embedding width
``d = 2k`` in ``dims`` with :func:`gpmkit.pairwise.fit` (its defaults; item embeddings only), and for
``d ≥ 4`` also a GPM whose gate takes the data set's judge covariates (``+ctx``), and reports the mean
over ``folds`` shuffled folds of the held-out log-loss (ties as soft labels 0.5),
accuracy (ties excluded) and Brier score, plus the fraction of cyclic triads
(:func:`gpmkit.eval.cycles.cyclic_triad_fraction`) of the empirical win-rate matrix and of each model
fitted to all the data. :func:`run_real_benchmark` returns the numbers as a JSON-serialisable dict.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Optional, Sequence

from .exceptions import ArgumentError

__all__ = ["add_subparser", "format_table", "run_real_benchmark"]

_QUICK_FOLDS = 2
_QUICK_EPOCHS = 100


def _triads(matrix) -> float:
    from .eval.cycles import cyclic_triad_fraction

    return float(cyclic_triad_fraction(matrix))


def _check(datasets, folds, dims, seed) -> tuple[list[str], list[int]]:
    from .datasets.real import DATASETS

    if datasets is None:
        names = list(DATASETS)
    else:
        if isinstance(datasets, str):
            datasets = [datasets]
        names = list(datasets)
        unknown = [n for n in names if n not in DATASETS]
        if unknown or not names:
            raise ArgumentError(f"datasets: expected names from {list(DATASETS)}, got {names!r}")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ArgumentError(f"folds: expected an integer ≥ 2, got {folds!r}")
    dims = list(dims)
    if not dims or any(isinstance(d, bool) or not isinstance(d, int) or d < 2 or d % 2 for d in dims):
        raise ArgumentError(f"dims: expected even integers ≥ 2 (GPM embedding widths), got {dims!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ArgumentError(f"seed: expected an integer, got {seed!r}")
    return names, dims


def run_real_benchmark(
    datasets: Optional[Sequence[str]] = None,
    folds: int = 5,
    dims: Sequence[int] = (2, 4, 6),
    seed: int = 0,
    quick: bool = False,
    progress: bool = True,
    cache: Optional[str] = None,
    fit_options: Optional[dict] = None,
    context: bool = True,
) -> dict[str, Any]:
    """BT vs GPM (``d ∈ dims``) with ``folds``-fold cross-validation on real pairwise data.

    Args:
        datasets: names from :data:`gpmkit.datasets.real.DATASETS` (default: all five).
        folds: number of CV folds (≥ 2); comparisons are shuffled with ``seed`` and split evenly.
        dims: GPM embedding widths ``2k``.
        seed: seed of the fold split and of the fits.
        quick: 2 folds and at most 100 optimiser iterations per fit (a smoke run; numbers less precise).
        progress: show a tqdm progress bar on stderr.
        cache: the data cache directory (default :func:`gpmkit.datasets.real.cache_dir`).
        fit_options: extra keyword arguments for :func:`gpmkit.pairwise.fit` (e.g. ``cyclic_l2``).
        context: also fit context-gated GPMs (``"gpm_d4+ctx"`` …, ``d ≥ 4``) on data sets with covariates:
            the judge's covariates feed the gate ``λ(c)``. BT has no gate, so its rows never use them.

    Returns:
        ``{"config": {...}, "datasets": {name: {"n_items", "n_comparisons", "n_ties",
        "data_cyclic_triads", "models": {"bt" | "gpm_d2" | … | "saturated": {"log_loss", "accuracy", "brier",
        "cyclic_triads", "log_loss_vs_bt"}}}}}`` — metrics are means over folds; ``log_loss_vs_bt`` is the
        relative difference ``ll/ll_bt − 1`` (negative: better than BT); a gated model's ``cyclic_triads``
        is the mean over the comparisons of the triad fraction of its matrix at each comparison's context.
        ``"saturated"`` is the reference model of the training folds' pairwise win rates ``(W_ij + ½)/(n_ij + 1)``
        (K(K−1)/2 free parameters; its triads are the data's).
    """
    names, dims = _check(datasets, folds, dims, seed)
    import numpy as np

    from .datasets.real import load
    from .pairwise import fit, metrics

    if quick:
        folds = min(folds, _QUICK_FOLDS)
    options = dict(fit_options or {})
    if quick:
        options.setdefault("epochs", _QUICK_EPOCHS)
    base = [("bt", {"model": "bt"}, False)] + [
        (f"gpm_d{d}", {"model": "gpm", "value_head_dim": d}, False) for d in dims
    ]
    gated = [(f"gpm_d{d}+ctx", {"model": "gpm", "value_head_dim": d}, True) for d in dims if d >= 4] if context else []
    data = {name: load(name, cache) for name in names}
    plans = {name: base + (gated if d.context is not None else []) for name, d in data.items()}
    total = sum(len(p) for p in plans.values()) * (folds + 1)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="bench real", unit="fit", file=sys.stderr, dynamic_ncols=True)
    start = time.perf_counter()
    out: dict[str, Any] = {}
    try:
        for name, d in data.items():
            rng = np.random.default_rng(seed)
            order = rng.permutation(d.n_comparisons)
            fold_of = np.empty(d.n_comparisons, dtype=np.int64)
            fold_of[order] = np.arange(d.n_comparisons) % folds
            entry: dict[str, Any] = {
                "n_items": d.n_items,
                "n_comparisons": d.n_comparisons,
                "n_ties": int((d.outcome == 0.5).sum()),
                "data_cyclic_triads": _triads(d.win_rate() - 0.5),
                "models": {},
            }
            for label, spec, use_ctx in plans[name]:
                scores = []
                for k in range(folds):
                    if bar is not None:
                        bar.set_postfix_str(f"{name} {label} fold {k + 1}/{folds}")
                    train, test = d.subset(fold_of != k), d.subset(fold_of == k)
                    m = fit(
                        d.n_items,
                        train.winners,
                        train.losers,
                        train.outcome,
                        train.context if use_ctx else None,
                        seed=seed,
                        **spec,
                        **options,
                    )
                    scores.append(
                        m.evaluate(test.winners, test.losers, test.outcome, test.context if use_ctx else None)
                    )
                    if bar is not None:
                        bar.update(1)
                ctx = d.context if use_ctx else None
                full = fit(d.n_items, d.winners, d.losers, d.outcome, ctx, seed=seed, **spec, **options)
                if bar is not None:
                    bar.update(1)
                res = {key: float(np.mean([s[key] for s in scores])) for key in ("log_loss", "accuracy", "brier")}
                if ctx is None:
                    res["cyclic_triads"] = _triads(full.score_matrix())
                else:
                    rows, counts = np.unique(ctx, axis=0, return_counts=True)
                    per = [_triads(mat) for mat in full.score_matrix(rows)]
                    res["cyclic_triads"] = float(np.average(per, weights=counts))
                entry["models"][label] = res
            sat = []
            for k in range(folds):  # the saturated model: smoothed pairwise win rates of the training fold
                train, test = d.subset(fold_of != k), d.subset(fold_of == k)
                w = train.wins()
                rate = (w + 0.5) / (w + w.T + 1.0)
                sat.append(metrics(rate[test.winners, test.losers], test.outcome))
            entry["models"]["saturated"] = {
                **{key: float(np.mean([s[key] for s in sat])) for key in ("log_loss", "accuracy", "brier")},
                "cyclic_triads": entry["data_cyclic_triads"],
            }
            bt_ll = entry["models"]["bt"]["log_loss"]
            for res in entry["models"].values():
                res["log_loss_vs_bt"] = res["log_loss"] / bt_ll - 1.0
            out[name] = entry
    finally:
        if bar is not None:
            bar.close()
    config = {
        "datasets": names,
        "folds": folds,
        "dims": dims,
        "seed": seed,
        "quick": quick,
        "context": context,
        "fit_options": options,
        "seconds": round(time.perf_counter() - start, 1),
    }
    return {"config": config, "datasets": out}


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of :func:`run_real_benchmark`'s result (one row per data set and model)."""
    lines = [
        f"{'dataset':<14} {'K':>3} {'N':>6} {'model':<11} {'log-loss':>9} {'vs BT':>8} {'acc':>6} {'brier':>7} "
        f"{'triads':>7}"
    ]
    lines.append("-" * len(lines[0]))
    for name, entry in result["datasets"].items():
        lines.append(
            f"{name:<14} {entry['n_items']:>3} {entry['n_comparisons']:>6} {'data':<11} {'':>9} {'':>8} {'':>6} "
            f"{'':>7} {entry['data_cyclic_triads']:>7.3f}"
        )
        for label, res in entry["models"].items():
            rel = "" if label == "bt" else f"{100 * res['log_loss_vs_bt']:+.2f}%"
            lines.append(
                f"{'':<14} {'':>3} {'':>6} {label:<11} {res['log_loss']:>9.4f} {rel:>8} {res['accuracy']:>6.3f} "
                f"{res['brier']:>7.4f} {res['cyclic_triads']:>7.3f}"
            )
    cfg = result["config"]
    lines.append(
        f"{cfg['folds']}-fold CV (seed {cfg['seed']}), held-out means; accuracy excludes ties; triads = fraction "
        f"of cyclic triads ({cfg['seconds']} s)"
    )
    return "\n".join(lines)


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _bench_real(args: argparse.Namespace) -> int:
    datasets = None if args.datasets is None else [s.strip() for s in args.datasets.split(",") if s.strip()]
    result = run_real_benchmark(
        datasets=datasets,
        folds=args.folds,
        dims=args.dims,
        seed=args.seed,
        quick=args.quick,
        progress=not args.no_progress,
        cache=args.cache,
        context=not args.no_context,
    )
    print(format_table(result))
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as fh:
                json.dump(result, fh, indent=2)
                fh.write("\n")
        except OSError as err:
            raise ArgumentError(f"--output: cannot write {args.output!r} ({err})") from None
        print(f"wrote {args.output}")
    return 0


def add_subparser(subparsers: Any, formatter_class: Any) -> None:
    """Adds ``gpmkit bench`` (subcommand ``real``) to the ``gpmkit`` parser."""
    from .cli import command_group

    _, bench_sub = command_group(
        subparsers,
        "bench",
        formatter_class,
        dest="bench_command",
        metavar="<benchmark>",
        help="benchmarks (bench real: BT vs GPM on real human pairwise data)",
        description="Benchmarks. 'gpmkit bench real' compares Bradley-Terry and GPM on real human comparisons.",
    )
    real = bench_sub.add_parser(
        "real",
        formatter_class=formatter_class,
        help="BT vs GPM (d = 2, 4, 6) with k-fold CV on five real pairwise-comparison data sets",
        description=(
            "Fit Bradley-Terry and GPMs with gpmkit.pairwise.fit to real human paired comparisons (psychotools "
            "SoundQuality, FirstNames, GermanParties2009; BradleyTerry2 football, CEMS; fetched once from "
            "Debian's packages into the cache) and print held-out log-loss, accuracy (ties excluded), Brier score "
            "and the fraction of cyclic triads in the data and in each fitted model. Rows: bt, gpm_dD (item "
            "embeddings only), gpm_dD+ctx (D >= 4: the judges' covariates feed the gate) and saturated (the "
            "training folds' pairwise win rates, for reference)."
        ),
    )
    real.add_argument(
        "--datasets", help="comma-separated subset of: soundquality,firstnames,germanparties,football,cems"
    )
    real.add_argument("--folds", type=int, default=5, help="number of cross-validation folds (≥ 2)")
    real.add_argument("--dims", type=_int_list, default=[2, 4, 6], help="GPM embedding widths, comma-separated")
    real.add_argument("--seed", type=int, default=0, help="seed of the fold split and the fits")
    real.add_argument("--output", metavar="FILE.json", help="also write the results as JSON")
    real.add_argument("--quick", action="store_true", help="2 folds, ≤100 iterations per fit (smoke run)")
    real.add_argument("--cache", help="data cache directory (if unset: $GPMKIT_REAL_CACHE, else ~/.cache/gpmkit/real)")
    real.add_argument("--no-context", action="store_true", help="skip the context-gated GPM rows")
    real.add_argument("--no-progress", action="store_true", help="no progress bar")
    real.set_defaults(func=_bench_real)
