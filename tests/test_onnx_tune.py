"""Bias correction, sensitivity ranking, keep-k-float and the HTML report (issue 23 items 3
and 4), on small models run in onnxruntime."""

import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from qatcore.onnx import calibrate_model  # noqa: E402

import onnx_models  # noqa: E402

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
def gate(tmp_path_factory):
    d = tmp_path_factory.mktemp("gate")
    model = onnx_models.conv_hardsigmoid_gate(d / "g.onnx")
    rng = np.random.default_rng(11)
    cal = [rng.normal(0.3, 1, (8, 3, 16, 16)).astype(np.float32) for _ in range(4)]
    return model, cal


def test_bias_correction_removes_the_mean_error(gate, tmp_path):
    """The corrected QDQ model's per-channel mean output error on the calibration data is
    smaller than the uncorrected one's (the correction is what it measured)."""
    model, cal = gate
    x = np.concatenate(cal)
    ref = _run(model, x)
    plain = tmp_path / "plain.onnx"
    fixed = tmp_path / "fixed.onnx"
    calibrate_model(model, cal, qdq_path=plain, preprocess=False, bias_correction=False)
    r = calibrate_model(model, cal, qdq_path=fixed, preprocess=False, bias_correction=True)
    assert set(r.bias_shift) == {"c1", "c2", "y"}
    assert all(v.shape == (8,) or v.shape == (4,) for v in r.bias_shift.values())

    def mean_err(path):
        return np.abs((_run(path, x) - ref).mean(axis=(0, 2, 3))).max()

    assert mean_err(fixed) < mean_err(plain)
    assert _sqnr(ref, _run(fixed, x)) > 20


def test_bias_correction_needs_data_it_can_read_twice(gate):
    model, cal = gate
    with pytest.raises(ValueError, match="read the data"):
        calibrate_model(model, iter(cal), preprocess=False, bias_correction=True)


def test_sensitivity_and_keep_float_worst(gate, tmp_path):
    model, cal = gate
    r = calibrate_model(model, cal, qdq_path=tmp_path / "q.onnx", preprocess=False,
                        sensitivity=True)
    layers = [k for k, _, _ in r.sensitivity]
    assert sorted(layers) == ["c1", "c2", "y"]
    values = [v for _, _, v in r.sensitivity]
    assert values == sorted(values)                         # worst first
    worst = layers[0]
    r2 = calibrate_model(model, cal, qdq_path=tmp_path / "k.onnx", preprocess=False,
                         keep_float_worst=1)
    assert worst not in [model_out for model_out in r2.placement.activations]
    m = onnx.load(str(tmp_path / "k.onnx"))
    node = next(n for n in m.graph.node if n.output[0] == worst)
    assert not node.input[0].endswith("_DequantizeLinear_Output")
    x = np.concatenate(cal)
    ref = _run(model, x)
    assert _sqnr(ref, _run(tmp_path / "k.onnx", x)) >= _sqnr(ref, _run(tmp_path / "q.onnx", x)) - 0.5


def test_report(gate, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    model, cal = gate
    d = tmp_path / "data"
    d.mkdir()
    for i, x in enumerate(cal):
        np.save(d / f"{i}.npy", x)
    from qatcore.cli import main
    rc = main(["calibrate-model", str(model), "--data", str(d), "--qdq", str(tmp_path / "q.onnx"),
               "--report", str(tmp_path / "rep"), "--method", "entropy", "--bins", "256",
               "--no-preprocess"])
    assert rc == 0
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "Per-layer sensitivity" in page and "sensitivity.png" in page
    assert "Histograms and chosen ranges" in page and "Left float" in page
    assert "model output" in page                     # why the output stayed float
    pngs = list((tmp_path / "rep").glob("h*.png"))
    assert len(pngs) >= 3
    assert "report:" in capsys.readouterr().err
