"""What a new user trips on (issue 14): per-batch dumps merged by name, the deployable
integer form of a calibration (checked with onnxruntime), the example files, observer
names in any case, a command's own usage on a typo'd flag, inspect's values, and
forward_int8's output zero point."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import qatcore as q
from qatcore import cli
from qatcore.cli.examples import write_examples

OBSERVERS = ["min_max", "percentile", "moving_average", "mean_std"]


def _calibrate_json(capsys, *args):
    rc = cli.main(["calibrate", *map(str, args), "--json", "-", "--quiet"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(out.out)


@pytest.fixture
def batches(tmp_path):
    """Four per-batch dumps of two tensors, batch sizes differing (the last is short)."""
    rng = np.random.default_rng(7)
    data = {"relu1": [], "logits": []}
    for b, n in enumerate([16, 16, 16, 5]):
        relu = np.maximum(rng.standard_normal((n, 33), dtype=np.float32) * (1 + b), 0)
        logits = rng.standard_normal((n, 10)).astype(np.float16) * (b - 1.5)
        np.savez(tmp_path / f"batch_{b:03d}.npz", relu1=relu, logits=logits)
        data["relu1"].append(relu)
        data["logits"].append(logits)
    return tmp_path, data


@pytest.mark.parametrize("observer", OBSERVERS)
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_merge_by_name_equals_api_multibatch(batches, capsys, observer, symmetric):
    folder, data = batches
    doc = _calibrate_json(capsys, folder, "--merge-by-name", "--observer", observer,
                          "--symmetric" if symmetric else "--asymmetric")
    assert sorted(doc["tensors"]) == ["logits", "relu1"] and doc["merge_by_name"] is True
    config = q.FakeQuantConfig(symmetric=symmetric, observer=observer)
    for name, arrays in data.items():
        obs = q.QuantObserver(observer)
        for a in arrays:                     # one observe per file, in file order
            obs.observe(a)
        entry = doc["tensors"][name]
        lo, hi = obs.range()
        scale, zp = obs.compute_qparams(config)
        assert np.float32(entry["range"]).view(np.uint32).tolist() == \
            np.float32([lo, hi]).view(np.uint32).tolist()
        assert np.float32(entry["scale"]).view(np.uint32) == np.float32(scale).view(np.uint32)
        assert np.float32(entry["zero_point"]).view(np.uint32) == np.float32(zp).view(np.uint32)
        assert entry["batches"] == 4 and entry["count"] == sum(a.size for a in arrays)
        assert entry["files"] == [str(folder / f"batch_{b:03d}.npz") for b in range(4)]
        assert entry["shape"] is None        # the last batch is shorter
    # Without the option every file's tensor is reported on its own.
    doc = _calibrate_json(capsys, folder, "--observer", observer)
    assert len(doc["tensors"]) == 8 and doc["merge_by_name"] is False


def test_merge_by_name_batch_axis_and_npy(tmp_path, capsys):
    """--batch-axis inside each file, and .npy files merged by file name."""
    rng = np.random.default_rng(8)
    parts = [rng.standard_normal((3, 20), dtype=np.float32) * (i + 1) for i in range(2)]
    for i, p in enumerate(parts):
        os.makedirs(tmp_path / f"b{i}")
        np.save(tmp_path / f"b{i}" / "act.npy", p)
    doc = _calibrate_json(capsys, tmp_path / "b0", tmp_path / "b1", "--merge-by-name",
                          "--batch-axis", "0", "--observer", "moving_average")
    obs = q.QuantObserver("moving_average")
    for p in parts:
        for row in p:
            obs.observe(row)
    entry = doc["tensors"]["act"]
    assert entry["batches"] == 6 and entry["shape"] == [3, 20]
    assert entry["range"] == [float(np.float32(v)) for v in obs.range()]


def test_merge_by_name_bad_member_drops_the_tensor(batches, capsys):
    folder, _ = batches
    bad = np.ones((4, 33), np.float32)
    bad[2, 5] = np.inf
    np.savez(folder / "batch_004.npz", relu1=bad, logits=np.ones((4, 10), np.float16))
    rc = cli.main(["calibrate", str(folder), "--merge-by-name", "--keep-going", "--json", "-"])
    out = capsys.readouterr()
    assert rc == 2 and "batch_004.npz:relu1: non-finite value inf" in out.err
    doc = json.loads(out.out)
    assert list(doc["tensors"]) == ["logits"] and doc["tensors"]["logits"]["batches"] == 5


# --- deployable integer form -------------------------------------------------------------
def _deploy_expected(lo, hi, config):
    """Integer form from the stated convention, computed independently in float64."""
    bits = config.bits
    if config.symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = max(abs(lo), abs(hi)) / qmax
        return -qmax, qmax, 0, scale
    shift, top = 2 ** (bits - 1), 2 ** bits - 1
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / top
    zp = int(np.floor(-lo / scale + 0.5))
    return -shift, top - shift, zp - shift, scale


@pytest.mark.parametrize("bits", [8, 4, 12])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_deploy_fields(tmp_path, capsys, bits, symmetric):
    rng = np.random.default_rng(9)
    np.save(tmp_path / "mixed.npy", rng.standard_normal(1000, dtype=np.float32) * 2 + 0.7)
    np.save(tmp_path / "positive.npy", rng.uniform(1.0, 3.0, 1000).astype(np.float32))
    np.save(tmp_path / "negative.npy", rng.uniform(-3.0, -0.5, 1000).astype(np.float32))
    doc = _calibrate_json(capsys, tmp_path, "--bits", bits,
                          "--symmetric" if symmetric else "--asymmetric")
    assert "int8 [-128, 127]" in doc["deploy_convention"]
    config = q.FakeQuantConfig(bits=bits, symmetric=symmetric)
    for name, entry in doc["tensors"].items():
        assert entry["code_dtype"] == ("int8" if bits <= 8 else "int16")
        qmin, qmax, zp, scale = _deploy_expected(*entry["range"], config)
        assert (entry["qmin"], entry["qmax"]) == (qmin, qmax)
        assert isinstance(entry["zero_point_int"], int) and qmin <= entry["zero_point_int"] <= qmax
        assert abs(entry["zero_point_int"] - zp) <= 1, name       # float32 vs float64 ties
        assert entry["deploy_scale"] == pytest.approx(scale, rel=1e-6)
        if symmetric or name.endswith("mixed.npy"):               # the range includes 0
            assert entry["deploy_scale"] == entry["scale"]
        # Rust's zero point, rounded and shifted, is what QuantizedLinear.from_qat uses.
        if not symmetric and bits == 8 and name.endswith("mixed.npy"):
            fq = q.FakeQuantize(config)
            fq.fake_quantize(np.load(tmp_path / "mixed.npy"))
            fq.disable_calibration()
            w = q.FakeQuantize()
            w.fake_quantize(np.ones((1, 2), np.float32))
            w.disable_calibration()
            layer = q.QuantizedLinear.from_qat(np.ones((1, 2), np.float32), None, w, fq)
            assert layer.input_zero_point == entry["zero_point_int"]


def test_deploy_fields_feed_onnxruntime(tmp_path, capsys):
    """QuantizeLinear/DequantizeLinear in onnxruntime take the JSON's integer form as it is:
    codes as the convention says, the dequantized values within scale/2 of the input."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    rng = np.random.default_rng(10)
    tensors = {"mixed": rng.standard_normal(4096, dtype=np.float32) * 2 + 0.7,
               "positive": rng.uniform(1.0, 3.0, 4096).astype(np.float32)}
    for name, x in tensors.items():
        np.save(tmp_path / f"{name}.npy", x)
    doc = _calibrate_json(capsys, tmp_path, "--asymmetric")
    for name, x in tensors.items():
        entry = doc["tensors"][str(tmp_path / f"{name}.npy")]
        assert entry["code_dtype"] == "int8"
        scale = np.float32(entry["deploy_scale"])
        zp = np.int8(entry["zero_point_int"])
        graph = helper.make_graph(
            [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], "qdq",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [x.size])],
            [helper.make_tensor_value_info("q", TensorProto.INT8, [x.size]),
             helper.make_tensor_value_info("y", TensorProto.FLOAT, [x.size])],
            [helper.make_tensor("s", TensorProto.FLOAT, [], [scale]),
             helper.make_tensor("z", TensorProto.INT8, [], [int(zp)])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        codes, y = sess.run(None, {"x": x})
        expected = np.clip(np.rint(x / scale) + np.float32(zp), entry["qmin"], entry["qmax"])
        np.testing.assert_array_equal(codes, expected.astype(np.int8))
        assert codes.min() >= -128 and codes.max() == 127          # the range is used
        lo, hi = (np.float32(v) for v in entry["range"])
        assert np.abs(y - x).max() <= scale / 2 * (1 + 1e-5), name
        assert lo - scale / 2 <= y.min() and y.max() <= hi + scale / 2


# --- examples, observer names, usage, inspect ---------------------------------------------
def test_examples_command(tmp_path, capsys):
    rc = cli.main(["examples", str(tmp_path / "ex")])
    out = capsys.readouterr()
    assert rc == 0 and "wrote 11 example files" in out.out
    first = {p: (tmp_path / "ex" / p).read_bytes() for p in write_examples(str(tmp_path / "again"))}
    for rel, content in first.items():                         # deterministic
        assert (tmp_path / "ex" / rel).read_bytes() == content, rel
    assert not (tmp_path / "ex" / "missing.npy").exists()
    (tmp_path / "file").write_text("x")
    assert cli.main(["examples", str(tmp_path / "file")]) == 2
    assert "not a directory" in capsys.readouterr().err


@pytest.mark.parametrize("spelling,method", [("PERCENTILE", "percentile"),
                                              ("mean-std", "mean_std"),
                                              ("Moving-Average", "moving_average"),
                                              ("min_max", "min_max")])
def test_observer_names_any_case(tmp_path, capsys, spelling, method):
    np.save(tmp_path / "a.npy", np.linspace(-1, 2, 3000, dtype=np.float32))
    doc = _calibrate_json(capsys, tmp_path / "a.npy", "--observer", spelling)
    assert doc["observer"] == method


def test_unknown_observer_is_a_usage_error(tmp_path, capsys):
    assert cli.main(["calibrate", str(tmp_path), "--observer", "median"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: qatcore calibrate") and "invalid choice: 'median'" in err


@pytest.mark.parametrize("command,argv", [
    ("calibrate", ["calibrate", "a.npy", "--observr", "percentile"]),
    ("inspect", ["inspect", "a.npy", "--binz", "3"])])
def test_typo_flag_prints_the_commands_usage(capsys, command, argv):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: qatcore {command} ")
    assert f"qatcore {command}: error: unrecognized arguments: {argv[2]}" in err


def test_inspect_shows_values_not_types(tmp_path, capsys):
    x = q.FakeQuantize(q.FakeQuantConfig(symmetric=False))
    x.fake_quantize(np.linspace(-1, 3, 100, dtype=np.float32))
    x.disable_calibration()
    w = q.FakeQuantize()
    w.fake_quantize(np.ones((2, 3), np.float32))
    w.disable_calibration()
    layer = q.QuantizedLinear.from_qat(np.ones((2, 3), np.float32), None, w, x, w)
    layer.save(tmp_path / "l.npz")
    assert cli.main(["inspect", str(tmp_path / "l.npz")]) == 0
    out = capsys.readouterr().out
    assert "float32 ()" not in out and "input_zero_point_float" not in out
    assert f"input_zero_point  {layer.input_zero_point}  (float {str(np.float32(x.zero_point))} " in out
    assert "(of the int32 accumulators: weight_scale · input_scale)" in out
    assert "forward_int8's default output_scale" in out


@pytest.mark.parametrize("zp", [300, 128, -129, 1 << 20])
def test_forward_int8_rejects_output_zero_point_outside_int8(zp):
    layer = q.QuantizedLinear.from_float([[1.0, -0.5]], None, 2, 1)
    layer.set_input_scale(0.1)
    x = np.array([[20, 10]], dtype=np.int8)
    with pytest.raises(ValueError, match=r"output_zero_point must be in \[-128, 127\]"):
        layer.forward_int8(x, 0.05, zp)
    assert layer.forward_int8(x, 0.05, 127).tolist() == [[127]]
    assert layer.forward_int8(x, 0.05, -128).tolist() == [[-98]]
