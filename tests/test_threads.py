"""Threads: the GIL is released while a kernel runs, the pool survives fork(), the thread count is settable."""

from __future__ import annotations

import os
import sys
import threading
import time

import gpmkit
import gpmkit.functional as F
import pytest
import torch


@pytest.fixture
def two_threads():
    gpmkit.set_num_threads(2)
    yield
    gpmkit.set_num_threads(0)


def test_set_and_get_num_threads(two_threads):
    assert gpmkit.get_num_threads() == 2
    gpmkit.set_num_threads(1)
    assert gpmkit.get_num_threads() == 1


def test_gil_is_released_during_a_kernel():
    """Another Python thread keeps running while a long kernel call is in progress."""
    v = torch.randn(64, 512, 8)
    F.preference_matrix(v)  # warm up
    t0 = time.perf_counter()
    F.preference_matrix(v)
    single = time.perf_counter() - t0
    reps = max(1, int(0.3 / max(single, 1e-4)))
    done = threading.Event()
    ticks = 0

    def worker():
        for _ in range(reps):
            F.preference_matrix(v)
        done.set()

    th = threading.Thread(target=worker)
    th.start()
    while not done.is_set():
        ticks += 1
        time.sleep(0)
    th.join()
    # With the GIL held for the whole kernel, the main thread could only run between calls (≈ reps times).
    assert ticks > 5 * reps, (ticks, reps)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_kernels_work_in_a_forked_child(two_threads):
    """A forked child (a DataLoader worker) has no pool threads; it must build its own and not hang."""
    vc, vr = torch.randn(3 * 4096 + 5, 8), torch.randn(3 * 4096 + 5, 8)
    parent = F.gpm_loss(vc, vr)  # the parent's pool exists now
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            child = F.gpm_loss(vc, vr)
            code = 0 if torch.equal(child, parent) else 2
        finally:
            os._exit(code)
    deadline = time.time() + 60
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    pytest.fail("the kernel hung in a forked child")


def test_panic_in_pool_thread_leaves_the_pool_usable(two_threads):
    with pytest.raises(gpmkit.GPMError, match="boom"):
        gpmkit._core._panic("boom", in_pool=True)
    assert F.preference_score(torch.ones(5000, 2), torch.ones(5000, 2)).abs().sum() == 0
    assert sys.modules["gpmkit"] is gpmkit
