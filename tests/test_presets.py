"""Numerics presets (FakeQuantConfig(numerics=...)): kernels vs the numpy oracles, and
bit for bit against torch's fake-quantize ops and onnxruntime's QuantizeLinear ->
DequantizeLinear when those are installed; preset qparams vs torch's MinMaxObserver and
onnxruntime's compute_scale_zp."""

import numpy as np
import pytest

from qatcore import FakeQuantConfig, FakeQuantize, QuantObserver, _backend
from qatcore.observer import qparams_arrays

from reference import (
    fake_quantize_onnx_ref,
    fake_quantize_torch_ref,
    lsq_backward_preset_ref,
    torch_qparams_ref,
)

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

F32 = np.float32
SIZES = [0, 1, 33, 2049, (1 << 18) + 5]
RANGES = [(0.0, -127.0, 127.0), (37.0, 0.0, 255.0), (0.0, -7.0, 7.0), (-3.0, -128.0, 127.0)]


@pytest.fixture(params=_backend.available_targets())
def k(request):
    return _backend.load(request.param)


def bits(a):
    return np.asarray(a, dtype=np.float32).view(np.uint32)


def tricky(n, scale, seed=0):
    """~N(0, 2) with exact ties (k + 0.5)·scale, ±0, huge values, ±Inf, NaN, denormals."""
    rng = np.random.default_rng(seed + n)
    x = (rng.standard_normal(n) * 2).astype(F32)
    t = n // 3
    x[:t] = ((rng.integers(-300, 300, t) + F32(0.5)) * F32(scale)).astype(F32)
    specials = np.array([np.nan, -0.0, 0.0, 1e30, -1e30, np.inf, -np.inf, 3.4e38, -3.4e38,
                         1e-40, -1e-40, 0.5 * scale, -0.5 * scale, 1.5 * scale], F32)
    m = min(n, specials.size)
    x[n - m:] = specials[:m]
    return x


@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"n{n}")
@pytest.mark.parametrize("zp,qmin,qmax", RANGES, ids=lambda v: str(v))
@pytest.mark.parametrize("numerics", ["torch", "onnx"])
def test_preset_kernel_matches_oracle(k, numerics, zp, qmin, qmax, n):
    scale = 0.0137
    x = tricky(n, scale)
    before = x.copy()
    out = np.empty_like(x)
    mask = np.empty(n, np.uint8)
    mode = k.PRESET_TORCH if numerics == "torch" else k.PRESET_ONNX
    assert k.fake_quantize_preset(x, out, scale, zp, qmin, qmax, mode, mask, 2) == 0
    ref = fake_quantize_torch_ref if numerics == "torch" else fake_quantize_onnx_ref
    y, m = ref(x, scale, zp, qmin, qmax)
    np.testing.assert_array_equal(bits(out), bits(y))
    np.testing.assert_array_equal(mask, m)
    np.testing.assert_array_equal(bits(x), bits(before))
    inplace = x.copy()
    k.fake_quantize_preset(inplace, inplace, scale, zp, qmin, qmax, mode, None, 1)
    np.testing.assert_array_equal(bits(inplace), bits(y))


def test_preset_kernel_refuses_partial_overlap(k):
    x = np.ones(64, F32)
    assert k.fake_quantize_preset(x[:32], x[1:33], 0.1, 0.0, -127, 127, k.PRESET_TORCH) == 1
    np.testing.assert_array_equal(x, 1)


@pytest.mark.parametrize("shape,axis", [((16, 33), 0), ((5, 7, 9), 1), ((300, 17), 1),
                                        ((3, 4, 1), 1)], ids=str)
