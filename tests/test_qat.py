"""Quantization-aware training: STE and LSQ backward of FakeQuantize, QAT layers."""

import copy
import math

import numpy as np
import pytest

from qatcore import FakeQuantConfig, FakeQuantize, _backend
from qatcore.fake_quantize import SCALE_FLOOR
from qatcore.nn import Adam, ActivationFakeQuant, Linear, QATLinear, ReLU, SGD, Sequential

from reference import fake_quantize_ref, lsq_backward_ref, ste_backward_ref
from conftest import bits_of

SIZES = [0, 1, 7, 8, 9, 1000, 4099]
CONFIGS = {
    "int8sym": FakeQuantConfig(bits=8),
    "int4sym": FakeQuantConfig(bits=4),
    "int8asym": FakeQuantConfig(bits=8, symmetric=False),
    "int3asym": FakeQuantConfig(bits=3, symmetric=False),
}


def _calibrated(config, x, **kw):
    fq = FakeQuantize(config, **kw)
    fq.fake_quantize(x)
    fq.disable_calibration()
    return fq


# --------------------------------------------------------------------------- STE

@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"n{n}")
@pytest.mark.parametrize("ste", ["clipped", "identity"])
def test_ste_backward_matches_reference(target, rng, n, ste):
    x = rng.normal(size=n).astype(np.float32) * 3
    fq = _calibrated(FakeQuantConfig(bits=4), x[: max(n // 2, 1)] if n else x, ste=ste)
    y = fq(x)
    g = rng.normal(size=n).astype(np.float32)
    _, mask = fake_quantize_ref(x, fq.scale, fq.zero_point, *fq.config.quant_range())
    got = fq.backward(g)
    want = ste_backward_ref(g, None if ste == "identity" else mask)
    np.testing.assert_array_equal(bits_of(got), bits_of(want))
    assert got.shape == y.shape == x.shape


def test_ste_backward_keeps_shape_and_clips(target):
    fq = _calibrated(FakeQuantConfig(bits=8), np.array([-1.0, 1.0], np.float32))
    x = np.array([[-3.0, -1.0, 0.2], [1.0, 1.004, 5.0]], np.float32)
    fq(x)
    got = fq.backward(np.full((2, 3), 2.0, np.float32))
    # 1.004 rounds to 127.5 -> 128 > qmax: clipped; 1.0 -> 127 inside.
    np.testing.assert_array_equal(got, [[0, 2, 2], [2, 0, 0]])


@pytest.mark.parametrize("ste", ["clipped", "identity"])
def test_ste_backward_accepts_noncontiguous_and_readonly(target, rng, ste):
    fq = _calibrated(FakeQuantConfig(bits=4), rng.normal(size=64).astype(np.float32), ste=ste)
    x = rng.normal(size=(8, 16)).astype(np.float32)
    fq(x)
    g = rng.normal(size=(16, 8)).T           # float64, non-contiguous
    g.flags.writeable = False
    got = fq.backward(g)
    _, mask = fake_quantize_ref(x, fq.scale, 0.0, -7, 7)
    want = ste_backward_ref(g.astype(np.float32), None if ste == "identity" else mask)
    np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------- LSQ kernel

@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"n{n}")
@pytest.mark.parametrize("cfg", list(CONFIGS), ids=str)
@pytest.mark.parametrize("identity", [False, True], ids=["clipped", "identity"])
def test_lsq_kernel_matches_reference(target, rng, n, cfg, identity):
    config = CONFIGS[cfg]
    qmin, qmax = config.quant_range()
    x = (rng.normal(size=n) * 2 + 0.3).astype(np.float32)
    g = rng.normal(size=n).astype(np.float32)
    scale, zp = (0.37, 0.0) if config.symmetric else (0.05, 3.25)
    grad_in = np.empty(n, np.float32)
    bad, s_in, s_lo, s_hi = _backend.kernels.lsq_backward(x, g, grad_in, scale, zp, qmin, qmax,
                                                          identity)
    assert bad == -1
    want_in, d_s, d_z = lsq_backward_ref(x, g, scale, zp, qmin, qmax, identity)
    np.testing.assert_array_equal(bits_of(grad_in), bits_of(want_in))
    zp32 = float(np.float32(zp))
    got_s = s_in + (qmin - zp32) * s_lo + (qmax - zp32) * s_hi
    got_z = -float(np.float32(scale)) * (s_lo + s_hi)
    assert got_s == pytest.approx(d_s, rel=1e-12, abs=1e-9)
    assert got_z == pytest.approx(d_z, rel=1e-12, abs=1e-9)


@pytest.mark.parametrize("pos", [0, 5, 8, 1023, 1029])
@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_backward_kernels_report_first_nonfinite(target, rng, pos, bad_value):
    g = rng.normal(size=1030).astype(np.float32)
    g[pos] = bad_value
    g[-1] = np.nan
    x = rng.normal(size=1030).astype(np.float32)
    out = np.empty_like(g)
    assert _backend.kernels.lsq_backward(x, g, out, 0.1, 0.0, -7, 7, False)[0] == pos
    assert _backend.kernels.ste_backward(g, np.ones(1030, np.uint8), out) == pos
    assert _backend.kernels.ste_backward(g, None, out) == pos


# --------------------------------------------------------------------------- LSQ vs finite differences

def _ste_surrogate(x, c, scale, zp, delta, qmin, qmax):
    """sum(c * y) where round(v) is replaced by v + delta, delta = round(v0) - v0 held
    fixed (the straight-through estimator), clamp kept: float64."""
    v = x / scale + zp
    q = np.clip(v + delta, qmin, qmax)
    return float(np.sum(c * (q - zp) * scale))


@pytest.mark.parametrize("cfg", list(CONFIGS), ids=str)
def test_lsq_gradients_match_finite_differences(target, rng, cfg):
    config = CONFIGS[cfg].with_learnable()
    qmin, qmax = config.quant_range()
    n = 500
    x = (rng.normal(size=n) * 1.5 + (0.0 if config.symmetric else 1.0)).astype(np.float32)
    fq = FakeQuantize(config)
    fq.fake_quantize(x[:100] * 0.5)        # a narrow range: some of x clips
    fq.disable_calibration()
    s, z = fq.scale, fq.zero_point
    # the rounded value the forward computes (float32 arithmetic, as the kernel)
    v32 = (x / np.float32(s) + np.float32(z)).astype(np.float32)
    r32 = np.trunc(v32 + np.copysign(np.float32(0.49999997), v32))
    # Keep away from the clamp's kink (rounded value exactly at qmin/qmax): there the
    # surrogate has no derivative.
    ok = (np.abs(r32 - qmin) >= 1) & (np.abs(r32 - qmax) >= 1)
    x, v32, r32 = x[ok], v32[ok], r32[ok]
    assert x.size > 300 and np.any(r32 > qmax) and np.any(r32 < qmax)
    c = rng.normal(size=x.size)
    fq(x)
    grad_in = fq.backward(c.astype(np.float32))
    delta = (r32 - v32).astype(np.float64)
    xd = x.astype(np.float64)
    eps = 1e-6
    fd_s = (_ste_surrogate(xd, c, s + eps, z, delta, qmin, qmax)
            - _ste_surrogate(xd, c, s - eps, z, delta, qmin, qmax)) / (2 * eps)
    g = 1 / math.sqrt(x.size * qmax)
    assert fq.grads()[0][0] == pytest.approx(g * fd_s, rel=1e-4, abs=1e-6)
    if not config.symmetric:
        fd_z = (_ste_surrogate(xd, c, s, z + eps, delta, qmin, qmax)
                - _ste_surrogate(xd, c, s, z - eps, delta, qmin, qmax)) / (2 * eps)
        assert fq.grads()[1][0] == pytest.approx(g * fd_z, rel=1e-4, abs=1e-6)
    # d/dx of the surrogate: 1 inside, 0 where clamped
    inside = (r32 >= qmin) & (r32 <= qmax)
    np.testing.assert_array_equal(grad_in, np.where(inside, c.astype(np.float32), 0))


def test_lsq_gradient_scale_is_one_over_sqrt_n_qmax(target):
    config = FakeQuantConfig(bits=4).with_learnable()
    fq = FakeQuantize(config)
    fq.initialize(0.5)
    x = np.array([0.1, 0.3, 10.0, -10.0], np.float32)     # v = 0.2, 0.6, 20, -20
    fq(x)
    fq.backward(np.ones(4, np.float32))
    raw = (0 - 0.2) + (1 - 0.6) + 7 + (-7)
    assert fq.grads()[0][0] == pytest.approx(raw / math.sqrt(4 * 7), rel=1e-6)


def test_lsq_learns_a_better_step_size(target, rng):
    """Minimising ||fq(x) - x||^2 over the scale from a min/max start (too coarse for
    Gaussian data at 3 bits) lowers the error: LSQ's reason to exist."""
    x = rng.normal(size=4096).astype(np.float32)
    fq = _calibrated(FakeQuantConfig(bits=3).with_learnable(), x)
    s0 = fq.scale
    opt = Adam(fq.parameters(), fq.grads(), lr=0.01, after_step=fq.clamp_parameters)
    err0 = float(np.mean((fq(x) - x) ** 2))
    for _ in range(200):
        y = fq(x)
        fq.backward(2 * (y - x) / x.size)
        opt.step()
    err = float(np.mean((fq(x) - x) ** 2))
    assert fq.scale < s0 and err < 0.7 * err0


# --------------------------------------------------------------------------- parameters

def test_parameters_and_grads_layout():
    assert FakeQuantize(FakeQuantConfig()).parameters() == []
    assert FakeQuantize(FakeQuantConfig()).grads() == []
    sym = FakeQuantize(FakeQuantConfig().with_learnable())
    asym = FakeQuantize(FakeQuantConfig(symmetric=False).with_learnable())
    assert [p.shape for p in sym.parameters()] == [(1,)]
    assert [p.shape for p in asym.parameters()] == [(1,), (1,)]
    for fq in (sym, asym):
        assert all(p.dtype == np.float32 for p in fq.parameters() + fq.grads())
        assert len(fq.grads()) == len(fq.parameters())


def test_parameters_mirror_calibration_then_train(target, rng):
    x = rng.normal(size=100).astype(np.float32)
    fq = FakeQuantize(FakeQuantConfig(bits=8, symmetric=False).with_learnable())
    p_scale, p_zp = fq.parameters()
    fq.fake_quantize(x)
    assert p_scale[0] == np.float32(fq.scale) and p_zp[0] == np.float32(fq.zero_point)
    fq.disable_calibration()
    ref = FakeQuantize(FakeQuantConfig(bits=8, symmetric=False))
    ref.fake_quantize(x)
    ref.disable_calibration()
    assert (fq.scale, fq.zero_point) == (ref.scale, ref.zero_point)
    # frozen learnable forward is the plain forward, bit for bit
    np.testing.assert_array_equal(bits_of(fq(x)), bits_of(ref(x)))
    # an in-place update of the live arrays is what the next forward uses
    p_scale *= 2
    p_zp += 1
    assert fq.scale == float(np.float32(2 * ref.scale))
    want, _ = fake_quantize_ref(x, fq.scale, fq.zero_point, 0, 255)
    np.testing.assert_array_equal(bits_of(fq(x)), bits_of(want))


def test_scale_is_kept_positive(target):
    fq = FakeQuantize(FakeQuantConfig().with_learnable())
    fq.initialize(0.1)
    (p,) = fq.parameters()
    g = fq.grads()[0]
    g[0] = 1e6                                  # a huge gradient: SGD goes negative
    SGD([p], [g], lr=1.0, after_step=fq.clamp_parameters).step()
    assert p[0] == np.float32(SCALE_FLOOR) and fq.scale == SCALE_FLOOR
    p[0] = -3.0                                 # even without the hook, forward clamps
    y = fq(np.array([1e-37, -1.0, 0.0], np.float32))
    assert p[0] > 0 and np.all(np.isfinite(y))


def test_out_aliasing_input_keeps_lsq_exact(target, rng):
    x = rng.normal(size=257).astype(np.float32)
    g = rng.normal(size=257).astype(np.float32)
    a = _calibrated(FakeQuantConfig(bits=4).with_learnable(), x[:50])
    b = copy.deepcopy(a)
    a(x)
    ga = a.backward(g)
    xb = x.copy()
    b.fake_quantize(xb, out=xb)                 # x overwritten by its own output
    gb = b.backward(g)
    np.testing.assert_array_equal(ga, gb)
    assert a.grads()[0][0] == b.grads()[0][0]


def test_copies_do_not_share_parameters():
    fq = FakeQuantize(FakeQuantConfig().with_learnable())
    fq.initialize(0.5)
    for other in (copy.copy(fq), copy.deepcopy(fq)):
        other.parameters()[0][0] = 9.0
        assert fq.scale == 0.5


# --------------------------------------------------------------------------- bad input

def test_backward_before_forward():
    for config in (FakeQuantConfig(), FakeQuantConfig().with_learnable()):
        with pytest.raises(ValueError, match="backward"):
            FakeQuantize(config).backward(np.ones(3))


def test_backward_after_eval_forward_is_refused():
    fq = _calibrated(FakeQuantConfig(), np.ones(3, np.float32))
    fq.eval()
    fq(np.ones(3))
    with pytest.raises(ValueError, match="training"):
        fq.backward(np.ones(3))


@pytest.mark.parametrize("learnable", [False, True], ids=["ste", "lsq"])
@pytest.mark.parametrize("case", ["shape", "nan", "inf"])
def test_bad_gradient_changes_nothing(target, learnable, case):
    config = FakeQuantConfig(symmetric=False)
    if learnable:
        config = config.with_learnable()
    fq = _calibrated(config, np.array([-1.0, 2.0], np.float32))
    fq(np.linspace(-2, 3, 12, dtype=np.float32).reshape(3, 4))
    fq.backward(np.ones((3, 4)))
    before = [g.copy() for g in fq.grads()] + [p.copy() for p in fq.parameters()]
    if case == "shape":
        bad, match = np.ones((4, 3)), "shape"
    else:
        bad = np.ones((3, 4))
        bad[1, 2] = np.nan if case == "nan" else np.inf
        match = "non-finite value at flat index 6"
    with pytest.raises(ValueError, match=match):
        fq.backward(bad)
    after = fq.grads() + fq.parameters()
    for b, a in zip(before, after):
        np.testing.assert_array_equal(b, a)


def test_nan_input_gives_clear_lsq_error(target):
    fq = _calibrated(FakeQuantConfig().with_learnable(), np.ones(4, np.float32))
    fq(np.array([1.0, np.nan], np.float32))     # frozen forward: NaN propagates (Rust)
    with pytest.raises(ValueError, match="not finite"):
        fq.backward(np.ones(2))
    assert fq.grads()[0][0] == 0


@pytest.mark.parametrize("scale", [0.0, -1.0, np.nan, np.inf, 1e-50])
def test_non_positive_initial_scale(scale):
    fq = FakeQuantize(FakeQuantConfig().with_learnable())
    with pytest.raises(ValueError, match="scale"):
        fq.initialize(scale)
    assert fq.calibrating and fq.parameters()[0][0] == 1.0


@pytest.mark.parametrize("qparams", [(0.0, 0.0), (-0.5, 0.0), (np.nan, 0.0)], ids=str)
def test_non_positive_calibrated_scale_is_refused_for_learnable(monkeypatch, qparams):
    fq = FakeQuantize(FakeQuantConfig().with_learnable())
    fq.fake_quantize(np.array([1.0, -1.0], np.float32))
    p_before = fq.parameters()[0].copy()
    monkeypatch.setattr(fq.observer.__class__, "compute_qparams", lambda self, cfg: qparams)
    with pytest.raises(ValueError, match="scale"):
        fq.disable_calibration()
    assert fq.calibrating
    np.testing.assert_array_equal(fq.parameters()[0], p_before)


def test_nan_parameter_is_refused_at_forward():
    fq = FakeQuantize(FakeQuantConfig().with_learnable())
    fq.initialize(0.5)
    fq.parameters()[0][0] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        fq(np.ones(3))


def test_other_misuse():
    with pytest.raises(ValueError, match="ste"):
        FakeQuantize(FakeQuantConfig(), ste="round")
    with pytest.raises(ValueError, match="learnable"):
        FakeQuantize(FakeQuantConfig()).initialize(0.5)
    with pytest.raises(ValueError, match="zero_point"):
        FakeQuantize(FakeQuantConfig().with_learnable()).initialize(0.5, 3.0)


# --------------------------------------------------------------------------- QAT layers

def test_qat_linear_gradients(target, rng):
    """With every weight inside the range the STE weight gradient is the float one."""
    lin = Linear(6, 4, seed=0)
    q = QATLinear.from_linear(lin, FakeQuantConfig(bits=8))
    x = rng.normal(size=(5, 6)).astype(np.float32)
    y = q.forward(x)
    wq = q.weight_fake_quant(lin.weight)
    np.testing.assert_allclose(y, x @ wq.T + lin.bias, rtol=1e-6)
    g = rng.normal(size=(5, 4)).astype(np.float32)
    q.forward(x)
    gx = q.backward(g)
    np.testing.assert_allclose(q.grad_weight, g.T @ x, rtol=1e-6)
    np.testing.assert_allclose(q.grad_bias, g.sum(0), rtol=1e-6)
    np.testing.assert_allclose(gx, g @ wq, rtol=1e-6)
    # the calibrating weight quantizer follows the current weights only
    q.weight[...] *= 0.5
    q.forward(x)
    assert q.weight_fake_quant.scale == pytest.approx(np.abs(q.weight).max() / 127, rel=1e-6)


def test_qat_mlp_with_lsq_exposes_and_trains_all_parameters(target, rng):
    x = rng.normal(size=(32, 6)).astype(np.float32)
    labels = (x[:, 0] > 0).astype(np.int64)
    lsq = FakeQuantConfig(bits=4).with_learnable()
    model = Sequential([ActivationFakeQuant(FakeQuantConfig(bits=8).with_learnable()),
                        QATLinear(6, 8, seed=0, weight_fake_quant=lsq), ReLU(),
                        ActivationFakeQuant(FakeQuantConfig(bits=8).with_learnable()),
                        QATLinear(8, 2, seed=1, weight_fake_quant=lsq)])
    model.forward(x)                             # calibrate everything
    for layer in model.layers:
        fq = getattr(layer, "fake_quant", None) or getattr(layer, "weight_fake_quant", None)
        if fq is not None:
            fq.disable_calibration()
    ps, gs = model.parameters(), model.grads()
    assert [p.shape for p in ps] == [(1,), (8, 6), (8,), (1,), (1,), (2, 8), (2,), (1,)]
    assert [p.shape for p in ps] == [g.shape for g in gs]
    from qatcore.nn import SoftmaxCrossEntropy
    ce = SoftmaxCrossEntropy()
    opt = Adam(ps, gs, lr=0.01)
    before = [p.copy() for p in ps]
    first = ce.forward(model.forward(x), labels)
    for _ in range(30):
        ce.forward(model.forward(x), labels)
        model.backward(ce.backward())
        opt.step()
    assert ce.forward(model.forward(x), labels) < first
    assert all(np.any(b != p) for b, p in zip(before, ps))


@pytest.mark.parametrize("learnable", [False, True], ids=["ste", "lsq"])
def test_backward_out_parameter(target, rng, learnable):
    config = FakeQuantConfig(bits=4)
    if learnable:
        config = config.with_learnable()
    x = rng.normal(size=(6, 5)).astype(np.float32)
    g = rng.normal(size=(6, 5)).astype(np.float32)
    fq = _calibrated(config, x[:2])
    fq(x)
    want = fq.backward(g)
    out = np.full((6, 5), 7.0, np.float32)
    assert fq.backward(g, out=out) is out
    np.testing.assert_array_equal(out, want)
    g2 = g.copy()
    fq.backward(g2, out=g2)                      # in place
    np.testing.assert_array_equal(g2, want)
    with pytest.raises(ValueError, match="shape"):
        fq.backward(g, out=np.empty((5, 6), np.float32))
    with pytest.raises(TypeError):
        fq.backward(g, out=np.empty((6, 5), np.float64))
    with pytest.raises(ValueError, match="overlaps"):
        buf = np.zeros(31, np.float32)
        buf[:30] = g.reshape(-1)
        fq.backward(buf[:30].reshape(6, 5), out=buf[1:].reshape(6, 5))


def test_eval_mode_reaches_the_quantizers(rng):
    model = Sequential([ActivationFakeQuant(), QATLinear(3, 2, seed=0), ReLU()])
    fqs = [model[0].fake_quant, model[1].weight_fake_quant]
    model.eval()
    assert not model.training and not any(fq.training for fq in fqs)
    model.train()
    assert model.training and all(fq.training for fq in fqs)
