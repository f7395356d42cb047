/* Integer CNN kernels of the integer graph (qatcore/model/): CONV_2D through im2col and
 * the int8 GEMM of qc_gemm.h, a direct DEPTHWISE_CONV_2D, AVERAGE/MAX_POOL_2D, and the
 * requantization in the three roundings TFLite builds use.
 *
 * Layout NHWC, int8 activations, int8 weights in [-127, 127], int32 accumulation, the
 * arithmetic of TFLite's reference kernels (tensorflow/lite/kernels/internal/reference/
 * integer_ops/{conv,depthwise_conv,pooling}.h): a tap outside the image contributes
 * nothing; here im2col writes the input zero point there, and w * (zp - zp) = 0.
 * Every size was checked by the caller (qatcore/model/ops), which also guarantees that
 * no accumulator can leave int32.
 */
#ifndef QC_CONV_H
#define QC_CONV_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qc_common.h"
#include "qc_gemm.h"

/* rounding argument of the requantizing kernels */
#define QC_ROUND_GEMMLOWP 0
#define QC_ROUND_SINGLE 1
#define QC_ROUND_NEON 2

/* TFLITE_SINGLE_ROUNDING MultiplyByQuantizedMultiplier: x * m / 2^(31 - shift) rounded
   once, ties toward +inf (shift <= 30, so the shift amount is at least 1). */
static inline int64_t qc_mbqm_single(int32_t x, int32_t multiplier, int32_t shift) {
    int total = 31 - shift;
    if (total > 62)                 /* |x * m| < 2^62 <= 2^(total - 1): rounds to 0 */
        return 0;
    return ((int64_t)x * multiplier + ((int64_t)1 << (total - 1))) >> total;
}

/* NEON vqrdmulh of the saturated left-shifted x, then vrshl: rounding right shift with
   ties toward +inf (TFLite's optimized kernels). */
static inline int64_t qc_mbqm_neon(int32_t x, int32_t multiplier, int32_t shift) {
    int left = shift > 0 ? shift : 0, right = shift > 0 ? 0 : -shift;
    int64_t v = (int64_t)x * ((int64_t)1 << left);
    int32_t high;
    if (v > INT32_MAX) v = INT32_MAX;
    if (v < INT32_MIN) v = INT32_MIN;
    high = qc_srdhm((int32_t)v, multiplier);
    if (right > 62)
        right = 62;
    return ((int64_t)high + (((int64_t)1 << right) >> 1)) >> right;
}

/* out[i, j] = clamp(zp + MBQM(acc[i, j], multiplier[j], shift[j]), qmin, qmax) for rows
   [0, m) of contiguous (m, n) arrays, in the given rounding; out rows are ldo apart. */
static void qc_requantize_rows_r(const int32_t *acc, ptrdiff_t m, ptrdiff_t n,
                                 const int32_t *multiplier, const int32_t *shift,
                                 int32_t zero_point, int32_t qmin, int32_t qmax,
                                 int rounding, int8_t *out, ptrdiff_t ldo) {
    ptrdiff_t i, j;
    if (rounding == QC_ROUND_GEMMLOWP) {
        if (ldo == n) {
            qc_requantize_rows(acc, m, n, multiplier, shift, zero_point, qmin, qmax, out);
        } else {
            for (i = 0; i < m; i++)
                qc_requantize_rows(acc + i * n, 1, n, multiplier, shift, zero_point, qmin,
                                   qmax, out + i * ldo);
        }
        return;
    }
    for (i = 0; i < m; i++) {
        const int32_t *a = acc + i * n;
        int8_t *o = out + i * ldo;
        for (j = 0; j < n; j++) {
            int64_t v = rounding == QC_ROUND_SINGLE ? qc_mbqm_single(a[j], multiplier[j], shift[j])
                                                    : qc_mbqm_neon(a[j], multiplier[j], shift[j]);
            if (v > INT32_MAX) v = INT32_MAX;        /* MBQM returns an int32 */
            if (v < INT32_MIN) v = INT32_MIN;
            v += zero_point;
            v = v < qmin ? qmin : v;
            v = v > qmax ? qmax : v;
            o[j] = (int8_t)v;
        }
    }
}

