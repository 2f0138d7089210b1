"""Algebraic properties (hypothesis) and thread-count determinism.

- skew-symmetry is exact: a block's term ``λ(x0·y1 − x1·y0)`` negates exactly when the vectors swap, so
  ``s(a, b) == −s(b, a)``, ``M == −Mᵀ`` and ``diag(M) == 0`` hold with ``==``, not to a tolerance;
- ``P(a ≻ b) + P(b ≻ a) = 1`` up to the rounding of two sigmoids;
- every op is equivariant under permutations of the batch (bit for bit: rows are independent) and of the
  responses of a prompt;
- results and gradients are bit-identical for 1 and 2 kernel threads, on inputs that span several of the
  fixed parallel chunks (pairs/losses 4096 rows, matrices 64 rows, win scores 256 prompts).
"""

from __future__ import annotations

import gpmkit
import gpmkit.functional as F
import hypothesis.extra.numpy as hnp
import pytest
import torch
from _helpers import EPS, F64, emb, gate_like, mag_win, randn, soft_label
from hypothesis import given
from hypothesis import strategies as st

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def _elements(dtype: str, lo: float = -1e6, hi: float = 1e6):
    # bounded so that no product or sum of a few of them overflows (inf − inf would be NaN)
    width = 64 if dtype == "float64" else 32
    return st.floats(lo, hi, width=width, allow_nan=False, allow_infinity=False, allow_subnormal=True)


@st.composite
def arrays(draw, shape, dtype: str, lo: float = -1e6, hi: float = 1e6):
    np_dtype = "float64" if dtype == "float64" else "float32"
    a = draw(hnp.arrays(np_dtype, shape, elements=_elements(dtype, lo, hi)))
    return torch.from_numpy(a).to(DTYPES[dtype])


@st.composite
def pairs(draw, max_n: int = 6, max_k: int = 8):
    dtype = draw(st.sampled_from(list(DTYPES)))
    n, k = draw(st.integers(0, max_n)), draw(st.integers(1, max_k))
    a = draw(arrays((n, 2 * k), dtype))
    b = draw(arrays((n, 2 * k), dtype))
    gate = draw(st.none() | arrays((n, k), dtype, 0.0, 1e3))
    return a, b, gate


@st.composite
def populations(draw, max_p: int = 4, max_kk: int = 6, max_k: int = 8):
    dtype = draw(st.sampled_from(list(DTYPES)))
    p, kk, k = draw(st.integers(0, max_p)), draw(st.integers(1, max_kk)), draw(st.integers(1, max_k))
    v = draw(arrays((p, kk, 2 * k), dtype))
    gate = draw(st.none() | arrays((p, k), dtype, 0.0, 1e3))
    return v, gate


# ---------------------------------------------------------------------------------------------------
# skew-symmetry and complementary probabilities


@given(pairs())
def test_score_is_exactly_skew_symmetric(data):
    a, b, gate = data
    s_ab, s_ba = F.preference_score(a, b, gate), F.preference_score(b, a, gate)
    assert s_ab.dtype == a.dtype
    assert torch.equal(s_ab, -s_ba)
    assert torch.equal(F.preference_score(a, a, gate), torch.zeros_like(s_ab))


@given(populations())
def test_matrix_is_exactly_skew_symmetric_with_zero_diagonal(data):
    v, gate = data
    m = F.preference_matrix(v, gate)
    assert torch.equal(m, -m.transpose(-1, -2))
    assert torch.equal(torch.diagonal(m, dim1=-2, dim2=-1), torch.zeros(m.shape[:-1], dtype=m.dtype))


@given(populations())
def test_matrix_entries_are_the_pair_scores(data):
    """M[p, i, j] is bit-for-bit the pair score of (v[p, i], v[p, j]) with the prompt's gate."""
    v, gate = data
    p, kk, d = v.shape
    m = F.preference_matrix(v, gate)
    vi = v.unsqueeze(2).expand(p, kk, kk, d)
    vj = v.unsqueeze(1).expand(p, kk, kk, d)
    g = None if gate is None else gate[:, None, None, :].expand(p, kk, kk, gate.shape[-1])
    assert torch.equal(m, F.preference_score(vi, vj, g))


@given(pairs(), st.sampled_from([0.1, 1.0, 3.7]))
def test_probabilities_of_both_orders_sum_to_one(data, tau):
    a, b, gate = data
    p = F.preference_prob(a, b, gate, tau)
    q = F.preference_prob(b, a, gate, tau)
    # σ(z) + σ(−z): each sigmoid is within ~1 ulp, the sum within 4·eps of 1
    eps = EPS[p.dtype]
    assert bool(((p.to(F64) + q.to(F64)) - 1).abs().le(4 * eps).all())


