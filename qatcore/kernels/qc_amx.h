/* The int8 linear layer's entry points for every target, and the Intel AMX GEMM of the
 * amx target.
 *
 *   qc_linear_i32: out[m, n] = sum_k x[m, k] * w[n, k] + col_offset[n]          (int32)
 *   qc_linear_i8:  the same accumulators requantized to int8 per column with
 *                  qc_requantize_rows' arithmetic (gemmlowp / TFLite fixed point)
 *
 * Weights are packed once by qc_gemm_pack (qc_gemm.h).  Built for the amx target
 * (-mamx-tile -mamx-int8 on top of the avx512 flags) the packed layout is the VNNI one,
 * nr32-kg4, with k zero padded to whole 64-byte tile rows ("nr32-kg4-kp64"): the rows
 * of a 32-column panel at 4-byte k groups g..g+15 are, 128 bytes apart, exactly two AMX
 * B tiles (16 k-groups x 16 columns x 4 bytes, the "VNNI layout" _tile_dpbssd wants), and
 * the VNNI microkernel reads the same buffer.  So:
 *   - M >= QC_AMX_MIN_M: tiles.  _tile_dpbssd multiplies int8 by int8 (no xor-0x80 and
 *     -128 * sum(w) correction) into int32 that wraps and never saturates, hence exact
 *     whenever the true sum fits int32 (K <= QC_GEMM_MAX_K, see qc_gemm.h).  Register
 *     blocking: a 32 x 32 output block in four C tiles (tmm0..3), fed by two A tiles of
 *     16 rows x 64 k (tmm4, tmm5) and two B tiles of 64 k x 16 columns (tmm6, tmm7).
 *     Cache blocking: the rows are packed (zero padded to 64 k and 16 rows, row stride
 *     Kp + 64 bytes) in blocks of QC_AMX_MC rows sized to stay in L2 (~QC_AMX_A_BYTES);
 *     each 32-column weight panel (Kp x 32 bytes: 32 KiB at K = 1024) is then used by
 *     every 32-row slice of the block while it sits in L1/L2.  The whole K is reduced in
 *     the tiles (no K blocks: no partial sums leave the tiles).  The epilogue adds
 *     col_offset, and requantizes to int8 when asked, on each 32 x 32 block as it leaves
 *     the tiles (fused: the int32 matrix is never written).
 *   - M < QC_AMX_MIN_M, or a process the kernel denied the tile state: the VNNI path of
 *     qc_gemm.h on the same packed weights (small M is bound by streaming the weights).
 * Every other target: qc_gemm_i8_i32, then qc_requantize_rows for qc_linear_i8.
 *
 * QC_AMX_EMULATE (tests only): compile the AMX path on C emulations of the tile
 * intrinsics the includer defines (_tile_loadconfig, _tile_loadd, _tile_dpbssd,
 * _tile_stored, _tile_zero, _tile_release; with QC_GEMM_EMULATE_VNNI for the small-M
 * path), so that machines without AMX check this same source; the global
 * qc_amx_emulate_permitted plays the kernel's permission.
 */
#ifndef QC_AMX_H
#define QC_AMX_H

#if (defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__AVX512VNNI__) && \
     defined(__AVX512BW__)) || defined(QC_AMX_EMULATE)
#  define QC_AMX 1
#  define QC_GEMM_KPAD 64
#  define QC_GEMM_LAYOUT_SUFFIX "-kp64"
#  if defined(QC_AMX_EMULATE) && !defined(QC_GEMM_EMULATE_VNNI)
#    error "QC_AMX_EMULATE needs QC_GEMM_EMULATE_VNNI (the small-M path is the VNNI one)"
#  endif
#  ifndef QC_AMX_EMULATE
#    include <immintrin.h>
#  endif
#endif

#include "qc_gemm.h"

/* Requantization parameters of qc_linear_i8 (per-column multiplier and shift). */
typedef struct {
    const int32_t *multiplier, *shift;
    int32_t zero_point, qmin, qmax;
} qc_requant;

