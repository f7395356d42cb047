# Histogram fill for qatcore/histogram.py (HistogramObserver).
#
# The histogram has 2h bins of width w = 1 / inv_width on a grid symmetric about zero:
# bin h + k holds v >= 0 with floor(|v| / w) = k, bin h - 1 - k holds v < 0 with the same
# k (sign-magnitude bins, so folding to |x| is exact).  The facade keeps w a power of two,
# so |v| * inv_width is exact in float64 and floor() of it is the exact bin: the count of a
# value never depends on which batch carried it (see histogram.py, "exact merge").

from libc.math cimport fabs


cdef void _hist_fill(const float *x, Py_ssize_t n, double inv_width,
                     int64_t *counts, Py_ssize_t h) noexcept nogil:
    cdef Py_ssize_t i, k, s
    cdef float v
    cdef int64_t *mid = counts + h
    for i in range(n):
        v = x[i]
        k = <Py_ssize_t>(fabs(<double>v) * inv_width)
        if k >= h:                  # the facade sizes the grid so this never happens
            k = h - 1
        s = -<Py_ssize_t>(v < 0)    # 0 or -1: h + (k ^ -1) = h - 1 - k
        mid[k ^ s] += 1


def hist_fill(const float[::1] x,        # IN  finite float32 values, |v| * inv_width < h
              double inv_width,          # IN  1 / bin width (a power of two)
              int64_t[::1] counts):      # IN/OUT 2h bin counts, incremented
    """Add every value of x to the sign-magnitude histogram `counts` (2h bins).

    Requires C-contiguous float32 x and int64 counts of even length; accumulates in int64.
    """
    cdef Py_ssize_t n = x.shape[0], h = counts.shape[0] // 2
    if n == 0 or h == 0:
        return
    with nogil:
        _hist_fill(&x[0], n, inv_width, &counts[0], h)
