"""What a new user trips on, round 2 (issue 24, items 3-8): one calibration JSON for both
commands, Ctrl-C under Dask, the integer model and a leading Flatten, errors that name
the user's path, hostile inputs, types and docstrings."""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

import qatcore as q
from qatcore import QuantizedLinear, QuantizedSequential, nn
from qatcore.cli import main

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "tests" / "data" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"


def run_cli(*args):
    """``main(args)`` in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        warnings.simplefilter("ignore")
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def _one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("qatcore: error:") and \
        "Traceback" not in err, err
    return lines[0]


# --- item 3: one calibration JSON ------------------------------------------------------
@pytest.fixture(scope="module")
def cal_dir(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    d = tmp_path_factory.mktemp("cal")
    for i in range(2):
        x = np.random.default_rng(i).uniform(-1, 1, (1, 3, 48, 192)).astype(np.float32)
        np.save(d / f"{i}.npy", x)
    return d


@pytest.fixture(scope="module")
def calibrate_doc(tmp_path_factory):
    d = tmp_path_factory.mktemp("acts")
    np.save(d / "a.npy", np.random.default_rng(5).standard_normal((8, 16), dtype=np.float32))
    rc, out, err = run_cli("calibrate", d / "a.npy", "--json", "-", "--asymmetric")
    assert rc == 0, err
    return json.loads(out)


def test_calibrate_model_json_has_calibrate_schema_and_inspect_reads_it(
        cal_dir, calibrate_doc, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli("calibrate-model", MODEL, "--data", cal_dir, "--json", "r.json")
    assert rc == 0, err
    assert out == ""                              # people's text goes to stderr
    assert "calibrated" in err and "r.json" in err
    doc = json.loads(Path("r.json").read_text())
    assert doc["format"] == calibrate_doc["format"] == "qatcore-calibration/1"
    assert doc["command"] == "calibrate-model" and calibrate_doc["command"] == "calibrate"
    assert set(calibrate_doc) <= set(doc)         # calibrate-model adds model, batches, samples
    entry = doc["tensors"]["x"]                   # the model input
    assert set(entry) == set(next(iter(calibrate_doc["tensors"].values())))
    lo, hi = entry["range"]
    assert -1 <= lo < hi <= 1 and entry["batches"] == 2
    obs = q.QuantObserver("min_max")
    obs.observe(np.float32([lo, hi]))
    scale, zp = obs.compute_qparams(q.FakeQuantConfig(symmetric=False))
    assert (entry["scale"], entry["zero_point"]) == (float(np.float32(scale)),
                                                     float(np.float32(zp)))
    assert entry["code_dtype"] == "int8" and (entry["qmin"], entry["qmax"]) == (-128, 127)
    rc, out, err = run_cli("inspect", "r.json")
    assert rc == 0, err
    assert err == "" and "\nx " in out and "2 batches" in out


@pytest.mark.parametrize("how", ["dash", "default"])
def test_calibrate_model_stdout_is_json_only(cal_dir, tmp_path, monkeypatch, how):
    monkeypatch.chdir(tmp_path)
    extra = ["--json", "-"] if how == "dash" else []
    rc, out, err = run_cli("calibrate-model", MODEL, "--data", cal_dir, *extra)
    assert rc == 0, err
    doc = json.loads(out)                         # the whole of stdout is the document
    assert doc["format"] == "qatcore-calibration/1" and "x" in doc["tensors"]
    assert os.listdir(tmp_path) == []             # no file named "-"
    assert "calibrated" in err


def test_calibrate_dash_json_and_text_on_stderr(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(12, dtype=np.float32))
    rc, out, err = run_cli("calibrate", tmp_path / "a.npy", "--json", "-")
    assert rc == 0 and json.loads(out)["tensors"] and "calibrated 1 tensor" in err


@pytest.mark.parametrize("observer,options", [
    ("entropy", {}), ("entropy_signed", {}), ("mse", {}),
    ("hist_percentile", {"percentile": 99.9, "symmetric": False}),
    ("hist_percentile", {"percentile": 99.0, "symmetric": True})])
@pytest.mark.parametrize("axis", [None, 0])
def test_calibrate_histogram_observers_equal_api(tmp_path, observer, options, axis):
    x = np.random.default_rng(9).standard_t(3, (32, 500)).astype(np.float32)
    np.save(tmp_path / "t.npy", x)
    argv = ["calibrate", tmp_path / "t.npy", "--observer", observer.upper(), "--json", "-",
            "--bins", "512", "-q"]
    if "percentile" in options:
        argv += ["--percentile", options["percentile"]]
    argv.append("--symmetric" if options.get("symmetric", True) else "--asymmetric")
    if axis is not None:
        argv += ["--batch-axis", axis]
    rc, out, err = run_cli(*argv)
    assert rc == 0, err
    doc = json.loads(out)
    entry = doc["tensors"][str(tmp_path / "t.npy")]
    method = "percentile" if observer == "hist_percentile" else observer
    obs = q.HistogramObserver(method, bins=512, **options)
    obs.observe(x)                                # batching does not change a histogram
    config = q.FakeQuantConfig(symmetric=options.get("symmetric", True))
    assert entry["range"] == [float(v) for v in obs.range()]
    assert (entry["scale"], entry["zero_point"]) == tuple(
        float(np.float32(v)) for v in obs.compute_qparams(config))
    assert doc["observer"] == observer and doc["options"]["bins"] == 512
    path = tmp_path / "h.json"
    path.write_text(out)
    rc, out, err = run_cli("inspect", path)
    assert rc == 0 and f"observer {observer}" in out, err


def test_calibrate_histogram_options_checked(tmp_path):
    np.save(tmp_path / "t.npy", np.arange(12, dtype=np.float32))
    rc, out, err = run_cli("calibrate", tmp_path / "t.npy", "--percentile", "99")
    assert rc == 2 and "histogram" in _one_error_line(err)
    rc, out, err = run_cli("calibrate", tmp_path / "t.npy", "--observer", "mse", "--bins", "100")
    assert rc == 2 and "bins" in _one_error_line(err)


# --- item 4: Ctrl-C under Dask ------------------------------------------------------------
_SLOW_RUN = """
import sys, time

