# Kernel source shared by every CPU target (_kernels.pyx, _kernels_avx2.pyx, ...).
#
# The kernels trust their input: the Python classes in qatcore/ check dtype, contiguity,
# shapes and values, allocate outputs and choose the thread count.  Each kernel is a
# `noexcept nogil` core plus a thin `def` wrapper that releases the GIL once.  Kernels
# report problems through return values (e.g. the first non-finite index, or -1).

cimport cython
from cython.parallel cimport prange
from libc.math cimport truncf, copysignf
from libc.stdint cimport int8_t, uint8_t, int16_t, uint16_t, int32_t, int64_t

cdef extern from "qc_common.h" nogil:
    int qc_openmp_enabled()
    int qc_omp_max_threads()
    int qc_omp_thread_num()
    int qc_cpu_supports(const char *feature)
    const char *qc_target_name

cimport numpy as cnp
cnp.import_array()

TARGET = qc_target_name.decode("ascii")
OPENMP = bool(qc_openmp_enabled())


def cpu_supports(str feature):
    """True when the running CPU can execute the kernels built for `feature`
    ("avx2" or "avx512")."""
    cdef bytes name = feature.encode("ascii")
    return bool(qc_cpu_supports(name))


def omp_max_threads():
    """Threads OpenMP would use by default (1 without OpenMP)."""
    return qc_omp_max_threads()


# Below this many elements per thread a kernel stays serial: starting a parallel region
# costs a few microseconds, and on 2 vCPUs a preempted worker can stall a call.
cdef enum:
    PAR_MIN = 1 << 17
PAR_MIN_PER_THREAD = PAR_MIN


cdef inline int _threads_for(Py_ssize_t n, int n_threads) noexcept nogil:
    """Threads worth using for n elements, at most n_threads."""
    cdef Py_ssize_t useful = n // PAR_MIN
    if n_threads <= 1 or useful <= 1 or not qc_openmp_enabled():
        return 1
    if useful < n_threads:
        return <int>useful
    return n_threads


# The kernels called once per small batch (minmax, fake_quantize) take numpy arrays
# through the C API instead of typed memoryviews: acquiring a memoryview costs ~0.3 µs,
# which is a third of a 1 000-element call.  These checks cost a few nanoseconds.
cdef inline const float *_f32_in(cnp.ndarray a, str name) except NULL:
    """Data pointer of a C-contiguous float32 array (read-only arrays allowed)."""
    if cnp.PyArray_TYPE(a) != cnp.NPY_FLOAT32 or not cnp.PyArray_IS_C_CONTIGUOUS(a):
        raise ValueError(f"{name} must be a C-contiguous float32 array")
    return <const float *>cnp.PyArray_DATA(a)


cdef inline void *_out_ptr(cnp.ndarray a, int typenum, Py_ssize_t n, str name) except NULL:
    """Data pointer of a writable C-contiguous array of `typenum` holding n elements."""
    if (cnp.PyArray_TYPE(a) != typenum or not cnp.PyArray_IS_C_CONTIGUOUS(a)
            or not cnp.PyArray_ISWRITEABLE(a) or cnp.PyArray_SIZE(a) != n):
        raise ValueError(f"{name} must be a writable C-contiguous array of {n} elements "
                         f"of the kernel's dtype")
    return cnp.PyArray_DATA(a)


cdef inline float _round_half_away(float v) noexcept nogil:
    # Rust f32::round / C roundf (half away from zero), written so gcc vectorizes it;
    # proven bit-exact on all 2^32 inputs (PERF-NOTES.md).  0.49999997f is the float
    # just below 0.5: adding 0.5 itself would round 0.49999997 up.
    return truncf(v + copysignf(0.49999997, v))


include "_k_reduce.pxi"
include "_k_elementwise.pxi"
include "_k_select.pxi"
include "_k_gemm.pxi"
include "_k_conv.pxi"
include "_k_lsq.pxi"
include "_k_presets.pxi"
include "_k_hist.pxi"
