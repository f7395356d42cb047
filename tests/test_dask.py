"""qatcore.dask against the in-process API, bit for bit, on a real dask.distributed
LocalCluster (2 worker processes), the threads/processes schedulers and the CLI."""

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

from qatcore import FakeQuantConfig, ObserverMethod, QuantObserver  # noqa: E402
from qatcore.cli import main  # noqa: E402
from qatcore.dask import calibrate  # noqa: E402

METHODS = [m.value for m in ObserverMethod]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def client():
    # Worker processes import qatcore from this checkout, as the test process does.
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = ROOT + (os.pathsep + old if old else "")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=50)
    c = distributed.Client(cluster)
    try:
        yield c
    finally:
        c.close()
        cluster.close()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def in_process(x, method, batch_axis):
    obs = QuantObserver(method)
    if batch_axis is None:
        obs.observe(x)
    else:
        for b in range(x.shape[batch_axis]):
            obs.observe(np.take(x, b, axis=batch_axis))
    return obs


def bits(*values):
    return np.array(values, dtype=np.float32).view(np.uint32).tolist()


def assert_same(result, obs, config, batches):
    assert result["batches"] == batches
    assert result["observer"].count == obs.count
    if obs.count == 0:
        assert result["min"] is result["max"] is None
    else:
        assert bits(result["min"], result["max"]) == bits(*obs.range())
    assert bits(result["scale"], result["zero_point"]) == bits(*obs.compute_qparams(config))
    assert result["observer"].state_dict() == obs.state_dict()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    a = (rng.normal(size=(48, 37, 9)) * 3 + 1).astype(np.float32)
    b = rng.standard_t(3, size=(23, 410)).astype(np.float32)
    return {"a": a, "b": b}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("batch_axis", [None, 0, 1])
def test_distributed_equals_in_process(client, data, method, batch_axis):
    config = FakeQuantConfig(bits=8, symmetric=False, observer=method)
    arrays = {"a": da.from_array(data["a"], chunks=(7, 20, 4)),
              "b": da.from_array(data["b"], chunks=(5, 100))}
    got = calibrate(arrays, config, batch_axis=batch_axis, scheduler=client, split_every=3)
    for name, x in data.items():
        obs = in_process(x, method, batch_axis)
        batches = 1 if batch_axis is None else x.shape[batch_axis]
        if method == "mean_std" and batch_axis is None:
            # One batch split over chunks: float64 moments merged (Chan); the in-process
            # kernel's last bit depends on its own thread split too.  Documented: 2e-6.
            x64 = x.astype(np.float64)
            exact = (x64.mean() - 3 * x64.std(), x64.mean() + 3 * x64.std())
            r = got[name]
            assert abs(r["min"] - exact[0]) <= 2e-6 * abs(exact[0])
            assert abs(r["max"] - exact[1]) <= 2e-6 * abs(exact[1])
            continue
        assert_same(got[name], obs, config, batches)


@pytest.mark.parametrize("batch_axis", [None, 0, 1])
def test_worker_nan_is_the_in_process_error(client, data, batch_axis):
    x = data["b"].copy()
    x[17, 333] = np.nan                  # two bad values in different chunks: the first wins
    x[4, 20] = np.inf
    with pytest.raises(ValueError) as api:
        in_process(x, "min_max", batch_axis)
    with pytest.raises(ValueError) as dist:
        calibrate(da.from_array(x, chunks=(5, 100)), FakeQuantConfig(), batch_axis=batch_axis,
                  scheduler=client)
    assert str(dist.value) == str(api.value)
    with pytest.raises(ValueError) as named:
        calibrate({"t": da.from_array(x, chunks=(6, 70))}, FakeQuantConfig(), batch_axis=batch_axis,
                  scheduler=client)
    assert str(named.value) == "t: " + str(api.value)


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_local_schedulers(data, scheduler):
    x = data["a"]
    config = FakeQuantConfig(observer="moving_average")
    got = calibrate(da.from_array(x, chunks=(10, 37, 9)), config, batch_axis=0, scheduler=scheduler)
    assert_same(got, in_process(x, "moving_average", 0), config, x.shape[0])


@settings(max_examples=15, deadline=None)
@given(shape=st.lists(st.integers(0, 9), min_size=1, max_size=3),
       chunk=st.lists(st.integers(1, 5), min_size=3, max_size=3),
       method=st.sampled_from(METHODS), axis=st.integers(-1, 2), seed=st.integers(0, 2**16))
def test_random_chunkings_sync(shape, chunk, method, axis, seed):
    x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    axis = None if axis >= len(shape) else axis
    config = FakeQuantConfig(bits=5, symmetric=False, observer=method)
    got = calibrate(da.from_array(x, chunks=tuple(chunk[:len(shape)])), config, batch_axis=axis,
                    scheduler="sync", split_every=2)
    obs = in_process(x, method, axis)
    batches = (0 if x.size == 0 else 1) if axis is None else x.shape[axis]
    if method == "mean_std" and axis is None and x.size:
        assert abs(got["min"] - obs.range()[0]) <= 2e-6 * max(1.0, abs(obs.range()[0]))
        return
    assert_same(got, obs, config, batches)


