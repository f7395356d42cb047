"""QuantizedLinear and the int8 GEMM / requantization kernels against the oracles in
reference.py (numpy int64 GEMM, plain-Python gemmlowp/TFLite integer formulas) and the
Rust reference crate."""

import json
import math
import os
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qatcore
from qatcore import FakeQuantConfig, FakeQuantize, QuantizedLinear, _backend
from qatcore.linear import MAX_IN_FEATURES, quantize_multiplier
from reference import (
    INT32_MAX,
    INT32_MIN,
    gemm_ref,
    multiply_by_quantized_multiplier_ref,
    quantize_multiplier_ref,
    tflite_real_multiplier_ref,
    requantize_ref,
    round_half_away_ref,
)

F32 = np.float32


def _codes(rng, shape, lo=-128, hi=127):
    return rng.integers(lo, hi + 1, size=shape, dtype=np.int64).astype(np.int8)


def _weights(rng, out_f, in_f):
    return rng.standard_normal((out_f, in_f)).astype(np.float32)


# ---------------------------------------------------------------------------- kernels

GEMM_SHAPES = [
    (0, 5, 3), (1, 1, 1), (1, 7, 5), (3, 16, 16), (3, 17, 15), (5, 2, 33), (7, 33, 17),
    (13, 64, 100), (1, 1024, 40), (6, 1030, 16), (2, 2049, 18), (97, 31, 29),
]


@pytest.mark.parametrize("m,k,n", GEMM_SHAPES, ids=[f"{m}x{k}x{n}" for m, k, n in GEMM_SHAPES])
@pytest.mark.parametrize("n_threads", [1, 2], ids=["t1", "t2"])
def test_gemm_kernel_matches_int64(target, rng, m, k, n, n_threads):
    kern = _backend.kernels
    x = _codes(rng, (m, k))
    w = _codes(rng, (n, k), -127, 127)
    packed = np.empty(kern.packed_size(n, k), np.int8)
    kern.pack_weights(w, packed)
    wsum = w.astype(np.int64).sum(axis=1).astype(np.int32)
    off = rng.integers(-10**6, 10**6, size=n).astype(np.int32)
    out = np.full((m, n), 7, np.int32)
    assert kern.gemm_i8_i32(x, packed, n, wsum, off, out, n_threads) == 0
    np.testing.assert_array_equal(out, gemm_ref(x, w, off))
    out2 = np.empty((m, n), np.int32)
    assert kern.gemm_i8_i32(x, packed, n, wsum, None, out2, n_threads) == 0
    np.testing.assert_array_equal(out2, gemm_ref(x, w))


@pytest.mark.parametrize("m,k,n", [(200, 300, 100), (5, 512, 600)], ids=["rows", "panels"])
def test_gemm_threaded_split(target, rng, m, k, n):
    """Big enough for OpenMP: rows split across threads, or column panels for few rows."""
    kern = _backend.kernels
    x, w = _codes(rng, (m, k)), _codes(rng, (n, k), -127, 127)
    packed = np.empty(kern.packed_size(n, k), np.int8)
    kern.pack_weights(w, packed)
    wsum = w.astype(np.int64).sum(axis=1).astype(np.int32)
    outs = []
    for nt in (1, 2, 3):
        out = np.empty((m, n), np.int32)
        assert kern.gemm_i8_i32(x, packed, n, wsum, None, out, nt) == 0
        outs.append(out)
    np.testing.assert_array_equal(outs[0], gemm_ref(x, w))
    np.testing.assert_array_equal(outs[1], outs[0])
    np.testing.assert_array_equal(outs[2], outs[0])


def test_gemm_extremes_at_max_k(target):
    """-128 x -127 over K = MAX_IN_FEATURES: the largest sum that must stay exact."""
    kern = _backend.kernels
    k, n = MAX_IN_FEATURES, 17
    assert kern.GEMM_MAX_K == k and 128 * 127 * k <= INT32_MAX < 128 * 127 * (k + 1)
    x = np.full((2, k), -128, np.int8)
    x[1] = 127
    w = np.full((n, k), -127, np.int8)
    w[1::2] = 127
    packed = np.empty(kern.packed_size(n, k), np.int8)
    kern.pack_weights(w, packed)
    wsum = w.astype(np.int64).sum(axis=1).astype(np.int32)
    out = np.empty((2, n), np.int32)
    kern.gemm_i8_i32(x, packed, n, wsum, None, out, 1)
    np.testing.assert_array_equal(out, gemm_ref(x, w))
    assert out[0, 0] == 128 * 127 * k


