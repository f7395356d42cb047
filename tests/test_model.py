"""QuantizedSequential: forward_int8 against the TFLite-arithmetic oracle in reference.py,
the float path, save/load (bit-exact round trip, hostile files refused), from_qat and
argument checking."""

import io
import os
import zipfile

import numpy as np
import pytest

import qatcore
from qatcore import FakeQuantConfig, FakeQuantize, QuantizedLinear, QuantizedSequential, nn
from qatcore.linear import quantize_multiplier
from qatcore.model import MAX_FILE_BYTES
from reference import (activation_range_ref, quantize_multiplier_ref, sequential_int8_ref,
                       tflite_real_multiplier_ref)

F32 = np.float32


def _layer(rng, in_f, out_f, per_channel, in_scale, in_zp, bias=True, wscale=1.0):
    w = (rng.standard_normal((out_f, in_f)) * wscale).astype(np.float32)
    b = (rng.standard_normal(out_f) * wscale * 4).astype(np.float32) if bias else None
    layer = QuantizedLinear.from_float(w, b, in_f, out_f, per_channel=per_channel)
    layer.set_input_scale(in_scale, zero_point=in_zp)
    return layer


def _model(rng, sizes, acts, per_channel=False, zps=None, out_scale=None, out_zp=0,
           scales=None):
    """A chain whose output scales follow the accumulators' spread (as a calibration
    would choose them), so codes neither all saturate nor all vanish."""
    n = len(sizes) - 1
    zps = zps or [0] * n
    scales = scales or [0.05] * n
    layers = [_layer(rng, sizes[i], sizes[i + 1], per_channel, scales[i], zps[i])
              for i in range(n)]
    if out_scale is None:
        last = layers[-1]
        out_scale = float(np.max(np.asarray(last.output_scale)) * 127 * np.sqrt(sizes[-2]) / 8)
    return QuantizedSequential(layers, acts, out_scale, out_zp)


def _oracle_layers(model):
    out = []
    for i, layer in enumerate(model.layers):
        if i + 1 < len(model.layers):
            o_scale, o_zp = model.layers[i + 1].input_scale, model.layers[i + 1].input_zero_point
        else:
            o_scale, o_zp = model.output_scale, model.output_zero_point
        out.append(dict(weights_q=layer.weights_q, bias_q=layer.bias_q,
                        input_zero_point=layer.input_zero_point,
                        weight_scale=layer.weight_scale, input_scale=layer.input_scale,
                        output_scale=o_scale, output_zero_point=o_zp,
                        activation=model.activations[i]))
    return out


def _codes(rng, shape):
    return rng.integers(-128, 128, size=shape).astype(np.int8)


# ---------------------------------------------------------------------------- integer path

