# Integer CNN kernels of the integer graph (qatcore/model/ops): CONV_2D (im2col + the int8
# GEMM of _k_gemm.pxi + requantization), DEPTHWISE_CONV_2D (direct), AVERAGE/MAX_POOL_2D,
# and requantization in the three roundings.  The loops are C in qc_conv.h.  The ops in
# qatcore/model/ops validate shapes and values once per plan; these wrappers only check
# dtype, contiguity, writability and element counts (a few ns each), so a wrong call
# raises instead of reading out of bounds.

cdef extern from "qc_conv.h" nogil:
    ctypedef struct qc_window_t:
        Py_ssize_t n, h, w, c
        Py_ssize_t oh, ow
        int kh, kw, sh, sw, dh, dw
        int pt, pl
    ctypedef struct qc_conv_t:
        int groups
        Py_ssize_t cout
        const int8_t *packed
        const int32_t *wsum
        const int32_t *col_offset
        const int32_t *multiplier
        const int32_t *shift
        int32_t out_zp, qmin, qmax
        int8_t pad_value
        int direct
        int rounding
    int qc_conv2d_i8(const int8_t *x, const qc_window_t *g, const qc_conv_t *p, int8_t *out,
                     int n_threads)
    int qc_depthwise_i8(const int8_t *x, const qc_window_t *g, int mult,
                        const int8_t *weights, const int32_t *bias, int32_t input_offset,
                        const int32_t *multiplier, const int32_t *shift, int32_t out_zp,
                        int32_t qmin, int32_t qmax, int rounding, int8_t *out, int n_threads)
    int qc_pool_i8(const int8_t *x, const qc_window_t *g, int is_max, int32_t qmin,
                   int32_t qmax, int8_t *out, int n_threads)
    void qc_add_i8(const int8_t *a, const int8_t *b, Py_ssize_t n, int32_t zp_a, int32_t zp_b,
                   int32_t m_a, int32_t s_a, int32_t m_b, int32_t s_b, int32_t m_out,
                   int32_t s_out, int32_t zp_out, int32_t qmin, int32_t qmax, int single,
                   int8_t *out)
    void qc_softmax_i8(const int8_t *x, Py_ssize_t rows, Py_ssize_t depth, int32_t mult,
                       int32_t left, int32_t diff_min, int single, int8_t *out)
    void qc_requantize_rows_r(const int32_t *acc, Py_ssize_t m, Py_ssize_t n,
                              const int32_t *multiplier, const int32_t *shift,
                              int32_t zero_point, int32_t qmin, int32_t qmax, int rounding,
                              int8_t *out, Py_ssize_t ldo)


cdef inline void *_buf(cnp.ndarray a, int typenum, Py_ssize_t size, bint writable,
                       str name) except NULL:
    """Data pointer of a C-contiguous `typenum` array of `size` elements (any shape)."""
    if (cnp.PyArray_TYPE(a) != typenum or not cnp.PyArray_IS_C_CONTIGUOUS(a)
            or cnp.PyArray_SIZE(a) != size
            or (writable and not cnp.PyArray_ISWRITEABLE(a))):
        raise ValueError(f"{name}: wrong dtype, size, layout or writability for the kernel")
    if size == 0:
        return <void *>1                # never dereferenced: the loops have no work
    return cnp.PyArray_DATA(a)


cdef inline int _window(qc_window_t *g, tuple in_shape, tuple out_hw, tuple kernel,
                        tuple stride, tuple dilation, tuple pad_tl) except -1:
    g.n, g.h, g.w, g.c = in_shape
    g.oh, g.ow = out_hw
    g.kh, g.kw = kernel
    g.sh, g.sw = stride
    g.dh, g.dw = dilation
    g.pt, g.pl = pad_tl
    if (g.n < 0 or g.h < 1 or g.w < 1 or g.c < 1 or g.oh < 1 or g.ow < 1 or g.kh < 1
            or g.kw < 1 or g.sh < 1 or g.sw < 1 or g.dh < 1 or g.dw < 1 or g.pt < 0
            or g.pl < 0):
        raise ValueError("window geometry out of range")
    return 0


