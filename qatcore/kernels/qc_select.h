/* Percentile order statistics by selection, without a copy of the batch.
 *
 * The value at 0-based rank k of x sorted ascending by a STABLE sort in which -0.0 and
 * +0.0 compare equal (Rust's sort_by(partial_cmp)).  Equal non-zero floats have equal
 * bits, so only a zero result needs care: with c = #(x < 0), the rank-k element is the
 * (k - c)-th zero of x in input order, and its sign is what the kernels return.
 *
 * Paths (chosen by select_order_stats in _k_select.pxi):
 *  - top-t: both ranks within QC_TOPT of an end -> one pass keeping the t smallest and
 *    the t largest values in tiny sorted arrays (vector compare, rare scalar insert).
 *  - sample bracket: select the two ranks' neighbourhoods in a small strided-jittered
 *    sample, then ONE filtering pass (split across threads in dynamic chunks) counts
 *    what lies below / above each bracket and gathers the few candidates into a small
 *    buffer, then quickselect among the candidates.  Brackets near an end are tails
 *    (gather everything beyond one bound; two tails around 0 are one |v| >= t test on
 *    AVX2); a bracket holding a single value is only counted (all-equal data); a tail
 *    whose bound is heavily tied counts the ties and gathers the rest (ReLU zeros).
 *    A chunk whose slice overflows (sorted input) is redone serially with the whole
 *    buffer.  Misses and buffer overflows fall back to:
 *  - radix select on the order-preserving key: three histogram passes (11+11+10 bits),
 *    stack memory only; exact on any finite input.
 * Every path checks for NaN/Inf and reports the first bad index.
 *
 * The vector loops use AVX2 (8 lanes) when compiled with it, SSE2 (4 lanes) on a plain
 * x86-64, and scalar C elsewhere; each target's module compiles this header with its
 * own flags.
 */
#ifndef QC_SELECT_H
#define QC_SELECT_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#if defined(__AVX2__)
#include <immintrin.h>
#define QC_W 8
typedef __m256 qc_vf;
typedef __m256 qc_vm;
typedef __m256i qc_vi;
#define QC_MZERO() _mm256_setzero_ps()
#define QC_LOAD(p) _mm256_loadu_ps(p)
#define QC_SET1(f) _mm256_set1_ps(f)
#define QC_LT(a, b) _mm256_cmp_ps((a), (b), _CMP_LT_OQ)
#define QC_LE(a, b) _mm256_cmp_ps((a), (b), _CMP_LE_OQ)
#define QC_GT(a, b) _mm256_cmp_ps((a), (b), _CMP_GT_OQ)
#define QC_GE(a, b) _mm256_cmp_ps((a), (b), _CMP_GE_OQ)
#define QC_EQ(a, b) _mm256_cmp_ps((a), (b), _CMP_EQ_OQ)
#define QC_LE_NAN(a, b) _mm256_cmp_ps((a), (b), _CMP_NGT_UQ) /* a <= b or unordered */
#define QC_GE_NAN(a, b) _mm256_cmp_ps((a), (b), _CMP_NLT_UQ) /* a >= b or unordered */
#define QC_LT_NAN(a, b) _mm256_cmp_ps((a), (b), _CMP_NGE_UQ) /* a < b or unordered */
#define QC_NONFINITE(v) _mm256_cmp_ps(_mm256_and_ps((v), _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff))), _mm256_set1_ps(3.40282347e38f), _CMP_NLE_UQ)
#define QC_OR(a, b) _mm256_or_ps((a), (b))
#define QC_ANDNOT(a, b) _mm256_andnot_ps((a), (b)) /* ~a & b */
#define QC_MASK(m) _mm256_movemask_ps(m)
#define QC_ADD(a, b) _mm256_add_ps((a), (b))
#define QC_SUB(a, b) _mm256_sub_ps((a), (b))
#define QC_IZERO() _mm256_setzero_si256()
#define QC_FZERO() _mm256_setzero_ps()
#define QC_CNT(acc, m) ((acc) = _mm256_sub_epi32((acc), _mm256_castps_si256(m)))
static inline int64_t qc_isum(qc_vi v) {
    int32_t t[8];
    _mm256_storeu_si256((__m256i *)t, v);
    return (int64_t)t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}
static inline int qc_anynan(qc_vf v) { return _mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) != 0; }
#elif defined(__SSE2__)
#include <emmintrin.h>
#define QC_W 4
typedef __m128 qc_vf;
typedef __m128 qc_vm;
typedef __m128i qc_vi;
#define QC_MZERO() _mm_setzero_ps()
#define QC_LOAD(p) _mm_loadu_ps(p)
#define QC_SET1(f) _mm_set1_ps(f)
#define QC_LT(a, b) _mm_cmplt_ps((a), (b))
#define QC_LE(a, b) _mm_cmple_ps((a), (b))
#define QC_GT(a, b) _mm_cmpgt_ps((a), (b))
#define QC_GE(a, b) _mm_cmpge_ps((a), (b))
#define QC_EQ(a, b) _mm_cmpeq_ps((a), (b))
#define QC_LE_NAN(a, b) _mm_cmpngt_ps((a), (b))
#define QC_GE_NAN(a, b) _mm_cmpnlt_ps((a), (b))
#define QC_LT_NAN(a, b) _mm_cmpnge_ps((a), (b))
#define QC_NONFINITE(v) _mm_cmpnle_ps(_mm_and_ps((v), _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff))), _mm_set1_ps(3.40282347e38f))
#define QC_OR(a, b) _mm_or_ps((a), (b))
#define QC_ANDNOT(a, b) _mm_andnot_ps((a), (b))
#define QC_MASK(m) _mm_movemask_ps(m)
#define QC_ADD(a, b) _mm_add_ps((a), (b))
#define QC_SUB(a, b) _mm_sub_ps((a), (b))
#define QC_IZERO() _mm_setzero_si128()
#define QC_FZERO() _mm_setzero_ps()
#define QC_CNT(acc, m) ((acc) = _mm_sub_epi32((acc), _mm_castps_si128(m)))
static inline int64_t qc_isum(qc_vi v) {
    int32_t t[4];
    _mm_storeu_si128((__m128i *)t, v);
    return (int64_t)t[0] + t[1] + t[2] + t[3];
}
static inline int qc_anynan(qc_vf v) { return _mm_movemask_ps(_mm_cmpunord_ps(v, v)) != 0; }
#else
/* Scalar emulation: a "mask" is an int, 0 or -1. */
#define QC_W 1
typedef float qc_vf;
typedef int qc_vm;
typedef int64_t qc_vi;
#define QC_MZERO() 0
#define QC_LOAD(p) (*(p))
#define QC_SET1(f) (f)
#define QC_LT(a, b) (-(int)((a) < (b)))
#define QC_LE(a, b) (-(int)((a) <= (b)))
#define QC_GT(a, b) (-(int)((a) > (b)))
#define QC_GE(a, b) (-(int)((a) >= (b)))
#define QC_EQ(a, b) (-(int)((a) == (b)))
#define QC_LE_NAN(a, b) (-(int)!((a) > (b)))
#define QC_GE_NAN(a, b) (-(int)!((a) < (b)))
#define QC_LT_NAN(a, b) (-(int)!((a) >= (b)))
#define QC_NONFINITE(v) (-(int)!(fabsf(v) <= 3.40282347e38f))
#define QC_OR(a, b) ((a) | (b))
#define QC_ANDNOT(a, b) (~(a) & (b))
#define QC_MASK(m) ((m) & 1)
#define QC_ADD(a, b) ((a) + (b))
#define QC_SUB(a, b) ((a) - (b))
#define QC_IZERO() 0
#define QC_FZERO() 0.0f
#define QC_CNT(acc, m) ((acc) -= (m))
static inline int64_t qc_isum(qc_vi v) { return v; }
static inline int qc_anynan(qc_vf v) { return v != v; }
#endif

