"""The public API of DESIGN.md against the plain-numpy oracles in reference.py."""

import copy
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import qatcore
from qatcore import (DynamicQuantizer, FakeQuantConfig, FakeQuantize, MixedPrecision,
                     ObserverMethod, QuantObserver, _backend)

from conftest import bits_of
from reference import (ObserverRef, compute_qparams_ref, dequantize_ref, fake_quantize_ref,
                       mean_std_ref, quantize_ref)

M = ObserverMethod
HAVE_SELECT = hasattr(_backend.kernels, "select_order_stats")
METHODS = [M.MIN_MAX, M.MOVING_AVERAGE, M.MEAN_STD] + ([M.PERCENTILE] if HAVE_SELECT else [])
SIZES = [1, 2, 31, 999, 1000, 1001, 4097, (1 << 18) + 3]


def data(rng, n, kind="normal"):
    if kind == "normal":
        x = rng.standard_normal(n).astype(np.float32)
        if n > 10:
            x[rng.integers(0, n, 3)] = np.float32(25.0) * rng.standard_normal(3).astype(np.float32)
        return x
    if kind == "positive":
        return rng.uniform(0.5, 3.0, n).astype(np.float32)
    if kind == "ties":
        return ((rng.integers(-300, 300, n) + 0.5) / 64).astype(np.float32)
    raise AssertionError(kind)


# --- config ---------------------------------------------------------------------------
@pytest.mark.parametrize("bits,symmetric,expected", [
    (8, True, (-127.0, 127.0)), (4, True, (-7.0, 7.0)), (2, True, (-1.0, 1.0)),
    (16, True, (-32767.0, 32767.0)), (8, False, (0.0, 255.0)), (1, False, (0.0, 1.0)),
    (16, False, (0.0, 65535.0))])
def test_quant_range(bits, symmetric, expected):
    assert FakeQuantConfig(bits=bits, symmetric=symmetric).quant_range() == expected


def test_config_defaults_and_builders():
    cfg = FakeQuantConfig()
    assert (cfg.bits, cfg.symmetric, cfg.learnable, cfg.observer) == (8, True, False, M.MIN_MAX)
    assert FakeQuantConfig.int8() == cfg
    assert FakeQuantConfig.int4().bits == 4
    learn = cfg.with_learnable()
    assert learn.learnable and not cfg.learnable
    assert cfg.with_observer("percentile").observer is M.PERCENTILE
    assert cfg.with_observer(M.MEAN_STD).observer is M.MEAN_STD
    with pytest.raises(Exception):
        cfg.bits = 4        # frozen


@pytest.mark.parametrize("kwargs,exc", [
    ({"bits": 1}, ValueError), ({"bits": 17}, ValueError), ({"bits": 0, "symmetric": False}, ValueError),
    ({"bits": -3}, ValueError), ({"bits": 8.0}, TypeError), ({"bits": "8"}, TypeError),
    ({"symmetric": "yes"}, TypeError), ({"observer": "median"}, ValueError),
    ({"observer": 3}, TypeError)], ids=str)
def test_config_rejects(kwargs, exc):
    with pytest.raises(exc, match=next(iter(kwargs))):
        FakeQuantConfig(**kwargs)


# --- observer -------------------------------------------------------------------------
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("method", [m for m in METHODS if m is not M.MEAN_STD], ids=str)
def test_observer_bit_exact(target, method, n, threads, rng):
    obs, ref = QuantObserver(method, n_threads=threads), ObserverRef(method)
    for kind in ("normal", "positive", "ties"):
        x = data(rng, n, kind)
        obs.observe(x)
        ref.observe(x)
        assert bits_of(obs.range()).tolist() == bits_of(ref.range()).tolist()
    assert obs.count == 3


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", SIZES)
def test_observer_mean_std_accurate(target, n, threads, rng):
    obs = QuantObserver(M.MEAN_STD, n_threads=threads)
    x = data(rng, n) + np.float32(1000.0)          # an offset that breaks naive sums
    obs.observe(x)
    mean, std = mean_std_ref(x)
    lo, hi = obs.range()
    assert lo == pytest.approx(mean - 3 * std, rel=2e-6, abs=1e-30)
    assert hi == pytest.approx(mean + 3 * std, rel=2e-6, abs=1e-30)


@pytest.mark.parametrize("method", list(M), ids=str)
def test_observer_empty_is_noop(method):
    obs = QuantObserver(method)
    obs.observe(np.array([], dtype=np.float32))
    assert obs.range() == (float("inf"), float("-inf")) and obs.count == 0
    assert obs.compute_qparams(FakeQuantConfig()) == (1.0, 0.0)


