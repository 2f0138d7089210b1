"""The built wheel works where users get it: a fresh virtual environment, away from the source tree.

Builds the abi3 wheel into dist/ (unless ``make wheel`` already did), installs it with torch into a new
venv under a temporary directory, and runs a smoke script there from a directory that has no ``python/``
folder on its path, so only the installed package can be imported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

SMOKE = textwrap.dedent(
    """
    import sys
    import gpmkit
    assert "torch" not in sys.modules, "import gpmkit must not import torch"
    assert "site-packages" in gpmkit.__file__, gpmkit.__file__
    import torch, gpmkit.functional as F
    from gpmkit import _reference as R
    from gpmkit.exceptions import ShapeError
    torch.manual_seed(0)
    vc = torch.randn(37, 8, dtype=torch.float64, requires_grad=True)
    vr = torch.randn(37, 8, dtype=torch.float64)
    gate = torch.softmax(torch.randn(37, 4, dtype=torch.float64), -1)
    loss = F.gpm_loss(vc, vr, gate)
    loss.backward()
    want = R.gpm_loss(vc, vr, gate)
    assert abs(loss.item() - want.item()) < 1e-12, (loss.item(), want.item())
    assert gpmkit.ops.active_impl("gpm_loss", "cpu") == "rust"
    m = F.preference_matrix(torch.randn(2, 5, 4))
    assert torch.equal(m, -m.transpose(-1, -2))
    try:
        F.preference_score(torch.randn(3, 5), torch.randn(3, 5))
    except ShapeError as e:
        assert "v_i" in str(e)
    else:
        raise AssertionError("odd width accepted")
    print("OK", gpmkit.__version__, gpmkit.__file__)
    """
)


def _wheel() -> Path:
    wheels = sorted((ROOT / "dist").glob("gpmkit-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels or os.environ.get("GPMKIT_REBUILD_WHEEL"):
        subprocess.run([str(VENV_BIN / "maturin"), "build", "--release", "-q", "--out", "dist"], cwd=ROOT, check=True)
        wheels = sorted((ROOT / "dist").glob("gpmkit-*.whl"), key=lambda p: p.stat().st_mtime)
    return wheels[-1]


@pytest.mark.slow
def test_wheel_installs_and_runs_in_a_fresh_venv(tmp_path):
    uv = shutil.which("uv", path=str(VENV_BIN)) or shutil.which("uv")
    if uv is None:
        pytest.fail("uv is needed to build the test venv (make setup installs it)")
    wheel = _wheel()
    assert "abi3" in wheel.name, wheel.name
    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([uv, "venv", "-q", "--python", base, str(venv)], check=True)
    py = venv / "bin" / "python"
    torch_pin = next(
        line for line in (ROOT / "requirements-dev.txt").read_text().splitlines() if line.startswith("torch==")
    )
    subprocess.run([uv, "pip", "install", "-q", "--python", str(py), str(wheel), torch_pin], check=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    out = subprocess.run([str(py), "-c", SMOKE], cwd=work, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("OK"), out.stdout