#if defined(__GNUC__) || defined(__clang__)
#define QC_INLINE static inline __attribute__((always_inline))
#define QC_CTZ(b) __builtin_ctz(b)
#else
#define QC_INLINE static inline
static inline int QC_CTZ(unsigned b) { int i = 0; while (!(b & 1u)) { b >>= 1; i++; } return i; }
#endif

/* Elements per block between non-finite checks; also bounds the int32 lane counters. */
#define QC_BLK 4096
#define QC_TOPT 64
/* Candidate slices end with this much slack: a flagged step of 4 vectors (<= 32 lanes)
 * writes its candidates without per-element capacity checks, then checks once. */
#define QC_SLACK 32
#ifndef QC_SAMPLE_SHIFT
#define QC_SAMPLE_SHIFT 8 /* sample one element in 2^8 (2048 .. 32768; see qc_plan_make) */
#endif

/* ---------------------------------------------------------------- keys and checks */

/* Order-preserving unsigned key of a finite float, with -0.0 mapped like +0.0. */
static inline uint32_t qc_key(float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    if (u == 0x80000000u)
        u = 0;
    return u ^ ((uint32_t)((int32_t)u >> 31) | 0x80000000u);
}

static inline float qc_unkey(uint32_t k) {
    uint32_t u = (k & 0x80000000u) ? (k ^ 0x80000000u) : ~k;
    float v;
    memcpy(&v, &u, 4);
    return v;
}

/* First NaN/Inf in x[0:n] or -1 (scalar, early exit). */
static ptrdiff_t qc_first_bad_scalar(const float *x, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) {
        float v = x[i];
        if (v - v != 0.0f || v != v)
            return i;
    }
    return -1;
}

/* First NaN/Inf in x[0:n] or -1, vectorized block by block. */
static ptrdiff_t qc_first_bad(const float *x, ptrdiff_t n) {
    ptrdiff_t start = 0;
    while (start < n) {
        ptrdiff_t stop = start + QC_BLK < n ? start + QC_BLK : n;
        ptrdiff_t i = start;
        qc_vf acc = QC_FZERO();
        for (; i + QC_W <= stop; i += QC_W) {
            qc_vf v = QC_LOAD(x + i);
            acc = QC_ADD(acc, QC_SUB(v, v));
        }
        float tail = 0.0f;
        for (; i < stop; i++)
            tail += x[i] - x[i];
        if (qc_anynan(acc) || tail != tail)
            return start + qc_first_bad_scalar(x + start, stop - start);
        start = stop;
    }
    return -1;
}

/* The j-th (0-based) zero of x in input order, from the front (from_end = 0) or from the
 * back; returned with its sign.  Requires that it exists (returns +0.0 otherwise). */
static float qc_zero_at(const float *x, ptrdiff_t n, ptrdiff_t j, int from_end) {
    ptrdiff_t seen = 0;
    const ptrdiff_t B = 256;
    ptrdiff_t nblocks = (n + B - 1) / B;
    for (ptrdiff_t bi = 0; bi < nblocks; bi++) {
        ptrdiff_t b = from_end ? nblocks - 1 - bi : bi;
        ptrdiff_t start = b * B, stop = start + B < n ? start + B : n;
        ptrdiff_t cnt = 0;
        for (ptrdiff_t i = start; i < stop; i++)
            cnt += x[i] == 0.0f;
        if (seen + cnt > j) {
            if (!from_end) {
                for (ptrdiff_t i = start; i < stop; i++)
                    if (x[i] == 0.0f && seen++ == j)
                        return x[i];
            } else {
                for (ptrdiff_t i = stop - 1; i >= start; i--)
                    if (x[i] == 0.0f && seen++ == j)
                        return x[i];
            }
        }
        seen += cnt;
    }
    return 0.0f;
}

/* ---------------------------------------------------------------- quickselect */

static void qc_heapsort(float *a, ptrdiff_t n) {
    for (ptrdiff_t start = n / 2 - 1;; start--) {
        for (ptrdiff_t r = start;;) { /* sift down */
            ptrdiff_t c = 2 * r + 1;
            if (c >= n) break;
            if (c + 1 < n && a[c] < a[c + 1]) c++;
            if (!(a[r] < a[c])) break;
            float t = a[r]; a[r] = a[c]; a[c] = t;
            r = c;
        }
        if (start <= 0) break;
    }
    for (ptrdiff_t end = n - 1; end > 0; end--) {
        float t = a[0]; a[0] = a[end]; a[end] = t;
        for (ptrdiff_t r = 0;;) {
            ptrdiff_t c = 2 * r + 1;
            if (c >= end) break;
            if (c + 1 < end && a[c] < a[c + 1]) c++;
            if (!(a[r] < a[c])) break;
            float t2 = a[r]; a[r] = a[c]; a[c] = t2;
            r = c;
        }
    }
}

/* Reorder a[0:n] so that a[r] holds the rank-r value, a[<r] <= a[r] <= a[>r]
 * (comparisons by float <, so -0.0 == +0.0).  Branch-free Lomuto partitions around a
 * median-of-three pivot with pseudo-random members; a pivot that is the minimum of its
 * range splits off its equals instead (all-equal data is one pass).  After too many
 * rounds the rest is heap-sorted: O(n log n) at worst, and it always terminates (NaN
 * too). */
