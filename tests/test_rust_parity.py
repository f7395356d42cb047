"""Bit parity with the Rust reference (bench/rust) through the public API.

The golden files in tests/golden/ were written by the Rust port of aprender-core's QAT
module (``python tests/gen_golden.py``).  Every case replays a sequence of commands on a
fresh ``FakeQuantize`` (calibrating ``fake_quantize`` calls, ``disable_calibration``,
frozen ``forward``, ``enable_calibration``) and, in parallel, the same observations on a
standalone ``QuantObserver``; after every command the observer range, the scale, the zero
point and the output are compared bit for bit (``.view(np.uint32)``), on every kernel
target this CPU runs and with 1 and 2 threads.

Where the comparison is deliberately not bitwise:

* MEAN_STD: Rust sums in sequential float32 and drifts (~1e-4 relative on 10^6
  elements); qatcore accumulates in float64.  The range is checked against the exact
  float64 mean ± 3·std within 2e-6 (relative to the range's magnitude), Rust's range
  only within 1e-3 of qatcore's (and not at all where Rust's float32 variance overflows
  to inf, the "huge" cases), its scale within 1 % where the range is not degenerate;
  qparams and outputs are checked bitwise against the Rust
  formulas (tests/reference.py) applied to qatcore's own range.
* The sign of a zero *range end* of MIN_MAX / MOVING_AVERAGE: ``f32::min``/``f32::max``
  do not specify which zero they return, and it depends on the code generated for the
  fold (the generic build of bench/rust returns the first zero of the batch, a
  ``-C target-cpu=native`` build +0.0 in 18 golden steps); +0.0 and -0.0 are accepted
  for each other there.  The scale and zero point do not
  depend on it, and outputs are always compared bitwise.
* Inputs where qatcore is right and Rust is not (NaN/±Inf input, qparams before any
  observation, a range wider than float32, an underflowing scale) are not in the golden
  files; tests/test_differences.py covers them.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import qatcore
from qatcore import FakeQuantConfig, FakeQuantize, ObserverMethod, QuantObserver
from qatcore import _backend

import gen_golden as gg
from reference import compute_qparams_ref, fake_quantize_ref, mean_std_ref

GOLDEN, OUTPUTS = gg.load_golden()
CASES_BY_CONFIG: dict = {}
for _case in GOLDEN["cases"]:
    _key = gg.config_name(_case["bits"], _case["symmetric"], _case["observer"])
    CASES_BY_CONFIG.setdefault(_key, []).append(_case)
CONFIGS = sorted(CASES_BY_CONFIG)
TARGETS = _backend.available_targets()

MEAN_STD_TOL = 2e-6        # qatcore vs the exact float64 figure (DESIGN.md)
RUST_MEAN_STD_TOL = 1e-3   # Rust's drifting f32 sums vs qatcore


def _u32(v) -> int:
    return int(np.float32(v).view(np.uint32))


def _hex(v) -> str:
    return f"{_u32(v):08x}"


def _f32(h: str) -> np.float32:
    return np.uint32(int(h, 16)).view(np.float32)


def _is_zero(bits: int) -> bool:
    return bits & 0x7FFFFFFF == 0


def _input(step) -> np.ndarray:
    return gg.input_for(GOLDEN["inputs"][step["input"]]["spec"])


@functools.lru_cache(maxsize=None)
def _exact_mean_std(input_no):
    return mean_std_ref(gg.input_for(GOLDEN["inputs"][input_no]["spec"]))


@functools.lru_cache(maxsize=None)
def _formula_sha256(input_no, scale_hex, zp_hex, qmin, qmax):
    """SHA-256 of the Rust formula's output (reference.fake_quantize_ref) on an input,
    cached: the same big batch comes back for every target and thread count."""
    x = gg.input_for(GOLDEN["inputs"][input_no]["spec"])
    with np.errstate(over="ignore", invalid="ignore"):
        y, _ = fake_quantize_ref(x, _f32(scale_hex), _f32(zp_hex), np.float32(qmin),
                                 np.float32(qmax))
    return hashlib.sha256(np.ascontiguousarray(y).view(np.uint8)).hexdigest()


@pytest.fixture(params=TARGETS)
def target(request, monkeypatch):
    monkeypatch.setattr(_backend, "kernels", _backend.load(request.param))
    return request.param


def _needs_kernels(observer: str):
    if observer == "percentile" and not hasattr(_backend.kernels, "select_order_stats"):
        pytest.skip("percentile kernel (select_order_stats) not built yet")


# ------------------------------------------------------------------------------- checks

def _where(case, step_no, what):
    return f"{case['name']} step {step_no} ({case['steps'][step_no]['op']}): {what}"


def _check_range(case, step_no, got, step):
    """Observer range vs Rust, bitwise (a zero end of MIN_MAX / MOVING_AVERAGE may have
    either sign, see the module docstring)."""
    lenient_zero = case["observer"] in ("min_max", "moving_average")
    for name, value in zip(("min", "max"), got):
        want = int(step[name], 16)
        have = _u32(value)
        if have == want or (lenient_zero and _is_zero(have) and _is_zero(want)):
            continue
        raise AssertionError(_where(case, step_no, f"range {name}: qatcore {have:08x} "
                                    f"({np.float32(value)!r}) != Rust {want:08x} "
                                    f"({_f32(step[name])!r})"))


def _check_qparams(case, step_no, scale, zp, step):
    for name, value, key in (("scale", scale, "scale"), ("zero_point", zp, "zp")):
        have, want = _hex(value), step[key]
        assert have == want, _where(case, step_no, f"{name}: qatcore {have} "
                                    f"({np.float32(value)!r}) != Rust {want} ({_f32(want)!r})")


def _check_output(case, step_no, x, y, step):
    """Output bits vs the full golden array, or vs its SHA-256 and sampled bits."""
    y = np.ascontiguousarray(y, dtype=np.float32).reshape(-1).view(np.uint32)
    assert y.size == step["len"], _where(case, step_no, "output length")
    full = OUTPUTS.get(f"{case['name']}/{step_no}")
    if full is not None:
        bad = np.flatnonzero(y != full)
        if bad.size:
            i = int(bad[0])
            raise AssertionError(_where(case, step_no, (
                f"{bad.size} output(s) differ; first at index {i}: input "
                f"{_hex(x[i])} ({x[i]!r}), qatcore {int(y[i]):08x}, Rust {int(full[i]):08x}")))
        return
    if hashlib.sha256(y.view(np.uint8)).hexdigest() == step["sha256"]:
        return
    idx = gg.sample_indices(y.size)
    want = np.array([int(h, 16) for h in step["sample"].split()], dtype=np.uint32)
    bad = np.flatnonzero(y[idx] != want)
    if bad.size:
        i = int(idx[bad[0]])
        detail = f"sampled index {i}: qatcore {int(y[i]):08x}, Rust {int(want[bad[0]]):08x}"
    else:
        # Locate the difference with the Rust formula on Rust's own qparams.
        lo, hi = (np.float32(v) for v in gg._quant_range(case["bits"], case["symmetric"]))
        with np.errstate(over="ignore", invalid="ignore"):
            proxy, _ = fake_quantize_ref(x, _f32(step["scale"]), _f32(step["zp"]), lo, hi)
        proxy = proxy.reshape(-1).view(np.uint32)
        diff = np.flatnonzero(proxy != y)
        i = int(diff[0]) if diff.size else -1
        detail = (f"checksum differs; first difference from the Rust formula at {i}: "
                  f"qatcore {int(y[i]):08x}, formula {int(proxy[i]):08x}" if i >= 0 else
                  "checksum differs but the Rust formula agrees with qatcore")
    raise AssertionError(_where(case, step_no, f"input {_hex(x[i])}: " + detail))


class _MeanStdExpect:
    """The exact (float64) MEAN_STD range over the batches observed so far."""

    def __init__(self):
        self.lo, self.hi = np.inf, -np.inf

    def observe(self, input_no):
        mean, std = _exact_mean_std(input_no)
        self.lo = min(self.lo, mean - 3 * std)
        self.hi = max(self.hi, mean + 3 * std)

    def check(self, case, step_no, got, step):
        mag = max(abs(self.lo), abs(self.hi), np.finfo(np.float32).tiny)
        for name, have, exact in zip(("min", "max"), got, (self.lo, self.hi)):
            assert abs(have - exact) <= MEAN_STD_TOL * mag, _where(
                case, step_no, f"MEAN_STD {name} {have!r} vs exact {exact!r}")
            rust = float(_f32(step[name]))
            if not np.isfinite(rust):
                # Rust squares in float32: |x - mean| above ~1.8e19 overflows the
                # variance to inf (the "huge" cases); qatcore's float64 range is finite.
                assert np.isfinite(have)
                continue
            assert abs(rust - have) <= RUST_MEAN_STD_TOL * mag, _where(
                case, step_no, f"MEAN_STD {name}: Rust {rust!r} vs qatcore {have!r}")


def _replay(case, n_threads):
    """Run one golden case through FakeQuantize and QuantObserver and compare."""
    method = ObserverMethod(case["observer"])
    config = FakeQuantConfig(bits=case["bits"], symmetric=case["symmetric"], observer=method)
    qmin, qmax = (np.float32(v) for v in config.quant_range())
    mean_std = method is ObserverMethod.MEAN_STD
    fq = FakeQuantize(config, n_threads=n_threads)
    obs = QuantObserver(method, n_threads=n_threads)
    expect = _MeanStdExpect()
    for step_no, step in enumerate(case["steps"]):
        op = step["op"]
        x = _input(step) if "input" in step else None
        if op == "fq":
            if fq.calibrating:
                obs.observe(x)
                if mean_std:
                    expect.observe(step["input"])
            y = fq.fake_quantize(x)
        elif op == "fwd":
            y = fq.forward(x)
        elif op == "disable":
            fq.disable_calibration()
        elif op == "enable":
            fq.enable_calibration()
        else:
            raise AssertionError(f"unknown golden op {op!r}")

        got_range = fq.observer.range()
        assert _hex(obs.range()[0]) == _hex(got_range[0])
        assert _hex(obs.range()[1]) == _hex(got_range[1])
        # Every golden case observes before it freezes, so the layer's qparams are
        # always those of its observer's range (and so the standalone observer's).
        scale, zp = obs.compute_qparams(config)
        assert (_hex(scale), _hex(zp)) == (_hex(fq.scale), _hex(fq.zero_point))
        if mean_std:
            expect.check(case, step_no, got_range, step)
            ref_scale, ref_zp = compute_qparams_ref(*got_range, case["bits"], case["symmetric"])
            _check_qparams(case, step_no, fq.scale, fq.zero_point,
                           {"scale": _hex(ref_scale), "zp": _hex(ref_zp)})
            rust_scale = float(_f32(step["scale"]))
            lo, hi = got_range
            if hi - lo > 0.01 * max(abs(lo), abs(hi)) and np.isfinite(rust_scale):
                # (a constant batch has std 0 in float64 but not in Rust's drifting f32
                # sums, which then give a width above 1e-10 and a tiny scale)
                assert abs(rust_scale - fq.scale) <= 0.01 * fq.scale, _where(
                    case, step_no, f"Rust scale {rust_scale!r} vs qatcore {fq.scale!r}")
            if x is not None:
                have = hashlib.sha256(y.view(np.uint8)).hexdigest()
                if have == _formula_sha256(step["input"], _hex(fq.scale), _hex(fq.zero_point),
                                           float(qmin), float(qmax)):
                    continue
                with np.errstate(over="ignore", invalid="ignore"):
                    want, _ = fake_quantize_ref(x, fq.scale, fq.zero_point, qmin, qmax)
                bad = np.flatnonzero(want.view(np.uint32) != y.view(np.uint32))
                assert bad.size == 0, _where(case, step_no, (
                    f"output at {bad[:1]}: qatcore {y[bad[:1]].view(np.uint32)} != "
                    f"formula {want[bad[:1]].view(np.uint32)}"))
        else:
            _check_range(case, step_no, got_range, step)
            _check_qparams(case, step_no, fq.scale, fq.zero_point, step)
            if x is not None:
                _check_output(case, step_no, x, y, step)


# -------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("n_threads", [1, 2], ids=["t1", "t2"])
@pytest.mark.parametrize("config", CONFIGS)
def test_fake_quantize_matches_rust(config, n_threads, target):
    _needs_kernels(CASES_BY_CONFIG[config][0]["observer"])
    for case in CASES_BY_CONFIG[config]:
        _replay(case, n_threads)


def test_inputs_rebuild_bit_for_bit():
    """The generator rebuilds exactly the inputs the golden files were made from."""
    bad = [i for i, item in enumerate(GOLDEN["inputs"])
           if gg.sha256_bits(gg.input_for(item["spec"])) != item["sha256"]]
    assert not bad, f"inputs {bad[:5]} rebuild differently: {GOLDEN['inputs'][bad[0]]['spec']}"


def test_golden_coverage():
    """The golden files hold what the parity contract needs."""
    sizes = {item["spec"]["n"] for item in GOLDEN["inputs"]}
    assert {1, 999, 1000, 1001}.issubset(sizes) and max(sizes) > 10**6
    configs = {(c["bits"], c["symmetric"], c["observer"]) for c in GOLDEN["cases"]}
    for observer in gg.OBSERVERS:
        for symmetric in (True, False):
            for bits in gg.BITS:
                assert (bits, symmetric, observer) in configs
    kinds = {item["spec"]["kind"] for item in GOLDEN["inputs"]}
    assert {"ties", "positive", "huge", "probe", "zeros", "const"}.issubset(kinds)
    total = sum(p.stat().st_size for p in gg.GOLDEN.iterdir())
    assert total < 5_000_000


def test_ties_are_ties():
    """The tie inputs really sit at k + 0.5 after the division (guards the generator)."""
    case = next(c for c in GOLDEN["cases"] if c["name"] == "min_max-asym-8b/ties")
    step = case["steps"][0]
    x = _input(step)
    v = x / _f32(step["scale"]) + _f32(step["zp"])
    frac = np.abs(v - np.trunc(v))
    assert np.count_nonzero(frac == np.float32(0.5)) > 0.9 * x.size


@pytest.fixture(scope="module")
def rust_binary(tmp_path_factory):
    """The Rust reference built offline into a temporary target dir (~3 s)."""
    if shutil.which("cargo") is None:
        pytest.skip("cargo not on PATH")
    if os.environ.get("QATCORE_SKIP_CARGO") == "1":
        pytest.skip("QATCORE_SKIP_CARGO=1")
    return gg.build_crate(tmp_path_factory.mktemp("cargo-target"))


def test_golden_files_match_live_rust(rust_binary, tmp_path):
    """Regenerate the golden data live (~10 s): the committed files must be exactly what
    the Rust code computes today (up to the unspecified sign of a zero min/max)."""
    golden, outputs = gg.run_rust(rust_binary, tmp_path / "work")
    assert golden["inputs"] == GOLDEN["inputs"]
    committed = gg.zero_sign_insensitive(GOLDEN)
    for got, want in zip(gg.zero_sign_insensitive(golden)["cases"], committed["cases"]):
        assert got == want, f"case {want['name']} differs from the live Rust output"
    assert len(golden["cases"]) == len(GOLDEN["cases"])
    assert outputs.keys() == OUTPUTS.keys()
    for key, arr in outputs.items():
        assert np.array_equal(arr, OUTPUTS[key]), key


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_rust_linear_mode_is_the_design(rust_binary, tmp_path, symmetric, with_bias):
    """`qatcore-ref linear` (used for the GEMM parity tests) does what DESIGN.md says the
    Rust QuantizedLinear does: scale max|w|/qmax with qmax from the config, weights
    round-half-away clamped to ±127, bias at the weight scale only, raw int32 sums."""
    import json
    import subprocess

    from reference import round_half_away_ref

    u = gg.uniform(99, 7 * 5 + 5 + 3 * 7 + 1)
    w = ((u[:35] - 0.5) * 4).astype(np.float32)
    b = ((u[35:40] - 0.5) * 9).astype(np.float32)
    x = (np.floor(u[40:61] * 255) - 127).astype(np.int8).reshape(3, 7)
    extra = np.int8(5)                              # a ragged tail Rust silently drops
    w.tofile(tmp_path / "w.f32")
    b.tofile(tmp_path / "b.f32")
    np.r_[x.ravel(), extra].astype(np.int8).tofile(tmp_path / "x.i8")
    prefix = tmp_path / "lin"
    subprocess.run([str(rust_binary), "linear", str(tmp_path / "w.f32"),
                    str(tmp_path / "b.f32") if with_bias else "-", "7", "5", "8",
                    "1" if symmetric else "0", str(tmp_path / "x.i8"), "0.25", str(prefix)],
                   check=True)
    meta = json.loads((tmp_path / "lin.json").read_text())
    qmax = np.float32(127 if symmetric else 255)
    scale = np.abs(w).max() / qmax
    assert meta["weight_scale"] == _hex(scale)
    assert meta["output_scale"] == _hex(scale * np.float32(0.25))
    wq = np.fromfile(tmp_path / "lin.wq", dtype=np.int8).reshape(5, 7)
    np.testing.assert_array_equal(wq, np.clip(round_half_away_ref(w / scale), -127, 127)
                                  .reshape(5, 7))
    acc = np.fromfile(tmp_path / "lin.acc", dtype="<i4").reshape(meta["batch"], 5)
    want = x.astype(np.int32) @ wq.T.astype(np.int32)
    if with_bias:
        bq = np.fromfile(tmp_path / "lin.bq", dtype="<i4")
        np.testing.assert_array_equal(bq, round_half_away_ref(b / scale).astype(np.int32))
        want = want + bq
    else:
        assert not (tmp_path / "lin.bq").exists()
    np.testing.assert_array_equal(acc, want)
