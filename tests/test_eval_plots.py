"""gpmkit.eval.plots: figures are built headless, have the right panels, limits and data, and save to PNG."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from gpmkit.eval import plots
from gpmkit.eval.cycles import hodge_decomposition
from gpmkit.exceptions import ArgumentError, ShapeError
from matplotlib.figure import Figure

RPS = np.array([[0.0, 1.0, -3.0], [-1.0, 0.0, 2.0], [3.0, -2.0, 0.0]])


def _png(fig: Figure, path) -> bytes:
    fig.savefig(path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return data


def test_preference_matrix_heatmap_symmetric_limits(tmp_path):
    fig = plots.plot_preference_matrix(RPS, labels=["rock", "paper", "scissors"], title="RPS")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    im = ax.images[0]
    assert im.get_clim() == (-3.0, 3.0)
    np.testing.assert_array_equal(im.get_array(), RPS)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["rock", "paper", "scissors"]
    assert ax.get_title() == "RPS"
    assert len(ax.texts) == 9  # annotated for small K
    _png(fig, tmp_path / "m.png")


def test_probability_heatmap_is_centred_on_one_half(tmp_path):
    P = torch.sigmoid(torch.tensor(RPS))
    fig = plots.plot_preference_matrix(P)
    lo, hi = fig.axes[0].images[0].get_clim()
    assert lo + hi == pytest.approx(1.0) and hi == pytest.approx(float(P.max()))
    assert "probabilities" in fig.axes[0].get_title()
    _png(fig, tmp_path / "p.png")


def test_draws_into_a_given_axes():
    outer = Figure()
    ax = outer.subplots()
    assert plots.plot_preference_matrix(RPS, ax=ax) is outer
    assert plots.plot_gate_weights([0.2, 0.8], ax=ax) is outer


def test_embeddings_one_panel_per_block(tmp_path):
    v = torch.tensor([[0.6, 0.8, 1.0, 0.0], [-0.8, 0.6, 0.0, 1.0], [0.0, -1.0, -1.0, 0.0]], dtype=torch.float64)
    fig = plots.plot_embeddings(v, labels=["a", "b", "c"], groups=["p", "p", "q"], gate=[0.7, 0.3], title="t")
    axes = [a for a in fig.axes if a.get_visible()]
    assert len(axes) == 2
    for block, a in enumerate(axes):
        pts = np.concatenate([c.get_offsets() for c in a.collections])
        expected = v[:, 2 * block : 2 * block + 2].numpy()
        assert sorted(map(tuple, pts.round(6))) == sorted(map(tuple, expected.round(6)))
        circle = a.lines[0].get_xydata()
        np.testing.assert_allclose(np.hypot(circle[:, 0], circle[:, 1]), 1.0, atol=1e-12)
        assert f"λ = {[0.7, 0.3][block]:.3g}" in a.get_title()
    # group "p" (two points) is connected, "q" is a single point
    assert any(len(line.get_xydata()) == 2 for line in axes[0].lines)
    _png(fig, tmp_path / "e.png")
    # more blocks than columns: a grid with hidden spare panels
    fig5 = plots.plot_embeddings(np.random.default_rng(0).normal(size=(4, 10)))
    assert sum(a.get_visible() for a in fig5.axes) == 5


def test_embeddings_errors():
    with pytest.raises(ShapeError, match="even"):
        plots.plot_embeddings(np.zeros((3, 3)))
    with pytest.raises(ShapeError, match="groups"):
        plots.plot_embeddings(np.zeros((3, 2)), groups=[1])
    with pytest.raises(ShapeError, match="gate"):
        plots.plot_embeddings(np.zeros((3, 4)), gate=[1.0])
    with pytest.raises(ShapeError, match="ax"):
        plots.plot_embeddings(np.zeros((3, 4)), ax=Figure().subplots())
    with pytest.raises(ShapeError, match="labels"):
        plots.plot_preference_matrix(RPS, labels=["x"])
    with pytest.raises(ArgumentError, match="neither"):
        plots.plot_preference_matrix(np.ones((2, 2)))


def test_gate_weights_stacked_bars(tmp_path):
    g = np.array([[0.2, 0.5, 0.3], [0.9, 0.05, 0.05]])
    fig = plots.plot_gate_weights(g, prompts=["first prompt", "second"])
    ax = fig.axes[0]
    widths = np.array([p.get_width() for p in ax.patches]).reshape(3, 2).T
    np.testing.assert_allclose(widths, g)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["first prompt", "second"]
    _png(fig, tmp_path / "g.png")
    with pytest.raises(ShapeError, match="gates"):
        plots.plot_gate_weights(np.zeros((2, 2, 2)))


def test_decomposition_panels(tmp_path):
    r = np.array([1.0, 0.0, -1.0])
    S = RPS + r[:, None] - r[None, :]
    fig = plots.plot_decomposition(S, labels=["x", "y", "z"])
    h = hodge_decomposition(S)
    heat = [a for a in fig.axes if a.images]
    assert len(heat) == 3
    np.testing.assert_allclose(heat[1].images[0].get_array(), h.gradient)
    np.testing.assert_allclose(heat[2].images[0].get_array(), h.cyclic)
    assert {a.images[0].get_clim() for a in heat} == {(-float(np.abs(S).max()), float(np.abs(S).max()))}
    assert f"{h.cyclic_share:.1%}" in fig._suptitle.get_text()
    assert plots.plot_decomposition(h).axes  # a precomputed decomposition works too
    _png(fig, tmp_path / "d.png")
    fig_s = plots.plot_spectrum(S)
    assert len(fig_s.axes[0].patches) == 1
    _png(fig_s, tmp_path / "s.png")


def test_import_is_lazy_and_headless(tmp_path):
    code = (
        "import sys, gpmkit.eval, gpmkit.eval.plots as p, gpmkit.eval.cycles;"
        "assert 'matplotlib' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules);"
        "import numpy as np;"
        f"p.plot_preference_matrix(np.zeros((2, 2))).savefig({str(tmp_path / 'z.png')!r});"
        "import matplotlib.pyplot as plt; assert not plt.get_fignums()"
    )
    env_code = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"MPLBACKEND": ""})
    assert env_code.returncode == 0, env_code.stderr
    assert (tmp_path / "z.png").exists()


def test_spectrum_shows_the_strongest_blocks():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(40, 40))
    fig = plots.plot_spectrum(A - A.T, max_blocks=5)
    ax = fig.axes[0]
    assert len(ax.patches) == 5
    assert "15 weaker blocks" in ax.get_xlabel()
    heights = [p.get_height() for p in ax.patches]
    assert heights == sorted(heights, reverse=True)
