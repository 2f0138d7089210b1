"""Shared pytest configuration: offline mode, a quiet thread setup and the hypothesis profile."""

from __future__ import annotations

import os

# Nothing in the test suite may touch the network (DESIGN §5).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import gpmkit
import pytest
import torch
from hypothesis import HealthCheck, settings

# Property tests stay small so the whole file runs in a few seconds; `HYPOTHESIS_PROFILE=thorough`
# runs many more examples.
settings.register_profile(
    "gpmkit", deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile("thorough", deadline=None, max_examples=500, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "gpmkit"))

# Two cores are shared with other work: torch stays single-threaded unless the caller asks otherwise.
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _default_impl(monkeypatch):
    """Every test starts with the default dispatch (no GPMKIT_IMPL) and a fixed seed."""
    monkeypatch.delenv("GPMKIT_IMPL", raising=False)
    torch.manual_seed(0)


@pytest.fixture
def restore_threads():
    """Tests that change the kernels' thread count get the default (0 = automatic) back afterwards."""
    try:
        yield
    finally:
        gpmkit.set_num_threads(0)
