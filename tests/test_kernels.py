"""Oracle tests for the reduction and element-wise kernels (`_k_reduce.pxi`,
`_k_elementwise.pxi`) against the plain-numpy references in `tests/reference.py`.

Every kernel target this CPU can run is tested, with 1 and 2 threads, over sizes that
hit the vector tails and the block and thread splits.  Float results are compared bit
for bit (`.view(np.uint32)`); mean/std within 2e-6 relative of an exact float64 figure.
"""

import numpy as np
import pytest

from qatcore import _backend

from reference import (
    dequantize_ref,
    fake_quantize_ref,
    first_nonfinite_ref,
    mean_std_ref,
    minmax_ref,
    quantize_ref,
)

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")   # the oracles' NaN/Inf

TARGETS = _backend.available_targets()
SIZES = [0, 1, 31, 32, 33, 2047, 2049, (1 << 20) + 7]
THREADS = [1, 2]
F32 = np.float32


@pytest.fixture(params=TARGETS)
def k(request):
    """The kernel module of one CPU target."""
    return _backend.load(request.param)


def bits(a):
    return np.asarray(a, dtype=np.float32).view(np.uint32)


def data(n, seed=0, outliers=True):
    """float32 ~N(0, 1) with a few outliers."""
    rng = np.random.default_rng(seed + n)
    x = rng.standard_normal(n).astype(np.float32)
    if outliers and n > 10:
        idx = rng.integers(0, n, size=max(1, n // 10000))
        x[idx] *= F32(40)
    return x


# --- minmax ---------------------------------------------------------------------------

@pytest.mark.parametrize("nt", THREADS, ids=lambda t: f"t{t}")
@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"n{n}")
def test_minmax_matches_reference(k, n, nt):
    x = data(n)
    before = x.copy()
    lo, hi, bad = k.minmax(x, nt)
    rlo, rhi, rbad = minmax_ref(x)
    assert bad == rbad == -1
    assert bits(lo) == bits(rlo) and bits(hi) == bits(rhi)
    assert bits(x).tobytes() == bits(before).tobytes()


@pytest.mark.parametrize("nt", THREADS, ids=lambda t: f"t{t}")
@pytest.mark.parametrize("n", [33, 2049, 300_007], ids=lambda n: f"n{n}")
def test_minmax_extremes_anywhere(k, n, nt):
    """The extremes are found at the first, the last and a tail position."""
    for pos in (0, n - 1, n // 2, n - 3):
        x = data(n, seed=pos)
        x[pos] = F32(-1e30)
        x[(pos + 1) % n] = F32(3e38)
        lo, hi, bad = k.minmax(x, nt)
        assert (lo, hi, bad) == (F32(-1e30), F32(3e38), -1)


@pytest.mark.parametrize("nt", THREADS, ids=lambda t: f"t{t}")
def test_minmax_huge_values_do_not_look_non_finite(k, nt):
    """Sums of huge finite values overflow; that must not be reported as non-finite."""
    x = np.full((1 << 18) + 3, F32(3.0e38))
    x[::2] = F32(-3.3e38)
    lo, hi, bad = k.minmax(x, nt)
    assert (lo, hi, bad) == (F32(-3.3e38), F32(3.0e38), -1)


def test_minmax_signed_zeros(k):
    x = np.array([0.0, -0.0, 0.0, -0.0] * 20, dtype=np.float32)
    lo, hi, bad = k.minmax(x, 1)
    assert lo == 0.0 and hi == 0.0 and bad == -1      # which zero wins is unspecified


NONFINITE_CASES = [
    # (n, positions, values)
    (1, [0], [np.nan]),
    (33, [32], [np.inf]),
    (2049, [0, 5], [-np.inf, np.nan]),
    (2049, [2048], [np.nan]),
    (4096, [2047, 2048], [np.nan, np.inf]),
    (300_007, [299_999], [np.inf]),           # second thread's half
    (300_007, [150_100, 7], [np.nan, -np.inf]),  # the earlier index wins
    ((1 << 20) + 7, [(1 << 20) + 6], [-np.inf]),
]


@pytest.mark.parametrize("nt", THREADS, ids=lambda t: f"t{t}")
@pytest.mark.parametrize("case", NONFINITE_CASES, ids=lambda c: f"n{c[0]}@{c[1]}")
def test_minmax_first_nonfinite_index(k, case, nt):
    n, positions, values = case
    x = data(n)
    for p, v in zip(positions, values):
        x[p] = v
    assert k.minmax(x, nt)[2] == first_nonfinite_ref(x) == min(positions)


# --- mean_std -------------------------------------------------------------------------

def _assert_mean_std_close(x, mean, std):
    rmean, rstd = mean_std_ref(x)
    assert abs(mean - rmean) <= 1e-6 * (abs(rmean) + rstd)
    assert abs(std - rstd) <= 2e-6 * rstd + 1e-7 * abs(rmean)
    # the observer's range, relative to its magnitude (the DESIGN.md contract)
    for sign in (-1, 1):
        exact = rmean + sign * 3 * rstd
        got = mean + sign * 3 * std
        assert abs(got - exact) <= 2e-6 * max(abs(rmean) + 3 * rstd, 1e-30)


@pytest.mark.parametrize("nt", THREADS, ids=lambda t: f"t{t}")
@pytest.mark.parametrize("n", SIZES[1:], ids=lambda n: f"n{n}")
def test_mean_std_matches_reference(k, n, nt):
    x = data(n)
    mean, std, bad = k.mean_std(x, nt)
    assert bad == -1
    _assert_mean_std_close(x, mean, std)


def test_mean_std_empty(k):
    mean, std, bad = k.mean_std(np.empty(0, np.float32), 1)
    assert np.isnan(mean) and np.isnan(std) and bad == -1


@pytest.mark.parametrize("nt", THREADS, ids=lambda t: f"t{t}")
@pytest.mark.parametrize(
    "kind", ["offset1e3", "offset1e6", "tiny", "ramp", "constant", "outliers", "halves"]
)
def test_mean_std_hard_data(k, kind, nt):
    n = 300_007
    rng = np.random.default_rng(7)
    if kind == "offset1e3":
        x = (F32(1e3) + rng.standard_normal(n)).astype(np.float32)
    elif kind == "offset1e6":
        x = (F32(1e6) + F32(0.25) * rng.standard_normal(n)).astype(np.float32)
    elif kind == "tiny":
        x = (rng.standard_normal(n) * 1e-30).astype(np.float32)
    elif kind == "ramp":
        x = np.linspace(-5e4, 1e5, n, dtype=np.float32)
    elif kind == "constant":
        x = np.full(n, F32(0.1))
    elif kind == "outliers":
        x = rng.standard_normal(n).astype(np.float32)
        x[::997] = F32(1e6)
    else:       # first half 0, second half 1e5: block means far from the running mean
        x = np.zeros(n, np.float32)
        x[n // 2:] = F32(1e5)
    mean, std, bad = k.mean_std(x, nt)
    assert bad == -1
    _assert_mean_std_close(x, mean, std)


@pytest.mark.parametrize("nt", THREADS, ids=lambda t: f"t{t}")
def test_mean_std_huge_values(k, nt):
    """float32 partial sums would overflow: the result must still be finite and right."""
    n = 70_001
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(n) * 1e37).astype(np.float32)
    x[::3] = F32(3.4e38)
    mean, std, bad = k.mean_std(x, nt)
    assert bad == -1 and np.isfinite(mean) and np.isfinite(std)
    _assert_mean_std_close(x, mean, std)


@pytest.mark.parametrize("nt", THREADS, ids=lambda t: f"t{t}")
@pytest.mark.parametrize("case", NONFINITE_CASES, ids=lambda c: f"n{c[0]}@{c[1]}")
def test_mean_std_first_nonfinite_index(k, case, nt):
    n, positions, values = case
    x = data(n)
    for p, v in zip(positions, values):
        x[p] = v
    assert k.mean_std(x, nt)[2] == min(positions)


# --- fake_quantize --------------------------------------------------------------------

# (name, scale, zero_point, qmin, qmax)
QPARAMS = [
    ("int8", 0.03125, 0.0, -127.0, 127.0),
    ("int8_odd_scale", 0.0371, 0.0, -127.0, 127.0),
    ("int4", 0.4, 0.0, -7.0, 7.0),
    ("uint8", 0.0274, 131.37, 0.0, 255.0),
    ("uint8_zp0", 0.02, 0.0, 0.0, 255.0),
    ("uint4_negzp", 0.5, -3.5, 0.0, 15.0),
    ("int16", 1e-4, 0.0, -32767.0, 32767.0),
]


def special_data(n, scale, zero_point):
    """~N(0, 1) plus ties at .5 (in units of scale), ±0.0, huge and tiny values."""
    x = data(n) * F32(3)
    if n == 0:
        return x
    rng = np.random.default_rng(n)
    m = max(1, n // 5)
    idx = rng.integers(0, n, size=m)
    # x / scale + zp lands exactly on k + 0.5 when scale is a power of two
    x[idx] = ((rng.integers(-300, 300, size=m) + F32(0.5) - F32(zero_point)) * F32(scale)).astype(np.float32)
    special = np.array([0.0, -0.0, 3.4e38, -3.4e38, 1e-45, -1e-45, 1e-38, -1e-38,
                        0.5, -0.5, 1.5, -1.5, 2.5, -2.5], dtype=np.float32) * F32(scale)
    special[2:4] = (3.4e38, -3.4e38)
    special[:2] = (0.0, -0.0)
    pos = rng.integers(0, n, size=special.size)
    x[pos] = special
    return x


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("nt", THREADS, ids=lambda t: f"t{t}")
@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"n{n}")
@pytest.mark.parametrize("qp", QPARAMS[:1] + QPARAMS[3:4], ids=lambda q: q[0])
def test_fake_quantize_sizes(k, qp, n, nt, masked):
    _, scale, zp, qmin, qmax = qp
    x = special_data(n, scale, zp)
    before = x.copy()
    out = np.full(n, F32(7))
    mask = np.full(n, 9, np.uint8) if masked else None
    k.fake_quantize(x, out, scale, zp, qmin, qmax, mask, nt)
    ref, rmask = fake_quantize_ref(x, scale, zp, qmin, qmax)
    np.testing.assert_array_equal(bits(out), bits(ref))
    if masked:
        np.testing.assert_array_equal(mask, rmask.astype(np.uint8))
    np.testing.assert_array_equal(bits(x), bits(before))


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("qp", QPARAMS, ids=lambda q: q[0])
def test_fake_quantize_qparams(k, qp, masked):
    _, scale, zp, qmin, qmax = qp
    n = 4099
    x = special_data(n, scale, zp)
    x[::7] = np.linspace(-300, 300, x[::7].size, dtype=np.float32) * F32(scale)
    out = np.empty(n, np.float32)
    mask = np.empty(n, np.uint8) if masked else None
    k.fake_quantize(x, out, scale, zp, qmin, qmax, mask, 1)
    ref, rmask = fake_quantize_ref(x, scale, zp, qmin, qmax)
    np.testing.assert_array_equal(bits(out), bits(ref))
    if masked:
        np.testing.assert_array_equal(mask, rmask.astype(np.uint8))


@pytest.mark.parametrize("qp", QPARAMS[:1] + QPARAMS[3:4], ids=lambda q: q[0])
def test_fake_quantize_every_tie(k, qp):
    """Every tie k + 0.5 in and around the code range, both signs."""
    _, scale, zp, qmin, qmax = qp
    v = np.arange(-400, 400, dtype=np.float32) + F32(0.5)
    u = np.concatenate([v, np.nextafter(v, F32(0)), np.nextafter(v, F32(1000)), -v])
    x = ((u - F32(zp)) * F32(scale)).astype(np.float32)
    out = np.empty_like(x)
    k.fake_quantize(x, out, scale, zp, qmin, qmax, None, 1)
    np.testing.assert_array_equal(bits(out), bits(fake_quantize_ref(x, scale, zp, qmin, qmax)[0]))


@pytest.mark.parametrize("nt", THREADS, ids=lambda t: f"t{t}")
@pytest.mark.parametrize("qp", QPARAMS[:1] + QPARAMS[3:4], ids=lambda q: q[0])
def test_fake_quantize_nonfinite_frozen_semantics(k, qp, nt):
    """NaN -> NaN (mask 0), +Inf -> qmax end, -Inf -> qmin end (Rust forward)."""
    _, scale, zp, qmin, qmax = qp
    n = 300_007
    x = data(n)
    pos = [0, 1, 31, 2048, 150_000, n - 1]
    x[pos] = [np.nan, np.inf, -np.inf, np.nan, -np.inf, np.inf]
    out = np.empty(n, np.float32)
    mask = np.empty(n, np.uint8)
    k.fake_quantize(x, out, scale, zp, qmin, qmax, mask, nt)
    ref, rmask = fake_quantize_ref(x, scale, zp, qmin, qmax)
    assert np.isnan(out[[0, 2048]]).all()
    hi = (F32(qmax) - F32(zp)) * F32(scale)
    lo = (F32(qmin) - F32(zp)) * F32(scale)
    assert out[1] == hi and out[n - 1] == hi and out[31] == lo and out[150_000] == lo
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    fin = ~np.isnan(ref)
    np.testing.assert_array_equal(bits(out[fin]), bits(ref[fin]))
    np.testing.assert_array_equal(mask, rmask.astype(np.uint8))


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("nt", THREADS, ids=lambda t: f"t{t}")
@pytest.mark.parametrize("n", [1, 33, 47, 48, 2049, 300_007], ids=lambda n: f"n{n}")
@pytest.mark.parametrize("zp", [0.0, 2.5], ids=["zp0", "zp2.5"])
def test_fake_quantize_in_place(k, n, nt, zp, masked):
    x = special_data(n, 0.0371, zp)
    ref, rmask = fake_quantize_ref(x, 0.0371, zp, -127.0, 127.0)
    mask = np.full(n, 7, np.uint8) if masked else None
    k.fake_quantize(x, x, 0.0371, zp, -127.0, 127.0, mask, nt)
    np.testing.assert_array_equal(bits(x), bits(ref))
    if masked:
        np.testing.assert_array_equal(mask, rmask.astype(np.uint8))


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("offset", [0, 1, 3, 7], ids=lambda o: f"off{o}")
def test_fake_quantize_large_any_alignment(k, offset, masked):
    """Arrays beyond the caches take the streaming-store path, whose head depends on
    the output's alignment; in place too."""
    n = (1 << 21) + 37
    zp = 0.0 if offset % 2 == 0 else 3.5
    buf = np.zeros(n + 8, np.float32)
    x = special_data(n, 0.0371, zp)
    ref, rmask = fake_quantize_ref(x, 0.0371, zp, -127.0, 127.0)
    out = buf[offset:offset + n]
    mask = np.full(n, 9, np.uint8) if masked else None
    nt = 2 if offset == 3 else 1
    k.fake_quantize(x, out, 0.0371, zp, -127.0, 127.0, mask, nt)
    np.testing.assert_array_equal(bits(out), bits(ref))
    if masked:
        np.testing.assert_array_equal(mask, rmask.astype(np.uint8))
    if offset == 1:                     # in place, misaligned
        y = buf[offset:offset + n]
        y[:] = x
        k.fake_quantize(y, y, 0.0371, zp, -127.0, 127.0, mask, 1)
        np.testing.assert_array_equal(bits(y), bits(ref))


def test_fake_quantize_signed_zero(k):
    """-0.0 / s + 0.0 is +0.0 in Rust; a tiny negative rounds to -0.0: both kept."""
    x = np.array([-0.0, 0.0, -1e-3, 1e-3, -0.0], dtype=np.float32)
    for zp, qmin, qmax in [(0.0, -127.0, 127.0), (0.0, 0.0, 255.0), (-0.0, -7.0, 7.0)]:
        out = np.empty_like(x)
        k.fake_quantize(x, out, 0.5, zp, qmin, qmax, None, 1)
        np.testing.assert_array_equal(bits(out), bits(fake_quantize_ref(x, 0.5, zp, qmin, qmax)[0]))


# --- quantize / dequantize ------------------------------------------------------------

CODE_CASES = [
    # (dtype, scale, zero_point, qmin, qmax)
    (np.int8, 0.03125, 0.0, -127.0, 127.0),
    (np.int8, 0.4, 0.0, -7.0, 7.0),
    (np.uint8, 0.0274, 131.37, 0.0, 255.0),
    (np.int16, 1e-4, 0.0, -32767.0, 32767.0),
    (np.uint16, 1e-4, 30000.5, 0.0, 65535.0),
]


@pytest.mark.parametrize("nt", THREADS, ids=lambda t: f"t{t}")
@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"n{n}")
@pytest.mark.parametrize("case", CODE_CASES, ids=lambda c: np.dtype(c[0]).name + f"_{c[4]:g}")
def test_quantize_matches_reference(k, case, n, nt):
    if n > 100_000 and case[0] not in (np.int8, np.uint8):
        pytest.skip("large sizes are covered by the 8-bit codes")
    dtype, scale, zp, qmin, qmax = case
    x = special_data(n, scale, zp)
    if n:
        x[0] = np.inf
        x[-1] = -np.inf
    out = np.empty(n, dtype)
    k.quantize(x, out, scale, zp, qmin, qmax, nt)
    np.testing.assert_array_equal(out, quantize_ref(x, scale, zp, qmin, qmax, dtype))


def test_quantize_nan_gives_zero(k):
    """Rust's saturating `as` turns NaN into 0."""
    x = np.array([np.nan, 1.0, np.nan] * 11, dtype=np.float32)
    for dtype in (np.int8, np.uint8, np.int16, np.uint16):
        out = np.full(x.size, 5, dtype)
        k.quantize(x, out, 0.5, 0.0, -100.0, 100.0, 1)
        assert (out[0::3] == 0).all() and (out[1::3] == 2).all()


@pytest.mark.parametrize("nt", THREADS, ids=lambda t: f"t{t}")
@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"n{n}")
@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16],
                         ids=lambda d: np.dtype(d).name)
