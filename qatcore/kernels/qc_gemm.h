/* int8 x int8 -> int32 GEMM and gemmlowp/TFLite fixed-point requantization.
 *
 *   out[m, n] = sum_k x[m, k] * w[n, k] + col_offset[n]        (int32)
 *
 * x is row-major int8 (M, K); w is the (N, K) int8 weight matrix of a linear layer,
 * packed once by qc_gemm_pack into panels of QC_GEMM_NR output columns x groups of
 * QC_GEMM_KG consecutive k (zero padded), the order the microkernel reads.
 *
 * One implementation is chosen at compile time from the compiler's predefined macros
 * (this header is compiled once per CPU target, see setup.py):
 *   - AVX-512 VNNI: vpdpbusd on (x xor 0x80) as uint8 times int8 weights, minus
 *     128 * sum_k w[n, k] per column.  vpdpbusd does not saturate and wraps modulo 2^32,
 *     so the result is exact whenever the true result fits int32.
 *   - AVX2: vpmaddubsw(|x|, sign(w, x)) then vpmaddwd with ones.  Exact because the
 *     weights lie in [-127, 127] (QuantizedLinear's codes; pack_weights requires it): an
 *     int16 pair sum is at most 2 * 128 * 127 = 32512, so the saturation of the usual
 *     u8 x s8 vpmaddubsw kernels (onnxruntime#6004) cannot happen.
 *   - SSE2 (x86-64 baseline): pmaddwd on int16-widened data.
 *   - otherwise portable C on the AVX2 layout.
 * Accumulation is int32.  With weights in [-127, 127] (QuantizedLinear's codes) and
 * activations in [-128, 127], |partial sums| <= 128 * sum_k |w[n, k]| <= 16256 * K, so
 * every path is exact for K <= QC_GEMM_MAX_K = floor((2^31 - 1) / (127 * 128)) = 132104
 * (QuantizedLinear also checks that the bias/zero-point offset cannot overflow).
 */
#ifndef QC_GEMM_H
#define QC_GEMM_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qc_common.h"

/* QC_GEMM_EMULATE_VNNI (tests only): take the VNNI path on intrinsics the includer
   emulates in C, to check its layout and +128 correction on CPUs without VNNI. */
#if ((defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512F__)) || \
     defined(QC_GEMM_EMULATE_VNNI)) && !defined(QC_GEMM_FORCE_PORTABLE)
#  ifndef QC_GEMM_EMULATE_VNNI
#    include <immintrin.h>
#  endif
#  define QC_GEMM_USE_VNNI 1
#  define QC_GEMM_NR 32
#  define QC_GEMM_KG 4
#  define QC_GEMM_MR 6
#  define QC_GEMM_IMPL "avx512vnni-vpdpbusd"
#  define QC_GEMM_LAYOUT "nr32-kg4"
typedef uint8_t qc_a_t;
typedef int8_t qc_b_t;
#elif defined(__AVX2__) && !defined(QC_GEMM_FORCE_PORTABLE)
#  include <immintrin.h>
#  define QC_GEMM_USE_AVX2 1
#  define QC_GEMM_IMPL "avx2-vpmaddubsw-sign"
/* int8 x int8 without saturation: vpmaddubsw(|x|, sign(w, x)) pairs are at most
   2 * 128 * 127 = 32512 (weights in [-127, 127]), widened by vpmaddwd with ones.  Same
   multiply-pipe cost per MAC as vpmaddwd on int16, but int8 weights (half the memory
   traffic) and no widening in the loop. */
#  define QC_GEMM_NR 16
#  define QC_GEMM_KG 4
#  define QC_GEMM_MR 4
#  define QC_GEMM_LAYOUT "nr16-kg4"
typedef int8_t qc_a_t;
typedef int8_t qc_b_t;
#elif (defined(__SSE2__) || defined(_M_X64)) && !defined(QC_GEMM_FORCE_PORTABLE)
#  include <emmintrin.h>
#  define QC_GEMM_USE_SSE2 1
#  define QC_GEMM_NR 16
#  define QC_GEMM_KG 2
#  define QC_GEMM_MR 2
#  define QC_GEMM_IMPL "sse2-pmaddwd"
#  define QC_GEMM_LAYOUT "nr16-kg2"
typedef int16_t qc_a_t;
typedef int8_t qc_b_t;
#else
#  define QC_GEMM_NR 16
#  define QC_GEMM_KG 2
#  define QC_GEMM_MR 4
#  define QC_GEMM_IMPL "portable-c"
#  define QC_GEMM_LAYOUT "nr16-kg2"
typedef int16_t qc_a_t;
typedef int8_t qc_b_t;
#endif

