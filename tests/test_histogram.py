"""HistogramObserver / ChannelObserver against the plain-numpy oracles in reference.py
and against onnxruntime's own HistogramCollector."""

import contextlib
import io
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from qatcore import ChannelObserver, FakeQuantConfig, HistogramObserver, QuantObserver
from qatcore import histogram as H
from qatcore import _backend

import reference as ref

BINS = 256        # small grids keep the one-stop-at-a-time oracles fast


def _data(kind, n=20_000, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "normal":
        x = rng.standard_normal(n) * 1.5 + 0.3
    elif kind == "heavy":
        x = rng.standard_t(3, n)
    elif kind == "relu":
        x = np.maximum(rng.standard_normal(n), 0) * 2.0
    elif kind == "outliers":
        x = rng.standard_normal(n)
        x[:20] *= 30
    else:
        raise AssertionError(kind)
    return x.astype(np.float32)


KINDS = ["normal", "heavy", "relu", "outliers"]


# --- the histogram itself -----------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_histogram_matches_direct_binning(kind):
    x = _data(kind)
    obs = HistogramObserver("percentile", bins=BINS)
    obs.observe(x)
    counts, w = ref.sign_magnitude_histogram_ref(x, BINS)
    np.testing.assert_array_equal(obs._counts, counts)
    assert obs.bin_width == w
    assert obs.count == x.size


def test_histogram_edge_values():
    # ±0.0, exact powers of two, denormals, the float32 extremes
    x = np.array([0.0, -0.0, 1.0, -1.0, 0.5, 2.0 ** -140, -(2.0 ** -149), 3.4e38, -3.4e38,
                  np.finfo(np.float32).max], dtype=np.float32)
    obs = HistogramObserver("percentile", bins=64)
    for v in x:
        obs.observe(np.array([v], dtype=np.float32))
    counts, w = ref.sign_magnitude_histogram_ref(x, 64)
    np.testing.assert_array_equal(obs._counts, counts)
    assert obs.bin_width == w


def test_all_zero_then_data():
    obs = HistogramObserver("entropy", bins=BINS)
    obs.observe(np.zeros(100, np.float32))
    assert obs.range() == (0.0, 0.0)
    assert obs.compute_qparams(FakeQuantConfig.int8()) == (1.0, 0.0)
    x = _data("normal")
    obs.observe(x)
    counts, _ = ref.sign_magnitude_histogram_ref(np.concatenate([np.zeros(100, np.float32), x]), BINS)
    np.testing.assert_array_equal(obs._counts, counts)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2 ** 32 - 1), st.lists(st.integers(0, 3000), min_size=1, max_size=6),
       st.floats(1e-3, 1e3))
def test_split_independent_and_exact_merge(seed, cuts, spread):
    rng = np.random.default_rng(seed)
    x = (rng.standard_t(4, 3000) * spread).astype(np.float32)
    x[rng.integers(0, 3000, 30)] = 0.0
    whole = HistogramObserver("entropy", bins=64, start_bin=32)
    whole.observe(x)
    pieces = np.split(x, sorted(cuts))
    streamed = HistogramObserver("entropy", bins=64, start_bin=32)
    for p in pieces:
        streamed.observe(p)
    np.testing.assert_array_equal(streamed._counts, whole._counts)
    # merge in a random order of per-piece observers
    parts = []
    for p in pieces:
        o = HistogramObserver("entropy", bins=64, start_bin=32)
        o.observe(p)
        parts.append(o)
    rng.shuffle(parts)
    merged = HistogramObserver("entropy", bins=64, start_bin=32)
    for o in parts:
        merged.merge(o)
    np.testing.assert_array_equal(merged._counts, whole._counts)
    assert merged.bin_width == whole.bin_width and merged.count == whole.count
    assert merged.range() == streamed.range() == whole.range()


def test_every_kernel_target_fills_the_same_histogram():
    x = _data("heavy")
    results = []
    for target in _backend.available_targets():
        counts = np.zeros(2 * 512, np.int64)
        _backend.load(target).hist_fill(x, 512 / 64.0, counts)
        results.append(counts)
    for counts in results[1:]:
        np.testing.assert_array_equal(counts, results[0])


# --- the algorithms, against the one-stop-at-a-time oracles ---------------------------------
def _abs_hist(kind, bins=BINS):
    obs = HistogramObserver("entropy", bins=bins)
    obs.observe(_data(kind))
    return obs


@pytest.mark.parametrize("kind", KINDS)
def test_entropy_modelopt_vs_reference(kind):
    hist, edges = _abs_hist(kind).histogram(absolute=True)
    got = H.entropy_amax_modelopt(hist, edges)
    want, kl = ref.entropy_amax_modelopt_ref(hist, edges)
    if got != want:      # a tie to rounding: both stops must be equally good
        i_got = int(round(got / edges[1]))
        assert math.isclose(kl[i_got], min(kl.values()), rel_tol=1e-9), (got, want)