def slow_block(b):                 # every chunk's task sleeps on the worker
    time.sleep(30)
    return b

if __name__ == "__main__":
    import qatcore.dask as qd
    real = qd.calibrate_graph
    qd.calibrate_graph = lambda x, *a, **k: real(x.map_blocks(slow_block, dtype=x.dtype), *a, **k)
    from qatcore.cli import main
    sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("after", [2.5, 9.0], ids=["cluster-starting", "tasks-running"])
def test_ctrl_c_under_dask_is_one_line(tmp_path, after):
    """Ctrl-C at a terminal signals the whole foreground process group (the command and
    its worker processes): one line from the command, exit 130, no worker traceback."""
    pytest.importorskip("distributed")
    import signal
    import subprocess
    import sys
    import time

    np.save(tmp_path / "a.npy", np.zeros((1 << 16,), np.float32))
    (tmp_path / "run.py").write_text(_SLOW_RUN)
    import qatcore

    here = os.path.dirname(os.path.dirname(qatcore.__file__))   # the qatcore under test
    env = dict(os.environ, PYTHONPATH=here + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "run.py", "calibrate", "a.npy", "--dask-workers",
                             "2", "-q"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        time.sleep(after)
        os.killpg(proc.pid, signal.SIGINT)      # the terminal's Ctrl-C
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, err
    assert err.splitlines() == ["qatcore: error: interrupted"], err
    assert out == ""


# --- item 5: a leading Flatten ------------------------------------------------------------
def test_convert_integer_keeps_leading_flatten():
    torch = pytest.importorskip("torch")
    import qatcore.torch as qt

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 10))
    qat = qt.prepare_qat(model, quantize_output=True)
    x = torch.rand(16, 1, 8, 8)
    with torch.no_grad():
        qat(x)
    qt.freeze(qat)
    int_model = qt.convert(qat, integer=True)
    assert int_model.flatten_input
    flat = x.reshape(16, 64).numpy()
    codes = int_model.quantize_input(x.numpy())
    np.testing.assert_array_equal(codes, int_model.quantize_input(flat))
    y = int_model.forward_int8(codes)
    np.testing.assert_array_equal(int_model.forward_int8(codes.reshape(16, 1, 8, 8)), y)
    np.testing.assert_array_equal(int_model.forward(x.numpy()), int_model.forward(flat))
    with torch.no_grad():
        ref = qat(x).numpy()
    assert np.abs(int_model.forward(x.numpy()) - ref).max() <= 2 * int_model.output_scale
    with pytest.raises(ValueError, match="64 values per sample"):
        int_model.forward(np.zeros((16, 2, 8, 8), np.float32))


