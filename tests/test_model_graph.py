"""QuantizedModel (docs/integer-graph.md): a small CNN end to end against the composed
oracles, the plan (buffers reused, outputs never aliased), QuantizedSequential
conversion, save/load and hostile files, argument errors, the exporter delegates."""

from __future__ import annotations

import functools
import io
import sys
import threading
import types
import zipfile

import numpy as np
import pytest

import qatcore
from qatcore import QuantizedLinear, QuantizedSequential
from qatcore.model import (Add, AveragePool2D, Conv2D, DepthwiseConv2D, FullyConnected,
                           QuantizedModel, Reshape, Softmax, TensorSpec, same_padding)

import reference as ref
from graph_helpers import ROUNDINGS, rand_i8, rand_weights

# scales / zero points of the small CNN
Q = {"x": (0.05, -3), "c1": (0.08, -128), "d1": (0.06, 5), "s": (0.1, 2), "p": (0.1, 2),
     "f": (0.1, 2), "logits": (0.2, 7), "probs": (1 / 256, -128)}


@functools.lru_cache(maxsize=None)
def _cnn_parts():
    rng = np.random.default_rng(2024)
    return dict(
        w1=rand_weights(rng, (12, 3, 3, 3)), s1=rng.uniform(0.005, 0.02, 12).astype(np.float32),
        b1=rng.integers(-300, 300, 12).astype(np.int32),
        w2=rand_weights(rng, (1, 3, 3, 12)), s2=rng.uniform(0.01, 0.03, 12).astype(np.float32),
        b2=rng.integers(-300, 300, 12).astype(np.int32),
        w3=rand_weights(rng, (10, 4 * 4 * 12)), s3=np.float32([0.004]),
        b3=rng.integers(-500, 500, 10).astype(np.int32),
        x=rand_i8(rng, (3, 8, 8, 3)))


def build_cnn(name="cnn"):
    """conv(3x3, stride 1, SAME, relu) -> depthwise(3x3) -> add(conv, dw) ->
    avgpool(2x2) -> reshape -> fc -> softmax."""
    p = _cnn_parts()
    pad = same_padding((8, 8), (3, 3))
    specs = [TensorSpec("x", (8, 8, 3), *Q["x"]), TensorSpec("c1", (8, 8, 12), *Q["c1"]),
             TensorSpec("d1", (8, 8, 12), *Q["d1"]), TensorSpec("s", (8, 8, 12), *Q["s"]),
             TensorSpec("p", (4, 4, 12), *Q["p"]), TensorSpec("f", (192,), *Q["f"]),
             TensorSpec("logits", (10,), *Q["logits"]), TensorSpec("probs", (10,), *Q["probs"])]
    ops = [Conv2D("x", "c1", p["w1"], p["s1"], p["b1"], padding=pad, activation="relu"),
           DepthwiseConv2D("c1", "d1", p["w2"], p["s2"], p["b2"], padding=pad),
           Add(("c1", "d1"), "s"),
           AveragePool2D("s", "p", (2, 2), (2, 2)),
           Reshape("p", "f"),
           FullyConnected("f", "logits", p["w3"], p["s3"], p["b3"]),
           Softmax("logits", "probs")]
    return QuantizedModel(specs, ops, ["x"], ["probs"], name=name)


@functools.lru_cache(maxsize=None)
def cnn_expected(rounding):
    p = _cnn_parts()
    pad = same_padding((8, 8), (3, 3))
    c1 = ref.conv2d_int8_ref(p["x"], p["w1"], p["b1"], Q["x"][1], p["s1"], Q["x"][0],
                             Q["c1"][0], Q["c1"][1], padding=pad, activation="relu",
                             rounding=rounding)
    d1 = ref.depthwise_conv2d_int8_ref(c1, p["w2"], p["b2"], Q["c1"][1], p["s2"], Q["c1"][0],
                                       Q["d1"][0], Q["d1"][1], padding=pad, rounding=rounding)
    s = ref.add_int8_ref(c1, d1, Q["c1"], Q["d1"], Q["s"], rounding=rounding)
    pooled = ref.pool2d_int8_ref(s, (2, 2), (2, 2), (0, 0, 0, 0), "avg")
    logits = ref.fully_connected_int8_ref(pooled.reshape(3, -1), p["w3"], p["b3"], Q["f"][1],
                                          p["s3"], Q["f"][0], Q["logits"][0], Q["logits"][1],
                                          rounding=rounding)
    return ref.softmax_int8_ref(logits, Q["logits"][0], rounding=rounding)


