"""qatcore's own QDQ writer and placement (issue 23 item 1), every model run in
onnxruntime's CPU provider."""

import warnings
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from qatcore.onnx import calibrate_model, preprocess_model  # noqa: E402
from qatcore.onnx.graph import GraphIndex  # noqa: E402
from qatcore.onnx.placement import choose_preset, plan  # noqa: E402
from qatcore.onnx.qdq import activation_qparams, write_qdq  # noqa: E402

import onnx_models  # noqa: E402
from ocr_lines import text_lines  # noqa: E402

CLS = Path(__file__).parent / "data" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
ort.set_default_logger_severity(3)
warnings.simplefilter("ignore")


def _run(path, x):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0].astype(np.float64)


def _sqnr(a, b):
    return 10 * np.log10((a ** 2).sum() / max(((a - b) ** 2).sum(), 1e-30))


@pytest.fixture(scope="module")
def cls(tmp_path_factory):
    """The pre-processed classifier, its ranges, and text lines to evaluate on."""
    d = tmp_path_factory.mktemp("cls")
    pre = d / "pre.onnx"
    preprocess_model(CLS, pre)
    cal, _ = text_lines(16, seed=1)
    ev, _ = text_lines(32, seed=2)
    ranges = calibrate_model(pre, [cal[:8], cal[8:]], method="percentile", bins=1024,
                             preprocess=False)
    return pre, ranges, ev


def _producers(m):
    return {o: n for n in m.graph.node for o in n.output}


def test_cnn_placement_on_the_classifier(cls, tmp_path):
    pre, ranges, ev = cls
    out = tmp_path / "q.onnx"
    placement = write_qdq(pre, ranges, out)
    assert placement.preset == "cnn" and "no attention" in placement.reason
    m = onnx.load(str(out))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    prod = _producers(m)
    q_nodes = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    # far fewer activation quantizers than onnxruntime's every-tensor placement (~180)
    assert len(q_nodes) == len(placement.activations) < 90
    for node in m.graph.node:
        if node.op_type == "Conv":
            x, w = prod[node.input[0]], prod[node.input[1]]
            assert x.op_type == w.op_type == "DequantizeLinear"
            q = inits[w.input[0]]
            assert q.dtype == np.int8 and np.abs(q).max() <= 127
            scale = inits[w.input[1]]
            assert scale.shape == (q.shape[0],)                      # per output channel
            assert [a.i for a in w.attribute if a.name == "axis"] == [0]
            if len(node.input) > 2:
                b = prod[node.input[2]]
                assert inits[b.input[0]].dtype == np.int32
                s_x = inits[x.input[1]]
                np.testing.assert_allclose(inits[b.input[1]], np.float32(s_x) * scale, rtol=1e-6)
        if node.op_type in ("HardSigmoid", "Softmax"):      # fragile inputs stay float
            assert prod.get(node.input[0]) is None or prod[node.input[0]].op_type != "DequantizeLinear"
        if node.op_type == "Mul":                           # gates and hardswish: one unit
            assert all(prod.get(i) is None or prod[i].op_type != "DequantizeLinear" for i in node.input)
    out_name = m.graph.output[0].name
    assert prod[out_name].op_type == "Softmax"             # the model output stays float
    a, b = _run(CLS, ev), _run(out, ev)
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.95
    assert _sqnr(a, b) >= 16.0


def test_quantize_fragile_switch(cls, tmp_path):
    pre, ranges, ev = cls
    out = tmp_path / "q.onnx"
    placement = write_qdq(pre, ranges, out, quantize_fragile=True)
    m = onnx.load(str(out))
    prod = _producers(m)
    assert prod[m.graph.output[0].name].op_type == "DequantizeLinear"
    hs = [n for n in m.graph.node if n.op_type == "HardSigmoid"]
    assert hs and all(prod[n.input[0]].op_type == "DequantizeLinear" for n in hs)
    assert placement.outputs == [m.graph.output[0].name]
    assert _run(out, ev).shape == (32, 2)


