"""Calibration that protects the model (issues 23 and 24): ranges held to what the
producing op can output, methods that cannot collapse, warnings when a range clips, and
the model input observed in every batch.  Every QDQ model runs in onnxruntime."""

import warnings
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from qatcore.onnx import METHODS, CalibrationWarning, calibrate_model  # noqa: E402

import onnx_models  # noqa: E402
from ocr_lines import text_lines  # noqa: E402

CLS = Path(__file__).parent / "data" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
ort.set_default_logger_severity(3)


def _run(path, x):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0].astype(np.float64)


def _sqnr(a, b):
    return 10 * np.log10((a ** 2).sum() / max(((a - b) ** 2).sum(), 1e-30))


def _quiet_calibrate(*args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = calibrate_model(*args, **kwargs)
    return result, [w for w in caught if issubclass(w.category, CalibrationWarning)]


@pytest.fixture(scope="module")
def relu_model(tmp_path_factory):
    return onnx_models.conv_relu_gemm(tmp_path_factory.mktemp("m") / "crg.onnx")


@pytest.fixture(scope="module")
def relu_data():
    rng = np.random.default_rng(0)
    return ([rng.normal(0, 1, (8, 1, 8, 8)).astype(np.float32) for _ in range(2)],
            rng.normal(0, 1, (64, 1, 8, 8)).astype(np.float32))


@pytest.mark.parametrize("writer", ["qatcore", "onnxruntime"])
@pytest.mark.parametrize("method", METHODS)
def test_relu_range_never_below_zero(relu_model, relu_data, tmp_path, method, writer):
    """Issue 24 item 1: mean_std gave the ReLU output a negative minimum, onnxruntime's
    quantizer then dropped the Relu and the QDQ model was silently wrong (-0.6 dB, 83 %
    top-1).  Every method now keeps ReLU (and what it flows into: Flatten) at >= 0, and
    the QDQ model's outputs match the float model's."""
    cal, ev = relu_data
    qdq = tmp_path / "q.onnx"
    r, _ = _quiet_calibrate(relu_model, cal, method=method, qdq_path=qdq, qdq_writer=writer,
                            preprocess=False)
    assert r["r"][0] == 0.0 and r["f"][0] == 0.0, (r["r"], r["f"])
    a, b = _run(relu_model, ev), _run(qdq, ev)
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.97
    assert _sqnr(a, b) >= 28.0


def test_mean_std_range_was_negative_and_is_held(relu_model, relu_data):
    """What mean_std alone gives the ReLU output is below 0; `held` records the move."""
    cal, _ = relu_data
    r, _ = _quiet_calibrate(relu_model, cal, method="mean_std", preprocess=False, max_clip=1.0)
    (lo_method, _), (lo_held, _) = r.held["r"]
    assert lo_method < 0 and lo_held == 0.0


def test_sigmoid_output_held_to_unit_interval(tmp_path):
    model = onnx_models.conv_sigmoid_output(tmp_path / "s.onnx")
    x = np.random.default_rng(1).normal(0, 1, (8, 1, 16, 16)).astype(np.float32)
    for method in METHODS:
        r, _ = _quiet_calibrate(model, [x], method=method, preprocess=False)
        lo, hi = r["y"]
        assert 0.0 <= lo <= hi <= 1.0, (method, r["y"])
        assert r["r"][0] == 0.0


def test_clip_bounds_and_input_every_batch(tmp_path):
    """Clip(0, 6) output within [0, 6] for every method; the model input's range from
    every batch (a narrow batch first then a wide one gave the narrow range)."""
    from onnx import TensorProto, helper
    nodes = [helper.make_node("Clip", ["x", "lo", "hi"], ["c"]),
             helper.make_node("Mul", ["c", "x"], ["y"])]
    graph = helper.make_graph(
        nodes, "clip", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor("lo", TensorProto.FLOAT, [], [0.0]),
         helper.make_tensor("hi", TensorProto.FLOAT, [], [6.0])])
    model = tmp_path / "clip.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(model))
    rng = np.random.default_rng(2)
    narrow = rng.uniform(-0.3, 0.3, (4, 16)).astype(np.float32)
    wide = rng.uniform(-9, 9, (4, 16)).astype(np.float32)
    for method in METHODS:
        r, _ = _quiet_calibrate(model, [narrow, wide], method=method, preprocess=False)
        assert 0.0 <= r["c"][0] <= r["c"][1] <= 6.0, (method, r["c"])
    r = calibrate_model(model, [narrow, wide], method="min_max", preprocess=False)
    assert r["x"] == (float(wide.min()), float(wide.max()))
    r = calibrate_model(CLS, [narrow_cls(0.3), narrow_cls(1.0)], method="min_max")
    assert r["x"][0] < -0.9 and r["x"][1] > 0.9