/* ---------------------------------------------------------------- CONV_2D */

/* Geometry of a 2-D window op over an NHWC batch. */
typedef struct {
    ptrdiff_t n, h, w, c;          /* input */
    ptrdiff_t oh, ow;              /* output spatial size */
    int kh, kw, sh, sw, dh, dw;    /* kernel, stride, dilation */
    int pt, pl;                    /* top / left padding */
} qc_window_t;

/* One image's im2col rows: row (oy, ox) holds the kh x kw x cg taps of channels
   [c0, c0 + cg), out-of-image taps set to pad_value (the input zero point). */
static void qc_im2col_i8(const int8_t *x, const qc_window_t *g, ptrdiff_t c0, ptrdiff_t cg,
                         int8_t pad_value, int8_t *out) {
    ptrdiff_t oy, ox;
    int ky, kx;
    for (oy = 0; oy < g->oh; oy++) {
        for (ox = 0; ox < g->ow; ox++) {
            int8_t *row = out + (oy * g->ow + ox) * (ptrdiff_t)g->kh * g->kw * cg;
            ptrdiff_t ix0 = ox * g->sw - g->pl;
            /* all kw taps of a row inside the image, undilated, all channels: one span */
            int span = g->dw == 1 && cg == g->c && ix0 >= 0 && ix0 + g->kw <= g->w;
            for (ky = 0; ky < g->kh; ky++) {
                ptrdiff_t iy = oy * g->sh - g->pt + (ptrdiff_t)ky * g->dh;
                if (span && iy >= 0 && iy < g->h) {
                    memcpy(row + (ptrdiff_t)ky * g->kw * cg, x + (iy * g->w + ix0) * g->c,
                           (size_t)(g->kw * cg));
                    continue;
                }
                for (kx = 0; kx < g->kw; kx++) {
                    ptrdiff_t ix = ox * g->sw - g->pl + (ptrdiff_t)kx * g->dw;
                    int8_t *dst = row + ((ptrdiff_t)ky * g->kw + kx) * cg;
                    if (iy < 0 || iy >= g->h || ix < 0 || ix >= g->w)
                        memset(dst, pad_value, (size_t)cg);
                    else
                        memcpy(dst, x + (iy * g->w + ix) * g->c + c0, (size_t)cg);
                }
            }
        }
    }
}

/* Parameters of one convolution (groups share the geometry). */
typedef struct {
    int groups;
    ptrdiff_t cout;                /* output channels, groups * og */
    const int8_t *packed;          /* groups blocks of qc_gemm_packed_size(og, K) bytes */
    const int32_t *wsum;           /* (cout,) sum of each filter's weights */
    const int32_t *col_offset;     /* (cout,) bias - zp_in * wsum */
    const int32_t *multiplier, *shift;
    int32_t out_zp, qmin, qmax;
    int8_t pad_value;              /* input zero point */
    int direct;                    /* 1x1, stride 1, no padding, one group: no im2col */
    int rounding;
} qc_conv_t;

/* One image; cols (M x K bytes, unless direct) and acc (M x og int32) are scratch. */
static int qc_conv_image(const int8_t *x, const qc_window_t *g, const qc_conv_t *p,
                         int8_t *out, int8_t *cols, int32_t *acc, int n_threads) {
    ptrdiff_t m = g->oh * g->ow, og = p->cout / p->groups, cg = g->c / p->groups;
    ptrdiff_t k = (ptrdiff_t)g->kh * g->kw * cg;
    ptrdiff_t block = qc_gemm_packed_size(og, k);
    int gi;
    for (gi = 0; gi < p->groups; gi++) {
        const int8_t *a = x;
        if (!p->direct) {
            qc_im2col_i8(x, g, gi * cg, cg, p->pad_value, cols);
            a = cols;
        }
        if (qc_gemm_i8_i32(a, m, k, og, p->packed + gi * block, p->wsum + gi * og,
                           p->col_offset + gi * og, acc, n_threads) != 0)
            return -1;
        qc_requantize_rows_r(acc, m, og, p->multiplier + gi * og, p->shift + gi * og,
                             p->out_zp, p->qmin, p->qmax, p->rounding, out + gi * og,
                             p->cout);
    }
    return 0;
}