def conv2d_i8(cnp.ndarray x not None,           # IN (N, H, W, C) int8, C-contiguous
              cnp.ndarray out not None,         # OUT (N, OH, OW, COUT) int8
              tuple in_shape, tuple out_hw, tuple kernel, tuple stride, tuple dilation,
              tuple pad_tl, int groups,
              cnp.ndarray packed not None,      # IN groups x packed_size(COUT/groups, K)
              cnp.ndarray wsum not None,        # IN (COUT,) int32, per-filter weight sums
              cnp.ndarray col_offset not None,  # IN (COUT,) int32, bias - zp_in * wsum
              cnp.ndarray multiplier not None,  # IN (COUT,) int32 Q31
              cnp.ndarray shift not None,       # IN (COUT,) int32 exponents
              int out_zp, int qmin, int qmax, int pad_value, bint direct, int rounding,
              int n_threads=1):
    """CONV_2D of int8 NHWC input: im2col (input zero point in padded taps) into scratch,
    the packed int8 GEMM with int32 accumulation and col_offset, then per-channel
    requantization (rounding 0 gemmlowp, 1 single, 2 neon) and the output clamp.
    Returns 0, or -1 when scratch memory could not be allocated."""
    cdef qc_window_t g
    cdef qc_conv_t p
    cdef Py_ssize_t cout, og, k
    cdef const int8_t *xp
    cdef int8_t *op
    cdef int status
    _window(&g, in_shape, out_hw, kernel, stride, dilation, pad_tl)
    cout = cnp.PyArray_SIZE(wsum)
    if groups < 1 or g.c % groups or cout % groups or cout == 0:
        raise ValueError("groups must divide the input and output channels")
    og = cout // groups
    k = <Py_ssize_t>g.kh * g.kw * (g.c // groups)
    if k > QC_GEMM_MAX_K:
        raise ValueError("filter too large for exact int32 accumulation")
    if direct and (g.kh != 1 or g.kw != 1 or g.sh != 1 or g.sw != 1 or g.pt or g.pl
                   or groups != 1 or g.oh != g.h or g.ow != g.w):
        raise ValueError("direct needs a 1x1, stride-1, unpadded, single-group convolution")
    xp = <const int8_t *>_buf(x, cnp.NPY_INT8, g.n * g.h * g.w * g.c, False, "x")
    op = <int8_t *>_buf(out, cnp.NPY_INT8, g.n * g.oh * g.ow * cout, True, "out")
    p.groups = groups
    p.cout = cout
    p.packed = <const int8_t *>_buf(packed, cnp.NPY_INT8, groups * qc_gemm_packed_size(og, k),
                                    False, "packed")
    p.wsum = <const int32_t *>_buf(wsum, cnp.NPY_INT32, cout, False, "wsum")
    p.col_offset = <const int32_t *>_buf(col_offset, cnp.NPY_INT32, cout, False, "col_offset")
    p.multiplier = <const int32_t *>_buf(multiplier, cnp.NPY_INT32, cout, False, "multiplier")
    p.shift = <const int32_t *>_buf(shift, cnp.NPY_INT32, cout, False, "shift")
    p.out_zp = out_zp
    p.qmin = qmin
    p.qmax = qmax
    p.pad_value = <int8_t>pad_value
    p.direct = direct
    p.rounding = rounding
    if g.n == 0:
        return 0
    with nogil:
        status = qc_conv2d_i8(xp, &g, &p, op, n_threads)
    return status


def depthwise_conv2d_i8(cnp.ndarray x not None,          # IN (N, H, W, C) int8
                        cnp.ndarray out not None,        # OUT (N, OH, OW, C * M) int8
                        tuple in_shape, tuple out_hw, tuple kernel, tuple stride,
                        tuple dilation, tuple pad_tl, int depth_multiplier,
                        cnp.ndarray weights not None,    # IN (KH, KW, C * M) int8
                        cnp.ndarray bias,                # IN (C * M,) int32 or None
                        int input_offset,                # -zp_in
                        cnp.ndarray multiplier not None,  # IN (C * M,) int32 Q31
                        cnp.ndarray shift not None,      # IN (C * M,) int32
                        int out_zp, int qmin, int qmax, int rounding, int n_threads=1):
    """DEPTHWISE_CONV_2D, direct: int32 acc = bias + sum over in-image taps of
    w * (x + input_offset), output channel ic * M + m; requantized per channel and
    clamped.  Rows of the batch are split across threads.  Returns 0 or -1 (no memory)."""
    cdef qc_window_t g
    cdef Py_ssize_t cm
    cdef const int32_t *bp = NULL
    cdef const int8_t *xp
    cdef const int8_t *wp
    cdef const int32_t *mp
    cdef const int32_t *sp
    cdef int8_t *op
    cdef int status
    _window(&g, in_shape, out_hw, kernel, stride, dilation, pad_tl)
    if depth_multiplier < 1:
        raise ValueError("depth_multiplier must be at least 1")
    cm = g.c * depth_multiplier
    xp = <const int8_t *>_buf(x, cnp.NPY_INT8, g.n * g.h * g.w * g.c, False, "x")
    op = <int8_t *>_buf(out, cnp.NPY_INT8, g.n * g.oh * g.ow * cm, True, "out")
    wp = <const int8_t *>_buf(weights, cnp.NPY_INT8, <Py_ssize_t>g.kh * g.kw * cm, False,
                              "weights")
    if bias is not None:
        bp = <const int32_t *>_buf(bias, cnp.NPY_INT32, cm, False, "bias")
    mp = <const int32_t *>_buf(multiplier, cnp.NPY_INT32, cm, False, "multiplier")
    sp = <const int32_t *>_buf(shift, cnp.NPY_INT32, cm, False, "shift")
    if g.n == 0:
        return 0
    with nogil:
        status = qc_depthwise_i8(xp, &g, depth_multiplier, wp, bp, input_offset, mp, sp,
                                 out_zp, qmin, qmax, rounding, op, n_threads)
    return status


def pool2d_i8(cnp.ndarray x not None,     # IN (N, H, W, C) int8
              cnp.ndarray out not None,   # OUT (N, OH, OW, C) int8
              tuple in_shape, tuple out_hw, tuple kernel, tuple stride, tuple pad_tl,
              bint is_max, int qmin, int qmax, int n_threads=1):
    """AVERAGE_POOL_2D (is_max False: raw int8 sum over in-image taps, divided by their
    count rounding half away from zero) or MAX_POOL_2D, clamped to [qmin, qmax].
    Every window must hold at least one in-image tap.  Returns 0 or -1 (no memory)."""
    cdef qc_window_t g
    cdef const int8_t *xp
    cdef int8_t *op
    cdef int status
    _window(&g, in_shape, out_hw, kernel, stride, (1, 1), pad_tl)
    xp = <const int8_t *>_buf(x, cnp.NPY_INT8, g.n * g.h * g.w * g.c, False, "x")
    op = <int8_t *>_buf(out, cnp.NPY_INT8, g.n * g.oh * g.ow * g.c, True, "out")
    if g.n == 0:
        return 0
    with nogil:
        status = qc_pool_i8(xp, &g, is_max, qmin, qmax, op, n_threads)
    return status


def requantize_rows(cnp.ndarray acc not None,         # IN (M, N) int32
                    cnp.ndarray multiplier not None,  # IN (N,) int32 Q31
                    cnp.ndarray shift not None,       # IN (N,) int32
                    int zero_point, int qmin, int qmax, int rounding,
                    cnp.ndarray out not None):        # OUT (M, N) int8
    """out = clamp(zero_point + MultiplyByQuantizedMultiplier(acc, multiplier, shift),
    qmin, qmax) per column, rounding 0 gemmlowp, 1 single (TFLITE_SINGLE_ROUNDING),
    2 neon (vqrdmulh + rounding shift)."""
    cdef Py_ssize_t m, n
    cdef const int32_t *ap
    cdef const int32_t *mp
    cdef const int32_t *sp
    cdef int8_t *op
    if cnp.PyArray_NDIM(acc) != 2:
        raise ValueError("acc must be 2-D")
    m = cnp.PyArray_DIM(acc, 0)
    n = cnp.PyArray_DIM(acc, 1)
    if rounding < 0 or rounding > 2:
        raise ValueError("rounding must be 0, 1 or 2")
    ap = <const int32_t *>_buf(acc, cnp.NPY_INT32, m * n, False, "acc")
    mp = <const int32_t *>_buf(multiplier, cnp.NPY_INT32, n, False, "multiplier")
    sp = <const int32_t *>_buf(shift, cnp.NPY_INT32, n, False, "shift")
    op = <int8_t *>_buf(out, cnp.NPY_INT8, m * n, True, "out")
    if m == 0 or n == 0:
        return
    with nogil:
        qc_requantize_rows_r(ap, m, n, mp, sp, zero_point, qmin, qmax, rounding, op, n)


def add_i8(cnp.ndarray a not None,     # IN int8, C-contiguous
           cnp.ndarray b not None,     # IN int8, same size
           cnp.ndarray out not None,   # OUT int8, same size
           int zp_a, int zp_b, int m_a, int s_a, int m_b, int s_b, int m_out, int s_out,
           int zp_out, int qmin, int qmax, bint single):
    """TFLite int8 ADD element-wise (left shift 20, three MultiplyByQuantizedMultiplier
    steps, single or double rounding), clamped to [qmin, qmax]."""
    cdef Py_ssize_t n = cnp.PyArray_SIZE(a)
    cdef const int8_t *ap = <const int8_t *>_buf(a, cnp.NPY_INT8, n, False, "a")
    cdef const int8_t *bp = <const int8_t *>_buf(b, cnp.NPY_INT8, n, False, "b")
    cdef int8_t *op = <int8_t *>_buf(out, cnp.NPY_INT8, n, True, "out")
    if n == 0:
        return
    with nogil:
        qc_add_i8(ap, bp, n, zp_a, zp_b, m_a, s_a, m_b, s_b, m_out, s_out, zp_out, qmin,
                  qmax, single, op)


def softmax_i8(cnp.ndarray x not None,     # IN int8, C-contiguous, rows x depth
               cnp.ndarray out not None,   # OUT int8, same size
               Py_ssize_t depth, int multiplier, int left_shift, int diff_min,
               bint single):
    """TFLite reference int8 SOFTMAX over the last axis (rows of `depth` codes), output
    scale 1/256 and zero point -128; gemmlowp fixed point; `single`: the input rescaling
    rounds once (TFLITE_SINGLE_ROUNDING)."""
    cdef Py_ssize_t n = cnp.PyArray_SIZE(x)
    cdef const int8_t *xp
    cdef int8_t *op
    if depth < 1 or n % depth:
        raise ValueError("depth must divide the size of x")
    if left_shift < 0 or left_shift > 31:
        raise ValueError("left_shift out of range")
    xp = <const int8_t *>_buf(x, cnp.NPY_INT8, n, False, "x")
    op = <int8_t *>_buf(out, cnp.NPY_INT8, n, True, "out")
    if n == 0:
        return
    with nogil:
        qc_softmax_i8(xp, n // depth, depth, multiplier, left_shift, diff_min, single, op)