/* K extent of a packed weight panel: the k groups are zero padded to a multiple of
   QC_GEMM_KPAD.  The amx target (qc_amx.h) sets 64 so that its tiles read whole 64-byte
   rows of the same nr32-kg4 panels the VNNI microkernel reads (that layout is then named
   "<layout>-kp64"). */
#ifndef QC_GEMM_KPAD
#  define QC_GEMM_KPAD QC_GEMM_KG
#  define QC_GEMM_LAYOUT_SUFFIX ""
#endif

#define QC_GEMM_MAX_K 132104
/* Row block (A packed per block; kept in L2) and k block (one weight panel k-block of
   KC x NR bytes kept in L1 while the row tiles of the block stream past it). */
#ifndef QC_GEMM_MC
#define QC_GEMM_MC 96
#endif
#ifndef QC_GEMM_KC
#  define QC_GEMM_KC 1024
#endif
#define QC_A_PAD ((ptrdiff_t)(64 / sizeof(qc_a_t)))
/* Below this many multiply-adds a call stays on one thread. */
#define QC_GEMM_PAR_MIN ((int64_t)1 << 20)

#if defined(__GNUC__)
__attribute__((unused))       /* the amx target names its own implementation */
#endif
static const char *qc_gemm_impl = QC_GEMM_IMPL;
static const char *qc_gemm_layout = QC_GEMM_LAYOUT QC_GEMM_LAYOUT_SUFFIX;

#if defined(__GNUC__)
#  define QC_INLINE static inline __attribute__((always_inline))
#  define QC_NOINLINE static __attribute__((noinline))
#else
#  define QC_INLINE static inline
#  define QC_NOINLINE static
#endif
/* The microkernels' row loops must be fully unrolled so the accumulator arrays live in
   registers; gcc's own unrolling decisions vary with unrelated flags (3x slower). */
#if defined(__clang__)
#  define QC_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#  define QC_UNROLL _Pragma("GCC unroll 8")
#else
#  define QC_UNROLL
#endif

/* Size of the current OpenMP team (1 outside a parallel region or without OpenMP). */
static inline int qc_omp_num_threads(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

static inline ptrdiff_t qc_round_up(ptrdiff_t v, ptrdiff_t m) { return (v + m - 1) / m * m; }

/* ---------------------------------------------------------------- weight packing */

/* Bytes of the packed weights for an (N, K) matrix. */
static inline ptrdiff_t qc_gemm_packed_size(ptrdiff_t n, ptrdiff_t k) {
    return qc_round_up(n, QC_GEMM_NR) * qc_round_up(k, QC_GEMM_KPAD) * (ptrdiff_t)sizeof(qc_b_t);
}

/* packed[((p * Kp/KG + g) * NR + c) * KG + j] = w[p*NR + c, g*KG + j], zero outside;
   Kp = k rounded up to QC_GEMM_KPAD. */
static void qc_gemm_pack(const int8_t *w, ptrdiff_t n, ptrdiff_t k, int8_t *packed_bytes) {
    qc_b_t *packed = (qc_b_t *)(void *)packed_bytes;
    ptrdiff_t kp = qc_round_up(k, QC_GEMM_KPAD);
    ptrdiff_t np = qc_round_up(n, QC_GEMM_NR) / QC_GEMM_NR;
    ptrdiff_t p, g, c, j;
    qc_b_t *dst = packed;
    for (p = 0; p < np; p++)
        for (g = 0; g < kp / QC_GEMM_KG; g++)
            for (c = 0; c < QC_GEMM_NR; c++) {
                ptrdiff_t col = p * QC_GEMM_NR + c;
                for (j = 0; j < QC_GEMM_KG; j++) {
                    ptrdiff_t kk = g * QC_GEMM_KG + j;
                    *dst++ = (col < n && kk < k) ? w[col * k + kk] : 0;
                }
            }
}

/* ---------------------------------------------------------------- microkernels
 * qc_uk_<mr>(ng, a, lda, b, tile): tile[r*NR + c] = sum over ng k-groups of
 * a[r*lda + g*KG + j] * b[(g*NR + c)*KG + j]  for r < mr, c < NR.
 * a is the packed row block (qc_a_t), b the packed weight panel at the block's first k. */

#if defined(QC_GEMM_USE_VNNI)

QC_INLINE void qc_uk(const int mr, ptrdiff_t ng, const qc_a_t *a, ptrdiff_t lda,
                     const qc_b_t *b, int32_t *tile) {
    __m512i acc[QC_GEMM_MR][2];
    int r;
    ptrdiff_t g;
    QC_UNROLL
    for (r = 0; r < mr; r++) {
        acc[r][0] = _mm512_setzero_si512();
        acc[r][1] = _mm512_setzero_si512();
    }
    for (g = 0; g < ng; g++) {
        __m512i b0 = _mm512_loadu_si512((const void *)(b + g * 128));
        __m512i b1 = _mm512_loadu_si512((const void *)(b + g * 128 + 64));
        QC_UNROLL
        for (r = 0; r < mr; r++) {
            int32_t av;
            memcpy(&av, a + r * lda + g * 4, 4);
            __m512i a4 = _mm512_set1_epi32(av);
            acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], a4, b0);
            acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], a4, b1);
        }
    }
    QC_UNROLL
    for (r = 0; r < mr; r++) {
        _mm512_storeu_si512((void *)(tile + r * QC_GEMM_NR), acc[r][0]);
        _mm512_storeu_si512((void *)(tile + r * QC_GEMM_NR + 16), acc[r][1]);
    }
}

