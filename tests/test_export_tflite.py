""".tflite export: LiteRT (reference and builtin kernels, no delegate) and TensorFlow
Lite Micro run the exported QuantizedSequential bit for bit as ``forward_int8``, on the
demo MLP and on random chains (odd sizes, per-tensor and per-channel weights, scales
from 1e-6 to 1e2, zero points at both ends of int8)."""

import os

import numpy as np
import pytest

from qatcore import QuantizedLinear, QuantizedSequential, demo
from qatcore.export.tflite import tflite_bytes, write_tflite

litert = pytest.importorskip("ai_edge_litert.interpreter")
tflm = pytest.importorskip("tflite_micro").runtime
pytest.importorskip("flatbuffers")

N = 1000
F32 = np.float32
#: the two LiteRT kernel sets without a delegate (XNNPACK requantizes its own way)
RESOLVERS = {"ref": "BUILTIN_REF", "builtin": "BUILTIN_WITHOUT_DEFAULT_DELEGATES"}
#: The rounding of the fixed-point requantization each runtime uses (checked here):
#: ai-edge-litert 2.3's reference kernels are built with TFLITE_SINGLE_ROUNDING, its
#: optimized builtins take the NEON vqrdmulh + vrshl path, TFLM keeps gemmlowp's.
ROUNDING = {"ref": "single", "builtin": "neon", "tflm": "gemmlowp"}


def _litert(data, resolver, batch=None):
    it = litert.Interpreter(model_content=data, experimental_op_resolver_type=getattr(
        litert.OpResolverType, resolver))
    if batch is not None:
        inp = it.get_input_details()[0]
        it.resize_tensor_input(inp["index"], [batch, int(inp["shape"][1])])
    it.allocate_tensors()
    return it


def _run_litert(data, x, resolver):
    it = _litert(data, resolver, batch=len(x))
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def _run_tflm(data, x):
    it = tflm.Interpreter.from_bytes(data, arena_size=1 << 22)
    it.set_input(x, 0)
    it.invoke()
    return it.get_output(0)


# ---------------------------------------------------------------------------- models

def _chain(rng, sizes, per_channel, in_scale, w_mags, zps, acts, out_zp, bias=True):
    """A chain whose hidden / output scales are calibrated on random codes (4 standard
    deviations of the float accumulators span the 127 codes), so the outputs use the
    int8 range whatever the magnitude of the scales."""
    layers, scale = [], in_scale
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = (rng.standard_normal((b, a)) * w_mags[i]).astype(np.float32)
        bb = (rng.standard_normal(b) * w_mags[i] * scale * 300).astype(np.float32) if bias \
            else None
        state = QuantizedLinear.from_float(w, None, a, b, per_channel=per_channel).state_dict()
        state.update(input_scale=F32(scale), input_zero_point=np.int32(zps[i]))
        if bb is not None:
            state["bias"] = bb
        layer = QuantizedLinear.from_state_dict(state)
        layers.append(layer)
        acc = layer.forward_quantized(rng.integers(-128, 128, (256, a)).astype(np.int8))
        spread = float(np.std(acc * np.asarray(layer.output_scale, np.float64))) or 1.0
        scale = float(F32(4 * spread / 127))
    return QuantizedSequential(layers, acts, scale, out_zp)


CASES = {
    # sizes, per_channel, first input scale, weight magnitudes, input zps, acts, out zp
    "odd-tensor": ([13, 31, 7, 3], False, 0.05, [1, 1, 1], [0, -128, 127],
                   ["relu", "relu6", None], -128),
    "odd-channel": ([13, 31, 7, 3], True, 0.05, [1, 1, 1], [127, -128, 5],
                    ["relu6", "relu", None], 127),
    "tiny-scales": ([9, 17, 5], True, 1e-6, [1e-6, 1e-3], [-128, 0], ["relu", None], 0),
    "huge-scales": ([9, 17, 5], False, 1e2, [1e2, 1e-2], [127, -3], [None, "relu6"], 3),
    "span": ([5, 11, 11, 2], True, 1e-6, [1e2, 1e-6, 1e2], [1, -1, 0],
             ["relu", None, "relu"], -7),
    "one-channel": ([6, 1, 4], True, 0.3, [1, 1], [3, -7], ["relu", None], 0),
    "single": ([1, 1], False, 1.0, [1], [0], [None], 0),
    "wide": ([257, 129, 10], True, 0.01, [0.1, 0.1], [-5, 9], ["relu6", None], 11),
}


@pytest.fixture(scope="module")
def models():
    rng = np.random.default_rng(2026)
    return {name: _chain(rng, *case) for name, case in CASES.items()}


