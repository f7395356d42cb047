"""Hostile files for the command line (issue 13, item 5, and the CLI side of item 4).

Every format ``qatcore calibrate`` / ``qatcore inspect`` reads (.npy, .npz stored and
deflated, .safetensors, calibration JSON, a saved QuantizedLinear) is fuzzed through the
CLI entry point in-process (``qatcore.cli.main``, as tests/test_cli.py does for its fast
cases): exhaustive truncation at every length and single-byte header flips, hypothesis
mutations (byte flips, truncation, crafted shapes and offsets).  The invariant, for every
input: exit 0 with the right result (checked against an independent reader: np.load, or
the unmutated array when the mutation only touched metadata np.load is stricter about),
or exit 2 with exactly one ``qatcore: error:`` line on stderr -- no traceback, no
warning, no raw escape character, no output file or temporary file left behind.
Then each example of the issue as its own test; FIFOs and the truncated-while-read file
run in a subprocess with a timeout (a hang or a SIGBUS must fail the test, not the run).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import warnings
import zipfile
import zlib

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import qatcore  # noqa: E402
from qatcore import QuantObserver  # noqa: E402
from qatcore.cli import readers as _io  # noqa: E402
from qatcore.cli import main  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(qatcore.__file__)))
#: QATCORE_FUZZ_EXAMPLES=5000 runs a deep, random (not derandomized) fuzz campaign.
_DEEP = int(os.environ.get("QATCORE_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=_DEEP or 120, deadline=None, derandomize=not _DEEP,
                suppress_health_check=list(HealthCheck), database=None)


# --- running the command -----------------------------------------------------------------
def run_cli(*args):
    """``main(args)`` in-process: (exit status, stdout, stderr, warnings raised)."""
    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(record=True) as caught, \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        warnings.simplefilter("always")
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue(), [str(w.message) for w in caught]


def check_clean(rc, out, err, warns, folder=None, before=None):
    """The outcome is exit 0 or exit 2 with one error line; nothing raw, nothing left."""
    assert "Traceback" not in err, err
    assert not warns, warns
    assert "\x1b" not in out and "\x1b" not in err
    assert rc in (0, 2), (rc, out, err)
    if rc == 2:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("qatcore: error: "), err
    if folder is not None:
        now = set(os.listdir(folder))
        left = now - before - ({"out.json"} if rc == 0 else set())
        assert not left, left
        if rc == 2:
            assert "out.json" not in now


def one_line_exit2(rc, out, err, warns, *needles):
    check_clean(rc, out, err, warns)
    assert rc == 2, (out, err)
    for n in needles:
        assert n in err, (n, err)


def calibrate(path, *extra):
    """``calibrate path --json out.json --quiet``: (rc, out, err, warns, doc or None)."""
    folder = os.path.dirname(path)
    before = set(os.listdir(folder)) - {"out.json"}
    out_json = os.path.join(folder, "out.json")
    if os.path.exists(out_json):
        os.unlink(out_json)
    rc, out, err, warns = run_cli("calibrate", path, "--json", out_json, "--quiet", *extra)
    check_clean(rc, out, err, warns, folder, before)
    doc = None
    if rc == 0:
        with open(out_json, encoding="utf-8") as f:
            doc = json.load(f)
        os.unlink(out_json)
    return rc, out, err, warns, doc


def inspect(path, *extra):
    rc, out, err, warns = run_cli("inspect", path, *extra)
    check_clean(rc, out, err, warns)
    return rc, out, err


def expected_ranges(arrays, observer="min_max", axis=None):
    """[(shape, (lo, hi) or None)] the API gives for each array (whole tensor, or one
    batch per slice along `axis`); None when calibration must refuse the array."""
    out = []
    for a in arrays:
        a = np.asarray(a)
        if a.dtype.kind not in "fiub" or a.dtype.fields or a.dtype.shape:
            return None
        with np.errstate(all="ignore"):
            x = a.astype(np.float32)
        if not np.isfinite(x).all() or (axis is not None and x.ndim == 0):
            return None
        obs = QuantObserver(observer, n_threads=1)
        if axis is not None:
            for i in range(x.shape[axis]):
                obs.observe(np.take(x, i, axis=axis))
        elif x.size:
            obs.observe(x)
        out.append((list(a.shape), obs.range() if obs.count else None))
    return out


def got_ranges(doc):
    return [(e["shape"], tuple(e["range"]) if e["range"] is not None else None)
            for e in doc["tensors"].values()]


def assert_correct(doc, *candidates, observer="min_max", axis=None):
    """The JSON result equals the API on one of the candidate readings of the file."""
    got = got_ranges(doc)
    wanted = [expected_ranges(c, observer, axis) for c in candidates if c is not None]
    wanted = [[(s, tuple(r) if r is not None else None) for s, r in w] for w in wanted if w is not None]
    assert any(got == w for w in wanted), (got, wanted)


def np_load_all(path):
    """Every array np.load reads from `path` (None when numpy refuses the file)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            z = np.load(path, allow_pickle=False)
            if isinstance(z, np.ndarray):
                return [z]
            with z:
                return [z[k] for k in z.files]
    except Exception:
        return None


# --- building files ----------------------------------------------------------------------
def npy_bytes(a, version=(1, 0)):
    f = io.BytesIO()
    np.lib.format.write_array(f, np.asarray(a), version=version, allow_pickle=False)
    return f.getvalue()


def npy_raw(header: str, data: bytes = b"", major=1) -> bytes:
    """A .npy file with a hand-written header dict text."""
    h = header.encode("latin1")
    pre = 10 if major == 1 else 12
    h += b" " * ((-(len(h) + pre + 1)) % 64) + b"\n"
    size = struct.pack("<H", len(h)) if major == 1 else struct.pack("<I", len(h))
    return b"\x93NUMPY" + bytes([major, 0]) + size + h + data


def npz_bytes(arrays: dict, compressed=False):
    f = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(f, **arrays)
    return f.getvalue()


def st_bytes(tensors: dict, header_override=None) -> bytes:
    """A .safetensors file: tensors {name: float32/float64/int array}."""
    tags = {"float32": "F32", "float64": "F64", "int32": "I32", "uint8": "U8", "float16": "F16"}
    meta, blobs, pos = {}, [], 0
    for k, a in tensors.items():
        b = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()
        meta[k] = {"dtype": tags[a.dtype.name], "shape": list(a.shape),
                   "data_offsets": [pos, pos + len(b)]}
        blobs.append(b)
        pos += len(b)
    head = (json.dumps(header_override if header_override is not None else meta)).encode()
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