/* A block: uint8 (x xor 0x80), rows of lda bytes; padding k (weights 0 there) gets 0. */
static inline void qc_pack_a(const int8_t *x, ptrdiff_t ldx, ptrdiff_t rows, ptrdiff_t kc,
                             ptrdiff_t kcp, ptrdiff_t lda, qc_a_t *a) {
    ptrdiff_t r, k;
    for (r = 0; r < rows; r++) {
        const uint8_t *src = (const uint8_t *)(x + r * ldx);
        qc_a_t *dst = a + r * lda;
        for (k = 0; k < kc; k++)
            dst[k] = (uint8_t)(src[k] ^ 0x80u);
        for (; k < kcp; k++)
            dst[k] = 0;
    }
}

#elif defined(QC_GEMM_USE_AVX2)

QC_INLINE void qc_uk(const int mr, ptrdiff_t ng, const qc_a_t *a, ptrdiff_t lda,
                     const qc_b_t *b, int32_t *tile) {
    __m256i acc[QC_GEMM_MR][2];
    const __m256i ones = _mm256_set1_epi16(1);
    int r;
    ptrdiff_t g;
    QC_UNROLL
    for (r = 0; r < mr; r++) {
        acc[r][0] = _mm256_setzero_si256();
        acc[r][1] = _mm256_setzero_si256();
    }
    for (g = 0; g < ng; g++) {
        /* 8 columns x (k .. k+3) per register: lane c = w[c, k..k+3] */
        __m256i b0 = _mm256_loadu_si256((const __m256i *)(b + g * 64));
        __m256i b1 = _mm256_loadu_si256((const __m256i *)(b + g * 64 + 32));
        QC_UNROLL
        for (r = 0; r < mr; r++) {
            int32_t av;
            memcpy(&av, a + r * lda + g * 4, 4);
            __m256i x4 = _mm256_set1_epi32(av);
            __m256i ax = _mm256_abs_epi8(x4);            /* |x| as uint8 (128 for -128) */
            __m256i p0 = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(b0, x4));
            __m256i p1 = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(b1, x4));
            acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(p0, ones));
            acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(p1, ones));
        }
    }
    QC_UNROLL
    for (r = 0; r < mr; r++) {
        _mm256_storeu_si256((__m256i *)(tile + r * QC_GEMM_NR), acc[r][0]);
        _mm256_storeu_si256((__m256i *)(tile + r * QC_GEMM_NR + 8), acc[r][1]);
    }
}