static void qc_nth(float *a, ptrdiff_t n, ptrdiff_t r) {
    ptrdiff_t lo = 0, hi = n;
    uint64_t rng = 0x9E3779B97F4A7C15ull ^ (uint64_t)n ^ ((uint64_t)r << 32);
    int budget = 16;
    for (ptrdiff_t m = n; m > 1; m >>= 1)
        budget += 2;
    while (hi - lo > 24) {
        if (--budget < 0) {
            qc_heapsort(a + lo, hi - lo);
            return;
        }
        rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
        ptrdiff_t len = hi - lo;
        float p0 = a[lo + (ptrdiff_t)(rng % (uint64_t)len)];
        float p1 = a[lo + (ptrdiff_t)((rng >> 21) % (uint64_t)len)];
        float p2 = a[lo + (ptrdiff_t)((rng >> 42) % (uint64_t)len)];
        float p; /* median of three */
        if (p0 < p1) p = p1 < p2 ? p1 : (p0 < p2 ? p2 : p0);
        else p = p0 < p2 ? p0 : (p1 < p2 ? p2 : p1);
        ptrdiff_t j = lo;
        for (ptrdiff_t i = lo; i < hi; i++) { /* [lo, j) < p <= [j, i) */
            float v = a[i];
            a[i] = a[j];
            a[j] = v;
            j += v < p;
        }
        if (r < j) { hi = j; continue; }
        if (j > lo) { lo = j; continue; }
        /* p is the minimum of [lo, hi): move its equals to the front */
        for (ptrdiff_t i = lo; i < hi; i++) {
            float v = a[i];
            a[i] = a[j];
            a[j] = v;
            j += v <= p;
        }
        if (j == lo) { /* unordered pivot (NaN): give up on partitioning */
            qc_heapsort(a + lo, hi - lo);
            return;
        }
        if (r < j) return;
        lo = j;
    }
    for (ptrdiff_t i = lo + 1; i < hi; i++) { /* insertion sort of the short rest */
        float v = a[i];
        ptrdiff_t j = i;
        while (j > lo && v < a[j - 1]) { a[j] = a[j - 1]; j--; }
        a[j] = v;
    }
}

static ptrdiff_t qc_count_lt(const float *a, ptrdiff_t n, float t) {
    ptrdiff_t c = 0;
    for (ptrdiff_t i = 0; i < n; i++) c += a[i] < t;
    return c;
}

static ptrdiff_t qc_count_gt(const float *a, ptrdiff_t n, float t) {
    ptrdiff_t c = 0;
    for (ptrdiff_t i = 0; i < n; i++) c += a[i] > t;
    return c;
}

/* ---------------------------------------------------------------- radix select */

static ptrdiff_t qc_find_bucket(const ptrdiff_t *h, int nb, ptrdiff_t *rank) {
    ptrdiff_t cum = 0;
    for (int b = 0; b < nb; b++) {
        if (*rank < cum + h[b]) {
            *rank -= cum;
            return b;
        }
        cum += h[b];
    }
    *rank = 0; /* unreachable for a valid rank */
    return nb - 1;
}

/* Exact values at ranks klo <= khi of finite x[0:n] by three histogram passes on the
 * order-preserving key; stack memory only.  Returns the first non-finite index or -1. */
static ptrdiff_t qc_radix_select(const float *x, ptrdiff_t n, ptrdiff_t klo, ptrdiff_t khi,
                                 float *lo_out, float *hi_out) {
    ptrdiff_t hlo[2048], hhi[2048];
    static const int shift[3] = {21, 10, 0}, width[3] = {11, 11, 10};
    ptrdiff_t bad = qc_first_bad(x, n);
    if (bad >= 0)
        return bad;
    uint32_t plo = 0, phi = 0;
    ptrdiff_t rlo = klo, rhi = khi, cneg = 0;
    for (int p = 0; p < 3; p++) {
        int s = shift[p], nb = 1 << width[p], us = s + width[p];
        uint32_t dmask = (uint32_t)nb - 1;
        int same = plo == phi;
        memset(hlo, 0, sizeof(ptrdiff_t) * nb);
        if (!same)
            memset(hhi, 0, sizeof(ptrdiff_t) * nb);
        if (p == 0) {
            for (ptrdiff_t i = 0; i < n; i++)
                hlo[qc_key(x[i]) >> 21]++;
            for (int b = 0; b < 1024; b++)
                cneg += hlo[b]; /* keys below 0x80000000: the negative values */
        } else if (same) {
            for (ptrdiff_t i = 0; i < n; i++) {
                uint32_t k = qc_key(x[i]);
                if ((k >> us) == plo)
                    hlo[(k >> s) & dmask]++;
            }
        } else {
            for (ptrdiff_t i = 0; i < n; i++) {
                uint32_t k = qc_key(x[i]);
                uint32_t top = k >> us;
                if (top == plo)
                    hlo[(k >> s) & dmask]++;
                else if (top == phi)
                    hhi[(k >> s) & dmask]++;
            }
        }
        ptrdiff_t blo = qc_find_bucket(hlo, nb, &rlo);
        ptrdiff_t bhi = qc_find_bucket(same ? hlo : hhi, nb, &rhi);
        plo = (plo << width[p]) | (uint32_t)blo;
        phi = (phi << width[p]) | (uint32_t)bhi;
    }
    float vlo = qc_unkey(plo), vhi = qc_unkey(phi);
    if (vlo == 0.0f)
        vlo = qc_zero_at(x, n, klo - cneg, 0);
    if (vhi == 0.0f)
        vhi = qc_zero_at(x, n, khi - cneg, 0);
    *lo_out = vlo;
    *hi_out = vhi;
    return -1;
}

/* ---------------------------------------------------------------- top-t */

/* Both ranks near the ends: t_lo = klo + 1 <= QC_TOPT, t_hi = n - khi <= QC_TOPT.  One
 * pass keeping the t_lo smallest (ascending) and t_hi largest (descending) values.
 * Returns the first non-finite index or -1. */
