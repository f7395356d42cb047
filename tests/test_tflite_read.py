""".tflite reader (qatcore.export.tflite_read): qatcore's files read back to the model that
wrote them; files made by TensorFlow's converter (tests/data/keras_*.tflite, made by
tests/data/make_tflite_fixtures.py) read and run bit for bit as TFLM / LiteRT run them;
fuzzed and crafted files always give one ValueError, never a crash or a hang."""

import os
import struct
import time
import zlib

import numpy as np
import pytest

import tflite_graph_models as G
from qatcore.export.tflite import FlatbufferModel, schema
from qatcore.export.tflite_graph import tflite_bytes
from qatcore import QuantizedModel
from qatcore.export.tflite_read import parse_tflite

read_tflite = QuantizedModel.from_tflite

litert = pytest.importorskip("ai_edge_litert.interpreter")
tflm = pytest.importorskip("tflite_micro").runtime
pytest.importorskip("flatbuffers")

DATA = os.path.join(os.path.dirname(__file__), "data")
FIXTURES = {  # name: (ops, float input, float output)
    "keras_cnn": (["Conv2D", "DepthwiseConv2D", "Conv2D", "Add", "AveragePool2D", "Reshape",
                   "FullyConnected", "Softmax"], True, True),
    "keras_dscnn": (["Conv2D", "DepthwiseConv2D", "Conv2D", "DepthwiseConv2D", "Conv2D",
                     "Mean", "FullyConnected", "Softmax"], False, False),
    "keras_resnet": (["Conv2D", "MaxPool2D", "Conv2D", "Conv2D", "Conv2D", "Add", "Mean",
                      "FullyConnected", "FullyConnected"], False, True),
    # the converter's PAD before a VALID conv becomes the conv's explicit padding
    "keras_branches": (["Conv2D", "Conv2D", "Conv2D", "Concatenation", "MaxPool2D", "Conv2D",
                        "Mul", "Mean", "FullyConnected", "Logistic"], False, False),
}
N = 1000


def read(data):
    return read_tflite(data)


def fixture_bytes(name):
    with open(os.path.join(DATA, name + ".tflite"), "rb") as f:
        return f.read()


ARGS = G.ARGS


def describe(model):
    """Everything that defines the model, normalized (no bias = zero bias, which the file
    stores; an axis as a non-negative index)."""
    tensors = [(t.name, tuple(t.shape), float(np.float32(t.scale)), int(t.zero_point))
               for t in model.tensors.values()]
    ops = []
    for op in model.ops:
        kind = type(op).__name__
        d = {"inputs": tuple(op.inputs), "output": op.output}
        for a in ARGS[kind]:
            v = getattr(op, a)
            if a == "bias_q" and v is None:
                v = np.zeros(np.asarray(op.weights_q).shape[0 if kind != "DepthwiseConv2D"
                                                               else 3], np.int32)
            if a == "axis":
                v = int(v) % len(model.tensors[op.output].shape)
            if isinstance(v, np.ndarray) or a in ("weight_scales",):
                v = (np.asarray(v).dtype.str, np.asarray(v).shape, np.asarray(v).tolist())
            elif isinstance(v, (tuple, list)):
                v = tuple(tuple(x) if isinstance(x, (tuple, list)) else x for x in v)
            d[a] = v
        ops.append((kind, d))
    return tensors, ops, list(model.inputs), list(model.outputs)


_cache = {}


def build(name):
    if name not in _cache:
        _cache[name] = (G.NETS[name] if name in G.NETS else G._single(name))(5)
    return _cache[name]


# ------------------------------------------------------------------ round trips

@pytest.mark.parametrize("float_io", [False, True], ids=["int8", "float"])
@pytest.mark.parametrize("name", G.SINGLE_OPS + list(G.NETS))
def test_round_trip(name, float_io):
    model = build(name)
    data = tflite_bytes(model, float_io=float_io, batch_size=3)
    back, fio = parse_tflite(data, G)
    assert describe(back) == describe(model) == describe(read_tflite(data))
    assert fio == float_io
    # and written again: the same bytes
    assert tflite_bytes(back, float_io=float_io, batch_size=3) == data


