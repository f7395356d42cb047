# Percentile order statistics by selection (no copy of the batch).  See select_order_stats
# and the algorithm notes in src/qc_select.h.

cdef extern from "qc_select.h" nogil:
    enum:
        QC_TOPT
    ctypedef struct qc_plan:
        int nt
        int nc
    ctypedef struct qc_fres:
        Py_ssize_t bad
    Py_ssize_t qc_topt_select(const float *x, Py_ssize_t n, Py_ssize_t klo, Py_ssize_t khi,
                              float *lo, float *hi)
    Py_ssize_t qc_radix_select(const float *x, Py_ssize_t n, Py_ssize_t klo, Py_ssize_t khi,
                               float *lo, float *hi)
    int qc_plan_make(const float *x, Py_ssize_t n, Py_ssize_t klo, Py_ssize_t khi, int nt,
                     int tiny_buffers, qc_plan *p)
    void qc_plan_free(qc_plan *p)
    void qc_plan_serial(qc_plan *p, Py_ssize_t n)
    int qc_any_overflow(const qc_fres *res, int nc)
    void qc_filter_chunk(const float *x, Py_ssize_t n, const qc_plan *p, int c, qc_fres *r)
    int qc_resolve(const float *x, Py_ssize_t n, Py_ssize_t klo, Py_ssize_t khi, qc_plan *p,
                   qc_fres *res, float *lo, float *hi, Py_ssize_t *bad)

# Which path answered (select_order_stats_path, for tests and benchmarks).
cdef enum:
    SEL_AUTO = 0
    SEL_TOPT = 1
    SEL_SAMPLE = 2
    SEL_RADIX = 3
    SEL_SAMPLE_TINY = 4     # sample path with one-element candidate buffers


cdef Py_ssize_t _select_core(const float *x, Py_ssize_t n, Py_ssize_t k_low,
                             Py_ssize_t k_high, int nt,
                             float *lo, float *hi, int force=SEL_AUTO,
                             int *used=NULL) noexcept nogil:
    """Values at ranks k_low <= k_high of contiguous float32 x[0:n] (stable order, -0.0 ==
    +0.0); returns the first non-finite index or -1.  Scratch (malloc'ed, checked):
    a sample of n/256 floats (2048..32768; n/64 up to 65536 for ranks away from the
    ends) and candidate buffers, capped at n/12 floats (else the radix path): ~75 KiB at
    2^20 and ~360 KiB at 2^24 for the percentile ranks; plus < 40 KiB of stack.  A
    failed malloc takes the radix path, which needs no heap memory, so this never fails
    for lack of memory."""
    cdef qc_plan plan
    cdef qc_fres[64] res
    cdef Py_ssize_t bad = -1
    cdef int c, status, made
    if force == SEL_TOPT or (force == SEL_AUTO and k_low < QC_TOPT and n - k_high <= QC_TOPT):
        if used != NULL:
            used[0] = SEL_TOPT
        return qc_topt_select(x, n, k_low, k_high, lo, hi)
    if nt > 64:
        nt = 64
    made = -1
    if force == SEL_AUTO or force == SEL_SAMPLE or force == SEL_SAMPLE_TINY:
        made = qc_plan_make(x, n, k_low, k_high, nt, force == SEL_SAMPLE_TINY, &plan)
    if made == 0:
        if plan.nc == 1:
            qc_filter_chunk(x, n, &plan, 0, &res[0])
        else:
            # per-chunk counters and candidate slices, merged in chunk order by qc_resolve
            for c in prange(plan.nc, num_threads=plan.nt, schedule="dynamic"):
                qc_filter_chunk(x, n, &plan, c, &res[c])
            if qc_any_overflow(&res[0], plan.nc):
                # skewed data (sorted input) overfilled one chunk's slice: redo the pass
                # serially with the whole buffer before giving up on the sample
                qc_plan_serial(&plan, n)
                qc_filter_chunk(x, n, &plan, 0, &res[0])
        status = qc_resolve(x, n, k_low, k_high, &plan, &res[0], lo, hi, &bad)
        qc_plan_free(&plan)
        if status == 0:
            if used != NULL:
                used[0] = SEL_SAMPLE
            return bad
    # bracket missed, a candidate buffer overflowed, or n too small for sampling
    if used != NULL:
        used[0] = SEL_RADIX
    return qc_radix_select(x, n, k_low, k_high, lo, hi)


def select_order_stats(cnp.ndarray x not None,  # IN, C-contiguous float32, n >= 1
                       Py_ssize_t k_low, Py_ssize_t k_high,  # 0 <= k_low <= k_high < n
                       int n_threads=1):
    """(low, high, first_bad): the values at 0-based ranks k_low and k_high of x sorted by
    a stable ascending sort in which -0.0 == +0.0 (Rust sort_by(partial_cmp)), with the
    sign of the zero that sort puts there.  first_bad is the index of the first NaN/±Inf
    or -1; low/high are unspecified when it is >= 0.  Requires contiguous float32,
    n >= 1, 0 <= k_low <= k_high < n (the caller checks).  Never copies the batch."""
    cdef const float *xp = _f32_in(x, "x")
    cdef Py_ssize_t n = cnp.PyArray_SIZE(x)
    cdef float lo = 0, hi = 0
    cdef Py_ssize_t bad
    cdef int nt = _threads_for(n, n_threads)
    if not 0 <= k_low <= k_high < n:   # the facade never gets here; a guard, not a policy
        raise ValueError(f"select_order_stats: need 0 <= k_low <= k_high < n, got "
                         f"k_low={k_low}, k_high={k_high}, n={n}")
    with nogil:
        bad = _select_core(xp, n, k_low, k_high, nt, &lo, &hi)
    return lo, hi, bad


_PATHS = {"auto": SEL_AUTO, "topt": SEL_TOPT, "sample": SEL_SAMPLE, "radix": SEL_RADIX,
          "sample_tiny": SEL_SAMPLE_TINY}
_PATH_NAMES = {v: k for k, v in _PATHS.items()}


def select_order_stats_path(cnp.ndarray x not None,  # IN, C-contiguous float32, n >= 1
                            Py_ssize_t k_low, Py_ssize_t k_high, str path="auto",
                            int n_threads=1):
    """Testing aid: select_order_stats forcing one path ("auto", "topt" [needs
    k_low < 64 and n - k_high <= 64], "sample", "radix", "sample_tiny" = sample path
    with one-element candidate buffers, i.e. the overflow fallback).  Returns
    (low, high, first_bad, path that answered)."""
    cdef const float *xp = _f32_in(x, "x")
    cdef Py_ssize_t n = cnp.PyArray_SIZE(x)
    cdef float lo = 0, hi = 0
    cdef Py_ssize_t bad
    cdef int nt = _threads_for(n, n_threads)
    cdef int force = _PATHS[path]
    cdef int used = SEL_AUTO
    if not 0 <= k_low <= k_high < n:
        raise ValueError("select_order_stats_path: need 0 <= k_low <= k_high < n")
    if force == SEL_TOPT and not (k_low < QC_TOPT and n - k_high <= QC_TOPT):
        raise ValueError("the top-t path needs k_low < 64 and n - k_high <= 64")
    with nogil:
        bad = _select_core(xp, n, k_low, k_high, nt, &lo, &hi, force, &used)
    return lo, hi, bad, _PATH_NAMES[used]
