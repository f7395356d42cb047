# Percentile order statistics by selection (no copy of the batch).  See select_order_stats
# and the algorithm notes in src/qc_select.h.

cdef extern from "qc_select.h" nogil:
    enum:
        QC_TOPT
    ctypedef struct qc_plan:
        int nt
    ctypedef struct qc_fres:
        Py_ssize_t bad
    Py_ssize_t qc_topt_select(const float *x, Py_ssize_t n, Py_ssize_t klo, Py_ssize_t khi,
                              float *lo, float *hi)
    Py_ssize_t qc_radix_select(const float *x, Py_ssize_t n, Py_ssize_t klo, Py_ssize_t khi,
                               float *lo, float *hi)
    int qc_plan_make(const float *x, Py_ssize_t n, Py_ssize_t klo, Py_ssize_t khi, int nt,
                     qc_plan *p)
    void qc_plan_free(qc_plan *p)
    void qc_filter_chunk(const float *x, Py_ssize_t n, const qc_plan *p, int c, qc_fres *r)
    int qc_resolve(const float *x, Py_ssize_t n, Py_ssize_t klo, Py_ssize_t khi, qc_plan *p,
                   qc_fres *res, float *lo, float *hi, Py_ssize_t *bad)


cdef Py_ssize_t _select_core(const float *x, Py_ssize_t n, Py_ssize_t k_low,
                             Py_ssize_t k_high, int nt,
                             float *lo, float *hi) noexcept nogil:
    """Values at ranks k_low <= k_high of contiguous float32 x[0:n] (stable order, -0.0 ==
    +0.0); returns the first non-finite index or -1.  Scratch: < 1 MiB of malloc'ed
    candidates and sample (never more than ~8 % of the batch) plus < 40 KiB of stack; a
    failed malloc takes the radix path, which needs no heap memory."""
    cdef qc_plan plan
    cdef qc_fres[64] res
    cdef Py_ssize_t bad = -1
    cdef int c, status
    if k_low < QC_TOPT and n - k_high <= QC_TOPT:
        return qc_topt_select(x, n, k_low, k_high, lo, hi)
    if nt > 64:
        nt = 64
    if qc_plan_make(x, n, k_low, k_high, nt, &plan) == 0:
        if plan.nt == 1:
            qc_filter_chunk(x, n, &plan, 0, &res[0])
        else:
            for c in prange(plan.nt, num_threads=plan.nt, schedule="static"):
                qc_filter_chunk(x, n, &plan, c, &res[c])
        status = qc_resolve(x, n, k_low, k_high, &plan, &res[0], lo, hi, &bad)
        qc_plan_free(&plan)
        if status == 0:
            return bad
    # bracket missed, a candidate buffer overflowed, or n too small for sampling
    return qc_radix_select(x, n, k_low, k_high, lo, hi)


def select_order_stats(const float[::1] x,  # IN, n >= 1
                       Py_ssize_t k_low, Py_ssize_t k_high,  # 0 <= k_low <= k_high < n
                       int n_threads=1):
    """(low, high, first_bad): the values at 0-based ranks k_low and k_high of x sorted by
    a stable ascending sort in which -0.0 == +0.0 (Rust sort_by(partial_cmp)), with the
    sign of the zero that sort puts there.  first_bad is the index of the first NaN/±Inf
    or -1; low/high are unspecified when it is >= 0.  Requires contiguous float32,
    n >= 1, 0 <= k_low <= k_high < n (the caller checks).  Never copies the batch."""
    cdef Py_ssize_t n = x.shape[0]
    cdef float lo = 0, hi = 0
    cdef Py_ssize_t bad
    cdef int nt = _threads_for(n, n_threads)
    with nogil:
        bad = _select_core(&x[0], n, k_low, k_high, nt, &lo, &hi)
    return lo, hi, bad
