# Backward kernels of FakeQuantize: straight-through estimator (STE) and LSQ.
#
# LSQ (Esser et al. 2020, "Learned Step Size Quantization", eq. 3) and its zero-point
# extension (LSQ+, Bhalgat et al. 2020) for y = (clamp(round(x/s + z), qmin, qmax) - z)*s,
# with round's derivative taken as 1 (STE), v = x/s + z, r = round_half_away(v):
#   dy/dx = 1 inside (qmin <= r <= qmax), 0 outside (clipped STE)
#   dy/ds = r - v inside, qmin - z below, qmax - z above
#   dy/dz = 0 inside, -s outside
# v and r are recomputed in float32 exactly as the forward kernel computes them, so the
# inside/outside decision is the forward's mask bit for bit.  r - v is exact in float32
# (Sterbenz: |r - v| <= 0.5 and r, v within a factor 2, or r = 0).  Sums are float64.
#
# Non-finite gradients are detected without an early exit (which would stop gcc from
# vectorizing): lanes accumulate g - g, which is 0 for finite g and NaN otherwise; only
# a block flagged that way is rescanned for the first bad index.

cdef enum:
    _BW_LANES = 8


cdef Py_ssize_t _bw_first_nonfinite(const float *g, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if not (g[i] - g[i] == 0):
            return i
    return -1


cdef Py_ssize_t _ste_backward_core(const float *g, const uint8_t *mask, float *out,
                                   Py_ssize_t n) noexcept nogil:
    """out[i] = g[i] where mask[i] else 0 (mask NULL: out = g); returns the first index
    of a non-finite g, or -1."""
    cdef Py_ssize_t i, j, k, nb = n - n % _BW_LANES
    cdef float lanes[_BW_LANES]
    cdef float v, acc = 0
    for j in range(_BW_LANES):
        lanes[j] = 0
    if mask == NULL:
        for k in range(nb // _BW_LANES):
            i = k * _BW_LANES
            for j in range(_BW_LANES):
                v = g[i + j]
                out[i + j] = v
                lanes[j] += v - v
        for i in range(nb, n):
            v = g[i]
            out[i] = v
            acc += v - v
    else:
        for k in range(nb // _BW_LANES):
            i = k * _BW_LANES
            for j in range(_BW_LANES):
                v = g[i + j]
                out[i + j] = v if mask[i + j] else 0.0
                lanes[j] += v - v
        for i in range(nb, n):
            v = g[i]
            out[i] = v if mask[i] else 0.0
            acc += v - v
    for j in range(_BW_LANES):
        acc += lanes[j]
    if acc == 0:
        return -1
    return _bw_first_nonfinite(g, n)


def ste_backward(const float[::1] grad,         # IN
                 const uint8_t[::1] mask,       # IN, same length, or None (identity STE)
                 float[::1] out):               # OUT, same length
    """Straight-through backward: out = grad where mask, else 0.  Requires contiguous
    float32 grad/out and uint8 mask of one length.  Returns the first index of a
    non-finite grad, or -1 (out is then garbage)."""
    cdef Py_ssize_t n = grad.shape[0]
    cdef Py_ssize_t bad
    cdef const uint8_t *m = NULL
    if n == 0:
        return -1
    if mask is not None:
        m = &mask[0]
    with nogil:
        bad = _ste_backward_core(&grad[0], m, &out[0], n)
    return bad


cdef enum:
    _LSQ_BLOCK = 256


cdef Py_ssize_t _lsq_backward_core(const float *x, const float *g, float *gin, Py_ssize_t n,
                                   float scale, float zero_point, float qmin, float qmax,
                                   bint identity, double *sums) noexcept nogil:
    """gin = dL/dx (clipped, or identity, STE); sums[0] = sum g*(r - v) over the inside
    elements, sums[1] = sum g below qmin, sums[2] = sum g above qmax (float64).
    Returns the first index of a non-finite g, or -1.

    Per block of _LSQ_BLOCK elements: a float32 pass (division, rounding, selects: it
    vectorizes) writes gin and the per-element terms to small stack buffers, then
    float64 passes sum them over _BW_LANES lanes (they vectorize too; one loop mixing
    both widths does not)."""
    cdef float g_buf[_LSQ_BLOCK]
    cdef float d_buf[_LSQ_BLOCK]
    cdef float lo_buf[_LSQ_BLOCK]
    cdef float hi_buf[_LSQ_BLOCK]
    cdef double s_in[_BW_LANES]
    cdef double s_lo[_BW_LANES]
    cdef double s_hi[_BW_LANES]
    cdef float bad[_BW_LANES]
    cdef Py_ssize_t start, m, b, k, j, nk
    cdef float v, r, gi, acc = 0
    cdef int lo, hi, out, keep
    cdef int ident = 1 if identity else 0
    for j in range(_BW_LANES):
        s_in[j] = 0
        s_lo[j] = 0
        s_hi[j] = 0
        bad[j] = 0
    start = 0
    while start < n:
        m = n - start
        if m > _LSQ_BLOCK:
            m = _LSQ_BLOCK
        for b in range(m):
            v = x[start + b] / scale + zero_point
            r = _round_half_away(v)
            gi = g[start + b]
            lo = r < qmin
            hi = r > qmax
            out = lo | hi
            keep = ident | (out ^ 1)
            gin[start + b] = gi if keep else 0.0
            g_buf[b] = gi
            d_buf[b] = 0.0 if out else r - v
            lo_buf[b] = gi if lo else 0.0
            hi_buf[b] = gi if hi else 0.0
        # pad the block to whole lanes with zeros
        b = m
        while b % _BW_LANES:
            g_buf[b] = 0.0
            d_buf[b] = 0.0
            lo_buf[b] = 0.0
            hi_buf[b] = 0.0
            b += 1
        nk = b // _BW_LANES
        for k in range(nk):
            for j in range(_BW_LANES):
                s_in[j] += <double>g_buf[k * _BW_LANES + j] * <double>d_buf[k * _BW_LANES + j]
        for k in range(nk):
            for j in range(_BW_LANES):
                s_lo[j] += <double>lo_buf[k * _BW_LANES + j]
        for k in range(nk):
            for j in range(_BW_LANES):
                s_hi[j] += <double>hi_buf[k * _BW_LANES + j]
        for k in range(nk):
            for j in range(_BW_LANES):
                bad[j] += g_buf[k * _BW_LANES + j] - g_buf[k * _BW_LANES + j]
        start += m
    sums[0] = 0
    sums[1] = 0
    sums[2] = 0
    for j in range(_BW_LANES):
        sums[0] += s_in[j]
        sums[1] += s_lo[j]
        sums[2] += s_hi[j]
        acc += bad[j]
    if acc == 0:
        return -1
    return _bw_first_nonfinite(g, n)


def lsq_backward(const float[::1] x,            # IN, the forward's input
                 const float[::1] grad,         # IN, dL/dy, same length
                 float[::1] grad_in,            # OUT, dL/dx, same length
                 float scale, float zero_point, float qmin, float qmax,
                 bint identity=False):
    """Fused LSQ backward over contiguous float32 x and grad (one pass): writes grad_in
    and returns (bad, sum_inside, sum_below, sum_above), the float64 sums above; bad is
    the first index of a non-finite grad, or -1.  The caller forms
    dL/ds = sum_inside + (qmin - z)*sum_below + (qmax - z)*sum_above and
    dL/dz = -s*(sum_below + sum_above), then applies the LSQ gradient scale."""
    cdef Py_ssize_t n = x.shape[0]
    cdef Py_ssize_t bad = -1
    cdef double sums[3]
    sums[0] = 0
    sums[1] = 0
    sums[2] = 0
    if n == 0:
        return (-1, 0.0, 0.0, 0.0)
    with nogil:
        bad = _lsq_backward_core(&x[0], &grad[0], &grad_in[0], n, scale, zero_point,
                                 qmin, qmax, identity, sums)
    return (bad, sums[0], sums[1], sums[2])