@pytest.mark.parametrize("pos", [0, 500, 999])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("method", METHODS, ids=str)
def test_observer_rejects_nonfinite_and_keeps_state(target, method, bad, pos, rng):
    obs = QuantObserver(method)
    obs.observe(data(rng, 100))
    before = (obs.range(), obs.count)
    x = data(rng, 1000)
    x[pos] = bad
    x[min(pos + 3, 999)] = np.nan
    with pytest.raises(ValueError, match=f"observe: .*index {pos}"):
        obs.observe(x)
    assert (obs.range(), obs.count) == before


@pytest.mark.parametrize("method", METHODS, ids=str)
def test_observer_layouts_and_inputs_untouched(method, rng):
    base = data(rng, 3001).astype(np.float64)
    ref = QuantObserver(method)
    ref.observe(base[::3].astype(np.float32).copy())
    strided, ro = base[::3], base.astype(np.float32)[::3].copy()
    ro.setflags(write=False)
    snapshot = base.copy()
    for x in (strided, ro, list(strided), strided.reshape(-1, 1)):
        obs = QuantObserver(method)
        obs.observe(x)
        assert obs.range() == ref.range()
    np.testing.assert_array_equal(base, snapshot)


@pytest.mark.parametrize("bad", [np.array([1 + 2j]), np.array(["a"]), np.array([object()]),
                                 "text", None], ids=["complex", "str", "object", "pystr", "none"])
def test_observer_rejects_non_numeric(bad):
    obs = QuantObserver()
    with pytest.raises(TypeError, match="x"):
        obs.observe(bad)
    assert obs.count == 0


def test_observer_memmap(tmp_path, rng):
    x = data(rng, 5000)
    path = tmp_path / "x.npy"
    np.save(path, x)
    mm = np.load(path, mmap_mode="r")
    obs = QuantObserver()
    obs.observe(mm)
    assert obs.range() == (float(x.min()), float(x.max()))


@pytest.mark.parametrize("bits,symmetric", [(b, s) for b in (1, 2, 4, 8, 12, 16)
                                            for s in (True, False) if b >= 2 or not s])
def test_compute_qparams_matches_rust_formulas(bits, symmetric, rng):
    cfg = FakeQuantConfig(bits=bits, symmetric=symmetric)
    for kind in ("normal", "positive", "ties"):
        obs = QuantObserver()
        obs.observe(data(rng, 777, kind))
        got = obs.compute_qparams(cfg)
        want = compute_qparams_ref(*obs.range(), bits, symmetric)
        assert bits_of(got).tolist() == bits_of(want).tolist()


def test_compute_qparams_degenerate():
    obs = QuantObserver()
    obs.observe(np.zeros(10, np.float32))
    assert obs.compute_qparams(FakeQuantConfig()) == (1.0, 0.0)
    assert obs.compute_qparams(FakeQuantConfig(symmetric=False)) == (1.0, 0.0)
    with pytest.raises(TypeError, match="config"):
        obs.compute_qparams("int8")


def test_observer_copy_is_independent(rng):
    obs = QuantObserver(M.MOVING_AVERAGE)
    obs.observe(data(rng, 10))
    for clone in (copy.copy(obs), copy.deepcopy(obs), pickle.loads(pickle.dumps(obs))):
        clone.observe(data(rng, 10) * 10)
        assert clone.range() != obs.range() and obs.count == 1
    assert "MOVING_AVERAGE" in repr(obs)
    obs.reset()
    assert obs.count == 0 and obs.range() == (float("inf"), float("-inf"))