/* The whole batch; images are split across threads when n_threads > 1 and the batch has
   several images (each thread its own scratch), else the GEMM gets the threads.
   Returns 0, or -1 when scratch memory could not be allocated. */
static int qc_conv2d_i8(const int8_t *x, const qc_window_t *g, const qc_conv_t *p,
                        int8_t *out, int n_threads) {
    ptrdiff_t m = g->oh * g->ow, og = p->cout / p->groups, cg = g->c / p->groups;
    ptrdiff_t k = (ptrdiff_t)g->kh * g->kw * cg;
    size_t cols_bytes = p->direct ? 1 : (size_t)(m * k);
    size_t acc_bytes = sizeof(int32_t) * (size_t)(m * og > 0 ? m * og : 1);
    ptrdiff_t in_img = g->h * g->w * g->c, out_img = m * p->cout;
    int status = 0;
    if (g->n <= 0 || m <= 0 || p->cout <= 0)
        return 0;
    if (n_threads <= 1 || g->n < 2 || !qc_openmp_enabled()) {
        int8_t *cols = (int8_t *)malloc(cols_bytes);
        int32_t *acc = (int32_t *)malloc(acc_bytes);
        ptrdiff_t b;
        if (cols == NULL || acc == NULL) {
            status = -1;
        } else {
            for (b = 0; b < g->n && status == 0; b++)
                status = qc_conv_image(x + b * in_img, g, p, out + b * out_img, cols, acc,
                                       n_threads);
        }
        free(cols);
        free(acc);
        return status;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(n_threads)
#endif
    {
        int8_t *cols = (int8_t *)malloc(cols_bytes);
        int32_t *acc = (int32_t *)malloc(acc_bytes);
        ptrdiff_t b;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (b = 0; b < g->n; b++) {
            if (cols == NULL || acc == NULL
                    || qc_conv_image(x + b * in_img, g, p, out + b * out_img, cols, acc, 1) != 0) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
                status = -1;
            }
        }
        free(cols);
        free(acc);
    }
    return status;
}

/* ---------------------------------------------------------------- DEPTHWISE_CONV_2D */

/* acc[c] += w[c] * (x[c] + input_offset): restrict-qualified so the compiler knows the
   int8 rows (char types may alias anything) do not overlap acc, and vectorizes. */
static inline void qc_dw_tap(int32_t *restrict acc, const int8_t *restrict x,
                             const int8_t *restrict w, ptrdiff_t n, int32_t input_offset) {
    ptrdiff_t i = 0, j;
    /* blocks of 16 with a constant trip count: vectorized without a peeled prologue,
       which dominates for the small channel counts of mobile networks */
    for (; i + 16 <= n; i += 16)
        for (j = 0; j < 16; j++)
            acc[i + j] += (int32_t)w[i + j] * ((int32_t)x[i + j] + input_offset);
    for (; i < n; i++)
        acc[i] += (int32_t)w[i] * ((int32_t)x[i] + input_offset);
}

static inline void qc_pool_tap(int32_t *restrict acc, const int8_t *restrict x, ptrdiff_t n,
                               int is_max) {
    ptrdiff_t i = 0, j;
    if (is_max) {
        for (; i + 16 <= n; i += 16)
            for (j = 0; j < 16; j++)
                acc[i + j] = acc[i + j] > x[i + j] ? acc[i + j] : x[i + j];
        for (; i < n; i++)
            acc[i] = acc[i] > x[i] ? acc[i] : x[i];
    } else {
        for (; i + 16 <= n; i += 16)
            for (j = 0; j < 16; j++)
                acc[i + j] += x[i + j];
        for (; i < n; i++)
            acc[i] += x[i];
    }
}

