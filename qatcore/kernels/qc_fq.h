/* Fake-quantize bodies for the AVX2 and AVX-512 targets (_k_elementwise.pxi).

   qc_fake_quantize_simd(x, out, mask, n, scale, zero_point, qmin, qmax, zp_zero) handles
   a prefix of x (a multiple of 16 elements, 0 when n < 32 or the target has no SIMD body),
   writes the clipped-STE mask too when mask is not NULL, and returns the prefix's length;
   the caller's scalar-vector loop does the rest.  Same float32 operations in the same
   order as the Rust code and the portable loop, so the result is bit-identical:
       q = x / scale;  u = q + zero_point;  r = trunc(u + copysign(0.49999997, u));
       r = max(qmin, r) (qmin if r < qmin else r, NaN kept);  r = min(qmax, r);
       out = (r - zero_point) * scale        (r * scale when zero_point is +0.0)
   AVX2 (tuned on Zen 1): software-pipelined.  On 128-bit datapaths the divider's pipe is
   shared with the adds and the rounding; issuing the next iteration's divisions before
   this iteration's rounding lets them overlap (-15% in cache, -5..8% from L3).  out may
   be x itself: every store lags the loads of the same elements by one iteration.
   AVX-512 (tuned on Zen 4): fewer instructions per element, see below.  out may be x
   itself: each vector is loaded before it is stored.
   Beyond the caches (QC_FQ_STREAM_MIN) the output is written with non-temporal stores
   (after a few scalar elements that align it), which halves the time at 2^24 elements. */
#ifndef QC_FQ_H
#define QC_FQ_H

#include <stddef.h>

/* QC_FQ_EMULATE_AVX512 (tests only): compile the AVX-512 body on C emulations of its
   intrinsics that the includer defines, to check it bit for bit on CPUs without AVX-512. */
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    !defined(QC_FQ_EMULATE_AVX512)
#  define QC_FQ_AVX512 1
#endif

#if defined(__AVX2__) || defined(QC_FQ_EMULATE_AVX512)
#ifndef QC_FQ_EMULATE_AVX512
#include <immintrin.h>
#endif
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

/* Elements to do one by one so that out + head is `align`-byte aligned, as non-temporal
   stores need (only when streaming; -1: no streaming). */
static inline ptrdiff_t qc_fq_head(const float *out, ptrdiff_t n, uintptr_t align) {
    if (n < QC_FQ_STREAM_MIN || ((uintptr_t)out & 3))
        return -1;
    return (ptrdiff_t)(((align - ((uintptr_t)out & (align - 1))) & (align - 1)) / 4);
}

#if defined(QC_FQ_AVX512) || defined(QC_FQ_EMULATE_AVX512)
/* AVX-512 body.  Zen 4 runs 512-bit ops as two 256-bit halves but issues one instruction
   per 16 elements, so here the front end, not the divider's pipe, was the limit of the
   AVX2 body: fewer instructions per element is what helps.  copysign(0.49999997, u) is one
   vpternlogd ((u & -0.0) | 0.49999997), the mask of 32 elements is one compare per
   vector (clamped == rounded) into k registers and one masked byte move, and no
   software pipelining is needed (the divisions
   of one iteration overlap the rounding of the previous one in the out-of-order window).
   Same float32 operations in the same order as qc_fq_one: bit-identical. */
