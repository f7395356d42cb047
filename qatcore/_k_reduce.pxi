# Reductions: min/max with the first non-finite index, mean/std in float64.

from libc.math cimport sqrt, INFINITY

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
    Requires contiguous float32; accumulates in LANES float lanes."""
    cdef float lo[LANES]
    cdef float hi[LANES]
    cdef float chk[LANES]
    cdef Py_ssize_t i, j, start, stop
    cdef float v, bad
    cdef float glo = INFINITY
    cdef float ghi = -INFINITY
    for j in range(LANES):
        lo[j] = glo
        hi[j] = ghi
    start = 0
    while start < n:
        stop = start + RBLOCK
        if stop > n:
            stop = n
        for j in range(LANES):
            chk[j] = 0
        i = start
        while i + LANES <= stop:
            for j in range(LANES):
                v = x[i + j]
                lo[j] = v if v < lo[j] else lo[j]
                hi[j] = v if v > hi[j] else hi[j]
                chk[j] = chk[j] + (v - v)
            i += LANES
        while i < stop:
            v = x[i]
            lo[0] = v if v < lo[0] else lo[0]
            hi[0] = v if v > hi[0] else hi[0]
            chk[0] = chk[0] + (v - v)
            i += 1
        bad = 0
        for j in range(LANES):
            bad = bad + chk[j]
        if bad != 0:        # NaN: some element of this block is not finite
            return start + _first_nonfinite(x + start, stop - start)
        start = stop
    for j in range(LANES):
        glo = lo[j] if lo[j] < glo else glo
        ghi = hi[j] if hi[j] > ghi else ghi
    lo_out[0] = glo
    hi_out[0] = ghi
    return -1


def minmax(const float[::1] x,  # IN
           int n_threads=1):
    """(min, max, first_bad) of a contiguous float32 array in one pass.

    first_bad is the index of the first NaN/±Inf, or -1; min/max are only meaningful
    when it is -1.  An empty array gives (inf, -inf, -1)."""
    cdef Py_ssize_t n = x.shape[0]
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
            bad = _minmax_serial(&x[0], n, &lo, &hi)
        else:
            chunk = (n + nt - 1) // nt
            for c in prange(nt, num_threads=nt, schedule="static"):
                b = c * chunk
                bads[c] = -1
                los[c] = INFINITY
                his[c] = -INFINITY
                if b < n:
                    bads[c] = _minmax_serial(&x[b], min(chunk, n - b), &los[c], &his[c])
                    if bads[c] >= 0:
                        bads[c] = bads[c] + b
            for c in range(nt):
                if bads[c] >= 0:
                    bad = bads[c]
                    break
                lo = los[c] if los[c] < lo else lo
                hi = his[c] if his[c] > hi else hi
    return lo, hi, bad


cdef Py_ssize_t _moments_serial(const float *x, Py_ssize_t n,
                                double *mean_out, double *m2_out) noexcept nogil:
    """Mean and sum of squared deviations of x[0:n] in float64, blockwise: each L1-resident
    block is summed, then its deviations from the block mean are squared and summed, and
    the blocks are merged with Chan et al.'s pairwise update (no cancellation, whatever
    the data's offset).  Returns the first non-finite index or -1."""
    cdef double s[LANES]
    cdef double q[LANES]
    cdef Py_ssize_t i, j, start, stop, nb
    cdef double bsum, bmean, bm2, d, delta, mean = 0, m2 = 0
    cdef Py_ssize_t count = 0
    start = 0
    while start < n:
        stop = start + RBLOCK
        if stop > n:
            stop = n
        nb = stop - start
        for j in range(LANES):
            s[j] = 0
            q[j] = 0
        i = start
        while i + LANES <= stop:
            for j in range(LANES):
                s[j] = s[j] + <double>x[i + j]
            i += LANES
        while i < stop:
            s[0] = s[0] + <double>x[i]
            i += 1
        bsum = 0
        for j in range(LANES):
            bsum = bsum + s[j]
        if bsum - bsum != 0:
            return start + _first_nonfinite(x + start, nb)
        bmean = bsum / nb
        i = start
        while i + LANES <= stop:
            for j in range(LANES):
                d = <double>x[i + j] - bmean
                q[j] = q[j] + d * d
            i += LANES
        while i < stop:
            d = <double>x[i] - bmean
            q[0] = q[0] + d * d
            i += 1
        bm2 = 0
        for j in range(LANES):
            bm2 = bm2 + q[j]
        # Chan, Golub & LeVeque (1979): merge (count, mean, m2) with (nb, bmean, bm2).
        delta = bmean - mean
        m2 = m2 + bm2 + delta * delta * (<double>count * nb) / (count + nb)
        mean = mean + delta * nb / (count + nb)
        count += nb
        start = stop
    mean_out[0] = mean
    m2_out[0] = m2
    return -1


def mean_std(const float[::1] x,  # IN
             int n_threads=1):
    """(mean, std, first_bad) of a contiguous float32 array, population std, float64
    accumulation.  first_bad is the first NaN/±Inf index or -1.  Empty: (nan, nan, -1)."""
    cdef Py_ssize_t n = x.shape[0]
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
            bad = _moments_serial(&x[0], n, &mean, &m2)
        else:
            chunk = (n + nt - 1) // nt
            for c in prange(nt, num_threads=nt, schedule="static"):
                b = c * chunk
                bads[c] = -1
                means[c] = 0
                m2s[c] = 0
                if b < n:
                    bads[c] = _moments_serial(&x[b], min(chunk, n - b), &means[c], &m2s[c])
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
