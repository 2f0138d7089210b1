"""gpmkit.eval.cycles: cyclic triads, Hodge decomposition, skew spectrum, gate weights, report."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from gpmkit import functional as F
from gpmkit.eval import cycles as C
from gpmkit.exceptions import ArgumentError, ShapeError

RPS = np.array([[0.0, 1.0, -1.0], [-1.0, 0.0, 1.0], [1.0, -1.0, 0.0]])


def _skew(K: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(K, K))
    return a - a.T


def _brute_cycles(S: np.ndarray, tie_tol: float = 0.0) -> int:
    """Direct enumeration of the C(K,3) triads."""
    n = 0
    for i, j, k in itertools.combinations(range(S.shape[0]), 3):
        if (S[i, j] > tie_tol and S[j, k] > tie_tol and S[k, i] > tie_tol) or (
            S[j, i] > tie_tol and S[k, j] > tie_tol and S[i, k] > tie_tol
        ):
            n += 1
    return n


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_rock_paper_scissors_is_fully_cyclic():
    assert C.cyclic_triad_fraction(RPS) == 1.0
    assert C.cyclic_triad_count(RPS) == 1
    h = C.hodge_decomposition(RPS)
    assert h.cyclic_share == pytest.approx(1.0)
    np.testing.assert_allclose(h.potential, 0.0, atol=1e-15)


def test_transitive_matrix_has_no_cycles_and_recovers_the_potential():
    r = np.array([3.0, -1.0, 0.5, 2.0, 0.0])
    S = r[:, None] - r[None, :]
    assert C.cyclic_triad_fraction(S) == 0.0
    h = C.hodge_decomposition(S)
    assert h.cyclic_share == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(h.potential, r - r.mean(), atol=1e-12)
    np.testing.assert_allclose(h.gradient, S, atol=1e-12)


def test_regular_tournament_reaches_the_maximum():
    K = 5  # i beats i+1 and i+2 (mod 5): the regular tournament, (K+1)/(4(K-2)) = 1/2 of the triads cyclic
    S = np.zeros((K, K))
    for i in range(K):
        for d in (1, 2):
            S[i, (i + d) % K], S[(i + d) % K, i] = 1.0, -1.0
    assert C.cyclic_triad_count(S) == 5
    assert C.cyclic_triad_fraction(S) == pytest.approx((K + 1) / (4 * (K - 2)))


@pytest.mark.parametrize("K,seed", [(3, 0), (4, 1), (7, 2), (12, 3), (20, 4)])
def test_kendall_and_exact_agree_with_brute_force(K, seed):
    S = _skew(K, seed)
    expected = _brute_cycles(S)
    assert C.cyclic_triad_count(S, method="exact") == expected
    assert C.cyclic_triad_count(S, method="kendall") == expected
    assert C.cyclic_triad_fraction(S) == pytest.approx(expected / math.comb(K, 3))


def test_ties_are_no_edge():
    S = _skew(9, 5)
    S[0, 1] = S[1, 0] = 0.0
    S[2, 3], S[3, 2] = 0.05, -0.05
    assert C.cyclic_triad_count(S) == _brute_cycles(S)
    assert C.cyclic_triad_count(S, tie_tol=0.1) == _brute_cycles(S, 0.1)
    with pytest.raises(ArgumentError, match="tournament"):
        C.cyclic_triad_count(S, method="kendall")
    # RPS with one tie is no longer cyclic
    R = RPS.copy()
    R[0, 1] = R[1, 0] = 0.0
    assert C.cyclic_triad_fraction(R) == 0.0


def test_probability_torch_and_list_inputs_give_the_same_answer():
    S = _skew(8, 6)
    P = _sigmoid(S / 0.1)
    base = C.cyclic_triad_fraction(S)
    assert C.cyclic_triad_fraction(P) == base
    assert C.cyclic_triad_fraction(P, kind="prob") == base
    assert C.cyclic_triad_fraction(torch.tensor(S, dtype=torch.float32)) == base
    assert C.cyclic_triad_fraction(S.tolist()) == base
    # log-odds of σ(S/τ) is S/τ: the decomposition is the same up to scale
    np.testing.assert_allclose(C.as_score_matrix(_sigmoid(S)), S, atol=1e-9)
    assert C.hodge_decomposition(_sigmoid(S)).cyclic_share == pytest.approx(C.hodge_decomposition(S).cyclic_share)
    assert C.cyclic_triad_fraction(np.zeros((2, 2))) == 0.0
    assert C.cyclic_triad_fraction(np.zeros((0, 0))) == 0.0


def test_hodge_is_the_least_squares_orthogonal_split():
    K = 9
    S = _skew(K, 7)
    h = C.hodge_decomposition(S)
    pairs = list(itertools.combinations(range(K), 2))
    B = np.zeros((len(pairs), K))
    y = np.zeros(len(pairs))
    for row, (i, j) in enumerate(pairs):
        B[row, i], B[row, j], y[row] = 1.0, -1.0, S[i, j]
    r, *_ = np.linalg.lstsq(B, y, rcond=None)
    np.testing.assert_allclose(h.potential, r - r.mean(), atol=1e-10)
    assert np.sum(h.gradient * h.cyclic) == pytest.approx(0.0, abs=1e-10)
    assert np.sum(S**2) == pytest.approx(np.sum(h.gradient**2) + np.sum(h.cyclic**2))
    np.testing.assert_allclose(h.cyclic.sum(axis=1), 0.0, atol=1e-10)
    assert h.cyclic_share == pytest.approx(np.sum(h.cyclic**2) / np.sum(S**2))
    assert h.transitive_share == pytest.approx(1 - h.cyclic_share)
    # the potential is the uniform population win score (DESIGN §1)
    v = torch.randn(6, 4, dtype=torch.float64)
    M = F.preference_matrix(v).numpy()
    np.testing.assert_allclose(C.hodge_decomposition(M).potential, F.win_score(v).numpy(), atol=1e-12)


@pytest.mark.parametrize("K", [1, 2, 5, 8])
def test_skew_spectrum_reconstructs_the_matrix(K):
    S = _skew(K, 8)
    sp = C.skew_spectrum(S)
    assert sp.strengths.shape == (K // 2,) and sp.coords.shape == (K, K // 2, 2)
    assert np.all(np.diff(sp.strengths) <= 1e-12)
    sv = np.linalg.svd(S, compute_uv=False) if K else np.zeros(0)
    np.testing.assert_allclose(sp.strengths, sv[0 : 2 * (K // 2) : 2], atol=1e-10)
    if K < 2:
        assert sp.embeddings()[0].shape == (K, 0)
        return
    v, g = sp.embeddings()
    rec = F.preference_matrix(torch.tensor(v), torch.tensor(g)).numpy()
    np.testing.assert_allclose(rec, S, atol=1e-10)
    v2, g2 = sp.embeddings(gated=False)
    assert g2 is None
    np.testing.assert_allclose(F.preference_matrix(torch.tensor(v2)).numpy(), S, atol=1e-10)
    assert sp.energy_share.sum() == pytest.approx(1.0)
    assert 2 * np.sum(sp.strengths**2) == pytest.approx(np.sum(S**2))


def test_skew_spectrum_finds_the_blocks_of_a_gpm():
    """A GPM with k = 2 blocks gives a rank-4 matrix: two non-zero strengths; truncation is the best fit."""
    v = torch.randn(10, 4, dtype=torch.float64)
    gate = torch.tensor([2.0, 0.3], dtype=torch.float64)
    S = F.preference_matrix(v, gate).numpy()
    sp = C.skew_spectrum(S)
    assert sp.rank() == 2
    assert np.all(sp.strengths[2:] < 1e-10)
    v1, g1 = sp.embeddings(blocks=1)
    err1 = np.linalg.norm(F.preference_matrix(torch.tensor(v1), torch.tensor(g1)).numpy() - S) ** 2
    assert err1 == pytest.approx(2 * sp.strengths[1] ** 2)  # Eckart–Young for the dropped block
    with pytest.raises(ArgumentError, match="blocks"):
        sp.embeddings(blocks=9)


def test_bad_inputs_name_the_argument():
    with pytest.raises(ShapeError, match="square"):
        C.cyclic_triad_fraction(np.zeros((2, 3)))
    with pytest.raises(ArgumentError, match="neither"):
        C.cyclic_triad_fraction(np.ones((3, 3)))
    with pytest.raises(ArgumentError, match="kind"):
        C.cyclic_triad_fraction(RPS, kind="logits")
    with pytest.raises(ArgumentError, match="kind='prob'"):
        C.cyclic_triad_fraction(RPS, kind="prob")
    with pytest.raises(ArgumentError, match="finite"):
        C.hodge_decomposition(np.full((2, 2), np.nan))
    with pytest.raises(ArgumentError, match="method"):
        C.cyclic_triad_count(RPS, method="fast")
    with pytest.raises(ArgumentError, match="tie_tol"):
        C.cyclic_triad_count(RPS, tie_tol=-1)
    with pytest.raises(ArgumentError, match="numeric"):
        C.cyclic_triad_fraction([["a", "b"], ["c", "d"]])


def test_report_text_html_and_json():
    rep = C.cyclicity_report(RPS, labels=["rock", "paper", "scissors"], gate=[0.7, 0.3])
    assert rep.cyclic_triads == 1 and rep.total_triads == 1 and rep.triad_fraction == 1.0
    assert rep.cyclic_share == pytest.approx(1.0)
    text = rep.to_text()
    assert "1 / 1 (100.0%)" in text and "rock" in text and str(rep) == text
    page = rep._repr_html_()
    assert page.startswith("<div>") and "scissors" in page and "<table>" in page
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["K"] == 3 and d["gate"] == [0.7, 0.3] and d["cyclic_triad_fraction"] == 1.0
    assert "<b>" not in C.cyclicity_report(RPS, labels=["<b>", "x", "y"])._repr_html_().split("</table>")[1]


def test_report_from_embeddings_matches_the_matrix():
    v = torch.randn(6, 4)
    g = torch.tensor([0.6, 0.4])
    rep = C.cyclicity_report(v=v, gate=g)
    S = F.preference_matrix(v.double(), g.double()).numpy()
    assert rep.triad_fraction == C.cyclic_triad_fraction(S)
    np.testing.assert_allclose(rep.gate, [0.6, 0.4], atol=1e-7)
    np.testing.assert_allclose(rep.hodge.potential, C.hodge_decomposition(S).potential, atol=1e-6)
    with pytest.raises(ArgumentError, match="exactly one"):
        C.cyclicity_report()
    with pytest.raises(ShapeError, match="labels"):
        C.cyclicity_report(RPS, labels=["a"])


@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("transformers")
    from _helpers import chat_tokenizer
    from gpmkit.models import GPMConfig, GPMModel
    from transformers import LlamaConfig

    tok = chat_tokenizer(["Which fruit is best?", "Apples", "pears", "user assistant"] * 20)
    cfg = LlamaConfig(
        vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    gated = GPMModel(GPMConfig(backbone_config=cfg, value_head_dim=6, gate=True)).eval()
    plain = GPMModel(GPMConfig(backbone_config=cfg, value_head_dim=4)).eval()
    bt = GPMModel(GPMConfig(backbone_config=cfg, bt=True)).eval()
    return tok, gated, plain, bt


def test_gate_weights_of_a_model(tiny):
    tok, gated, plain, bt = tiny
    prompts = ["Which fruit is best?", [{"role": "user", "content": "pears"}]]
    g = C.gate_weights(gated, prompts, tok, batch_size=1)
    assert g.shape == (2, 3)
    np.testing.assert_allclose(g.sum(axis=1), 1.0, atol=1e-5)  # softmax gate
    # the same λ the model uses when scoring responses to the prompt (read at the last prompt token)
    _, gate_ref = gated._embed_texts([("Which fruit is best?", "Apples")], tok, 1, False)
    np.testing.assert_allclose(g[0], gate_ref[0].numpy(), atol=1e-5)
    assert C.gate_weights(gated, "Which fruit is best?", tok).shape == (1, 3)
    np.testing.assert_array_equal(C.gate_weights(plain, prompts, tok), np.ones((2, 2)))
    with pytest.raises(ArgumentError, match="Bradley"):
        C.gate_weights(bt, prompts, tok)
    with pytest.raises(ArgumentError, match="GPMModel"):
        C.gate_weights(object(), prompts, tok)
    with pytest.raises(ArgumentError, match="empty"):
        C.gate_weights(gated, [], tok)
    with pytest.raises(ArgumentError, match="tokenizer"):
        C.gate_weights(gated, prompts)


def test_embed_responses(tiny):
    tok, gated, _, bt = tiny
    responses = ["Apples", "pears", "Apples and pears"]
    v, g = C.embed_responses(gated, "Which fruit is best?", responses, tok, batch_size=2)
    assert v.dtype == torch.float64 and v.shape == (3, 6) and g.shape == (3,)
    M = gated.preference_matrix("Which fruit is best?", responses, tok)
    torch.testing.assert_close(F.preference_matrix(v, g).float(), M, atol=1e-5, rtol=1e-5)
    vb, gb = C.embed_responses(bt, "Which fruit is best?", responses, tok)
    assert vb.shape == (3, 2) and gb is None
    torch.testing.assert_close(
        F.preference_matrix(vb).float(),
        bt.preference_matrix("Which fruit is best?", responses, tok),
        atol=1e-5,
        rtol=1e-5,
    )
    with pytest.raises(ArgumentError, match="responses"):
        C.embed_responses(gated, "x", "Apples", tok)
    with pytest.raises(ArgumentError, match="GPMModel"):
        C.embed_responses(object(), "x", ["a"], tok)


@pytest.mark.parametrize("seed", range(5))
def test_relabelling_items_permutes_everything_consistently(seed):
    K = 8
    S = _skew(K, 100 + seed)
    perm = np.random.default_rng(seed).permutation(K)
    Sp = S[np.ix_(perm, perm)]
    assert C.cyclic_triad_count(Sp) == C.cyclic_triad_count(S)
    h, hp = C.hodge_decomposition(S), C.hodge_decomposition(Sp)
    assert hp.cyclic_share == pytest.approx(h.cyclic_share)
    np.testing.assert_allclose(hp.potential, h.potential[perm], atol=1e-12)
    np.testing.assert_allclose(C.skew_spectrum(Sp).strengths, C.skew_spectrum(S).strengths, atol=1e-10)
    # scaling the scores changes nothing but the strengths
    assert C.cyclic_triad_fraction(3.0 * S) == C.cyclic_triad_fraction(S)
    assert C.hodge_decomposition(3.0 * S).cyclic_share == pytest.approx(h.cyclic_share)


def test_package_re_exports_every_public_name():
    import importlib

    import gpmkit
    import gpmkit.eval as E

    assert gpmkit.eval is E
    for sub in ("cycles", "rank", "rewardbench", "plots"):
        mod = importlib.import_module(f"gpmkit.eval.{sub}")
        for name in mod.__all__:
            assert getattr(E, name) is getattr(mod, name), name
    with pytest.raises(AttributeError, match="no attribute"):
        E.not_a_name  # noqa: B018
