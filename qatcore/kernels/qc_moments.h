/* Float32 deviation sums for the mean/std kernel (_k_reduce.pxi).

   qc_dev_sums_f32(x, n, c, &s1, &s2): s1 = sum(x - c), s2 = sum((x - c)^2) over x[0:n],
   accumulated in 32 float32 lanes (so at most ceil(n / 32) terms per lane: the caller
   keeps n <= 1024 for its error bound: <= 33 roundings per lane sum with the reduction
   tree, i.e. 2e-6 relative for the positive s2), then reduced in float64.  The AVX2 version keeps
   the lanes in registers and reduces them there: written in Cython, the lanes go through
   the stack at the end of every block, which cost a quarter of the kernel's time.
   Compiled per CPU target: the intrinsics only where the target has AVX2 + FMA. */
#ifndef QC_MOMENTS_H
#define QC_MOMENTS_H

#include <stddef.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

static inline double qc_hsum_pd(__m256 v) {
    __m256d d = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)),
                              _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(d), _mm256_extractf128_pd(d, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}

static inline void qc_dev_sums_f32(const float *x, ptrdiff_t n, float c,
                                   double *s1_out, double *s2_out) {
    /* Zen 1 runs vaddps/vsubps on two pipes and vfmadd on two others: two of the
       four d-sums go through an FMA by 1.0 (the same rounding as an add) to balance
       them. */
    const __m256 vc = _mm256_set1_ps(c), one = _mm256_set1_ps(1.0f);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    __m256 q0 = a0, q1 = a0, q2 = a0, q3 = a0;
    ptrdiff_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(x + i), vc);
        __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(x + i + 8), vc);
        __m256 d2 = _mm256_sub_ps(_mm256_loadu_ps(x + i + 16), vc);
        __m256 d3 = _mm256_sub_ps(_mm256_loadu_ps(x + i + 24), vc);
        a0 = _mm256_add_ps(a0, d0);
        a1 = _mm256_fmadd_ps(d1, one, a1);
        a2 = _mm256_add_ps(a2, d2);
        a3 = _mm256_fmadd_ps(d3, one, a3);
        q0 = _mm256_fmadd_ps(d0, d0, q0);
        q1 = _mm256_fmadd_ps(d1, d1, q1);
        q2 = _mm256_fmadd_ps(d2, d2, q2);
        q3 = _mm256_fmadd_ps(d3, d3, q3);
    }
    for (; i + 8 <= n; i += 8) {
        __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(x + i), vc);
        a0 = _mm256_add_ps(a0, d0);
        q0 = _mm256_fmadd_ps(d0, d0, q0);
    }
    /* two more float32 roundings per lane (a pairwise tree), then float64 */
    double s1 = qc_hsum_pd(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    double s2 = qc_hsum_pd(_mm256_add_ps(_mm256_add_ps(q0, q1), _mm256_add_ps(q2, q3)));
    for (; i < n; i++) {
        float d = x[i] - c;
        s1 += d;
        s2 += (double)(d * d);
    }
    *s1_out = s1;
    *s2_out = s2;
}

#else   /* portable: explicit lanes the compiler can vectorize */

#define QC_DEV_LANES 32
static inline void qc_dev_sums_f32(const float *x, ptrdiff_t n, float c,
                                   double *s1_out, double *s2_out) {
    float a[QC_DEV_LANES], q[QC_DEV_LANES];
    double s1 = 0, s2 = 0;
    ptrdiff_t i = 0;
    int j;
    for (j = 0; j < QC_DEV_LANES; j++) { a[j] = 0; q[j] = 0; }
    for (; i + QC_DEV_LANES <= n; i += QC_DEV_LANES)
        for (j = 0; j < QC_DEV_LANES; j++) {
            float d = x[i + j] - c;
            a[j] += d;
            q[j] += d * d;
        }
    for (j = 0; j < QC_DEV_LANES; j++) { s1 += a[j]; s2 += q[j]; }
    for (; i < n; i++) {
        float d = x[i] - c;
        s1 += d;
        s2 += (double)(d * d);
    }
    *s1_out = s1;
    *s2_out = s2;
}
#endif

#endif
