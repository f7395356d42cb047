"""Whole-model calibration of a real pretrained CNN (PaddleOCR's text-direction classifier,
tests/data, Apache-2.0) in onnxruntime, QDQ output run in onnxruntime."""

import contextlib
import gc
import io
import json
import logging
import weakref
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from qatcore.onnx import calibrate_model, tensors_to_calibrate  # noqa: E402

from ocr_lines import text_lines  # noqa: E402

MODEL = Path(__file__).parent / "data" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
ort.set_default_logger_severity(3)
logging.getLogger().setLevel(logging.ERROR)     # onnxruntime.quantization's pre-process advice


@pytest.fixture(scope="module")
def lines():
    cal, _ = text_lines(24, seed=1)
    ev, flipped = text_lines(64, seed=2)
    return cal, ev, flipped


@pytest.fixture(scope="module")
def pre(tmp_path_factory):
    """The model as calibrate_model(preprocess=True) sees it."""
    from onnxruntime.quantization.shape_inference import quant_pre_process
    path = tmp_path_factory.mktemp("pre") / "pre.onnx"
    quant_pre_process(str(MODEL), str(path), skip_symbolic_shape=True)
    onnx.save(onnx.version_converter.convert_version(onnx.load(str(path)), 13), str(path))
    return path


def _run(path, x):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_float_model_reads_the_rendered_lines(lines):
    _, ev, flipped = lines
    pytest.importorskip("PIL")
    assert (_run(MODEL, ev).argmax(1) == flipped).mean() >= 0.85


# Measured on these inputs (24 calibration lines; top-1 agreement with the float model on 64
# other lines, SQNR of the softmax outputs): min_max 1.00 / 24.3 dB, percentile 1.00 /
# 19.1 dB, entropy_signed 0.92 / 9.8 dB, mse 0.98 / 18.2 dB. Bounds leave a margin.
@pytest.mark.parametrize("method, opts, min_top1, min_db", [
    ("min_max", {}, 0.95, 20.0), ("percentile", {"bins": 1024}, 0.95, 16.0),
    ("entropy_signed", {"bins": 128}, 0.85, 7.5), ("mse", {"bins": 256}, 0.95, 15.0)])
def test_qdq_model_stays_close_to_float(lines, tmp_path, method, opts, min_top1, min_db):
    cal, ev, _ = lines
    qdq = tmp_path / "q.onnx"
    result = calibrate_model(MODEL, [cal[i:i + 8] for i in range(0, 24, 8)], method=method,
                             qdq_path=qdq, json_path=tmp_path / "r.json", **opts)
    assert result.batches == 3 and result.samples == 24
    a, b = _run(MODEL, ev).astype(np.float64), _run(qdq, ev).astype(np.float64)
    top1 = (a.argmax(1) == b.argmax(1)).mean()
    sqnr = 10 * np.log10((a ** 2).sum() / ((a - b) ** 2).sum())
    assert top1 >= min_top1, top1
    assert sqnr >= min_db, sqnr
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["format"] == "qatcore-calibration/1" and doc["method"] == method
    assert set(doc["tensors"]) == set(result)
    assert all(v["min"] <= v["max"] for v in doc["tensors"].values())


def test_qdq_form(lines, tmp_path):
    """int8 weights per output channel, int8 activations per tensor (per channel at the
    input of a depthwise Conv, whose scales fold into its weights'), int32 bias."""
    cal, _, _ = lines
    qdq = tmp_path / "q.onnx"
    calibrate_model(MODEL, cal[:8], qdq_path=qdq)
    m = onnx.load(str(qdq))
    inits = {i.name: i for i in m.graph.initializer}
    tp = onnx.TensorProto
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    assert len(convs) == 53
    producers = {o: n for n in m.graph.node for o in n.output}
    for conv in convs:
        dq_x, dq_w = producers[conv.input[0]], producers[conv.input[1]]
        assert dq_x.op_type == dq_w.op_type == "DequantizeLinear"
        w = inits[dq_w.input[0]]
        assert w.data_type == tp.INT8
        w_scale = onnx.numpy_helper.to_array(inits[dq_w.input[1]])
        assert w_scale.shape == (w.dims[0],)                       # per output channel
        group = next((a.i for a in conv.attribute if a.name == "group"), 1)
        x_shape = () if group == 1 else (group,)          # per tensor / per channel
        assert onnx.numpy_helper.to_array(inits[dq_x.input[1]]).shape == x_shape
        x_codes = producers[dq_x.input[0]]
        assert x_codes.op_type == "QuantizeLinear"
        assert onnx.numpy_helper.to_array(inits[x_codes.input[2]]).dtype == np.int8
        if len(conv.input) > 2:
            b = inits[producers[conv.input[2]].input[0]]
            assert b.data_type == tp.INT32