def test_results_merge_across_calls(data):
    """Two datasets calibrated separately, merged via their saved states, equal one run."""
    x = data["b"]
    config = FakeQuantConfig(observer="moving_average")
    first = calibrate(da.from_array(x[:9], chunks=4), config, batch_axis=0, scheduler="sync")
    second = calibrate(da.from_array(x[9:], chunks=4), config, batch_axis=0, scheduler="sync")
    merged = QuantObserver.from_state(json.loads(json.dumps(first["observer"].state_dict())))
    merged.merge(QuantObserver.from_state(second["observer"].state_dict()))
    assert merged.state_dict() == in_process(x, "moving_average", 0).state_dict()


def test_bad_arguments(data):
    x = da.from_array(data["b"], chunks=5)
    with pytest.raises(TypeError, match="dask.array.Array"):
        calibrate(data["b"])
    with pytest.raises(ValueError, match="batch_axis 2 is out of range"):
        calibrate(x, batch_axis=2)
    with pytest.raises(TypeError, match="config must be a FakeQuantConfig"):
        calibrate(x, config="int8")
    with pytest.raises(TypeError, match="real numeric"):
        calibrate(da.from_array(np.array(["a"])))
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        calibrate(x[x > 0])
    empty = calibrate(da.zeros((0, 3), chunks=1), scheduler="sync")
    assert (empty["min"], empty["scale"], empty["batches"]) == (None, 1.0, 0)


# --- the command -----------------------------------------------------------------------
def _run(argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _doc(path):
    with open(path) as f:
        doc = json.load(f)
    doc.pop("qatcore_version")
    return doc


@pytest.fixture(scope="module")
def files(tmp_path_factory, data):
    d = tmp_path_factory.mktemp("dask-cli")
    np.save(d / "a.npy", data["a"])
    np.save(d / "b64.npy", data["b"].astype(np.float64))
    np.save(d / "f.npy", np.asfortranarray(data["b"][:, :50]))
    np.savez_compressed(d / "z.npz", z=data["a"][0])
    bad = data["b"].copy()
    bad[11, 5] = np.nan
    np.save(d / "bad.npy", bad)
    return d


@pytest.mark.parametrize("observer,axis", [("percentile", []), ("moving_average", ["--batch-axis", "1"]),
                                           ("mean_std", ["--batch-axis", "0"])])
def test_cli_scheduler_same_json(client, files, capsys, observer, axis):
    paths = [str(files / n) for n in ("a.npy", "b64.npy", "f.npy", "z.npz")]
    if axis:
        paths = paths[:3]
    common = ["calibrate", *paths, "--observer", observer, "--asymmetric", "-q", *axis]
    assert _run([*common, "--json", str(files / "in.json")], capsys)[0] == 0
    rc, _, err = _run([*common, "--json", str(files / "dk.json"),
                       "--scheduler", client.scheduler.address], capsys)
    assert (rc, err) == (0, "")
    assert _doc(files / "dk.json") == _doc(files / "in.json")


@pytest.mark.parametrize("axis", [[], ["--batch-axis", "0"]])
def test_cli_worker_nan_same_error(client, files, capsys, axis):
    argv = ["calibrate", str(files / "a.npy"), str(files / "bad.npy"), "-q", *axis]
    rc_in, _, err_in = _run(argv, capsys)
    rc_dk, _, err_dk = _run([*argv, "--scheduler", client.scheduler.address], capsys)
    assert rc_in == rc_dk == 2
    assert err_dk == err_in and err_in.count("\n") == 1 and "bad.npy" in err_in
    assert "non-finite value nan at" in err_in


def test_cli_dask_workers(files, capsys, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", ROOT)
    argv = ["calibrate", str(files / "a.npy"), "--batch-axis", "0", "--observer", "moving_average"]
    assert _run([*argv, "--json", str(files / "in1.json"), "-q"], capsys)[0] == 0
    rc, out, err = _run([*argv, "--json", str(files / "dk1.json"), "--dask-workers", "1"], capsys)
    assert rc == 0 and "calibrated 1 tensor" in err and "a.npy" in out
    assert _doc(files / "dk1.json") == _doc(files / "in1.json")
    rc, _, err = _run([*argv, "--dask-workers", "0"], capsys)
    assert rc == 2 and err == "qatcore: error: --dask-workers must be at least 1, got 0\n"


@pytest.mark.parametrize("n,chunks", [(5000, 700), (999, 10), (20000, 3333)])
def test_whole_tensor_percentile_with_ties(n, chunks):
    x = np.random.default_rng(n).integers(-4, 5, size=n).astype(np.float32) + 0.5
    config = FakeQuantConfig(observer="percentile", symmetric=False)
    got = calibrate(da.from_array(x, chunks=chunks), config, scheduler="sync", split_every=4)
    assert_same(got, in_process(x, "percentile", None), config, 1)


def test_readme_dask_example_runs_as_a_script(tmp_path):
    import re
    import subprocess
    import sys

    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    (code,) = [b for b in blocks if "qatcore.dask" in b]
    script = tmp_path / "example.py"
    script.write_text(code)
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "512"


def test_docstring_examples():
    import doctest

    import qatcore.dask

    result = doctest.testmod(qatcore.dask, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