def test_cases_span_the_scales(models):
    scales = []
    for m in models.values():
        for layer in m.layers:
            scales += [layer.input_scale] + list(np.ravel(layer.weight_scale))
        scales.append(m.output_scale)
    assert min(scales) <= 1e-6 * 1.01 and max(scales) >= 1e2 * 0.99
    assert {l.input_zero_point for m in models.values() for l in m.layers} >= {-128, 127}


@pytest.fixture(scope="module")
def demo_models():
    X, y = demo.load_digits()
    Xtr, ytr, Xte, yte = demo.split_dataset(X, y, 0.2, seed=0)
    data = (Xtr[:600], ytr[:600], Xte, yte)
    out = {}
    for bits in (8, 4):
        res = demo.run_demo(bits=bits, epochs=3, qat_epochs=1, seed=0, data=data,
                            measure_steps=False)
        out[f"demo-int{bits}"] = res.model
    return out, Xte


def _inputs(model, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(-128, 128, (N, model.in_features)).astype(np.int8)


# ---------------------------------------------------------------------------- bit-exactness

@pytest.mark.parametrize("resolver", list(RESOLVERS), ids=list(RESOLVERS))
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_litert_bit_exact_random_chains(models, case, resolver):
    model = models[case]
    x = _inputs(model, len(case))
    data = tflite_bytes(model)                      # batch 1, resized to N by LiteRT
    got = _run_litert(data, x, RESOLVERS[resolver])
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got, model.forward_int8(x, rounding=ROUNDING[resolver]))
    # against the default (gemmlowp) arithmetic: one LSB at most, at near-ties only
    diff = np.abs(got.astype(np.int32) - model.forward_int8(x))
    assert diff.max() <= 1 and diff.mean() < 0.01


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_tflm_bit_exact_random_chains(models, case):
    model = models[case]
    x = _inputs(model, len(case) + 1)
    got = _run_tflm(tflite_bytes(model, batch_size=N), x)
    np.testing.assert_array_equal(got, model.forward_int8(x))      # gemmlowp, the default


@pytest.mark.parametrize("runtime", ["ref", "builtin", "tflm"])
@pytest.mark.parametrize("name", ["demo-int8", "demo-int4"])
def test_demo_mlp_bit_exact(demo_models, name, runtime):
    models, Xte = demo_models
    model = models[name]
    x = np.concatenate([_inputs(model, 7), model.quantize_input(Xte)])
    want = model.forward_int8(x, rounding=ROUNDING[runtime])
    if runtime == "tflm":
        got = _run_tflm(tflite_bytes(model, batch_size=len(x)), x)
    else:
        got = _run_litert(tflite_bytes(model), x, RESOLVERS[runtime])
    np.testing.assert_array_equal(got, want)


def test_tflm_batch_one_file(demo_models):
    model = demo_models[0]["demo-int8"]
    data = tflite_bytes(model)
    it = tflm.Interpreter.from_bytes(data, arena_size=1 << 16)
    x = _inputs(model, 3)[:20]
    for row in x:
        it.set_input(row[None, :], 0)
        it.invoke()
        np.testing.assert_array_equal(it.get_output(0), model.forward_int8(row[None, :]))


def test_xnnpack_agreement(models):
    # LiteRT's default resolver applies XNNPACK, which requantizes its own way: reported,
    # held only to one LSB.
    model = models["odd-channel"]
    x = _inputs(model, 11)
    got = _run_litert(tflite_bytes(model), x, "AUTO").astype(np.int32)
    for rounding in ROUNDING.values():
        assert np.abs(got - model.forward_int8(x, rounding=rounding)).max() <= 1


@pytest.mark.parametrize("runtime", ["ref", "tflm", "builtin"])
def test_float_io(models, demo_models, runtime):
    # QUANTIZE rounds x / s half away from zero and adds the zero point, DEQUANTIZE is
    # (q - zp) * s: model.forward with input_numerics="tflite" is the same float32 math.
    # LiteRT's optimized builtins round (x / s + zp) and compute q * s - zp * s instead:
    # held to one input code / one output LSB there.
    rng = np.random.default_rng(5)
    model = models["odd-channel"]
    model = QuantizedSequential(model.layers, model.activations, model.output_scale,
                                model.output_zero_point, input_numerics="tflite")
    s = F32(model.input_scale)
    x = (rng.standard_normal((N, model.in_features)) * 60 * s).astype(np.float32)
    x[0] = (np.arange(model.in_features) - 6.5).astype(np.float32) * s   # ties
    x[1, :3] = [1e30, -1e30, 0.0]
    demo_model, Xte = demo_models
    dm = demo_model["demo-int8"]
    dm = QuantizedSequential(dm.layers, dm.activations, dm.output_scale,
                             dm.output_zero_point, input_numerics="tflite")
    for m, xs in ((model, x), (dm, Xte)):
        if runtime == "tflm":
            got = _run_tflm(tflite_bytes(m, float_io=True, batch_size=len(xs)), xs)
        else:
            got = _run_litert(tflite_bytes(m, float_io=True), xs, RESOLVERS[runtime])
        assert got.dtype == np.float32
        want = m.forward(xs, rounding=ROUNDING[runtime])
        if runtime == "builtin":
            finite = np.abs(xs).max(axis=1) < 1e20            # 1e30 overflows its cast
            err = np.abs(got[finite] - want[finite]) / np.float32(m.output_scale)
            assert err.max() <= 1.01 * max(1, len(m.layers))
            continue
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


