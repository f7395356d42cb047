"""Shared fixtures: every test that takes `target` runs once per CPU target this machine
can execute (baseline, avx2, avx512 — whichever were built and are supported)."""

import numpy as np
import pytest

from qatcore import _backend

TARGETS = _backend.available_targets()


@pytest.fixture(params=TARGETS)
def target(request, monkeypatch):
    """Route every qatcore call in the test through one kernel target."""
    monkeypatch.setattr(_backend, "kernels", _backend.load(request.param))
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def bits_of(a):
    """float32 bit patterns, for bit-exact comparisons (NaN payloads included)."""
    return np.asarray(a, dtype=np.float32).view(np.uint32)
