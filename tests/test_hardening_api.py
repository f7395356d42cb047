"""Hostile inputs to the library API (issue 13): lying ndarray subclasses, aliasing and
overlapping ``out=``, unaligned and masked arrays, non-integral integers, and the state
of every stateful class left unchanged by a call that raises.  Every example of the
issue is a test here.  ``tools/sanitize.sh`` runs this file under ASan+UBSan on every
CPU target (QATCORE_TARGET), so "no crash" also means "no sanitizer report"."""

import copy
import io
import os
import struct
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import qatcore
from qatcore import (ChannelObserver, DynamicQuantizer, FakeQuantConfig, FakeQuantize,
                     HistogramObserver, MixedPrecision, ObserverMethod, QuantizedLinear,
                     QuantObserver, fake_quantize_array, lsq_backward_array,
                     ste_backward_array)
from qatcore import nn as qnn
from qatcore.mixed_precision import MAX_LOSS_SCALE

N = 37          # odd, not a multiple of any vector width

pytestmark = pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")


# --- lying subclasses -----------------------------------------------------------------------
class BigLiar(np.ndarray):
    """Claims a million elements it does not have (reshape/shape/size/ndim all lie)."""

    @property
    def shape(self):
        return (1 << 20,)

    @property
    def size(self):
        return 1 << 20

    @property
    def ndim(self):
        return 1

    def reshape(self, *args, **kwargs):
        return np.zeros(1 << 20, dtype=self.dtype)


class SmallLiar(np.ndarray):
    """Claims one element; its reshape returns a 1-element array."""

    @property
    def shape(self):
        return (1,)

    @property
    def size(self):
        return 1

    def reshape(self, *args, **kwargs):
        return np.zeros(1, dtype=self.dtype)


LIARS = [BigLiar, SmallLiar]
LIAR_IDS = ["claims-1M", "claims-1"]


def _x(n=N, seed=0):
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32) * 3


def _same(a, b):
    if a is None or b is None:
        assert a is None and b is None
        return
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype
    assert np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8))


def _honest_or_refused(run_lying, run_honest):
    """A call with a lying argument either refuses it (TypeError/ValueError) or computes
    what the honest base-class array gives. It never reads or writes past a buffer."""
    expected = run_honest()
    try:
        got = run_lying()
    except (TypeError, ValueError):
        return
    if isinstance(expected, tuple):
        for g, e in zip(got, expected):
            _same(g, e) if isinstance(e, np.ndarray) else None
    else:
        _same(got, expected)


def _frozen_fq(learnable=False, training=True):
    cfg = FakeQuantConfig.int8()
    fq = FakeQuantize(cfg.with_learnable() if learnable else cfg)
    fq.fake_quantize(_x())
    fq.disable_calibration()
    fq.train(training)
    return fq


def _layer(zp=0):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, N)).astype(np.float32)
    layer = QuantizedLinear.from_float(w, rng.standard_normal(3), N, 3)
    layer.set_input_scale(0.05, zero_point=zp)
    return layer


# Every entry point that takes a float array: (id, call(x) -> result).
def _float_entry_points():
    lin = _layer()
    return [
        ("observer.observe", lambda x: (QuantObserver().observe(x), None)[1]),
        ("histogram.observe", lambda x: (HistogramObserver().observe(x), None)[1]),
        ("dynamic.quantize", lambda x: DynamicQuantizer().quantize(x)[0]),
        ("fq.fake_quantize", lambda x: FakeQuantize().fake_quantize(x)),
        ("fq.forward", lambda x: _frozen_fq().forward(x)),
        ("lsq.forward", lambda x: _frozen_fq(True).forward(x)),
        ("fq.backward", lambda x: _backward_after(_frozen_fq(), x)),
        ("lsq.backward", lambda x: _backward_after(_frozen_fq(True), x)),
        ("fake_quantize_array", lambda x: fake_quantize_array(x, 0.1, 0, -127, 127)),
        ("fake_quantize_array.torch", lambda x: fake_quantize_array(x, 0.1, 0, -127, 127,
                                                                    numerics="torch")),
        ("lsq_backward_array", lambda x: lsq_backward_array(x, np.ones(N, np.float32), 0.1,
                                                            0.0, -127, 127)[0]),
        ("ste_backward_array", lambda x: ste_backward_array(x, np.ones(N, np.uint8))),
        ("linear.forward", lambda x: lin.forward(x)),
        ("mixed.scale_loss", lambda x: MixedPrecision().scale_loss(x)),
        ("mixed.check_overflow", lambda x: np.array(MixedPrecision().check_overflow(x))),
        ("nn.Linear", lambda x: qnn.Linear(N, 2, seed=0).forward(x[None])),
        ("nn.ReLU", lambda x: qnn.ReLU().forward(x)),
    ]


def _backward_after(fq, g):
    fq.forward(_x())
    return fq.backward(g)


FLOAT_EPS = _float_entry_points()


@pytest.mark.parametrize("liar", LIARS, ids=LIAR_IDS)
@pytest.mark.parametrize("name,call", FLOAT_EPS, ids=[e[0] for e in FLOAT_EPS])
def test_lying_input(name, call, liar):
    x = _x()
    _honest_or_refused(lambda: call(x.view(liar)), lambda: call(x.copy()))


