# Histogram fill for qatcore/histogram.py (HistogramObserver).
#
# The histogram has 2h bins of width w = 1 / inv_width on a grid symmetric about zero:
# bin h + k holds v >= 0 with floor(|v| / w) = k, bin h - 1 - k holds v < 0 with the same
# k (sign-magnitude bins, so folding to |x| is exact).  The facade keeps w a power of two,
# so |v| * inv_width is exact (in float32 whenever the product is a normal number, and
# below 1 its floor is 0 anyway) and floor() of it is the exact bin: the count of a value
# never depends on which batch carried it (see histogram.py, "exact merge").

from libc.math cimport fabs, fabsf
from libc.stdint cimport uint32_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset

cdef enum:
    HIST_SPLIT_MIN = 1 << 15        # below this, count straight into the int64 bins
    HIST_CHUNK = 1 << 30            # elements per flush of the uint32 sub-histograms


cdef inline Py_ssize_t _bin_f(float v, float inv_width, Py_ssize_t hm1) noexcept nogil:
    cdef Py_ssize_t k = <Py_ssize_t>(fabsf(v) * inv_width)
    if k > hm1:                     # the facade sizes the grid so this never happens
        k = hm1
    return k ^ (-<Py_ssize_t>(v < 0))   # 0 or -1: h + (k ^ -1) = h - 1 - k


cdef void _hist_fill_direct(const float *x, Py_ssize_t n, double inv_width,
                            int64_t *counts, Py_ssize_t h) noexcept nogil:
    cdef Py_ssize_t i, k
    cdef float v
    cdef int64_t *mid = counts + h
    for i in range(n):
        v = x[i]
        k = <Py_ssize_t>(fabs(<double>v) * inv_width)     # float64: any power-of-two width
        if k >= h:
            k = h - 1
        mid[k ^ (-<Py_ssize_t>(v < 0))] += 1


cdef int _hist_fill_split(const float *x, Py_ssize_t n, float inv_width,
                          int64_t *counts, Py_ssize_t h) noexcept nogil:
    # Four interleaved uint32 sub-histograms: a run of equal values (the zeros after a
    # ReLU) increments four counters in turn instead of waiting on one.
    cdef Py_ssize_t nb = 2 * h, hm1 = h - 1, i, j, start, stop, n4
    cdef uint32_t *sub = <uint32_t *>calloc(4 * nb, sizeof(uint32_t))
    if sub == NULL:
        return -1
    cdef uint32_t *m0 = sub + h
    cdef uint32_t *m1 = sub + nb + h
    cdef uint32_t *m2 = sub + 2 * nb + h
    cdef uint32_t *m3 = sub + 3 * nb + h
    start = 0
    while start < n:
        stop = n if n - start <= HIST_CHUNK else start + HIST_CHUNK
        n4 = start + ((stop - start) // 4) * 4
        i = start
        while i < n4:
            m0[_bin_f(x[i], inv_width, hm1)] += 1
            m1[_bin_f(x[i + 1], inv_width, hm1)] += 1
            m2[_bin_f(x[i + 2], inv_width, hm1)] += 1
            m3[_bin_f(x[i + 3], inv_width, hm1)] += 1
            i += 4
        while i < stop:
            m0[_bin_f(x[i], inv_width, hm1)] += 1
            i += 1
        for j in range(nb):
            counts[j] += <int64_t>sub[j] + sub[nb + j] + sub[2 * nb + j] + sub[3 * nb + j]
        memset(sub, 0, 4 * nb * sizeof(uint32_t))
        start = stop
    free(sub)
    return 0


def hist_fill(const float[::1] x,        # IN  finite float32 values, |v| * inv_width < h
              double inv_width,          # IN  1 / bin width (a power of two)
              int64_t[::1] counts):      # IN/OUT 2h bin counts, incremented
    """Add every value of x to the sign-magnitude histogram `counts` (2h bins).

    Requires C-contiguous float32 x and int64 counts of even length; accumulates in int64
    (large batches through four uint32 sub-histograms, flushed every 2^30 elements).
    """
    cdef Py_ssize_t n = x.shape[0], h = counts.shape[0] // 2
    cdef int status = 0
    if n == 0 or h == 0:
        return
    with nogil:
        # float32 products are exact for inv_width up to 2^100 (far from overflow)
        if n >= HIST_SPLIT_MIN and inv_width <= 1.2676506002282294e30:
            status = _hist_fill_split(&x[0], n, <float>inv_width, &counts[0], h)
        if n < HIST_SPLIT_MIN or inv_width > 1.2676506002282294e30 or status != 0:
            _hist_fill_direct(&x[0], n, inv_width, &counts[0], h)