/* Rows [r0, r1) of the (n * oh) output rows.  weights (kh, kw, c * mult) int8; bias
   (c * mult) int32 or NULL; output channel oc = ic * mult + j reads input channel ic
   (TFLite: m + ic * depth_multiplier).  acc is scratch of c * mult int32. */
static void qc_depthwise_rows(const int8_t *x, const qc_window_t *g, int mult,
                              const int8_t *weights, const int32_t *bias,
                              int32_t input_offset, const int32_t *multiplier,
                              const int32_t *shift, int32_t out_zp, int32_t qmin,
                              int32_t qmax, int rounding, int8_t *out, ptrdiff_t r0,
                              ptrdiff_t r1, int32_t *acc) {
    ptrdiff_t cm = g->c * mult, r, ox, ic, oc;
    int ky, kx, j;
    for (r = r0; r < r1; r++) {
        ptrdiff_t b = r / g->oh, oy = r % g->oh;
        const int8_t *img = x + b * g->h * g->w * g->c;
        for (ox = 0; ox < g->ow; ox++) {
            for (oc = 0; oc < cm; oc++)
                acc[oc] = bias ? bias[oc] : 0;
            for (ky = 0; ky < g->kh; ky++) {
                ptrdiff_t iy = oy * g->sh - g->pt + (ptrdiff_t)ky * g->dh;
                if (iy < 0 || iy >= g->h)
                    continue;
                for (kx = 0; kx < g->kw; kx++) {
                    ptrdiff_t ix = ox * g->sw - g->pl + (ptrdiff_t)kx * g->dw;
                    const int8_t *xi, *wt;
                    if (ix < 0 || ix >= g->w)
                        continue;
                    xi = img + (iy * g->w + ix) * g->c;
                    wt = weights + ((ptrdiff_t)ky * g->kw + kx) * cm;
                    if (mult == 1) {
                        qc_dw_tap(acc, xi, wt, cm, input_offset);
                    } else {
                        for (ic = 0; ic < g->c; ic++) {
                            int32_t v = (int32_t)xi[ic] + input_offset;
                            for (j = 0; j < mult; j++)
                                acc[ic * mult + j] += (int32_t)wt[ic * mult + j] * v;
                        }
                    }
                }
            }
            qc_requantize_rows_r(acc, 1, cm, multiplier, shift, out_zp, qmin, qmax, rounding,
                                 out + (r * g->ow + ox) * cm, cm);
        }
    }
}

static int qc_depthwise_i8(const int8_t *x, const qc_window_t *g, int mult,
                           const int8_t *weights, const int32_t *bias, int32_t input_offset,
                           const int32_t *multiplier, const int32_t *shift, int32_t out_zp,
                           int32_t qmin, int32_t qmax, int rounding, int8_t *out,
                           int n_threads) {
    ptrdiff_t rows = g->n * g->oh, cm = g->c * mult;
    size_t acc_bytes = sizeof(int32_t) * (size_t)(cm > 0 ? cm : 1);
    int status = 0;
    if (rows <= 0 || g->ow <= 0 || cm <= 0)
        return 0;
    if (n_threads <= 1 || rows < 2 || !qc_openmp_enabled()
            || rows * g->ow * cm * g->kh * g->kw < ((ptrdiff_t)1 << 16)) {
        int32_t *acc = (int32_t *)malloc(acc_bytes);
        if (acc == NULL)
            return -1;
        qc_depthwise_rows(x, g, mult, weights, bias, input_offset, multiplier, shift, out_zp,
                          qmin, qmax, rounding, out, 0, rows, acc);
        free(acc);
        return 0;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(n_threads)
#endif
    {
        int32_t *acc = (int32_t *)malloc(acc_bytes);
        int t = qc_omp_thread_num(), nt = qc_omp_num_threads();
        ptrdiff_t lo = rows * t / nt, hi = rows * (t + 1) / nt;
        if (acc == NULL) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            status = -1;
        } else if (lo < hi) {
            qc_depthwise_rows(x, g, mult, weights, bias, input_offset, multiplier, shift,
                              out_zp, qmin, qmax, rounding, out, lo, hi, acc);
        }
        free(acc);
    }
    return status;
}