# Every entry point that takes an out= (or grad_in=, mask=): (id, call(out) -> result,
# dtype of out).
def _out_entry_points():
    x = _x()
    g = np.random.default_rng(2).standard_normal(N).astype(np.float32)
    q, s, z = DynamicQuantizer().quantize(x)
    return [
        ("dynamic.quantize", lambda o: DynamicQuantizer().quantize(x, out=o)[0], np.int8),
        ("dynamic.dequantize", lambda o: DynamicQuantizer().dequantize(q, s, z, out=o),
         np.float32),
        ("fq.fake_quantize", lambda o: FakeQuantize().fake_quantize(x, out=o), np.float32),
        ("fq.forward", lambda o: _frozen_fq().forward(x, out=o), np.float32),
        ("fq.backward", lambda o: _fwd(_frozen_fq()).backward(g, out=o), np.float32),
        ("lsq.backward", lambda o: _fwd(_frozen_fq(True)).backward(g, out=o), np.float32),
        ("fake_quantize_array.out", lambda o: fake_quantize_array(x, 0.1, 0, -127, 127, out=o),
         np.float32),
        ("fake_quantize_array.mask", lambda o: (fake_quantize_array(x, 0.1, 0, -127, 127,
                                                                    mask=o), o)[1], np.uint8),
        ("fake_quantize_array.channel", lambda o: fake_quantize_array(
            x.reshape(1, N), np.full(N, 0.1), np.zeros(N), -127, 127, axis=1,
            out=None if o is None else o.reshape(1, N) if type(o) is np.ndarray else o),
         np.float32),
        ("lsq_backward_array", lambda o: lsq_backward_array(x, g, 0.1, 0.0, -127, 127,
                                                            grad_in=o)[0], np.float32),
        ("ste_backward_array", lambda o: ste_backward_array(g, np.ones(N, np.uint8), out=o),
         np.float32),
    ]


def _fwd(fq):
    fq.forward(_x())
    return fq


OUT_EPS = _out_entry_points()


@pytest.mark.parametrize("liar", LIARS, ids=LIAR_IDS)
@pytest.mark.parametrize("name,call,dtype", OUT_EPS, ids=[e[0] for e in OUT_EPS])
def test_lying_out(name, call, dtype, liar):
    shape = (1, N) if name.endswith("channel") else (N,)
    honest = np.zeros(shape, dtype)
    expected = np.array(call(honest))
    out = np.zeros(shape, dtype).view(liar)
    try:
        got = call(out)
    except (TypeError, ValueError):
        return
    _same(np.asarray(got), expected)


@pytest.mark.parametrize("liar", LIARS, ids=LIAR_IDS)
@pytest.mark.parametrize("entry", ["forward_quantized", "forward_int8", "dequantize"])
def test_lying_integer_codes(entry, liar):
    """The issue's x_q whose .shape lies about K (SIGSEGV before), and dequantize's q."""
    codes = np.random.default_rng(3).integers(-127, 128, (4, N)).astype(np.int8)
    if entry == "dequantize":
        def call(c):
            return DynamicQuantizer().dequantize(c, 0.5, 0.0)
    else:
        layer = _layer()

        def call(c):
            return getattr(layer, entry)(c, *(() if entry == "forward_quantized" else (0.1, 0)))
    _honest_or_refused(lambda: call(codes.view(liar)), lambda: call(codes.copy()))


@pytest.mark.parametrize("liar", LIARS, ids=LIAR_IDS)
@pytest.mark.parametrize("which", ["lsq.grad_out", "ste.mask", "fqa.channel_scale",
                                   "linear.from_float", "linear.from_qat", "nn.grad_out"])
def test_lying_second_arguments(which, liar):
    x, g = _x(), _x(seed=9)
    mask = (np.arange(N) % 3 == 0).astype(np.uint8)
    calls = {
        "lsq.grad_out": lambda v: lsq_backward_array(x, v, 0.1, 0.0, -127, 127)[0],
        "ste.mask": lambda v: ste_backward_array(g, v),
        "fqa.channel_scale": lambda v: fake_quantize_array(x.reshape(1, N), v, np.zeros(N),
                                                           -127, 127, axis=1),
        "linear.from_float": lambda v: QuantizedLinear.from_float(v, None, N, 1).weights_q,
        "linear.from_qat": lambda v: QuantizedLinear.from_qat(
            v, None, _frozen_fq(), _frozen_fq()).weights_q,
        "nn.grad_out": lambda v: _nn_backward(v),
    }
    arg = {"lsq.grad_out": g, "ste.mask": mask, "fqa.channel_scale": np.full(N, 0.1, np.float32),
           "linear.from_float": x.reshape(1, N), "linear.from_qat": x.reshape(1, N),
           "nn.grad_out": g.reshape(1, N)}[which]
    _honest_or_refused(lambda: calls[which](arg.view(liar)), lambda: calls[which](arg.copy()))


def _nn_backward(g):
    lin = qnn.Linear(3, N, seed=0)
    lin.forward(np.ones((1, 3), np.float32))
    return lin.backward(g)


# --- aliasing out= -----------------------------------------------------------------------
def _alias_views(dtype, out_dtype, n=N, shift=0):
    """x (dtype, n values) and out (out_dtype, n values) over one buffer, out starting
    `shift` bytes after x."""
    width = max(np.dtype(dtype).itemsize, np.dtype(out_dtype).itemsize)
    buf = np.zeros((2 * n + 8) * width + 256, np.uint8)
    x = buf[:n * np.dtype(dtype).itemsize].view(dtype)
    o = buf[shift:shift + n * np.dtype(out_dtype).itemsize].view(out_dtype)
    return x, o