def st_decode(blob):
    """An independent safetensors reader (json + np.frombuffer): the oracle."""
    try:
        (hlen,) = struct.unpack("<Q", blob[:8])
        meta = json.loads(blob[8:8 + hlen])
        data = blob[8 + hlen:]
        tags = {"F32": "<f4", "F64": "<f8", "I32": "<i4", "U8": "u1", "F16": "<f2"}
        out = []
        for k, e in meta.items():
            if k == "__metadata__":
                continue
            b, e_ = e["data_offsets"]
            dt = np.dtype(tags[e["dtype"]])
            shape = tuple(e["shape"])
            if not all(type(s) is int and s >= 0 for s in shape) or not 0 <= b <= e_ <= len(data):
                return None
            if e_ - b != int(np.prod(shape, dtype=object)) * dt.itemsize:
                return None
            out.append(np.frombuffer(data[b:e_], dt).reshape(shape))
        return out or None
    except Exception:
        return None


def write(folder, name, blob) -> str:
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        f.write(blob)
    return path


BASE_ARRAYS = {
    "f4": np.arange(-6, 6, dtype=np.float32).reshape(3, 4) / 4,
    "f8F": np.asfortranarray(np.linspace(-3, 5, 12).reshape(4, 3)),
    "i2": np.array([[-7, 3], [12, 0]], dtype=np.int16),
    "be": np.array([1.5, -2.25, 8.0], dtype=">f4"),
    "beF": np.asfortranarray(np.arange(-3, 9, dtype=">f4").reshape(3, 4)),
    "0d": np.array(2.5, dtype=np.float32),
    "empty": np.zeros((0, 3), np.float32),
}


@pytest.fixture
def tmp(tmp_path):
    return str(tmp_path)


# --- exhaustive: truncation at every length, single-byte header flips ---------------------
FORMATS = {
    "npy-v1": lambda: ("a.npy", npy_bytes(BASE_ARRAYS["f4"])),
    "npy-v3-fortran": lambda: ("a.npy", npy_bytes(BASE_ARRAYS["f8F"], version=(3, 0))),
    "npz-stored": lambda: ("a.npz", npz_bytes({"x": BASE_ARRAYS["f4"], "y": BASE_ARRAYS["i2"]})),
    "npz-deflated": lambda: ("a.npz", npz_bytes({"x": BASE_ARRAYS["f4"], "y": BASE_ARRAYS["be"]}, True)),
    "safetensors": lambda: ("a.safetensors", st_bytes({"w": BASE_ARRAYS["f4"],
                                                       "b": np.arange(3, dtype=np.int32)})),
}


def _candidates(name, blob, path):
    if name.endswith(".safetensors"):
        return [st_decode(blob)]
    return [np_load_all(path)]


def _lengths(n: int):
    """Truncation lengths: every one through the headers (160 bytes), every one in the
    last 48 (a zip's central directory and end record), every 7th in between."""
    return sorted(set(range(min(n, 160))) | set(range(160, n, 7)) | set(range(max(0, n - 48), n)))


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_truncated_at_every_length_class(tmp, fmt):
    """Prefixes of a valid file: exit 2 with one line (or, for a prefix that is still a
    complete file, the right answer); never a traceback or a partial output."""
    name, blob = FORMATS[fmt]()
    original = _candidates(name, blob, write(tmp, name, blob))
    for n in _lengths(len(blob)):
        path = write(tmp, name, blob[:n])
        rc, *_, doc = calibrate(path)
        if rc == 0:
            assert_correct(doc, original[0])
        inspect(path)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_header_byte_flips(tmp, fmt):
    """Every byte of the header region (and of a zip's central directory) flipped."""
    name, blob = FORMATS[fmt]()
    original = _candidates(name, blob, write(tmp, name, blob))[0]
    if name.endswith(".npy"):
        positions = range(0, min(len(blob), 128))
    elif name.endswith(".safetensors"):
        positions = range(0, 8 + struct.unpack("<Q", blob[:8])[0])
    else:
        cd = blob.rfind(b"PK\x01\x02")
        first = blob.find(b"PK\x01\x02")
        positions = list(range(0, 30 + 12 + 128)) + list(range(first, len(blob)))
        assert cd > 0
    for pos in positions:
        for mask in (0xFF, 0x01) if pos < 64 else (0xFF,):
            mutated = bytearray(blob)
            mutated[pos] ^= mask
            path = write(tmp, name, bytes(mutated))
            rc, *_, doc = calibrate(path)
            if rc == 0:
                assert_correct(doc, _candidates(name, bytes(mutated), path)[0], original)
    inspect(path)


# --- hypothesis: random mutations of every format -----------------------------------------
def _mutate(data, blob):
    blob = bytearray(blob)
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        header_heavy = data.draw(st.booleans())
        hi = min(len(blob) - 1, 160) if header_heavy else len(blob) - 1
        pos = data.draw(st.integers(0, hi), label="pos")
        blob[pos] = data.draw(st.integers(0, 255), label="byte")
    if data.draw(st.booleans(), label="truncate"):
        blob = blob[:data.draw(st.integers(0, len(blob)), label="length")]
    return bytes(blob)


#: (observer, batch axis) pairs: every reading path (chunks, the float32 temporary copy,
#: slice by slice, the temporary copy moved along an axis).
PATHS = st.sampled_from([("min_max", None), ("percentile", None), ("mean_std", None),
                         ("moving_average", "0"), ("min_max", "-1")])


def calibrate_as(path, how):
    observer, axis = how
    extra = ["--observer", observer] + (["--batch-axis", axis] if axis else [])
    rc, out, err, warns, doc = calibrate(path, *extra)
    return rc, doc, dict(observer=observer, axis=None if axis is None else int(axis))


@FUZZ
@given(data=st.data(), key=st.sampled_from(sorted(BASE_ARRAYS)),
       version=st.sampled_from([(1, 0), (2, 0), (3, 0)]), how=PATHS)
def test_fuzz_npy(data, key, version, how):
    blob = npy_bytes(BASE_ARRAYS[key], version=version)
    mutated = _mutate(data, blob)
    with tempfile.TemporaryDirectory() as tmp:
        path = write(tmp, "m.npy", mutated)
        rc, doc, kw = calibrate_as(path, how)
        if rc == 0:
            assert_correct(doc, np_load_all(path), [BASE_ARRAYS[key]], **kw)
        inspect(path)


@FUZZ
@given(data=st.data(), compressed=st.booleans(),
       keys=st.lists(st.sampled_from(sorted(BASE_ARRAYS)), min_size=1, max_size=3, unique=True),
       how=PATHS)
