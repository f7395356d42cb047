# Reductions: min/max with the first non-finite index, mean/std in float64.

from libc.math cimport sqrt, INFINITY

cdef extern from "qc_moments.h" nogil:
    void qc_dev_sums_f32(const float *x, Py_ssize_t n, float c, double *s1, double *s2)

cdef enum:
    LANES = 32          # explicit accumulator lanes: gcc vectorizes these, not a scalar fold
    RBLOCK = 2048       # elements per block between non-finite checks (8 KiB, L1-resident)


cdef Py_ssize_t _first_nonfinite(const float *x, Py_ssize_t n) noexcept nogil:
    """Index of the first NaN/±Inf in x[0:n], or -1."""
    cdef Py_ssize_t i
    cdef float v
    for i in range(n):
        v = x[i]
        if v - v != 0:      # inf - inf and NaN - NaN are NaN; finite - finite is 0
            return i
    return -1


cdef Py_ssize_t _minmax_serial(const float *x, Py_ssize_t n,
                               float *lo_out, float *hi_out) noexcept nogil:
    """min and max of x[0:n] (finite data) and the first non-finite index or -1.
    Requires contiguous float32; accumulates in LANES float lanes.

    One pass of three vector ops per vector: min, max, and a running sum that turns
    NaN/Inf once any element is not finite.  Only when that sum is not finite (a
    NaN/Inf, or an overflow of huge finite values) is x rescanned for the first bad
    index, so the common case reads x once with no branch in the loop."""
    cdef float lo[LANES]
    cdef float hi[LANES]
    cdef float sm[LANES]
    cdef Py_ssize_t i, j
    cdef float v, total = 0
    cdef float glo = INFINITY
    cdef float ghi = -INFINITY
    for j in range(LANES):
        lo[j] = glo
        hi[j] = ghi
        sm[j] = 0
    i = 0
    while i + LANES <= n:
        for j in range(LANES):
            v = x[i + j]
            lo[j] = v if v < lo[j] else lo[j]
            hi[j] = v if v > hi[j] else hi[j]
            sm[j] = sm[j] + v
        i += LANES
    while i < n:
        v = x[i]
        lo[0] = v if v < lo[0] else lo[0]
        hi[0] = v if v > hi[0] else hi[0]
        sm[0] = sm[0] + v
        i += 1
    for j in range(LANES):
        glo = lo[j] if lo[j] < glo else glo
        ghi = hi[j] if hi[j] > ghi else ghi
        total = total + sm[j]
    if total - total != 0:      # NaN or Inf somewhere, or a huge finite sum
        i = _first_nonfinite(x, n)
        if i >= 0:
            return i
    lo_out[0] = glo
    hi_out[0] = ghi
    return -1


def minmax(cnp.ndarray x not None,  # IN, C-contiguous float32
           int n_threads=1):
    """(min, max, first_bad) of a contiguous float32 array in one pass.

    first_bad is the index of the first NaN/±Inf, or -1; min/max are only meaningful
    when it is -1.  An empty array gives (inf, -inf, -1)."""
    cdef const float *xp = _f32_in(x, "x")
    cdef Py_ssize_t n = cnp.PyArray_SIZE(x)
    cdef float lo = INFINITY
    cdef float hi = -INFINITY
    cdef Py_ssize_t bad = -1
    cdef int nt = _threads_for(n, n_threads)
    cdef Py_ssize_t chunk, c, b
    cdef float clo, chi
    cdef float[64] los
    cdef float[64] his
    cdef Py_ssize_t[64] bads
    if n == 0:
        return lo, hi, -1
    if nt > 64:
        nt = 64
    with nogil:
        if nt == 1:
            bad = _minmax_serial(xp, n, &lo, &hi)
        else:
            chunk = (n + nt - 1) // nt
            for c in prange(nt, num_threads=nt, schedule="static"):
                b = c * chunk
                bads[c] = -1
                los[c] = INFINITY
                his[c] = -INFINITY
                if b < n:
                    bads[c] = _minmax_serial(xp + b, min(chunk, n - b), &los[c], &his[c])
                    if bads[c] >= 0:
                        bads[c] = bads[c] + b
            for c in range(nt):
                if bads[c] >= 0:
                    bad = bads[c]
                    break
                lo = los[c] if los[c] < lo else lo
                hi = his[c] if his[c] > hi else hi
    return lo, hi, bad