@pytest.mark.parametrize("shift", [0, 4, 8, 12])
def test_dynamic_quantize_out_aliasing_input(shift):
    """Issue: quantize(x, out=...) with out aliasing x's bytes gave wrong codes silently."""
    x, o = _alias_views(np.float32, np.int8, shift=shift)
    x[...] = _x()
    ref, s, z = DynamicQuantizer().quantize(x.copy())
    got, s2, z2 = DynamicQuantizer().quantize(x, out=o)
    assert got is o and (s, z) == (s2, z2)
    _same(o, ref)


@pytest.mark.parametrize("shift", [0, 1, 16, 36])
def test_dynamic_dequantize_out_aliasing_input(shift):
    q, o = _alias_views(np.int8, np.float32, shift=shift * 4 if shift else 0)
    q[...] = np.arange(N) - N // 2
    ref = DynamicQuantizer().dequantize(q.copy(), 0.25, 1.0)
    _same(DynamicQuantizer().dequantize(q, 0.25, 1.0, out=o), ref)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 40), st.integers(1, 90), st.sampled_from([8, 16]))
def test_dynamic_aliasing_any_offset(offset_items, n, bits):
    """Property: whatever the overlap of out with x, the codes are those of a copy."""
    cfg = FakeQuantConfig(bits=bits, symmetric=False)
    dq = DynamicQuantizer(cfg)
    cdt = dq.code_dtype
    buf = np.zeros(4 * (n + 64), np.uint8)
    x = buf[:4 * n].view(np.float32)
    x[...] = np.linspace(-2, 5, n, dtype=np.float32)
    start = offset_items * cdt.itemsize
    o = buf[start:start + n * cdt.itemsize].view(cdt)
    ref, _, _ = dq.quantize(x.copy())
    dq.quantize(x, out=o)
    _same(o, ref)


@pytest.mark.parametrize("shift", [0, 1, 5])
@pytest.mark.parametrize("name", ["fq.fake_quantize", "fq.forward", "fake_quantize_array",
                                  "fake_quantize_array.torch", "ste_backward_array",
                                  "fq.backward", "lsq.backward", "lsq_backward_array.x",
                                  "lsq_backward_array.grad"])
def test_float_out_overlap(name, shift):
    """out sharing x's memory: exactly x is allowed (in place) and right; a shifted
    overlap is either right or a ValueError, and a ValueError changes no state."""
    buf = np.zeros(N + 8, np.float32)
    buf[:N] = _x()
    x, o = buf[:N], buf[shift:shift + N]
    g = _x(seed=5)

    def run(a, out):
        if name == "fq.fake_quantize":
            fq = FakeQuantize()
            return fq.fake_quantize(a, out=out), fq
        if name == "fq.forward":
            fq = _frozen_fq()
            return fq.forward(a, out=out), fq
        if name.startswith("fake_quantize_array"):
            return fake_quantize_array(a, 0.05, 0, -127, 127, out=out,
                                       numerics="torch" if "torch" in name else "aprender"), None
        if name == "ste_backward_array":
            return ste_backward_array(a, (np.arange(N) % 2).astype(np.uint8), out=out), None
        if name in ("fq.backward", "lsq.backward"):
            fq = _frozen_fq(learnable=name.startswith("lsq"))
            fq.forward(g)
            return fq.backward(a, out=out), fq
        if name == "lsq_backward_array.x":
            return lsq_backward_array(a, g, 0.05, 0.0, -127, 127, grad_in=out)[0], None
        return lsq_backward_array(g, a, 0.05, 0.0, -127, 127, grad_in=out)[0], None

    expected, _ = run(x.copy(), None)
    expected = np.array(expected)
    try:
        got, obj = run(x, o)
    except ValueError as exc:
        assert shift and "overlap" in str(exc)
        return
    _same(np.asarray(got), expected)


def test_ste_out_overlapping_mask_refused():
    buf = np.ones(4 * N, np.uint8)
    with pytest.raises(ValueError, match="overlaps mask"):
        ste_backward_array(_x(), buf[:N], out=buf.view(np.float32)[:N])


def test_mask_overlapping_x_or_out_refused():
    x = _x()
    raw = x.view(np.uint8)[:N]
    with pytest.raises(ValueError, match="mask overlaps"):
        fake_quantize_array(x, 0.1, 0, -127, 127, mask=raw)
    out = np.empty(N, np.float32)
    with pytest.raises(ValueError, match="mask overlaps"):
        fake_quantize_array(x, 0.1, 0, -127, 127, out=out, mask=out.view(np.uint8)[:N])


# --- unaligned, non-native, masked ---------------------------------------------------------
@pytest.mark.parametrize("name,call", FLOAT_EPS, ids=[e[0] for e in FLOAT_EPS])
def test_unaligned_input(name, call):
    """Issue: np.frombuffer(bytearray(4n + 1), float32, n, 1) reached the kernels as a
    misaligned const float * (UBSan reports on every target)."""
    x = np.frombuffer(bytearray(1) + bytearray(_x().tobytes()), np.float32, N, 1)
    assert not x.flags.aligned
    got, expected = call(x), call(_x())
    if expected is not None:
        _same(got, expected)