CASES = {
    "3-tensor-relu": ([13, 17, 9, 5], ["relu", "relu", None], False, [0, 0, 0]),
    "3-channel-relu6": ([13, 17, 9, 5], ["relu6", "relu6", None], True, [0, -128, 127]),
    "1-tensor-zpends": ([31, 7], [None], False, [127]),
    "2-channel-mixed": ([8, 33, 3], [None, "relu6"], True, [-128, 5]),
    "2-one-channel": ([6, 1, 4], ["relu", None], True, [3, -7]),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
@pytest.mark.parametrize("batch", [0, 1, 7, 64], ids=lambda b: f"b{b}")
@pytest.mark.parametrize("out_zp", [0, -128, 127], ids=lambda z: f"ozp{z}")
def test_forward_int8_matches_tflite_oracle(target, rng, case, batch, out_zp):
    sizes, acts, per_channel, zps = CASES[case]
    model = _model(rng, sizes, acts, per_channel, zps, out_zp=out_zp,
                   scales=[0.05, 0.11, 0.3][:len(sizes) - 1])
    x = _codes(rng, (batch, sizes[0]))
    before = x.copy()
    got = model.forward_int8(x)
    assert got.dtype == np.int8 and got.shape == (batch, sizes[-1])
    np.testing.assert_array_equal(got, sequential_int8_ref(_oracle_layers(model), x))
    np.testing.assert_array_equal(x, before)
    np.testing.assert_array_equal(model.forward_int8(x.ravel()), got)        # flat input


@pytest.mark.parametrize("rounding", ["gemmlowp", "single", "neon"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_forward_int8_roundings_match_oracle(rng, case, rounding):
    sizes, acts, per_channel, zps = CASES[case]
    # small output scales and shifts around -8: many products land near a tie
    model = _model(rng, sizes, acts, per_channel, zps, out_zp=3,
                   scales=[0.05, 0.11, 0.3][:len(sizes) - 1])
    x = _codes(rng, (300, sizes[0]))
    got = model.forward_int8(x, rounding=rounding)
    np.testing.assert_array_equal(got, sequential_int8_ref(_oracle_layers(model), x, rounding))
    xf = rng.standard_normal((20, sizes[0])).astype(np.float32)
    want = model.dequantize_output(model.forward_int8(model.quantize_input(xf),
                                                      rounding=rounding))
    np.testing.assert_array_equal(model.forward(xf, rounding=rounding).view(np.uint32),
                                  want.view(np.uint32))


def test_roundings_differ_only_at_near_ties():
    # acc · m · 2^(shift-31) = -0.5 exactly after the high multiply: gemmlowp rounds away
    # (-1), single rounding sees -0.49992 (0), neon rounds the tie up (0).
    acc = np.array([[-248]], np.int32)
    mult, shift = np.array([1106635781]), np.array([-8])
    from reference import requantize_ref
    assert [int(requantize_ref(acc, mult, shift, 0, rounding=r)[0, 0])
            for r in ("gemmlowp", "single", "neon")] == [-1, 0, 0]
    layer = QuantizedLinear.from_float([[1.0]], None, 1, 1)
    layer.set_input_scale(1.0)
    model = QuantizedSequential([layer], None, 1.0)
    with pytest.raises(ValueError, match="rounding"):
        model.forward_int8(np.zeros((1, 1), np.int8), rounding="even")


@pytest.mark.parametrize("log_scale", [-6, -3, 0, 2], ids=lambda s: f"1e{s}")
def test_forward_int8_scales_span(rng, log_scale):
    s = 10.0 ** log_scale
    layers = [_layer(rng, 11, 6, True, s, 0, wscale=s), _layer(rng, 6, 3, False, s * 3, -2,
                                                               wscale=1 / s)]
    acc_scale = float(np.max(np.asarray(layers[1].output_scale)))
    model = QuantizedSequential(layers, ["relu", None], acc_scale * 40, 9)
    x = _codes(rng, (50, 11))
    np.testing.assert_array_equal(model.forward_int8(x),
                                  sequential_int8_ref(_oracle_layers(model), x))


def test_relu6_clamp_is_tflite_rounding():
    # 6 / scale = 2.5 exactly: TFLite rounds half away (3), not to even (2).
    assert activation_range_ref("relu6", 2.4, 0) == (0, 3)
    layer = QuantizedLinear.from_float([[1.0]], None, 1, 1)
    layer.set_input_scale(1.0)
    model = QuantizedSequential([layer], ["relu6"], 2.4, -4)
    assert model.activation_range(0) == activation_range_ref("relu6", 2.4, -4) == (-4, -1)
    out = model.forward_int8(np.array([[127], [-128], [5]], np.int8))
    assert out.ravel().tolist() == [-1, -4, -2]


def test_requantization_uses_tflite_multipliers(rng):
    # Per-tensor layers: TFLite multiplies the float32 scales in float32; there are scales
    # for which that moves the Q31 multiplier off the float64 product's.
    found = None
    for _ in range(20000):
        ws, xs, os_ = (float(F32(v)) for v in rng.uniform(1e-3, 1.0, 3))
        f32_real = float(F32(ws) * F32(xs)) / os_
        f64_real = ws * xs / os_
        if quantize_multiplier_ref(f32_real) != quantize_multiplier_ref(f64_real):
            found = ws, xs, os_
            break
    assert found is not None
    ws, xs, os_ = found
    layer = QuantizedLinear.from_float([[ws * 127]], None, 1, 1)
    layer.set_input_scale(xs)
    assert layer.weight_scale == ws
    model = QuantizedSequential([layer], None, os_)
    mult, shift = model.requantization(0)
    expect = quantize_multiplier_ref(tflite_real_multiplier_ref(ws, xs, os_, 1)[0])
    assert (int(mult[0]), int(shift[0])) == expect
    assert expect == quantize_multiplier_ref(float(F32(ws) * F32(xs)) / os_)


def test_requantization_per_channel(rng):
    model = _model(rng, [5, 4, 3], ["relu", None], per_channel=True)
    mult, shift = model.requantization(0)
    layer = model.layers[0]
    for c in range(4):
        real = float(layer.input_scale) * float(layer.weight_scale[c]) / model.layers[1].input_scale
        assert (int(mult[c]), int(shift[c])) == quantize_multiplier_ref(real)
    assert model.output_qparams(1) == (model.output_scale, model.output_zero_point)
    assert model.output_qparams(0) == (model.layers[1].input_scale,
                                       model.layers[1].input_zero_point)


@pytest.mark.parametrize("numerics", ["aprender", "torch", "onnx", "tflite"])
def test_forward_is_quantize_int8_dequantize(rng, numerics):
    layers = [_layer(rng, 9, 12, False, 0.02, 3), _layer(rng, 12, 4, True, 0.07, -1)]
    model = QuantizedSequential(layers, ["relu", None], 0.2, -5, input_numerics=numerics)
    x = rng.standard_normal((40, 9)).astype(np.float32) * 2
    x[0, :4] = [np.inf, -np.inf, 0.0, -0.0]
    x[1, :3] = [0.01, -0.01, 0.03]               # ties at .5 code for scale 0.02
    q = model.quantize_input(x)
    assert q.dtype == np.int8 and q.shape == (40, 9)
    assert q[0, 0] == 127 and q[0, 1] == -128
    y = model.forward(x)
    expect = (model.forward_int8(q).astype(np.float32) - F32(-5)) * F32(0.2)
    np.testing.assert_array_equal(y.view(np.uint32), expect.view(np.uint32))
    np.testing.assert_array_equal(model(x).view(np.uint32), y.view(np.uint32))
    np.testing.assert_array_equal(model.forward(x.reshape(4, 10, 9)), y)


def test_quantize_input_numerics_differ_on_ties():
    layer = QuantizedLinear.from_float([[1.0, 1.0, 1.0]], None, 3, 1)
    layer.set_input_scale(1.0, zero_point=3)
    x = np.array([[-0.5, 0.5, 1.5]], np.float32)
    codes = {n: QuantizedSequential([layer], None, 1.0, input_numerics=n).quantize_input(x)
             for n in ("aprender", "torch", "onnx", "tflite")}
    assert codes["aprender"].tolist() == [[3, 4, 5]]          # round(x + 3), half away
    assert codes["tflite"].tolist() == [[2, 4, 5]]            # round(x) + 3
    assert codes["onnx"].tolist() == [[3, 3, 5]]              # rint(x) + 3


# ---------------------------------------------------------------------------- from_qat

def _qat_mlp(rng, sizes=(10, 16, 8, 4), with_output=True, asym_out=False):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.ActivationFakeQuant(FakeQuantConfig()))
        layers.append(nn.QATLinear(a, b, seed=int(rng.integers(1 << 30))))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    if with_output:
        layers.append(nn.ActivationFakeQuant(FakeQuantConfig(symmetric=not asym_out)))
    model = nn.Sequential(layers)
    x = rng.standard_normal((200, sizes[0])).astype(np.float32)
    model.forward(x)
    for layer in model.layers:
        fq = getattr(layer, "fake_quant", None) or getattr(layer, "weight_fake_quant", None)
        if fq is not None:
            fq.disable_calibration()
    return model, x


@pytest.mark.parametrize("asym_out", [False, True], ids=["sym-out", "asym-out"])
def test_from_qat_builds_the_chain(rng, asym_out):
    qat, x = _qat_mlp(rng, asym_out=asym_out)
    model = QuantizedSequential.from_qat(qat)
    assert [l.in_features for l in model.layers] == [10, 16, 8]
    assert model.activations == ["relu", "relu", None]
    afq = [l.fake_quant for l in qat.layers if isinstance(l, nn.ActivationFakeQuant)]
    assert [l.input_scale for l in model.layers] == [fq.scale for fq in afq[:3]]
    assert model.output_scale == afq[3].scale
    if asym_out:
        assert model.output_zero_point == int(np.trunc(F32(afq[3].zero_point) + F32(0.5))) - 128
    # close to the simulated QAT model (a few output LSB of requantization rounding)
    y_sim = qat.forward(x)
    y_int = model.forward(x)
    assert np.abs(y_int - y_sim).max() <= 4 * model.output_scale
    np.testing.assert_array_equal(model.forward_int8(model.quantize_input(x)),
                                  sequential_int8_ref(_oracle_layers(model),
                                                      model.quantize_input(x)))


def test_from_qat_output_quantizer_argument(rng):
    qat, x = _qat_mlp(rng, with_output=False)
    with pytest.raises(ValueError, match="no output quantizer"):
        QuantizedSequential.from_qat(qat)
    out_fq = FakeQuantize(FakeQuantConfig())
    out_fq.fake_quantize(qat.forward(x))
    out_fq.disable_calibration()
    model = QuantizedSequential.from_qat(qat, output_fake_quant=out_fq)
    assert model.output_scale == out_fq.scale
    qat2, _ = _qat_mlp(rng)
    with pytest.raises(ValueError, match="only one output quantizer"):
        QuantizedSequential.from_qat(qat2, output_fake_quant=out_fq)
    with pytest.raises(TypeError, match="output_fake_quant"):
        QuantizedSequential.from_qat(qat, output_fake_quant=0.1)


def test_from_qat_refusals(rng):
    qat, _ = _qat_mlp(rng)
    with pytest.raises(TypeError, match="qatcore.nn.Sequential"):
        QuantizedSequential.from_qat([qat])
    calibrating = nn.Sequential([nn.ActivationFakeQuant(), nn.QATLinear(3, 2, seed=0),
                                 nn.ActivationFakeQuant()])
    with pytest.raises(ValueError, match="still calibrating"):
        QuantizedSequential.from_qat(calibrating)
    with pytest.raises(ValueError, match="no ActivationFakeQuant in front"):
        QuantizedSequential.from_qat(nn.Sequential([nn.QATLinear(3, 2, seed=0)]))
    with pytest.raises(ValueError, match="no integer form"):
        QuantizedSequential.from_qat(nn.Sequential([nn.ActivationFakeQuant(),
                                                    nn.Linear(3, 2, seed=0)]))
    with pytest.raises(ValueError, match="ReLU must follow"):
        QuantizedSequential.from_qat(nn.Sequential([nn.ReLU(), nn.ActivationFakeQuant(),
                                                    nn.QATLinear(3, 2, seed=0)]))


def test_from_layers_equals_constructor(rng):
    layers = [_layer(rng, 4, 3, False, 0.1, 0)]
    a = QuantizedSequential.from_layers(layers, ["relu"], output_scale=0.5, output_zero_point=2)
    b = QuantizedSequential(layers, ["relu"], 0.5, 2)
    assert repr(a) == repr(b) and a.activations == b.activations
    assert qatcore.QuantizedSequential is QuantizedSequential
    assert "QuantizedSequential" in qatcore.__all__


# ---------------------------------------------------------------------------- save / load

@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_save_load_round_trip_bit_exact(rng, tmp_path, case):
    sizes, acts, per_channel, zps = CASES[case]
    model = _model(rng, sizes, acts, per_channel, zps, out_zp=-3)
    model.input_numerics = "torch"
    path = tmp_path / "m.npz"
    model.save(path)
    assert os.listdir(tmp_path) == ["m.npz"]                 # no temp file left behind
    again = QuantizedSequential.load(path)
    assert repr(again) == repr(model)
    assert again.activations == model.activations and again.input_numerics == "torch"
    assert (again.output_scale, again.output_zero_point) == (model.output_scale, -3)
    sa, sb = model.state_dict(), again.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        np.testing.assert_array_equal(np.asarray(sa[key]), np.asarray(sb[key]), err_msg=key)
        assert np.asarray(sa[key]).dtype == np.asarray(sb[key]).dtype, key
    x = _codes(rng, (30, sizes[0]))
    np.testing.assert_array_equal(again.forward_int8(x), model.forward_int8(x))
    xf = rng.standard_normal((30, sizes[0])).astype(np.float32)
    np.testing.assert_array_equal(again.forward(xf).view(np.uint32),
                                  model.forward(xf).view(np.uint32))


def _saved(rng, tmp_path):
    model = _model(rng, [5, 4, 3], ["relu", None])
    return model, model.state_dict()


def _write(tmp_path, state, name="bad.npz"):
    path = tmp_path / name
    with open(path, "wb") as f:
        np.savez(f, **state)
    return path


def _edit(state, **changes):
    s = dict(state)
    for k, v in changes.items():
        k = k.replace("__", ".")
        if v is None:
            s.pop(k)
        else:
            s[k] = v
    return s


HOSTILE = {
    "wrong-format": (dict(format=np.array("something.else")), "not a qatcore.QuantizedSequential"),
    "no-format": (dict(format=None), "not a qatcore.QuantizedSequential"),
    "version": (dict(version=np.int32(7)), "unsupported version 7"),
    "missing-scale": (dict(output_scale=None), "missing entry 'output_scale'"),
    "extra-key": (dict(layer9__weights_q=np.zeros((1, 1), np.int8)), "unexpected entry"),
    "act-code": (dict(activations=np.array([1, 5], np.int8)), "activations"),
    "act-count": (dict(activations=np.array([1], np.int8)), "unexpected entry 'layer1"),
    "act-float": (dict(activations=np.array([1.0, 0.0])), "activations"),
    "neg-scale": (dict(output_scale=np.float32(-1)), "output_scale must be positive"),
    "nan-scale": (dict(output_scale=np.float32("nan")), "output_scale"),
    "scale-array": (dict(output_scale=np.ones(2, np.float32)), "output_scale"),
    "zp-range": (dict(output_zero_point=np.int32(300)), "output_zero_point"),
    "numerics": (dict(input_numerics=np.array("fancy")), "input_numerics"),
    "numerics-bytes": (dict(input_numerics=np.array(b"torch")), "input_numerics"),
    "weights-range": (dict(layer0__weights_q=np.full((4, 5), -128, np.int8)), "layer 0"),
    "weights-dtype": (dict(layer1__weights_q=np.zeros((3, 4), np.int16)), "layer 1"),
    "no-chain": (dict(layer1__weights_q=np.zeros((3, 7), np.int8)), "do not chain"),
    "layer-missing": (dict(layer1__weights_q=None), "layer 1"),
    "in-zp-wide": (dict(layer1__input_zero_point=np.int32(1000)), "int8 code"),
    "bias-shape": (dict(layer0__bias=np.zeros(9, np.float32)), "layer 0"),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_load_refuses_bad_fields(rng, tmp_path, case):
    _, state = _saved(rng, tmp_path)
    changes, match = HOSTILE[case]
    path = _write(tmp_path, _edit(state, **changes))
    with pytest.raises(ValueError, match=match):
        QuantizedSequential.load(path)


def test_load_refuses_pickles_and_odd_files(rng, tmp_path):
    _, state = _saved(rng, tmp_path)
    path = _write(tmp_path, _edit(state, input_numerics=np.array([{"a": 1}], dtype=object)))
    with pytest.raises(ValueError, match="not allowed"):
        QuantizedSequential.load(path)
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a .npz"):
        QuantizedSequential.load(text)
    with pytest.raises(FileNotFoundError):
        QuantizedSequential.load(tmp_path / "missing.npz")
    other = tmp_path / "other.npz"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("readme.txt", "x")
    with pytest.raises(ValueError, match="not a .npy"):
        QuantizedSequential.load(other)
    linear = tmp_path / "linear.npz"
    _layer(rng, 3, 2, False, 0.1, 0).save(linear)
    with pytest.raises(ValueError, match="not a qatcore.QuantizedSequential"):
        QuantizedSequential.load(linear)


def _npy_bytes(header: dict, data: bytes = b"") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + data


def test_load_bounds_sizes_before_allocating(rng, tmp_path):
    _, state = _saved(rng, tmp_path)
    good = _write(tmp_path, state, "good.npz")
    huge = tmp_path / "huge.npz"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(huge, "w") as dst:
        for info in src.infolist():
            if info.filename != "layer0.bias_q.npy":
                dst.writestr(info, src.read(info))
        # a header declaring 2^38 int32 biases (1 TiB) and no data
        dst.writestr("layer0.bias_q.npy", _npy_bytes(
            {"descr": "<i4", "fortran_order": False, "shape": (1 << 38,)}))
    with pytest.raises(ValueError, match=f"more than {MAX_FILE_BYTES} bytes"):
        QuantizedSequential.load(huge)
    short = tmp_path / "short.npz"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(short, "w") as dst:
        for info in src.infolist():
            if info.filename != "layer0.bias_q.npy":
                dst.writestr(info, src.read(info))
        dst.writestr("layer0.bias_q.npy", _npy_bytes(
            {"descr": "<i4", "fortran_order": False, "shape": (4,)}, b"\0" * 5))
    with pytest.raises(ValueError, match="layer0.bias_q"):
        QuantizedSequential.load(short)
    many = tmp_path / "many.npz"
    with zipfile.ZipFile(many, "w") as dst:
        for i in range(20000):
            dst.writestr(f"k{i}.npy", b"")
    with pytest.raises(ValueError, match="entries"):
        QuantizedSequential.load(many)


def test_save_failure_leaves_nothing(rng, tmp_path):
    model = _model(rng, [5, 4, 3], ["relu", None])
    with pytest.raises(OSError):
        model.save(tmp_path / "no-such-dir" / "m.npz")
    target = tmp_path / "m.npz"
    target.write_bytes(b"old")
    model.save(target)
    assert QuantizedSequential.load(target).activations == ["relu", None]
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]


# ---------------------------------------------------------------------------- bad arguments

def _two(rng):
    return [_layer(rng, 4, 3, False, 0.1, 0), _layer(rng, 3, 2, False, 0.2, 1)]


BAD_ARGS = {
    "one-layer": (lambda L: L[0], {"output_scale": 1.0}, TypeError, "wrap it in a list"),
    "not-seq": (lambda L: 5, {"output_scale": 1.0}, TypeError, "sequence of QuantizedLinear"),
    "empty": (lambda L: [], {"output_scale": 1.0}, ValueError, "must not be empty"),
    "not-layer": (lambda L: [L[0], "x"], {"output_scale": 1.0}, TypeError, r"layers\[1\]"),
    "no-chain": (lambda L: [L[1], L[0]], {"output_scale": 1.0}, ValueError, "do not chain"),
    "no-scale": (lambda L: L, {}, ValueError, "output_scale is required"),
    "zero-scale": (lambda L: L, {"output_scale": 0.0}, ValueError, "output_scale"),
    "inf-scale": (lambda L: L, {"output_scale": float("inf")}, ValueError, "output_scale"),
    "str-scale": (lambda L: L, {"output_scale": "1"}, TypeError, "output_scale"),
    "zp-float": (lambda L: L, {"output_scale": 1.0, "output_zero_point": 1.5}, TypeError,
                 "output_zero_point"),
    "zp-bool": (lambda L: L, {"output_scale": 1.0, "output_zero_point": True}, TypeError,
                "output_zero_point"),
    "zp-range": (lambda L: L, {"output_scale": 1.0, "output_zero_point": -129}, ValueError,
                 "output_zero_point"),
    "acts-str": (lambda L: L, {"output_scale": 1.0, "activations": "relu"}, TypeError,
                 "activations"),
    "acts-len": (lambda L: L, {"output_scale": 1.0, "activations": ["relu"]}, ValueError,
                 "2 layers"),
    "acts-name": (lambda L: L, {"output_scale": 1.0, "activations": ["gelu", None]},
                  ValueError, r"activations\[0\]"),
    "acts-type": (lambda L: L, {"output_scale": 1.0, "activations": [1, None]}, TypeError,
                  r"activations\[0\]"),
    "numerics": (lambda L: L, {"output_scale": 1.0, "input_numerics": "fancy"}, ValueError,
                 "input_numerics"),
    "numerics-type": (lambda L: L, {"output_scale": 1.0, "input_numerics": None}, TypeError,
                      "input_numerics"),
}


@pytest.mark.parametrize("case", list(BAD_ARGS), ids=list(BAD_ARGS))
def test_constructor_refuses(rng, case):
    layers_of, kwargs, exc, match = BAD_ARGS[case]
    with pytest.raises(exc, match=match):
        QuantizedSequential(layers_of(_two(rng)), **kwargs)


def test_wide_input_zero_point_refused(rng):
    state = _layer(rng, 4, 3, False, 0.1, 0).state_dict()
    state["input_zero_point"] = np.int32(200)   # a layer may take wider codes; a chain may not
    layer = QuantizedLinear.from_state_dict(state)
    with pytest.raises(ValueError, match="int8 code"):
        QuantizedSequential([layer], None, 1.0)


@pytest.mark.parametrize("x,exc,match", [
    (np.zeros((2, 4), np.float32), TypeError, "int8"),
    (np.zeros((2, 5), np.int8), ValueError, "expected"),
    (np.zeros(7, np.int8), ValueError, "multiple"),
    ([[1, 2, 3, 4]], TypeError, "numpy int8 array"),
    (np.zeros((1, 1, 4), np.int8), ValueError, "1-D"),
], ids=["float", "width", "flat", "list", "3d"])
def test_forward_int8_refuses(rng, x, exc, match):
    model = QuantizedSequential(_two(rng), None, 1.0)
    with pytest.raises(exc, match=match):
        model.forward_int8(x)


@pytest.mark.parametrize("x,exc,match", [
    (np.array([[0, np.nan, 0, 0]], np.float32), ValueError, "NaN"),
    (np.zeros((2, 5), np.float32), ValueError, "expected"),
    (np.zeros(7, np.float32), ValueError, "multiple"),
    (np.array([["a"] * 4]), TypeError, "numeric"),
], ids=["nan", "width", "flat", "str"])
def test_forward_refuses(rng, x, exc, match):
    model = QuantizedSequential(_two(rng), None, 1.0)
    with pytest.raises(exc, match=match):
        model.forward(x)


def test_index_arguments(rng):
    model = QuantizedSequential(_two(rng), ["relu", None], 1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.activation_range(2)
    with pytest.raises(TypeError, match="integer"):
        model.requantization(0.0)
    with pytest.raises(TypeError, match="int8"):
        model.dequantize_output(np.zeros(3, np.int32))
    assert len(model) == 2 and model.in_features == 4 and model.out_features == 2
    mult, shift = model.requantization(1)
    real = tflite_real_multiplier_ref(model.layers[1].weight_scale, 0.2, 1.0, 2)
    assert [(int(m), int(s)) for m, s in zip(mult, shift)] == [quantize_multiplier_ref(r)
                                                               for r in real]
    assert model.activation_range(0) == (1, 127)                    # ReLU at the next zp
    np.testing.assert_array_equal(quantize_multiplier(real)[0], mult)