def test_fuzz_npz(data, compressed, keys, how):
    arrays = {k: BASE_ARRAYS[k] for k in keys}
    blob = npz_bytes(arrays, compressed)
    mutated = _mutate(data, blob)
    with tempfile.TemporaryDirectory() as tmp:
        path = write(tmp, "m.npz", mutated)
        rc, doc, kw = calibrate_as(path, how)
        if rc == 0:
            assert_correct(doc, np_load_all(path), list(arrays.values()), **kw)
        inspect(path)


@FUZZ
@given(data=st.data(), how=PATHS)
def test_fuzz_safetensors(data, how):
    tensors = {"w": BASE_ARRAYS["f4"], "b": np.arange(3, dtype=np.int32),
               "h": np.array([0.5, -1], np.float16)}
    blob = st_bytes(tensors)
    mutated = _mutate(data, blob)
    with tempfile.TemporaryDirectory() as tmp:
        path = write(tmp, "m.safetensors", mutated)
        rc, doc, kw = calibrate_as(path, how)
        if rc == 0:
            assert_correct(doc, st_decode(mutated), list(tensors.values()), **kw)
        inspect(path)


_DIM = st.one_of(st.integers(-3, 2**65), st.sampled_from([0, 1, 2, 3, 4, 12, 2**31, 2**32,
                                                          2**62, 2**63, 2**64 - 1, 2**64]))
_JSON_NUM = st.one_of(_DIM, st.floats(allow_nan=False), st.booleans(), st.none(), st.text(max_size=3))


@FUZZ
@given(shape=st.lists(st.one_of(_DIM, st.floats(-10, 1e300), st.booleans()), max_size=5),
       descr=st.sampled_from(["<f4", "<f8", ">f4", "|b1", "<i8", "|O", "<c8", "|V0", "<U2", "S0"]),
       fortran=st.sampled_from(["False", "True", "0", "None"]),
       payload=st.integers(0, 64), major=st.sampled_from([1, 2, 3]))
def test_fuzz_npy_crafted_shapes(shape, descr, fortran, payload, major):
    """Crafted .npy headers: shapes that wrap, negative, float, bool and huge dimensions,
    odd dtypes, with a payload of any small size."""
    text = "{'descr': %r, 'fortran_order': %s, 'shape': (%s), }" % (
        descr, fortran, "".join(f"{s!r}, " for s in shape))
    blob = npy_raw(text, b"\x00" * payload, major)
    with tempfile.TemporaryDirectory() as tmp:
        path = write(tmp, "c.npy", blob)
        rc, *_, doc = calibrate(path)
        if rc == 0:
            a = np_load_all(path)
            assert a is not None
            assert_correct(doc, a)
            assert all(type(s) is int and s >= 0 for s in shape) and fortran in ("False", "True")
        inspect(path)


@FUZZ
@given(shape=st.one_of(st.lists(_JSON_NUM, max_size=4), _JSON_NUM),
       offsets=st.one_of(st.lists(_JSON_NUM, min_size=0, max_size=3), _JSON_NUM),
       tag=st.sampled_from(["F32", "F64", "BF16", "BOOL", "I8", "F8", 7]),
       payload=st.integers(0, 64), raw=st.sampled_from(["", "Infinity", "-Infinity", "NaN", "1e400"]))
def test_fuzz_safetensors_crafted_entries(shape, offsets, tag, payload, raw):
    """Crafted safetensors entries: shapes and offsets of every JSON type (bool, float,
    null, strings, huge and negative ints, Infinity/NaN tokens), end < begin, beyond the
    file."""
    entry = json.dumps({"dtype": tag, "shape": shape, "data_offsets": offsets})
    if raw:
        entry = entry.replace('"data_offsets": ', f'"data_offsets": [0, {raw}], "x": ', 1)
    head = ('{"t": %s}' % entry).encode()
    blob = struct.pack("<Q", len(head)) + head + b"\x00" * payload
    with tempfile.TemporaryDirectory() as tmp:
        path = write(tmp, "c.safetensors", blob)
        rc, *_, doc = calibrate(path)
        if rc == 0:
            assert_correct(doc, st_decode(blob) if tag != "BF16" else None,
                           [np.zeros(s, np.float32) for s in [shape] if isinstance(s, list)])
        inspect(path)


# --- calibration JSON and QuantizedLinear files for `inspect` -----------------------------
def _calibration_json(tmp):
    path = write(tmp, "a.npy", npy_bytes(BASE_ARRAYS["f4"]))
    out = os.path.join(tmp, "cal.json")
    rc, *_ = run_cli("calibrate", path, "--asymmetric", "--json", out, "--quiet")
    assert rc == 0
    with open(out, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def calibration_blob(tmp_path_factory):
    return _calibration_json(str(tmp_path_factory.mktemp("cal")))


@FUZZ
@given(data=st.data())
def test_fuzz_calibration_json(calibration_blob, data):
    mutated = _mutate(data, calibration_blob)
    with tempfile.TemporaryDirectory() as tmp:
        inspect(write(tmp, "m.json", mutated))


_JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=4))
_JSON_KEY = st.sampled_from(["scale", "zero_point", "range", "shape", "dtype", "batches",
                             "x\x1b[2J"])
_JSON = st.deferred(lambda: st.one_of(_JSON_SCALAR, _JSON_SCALAR, st.lists(_JSON, max_size=3),
                                      st.dictionaries(_JSON_KEY, _JSON, max_size=5)))


@FUZZ
@given(tensors=st.one_of(_JSON, st.dictionaries(st.text(max_size=3), _JSON, max_size=3)),
       extra=st.dictionaries(st.sampled_from(["observer", "bits", "errors", "batch_axis",
                                              "quant_range", "symmetric"]), _JSON, max_size=4))
def test_fuzz_calibration_json_structure(tensors, extra):
    """A JSON document of any structure under "tensors": shown or refused in one line."""
    doc = dict(extra, tensors=tensors)
    with tempfile.TemporaryDirectory() as tmp:
        inspect(write(tmp, "d.json", json.dumps(doc).encode()))


@pytest.fixture(scope="module")
def linear_blob(tmp_path_factory):
    rng = np.random.default_rng(3)
    layer = qatcore.QuantizedLinear.from_float(rng.standard_normal((4, 6)).astype(np.float32),
                                               rng.standard_normal(4).astype(np.float32), 6, 4)
    path = str(tmp_path_factory.mktemp("lin") / "fc.npz")
    layer.save(path)
    with open(path, "rb") as f:
        return f.read()