def test_dequantize_matches_reference(k, dtype, n, nt):
    if n > 100_000 and dtype not in (np.int8, np.uint8):
        pytest.skip("large sizes are covered by the 8-bit codes")
    info = np.iinfo(dtype)
    q = np.random.default_rng(n).integers(info.min, info.max, size=n, endpoint=True).astype(dtype)
    for scale, zp in [(0.0371, 0.0), (0.0274, 131.37), (3.0, -0.5)]:
        out = np.empty(n, np.float32)
        k.dequantize(q, out, scale, zp, nt)
        np.testing.assert_array_equal(bits(out), bits(dequantize_ref(q, scale, zp)))


def test_read_only_inputs(k):
    x = data(5000)
    x.setflags(write=False)
    assert k.minmax(x, 1)[2] == -1
    assert k.mean_std(x, 1)[2] == -1
    out = np.empty_like(x)
    k.fake_quantize(x, out, 0.1, 0.0, -127.0, 127.0, None, 1)
    np.testing.assert_array_equal(bits(out), bits(fake_quantize_ref(x, 0.1, 0.0, -127.0, 127.0)[0]))
    q = np.zeros(5000, np.int8)
    q.setflags(write=False)
    k.dequantize(q, out, 0.1, 0.0, 1)
    assert (out == 0).all()