@pytest.mark.parametrize("name,call,dtype", OUT_EPS, ids=[e[0] for e in OUT_EPS])
def test_unaligned_or_big_endian_out_refused(name, call, dtype):
    shape = (1, N) if name.endswith("channel") else (N,)
    if np.dtype(dtype).itemsize > 1:
        bad = np.frombuffer(bytearray(np.dtype(dtype).itemsize * N + 1), dtype, N, 1)
        with pytest.raises(ValueError, match="aligned|read-only"):
            call(bad.reshape(shape))
        big = np.zeros(shape, np.dtype(dtype).newbyteorder(">"))
        with pytest.raises(TypeError, match="byte order"):
            call(big)
    with pytest.raises(TypeError, match="plain numpy.ndarray"):
        call(np.asmatrix(np.zeros((1, N), dtype)))


@pytest.mark.parametrize("name,call", FLOAT_EPS, ids=[e[0] for e in FLOAT_EPS])
def test_masked_input_refused(name, call):
    """Issue: a masked 1e30 became the range; masks are never silently ignored."""
    x = np.ma.array(_x(), mask=np.arange(N) == 3)
    x.data[3] = 1e30
    with pytest.raises(TypeError, match="MaskedArray"):
        call(x)


def test_masked_everywhere_else():
    m = np.ma.array(np.ones((2, 4)), mask=[[0, 1, 0, 0], [0, 0, 0, 0]])
    with pytest.raises(TypeError, match="MaskedArray"):
        ChannelObserver("min_max", axis=0).observe(m)
    with pytest.raises(TypeError, match="MaskedArray"):
        QuantizedLinear.from_float(m, None, 4, 2)
    with pytest.raises(TypeError, match="MaskedArray"):
        DynamicQuantizer().dequantize(np.ma.array(np.zeros(3, np.int8)), 1.0, 0.0)
    with pytest.raises(TypeError, match="MaskedArray"):
        fake_quantize_array(np.ones((2, 4), np.float32), np.ma.array([0.1, 0.1], mask=[0, 1]),
                            [0, 0], -127, 127, axis=0)
    with pytest.raises(TypeError):
        MixedPrecision().unscale_gradients(np.ma.array(np.ones(3, np.float32)))
    with pytest.raises(TypeError, match="MaskedArray"):
        qnn.Linear(4, 2, weight=m.reshape(2, 4))


# --- non-integral integers, non-finite reals --------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda v: FakeQuantConfig(bits=v),
    lambda v: QuantObserver(n_threads=v),
    lambda v: FakeQuantize(n_threads=v),
    lambda v: DynamicQuantizer(n_threads=v),
    lambda v: HistogramObserver(bins=v),
    lambda v: HistogramObserver(num_bits=v),
    lambda v: ChannelObserver("min_max", axis=v),
    lambda v: qnn.Linear(v, 2),
    lambda v: qnn.Linear(2, v),
    lambda v: qnn.Linear(2, 2, seed=v),
    lambda v: QuantizedLinear.from_float(np.ones((2, 2)), None, v, 2),
    lambda v: _layer().set_input_scale(0.1, zero_point=v),
    lambda v: _layer().forward_int8(np.zeros((1, N), np.int8), 0.1, v),
    lambda v: fake_quantize_array(np.ones((2, 2), np.float32), [1, 1], [0, 0], -1, 1, axis=v),
], ids=["config.bits", "observer.n_threads", "fq.n_threads", "dynamic.n_threads",
        "hist.bins", "hist.num_bits", "channel.axis", "nn.in_features", "nn.out_features",
        "nn.seed", "linear.in_features", "set_input_scale.zero_point",
        "forward_int8.zero_point", "fqa.axis"])
@pytest.mark.parametrize("value", [np.array(8.7), np.array(2.5), 2.5, np.float64(2.0), True,
                                   "2"], ids=["0d-8.7", "0d-2.5", "float", "np.float64", "bool",
                                              "str"])
def test_non_integral_integers_refused(make, value):
    """Issue: FakeQuantConfig(bits=np.array(8.7)) / QuantObserver(n_threads=np.array(2.5))
    were accepted and truncated."""
    with pytest.raises((TypeError, ValueError)):
        make(value)


@pytest.mark.parametrize("make", [
    lambda v: qnn.SGD([np.zeros(2, np.float32)], [np.zeros(2, np.float32)], lr=v),
    lambda v: qnn.SGD([np.zeros(2, np.float32)], [np.zeros(2, np.float32)], momentum=v),
    lambda v: qnn.SGD([np.zeros(2, np.float32)], [np.zeros(2, np.float32)], weight_decay=v),
    lambda v: qnn.Adam([np.zeros(2, np.float32)], [np.zeros(2, np.float32)], lr=v),
    lambda v: qnn.Adam([np.zeros(2, np.float32)], [np.zeros(2, np.float32)], betas=(v, 0.9)),
    lambda v: qnn.Adam([np.zeros(2, np.float32)], [np.zeros(2, np.float32)], eps=v),
    lambda v: HistogramObserver("percentile", percentile=v),
    lambda v: _layer().set_input_scale(v),
], ids=["sgd.lr", "sgd.momentum", "sgd.weight_decay", "adam.lr", "adam.beta1", "adam.eps",
        "hist.percentile", "set_input_scale"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), "0.1", 1j,
                                   10 ** 400], ids=["nan", "inf", "-inf", "str", "complex",
                                                    "10**400"])