static ptrdiff_t qc_topt_select(const float *x, ptrdiff_t n, ptrdiff_t klo, ptrdiff_t khi,
                                float *lo_out, float *hi_out) {
    float small[QC_TOPT] = {0}, big[QC_TOPT] = {0}; /* zeroed: silences -Wmaybe-uninitialized */
    int tl = (int)(klo + 1), th = (int)(n - khi);
    ptrdiff_t i0 = tl > th ? tl : th;
    ptrdiff_t bad = qc_first_bad_scalar(x, i0);
    if (bad >= 0)
        return bad;
    /* small: insertion sort of x[0:tl], then offer x[tl:i0]; same for big. */
    for (int i = 0; i < tl; i++) {
        float v = x[i];
        int j = i;
        while (j > 0 && v < small[j - 1]) { small[j] = small[j - 1]; j--; }
        small[j] = v;
    }
    for (int i = 0; i < th; i++) {
        float v = x[i];
        int j = i;
        while (j > 0 && v > big[j - 1]) { big[j] = big[j - 1]; j--; }
        big[j] = v;
    }
#define QC_OFFER_SMALL(v)                                                    \
    if ((v) < small[tl - 1]) {                                               \
        int j_ = tl - 1;                                                     \
        while (j_ > 0 && (v) < small[j_ - 1]) { small[j_] = small[j_ - 1]; j_--; } \
        small[j_] = (v);                                                     \
    }
#define QC_OFFER_BIG(v)                                                      \
    if ((v) > big[th - 1]) {                                                 \
        int j_ = th - 1;                                                     \
        while (j_ > 0 && (v) > big[j_ - 1]) { big[j_] = big[j_ - 1]; j_--; } \
        big[j_] = (v);                                                       \
    }
    for (ptrdiff_t i = tl; i < i0; i++) { float v = x[i]; QC_OFFER_SMALL(v) }
    for (ptrdiff_t i = th; i < i0; i++) { float v = x[i]; QC_OFFER_BIG(v) }
    ptrdiff_t start = i0;
    while (start < n) {
        ptrdiff_t stop = start + QC_BLK < n ? start + QC_BLK : n;
        ptrdiff_t i = start;
        qc_vf acc = QC_FZERO();
        qc_vf vlo = QC_SET1(small[tl - 1]), vhi = QC_SET1(big[th - 1]);
        for (; i + QC_W <= stop; i += QC_W) {
            qc_vf v = QC_LOAD(x + i);
            acc = QC_ADD(acc, QC_SUB(v, v));
            unsigned bits = (unsigned)QC_MASK(QC_OR(QC_LT(v, vlo), QC_GT(v, vhi)));
            if (bits) {
                do {
                    float w = x[i + QC_CTZ(bits)];
                    bits &= bits - 1;
                    QC_OFFER_SMALL(w)
                    QC_OFFER_BIG(w)
                } while (bits);
                vlo = QC_SET1(small[tl - 1]);
                vhi = QC_SET1(big[th - 1]);
            }
        }
        float tail = 0.0f;
        for (; i < stop; i++) {
            float w = x[i];
            tail += w - w;
            QC_OFFER_SMALL(w)
            QC_OFFER_BIG(w)
        }
        if (qc_anynan(acc) || tail != tail)
            return start + qc_first_bad_scalar(x + start, stop - start);
        start = stop;
    }
#undef QC_OFFER_SMALL
#undef QC_OFFER_BIG
    float vl = small[tl - 1], vh = big[th - 1];
    if (vl == 0.0f) /* every negative value is among the tl smallest */
        vl = qc_zero_at(x, n, klo - qc_count_lt(small, tl, 0.0f), 0);
    if (vh == 0.0f) /* every positive value is among the th largest: count from the end */
        vh = qc_zero_at(x, n, (th - 1) - qc_count_gt(big, th, 0.0f), 1);
    *lo_out = vl;
    *hi_out = vh;
    return -1;
}

/* ---------------------------------------------------------------- sample bracket */

/* How one side's bracket [a, b] is used in the filtering pass. */
enum { QC_NONE = 0, QC_TAIL = 1, QC_RANGE = 2, QC_POINT = 3, QC_TAILX = 4 };
/* low side   TAIL: gather v <= b1.   RANGE: count v < a1, gather a1 <= v <= b1.
 *            POINT (a1 == b1): count v < a1 and v <= b1, no gather.
 *            TAILX (b1 heavily tied): gather v < b1, count v <= b1.
 * high side  TAIL: gather v >= a2.   RANGE: count v > b2, gather a2 <= v <= b2.
 *            POINT: count v > b2 and v >= a2.   TAILX: gather v > a2, count v >= a2.
 *            NONE: merged into the low side (one interval [a1, b1] for both ranks). */

typedef struct {
    float a1, b1, a2, b2;
    int m1, m2;
    ptrdiff_t cap1, cap2; /* slice size per chunk; the last QC_SLACK floats are slack */
    ptrdiff_t chunk;      /* elements per thread chunk (multiple of 64) */
    int nt;               /* threads */
    int nc;               /* chunks: 1 serial, else 4 per thread (dynamic schedule) */
    int sym;              /* two tails around 0 tested as |v| >= tsym (AVX2 only) */
    float tsym;
    float *buf;           /* nc * (cap1 + cap2) floats, or NULL */
} qc_plan;

typedef struct {
    ptrdiff_t lt1, le1, gt2, ge2; /* counts as the modes define them */
    ptrdiff_t n1, n2;             /* candidates gathered */
    ptrdiff_t bad;                /* first non-finite index in the chunk, or -1 */
    int overflow;                 /* a candidate buffer was full: the pass stopped */
} qc_fres;

static inline uint64_t qc_xorshift(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    return *s = x;
}

/* Sample ranks bracketing rank k of n in a sample of s: [*rl, *ru] (may leave 0..s-1). */
static void qc_sample_ranks(ptrdiff_t n, ptrdiff_t s, ptrdiff_t k, ptrdiff_t *rl, ptrdiff_t *ru) {
    double q = ((double)k + 0.5) / (double)n;
    double r = q * (double)s;
    double sd = sqrt((double)s * q * (1.0 - q));
    double m = 3.5 * sd + 3.0;
    *rl = (ptrdiff_t)floor(r - m);
    *ru = (ptrdiff_t)ceil(r + m);
}

/* Build the brackets from a sample.  Returns 0 when the plan is usable (p->buf
 * allocated), -1 when the caller should take the radix path (n too small, brackets too
 * wide for the memory budget, or malloc failed). */