/* ---------------------------------------------------------------- pooling */

/* Rows [r0, r1) of the (n * oh) output rows of AVERAGE_POOL_2D (is_max 0) or
   MAX_POOL_2D (is_max 1); only in-image taps count.  The average divides the raw int8
   sum by the tap count rounding half away from zero (pooling.h); acc: c int32 scratch. */
static void qc_pool_rows(const int8_t *x, const qc_window_t *g, int is_max, int32_t qmin,
                         int32_t qmax, int8_t *out, ptrdiff_t r0, ptrdiff_t r1,
                         int32_t *acc) {
    ptrdiff_t c = g->c, r, ox, ch;
    for (r = r0; r < r1; r++) {
        ptrdiff_t b = r / g->oh, oy = r % g->oh;
        const int8_t *img = x + b * g->h * g->w * c;
        ptrdiff_t y0 = oy * g->sh - g->pt, y1 = y0 + g->kh;
        if (y0 < 0) y0 = 0;
        if (y1 > g->h) y1 = g->h;
        for (ox = 0; ox < g->ow; ox++) {
            ptrdiff_t x0 = ox * g->sw - g->pl, x1 = x0 + g->kw, iy, ix;
            int8_t *o = out + (r * g->ow + ox) * c;
            int32_t count;
            if (x0 < 0) x0 = 0;
            if (x1 > g->w) x1 = g->w;
            count = (int32_t)((y1 - y0) * (x1 - x0));
            for (ch = 0; ch < c; ch++)
                acc[ch] = is_max ? -128 : 0;
            for (iy = y0; iy < y1; iy++)
                for (ix = x0; ix < x1; ix++) {
                    qc_pool_tap(acc, img + (iy * g->w + ix) * c, c, is_max);
                }
            for (ch = 0; ch < c; ch++) {
                int32_t v = acc[ch];
                if (!is_max && count > 0)
                    v = v > 0 ? (v + count / 2) / count : (v - count / 2) / count;
                v = v < qmin ? qmin : v;
                v = v > qmax ? qmax : v;
                o[ch] = (int8_t)v;
            }
        }
    }
}

static int qc_pool_i8(const int8_t *x, const qc_window_t *g, int is_max, int32_t qmin,
                      int32_t qmax, int8_t *out, int n_threads) {
    ptrdiff_t rows = g->n * g->oh;
    size_t acc_bytes = sizeof(int32_t) * (size_t)(g->c > 0 ? g->c : 1);
    int status = 0;
    if (rows <= 0 || g->ow <= 0 || g->c <= 0)
        return 0;
    if (n_threads <= 1 || rows < 2 || !qc_openmp_enabled()
            || rows * g->ow * g->c * g->kh * g->kw < ((ptrdiff_t)1 << 17)) {
        int32_t *acc = (int32_t *)malloc(acc_bytes);
        if (acc == NULL)
            return -1;
        qc_pool_rows(x, g, is_max, qmin, qmax, out, 0, rows, acc);
        free(acc);
        return 0;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(n_threads)
#endif
    {
        int32_t *acc = (int32_t *)malloc(acc_bytes);
        int t = qc_omp_thread_num(), nt = qc_omp_num_threads();
        ptrdiff_t lo = rows * t / nt, hi = rows * (t + 1) / nt;
        if (acc == NULL) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            status = -1;
        } else if (lo < hi) {
            qc_pool_rows(x, g, is_max, qmin, qmax, out, lo, hi, acc);
        }
        free(acc);
    }
    return status;
}