@FUZZ
@given(data=st.data())
def test_fuzz_quantized_linear_npz(linear_blob, data):
    mutated = _mutate(data, linear_blob)
    with tempfile.TemporaryDirectory() as tmp:
        inspect(write(tmp, "fc.npz", mutated), "--bins", "8")


def test_linear_npz_inspects(tmp, linear_blob):
    rc, out, err = inspect(write(tmp, "fc.npz", linear_blob))
    assert rc == 0 and "QuantizedLinear" in out and err == ""


def test_header_literal_parser_never_accepts_what_ast_rejects():
    """The .npy header parser on mutated headers: the same value as ast.literal_eval, or
    an InputError; never anything ast does not read the same way."""
    import ast

    @FUZZ
    @given(data=st.data())
    def check(data):
        text = bytearray(np.lib.format.header_data_from_array_1_0(BASE_ARRAYS["f8F"]).__repr__(),
                         "latin1")
        for _ in range(data.draw(st.integers(1, 3))):
            pos = data.draw(st.integers(0, len(text) - 1))
            text[pos] = data.draw(st.sampled_from(b"()[]{},:'\"\\0123456789eE.-+ TrueFalsNn_x"
                                                  b"\x00\x0b\x0c\x1c\x85\xa0\t\r\n"))
        s = text.decode("latin1")
        try:
            mine = _io._parse_header_literal(s)
        except (_io._Corrupt, ValueError):
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                theirs = ast.literal_eval(s)
            except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError) as exc:
                raise AssertionError(f"accepted {s!r}, which ast refuses: {exc}") from None
        assert mine == theirs, s

    check()


# --- the examples of the issue, one by one ------------------------------------------------
F4 = "{'descr': '<f4', 'fortran_order': False, 'shape': %s, }"


@pytest.mark.parametrize("shape,needle", [
    ("(4611686018427387904, 4)", "2**62"),                # int64 product wraps to 0
    ("(4611686018427387905, 4)", "2**62"),                # ... to 4: the 16-byte payload fits
    ("(4294967296, 4294967296)", "2**62"),
    ("(18446744073709551616,)", "2**62"),                 # 2**64 (OverflowError in np.prod)
    ("(-1, 4)", "bad shape"), ("(-4,)", "bad shape"),
    ("(2.0,)", "bad shape"), ("(True, 4)", "bad shape"), ("(1e300,)", "bad shape"),
    ("(1,) + (1,)", "corrupt .npy header"), ("(" + "1, " * 65 + ")", "65 dimensions"),
    ("(1 << 40,)", "corrupt .npy header"),
    ("(1099511627776,)", "truncated"),                    # 4 TiB claimed by a 144-byte file
], ids=lambda v: v if len(str(v)) < 24 else str(v)[:20])
def test_npy_crafted_shapes_exit2(tmp, shape, needle):
    path = write(tmp, "c.npy", npy_raw(F4 % shape, b"\x00" * 16))
    rc, out, err, warns, _ = calibrate(path)
    one_line_exit2(rc, out, err, warns, needle, "c.npy")
    assert inspect(path)[0] == 2


@pytest.mark.parametrize("header", [
    "{'descr': '<f4', 'fortran_order': False, 'shape': " + "(" * 200 + ")" * 200 + "}",  # RecursionError
    "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), 'x': (}",                   # SyntaxError
    "{'descr': '<f4', 'fortran_order': False, 'shape': ([],), }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }\x00",
    "{'descr': '\\d', 'fortran_order': False, 'shape': (4,), }",                           # SyntaxWarning
    "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), 'shape': (4,)}",
    "{'descr': [('a', '<f4', (2**40,))], 'fortran_order': False, 'shape': (4,), }",
    "{'descr': " + "[" * 50 + "]" * 50 + ", 'fortran_order': False, 'shape': (4,), }",
    "{{}: 1}", "__import__('os').system('echo pwned')",
], ids=["deep", "syntax", "list-dim", "nul", "bad-escape", "dup-key", "huge-subarray",
        "deep-descr", "unhashable", "code"])
def test_npy_mutated_headers_exit2(tmp, header):
    path = write(tmp, "c.npy", npy_raw(header, b"\x00" * 16))
    rc, out, err, warns, _ = calibrate(path)
    one_line_exit2(rc, out, err, warns, "c.npy")
    assert inspect(path)[0] == 2


def _st_raw(entry: str, payload=16):
    head = ('{"t": %s}' % entry).encode()
    return struct.pack("<Q", len(head)) + head + b"\x00" * payload


@pytest.mark.parametrize("entry,needle", [
    ('{"dtype": "F32", "shape": [4611686018427387905, 4], "data_offsets": [0, 16]}', "2**62"),
    ('{"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}', "2**62"),
    ('{"dtype": "F32", "shape": [-1, -4], "data_offsets": [0, 16]}', "bad entry"),
    ('{"dtype": "F32", "shape": [4.0], "data_offsets": [0, 16]}', "bad entry"),
    ('{"dtype": "F32", "shape": [true, 4], "data_offsets": [0, 16]}', "bad entry"),
    ('{"dtype": "F32", "shape": [1e300], "data_offsets": [0, 16]}', "bad entry"),
    ('{"dtype": "F32", "shape": [18446744073709551616], "data_offsets": [0, 16]}', "2**62"),
    ('{"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}', "data offsets"),       # end < begin
    ('{"dtype": "F32", "shape": [0], "data_offsets": [17, 17]}', "data offsets"),
    ('{"dtype": "F32", "shape": [4], "data_offsets": [0, Infinity]}', "Infinity"),
    ('{"dtype": "F32", "shape": [4], "data_offsets": [0, 1e400]}', "bad entry"),
    ('{"dtype": "F32", "shape": [4], "data_offsets": [0.0, 16.0]}', "bad entry"),
    ('{"dtype": "F32", "shape": [4], "data_offsets": [1000, 1016]}', "data offsets"),  # beyond
    ('{"dtype": "F32", "shape": [4], "data_offsets": [-16, 0]}', "data offsets"),
    ('{"dtype": "F32", "shape": [4], "data_offsets": [0, 16, 32]}', "bad entry"),
    ('{"dtype": "F32", "shape": [1099511627776], "data_offsets": [0, 4398046511104]}', "data offsets"),
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
    ('"just a string"', "bad entry"),
    ('{"dtype": "Q7", "shape": [4], "data_offsets": [0, 16]}', "not supported"),
], ids=lambda v: v[:28] if isinstance(v, str) else str(v))
def test_safetensors_crafted_exit2(tmp, entry, needle):
    path = write(tmp, "c.safetensors", _st_raw(entry))
    rc, out, err, warns, _ = calibrate(path)
    one_line_exit2(rc, out, err, warns, needle, "c.safetensors")
    assert inspect(path)[0] == 2