@pytest.mark.parametrize("n_threads", [1, 2], ids=["1thread", "2threads"])
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_cnn_end_to_end_matches_composed_oracles(target, rounding, n_threads):
    model = build_cnn()
    model.n_threads = n_threads
    x = _cnn_parts()["x"]
    expected = cnn_expected(rounding)
    assert len(np.unique(expected)) > 5                      # not a saturated toy
    np.testing.assert_array_equal(model.forward_int8(x, rounding=rounding), expected)
    np.testing.assert_array_equal(model.forward_int8(x[1:2], rounding=rounding), expected[1:2])


def test_plan_is_built_once_and_outputs_are_not_aliased():
    model = build_cnn()
    x = _cnn_parts()["x"]
    y1 = model.forward_int8(x)
    plan = model._plan(3)
    y2 = model.forward_int8(x[::-1].copy())
    assert model._plan(3) is plan
    np.testing.assert_array_equal(y1, cnn_expected("gemmlowp"))       # not overwritten
    np.testing.assert_array_equal(y2, cnn_expected("gemmlowp")[::-1])
    # liveness: fewer bytes than one buffer per tensor
    per_tensor = sum(int(np.prod(model.tensors[op.output].shape)) for op in model.ops)
    assert model.arena_bytes(1) < per_tensor


def test_concurrent_calls_give_the_same_results():
    model = build_cnn()
    x = _cnn_parts()["x"]
    results, errors = [], []

    def work():
        try:
            for _ in range(20):
                results.append(model.forward_int8(x))
        except Exception as exc:           # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for y in results:
        np.testing.assert_array_equal(y, cnn_expected("gemmlowp"))


def test_float_entry_points_and_nchw_layout():
    model = build_cnn()
    rng = np.random.default_rng(1)
    x = rng.normal(0, 2, (2, 8, 8, 3)).astype(np.float32)
    codes = model.quantize_input(x)
    expected_codes = np.clip(ref.round_half_away_ref(x / np.float32(0.05)) - 3, -128, 127)
    np.testing.assert_array_equal(codes, expected_codes.astype(np.int8))
    probs = model.forward(x)
    assert probs.dtype == np.float32 and probs.shape == (2, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=0.05)
    nchw = build_cnn()
    nchw.input_layout = "NCHW"
    np.testing.assert_array_equal(nchw.quantize_input(x.transpose(0, 3, 1, 2)), codes)
    assert model.input_shape == (None, 8, 8, 3) and model.output_shape == (None, 10)
    np.testing.assert_array_equal(model.dequantize_output(np.array([[-128, 0]], np.int8)),
                                  [[0.0, 0.5]])


def test_multi_input_multi_output_and_empty_batch():
    specs = [TensorSpec("a", (4, 4, 2), 0.1, 0), TensorSpec("b", (4, 4, 2), 0.1, 3),
             TensorSpec("s", (4, 4, 2), 0.2, -1), TensorSpec("m", (2, 2, 2), 0.2, -1)]
    ops = [Add(("a", "b"), "s"), AveragePool2D("s", "m", (2, 2), (2, 2))]
    model = QuantizedModel(specs, ops, ["a", "b"], ["s", "m"])
    rng = np.random.default_rng(5)
    a, b = rand_i8(rng, (2, 4, 4, 2)), rand_i8(rng, (2, 4, 4, 2))
    s, m = model.forward_int8([a, b])
    np.testing.assert_array_equal(s, ref.add_int8_ref(a, b, (0.1, 0), (0.1, 3), (0.2, -1)))
    np.testing.assert_array_equal(m, ref.pool2d_int8_ref(s, (2, 2), (2, 2), (0, 0, 0, 0), "avg"))
    s0, m0 = model.forward_int8([a[:0], b[:0]])
    assert s0.shape == (0, 4, 4, 2) and m0.shape == (0, 2, 2, 2)


# ---------------------------------------------------------------- QuantizedSequential
def _sequential(per_channel):
    rng = np.random.default_rng(11)
    l1 = QuantizedLinear.from_float(rng.normal(size=(16, 9)).astype(np.float32),
                                    rng.normal(size=16).astype(np.float32), 9, 16,
                                    per_channel=per_channel)
    l1.set_input_scale(0.05, -7)
    l2 = QuantizedLinear.from_float(rng.normal(size=(5, 16)).astype(np.float32), None, 16, 5,
                                    per_channel=per_channel)
    l2.set_input_scale(0.3, 12)
    return QuantizedSequential([l1, l2], ["relu6", None], output_scale=0.7, output_zero_point=-4)


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_from_sequential_is_bit_exact_with_the_chain(rounding, per_channel):
    seq = _sequential(per_channel)
    model = QuantizedModel.from_sequential(seq)
    x = rand_i8(np.random.default_rng(3), (33, 9))
    np.testing.assert_array_equal(model.forward_int8(x, rounding=rounding),
                                  seq.forward_int8(x, rounding=rounding))