def test_kernel_names():
    for name in _backend.available_targets():
        kern = _backend.load(name)
        assert kern.GEMM_LAYOUT and kern.GEMM_IMPL
    assert _backend.load("baseline").GEMM_IMPL in ("sse2-pmaddwd", "portable-c")


# ---------------------------------------------------------------- requantization oracles

@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=1e-12, max_value=1e12, allow_nan=False))
def test_quantize_multiplier_matches_tflite(real):
    mult, shift = quantize_multiplier([real])
    assert (int(mult[0]), int(shift[0])) == quantize_multiplier_ref(real)
    if 2.0 ** -31 <= real < 2.0 ** 30:
        assert 1 << 30 <= mult[0] <= INT32_MAX
        assert math.isclose(mult[0] * 2.0 ** (int(shift[0]) - 31), real, rel_tol=2.0 ** -30)


def test_quantize_multiplier_edges():
    cases = [0.0, 1e-40, 2.0 ** -32, 2.0 ** -31, 0.5, 1.0, 1 - 2.0 ** -40, 2.0 ** 31, 1e300]
    mult, shift = quantize_multiplier(cases)
    for real, m, s in zip(cases, mult, shift):
        assert (int(m), int(s)) == quantize_multiplier_ref(real), real


_i32 = st.integers(INT32_MIN, INT32_MAX)


@pytest.mark.parametrize("tname", _backend.available_targets())
@settings(max_examples=200, deadline=None)
@given(st.lists(_i32, min_size=1, max_size=12),
       st.lists(st.tuples(_i32, st.integers(-31, 30)), min_size=1, max_size=21),
       st.integers(-300, 300))
def test_requantize_kernel_matches_gemmlowp(tname, accs, params, zp):
    """Scalar tail and 8-wide SIMD body against the plain-Python gemmlowp formulas, with
    the extreme accumulators and multipliers in every call."""
    params = params + [(INT32_MIN, 0), (INT32_MIN, -31), (INT32_MAX, 30), (1 << 30, -1),
                       (0, 0), (1, 30), (-1, 5)]
    mults = np.array([p[0] for p in params], np.int32)
    shifts = np.array([p[1] for p in params], np.int32)
    col = np.array(accs + [INT32_MIN, INT32_MAX, 0, -1, 1, 3, -3], dtype=np.int32)
    acc = np.resize(col, (len(col), len(params)))
    acc = np.ascontiguousarray(np.roll(acc, 1, axis=0))
    out = np.empty(acc.shape, np.int8)
    _backend.load(tname).requantize_fixed_point(acc, mults, shifts, zp, -128, 127, out, 1)
    np.testing.assert_array_equal(out, requantize_ref(acc, mults, shifts, zp))
    out7 = np.empty(acc.shape, np.int8)                       # a narrower output range
    _backend.load(tname).requantize_fixed_point(acc, mults, shifts, zp, -7, 100, out7, 1)
    np.testing.assert_array_equal(out7, requantize_ref(acc, mults, shifts, zp, -7, 100))


def test_requantize_known_values():
    # 0.5 as Q31 (2^30, shift 0): gemmlowp's SaturatingRoundingDoublingHighMul rounds
    # ties up (-1.5 -> -1); RoundingDivideByPOT rounds them away from zero.
    vals = [3, -3, 5, -5, 1, -1, 254, -254]
    got = [multiply_by_quantized_multiplier_ref(v, 1 << 30, 0) for v in vals]
    assert got == [2, -1, 3, -2, 1, 0, 127, -127]
    # 0.25 = 2^30 · 2^-1 · 2^-31: the shift does the tie (x = ±6 -> ±1.5 -> ±2).
    got = [multiply_by_quantized_multiplier_ref(v, 1 << 30, -1) for v in [6, -6, 2, -2]]
    assert got == [2, -2, 1, -1]