def test_safetensors_valid_equals_api(tmp):
    w = np.linspace(-2, 3, 12, dtype=np.float32).reshape(3, 4)
    path = write(tmp, "a.safetensors", st_bytes({"w": w, "d": w.astype(np.float64)}))
    rc, *_, doc = calibrate(path)
    assert rc == 0
    assert_correct(doc, [w, w])


def _set_u16(blob, pos, value):
    return blob[:pos] + struct.pack("<H", value) + blob[pos + 2:]


def _zip_fields(blob):
    """Offsets of the local and central headers of the first member."""
    return blob.find(b"PK\x03\x04"), blob.find(b"PK\x01\x02")


@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "deflated"])
def test_npz_bad_crc_exit2(tmp, compressed):
    """A flipped data byte: the CRC-32 no longer matches; np.load would read the member
    as is when it is stored (no check); the command refuses it, naming the member."""
    x = np.arange(64, dtype=np.float32)
    blob = bytearray(npz_bytes({"x": x}, compressed))
    local, central = _zip_fields(bytes(blob))
    crc_pos = central + 16
    blob[crc_pos] ^= 0x5A
    blob[local + 14] ^= 0x5A
    path = write(tmp, "a.npz", bytes(blob))
    for observer in ("min_max", "percentile"):
        rc, out, err, warns, _ = calibrate(path, "--observer", observer)
        one_line_exit2(rc, out, err, warns, "a.npz", "CRC")
    rc, out, err = inspect(path)
    assert rc == 2 and "CRC" in err


@pytest.mark.parametrize("blob", [b"", b"PK\x05\x06" + b"\x00" * 18, b"PK\x03\x04" + b"\x00" * 40,
                                  b"not a zip at all"], ids=["empty-file", "empty-archive",
                                                            "truncated", "garbage"])
def test_npz_empty_and_truncated_exit2(tmp, blob):
    path = write(tmp, "a.npz", blob)
    rc, out, err, warns, _ = calibrate(path)
    one_line_exit2(rc, out, err, warns, "a.npz")


def test_npz_unsupported_zip_version(tmp):
    """Version needed to extract 24.1 (NotImplementedError inside zipfile, raised while
    the central directory is read): the archive is refused in one line naming it."""
    x = np.arange(10, dtype=np.float32)
    for compressed in (True, False):
        blob = npz_bytes({"x": x}, compressed)
        local, central = _zip_fields(blob)
        blob = _set_u16(_set_u16(blob, central + 6, 241), local + 4, 241)
        path = write(tmp, "v.npz", blob)
        rc, out, err, warns, doc = calibrate(path)
        one_line_exit2(rc, out, err, warns, "v.npz", "24.1")
        assert inspect(path)[0] == 2


def test_npz_member_with_empty_name_exit2(tmp):
    """Found by the fuzzer: a zero name length in the central directory (zipfile's
    ZipInfo.is_dir raises IndexError on it)."""
    blob = npz_bytes({"0d": BASE_ARRAYS["0d"]}, True)
    _, central = _zip_fields(blob)
    blob = _set_u16(blob, central + 28, 0)
    path = write(tmp, "e.npz", blob)
    rc, out, err, warns, _ = calibrate(path)
    one_line_exit2(rc, out, err, warns, "e.npz")
    assert inspect(path)[0] == 2


def test_npz_zip_bomb_claim_exit2(tmp):
    """A deflated member claiming far more bytes than DEFLATE can expand to."""
    blob = npz_bytes({"x": np.zeros(4, np.float32)}, True)
    _, central = _zip_fields(blob)
    blob = blob[:central + 24] + struct.pack("<I", 0xFFFFFFF0) + blob[central + 28:]
    path = write(tmp, "a.npz", blob)
    rc, out, err, warns, _ = calibrate(path)
    one_line_exit2(rc, out, err, warns, "a.npz")


# --- inspect on malformed calibration JSON, --bins ----------------------------------------
GOOD_ENTRY = {"shape": [3], "dtype": "float32", "batches": 1, "range": [-1.0, 2.0],
              "scale": 0.0118, "zero_point": 85.0, "zero_point_int": -43, "code_dtype": "int8"}


@pytest.mark.parametrize("doc", [
    {"tensors": {"t": []}}, {"tensors": {"t": "x"}}, {"tensors": {"t": {}}},
    {"tensors": {"t": dict(GOOD_ENTRY, scale="0.1")}},
    {"tensors": {"t": dict(GOOD_ENTRY, scale=True)}},
    {"tensors": {"t": dict(GOOD_ENTRY, scale=1e39)}},
    {"tensors": {"t": dict(GOOD_ENTRY, zero_point=10 ** 400)}},
    {"tensors": {"t": dict(GOOD_ENTRY, range=[1.0])}},
    {"tensors": {"t": dict(GOOD_ENTRY, range=["a", "b"])}},
    {"tensors": {"t": dict(GOOD_ENTRY, range=5)}},
    {"tensors": {"t": dict(GOOD_ENTRY, shape=7)}},
    {"tensors": {"t": dict(GOOD_ENTRY, shape={"a": 1})}},
    {"tensors": []}, [], "text", None,
], ids=lambda d: json.dumps(d)[:40])
def test_inspect_malformed_calibration_json(tmp, doc):
    text = json.dumps(doc)
    rc, out, err = inspect(write(tmp, "c.json", text.encode()))
    assert rc == 2 and "c.json" in err and out == ""


@pytest.mark.parametrize("text", ["[" * 100000 + "]" * 100000,
                                  '{"tensors": {"t": {"scale": NaN, "zero_point": 0}}}',
                                  '{"tensors": {"t": {"scale": Infinity, "zero_point": 0}}}',
                                  "\xff\xfe{", '{"tensors": ' + "1" * 5000 + "}", ""],
                         ids=["deep", "nan", "inf", "not-utf8", "huge-int", "empty"])
def test_inspect_bad_json_text(tmp, text):
    rc, out, err = inspect(write(tmp, "c.json", text.encode("latin1")))
    assert rc == 2 and out == ""


def test_inspect_good_json_with_hostile_strings(tmp):
    doc = {"observer": "min_max\x1b[2J", "bits": 8, "symmetric": False,
           "tensors": {"evil\x1b]0;title\x07name": GOOD_ENTRY, "ok": dict(GOOD_ENTRY, range=None)},
           "errors": ["bad\x1b[31m", {"x": 1}]}
    rc, out, err = inspect(write(tmp, "c.json", json.dumps(doc).encode()))
    assert rc == 0 and err == ""
    assert "\\x1b" in out and "evil" in out