def test_nonfinite_hyper_parameters_refused(make, value):
    with pytest.raises((TypeError, ValueError)):
        make(value)


@pytest.mark.parametrize("bad", [np.array([[1 + 2j, 0]]), np.array([["a", "b"]]),
                                 np.array([[object(), 1]], dtype=object)],
                         ids=["complex", "str", "object"])
@pytest.mark.parametrize("layer", ["Linear", "QATLinear", "ReLU", "ActivationFakeQuant"])
def test_nn_refuses_complex_and_strings(layer, bad):
    model = {"Linear": lambda: qnn.Linear(2, 2, seed=0),
             "QATLinear": lambda: qnn.QATLinear(2, 2, seed=0),
             "ReLU": qnn.ReLU, "ActivationFakeQuant": qnn.ActivationFakeQuant}[layer]()
    with pytest.raises(TypeError):
        model.forward(bad)


def test_nn_refuses_complex_logits_and_weights():
    with pytest.raises(TypeError):
        qnn.SoftmaxCrossEntropy().forward(np.array([[1j, 0]]), np.array([0]))
    with pytest.raises(TypeError):
        qnn.Linear(2, 1, weight=np.array([[1j, 1]]))
    with pytest.raises(TypeError):
        qnn.Linear(2, 1, weight=np.array([["1", "2"]]))


# --- the other examples of the issue --------------------------------------------------------
def _linear_state(layer):
    return {k: np.array(v) for k, v in layer.state_dict().items()}


def _same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        _same(a[k], b[k])


@pytest.mark.parametrize("kwargs", [dict(scale=0.1, zero_point=200), dict(scale=0.1, zero_point=-129),
                                    dict(scale=10 ** 400), dict(scale=float("nan")),
                                    dict(scale=0.0), dict(scale=0.1, zero_point=0.7)],
                         ids=["zp200", "zp-129", "10**400", "nan", "zero", "zp0.7"])
def test_set_input_scale_refused_layer_unchanged(kwargs):
    layer = _layer(zp=3)
    before = _linear_state(layer)
    with pytest.raises((ValueError, TypeError)) as info:
        layer.set_input_scale(**kwargs)
    assert ("zero_point" if "zero_point" in kwargs else "scale") in str(info.value)
    _same_state(before, _linear_state(layer))


def test_set_input_scale_huge_int_is_value_error_naming_scale():
    with pytest.raises(ValueError, match="scale"):
        _layer().set_input_scale(10 ** 400)


def test_weights_q_views_cannot_change_the_codes():
    """Issue: a caller's view of weights_q changed the codes behind the packed weights."""
    layer = _layer()
    x = np.random.default_rng(4).integers(-128, 128, (2, N)).astype(np.int8)
    ref = layer.forward_quantized(x)
    for arr in (layer.weights_q, layer.bias_q, layer.weights_q.view(), layer.weights_q[0]):
        with pytest.raises(ValueError):
            arr.flags.writeable = True
        with pytest.raises(ValueError):
            arr[...] = 0
    pc = QuantizedLinear.from_float(np.ones((2, 3)), None, 3, 2, per_channel=True)
    with pytest.raises(ValueError):
        pc.weight_scale.flags.writeable = True
    _same(layer.forward_quantized(x), ref)


def test_from_state_dict_copies_and_leaves_callers_arrays_writable():
    state = _layer().state_dict()
    layer = QuantizedLinear.from_state_dict(state)
    for key, value in state.items():
        if isinstance(value, np.ndarray) and value.ndim:
            assert value.flags.writeable, key
    state["weights_q"][...] = 0          # the caller's array is the caller's
    assert layer.weights_q.any()


def test_mixed_precision_update_refuses_non_bools():
    mp = MixedPrecision()
    for _ in range(5):
        mp.update(False)
    before = (mp.loss_scale, mp.steps_since_overflow)
    for bad in ("no", None, 0, 1, 1.0, np.array([True])):
        with pytest.raises(TypeError, match="overflow"):
            mp.update(bad)
        assert (mp.loss_scale, mp.steps_since_overflow) == before
    mp.update(np.bool_(True))
    assert mp.loss_scale == before[0] / 2


def test_mixed_precision_loss_scale_is_capped():
    """Issue: after ~226 000 clean steps the scale reached 6.8e38, scale_loss gave inf."""
    mp = MixedPrecision()
    for _ in range(2000 * 12):
        mp.update(False)
    assert mp.loss_scale == MAX_LOSS_SCALE == 2.0 ** 24
    assert np.isfinite(mp.scale_loss(np.float32(1e30)))
    assert np.isfinite(mp.scale_loss(np.ones(3, np.float32) * 1e30)).all()


