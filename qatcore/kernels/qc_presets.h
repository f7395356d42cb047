/* Fake quantize in other frameworks' arithmetic (FakeQuantConfig numerics presets).

   QC_TORCH: torch.fake_quantize_per_tensor_affine / _per_channel_affine (ATen CPU kernels
   fake_quantize_tensor_cachemask_kernel and fake_quant_per_channel_cachemask_cpu):
       inv = 1.0f / scale                       (float32, computed by the caller)
       q   = zp + nearbyint(x * inv)            (float32; ties to even)
       mask = qmin <= q <= qmax                 (before the clamp; NaN gives 0)
       y   = (clamp(q, qmin, qmax) - zp) * scale
   NaN clamps to qmin (std::fmax(NaN, qmin) is qmin).  The per-channel kernel casts q to
   int64 before clamping: on x86 a value at or beyond 2^63 (and NaN) becomes INT64_MIN,
   so it clamps to qmin and its mask is 0 (QC_TORCH_CHANNEL reproduces that; +1e30 gives
   qmin there, qmax per tensor).
   QC_ONNX: ONNX QuantizeLinear -> DequantizeLinear as onnxruntime computes it:
       q = saturate(round_half_even(x / scale) + zp),  y = (q - zp) * scale
   (true division; NaN saturates to qmin as in MLAS).

   The zero point is an integer held in a float (exact: |zp| <= 2^24), so q - zp is an
   exact integer and y = float(q - zp) * scale is what both frameworks compute.

   Rounding is the magic-number form: for |v| < 2^23, (|v| + 2^23) - 2^23 rounds |v| to
   an integer, ties to even, in the default rounding mode; from 2^23 up every float is
   an integer; copysign restores the sign (nearbyint(-0.3) is -0.0).  Plain float ops,
   so gcc vectorizes it on every target (SSE2 has no vector round instruction). */
#ifndef QC_PRESETS_H
#define QC_PRESETS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

enum { QC_TORCH = 0, QC_ONNX = 1, QC_TORCH_CHANNEL = 2 };

#define QC_TWO23 8388608.0f
#define QC_TWO63 9223372036854775808.0f

static inline float qc_round_half_even(float v) {
    float a = fabsf(v);
    float r = (a + QC_TWO23) - QC_TWO23;
    r = a < QC_TWO23 ? r : a;
    return copysignf(r, v);
}

/* q = zp + round_half_even(x * inv) (torch) or zp + round_half_even(x / scale) (onnx),
   with the per-channel int64 quirk mapped to -inf (below the range, mask 0). */
static inline __attribute__((always_inline)) float
qc_preset_code(float x, float scale, float inv, float zp, int mode) {
    float v = mode == QC_ONNX ? x / scale : x * inv;
    float q = zp + qc_round_half_even(v);
    if (mode == QC_TORCH_CHANNEL)
        q = q < QC_TWO63 ? q : -INFINITY;
    return q;
}

static inline __attribute__((always_inline)) float
qc_preset_clamp(float q, float qmin, float qmax) {
    q = q > qmin ? q : qmin;        /* NaN -> qmin (maxps semantics) */
    return q < qmax ? q : qmax;
}

static inline __attribute__((always_inline)) void
qc_fq_preset_body(const float *x, float *out, unsigned char *restrict mask,
                  ptrdiff_t n, float scale, float inv, float zp, float qmin, float qmax,
                  int mode, int with_mask) {
    ptrdiff_t i;
    for (i = 0; i < n; i++) {
        float q = qc_preset_code(x[i], scale, inv, zp, mode);
        if (with_mask)
            mask[i] = (q >= qmin) & (q <= qmax);
        out[i] = (qc_preset_clamp(q, qmin, qmax) - zp) * scale;
    }
}

/* One scale/zero point for all n elements.  out may be x itself. */
static void qc_fq_preset(const float *x, float *out, unsigned char *mask, ptrdiff_t n,
                         float scale, float inv, float zp, float qmin, float qmax, int mode) {
    if (mode == QC_ONNX) {
        if (mask) qc_fq_preset_body(x, out, mask, n, scale, inv, zp, qmin, qmax, QC_ONNX, 1);
        else      qc_fq_preset_body(x, out, mask, n, scale, inv, zp, qmin, qmax, QC_ONNX, 0);
    } else if (mode == QC_TORCH_CHANNEL) {
        if (mask) qc_fq_preset_body(x, out, mask, n, scale, inv, zp, qmin, qmax, QC_TORCH_CHANNEL, 1);
        else      qc_fq_preset_body(x, out, mask, n, scale, inv, zp, qmin, qmax, QC_TORCH_CHANNEL, 0);
    } else {
        if (mask) qc_fq_preset_body(x, out, mask, n, scale, inv, zp, qmin, qmax, QC_TORCH, 1);
        else      qc_fq_preset_body(x, out, mask, n, scale, inv, zp, qmin, qmax, QC_TORCH, 0);
    }
}

/* Channel c of C varies fastest (the quantization axis is the last one): one row of C
   elements at a time, with per-channel scale/inv/zp arrays (vector loads). */
static inline __attribute__((always_inline)) void
qc_fq_preset_rows_body(const float *x, float *out, unsigned char *restrict mask,
                       ptrdiff_t rows, ptrdiff_t C, const float *restrict scale,
                       const float *restrict inv, const float *restrict zp, float qmin,
                       float qmax, int mode, int with_mask) {
    ptrdiff_t r, c;
    for (r = 0; r < rows; r++) {
        const float *xr = x + r * C;
        float *yr = out + r * C;
        unsigned char *mr = with_mask ? mask + r * C : NULL;
        for (c = 0; c < C; c++) {
            float q = qc_preset_code(xr[c], scale[c], inv[c], zp[c], mode);
            if (with_mask)
                mr[c] = (q >= qmin) & (q <= qmax);
            yr[c] = (qc_preset_clamp(q, qmin, qmax) - zp[c]) * scale[c];
        }
    }
}

