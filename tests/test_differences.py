"""One test per line of docs/differences.md: where qatcore is right and Rust is not."""

import numpy as np
import pytest

from qatcore import _backend, DynamicQuantizer, FakeQuantConfig, FakeQuantize, ObserverMethod, QuantObserver

from conftest import bits_of
from reference import mean_std_ref


@pytest.mark.parametrize("method", list(ObserverMethod), ids=str)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_nonfinite_observe_raises(method, bad):
    if method is ObserverMethod.PERCENTILE and not hasattr(_backend.kernels, "select_order_stats"):
        pytest.skip("percentile kernel not built yet")
    x = np.linspace(-1, 1, 2000, dtype=np.float32)
    x[1234] = bad
    obs = QuantObserver(method)
    with pytest.raises(ValueError, match="observe.*1234"):
        obs.observe(x)
    assert obs.count == 0
    fq = FakeQuantize(FakeQuantConfig().with_observer(method))
    with pytest.raises(ValueError, match="1234"):
        fq.fake_quantize(x)
    assert (fq.scale, fq.zero_point) == (1.0, 0.0)
    with pytest.raises(ValueError, match="1234"):
        DynamicQuantizer(FakeQuantConfig().with_observer(method)).quantize(x)


def test_frozen_forward_nonfinite_like_rust():
    fq = FakeQuantize(FakeQuantConfig(bits=8, symmetric=False))
    fq.fake_quantize(np.array([-1.0, 3.0], np.float32))
    fq.disable_calibration()
    y = fq.forward(np.array([np.nan, np.inf, -np.inf], np.float32))
    scale, zp = np.float32(fq.scale), np.float32(fq.zero_point)
    assert np.isnan(y[0])
    assert bits_of(y[1:]).tolist() == bits_of([(np.float32(255) - zp) * scale,
                                               (np.float32(0) - zp) * scale]).tolist()


@pytest.mark.parametrize("symmetric", [True, False])
def test_qparams_before_observe(symmetric):
    cfg = FakeQuantConfig(symmetric=symmetric)
    assert QuantObserver().compute_qparams(cfg) == (1.0, 0.0)
    fq = FakeQuantize(cfg)
    fq.disable_calibration()
    assert (fq.scale, fq.zero_point) == (1.0, 0.0)


@pytest.mark.parametrize("bits,symmetric", [(0, True), (1, True), (17, True), (32, True),
                                            (0, False), (17, False), (64, False)])
def test_bits_checked(bits, symmetric):
    with pytest.raises(ValueError, match="bits"):
        FakeQuantConfig(bits=bits, symmetric=symmetric)


def test_mean_std_more_accurate():
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(3_000_000) * 0.5 + 1000).astype(np.float32)
    obs = QuantObserver(ObserverMethod.MEAN_STD)
    obs.observe(x)
    mean, std = mean_std_ref(x)
    lo, hi = obs.range()
    assert abs(lo - (mean - 3 * std)) <= 2e-6 * abs(mean - 3 * std)
    assert abs(hi - (mean + 3 * std)) <= 2e-6 * abs(mean + 3 * std)
    # What Rust's sequential f32 sums give, for the record: far off.
    rust_mean = np.float32(0)
    for v in x[:200_000]:          # a prefix keeps the loop short; the drift shows already
        rust_mean = np.float32(rust_mean + v)
    assert abs(rust_mean / np.float32(200_000) - x[:200_000].astype(np.float64).mean()) > 1e-3


def test_huge_asymmetric_range():
    obs = QuantObserver()
    obs.observe(np.array([-3e38, 3e38], np.float32))
    scale, zp = obs.compute_qparams(FakeQuantConfig(symmetric=False))
    assert np.isfinite(scale) and scale == float(np.float32(6e38 / 255))
    assert np.isfinite(zp)


def test_scale_underflow():
    obs = QuantObserver()
    obs.observe(np.array([1e-45, -1e-45], np.float32))
    assert obs.compute_qparams(FakeQuantConfig(bits=16)) == (1.0, 0.0)


@pytest.mark.parametrize("bits,symmetric,dtype,top", [
    (8, False, np.uint8, 255), (12, True, np.int16, 2047), (16, False, np.uint16, 65535)])
def test_dynamic_code_dtypes(bits, symmetric, dtype, top):
    q, _, _ = DynamicQuantizer(FakeQuantConfig(bits=bits, symmetric=symmetric)).quantize(
        np.linspace(-1, 1, 101))
    assert q.dtype == dtype and int(q.max()) == top