# ---------------------------------------------------------------------------------------------------
# batch permutations


def _batch_case(name: str, n: int):
    k = 3
    if name == "score":
        return [emb(n, 2 * k), emb(n, 2 * k), gate_like(n, k)], lambda a, b, g: F.preference_score(a, b, g)
    if name == "prob":
        return [emb(n, 2 * k), emb(n, 2 * k), gate_like(n, k)], lambda a, b, g: F.preference_prob(a, b, g, 0.3)
    if name == "matrix":
        return [emb(n, 4, 2 * k), gate_like(n, k)], lambda v, g: F.preference_matrix(v, g)
    if name == "win":
        return [emb(n, 4, 2 * k), torch.rand(n, 4), gate_like(n, k)], lambda v, w, g: F.win_score(v, w, g)
    if name == "gpm":
        x = [emb(n, 2 * k), emb(n, 2 * k), gate_like(n, k), randn(n, scale=0.1), soft_label(n)]
        return x, lambda a, b, g, m, p: F.gpm_loss(a, b, g, 0.3, m, p, "none")
    if name == "bt":
        return [randn(n), randn(n), randn(n, scale=0.1), soft_label(n)], lambda a, b, m, p: F.bt_loss(
            a, b, 1.0, m, p, "none"
        )
    if name == "gpo":
        x = [randn(n), randn(n), randn(n), 1 + 20 * torch.rand(n)]
        return x, lambda a, b, t, ln: F.gpo_loss(a, b, t, 0.5, ln, 1.0, 1.5, "none")
    if name == "sppo":
        return [randn(n), randn(n), soft_label(n)], lambda a, b, t: F.sppo_loss(a, b, t, 0.5, "none")
    raise AssertionError(name)


BATCH_OPS = ["score", "prob", "matrix", "win", "gpm", "bt", "gpo", "sppo"]


@pytest.mark.parametrize("name", BATCH_OPS)
@given(n=st.integers(1, 40), seed=st.integers(0, 2**31 - 1))
def test_batch_permutation_equivariance(name, n, seed):
    """f(x[π])[…] == f(x)[π] bit for bit, and so are the gradients (upstream gradients permuted too)."""
    torch.manual_seed(seed)
    x, fn = _batch_case(name, n)
    perm = torch.randperm(n)
    xs = [t.clone().requires_grad_() for t in x]
    xp = [t[perm].clone().requires_grad_() for t in x]
    out, out_p = fn(*xs), fn(*xp)
    u = torch.randn(out.shape)
    g = torch.autograd.grad(out, xs, u)
    g_p = torch.autograd.grad(out_p, xp, u[perm])
    if name == "prob":
        # σ(s/τ) is torch's: its vectorised body and scalar tail may round differently, so the position
        # in the batch can change the last bit (the scores themselves are checked bit for bit above)
        def same(a, b):
            eps = EPS[a.dtype]
            torch.testing.assert_close(a, b, rtol=8 * eps, atol=8 * eps * b.abs().max().item())

    else:
        same = lambda a, b: _assert_equal(a, b)  # noqa: E731
    same(out_p, out[perm])
    for a, b in zip(g_p, g):
        same(a, b[perm])


def _assert_equal(a, b):
    assert torch.equal(a, b), f"max difference {(a - b).abs().max().item():.3e}"


# ---------------------------------------------------------------------------------------------------
# response permutations


@given(populations(), st.randoms(use_true_random=False))
def test_matrix_response_permutation_equivariance(data, rnd):
    """M(v[π]) == P M Pᵀ exactly (each entry is the same pair score)."""
    v, gate = data
    perm = list(range(v.shape[1]))
    rnd.shuffle(perm)
    perm = torch.tensor(perm)
    m = F.preference_matrix(v, gate)
    assert torch.equal(F.preference_matrix(v[:, perm], gate), m[:, perm][:, :, perm])