/* ---------------------------------------------------------------- ADD */

/* TFLite's int8 ADD (reference_integer_ops::AddElementwise with add_common.cc's
   parameters, left shift 20): per element ((x_i - zp_i) << 20) scaled by its input
   multiplier (shift <= 0), summed, scaled by the output multiplier, + zp, clamped.
   single: TFLITE_SINGLE_ROUNDING's MultiplyByQuantizedMultiplier, else double rounding. */
static inline int32_t qc_mbqm_r(int32_t x, int32_t m, int32_t s, int single) {
    int64_t v;
    if (!single)
        return qc_mbqm(x, m, s);
    v = qc_mbqm_single(x, m, s);
    return v > INT32_MAX ? INT32_MAX : (v < INT32_MIN ? INT32_MIN : (int32_t)v);
}

static void qc_add_i8(const int8_t *a, const int8_t *b, ptrdiff_t n, int32_t zp_a,
                      int32_t zp_b, int32_t m_a, int32_t s_a, int32_t m_b, int32_t s_b,
                      int32_t m_out, int32_t s_out, int32_t zp_out, int32_t qmin,
                      int32_t qmax, int single, int8_t *out) {
    ptrdiff_t i;
    for (i = 0; i < n; i++) {
        int32_t va = qc_mbqm_r(((int32_t)a[i] - zp_a) * (1 << 20), m_a, s_a, single);
        int32_t vb = qc_mbqm_r(((int32_t)b[i] - zp_b) * (1 << 20), m_b, s_b, single);
        int64_t v = (int64_t)qc_mbqm_r(va + vb, m_out, s_out, single) + zp_out;
        v = v < qmin ? qmin : v;
        v = v > qmax ? qmax : v;
        out[i] = (int8_t)v;
    }
}

/* ---------------------------------------------------------------- SOFTMAX */

/* gemmlowp fixed point (fixedpoint.h) on int32: plain additions wrap, as gemmlowp's. */
static inline int32_t qc_wadd(int32_t a, int32_t b) { return (int32_t)((uint32_t)a + (uint32_t)b); }
static inline int32_t qc_wsub(int32_t a, int32_t b) { return (int32_t)((uint32_t)a - (uint32_t)b); }

/* SaturatingRoundingMultiplyByPOT<e> for 0 < e < 31 */
static inline int32_t qc_sat_shl(int32_t x, int e) {
    int32_t threshold = (int32_t)(((uint32_t)1 << (31 - e)) - 1);
    if (x > threshold) return INT32_MAX;
    if (x < -threshold) return INT32_MIN;
    return (int32_t)((uint32_t)x << e);
}

/* exp(a) for a in [-1/4, 0), Q0.31 */
static int32_t qc_exp_on_interval(int32_t a) {
    int32_t x = qc_wadd(a, 1 << 28), x2, x3, x4, poly;
    x2 = qc_srdhm(x, x);
    x3 = qc_srdhm(x2, x);
    x4 = qc_srdhm(x2, x2);
    poly = qc_rdbpot(qc_wadd(qc_srdhm(qc_wadd(qc_rdbpot(x4, 2), x3), 715827883), x2), 1);
    return qc_wadd(1895147668, qc_srdhm(1895147668, qc_wadd(x, poly)));
}

/* exp_on_negative_values for a FixedPoint<int32, integer_bits> a <= 0; Q0.31 result */
static int32_t qc_exp_on_negative(int32_t a, int integer_bits) {
    static const int exps[7] = {-2, -1, 0, 1, 2, 3, 4};
    static const int32_t mults[7] = {1672461947, 1302514674, 790015084, 290630308,
                                     39332535, 720401, 242};
    int frac = 31 - integer_bits, k;
    int32_t quarter = (int32_t)1 << (frac - 2);
    int32_t a_mod = qc_wsub(a & (quarter - 1), quarter);
    int32_t result = qc_exp_on_interval(integer_bits > 0 ? qc_sat_shl(a_mod, integer_bits) : a_mod);
    int32_t remainder = qc_wsub(a_mod, a);
    for (k = 0; k < 7; k++)
        if (integer_bits > exps[k] && ((uint32_t)remainder & ((uint32_t)1 << (frac + exps[k]))))
            result = qc_srdhm(result, mults[k]);
    if (integer_bits > 5 && a < -((int32_t)1 << (36 - integer_bits)))
        result = 0;
    return a == 0 ? INT32_MAX : result;
}

