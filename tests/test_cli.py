"""The ``qatcore`` command, driven as a subprocess (``python -m qatcore``) on temp files.

Results are compared with the Python API bit for bit (float32 bits); every bad input of
the issue gets a test: one line on stderr naming the file, exit status 2, nothing written.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

import qatcore
from qatcore import FakeQuantConfig, QuantObserver, _backend

# The directory holding the qatcore that this test imported (site-packages in CI).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(qatcore.__file__)))
OBSERVERS = ["min_max", "percentile", "moving_average", "mean_std"]
HAVE_SELECT = hasattr(_backend.kernels, "select_order_stats")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("COLUMNS", None)
    return env


def run(args, cwd, timeout=120, **kw):
    return subprocess.run([sys.executable, "-m", "qatcore", *map(str, args)], cwd=cwd,
                          env=_env(), capture_output=True, text=True, timeout=timeout, **kw)


def skip_percentile(observer):
    if observer == "percentile" and not HAVE_SELECT:
        pytest.skip("select_order_stats kernel not built yet")


def bits(v):
    return int(np.float32(v).view(np.uint32))


def api_result(x, observer, bits_=8, symmetric=True, batch_axis=None):
    """What the Python API gives on the whole array `x` (loaded in memory)."""
    config = FakeQuantConfig(bits=bits_, symmetric=symmetric, observer=observer)
    obs = QuantObserver(observer, n_threads=1)
    x = np.asarray(x)
    if batch_axis is None:
        obs.observe(x)
    else:
        for i in range(x.shape[batch_axis]):
            obs.observe(np.take(x, i, axis=batch_axis))
    return obs.range(), obs.compute_qparams(config), obs.count


def assert_same(entry, expected):
    (lo, hi), (scale, zp), count = expected
    if count:
        assert [bits(v) for v in entry["range"]] == [bits(lo), bits(hi)], (entry, expected)
    else:
        assert entry["range"] is None
    assert bits(entry["scale"]) == bits(scale), (entry, expected)
    assert bits(entry["zero_point"]) == bits(zp), (entry, expected)


def one_error_line(proc, *needles):
    """Exit 2, nothing on stdout, exactly one 'qatcore: error:' line naming `needles`."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    errors = [l for l in proc.stderr.splitlines() if l.startswith("qatcore: error:")]
    assert len(errors) == 1, proc.stderr
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


# --- data ------------------------------------------------------------------------------
def _data(seed, shape, dtype=np.float32, scale=3.0, offset=0.5):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * scale + offset
    x[..., 0] = 0.25            # ties and repeated values for the order statistics
    return x.astype(dtype)