def test_requantize_threads(target, rng):
    acc = rng.integers(-10**7, 10**7, size=(300, 1000)).astype(np.int32)
    mult, shift = quantize_multiplier(rng.uniform(1e-6, 1e-3, size=1000))
    outs = []
    for nt in (1, 2):
        out = np.empty(acc.shape, np.int8)
        _backend.kernels.requantize_fixed_point(acc, mult, shift, 3, -128, 127, out, nt)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0][:4, :50], requantize_ref(acc[:4, :50], mult, shift, 3))


# ---------------------------------------------------------------- Rust-compatible layer

def _rust_from_float(w, b, bits=8):
    """DESIGN.md's from_float (qatcore's symmetric qmax) in numpy float32."""
    qmax = F32((1 << (bits - 1)) - 1)
    max_abs = np.abs(w).max(initial=F32(0))
    scale = max_abs / qmax if max_abs > 0 else F32(1)
    wq = np.clip(round_half_away_ref(w / scale), -qmax, qmax).astype(np.int8)
    bq = None if b is None else round_half_away_ref(b / scale).astype(np.int32)
    return F32(scale), wq, bq


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("flat", [False, True], ids=["2d", "flat"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_from_float_matches_rust_formulas(target, rng, bits, flat, with_bias):
    out_f, in_f = 9, 21
    w = _weights(rng, out_f, in_f)
    b = (rng.standard_normal(out_f) * 3).astype(np.float32) if with_bias else None
    layer = QuantizedLinear.from_float(w.ravel() if flat else w, b, in_f, out_f,
                                       FakeQuantConfig(bits=bits))
    scale, wq, bq = _rust_from_float(w, b, bits)
    assert F32(layer.weight_scale).view(np.uint32) == scale.view(np.uint32)
    assert layer.input_scale == 1.0 and layer.output_scale == layer.weight_scale
    np.testing.assert_array_equal(layer.weights_q, wq)
    assert layer.weights_q.shape == (out_f, in_f) and layer.weights_q.dtype == np.int8
    if with_bias:
        assert layer.bias_q.dtype == np.int32
        np.testing.assert_array_equal(layer.bias_q, bq)
    else:
        assert layer.bias_q is None
    x = _codes(rng, (5, in_f))
    got = layer.forward_quantized(x)
    assert got.dtype == np.int32 and got.shape == (5, out_f)
    np.testing.assert_array_equal(got, gemm_ref(x, wq, bq))
    np.testing.assert_array_equal(layer.forward_quantized(x.ravel()), got)
    assert layer.in_features == in_f and layer.out_features == out_f


def test_zero_weights_scale_one():
    layer = QuantizedLinear.from_float(np.zeros((3, 4)), [1.0, -2.0, 0.5], 4, 3)
    assert layer.weight_scale == 1.0
    np.testing.assert_array_equal(layer.bias_q, [1, -2, 1])


@pytest.mark.parametrize("m", [0, 1, 3, 64], ids=lambda m: f"m{m}")
@pytest.mark.parametrize("n_threads", [1, 2], ids=["t1", "t2"])
def test_forward_quantized_batches(target, rng, m, n_threads):
    in_f, out_f = 37, 50
    layer = QuantizedLinear.from_float(_weights(rng, out_f, in_f), rng.standard_normal(out_f),
                                       in_f, out_f, n_threads=n_threads)
    x = _codes(rng, (m, in_f))
    got = layer.forward_quantized(x)
    assert got.shape == (m, out_f)
    np.testing.assert_array_equal(got, gemm_ref(x, layer.weights_q, layer.bias_q))


def test_forward_quantized_layouts(rng):
    layer = QuantizedLinear.from_float(_weights(rng, 6, 8), None, 8, 6)
    big = _codes(rng, (5, 16))
    x = big[:, ::2]                                  # non-contiguous
    want = gemm_ref(x, layer.weights_q)
    np.testing.assert_array_equal(layer.forward_quantized(x), want)
    ro = np.ascontiguousarray(x)
    ro.flags.writeable = False
    np.testing.assert_array_equal(layer.forward_quantized(ro), want)
    before = big.copy()
    layer.forward_quantized(big[:, ::2])
    np.testing.assert_array_equal(big, before)      # input untouched


def test_layer_works_across_targets(rng):
    """Packed weights are per layout: one layer, every target, same answer."""
    layer = QuantizedLinear.from_float(_weights(rng, 19, 45), rng.standard_normal(19), 45, 19)
    x = _codes(rng, (7, 45))
    want = gemm_ref(x, layer.weights_q, layer.bias_q)
    saved = _backend.kernels
    try:
        for name in _backend.available_targets():
            _backend.kernels = _backend.load(name)
            np.testing.assert_array_equal(layer.forward_quantized(x), want)
    finally:
        _backend.kernels = saved


@pytest.fixture(scope="module")
def rust_binary(tmp_path_factory):
    if shutil.which("cargo") is None or os.environ.get("QATCORE_SKIP_CARGO") == "1":
        pytest.skip("cargo not available")
    import gen_golden as gg

    return gg.build_crate(tmp_path_factory.mktemp("cargo-target-linear"))


@pytest.mark.parametrize("shape", [(3, 7, 5), (4, 33, 17), (1, 130, 3)],
                         ids=lambda s: "x".join(map(str, s)))
def test_matches_rust_crate(rust_binary, tmp_path, rng, shape):
    """Bit-exact with the Rust QuantizedLinear (from_float + forward_quantized)."""
    m, in_f, out_f = shape
    w = (rng.standard_normal(in_f * out_f) * 2).astype(np.float32)
    b = (rng.standard_normal(out_f) * 5).astype(np.float32)
    x = _codes(rng, (m, in_f))
    w.tofile(tmp_path / "w.f32")
    b.tofile(tmp_path / "b.f32")
    x.tofile(tmp_path / "x.i8")
    prefix = tmp_path / "lin"
    subprocess.run([str(rust_binary), "linear", str(tmp_path / "w.f32"), str(tmp_path / "b.f32"),
                    str(in_f), str(out_f), "8", "1", str(tmp_path / "x.i8"), "0.25", str(prefix)],
                   check=True)
    meta = json.loads((tmp_path / "lin.json").read_text())
    layer = QuantizedLinear.from_float(w, b, in_f, out_f, FakeQuantConfig.int8())
    assert meta["weight_scale"] == f"{F32(layer.weight_scale).view(np.uint32):08x}"
    np.testing.assert_array_equal(layer.weights_q.ravel(),
                                  np.fromfile(tmp_path / "lin.wq", dtype=np.int8))
    np.testing.assert_array_equal(layer.bias_q, np.fromfile(tmp_path / "lin.bq", dtype="<i4"))
    acc = np.fromfile(tmp_path / "lin.acc", dtype="<i4").reshape(m, out_f)
    np.testing.assert_array_equal(layer.forward_quantized(x), acc)
    layer.set_input_scale(0.25)
    assert meta["output_scale"] == f"{F32(layer.output_scale).view(np.uint32):08x}"


# ---------------------------------------------------------------- beyond Rust

def test_per_channel_scales(target, rng):
    w = _weights(rng, 8, 30) * np.linspace(0.01, 10, 8, dtype=np.float32)[:, None]
    w[3] = 0
    layer = QuantizedLinear.from_float(w, None, 30, 8, per_channel=True)
    ws = np.asarray(layer.weight_scale)
    assert ws.dtype == np.float32 and ws.shape == (8,)
    max_abs = np.abs(w).max(axis=1)
    want = np.where(max_abs > 0, max_abs / F32(127), F32(1)).astype(np.float32)
    np.testing.assert_array_equal(ws.view(np.uint32), want.view(np.uint32))
    wq = np.clip(round_half_away_ref(w / want[:, None]), -127, 127)
    np.testing.assert_array_equal(layer.weights_q, wq)
    assert (np.abs(layer.weights_q).max(axis=1)[np.arange(8) != 3] == 127).all()
    x = _codes(rng, (4, 30))
    np.testing.assert_array_equal(layer.forward_quantized(x), gemm_ref(x, layer.weights_q))


def test_set_input_scale_requantizes_bias(rng):
    b = np.array([0.3, -1.7, 2.5], np.float32)
    layer = QuantizedLinear.from_float(_weights(rng, 3, 4), b, 4, 3)
    layer.set_input_scale(0.01)
    denom = F32(F32(0.01) * F32(layer.weight_scale))
    np.testing.assert_array_equal(layer.bias_q, round_half_away_ref(b / denom).astype(np.int32))
    assert F32(layer.output_scale) == denom


@pytest.mark.parametrize("per_channel", [False, True], ids=["tensor", "channel"])
@pytest.mark.parametrize("zp", [0, -7], ids=["zp0", "zp-7"])
def test_forward_float_within_one_lsb(target, rng, per_channel, zp):
    in_f, out_f = 48, 20
    w = _weights(rng, out_f, in_f)
    b = rng.standard_normal(out_f).astype(np.float32)
    layer = QuantizedLinear.from_float(w, b, in_f, out_f, per_channel=per_channel)
    layer.set_input_scale(0.05, zero_point=zp)
    x = (rng.standard_normal((6, in_f)) * 1.2).astype(np.float32)
    y = layer.forward(x)
    assert y.dtype == np.float32 and y.shape == (6, out_f)
    xq = np.clip(round_half_away_ref(x / F32(0.05) + F32(zp)), -128, 127)
    x_real = (xq.astype(np.float64) - zp) * float(F32(0.05))
    w_real = layer.weights_q.astype(np.float64) * np.asarray(layer.weight_scale,
                                                             np.float64).reshape(-1, 1)
    ref = x_real @ w_real.T + b
    lsb = np.asarray(layer.output_scale, np.float64)
    assert (np.abs(y - ref) <= lsb).all()
    assert np.abs(y - (x @ w.T + b)).max() < 0.5         # and near the float layer
    np.testing.assert_array_equal(layer(x.ravel()), y)


def test_forward_float_edge_inputs(rng):
    layer = QuantizedLinear.from_float(_weights(rng, 3, 4), None, 4, 3)
    layer.set_input_scale(0.1)
    y = layer.forward(np.array([[np.inf, -np.inf, 0, 1]], np.float64))
    assert np.isfinite(y).all()
    assert layer.forward(np.zeros((0, 4), np.float32)).shape == (0, 3)
    with pytest.raises(ValueError, match="NaN"):
        layer.forward(np.array([[0, np.nan, 0, 0]], np.float32))


def _int8_oracle(layer, x, out_scale, out_zp, qrange=(-128, 127)):
    pairs = [quantize_multiplier_ref(r) for r in
             tflite_real_multiplier_ref(layer.weight_scale, layer.input_scale, out_scale,
                                        layer.out_features)]
    mult = np.array([p[0] for p in pairs], np.int64)
    shift = np.array([p[1] for p in pairs], np.int64)
    wsum = layer.weights_q.astype(np.int64).sum(axis=1)
    off = -layer.input_zero_point * wsum
    if layer.bias_q is not None:
        off = off + layer.bias_q
    acc = gemm_ref(x, layer.weights_q, off)
    return requantize_ref(acc, mult, shift, out_zp, *qrange)


@pytest.mark.parametrize("per_channel", [False, True], ids=["tensor", "channel"])
@pytest.mark.parametrize("zps", [(0, 0), (5, -3), (-128, 127)], ids=["zp0", "zp5-3", "zpext"])
@pytest.mark.parametrize("m", [0, 1, 3, 20], ids=lambda m: f"m{m}")
def test_forward_int8_bit_exact(target, rng, per_channel, zps, m):
    in_f, out_f = 45, 19
    w = _weights(rng, out_f, in_f) * F32(0.1)
    b = rng.standard_normal(out_f).astype(np.float32)
    layer = QuantizedLinear.from_float(w, b, in_f, out_f, per_channel=per_channel)
    layer.set_input_scale(0.03, zero_point=zps[0])
    x = _codes(rng, (m, in_f))
    for out_scale in (0.05, 0.004, 3.0):
        got = layer.forward_int8(x, out_scale, zps[1])
        assert got.dtype == np.int8 and got.shape == (m, out_f)
        np.testing.assert_array_equal(got, _int8_oracle(layer, x, out_scale, zps[1]))


def test_forward_int8_threads(rng):
    layer = QuantizedLinear.from_float(_weights(rng, 300, 200), rng.standard_normal(300), 200,
                                       300)
    layer.set_input_scale(0.05, zero_point=3)
    x = _codes(rng, (500, 200))
    one = layer.forward_int8(x, 0.5, 1)
    layer.n_threads = 2
    np.testing.assert_array_equal(layer.forward_int8(x, 0.5, 1), one)
    np.testing.assert_array_equal(one[:3], _int8_oracle(layer, x[:3], 0.5, 1))


def _fq(config, data):
    fq = FakeQuantize(config)
    fq.fake_quantize(np.asarray(data, np.float32))
    fq.disable_calibration()
    return fq


@pytest.mark.parametrize("asym", [False, True], ids=["sym", "asym"])
def test_from_qat(target, rng, asym):
    w = _weights(rng, 12, 20)
    b = rng.standard_normal(12).astype(np.float32)
    x = (rng.standard_normal((9, 20)) + (1.0 if asym else 0.0)).astype(np.float32)
    wfq = _fq(FakeQuantConfig.int8(), w)
    xfq = _fq(FakeQuantConfig(bits=8, symmetric=not asym), x)
    yfq = _fq(FakeQuantConfig(bits=8, symmetric=not asym), x @ w.T + b)
    layer = QuantizedLinear.from_qat(w, b, wfq, xfq, yfq)
    # The codes dequantize to exactly what the trained fake quantizer produced.
    np.testing.assert_array_equal(
        (layer.weights_q.astype(np.float32) * F32(wfq.scale)).view(np.uint32),
        wfq.forward(w).view(np.uint32))
    assert layer.input_scale == xfq.scale
    y = layer.forward(x)
    ref = xfq.forward(x).astype(np.float64) @ wfq.forward(w).T.astype(np.float64) + b
    assert np.abs(y - ref).max() <= layer.output_scale
    # Integer-only with the stored output quantizer = explicit arguments.
    xq = _codes(rng, (4, 20), -128 if not asym else -128, 127)
    ozp = 0 if not asym else int(round_half_away_ref(F32(yfq.zero_point))) - 128
    got = layer.forward_int8(xq)
    qmin, qmax = (-127, 127) if not asym else (-128, 127)
    np.testing.assert_array_equal(got, _int8_oracle(layer, xq, yfq.scale, ozp, (qmin, qmax)))
    if asym:
        assert layer.input_zero_point == int(round_half_away_ref(F32(xfq.zero_point))) - 128


def test_from_qat_bad(rng):
    w = _weights(rng, 3, 4)
    good = _fq(FakeQuantConfig.int8(), w)
    with pytest.raises(TypeError, match="weight_fake_quant"):
        QuantizedLinear.from_qat(w, None, object(), good)
    with pytest.raises(TypeError, match="input_fake_quant"):
        QuantizedLinear.from_qat(w, None, good, 1.0)
    with pytest.raises(ValueError, match="weight_fake_quant must be symmetric"):
        QuantizedLinear.from_qat(w, None, _fq(FakeQuantConfig(symmetric=False), w), good)
    with pytest.raises(ValueError, match="bits"):
        QuantizedLinear.from_qat(w, None, good, _fq(FakeQuantConfig(bits=12), w))
    with pytest.raises(ValueError, match="weight must be 2-D"):
        QuantizedLinear.from_qat(w.ravel(), None, good, good)
    with pytest.raises(ValueError, match="output_scale is required"):
        QuantizedLinear.from_qat(w, None, good, good).forward_int8(np.zeros((1, 4), np.int8))


@pytest.mark.parametrize("per_channel", [False, True], ids=["tensor", "channel"])
def test_state_dict_round_trip(tmp_path, rng, per_channel):
    w = _weights(rng, 7, 11)
    layer = QuantizedLinear.from_float(w, rng.standard_normal(7), 11, 7, per_channel=per_channel)
    layer.set_input_scale(0.07, zero_point=-4)
    x = _codes(rng, (5, 11))
    state = layer.state_dict()
    assert all(isinstance(v, (np.ndarray, np.generic)) for v in state.values())
    again = QuantizedLinear.from_state_dict(state)
    path = tmp_path / "layer.npz"
    layer.save(path)
    loaded = QuantizedLinear.load(path)
    for other in (again, loaded):
        np.testing.assert_array_equal(other.weights_q, layer.weights_q)
        np.testing.assert_array_equal(other.bias_q, layer.bias_q)
        np.testing.assert_array_equal(other.forward_quantized(x), layer.forward_quantized(x))
        np.testing.assert_array_equal(other.forward_int8(x, 0.3, 2), layer.forward_int8(x, 0.3, 2))
        np.testing.assert_array_equal(np.asarray(other.weight_scale),
                                      np.asarray(layer.weight_scale))
        assert other.input_scale == layer.input_scale
        assert other.input_zero_point == -4
    codes_only = {k: v for k, v in state.items() if k != "bias"}
    np.testing.assert_array_equal(
        QuantizedLinear.from_state_dict(codes_only).forward_quantized(x),
        layer.forward_quantized(x))


def test_from_qat_state_round_trip(rng):
    w = _weights(rng, 4, 6)
    fq = _fq(FakeQuantConfig(bits=8, symmetric=False), np.abs(w))
    layer = QuantizedLinear.from_qat(w, None, _fq(FakeQuantConfig.int8(), w), fq, fq)
    again = QuantizedLinear.from_state_dict(layer.state_dict())
    x = _codes(rng, (3, 6))
    np.testing.assert_array_equal(again.forward_int8(x), layer.forward_int8(x))


# ---------------------------------------------------------------------------- bad input

def _layer(rng, bias=True):
    return QuantizedLinear.from_float(_weights(rng, 3, 4), [0.5, -0.5, 1.0] if bias else None, 4, 3)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(weights=np.zeros(11)), ValueError, "weights"),
    (dict(weights=np.zeros((4, 3))), ValueError, "weights"),
    (dict(bias=np.zeros(4)), ValueError, "bias"),
    (dict(weights=np.array([[np.nan, 0, 0, 0]] * 3)), ValueError, "weights.*non-finite"),
    (dict(bias=[0.0, np.inf, 0.0]), ValueError, "bias.*non-finite"),
    (dict(in_features=0), ValueError, "in_features"),
    (dict(out_features=2.5), TypeError, "out_features"),
    (dict(config="int8"), TypeError, "config"),
    (dict(config=FakeQuantConfig(bits=12)), ValueError, "bits"),
    (dict(weights=["a"] * 12), TypeError, "weights"),
    (dict(per_channel=1), TypeError, "per_channel"),
    (dict(bias=[3e9, 0, 0], weights=np.eye(3, 4) * 1e-9), ValueError, "bias"),
    (dict(n_threads=0), ValueError, "n_threads"),
], ids=["w-size", "w-shape", "b-len", "w-nan", "b-inf", "in0", "out-float", "config-type",
        "bits", "w-str", "per-channel", "b-overflow", "threads"])