/* out8 rows [0, m) = requantized acc rows, split over threads for large outputs. */
static void qc_requantize_par(const int32_t *acc, ptrdiff_t m, ptrdiff_t n,
                              const qc_requant *rq, int8_t *out8, int n_threads) {
    ptrdiff_t c;
    if (n_threads > m)
        n_threads = (int)m;
    if (n_threads <= 1 || m * n < ((ptrdiff_t)1 << 17) || !qc_openmp_enabled()) {
        qc_requantize_rows(acc, m, n, rq->multiplier, rq->shift, rq->zero_point, rq->qmin,
                           rq->qmax, out8);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel for num_threads(n_threads) schedule(static)
#endif
    for (c = 0; c < n_threads; c++) {
        ptrdiff_t lo = m * c / n_threads, hi = m * (c + 1) / n_threads;
        if (lo < hi)
            qc_requantize_rows(acc + lo * n, hi - lo, n, rq->multiplier, rq->shift,
                               rq->zero_point, rq->qmin, rq->qmax, out8 + lo * n);
    }
}

/* qc_gemm_i8_i32, then the requantization (an int32 scratch of M x N). */
static int qc_linear_i8_unfused(const int8_t *x, ptrdiff_t m, ptrdiff_t k, ptrdiff_t n,
                                const int8_t *packed, const int32_t *wsum,
                                const int32_t *col_offset, const qc_requant *rq, int8_t *out8,
                                int n_threads) {
    int32_t *acc;
    int status;
    if (m <= 0 || n <= 0)
        return 0;
    acc = (int32_t *)malloc(sizeof(int32_t) * (size_t)(m * n));
    if (acc == NULL)
        return -1;
    status = qc_gemm_i8_i32(x, m, k, n, packed, wsum, col_offset, acc, n_threads);
    if (status == 0)
        qc_requantize_par(acc, m, n, rq, out8, n_threads);
    free(acc);
    return status;
}

#if defined(QC_AMX)

#if QC_GEMM_NR != 32 || QC_GEMM_KG != 4
#  error "the AMX kernel reads the VNNI nr32-kg4 panels"
#endif

#define QC_AMX_IMPL "amx-tdpbssd"
/* Rows and columns of the register block (4 C tiles of 16 x 16 int32), k per tile step. */
#define QC_AMX_MR 32
#define QC_AMX_NR 32
#define QC_AMX_KT 64
/* Fewer rows than this go to the VNNI path: an A tile holds 16 rows, and at 1..4 rows
   the call streams the weights once whatever unit multiplies them. */
#ifndef QC_AMX_MIN_M
#  define QC_AMX_MIN_M 5
#endif
/* Target size of one packed row block (kept in L2; Sapphire Rapids has 2 MiB per core). */
#ifndef QC_AMX_A_BYTES
#  define QC_AMX_A_BYTES ((ptrdiff_t)512 * 1024)
#endif
#define QC_AMX_MC_MAX 256

static const char *qc_linear_impl = QC_AMX_IMPL;

#ifdef QC_AMX_EMULATE
static int qc_amx_emulate_permitted = 1;
#  define QC_AMX_READY() (qc_amx_emulate_permitted)
#else
#  define QC_AMX_READY() qc_amx_permitted()
#endif

/* The 64-byte LDTILECFG operand (palette 1). */
typedef struct {
    uint8_t palette_id;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} qc_tilecfg;
typedef char qc_tilecfg_is_64_bytes[sizeof(qc_tilecfg) == 64 ? 1 : -1];

/* Every tile in use is 16 rows x 64 bytes: C tiles 16 x 16 int32, A tiles 16 rows x 64 k,
   B tiles 16 k-groups x 64 bytes (16 columns x 4 k).  Loaded once per thread and call. */
static void qc_amx_config(void) {
    qc_tilecfg cfg;
    int t;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette_id = 1;
    for (t = 0; t < 8; t++) {
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    _tile_loadconfig(&cfg);
}

/* Bytes between packed rows: Kp + 64, so that the 16 rows an A tile load touches do not
   share L1 sets when Kp is a power of two. */
static inline ptrdiff_t qc_amx_lda(ptrdiff_t k) { return qc_round_up(k, QC_AMX_KT) + 64; }

/* Rows per packed block: ~QC_AMX_A_BYTES of rows, a multiple of QC_AMX_MR, 32..256. */
static inline ptrdiff_t qc_amx_mc(ptrdiff_t k) {
    ptrdiff_t mc = QC_AMX_A_BYTES / qc_amx_lda(k) / QC_AMX_MR * QC_AMX_MR;
    return mc < QC_AMX_MR ? QC_AMX_MR : (mc > QC_AMX_MC_MAX ? QC_AMX_MC_MAX : mc);
}

/* rows (<= mc) of x, k zero padded to Kp, rows zero padded to a multiple of 16. */
static void qc_amx_pack_a(const int8_t *x, ptrdiff_t k, ptrdiff_t rows, ptrdiff_t lda,
                          int8_t *a) {
    ptrdiff_t kp = qc_round_up(k, QC_AMX_KT), rp = qc_round_up(rows, 16), r;
    for (r = 0; r < rows; r++) {
        memcpy(a + r * lda, x + r * k, (size_t)k);
        memset(a + r * lda + k, 0, (size_t)(kp - k));
    }
    for (; r < rp; r++)
        memset(a + r * lda, 0, (size_t)kp);
}

/* c (32 x 32 int32, row stride 32) = a rows [0, 16 or 32) x the panel's 32 columns over
   nk tile steps of 64 k.  a: packed rows (stride lda); b: the panel (stride 128 bytes per
   4-byte k group, i.e. 16 k-groups = 2 KiB per tile step). */
static void qc_amx_uk(int two_row_tiles, ptrdiff_t nk, const int8_t *a, ptrdiff_t lda,
                      const int8_t *b, int32_t *c) {
    ptrdiff_t s;
    _tile_zero(0);
    _tile_zero(1);
    if (two_row_tiles) {
        _tile_zero(2);
        _tile_zero(3);
        for (s = 0; s < nk; s++) {
            _tile_loadd(6, b + s * 16 * 128, 128);
            _tile_loadd(7, b + s * 16 * 128 + 64, 128);
            _tile_loadd(4, a + s * QC_AMX_KT, lda);
            _tile_loadd(5, a + 16 * lda + s * QC_AMX_KT, lda);
            _tile_dpbssd(0, 4, 6);
            _tile_dpbssd(1, 4, 7);
            _tile_dpbssd(2, 5, 6);
            _tile_dpbssd(3, 5, 7);
        }
        _tile_stored(2, c + 16 * QC_AMX_NR, QC_AMX_NR * 4);
        _tile_stored(3, c + 16 * QC_AMX_NR + 16, QC_AMX_NR * 4);
    } else {
        for (s = 0; s < nk; s++) {
            _tile_loadd(6, b + s * 16 * 128, 128);
            _tile_loadd(7, b + s * 16 * 128 + 64, 128);
            _tile_loadd(4, a + s * QC_AMX_KT, lda);
            _tile_dpbssd(0, 4, 6);
            _tile_dpbssd(1, 4, 7);
        }
    }
    _tile_stored(0, c, QC_AMX_NR * 4);
    _tile_stored(1, c + 16, QC_AMX_NR * 4);
}

/* The epilogue of the block at column col: mr x nr valid values of c, plus col_offset
   (already at col; wrapping, as the int32 path of qc_gemm.h), stored as int32 or
   requantized to int8 with the multipliers and shifts of columns col.. (rq != NULL). */
static inline void qc_amx_store(int32_t *c, int mr, int nr, ptrdiff_t n, ptrdiff_t col,
                                const int32_t *col_offset, const qc_requant *rq,
                                int32_t *out32, int8_t *out8) {
    int r, j;
    for (r = 0; r < mr; r++) {
        int32_t *row = c + r * QC_AMX_NR;
        if (col_offset)
            for (j = 0; j < nr; j++)
                row[j] = (int32_t)((uint32_t)row[j] + (uint32_t)col_offset[j]);
        if (rq)
            qc_requantize_rows(row, 1, nr, rq->multiplier + col, rq->shift + col,
                               rq->zero_point, rq->qmin, rq->qmax, out8 + r * n);
        else
            memcpy(out32 + r * n, row, sizeof(int32_t) * (size_t)nr);
    }
}

/* Rows [m0, m1) x column panels [p0, p1) on tiles already configured by this thread.
   a_buf holds qc_amx_mc(k) packed rows; with a_ready it already holds rows [m0, m1)
   (then m1 - m0 <= qc_amx_mc(k)). */
static void qc_amx_block(const int8_t *x, ptrdiff_t m0, ptrdiff_t m1, ptrdiff_t k,
                         const int8_t *packed, ptrdiff_t p0, ptrdiff_t p1, ptrdiff_t n,
                         const int32_t *col_offset, const qc_requant *rq, int32_t *out32,
                         int8_t *out8, int8_t *a_buf, int a_ready) {
    int32_t c[QC_AMX_MR * QC_AMX_NR];
    ptrdiff_t kp = qc_round_up(k, QC_AMX_KT), lda = qc_amx_lda(k), mcmax = qc_amx_mc(k);
    ptrdiff_t nk = kp / QC_AMX_KT, mb, p, r0;
    for (mb = m0; mb < m1; mb += mcmax) {
        ptrdiff_t mc = m1 - mb < mcmax ? m1 - mb : mcmax;
        if (!a_ready)
            qc_amx_pack_a(x + mb * k, k, mc, lda, a_buf);
        for (p = p0; p < p1; p++) {
            const int8_t *bp = packed + p * kp * QC_AMX_NR;
            ptrdiff_t col = p * QC_AMX_NR;
            int nr = n - col < QC_AMX_NR ? (int)(n - col) : QC_AMX_NR;
            for (r0 = 0; r0 < mc; r0 += QC_AMX_MR) {
                int mr = mc - r0 < QC_AMX_MR ? (int)(mc - r0) : QC_AMX_MR;
                ptrdiff_t row = mb + r0;
                qc_amx_uk(mr > 16, nk, a_buf + r0 * lda, lda, bp, c);
                qc_amx_store(c, mr, nr, n, col, col_offset ? col_offset + col : NULL, rq,
                             out32 ? out32 + row * n + col : NULL,
                             out8 ? out8 + row * n + col : NULL);
            }
        }
    }
}

/* out32 (or, with rq, out8) for x (M, K) and weights packed by qc_gemm_pack.  Threads
   split the rows (dynamic chunks of 64) or, for few rows, the column panels; each thread
   loads the tile configuration (per-thread state) and releases the tiles at the end.
   Returns 0, or -1 when scratch memory could not be allocated. */
static int qc_amx_gemm(const int8_t *x, ptrdiff_t m, ptrdiff_t k, ptrdiff_t n,
                       const int8_t *packed, const int32_t *col_offset, const qc_requant *rq,
                       int32_t *out32, int8_t *out8, int n_threads) {
    ptrdiff_t np = qc_round_up(n, QC_AMX_NR) / QC_AMX_NR, lda = qc_amx_lda(k);
    ptrdiff_t mcmax = qc_amx_mc(k);
    ptrdiff_t rows = m < mcmax ? qc_round_up(m, 16) : mcmax;
    size_t a_bytes = (size_t)(rows * lda);
    int status = 0;
    if ((int64_t)m * n * k < QC_GEMM_PAR_MIN || !qc_openmp_enabled())
        n_threads = 1;
    if (n_threads <= 1) {
        int8_t *a_buf = (int8_t *)malloc(a_bytes);
        if (a_buf == NULL)
            return -1;
        qc_amx_config();
        qc_amx_block(x, 0, m, k, packed, 0, np, n, col_offset, rq, out32, out8, a_buf, 0);
        _tile_release();
        free(a_buf);
        return 0;
    }
    {
        const ptrdiff_t rows_per = 2 * QC_AMX_MR;
        int by_rows = m >= (ptrdiff_t)n_threads * rows_per * 2;
        ptrdiff_t chunks = (m + rows_per - 1) / rows_per;
        int8_t *a_shared = NULL;
        if (!by_rows && m <= mcmax) {
            /* few rows: packed once, read by every thread */
            a_shared = (int8_t *)malloc(a_bytes);
            if (a_shared == NULL)
                return -1;
            qc_amx_pack_a(x, k, m, lda, a_shared);
        }
#ifdef _OPENMP
#pragma omp parallel num_threads(n_threads)
#endif
        {
            ptrdiff_t ch;
            int8_t *a_buf = a_shared ? a_shared : (int8_t *)malloc(a_bytes);
            qc_amx_config();
            if (by_rows) {
                /* every thread must reach the worksharing loop, even without scratch */
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
                for (ch = 0; ch < chunks; ch++) {
                    ptrdiff_t lo = ch * rows_per, hi = lo + rows_per > m ? m : lo + rows_per;
                    if (a_buf == NULL) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
                        status = -1;
                    } else {
                        qc_amx_block(x, lo, hi, k, packed, 0, np, n, col_offset, rq, out32,
                                     out8, a_buf, 0);
                    }
                }
            } else if (a_buf == NULL) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
                status = -1;
            } else {
                int t = qc_omp_thread_num(), nt = qc_omp_num_threads();
                ptrdiff_t lo = np * t / nt, hi = np * (t + 1) / nt;
                if (lo < hi)
                    qc_amx_block(x, 0, m, k, packed, lo, hi, n, col_offset, rq, out32, out8,
                                 a_buf, a_shared != NULL);
            }
            _tile_release();
            if (a_buf != a_shared)
                free(a_buf);
        }
        free(a_shared);
    }
    return status;
}

