"""Smoke test of the int8 GEMM benchmark (tiny shapes, no timing asserts)."""

import numpy as np

from qatcore.bench import gemm as _bench_gemm


def test_run_records_shape():
    recs = _bench_gemm.run(quick=True, threads=(1, 2), repeat=2, shapes=[(3, 17, 5)],
                           peers=False)
    assert [(r["threads"], r["impl"]) for r in recs] == [(1, "qatcore"), (2, "qatcore")]
    for r in recs:
        assert r["op"] == "linear" and r["shape"] == "(3,17,5)"
        assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"]
        assert np.isfinite(r["gops"]) and r["gops"] > 0


def test_run_accepts_int_threads():
    recs = _bench_gemm.run(True, 1, 1, shapes=[(1, 8, 8)], peers=False)
    assert len(recs) == 1 and recs[0]["threads"] == 1


def test_peak_probe():
    peak = _bench_gemm.measure_peak(repeat=2)
    assert peak["gops"] > 0 and peak["impl"]
