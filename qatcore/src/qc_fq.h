/* Fake-quantize body for AVX2 targets (_k_elementwise.pxi), software-pipelined.

   qc_fake_quantize_avx2(x, out, n, scale, zero_point, qmin, qmax, zp_zero) handles a
   prefix of x (a multiple of 16 elements, 0 when n < 32 or the target lacks AVX2) and
   returns its length; the caller's scalar-vector loop does the rest.  Same float32
   operations in the same order as the Rust code and the portable loop, so the result is
   bit-identical:
       q = x / scale;  u = q + zero_point;  r = trunc(u + copysign(0.49999997, u));
       r = max(qmin, r) (qmin if r < qmin else r, NaN kept);  r = min(qmax, r);
       out = (r - zero_point) * scale        (r * scale when zero_point is +0.0)
   Why: on Zen 1 (128-bit datapaths) the divider's pipe is shared with the adds and the
   rounding; issuing the next iteration's divisions before this iteration's rounding lets
   them overlap (-15% in cache, -5..8% from L3).  out may be x itself: every store lags
   the loads of the same elements by one iteration.  Beyond the caches (QC_FQ_STREAM_MIN)
   the output is written with non-temporal stores (after a few scalar elements that align
   it), which halves the time at 2^24 elements. */
#ifndef QC_FQ_H
#define QC_FQ_H

#include <stddef.h>

#if defined(__AVX2__)
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

/* Arrays at least this long (8 MiB, beyond the caches) are written with non-temporal
   stores: no read-for-ownership of the output lines, which otherwise costs a third of
   the memory traffic (the output would not stay cached anyway). */
#define QC_FQ_STREAM_MIN ((ptrdiff_t)1 << 21)

/* The scalar formula (same operations, same order) for the few elements before the
   output is 32-byte aligned. */
static inline float qc_fq_one(float x, float scale, float zero_point, float qmin,
                              float qmax, int zp_zero, unsigned char *mask) {
    float u = x / scale + zero_point;
    float r = truncf(u + copysignf(0.49999997f, u));
    if (mask)
        *mask = (r >= qmin) & (r <= qmax);
    r = r < qmin ? qmin : r;
    r = r > qmax ? qmax : r;
    return zp_zero ? r * scale : (r - zero_point) * scale;
}

/* Elements to do one by one so that out + head is 32-byte aligned (only when streaming). */
static inline ptrdiff_t qc_fq_head(const float *out, ptrdiff_t n) {
    if (n < QC_FQ_STREAM_MIN || ((uintptr_t)out & 3))
        return -1;                      /* no streaming */
    return (ptrdiff_t)(((32 - ((uintptr_t)out & 31)) & 31) / 4);
}

