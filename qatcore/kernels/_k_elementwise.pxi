# Element-wise kernels: fake quantize (+ STE mask), quantize to integer codes, dequantize.
#
# Arithmetic is float32 in the Rust order, division not multiplication by the inverse:
#   q = clamp(round_half_away(x / scale + zero_point), qmin, qmax)
#   y = (q - zero_point) * scale
# The clamp is two comparisons (vmaxps/vminps), which matches Rust's f32::clamp including
# NaN (NaN stays NaN) and the sign of zero.

from libc.float cimport FLT_MAX
from libc.math cimport fabsf
from libc.string cimport memcpy

cdef extern from "qc_fq.h" nogil:
    Py_ssize_t qc_fake_quantize_simd(const float *x, float *out, uint8_t *mask, Py_ssize_t n,
                                     float scale, float zero_point, float qmin, float qmax,
                                     int zp_zero)

ctypedef fused code_t:
    int8_t
    uint8_t
    int16_t
    uint16_t


cdef void _fake_quantize_core(const float *x, float *out, uint8_t *mask, Py_ssize_t n,
                              float scale, float zero_point,
                              float qmin, float qmax) noexcept nogil:
    """out[i] = fake-quantized x[i]; mask[i] = 1 where the rounded value lies in
    [qmin, qmax] (clipped STE), when mask is not NULL.  out may alias x.

    With zero_point == +0.0 (every symmetric config) `r - zero_point` is r itself, bit
    for bit (NaN and -0.0 included), so that loop drops the subtraction; the addition
    stays (it turns x / scale == -0.0 into +0.0, as Rust does)."""
    cdef Py_ssize_t i, done
    cdef float v, r
    cdef bint zp_zero = zero_point == 0 and copysignf(1, zero_point) > 0
    if mask == NULL:
        # AVX2 / AVX-512 targets: a SIMD body (qc_fq.h) takes a prefix, bit-identical
        done = qc_fake_quantize_simd(x, out, NULL, n, scale, zero_point, qmin, qmax, zp_zero)
        x += done
        out += done
        n -= done
        if zp_zero:
            for i in range(n):
                r = _round_half_away(x[i] / scale + zero_point)
                r = qmin if r < qmin else r
                r = qmax if r > qmax else r
                out[i] = r * scale
        else:
            for i in range(n):
                r = _round_half_away(x[i] / scale + zero_point)
                r = qmin if r < qmin else r
                r = qmax if r > qmax else r
                out[i] = (r - zero_point) * scale
    else:
        done = qc_fake_quantize_simd(x, out, mask, n, scale, zero_point, qmin, qmax, zp_zero)
        x += done
        out += done
        mask += done
        n -= done
        if zp_zero:
            for i in range(n):
                r = _round_half_away(x[i] / scale + zero_point)
                mask[i] = (r >= qmin) & (r <= qmax)
                r = qmin if r < qmin else r
                r = qmax if r > qmax else r
                out[i] = r * scale
        else:
            for i in range(n):
                r = _round_half_away(x[i] / scale + zero_point)
                mask[i] = (r >= qmin) & (r <= qmax)
                r = qmin if r < qmin else r
                r = qmax if r > qmax else r
                out[i] = (r - zero_point) * scale


def fake_quantize(cnp.ndarray x not None,    # IN, C-contiguous float32
                  cnp.ndarray out not None,  # OUT, float32, same size (may be x itself)
                  float scale, float zero_point, float qmin, float qmax,
                  cnp.ndarray mask=None,     # OUT, uint8, same size, or None
                  int n_threads=1):
    """Fused quantize -> dequantize of contiguous float32 x into out (and the STE mask).
    Returns 0, or 1 without writing anything when out overlaps x without being x (an
    element would be overwritten before it is read)."""
    cdef const float *xp = _f32_in(x, "x")
    cdef Py_ssize_t n = cnp.PyArray_SIZE(x)
    cdef float *op = <float *>_out_ptr(out, cnp.NPY_FLOAT32, n, "out")
    cdef int nt = _threads_for(n, n_threads)
    cdef Py_ssize_t chunk, c, b
    cdef uint8_t *m = NULL
    if n == 0:
        return 0
    if op != xp and <const float *>op < xp + n and xp < <const float *>op + n:
        return 1
    if mask is not None:
        m = <uint8_t *>_out_ptr(mask, cnp.NPY_UINT8, n, "mask")
    with nogil:
        if nt == 1:
            _fake_quantize_core(xp, op, m, n, scale, zero_point, qmin, qmax)
        else:
            chunk = (n + nt - 1) // nt
            chunk = (chunk + 63) & ~(<Py_ssize_t>63)   # cache-line aligned split
            for c in prange(nt, num_threads=nt, schedule="static"):
                b = c * chunk
                if b < n:
                    _fake_quantize_core(xp + b, op + b, (m + b) if m != NULL else NULL,
                                        min(chunk, n - b), scale, zero_point, qmin, qmax)
    return 0