@pytest.mark.parametrize("numerics", ["torch", "onnx"])
def test_preset_channels_match_oracle(k, numerics, shape, axis):
    rng = np.random.default_rng(1)
    C = shape[axis]
    scale = rng.uniform(0.005, 0.05, C).astype(F32)
    zp = rng.integers(0, 50, C).astype(F32)
    x = tricky(int(np.prod(shape)), 0.02).reshape(shape)
    out = np.empty_like(x)
    mask = np.empty(shape, np.uint8)
    outer = int(np.prod(shape[:axis]))
    inner = int(np.prod(shape[axis + 1:]))
    mode = k.PRESET_TORCH_CHANNEL if numerics == "torch" else k.PRESET_ONNX
    k.fake_quantize_preset_channels(x, out, scale, zp, outer, inner, 0.0, 255.0, mode, mask)
    bshape = [1] * len(shape)
    bshape[axis] = C
    if numerics == "torch":
        y, m = fake_quantize_torch_ref(x, scale.reshape(bshape), zp.reshape(bshape), 0, 255,
                                       per_channel=True)
    else:
        y, m = fake_quantize_onnx_ref(x, scale.reshape(bshape), zp.reshape(bshape), 0, 255)
    np.testing.assert_array_equal(bits(out), bits(y))
    np.testing.assert_array_equal(mask, m)


@pytest.mark.parametrize("numerics", ["torch", "onnx"])
@pytest.mark.parametrize("identity", [False, True])
def test_preset_lsq_backward_matches_oracle(k, numerics, identity):
    rng = np.random.default_rng(2)
    x = tricky(3001, 0.02)
    x[np.isnan(x)] = 0.0
    g = rng.standard_normal(x.size).astype(F32)
    gin = np.empty_like(g)
    mode = k.PRESET_TORCH if numerics == "torch" else k.PRESET_ONNX
    bad, s_in, s_lo, s_hi = k.lsq_backward_preset(x, g, gin, 0.02, 5.0, 0.0, 255.0, mode,
                                                  identity)
    r_gin, r_ds, r_dz = lsq_backward_preset_ref(x, g, 0.02, 5.0, 0.0, 255.0, numerics, identity)
    assert bad == -1
    np.testing.assert_array_equal(bits(gin), bits(r_gin))
    ds = s_in + (0.0 - 5.0) * s_lo + (255.0 - 5.0) * s_hi
    dz = -float(F32(0.02)) * (s_lo + s_hi)
    assert ds == pytest.approx(r_ds, rel=1e-9, abs=1e-9)
    assert dz == pytest.approx(r_dz, rel=1e-9, abs=1e-9)
    g[7] = np.nan
    assert k.lsq_backward_preset(x, g, gin, 0.02, 5.0, 0.0, 255.0, mode, identity)[0] == 7


# --- config / facade ------------------------------------------------------------------

def test_config_numerics_validation():
    assert FakeQuantConfig().numerics == "aprender"
    assert FakeQuantConfig().with_numerics("onnx").numerics == "onnx"
    with pytest.raises(ValueError, match="numerics"):
        FakeQuantConfig(numerics="tf")
    with pytest.raises(TypeError, match="numerics"):
        FakeQuantConfig(numerics=1)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("numerics", ["torch", "onnx"])
def test_facade_uses_preset_numerics(target, numerics, symmetric):
    config = FakeQuantConfig(symmetric=symmetric, numerics=numerics)
    fq = FakeQuantize(config)
    x = tricky(5000, 0.01)
    x = x[np.isfinite(x) & (np.abs(x) < 1e3)]
    y = fq.fake_quantize(x)
    scale, zp = fq.scale, fq.zero_point
    assert zp == round(zp)
    ref = fake_quantize_torch_ref if numerics == "torch" else fake_quantize_onnx_ref
    ry, rm = ref(x, scale, zp, *config.quant_range())
    np.testing.assert_array_equal(bits(y), bits(ry))
    grad = np.ones_like(x)
    np.testing.assert_array_equal(fq.backward(grad), np.where(rm, F32(1), F32(0)))
    np.testing.assert_array_equal(bits(fq.backward(-grad)), bits(-grad * rm.astype(F32)))


