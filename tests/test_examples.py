"""The README's training quickstart (examples/quickstart.py) runs as written, alone and under torchrun (2 CPU procs)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from _helpers import save_tiny_llama

pytestmark = pytest.mark.slow
pytest.importorskip("trl")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory) -> Path:
    """A tiny random Llama causal LM with an in-process BPE tokenizer (ChatML template), saved like a hub model."""
    corpus = ["Name a fruit colour city tree.", "Gladly! A fruit: here is one.", "No. Apple.", "user assistant"] * 20
    return Path(save_tiny_llama(tmp_path_factory.mktemp("backbone"), corpus))


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def _check(proc: subprocess.CompletedProcess, out: Path) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("tensor(") == 1, proc.stdout  # printed once, by the main process
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()


def test_quickstart_runs(backbone_dir, tmp_path):
    out = tmp_path / "gpm"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), str(backbone_dir), str(out)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    _check(proc, out)


def test_quickstart_runs_under_torchrun(backbone_dir, tmp_path):
    out = tmp_path / "gpm"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(port), str(EXAMPLE), str(backbone_dir), str(out),
    ]  # fmt: skip
    _check(subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300), out)
