"""The fused calibrating call (`FakeQuantize.fake_quantize` on a small batch while
calibrating, MIN_MAX / MOVING_AVERAGE, numerics "aprender": one kernel call) against the
step-by-step path: QuantObserver.observe + compute_qparams, then the fake-quantize
oracle. Outputs, mask, qparams and observer state bit for bit, on every target."""

import numpy as np
import pytest

from qatcore import FakeQuantConfig, FakeQuantize, ObserverMethod, QuantObserver, _backend

from conftest import bits_of
from reference import fake_quantize_ref

METHODS = [ObserverMethod.MIN_MAX, ObserverMethod.MOVING_AVERAGE]
CONFIGS = [(8, True), (8, False), (4, True), (4, False), (2, False), (1, False)]


def _batches(kind, n, rng):
    """Five batches of one data kind (each kind hits another branch of the qparams)."""
    if kind == "normal":
        return [(rng.standard_normal(n) * (i + 1)).astype(np.float32) for i in range(5)]
    if kind == "shifted":
        return [(rng.random(n) * 3 + 10 * i).astype(np.float32) for i in range(5)]
    if kind == "wide":        # max - min overflows float32: the saturated step
        return [np.resize(np.float32([-3e38, 3e38, 0.5]), n) for _ in range(5)]
    if kind == "denormal":    # max_abs / qmax underflows to 0
        return [np.resize(np.float32([1e-45, -1e-45, 0.0]), n) for _ in range(5)]
    if kind == "constant":
        return [np.full(n, np.float32(2.5 - i)) for i in range(5)]
    if kind == "signed_zeros":
        return [np.resize(np.float32([0.0, -0.0]), n) for _ in range(5)]
    if kind == "ties":        # values at .5 steps of the scale
        return [(np.arange(n, dtype=np.float32) - n // 2) * np.float32(0.5) for _ in range(5)]
    raise AssertionError(kind)


KINDS = ["normal", "shifted", "wide", "denormal", "constant", "signed_zeros", "ties"]


@pytest.fixture
def fused_calls(monkeypatch, target):
    """Counts the fused kernel calls that produced a result (so a test fails if the
    fused path were silently not taken)."""
    calls = []
    kernel = _backend.kernels.calibrate_fake_quantize

    def counting(*args):
        r = kernel(*args)
        calls.append(type(r) is tuple)
        return r

    monkeypatch.setattr(_backend.kernels, "calibrate_fake_quantize", counting)
    return calls


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [1, 7, 1000, 4097])
@pytest.mark.parametrize("bits,symmetric", CONFIGS, ids=[f"{b}{'s' if s else 'a'}"
                                                         for b, s in CONFIGS])
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_fused_equals_step_by_step(method, bits, symmetric, n, kind, training, rng,
                                   fused_calls):
    config = FakeQuantConfig(bits=bits, symmetric=symmetric, observer=method)
    fq = FakeQuantize(config, n_threads=1)
    fq.train(training)
    oracle = QuantObserver(method, n_threads=1)
    qmin, qmax = config.quant_range()
    for x in _batches(kind, n, rng):
        y = fq.fake_quantize(x.reshape(-1, 1) if n % 7 == 0 else x)
        oracle.observe(x)
        scale, zp = oracle.compute_qparams(config)
        y_ref, mask_ref = fake_quantize_ref(x, scale, zp, qmin, qmax)
        assert y.shape == (x.reshape(-1, 1) if n % 7 == 0 else x).shape
        assert y.dtype == np.float32
        np.testing.assert_array_equal(bits_of(y).ravel(), bits_of(y_ref))
        assert (bits_of(fq.scale), bits_of(fq.zero_point)) == (bits_of(scale), bits_of(zp))
        if training:
            np.testing.assert_array_equal(fq._mask.astype(bool), mask_ref)
        else:
            assert fq._mask is None
    got, want = fq.observer.state_dict(), oracle.state_dict()
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]), err_msg=key)
    assert fused_calls == [True] * 5