# --- fake quantize --------------------------------------------------------------------
CONFIGS = [FakeQuantConfig.int8(), FakeQuantConfig.int4(), FakeQuantConfig(bits=8, symmetric=False),
           FakeQuantConfig(bits=3, symmetric=False), FakeQuantConfig(bits=16),
           FakeQuantConfig.int8().with_observer(M.MOVING_AVERAGE)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", [0, 1, 33, 1001, (1 << 18) + 5])
@pytest.mark.parametrize("cfg", CONFIGS, ids=repr)
def test_fake_quantize_bit_exact(target, cfg, n, threads, rng):
    fq = FakeQuantize(cfg, n_threads=threads)
    obs = ObserverRef(cfg.observer)
    for kind in ("normal", "ties", "positive"):
        x = data(rng, n, kind)
        y = fq.fake_quantize(x)
        obs.observe(x)
        if n:
            scale, zp = compute_qparams_ref(*obs.range(), cfg.bits, cfg.symmetric)
            assert bits_of((fq.scale, fq.zero_point)).tolist() == bits_of((scale, zp)).tolist()
        want, _ = fake_quantize_ref(x, fq.scale, fq.zero_point, *cfg.quant_range())
        assert y.dtype == np.float32 and y.shape == x.shape
        np.testing.assert_array_equal(bits_of(y), bits_of(want))


def test_fake_quantize_frozen_forward_nonfinite_matches_rust(target):
    fq = FakeQuantize(FakeQuantConfig.int8())
    fq.fake_quantize(np.array([-2.0, 2.0], np.float32))
    fq.disable_calibration()
    x = np.array([[np.nan, np.inf], [-np.inf, 0.5]], np.float32)
    y = fq.forward(x)
    assert y.shape == (2, 2) and np.isnan(y[0, 0])
    assert y[0, 1] == 2.0 and y[1, 0] == -2.0
    y2 = fq.fake_quantize(x)                     # not calibrating: same as forward
    np.testing.assert_array_equal(bits_of(y), bits_of(y2))


def test_fake_quantize_calibrating_rejects_nonfinite_and_keeps_state(rng):
    fq = FakeQuantize()
    fq.fake_quantize(data(rng, 100))
    state = (fq.scale, fq.zero_point, fq.observer.range())
    x = data(rng, 100)
    x[42] = np.nan
    with pytest.raises(ValueError, match="index 42"):
        fq.fake_quantize(x)
    assert (fq.scale, fq.zero_point, fq.observer.range()) == state


def test_fake_quantize_out(target, rng):
    fq = FakeQuantize()
    x = data(rng, 12).reshape(3, 4)
    out = np.empty((3, 4), np.float32)
    assert fq.fake_quantize(x, out=out) is out
    want, _ = fake_quantize_ref(x, fq.scale, 0.0, -127, 127)
    np.testing.assert_array_equal(bits_of(out), bits_of(want))
    inplace = x.copy()
    assert fq.forward(inplace, out=inplace) is inplace
    np.testing.assert_array_equal(bits_of(inplace), bits_of(want))


@pytest.mark.parametrize("out,exc", [
    (np.empty((3, 4), np.float64), TypeError), (np.empty((4, 3), np.float32), ValueError),
    (np.empty(12, np.float32), ValueError), (np.empty((3, 8), np.float32)[:, ::2], ValueError),
    ([0.0] * 12, TypeError)], ids=["dtype", "shape", "flat", "strided", "list"])
def test_fake_quantize_bad_out_keeps_state(out, exc, rng):
    fq = FakeQuantize()
    with pytest.raises(exc, match="out"):
        fq.fake_quantize(data(rng, 12).reshape(3, 4), out=out)
    assert fq.observer.count == 0


def test_fake_quantize_read_only_out(rng):
    out = np.empty(5, np.float32)
    out.setflags(write=False)
    with pytest.raises(ValueError, match="out"):
        FakeQuantize().fake_quantize(data(rng, 5), out=out)


def test_fake_quantize_layouts(rng):
    base = data(rng, 4000).astype(np.float64)
    ro = base.astype(np.float32)
    ro.setflags(write=False)
    ref = FakeQuantize().fake_quantize(base[::2].astype(np.float32))
    for x in (base[::2], ro[::2], base[::2].tolist()):
        np.testing.assert_array_equal(bits_of(FakeQuantize().fake_quantize(x)), bits_of(ref))
    assert not ro.flags.writeable


def test_calibration_flow():
    fq = FakeQuantize(FakeQuantConfig.int8())
    assert fq.calibrating
    fq.disable_calibration()
    assert (fq.scale, fq.zero_point) == (1.0, 0.0) and not fq.calibrating
    fq.enable_calibration()
    fq.fake_quantize(np.array([-1.27, 0.3], np.float32))
    fq.disable_calibration()
    assert fq.scale == float(np.float32(1.27) / np.float32(127))
    fq.fake_quantize(np.array([100.0], np.float32))          # frozen: no observing
    assert fq.scale == float(np.float32(1.27) / np.float32(127))
    assert fq.parameters() == [] and fq.config == FakeQuantConfig.int8()


def test_backward_clipped_ste(rng):
    fq = FakeQuantize(FakeQuantConfig.int4())
    fq.fake_quantize(np.array([-1.0, 1.0], np.float32))
    fq.disable_calibration()
    x = np.array([[-2.0, -1.0, 0.3], [1.04, 1.1, 5.0]], np.float32)
    fq.forward(x)
    g = fq.backward(np.ones((2, 3), np.float32))
    _, mask = fake_quantize_ref(x, fq.scale, 0.0, -7, 7)
    np.testing.assert_array_equal(g, mask.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        fq.backward(np.ones(6, np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        fq.backward(np.full((2, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="forward"):
        FakeQuantize().backward(np.ones(3))


def test_fake_quantize_copy_is_independent(rng):
    fq = FakeQuantize()
    fq.fake_quantize(data(rng, 10))
    for clone in (copy.copy(fq), copy.deepcopy(fq)):
        clone.fake_quantize(data(rng, 10) * 100)
        assert clone.scale != fq.scale and fq.observer.count == 1
    assert repr(fq).startswith("FakeQuantize(config=FakeQuantConfig(bits=8")


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, st.integers(1, 300),
                  elements=st.floats(-1e4, 1e4, width=32, allow_subnormal=False)))
def test_fake_quantize_error_bound_and_monotone(x):
    fq = FakeQuantize(FakeQuantConfig.int8())
    y = fq.fake_quantize(x)
    assert np.all(np.abs(y.astype(np.float64) - x) <= fq.scale / 2 * (1 + 1e-5) + 1e-30)
    order = np.argsort(x, kind="stable")
    assert np.all(np.diff(y[order]) >= 0)


# --- dynamic quantizer ----------------------------------------------------------------
@pytest.mark.parametrize("bits,symmetric,dtype", [
    (8, True, np.int8), (4, True, np.int8), (8, False, np.uint8), (2, False, np.uint8),
    (12, True, np.int16), (16, False, np.uint16)])
def test_dynamic_quantizer(target, bits, symmetric, dtype, rng):
    cfg = FakeQuantConfig(bits=bits, symmetric=symmetric)
    dq = DynamicQuantizer(cfg)
    x = data(rng, 2001).reshape(3, 667)
    q, scale, zp = dq.quantize(x)
    obs = ObserverRef("min_max")
    obs.observe(x)
    want_scale, want_zp = compute_qparams_ref(*obs.range(), bits, symmetric)
    assert (scale, zp) == (float(want_scale), float(want_zp))
    assert q.dtype == dtype and q.shape == x.shape
    np.testing.assert_array_equal(q, quantize_ref(x, scale, zp, *cfg.quant_range(), dtype))
    y = dq.dequantize(q, scale, zp)
    np.testing.assert_array_equal(bits_of(y), bits_of(dequantize_ref(q, scale, zp)))
    out = np.empty_like(q)
    assert dq.quantize(x, out=out)[0] is out


def test_dynamic_quantizer_rejects():
    dq = DynamicQuantizer()
    with pytest.raises(TypeError, match="q must have dtype int8"):
        dq.dequantize(np.zeros(3, np.int32), 1.0, 0.0)
    with pytest.raises(TypeError, match="q must"):
        dq.dequantize([1, 2], 1.0, 0.0)
    for scale in (0.0, -1.0, np.nan, np.inf, 1e-60):
        with pytest.raises(ValueError, match="scale"):
            dq.dequantize(np.zeros(3, np.int8), scale, 0.0)
    with pytest.raises(ValueError, match="zero_point"):
        dq.dequantize(np.zeros(3, np.int8), 1.0, np.nan)
    with pytest.raises(ValueError, match="index 1"):
        dq.quantize([0.0, np.inf])


# --- mixed precision ------------------------------------------------------------------
def test_mixed_precision_schedule():
    mp = MixedPrecision()
    assert mp.loss_scale == 65536.0 and mp.scale_loss(2.0) == 131072.0
    for _ in range(1999):
        mp.update(False)
    assert mp.loss_scale == 65536.0
    mp.update(False)
    assert mp.loss_scale == 131072.0
    mp.update(True)
    assert mp.loss_scale == 65536.0 and mp.steps_since_overflow == 0
    g = np.array([65536.0, -3.0], np.float32)
    mp.unscale_gradients(g)
    np.testing.assert_array_equal(g, np.array([1.0, -3.0 / 65536.0], np.float32))
    assert not mp.check_overflow(g) and mp.check_overflow(np.array([0.0, np.nan]))
    with pytest.raises(TypeError, match="grads"):
        mp.unscale_gradients(np.zeros(3))
    for _ in range(2000):
        mp.update(True)
    assert mp.loss_scale > 0
    mp.reset()
    assert mp.loss_scale == 65536.0


def test_public_names():
    for name in ("FakeQuantConfig", "ObserverMethod", "QuantObserver", "FakeQuantize", "Module",
                 "DynamicQuantizer", "MixedPrecision"):
        assert name in qatcore.__all__ and hasattr(qatcore, name)


def test_threads_setting():
    assert qatcore.get_num_threads() == 1
    qatcore.set_num_threads(2)
    try:
        assert QuantObserver().n_threads == 2
    finally:
        qatcore.set_num_threads(1)
    for bad, exc in ((0, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(exc, match="n"):
            qatcore.set_num_threads(bad)


@pytest.mark.parametrize("calibrating", [True, False])
def test_fake_quantize_partial_overlap_refused(target, calibrating, rng):
    fq = FakeQuantize()
    fq.fake_quantize(data(rng, 64))
    if not calibrating:
        fq.disable_calibration()
    state = (fq.scale, fq.observer.count)
    buf = data(rng, 100)
    before = buf.copy()
    with pytest.raises(ValueError, match="overlaps"):
        fq.fake_quantize(buf[:50], out=buf[10:60])
    assert (fq.scale, fq.observer.count) == state
    np.testing.assert_array_equal(buf, before)
