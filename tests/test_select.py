"""select_order_stats: the percentile order statistics, bit-exact against the stable-sort
oracle (reference.order_stats_ref) on every kernel target and thread count."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qatcore import _backend
from reference import order_stats_ref, percentile_indices_ref

TARGETS = _backend.available_targets()
SIZES = [1, 2, 3, 17, 999, 1000, 1001, 65537, 2**20 + 3]
DISTS = [
    "normal", "uniform", "all_equal", "signed_zeros", "zeros60", "duplicates",
    "sorted", "reversed", "outliers", "denormals", "huge", "relu", "boundary_dups",
]
# (k_low, k_high) as functions of n: the Rust percentile indices and arbitrary pairs.
PAIRS = {
    "rust": percentile_indices_ref,
    "min_max": lambda n: (0, n - 1),
    "median_same": lambda n: (n // 2, n // 2),
    "thirds": lambda n: (n // 3, (2 * n) // 3),
    "near_ends": lambda n: (min(70, n - 1), max(n - 71, min(70, n - 1))),
    "both_low": lambda n: (n // 100, n // 50),
    "both_high": lambda n: (n - 1 - n // 50, n - 1 - n // 100),
}


def _kernel(target):
    return _backend.load(target).select_order_stats


@functools.lru_cache(maxsize=None)
def make(n, dist):
    """Read-only float32 test data, deterministic per (n, dist)."""
    rng = np.random.default_rng([n, DISTS.index(dist)])
    if dist == "normal":
        x = rng.standard_normal(n)
    elif dist == "uniform":
        x = rng.random(n)
    elif dist == "all_equal":
        x = np.full(n, -2.75)
    elif dist == "signed_zeros":   # only ±0.0 and a few ±1: every answer is a zero
        x = np.where(rng.random(n) < 0.5, -0.0, 0.0)
        x[rng.random(n) < 0.01] = 1.0
        x[rng.random(n) < 0.01] = -1.0
    elif dist == "zeros60":        # 60 % zeros of both signs, the rest normal
        z = rng.random(n) < 0.6
        x = np.where(z, np.where(rng.random(n) < 0.5, -0.0, 0.0), rng.standard_normal(n))
    elif dist == "duplicates":
        x = rng.integers(-3, 4, n).astype(np.float64)
    elif dist == "sorted":
        x = np.sort(rng.standard_normal(n))
    elif dist == "reversed":
        x = np.sort(rng.standard_normal(n))[::-1]
    elif dist == "outliers":       # ~N(0,1) with a few ±1e30 and near-max values
        x = rng.standard_normal(n)
        k = max(1, n // 1000)
        idx = rng.integers(0, n, 4 * k)
        x[idx] = np.tile([1e30, -1e30, 3.0e38, -3.0e38], k)
    elif dist == "denormals":
        x = rng.standard_normal(n) * 1e-40
        x[rng.random(n) < 0.2] = 0.0
    elif dist == "huge":
        x = rng.choice([-3.4e38, -1e38, 1e38, 3.4e38, 1.0, -1.0], n)
    elif dist == "relu":           # ReLU activations: the low percentile is a zero
        x = np.maximum(rng.standard_normal(n), 0.0)
    elif dist == "boundary_dups":  # many copies of the values at the percentile ranks
        x = rng.standard_normal(n)
        lo, hi = percentile_indices_ref(n)
        s = np.sort(x)
        x[rng.random(n) < 0.05] = s[lo]
        x[rng.random(n) < 0.05] = s[hi]
    else:
        raise AssertionError(dist)
    x = np.ascontiguousarray(x, dtype=np.float32)
    x.setflags(write=False)
    return x


@functools.lru_cache(maxsize=None)
def _stable_sorted(n, dist):
    # The same stable sort as reference.order_stats_ref, computed once per data set.
    return np.sort(make(n, dist), kind="stable")


def oracle(n, dist, k_low, k_high):
    if n <= 100_000:
        return order_stats_ref(make(n, dist), k_low, k_high)
    s = _stable_sorted(n, dist)
    return s[k_low], s[k_high]


def assert_bits(got, want):
    got = np.float32(got).view(np.uint32)
    want = np.float32(want).view(np.uint32)
    assert got == want, (np.uint32(got).view(np.float32), np.uint32(want).view(np.float32))


LARGE_PAIRS = ("rust", "median_same", "near_ends")


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("n_threads", [1, 2], ids=["t1", "t2"])
@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("n", SIZES, ids=[f"n{n}" for n in SIZES])
def test_matches_stable_sort(n, dist, n_threads, target):
    # Every rank pair of PAIRS on one data set (fewer, larger tests keep the file fast).
    x = make(n, dist)
    f = _kernel(target)
    failures = []
    for pair in (LARGE_PAIRS if n > 100_000 else PAIRS):
        k_low, k_high = PAIRS[pair](n)
        assert 0 <= k_low <= k_high < n
        lo, hi, bad = f(x, k_low, k_high, n_threads)
        want = np.float32(oracle(n, dist, k_low, k_high)).view(np.uint32)
        got = np.float32([lo, hi]).view(np.uint32)
        if bad != -1 or got.tolist() != want.tolist():
            failures.append((pair, k_low, k_high, bad, got.view(np.float32), want.view(np.float32)))
    assert not failures, failures


def test_oracle_keeps_zero_order():
    # The oracle itself: a stable sort keeps -0.0 / +0.0 in input order.
    x = np.array([0.0, -0.0, 1.0, -0.0, 0.0, -1.0], dtype=np.float32)
    s = [order_stats_ref(x, k, k)[0] for k in range(6)]
    assert np.array(s, dtype=np.float32).view(np.uint32).tolist() == np.array(
        [-1.0, 0.0, -0.0, -0.0, 0.0, 1.0], dtype=np.float32).view(np.uint32).tolist()


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("n", [6, 5000, 65537, 300_001], ids=lambda n: f"n{n}")
def test_zero_sign_every_rank_of_the_zero_run(n, target):
    # Negatives, then a run of zeros whose signs alternate irregularly, then positives,
    # shuffled: every rank inside the zero run must give that zero's sign.
    rng = np.random.default_rng(n)
    neg, zeros = n // 3, n // 3
    x = np.concatenate([-rng.random(neg) - 0.5,
                        np.where(rng.random(zeros) < 0.3, -0.0, 0.0),
                        rng.random(n - neg - zeros) + 0.5]).astype(np.float32)
    x = x[rng.permutation(n)]
    s = np.sort(x, kind="stable")
    f = _kernel(target)
    ks = sorted({neg, neg + 1, neg + zeros // 2, neg + zeros - 1, neg + zeros - 2})
    for k in ks:
        for nt in (1, 2):
            lo, hi, bad = f(x, k, k, nt)
            assert bad == -1
            assert_bits(lo, s[k])
            assert_bits(hi, s[k])
            lo, hi, bad = f(x, 0, k, nt)
            assert_bits(hi, s[k])
            lo, hi, bad = f(x, k, n - 1, nt)
            assert_bits(lo, s[k])


BAD_SIZES = [1, 2, 1000, 5000, 65537, 2**18 + 5]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("n_threads", [1, 2], ids=["t1", "t2"])
@pytest.mark.parametrize("where", ["first", "middle", "last", "two"])
@pytest.mark.parametrize("pair", ["rust", "median_same", "min_max"])
@pytest.mark.parametrize("n", BAD_SIZES, ids=lambda n: f"n{n}")
def test_first_bad_index(n, pair, where, n_threads, target):
    # NaN, +Inf and -Inf at the first / middle / last position, or two bad values (the
    # first is reported), on every path (top-t, sample bracket, radix).
    k_low, k_high = PAIRS[pair](n)
    for value in (np.nan, np.inf, -np.inf):
        x = make(n, "normal").copy()
        pos = {"first": 0, "middle": n // 2, "last": n - 1, "two": (n * 2) // 3}[where]
        x[pos] = value
        if where == "two" and n > 2:
            x[n - 1] = np.nan
        lo, hi, bad = _kernel(target)(x, k_low, k_high, n_threads)
        assert bad == pos, value


@pytest.mark.parametrize("target", TARGETS)
def test_read_only_input_unchanged(target):
    x = make(65537, "normal")
    before = x.copy()
    assert not x.flags.writeable
    for pair in PAIRS.values():
        _kernel(target)(x, *pair(x.size), 2)
    assert np.array_equal(x.view(np.uint32), before.view(np.uint32))


@pytest.mark.parametrize("target", TARGETS)
def test_one_and_two_threads_agree_bitwise(target):
    f = _kernel(target)
    for dist in ("normal", "zeros60", "signed_zeros", "outliers"):
        x = make(2**20 + 3, dist)
        for pair in ("rust", "thirds", "both_low"):
            k = PAIRS[pair](x.size)
            a = np.float32(f(x, *k, 1)[:2]).view(np.uint32)
            b = np.float32(f(x, *k, 2)[:2]).view(np.uint32)
            assert a.tolist() == b.tolist()


@pytest.mark.parametrize("target", TARGETS)
def test_periodic_data_against_the_sample_stride(target):
    # Data whose period matches the sampling stride must still come out exact (the
    # sample is jittered; a missed bracket falls back to radix select).
    n = 2**20
    f = _kernel(target)
    for period in (128, 8192, 1 << 15):
        x = np.tile(np.linspace(-1, 1, period, dtype=np.float32), n // period)
        x[:: period // 2] = 5.0
        s = np.sort(x, kind="stable")
        k = percentile_indices_ref(n)
        lo, hi, bad = f(x, *k, 1)
        assert bad == -1
        assert_bits(lo, s[k[0]])
        assert_bits(hi, s[k[1]])


finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False, allow_subnormal=True)
small_pool = st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-45, -1e-45, 3.4e38, -3.4e38, 0.5])


@st.composite
def array_and_ranks(draw):
    n = draw(st.integers(1, 300))
    elems = draw(st.sampled_from([finite_f32, small_pool]))
    x = draw(hnp.arrays(np.float32, n, elements=elems))
    a = draw(st.integers(0, n - 1))
    b = draw(st.integers(0, n - 1))
    return x, min(a, b), max(a, b)


@pytest.mark.parametrize("target", TARGETS)
@settings(max_examples=150, deadline=None)
@given(data=array_and_ranks())
def test_hypothesis_small_arrays(target, data):
    x, k_low, k_high = data
    lo, hi, bad = _kernel(target)(x, k_low, k_high, 1)
    want_lo, want_hi = order_stats_ref(x, k_low, k_high)
    assert bad == -1
    assert_bits(lo, want_lo)
    assert_bits(hi, want_hi)
    assert lo <= hi


@pytest.mark.parametrize("target", TARGETS)
@settings(max_examples=25, deadline=None)
@given(n=st.integers(16_384, 200_000), seed=st.integers(0, 2**32 - 1),
       levels=st.integers(1, 50), q=st.floats(0, 1))
def test_hypothesis_sampled_path_with_duplicates(target, n, seed, levels, q):
    # Few distinct values (heavy ties at every bracket) on the sampling path.
    rng = np.random.default_rng(seed)
    x = (rng.integers(0, levels, n) - levels // 2).astype(np.float32)
    x[rng.random(n) < 0.1] = -0.0
    k_low = int(q * (n - 1))
    k_high = max(k_low, percentile_indices_ref(n)[1])
    lo, hi, bad = _kernel(target)(x, k_low, k_high, 2)
    want_lo, want_hi = order_stats_ref(x, k_low, k_high)
    assert bad == -1
    assert_bits(lo, want_lo)
    assert_bits(hi, want_hi)


def _path_kernel(target):
    return _backend.load(target).select_order_stats_path


PATH_SIZES = [1, 3, 999, 5000, 65537, 2**18 + 1]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("path", ["radix", "topt", "sample", "sample_tiny"])
@pytest.mark.parametrize("n", PATH_SIZES, ids=lambda n: f"n{n}")
def test_each_path_matches_stable_sort(n, path, target):
    # Force each path (the radix fallback, top-t, the sample bracket, and the sample path
    # with one-element candidate buffers = the overflow fallback) on every distribution.
    f = _path_kernel(target)
    failures = []
    for dist in DISTS:
        x = make(n, dist)
        for pair in (LARGE_PAIRS if n > 100_000 else PAIRS):
            k_low, k_high = PAIRS[pair](n)
            if path == "topt" and not (k_low < 64 and n - k_high <= 64):
                continue
            for nt in (1, 2):
                lo, hi, bad, used = f(x, k_low, k_high, path, nt)
                want = np.float32(oracle(n, dist, k_low, k_high)).view(np.uint32)
                got = np.float32([lo, hi]).view(np.uint32)
                if bad != -1 or got.tolist() != want.tolist():
                    failures.append((dist, pair, nt, used, got.view(np.float32),
                                     want.view(np.float32)))
                if path in ("radix", "topt"):
                    assert used == path
                if path == "sample_tiny" and used == "sample":
                    # only a plan without gathering (single-value brackets) can succeed
                    assert dist in ("all_equal", "signed_zeros", "relu", "duplicates",
                                    "huge", "zeros60", "denormals"), (dist, pair)
    assert not failures, failures


@pytest.mark.parametrize("target", TARGETS)
def test_paths_taken_for_percentiles(target):
    # Not a timing test: the fast paths must actually answer the usual cases.
    f = _path_kernel(target)
    x = make(1000, "normal")
    assert f(x, *percentile_indices_ref(1000))[3] == "topt"
    for dist in ("normal", "uniform", "outliers", "relu", "zeros60", "all_equal",
                 "sorted", "reversed"):
        x = make(2**20 + 3, dist)
        for nt in (1, 2):
            assert f(x, *percentile_indices_ref(x.size), "auto", nt)[3] == "sample", dist
    # ranks away from the ends: one bracket (merged) or two ranges, still no radix
    x = make(2**20 + 3, "normal")
    for pair in ("median_same", "thirds", "both_low", "both_high", "near_ends"):
        for nt in (1, 2):
            assert f(x, *PAIRS[pair](x.size), "auto", nt)[3] == "sample", pair


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("path", ["radix", "sample", "sample_tiny", "topt"])
def test_first_bad_on_each_path(path, target):
    f = _path_kernel(target)
    n = 65537
    k = (3, n - 5) if path == "topt" else percentile_indices_ref(n)
    for pos in (0, 1, n // 2, n - 2, n - 1):
        for value in (np.nan, np.inf, -np.inf):
            x = make(n, "normal").copy()
            x[pos] = value
            assert f(x, *k, path)[2] == pos


@pytest.mark.parametrize("target", TARGETS)
def test_rank_arguments_checked(target):
    # The facade validates; the kernel still refuses ranks that would read out of bounds.
    f = _kernel(target)
    x = make(17, "normal")
    for k_low, k_high in ((-1, 3), (3, 17), (5, 4)):
        with pytest.raises(ValueError):
            f(x, k_low, k_high, 1)
    with pytest.raises(ValueError):
        f(np.zeros(0, np.float32), 0, 0, 1)
