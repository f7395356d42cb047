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
            for (ky = 0; ky < g->kh; ky++) {
                ptrdiff_t iy = oy * g->sh - g->pt + (ptrdiff_t)ky * g->dh;
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
                        for (oc = 0; oc < cm; oc++)
                            acc[oc] += (int32_t)wt[oc] * ((int32_t)xi[oc] + input_offset);
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
                    const int8_t *xi = img + (iy * g->w + ix) * c;
                    if (is_max) {
                        for (ch = 0; ch < c; ch++)
                            acc[ch] = acc[ch] > xi[ch] ? acc[ch] : xi[ch];
                    } else {
                        for (ch = 0; ch < c; ch++)
                            acc[ch] += xi[ch];
                    }
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

#endif