@pytest.mark.parametrize("kind", KINDS)
def test_entropy_onnxruntime_vs_reference(kind):
    obs = _abs_hist(kind, bins=128)
    hist, edges = obs.histogram()
    got = H.entropy_threshold_onnxruntime(hist, edges, obs._min, obs._max)
    want, kl = ref.entropy_threshold_onnxruntime_ref(hist, edges, obs._min, obs._max)
    if got != want:      # onnxruntime's KL is float32: stops within float32 precision tie
        zero = hist.size // 2
        same = [i for i in kl
                if (max(edges[zero - i], obs._min), min(edges[min(zero + i + 1, hist.size)], obs._max)) == got]
        assert same and math.isclose(min(kl[i] for i in same), min(kl.values()), rel_tol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_mse_modelopt_vs_reference(kind):
    hist, edges = _abs_hist(kind).histogram(absolute=True)
    got = H.mse_amax_modelopt(hist, edges)
    want, mses = ref.mse_amax_modelopt_ref(hist, edges)
    assert got == want


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("p", [90.0, 99.9, 99.99, 99.999, 100.0])
@pytest.mark.parametrize("symmetric", [True, False])
def test_percentile_vs_reference_and_exact_quantile(kind, p, symmetric):
    x = _data(kind)
    obs = HistogramObserver("percentile", bins=BINS, percentile=p, symmetric=symmetric)
    obs.observe(x)
    hist, edges = obs.histogram(absolute=symmetric)
    t = H.percentile_threshold(hist, edges, p, symmetric)
    assert t == ref.percentile_threshold_ref(hist, edges, p, symmetric)
    w = obs.bin_width
    lo, hi = obs.range()
    assert min(x.min(), 0) <= lo <= hi <= max(x.max(), 0)
    if symmetric and p < 100:
        # the left edge of the bin holding the order statistic of rank ceil(p n) of |x|
        # (or of the next rank: the float cumulative sum may fall one ulp short of p)
        a = np.sort(np.abs(x).astype(np.float64))
        k = math.ceil(p / 100 * x.size)
        assert a[k - 1] - w <= t <= a[min(k, x.size - 1)]
        assert (lo, hi) == (max(-t, min(x.min(), 0)), min(t, max(x.max(), 0)))


# --- against onnxruntime's HistogramCollector ----------------------------------------------
def _ort_collect(method, symmetric, num_bins, batches, percentile=99.99):
    calibrate = pytest.importorskip("onnxruntime.quantization.calibrate")
    pytest.importorskip("scipy")
    c = calibrate.HistogramCollector(method, symmetric, num_bins, 128, percentile, "same")
    with contextlib.redirect_stdout(io.StringIO()):
        for b in batches:
            c.collect({"t": b})
        result = c.compute_collection_result()["t"]
    return c, (float(result[0]), float(result[1]))


@pytest.mark.parametrize("kind", ["normal", "outliers"])
def test_entropy_signed_same_threshold_as_onnxruntime_on_our_histogram(kind):
    """onnxruntime's own get_entropy_threshold run on qatcore's histogram: same answer."""
    calibrate = pytest.importorskip("onnxruntime.quantization.calibrate")
    pytest.importorskip("scipy")
    obs = _abs_hist(kind, bins=128)
    hist, edges = obs.histogram()
    c = calibrate.HistogramCollector("entropy", False, hist.size, 128, 99.99, "same")
    theirs = c.get_entropy_threshold((hist, edges.astype(np.float32), np.float32(obs._min),
                                      np.float32(obs._max)), 128)
    ours = H.entropy_threshold_onnxruntime(hist, edges, obs._min, obs._max)
    assert (float(theirs[0]), float(theirs[1])) == ours


def test_entropy_signed_end_to_end_equals_onnxruntime_on_an_aligned_grid():
    """When max|x| is a power of two, onnxruntime's grid (2·bins bins on [-max, max]) has
    qatcore's bin width and edges, so both collectors pick the same threshold."""
    x = _data("normal", n=30_000)
    x = x / np.abs(x).max() * np.float32(4.0)          # max|x| = 4 exactly
    assert np.abs(x).max() == 4.0
    obs = HistogramObserver("entropy_signed", bins=128)
    for b in np.array_split(x, 3):
        obs.observe(b)
    _, theirs = _ort_collect("entropy", False, 256, [x])
    assert obs.range() == pytest.approx(theirs, abs=0.0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_percentile_within_a_bin_of_onnxruntime(kind, symmetric):
    """Different bin edges (onnxruntime: 2048 bins on its data range; qatcore: a
    power-of-two grid): both return the left edge of the bin holding the same quantile,
    so they differ by less than the sum of the two bin widths.  (n is chosen so that p·n
    is not an integer: where it is, the float cumulative sum of either code may fall one
    ulp short and step to the next order statistic, far away in a sparse tail.)"""
    x = _data(kind, n=50_001)
    batches = [x]          # onnxruntime's grid depends on the split; one batch is its best case
    coll, theirs = _ort_collect("percentile", symmetric, 2048, batches)
    obs = HistogramObserver("percentile", bins=2048, symmetric=symmetric)
    for b in np.array_split(x, 5):
        obs.observe(b)
    edges = coll.histogram_dict["t"][1]
    tol = float(edges[1] - edges[0]) + obs.bin_width
    ours = obs.range()
    assert abs(ours[0] - theirs[0]) <= tol and abs(ours[1] - theirs[1]) <= tol, (ours, theirs, tol)


# --- input policy ---------------------------------------------------------------------------
def test_bad_input_leaves_state_unchanged():
    obs = HistogramObserver("mse", bins=BINS)
    obs.observe(_data("normal"))
    before = (obs._counts.copy(), obs.range(), obs.count)
    bad = _data("normal")
    bad[7] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        obs.observe(bad)
    with pytest.raises(TypeError):
        obs.observe(np.array(["a"]))
    np.testing.assert_array_equal(obs._counts, before[0])
    assert (obs.range(), obs.count) == before[1:]


@pytest.mark.parametrize("kwargs, exc", [
    (dict(method="kl"), ValueError), (dict(bins=1000), ValueError), (dict(bins=2.0), TypeError),
    (dict(percentile=101), ValueError), (dict(symmetric=1), TypeError),
    (dict(num_bits=1), ValueError), (dict(start_bin=0), ValueError)])
def test_bad_options(kwargs, exc):
    with pytest.raises(exc):
        HistogramObserver(**kwargs)


def test_merge_checks():
    with pytest.raises(TypeError):
        HistogramObserver().merge(QuantObserver())
    with pytest.raises(ValueError, match="bins"):
        HistogramObserver(bins=64).merge(HistogramObserver(bins=128))


# --- per channel ------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["min_max", "mean_std", "percentile", "moving_average"])
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_channel_observer_matches_one_observer_per_channel(method, axis, layout):
    rng = np.random.default_rng(3)
    batches = [rng.standard_normal((6, 5, 40)).astype(np.float32) * (1 + np.arange(5))[None, :, None]
               for _ in range(3)]
    if layout == "F":
        batches = [np.asfortranarray(b) for b in batches]
    elif layout == "strided":
        batches = [np.concatenate([b, b], axis=2)[:, :, ::2] for b in batches]
    obs = ChannelObserver(method, axis=axis)
    for b in batches:
        obs.observe(b)
    c = batches[0].shape[axis]
    want = []
    for ch in range(c):
        o = QuantObserver(method)
        for b in batches:
            o.observe(np.take(b, ch, axis=axis))   # observe() flattens in C order as the channel view does
        want.append(o.range())
    got = obs.ranges()
    if method == "percentile":          # order statistics do not depend on element order
        np.testing.assert_array_equal(got, np.array(want))
    else:
        np.testing.assert_allclose(got, np.array(want), rtol=1e-6, atol=0)
    assert obs.channels == c


@pytest.mark.parametrize("method", ["entropy", "mse", "hist_percentile", "entropy_signed"])
def test_channel_observer_histogram_methods(method):
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((4000, 3)) * np.array([0.5, 1.0, 4.0])).astype(np.float32)
    obs = ChannelObserver(method, axis=1, bins=128)
    obs.observe(x[:1500])
    obs.observe(x[1500:])
    hist_method = "percentile" if method == "hist_percentile" else method
    for ch in range(3):
        one = HistogramObserver(hist_method, bins=128)
        one.observe(x[:, ch])
        assert tuple(obs.ranges()[ch]) == one.range()
    scales, zps = obs.compute_qparams(FakeQuantConfig.int8())
    assert scales.shape == (3,) and np.all(np.diff(scales) > 0)


def test_channel_observer_errors():
    obs = ChannelObserver("min_max", axis=1)
    with pytest.raises(ValueError, match="out of range"):
        obs.observe(np.zeros(3))
    obs.observe(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="channels"):
        obs.observe(np.zeros((2, 4)))
    bad = np.zeros((2, 3))
    bad[1, 2] = np.inf
    before = obs.ranges()
    with pytest.raises(ValueError, match="channel 2"):
        obs.observe(bad)
    np.testing.assert_array_equal(obs.ranges(), before)
    with pytest.raises(TypeError):
        ChannelObserver("min_max", axis=1, bins=64)
    with pytest.raises(ValueError):
        ChannelObserver("nope", axis=0)


@pytest.mark.parametrize("method", ["entropy", "mse", "percentile", "entropy_signed"])
def test_saturated_positive_tensor_never_gets_an_inverted_range(method):
    """A gate saturated near 1 (HardSigmoid outputs): TensorRT's KL picks a tiny amax
    (its known weakness on such tensors); the range is (0, amax), never lo > hi."""
    rng = np.random.default_rng(5)
    x = np.minimum(1.0, 0.97 + rng.random(20_000) * 0.1).astype(np.float32)
    obs = HistogramObserver(method, bins=256)
    obs.observe(x)
    lo, hi = obs.range()
    assert 0.0 <= lo <= hi <= 1.0