def test_flatten_input_saved_and_checked(tmp_path):
    layer = QuantizedLinear.from_float(np.eye(4, dtype=np.float32), None, 4, 4)
    model = QuantizedSequential([layer], None, 0.1, flatten_input=True)
    model.save(tmp_path / "m.npz")
    back = QuantizedSequential.load(tmp_path / "m.npz")
    assert back.flatten_input
    x = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    np.testing.assert_array_equal(back.forward(x), model.forward(x.reshape(2, 4)))
    plain = QuantizedSequential([layer], None, 0.1)
    with pytest.raises(ValueError, match="expected"):
        plain.forward(x)                          # no flattening unless asked for
    with pytest.raises(TypeError, match="flatten_input"):
        QuantizedSequential([layer], None, 0.1, flatten_input="yes")


# --- item 6: errors that point to the user's path ----------------------------------------
def _model():
    layer = QuantizedLinear.from_float(np.eye(4, dtype=np.float32), None, 4, 4)
    return layer, QuantizedSequential([layer], None, 0.1)


@pytest.mark.parametrize("what", ["linear", "sequential", "tflite", "onnx", "c"])
@pytest.mark.parametrize("where", ["missing-folder", "directory"])
def test_write_errors_name_the_users_path(tmp_path, what, where):
    """A missing folder or a directory where the file should go: the error names the
    user's path, never qatcore's temporary file, and nothing is left behind."""
    if what == "tflite":
        pytest.importorskip("flatbuffers")
    if what == "onnx":
        pytest.importorskip("onnx")
    layer, model = _model()
    if what == "c":                               # to_c(directory, name) writes name.h/.c
        folder = tmp_path / "nope" if where == "missing-folder" else tmp_path / "adir"
        target = folder / "m.h"
        if where == "directory":
            target.mkdir(parents=True)
        save = lambda p: model.to_c(folder, "m")  # noqa: E731
    else:
        target = tmp_path / "nope" / "out.bin" if where == "missing-folder" else tmp_path / "adir"
        if where == "directory":
            target.mkdir()
        save = {"linear": layer.save, "sequential": model.save, "tflite": model.to_tflite,
                "onnx": model.to_onnx}[what]
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises((OSError, ValueError)) as info:
        save(target)
    text = str(info.value)
    assert ".qatcore-" not in text and ".tmp" not in text, text
    assert str(target) in text or str(target.parent) in text, text
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_load_names_the_class_that_saved_the_file(tmp_path):
    layer, model = _model()
    model.save(tmp_path / "seq.npz")
    layer.save(tmp_path / "lin.npz")
    with pytest.raises(ValueError, match="saved by QuantizedSequential.save.*QuantizedSequential.load"):
        QuantizedLinear.load(tmp_path / "seq.npz")
    with pytest.raises(ValueError, match="saved by QuantizedLinear.save.*QuantizedLinear.load"):
        QuantizedSequential.load(tmp_path / "lin.npz")


def test_from_qat_on_a_torch_model_points_to_torch_convert():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"qatcore\.torch\.convert"):
        QuantizedSequential.from_qat(torch.nn.Sequential(torch.nn.Linear(2, 2)))


@pytest.mark.parametrize("content", [b"not an onnx model\n", b""])
def test_calibrate_model_on_a_non_onnx_file(tmp_path, content):
    pytest.importorskip("onnxruntime")
    bad = tmp_path / "model.onnx"
    bad.write_bytes(content)
    data = tmp_path / "d.npy"
    np.save(data, np.zeros((1, 4), np.float32))
    rc, out, err = run_cli("calibrate-model", bad, "--data", data, "--json", tmp_path / "r.json")
    line = _one_error_line(err)
    assert rc == 2 and str(bad) in line and "not an ONNX model" in line
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("args", [[], ["--batch-axis", "1"], ["--observer", "entropy"]])
def test_empty_npy_is_an_error(tmp_path, args):
    np.save(tmp_path / "e.npy", np.zeros((0, 4), np.float32))
    rc, out, err = run_cli("calibrate", tmp_path / "e.npy", "--json", tmp_path / "r.json", *args)
    line = _one_error_line(err)
    assert rc == 2 and "e.npy: no values" in line and "(0, 4)" in line
    assert not (tmp_path / "r.json").exists()


# --- item 7: hostile inputs ---------------------------------------------------------------
def test_from_qat_refuses_a_saturated_input_scale():
    w = np.array([[500.0, -1000.0]], np.float32)
    wfq = q.FakeQuantize()
    wfq.fake_quantize(w)
    wfq.disable_calibration()
    xfq = q.FakeQuantize(q.FakeQuantConfig(learnable=True))
    xfq.fake_quantize(np.float32([-1.0, 1.0]))
    xfq.disable_calibration()
    xfq.parameters()[0][...] = np.finfo(np.float32).max      # a diverged LSQ scale
    with pytest.raises(ValueError, match="input_fake_quant.scale"):
        QuantizedLinear.from_qat(w, np.float32([0.1]), wfq, xfq)
    layer = QuantizedLinear.from_float(w, None, 2, 1)
    with pytest.raises(ValueError, match="scale"):
        layer.set_input_scale(float(np.finfo(np.float32).max))
    assert layer.input_scale == 1.0                           # unchanged