def test_keep_float_and_per_tensor(cls, tmp_path):
    pre, ranges, ev = cls
    conv = next(n for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv")
    out = tmp_path / "q.onnx"
    placement = write_qdq(pre, ranges, out, per_channel=False, keep_float=[conv.output[0]])
    m = onnx.load(str(out))
    prod = _producers(m)
    first = next(n for n in m.graph.node if n.op_type == "Conv" and n.output[0] == conv.output[0])
    assert first.input[0] == conv.input[0]                   # left float
    other = next(n for n in m.graph.node if n.op_type == "Conv" and n is not first)
    w_dq = prod[other.input[1]]
    assert onnx.numpy_helper.to_array(
        next(i for i in m.graph.initializer if i.name == w_dq.input[1])).shape == ()
    assert conv.input[0] in placement.left_float
    assert _run(out, ev).shape == (32, 2)


def test_writers_side_by_side_cli(tmp_path, capsys):
    """calibrate-model writes qatcore's placement by default, onnxruntime's on request."""
    cal, _ = text_lines(8, seed=5)
    d = tmp_path / "d"
    d.mkdir()
    np.save(d / "a.npy", cal)
    from qatcore.cli import main
    counts = {}
    for writer in ("qatcore", "onnxruntime"):
        out = tmp_path / f"{writer}.onnx"
        args = ["calibrate-model", str(CLS), "--data", str(d), "--qdq", str(out), "--bins", "256"]
        if writer == "onnxruntime":
            args += ["--qdq-writer", "onnxruntime"]
        assert main(args) == 0
        m = onnx.load(str(out))
        counts[writer] = sum(n.op_type == "QuantizeLinear" for n in m.graph.node)
    text = capsys.readouterr().err      # messages go to stderr
    assert "placement: preset cnn" in text
    assert counts["qatcore"] < counts["onnxruntime"] / 2, counts


def test_transformer_preset_on_attention(tmp_path):
    """A Softmax feeding a MatMul is attention: auto picks transformer; both operands of
    the activation MatMuls are quantized, the residual Add and the Softmax input are not."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    wq, wk, wv = (rng.normal(0, 0.3, (16, 16)).astype(np.float32) for _ in range(3))
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"]),
             helper.make_node("MatMul", ["x", "wk"], ["k"]),
             helper.make_node("MatMul", ["x", "wv"], ["v"]),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["s"]),
             helper.make_node("Softmax", ["s"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["o"]),
             helper.make_node("Add", ["o", "x"], ["y"])]
    graph = helper.make_graph(
        nodes, "attn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 16])],
        [numpy_helper.from_array(a, n) for a, n in ((wq, "wq"), (wk, "wk"), (wv, "wv"))])
    path = tmp_path / "attn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    assert choose_preset(GraphIndex(onnx.load(str(path))))[0] == "transformer"
    x = rng.normal(0, 1, (16, 8, 16)).astype(np.float32)
    out = tmp_path / "q.onnx"
    r = calibrate_model(path, [x[:8], x[8:]], qdq_path=out, preprocess=False)
    assert r.placement.preset == "transformer"
    assert set(r.placement.activations) == {"x", "q", "kt", "p", "v"}
    assert "s" in r.placement.left_float and "y" in r.placement.left_float
    a, b = _run(path, x), _run(out, x)
    assert _sqnr(a, b) >= 25.0
    cnn = plan(GraphIndex(onnx.load(str(path))), r, preset="cnn")
    assert {"o"} <= set(cnn.activations)                       # the residual Add's inputs


def test_activation_qparams():
    assert activation_qparams(0.0, 0.0) == (np.float32(1.0), np.int8(0))
    s, zp = activation_qparams(0.0, 2.55)
    assert np.isclose(s, 0.01) and zp == -128
    s, zp = activation_qparams(0.5, 1.0)                       # widened to hold 0
    assert zp == -128 and np.isclose(s, 1.0 / 255)


def test_relu_model_matches_float(tmp_path):
    model = onnx_models.conv_relu_gemm(tmp_path / "m.onnx")
    rng = np.random.default_rng(7)
    x = rng.normal(0, 1, (32, 1, 8, 8)).astype(np.float32)
    out = tmp_path / "q.onnx"
    r = calibrate_model(model, [x[:16], x[16:]], qdq_path=out, preprocess=False)
    assert set(r.placement.activations) == {"x", "f"}          # Conv and Gemm inputs
    a, b = _run(model, x), _run(out, x)
    assert (a.argmax(1) == b.argmax(1)).all() and _sqnr(a, b) >= 30


def test_compare_bench_smoke():
    """bench/bench_onnx_calibrate.py --compare runs end to end (tiny; figures unchecked)."""
    import subprocess
    import sys
    bench = Path(__file__).parents[1] / "bench" / "bench_onnx_calibrate.py"
    out = subprocess.run([sys.executable, str(bench), "--compare", "--model", "cls",
                          "--n-cal", "8", "--n-eval", "8", "--configs", "qatcore:min_max",
                          "ort:MinMax", "nncf:default"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {line.split()[0]: line for line in out.stdout.splitlines() if "|" in line}
    assert "error" not in rows["qatcore:min_max"] and "QuantizeLinear" in rows["qatcore:min_max"]
    assert "error" not in rows["ort:MinMax"]
    assert "skipped" in rows["nncf:default"]            # no --nncf-python given