# ---------------------------------------------------------------- save / load
def test_save_load_round_trip(tmp_path):
    model = build_cnn("round-trip")
    path = tmp_path / "cnn.npz"
    model.save(path)
    back = QuantizedModel.load(path)
    assert back.name == "round-trip" and back.inputs == ["x"] and back.outputs == ["probs"]
    assert back.tensors == model.tensors
    assert [type(op) for op in back.ops] == [type(op) for op in model.ops]
    for a, b in zip(model.ops, back.ops):
        assert a.inputs == b.inputs and a.output == b.output
        for key in a._ARRAYS:
            va, vb = getattr(a, key), getattr(b, key)
            assert (va is None and vb is None) or np.array_equal(va, vb)
        for key in a._PARAMS:
            assert getattr(a, key) == getattr(b, key)
    x = _cnn_parts()["x"]
    for rounding in ROUNDINGS:
        np.testing.assert_array_equal(back.forward_int8(x, rounding=rounding),
                                      model.forward_int8(x, rounding=rounding))


def _saved_members(tmp_path):
    path = tmp_path / "m.npz"
    build_cnn().save(path)
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def _write_zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _npy(arr, header_shape=None):
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    data = buf.getvalue()
    if header_shape is not None:
        data = data.replace(repr(arr.shape).encode(), repr(header_shape).encode(), 1)
    return data


@pytest.mark.parametrize("mutate", [
    "truncated", "not-zip", "weights-float", "huge-shape", "object-array", "unknown-class",
    "extra-entry", "missing-weights", "bad-json", "scales-wrong-dtype",
])
def test_load_refuses_hostile_files(tmp_path, mutate):
    members = _saved_members(tmp_path)
    path = tmp_path / "bad.npz"
    if mutate == "truncated":
        (tmp_path / "m.npz").write_bytes((tmp_path / "m.npz").read_bytes()[:700])
        path = tmp_path / "m.npz"
    elif mutate == "not-zip":
        path.write_bytes(b"definitely not a zip file")
    else:
        import json
        header = json.loads(str(np.load(io.BytesIO(members["graph.npy"]))[()]))
        if mutate == "weights-float":
            members["op0.weights_q.npy"] = _npy(np.zeros((12, 3, 3, 3), np.float32))
        elif mutate == "huge-shape":
            members["op0.weights_q.npy"] = _npy(np.zeros((12, 3, 3, 3), np.int8),
                                                header_shape=(1 << 20, 1 << 20, 3, 3))
        elif mutate == "object-array":
            members["op0.weights_q.npy"] = _npy(np.array([{"a": 1}], dtype=object))
        elif mutate == "unknown-class":
            header["ops"][0]["class"] = "os.system"
        elif mutate == "extra-entry":
            members["surprise.npy"] = _npy(np.zeros(3, np.int8))
        elif mutate == "missing-weights":
            del members["op0.weights_q.npy"]
        elif mutate == "bad-json":
            members["graph.npy"] = _npy(np.array("{not json"))
        elif mutate == "scales-wrong-dtype":
            members["tensor_scales.npy"] = _npy(np.ones(8, np.float64))
        if mutate in ("unknown-class",):
            members["graph.npy"] = _npy(np.array(json.dumps(header)))
        _write_zip(path, members)
    with pytest.raises(ValueError):
        QuantizedModel.load(path)


# ---------------------------------------------------------------- argument errors
def test_forward_int8_argument_errors():
    model = build_cnn()
    x = _cnn_parts()["x"]
    with pytest.raises(TypeError, match="x_q"):
        model.forward_int8(x.astype(np.float32))
    with pytest.raises(TypeError, match="x_q"):
        model.forward_int8(x.tolist())
    with pytest.raises(ValueError, match="x_q"):
        model.forward_int8(x[:, :4])
    with pytest.raises(ValueError, match="rounding"):
        model.forward_int8(x, rounding="nearest")
    with pytest.raises(ValueError, match="NaN"):
        model.quantize_input(np.full((1, 8, 8, 3), np.nan, np.float32))


def _fc(inp="x", out="y", **kw):
    return FullyConnected(inp, out, np.ones((2, 3), np.int8), [0.1], **kw)