# ---------------------------------------------------------------------------- the file

def test_structure_read_back_with_the_tflite_package(models):
    tfl = pytest.importorskip("tflite")
    model = models["odd-channel"]
    buf = tflite_bytes(model, float_io=True)
    assert buf[4:8] == b"TFL3"
    m = tfl.Model.GetRootAsModel(buf, 0)
    sg = m.Subgraphs(0)
    codes = [m.OperatorCodes(sg.Operators(i).OpcodeIndex()).BuiltinCode()
             for i in range(sg.OperatorsLength())]
    BO = tfl.BuiltinOperator
    assert codes == [BO.QUANTIZE] + [BO.FULLY_CONNECTED] * 3 + [BO.DEQUANTIZE]
    fused = []
    for k in range(3):
        op = sg.Operators(k + 1)
        opts = tfl.FullyConnectedOptions()
        opts.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
        fused.append(opts.FusedActivationFunction())
        _, w, b = (sg.Tensors(op.Inputs(j)) for j in range(3))
        layer = model.layers[k]
        assert w.Type() == tfl.TensorType.INT8 and b.Type() == tfl.TensorType.INT32
        wq = w.Quantization()
        np.testing.assert_array_equal(wq.ScaleAsNumpy(), layer.weight_scale)
        assert wq.QuantizedDimension() == 0 and not wq.ZeroPointAsNumpy().any()
        np.testing.assert_array_equal(b.Quantization().ScaleAsNumpy(),
                                      (layer.weight_scale * F32(layer.input_scale)))
        data = m.Buffers(w.Buffer()).DataAsNumpy().view(np.int8).reshape(layer.weights_q.shape)
        np.testing.assert_array_equal(data, layer.weights_q)
        bias = m.Buffers(b.Buffer()).DataAsNumpy().view("<i4")
        np.testing.assert_array_equal(bias, layer.bias_q)
        out_q = sg.Tensors(op.Outputs(0)).Quantization()
        assert (float(out_q.ScaleAsNumpy()[0]), int(out_q.ZeroPointAsNumpy()[0])) == \
            model.output_qparams(k)
    A = tfl.ActivationFunctionType
    assert fused == [A.RELU6, A.RELU, A.NONE]
    assert sg.Tensors(sg.Inputs(0)).Type() == tfl.TensorType.FLOAT32


def test_no_bias_layers_write_zero_bias(rng):
    layer = QuantizedLinear.from_float(rng.standard_normal((3, 4)), None, 4, 3)
    layer.set_input_scale(0.1)
    model = QuantizedSequential([layer], None, 0.05)
    x = rng.integers(-128, 128, (50, 4)).astype(np.int8)
    np.testing.assert_array_equal(_run_litert(tflite_bytes(model), x, "BUILTIN_REF"),
                                  model.forward_int8(x, rounding="single"))


def test_to_tflite_writes_atomically(models, tmp_path):
    model = models["odd-tensor"]
    path = tmp_path / "m.tflite"
    size = model.to_tflite(path)
    assert size == os.path.getsize(path) and path.read_bytes() == tflite_bytes(model)
    assert write_tflite(model, str(path), float_io=True) == os.path.getsize(path)
    assert os.listdir(tmp_path) == ["m.tflite"]
    with pytest.raises(FileNotFoundError):
        model.to_tflite(tmp_path / "missing" / "m.tflite")
    assert os.listdir(tmp_path) == ["m.tflite"]


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"float_io": 1}, TypeError, "float_io"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"batch_size": 2.0}, TypeError, "batch_size"),
], ids=["float_io", "batch0", "batch-float"])
def test_bad_arguments(models, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        tflite_bytes(models["single"], **kwargs)


def test_not_a_model():
    with pytest.raises(TypeError, match="QuantizedSequential"):
        tflite_bytes("model.npz")