static inline int qc_amx_eligible(ptrdiff_t m, ptrdiff_t k, ptrdiff_t n) {
    return m >= QC_AMX_MIN_M && n > 0 && k > 0 && QC_AMX_READY();
}

static int qc_linear_i32(const int8_t *x, ptrdiff_t m, ptrdiff_t k, ptrdiff_t n,
                         const int8_t *packed, const int32_t *wsum, const int32_t *col_offset,
                         int32_t *out, int n_threads) {
    if (!qc_amx_eligible(m, k, n))
        return qc_gemm_i8_i32(x, m, k, n, packed, wsum, col_offset, out, n_threads);
    return qc_amx_gemm(x, m, k, n, packed, col_offset, NULL, out, NULL, n_threads);
}

static int qc_linear_i8(const int8_t *x, ptrdiff_t m, ptrdiff_t k, ptrdiff_t n,
                        const int8_t *packed, const int32_t *wsum, const int32_t *col_offset,
                        const qc_requant *rq, int8_t *out8, int n_threads) {
    if (!qc_amx_eligible(m, k, n))
        return qc_linear_i8_unfused(x, m, k, n, packed, wsum, col_offset, rq, out8, n_threads);
    return qc_amx_gemm(x, m, k, n, packed, col_offset, rq, NULL, out8, n_threads);
}

#else /* every other target */

static const char *qc_linear_impl = QC_GEMM_IMPL;

static int qc_linear_i32(const int8_t *x, ptrdiff_t m, ptrdiff_t k, ptrdiff_t n,
                         const int8_t *packed, const int32_t *wsum, const int32_t *col_offset,
                         int32_t *out, int n_threads) {
    return qc_gemm_i8_i32(x, m, k, n, packed, wsum, col_offset, out, n_threads);
}

static int qc_linear_i8(const int8_t *x, ptrdiff_t m, ptrdiff_t k, ptrdiff_t n,
                        const int8_t *packed, const int32_t *wsum, const int32_t *col_offset,
                        const qc_requant *rq, int8_t *out8, int n_threads) {
    return qc_linear_i8_unfused(x, m, k, n, packed, wsum, col_offset, rq, out8, n_threads);
}

#endif /* QC_AMX */

#endif