# The calibrating call on a small batch (observe MIN_MAX / MOVING_AVERAGE, the Rust
# qparams, fake quantize) in one call: its cost is the Python around it, so the steps
# that QuantObserver.observe + compute_qparams + fake_quantize run one by one (~3 µs for
# 1 000 elements) run here in C on the serial path.  Same float32 operations in the same
# order as observer.py (_moving_average_step, _qparams for numerics "aprender"), so the
# result is bit for bit the one of the step-by-step path (tests/test_calibrate_fused.py).
cdef enum:
    CAL_MAX = PAR_MIN       # larger batches take the step-by-step (threaded) path


cdef cnp.ndarray _small_f32(object x):
    """x when the one-call small-batch paths apply to it: exactly a numpy.ndarray (a
    subclass's attributes are not trusted), aligned C-contiguous native float32, with
    1 <= size < CAL_MAX; else None."""
    cdef cnp.ndarray a
    if not cnp.PyArray_CheckExact(x):
        return None
    a = <cnp.ndarray>x
    if (cnp.PyArray_TYPE(a) != cnp.NPY_FLOAT32 or not cnp.PyArray_ISCARRAY_RO(a)
            or not cnp.PyArray_ISNOTSWAPPED(a)):
        return None
    if cnp.PyArray_SIZE(a) == 0 or cnp.PyArray_SIZE(a) >= CAL_MAX:
        return None
    return a


cdef tuple _fake_quantize_new(cnp.ndarray a, float scale, float zero_point, float qmin,
                              float qmax, bint want_mask):
    """(out, mask) of a _small_f32 array: fresh float32 out of a's shape, the uint8 STE
    mask (a's size) when wanted, else None."""
    cdef cnp.npy_intp n = cnp.PyArray_SIZE(a)
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(cnp.PyArray_NDIM(a), cnp.PyArray_DIMS(a),
                                             cnp.NPY_FLOAT32, 0)
    cdef cnp.ndarray mask = None
    cdef uint8_t *m = NULL
    if want_mask:
        mask = cnp.PyArray_EMPTY(1, &n, cnp.NPY_UINT8, 0)
        m = <uint8_t *>cnp.PyArray_DATA(mask)
    with nogil:
        _fake_quantize_core(<const float *>cnp.PyArray_DATA(a),
                            <float *>cnp.PyArray_DATA(out), m, n, scale, zero_point,
                            qmin, qmax)
    return out, mask


def calibrate_fake_quantize(object x,  # IN, used if _small_f32 accepts it
                            double run_min, double run_max, Py_ssize_t count,
                            bint moving_average, float avg_min, float avg_max,
                            bint symmetric, float qmin, float qmax, bint want_mask):
    """Observe x into the running (min, max) (MIN_MAX, or MOVING_AVERAGE from the state
    `avg_min`/`avg_max` with `moving_average`), compute the aprender qparams and
    fake-quantize x.

    Returns ``(out, mask, lo, hi, new_min, new_max, scale, zero_point)`` (out: float32 of
    x's shape; mask: uint8 of x's size, or None; lo/hi: the batch's own range), or the
    index of the first NaN/±Inf in x (an int; nothing computed), or -1 when _small_f32
    refuses x."""
    cdef cnp.ndarray a = _small_f32(x)
    if a is None:
        return -1
    cdef const float *xp = <const float *>cnp.PyArray_DATA(a)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(a)
    cdef float lo, hi, mn, mx, scale, zp, diff, max_abs
    cdef float c = 0.01
    cdef float one_minus_c = (<float>1) - c         # float32, as in observer.py
    cdef double wide
    cdef Py_ssize_t bad
    with nogil:
        bad = _minmax_serial(xp, n, &lo, &hi)
    if bad >= 0:
        return bad
    if moving_average:
        if count == 0:
            mn, mx = lo, hi
        else:
            mn = one_minus_c * avg_min + c * lo
            mx = one_minus_c * avg_max + c * hi
    else:
        mn = lo if lo < run_min else <float>run_min
        mx = hi if hi > run_max else <float>run_max
    if symmetric:
        max_abs = fabsf(mn)
        if fabsf(mx) > max_abs:
            max_abs = fabsf(mx)
        scale = max_abs / qmax if max_abs > 0 else 1
        if scale == 0:              # max_abs / qmax underflowed (denormal data)
            scale = 1
        zp = 0
    else:
        diff = mx - mn
        if diff - diff != 0:        # the range overflows float32: saturate the step
            wide = (<double>mx - <double>mn) / <double>(qmax - qmin)
            scale = <float>(wide if wide < FLT_MAX else FLT_MAX)
        elif fabsf(diff) > <float>1e-10:
            scale = diff / (qmax - qmin)
        else:
            scale = 1
        zp = qmin - mn / scale
    out, mask = _fake_quantize_new(a, scale, zp, qmin, qmax, want_mask)
    return out, mask, lo, hi, mn, mx, scale, zp