cdef enum:
    MBLOCK = 1024       # elements per float32 partial sum block (32 per lane)


cdef Py_ssize_t _moments_block_f64(const float *x, Py_ssize_t nb,
                                   double *bmean, double *bm2) noexcept nogil:
    """Mean and centred sum of squares of one block in float64 (two passes: sum, then
    squared deviations from the block mean).  The slow exact path for blocks the
    float32 path cannot take (huge or tiny magnitudes).  Returns the first non-finite
    index in the block or -1."""
    cdef double s[LANES]
    cdef double q[LANES]
    cdef Py_ssize_t i, j
    cdef double bsum = 0, m, d, acc = 0
    for j in range(LANES):
        s[j] = 0
        q[j] = 0
    i = 0
    while i + LANES <= nb:
        for j in range(LANES):
            s[j] = s[j] + <double>x[i + j]
        i += LANES
    while i < nb:
        s[0] = s[0] + <double>x[i]
        i += 1
    for j in range(LANES):
        bsum = bsum + s[j]
    if bsum - bsum != 0:
        return _first_nonfinite(x, nb)
    m = bsum / nb
    i = 0
    while i + LANES <= nb:
        for j in range(LANES):
            d = <double>x[i + j] - m
            q[j] = q[j] + d * d
        i += LANES
    while i < nb:
        d = <double>x[i] - m
        q[0] = q[0] + d * d
        i += 1
    for j in range(LANES):
        acc = acc + q[j]
    bmean[0] = m
    bm2[0] = acc
    return -1


cdef Py_ssize_t _moments_serial(const float *x, Py_ssize_t n,
                                double *mean_out, double *m2_out) noexcept nogil:
    """Mean and sum of squared deviations of x[0:n], float64 accuracy, one pass.

    Each MBLOCK block sums d = x - c and d^2 in float32 lanes (32 terms per lane), c
    being the previous block's mean: d is then of the order of the spread, so these short
    float32 sums lose at most ~31 ulp relative, and the block's sums go into float64
    totals shifted by K, the first block's mean (Chan, Golub & LeVeque 1979: the shift
    keeps T2 - T1^2/n free of cancellation, since |mean - K| <= sqrt(n / MBLOCK) std).
    A block whose mean lies far from c (a jump in the data) is summed again around its
    own mean; a block the float32 sums cannot represent (overflow, squares that
    underflow) takes the exact float64 path.  Returns the first non-finite index or -1."""
    cdef Py_ssize_t start = 0, nb, bad, tries
    cdef double s1, s2, delta, e, bmean = 0, bm2, inv_nb = 1.0 / MBLOCK
    cdef double t1 = 0, t2 = 0, k = 0
    cdef double c = x[0]
    cdef bint have_k = False
    cdef bint fast
    while start < n:
        nb = MBLOCK
        if start + nb > n:
            nb = n - start
        fast = False
        tries = 0
        while tries < 3:
            qc_dev_sums_f32(x + start, nb, <float>c, &s1, &s2)
            if not (s2 - s2 == 0 and s1 - s1 == 0) or not s2 >= 8.271806125530277e-25:
                break           # non-finite, overflow or underflow (< 2^-80): exact path
            inv_nb = 1.0 / nb if nb != MBLOCK else 1.0 / MBLOCK
            delta = s1 * inv_nb
            if delta * delta * (32.0 * nb) <= s2:
                fast = True
                break
            c = <float>(c + delta)      # the block's mean is far from c: recentre
            tries += 1
        if fast:
            c = <float>c
            if not have_k:
                k = c + delta
                have_k = True
            e = c - k
            t1 = t1 + (s1 + nb * e)
            t2 = t2 + (s2 + 2.0 * e * s1 + nb * e * e)
        else:
            bad = _moments_block_f64(x + start, nb, &bmean, &bm2)
            if bad >= 0:
                return start + bad
            if not have_k:
                k = bmean
                have_k = True
            e = bmean - k
            t1 = t1 + nb * e
            t2 = t2 + (bm2 + nb * e * e)
        c = c + delta if fast else bmean      # this block's mean: the next shift
        start += nb
    mean_out[0] = k + t1 / n
    m2_out[0] = t2 - t1 * t1 / n
    if m2_out[0] < 0:
        m2_out[0] = 0
    return -1