static int qc_plan_make(const float *x, ptrdiff_t n, ptrdiff_t klo, ptrdiff_t khi, int nt,
                        int tiny_buffers, qc_plan *p) {
    memset(p, 0, sizeof(*p));
    if (n < 16384)
        return -1;
    /* Percentile ranks (within 1 % of the ends) need a small sample; a rank in the
     * middle has a wider bracket (sd ~ sqrt(s q (1-q))) and gets a 4x larger one. */
    int middle = klo > n / 100 || khi < n - 1 - n / 100;
    ptrdiff_t s = n >> (middle ? QC_SAMPLE_SHIFT - 2 : QC_SAMPLE_SHIFT);
    s = s < 2048 ? 2048 : (s > (middle ? 65536 : 32768) ? (middle ? 65536 : 32768) : s);
    float *sm = (float *)malloc(sizeof(float) * (size_t)s);
    if (!sm)
        return -1;
    /* One element from each of s equal segments at a pseudo-random offset (jitter
     * defeats data periodic with the stride); offset = (32 random bits * seg) >> 32. */
    uint64_t rng = 0x2545F4914F6CDD1Dull ^ (uint64_t)n;
    ptrdiff_t seg = n / s; /* >= 8, < 2^32 in practice; clamp the product anyway */
    uint64_t seg32 = (uint64_t)seg > 0xFFFFFFFFull ? 0xFFFFFFFFull : (uint64_t)seg;
    for (ptrdiff_t i = 0; i < s; i++)
        sm[i] = x[i * seg + (ptrdiff_t)(((qc_xorshift(&rng) >> 32) * seg32) >> 32)];

    ptrdiff_t rl1, ru1, rl2, ru2;
    qc_sample_ranks(n, s, klo, &rl1, &ru1);
    qc_sample_ranks(n, s, khi, &rl2, &ru2);
    /* A bracket near an end becomes a tail (no lower/upper bound, no count) when that
     * at most doubles its candidates: the tail test is cheaper per element, and the
     * sample then needs only a top-t pass. */
    int lo_tail = rl1 < 0 || rl1 <= ru1 - rl1;
    int hi_tail = ru2 >= s || (s - 1 - ru2) <= ru2 - rl2;
    int merged = ru1 >= rl2;
    if (ru1 > s - 1) ru1 = s - 1;
    if (rl2 < 0) rl2 = 0;
    if (lo_tail && hi_tail && merged) { /* the bracket would cover everything */
        free(sm);
        return -1;
    }
    /* The sample ranks needed, ascending; select them from the top down, each one in
     * the prefix below the previous (nth_element leaves smaller ranks there). */
    ptrdiff_t want[4];
    int nw = 0;
    if (!lo_tail) want[nw++] = rl1;
    if (!merged) { want[nw++] = ru1; want[nw++] = rl2; }
    if (!hi_tail) want[nw++] = ru2;
    float a1, b1 = 0.0f, a2 = 0.0f, b2; /* (initialized for -Wmaybe-uninitialized) */
    if (lo_tail && hi_tail && ru1 < QC_TOPT && s - rl2 <= QC_TOPT) {
        /* the usual percentile case: both sample ranks near the ends, one pass */
        if (qc_topt_select(sm, s, ru1, rl2, &b1, &a2) >= 0) {
            free(sm); /* a non-finite value in the sample: the radix path reports it */
            return -1;
        }
        a1 = -INFINITY;
        b2 = INFINITY;
    } else {
        ptrdiff_t lim = s;
        for (int w = nw - 1; w >= 0; w--) {
            if (want[w] < lim) {
                qc_nth(sm, lim, want[w]);
                lim = want[w];
            }
        }
        a1 = lo_tail ? -INFINITY : sm[rl1];
        b2 = hi_tail ? INFINITY : sm[ru2];
        b1 = merged ? b2 : sm[ru1];
        a2 = merged ? a1 : sm[rl2];
    }
    if (!merged && !(b1 < a2)) {
        /* b1 == a2 == z: the sample is tied at z from rank ru1 to rl2.  When the
         * brackets are z at both outer ends too, count z (a point); a tied run that
         * stops inside a tail would gather everything: take the radix path. */
        float smin = sm[0], smax = sm[0];
        for (ptrdiff_t i = 1; i < s; i++) {
            smin = sm[i] < smin ? sm[i] : smin;
            smax = sm[i] > smax ? sm[i] : smax;
        }
        float z = b1;
        if ((lo_tail ? smin == z : a1 == z) && (hi_tail ? smax == z : b2 == z)) {
            a1 = b2 = z;
        } else if (lo_tail && hi_tail) {
            free(sm);
            return -1;
        }
        merged = 1;
    }
    if (merged) { /* one interval [a1, b2] for both ranks, described as the low side */
        b1 = b2;
        a2 = b2 = INFINITY;
    }
    int m1 = a1 == b1 ? QC_POINT : (lo_tail ? QC_TAIL : QC_RANGE);
    int m2 = merged ? QC_NONE : (a2 == b2 ? QC_POINT : (hi_tail ? QC_TAIL : QC_RANGE));
    /* Expected candidates = sample elements in the bracket * n / s.  A tail whose bound
     * is heavily tied in the sample (ReLU zeros at the low percentile) gathers only the
     * values strictly beyond the bound and counts the ties instead. */
    ptrdiff_t c_le1 = 0, c_lt1 = 0, c_ge_a1 = 0, c_ge2 = 0, c_gt2 = 0, c_le_b2 = 0;
    ptrdiff_t c_sym = 0;
    float tsym = -b1 < a2 ? -b1 : a2; /* used when b1 < 0 < a2 */
    for (ptrdiff_t i = 0; i < s; i++) {
        float v = sm[i];
        c_sym += fabsf(v) >= tsym;
        c_le1 += v <= b1;
        c_lt1 += v < b1;
        c_ge_a1 += v >= a1;
        c_ge2 += v >= a2;
        c_gt2 += v > a2;
        c_le_b2 += v <= b2;
    }
    free(sm);
    double per = (double)n / (double)s;
    double e1 = 0, e2 = 0;
    if (m1 == QC_TAIL) {
        e1 = (double)c_le1;
        if (c_le1 > 2 * (ru1 + 1) + 8) {
            m1 = QC_TAILX;
            e1 = (double)c_lt1;
        }
    } else if (m1 == QC_RANGE) {
        e1 = (double)(c_le1 - (s - c_ge_a1)); /* a1 <= v <= b1 */
    }
    if (m2 == QC_TAIL) {
        e2 = (double)c_ge2;
        if (c_ge2 > 2 * (s - rl2) + 8) {
            m2 = QC_TAILX;
            e2 = (double)c_gt2;
        }
    } else if (m2 == QC_RANGE) {
        e2 = (double)(c_le_b2 - (s - c_ge2)); /* a2 <= v <= b2 */
    }
    e1 = m1 == QC_POINT ? 0 : (e1 + 1.0) * per;
    e2 = (m2 == QC_POINT || m2 == QC_NONE) ? 0 : (e2 + 1.0) * per;
    p->a1 = a1; p->b1 = b1; p->a2 = a2; p->b2 = b2;
    p->m1 = m1; p->m2 = m2;
#if defined(__AVX2__)
    /* Two tails on either side of 0 with similar magnitudes (the usual activations):
     * |v| >= min(-b1, a2) flags a superset of the candidates in half the vector work
     * (integer max of the magnitude bits, which also flags NaN/Inf). */
    if (m1 == QC_TAIL && m2 == QC_TAIL && b1 < 0.0f && a2 > 0.0f &&
        (double)c_sym <= 1.25 * (double)(c_le1 + c_ge2) + 8.0) {
        p->sym = 1;
        p->tsym = tsym;
    }
#endif
    if (nt < 1) nt = 1;
    /* Several chunks per thread, handed out dynamically: on a busy machine a preempted
     * worker then delays the call by at most one small chunk, not half the batch. */
    int nc = nt == 1 ? 1 : (4 * nt > 64 ? 64 : 4 * nt);
    p->nt = nt;
    p->nc = nc;
    p->chunk = ((n + nc - 1) / nc + 63) & ~(ptrdiff_t)63;
    /* The expected count plus 4 standard deviations of its estimate from c sample
     * elements (relative sd ~ 1/sqrt(c)), per chunk, plus slack. */
    double f1 = e1 > 0 ? 1.0 + 4.0 / sqrt(e1 / per) : 0, f2 = e2 > 0 ? 1.0 + 4.0 / sqrt(e2 / per) : 0;
    p->cap1 = e1 > 0 ? (ptrdiff_t)(f1 * e1 / nc) + 1024 + QC_SLACK : 0;
    p->cap2 = e2 > 0 ? (ptrdiff_t)(f2 * e2 / nc) + 1024 + QC_SLACK : 0;
    if ((p->cap1 + p->cap2) * nc > n / 12) /* keep scratch below ~8 % of the batch */
        return -1;
    if (tiny_buffers) { /* tests: force the overflow fallback */
        if (p->cap1) p->cap1 = QC_SLACK + 1;
        if (p->cap2) p->cap2 = QC_SLACK + 1;
    }
    if (p->cap1 + p->cap2 > 0) {
        p->buf = (float *)malloc(sizeof(float) * (size_t)((p->cap1 + p->cap2) * nc));
        if (!p->buf)
            return -1;
    }
    return 0;
}