def test_from_float_bad(kwargs, exc, match):
    args = dict(weights=np.ones((3, 4)), bias=[0.0, 1.0, 2.0], in_features=4, out_features=3,
                config=FakeQuantConfig())
    args.update(kwargs)
    extra = {k: args.pop(k) for k in ("per_channel", "n_threads") if k in args}
    with pytest.raises(exc, match=match):
        QuantizedLinear.from_float(*args.values(), **extra)


def test_in_features_bound():
    with pytest.raises(ValueError, match="MAX_IN_FEATURES"):
        QuantizedLinear.from_float(np.ones(MAX_IN_FEATURES + 1), None, MAX_IN_FEATURES + 1, 1)


def test_constructor_is_private():
    with pytest.raises(TypeError, match="from_float"):
        QuantizedLinear()


@pytest.mark.parametrize("x,exc,match", [
    (np.zeros((2, 4), np.int16), TypeError, "int8"),
    (np.zeros((2, 4), np.float32), TypeError, "int8"),
    ([[0, 0, 0, 0]], TypeError, "numpy int8"),
    (np.zeros((2, 5), np.int8), ValueError, "shape"),
    (np.zeros(7, np.int8), ValueError, "multiple"),
    (np.zeros((1, 2, 4), np.int8), ValueError, "3-D"),
], ids=["int16", "float", "list", "width", "ragged", "3d"])
def test_forward_quantized_bad(rng, x, exc, match):
    layer = _layer(rng)
    with pytest.raises(exc, match=match):
        layer.forward_quantized(x)
    with pytest.raises(exc, match=match):
        layer.forward_int8(x, 0.1, 0)


