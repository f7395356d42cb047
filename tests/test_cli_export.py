"""``qatcore export`` and ``qatcore inspect`` of a saved QuantizedSequential: outputs,
one-line errors with exit status 2, nothing half-written."""

import importlib
import os

import numpy as np
import pytest

from qatcore import QuantizedLinear, QuantizedSequential
from qatcore.cli import main


def _have(module):
    """Whether a qatcore module exists (an ImportError inside it is not hidden)."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return False
        raise
    return True


@pytest.fixture
def saved(tmp_path):
    rng = np.random.default_rng(4)
    l1 = QuantizedLinear.from_float(rng.standard_normal((6, 5)), rng.standard_normal(6), 5, 6,
                                    per_channel=True)
    l1.set_input_scale(0.1, zero_point=-3)
    l2 = QuantizedLinear.from_float(rng.standard_normal((2, 6)), None, 6, 2)
    l2.set_input_scale(0.2)
    model = QuantizedSequential([l1, l2], ["relu6", None], 0.5, 4)
    path = tmp_path / "mlp.npz"
    model.save(path)
    return model, path


def _run(capsys, *argv):
    rc = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return rc, out, err


def _files(directory):
    return sorted(os.listdir(directory))


def test_inspect_shows_the_container(saved, capsys):
    model, path = saved
    rc, out, err = _run(capsys, "inspect", path)
    assert rc == 0 and err == ""
    assert out.startswith(f"QuantizedSequential  {path}")
    assert "2 layers, 5 -> 2" in out and "relu6" in out and "per-channel" in out
    assert "out zp" in out and "0..127" not in out        # relu6 clamp at the next zp
    lo, hi = model.activation_range(0)
    assert f"{lo}..{hi}" in out


def test_inspect_refuses_a_broken_container(saved, capsys, tmp_path):
    model, _ = saved
    state = model.state_dict()
    state["activations"] = np.array([7, 0], np.int8)
    bad = tmp_path / "bad.npz"
    with open(bad, "wb") as f:
        np.savez(f, **state)
    rc, out, err = _run(capsys, "inspect", bad)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and "activations" in err


def test_export_tflite_default_path(saved, capsys, tmp_path):
    pytest.importorskip("flatbuffers")
    pytest.importorskip("tflite_micro")
    from qatcore.export.tflite import tflite_bytes

    model, path = saved
    rc, out, err = _run(capsys, "export", path, "--to", "tflite")
    assert rc == 0 and err == ""
    target = tmp_path / "mlp.tflite"
    assert target.read_bytes() == tflite_bytes(model)
    assert f"{target} ({os.path.getsize(target)} B)" in out
    rc, out, err = _run(capsys, "export", path, "--to", "tflite", "--float-io", "--out",
                        tmp_path / "f.tflite", "-q")
    assert rc == 0 and out == "" and err == ""
    assert (tmp_path / "f.tflite").read_bytes() == tflite_bytes(model, float_io=True)
    assert _files(tmp_path) == ["f.tflite", "mlp.npz", "mlp.tflite"]


BAD = {
    "missing-model": (["export", "{d}/nope.npz", "--to", "tflite"], "no such file"),
    "not-a-container": (["export", "{d}/linear.npz", "--to", "tflite"],
                        "not a valid QuantizedSequential"),
    "float-io-c": (["export", "{d}/mlp.npz", "--to", "c", "--float-io"], "--float-io"),
    "name-tflite": (["export", "{d}/mlp.npz", "--to", "tflite", "--name", "m"], "--name"),
    "bad-name": (["export", "{d}/mlp.npz", "--to", "c", "--name", "1-x"], "C identifier"),
    "out-is-dir": (["export", "{d}/mlp.npz", "--to", "tflite", "--out", "{d}"],
                   "is a directory"),
    "out-dir-missing": (["export", "{d}/mlp.npz", "--to", "tflite", "--out",
                         "{d}/no/x.tflite"], "does not exist"),
    "overwrite-model": (["export", "{d}/mlp.npz", "--to", "onnx", "--out", "{d}/mlp.npz"],
                        "overwrite MODEL"),
    "c-out-is-file": (["export", "{d}/mlp.npz", "--to", "c", "--out", "{d}/mlp.npz"],
                      "not a directory"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_export_errors_are_one_line_and_write_nothing(saved, capsys, tmp_path, case):
    argv, match = BAD[case]
    QuantizedLinear.from_float([[1.0]], None, 1, 1).save(tmp_path / "linear.npz")
    before = _files(tmp_path)
    rc, out, err = _run(capsys, *[a.format(d=tmp_path) for a in argv])
    assert rc == 2 and out == ""
    assert err.startswith("qatcore: error: export:") and err.count("\n") == 1
    assert match in err
    assert _files(tmp_path) == before


def test_export_usage_errors(capsys):
    rc, out, err = _run(capsys, "export", "m.npz", "--to", "keras")
    assert rc == 2 and "invalid choice" in err
    rc, out, err = _run(capsys, "export", "--help")
    assert rc == 0 and "--to {tflite,c,onnx}" in out and "examples:" in out


def test_export_c(saved, capsys, tmp_path):
    if not _have("qatcore.export.c"):
        pytest.skip("qatcore.export.c is not in this tree yet (issue 8, C export)")
    _, path = saved
    out_dir = tmp_path / "fw"
    rc, out, err = _run(capsys, "export", path, "--to", "c", "--out", out_dir, "--name", "mlp")
    assert rc == 0 and err == ""
    files = _files(out_dir)
    assert "mlp.h" in files and "mlp.c" in files
    assert not any(f.startswith(".qatcore-") for f in files)


def test_export_c_missing_module_is_one_line(saved, capsys, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "qatcore.export.c", None)
    _, path = saved
    rc, out, err = _run(capsys, "export", path, "--to", "c", "--out", tmp_path / "fw")
    assert rc == 2 and err.count("\n") == 1
    assert not (tmp_path / "fw").exists()


def test_export_onnx(saved, capsys, tmp_path):
    if not _have("qatcore.export.onnx"):
        pytest.skip("qatcore.export.onnx is not in this tree yet (issue 8, ONNX export)")
    pytest.importorskip("onnx")
    _, path = saved
    rc, out, err = _run(capsys, "export", path, "--to", "onnx")
    assert rc == 0 and err == ""
    assert (tmp_path / "mlp.onnx").stat().st_size > 0
    assert not any(f.startswith(".qatcore-") for f in _files(tmp_path))