static inline __m512 qc_fq_round16(__m512 x, __m512 vs, __m512 vzp, __m512 vsg,
                                   __m512 vh) {
    __m512 u = _mm512_add_ps(_mm512_div_ps(x, vs), vzp);
    __m512 h = _mm512_castsi512_ps(_mm512_ternarylogic_epi32(
        _mm512_castps_si512(u), _mm512_castps_si512(vsg), _mm512_castps_si512(vh), 0xEA));
    return _mm512_roundscale_ps(_mm512_add_ps(u, h), _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
}

static inline __m512 qc_fq_finish16(__m512 r, __m512 vs, __m512 vzp, __m512 vlo, __m512 vhi,
                                    int zp_zero) {
    __m512 c = _mm512_min_ps(vhi, _mm512_max_ps(vlo, r));   /* NaN stays NaN */
    if (!zp_zero)
        c = _mm512_sub_ps(c, vzp);
    return _mm512_mul_ps(c, vs);
}

static inline ptrdiff_t qc_fake_quantize_simd(const float *x, float *out, unsigned char *mask,
                                              ptrdiff_t n, float scale, float zero_point,
                                              float qmin, float qmax, int zp_zero) {
    if (n < 32)
        return 0;
    ptrdiff_t head = qc_fq_head(out, n, 64), i;
    const int stream = head >= 0;
    if (head > 0) {
        for (i = 0; i < head; i++)
            out[i] = qc_fq_one(x[i], scale, zero_point, qmin, qmax, zp_zero,
                               mask ? mask + i : NULL);
        x += head;
        out += head;
        if (mask)
            mask += head;
        n -= head;
    }
    if (head < 0)
        head = 0;
    const __m512 vs = _mm512_set1_ps(scale), vzp = _mm512_set1_ps(zero_point);
    const __m512 vlo = _mm512_set1_ps(qmin), vhi = _mm512_set1_ps(qmax);
    const __m512 vsg = _mm512_set1_ps(-0.0f), vh = _mm512_set1_ps(0.49999997f);
#define QC_FQ_STORE16(dst, y)                                                          \
    do {                                                                                \
        if (stream)                                                                     \
            _mm512_stream_ps((dst), (y));                                               \
        else                                                                            \
            _mm512_storeu_ps((dst), (y));                                               \
    } while (0)
    const ptrdiff_t m = n & ~(ptrdiff_t)31;
    if (mask) {
        /* r lies in [qmin, qmax] iff clamping leaves it unchanged (NaN: unequal, 0) */
        const __m256i one32 = _mm256_set1_epi8(1);
        for (i = 0; i < m; i += 32) {
            __m512 r0 = qc_fq_round16(_mm512_loadu_ps(x + i), vs, vzp, vsg, vh);
            __m512 r1 = qc_fq_round16(_mm512_loadu_ps(x + i + 16), vs, vzp, vsg, vh);
            __m512 c0 = _mm512_min_ps(vhi, _mm512_max_ps(vlo, r0));
            __m512 c1 = _mm512_min_ps(vhi, _mm512_max_ps(vlo, r1));
            __mmask32 k = _mm512_kunpackw(_mm512_cmp_ps_mask(c1, r1, _CMP_EQ_OQ),
                                          _mm512_cmp_ps_mask(c0, r0, _CMP_EQ_OQ));
            _mm256_storeu_si256((__m256i *)(mask + i), _mm256_maskz_mov_epi8(k, one32));
            if (!zp_zero) {
                c0 = _mm512_sub_ps(c0, vzp);
                c1 = _mm512_sub_ps(c1, vzp);
            }
            QC_FQ_STORE16(out + i, _mm512_mul_ps(c0, vs));
            QC_FQ_STORE16(out + i + 16, _mm512_mul_ps(c1, vs));
        }
    } else {
        for (i = 0; i < m; i += 32) {
            __m512 r0 = qc_fq_round16(_mm512_loadu_ps(x + i), vs, vzp, vsg, vh);
            __m512 r1 = qc_fq_round16(_mm512_loadu_ps(x + i + 16), vs, vzp, vsg, vh);
            QC_FQ_STORE16(out + i, qc_fq_finish16(r0, vs, vzp, vlo, vhi, zp_zero));
            QC_FQ_STORE16(out + i + 16, qc_fq_finish16(r1, vs, vzp, vlo, vhi, zp_zero));
        }
    }
#undef QC_FQ_STORE16
    if (stream)
        _mm_sfence();
    return head + m;
}

#else
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
    ptrdiff_t head = qc_fq_head(out, n, 32), i;
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
    ptrdiff_t head = qc_fq_head(out, n, 32), i;
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
/* One entry for the caller: the AVX2 bodies, with or without the mask. */
static inline ptrdiff_t qc_fake_quantize_simd(const float *x, float *out, unsigned char *mask,
                                              ptrdiff_t n, float scale, float zero_point,
                                              float qmin, float qmax, int zp_zero) {
    if (mask)
        return qc_fake_quantize_mask_avx2(x, out, mask, n, scale, zero_point, qmin, qmax,
                                          zp_zero);
    return qc_fake_quantize_avx2(x, out, n, scale, zero_point, qmin, qmax, zp_zero);
}
#undef QC_FQ_REST
#undef QC_FQ_ROUND
#undef QC_FQ_CLAMP_STORE
#undef QC_FQ_MASK16

#endif  /* AVX-512 or AVX2 body */

#else
/* No SIMD body on this target: the caller's loop does everything. */
static inline ptrdiff_t qc_fake_quantize_simd(const float *x, float *out, unsigned char *mask,
                                              ptrdiff_t n, float scale, float zero_point,
                                              float qmin, float qmax, int zp_zero) {
    (void)x; (void)out; (void)mask; (void)n; (void)scale; (void)zero_point; (void)qmin;
    (void)qmax; (void)zp_zero;
    return 0;
}
#endif

#endif