def test_facade_learnable_preset_lsq(target):
    config = FakeQuantConfig(symmetric=False, numerics="torch").with_learnable()
    fq = FakeQuantize(config)
    x = np.linspace(-1, 3, 1001, dtype=F32)
    fq.initialize(0.01, 40.4)            # the forward rounds the zero point to 40
    y = fq.forward(x)
    ry, _ = fake_quantize_torch_ref(x, 0.01, 40.0, 0, 255)
    np.testing.assert_array_equal(bits(y), bits(ry))
    g = np.linspace(-1, 1, x.size, dtype=F32)
    fq.backward(g)
    _, ds, dz = lsq_backward_preset_ref(x, g, 0.01, 40.0, 0, 255, "torch")
    gs = 1.0 / np.sqrt(x.size * 255.0)
    assert float(fq.grads()[0][0]) == pytest.approx(float(F32(ds * gs)), rel=1e-6)
    assert float(fq.grads()[1][0]) == pytest.approx(float(F32(dz * gs)), rel=1e-6)


@pytest.mark.parametrize("lo,hi", [(-1.0, 2.0), (0.3, 2.0), (-5.0, -0.1), (0.0, 0.0),
                                   (-1e-30, 1e-30), (-3e38, 3e38), (-0.7, 0.7)], ids=str)
@pytest.mark.parametrize("symmetric", [True, False])
def test_torch_qparams_match_scalar_oracle(lo, hi, symmetric):
    config = FakeQuantConfig(symmetric=symmetric, numerics="torch")
    obs = QuantObserver()
    obs.observe(np.array([lo, hi], F32))
    qmin, qmax = config.quant_range()
    ref = torch_qparams_ref(lo, hi, qmin, qmax, symmetric)
    if np.isfinite(F32(hi) - F32(lo)):
        assert obs.compute_qparams(config) == ref


# --- against the real frameworks ------------------------------------------------------

@pytest.mark.parametrize("lo,hi", [(-1.0, 2.0), (0.3, 2.0), (-5.0, -0.1), (0.0, 0.0),
                                   (-1e-30, 1e-30), (-0.7, 0.7), (-0.0123, 7.77)], ids=str)
@pytest.mark.parametrize("symmetric", [True, False])
def test_torch_qparams_match_minmax_observer(lo, hi, symmetric):
    torch = pytest.importorskip("torch")
    config = FakeQuantConfig(symmetric=symmetric, numerics="torch")
    qmin, qmax = (int(v) for v in config.quant_range())
    dtype = torch.qint8 if symmetric else torch.quint8
    scheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
    tobs = torch.ao.quantization.MinMaxObserver(dtype=dtype, qscheme=scheme, quant_min=qmin,
                                                quant_max=qmax)
    x = np.array([lo, hi], F32)
    tobs(torch.from_numpy(x))
    ts, tz = tobs.calculate_qparams()
    obs = QuantObserver()
    obs.observe(x)
    scale, zp = obs.compute_qparams(config)
    assert np.float32(scale).view(np.uint32) == ts.numpy().astype(F32).view(np.uint32)[0]
    expect_zp = 0 if symmetric else int(tz)
    assert zp == expect_zp
    # per channel: the vectorized formula agrees with torch's per-channel observer
    tch = torch.ao.quantization.PerChannelMinMaxObserver(
        ch_axis=0, dtype=dtype, qscheme=torch.per_channel_symmetric if symmetric
        else torch.per_channel_affine, quant_min=qmin, quant_max=qmax)
    xc = np.array([[lo, hi], [hi * 0.5, lo * 2], [0.25, 0.5]], F32)
    tch(torch.from_numpy(xc))
    cs, cz = tch.calculate_qparams()
    s, z = qparams_arrays(xc.min(axis=1), xc.max(axis=1), config)
    np.testing.assert_array_equal(bits(s), bits(cs.numpy()))
    np.testing.assert_array_equal(z, cz.numpy() if not symmetric else 0)


