"""Histogram calibration (entropy / MSE / percentile) and per-channel ranges.

``HistogramObserver`` keeps one streaming histogram of everything it observed, in
O(bins) memory, and turns it into a clipping range with the method users know from
TensorRT, NVIDIA ModelOpt and onnxruntime.  ``ChannelObserver`` keeps one range per
channel along an axis, for every method of :class:`QuantObserver` and of
:class:`HistogramObserver`.

Exact merge
-----------
The histogram grid is symmetric about zero with ``2·h`` bins (``h = 2·bins`` per side) of
width ``w = 2^e / h``, where ``2^e`` is the smallest power of two above ``max|x|`` of the
stream so far.  Bins are sign-magnitude: bin ``k`` of a side holds the values with
``floor(|v| / w) = k``.  Because ``w`` is a power of two, ``|v| / w`` is exact in float64
and ``floor`` of it is the exact bin; when a batch raises ``e`` by ``s`` the counts are
re-binned by summing groups of ``2^s`` neighbours, which equals binning at the new width
directly (``floor(floor(t) / 2^s) = floor(t / 2^s)``).  So the histogram of a stream is
a function of the multiset of its values only: it does not depend on how the data was
split into batches, and two observers merge exactly (:meth:`HistogramObserver.merge`).
onnxruntime's and ModelOpt's collectors instead re-grid on the first batch's range, so
their histograms depend on the batch order.

The grid uses between ``bins`` and ``2·bins`` bins per side over ``[0, max|x|]``; the
methods below run on that part of the grid (its last bin holds ``max|x|``).
"""

from __future__ import annotations

import math
import threading
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np

from . import _backend
from ._checks import as_float32, base_array, check_index, check_real, raise_nonfinite
from .config import FakeQuantConfig, ObserverMethod
from ._typing import ArrayLike, Integer, ObserverLike, Real
from .observer import QuantObserver, _qparams

__all__ = ["HistogramObserver", "ChannelObserver", "HISTOGRAM_METHODS",
           "entropy_amax_modelopt", "entropy_threshold_onnxruntime", "mse_amax_modelopt",
           "percentile_threshold"]

F32 = np.float32

#: Methods of :class:`HistogramObserver`.
HISTOGRAM_METHODS = ("entropy", "entropy_signed", "mse", "percentile")