/* A block: int8 as is, rows of lda bytes, zero padded to kcp. */
static inline void qc_pack_a(const int8_t *x, ptrdiff_t ldx, ptrdiff_t rows, ptrdiff_t kc,
                             ptrdiff_t kcp, ptrdiff_t lda, qc_a_t *a) {
    ptrdiff_t r, k;
    for (r = 0; r < rows; r++) {
        const int8_t *src = x + r * ldx;
        qc_a_t *dst = a + r * lda;
        memcpy(dst, src, (size_t)kc);
        for (k = kc; k < kcp; k++)
            dst[k] = 0;
    }
}

#elif defined(QC_GEMM_USE_SSE2)

QC_INLINE void qc_uk(const int mr, ptrdiff_t ng, const qc_a_t *a, ptrdiff_t lda,
                     const qc_b_t *b, int32_t *tile) {
    __m128i acc[QC_GEMM_MR][4];
    int r, q;
    ptrdiff_t g;
    for (r = 0; r < mr; r++)
        for (q = 0; q < 4; q++)
            acc[r][q] = _mm_setzero_si128();
    for (g = 0; g < ng; g++) {
        /* Sign-extend 32 weight bytes to int16 (SSE2 has no pmovsxbw): lane pairs are
           (w[c, k], w[c, k+1]) for 4 columns per register. */
        __m128i lo = _mm_loadu_si128((const __m128i *)(b + g * 32));
        __m128i hi = _mm_loadu_si128((const __m128i *)(b + g * 32 + 16));
        __m128i bw[4];
        bw[0] = _mm_srai_epi16(_mm_unpacklo_epi8(lo, lo), 8);
        bw[1] = _mm_srai_epi16(_mm_unpackhi_epi8(lo, lo), 8);
        bw[2] = _mm_srai_epi16(_mm_unpacklo_epi8(hi, hi), 8);
        bw[3] = _mm_srai_epi16(_mm_unpackhi_epi8(hi, hi), 8);
        QC_UNROLL
        for (r = 0; r < mr; r++) {
            int32_t av;
            memcpy(&av, a + r * lda + g * 2, 4);
            __m128i a2 = _mm_set1_epi32(av);
            for (q = 0; q < 4; q++)
                acc[r][q] = _mm_add_epi32(acc[r][q], _mm_madd_epi16(a2, bw[q]));
        }
    }
    for (r = 0; r < mr; r++)
        for (q = 0; q < 4; q++)
            _mm_storeu_si128((__m128i *)(tile + r * QC_GEMM_NR + 4 * q), acc[r][q]);
}

#else /* portable C */

/* gcc 12's loop vectorizer over-reads past the row block here (found with valgrind;
   results were right, but a read past the allocation can fault), so this scalar
   fallback for non-x86 targets is kept out of it. */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("no-tree-loop-vectorize")))
#endif
static void qc_uk(const int mr, ptrdiff_t ng, const qc_a_t *a, ptrdiff_t lda,
                  const qc_b_t *b, int32_t *tile) {
    int32_t acc[QC_GEMM_MR * QC_GEMM_NR];
    int r, c;
    ptrdiff_t g;
    for (c = 0; c < QC_GEMM_MR * QC_GEMM_NR; c++)
        acc[c] = 0;
    for (g = 0; g < ng; g++) {
        const qc_b_t *bg = b + g * (QC_GEMM_NR * 2);
        for (r = 0; r < mr; r++) {
            const int32_t a0 = a[r * lda + 2 * g], a1 = a[r * lda + 2 * g + 1];
            int32_t *ar = acc + r * QC_GEMM_NR;
            for (c = 0; c < QC_GEMM_NR; c++)
                ar[c] += a0 * bg[2 * c] + a1 * bg[2 * c + 1];
        }
    }
    for (c = 0; c < mr * QC_GEMM_NR; c++)
        tile[c] = acc[c];
}

#endif

