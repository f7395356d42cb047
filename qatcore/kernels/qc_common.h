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

/* CPU feature queries for the dispatcher (x86 gcc/clang only; elsewhere only the
   baseline target is built, so "no" is the safe answer). */
static inline int qc_cpu_supports(const char *feature) {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    /* -march=x86-64-v3 / -v4 is what the avx2 / avx512 modules are compiled for. */
    int avx2 = __builtin_cpu_supports("x86-64-v3");
    if (strcmp(feature, "avx2") == 0)
        return avx2;
    if (strcmp(feature, "avx512") == 0)
        return avx2 && __builtin_cpu_supports("x86-64-v4") && __builtin_cpu_supports("avx512vnni");
    return 0;
#else
    (void)feature;
    return 0;
#endif
}

#endif