@pytest.mark.parametrize("make", [lambda: nn.ActivationFakeQuant("int8"),
                                  lambda: nn.QATLinear(4, 2, weight_fake_quant="x"),
                                  lambda: nn.QATLinear(4, 2, weight_fake_quant=8)])
def test_nn_quantizer_arguments_are_typed(make):
    with pytest.raises(TypeError, match="fake_quant must be a FakeQuantize"):
        make()


@pytest.mark.parametrize("errors", [3, "boom", {"a": 1}, None])
def test_inspect_refuses_a_bad_errors_field(calibrate_doc, tmp_path, errors):
    doc = dict(calibrate_doc, errors=errors)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(doc))
    rc, out, err = run_cli("inspect", path)
    assert rc == 2 and "errors" in _one_error_line(err) and out == ""


@pytest.mark.parametrize("observer", ["min_max", "percentile", "mean_std"])
@pytest.mark.parametrize("axis", [[], ["--batch-axis", "1"]])
def test_npy_truncated_while_read_is_an_error(tmp_path, monkeypatch, observer, axis):
    """The file is cut right after calibrate read its data (another process): exit 2."""
    from qatcore.cli import readers

    path = tmp_path / "a.npy"
    np.save(path, np.ones((256, 256), np.float32))
    real = readers._readinto_exact

    def read_then_cut(f, pos, view, ref):
        real(f, pos, view, ref)
        os.truncate(path, 1000)

    monkeypatch.setattr(readers, "_readinto_exact", read_then_cut)
    rc, out, err = run_cli("calibrate", path, "--observer", observer, "--json",
                           tmp_path / "r.json", *axis)
    line = _one_error_line(err)
    assert rc == 2 and "a.npy" in line and "truncated" in line
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("make", [lambda: q.QuantObserver("min_max"),
                                  lambda: q.QuantObserver("mean_std"),
                                  lambda: q.HistogramObserver("mse")])
def test_observe_float64_beyond_float32_says_so(make):
    obs = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"1e\+39 .*finite but outside float32"):
            obs.observe(np.array([1.0, 1e39]))
        with pytest.raises(ValueError, match=r"1e\+39 .*finite but outside float32"):
            obs.observe([[1.0, 2.0], [1e39, 0.0]])
        with pytest.raises(ValueError, match=r"non-finite value \(inf\)"):
            obs.observe(np.array([1.0, np.inf]))
    assert obs.count == 0


# --- item 8: types and docs ---------------------------------------------------------------
#: Public callables allowed without a docstring: none.
UNDOCUMENTED_ELSEWHERE: set = set()


def _public_callables():
    import inspect

    import qatcore.dask

    modules = [(q, list(q.__all__)), (nn, [n for n in dir(nn) if not n.startswith("_")]),
               (qatcore.dask, list(qatcore.dask.__all__))]
    try:
        import qatcore.torch as qt
        modules.append((qt, list(qt.__all__)))
    except ImportError:
        pass
    seen = set()
    for mod, names in modules:
        for n in names:
            obj = getattr(mod, n)
            if inspect.ismodule(obj) or not str(getattr(obj, "__module__", "")).startswith("qatcore"):
                continue
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if inspect.isclass(obj):
                yield f"{mod.__name__}.{n}", obj
                for an, av in vars(obj).items():
                    if an.startswith("_") and an != "__call__":
                        continue
                    f = av.fget if isinstance(av, property) else \
                        av.__func__ if isinstance(av, (classmethod, staticmethod)) else av
                    if callable(f):
                        yield f"{mod.__name__}.{n}.{an}", f
            elif callable(obj):
                yield f"{mod.__name__}.{n}", obj


def test_every_public_callable_has_a_docstring():
    missing = {name for name, obj in _public_callables()
               if not (getattr(obj, "__doc__", None) or "").strip()}
    assert missing == UNDOCUMENTED_ELSEWHERE, sorted(missing ^ UNDOCUMENTED_ELSEWHERE)