#if !defined(QC_GEMM_USE_VNNI) && !defined(QC_GEMM_USE_AVX2)
/* A block: int16, rows of lda values, zero padded to kcp. */
static inline void qc_pack_a(const int8_t *x, ptrdiff_t ldx, ptrdiff_t rows, ptrdiff_t kc,
                             ptrdiff_t kcp, ptrdiff_t lda, qc_a_t *a) {
    ptrdiff_t r, k;
    for (r = 0; r < rows; r++) {
        const int8_t *src = x + r * ldx;
        qc_a_t *dst = a + r * lda;
        for (k = 0; k < kc; k++)
            dst[k] = src[k];
        for (; k < kcp; k++)
            dst[k] = 0;
    }
}
#endif

/* Dispatch on the tile height with a compile-time constant, so each variant keeps its
   accumulators in registers. */
static void qc_uk_any(int mr, ptrdiff_t ng, const qc_a_t *a, ptrdiff_t lda,
                      const qc_b_t *b, int32_t *tile) {
    switch (mr) {
    case 1: qc_uk(1, ng, a, lda, b, tile); break;
#if QC_GEMM_MR > 2
    case 2: qc_uk(2, ng, a, lda, b, tile); break;
#endif
#if QC_GEMM_MR > 3
    case 3: qc_uk(3, ng, a, lda, b, tile); break;
#endif
#if QC_GEMM_MR > 4
    case 4: qc_uk(4, ng, a, lda, b, tile); break;
#endif
#if QC_GEMM_MR > 5
    case 5: qc_uk(5, ng, a, lda, b, tile); break;
#endif
    default: qc_uk(QC_GEMM_MR, ng, a, lda, b, tile); break;
    }
}

/* out tile (mr x nr valid) = / += tile, plus on the last k block col_offset (NULL: 0)
   and, on the VNNI path, the -128 * wsum correction.  Unsigned adds: the VNNI path
   relies on wrap-around (the +128 offset is removed modulo 2^32).  Computing the
   per-column addend here, per tile, keeps a per-call buffer and its pass out of small
   calls. */
static inline void qc_store_tile(const int32_t *tile, int32_t *out, ptrdiff_t ldo, int mr,
                                 int nr, int first, int last, const int32_t *col_offset,
                                 const int32_t *wsum) {
    uint32_t add[QC_GEMM_NR];
    int r, c;
    for (c = 0; c < nr; c++) {
        uint32_t v = (last && col_offset) ? (uint32_t)col_offset[c] : 0u;
#if defined(QC_GEMM_USE_VNNI)
        if (last) v -= 128u * (uint32_t)wsum[c];
#else
        (void)wsum;
#endif
        add[c] = v;
    }
    for (r = 0; r < mr; r++) {
        int32_t *o = out + r * ldo;
        const int32_t *t = tile + r * QC_GEMM_NR;
        if (first)
            for (c = 0; c < nr; c++) o[c] = (int32_t)((uint32_t)t[c] + add[c]);
        else
            for (c = 0; c < nr; c++) o[c] = (int32_t)((uint32_t)o[c] + (uint32_t)t[c] + add[c]);
    }
}

/* Rows [m0, m1) x column panels [p0, p1).  a_buf holds QC_GEMM_MC x QC_GEMM_KC values;
   with a_ready it already holds the packed rows (rows and k are then one block each). */
static void qc_gemm_block(const int8_t *x, ptrdiff_t m0, ptrdiff_t m1, ptrdiff_t k,
                          const int8_t *packed, ptrdiff_t p0, ptrdiff_t p1, ptrdiff_t n,
                          const int32_t *col_offset, const int32_t *wsum, int32_t *out,
                          qc_a_t *a_buf, int a_ready) {
    int32_t tile[QC_GEMM_MR * QC_GEMM_NR];
    ptrdiff_t kp = qc_round_up(k, QC_GEMM_KPAD);          /* panel extent in k */
    ptrdiff_t mb, kb, p, r0;
    for (mb = m0; mb < m1; mb += QC_GEMM_MC) {
        ptrdiff_t mc = m1 - mb < QC_GEMM_MC ? m1 - mb : QC_GEMM_MC;
        for (kb = 0; kb < k; kb += QC_GEMM_KC) {
            ptrdiff_t kc = k - kb < QC_GEMM_KC ? k - kb : QC_GEMM_KC;
            ptrdiff_t kcp = qc_round_up(kc, QC_GEMM_KG);
            int first = kb == 0, last = kb + kc >= k;
            /* Row stride kcp + 64 bytes: a power-of-two stride puts the tile's rows
               in the same L1 sets as each other and the weight panel (3x slower). */
            ptrdiff_t lda = kcp + QC_A_PAD;
            if (!a_ready)
                qc_pack_a(x + mb * k + kb, k, mc, kc, kcp, lda, a_buf);
            for (p = p0; p < p1; p++) {
                const qc_b_t *bp = (const qc_b_t *)(const void *)packed + p * kp * QC_GEMM_NR
                                   + kb * QC_GEMM_NR;
                ptrdiff_t col = p * QC_GEMM_NR;
                int nr = n - col < QC_GEMM_NR ? (int)(n - col) : QC_GEMM_NR;
                for (r0 = 0; r0 < mc; r0 += QC_GEMM_MR) {
                    int mr = mc - r0 < QC_GEMM_MR ? (int)(mc - r0) : QC_GEMM_MR;
                    qc_uk_any(mr, kcp / QC_GEMM_KG, a_buf + r0 * lda, lda, bp, tile);
                    qc_store_tile(tile, out + (mb + r0) * n + col, n, mr, nr, first, last,
                                  col_offset ? col_offset + col : NULL, wsum + col);
                }
            }
        }
    }
}

