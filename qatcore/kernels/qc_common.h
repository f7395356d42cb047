/* Small C helpers shared by every kernel target: OpenMP shim, CPU features. */
#ifndef QC_COMMON_H
#define QC_COMMON_H

#include <string.h>

#ifdef _OPENMP
#include <omp.h>
static inline int qc_openmp_enabled(void) { return 1; }
static inline int qc_omp_max_threads(void) { return omp_get_max_threads(); }
static inline int qc_omp_thread_num(void) { return omp_get_thread_num(); }
#else
static inline int qc_openmp_enabled(void) { return 0; }
static inline int qc_omp_max_threads(void) { return 1; }
static inline int qc_omp_thread_num(void) { return 0; }
#endif

#ifndef QATCORE_TARGET_NAME
#define QATCORE_TARGET_NAME "baseline"
#endif
static const char *qc_target_name = QATCORE_TARGET_NAME;

/* Intel AMX-INT8, usable by this process: CPUID.(7,0):EDX bit 24 (AMX-TILE) and bit 25
   (AMX-INT8), the OS enabling XTILECFG/XTILEDATA in XCR0 (bits 17 and 18), and Linux
   granting the tile data state, which it traps on first use until the process asks
   (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), Linux >= 5.16; refused with
   ENOSPC while a thread has a sigaltstack too small for the tile state).  The grant is
   process-wide and permanent, so it is asked once; the answer is cached.  Anything else
   (another OS, an older kernel, a refusal) is "no": the AMX code is then never run. */
enum { QC_AMX_UNKNOWN = 0, QC_AMX_OK = 1, QC_AMX_NO_CPU = 2, QC_AMX_NO_OS = 3,
       QC_AMX_REFUSED = 4, QC_AMX_NOT_LINUX = 5 };

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <errno.h>
#include <unistd.h>
#include <sys/syscall.h>
#define QC_ARCH_GET_XCOMP_PERM 0x1022
#define QC_ARCH_REQ_XCOMP_PERM 0x1023
#define QC_XFEATURE_XTILEDATA 18

/* One of QC_AMX_*; *err gets errno of a refused request. */
static int qc_amx_probe(int *err) {
    unsigned int a, b, c, d, lo, hi;
    unsigned long bitmask = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 24)) || !(d & (1u << 25)))
        return QC_AMX_NO_CPU;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27)))      /* OSXSAVE: xgetbv */
        return QC_AMX_NO_OS;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & (3u << 17)) != (3u << 17))
        return QC_AMX_NO_OS;
    if (syscall(SYS_arch_prctl, QC_ARCH_REQ_XCOMP_PERM, QC_XFEATURE_XTILEDATA) != 0 ||
        syscall(SYS_arch_prctl, QC_ARCH_GET_XCOMP_PERM, &bitmask) != 0) {
        *err = errno;
        return QC_AMX_REFUSED;
    }
    if (!((bitmask >> QC_XFEATURE_XTILEDATA) & 1)) {
        *err = 0;
        return QC_AMX_REFUSED;
    }
    return QC_AMX_OK;
}

/* The cached QC_AMX_* answer for this process (benign race: every thread computes the
   same answer, the request is idempotent); *err as qc_amx_probe. */
static inline int qc_amx_state(int *err) {
    static int state = QC_AMX_UNKNOWN, saved_errno = 0;
    int s = __atomic_load_n(&state, __ATOMIC_ACQUIRE);
    if (s == QC_AMX_UNKNOWN) {
        int e = 0;
        s = qc_amx_probe(&e);
        __atomic_store_n(&saved_errno, e, __ATOMIC_RELAXED);
        __atomic_store_n(&state, s, __ATOMIC_RELEASE);
    }
    if (err)
        *err = __atomic_load_n(&saved_errno, __ATOMIC_RELAXED);
    return s;
}
#else
static inline int qc_amx_state(int *err) {
    if (err)
        *err = 0;
    return QC_AMX_NOT_LINUX;
}
#endif

/* 1 when the tile instructions may run in this process. */
static inline int qc_amx_permitted(void) { return qc_amx_state(NULL) == QC_AMX_OK; }

/* CPU feature queries for the dispatcher (x86 gcc/clang only; elsewhere only the
   baseline target is built, so "no" is the safe answer). */
static inline int qc_cpu_supports(const char *feature) {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    /* -march=x86-64-v3 / -v4 is what the avx2 / avx512 modules are compiled for. */
    int avx2 = __builtin_cpu_supports("x86-64-v3");
    if (strcmp(feature, "avx2") == 0)
        return avx2;
    int avx512 = avx2 && __builtin_cpu_supports("x86-64-v4") && __builtin_cpu_supports("avx512vnni");
    if (strcmp(feature, "avx512") == 0)
        return avx512;
    /* the amx module is the avx512 build plus the tile instructions */
    if (strcmp(feature, "amx") == 0)
        return avx512 && qc_amx_permitted();
    return 0;
#else
    (void)feature;
    return 0;
#endif
}

#endif