@pytest.mark.parametrize("scale,exc", [(0.0, ValueError), (-1.0, ValueError),
                                       (float("nan"), ValueError), (float("inf"), ValueError),
                                       ("1", TypeError), (1e-45, ValueError)],
                         ids=["zero", "neg", "nan", "inf", "str", "underflow"])
def test_set_input_scale_bad_leaves_layer_unchanged(rng, scale, exc):
    layer = _layer(rng)
    layer.set_input_scale(0.5)
    before = (layer.input_scale, layer.bias_q.copy(), layer.output_scale)
    with pytest.raises(exc, match="scale"):
        layer.set_input_scale(scale)
    assert layer.input_scale == before[0] and layer.output_scale == before[2]
    np.testing.assert_array_equal(layer.bias_q, before[1])


def test_set_input_scale_overflow_leaves_layer_unchanged(rng):
    layer = _layer(rng)
    x = _codes(rng, (2, 4))
    want = layer.forward_quantized(x)
    with pytest.raises(ValueError, match="scale"):
        layer.set_input_scale(1e-12)              # bias codes beyond int32
    with pytest.raises(ValueError, match="zero_point"):
        layer.set_input_scale(0.5, zero_point=1 << 30)
    np.testing.assert_array_equal(layer.forward_quantized(x), want)
    assert layer.input_scale == 1.0