@pytest.mark.parametrize("numerics", ["aprender", "torch"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_lsq_backward_uses_forwards_input_not_the_callers_array(numerics, symmetric):
    """Issue: overwriting x between forward and backward changed dL/dscale (0.035 -> 356)."""
    cfg = FakeQuantConfig(symmetric=symmetric, learnable=True, numerics=numerics)

    def grads(overwrite):
        fq = FakeQuantize(cfg)
        x = _x()
        fq.initialize(0.05, 0.0 if symmetric else 3.0)
        fq.forward(x)
        if overwrite:
            x[...] = 1e4
        g = fq.backward(np.ones(N, np.float32))
        return g, [float(v[0]) for v in fq.grads()]

    g0, d0 = grads(False)
    g1, d1 = grads(True)
    _same(g0, g1)
    assert d0 == d1


def test_nn_linear_backward_uses_forwards_input():
    lin = qnn.Linear(N, 2, seed=0)
    x = _x().reshape(1, N)
    lin.forward(x)
    x[...] = 1e4
    lin.backward(np.ones((1, 2), np.float32))
    _same(lin.grad_weight, np.repeat(_x().reshape(1, N), 2, axis=0))


def test_save_writes_exactly_the_path_and_load_reads_it(tmp_path):
    layer = _layer()
    layer.save(tmp_path / "fc")
    assert sorted(os.listdir(tmp_path)) == ["fc"]
    _same_state(_linear_state(QuantizedLinear.load(tmp_path / "fc")), _linear_state(layer))
    layer.save(str(tmp_path / "fc2.npz"))
    assert (tmp_path / "fc2.npz").is_file()
    # A file that numpy.savez wrote as fc3.npz (older qatcore) is found by load("fc3").
    np.savez(tmp_path / "fc3", **layer.state_dict())
    QuantizedLinear.load(tmp_path / "fc3")


def test_load_fifo_and_link_loop(tmp_path):
    fifo = tmp_path / "f.npz"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="regular file"):
        QuantizedLinear.load(fifo)                 # never blocks on open()
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    with pytest.raises(ValueError, match="loop"):
        QuantizedLinear.load(loop)
    with pytest.raises(FileNotFoundError):
        QuantizedLinear.load(tmp_path / "missing")


def test_save_to_a_directory_is_refused(tmp_path):
    with pytest.raises(ValueError, match="directory"):
        _layer().save(tmp_path)
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="directory"):
        QuantizedLinear.load(tmp_path)


@pytest.mark.parametrize("numerics", ["aprender", "torch", "onnx"])
@pytest.mark.parametrize("learnable", [False, True])
def test_bits1_asymmetric_over_huge_range_is_finite(numerics, learnable):
    """Issue: bits=1 asymmetric over ±2e38: scale inf, NaN outputs."""
    cfg = FakeQuantConfig(bits=1, symmetric=False, numerics=numerics, learnable=learnable)
    x = np.array([-2e38, -1.0, 0.0, 1e38, 2e38], np.float32)
    fq = FakeQuantize(cfg)
    y = fq.fake_quantize(x)
    assert np.isfinite(fq.scale) and np.isfinite(fq.zero_point) and np.isfinite(y).all()
    fq.disable_calibration()
    assert np.isfinite(fq.forward(x)).all()
    assert np.isfinite(fq.backward(np.ones(5, np.float32))).all()
    assert all(np.isfinite(g).all() for g in fq.grads())
    if numerics != "aprender":
        return
    q, s, z = DynamicQuantizer(cfg).quantize(x)
    assert np.isfinite(s) and np.isfinite(DynamicQuantizer(cfg).dequantize(q, s, z)).all()
    obs = QuantObserver()
    obs.observe(x)
    assert all(np.isfinite(obs.compute_qparams(cfg)))


@pytest.mark.parametrize("per_channel", [False, True])
def test_denormal_weights_round_trip(tmp_path, per_channel):
    """Issue: max|w| 1e-45 gave weight_scale 0.0, a layer save() wrote and load() refused."""
    w = np.full((2, 3), 1e-45, np.float32)
    layer = QuantizedLinear.from_float(w, None, 3, 2, per_channel=per_channel)
    assert (np.asarray(layer.weight_scale) > 0).all()
    assert (np.asarray(layer.weight_scale) >= np.finfo(np.float32).tiny).all()
    layer.save(tmp_path / "d.npz")
    _same_state(_linear_state(QuantizedLinear.load(tmp_path / "d.npz")), _linear_state(layer))


