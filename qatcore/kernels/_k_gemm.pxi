# int8 x int8 -> int32 GEMM and fixed-point requantization (QuantizedLinear).
#
# The loops are C in qc_gemm.h (a register-tiled SIMD microkernel chosen at compile time
# for this module's CPU target, portable C otherwise) and, for the amx target, qc_amx.h
# (Intel AMX tiles), which also holds the entry points every target calls.  Weights are
# packed once (pack_weights) in a layout named by GEMM_LAYOUT; a packed buffer is only
# valid for kernel modules with the same GEMM_LAYOUT.

cdef extern from "qc_amx.h" nogil:
    const char *qc_linear_impl
    const char *qc_gemm_layout
    enum:
        QC_GEMM_MAX_K
        QC_GEMM_NR
        QC_GEMM_KG
    ctypedef struct qc_requant:
        const int32_t *multiplier
        const int32_t *shift
        int32_t zero_point, qmin, qmax
    Py_ssize_t qc_gemm_packed_size(Py_ssize_t n, Py_ssize_t k)
    void qc_gemm_pack(const int8_t *w, Py_ssize_t n, Py_ssize_t k, int8_t *packed)
    int qc_linear_i32(const int8_t *x, Py_ssize_t m, Py_ssize_t k, Py_ssize_t n,
                      const int8_t *packed, const int32_t *wsum, const int32_t *col_offset,
                      int32_t *out, int n_threads)
    int qc_linear_i8(const int8_t *x, Py_ssize_t m, Py_ssize_t k, Py_ssize_t n,
                     const int8_t *packed, const int32_t *wsum, const int32_t *col_offset,
                     const qc_requant *rq, int8_t *out, int n_threads)
    void qc_requantize_rows(const int32_t *acc, Py_ssize_t m, Py_ssize_t n,
                            const int32_t *multiplier, const int32_t *shift,
                            int32_t zero_point, int32_t qmin, int32_t qmax, int8_t *out)

#: Which microkernel this module runs ("amx-tdpbssd", "avx512vnni-vpdpbusd",
#: "avx2-vpmaddubsw-sign", "sse2-pmaddwd", "portable-c").
GEMM_IMPL = qc_linear_impl.decode("ascii")
#: Name of the packed weight layout pack_weights writes and gemm_i8_i32 reads.
GEMM_LAYOUT = qc_gemm_layout.decode("ascii")
#: Largest K for which int32 accumulation of int8 [-128, 127] x [-127, 127] is exact.
GEMM_MAX_K = QC_GEMM_MAX_K


def packed_size(Py_ssize_t n, Py_ssize_t k):
    """Bytes pack_weights needs for an (n, k) int8 weight matrix."""
    return qc_gemm_packed_size(n, k)


def pack_weights(const int8_t[:, ::1] w,  # IN (N, K) int8, row-major
                 int8_t[::1] packed):      # OUT packed_size(N, K) bytes
    """Pack (N, K) int8 weights into this module's GEMM_LAYOUT (zero padded).  Weights
    must lie in [-127, 127] (the AVX2 kernel's exactness relies on it)."""
    cdef Py_ssize_t n = w.shape[0], k = w.shape[1]
    if n == 0 or k == 0 or packed.shape[0] == 0:
        return
    with nogil:
        qc_gemm_pack(&w[0, 0], n, k, &packed[0])


cdef inline void *_c_array(cnp.ndarray a, int typenum, int ndim, Py_ssize_t d0,
                           Py_ssize_t d1, bint writable, str name) except NULL:
    """Data pointer of a C-contiguous `typenum` array with ndim dimensions (d0[, d1]);
    a dimension given as -1 is not checked.  Cheaper than a typed memoryview (~0.3 µs
    each), which matters on a batch-1 layer call of ~10 µs."""
    if (cnp.PyArray_TYPE(a) != typenum or cnp.PyArray_NDIM(a) != ndim
            or not cnp.PyArray_IS_C_CONTIGUOUS(a)
            or (writable and not cnp.PyArray_ISWRITEABLE(a))
            or (d0 >= 0 and cnp.PyArray_DIM(a, 0) != d0)
            or (ndim == 2 and d1 >= 0 and cnp.PyArray_DIM(a, 1) != d1)):
        raise ValueError(f"{name}: wrong dtype, shape, layout or writability for the kernel")
    return cnp.PyArray_DATA(a)


def gemm_i8_i32(cnp.ndarray x not None,       # IN (M, K) int8, C-contiguous
                cnp.ndarray packed not None,  # IN weights from pack_weights
                Py_ssize_t n,                 # output columns N
                cnp.ndarray wsum not None,    # IN (N,) int32, sum_k w[n, k]
                cnp.ndarray col_offset,       # IN (N,) int32 added to every row, or None
                cnp.ndarray out not None,     # OUT (M, N) int32, C-contiguous
                int n_threads=1):
    """out = x @ w.T + col_offset with int32 accumulation; returns 0, or -1 when scratch
    memory could not be allocated (out is then incomplete)."""
    cdef const int8_t *xp = <const int8_t *>_c_array(x, cnp.NPY_INT8, 2, -1, -1, False, "x")
    cdef Py_ssize_t m = cnp.PyArray_DIM(x, 0), k = cnp.PyArray_DIM(x, 1)
    cdef const int8_t *bp = <const int8_t *>_c_array(
        packed, cnp.NPY_INT8, 1, qc_gemm_packed_size(n, k), 0, False, "packed")
    cdef const int32_t *ws = <const int32_t *>_c_array(wsum, cnp.NPY_INT32, 1, n, 0, False,
                                                       "wsum")
    cdef int32_t *op = <int32_t *>_c_array(out, cnp.NPY_INT32, 2, m, n, True, "out")
    cdef const int32_t *off = NULL
    cdef int status
    if col_offset is not None:
        off = <const int32_t *>_c_array(col_offset, cnp.NPY_INT32, 1, n, 0, False,
                                        "col_offset")
    if m == 0 or n == 0:
        return 0
    with nogil:
        status = qc_linear_i32(xp, m, k, n, bp, ws, off, op, n_threads)
    return status