def narrow_cls(amp):
    return np.random.default_rng(3).uniform(-amp, amp, (2, 3, 48, 192)).astype(np.float32)


def test_clipping_warnings(relu_model, relu_data):
    """Issue 24 item 2: a method that clips much of the observed mass, or the model's
    output, says so."""
    cal, _ = relu_data
    r, caught = _quiet_calibrate(relu_model, cal, method="mean_std", preprocess=False,
                                 max_clip=1.0)          # no fallback: the clipping stays
    assert any("model output 'y'" in str(w.message) for w in caught), caught
    assert r.warnings and r.clipped["y"] > 0
    r, caught = _quiet_calibrate(relu_model, cal, method="min_max", preprocess=False)
    assert not caught and not r.warnings


@pytest.fixture(scope="module")
def lines():
    cal, _ = text_lines(16, seed=1)
    ev, _ = text_lines(32, seed=2)
    return [cal[:8], cal[8:]], ev


@pytest.mark.parametrize("method", ["entropy", "entropy_signed"])
def test_kl_on_gated_classifier_does_not_collapse(lines, tmp_path, method):
    """Issue 23: TensorRT's entropy on the classifier cut its HardSigmoid gates at their
    own minimum (-0.29 dB, top-1 41 %). The cut now falls back and says so."""
    cal, ev = lines
    qdq = tmp_path / "q.onnx"
    r, caught = _quiet_calibrate(CLS, cal, method=method, qdq_path=qdq, bins=512)
    assert r.fallbacks and any("fell back" in str(w.message) for w in caught)
    a, b = _run(CLS, ev), _run(qdq, ev)
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.9
    assert _sqnr(a, b) >= 10.0


def test_gate_model_every_method_close_to_min_max(tmp_path):
    """A Conv -> HardSigmoid squeeze-excite gate saturated near 1 (no value near 0): no
    method collapses (each within 3 dB of min_max)."""
    model = onnx_models.conv_hardsigmoid_gate(tmp_path / "g.onnx")
    rng = np.random.default_rng(4)
    cal = [rng.normal(0, 1, (8, 3, 16, 16)).astype(np.float32) for _ in range(2)]
    ev = rng.normal(0, 1, (32, 3, 16, 16)).astype(np.float32)
    ref = _run(model, ev)
    scores = {}
    for method in METHODS:
        _quiet_calibrate(model, cal, method=method, qdq_path=tmp_path / "q.onnx", preprocess=False)
        scores[method] = _sqnr(ref, _run(tmp_path / "q.onnx", ev))
    assert all(v >= scores["min_max"] - 3.0 for v in scores.values()), scores


@pytest.mark.parametrize("writer, fragile", [("qatcore", False), ("qatcore", True),
                                             ("onnxruntime", False)])
def test_sigmoid_probability_map_not_capped(tmp_path, writer, fragile):
    """Issue 23: entropy_signed cut the detector's output Sigmoid to [0, 0.032], so every
    probability sat below the 0.3 threshold (IoU 0). Now no method caps the map: its
    range reaches 1 and the > 0.3 map of the QDQ model matches the float one."""
    model = onnx_models.conv_sigmoid_output(tmp_path / "s.onnx")
    rng = np.random.default_rng(5)
    cal = [rng.normal(0, 1, (4, 1, 16, 16)).astype(np.float32) for _ in range(4)]
    ev = rng.normal(0, 1, (32, 1, 16, 16)).astype(np.float32)
    ref = _run(model, ev) > 0.3
    for method in ("entropy_signed", "entropy", "mse", "mean_std", "auto"):
        r, _ = _quiet_calibrate(model, cal, method=method, preprocess=False,
                                qdq_path=tmp_path / "q.onnx", qdq_writer=writer,
                                quantize_fragile=fragile)
        assert r["y"][1] >= 0.99, (method, r["y"])
        got = _run(tmp_path / "q.onnx", ev) > 0.3
        assert (ref & got).sum() / (ref | got).sum() >= 0.95, method