@given(
    p=st.integers(1, 4), kk=st.integers(1, 9), k=st.integers(1, 6), weighted=st.booleans(), seed=st.integers(0, 10**6)
)
def test_win_score_response_permutation_equivariance(p, kk, k, weighted, seed):
    """ŝ(v[π], w[π]) = ŝ(v, w)[π]; v̄ is summed in a different order, so equal to float64 rounding
    (the bound of tests/_helpers.py: (2k + K + 8)·eps64·Σ|terms|), and so are the gradients."""
    torch.manual_seed(seed)
    v = randn(p, kk, 2 * k, dtype=F64).requires_grad_()
    w = torch.rand(p, kk, dtype=F64).requires_grad_() if weighted else None
    gate = torch.rand(p, k, dtype=F64).requires_grad_()
    perm = torch.randperm(kk)
    out = F.win_score(v, w, gate)
    out_p = F.win_score(v[:, perm], None if w is None else w[:, perm], gate)
    bound = (2 * k + kk + 8) * EPS[F64] * mag_win(v.detach().abs(), None if w is None else w.detach().abs(), gate)
    assert ((out_p - out[:, perm]).abs() <= bound[:, perm]).all()
    u = torch.randn(p, kk, dtype=F64)
    inputs = [t for t in (v, w, gate) if t is not None]
    g = torch.autograd.grad(out, inputs, u)
    g_p = torch.autograd.grad(out_p, inputs, u[:, perm])  # through the indexing: un-permuted again
    for a, b in zip(g_p, g):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


# ---------------------------------------------------------------------------------------------------
# thread-count determinism

PAIR_CHUNK, MATRIX_ROW_CHUNK, WIN_PROMPT_CHUNK = 4096, 64, 256
N_PAIRS = 3 * PAIR_CHUNK + 5


def _thread_case(name: str, dtype):
    torch.manual_seed(123)
    n, k = N_PAIRS, 4
    if name == "score":
        x, fn = [emb(n, 2 * k), emb(n, 2 * k), gate_like(n, k)], F.preference_score
    elif name == "prob":
        x, fn = [emb(n, 2 * k), emb(n, 2 * k), gate_like(n, k)], F.preference_prob
    elif name == "matrix":
        # 20 prompts × 16 responses = 320 matrix rows = 5 chunks of 64
        x, fn = [emb(20, 16, 2 * k), gate_like(20, k)], F.preference_matrix
    elif name == "win":
        p = 3 * WIN_PROMPT_CHUNK + 5
        x, fn = [emb(p, 4, 2 * k), torch.rand(p, 4), gate_like(p, k)], F.win_score
    elif name.startswith("gpm"):
        red = name.split("_")[1]
        x = [emb(n, 2 * k), emb(n, 2 * k), gate_like(n, k), randn(n, scale=0.1), soft_label(n)]

        def fn(a, b, g, m, p, red=red):
            return F.gpm_loss(a, b, g, 0.1, m, p, red)

    elif name.startswith("bt"):
        red = name.split("_")[1]
        x = [randn(n), randn(n), randn(n, scale=0.1), soft_label(n)]

        def fn(a, b, m, p, red=red):
            return F.bt_loss(a, b, 1.0, m, p, red)

    elif name.startswith("gpo"):
        red = name.split("_")[1]
        x = [randn(n), randn(n), randn(n), 1 + 20 * torch.rand(n)]

        def fn(a, b, t, ln, red=red):
            return F.gpo_loss(a, b, t, 0.5, ln, 1.0, 1.5, red)

    elif name.startswith("sppo"):
        red = name.split("_")[1]
        x = [randn(n), randn(n), soft_label(n)]

        def fn(a, b, t, red=red):
            return F.sppo_loss(a, b, t, 0.5, red)

    else:
        raise AssertionError(name)
    return [t.to(dtype) for t in x], fn


THREAD_OPS = ["score", "prob", "matrix", "win"] + [
    f"{loss}_{red}" for loss in ("gpm", "bt", "gpo", "sppo") for red in ("none", "mean", "sum")
]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int64 if t.dtype == F64 else torch.int32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", THREAD_OPS)
def test_same_bits_for_one_and_two_threads(name, dtype, restore_threads):
    x, fn = _thread_case(name, dtype)
    results = []
    for threads in (1, 2):
        gpmkit.set_num_threads(threads)
        assert gpmkit.get_num_threads() == threads
        xs = [t.clone().requires_grad_() for t in x]
        out = fn(*xs)
        u = torch.ones_like(out) if out.dim() == 0 else torch.linspace(-1, 1, out.numel()).reshape(out.shape)
        grads = torch.autograd.grad(out, xs, u.to(out.dtype))
        results.append((out, grads))
    (o1, g1), (o2, g2) = results
    assert torch.equal(_bits(o1), _bits(o2))
    for a, b in zip(g1, g2):
        assert torch.equal(_bits(a), _bits(b))