def test_mean_std_overflow():
    obs = QuantObserver(ObserverMethod.MEAN_STD)
    with pytest.raises(ValueError, match="overflows"):
        obs.observe(np.array([-3e38, 3e38, 3e38], np.float32))
    assert obs.count == 0


def test_mean_std_large_values():
    x = np.array([1e29, -2e29, 3e29, 5e28], np.float32)
    obs = QuantObserver(ObserverMethod.MEAN_STD)
    obs.observe(x)
    mean, std = mean_std_ref(x)
    lo, hi = obs.range()
    assert np.isfinite([lo, hi]).all()
    assert lo == pytest.approx(mean - 3 * std, rel=2e-6) and hi == pytest.approx(mean + 3 * std, rel=2e-6)


def test_mean_std_constant_batch():
    obs = QuantObserver(ObserverMethod.MEAN_STD)
    obs.observe(np.full(10_001, 0.1, np.float32))
    lo, hi = obs.range()
    assert lo == hi == float(np.float32(0.1))
    assert obs.compute_qparams(FakeQuantConfig(bits=12, symmetric=False)) == (1.0, float(-np.float32(0.1)))


# --- QuantizedLinear --------------------------------------------------------------------
from qatcore import QuantizedLinear  # noqa: E402


def _layer(bias=(1.0, -2.0)):
    w = np.array([[0.5, -1.0, 0.25], [1.0, 0.0, -0.5]], np.float32)
    return QuantizedLinear.from_float(w, None if bias is None else np.array(bias, np.float32),
                                      3, 2, FakeQuantConfig.int8())


def test_linear_bias_scale():
    layer = _layer()
    ws = np.float32(layer.weight_scale)
    rust_codes = np.trunc(np.array([1.0, -2.0], np.float32) / ws + np.copysign(np.float32(0.49999997), [1.0, -2.0]))
    np.testing.assert_array_equal(layer.bias_q, rust_codes.astype(np.int32))   # input_scale 1
    layer.set_input_scale(0.5)
    scale = np.float32(0.5) * ws
    want = np.trunc(np.array([1.0, -2.0], np.float32) / scale + np.copysign(np.float32(0.49999997), [1.0, -2.0]))
    np.testing.assert_array_equal(layer.bias_q, want.astype(np.int32))
    assert layer.output_scale == float(np.float32(0.5) * ws)


def test_linear_shape_errors():
    layer = _layer()
    with pytest.raises(ValueError, match="multiple"):
        layer.forward_quantized(np.zeros(4, np.int8))
    with pytest.raises(ValueError, match="bias"):
        QuantizedLinear.from_float(np.ones((2, 3)), np.ones(3), 3, 2, FakeQuantConfig())
    with pytest.raises(ValueError, match="weights"):
        QuantizedLinear.from_float(np.ones(5), None, 3, 2, FakeQuantConfig())


def test_linear_asymmetric_config():
    w = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    layer = QuantizedLinear.from_float(w, None, 3, 2, FakeQuantConfig(bits=8, symmetric=False))
    assert layer.weight_scale == float(np.float32(1) / np.float32(127))
    assert layer.weights_q.min() == -127 and layer.weights_q.max() == 127
    with pytest.raises(ValueError, match="bits"):
        QuantizedLinear.from_float(w, None, 3, 2, FakeQuantConfig(bits=12))


def test_linear_overflow_refused():
    with pytest.raises(ValueError, match="bias"):
        QuantizedLinear.from_float(np.eye(2, 3) * 1e-9, [3e9, 0.0], 3, 2, FakeQuantConfig())
    with pytest.raises(ValueError):
        QuantizedLinear.from_float(np.ones(132105), None, 132105, 1, FakeQuantConfig())


@pytest.mark.parametrize("what", ["weights", "bias", "scale"])
def test_linear_nonfinite_refused(what):
    w = np.ones((2, 3), np.float32)
    b = np.zeros(2, np.float32)
    if what == "weights":
        w[1, 2] = np.nan
    if what == "bias":
        b[0] = np.inf
    if what == "scale":
        layer = _layer()
        with pytest.raises(ValueError, match="scale"):
            layer.set_input_scale(np.nan)
        return
    with pytest.raises(ValueError, match=what):
        QuantizedLinear.from_float(w, b, 3, 2, FakeQuantConfig())