/* Turn a chunked plan into one serial chunk owning the whole candidate buffer (the retry
 * after a chunk overflowed its slice: skewed data such as sorted input puts all the
 * candidates in one chunk). */
static void qc_plan_serial(qc_plan *p, ptrdiff_t n) {
    p->cap1 *= p->nc;
    p->cap2 *= p->nc;
    p->nc = 1;
    p->nt = 1;
    p->chunk = n;
}

static int qc_any_overflow(const qc_fres *res, int nc) {
    for (int c = 0; c < nc; c++)
        if (res[c].overflow)
            return 1;
    return 0;
}

static void qc_plan_free(qc_plan *p) {
    free(p->buf);
    p->buf = NULL;
}

/* One vector of the filtering pass: update the counters, return the gather mask (the
 * candidates plus every non-finite value, so the scalar gather sees the first bad
 * element in order).  With two tails the bracket tests already catch +-Inf and (by the
 * unordered compare) NaN; otherwise an explicit |v| > FLT_MAX test is or'ed in. */
QC_INLINE qc_vm qc_fmask(qc_vf v, qc_vf A1, qc_vf B1, qc_vf A2, qc_vf B2, qc_vi *clt1,
                         qc_vi *cle1, qc_vi *cgt2, qc_vi *cge2, const int M1, const int M2) {
    const int cover = (M1 == QC_TAIL || M1 == QC_TAILX) && (M2 == QC_TAIL || M2 == QC_TAILX);
    qc_vm m = QC_MZERO();
    if (M1 == QC_TAIL) {
        m = cover ? QC_LE_NAN(v, B1) : QC_LE(v, B1);
    } else if (M1 == QC_TAILX) {
        m = cover ? QC_LT_NAN(v, B1) : QC_LT(v, B1);
        QC_CNT(*cle1, QC_LE(v, B1));
    } else if (M1 == QC_RANGE) {
        qc_vm mlt = QC_LT(v, A1);
        QC_CNT(*clt1, mlt);
        m = QC_ANDNOT(mlt, QC_LE(v, B1));
    } else if (M1 == QC_POINT) {
        QC_CNT(*clt1, QC_LT(v, A1));
        QC_CNT(*cle1, QC_LE(v, B1));
    }
    if (M2 == QC_TAIL) {
        m = QC_OR(m, QC_GE(v, A2));
    } else if (M2 == QC_TAILX) {
        m = QC_OR(m, QC_GT(v, A2));
        QC_CNT(*cge2, QC_GE(v, A2));
    } else if (M2 == QC_RANGE) {
        qc_vm mgt = QC_GT(v, B2);
        QC_CNT(*cgt2, mgt);
        m = QC_OR(m, QC_ANDNOT(mgt, QC_GE(v, A2)));
    } else if (M2 == QC_POINT) {
        QC_CNT(*cgt2, QC_GT(v, B2));
        QC_CNT(*cge2, QC_GE(v, A2));
    }
    if (!cover)
        m = QC_OR(m, QC_NONFINITE(v));
    return m;
}

/* Gather the flagged lanes (bit j = x[base + j]); a bad value stops the pass.  The
 * low/high choice is branch-free (both slices get the value, one count advances);
 * capacity is checked once per step against the slack. */
#define QC_GATHER(bits_, base_)                                              \
    do {                                                                     \
        uint32_t bb_ = (bits_);                                              \
        while (bb_) {                                                        \
            ptrdiff_t at_ = (base_) + QC_CTZ(bb_);                           \
            float w_ = x[at_];                                               \
            bb_ &= bb_ - 1;                                                  \
            if (!(w_ - w_ == 0.0f)) { r->bad = at_; return; }                \
            if (g1 && g2) {                                                  \
                ptrdiff_t lo_ = w_ <= b1;                                    \
                buf1[n1] = w_;                                               \
                buf2[n2] = w_;                                               \
                n1 += lo_;                                                   \
                n2 += 1 - lo_;                                               \
            } else if (g1) {                                                 \
                buf1[n1++] = w_;                                             \
            } else {                                                         \
                buf2[n2++] = w_;                                             \
            }                                                                \
        }                                                                    \
        if (n1 > lim1 || n2 > lim2) goto overflow;                           \
    } while (0)

/* The filtering pass over one chunk, specialized on the two modes (constants); four
 * vectors per step share one test-and-branch. */