/* out (M, N) = x (M, K) @ w.T + col_offset, with w packed by qc_gemm_pack.
 * x and out contiguous; wsum[n] = sum_k w[n, k]; col_offset may be NULL (zeros).
 * Threads split the rows (or, for few rows, the column panels); each thread packs its
 * own rows.  Returns 0, or -1 when scratch memory could not be allocated. */
static int qc_gemm_i8_i32(const int8_t *x, ptrdiff_t m, ptrdiff_t k, ptrdiff_t n,
                          const int8_t *packed, const int32_t *wsum,
                          const int32_t *col_offset, int32_t *out, int n_threads) {
    ptrdiff_t np = qc_round_up(n, QC_GEMM_NR) / QC_GEMM_NR;
    int status = 0;
    size_t a_bytes;
    ptrdiff_t j;
    if (m <= 0 || n <= 0)
        return 0;
    if (k <= 0) {
        for (j = 0; j < m * n; j++)
            out[j] = col_offset ? col_offset[j % n] : 0;
        return 0;
    }
    if ((int64_t)m * n * k < QC_GEMM_PAR_MIN || !qc_openmp_enabled())
        n_threads = 1;
    {
        /* Scratch for one packed row block, no bigger than the problem needs (a small
           call must not pay for mapping and faulting a 200 KB buffer). */
        ptrdiff_t rows = m < QC_GEMM_MC ? qc_round_up(m, QC_GEMM_MR) : QC_GEMM_MC;
        ptrdiff_t cols = (k < QC_GEMM_KC ? qc_round_up(k, QC_GEMM_KG) : QC_GEMM_KC) + QC_A_PAD;
        a_bytes = sizeof(qc_a_t) * (size_t)(rows * cols);
    }
    if (n_threads <= 1) {
        qc_a_t *a_buf = (qc_a_t *)malloc(a_bytes);
        if (a_buf == NULL) {
            status = -1;
        } else {
            qc_gemm_block(x, 0, m, k, packed, 0, np, n, col_offset, wsum, out, a_buf, 0);
            free(a_buf);
        }
    } else {
        /* Split rows when every thread gets a few chunks of 4 row tiles, handed out
           dynamically (on a busy machine a preempted thread then delays a call by one
           chunk, not by half of the work); else split the column panels statically. */
        int by_rows = m >= (ptrdiff_t)n_threads * QC_GEMM_MR * 8;
        /* Few rows, one k block: the packed rows are the same for every thread, so they
           are packed once, here. */
        qc_a_t *a_shared = NULL;
        if (!by_rows && m <= QC_GEMM_MC && k <= QC_GEMM_KC) {
            ptrdiff_t kcp = qc_round_up(k, QC_GEMM_KG);
            a_shared = (qc_a_t *)malloc(a_bytes);
            if (a_shared == NULL)
                return -1;
            qc_pack_a(x, k, m, k, kcp, kcp + QC_A_PAD, a_shared);
        }
        ptrdiff_t rows_per = QC_GEMM_MR * 4;
        ptrdiff_t chunks = (m + rows_per - 1) / rows_per;
#ifdef _OPENMP
#pragma omp parallel num_threads(n_threads)
#endif
        {
            ptrdiff_t c;
            qc_a_t *a_buf = a_shared ? a_shared : (qc_a_t *)malloc(a_bytes);
            if (by_rows) {
                /* every thread must reach the worksharing loop, even without scratch */
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
                for (c = 0; c < chunks; c++) {
                    ptrdiff_t lo = c * rows_per, hi = lo + rows_per > m ? m : lo + rows_per;
                    if (a_buf == NULL) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
                        status = -1;
                    } else {
                        qc_gemm_block(x, lo, hi, k, packed, 0, np, n, col_offset, wsum, out, a_buf, 0);
                    }
                }
            } else if (a_buf == NULL) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
                status = -1;
            } else {
                /* Static contiguous column ranges: each core streams the same weights on
                   every call, so its share stays in its own L2. */
                int t = qc_omp_thread_num(), nt = qc_omp_num_threads();
                ptrdiff_t lo = np * t / nt, hi = np * (t + 1) / nt;
                if (lo < hi)
                    qc_gemm_block(x, 0, m, k, packed, lo, hi, n, col_offset, wsum, out, a_buf,
                                  a_shared != NULL);
            }
            if (a_buf != a_shared)
                free(a_buf);
        }
        free(a_shared);
    }
    return status;
}