def _variants():
    """name → (array as the API sees it, how to store it)."""
    return {
        "f32": _data(1, (37, 29)),
        "f64": _data(2, (23, 31), np.float64),
        "i16": (_data(3, (11, 13), np.float64) * 100).astype(np.int16),
        "fortran": np.asfortranarray(_data(4, (19, 17))),
        "bigendian": _data(5, (13, 21)).astype(">f4"),
        "f16": _data(6, (9, 15), np.float16),
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A folder of every storage variant: .npy files, a stored .npz (members at unaligned
    offsets), a deflated .npz, a safetensors file; returns (folder, {name: array})."""
    d = tmp_path_factory.mktemp("corpus")
    v = _variants()
    expected = {}
    for k, a in v.items():
        np.save(d / f"{k}.npy", a)
        expected[f"{k}.npy"] = a
    np.savez(d / "stored.npz", a=_data(7, (5, 41)), b=_data(8, (3, 3, 7), np.float64),
             f=np.asfortranarray(_data(9, (6, 10))))
    with np.load(d / "stored.npz") as z:
        for m in z.files:
            expected[f"stored.npz:{m}"] = z[m]
    np.savez_compressed(d / "deflated.npz", a=_data(10, (17, 12)), f=np.asfortranarray(_data(11, (8, 9))),
                        i=np.arange(-50, 70, dtype=np.int8).reshape(12, 10))
    with np.load(d / "deflated.npz") as z:
        for m in z.files:
            expected[f"deflated.npz:{m}"] = z[m]
    st = {"w": _data(12, (6, 14)), "d": _data(13, (4, 5), np.float64),
          "h": _data(14, (7, 3), np.float16)}
    bf = _data(15, (5, 8))
    write_safetensors(d / "model.safetensors", st, bf16={"bf": bf})
    for k, a in st.items():
        expected[f"model.safetensors:{k}"] = a
    expected["model.safetensors:bf"] = (bf.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    return d, expected


def write_safetensors(path, tensors, bf16=None):
    tags = {np.dtype("<f4"): "F32", np.dtype("<f8"): "F64", np.dtype("<f2"): "F16",
            np.dtype("int8"): "I8", np.dtype("<i4"): "I32"}
    header, blobs, off = {"__metadata__": {"format": "np"}}, [], 0
    items = [(k, tags[a.dtype], a.tobytes(), a.shape) for k, a in tensors.items()]
    for k, a in (bf16 or {}).items():
        raw = (a.astype(np.float32).view(np.uint32) >> 16).astype("<u2")   # truncate to bf16
        items.append((k, "BF16", raw.tobytes(), a.shape))
    for k, tag, raw, shape in items:
        header[k] = {"dtype": tag, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def _key(folder, name):
    return os.path.join(str(folder), name)


# --- results equal the API -------------------------------------------------------------
# Asymmetric whole-tensor runs are covered in-process by test_large_chunked_tensor_equals_api.
CASES = ([(o, True, None) for o in OBSERVERS] + [(o, False, 0) for o in OBSERVERS]
         + [(o, True, 1) for o in ("percentile", "mean_std")]
         + [(o, False, -1) for o in ("min_max", "moving_average")])


@pytest.mark.parametrize("observer,symmetric,axis", CASES,
                         ids=[f"{o}-{'sym' if s else 'asym'}-axis{a}" for o, s, a in CASES])
def test_json_equals_api(corpus, tmp_path, capsys, observer, symmetric, axis):
    """Every storage variant, every observer: the JSON equals the API bit for bit.  Run
    in-process through ``cli.main`` (the same code as the command, without paying an
    interpreter start per case); test_json_equals_api_subprocess runs the real command."""
    from qatcore.cli import main

    skip_percentile(observer)
    out = tmp_path / "out.json"
    rc = main(_calibrate_args(corpus[0], out, observer, symmetric, axis))
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert captured.out == "" and captured.err == ""          # --quiet
    _check_corpus_json(corpus, out, observer, symmetric, axis)


@pytest.mark.parametrize("observer,symmetric,axis", [("percentile", True, None),
                                                     ("moving_average", False, 1)])
def test_json_equals_api_subprocess(corpus, tmp_path, observer, symmetric, axis):
    skip_percentile(observer)
    out = tmp_path / "out.json"
    proc = run(_calibrate_args(corpus[0], out, observer, symmetric, axis), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""
    _check_corpus_json(corpus, out, observer, symmetric, axis)


def _calibrate_args(folder, out, observer, symmetric, axis):
    args = ["calibrate", str(folder), "--observer", observer, "--json", str(out), "--quiet"]
    args += ["--symmetric" if symmetric else "--asymmetric"]
    if axis is not None:
        args += ["--batch-axis", str(axis)]
    return args


def _check_corpus_json(corpus, out, observer, symmetric, axis):
    folder, expected = corpus
    doc = json.loads(out.read_text())
    assert doc["observer"] == observer and doc["symmetric"] is symmetric
    assert doc["batch_axis"] == axis and doc["errors"] == []
    assert set(doc["tensors"]) == {_key(folder, k) for k in expected}
    for name, x in expected.items():
        entry = doc["tensors"][_key(folder, name)]
        assert entry["shape"] == list(x.shape) and entry["count"] == x.size
        if name.endswith("bf"):
            assert entry["dtype"] == "bfloat16"
        assert_same(entry, api_result(x, observer, 8, symmetric, axis))
        assert entry["batches"] == (1 if axis is None else x.shape[axis])


@pytest.mark.parametrize("threads", [1, 2], ids=["t1", "t2"])
@pytest.mark.parametrize("observer", OBSERVERS)
def test_large_chunked_tensor_equals_api(tmp_path, monkeypatch, observer, threads):
    """A tensor larger than one chunk (CHUNK_ELEMS shrunk in-process) in every storage:
    chunked min/max, the moving-average trick and the temp-file conversion stay exact."""
    skip_percentile(observer)
    from qatcore import cli
    from qatcore.cli import observe

    monkeypatch.setattr(observe, "CHUNK_ELEMS", 1000)
    monkeypatch.setattr(observe, "WINDOW_ELEMS", 777)
    x = _data(20, (97, 53))
    np.save(tmp_path / "c.npy", x)
    np.save(tmp_path / "d.npy", x.astype(np.float64))
    np.save(tmp_path / "f.npy", np.asfortranarray(x))
    np.savez_compressed(tmp_path / "z.npz", c=x, f=np.asfortranarray(x))
    out = tmp_path / "o.json"
    rc = cli.main(["calibrate", str(tmp_path), "--observer", observer, "--asymmetric",
                   "--threads", str(threads), "--json", str(out), "--quiet"])
    assert rc == 0
    doc = json.loads(out.read_text())
    exp = api_result(x, observer, 8, False)
    assert len(doc["tensors"]) == 5
    for entry in doc["tensors"].values():
        assert_same(entry, exp)


def test_bits_and_table(tmp_path):
    x = _data(30, (8, 16))
    np.save(tmp_path / "x.npy", x)
    proc = run(["calibrate", "x.npy", "--bits", "4", "--asymmetric", "--json", "-"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)                    # --json - replaces the table
    assert doc["bits"] == 4 and doc["quant_range"] == [0.0, 15.0]
    assert_same(doc["tensors"]["x.npy"], api_result(x, "min_max", 4, False))
    proc = run(["calibrate", "x.npy", "--bits", "4"], cwd=tmp_path)
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["tensor", "shape", "dtype", "min", "max", "scale", "zero_point"]
    assert lines[1].startswith("x.npy") and "float32" in lines[1]
    assert "calibrated 1 tensor" in proc.stderr


def test_integer_warning_and_empty_and_scalar(tmp_path):
    np.save(tmp_path / "i.npy", np.arange(-5, 9, dtype=np.int32))
    np.save(tmp_path / "s.npy", np.float32(-2.5))
    proc = run(["calibrate", tmp_path, "--json", "o.json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    warn = [l for l in proc.stderr.splitlines() if "warning" in l]
    assert len(warn) == 1 and "i.npy" in warn[0] and "int32" in warn[0]
    doc = json.loads((tmp_path / "o.json").read_text())["tensors"]
    assert_same(doc[_key(tmp_path, "i.npy")], api_result(np.arange(-5, 9), "min_max"))
    assert_same(doc[_key(tmp_path, "s.npy")], api_result(np.float32(-2.5), "min_max"))
    # An empty tensor has no range (issue 24): an error, not a made-up scale of 1.0.
    np.save(tmp_path / "e.npy", np.zeros((0, 4), np.float32))
    proc = run(["calibrate", tmp_path, "--json", "o2.json"], cwd=tmp_path)
    assert proc.returncode == 2 and "e.npy: no values" in proc.stderr, proc.stderr
    assert not (tmp_path / "o2.json").exists()


def test_duplicate_paths_once(tmp_path):
    np.save(tmp_path / "x.npy", _data(31, (4, 4)))
    proc = run(["calibrate", "x.npy", "./x.npy", ".", "--json", "-"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["tensors"]) == 1


# --- bad input -------------------------------------------------------------------------
def _npy_bytes(a):
    import io

    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=True)
    return buf.getvalue()


def _make_bad(kind, d):
    """Create a bad input of `kind` in folder d; returns (args, words the message names)."""
    good = _npy_bytes(_data(40, (10, 10)))
    if kind == "missing":
        return ["calibrate", "nope.npy"], ["nope.npy", "no such file"]
    if kind == "not_npy":
        (d / "notes.txt").write_text("hello")
        return ["calibrate", "notes.txt"], ["notes.txt", "not a .npy"]
    if kind == "empty_folder":
        (d / "empty").mkdir()
        (d / "empty" / "readme.txt").write_text("x")
        return ["calibrate", "empty"], ["empty", "no .npy"]
    if kind == "bad_magic":
        (d / "bad.npy").write_bytes(b"PK\x03\x04 definitely not numpy" * 4)
        return ["calibrate", "bad.npy"], ["bad.npy", "not a .npy file"]
    if kind == "corrupt_header":
        hl = struct.unpack("<H", good[8:10])[0]
        bad = good[:10] + b"{'descr': <f4, garbage" + b" " * (hl - 22) + good[10 + hl:]
        (d / "bad.npy").write_bytes(bad)
        return ["calibrate", "bad.npy"], ["bad.npy", "corrupt .npy header"]
    if kind == "truncated_header":
        (d / "bad.npy").write_bytes(good[:40])
        return ["calibrate", "bad.npy"], ["bad.npy", "truncated .npy header"]
    if kind == "truncated_data":
        (d / "bad.npy").write_bytes(good[:-7])
        return ["calibrate", "bad.npy"], ["bad.npy", "truncated"]
    if kind == "bad_shape":
        bad = good.replace(b"(10, 10)", b"(10, -1)")
        (d / "bad.npy").write_bytes(bad)
        return ["calibrate", "bad.npy"], ["bad.npy", "bad shape"]
    if kind == "object":
        (d / "obj.npy").write_bytes(_npy_bytes(np.array([1, "a", None], dtype=object)))
        return ["calibrate", "obj.npy"], ["obj.npy", "object arrays are not supported"]
    if kind == "complex":
        np.save(d / "c.npy", np.ones(4, np.complex64))
        return ["calibrate", "c.npy"], ["c.npy", "complex64", "not supported"]
    if kind == "strings":
        np.save(d / "s.npy", np.array(["a", "b"]))
        return ["calibrate", "s.npy"], ["s.npy", "not supported"]
    if kind == "nan":
        x = _data(41, (6, 7))
        x[3, 5] = np.nan
        np.save(d / "n.npy", x)
        return ["calibrate", "n.npy"], ["n.npy", "nan", "index 26", "(3, 5)"]
    if kind == "inf_percentile":
        x = _data(42, (50,))
        x[17] = -np.inf
        np.save(d / "n.npy", x)
        return ["calibrate", "n.npy", "--observer", "mean_std"], ["n.npy", "-inf", "index 17"]
    if kind == "nan_npz_member":
        x = _data(43, (4, 9), np.float64)
        x[2, 1] = np.nan
        np.savez_compressed(d / "z.npz", good=_data(44, (3,)), acts=x)
        return ["calibrate", "z.npz"], ["z.npz:acts", "nan", "(2, 1)"]
    if kind == "nan_batch":
        x = _data(45, (5, 6))
        x[4, 2] = np.inf
        np.save(d / "n.npy", x)
        return ["calibrate", "n.npy", "--batch-axis", "1"], ["n.npy", "inf", "batch 2", "(4, 2)"]
    if kind == "not_zip":
        (d / "z.npz").write_bytes(b"this is not a zip archive at all")
        return ["calibrate", "z.npz"], ["z.npz", "not a valid .npz"]
    if kind == "npz_corrupt_member":
        with zipfile.ZipFile(d / "z.npz", "w") as zf:
            zf.writestr("x.npy", b"\x93NUMPY\x01\x00garbage")
        return ["calibrate", "z.npz"], ["z.npz", "x"]
    if kind == "npz_truncated":
        np.savez(d / "z.npz", x=_data(46, (100,)))
        raw = (d / "z.npz").read_bytes()
        (d / "z.npz").write_bytes(raw[:200])
        return ["calibrate", "z.npz"], ["z.npz"]
    if kind == "safetensors_bad":
        (d / "m.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
        return ["calibrate", "m.safetensors"], ["m.safetensors", "corrupt .safetensors header"]
    if kind == "out_missing_dir":
        np.save(d / "x.npy", _data(47, (3,)))
        return ["calibrate", "x.npy", "--json", "no/such/dir/o.json"], ["o.json", "does not exist"]
    if kind == "out_is_dir":
        np.save(d / "x.npy", _data(47, (3,)))
        (d / "outdir").mkdir()
        return ["calibrate", "x.npy", "--json", "outdir"], ["outdir", "is a directory"]
    if kind == "batch_axis_range":
        np.save(d / "x.npy", _data(48, (3, 4)))
        return ["calibrate", "x.npy", "--batch-axis", "2"], ["x.npy", "--batch-axis 2"]
    if kind == "bits":
        np.save(d / "x.npy", _data(48, (3, 4)))
        return ["calibrate", "x.npy", "--bits", "17"], ["--bits", "17"]
    if kind == "threads":
        np.save(d / "x.npy", _data(48, (3, 4)))
        return ["calibrate", "x.npy", "--threads", "0"], ["--threads"]
    raise AssertionError(kind)


BAD = ["missing", "not_npy", "empty_folder", "bad_magic", "corrupt_header", "truncated_header",
       "truncated_data", "bad_shape", "object", "complex", "strings", "nan", "inf_percentile",
       "nan_npz_member", "nan_batch", "not_zip", "npz_corrupt_member", "npz_truncated",
       "safetensors_bad", "out_missing_dir", "out_is_dir", "batch_axis_range", "bits", "threads"]


@pytest.mark.parametrize("kind", BAD)
def test_bad_input(tmp_path, kind):
    args, needles = _make_bad(kind, tmp_path)
    before = set(os.listdir(tmp_path))
    out = tmp_path / "result.json"
    if "--json" not in args:
        args = args + ["--json", out]
    proc = run(args, cwd=tmp_path)
    one_error_line(proc, *needles)
    assert not out.exists()
    assert set(os.listdir(tmp_path)) == before        # nothing written, no temp files left


def test_keep_going(tmp_path):
    good = _data(50, (5, 5))
    bad = _data(51, (5, 5))
    bad[1, 1] = np.nan
    np.save(tmp_path / "a_good.npy", good)
    np.save(tmp_path / "b_bad.npy", bad)
    np.save(tmp_path / "c_complex.npy", np.ones(3, np.complex128))
    proc = run(["calibrate", ".", "--keep-going", "--json", "o.json"], cwd=tmp_path)
    assert proc.returncode == 2
    errors = [l for l in proc.stderr.splitlines() if l.startswith("qatcore: error:")]
    assert len(errors) == 2
    assert any("b_bad.npy" in e and "(1, 1)" in e for e in errors)
    assert any("c_complex.npy" in e for e in errors)
    assert "a_good.npy" in proc.stdout
    doc = json.loads((tmp_path / "o.json").read_text())
    assert list(doc["tensors"]) == ["./a_good.npy"]
    assert_same(doc["tensors"]["./a_good.npy"], api_result(good, "min_max"))
    assert len(doc["errors"]) == 2


def test_existing_json_replaced_atomically(tmp_path):
    np.save(tmp_path / "x.npy", _data(52, (4,)))
    (tmp_path / "o.json").write_text("old")
    bad = _data(53, (4,))
    bad[0] = np.nan
    np.save(tmp_path / "y.npy", bad)
    proc = run(["calibrate", "x.npy", "y.npy", "--json", "o.json"], cwd=tmp_path)
    assert proc.returncode == 2
    assert (tmp_path / "o.json").read_text() == "old"          # failed run: untouched
    proc = run(["calibrate", "x.npy", "--json", "o.json"], cwd=tmp_path)
    assert proc.returncode == 0
    assert json.loads((tmp_path / "o.json").read_text())["tensors"]
    assert sorted(os.listdir(tmp_path)) == ["o.json", "x.npy", "y.npy"]


def test_interrupt_leaves_no_json(tmp_path):
    """SIGINT while calibrating (many small batches keep it busy): exit 130, no JSON,
    no temporary file.  The progress bar on a pseudo-terminal says when work started."""
    import pty
    import select
    import signal

    np.save(tmp_path / "big.npy", np.ones((3_000_000, 1), np.float32))
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "qatcore", "calibrate", "big.npy",
                             "--batch-axis", "0", "--json", "o.json"],
                            cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 30
    try:
        while b"%" not in seen and time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.5)
            if r:
                try:
                    seen += os.read(master, 4096)
                except OSError:
                    break
            if proc.poll() is not None:
                break
        assert b"%" in seen, ("no progress bar seen", seen)
        assert proc.poll() is None, "finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert proc.returncode == 130
    assert proc.stdout.read() == b""
    assert sorted(os.listdir(tmp_path)) == ["big.npy"]


# --- inspect ---------------------------------------------------------------------------
def test_inspect_calibration_json(corpus, tmp_path):
    folder, _ = corpus
    run(["calibrate", folder / "f32.npy", "--json", "o.json", "--quiet"], cwd=tmp_path)
    proc = run(["inspect", "o.json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "observer min_max, 8-bit symmetric" in proc.stdout
    assert "f32.npy" in proc.stdout and "scale" in proc.stdout


def test_inspect_npz_generic(corpus, tmp_path):
    folder, _ = corpus
    proc = run(["inspect", folder / "deflated.npz"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "3 tensors" in proc.stdout and "deflated" in proc.stdout and "int8" in proc.stdout


def _save_linear(path, w, b):
    """A QuantizedLinear file: through the API when it is there, else the state_dict keys
    written by hand (weights_q, weight_scale, bits, per_channel, input_*, bias_q)."""
    QuantizedLinear = getattr(qatcore, "QuantizedLinear", None)
    out_f, in_f = w.shape
    if QuantizedLinear is not None and hasattr(QuantizedLinear, "save"):
        QuantizedLinear.from_float(w, b, in_f, out_f, FakeQuantConfig.int8()).save(str(path))
        return
    scale = np.float32(np.abs(w).max() / np.float32(127))
    np.savez(path, version=np.int32(1), weights_q=np.clip(np.round(w / scale), -127, 127).astype(np.int8),
             weight_scale=np.array(scale), bits=np.int32(8), per_channel=np.bool_(False),
             input_scale=np.float32(1.0), input_zero_point=np.int32(0),
             input_qrange=np.array([-127, 127], np.int32),
             bias=b, bias_q=np.round(b / scale).astype(np.int32))


def test_inspect_quantized_linear(tmp_path):
    rng = np.random.default_rng(60)
    w = rng.standard_normal((6, 10)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    path = tmp_path / "lin.npz"
    _save_linear(path, w, b)
    proc = run(["inspect", path, "--bins", "8"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("QuantizedLinear")
    fields = dict(l.split(None, 1) for l in out.splitlines()[1:8])
    assert fields["in_features"] == "10" and fields["out_features"] == "6"
    assert fields["bits"] == "8"
    scale = np.float32(np.abs(w).max()) / np.float32(127)
    assert fields["weight_scale"] == str(scale)
    assert "histogram (8 bins" in out and out.count("[") >= 8


def test_inspect_corrupt_linear(tmp_path):
    if not hasattr(getattr(qatcore, "QuantizedLinear", None), "load"):
        pytest.skip("QuantizedLinear.load not available")
    np.savez(tmp_path / "lin.npz", weights_q=np.zeros((2, 3), np.int16),
             weight_scale=np.float32(0.1))
    one_error_line(run(["inspect", "lin.npz"], cwd=tmp_path), "lin.npz", "QuantizedLinear")


@pytest.mark.parametrize("kind", ["missing", "other", "not_calibration"])
def test_inspect_bad(tmp_path, kind):
    if kind == "missing":
        args, word = ["inspect", "none.json"], "none.json"
    elif kind == "other":
        (tmp_path / "x.csv").write_text("1,2")
        args, word = ["inspect", "x.csv"], "x.csv"
    else:
        (tmp_path / "x.json").write_text('{"a": 1}')
        args, word = ["inspect", "x.json"], "x.json"
    one_error_line(run(args, cwd=tmp_path), word)


# --- version, help, forwarding ---------------------------------------------------------
def test_version(tmp_path):
    proc = run(["--version"], cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.startswith(f"qatcore {qatcore.__version__} (kernels: {_backend.kernels.TARGET}")


def test_help_has_an_example_per_command(tmp_path):
    proc = run(["--help"], cwd=tmp_path)
    assert proc.returncode == 0
    for cmd in ("calibrate", "inspect", "bench", "demo"):
        assert f"  qatcore {cmd}" in proc.stdout
    proc = run(["calibrate", "--help"], cwd=tmp_path)
    assert proc.returncode == 0 and "--batch-axis" in proc.stdout and "examples:" in proc.stdout
    assert run([], cwd=tmp_path).returncode == 2


def test_main_entry_point_same_as_module(tmp_path):
    from qatcore.cli import main

    assert main(["--version"]) == 0
    assert main(["calibrate", str(tmp_path / "missing.npy")]) == 2


@pytest.mark.parametrize("cmd,module", [("bench", "qatcore.bench"), ("demo", "qatcore.demo")])
def test_forwarding(monkeypatch, capsys, cmd, module):
    import types

    from qatcore.cli import main

    seen = {}
    fake = types.ModuleType(module)
    fake.main = lambda argv=None: seen.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, module, fake)
    assert main([cmd, "--quick", "--json", "x.json"]) == 0
    assert seen["argv"] == ["--quick", "--json", "x.json"]

    monkeypatch.setitem(sys.modules, module, None)            # not installed
    assert main([cmd, "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and cmd in err and "not available" in err