QC_INLINE void qc_filter_impl(const float *x, ptrdiff_t n, const qc_plan *p, float *buf1,
                              float *buf2, qc_fres *r, const int M1, const int M2) {
    const qc_vf A1 = QC_SET1(p->a1), B1 = QC_SET1(p->b1);
    const qc_vf A2 = QC_SET1(p->a2), B2 = QC_SET1(p->b2);
    const float a1 = p->a1, b1 = p->b1, a2 = p->a2, b2 = p->b2;
    /* fill limits; an unused side (capacity 0) stays at 0 and is never written */
    const ptrdiff_t lim1 = p->cap1 > QC_SLACK ? p->cap1 - QC_SLACK : 0;
    const ptrdiff_t lim2 = p->cap2 > QC_SLACK ? p->cap2 - QC_SLACK : 0;
    const int g1 = M1 == QC_TAIL || M1 == QC_TAILX || M1 == QC_RANGE;
    const int g2 = M2 == QC_TAIL || M2 == QC_TAILX || M2 == QC_RANGE;
    ptrdiff_t lt1 = 0, le1 = 0, gt2 = 0, ge2 = 0, n1 = 0, n2 = 0;
    ptrdiff_t start = 0;
    r->bad = -1;
    r->overflow = 0;
    while (start < n) {
        ptrdiff_t stop = start + QC_BLK < n ? start + QC_BLK : n;
        ptrdiff_t i = start;
        qc_vi clt1 = QC_IZERO(), cle1 = QC_IZERO(), cgt2 = QC_IZERO(), cge2 = QC_IZERO();
        for (; i + 4 * QC_W <= stop; i += 4 * QC_W) {
            qc_vm m0 = qc_fmask(QC_LOAD(x + i), A1, B1, A2, B2, &clt1, &cle1, &cgt2, &cge2, M1, M2);
            qc_vm m1 = qc_fmask(QC_LOAD(x + i + QC_W), A1, B1, A2, B2, &clt1, &cle1, &cgt2, &cge2, M1, M2);
            qc_vm m2 = qc_fmask(QC_LOAD(x + i + 2 * QC_W), A1, B1, A2, B2, &clt1, &cle1, &cgt2, &cge2, M1, M2);
            qc_vm m3 = qc_fmask(QC_LOAD(x + i + 3 * QC_W), A1, B1, A2, B2, &clt1, &cle1, &cgt2, &cge2, M1, M2);
            if (QC_MASK(QC_OR(QC_OR(m0, m1), QC_OR(m2, m3)))) {
                uint32_t bits = (uint32_t)QC_MASK(m0) | (uint32_t)QC_MASK(m1) << QC_W |
                                (uint32_t)QC_MASK(m2) << (2 * QC_W) |
                                (uint32_t)QC_MASK(m3) << (3 * QC_W);
                QC_GATHER(bits, i);
            }
        }
        for (; i + QC_W <= stop; i += QC_W) {
            qc_vm m0 = qc_fmask(QC_LOAD(x + i), A1, B1, A2, B2, &clt1, &cle1, &cgt2, &cge2, M1, M2);
            QC_GATHER((uint32_t)QC_MASK(m0), i);
        }
        for (; i < stop; i++) { /* scalar remainder of the last block */
            float w = x[i];
            if (!(w - w == 0.0f)) { r->bad = i; return; }
            int c1 = 0, c2 = 0;
            if (M1 == QC_TAIL) c1 = w <= b1;
            else if (M1 == QC_TAILX) { c1 = w < b1; le1 += w <= b1; }
            else if (M1 == QC_RANGE) { lt1 += w < a1; c1 = w >= a1 && w <= b1; }
            else if (M1 == QC_POINT) { lt1 += w < a1; le1 += w <= b1; }
            if (M2 == QC_TAIL) c2 = w >= a2;
            else if (M2 == QC_TAILX) { c2 = w > a2; ge2 += w >= a2; }
            else if (M2 == QC_RANGE) { gt2 += w > b2; c2 = w >= a2 && w <= b2; }
            else if (M2 == QC_POINT) { gt2 += w > b2; ge2 += w >= a2; }
            if (c1) {
                if (n1 >= lim1) goto overflow;
                buf1[n1++] = w;
            } else if (c2) {
                if (n2 >= lim2) goto overflow;
                buf2[n2++] = w;
            }
        }
        lt1 += qc_isum(clt1);
        le1 += qc_isum(cle1);
        gt2 += qc_isum(cgt2);
        ge2 += qc_isum(cge2);
        start = stop;
    }
    r->lt1 = lt1; r->le1 = le1; r->gt2 = gt2; r->ge2 = ge2;
    r->n1 = n1; r->n2 = n2;
    return;
overflow:
    r->overflow = 1;
}
#undef QC_GATHER

#if defined(__AVX2__)
/* The two-tail pass as |v| >= tsym on the magnitude bits: four vectors per step reduced
 * with an integer max (NaN/Inf bits exceed every finite magnitude, so they are flagged
 * too); flagged lanes are classified exactly in scalar code. */
static void qc_filter_sym(const float *x, ptrdiff_t n, const qc_plan *p, float *buf1,
                          float *buf2, qc_fres *r) {
    const __m256i ABS = _mm256_set1_epi32(0x7fffffff);
    int32_t tb;
    memcpy(&tb, &p->tsym, 4);
    const __m256i T = _mm256_set1_epi32(tb - 1); /* |v| >= tsym <=> bits > tb - 1 */
    const float b1 = p->b1, a2 = p->a2;
    const ptrdiff_t lim1 = p->cap1 > QC_SLACK ? p->cap1 - QC_SLACK : 0;
    const ptrdiff_t lim2 = p->cap2 > QC_SLACK ? p->cap2 - QC_SLACK : 0;
    ptrdiff_t n1 = 0, n2 = 0, i = 0;
    r->bad = -1;
    r->overflow = 0;
#define QC_SYM_GATHER(bits_, base_)                                          \
    do {                                                                     \
        uint32_t bb_ = (bits_);                                              \
        while (bb_) {                                                        \
            ptrdiff_t at_ = (base_) + QC_CTZ(bb_);                           \
            float w_ = x[at_];                                               \
            bb_ &= bb_ - 1;                                                  \
            if (!(w_ - w_ == 0.0f)) { r->bad = at_; return; }                \
            buf1[n1] = w_;                                                   \
            buf2[n2] = w_;                                                   \
            n1 += w_ <= b1;                                                  \
            n2 += w_ >= a2;                                                  \
        }                                                                    \
        if (n1 > lim1 || n2 > lim2) goto overflow;                           \
    } while (0)
#define QC_SYM_BITS(a_) ((unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32((a_), T))))
    for (; i + 32 <= n; i += 32) {
        __m256i v0 = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i)), ABS);
        __m256i v1 = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i + 8)), ABS);
        __m256i v2 = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i + 16)), ABS);
        __m256i v3 = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i + 24)), ABS);
        __m256i m = _mm256_max_epi32(_mm256_max_epi32(v0, v1), _mm256_max_epi32(v2, v3));
        if (QC_SYM_BITS(m)) {
            uint32_t bits = QC_SYM_BITS(v0) | QC_SYM_BITS(v1) << 8 | QC_SYM_BITS(v2) << 16 |
                            QC_SYM_BITS(v3) << 24;
            QC_SYM_GATHER(bits, i);
        }
    }
    for (; i < n; i++) {
        float w = x[i];
        if (!(w - w == 0.0f)) { r->bad = i; return; }
        if (w <= b1) {
            if (n1 >= lim1) goto overflow;
            buf1[n1++] = w;
        } else if (w >= a2) {
            if (n2 >= lim2) goto overflow;
            buf2[n2++] = w;
        }
    }
#undef QC_SYM_BITS
#undef QC_SYM_GATHER
    r->n1 = n1;
    r->n2 = n2;
    return;
overflow:
    r->overflow = 1;
}
#endif