@pytest.mark.parametrize("bins", [str(10 ** 11), "0", "-3", "1025", "1e3"])
def test_inspect_bins_bounded(tmp, bins):
    path = write(tmp, "a.npy", npy_bytes(BASE_ARRAYS["f4"]))
    rc, out, err, warns = run_cli("inspect", path, "--bins", bins)
    assert rc == 2 and "Traceback" not in err and "--bins" in err
    if bins != "1e3":
        assert "1024" in err


# --- folders, FIFOs, symlinks, unreadable entries, names ----------------------------------
def _subprocess(args, timeout=20, prefix=()):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    # cwd = the folder the imported qatcore lives in: `python -m` puts the cwd first on
    # sys.path, and a clone's root holds the source qatcore/ without compiled kernels
    # when the package under test is the installed one (CI).
    return subprocess.run([*prefix, sys.executable, "-m", "qatcore", *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _one_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("qatcore: error: "), proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
@pytest.mark.parametrize("where", ["folder", "calibrate", "inspect", "inspect-json"])
def test_fifo_refused_never_opened(tmp, where):
    """A FIFO named b.npy (nobody writes to it: opening it would block forever)."""
    write(tmp, "a.npy", npy_bytes(BASE_ARRAYS["f4"]))
    fifo = os.path.join(tmp, "b.json" if where == "inspect-json" else "b.npy")
    os.mkfifo(fifo)
    args = {"folder": ["calibrate", tmp], "calibrate": ["calibrate", fifo],
            "inspect": ["inspect", fifo], "inspect-json": ["inspect", fifo]}[where]
    proc = _subprocess(args)
    _one_error(proc, "FIFO", os.path.basename(fifo))


def test_device_and_socket_refused(tmp):
    import socket

    os.symlink("/dev/zero", os.path.join(tmp, "z.npy"))
    rc, out, err, warns = run_cli("calibrate", os.path.join(tmp, "z.npy"))
    one_line_exit2(rc, out, err, warns, "character device")
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(os.path.join(tmp, "s.npy"))
        rc, out, err, warns = run_cli("calibrate", tmp)
        one_line_exit2(rc, out, err, warns, "socket")
    finally:
        s.close()


def test_output_json_onto_a_device_refused(tmp):
    path = write(tmp, "a.npy", npy_bytes(BASE_ARRAYS["f4"]))
    os.mkfifo(os.path.join(tmp, "o.json"))
    rc, out, err, warns = run_cli("calibrate", path, "--json", os.path.join(tmp, "o.json"))
    one_line_exit2(rc, out, err, warns, "not a regular file")
    assert stat.S_ISFIFO(os.stat(os.path.join(tmp, "o.json")).st_mode)


@pytest.mark.parametrize("where", ["given", "folder"])
def test_symlink_loop_reported_as_such(tmp, where):
    loop = os.path.join(tmp, "loop.npy")
    os.symlink("loop.npy", loop)
    rc, out, err, warns = run_cli("calibrate", loop if where == "given" else tmp)
    one_line_exit2(rc, out, err, warns, "symbolic links", "loop.npy")
    rc, out, err, warns = run_cli("inspect", loop)
    one_line_exit2(rc, out, err, warns, "symbolic links")


def test_folder_symlink_loop_is_an_error_and_links_are_followed(tmp):
    """A symlinked subfolder is searched (once, however many links lead to it); a link
    back to a folder that contains it is a loop, reported as such, not an endless walk."""
    os.makedirs(os.path.join(tmp, "top", "sub"))
    os.makedirs(os.path.join(tmp, "elsewhere"))
    write(os.path.join(tmp, "top", "sub"), "a.npy", npy_bytes(BASE_ARRAYS["f4"]))
    write(os.path.join(tmp, "elsewhere"), "b.npy", npy_bytes(BASE_ARRAYS["i2"]))
    os.symlink(os.path.join(tmp, "elsewhere"), os.path.join(tmp, "top", "sub", "link1"))
    os.symlink(os.path.join(tmp, "elsewhere"), os.path.join(tmp, "top", "link2"))
    rc, out, err, warns = run_cli("calibrate", os.path.join(tmp, "top"), "--json", "-", "--quiet")
    assert rc == 0, err
    assert len(json.loads(out)["tensors"]) == 2
    os.symlink("..", os.path.join(tmp, "top", "sub", "up"))
    rc, out, err, warns = run_cli("calibrate", os.path.join(tmp, "top"), "--quiet")
    one_line_exit2(rc, out, err, warns, "symlink loop", "up")


def _unprivileged():
    """A command prefix that runs without the root capabilities that bypass permissions,
    or None when the test cannot drop them."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    return (setpriv, "--bounding-set=-dac_override,-dac_read_search")


@pytest.mark.parametrize("what", ["subfolder", "file"])
def test_unreadable_entry_in_a_folder_is_an_error(tmp, what):
    prefix = _unprivileged()
    if prefix is None:
        pytest.skip("running as root without setpriv: permissions cannot be denied")
    write(tmp, "a.npy", npy_bytes(BASE_ARRAYS["f4"]))
    sub = os.path.join(tmp, "sub")
    os.mkdir(sub)
    inner = write(sub, "b.npy", npy_bytes(BASE_ARRAYS["f4"]))
    target = sub if what == "subfolder" else inner
    os.chmod(target, 0)
    try:
        proc = _subprocess(["calibrate", tmp, "--quiet"], prefix=prefix)
    finally:
        os.chmod(target, 0o755)
    _one_error(proc, "permission denied", "sub")


ESCAPE_NAMES = ["red\x1b[31m.npy", "bell\x07\x1b]0;t\x07.npy", "new\nline.npy", "csi\x9b2J.npy"]


@pytest.mark.parametrize("name", ESCAPE_NAMES, ids=["sgr", "osc", "newline", "c1-csi"])
def test_names_with_control_characters_are_escaped(tmp, name):
    bad = write(tmp, name, b"\x93NUMPY garbage")
    rc, out, err, warns = run_cli("calibrate", bad)
    one_line_exit2(rc, out, err, warns)
    assert not any(c in err for c in "\x1b\x07\x9b") and "\\" in err
    good = write(tmp, "ok" + name, npy_bytes(BASE_ARRAYS["f4"]))
    rc, out, err, warns = run_cli("calibrate", good)
    assert rc == 0 and not any(c in out + err for c in "\x1b\x07\x9b")
    rc, out, err, warns = run_cli("inspect", good)
    assert rc == 0 and not any(c in out + err for c in "\x1b\x07\x9b")


def test_member_and_key_names_escaped(tmp):
    x = np.array([1.0, np.nan], np.float32)
    z = write(tmp, "m.npz", npz_bytes({"r\x1b[31mx": x}))
    s = write(tmp, "m.safetensors", st_bytes({"k\x1b[2J": x}))
    for path in (z, s):
        rc, out, err, warns = run_cli("calibrate", path)
        one_line_exit2(rc, out, err, warns, "non-finite")
        assert "\\x1b" in err


# --- reading races: truncated while being read ----------------------------------------------
TRUNCATE_SCRIPT = r"""
import os, sys
import numpy as np
from qatcore.cli import readers as _io
path = sys.argv[1]
np.save(path, np.arange(1 << 20, dtype=np.float32))
ref = _io.open_tensors(path)[0]
chunks = ref.memory_chunks(1 << 16)
next(chunks)
os.truncate(path, 4096)           # another process truncates the file under us
try:
    for _ in chunks:
        pass
except _io.InputError as exc:
    print("refused:", exc)
else:
    raise SystemExit("read past the end without an error")
for read in (lambda: ref.array(), lambda: ref._read(1 << 19, 10), lambda: ref.value_at(1 << 19)):
    try:
        read()
    except _io.InputError as exc:
        print("refused:", exc)
    else:
        raise SystemExit("no error")
"""


def test_file_truncated_while_read_is_an_error_not_sigbus(tmp):
    """Data is read, never mapped: a file truncated meanwhile gives InputError (SIGBUS
    would kill the subprocess with -7)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", TRUNCATE_SCRIPT, os.path.join(tmp, "t.npy")],
                          env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert proc.stdout.count("refused:") == 4 and "ends" in proc.stdout


def test_truncated_after_preflight_through_the_command(tmp, monkeypatch):
    """The file shrinks between the header check and the read: one line, exit 2."""
    from qatcore.cli import calibrate as cli

    path = write(tmp, "t.npy", npy_bytes(np.arange(4096, dtype=np.float32)))
    real = cli._preflight

    def preflight_then_truncate(args):
        out = real(args)
        os.truncate(path, 200)
        return out

    monkeypatch.setattr(cli, "_preflight", preflight_then_truncate)
    for observer in ("min_max", "percentile"):
        rc, out, err, warns = run_cli("calibrate", path, "--observer", observer, "--quiet")
        one_line_exit2(rc, out, err, warns, "t.npy", "ends")
        write(tmp, "t.npy", npy_bytes(np.arange(4096, dtype=np.float32)))


# --- values beyond float32, non-finite results, atomic output --------------------------------
@pytest.mark.parametrize("observer,axis", [("min_max", None), ("moving_average", None),
                                           ("percentile", None), ("mean_std", None),
                                           ("min_max", "0"), ("min_max", "1")])
@pytest.mark.parametrize("container", ["npy", "npy-fortran", "npz-deflated", "safetensors"])
def test_float64_beyond_float32_range_named(tmp, observer, axis, container):
    """float64 1e39 is reported as out of float32 range with its value (exit 2), not as
    the "inf" it would become."""
    x = np.arange(12, dtype=np.float64).reshape(3, 4)
    x[2, 1] = -1e39
    if container == "npy":
        path = write(tmp, "d.npy", npy_bytes(x))
    elif container == "npy-fortran":
        path = write(tmp, "d.npy", npy_bytes(np.asfortranarray(x)))
    elif container == "npz-deflated":
        path = write(tmp, "d.npz", npz_bytes({"d": x}, True))
    else:
        path = write(tmp, "d.safetensors", st_bytes({"d": x}))
    extra = ["--observer", observer] + (["--batch-axis", axis] if axis else [])
    rc, out, err, warns, _ = calibrate(path, *extra)
    one_line_exit2(rc, out, err, warns, "-1e+39", "float32 range", "(2, 1)")


def test_true_inf_still_reported_as_non_finite(tmp):
    x = np.array([1.0, np.inf, 2.0])
    rc, out, err, warns, _ = calibrate(write(tmp, "i.npy", npy_bytes(x)))
    one_line_exit2(rc, out, err, warns, "non-finite value inf", "index 1")


@pytest.mark.parametrize("bits,symmetric", [(1, False), (2, True), (8, False)])
def test_json_never_holds_inf_or_nan(tmp, bits, symmetric):
    """bits=1 asymmetric over ±2e38 (the range overflowed the scale in float32): either a
    finite JSON (the library's scales are finite) or the tensor refused in one line with
    nothing written -- never a crash in json.dumps, never a half-written file."""
    x = np.array([-2e38, 2e38, 3.4e38, -3.4e38], np.float32)
    path = write(tmp, "w.npy", npy_bytes(x))
    rc, out, err, warns, doc = calibrate(path, "--bits", str(bits),
                                         "--symmetric" if symmetric else "--asymmetric")
    if rc == 0:
        entry = next(iter(doc["tensors"].values()))
        for key in ("scale", "zero_point", "deploy_scale"):
            assert np.isfinite(entry[key]), entry


def test_nonfinite_result_refused(tmp, monkeypatch):
    """Should an observer ever hand back a non-finite scale, the tensor is refused by name
    (strict JSON), the others still reported with --keep-going, and no file is written
    without it."""
    from qatcore.cli import _common as cli

    real = QuantObserver.compute_qparams
    a = write(tmp, "a.npy", npy_bytes(BASE_ARRAYS["f4"]))
    b = write(tmp, "b.npy", npy_bytes(BASE_ARRAYS["f4"] * 2))

    def inf_for_b(self, config):
        scale, zp = real(self, config)
        return (float("inf"), zp) if self.range()[1] > 2 else (scale, zp)

    monkeypatch.setattr(QuantObserver, "compute_qparams", inf_for_b)
    rc, out, err, warns = run_cli("calibrate", a, b, "--json", os.path.join(tmp, "o.json"), "--quiet")
    one_line_exit2(rc, out, err, warns, "b.npy", "scale is inf")
    assert not os.path.exists(os.path.join(tmp, "o.json"))
    rc, out, err, warns = run_cli("calibrate", a, b, "--keep-going", "--json", "-", "--quiet")
    assert rc == 2 and len(err.splitlines()) == 1
    doc = json.loads(out)
    assert list(doc["tensors"]) == [a] and "scale is inf" in doc["errors"][0]
    assert cli._dumps(doc)         # strict JSON


def test_no_partial_output_on_interrupt_or_error(tmp):
    """A failing run leaves neither the JSON nor a temporary file beside it, and an old
    JSON at the target stays as it was."""
    out_json = os.path.join(tmp, "out.json")
    with open(out_json, "w") as f:
        f.write("old")
    good = write(tmp, "a.npy", npy_bytes(BASE_ARRAYS["f4"]))
    bad = write(tmp, "b.npy", npy_bytes(np.array([np.nan], np.float32)))
    before = set(os.listdir(tmp))
    rc, out, err, warns = run_cli("calibrate", good, bad, "--json", out_json, "--quiet")
    assert rc == 2
    assert set(os.listdir(tmp)) == before
    with open(out_json) as f:
        assert f.read() == "old"


def test_calibrate_model_outputs_are_atomic(tmp):
    """calibrate-model on bad data: one line, exit 2, no JSON/QDQ (and no temp) left."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    model = write(tmp, "m.onnx", b"not an onnx model")
    data = write(tmp, "d.npy", npy_bytes(BASE_ARRAYS["f4"]))
    before = set(os.listdir(tmp))
    rc, out, err, warns = run_cli("calibrate-model", model, "--data", data, "--json",
                                  os.path.join(tmp, "r.json"), "--qdq", os.path.join(tmp, "q.onnx"))
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert set(os.listdir(tmp)) == before


def test_dask_workers_same_errors(tmp, monkeypatch):
    """On a dask.distributed cluster: float64 1e39 is the in-process message, and a file
    truncated after the preflight is one error line (workers read, never map)."""
    distributed = pytest.importorskip("distributed")
    from qatcore.cli import calibrate as cli

    x = np.arange(12, dtype=np.float64).reshape(3, 4)
    x[1, 2] = 1e39
    big = write(tmp, "big.npy", npy_bytes(x))
    cut = write(tmp, "cut.npy", npy_bytes(np.arange(4096, dtype=np.float32)))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        addr = client.scheduler.address
        for axis in ([], ["--batch-axis", "0"]):
            rc_in, out, err_in, warns = run_cli("calibrate", big, "-q", *axis)
            rc_dk, out, err_dk, warns = run_cli("calibrate", big, "-q", "--scheduler", addr, *axis)
            assert rc_in == rc_dk == 2 and err_in == err_dk and "1e+39" in err_dk, (err_in, err_dk)
        real = cli._preflight

        def preflight_then_truncate(args):
            out = real(args)
            os.truncate(cut, 1000)
            return out

        monkeypatch.setattr(cli, "_preflight", preflight_then_truncate)
        rc, out, err, warns = run_cli("calibrate", cut, "-q", "--scheduler", addr)
        assert rc == 2 and len(err.splitlines()) == 1 and "cut.npy" in err, err
        assert "Traceback" not in err


@pytest.mark.parametrize("where", ["file", "folder"])
def test_calibrate_model_data_bounded_before_np_load(tmp, where):
    """calibrate-model's data files are header-checked by qatcore._io first: a 144-byte
    .npy claiming 32 TiB is one line, exit 2 (np.load would try to allocate it)."""
    folder = os.path.join(tmp, "data")
    os.mkdir(folder)
    huge = write(folder, "huge.npy", npy_raw(F4 % "(8796093022208,)", b"\x00" * 64))
    model = write(tmp, "m.onnx", b"junk")
    rc, out, err, warns = run_cli("calibrate-model", model, "--data",
                                  huge if where == "file" else folder)
    assert rc == 2 and len(err.splitlines()) == 1 and "huge.npy" in err and "truncated" in err, err


@pytest.mark.parametrize("argv", [["calibrate", "x.npy", "--\x1b[2Jz"], ["calibrate", "x.npy", "--observer", "\x1b[2J"],
                                  ["\x1b[2J"], ["inspect", "x.npy", "--bins", "\x1b[2J"],
                                  ["calibrate", "\x1b]0;t\x07.npy"], ["inspect", "\x1b[2J.json"]])
def test_arguments_with_escape_sequences_are_escaped(argv):
    rc, out, err, warns = run_cli(*argv)
    assert rc == 2 and "\x1b" not in out + err and "\x07" not in err and "Traceback" not in err


@pytest.mark.parametrize("observer,axis", [("percentile", None), ("mean_std", None),
                                           ("min_max", 1), ("mean_std", 0)])
@pytest.mark.parametrize("heap", [True, False], ids=["heap-copy", "temp-file-copy"])
def test_float32_copies_equal_api(tmp, monkeypatch, observer, axis, heap):
    """Both homes of a whole-tensor float32 copy (process memory up to HEAP_COPY_BYTES, an
    unlinked temporary file beyond) give the API's result bit for bit, in every storage."""
    from qatcore.cli import observe as cli

    if not heap:
        monkeypatch.setattr(_io, "HEAP_COPY_BYTES", 0)
    monkeypatch.setattr(cli, "CHUNK_ELEMS", 1000)
    x = (np.random.default_rng(5).standard_normal((97, 53)) * 3).astype(np.float32)
    write(tmp, "c.npy", npy_bytes(x))
    write(tmp, "d.npy", npy_bytes(x.astype(np.float64)))
    write(tmp, "f.npy", npy_bytes(np.asfortranarray(x).astype(">f4")))
    write(tmp, "z.npz", npz_bytes({"c": x, "f": np.asfortranarray(x)}, True))
    write(tmp, "s.npz", npz_bytes({"f": np.asfortranarray(x)}, False))
    write(tmp, "t.safetensors", st_bytes({"d": x.astype(np.float64)}))
    extra = ["--observer", observer] + (["--batch-axis", str(axis)] if axis is not None else [])
    rc, out, err, warns = run_cli("calibrate", tmp, "--json", "-", "--quiet", *extra)
    assert rc == 0, err
    doc = json.loads(out)
    assert len(doc["tensors"]) == 7
    exp = expected_ranges([x], observer, axis)[0][1]
    for name, entry in doc["tensors"].items():
        assert tuple(entry["range"]) == exp, name


@pytest.mark.parametrize("descr", [",f4", "<,4", "<a4", "f4,", "(", "<f4" * 40, "|V-1", "<M8[bogus]"])
def test_npy_hostile_descr_one_line(tmp, descr):
    """Found by fuzzing: numpy's descr parsers raise SyntaxError (',f4') or warn ('a')."""
    path = write(tmp, "c.npy", npy_raw(F4.replace("'<f4'", repr(descr)) % "(4,)", b"\x00" * 16))
    rc, out, err, warns, _ = calibrate(path)
    one_line_exit2(rc, out, err, warns, "c.npy")
    assert inspect(path)[0] in (0, 2)