def _npz_bytes(members):
    """A .npz archive of raw members {name: bytes}."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _npy(arr):
    b = io.BytesIO()
    np.save(b, arr, allow_pickle=False)
    return b.getvalue()


def _layer_members(**override):
    state = _layer().state_dict()
    state.update(override)
    return {f"{k}.npy": _npy(np.asarray(v)) for k, v in state.items()}


@pytest.mark.parametrize("key,value,match", [
    ("bits", np.float32(8.9), "bits"),
    ("bits", np.float64(8.0), "bits"),
    ("input_zero_point", np.float32(0.7), "input_zero_point"),
    ("per_channel", np.float32(0.5), "per_channel"),
    ("input_qrange", np.array([-128.0, 127.0]), "input_qrange"),
], ids=["bits8.9", "bits-float", "zp0.7", "per_channel", "qrange-float"])
def test_load_refuses_non_integral_fields(tmp_path, key, value, match):
    path = tmp_path / "l.npz"
    path.write_bytes(_npz_bytes(_layer_members(**{key: value})))
    with pytest.raises(ValueError, match=match):
        QuantizedLinear.load(path)


def _header(shape, descr="|i1"):
    h = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    h += b" " * (63 - (len(h) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h


@pytest.mark.parametrize("member", [
    _header((1 << 45,)) + b"\0" * 16,                 # a tiny file claiming 32 TiB
    _header((1 << 22, 1 << 22)) + b"\0" * 16,
    _header((1 << 64,)),
    _header((-4,)),
    _header((3, 4)) + b"\0" * 5,                      # truncated data
    _header((2,), "|O") + b"\0" * 16,                 # objects: never unpickled
    b"\x93NUMPY\x01\x00\xff\xff" + b"{" * 200,        # a mutated header
    b"not a npy member",
], ids=["32TiB", "16TiB-2d", "2**64", "negative", "truncated", "object", "mutated", "garbage"])
def test_load_hostile_member(tmp_path, member):
    members = _layer_members()
    members["weights_q.npy"] = member
    path = tmp_path / "h.npz"
    path.write_bytes(_npz_bytes(members))
    with pytest.raises(ValueError):
        QuantizedLinear.load(path)


@pytest.mark.parametrize("mutate", ["truncate", "empty", "crc", "not-zip"])
def test_load_corrupt_archive(tmp_path, mutate):
    data = bytearray(_npz_bytes(_layer_members()))
    if mutate == "truncate":
        data = data[:len(data) // 2]
    elif mutate == "empty":
        data = bytearray()
    elif mutate == "crc":
        i = data.index(b"weights_q.npy") + len("weights_q.npy") + 130
        data[i] ^= 0xFF
    else:
        data = bytearray(b"hello" * 20)
    path = tmp_path / "c.npz"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError):
        QuantizedLinear.load(path)


def test_load_zip_claiming_huge_uncompressed_size(tmp_path):
    """A zip directory entry claiming a giant uncompressed size is bounded by what the
    archive's compressed bytes can expand to."""
    members = _layer_members()
    data = bytearray(_npz_bytes(members))
    # Patch the central directory's uncompressed size of weights_q.npy to 2^32 - 1.
    name = b"weights_q.npy"
    pos = data.find(b"PK\x01\x02")
    while pos >= 0:
        nlen = struct.unpack_from("<H", data, pos + 28)[0]
        if data[pos + 46:pos + 46 + nlen] == name:
            struct.pack_into("<I", data, pos + 24, 0xFFFFFFFF)
        pos = data.find(b"PK\x01\x02", pos + 4)
    path = tmp_path / "z.npz"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError):
        QuantizedLinear.load(path)


def test_torch_tensor_requiring_grad_gets_a_clear_error():
    torch = pytest.importorskip("torch")
    t = torch.ones(N, requires_grad=True)
    for call in (lambda: FakeQuantize().fake_quantize(t), lambda: QuantObserver().observe(t),
                 lambda: DynamicQuantizer().quantize(t), lambda: HistogramObserver().observe(t),
                 lambda: qnn.ReLU().forward(t), lambda: fake_quantize_array(t, 1, 0, -1, 1)):
        with pytest.raises(TypeError, match=r"requires grad.*detach\(\)"):
            call()
    _same(FakeQuantize().fake_quantize(t.detach()), FakeQuantize().fake_quantize(np.ones(N)))


def test_error_messages_say_what_is_wrong():
    big = np.zeros(N, ">f4")
    with pytest.raises(TypeError, match="native byte order, got float32 \\(>f4"):
        FakeQuantize().fake_quantize(_x(), out=big)
    with pytest.raises(TypeError, match="plain numpy.ndarray"):
        FakeQuantize().fake_quantize(_x().reshape(1, N), out=np.asmatrix(np.zeros((1, N), np.float32)))


# --- state unchanged after an error ---------------------------------------------------------
def _fq_state(fq):
    return repr(fq.state_dict()), None if fq._mask is None else fq._mask.copy()


def _fq_cases():
    nan = np.array([1.0, np.nan], np.float32)
    return [
        ("nan-calibrating", lambda fq: fq.fake_quantize(nan)),
        ("masked", lambda fq: fq.fake_quantize(np.ma.array([1.0, 2.0], mask=[0, 1]))),
        ("complex", lambda fq: fq.fake_quantize(np.array([1j]))),
        ("string", lambda fq: fq.fake_quantize(np.array(["a"]))),
        ("bad-out", lambda fq: fq.fake_quantize(_x(), out=np.zeros(N, np.float64))),
        ("partial-overlap", lambda fq: (lambda b: fq.fake_quantize(b[:N], out=b[1:N + 1]))(
            np.zeros(N + 1, np.float32))),
        ("backward-shape", lambda fq: fq.backward(np.ones(3, np.float32))),
        ("backward-nan", lambda fq: fq.backward(np.full(N, np.nan, np.float32))),
        ("initialize-nan", lambda fq: fq.initialize(float("nan"))),
        ("load-bad-state", lambda fq: fq.load_state_dict({"format": "nope"})),
    ]


@pytest.mark.parametrize("learnable", [False, True])
@pytest.mark.parametrize("name,fail", _fq_cases(), ids=[c[0] for c in _fq_cases()])
def test_fake_quantize_state_unchanged_after_error(name, fail, learnable):
    cfg = FakeQuantConfig().with_learnable() if learnable else FakeQuantConfig()
    fq = FakeQuantize(cfg)
    fq.fake_quantize(_x())
    before = _fq_state(fq)
    with pytest.raises((TypeError, ValueError)):
        fail(fq)
    after = _fq_state(fq)
    assert before[0] == after[0]
    if before[1] is not None:
        _same(before[1], after[1])


@pytest.mark.parametrize("method", list(ObserverMethod))
@pytest.mark.parametrize("bad", [np.array([1.0, np.inf]), np.ma.array([1.0, 9.0], mask=[0, 1]),
                                 np.array([1j]), np.array(["x"]), [[1.0], [1.0, 2.0]]],
                         ids=["inf", "masked", "complex", "str", "ragged"])