def test_observer_constructors_are_typed_for_mypy_strict(tmp_path):
    pytest.importorskip("mypy")
    import subprocess
    import sys

    user = tmp_path / "user.py"
    user.write_text("import numpy as np\nimport qatcore as q\n"
                    "h = q.HistogramObserver('mse', bins=256)\n"
                    "h.observe(np.zeros(4, np.float32))\n"
                    "c = q.ChannelObserver('min_max', axis=0)\n"
                    "c.observe(np.zeros((2, 3), np.float32))\n"
                    "r: tuple[float, float] = h.range()\n")
    env = dict(os.environ, MYPYPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
                           "--no-error-summary", "--cache-dir", str(tmp_path / "cache"),
                           str(user)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and "untyped" not in proc.stdout, proc.stdout + proc.stderr


def test_torch_convert_is_annotated_and_freeze_exported():
    pytest.importorskip("torch")
    import typing

    import qatcore.torch as qt

    hints = typing.get_type_hints(qt.convert)
    assert hints["return"] is not typing.Any and "QuantizedSequential" in str(hints["return"])
    assert "freeze" in qt.__all__ and "calibrate" in qt.__all__


def test_torch_compile_of_a_frozen_model_has_no_graph_break():
    torch = pytest.importorskip("torch")
    from torch import _dynamo

    import qatcore.torch as qt

    torch.manual_seed(0)
    qat = qt.prepare_qat(torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(),
                                             torch.nn.Linear(8, 4)))
    x = torch.rand(8, 16)
    with torch.no_grad():
        qat(x)
    qt.freeze(qat)
    _dynamo.reset()
    explained = _dynamo.explain(qat)(x)
    assert explained.graph_break_count == 0, [str(r.reason)[:200] for r in explained.break_reasons]
    # the mirror follows load_state_dict
    fq = qat[0].input_fq
    import copy

    state = copy.deepcopy(qat.state_dict())     # (state_dict's tensors share the buffers)
    fq.enable_calibration()
    assert fq.calibrating
    qat.load_state_dict(state)
    assert not fq.calibrating and not bool(fq.calibrating_flag)


def test_threadpoolctl_is_a_runtime_dependency():
    try:
        import tomllib
    except ImportError:                             # Python < 3.11
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(d.split(">")[0].split("=")[0].strip() == "threadpoolctl"
               for d in project["dependencies"])


def test_readme_channel_observer_comment_is_true():
    """The README's ChannelObserver lines, run: the shape in the comment is the shape."""
    import re

    text = (ROOT / "README.md").read_text()
    make = re.search(r"^(per_ch = q\.ChannelObserver\(.*?\)).*$", text, re.M).group(1)
    line = re.search(r"^per_ch\.observe\(x\[0\]\); per_ch\.ranges\(\)\.shape\s+# (\(\d+, \d+\))",
                     text, re.M)
    x = np.random.default_rng(3).standard_t(4, (8, 64, 1000)).astype(np.float32)
    scope = {"q": q, "x": x}
    exec(make + "\nper_ch.observe(x[0])", scope)
    assert str(scope["per_ch"].ranges().shape) == line.group(1)


def test_litert_default_interpreter_matches_single_rounding(tmp_path):
    """The README's claim: LiteRT's default interpreter (XNNPACK delegate) computes the
    demo model's int8 outputs as forward_int8(rounding="single"), bit for bit."""
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("flatbuffers")
    from ai_edge_litert.interpreter import Interpreter

    from qatcore.demo.mlp import load_digits

    rc, out, err = run_cli("demo", "--save", tmp_path / "mlp.npz")
    assert rc == 0, err
    model = QuantizedSequential.load(tmp_path / "mlp.npz")
    model.to_tflite(tmp_path / "mlp.tflite")
    codes = model.quantize_input(load_digits()[0])
    it = Interpreter(model_path=str(tmp_path / "mlp.tflite"))
    it.allocate_tensors()
    inp, outp = it.get_input_details()[0], it.get_output_details()[0]
    got = []
    for row in codes:
        it.set_tensor(inp["index"], row[None])
        it.invoke()
        got.append(it.get_tensor(outp["index"])[0].copy())
    got = np.array(got)
    assert got.size == 17970
    assert (got != model.forward_int8(codes, rounding="single")).sum() == 0
    assert "0 of the 17 970 output codes" in (ROOT / "README.md").read_text()


def test_inspect_on_the_apis_range_only_json_says_what_to_run(tmp_path):
    doc = {"format": "qatcore-calibration/1", "method": "min_max",
           "tensors": {"x": {"min": -1.0, "max": 1.0}}}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    rc, out, err = run_cli("inspect", path)
    assert rc == 2 and "qatcore calibrate-model" in _one_error_line(err)