/* one_over_one_plus_x_for_x_in_0_1, Q0.31 (Newton-Raphson, three steps) */
static int32_t qc_one_over_one_plus_x(int32_t a) {
    int64_t sum = (int64_t)a + INT32_MAX;
    int32_t half = (int32_t)((sum + (sum >= 0 ? 1 : -1)) / 2);      /* RoundingHalfSum */
    int32_t x = qc_wadd(1515870810, qc_srdhm(half, -1010580540));
    int i;
    for (i = 0; i < 3; i++) {
        int32_t one_minus = qc_wsub(1 << 29, qc_srdhm(half, x));
        x = qc_wadd(x, qc_sat_shl(qc_srdhm(x, one_minus), 2));
    }
    return qc_sat_shl(x, 1);
}

static inline int qc_clz32(uint32_t v) {
    int n = 0;
    if (v == 0) return 32;
    while (!(v & 0x80000000u)) { v <<= 1; n++; }
    return n;
}

/* MultiplyByQuantizedMultiplierGreaterThanOne: double rounding SRDHM(x << left, m) (the
   shift wraps as C's int32 would), or single rounding's MultiplyByQuantizedMultiplier. */
static inline int32_t qc_softmax_rescale(int32_t d, int32_t mult, int32_t left, int single) {
    int64_t v;
    if (!single)
        return qc_srdhm((int32_t)((uint32_t)d << left), mult);
    v = qc_mbqm_single(d, mult, left);
    return v > INT32_MAX ? INT32_MAX : (v < INT32_MIN ? INT32_MIN : (int32_t)v);
}

/* TFLite reference int8 SOFTMAX (reference_ops::Softmax, output scale 1/256, zp -128)
   over rows of `depth` values: Q5.26 differences, exp, Q12.19 sum, GetReciprocal. */
static void qc_softmax_i8(const int8_t *x, ptrdiff_t rows, ptrdiff_t depth, int32_t mult,
                          int32_t left, int32_t diff_min, int single, int8_t *out) {
    ptrdiff_t r, c;
    for (r = 0; r < rows; r++) {
        const int8_t *row = x + r * depth;
        int8_t *o = out + r * depth;
        int32_t mx = -128, total = 0, scale, d;
        int headroom, exponent;
        for (c = 0; c < depth; c++)
            mx = row[c] > mx ? row[c] : mx;
        for (c = 0; c < depth; c++) {
            d = (int32_t)row[c] - mx;
            if (d >= diff_min)
                total = qc_wadd(total, qc_rdbpot(qc_exp_on_negative(
                    qc_softmax_rescale(d, mult, left, single), 5), 12));
        }
        headroom = qc_clz32((uint32_t)total);
        exponent = 12 - headroom + 31 - 8;
        scale = qc_one_over_one_plus_x((int32_t)(((uint32_t)total << headroom) - 0x80000000u));
        for (c = 0; c < depth; c++) {
            d = (int32_t)row[c] - mx;
            if (d >= diff_min) {
                int32_t e = qc_exp_on_negative(qc_softmax_rescale(d, mult, left, single), 5);
                int32_t v = qc_rdbpot(qc_srdhm(scale, e), exponent) - 128;
                o[c] = (int8_t)(v < -128 ? -128 : (v > 127 ? 127 : v));
            } else {
                o[c] = -128;
            }
        }
    }
}

#endif
