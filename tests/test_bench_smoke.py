"""Smoke test of the benchmark suite (`qatcore bench`): it runs on tiny sizes and
produces well-formed results.  Structure only: never a timing assertion."""

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from qatcore.bench import suite as _bench

from reference import fake_quantize_ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quiet(_):
    pass


def _check_measure(m):
    assert set(m) >= {"median_s", "min_s", "max_s", "repeat", "number"}
    assert 0 < m["min_s"] <= m["median_s"] <= m["max_s"]


@pytest.fixture(scope="module")
def result():
    return _bench.run(quick=True, threads=[1, 2], repeat=1, use_torch=False, log=_quiet,
                      sizes=[4099])


def test_rows_cover_every_op(result):
    ops = {r["op"] for r in result["rows"]} | {s["op"] for s in result["skipped"]}
    for name in ("MIN_MAX", "MEAN_STD", "PERCENTILE", "MOVING_AVERAGE"):
        assert f"observe {name}" in ops
    assert "fake_quantize int8 out=" in ops and "fake_quantize int4 out=" in ops
    assert "observe MIN_MAX (1 call)" in ops and "fake_quantize int8 out= (1 call)" in ops
    assert {r["threads"] for r in result["rows"]} == {1, 2}


def test_row_structure(result):
    for row in result["rows"]:
        assert set(row) >= {"op", "size", "threads", "qatcore", "peers", "target"}
        _check_measure(row["qatcore"])
        assert "numpy" in row["peers"]
        for peer in row["peers"].values():
            _check_measure(peer)
            assert peer["ratio"] > 0


def test_limits_and_machine(result):
    whats = {lim["what"] for lim in result["limits"]}
    assert {"read", "copy", "divide"} <= whats
    for lim in result["limits"]:
        _check_measure(lim)
        assert lim["gb_s"] > 0
    m = result["machine"]
    assert m["kernel_target"] in m["available_targets"]


def test_result_is_json_serialisable(result):
    json.dumps(result, default=str)


def test_table_formats(result):
    table = _bench.format_table(result["rows"])
    assert "qatcore µs" in table and "observe MIN_MAX" in table
    assert len(table.splitlines()) == len(result["rows"]) + 2


@pytest.mark.parametrize("scale, zp, qmin, qmax", [(0.03125, 0.0, -127.0, 127.0),
                                                   (0.02, 131.5, 0.0, 255.0)])
def test_numpy_peer_is_a_correct_fake_quantize(scale, zp, qmin, qmax):
    x = np.random.default_rng(1).standard_normal(5000).astype(np.float32) * 3
    x[:100] = (np.arange(100) - 50 + 0.5 - zp) * scale        # ties
    out, tmp = np.empty_like(x), np.empty_like(x)
    _bench.numpy_fake_quantize(x, out, tmp, scale, zp, qmin, qmax)
    np.testing.assert_array_equal(out, fake_quantize_ref(x, scale, zp, qmin, qmax)[0])


def test_main_writes_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    code = _bench.main(["--quick", "--repeat", "1", "--threads", "1", "--no-torch",
                        "--only", "limits,small", "--json", str(path)])
    assert code == 0
    data = json.loads(path.read_text())
    assert data["rows"] and data["limits"]
    out = capsys.readouterr().out
    assert "kernels:" in out and "summary" in out


def test_main_rejects_bad_options(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _bench.main(["--threads", "0"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        _bench.main(["--only", "nonsense"])
    assert _bench.main(["--rust", str(tmp_path / "missing")]) == 2
    assert _bench.main(["--json", str(tmp_path / "no" / "dir" / "x.json")]) == 2


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # import fails
    assert _bench.main(["--quick", "--plot", "x.png"]) == 2
    assert "matplotlib" in capsys.readouterr().err


def test_rust_peer_parses_the_json_line(tmp_path):
    binary = tmp_path / "target" / "release" / "qatcore-ref"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\necho 'building...'\n"
                      "echo '{\"op\":\"minmax\",\"n\":10,\"repeat\":3,\"median_s\":2e-6,"
                      "\"min_s\":1e-6,\"max_s\":3e-6}'\n")
    binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
    peer = _bench.RustPeer(str(tmp_path), log=_quiet)
    m = peer.run("minmax", 10, 3)
    assert m["median_s"] == 2e-6 and m["min_s"] == 1e-6 and m["max_s"] == 3e-6
    assert not peer.build()             # no Cargo.toml: a clear error, no exception
    assert "Cargo.toml" in peer.error


def test_run_py_help():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "run.py"), "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert "OPENBLAS_CORETYPE" in proc.stdout and "--rust" in proc.stdout


def test_plot_writes_a_png(result, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "bench.png"
    _bench.plot(str(path), result)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_first_line_names_cpu_and_target():
    from qatcore import _backend

    lines = []
    _bench.run(quick=True, threads=[1], repeat=1, use_torch=False, log=lines.append,
               sizes=[257], parts=("limits",))
    assert lines[0].startswith("CPU: ")
    assert lines[0].endswith(f"kernels: {_backend.kernels.TARGET}")
    assert "(" in lines[0]          # family/model or the vector ISA follow the name