def mean_std(cnp.ndarray x not None,  # IN, C-contiguous float32
             int n_threads=1):
    """(mean, std, first_bad) of a contiguous float32 array, population std, float64
    accumulation.  first_bad is the first NaN/±Inf index or -1.  Empty: (nan, nan, -1)."""
    cdef const float *xp = _f32_in(x, "x")
    cdef Py_ssize_t n = cnp.PyArray_SIZE(x)
    cdef Py_ssize_t bad = -1
    cdef int nt = _threads_for(n, n_threads)
    cdef Py_ssize_t chunk, c, b, nc, count = 0
    cdef double mean = 0, m2 = 0, delta
    cdef double[64] means
    cdef double[64] m2s
    cdef Py_ssize_t[64] bads
    if n == 0:
        return float("nan"), float("nan"), -1
    if nt > 64:
        nt = 64
    with nogil:
        if nt == 1:
            bad = _moments_serial(xp, n, &mean, &m2)
        else:
            chunk = (n + nt - 1) // nt
            for c in prange(nt, num_threads=nt, schedule="static"):
                b = c * chunk
                bads[c] = -1
                means[c] = 0
                m2s[c] = 0
                if b < n:
                    bads[c] = _moments_serial(xp + b, min(chunk, n - b), &means[c], &m2s[c])
                    if bads[c] >= 0:
                        bads[c] = bads[c] + b
            for c in range(nt):
                b = c * chunk
                if b >= n:
                    break
                if bads[c] >= 0:
                    bad = bads[c]
                    break
                nc = min(chunk, n - b)
                delta = means[c] - mean
                m2 = m2 + m2s[c] + delta * delta * (<double>count * nc) / (count + nc)
                mean = mean + delta * nc / (count + nc)
                count += nc
    if bad >= 0:
        return float("nan"), float("nan"), bad
    return mean, sqrt(m2 / n), -1


def probe_read(const float[::1] x,  # IN
               int n_threads=1):
    """Benchmark probe: one pass reading x (a float32 lane sum), for the machine's read
    bandwidth.  Returns the sum (meaningless; it keeps the loads alive)."""
    cdef Py_ssize_t n = x.shape[0]
    cdef int nt = _threads_for(n, n_threads)
    cdef Py_ssize_t chunk, c, b
    cdef float[64] sums
    cdef float total = 0
    if n == 0:
        return 0.0
    if nt > 64:
        nt = 64
    with nogil:
        chunk = (n + nt - 1) // nt
        for c in prange(nt, num_threads=nt, schedule="static"):
            b = c * chunk
            sums[c] = 0
            if b < n:
                sums[c] = _sum_lanes(&x[b], min(chunk, n - b))
        for c in range(nt):
            total = total + sums[c]
    return total


cdef float _sum_lanes(const float *x, Py_ssize_t n) noexcept nogil:
    cdef float sm[LANES]
    cdef Py_ssize_t i = 0, j
    cdef float total = 0
    for j in range(LANES):
        sm[j] = 0
    while i + LANES <= n:
        for j in range(LANES):
            sm[j] = sm[j] + x[i + j]
        i += LANES
    while i < n:
        sm[0] = sm[0] + x[i]
        i += 1
    for j in range(LANES):
        total = total + sm[j]
    return total