def fake_quantize_fresh(object x,  # IN, used if _small_f32 accepts it
                        float scale, float zero_point, float qmin, float qmax,
                        bint want_mask):
    """The frozen call on a small batch with a fresh output: ``(out, mask)`` (out float32
    of x's shape; mask uint8 of x's size, or None), or None when _small_f32 refuses x."""
    cdef cnp.ndarray a = _small_f32(x)
    if a is None:
        return None
    return _fake_quantize_new(a, scale, zero_point, qmin, qmax, want_mask)


cdef void _quantize_core(const float *x, code_t *out, Py_ssize_t n, float scale,
                         float zero_point, float qmin, float qmax) noexcept nogil:
    """out[i] = clamp(round(x[i] / scale + zero_point), qmin, qmax) as an integer code.
    qmin/qmax must lie inside code_t's range; NaN gives 0 (as Rust's saturating `as`)."""
    cdef Py_ssize_t i
    cdef float r
    for i in range(n):
        r = _round_half_away(x[i] / scale + zero_point)
        r = qmin if r < qmin else r
        r = qmax if r > qmax else r
        r = r if r == r else 0
        out[i] = <code_t>(<int32_t>r)


cdef void _quantize_run(const float *x, code_t *out, Py_ssize_t n, float scale,
                        float zero_point, float qmin, float qmax, int nt) noexcept nogil:
    cdef Py_ssize_t chunk, c, b
    if nt == 1:
        _quantize_core(x, out, n, scale, zero_point, qmin, qmax)
    else:
        chunk = (n + nt - 1) // nt
        chunk = (chunk + 63) & ~(<Py_ssize_t>63)
        for c in prange(nt, num_threads=nt, schedule="static"):
            b = c * chunk
            if b < n:
                _quantize_core(x + b, out + b, min(chunk, n - b), scale, zero_point, qmin, qmax)


def quantize(cnp.ndarray x not None,    # IN, C-contiguous float32
             cnp.ndarray out not None,  # OUT, same size; int8, uint8, int16 or uint16
             float scale, float zero_point, float qmin, float qmax,
             int n_threads=1):
    """Quantize contiguous float32 x to integer codes in out (qmin/qmax inside the code
    dtype's range)."""
    cdef const float *xp = _f32_in(x, "x")
    cdef Py_ssize_t n = cnp.PyArray_SIZE(x)
    cdef int code = cnp.PyArray_TYPE(out)
    cdef void *op
    cdef int nt = _threads_for(n, n_threads)
    if code not in (cnp.NPY_INT8, cnp.NPY_UINT8, cnp.NPY_INT16, cnp.NPY_UINT16):
        raise ValueError("out must be an int8, uint8, int16 or uint16 array")
    op = _out_ptr(out, code, n, "out")
    if n == 0:
        return
    with nogil:
        if code == cnp.NPY_INT8:
            _quantize_run(xp, <int8_t *>op, n, scale, zero_point, qmin, qmax, nt)
        elif code == cnp.NPY_UINT8:
            _quantize_run(xp, <uint8_t *>op, n, scale, zero_point, qmin, qmax, nt)
        elif code == cnp.NPY_INT16:
            _quantize_run(xp, <int16_t *>op, n, scale, zero_point, qmin, qmax, nt)
        else:
            _quantize_run(xp, <uint16_t *>op, n, scale, zero_point, qmin, qmax, nt)