def test_backward_after_fused_call(target):
    fq = FakeQuantize(FakeQuantConfig(bits=4, symmetric=False), n_threads=1)
    x = np.linspace(-3, 5, 33, dtype=np.float32).reshape(3, 11)
    fq.fake_quantize(x)
    g = fq.backward(np.ones((3, 11), np.float32))
    _, mask = fake_quantize_ref(x, fq.scale, fq.zero_point, *fq.config.quant_range())
    np.testing.assert_array_equal(g, mask.astype(np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_raises_and_state_unchanged(bad, fused_calls):
    fq = FakeQuantize(FakeQuantConfig(observer=ObserverMethod.MOVING_AVERAGE), n_threads=1)
    fq.fake_quantize(np.float32([1.0, -2.0]))
    before = (fq.observer.state_dict(), fq.scale, fq.zero_point)
    x = np.float32([0.5, bad, 3.0])
    with pytest.raises(ValueError, match="index 1"):
        fq.fake_quantize(x)
    after = (fq.observer.state_dict(), fq.scale, fq.zero_point)
    assert repr(before) == repr(after)
    assert fused_calls == [True, False]


@pytest.mark.parametrize("case", ["large", "empty", "strided", "unaligned", "float64",
                                  "subclass", "out", "torch_numerics", "percentile",
                                  "learnable"])
def test_other_calls_take_the_step_by_step_path(case, fused_calls, rng):
    method = ObserverMethod.PERCENTILE if case == "percentile" else ObserverMethod.MIN_MAX
    config = FakeQuantConfig(observer=method,
                             numerics="torch" if case == "torch_numerics" else "aprender",
                             learnable=case == "learnable")
    fq = FakeQuantize(config, n_threads=1)
    x = rng.standard_normal(_backend.kernels.PAR_MIN_PER_THREAD if case == "large" else 64
                            ).astype(np.float32)
    kwargs = {}
    if case == "empty":
        x = x[:0]
    elif case == "strided":
        x = x[::2]
    elif case == "unaligned":
        x = np.frombuffer(bytearray(4 * x.size + 1), np.float32, x.size, 1)
    elif case == "float64":
        x = x.astype(np.float64)
    elif case == "subclass":
        x = x.view(type("Sub", (np.ndarray,), {}))
    elif case == "out":
        kwargs["out"] = np.empty_like(x)
    y = fq.fake_quantize(x, **kwargs)
    oracle = QuantObserver(method, n_threads=1)
    oracle.observe(x)
    assert fq.observer.range() == oracle.range()
    assert y.shape == x.shape and y.dtype == np.float32
    assert not any(fused_calls)


@pytest.fixture
def fresh_calls(monkeypatch, target):
    calls = []
    kernel = _backend.kernels.fake_quantize_fresh

    def counting(*args):
        r = kernel(*args)
        calls.append(r is not None)
        return r

    monkeypatch.setattr(_backend.kernels, "fake_quantize_fresh", counting)
    return calls


@pytest.mark.parametrize("call", ["forward", "fake_quantize"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(1,), (7,), (10, 100), (4097,)], ids=str)
@pytest.mark.parametrize("bits,symmetric", CONFIGS, ids=[f"{b}{'s' if s else 'a'}"
                                                         for b, s in CONFIGS])
def test_frozen_fresh_output_equals_reference(bits, symmetric, shape, kind, training, call,
                                              rng, fresh_calls):
    n = int(np.prod(shape))
    calib = _batches(kind, n, rng)
    fq = FakeQuantize(FakeQuantConfig(bits=bits, symmetric=symmetric), n_threads=1)
    for x in calib:
        fq.fake_quantize(x)
    fq.disable_calibration()
    fq.train(training)
    with np.errstate(over="ignore", invalid="ignore"):     # "wide": 1.5 · 3e38 is inf
        x = (calib[-1] * np.float32(1.5)).reshape(shape)
        y = getattr(fq, call)(x)
        y_ref, mask_ref = fake_quantize_ref(x, fq.scale, fq.zero_point,
                                            *fq.config.quant_range())
    assert y.shape == shape and y.dtype == np.float32
    np.testing.assert_array_equal(bits_of(y), bits_of(y_ref))
    if training:
        np.testing.assert_array_equal(fq._mask.astype(bool), mask_ref.ravel())
        g = fq.backward(np.ones(shape, np.float32))
        np.testing.assert_array_equal(g, mask_ref.astype(np.float32))
    else:
        assert fq._mask is None
    assert fresh_calls == [True]


@pytest.mark.parametrize("case", ["large", "strided", "unaligned", "out", "torch_numerics",
                                  "learnable", "calibrating"])
def test_frozen_other_calls_take_the_general_path(case, fresh_calls, rng):
    config = FakeQuantConfig(numerics="torch" if case == "torch_numerics" else "aprender",
                             learnable=case == "learnable",
                             observer=ObserverMethod.PERCENTILE if case == "calibrating"
                             else ObserverMethod.MIN_MAX)
    fq = FakeQuantize(config, n_threads=1)
    x = rng.standard_normal(_backend.kernels.PAR_MIN_PER_THREAD if case == "large" else 64
                            ).astype(np.float32)
    fq.fake_quantize(x)
    if case != "calibrating":
        fq.disable_calibration()
    kwargs = {}
    if case == "strided":
        x = x[::2]
    elif case == "unaligned":
        x = np.frombuffer(bytearray(4 * x.size + 1), np.float32, x.size, 1)
    elif case == "out":
        kwargs["out"] = np.empty_like(x)
    y = (fq.fake_quantize if case == "calibrating" else fq.forward)(x, **kwargs)
    assert y.shape == x.shape
    assert not any(fresh_calls)
