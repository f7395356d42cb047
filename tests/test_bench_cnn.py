"""The CNN benchmark's models and runners (qatcore.bench.cnn_models), the ``cnn`` part of
``qatcore bench`` and ``bench/bench_cnn.py --quick``: structure only, never a timing."""

import os
import subprocess
import sys

import numpy as np
import pytest

from qatcore.bench import cnn_models as CM
from qatcore.bench import suite as _bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
model_mod = pytest.importorskip("qatcore.model")
if not hasattr(model_mod.QuantizedModel, "forward_int8"):
    pytest.skip("the integer engine is not merged", allow_module_level=True)


@pytest.mark.parametrize("name", [*CM.MODELS, *CM.OPS])
def test_models_match_the_issue(name):
    model = CM.build(name)
    shapes = {"ds_cnn": (49, 10, 1), "mobilenet_v1_025": (96, 96, 3), "resnet8": (32, 32, 3)}
    if name in shapes:
        assert model.input_shape == (None, *shapes[name])
        kinds = [type(op).__name__ for op in model.ops]
        assert kinds[-1] == "Softmax"
        if name == "ds_cnn":
            assert kinds.count("DepthwiseConv2D") == 4 and "AveragePool2D" in kinds
            assert model.output_shape == (None, 12)
        if name == "resnet8":
            assert kinds.count("Add") == 3
        if name == "mobilenet_v1_025":
            assert kinds.count("DepthwiseConv2D") == 13
    x = CM.random_codes(model, 2)
    y = model.forward_int8(x)
    assert y.dtype == np.int8 and y.shape == (2, *model.output_shape[1:])


def test_models_are_seeded():
    a, b = CM.build("resnet8", seed=4), CM.build("resnet8", seed=4)
    for oa, ob in zip(a.ops, b.ops):
        if hasattr(oa, "weights_q"):
            np.testing.assert_array_equal(oa.weights_q, ob.weights_q)
    with pytest.raises(KeyError, match="unknown benchmark model"):
        CM.build("vgg")


def test_activations_use_the_range():
    """Plausible scales: hidden tensors neither collapse nor saturate."""
    model = CM.build("ds_cnn")
    outs = [op.output for op in model.ops]
    full = model_mod.QuantizedModel(list(model.tensors.values()),
                                    [CM.build("ds_cnn").ops[i] for i in range(len(outs))],
                                    model.inputs, outs)
    for t, y in zip(outs, full.forward_int8(CM.random_codes(model, 8))):
        assert np.mean(y == 127) < 0.05, t
        assert y.astype(np.int32).std() > 5, t


@pytest.mark.parametrize("impl", CM.RUNTIMES)
def test_runners_agree_with_forward_int8(impl):
    model = CM.build("resnet8", tiny=True)
    x = CM.random_codes(model, 1)
    try:
        fn = CM.runner(impl, model, 1, 1)
    except ImportError as exc:
        pytest.skip(str(exc))
    got = np.asarray(fn(x))
    want = CM.build("resnet8", tiny=True).forward_int8(x)
    assert got.shape == want.shape
    assert np.abs(got.astype(np.int32) - want.astype(np.int32)).max() <= 4


def test_runner_refuses_what_a_runtime_cannot_run():
    model = CM.build("ds_cnn", tiny=True)
    with pytest.raises(ValueError, match="unknown runtime"):
        CM.runner("tvm", model, 1)
    pytest.importorskip("tflite_micro")
    with pytest.raises(ValueError, match="one sample"):
        CM.runner("tflm", model, 4)


def test_suite_cnn_part():
    result = _bench.run(quick=True, threads=[1], repeat=1, use_torch=False,
                        parts=("cnn",), log=lambda _: None)
    recs = result["cnn"]
    assert {r["impl"] for r in recs} >= {"qatcore"}
    for r in recs:
        assert set(r) >= {"model", "batch", "threads", "impl", "median_s", "per_sample_s",
                          "ratio"}
        assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"]
    text = _bench.format_cnn_table(recs)
    assert text.splitlines()[0].split()[:4] == ["model", "batch", "thr", "qatcore"]


def test_bench_cnn_script_quick(tmp_path):
    import qatcore

    # the folder of the qatcore under test (in CI the installed one, not the clone's)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(qatcore.__file__)))
    res = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_cnn.py"),
                          "--quick", "--models", "ds_cnn,fc", "--batches", "1",
                          "--threads", "1"], capture_output=True, text=True, env=env,
                         timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("$ python bench/bench_cnn.py --quick")
    assert lines[1].startswith("CPU: ")
    head = [ln for ln in lines if ln.startswith("| model | batch |")]
    assert head and "XNNPACK" in head[0] and "C -O3" in head[0]
    rows = [ln for ln in lines if ln.startswith("| ds_cnn | 1 | 1 |")]
    assert rows
