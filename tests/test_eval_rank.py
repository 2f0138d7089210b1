"""gpmkit.eval.rank: von Neumann winners against hand-solved games; win score / Copeland / Borda rankings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gpmkit import functional as F
from gpmkit.eval import rank as R
from gpmkit.exceptions import ArgumentError, ShapeError

RPS = np.array([[0.0, 1.0, -1.0], [-1.0, 0.0, 1.0], [1.0, -1.0, 0.0]])


def _skew(K: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(K, K))
    return a - a.T


def _check_optimal(res: R.VonNeumannResult, A: np.ndarray, tol: float = 1e-9) -> None:
    p = res.p
    assert np.all(p >= 0) and p.sum() == pytest.approx(1.0)
    assert np.min(p @ A) >= -tol  # unbeaten by every pure strategy (the game value is 0)
    assert res.gap <= tol and res.value >= -tol


def test_rock_paper_scissors_is_uniform():
    res = R.von_neumann_winner(RPS)
    np.testing.assert_allclose(res.p, 1 / 3, atol=1e-12)
    _check_optimal(res, RPS)
    assert sorted(res.support) == [0, 1, 2]


@pytest.mark.parametrize("a,b,c", [(1.0, 2.0, 5.0), (3.0, 1.0, 1.0), (0.5, 0.25, 4.0)])
def test_weighted_rps_hand_solution(a, b, c):
    # (pᵀA)_j = 0 for all j gives p ∝ (c, b, a)
    A = np.array([[0.0, a, -b], [-a, 0.0, c], [b, -c, 0.0]])
    res = R.von_neumann_winner(A)
    np.testing.assert_allclose(res.p, np.array([c, b, a]) / (a + b + c), atol=1e-12)
    _check_optimal(res, A)


def test_condorcet_winner_is_a_pure_strategy():
    # item 3 beats everyone; the others play RPS among themselves
    A = np.zeros((4, 4))
    A[:3, :3] = RPS
    A[3, :3], A[:3, 3] = 0.2, -0.2
    res = R.von_neumann_winner(A)
    np.testing.assert_allclose(res.p, [0, 0, 0, 1], atol=1e-12)
    ranking = R.rank_responses(M=A)
    assert ranking.condorcet_winner == 3
    assert ranking.best("von_neumann") == 3 and ranking.best("copeland") == 3


def test_dominated_item_gets_no_mass():
    # a 4th item that loses to everyone: the RPS cycle keeps the uniform mixture
    A = np.zeros((4, 4))
    A[:3, :3] = RPS
    A[3, :3], A[:3, 3] = -1.0, 1.0
    np.testing.assert_allclose(R.von_neumann_winner(A).p, [1 / 3, 1 / 3, 1 / 3, 0], atol=1e-12)


@pytest.mark.parametrize("K,seed", [(2, 0), (5, 1), (17, 2), (40, 3), (90, 4)])
def test_random_skew_games_are_solved(K, seed):
    A = _skew(K, seed)
    res = R.von_neumann_winner(A)
    _check_optimal(res, A, tol=1e-9 * np.abs(A).max())
    # torch input and probability input (payoff P − ½) are accepted
    assert np.allclose(R.von_neumann_winner(torch.tensor(A)).p, res.p)
    P = 1 / (1 + np.exp(-A))
    resp = R.von_neumann_winner(P)
    _check_optimal(resp, P - 0.5)


def test_degenerate_games():
    # sign-only tournaments are highly degenerate LPs (anti-cycling is exercised)
    rng = np.random.default_rng(5)
    for _ in range(5):
        U = np.triu(np.sign(rng.normal(size=(25, 25))), 1)
        A = U - U.T
        _check_optimal(R.von_neumann_winner(A), A)
    zero = R.von_neumann_winner(np.zeros((3, 3)))
    np.testing.assert_allclose(zero.p, 1 / 3)
    assert zero.gap == 0
    np.testing.assert_array_equal(R.von_neumann_winner(np.zeros((1, 1))).p, [1.0])


def test_von_neumann_errors():
    with pytest.raises(ShapeError, match="0×0"):
        R.von_neumann_winner(np.zeros((0, 0)))
    with pytest.raises(ArgumentError, match="neither"):
        R.von_neumann_winner(np.ones((3, 3)))
    with pytest.raises(ShapeError, match="square"):
        R.von_neumann_winner(np.zeros(3))


def test_rankings_agree_on_a_transitive_matrix():
    r = np.array([0.3, -1.0, 2.0, 0.0, 1.0])
    S = r[:, None] - r[None, :]
    ranking = R.rank_responses(M=S, labels=list("abcde"))
    expected = [3, 5, 1, 4, 2]
    for m in ("win_score", "copeland", "borda"):
        assert list(ranking.ranks(m)) == expected, m
    np.testing.assert_allclose(ranking.win_score, r - r.mean())
    np.testing.assert_allclose(ranking.copeland, [2, 0, 4, 1, 3])
    P = 1 / (1 + np.exp(-S / 0.1))
    np.testing.assert_allclose(ranking.borda, P.sum(1) - 0.5)
    assert ranking.condorcet_winner == 2 and ranking.best("von_neumann") == 2


def test_copeland_counts_ties_as_half():
    S = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(R.copeland_scores(S), [1.5, 0.5, 1.0])
    P = np.array([[0.5, 0.7, 0.6], [0.3, 0.5, 0.9], [0.4, 0.1, 0.5]])
    np.testing.assert_allclose(R.borda_scores(P), [1.3, 1.2, 0.5])
    with pytest.raises(ArgumentError, match="tau"):
        R.borda_scores(S, tau=0)


def test_rank_from_embeddings_uses_win_score_and_the_matrix():
    torch.manual_seed(1)
    v = torch.randn(6, 4, dtype=torch.float64)
    gate = torch.tensor([0.8, 0.2], dtype=torch.float64)
    w = torch.softmax(torch.randn(6, dtype=torch.float64), 0)
    ranking = R.rank_responses(v, gate=gate, weights=w)
    np.testing.assert_allclose(ranking.win_score, F.win_score(v, w, gate).numpy(), atol=1e-12)
    M = F.preference_matrix(v, gate).numpy()
    np.testing.assert_allclose(ranking.matrix, M, atol=1e-12)
    _check_optimal(ranking.von_neumann, M)
    assert R.best_of_n(v, gate=gate, weights=w) == int(np.argmax(ranking.win_score))
    assert R.best_of_n(v, gate=gate, method="borda") == ranking.best("borda")
    # sampling from the mixture only picks responses in its support
    picks = {R.best_of_n(v, gate=gate, method="von_neumann", rng=s) for s in range(20)}
    assert picks <= set(ranking.von_neumann.support.tolist())


def test_ranking_output_and_errors():
    ranking = R.rank_responses(M=RPS, labels=["rock", "paper", "scissors"])
    text = ranking.to_text()
    assert "none (preferences cycle)" in text and "rock: 0.333" in text
    assert "<table>" in ranking._repr_html_()
    d = json.loads(json.dumps(ranking.to_dict()))
    assert d["von_neumann"] == pytest.approx([1 / 3] * 3) and d["condorcet_winner"] is None
    with pytest.raises(ArgumentError, match="exactly one"):
        R.rank_responses()
    with pytest.raises(ShapeError, match="labels"):
        R.rank_responses(M=RPS, labels=["a"])
    with pytest.raises(ShapeError, match="weights"):
        R.rank_responses(M=RPS, weights=[1.0])
    with pytest.raises(ArgumentError, match="method"):
        R.best_of_n(M=RPS, method="elo")
    with pytest.raises(ArgumentError, match="method"):
        ranking.ranks("elo")
    with pytest.raises(ShapeError, match="one prompt"):
        R.rank_responses(torch.zeros(2, 3, 4))


@pytest.mark.parametrize("seed", range(5))
def test_von_neumann_is_permutation_equivariant_and_scale_invariant(seed):
    A = _skew(9, 200 + seed)
    perm = np.random.default_rng(seed).permutation(9)
    res = R.von_neumann_winner(A)
    resp = R.von_neumann_winner(A[np.ix_(perm, perm)])
    # generic random games have a unique optimal strategy
    np.testing.assert_allclose(resp.p, res.p[perm], atol=1e-9)
    np.testing.assert_allclose(R.von_neumann_winner(7.5 * A).p, res.p, atol=1e-9)