def test_read_from_path(tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(tflite_bytes(build("small_cnn")))
    assert describe(read_tflite(path)) == describe(build("small_cnn"))
    assert describe(read_tflite(str(path))) == describe(build("small_cnn"))
    with pytest.raises(TypeError):
        read_tflite(12)


# ------------------------------------------------------------------ converter-made files

@pytest.mark.parametrize("name", list(FIXTURES))
def test_fixture_structure(name):
    data = fixture_bytes(name)
    assert len(data) < 100_000
    model, float_io = parse_tflite(data, G)
    ops, f_in, f_out = FIXTURES[name]
    assert [type(op).__name__ for op in model.ops] == ops
    assert float_io == (f_in or f_out)
    for op in model.ops:
        if type(op).__name__ in ("Conv2D", "DepthwiseConv2D", "FullyConnected"):
            ws = np.asarray(op.weight_scales)
            n = np.asarray(op.weights_q).shape[3 if type(op).__name__ == "DepthwiseConv2D"
                                                else 0]
            assert ws.shape in ((n,), (1,)) and (ws > 0).all()
    if name == "keras_branches":
        assert tuple(model.ops[0].padding) == (1, 2, 2, 1)      # ZeroPadding2D((1, 2), (2, 1))
    assert describe(read_tflite(data)) == describe(model)


def _int8_io(name):
    """The fixture's interpreter input / output as int8 codes, whatever its I/O type."""
    model = parse_tflite(fixture_bytes(name), G)[0]
    s_in = model.tensors[model.inputs[0]]
    s_out = model.tensors[model.outputs[0]]
    _, f_in, f_out = FIXTURES[name]

    def to_input(q):
        if not f_in:
            return q
        return ((q.astype(np.int32) - s_in.zero_point).astype(np.float32)
                * np.float32(s_in.scale))

    def from_output(y):
        if not f_out:
            return y
        q = np.round(y / np.float32(s_out.scale)) + s_out.zero_point
        assert np.all(np.abs(q - (y / np.float32(s_out.scale) + s_out.zero_point)) < 1e-3)
        return q.astype(np.int8)
    return model, to_input, from_output


def _inputs(model, seed):
    return G.random_inputs(model, N, seed)[0]


_tflm_cache = {}


def tflm_on_fixture(name):
    """TFLM (gemmlowp) on the converter's own file, N random inputs, one at a time (the
    file has batch 1; TFLM cannot resize)."""
    if name not in _tflm_cache:
        model, to_input, from_output = _int8_io(name)
        x = _inputs(model, 21)
        it = tflm.Interpreter.from_bytes(fixture_bytes(name), arena_size=1 << 20)
        out = []
        for row in to_input(x):
            it.set_input(row[None], 0)
            it.invoke()
            out.append(it.get_output(0))
        _tflm_cache[name] = (x, from_output(np.concatenate(out)))
    return _tflm_cache[name]


def litert_on_fixture(name, resolver="BUILTIN_REF"):
    model, to_input, from_output = _int8_io(name)
    x = _inputs(model, 21)
    it = litert.Interpreter(model_content=fixture_bytes(name),
                            experimental_op_resolver_type=getattr(litert.OpResolverType,
                                                                  resolver))
    d = it.get_input_details()[0]
    it.resize_tensor_input(d["index"], [N, *d["shape"][1:]])
    it.allocate_tensors()
    it.set_tensor(d["index"], to_input(x))
    it.invoke()
    return x, from_output(it.get_tensor(it.get_output_details()[0]["index"]))


@pytest.mark.parametrize("name", list(FIXTURES))
def test_fixture_bit_exact_tflm(name):
    x, want = tflm_on_fixture(name)
    np.testing.assert_array_equal(read(fixture_bytes(name)).forward_int8(x), want)


@pytest.mark.parametrize("name", list(FIXTURES))
def test_fixture_bit_exact_litert_ref(name):
    # LiteRT's reference kernels round twice (gemmlowp) except in FULLY_CONNECTED, which
    # rounds once: the model run op by op with those roundings.
    x, want = litert_on_fixture(name)
    model = read(fixture_bytes(name))
    got = G.per_op_forward(model, [x], G.RUNTIME_ROUNDING["ref"])[0]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(model.forward_int8(x, rounding="litert_ref"), want)


@pytest.mark.parametrize("name", list(FIXTURES))
def test_fixture_xnnpack_agreement(name, record_property):
    x, want = litert_on_fixture(name, "AUTO")
    model = read(fixture_bytes(name))
    for rounding in ("single", "gemmlowp"):
        diff = np.abs(model.forward_int8(x, rounding=rounding).astype(np.int32) - want)
        record_property(f"xnnpack_{name}_vs_{rounding}",
                        f"max {diff.max()} LSB, {np.mean(diff > 0):.3%} differ")
        assert diff.max() <= 8


@pytest.mark.parametrize("name", list(FIXTURES))
def test_fixture_rewritten_runs_as_the_original(name):
    # What the reader understood, written again by qatcore, computes exactly what the
    # converter's file computes: TFLM and LiteRT's reference kernels, N random inputs.
    model = parse_tflite(fixture_bytes(name), G)[0]
    x, want = tflm_on_fixture(name)
    it = tflm.Interpreter.from_bytes(tflite_bytes(model, batch_size=N), arena_size=1 << 24)
    it.set_input(x, 0)
    it.invoke()
    np.testing.assert_array_equal(it.get_output(0), want)
    x, want = litert_on_fixture(name)
    it = litert.Interpreter(model_content=tflite_bytes(model, batch_size=N),
                            experimental_op_resolver_type=litert.OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    np.testing.assert_array_equal(it.get_tensor(it.get_output_details()[0]["index"]), want)
    # the converter's (gemmlowp) TFLM and (single-rounding) reference kernels differ at
    # near-ties only
    assert np.mean(tflm_on_fixture(name)[1] != want) < 0.02


# ------------------------------------------------------------------ hostile files

def _expect_value_error_or_model(data, seed):
    t0 = time.perf_counter()
    try:
        model = read(data)
    except ValueError:
        model = None
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, f"{elapsed:.2f} s"
    if model is not None:
        # a mutated file that still reads is a valid model: the engine runs it
        xs = G.random_inputs(model, 2, seed)
        model.forward_int8(xs if len(xs) > 1 else xs[0])


_BASES = {}


def base_file(name):
    if name not in _BASES:
        if name in FIXTURES:
            _BASES[name] = fixture_bytes(name)
        else:
            _BASES[name] = tflite_bytes(build(name), float_io=True)
    return _BASES[name]


FUZZ_BASES = ["small_cnn", "mixed", "keras_cnn", "keras_resnet"]
CRAFTED = [0, 1, 2, 3, 4, 8, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
           0xFFFFFFFC, 1 << 28, (1 << 28) + 1]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("block", range(4))
@pytest.mark.parametrize("kind", ["flip", "truncate", "u32", "u16"])
@pytest.mark.parametrize("base", FUZZ_BASES)
def test_fuzz_never_crashes(base, kind, block):
    data = base_file(base)
    rng = np.random.default_rng([zlib.crc32(base.encode()), block, zlib.crc32(kind.encode())])
    t0 = time.perf_counter()
    for i in range(40):
        b = bytearray(data)
        if kind == "flip":
            for pos in rng.integers(0, len(b), int(rng.integers(1, 9))):
                b[pos] ^= 1 << int(rng.integers(0, 8))
        elif kind == "truncate":
            b = b[:int(rng.integers(0, len(b)))]
        elif kind == "u32":
            for _ in range(int(rng.integers(1, 4))):
                pos = int(rng.integers(0, len(b) // 4)) * 4
                v = int(rng.choice(CRAFTED + [len(b), len(b) - 4, int(rng.integers(0, len(b)))]))
                b[pos:pos + 4] = v.to_bytes(4, "little")
        else:
            pos = int(rng.integers(0, len(b) // 2)) * 2
            v = int(rng.choice([0, 2, 4, 6, 0xFFFF, 0x8000, int(rng.integers(0, 1 << 16))]))
            b[pos:pos + 2] = v.to_bytes(2, "little")
        _expect_value_error_or_model(bytes(b), i)
    assert time.perf_counter() - t0 < 20


# crafted files: valid flatbuffers with bad content, made by editing the object API tree

def _tree(data):
    return schema().ModelT.InitFromPackedBuf(data, 0)


def _pack(m):
    import flatbuffers
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _edit(name, edit):
    m = _tree(tflite_bytes(build(name)))
    edit(m, m.subgraphs[0])
    return _pack(m)


def _set_opcode(code):
    def edit(m, sg):
        m.operatorCodes[0].builtinCode = code
        m.operatorCodes[0].deprecatedBuiltinCode = min(code, 127)
    return edit


def _tensor_attr(index, attr, value):
    def edit(m, sg):
        setattr(sg.tensors[index], attr, value)
    return edit


def _quant_attr(index, attr, value):
    def edit(m, sg):
        setattr(sg.tensors[index].quantization, attr, value)
    return edit


def _weights_quant(attr, value):
    def edit(m, sg):
        setattr(sg.tensors[sg.operators[0].inputs[1]].quantization, attr, value)
    return edit


def _op_attr(k, attr, value):
    def edit(m, sg):
        setattr(sg.operators[k], attr, value)
    return edit


def _options(k, attr, value):
    def edit(m, sg):
        setattr(sg.operators[k].builtinOptions, attr, value)
    return edit


def _two_subgraphs(m, sg):
    m.subgraphs.append(sg)


def _version(m, sg):
    m.version = 2


def _short_buffer(m, sg):
    w = sg.tensors[sg.operators[0].inputs[1]]
    m.buffers[w.buffer].data = m.buffers[w.buffer].data[:-1]


def _custom(m, sg):
    m.operatorCodes[0].builtinCode = 32
    m.operatorCodes[0].deprecatedBuiltinCode = 32
    m.operatorCodes[0].customCode = "MyOp"


S = schema()
CRAFTED_FILES = {
    "TANH": ("relu", _set_opcode(S.BuiltinOperator.TANH), r"operator 0 is TANH"),
    "custom": ("relu", _custom, r"operator 0 is custom op 'MyOp'"),
    "nine-dims": ("relu", _tensor_attr(0, "shape", [1] * 9), "dimensions"),
    "huge-shape": ("relu", _tensor_attr(1, "shape", [1, 1 << 15, 1 << 15, 1]), "2\\^28"),
    "negative-dim": ("relu", _tensor_attr(0, "shape", [1, -9, 11, 5]), "negative"),
    "buffer-index": ("relu", _tensor_attr(0, "buffer", 77), "buffer 77"),
    "buffer-size": ("conv", _short_buffer, "buffer of"),
    "tensor-index": ("relu", _op_attr(0, "inputs", [999]), "tensor 999"),
    "opcode-index": ("relu", _op_attr(0, "opcodeIndex", 5), "operator code 5"),
    "scales-length": ("conv", _weights_quant("scale", [0.1, 0.2, 0.3]), "scales"),
    "quant-dim": ("conv", _weights_quant("quantizedDimension", 3), "quantized_dimension"),
    "weight-zp": ("conv", _weights_quant("zeroPoint", [1] * 6), "symmetric"),
    "act-float": ("relu", _tensor_attr(1, "type", S.TensorType.FLOAT32), "int8"),
    "act-zp": ("relu", _quant_attr(1, "zeroPoint", [300]), "zero point 300"),
    "act-scale-nan": ("relu", _quant_attr(1, "scale", [float("nan")]), "scale nan"),
    "act-scale-0": ("relu", _quant_attr(0, "scale", [0.0]), "scale 0.0"),
    "act-per-channel": ("relu", _quant_attr(1, "scale", [0.1, 0.2]), "one scale"),
    "two-subgraphs": ("relu", _two_subgraphs, "2 subgraphs"),
    "version": ("relu", _version, "version 2"),
    "fused-tanh": ("conv", _options(0, "fusedActivationFunction", 4), "fused activation 4"),
    "stride-0": ("conv", _options(0, "strideH", 0), "stride"),
    "padding-code": ("conv", _options(0, "padding", 7), "padding 7"),
    "no-outputs": ("relu", lambda m, sg: setattr(sg, "outputs", []), "no inputs or no"),
    "conv-shape": ("conv", _tensor_attr(1, "shape", [1, 9, 11, 7]), "output shape"),
    "fc-size": ("fc", _tensor_attr(0, "shape", [1, 23]), "elements per sample"),
    "broadcast": ("add", _tensor_attr(1, "shape", [1, 1, 1, 5]), "broadcasting"),
    "op-order": ("small_cnn", lambda m, sg: sg.operators.reverse(),
                 "before any operator writes"),
    "written-twice": ("small_cnn", lambda m, sg: setattr(sg.operators[1], "outputs",
                                                         sg.operators[0].outputs),
                      "already written"),
    "dup-inputs": ("relu", lambda m, sg: setattr(sg, "inputs", [0, 0]), "listed twice"),
}


@pytest.mark.parametrize("case", list(CRAFTED_FILES))
def test_crafted_file(case):
    name, edit, match = CRAFTED_FILES[case]
    data = _edit(name, edit)
    with pytest.raises(ValueError, match=match):
        read(data)


@pytest.mark.parametrize("data,match", [
    (b"", "TFL3"), (b"\x00" * 7, "TFL3"), (b"\x08\x00\x00\x00TFL2" + b"\x00" * 16, "TFL3"),
    (b"\xff\xff\xff\x7fTFL3" + b"\x00" * 16, "outside the file"),
    (b"\x08\x00\x00\x00TFL3" + b"\x00" * 16, "vtable"),
], ids=["empty", "short", "identifier", "root-offset", "vtable"])
def test_not_a_flatbuffer(data, match):
    with pytest.raises(ValueError, match=match):
        read(data)


def test_huge_vector_length():
    # the tensors vector claims 2^32 - 16 entries: refused before anything is allocated
    data = bytearray(tflite_bytes(build("relu")))
    # find the subgraph's tensors vector through the reader's own table walk
    from qatcore.export.tflite_read import _Buffer
    b = _Buffer(bytes(data))
    root = b.table(b.u32(0))
    sg = root.tables(2)[0]
    start, _ = sg.vector(0, 4)
    struct.pack_into("<I", data, start - 4, 0xFFFFFFF0)
    with pytest.raises(ValueError, match="runs past the file"):
        read(bytes(data))


def test_shared_buffers_cannot_multiply_memory():
    # 300 FULLY_CONNECTED ops sharing one 64 kB weight buffer would make 19 MB of weights
    # out of a 160 kB file: refused.
    fb = FlatbufferModel()
    TT = fb.s.TensorType
    x = fb.act_tensor("x", (1, 256), 0.1, 0)
    wbuf = fb.buffer(np.ones((256, 256), np.int8))
    bbuf = fb.buffer(np.zeros(256, "<i4"))
    for k in range(300):
        w = fb.tensor(f"w{k}", (256, 256), TT.INT8, wbuf, fb.quant([0.01], [0]))
        b = fb.tensor(f"b{k}", (256,), TT.INT32, bbuf, fb.quant([0.001], [0]))
        y = fb.act_tensor(f"y{k}", (1, 256), 0.1, 0)
        fb.operator("FULLY_CONNECTED", [x, w, b], [y], "FullyConnectedOptions")
        x = y
    data = fb.finish([0], [x], name="m", description="")
    assert 300 * 256 * 256 > 100 * len(data)
    with pytest.raises(ValueError, match="shared too many times"):
        read(data)


def test_unsupported_op_names_op_and_index():
    g = G.GraphBuilder(1, (6,))
    y = g.relu("x")
    z = g.relu(y)
    data = tflite_bytes(g.model(z, calibrate=False))
    m = _tree(data)
    m.operatorCodes.append(schema().OperatorCodeT())
    m.operatorCodes[-1].builtinCode = m.operatorCodes[-1].deprecatedBuiltinCode = \
        S.BuiltinOperator.TANH
    m.operatorCodes[-1].version = 1
    m.subgraphs[0].operators[1].opcodeIndex = len(m.operatorCodes) - 1
    with pytest.raises(ValueError, match=r"^not a usable int8 \.tflite model: operator 1 is "
                                         r"TANH, which qatcore does not support$"):
        read(_pack(m))


def test_model_methods_delegate(tmp_path):
    model = build("resnet_block")
    path = tmp_path / "m.tflite"
    model.to_tflite(path)
    assert path.read_bytes() == tflite_bytes(model)
    assert describe(G.QuantizedModel.from_tflite(path)) == describe(model)
    model.to_tflite(path, float_io=True)
    assert describe(G.QuantizedModel.from_tflite(path)) == describe(model)


def test_operator_codes_match_the_schema():
    # the reader carries the codes it reads (it needs no schema package); they are the
    # schema's
    from qatcore.export.tflite_read import _CODES
    for name, code in _CODES.items():
        assert getattr(S.BuiltinOperator, name) == code, name


def test_rank_one_activation_is_one_value_per_sample():
    # MEAN over every axis: TFLite's output is (batch,), the graph's sample shape (1,)
    g = G.GraphBuilder(1, (5, 6, 3))
    y = g._new((1,), 0.03, 2)
    g.ops.append(G.Rec(G.Mean, "x", y, axes=(0, 1, 2), keepdims=False))
    model = g.model(y)
    m = _tree(tflite_bytes(model))
    m.subgraphs[0].tensors[1].shape = [1]
    back = read(_pack(m))
    assert back.tensors["t1"].shape == (1,)
    x = G.random_inputs(model, 300, 1)[0]
    np.testing.assert_array_equal(back.forward_int8(x), model.forward_int8(x))
    got = run_tflm_file(_pack(m), x)
    np.testing.assert_array_equal(got.reshape(-1, 1), model.forward_int8(x))


def run_tflm_file(data, x):
    it = tflm.Interpreter.from_bytes(data, arena_size=1 << 20)
    out = []
    for row in x:
        it.set_input(row[None], 0)
        it.invoke()
        out.append(it.get_output(0).reshape(1, -1))
    return np.concatenate(out)