cdef void _dequantize_core(const code_t *q, float *out, Py_ssize_t n, float scale,
                           float zero_point) noexcept nogil:
    """out[i] = (q[i] - zero_point) * scale in float32."""
    cdef Py_ssize_t i
    for i in range(n):
        out[i] = (<float>q[i] - zero_point) * scale


cdef void _dequantize_run(const code_t *q, float *out, Py_ssize_t n, float scale,
                          float zero_point, int nt) noexcept nogil:
    cdef Py_ssize_t chunk, c, b
    if nt == 1:
        _dequantize_core(q, out, n, scale, zero_point)
    else:
        chunk = (n + nt - 1) // nt
        chunk = (chunk + 63) & ~(<Py_ssize_t>63)
        for c in prange(nt, num_threads=nt, schedule="static"):
            b = c * chunk
            if b < n:
                _dequantize_core(q + b, out + b, min(chunk, n - b), scale, zero_point)


def dequantize(cnp.ndarray q not None,    # IN, C-contiguous int8, uint8, int16 or uint16
               cnp.ndarray out not None,  # OUT, float32, same size
               float scale, float zero_point, int n_threads=1):
    """Dequantize contiguous integer codes to float32."""
    cdef int code = cnp.PyArray_TYPE(q)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(q)
    cdef const void *qp = cnp.PyArray_DATA(q)
    cdef float *op
    cdef int nt = _threads_for(n, n_threads)
    if (code not in (cnp.NPY_INT8, cnp.NPY_UINT8, cnp.NPY_INT16, cnp.NPY_UINT16)
            or not cnp.PyArray_IS_C_CONTIGUOUS(q)):
        raise ValueError("q must be a C-contiguous int8, uint8, int16 or uint16 array")
    op = <float *>_out_ptr(out, cnp.NPY_FLOAT32, n, "out")
    if n == 0:
        return
    with nogil:
        if code == cnp.NPY_INT8:
            _dequantize_run(<const int8_t *>qp, op, n, scale, zero_point, nt)
        elif code == cnp.NPY_UINT8:
            _dequantize_run(<const uint8_t *>qp, op, n, scale, zero_point, nt)
        elif code == cnp.NPY_INT16:
            _dequantize_run(<const int16_t *>qp, op, n, scale, zero_point, nt)
        else:
            _dequantize_run(<const uint16_t *>qp, op, n, scale, zero_point, nt)


# --- benchmark probes: the machine's limits, measured with the same build flags -------

cdef void _divide_core(const float *x, float *out, Py_ssize_t n, float scale) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        out[i] = x[i] / scale


cdef void _copy_core(const float *x, float *out, Py_ssize_t n) noexcept nogil:
    memcpy(out, x, n * sizeof(float))


def probe_divide(const float[::1] x,  # IN
                 float[::1] out,      # OUT, same length
                 float scale, int n_threads=1):
    """Benchmark probe: out = x / scale, one pass of pure division (the divider's limit
    for fake_quantize, which must divide rather than multiply by the inverse)."""
    cdef Py_ssize_t n = x.shape[0]
    cdef int nt = _threads_for(n, n_threads)
    cdef Py_ssize_t chunk, c, b
    if n == 0:
        return
    with nogil:
        if nt == 1:
            _divide_core(&x[0], &out[0], n, scale)
        else:
            chunk = (n + nt - 1) // nt
            chunk = (chunk + 63) & ~(<Py_ssize_t>63)
            for c in prange(nt, num_threads=nt, schedule="static"):
                b = c * chunk
                if b < n:
                    _divide_core(&x[b], &out[b], min(chunk, n - b), scale)


def probe_copy(const float[::1] x,  # IN
               float[::1] out,      # OUT, same length
               int n_threads=1):
    """Benchmark probe: memcpy x into out (copy bandwidth, split across threads)."""
    cdef Py_ssize_t n = x.shape[0]
    cdef int nt = _threads_for(n, n_threads)
    cdef Py_ssize_t chunk, c, b
    if n == 0:
        return
    with nogil:
        if nt == 1:
            _copy_core(&x[0], &out[0], n)
        else:
            chunk = (n + nt - 1) // nt
            chunk = (chunk + 63) & ~(<Py_ssize_t>63)
            for c in prange(nt, num_threads=nt, schedule="static"):
                b = c * chunk
                if b < n:
                    _copy_core(&x[b], &out[b], min(chunk, n - b))