/* ---------------------------------------------------------------- requantization
 * gemmlowp (Jacob et al. 2018) fixed-point arithmetic, as in TFLite's
 * MultiplyByQuantizedMultiplier: out = clamp(zero_point + RoundingDivideByPOT(
 * SaturatingRoundingDoublingHighMul(acc << left, multiplier), right), qmin, qmax) with
 * left = max(shift, 0), right = max(-shift, 0).  The left shift saturates to int32
 * (TFLite leaves it to overflow; QuantizeMultiplier caps shift at 30). */

static inline int32_t qc_srdhm(int32_t a, int32_t b) {
    int64_t ab, nudge;
    if (a == b && a == INT32_MIN)
        return INT32_MAX;
    ab = (int64_t)a * (int64_t)b;
    nudge = ab >= 0 ? ((int64_t)1 << 30) : (1 - ((int64_t)1 << 30));
    return (int32_t)((ab + nudge) / ((int64_t)1 << 31)); /* C division truncates */
}

static inline int32_t qc_rdbpot(int32_t x, int exponent) {
    int32_t mask = (int32_t)(((int64_t)1 << exponent) - 1);
    int32_t remainder = x & mask;
    int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

static inline int32_t qc_mbqm(int32_t x, int32_t multiplier, int32_t shift) {
    int left = shift > 0 ? shift : 0, right = shift > 0 ? 0 : -shift;
    int64_t v = (int64_t)x * ((int64_t)1 << left);
    if (v > INT32_MAX) v = INT32_MAX;
    if (v < INT32_MIN) v = INT32_MIN;
    return qc_rdbpot(qc_srdhm((int32_t)v, multiplier), right);
}

#if defined(__AVX2__)
/* 8 columns at once.  SaturatingRoundingDoublingHighMul(a, b) equals
   floor((a*b + 2^30) / 2^31) for every input but a == b == INT32_MIN (the negative nudge
   1 - 2^30 plus C's truncation toward zero add up to the same +2^30), and only the low
   32 bits of that 64-bit shift are needed, so a logical 64-bit shift does. */
QC_INLINE __m256i qc_mbqm8(__m256i x, __m256i mult, __m256i shift) {
    const __m256i zero = _mm256_setzero_si256(), one = _mm256_set1_epi32(1);
    const __m256i imin = _mm256_set1_epi32(INT32_MIN), imax = _mm256_set1_epi32(INT32_MAX);
    __m256i left = _mm256_max_epi32(shift, zero);
    __m256i right = _mm256_max_epi32(_mm256_sub_epi32(zero, shift), zero);
    /* saturating x << left: it fits iff shifting back gives x */
    __m256i xs = _mm256_sllv_epi32(x, left);
    __m256i fits = _mm256_cmpeq_epi32(_mm256_srav_epi32(xs, left), x);
    __m256i sat = _mm256_blendv_epi8(imax, imin, _mm256_cmpgt_epi32(zero, x));
    xs = _mm256_blendv_epi8(sat, xs, fits);
    /* high mul, even and odd lanes */
    const __m256i nudge = _mm256_set1_epi64x((int64_t)1 << 30);
    __m256i pe = _mm256_add_epi64(_mm256_mul_epi32(xs, mult), nudge);
    __m256i po = _mm256_add_epi64(_mm256_mul_epi32(_mm256_srli_epi64(xs, 32),
                                                   _mm256_srli_epi64(mult, 32)), nudge);
    pe = _mm256_srli_epi64(pe, 31);                              /* low 32 bits: result */
    po = _mm256_slli_epi64(_mm256_srli_epi64(po, 31), 32);
    __m256i hm = _mm256_blend_epi32(pe, po, 0xAA);
    __m256i both_min = _mm256_and_si256(_mm256_cmpeq_epi32(xs, imin), _mm256_cmpeq_epi32(mult, imin));
    hm = _mm256_blendv_epi8(hm, imax, both_min);
    /* RoundingDivideByPOT(hm, right) */
    __m256i mask = _mm256_sub_epi32(_mm256_sllv_epi32(one, right), one);
    __m256i rem = _mm256_and_si256(hm, mask);
    __m256i thr = _mm256_sub_epi32(_mm256_srai_epi32(mask, 1), _mm256_cmpgt_epi32(zero, hm));
    return _mm256_sub_epi32(_mm256_srav_epi32(hm, right), _mm256_cmpgt_epi32(rem, thr));
}
#endif

/* out[i, n] = requantized acc[i, n] for rows [0, m) of contiguous (m, n) arrays. */
static void qc_requantize_rows(const int32_t *acc, ptrdiff_t m, ptrdiff_t n,
                               const int32_t *multiplier, const int32_t *shift,
                               int32_t zero_point, int32_t qmin, int32_t qmax, int8_t *out) {
    ptrdiff_t i, j;
    /* clamp(v + zp, qmin, qmax) == clamp(v, qmin - zp, qmax - zp) + zp, without overflow */
    int64_t lo64 = (int64_t)qmin - zero_point, hi64 = (int64_t)qmax - zero_point;
    int32_t lo = lo64 < INT32_MIN ? INT32_MIN : (lo64 > INT32_MAX ? INT32_MAX : (int32_t)lo64);
    int32_t hi = hi64 < INT32_MIN ? INT32_MIN : (hi64 > INT32_MAX ? INT32_MAX : (int32_t)hi64);
    (void)lo;                   /* read by the AVX2 loop only */
    (void)hi;
    for (i = 0; i < m; i++) {
        const int32_t *a = acc + i * n;
        int8_t *o = out + i * n;
        j = 0;
#if defined(__AVX2__)
        if (lo <= hi) {
            const __m256i vlo = _mm256_set1_epi32(lo), vhi = _mm256_set1_epi32(hi);
            const __m256i vzp = _mm256_set1_epi32(zero_point);
            for (; j + 8 <= n; j += 8) {
                __m256i v = qc_mbqm8(_mm256_loadu_si256((const __m256i *)(a + j)),
                                     _mm256_loadu_si256((const __m256i *)(multiplier + j)),
                                     _mm256_loadu_si256((const __m256i *)(shift + j)));
                v = _mm256_add_epi32(_mm256_min_epi32(_mm256_max_epi32(v, vlo), vhi), vzp);
                /* values now fit int8: pack 8 x int32 -> 8 x int8 */
                __m256i p = _mm256_packs_epi32(v, v);
                p = _mm256_packs_epi16(p, p);
                int32_t w0 = _mm_cvtsi128_si32(_mm256_castsi256_si128(p));
                int32_t w1 = _mm_cvtsi128_si32(_mm256_extracti128_si256(p, 1));
                memcpy(o + j, &w0, 4);
                memcpy(o + j + 4, &w1, 4);
            }
        }
#endif
        for (; j < n; j++) {
            int64_t v = (int64_t)qc_mbqm(a[j], multiplier[j], shift[j]) + zero_point;
            v = v < qmin ? qmin : v;
            v = v > qmax ? qmax : v;
            o[j] = (int8_t)v;
        }
    }
}

#endif