def test_min_max_ranges_equal_onnxruntime_minmax_calibrator(lines, pre):
    """qatcore's MIN_MAX observers see exactly the activations onnxruntime's MinMax
    calibrator reduces: the same tensors, the same ranges bit for bit."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator
    cal, _, _ = lines
    batches = [cal[i:i + 8] for i in range(0, 24, 8)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"x": x}

    with contextlib.redirect_stdout(io.StringIO()):
        c = create_calibrator(Path(pre), None, augmented_model_path=str(pre.parent / "aug.onnx"),
                              calibrate_method=CalibrationMethod.MinMax)
        c.collect_data(Reader())
        theirs = c.compute_data()
    # onnxruntime's calibrators run with graph optimizations off; so does this run
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ours = calibrate_model(pre, batches, method="min_max", preprocess=False, session_options=so)
    assert set(ours) == set(theirs.keys())
    for name, (lo, hi) in ours.items():
        t_lo, t_hi = (float(np.asarray(v).ravel()[0]) for v in theirs[name].range_value)
        assert (np.float32(lo), np.float32(hi)) == (np.float32(t_lo), np.float32(t_hi)), name
    # with the default (all optimizations: fused kernels) activations move in the 6th digit
    fused = calibrate_model(pre, batches, method="min_max", preprocess=False)
    for name, r in fused.items():
        np.testing.assert_allclose(r, ours[name], rtol=1e-4, atol=1e-12)


def test_tensor_selection_matches_onnxruntime(pre):
    from onnxruntime.quantization.calibrate import MinMaxCalibrater
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer
    names, _ = tensors_to_calibrate(onnx.load(str(pre)))
    cal = MinMaxCalibrater.__new__(MinMaxCalibrater)
    cal.op_types_to_calibrate = None
    theirs, _ = cal.select_tensors_to_calibrate(load_model_with_shape_infer(Path(pre)))
    assert set(names) == set(theirs)


def test_one_batch_in_memory(lines, pre):
    """Each batch (and its activations) is released before the next one is requested."""
    cal, _, _ = lines
    refs = []

    def gen():
        for i in range(3):
            if refs:
                gc.collect()
                assert refs[-1]() is None, "the previous batch is still alive"
            x = cal[8 * i:8 * i + 8].copy()
            refs.append(weakref.ref(x))
            yield x
            del x

    calibrate_model(pre, gen(), preprocess=False)
    assert len(refs) == 3


def test_folder_inputs_and_cli(lines, tmp_path, capsys):
    cal, _, _ = lines
    d = tmp_path / "data"
    d.mkdir()
    np.save(d / "a.npy", cal[:8])
    np.savez(d / "b.npz", x=cal[8:16])
    from qatcore.cli import main
    rc = main(["calibrate-model", str(MODEL), "--data", str(d), "--method", "percentile",
               "--bins", "256", "--json", str(tmp_path / "r.json"), "--qdq", str(tmp_path / "q.onnx")])
    assert rc == 0
    captured = capsys.readouterr()
    assert "over 2 batches (16 samples)" in captured.err and captured.out == ""
    doc = json.loads((tmp_path / "r.json").read_text())
    api = calibrate_model(MODEL, [cal[:8], {"x": cal[8:16]}], method="percentile", bins=256)
    assert {k: tuple(v["range"]) for k, v in doc["tensors"].items()} == dict(api)
    assert (tmp_path / "q.onnx").stat().st_size > 100_000


def test_image_folder(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    d = tmp_path / "img"
    d.mkdir()
    for i in range(3):
        Image.new("RGB", (300 + i, 60), (200, 200 - 40 * i, 200)).save(d / f"{i}.png")
    with pytest.raises(ValueError, match="image_size"):
        calibrate_model(MODEL, d)                  # H, W are dynamic in this model
    r = calibrate_model(MODEL, d, image_size=(48, 192))
    assert r.batches == 3 and r.samples == 3
    lo, hi = r["x"]                                # the model input after preprocessing
    assert -1.0 <= lo <= hi <= 1.0


def test_errors(lines, tmp_path):
    cal, _, _ = lines
    with pytest.raises(ValueError, match="method"):
        calibrate_model(MODEL, cal[:2], method="kl")
    with pytest.raises(ValueError, match="does not exist"):
        calibrate_model(MODEL, tmp_path / "nope")
    with pytest.raises(ValueError, match="model_path"):
        calibrate_model(tmp_path / "missing.onnx", cal[:2])
    with pytest.raises(ValueError, match="onnxruntime could not run"):
        calibrate_model(MODEL, np.zeros((2, 5, 48, 192), np.float32))
    bad = cal[:2].copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="input 'x' contains a non-finite"):
        calibrate_model(MODEL, bad)
    with pytest.raises(ValueError, match="no calibration batches"):
        calibrate_model(MODEL, [])
    p = tmp_path / "obj.npy"
    np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):                # never unpickled
        calibrate_model(MODEL, p)


def test_batches_of_changing_shape(lines, pre):
    """Reused output buffers (same input shape) and fresh ones (a new shape) both work."""
    cal, _, _ = lines
    mixed = calibrate_model(pre, [cal[:8], cal[8:12], cal[12:20], cal[20:24]], preprocess=False)
    whole = calibrate_model(pre, [cal[:24]], preprocess=False)
    assert set(mixed) == set(whole)
    for name in whole:
        np.testing.assert_allclose(mixed[name], whole[name], rtol=1e-4, atol=1e-12)


def test_bench_smoke():
    """bench/bench_onnx_calibrate.py runs end to end (tiny size; figures are not checked)."""
    import subprocess
    import sys
    bench = Path(__file__).parents[1] / "bench" / "bench_onnx_calibrate.py"
    out = subprocess.run([sys.executable, str(bench), "--model", "cls", "--n", "8",
                          "--methods", "MinMax"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    row = [line for line in out.stdout.splitlines() if line.startswith("MinMax")]
    assert len(row) == 1 and "error" not in row[0] and row[0].count("|") == 4, out.stdout
