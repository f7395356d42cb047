"""Shared fixtures: every test that takes `target` runs once per CPU target this machine
can execute (baseline, avx2, avx512 — whichever were built and are supported)."""

import os

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


# Integration tests skip cleanly where their package is missing, except in CI: .ci/run
# sets QATCORE_REQUIRE_INTEGRATIONS=1 after installing every integration, and then a test
# skipped because an import failed (pytest.importorskip) is reported as a failure.
_REQUIRE_INTEGRATIONS = os.environ.get("QATCORE_REQUIRE_INTEGRATIONS", "") not in ("", "0")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if _REQUIRE_INTEGRATIONS and report.skipped:
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if "could not import" in reason:
            report.outcome = "failed"
            report.longrepr = f"integration test skipped in CI (QATCORE_REQUIRE_INTEGRATIONS=1): {reason}"