/* Filter chunk c of the plan (x is the whole batch). */
static void qc_filter_chunk(const float *x, ptrdiff_t n, const qc_plan *p, int c, qc_fres *r) {
    ptrdiff_t b = (ptrdiff_t)c * p->chunk;
    memset(r, 0, sizeof(*r));
    r->bad = -1;
    if (b >= n)
        return;
    ptrdiff_t len = n - b < p->chunk ? n - b : p->chunk;
    /* layout: nc slices of cap1 floats, then nc slices of cap2 floats */
    float *buf1 = p->buf ? p->buf + (ptrdiff_t)c * p->cap1 : NULL;
    float *buf2 = p->buf ? p->buf + (ptrdiff_t)p->nc * p->cap1 + (ptrdiff_t)c * p->cap2 : NULL;
    const float *xc = x + b;
#if defined(__AVX2__)
    if (p->sym) {
        qc_filter_sym(xc, len, p, buf1, buf2, r);
        if (r->bad >= 0)
            r->bad += b;
        return;
    }
#endif
#define QC_CASE(A, B) \
    case (A) * 5 + (B): qc_filter_impl(xc, len, p, buf1, buf2, r, (A), (B)); break;
#define QC_CASES(A) QC_CASE(A, QC_NONE) QC_CASE(A, QC_TAIL) QC_CASE(A, QC_RANGE) \
    QC_CASE(A, QC_POINT) QC_CASE(A, QC_TAILX)
    switch (p->m1 * 5 + p->m2) {
        QC_CASES(QC_TAIL) QC_CASES(QC_RANGE) QC_CASES(QC_POINT) QC_CASES(QC_TAILX)
        default: r->overflow = 1; break;
    }
#undef QC_CASES
#undef QC_CASE
    if (r->bad >= 0)
        r->bad += b;
}

/* Ranks ka <= kb on a low-side bracket (mode m, candidates c[0:nc] in any order, counts
 * lt = #(v < a), le = #(v <= b) as the mode defines them).  Sets va, vb and *negs =
 * #(x < 0) (meaningful when a result is zero); returns 1 when a rank is outside. */
static int qc_side_low(float *c, ptrdiff_t nc, int m, float a, float b, ptrdiff_t lt,
                       ptrdiff_t le, ptrdiff_t ka, ptrdiff_t kb, float *va, float *vb,
                       ptrdiff_t *negs) {
    if (m == QC_POINT) { /* [lt, le) all equal a */
        if (ka < lt || kb >= le) return 1;
        *va = *vb = a;
        *negs = lt;
        return 0;
    }
    ptrdiff_t base = m == QC_RANGE ? lt : 0;
    /* candidates hold ranks [base, base + nc); TAILX: then ties with b up to le */
    ptrdiff_t top = m == QC_TAILX ? le : base + nc;
    if (ka < base || kb >= top) return 1;
    ptrdiff_t lim = nc;
    if (kb < base + nc) {
        qc_nth(c, nc, kb - base);
        *vb = c[kb - base];
        lim = kb - base + 1;
    } else {
        *vb = b;
    }
    if (ka < base + nc) {
        qc_nth(c, lim, ka - base);
        *va = c[ka - base];
    } else {
        *va = b;
    }
    /* Every negative value lies below a zero result, so in the candidates or below a. */
    *negs = base + qc_count_lt(c, nc, 0.0f);
    (void)b;
    return 0;
}

/* Rank t counted from the top (0 = the maximum) on a high-side bracket (mode m,
 * candidates c[0:nc], gt = #(v > b), ge = #(v >= a)).  Sets *v and *pos = #(x > 0). */
static int qc_side_high(float *c, ptrdiff_t nc, int m, float a, float b, ptrdiff_t gt,
                        ptrdiff_t ge, ptrdiff_t t, float *v, ptrdiff_t *pos) {
    if (m == QC_POINT) {
        if (t < gt || t >= ge) return 1;
        *v = a;
        *pos = gt;
        return 0;
    }
    ptrdiff_t base = m == QC_RANGE ? gt : 0;
    ptrdiff_t top = m == QC_TAILX ? ge : base + nc;
    if (t < base || t >= top) return 1;
    if (t < base + nc) {
        ptrdiff_t r = nc - 1 - (t - base);
        qc_nth(c, nc, r);
        *v = c[r];
    } else {
        *v = a;
    }
    *pos = base + qc_count_gt(c, nc, 0.0f);
    (void)b;
    return 0;
}

/* Merge the per-chunk results and pick the two order statistics.  Returns 0 and sets
 * lo/hi, or sets *bad (the first non-finite index) and returns 0, or returns -1 when
 * a bracket missed or a buffer overflowed (the caller falls back to radix select). */
static int qc_resolve(const float *x, ptrdiff_t n, ptrdiff_t klo, ptrdiff_t khi, qc_plan *p,
                      qc_fres *res, float *lo, float *hi, ptrdiff_t *bad) {
    int nt = p->nc; /* chunks */
    *bad = -1;
    for (int c = 0; c < nt; c++) {
        if (res[c].overflow) /* stopped early: an earlier bad value may be unseen */
            return -1;
        if (res[c].bad >= 0) { /* chunks are in order: the first one holds the first bad */
            *bad = res[c].bad;
            return 0;
        }
    }
    ptrdiff_t lt1 = 0, le1 = 0, gt2 = 0, ge2 = 0, n1 = 0, n2 = 0;
    for (int c = 0; c < nt; c++) {
        lt1 += res[c].lt1; le1 += res[c].le1; gt2 += res[c].gt2; ge2 += res[c].ge2;
    }
    /* Compact each region's per-chunk slices to its front (writes never pass reads). */
    float *c1 = NULL, *c2 = NULL;
    if (p->buf) {
        c1 = p->buf;
        c2 = p->buf + (ptrdiff_t)nt * p->cap1;
        for (int c = 0; c < nt; c++) {
            memmove(c1 + n1, c1 + (ptrdiff_t)c * p->cap1, sizeof(float) * (size_t)res[c].n1);
            n1 += res[c].n1;
            memmove(c2 + n2, c2 + (ptrdiff_t)c * p->cap2, sizeof(float) * (size_t)res[c].n2);
            n2 += res[c].n2;
        }
    }
    ptrdiff_t tpos = n - 1 - khi; /* khi's rank counted from the top */
    float vlo, vhi;
    ptrdiff_t negs = 0, pos = 0;  /* #(x < 0), #(x > 0): needed only for a zero result */
    if (p->m2 == QC_NONE) { /* one interval for both ranks: klo and khi on the low side */
        if (qc_side_low(c1, n1, p->m1, p->a1, p->b1, lt1, le1, klo, khi, &vlo, &vhi, &negs))
            return -1;
        if (vlo == 0.0f) vlo = qc_zero_at(x, n, klo - negs, 0);
        if (vhi == 0.0f) vhi = qc_zero_at(x, n, khi - negs, 0);
    } else {
        float unused;
        if (qc_side_low(c1, n1, p->m1, p->a1, p->b1, lt1, le1, klo, klo, &vlo, &unused, &negs))
            return -1;
        /* the high side counts ranks from the top */
        if (qc_side_high(c2, n2, p->m2, p->a2, p->b2, gt2, ge2, tpos, &vhi, &pos))
            return -1;
        if (vlo == 0.0f) vlo = qc_zero_at(x, n, klo - negs, 0);
        if (vhi == 0.0f) vhi = qc_zero_at(x, n, tpos - pos, 1);
    }
    *lo = vlo;
    *hi = vhi;
    return 0;
}

#endif /* QC_SELECT_H */