def test_observer_state_unchanged_after_error(method, bad):
    obs = QuantObserver(method)
    obs.observe(_x())
    before = repr(obs.state_dict())
    with pytest.raises((TypeError, ValueError)):
        obs.observe(bad)
    assert repr(obs.state_dict()) == before


def _hist_state(h):
    counts, edges = h.histogram()
    return counts.tolist(), edges.tolist(), h.count, h.range()


@pytest.mark.parametrize("bad", [np.array([1.0, np.nan]), np.ma.array([1.0, 9.0], mask=[0, 1]),
                                 np.array([1j])], ids=["nan", "masked", "complex"])
def test_histogram_state_unchanged_after_error(bad):
    h = HistogramObserver("percentile")
    h.observe(_x())
    before = _hist_state(h)
    with pytest.raises((TypeError, ValueError)):
        h.observe(bad)
    with pytest.raises((TypeError, ValueError)):
        h.merge(HistogramObserver(bins=16))
    assert _hist_state(h) == before
    c = ChannelObserver("entropy", axis=0)
    c.observe(np.ones((2, 5)))
    r = c.ranges()
    for b in (np.ones((3, 5)), np.array([[1.0, np.nan], [1, 1]])):
        with pytest.raises(ValueError):
            c.observe(b)
    _same(c.ranges(), r)


@pytest.mark.parametrize("fail", [
    lambda L: L.forward(np.full((1, N), np.nan, np.float32)),
    lambda L: L.forward(np.ones((1, N + 1), np.float32)),
    lambda L: L.forward_quantized(np.zeros((1, N), np.int16)),
    lambda L: L.forward_int8(np.zeros((1, N), np.int8), -1.0),
    lambda L: L.set_input_scale(1e-30),          # bias codes overflow int32
    lambda L: setattr(L, "weights_q", np.zeros((3, N), np.int8)),
], ids=["nan", "shape", "int16", "neg-scale", "bias-overflow", "setattr"])
def test_quantized_linear_state_unchanged_after_error(fail):
    layer = _layer(zp=2)
    before = _linear_state(layer)
    x = np.random.default_rng(6).integers(-128, 128, (2, N)).astype(np.int8)
    ref = layer.forward_quantized(x)
    with pytest.raises((TypeError, ValueError, AttributeError)):
        fail(layer)
    _same_state(before, _linear_state(layer))
    _same(layer.forward_quantized(x), ref)


def test_mixed_precision_state_unchanged_after_error():
    mp = MixedPrecision()
    mp.update(True)
    before = (mp.loss_scale, mp.steps_since_overflow)
    for fail in (lambda: mp.update("no"), lambda: mp.scale_loss("1"),
                 lambda: mp.unscale_gradients(np.ones(3)), lambda: mp.scale_loss(10 ** 400),
                 lambda: mp.check_overflow(np.array(["a"]))):
        with pytest.raises((TypeError, ValueError)):
            fail()
        assert (mp.loss_scale, mp.steps_since_overflow) == before


def test_nn_state_unchanged_after_error():
    model = qnn.Sequential([qnn.Linear(4, 3, seed=0), qnn.ReLU(), qnn.QATLinear(3, 2, seed=1)])
    x = np.random.default_rng(7).standard_normal((5, 4)).astype(np.float32)
    model.forward(x)
    model.backward(np.ones((5, 2), np.float32))
    before = [p.copy() for p in model.parameters()] + [g.copy() for g in model.grads()]
    for fail in (lambda: model.forward(np.ones((5, 4), complex)),
                 lambda: model.forward(np.ones((5, 5), np.float32)),
                 lambda: model.backward(np.ones((5, 3), np.float32))):
        with pytest.raises((TypeError, ValueError)):
            fail()
    after = [p for p in model.parameters()] + [g for g in model.grads()]
    for a, b in zip(before, after):
        _same(a, b)


def test_copies_and_pickles_of_locked_objects_work():
    import pickle

    fq = FakeQuantize(FakeQuantConfig().with_learnable())
    fq.fake_quantize(_x())
    h = HistogramObserver()
    h.observe(_x())
    mp = MixedPrecision()
    layer = _layer()
    for obj in (fq, h, mp, layer):
        for clone in (copy.copy(obj), copy.deepcopy(obj), pickle.loads(pickle.dumps(obj))):
            assert repr(clone) == repr(obj)
    assert qatcore.FakeQuantize.from_state(fq.state_dict()).scale == fq.scale


@pytest.mark.parametrize("fn,extra", [
    ("entropy_amax_modelopt", ()), ("mse_amax_modelopt", ()),
    ("percentile_threshold", (99.9,)), ("entropy_threshold_onnxruntime", (-1.0, 1.0))])
@pytest.mark.parametrize("which", ["hist", "edges"])
def test_histogram_helpers_refuse_masked_arrays(fn, extra, which):
    from qatcore import histogram

    hist = np.arange(1.0, 257.0)
    edges = np.linspace(0.0, 1.0, 257)
    args = {"hist": hist, "edges": edges}
    args[which] = np.ma.masked_array(args[which], mask=np.zeros(args[which].shape, bool))
    with pytest.raises(TypeError, match=f"{which} is a numpy.ma.MaskedArray"):
        getattr(histogram, fn)(args["hist"], args["edges"], *extra)