def gemm_requant_i8(cnp.ndarray x not None,           # IN (M, K) int8, C-contiguous
                    cnp.ndarray packed not None,      # IN weights from pack_weights
                    Py_ssize_t n,                     # output columns N
                    cnp.ndarray wsum not None,        # IN (N,) int32, sum_k w[n, k]
                    cnp.ndarray col_offset,           # IN (N,) int32 added to every row, or None
                    cnp.ndarray multiplier not None,  # IN (N,) int32 Q31 multipliers
                    cnp.ndarray shift not None,       # IN (N,) int32 exponents (TFLite)
                    int32_t zero_point, int32_t qmin, int32_t qmax,
                    cnp.ndarray out not None,         # OUT (M, N) int8, C-contiguous
                    int n_threads=1):
    """out = requantize_fixed_point(x @ w.T + col_offset) without an int32 result array
    (the amx target requantizes each block as it leaves the tiles); returns 0, or -1
    when scratch memory could not be allocated (out is then incomplete)."""
    cdef const int8_t *xp = <const int8_t *>_c_array(x, cnp.NPY_INT8, 2, -1, -1, False, "x")
    cdef Py_ssize_t m = cnp.PyArray_DIM(x, 0), k = cnp.PyArray_DIM(x, 1)
    cdef const int8_t *bp = <const int8_t *>_c_array(
        packed, cnp.NPY_INT8, 1, qc_gemm_packed_size(n, k), 0, False, "packed")
    cdef const int32_t *ws = <const int32_t *>_c_array(wsum, cnp.NPY_INT32, 1, n, 0, False,
                                                       "wsum")
    cdef qc_requant rq
    cdef int8_t *op = <int8_t *>_c_array(out, cnp.NPY_INT8, 2, m, n, True, "out")
    cdef const int32_t *off = NULL
    cdef int status
    rq.multiplier = <const int32_t *>_c_array(multiplier, cnp.NPY_INT32, 1, n, 0, False,
                                              "multiplier")
    rq.shift = <const int32_t *>_c_array(shift, cnp.NPY_INT32, 1, n, 0, False, "shift")
    rq.zero_point = zero_point
    rq.qmin = qmin
    rq.qmax = qmax
    if col_offset is not None:
        off = <const int32_t *>_c_array(col_offset, cnp.NPY_INT32, 1, n, 0, False,
                                        "col_offset")
    if m == 0 or n == 0:
        return 0
    with nogil:
        status = qc_linear_i8(xp, m, k, n, bp, ws, off, &rq, op, n_threads)
    return status


cdef void _requantize_par(const int32_t *acc, Py_ssize_t m, Py_ssize_t n,
                          const int32_t *mult, const int32_t *shift, int32_t zp,
                          int32_t qmin, int32_t qmax, int8_t *out, int nt) noexcept nogil:
    cdef Py_ssize_t c, lo, hi
    for c in prange(nt, num_threads=nt, schedule="static"):
        lo = m * c // nt
        hi = m * (c + 1) // nt
        if lo < hi:
            qc_requantize_rows(acc + lo * n, hi - lo, n, mult, shift, zp, qmin, qmax,
                               out + lo * n)


def requantize_fixed_point(const int32_t[:, ::1] acc,      # IN (M, N) int32
                           const int32_t[::1] multiplier,  # IN (N,) Q31 multipliers
                           const int32_t[::1] shift,       # IN (N,) exponents (TFLite)
                           int32_t zero_point, int32_t qmin, int32_t qmax,
                           int8_t[:, ::1] out,             # OUT (M, N) int8
                           int n_threads=1):
    """out = clamp(zero_point + MultiplyByQuantizedMultiplier(acc, multiplier, shift),
    qmin, qmax) per column (gemmlowp/TFLite integer arithmetic, no float)."""
    cdef Py_ssize_t m = acc.shape[0], n = acc.shape[1]
    cdef int nt
    if m == 0 or n == 0:
        return
    nt = _threads_for(m * n, n_threads)
    if nt > m:
        nt = <int>m
    with nogil:
        if nt <= 1:
            qc_requantize_rows(&acc[0, 0], m, n, &multiplier[0], &shift[0], zero_point,
                               qmin, qmax, &out[0, 0])
        else:
            _requantize_par(&acc[0, 0], m, n, &multiplier[0], &shift[0], zero_point,
                            qmin, qmax, &out[0, 0], nt)