/* trunc(u + copysign(0.49999997, u)), u = q + zero_point: round half away from zero */
static inline __m256 qc_fq_round(__m256 q, __m256 vzp, __m256 vsg, __m256 vh) {
    __m256 u = _mm256_add_ps(q, vzp);
    return _mm256_round_ps(_mm256_add_ps(u, _mm256_or_ps(_mm256_and_ps(u, vsg), vh)),
                           _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
}
#define QC_FQ_ROUND(q) qc_fq_round((q), vzp, vsg, vh)

#define QC_FQ_CLAMP_STORE(r, dst)                                                       \
    do {                                                                                \
        __m256 c_ = _mm256_min_ps(vhi, _mm256_max_ps(vlo, (r)));                        \
        if (!zp_zero)                                                                   \
            c_ = _mm256_sub_ps(c_, vzp);                                                \
        if (stream)                                                                     \
            _mm256_stream_ps((dst), _mm256_mul_ps(c_, vs));                             \
        else                                                                            \
            _mm256_storeu_ps((dst), _mm256_mul_ps(c_, vs));                             \
    } while (0)

#define QC_FQ_REST(q, dst)                                                              \
    do {                                                                                \
        __m256 r_ = QC_FQ_ROUND(q);                                                     \
        QC_FQ_CLAMP_STORE(r_, dst);                                                     \
    } while (0)

/* mask[0:16] = 1 where qmin <= r <= qmax (ordered compares: NaN gives 0), from two
   vectors of rounded values. */
#define QC_FQ_MASK16(r0, r1, dst)                                                       \
    do {                                                                                \
        __m256i m0_ = _mm256_castps_si256(_mm256_and_ps(_mm256_cmp_ps((r0), vlo, _CMP_GE_OQ), \
                                                        _mm256_cmp_ps((r0), vhi, _CMP_LE_OQ))); \
        __m256i m1_ = _mm256_castps_si256(_mm256_and_ps(_mm256_cmp_ps((r1), vlo, _CMP_GE_OQ), \
                                                        _mm256_cmp_ps((r1), vhi, _CMP_LE_OQ))); \
        __m256i p_ = _mm256_permute4x64_epi64(_mm256_packs_epi32(m0_, m1_), 0xD8);      \
        __m128i b_ = _mm_packs_epi16(_mm256_castsi256_si128(p_), _mm256_extracti128_si256(p_, 1)); \
        _mm_storeu_si128((__m128i *)(dst), _mm_and_si128(b_, _mm_set1_epi8(1)));         \
    } while (0)

static inline ptrdiff_t qc_fake_quantize_avx2(const float *x, float *out, ptrdiff_t n,
                                              float scale, float zero_point, float qmin,
                                              float qmax, int zp_zero) {
    if (n < 32)
        return 0;
    ptrdiff_t head = qc_fq_head(out, n), i;
    const int stream = head >= 0;
    if (head > 0) {
        for (i = 0; i < head; i++)
            out[i] = qc_fq_one(x[i], scale, zero_point, qmin, qmax, zp_zero, NULL);
        x += head;
        out += head;
        n -= head;
    }
    if (head < 0)
        head = 0;
    const __m256 vs = _mm256_set1_ps(scale), vzp = _mm256_set1_ps(zero_point);
    const __m256 vlo = _mm256_set1_ps(qmin), vhi = _mm256_set1_ps(qmax);
    const __m256 vsg = _mm256_set1_ps(-0.0f), vh = _mm256_set1_ps(0.49999997f);
    const ptrdiff_t m = n & ~(ptrdiff_t)15;
    __m256 q0 = _mm256_div_ps(_mm256_loadu_ps(x), vs);
    __m256 q1 = _mm256_div_ps(_mm256_loadu_ps(x + 8), vs);
    for (i = 16; i < m; i += 16) {
        __m256 n0 = _mm256_div_ps(_mm256_loadu_ps(x + i), vs);
        __m256 n1 = _mm256_div_ps(_mm256_loadu_ps(x + i + 8), vs);
        QC_FQ_REST(q0, out + i - 16);
        QC_FQ_REST(q1, out + i - 8);
        q0 = n0;
        q1 = n1;
    }
    QC_FQ_REST(q0, out + m - 16);
    QC_FQ_REST(q1, out + m - 8);
    if (stream)
        _mm_sfence();
    return head + m;
}

/* The same with the clipped-STE mask (training forward). */
static inline ptrdiff_t qc_fake_quantize_mask_avx2(const float *x, float *out,
                                                   unsigned char *mask, ptrdiff_t n,
                                                   float scale, float zero_point, float qmin,
                                                   float qmax, int zp_zero) {
    if (n < 32)
        return 0;
    ptrdiff_t head = qc_fq_head(out, n), i;
    const int stream = head >= 0;
    if (head > 0) {
        for (i = 0; i < head; i++)
            out[i] = qc_fq_one(x[i], scale, zero_point, qmin, qmax, zp_zero, mask + i);
        x += head;
        out += head;
        mask += head;
        n -= head;
    }
    if (head < 0)
        head = 0;
    const __m256 vs = _mm256_set1_ps(scale), vzp = _mm256_set1_ps(zero_point);
    const __m256 vlo = _mm256_set1_ps(qmin), vhi = _mm256_set1_ps(qmax);
    const __m256 vsg = _mm256_set1_ps(-0.0f), vh = _mm256_set1_ps(0.49999997f);
    const ptrdiff_t m = n & ~(ptrdiff_t)15;
    __m256 q0 = _mm256_div_ps(_mm256_loadu_ps(x), vs);
    __m256 q1 = _mm256_div_ps(_mm256_loadu_ps(x + 8), vs);
    for (i = 16; i <= m; i += 16) {
        __m256 n0 = q0, n1 = q1;
        if (i < m) {
            n0 = _mm256_div_ps(_mm256_loadu_ps(x + i), vs);
            n1 = _mm256_div_ps(_mm256_loadu_ps(x + i + 8), vs);
        }
        __m256 r0 = QC_FQ_ROUND(q0), r1 = QC_FQ_ROUND(q1);
        QC_FQ_MASK16(r0, r1, mask + i - 16);
        QC_FQ_CLAMP_STORE(r0, out + i - 16);
        QC_FQ_CLAMP_STORE(r1, out + i - 8);
        q0 = n0;
        q1 = n1;
    }
    if (stream)
        _mm_sfence();
    return head + m;
}
#undef QC_FQ_REST
#undef QC_FQ_ROUND
#undef QC_FQ_CLAMP_STORE
#undef QC_FQ_MASK16

#else
static inline ptrdiff_t qc_fake_quantize_avx2(const float *x, float *out, ptrdiff_t n,
                                              float scale, float zero_point, float qmin,
                                              float qmax, int zp_zero) {
    (void)x; (void)out; (void)n; (void)scale; (void)zero_point; (void)qmin; (void)qmax;
    (void)zp_zero;
    return 0;
}
static inline ptrdiff_t qc_fake_quantize_mask_avx2(const float *x, float *out,
                                                   unsigned char *mask, ptrdiff_t n,
                                                   float scale, float zero_point, float qmin,
                                                   float qmax, int zp_zero) {
    (void)x; (void)out; (void)mask; (void)n; (void)scale; (void)zero_point; (void)qmin;
    (void)qmax; (void)zp_zero;
    return 0;
}
#endif

#endif