/* x viewed as (outer, C, inner), channel c with scale[c], inv[c], zp[c]. */
static void qc_fq_preset_channels(const float *x, float *out, unsigned char *mask,
                                  ptrdiff_t outer, ptrdiff_t C, ptrdiff_t inner,
                                  const float *scale, const float *inv, const float *zp,
                                  float qmin, float qmax, int mode) {
    ptrdiff_t o, c;
    if (inner == 1) {
        if (mode == QC_ONNX) {
            if (mask) qc_fq_preset_rows_body(x, out, mask, outer, C, scale, inv, zp, qmin, qmax, QC_ONNX, 1);
            else      qc_fq_preset_rows_body(x, out, mask, outer, C, scale, inv, zp, qmin, qmax, QC_ONNX, 0);
        } else {
            if (mask) qc_fq_preset_rows_body(x, out, mask, outer, C, scale, inv, zp, qmin, qmax, QC_TORCH_CHANNEL, 1);
            else      qc_fq_preset_rows_body(x, out, mask, outer, C, scale, inv, zp, qmin, qmax, QC_TORCH_CHANNEL, 0);
        }
        return;
    }
    for (o = 0; o < outer; o++)
        for (c = 0; c < C; c++) {
            ptrdiff_t b = (o * C + c) * inner;
            qc_fq_preset(x + b, out + b, mask ? mask + b : NULL, inner, scale[c], inv[c],
                         zp[c], qmin, qmax, mode);
        }
}

/* Clipped-STE backward as torch writes it: out = g * (float)mask (so a negative
   gradient outside the range becomes -0.0 and NaN/Inf times 0 is NaN, as in torch). */
static void qc_grad_times_mask(const float *g, const unsigned char *restrict mask,
                               float *out, ptrdiff_t n) {
    ptrdiff_t i;
    for (i = 0; i < n; i++)
        out[i] = g[i] * (float)mask[i];
}

/* LSQ/LSQ+ backward in a preset's arithmetic (see _k_lsq.pxi for the formulas):
   gin = g inside (or everywhere when identity), sums[0] = sum g*(r - v) inside,
   sums[1] = sum g below, sums[2] = sum g above, with v = x*inv (torch) or x/scale (onnx),
   r = round_half_even(v), q = r + zp.  A NaN/huge q counts as below (it clamps to qmin).
   Per block: a float32 pass that vectorizes, then float64 lane sums.  Returns the
   first index of a non-finite g, or -1. */
#define QC_LSQ_BLOCK 256
#define QC_LSQ_LANES 8
static ptrdiff_t qc_lsq_backward_preset(const float *x, const float *g, float *gin,
                                        ptrdiff_t n, float scale, float inv, float zp,
                                        float qmin, float qmax, int identity, int mode,
                                        double *sums) {
    float d_buf[QC_LSQ_BLOCK], lo_buf[QC_LSQ_BLOCK], hi_buf[QC_LSQ_BLOCK];
    float g_buf[QC_LSQ_BLOCK];
    double s_in[QC_LSQ_LANES] = {0}, s_lo[QC_LSQ_LANES] = {0}, s_hi[QC_LSQ_LANES] = {0};
    float bad[QC_LSQ_LANES] = {0}, acc = 0;
    ptrdiff_t start, b, k, j, i;
    for (start = 0; start < n; start += QC_LSQ_BLOCK) {
        ptrdiff_t m = n - start < QC_LSQ_BLOCK ? n - start : QC_LSQ_BLOCK;
        const float *xs = x + start, *gs = g + start;
        float *gi = gin + start;
        for (b = 0; b < m; b++) {
            float v = mode == QC_ONNX ? xs[b] / scale : xs[b] * inv;
            float r = qc_round_half_even(v);
            float q = zp + r;
            if (mode == QC_TORCH_CHANNEL)
                q = q < QC_TWO63 ? q : -INFINITY;
            int lo = !(q >= qmin), hi = q > qmax;
            int outside = lo | hi;
            float gv = gs[b];
            gi[b] = (identity | !outside) ? gv : 0.0f;
            g_buf[b] = gv;
            d_buf[b] = outside ? 0.0f : r - v;
            lo_buf[b] = lo ? gv : 0.0f;
            hi_buf[b] = hi ? gv : 0.0f;
        }
        for (b = m; b % QC_LSQ_LANES; b++)
            g_buf[b] = d_buf[b] = lo_buf[b] = hi_buf[b] = 0.0f;
        for (k = 0; k < b; k += QC_LSQ_LANES)
            for (j = 0; j < QC_LSQ_LANES; j++) {
                s_in[j] += (double)g_buf[k + j] * (double)d_buf[k + j];
                s_lo[j] += (double)lo_buf[k + j];
                s_hi[j] += (double)hi_buf[k + j];
                bad[j] += g_buf[k + j] - g_buf[k + j];
            }
    }
    sums[0] = sums[1] = sums[2] = 0;
    for (j = 0; j < QC_LSQ_LANES; j++) {
        sums[0] += s_in[j];
        sums[1] += s_lo[j];
        sums[2] += s_hi[j];
        acc += bad[j];
    }
    if (acc == 0)
        return -1;
    for (i = 0; i < n; i++)
        if (!(g[i] - g[i] == 0))
            return i;
    return -1;
}

#endif