# --- the published algorithms, on a given histogram -------------------------------------
def entropy_amax_modelopt(hist: ArrayLike, edges: ArrayLike, num_bits: int = 8,
                          unsigned: bool = False, stride: int = 1, start_bin: int = 128
                          ) -> float:
    """TensorRT's KL-divergence amax on a histogram of ``|x|`` (ModelOpt's algorithm).

    As NVIDIA ModelOpt's ``_compute_amax_entropy``
    (``modelopt/torch/quantization/calib/histogram.py``, from TensorRT's
    pytorch-quantization; Migacz, "8-bit inference with TensorRT", GTC 2017): bin 0 is
    replaced by bin 1; for every stop ``i`` from `start_bin` to ``len(hist)`` the first
    ``i`` bins (outliers added to the last) are compared with their quantization to
    ``2^(num_bits - 1 + unsigned)`` levels (each level spreads its count evenly over its
    non-empty bins); the last stop of least KL divergence gives ``amax = edges[i]``.

    Computed here from prefix sums in O(len(hist) · levels) instead of the original's
    O(len(hist)^2) Python loops; a stop whose KL is undefined (NaN) counts as +inf.

    Parameters
    ----------
    hist : array_like of int
        Bin counts of ``|x|`` on ``[edges[0], edges[-1]]``, at least `start_bin` bins.
    edges : array_like of float
        ``len(hist) + 1`` bin edges.
    num_bits, unsigned, stride, start_bin
        As in ModelOpt (8, False, 1, 128).

    Returns
    -------
    float
    """
    b = np.array(base_array(hist, "hist"), dtype=np.float64)     # a copy: edited below
    edges = np.asarray(base_array(edges, "edges"), dtype=np.float64)
    n = b.size
    if n < 2 or n < start_bin or edges.size != n + 1:
        raise ValueError(f"hist needs at least max(2, start_bin={start_bin}) bins and "
                         f"edges one more, got {n} and {edges.size}")
    b[0] = b[1]
    nb = 1 << (num_bits - 1 + int(unsigned))
    total = b.sum()
    nz = (b != 0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        blogb = np.where(b > 0, b * np.log(np.where(b > 0, b, 1.0)), 0.0)
    cb = np.concatenate(([0.0], np.cumsum(b)))
    cz = np.concatenate(([0.0], np.cumsum(nz)))
    cbl = np.concatenate(([0.0], np.cumsum(blogb)))
    stops = np.arange(start_bin, n + 1, stride, dtype=np.int64)
    k = np.arange(nb + 1, dtype=np.int64)
    # group k of stop i = bins j with floor(j * nb / i) = k: j in [ceil(k i / nb), ceil((k+1) i / nb))
    bounds = (k[None, :] * stops[:, None] + nb - 1) // nb          # (stops, nb + 1)
    s = cb[bounds[:, 1:]] - cb[bounds[:, :-1]]
    cnt = cz[bounds[:, 1:]] - cz[bounds[:, :-1]]
    with np.errstate(divide="ignore", invalid="ignore"):
        slogq = np.where(cnt > 0, s * np.log(np.where(s > 0, s, 1.0) / np.where(cnt > 0, cnt, 1.0)), 0.0)
        sum_plogq = slogq.sum(axis=1)                               # sum over j < i of b_j log q_j
        last = b[stops - 1]
        out = total - cb[stops]                                     # outliers O_i
        g_last = ((stops - 1) * nb) // stops
        rows = np.arange(stops.size)
        q_last = np.where(cnt[rows, g_last] > 0, s[rows, g_last] / np.where(cnt[rows, g_last] > 0, cnt[rows, g_last], 1.0), 0.0)
        p_last = last + out
        # sum p log p: the first i-1 bins unchanged, the last one holds the outliers too
        plogp = cbl[stops - 1] + np.where(p_last > 0, p_last * np.log(np.where(p_last > 0, p_last, 1.0)), 0.0)
        plogq = sum_plogq + np.where(last > 0, out * np.log(np.where(q_last > 0, q_last, 1.0)), 0.0)
        q_total = cb[stops]
        kl = (plogp - plogq) / total + np.log(q_total / total)
    kl = np.where((last == 0) & (out > 0), np.inf, kl)
    kl = np.where(np.isnan(kl), np.inf, kl)
    best = kl.size - 1 - int(np.argmin(kl[::-1]))
    return float(edges[int(stops[best])])


def entropy_threshold_onnxruntime(hist: ArrayLike, edges: ArrayLike, min_value: float,
                                  max_value: float, num_quantized_bins: int = 128
                                  ) -> Tuple[float, float]:
    """onnxruntime's signed KL threshold on a histogram of x on ``[-t, t]``.

    The algorithm of ``HistogramCollector.get_entropy_threshold``
    (``onnxruntime/python/tools/quantization/calibrate.py``): for ``i`` from
    ``num_quantized_bins // 2`` to the zero bin, the bins ``[zero - i, zero + i + 1)``
    (outliers folded into the end bins) are merged into `num_quantized_bins` groups of
    ``len // num_quantized_bins`` bins (the remainder joins the last group's count but
    gets no level), each group's integer-truncated mean count is spread over the whole
    group, both distributions are smoothed (``smooth_distribution``, eps 1e-4), and the
    first ``i`` of least KL divergence gives ``(edges[zero - i], edges[zero + i + 1])``,
    clipped to ``[min_value, max_value]``.

    onnxruntime evaluates each stop with Python loops (O(bins^2)); here all stops are
    evaluated at once from prefix sums, the smoothed ``y log y`` terms of the interior
    bins by a third-order expansion in the smoothing shift (relative error far below
    float32's), in float64; the divergences are rounded to float32 before the argmin, as
    onnxruntime stores them.  Where two stops tie to float32 precision the two
    implementations may pick different ones (tests: reference.py).

    Returns
    -------
    (float, float)
    """
    h = np.asarray(base_array(hist, "hist"), dtype=np.float64)
    edges = np.asarray(base_array(edges, "edges"), dtype=np.float64)
    nbins = h.size
    nq = int(num_quantized_bins)
    zero = nbins // 2
    half = nq // 2
    if edges.size != nbins + 1 or zero < half or nq < 2:
        raise ValueError(f"hist needs at least num_quantized_bins={num_quantized_bins} bins "
                         f"and edges one more, got {nbins} and {edges.size}")
    eps = 1e-4
    nz = h != 0
    safe = np.where(nz, h, 1.0)

    def prefix(v):
        return np.concatenate(([0.0], np.cumsum(v)))

    C = prefix(h)                                         # counts
    Z = prefix(nz.astype(np.float64))                     # non-empty bins
    G0 = prefix(np.where(nz, h * np.log(safe), 0.0))      # y log y
    G1 = prefix(np.where(nz, np.log(safe) + 1.0, 0.0))    # d/dy
    G2 = prefix(np.where(nz, 1.0 / safe, 0.0))            # d2/dy2
    G3 = prefix(np.where(nz, 1.0 / (safe * safe), 0.0))   # -d3/dy3
    total = C[nbins]

    i = np.arange(half, zero + 1, dtype=np.int64)
    start = zero - i
    end = np.minimum(zero + i + 1, nbins)
    L = end - start
    m = L // nq
    rem = L - nq * m
    left_out = C[start]
    right_out = total - C[end]
    p0 = h[start] + left_out
    pl = h[end - 1] + right_out
    # non-empty bins of p (the slice with its end bins holding the outliers)
    nnz_p = (Z[end] - Z[start]) - nz[start] - nz[end - 1] + (p0 != 0) + (pl != 0)
    nz_count_p = L - nnz_p
    with np.errstate(divide="ignore", invalid="ignore"):
        e1p = np.where(nnz_p > 0, eps * nz_count_p / np.where(nnz_p > 0, nnz_p, 1), 0.0)

    # groups: [start + k m, start + (k+1) m) for k < nq, remainder [start + nq m, end)
    k = np.arange(nq + 1, dtype=np.int64)
    b = start[:, None] + k[None, :] * m[:, None]           # (stops, nq + 1) group bounds
    sliced_sum = C[b[:, 1:]] - C[b[:, :-1]]                # sum of the sliced hist per group
    rem_sum = C[end] - C[b[:, -1]]
    levels_total = sliced_sum.copy()
    levels_total[:, -1] += rem_sum
    nnz_g = Z[b[:, 1:]] - Z[b[:, :-1]]                     # non-empty bins of h per group
    rows = np.arange(i.size)
    # p differs from h in its first bin (group 0) and last bin (last group or remainder)
    d0 = (p0 != 0).astype(np.float64) - nz[start]
    dl = (pl != 0).astype(np.float64) - nz[end - 1]
    nnz_g[:, 0] += d0
    last_in_rem = rem > 0
    nnz_g[rows[~last_in_rem], nq - 1] += dl[~last_in_rem]
    nnz_rem = (Z[end] - Z[b[:, -1]]) + np.where(last_in_rem, dl, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        level = np.where(nnz_g > 0, np.trunc(levels_total / np.where(nnz_g > 0, nnz_g, 1)), 0.0)
    q_total = (level * m[:, None]).sum(axis=1)
    nz_count_q = (level == 0).sum(axis=1) * m + rem
    nnz_q = L - nz_count_q
    with np.errstate(divide="ignore", invalid="ignore"):
        e1q = np.where(nnz_q > 0, eps * nz_count_q / np.where(nnz_q > 0, nnz_q, 1), 0.0)

        # A = sum of ps log ps: interior bins by expansion, the two end bins exactly
        lo_j, hi_j = start + 1, end - 1                    # interior [lo_j, hi_j)
        e = e1p
        interior = (G0[hi_j] - G0[lo_j]) - e * (G1[hi_j] - G1[lo_j]) \
            + e * e / 2 * (G2[hi_j] - G2[lo_j]) + e ** 3 / 6 * (G3[hi_j] - G3[lo_j])
        interior_zeros = (hi_j - lo_j) - (Z[hi_j] - Z[lo_j])

        def g(y):
            return np.where(y > 0, y * np.log(np.where(y > 0, y, 1.0)), 0.0)

        def smoothed(p):
            return np.where(p != 0, p - e, eps)

        A = interior + interior_zeros * (eps * np.log(eps)) + g(smoothed(p0)) + g(smoothed(pl))

        # B = sum of ps log qs: per group, qs is constant
        ps_group = sliced_sum.copy()
        ps_group[:, 0] += left_out
        ps_group[rows[~last_in_rem], nq - 1] += right_out[~last_in_rem]
        size_g = np.broadcast_to(m[:, None], ps_group.shape)
        ps_group = ps_group + eps * (size_g - nnz_g) - e[:, None] * nnz_g
        ps_rem = rem_sum + np.where(last_in_rem, right_out, 0.0)
        ps_rem = ps_rem + eps * (rem - nnz_rem) - e * nnz_rem
        qs = np.where(level > 0, level - e1q[:, None], eps)
        B = (ps_group * np.log(qs)).sum(axis=1) + ps_rem * np.log(eps)
        kl = (A - B) / total + np.log(q_total / total)
    kl = np.where((nnz_p == 0) | (nnz_q == 0) | ~np.isfinite(kl), np.inf, kl)
    best = int(np.argmin(kl.astype(np.float32)))
    lo, hi = float(edges[start[best]]), float(edges[end[best]])
    return max(lo, float(min_value)), min(hi, float(max_value))


def mse_amax_modelopt(hist: ArrayLike, edges: ArrayLike, num_bits: int = 8,
                      unsigned: bool = False, stride: int = 1, start_bin: int = 128) -> float:
    """ModelOpt's ``_compute_amax_mse`` on a histogram of ``|x|``.

    For each bin centre ``c_i`` (``i`` from `start_bin`, centres in float32) the centres
    are fake-quantized with ``amax = c_i`` (``scale = (2^(bits-1+unsigned) - 1) / amax``,
    round half to even, clamp), and the count-weighted mean squared error is computed in
    float32; the first ``c_i`` of least error is the amax.

    Returns
    -------
    float
    """
    counts = np.asarray(base_array(hist, "hist"), dtype=F32)
    e = np.asarray(base_array(edges, "edges"), dtype=F32)
    centers = (e[1:] + e[:-1]) / F32(2)
    n = centers.size
    if n <= start_bin:
        raise ValueError(f"hist needs more than start_bin={start_bin} bins, got {n}")
    max_bound = F32(2.0 ** (num_bits - 1 + int(unsigned)) - 1.0)
    min_bound = F32(0.0) if unsigned else -max_bound
    idx = np.arange(start_bin, n, stride)
    mses = np.empty(idx.size, dtype=F32)
    chunk = max(1, (1 << 20) // n)
    for s0 in range(0, idx.size, chunk):
        amax = centers[idx[s0:s0 + chunk]][:, None]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            scale = max_bound / amax
            qc = np.clip(np.rint(centers[None, :] * scale), min_bound, max_bound) / scale
        err = (qc - centers[None, :]) ** 2 * counts[None, :]
        mses[s0:s0 + chunk] = err.mean(axis=1, dtype=F32)
    mses = np.where(np.isnan(mses), np.inf, mses)
    return float(centers[idx[int(np.argmin(mses))]])


def percentile_threshold(hist: ArrayLike, edges: ArrayLike, percentile: float,
                         symmetric: bool = True) -> Union[float, Tuple[float, float]]:
    """onnxruntime's / ModelOpt's histogram percentile.

    ``cdf = cumsum(hist / total)``; symmetric (`hist` of ``|x|``):
    ``edges[searchsorted(cdf, p / 100)]`` (ModelOpt ``_compute_amax_percentile``,
    onnxruntime ``compute_percentile`` with ``symmetric=True``); per side (`hist` of x):
    ``(edges[searchsorted(cdf, c)], edges[searchsorted(cdf, 1 - c)])`` with
    ``c = (100 - p) / 200`` (onnxruntime with ``symmetric=False``).

    Returns
    -------
    float (symmetric) or (float, float)
    """
    hist = np.asarray(base_array(hist, "hist"))
    edges = np.asarray(base_array(edges, "edges"), dtype=np.float64)
    cdf = np.cumsum(hist / hist.sum())
    if symmetric:
        return float(edges[np.searchsorted(cdf, percentile / 100.0)])
    cut = (100.0 - percentile) / 200.0
    return (float(edges[np.searchsorted(cdf, cut)]),
            float(edges[np.searchsorted(cdf, 1.0 - cut)]))


# --- the streaming observer ----------------------------------------------------------------
def _check_bins(bins) -> int:
    bins = check_index(bins, "bins")
    if bins < 8 or bins > (1 << 20) or bins & (bins - 1):
        raise ValueError(f"bins must be a power of two in [8, 2^20], got {bins}")
    return bins


def _regrid(side: np.ndarray, shift: int) -> np.ndarray:
    """One side's counts at 2^shift times the bin width (groups of 2^shift summed)."""
    h = side.size
    if shift <= 0:
        return side
    out = np.zeros_like(side)
    if (1 << shift) >= h:
        out[0] = side.sum()
    else:
        out[:h >> shift] = side.reshape(h >> shift, 1 << shift).sum(axis=1)
    return out


class HistogramObserver:
    """Streaming histogram of a tensor and the clipping range of a calibration method.

    Parameters
    ----------
    method : {"entropy", "entropy_signed", "mse", "percentile"}, default "entropy"
        ``entropy``: TensorRT's KL method on ``|x|`` (:func:`entropy_amax_modelopt`),
        range ``(-amax, amax)``; ``entropy_signed``: onnxruntime's signed KL search
        (:func:`entropy_threshold_onnxruntime`); ``mse``: ModelOpt's MSE search on
        ``|x|`` (:func:`mse_amax_modelopt`); ``percentile``: the `percentile` of the
        whole stream (:func:`percentile_threshold`), of ``|x|`` when `symmetric`, else one
        cut per side. Every range is clipped to the observed ``[min, max]`` widened to
        hold 0 (onnxruntime clips to ``[min, max]``), so a non-negative tensor gets
        ``(0, amax)``.
    bins : int, default 2048
        Power of two; the grid has ``2·bins`` bins per side, of which between `bins` and
        ``2·bins`` cover ``[0, max|x|]``. Memory: ``4·bins`` int64 counts.
    percentile : float, default 99.99
        For ``method="percentile"``, in [0, 100].
    symmetric : bool, default True
        For ``percentile``: one threshold on ``|x|`` (True) or one per side (False).
    num_bits : int, default 8
        Quantized levels of the entropy / MSE searches: ``2^(num_bits-1)`` levels of
        ``|x|`` (ModelOpt), ``2^num_bits`` signed levels (onnxruntime's 128 default is
        ``num_quantized_bins``).
    num_quantized_bins : int, default 128
        For ``entropy_signed`` (onnxruntime's default 128).
    start_bin : int, optional
        First stop of the ``entropy`` / ``mse`` searches (ModelOpt's 128, or `bins` if
        smaller).
    n_threads : int, optional
        Threads for the min/max pass of large batches.

    Examples
    --------
    >>> import numpy as np
    >>> from qatcore import HistogramObserver
    >>> x = np.random.default_rng(0).standard_normal(100_000).astype(np.float32)
    >>> obs = HistogramObserver("percentile", percentile=99.9)
    >>> obs.observe(x[:30_000]); obs.observe(x[30_000:])
    >>> lo, hi = obs.range()
    >>> bool(3.2 < hi < 3.4) and lo == -hi
    True
    """

    __slots__ = ("_method", "_bins", "_h", "_counts", "_exp", "_min", "_max", "_n",
                 "_percentile", "_symmetric", "_num_bits", "_nqb", "_start_bin",
                 "_n_threads", "_cache", "_lock")

    def __init__(self, method: str = "entropy", *, bins: Integer = 2048,
                 percentile: Real = 99.99, symmetric: bool = True, num_bits: Integer = 8,
                 num_quantized_bins: Integer = 128, start_bin: Optional[Integer] = None,
                 n_threads: Optional[Integer] = None) -> None:
        if method not in HISTOGRAM_METHODS:
            raise ValueError(f"method must be one of {HISTOGRAM_METHODS}, got {method!r}")
        self._method = method
        self._bins = _check_bins(bins)
        try:
            self._percentile = check_real(percentile, "percentile", 0.0, 100.0)
        except TypeError as exc:
            raise ValueError(f"percentile must be a number in [0, 100], got {percentile!r}") \
                from exc
        if not isinstance(symmetric, (bool, np.bool_)):
            raise TypeError(f"symmetric must be a bool, got {type(symmetric).__name__}")
        self._symmetric = bool(symmetric)
        self._num_bits = _int_in(num_bits, "num_bits", 2, 16)
        self._nqb = _int_in(num_quantized_bins, "num_quantized_bins", 2, 2 * self._bins,
                            "2*bins")
        if start_bin is None:
            start_bin = min(128, self._bins)
        self._start_bin = _int_in(start_bin, "start_bin", 1, self._bins, "bins")
        self._n_threads = None if n_threads is None else _backend.check_threads(n_threads)
        self._h = 2 * self._bins
        # One lock per observer, held by every read-modify-write of the bins (observe,
        # merge, reset) and by the reads that must see one consistent state (range,
        # histogram): concurrent calls equal some serial order (docs/threading.md).
        self._lock = threading.RLock()
        self.reset()

    # --- state -----------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything observed."""
        with self._lock:
            self._reset()

    def _reset(self) -> None:
        self._counts = np.zeros(2 * self._h, dtype=np.int64)
        self._exp: Optional[int] = None      # grid half-range 2^exp; None while all zero
        self._cache: Optional[Tuple[float, float]] = None
        self._min = math.inf
        self._max = -math.inf
        self._n = 0

    @property
    def method(self) -> str:
        """The calibration method."""
        return self._method

    @property
    def count(self) -> int:
        """Number of values observed."""
        return self._n

    @property
    def bin_width(self) -> float:
        """Current bin width (a power of two; 0.0 while everything observed was 0)."""
        return 0.0 if self._exp is None else math.ldexp(1.0, self._exp) / self._h

    def histogram(self, absolute: bool = False) -> Tuple[np.ndarray, np.ndarray]:
        """``(counts, edges)`` of the part of the grid that holds the data.

        Signed (default): ``2u`` bins on ``[-u·w, u·w]``; ``absolute=True``: the ``u``
        bins of ``|x|`` on ``[0, u·w]``, where the last bin holds ``max|x|``.
        """
        with self._lock:
            return self._histogram(absolute)

    def _histogram(self, absolute: bool) -> Tuple[np.ndarray, np.ndarray]:
        h, w = self._h, self.bin_width
        amax = max(-self._min, self._max, 0.0)
        u = 1 if w == 0.0 else min(h, int(amax / w) + 1)
        pos = self._counts[h:h + u].copy()      # the caller's, not a view of live bins
        neg = self._counts[h - u:h].copy()
        if absolute:
            return pos + neg[::-1], np.arange(u + 1, dtype=np.float64) * w
        return np.concatenate((neg, pos)), np.arange(-u, u + 1, dtype=np.float64) * w

    # --- observing -------------------------------------------------------------------
    def observe(self, x: ArrayLike) -> None:
        """Add a batch (any shape) to the histogram.

        Raises
        ------
        TypeError
            Non-numeric data.
        ValueError
            A NaN or ±Inf in `x`; nothing is added.
        """
        data, shape = as_float32(x)
        if data.shape[0] == 0:
            return
        k = _backend.kernels
        lo, hi, bad = k.minmax(data, _backend.resolve_threads(self._n_threads))
        if bad >= 0:
            raise_nonfinite("observe", data, bad, shape, x)
        with self._lock:
            self._add(data, lo, hi)

    def _add(self, data, lo: float, hi: float) -> None:
        """observe() on checked finite data, the lock held."""
        k = _backend.kernels
        amax = max(-lo, hi)
        if amax > 0:
            self._grow(math.frexp(amax)[1])     # 2^(e-1) <= amax < 2^e
        inv_width = 1.0 if self._exp is None else self._h / math.ldexp(1.0, self._exp)
        k.hist_fill(data, inv_width, self._counts)
        self._min = min(self._min, lo)
        self._max = max(self._max, hi)
        self._n += data.shape[0]
        self._cache = None

    def _grow(self, exp: int) -> None:
        if self._exp is None:
            self._exp = exp
        elif exp > self._exp:
            h, shift = self._h, exp - self._exp
            c = self._counts
            pos = _regrid(c[h:], shift)
            neg = _regrid(c[:h][::-1].copy(), shift)
            self._counts = np.concatenate((neg[::-1], pos))
            self._exp = exp

    def merge(self, other: "HistogramObserver") -> "HistogramObserver":
        """Add `other`'s histogram to this one (exact: as if this had observed its data).

        Raises
        ------
        TypeError, ValueError
            `other` is not a HistogramObserver with the same `bins`.
        """
        if not isinstance(other, HistogramObserver):
            raise TypeError(f"other must be a HistogramObserver, got {type(other).__name__}")
        if other._bins != self._bins:
            raise ValueError(f"other has bins={other._bins}, this observer {self._bins}")
        if other is self:
            raise ValueError("an observer cannot be merged into itself")
        with other._lock:                 # a consistent snapshot of the other observer
            snap = (other._counts.copy(), other._exp, other._min, other._max, other._n)
        with self._lock:
            self._merge(*snap)
        return self

    def _merge(self, theirs, their_exp, their_min, their_max, their_n) -> None:
        if their_n == 0:
            return
        if their_exp is not None:       # None: zeros only, whose bin is every grid's bin 0
            self._grow(their_exp)
            mine = self._exp if self._exp is not None else their_exp
            if mine > their_exp:
                h, shift = self._h, mine - their_exp
                theirs = np.concatenate((_regrid(theirs[:h][::-1].copy(), shift)[::-1],
                                         _regrid(theirs[h:], shift)))
        self._counts = self._counts + theirs
        self._min = min(self._min, their_min)
        self._max = max(self._max, their_max)
        self._n += their_n
        self._cache = None

    # --- results ---------------------------------------------------------------------
    def range(self) -> Tuple[float, float]:
        """The method's clipping range ``(lo, hi)``; ``(inf, -inf)`` before any data."""
        with self._lock:
            return self._range()

    def _range(self) -> Tuple[float, float]:
        if self._n == 0:
            return math.inf, -math.inf
        if self._cache is not None:
            return self._cache
        lo_obs, hi_obs = self._min, self._max
        if self._exp is None:                 # everything was zero
            result = (lo_obs, hi_obs)
        else:
            m = self._method
            if m == "entropy":
                hist, edges = self._histogram(absolute=True)
                amax = entropy_amax_modelopt(hist, edges, self._num_bits, False, 1,
                                             min(self._start_bin, hist.size))
                result = (-amax, amax)
            elif m == "mse":
                hist, edges = self._histogram(absolute=True)
                amax = mse_amax_modelopt(hist, edges, self._num_bits, False, 1,
                                         min(self._start_bin, hist.size - 1))
                result = (-amax, amax)
            elif m == "entropy_signed":
                hist, edges = self._histogram(False)
                # clipped to [min, max] widened to hold 0, as below (onnxruntime's quantizer
                # widens its ranges to hold 0 too; its plain [min, max] clip can invert)
                result = entropy_threshold_onnxruntime(hist, edges, min(lo_obs, 0.0),
                                                       max(hi_obs, 0.0),
                                                       min(self._nqb, hist.size))
            else:
                if self._symmetric:
                    hist, edges = self._histogram(True)
                    t = percentile_threshold(hist, edges, self._percentile, True)
                    result = (-t, t)
                else:
                    hist, edges = self._histogram(False)
                    result = percentile_threshold(hist, edges, self._percentile, False)
            # Clip to the observed range, which is widened to hold 0 (as quantized ranges
            # are): a tensor whose values all lie above the method's amax (a saturated
            # gate, say) gets (0, amax), everything clipped to amax as the method means,
            # never an inverted range.
            result = (max(result[0], min(lo_obs, 0.0)), min(result[1], max(hi_obs, 0.0)))
        self._cache = (float(F32(result[0])), float(F32(result[1])))
        return self._cache

    def compute_qparams(self, config: FakeQuantConfig) -> Tuple[float, float]:
        """``(scale, zero_point)`` for `config` from :meth:`range` (the formulas of
        :meth:`QuantObserver.compute_qparams`); ``(1.0, 0.0)`` before any data."""
        if not isinstance(config, FakeQuantConfig):
            raise TypeError(f"config must be a FakeQuantConfig, got {type(config).__name__}")
        with self._lock:
            lo, hi = self._range()
            n = self._n
        return _qparams(lo, hi, 1 if n else 0, config)

    def __getstate__(self) -> Dict[str, Any]:
        with self._lock:
            return {name: getattr(self, name) for name in HistogramObserver.__slots__
                    if name != "_lock"}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        for name, value in state.items():
            if name != "_lock":
                setattr(self, name, value)
        self._lock = threading.RLock()

    def __copy__(self) -> "HistogramObserver":
        new = HistogramObserver.__new__(HistogramObserver)
        state = self.__getstate__()
        state["_counts"] = state["_counts"].copy()      # state, not shared storage
        new.__setstate__(state)
        return new

    def __deepcopy__(self, memo: Any) -> "HistogramObserver":
        return self.__copy__()

    def __repr__(self) -> str:
        return (f"HistogramObserver(method={self._method!r}, bins={self._bins}, "
                f"count={self._n})")


def _int_in(value, name: str, lo: int, hi: int, hi_text=None) -> int:
    try:
        v = check_index(value, name)
    except TypeError:
        raise ValueError(f"{name} must be an int in [{lo}, {hi_text or hi}], got {value!r}") \
            from None
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be an int in [{lo}, {hi_text or hi}], got {value!r}")
    return v


# --- per channel -----------------------------------------------------------------------------
class ChannelObserver:
    """One range per channel along `axis`, for any QuantObserver or histogram method.

    Parameters
    ----------
    method : ObserverMethod, str
        An :class:`ObserverMethod` (``"min_max"``, ``"mean_std"``, ``"percentile"``,
        ``"moving_average"``: each channel behaves exactly as a :class:`QuantObserver`
        fed that channel's values of every batch) or a histogram method
        (``"entropy"``, ``"entropy_signed"``, ``"mse"``, ``"hist_percentile"``: one
        :class:`HistogramObserver` per channel; keyword arguments go to it).
    axis : int
        The channel axis of every batch (negative counts from the end).
    **kwargs
        Options of :class:`HistogramObserver` for the histogram methods.

    Notes
    -----
    Each batch is read once to gather each channel into contiguous memory (no copy when
    `axis` is 0 of a C-contiguous batch, i.e. channel-major), then each channel goes
    through its observer's kernel. The number of channels is fixed by the first batch.

    Examples
    --------
    >>> import numpy as np
    >>> from qatcore import ChannelObserver
    >>> w = np.array([[1.0, -2.0], [0.5, 0.25], [3.0, -4.0]])
    >>> obs = ChannelObserver("min_max", axis=1)
    >>> obs.observe(w)
    >>> obs.ranges()
    array([[ 0.5 ,  3.  ],
           [-4.  ,  0.25]])
    """

    def __init__(self, method: ObserverLike, axis: Integer, **kwargs: Any) -> None:
        self._axis = check_index(axis, "axis")
        self._lock = threading.RLock()
        hist_method = {"entropy": "entropy", "entropy_signed": "entropy_signed",
                       "mse": "mse", "hist_percentile": "percentile"}.get(
                           method if isinstance(method, str) else None)
        if hist_method is not None:
            HistogramObserver(hist_method, **kwargs)            # validate the options now
            self._make = lambda: HistogramObserver(hist_method, **kwargs)
        else:
            if kwargs:
                raise TypeError(f"options {sorted(kwargs)} apply to histogram methods only")
            m = ObserverMethod(method) if isinstance(method, str) else method
            if not isinstance(m, ObserverMethod):
                raise ValueError(f"method must be an ObserverMethod or a histogram method, got {method!r}")
            self._make = lambda: QuantObserver(m)
        self._method = method
        self._observers: Optional[list] = None

    @property
    def axis(self) -> int:
        """The channel axis (as given; negative counts from the end)."""
        return self._axis

    @property
    def channels(self) -> int:
        """Number of channels (0 before the first batch)."""
        return 0 if self._observers is None else len(self._observers)

    def observe(self, x: ArrayLike) -> None:
        """Add one batch; its size along `axis` must equal the first batch's.

        Raises
        ------
        TypeError
            Non-numeric data.
        ValueError
            `axis` out of range, a different channel count, or non-finite data (nothing
            is observed then: all channels are checked before any is updated).
        """
        if type(x) is not np.ndarray:
            x = base_array(x, "x")
        if x.dtype.kind not in "biuf":
            raise TypeError(f"x must be a real numeric array, got dtype {x.dtype}")
        if not -x.ndim <= self._axis < x.ndim:
            raise ValueError(f"axis {self._axis} is out of range for a batch of shape {x.shape}")
        c = x.shape[self._axis]
        rows = np.ascontiguousarray(np.moveaxis(x, self._axis, 0), dtype=np.float32).reshape(c, -1)
        bad = np.flatnonzero(~np.isfinite(rows).all(axis=1)) if rows.size else np.zeros(0, np.intp)
        if len(bad):
            raise ValueError(f"observe: channel {int(bad[0])} contains a non-finite value; "
                             f"nothing was observed")
        with self._lock:        # the channel count is fixed by the first batch, atomically
            if self._observers is not None and c != len(self._observers):
                raise ValueError(f"x has {c} channels along axis {self._axis}, expected "
                                 f"{len(self._observers)}")
            if self._observers is None:
                self._observers = [self._make() for _ in range(c)]
            for obs, row in zip(self._observers, rows):
                obs.observe(row)

    def ranges(self) -> np.ndarray:
        """``(channels, 2)`` float64 array of each channel's ``(lo, hi)``."""
        if self._observers is None:
            return np.zeros((0, 2))
        return np.array([obs.range() for obs in self._observers], dtype=np.float64)

    def compute_qparams(self, config: FakeQuantConfig) -> Tuple[np.ndarray, np.ndarray]:
        """Per-channel ``(scales, zero_points)`` float arrays for `config`."""
        if self._observers is None:
            return np.zeros(0), np.zeros(0)
        pairs = [obs.compute_qparams(config) for obs in self._observers]
        return (np.array([p[0] for p in pairs], dtype=np.float64),
                np.array([p[1] for p in pairs], dtype=np.float64))

    def __repr__(self) -> str:
        return f"ChannelObserver(method={self._method!r}, axis={self._axis}, channels={self.channels})"