@pytest.mark.parametrize("n", [1, 1000, 1 << 16], ids=lambda n: f"n{n}")
@pytest.mark.parametrize("zp,qmin,qmax", RANGES, ids=str)
def test_torch_preset_equals_torch_op(target, zp, qmin, qmax, n):
    torch = pytest.importorskip("torch")
    scale = 0.0137
    x = tricky(n, scale)
    config_range = (qmin, qmax)
    out = np.empty_like(x)
    mask = np.empty(n, np.uint8)
    _backend.kernels.fake_quantize_preset(x, out, scale, zp, *config_range,
                                          _backend.kernels.PRESET_TORCH, mask, 1)
    xt = torch.from_numpy(x.copy()).requires_grad_()
    yt = torch.fake_quantize_per_tensor_affine(xt, scale, int(zp), int(qmin), int(qmax))
    g = torch.from_numpy(np.random.default_rng(3).standard_normal(n).astype(F32))
    yt.backward(g)
    np.testing.assert_array_equal(bits(out), bits(yt.detach().numpy()))
    grad = g.numpy() * mask.astype(F32)        # torch's backward: grad * mask
    np.testing.assert_array_equal(bits(grad), bits(xt.grad.numpy()))


@pytest.mark.parametrize("shape,axis", [((16, 257), 0), ((64, 10), 1), ((4, 6, 5), 1)], ids=str)
@pytest.mark.parametrize("qmin,qmax", [(-127, 127), (0, 255)], ids=str)
def test_torch_preset_equals_torch_per_channel_op(target, shape, axis, qmin, qmax):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    C = shape[axis]
    scale = rng.uniform(0.005, 0.05, C).astype(F32)
    zp = (np.zeros(C) if qmin < 0 else rng.integers(0, 60, C)).astype(np.int32)
    x = tricky(int(np.prod(shape)), 0.02).reshape(shape)
    out = np.empty_like(x)
    mask = np.empty(shape, np.uint8)
    k = _backend.kernels
    k.fake_quantize_preset_channels(x, out, scale, zp.astype(F32), int(np.prod(shape[:axis])),
                                    int(np.prod(shape[axis + 1:])), qmin, qmax,
                                    k.PRESET_TORCH_CHANNEL, mask)
    xt = torch.from_numpy(x.copy()).requires_grad_()
    yt = torch.fake_quantize_per_channel_affine(xt, torch.from_numpy(scale),
                                                torch.from_numpy(zp), axis, qmin, qmax)
    yt.backward(torch.ones_like(yt))
    np.testing.assert_array_equal(bits(out), bits(yt.detach().numpy()))
    np.testing.assert_array_equal(mask, xt.grad.numpy().astype(np.uint8))