@pytest.mark.parametrize("args,exc,match", [
    ((0.0, 0), ValueError, "output_scale"), ((np.nan, 0), ValueError, "output_scale"),
    ((0.1, 1 << 25), ValueError, "output_zero_point"), ((0.1, 1.5), TypeError, "output_zero_point"),
], ids=["scale0", "scale-nan", "zp-range", "zp-float"])
def test_forward_int8_bad(rng, args, exc, match):
    with pytest.raises(exc, match=match):
        _layer(rng).forward_int8(np.zeros((1, 4), np.int8), *args)


@pytest.mark.parametrize("mutate,exc,match", [
    (lambda s: s.pop("weights_q"), ValueError, "missing"),
    (lambda s: s.update(weights_q=s["weights_q"].astype(np.int16)), ValueError, "weights_q"),
    (lambda s: s.update(weights_q=np.full((3, 4), -128, np.int8)), ValueError, "outside"),
    (lambda s: s.update(weight_scale=np.float32(-1)), ValueError, "weight_scale"),
    (lambda s: s.update(input_scale=np.float32(np.inf)), ValueError, "input_scale"),
    (lambda s: s.update(bias_q=np.zeros(2, np.int32)), ValueError, "bias_q"),
    (lambda s: s.update(bias=np.zeros(2, np.float32)), ValueError, "bias"),
    (lambda s: s.update(input_zero_point=np.int32(1 << 25)), ValueError, "input_zero_point"),
    (lambda s: s.update(version=np.int32(99)), ValueError, "version"),
], ids=["missing", "dtype", "codes", "scale", "input-scale", "bias_q", "bias", "zp", "version"])
def test_from_state_dict_bad(rng, mutate, exc, match):
    state = _layer(rng).state_dict()
    mutate(state)
    with pytest.raises(exc, match=match):
        QuantizedLinear.from_state_dict(state)


def test_public_name():
    assert "QuantizedLinear" in qatcore.__all__ and qatcore.QuantizedLinear is QuantizedLinear


def test_fields_read_only(rng):
    layer = _layer(rng)
    for name in ("weights_q", "bias_q", "weight_scale", "input_scale", "in_features"):
        with pytest.raises(AttributeError, match="read-only"):
            setattr(layer, name, getattr(layer, name))
    with pytest.raises(ValueError):
        layer.weights_q[0, 0] = 1
    with pytest.raises(ValueError):
        layer.bias_q[0] = 1
    assert isinstance(layer, qatcore.Module) and layer.parameters() == []
