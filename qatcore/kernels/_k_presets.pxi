# Fake quantize in other frameworks' arithmetic: FakeQuantConfig(numerics="torch"|"onnx").
# The loops are plain C in qc_presets.h (they vectorize on every target); the formulas
# and the edge cases each framework has (NaN, the per-channel int64 cast) are there.

cdef extern from "qc_presets.h" nogil:
    int QC_TORCH, QC_ONNX, QC_TORCH_CHANNEL
    void qc_fq_preset(const float *x, float *out, uint8_t *mask, Py_ssize_t n, float scale,
                      float inv, float zp, float qmin, float qmax, int mode)
    void qc_fq_preset_channels(const float *x, float *out, uint8_t *mask, Py_ssize_t outer,
                               Py_ssize_t C, Py_ssize_t inner, const float *scale,
                               const float *inv, const float *zp, float qmin, float qmax,
                               int mode)
    void qc_grad_times_mask(const float *g, const uint8_t *mask, float *out, Py_ssize_t n)
    Py_ssize_t qc_lsq_backward_preset(const float *x, const float *g, float *gin, Py_ssize_t n,
                                      float scale, float inv, float zp, float qmin, float qmax,
                                      int identity, int mode, double *sums)

#: Preset modes of the kernels below.
PRESET_TORCH = QC_TORCH
PRESET_ONNX = QC_ONNX
PRESET_TORCH_CHANNEL = QC_TORCH_CHANNEL


cdef inline float _inv32(float scale) noexcept nogil:
    # torch: `float inv_scale = 1.0f / scale` -- a float32 division, then x * inv_scale
    cdef float one = 1.0
    return one / scale


def fake_quantize_preset(cnp.ndarray x not None,    # IN, C-contiguous float32
                         cnp.ndarray out not None,  # OUT, float32, same size (may be x)
                         float scale, float zero_point, float qmin, float qmax, int mode,
                         cnp.ndarray mask=None,     # OUT, uint8, same size, or None
                         int n_threads=1):
    """Fused quantize -> dequantize in a preset's arithmetic (mode PRESET_TORCH,
    PRESET_ONNX or PRESET_TORCH_CHANNEL), one scale and integer zero point.  Returns 0,
    or 1 without writing when out overlaps x without being x."""
    cdef const float *xp = _f32_in(x, "x")
    cdef Py_ssize_t n = cnp.PyArray_SIZE(x)
    cdef float *op = <float *>_out_ptr(out, cnp.NPY_FLOAT32, n, "out")
    cdef int nt = _threads_for(n, n_threads)
    cdef Py_ssize_t chunk, c, b
    cdef uint8_t *m = NULL
    cdef float inv = _inv32(scale)
    if n == 0:
        return 0
    if op != xp and <const float *>op < xp + n and xp < <const float *>op + n:
        return 1
    if mask is not None:
        m = <uint8_t *>_out_ptr(mask, cnp.NPY_UINT8, n, "mask")
    with nogil:
        if nt == 1:
            qc_fq_preset(xp, op, m, n, scale, inv, zero_point, qmin, qmax, mode)
        else:
            chunk = (n + nt - 1) // nt
            chunk = (chunk + 63) & ~(<Py_ssize_t>63)
            for c in prange(nt, num_threads=nt, schedule="static"):
                b = c * chunk
                if b < n:
                    qc_fq_preset(xp + b, op + b, (m + b) if m != NULL else NULL,
                                 min(chunk, n - b), scale, inv, zero_point, qmin, qmax, mode)
    return 0


def fake_quantize_preset_channels(cnp.ndarray x not None,    # IN, C-contiguous float32
                                  cnp.ndarray out not None,  # OUT, float32, same size
                                  const float[::1] scale,    # IN, (C,)
                                  const float[::1] zero_point,  # IN, (C,) integer values
                                  Py_ssize_t outer, Py_ssize_t inner,
                                  float qmin, float qmax, int mode,
                                  cnp.ndarray mask=None):    # OUT, uint8, same size, or None
    """Per-channel fake quantize: x viewed as (outer, C, inner), channel c quantized with
    scale[c] and zero_point[c] in a preset's arithmetic.  Returns 0, or 1 without
    writing when out overlaps x without being x."""
    cdef const float *xp = _f32_in(x, "x")
    cdef Py_ssize_t n = cnp.PyArray_SIZE(x)
    cdef float *op = <float *>_out_ptr(out, cnp.NPY_FLOAT32, n, "out")
    cdef Py_ssize_t C = scale.shape[0], i
    cdef uint8_t *m = NULL
    cdef cnp.ndarray inv
    cdef float[::1] inv_v
    if zero_point.shape[0] != C or outer * C * inner != n:
        raise ValueError("scale/zero_point do not match x's (outer, C, inner) view")
    if n == 0:
        return 0
    if op != xp and <const float *>op < xp + n and xp < <const float *>op + n:
        return 1
    if mask is not None:
        m = <uint8_t *>_out_ptr(mask, cnp.NPY_UINT8, n, "mask")
    inv = cnp.PyArray_EMPTY(1, [C], cnp.NPY_FLOAT32, 0)
    inv_v = inv
    for i in range(C):
        inv_v[i] = _inv32(scale[i])
    with nogil:
        qc_fq_preset_channels(xp, op, m, outer, C, inner, &scale[0], &inv_v[0],
                              &zero_point[0], qmin, qmax, mode)
    return 0


def lsq_backward_preset(const float[::1] x,      # IN, the forward's input
                        const float[::1] grad,   # IN, dL/dy, same length
                        float[::1] grad_in,      # OUT, dL/dx, same length
                        float scale, float zero_point, float qmin, float qmax,
                        int mode, bint identity=False):
    """lsq_backward (see _k_lsq.pxi) with v, r and the inside test computed in a preset's
    arithmetic; returns (bad, sum_inside, sum_below, sum_above)."""
    cdef Py_ssize_t n = x.shape[0]
    cdef Py_ssize_t bad = -1
    cdef double sums[3]
    cdef float inv = _inv32(scale)
    sums[0] = 0
    sums[1] = 0
    sums[2] = 0
    if n == 0:
        return (-1, 0.0, 0.0, 0.0)
    with nogil:
        bad = qc_lsq_backward_preset(&x[0], &grad[0], &grad_in[0], n, scale, inv, zero_point,
                                     qmin, qmax, 1 if identity else 0, mode, sums)
    return (bad, sums[0], sums[1], sums[2])


def grad_times_mask(cnp.ndarray grad not None,   # IN, C-contiguous float32
                    cnp.ndarray mask not None,   # IN, C-contiguous uint8, same size
                    cnp.ndarray out not None):   # OUT, float32, same size (may be grad)
    """Clipped-STE backward in torch's form: out = grad * mask (float multiply)."""
    cdef const float *gp = _f32_in(grad, "grad")
    cdef Py_ssize_t n = cnp.PyArray_SIZE(grad)
    cdef float *op = <float *>_out_ptr(out, cnp.NPY_FLOAT32, n, "out")
    if (cnp.PyArray_TYPE(mask) != cnp.NPY_UINT8 or not cnp.PyArray_IS_C_CONTIGUOUS(mask)
            or cnp.PyArray_SIZE(mask) != n):
        raise ValueError("mask must be a C-contiguous uint8 array of grad's size")
    cdef const uint8_t *mp = <const uint8_t *>cnp.PyArray_DATA(mask)
    if n == 0:
        return
    with nogil:
        qc_grad_times_mask(gp, mp, op, n)