def _ort_qdq(x, scale, zp, unsigned, axis=None):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    qtype = TensorProto.UINT8 if unsigned else TensorProto.INT8
    scale = np.atleast_1d(np.asarray(scale, F32))
    zp = np.atleast_1d(np.asarray(zp))
    dims = [] if axis is None else [scale.size]
    inits = [helper.make_tensor("s", TensorProto.FLOAT, dims, scale.tolist()),
             helper.make_tensor("z", qtype, dims, [int(v) for v in zp])]
    attrs = {} if axis is None else {"axis": axis}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **attrs),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **attrs)]
    graph = helper.make_graph(nodes, "qdq",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("n", [1, 1000, 1 << 16], ids=lambda n: f"n{n}")
@pytest.mark.parametrize("unsigned", [False, True], ids=["int8", "uint8"])
def test_onnx_preset_equals_onnxruntime(target, unsigned, n):
    scale, zp = 0.0137, (37 if unsigned else -3)
    qmin, qmax = (0, 255) if unsigned else (-128, 127)
    x = tricky(n, scale)
    y = _ort_qdq(x, scale, zp, unsigned)
    out = np.empty_like(x)
    _backend.kernels.fake_quantize_preset(x, out, scale, zp, qmin, qmax,
                                          _backend.kernels.PRESET_ONNX, None, 1)
    np.testing.assert_array_equal(bits(out), bits(y))


def test_onnx_preset_per_axis_equals_onnxruntime(target):
    rng = np.random.default_rng(5)
    x = tricky(8 * 300, 0.02).reshape(8, 300)
    scale = rng.uniform(0.005, 0.05, 8).astype(F32)
    zp = rng.integers(0, 60, 8)
    y = _ort_qdq(x, scale, zp, True, axis=0)
    out = np.empty_like(x)
    k = _backend.kernels
    k.fake_quantize_preset_channels(x, out, scale, zp.astype(F32), 1, 300, 0, 255,
                                    k.PRESET_ONNX, None)
    np.testing.assert_array_equal(bits(out), bits(y))


@pytest.mark.parametrize("symmetric", [True, False])
def test_onnx_qparams_match_onnxruntime(symmetric):
    pytest.importorskip("onnxruntime")
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    config = FakeQuantConfig(symmetric=symmetric, numerics="onnx")
    qmin, qmax = config.quant_range()
    qdtype = np.int8 if symmetric else np.uint8
    for lo, hi in [(-1.0, 2.0), (0.3, 2.0), (-5.0, -0.1), (0.0, 0.0), (-0.0123, 7.77)]:
        obs = QuantObserver()
        obs.observe(np.array([lo, hi], F32))
        zp_ref, s_ref = compute_scale_zp(F32(lo), F32(hi), qdtype(qmin), qdtype(qmax), symmetric)
        scale, zp = obs.compute_qparams(config)
        assert np.float32(scale).view(np.uint32) == np.float32(s_ref).view(np.uint32)
        assert zp == int(zp_ref)


@pytest.mark.parametrize("n", [0, 1, 33, 4097], ids=lambda n: f"n{n}")
def test_ste_backward_array_is_grad_times_mask(target, n):
    from qatcore import ste_backward_array

    rng = np.random.default_rng(n)
    g = rng.standard_normal(n).astype(F32)
    if n > 3:
        g[:3] = [np.nan, -np.inf, -2.0]
    m = rng.integers(0, 2, n).astype(np.uint8)
    out = ste_backward_array(g, m)
    np.testing.assert_array_equal(bits(out), bits(g * m.astype(F32)))
    same = g.copy()
    ste_backward_array(same, m, out=same)
    np.testing.assert_array_equal(bits(same), bits(out))
    with pytest.raises((TypeError, ValueError)):
        ste_backward_array(g, m.astype(np.int32))


# --- invariants (hypothesis) ----------------------------------------------------------
from hypothesis import given, settings, strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

_finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(x=hnp.arrays(np.float32, st.integers(1, 300), elements=_finite),
       scale=st.floats(2.0 ** -10, 10.0, width=32), zp=st.integers(0, 255),
       numerics=st.sampled_from(["torch", "onnx"]))
def test_preset_error_bound_and_monotone(x, scale, zp, numerics):
    from qatcore import fake_quantize_array

    y = fake_quantize_array(x, scale, zp, 0, 255, numerics=numerics)
    s = np.float64(np.float32(scale))
    lo, hi = (0 - zp) * s, (255 - zp) * s
    inside = (x >= lo) & (x <= hi)
    # |y - x| <= scale/2 inside the range (plus float32 rounding of x*inv / x/scale)
    err = np.abs(y.astype(np.float64) - x)
    assert (err[inside] <= s / 2 * (1 + 1e-5) + 1e-6 * np.abs(x[inside])).all()
    order = np.argsort(x, kind="stable")
    assert (np.diff(y[order]) >= 0).all()                     # monotone
    lo32, hi32 = F32(0 - zp) * F32(scale), F32(255 - zp) * F32(scale)
    assert ((y >= lo32) & (y <= hi32)).all()                 # the ends are codes 0 and 255