@pytest.mark.parametrize("build, error, match", [
    (lambda: FullyConnected("x", "y", np.ones((2, 3), np.float32), [0.1]), TypeError, "weights_q"),
    (lambda: FullyConnected("x", "y", np.full((2, 3), -128, np.int8), [0.1]), ValueError, "weights_q"),
    (lambda: FullyConnected("x", "y", np.ones((2, 3), np.int8), [0.1, 0.2, 0.3]), ValueError, "weight_scales"),
    (lambda: FullyConnected("x", "y", np.ones((2, 3), np.int8), [-0.1]), ValueError, "weight_scales"),
    (lambda: FullyConnected("x", "y", np.ones((2, 3), np.int8), [0.1], np.ones(2, np.float32)), TypeError, "bias_q"),
    (lambda: _fc(activation="tanh"), ValueError, "activation"),
    (lambda: Conv2D("x", "y", np.ones((2, 3, 3, 1), np.int8), [0.1], stride=(0, 1)), ValueError, "stride"),
    (lambda: Conv2D("x", "y", np.ones((2, 3, 3, 1), np.int8), [0.1], padding=(1, 1)), ValueError, "padding"),
    (lambda: DepthwiseConv2D("x", "y", np.ones((2, 3, 3, 1), np.int8), [0.1]), ValueError, "weights_q"),
    (lambda: Add("a", "y"), TypeError, "inputs"),
    (lambda: TensorSpec("x", (3, 0), 0.1, 0), ValueError, "shape"),
    (lambda: TensorSpec("x", (3,), 0.0, 0), ValueError, "scale"),
    (lambda: TensorSpec("x", (3,), 0.1, 128), ValueError, "zero_point"),
    (lambda: TensorSpec(3, (3,), 0.1, 0), TypeError, "name"),
], ids=["weights-float", "weights-128", "scales-count", "scales-negative", "bias-float",
        "activation", "stride", "padding-arity", "depthwise-shape", "add-inputs",
        "spec-shape", "spec-scale", "spec-zp", "spec-name"])
def test_op_and_spec_argument_errors(build, error, match):
    with pytest.raises(error, match=match):
        build()


X = TensorSpec("x", (3,), 0.1, 0)
Y = TensorSpec("y", (2,), 0.1, 0)
Z = TensorSpec("z", (2,), 0.1, 0)


@pytest.mark.parametrize("args, match", [
    (([X, Y], [_fc()], ["x"], ["nope"]), "nope"),
    (([X, Y, Z], [_fc(), _fc("z", "y")], ["x"], ["y"]), "before any op produces"),
    (([X, Y], [_fc(), _fc()], ["x"], ["y"]), "already"),
    (([X, X, Y], [_fc()], ["x"], ["y"]), "twice"),
    (([X, Y, Z], [_fc()], ["x"], ["y"]), "neither"),
    (([X, TensorSpec("y", (5,), 0.1, 0)], [_fc()], ["x"], ["y"]), "output shape"),
    (([X, Y], ["not an op"], ["x"], ["y"]), "ops\\[0\\]"),
    (([X, Y], [_fc()], ["x"], ["y"], "NWHC"), "input_layout"),
], ids=["unknown-output", "order", "produced-twice", "duplicate-spec", "dangling", "shape",
        "not-op", "layout"])
def test_graph_errors(args, match):
    kwargs = {"input_layout": args[4]} if len(args) > 4 else {}
    with pytest.raises((TypeError, ValueError), match=match):
        QuantizedModel(*args[:4], **kwargs)


# ---------------------------------------------------------------- exporter delegates
@pytest.mark.parametrize("method, module, func, args", [
    ("to_tflite", "tflite_graph", "write_tflite", ("m.tflite",)),
    ("to_c", "c_graph", "write_c", ("out", "net")),
    ("to_onnx", "onnx_graph", "to_onnx", ("m.onnx",)),
], ids=["tflite", "c", "onnx"])
def test_exporter_delegates(monkeypatch, method, module, func, args):
    calls = []
    fake = types.ModuleType(f"qatcore.export.{module}")
    setattr(fake, func, lambda *a, **k: calls.append((a, k)) or "done")
    monkeypatch.setitem(sys.modules, f"qatcore.export.{module}", fake)
    import qatcore.export
    monkeypatch.setattr(qatcore.export, module, fake, raising=False)
    model = build_cnn()
    getattr(model, method)(*args)
    assert len(calls) == 1 and calls[0][0][0] is model
    assert calls[0][0][1:] == args[:1] + args[1:]


def test_from_tflite_delegates(monkeypatch):
    fake = types.ModuleType("qatcore.export.tflite_read")
    fake.read_tflite = lambda path: ("read", path)
    monkeypatch.setitem(sys.modules, "qatcore.export.tflite_read", fake)
    import qatcore.export
    monkeypatch.setattr(qatcore.export, "tflite_read", fake, raising=False)
    assert QuantizedModel.from_tflite("x.tflite") == ("read", "x.tflite")


def test_public_names():
    assert qatcore.QuantizedModel is QuantizedModel
    assert "QuantizedModel" in qatcore.__all__
