"""C export of the integer graph (:class:`qatcore.QuantizedModel`, docs/integer-graph.md).

:func:`write_c` writes ``name.h`` and ``name.c``: dependency-free C99 (``<stdint.h>`` and
``<stddef.h>`` only), integer arithmetic only (no float, no malloc, no library call), the
parameters as ``static const`` 16-byte aligned arrays, and one function per op kind the
model uses, each computing what TensorFlow Lite Micro's int8 reference kernel computes
(``tensorflow/lite/kernels/internal/reference/integer_ops/*.h``, ``micro/kernels/*``):

* requantization is gemmlowp's *double* rounding, TFLM's default
  ``MultiplyByQuantizedMultiplier`` (``SaturatingRoundingDoublingHighMul`` with the Q31
  multiplier, then ``RoundingDivideByPOT``) — not TFLITE_SINGLE_ROUNDING, nor CMSIS-NN
  built with single rounding;
* SOFTMAX, LOGISTIC and HARD_SWISH are gemmlowp fixed point (``exp_on_negative_values``,
  ``one_over_one_plus_x_for_x_in_0_1``, TFLite's ``GetReciprocal``, the int16
  ``SaturatingDoublingHighMul`` of ``reference_ops::HardSwish``), written from the
  reference kernels;
* every multiplier, shift and clamp is the op's own attribute (the engine computes them as
  TFLite's ``Prepare`` does); one the op does not carry is computed here with the same
  helpers (:mod:`qatcore.linear`) and rules.

Memory: graph inputs are read from the caller's ``in`` and graph outputs written to its
``out``; every other tensor lives in one caller-provided scratch arena of
``NAME_SCRATCH_BYTES`` bytes, planned here by tensor liveness (each tensor lives from the
op that writes it to the last op that reads it; greedy first fit, largest tensors first, as
TFLM's ``GreedyMemoryPlanner``).  A RESHAPE whose output is not a graph output is an alias
(no copy, no memory), and an element-wise op (ADD, MUL, RELU, LOGISTIC, HARD_SWISH) writes
over an input of its size that no later op reads (TFLM does neither).  The arena holds int8
only: no alignment needed.

Entry points (one sample, NHWC)::

    int name_invoke(const int8_t *in, int8_t *out, void *scratch);
    int name_invoke_io(const int8_t *const in[], int8_t *const out[], void *scratch);

``name_invoke`` takes the graph inputs one after the other in ``in`` (in ``model.inputs``
order; ``NAME_INPUT_<k>_OFFSET``) and writes the outputs one after the other in ``out``;
for a one-input, one-output graph that is just the sample.  ``name_invoke_io`` takes one
pointer per input and per output.  Both return 0, or -1 on a NULL pointer.

The model is read duck-typed (``tensors``, ``ops``, ``inputs``, ``outputs``; each op by its
class name and documented attributes): this module never imports :mod:`qatcore.model`.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .._files import write_files_atomic
from ..linear import activation_range, quantize_multiplier, requant_real_multiplier
from ._common import PathLike, check_directory, check_name
from .c import C_FLOOR_SHIFT, C_RDBPOT, C_REQUANTIZE, C_SRDHM, _ALIGN, _sub, _version

__all__ = ["c_sources", "write_c", "plan_arena"]

I32_MIN = -(1 << 31)
I32_MAX = (1 << 31) - 1

# ----------------------------------------------------------------------------- C text
# @P@ is the lower-case prefix, @M@ the upper-case one.  Each block names the blocks it
# calls, so that only what the model uses is emitted (unused static functions would warn).

_C: Dict[str, Tuple[Tuple[str, ...], str]] = {}


def _block(name: str, deps: Tuple[str, ...], text: str) -> None:
    _C[name] = (deps, text)


# gemmlowp's SaturatingRoundingDoublingHighMul, RoundingDivideByPOT and TFLite's
# MultiplyByQuantizedMultiplier: the chain export's own text (qatcore.export.c).
_block("srdhm", (), C_SRDHM)
_block("floor_shift", (), C_FLOOR_SHIFT)
_block("rdbpot", ("floor_shift",), C_RDBPOT)
_block("requantize", ("srdhm", "rdbpot"), C_REQUANTIZE)

_block("clamp", (), r"""
static int8_t @P@_clamp(int32_t v, int32_t lo, int32_t hi)
{
    return (int8_t)(v < lo ? lo : (v > hi ? hi : v));
}
""")

_block("wadd", (), r"""
/* int32 addition modulo 2^32, as gemmlowp's FixedPoint + (the conversion back to int32 is
 * two's complement on every compiler this targets). */
static int32_t @P@_wadd(int32_t a, int32_t b)
{
    return (int32_t)((uint32_t)a + (uint32_t)b);
}
""")

_block("satshl", (), r"""
/* gemmlowp SaturatingRoundingMultiplyByPOT<e> for e > 0: saturating x * 2^e. */
static int32_t @P@_satshl(int32_t x, int e)
{
    int32_t threshold = (int32_t)(((int64_t)1 << (31 - e)) - 1);
    if (x > threshold)
        return INT32_MAX;
    if (x < -threshold)
        return INT32_MIN;
    return (int32_t)((int64_t)x * ((int64_t)1 << e));
}
""")

_block("exp_neg", ("srdhm", "rdbpot", "wadd", "satshl"), r"""
/* gemmlowp exp_on_negative_values for a <= 0 in Q(integer_bits).(31 - integer_bits)
 * (integer_bits <= 5 here); result Q0.31. */
static int32_t @P@_exp_on_negative_values(int32_t a, int integer_bits)
{
    static const int32_t barrel[7] = {1672461947, 1302514674, 790015084, 290630308,
                                      39332535, 720401, 242};  /* exp(-2^k), k = -2..4 */
    const int frac = 31 - integer_bits;
    const int32_t quarter = (int32_t)1 << (frac - 2);
    const int32_t a_mod = (a & (quarter - 1)) - quarter;   /* in [-1/4, 0) */
    const int32_t remainder = @P@_wadd(a_mod, -a);
    int32_t x, x2, x3, x4, poly, result;
    int k;
    /* exp on [-1/4, 0): Taylor around -1/8 (exp_on_interval_between_negative_one_quarter_and_0_excl) */
    x = @P@_wadd(integer_bits > 0 ? @P@_satshl(a_mod, integer_bits) : a_mod, (int32_t)1 << 28);
    x2 = @P@_srdhm(x, x);
    x3 = @P@_srdhm(x2, x);
    x4 = @P@_srdhm(x2, x2);
    poly = @P@_rdbpot(@P@_wadd(@P@_srdhm(@P@_wadd(@P@_rdbpot(x4, 2), x3), 715827883), x2), 1);
    result = @P@_wadd(1895147668, @P@_srdhm(1895147668, @P@_wadd(x, poly)));
    for (k = -2; k <= 4; k++)
        if (integer_bits > k && ((remainder >> (frac + k)) & 1))
            result = @P@_srdhm(result, barrel[k + 2]);
    return a == 0 ? INT32_MAX : result;
}
""")

_block("one_over", ("srdhm", "wadd", "satshl"), r"""
/* gemmlowp one_over_one_plus_x_for_x_in_0_1: 1 / (1 + a), Q0.31 in and out (Newton). */
static int32_t @P@_one_over_one_plus_x(int32_t a)
{
    int64_t sum = (int64_t)a + INT32_MAX;
    int32_t half_den = (int32_t)((sum + (sum >= 0 ? 1 : -1)) / 2);     /* RoundingHalfSum */
    int32_t x = @P@_wadd(1515870810, @P@_srdhm(half_den, -1010580540)); /* 48/17 - 32/17 d */
    int k;
    for (k = 0; k < 3; k++) {
        int32_t one_minus = @P@_wadd((int32_t)1 << 29, -@P@_srdhm(half_den, x));
        x = @P@_wadd(x, @P@_satshl(@P@_srdhm(x, one_minus), 2));
    }
    return @P@_satshl(x, 1);
}
""")

_block("fully_connected", ("requantize", "clamp"), r"""
typedef struct {
    const int8_t *weights;        /* (out, in), row-major */
    const int32_t *bias;          /* (out,) or NULL */
    const int32_t *multiplier, *shift;   /* (out,) */
    int32_t in_n, out_n, input_offset, output_offset, act_min, act_max;
} @P@_fc_t;

/* TFLite FullyConnected (per channel): acc = sum w * (x + input_offset) + bias. */
static void @P@_fully_connected(const @P@_fc_t *p, const int8_t *x, int8_t *y)
{
    int32_t o, i;
    for (o = 0; o < p->out_n; o++) {
        const int8_t *w = p->weights + (size_t)o * (size_t)p->in_n;
        int32_t acc = p->bias != NULL ? p->bias[o] : 0;
        for (i = 0; i < p->in_n; i++)
            acc += (int32_t)w[i] * ((int32_t)x[i] + p->input_offset);
        acc = @P@_requantize(acc, p->multiplier[o], p->shift[o]) + p->output_offset;
        y[o] = @P@_clamp(acc, p->act_min, p->act_max);
    }
}
""")

_block("window_t", (), r"""
typedef struct {
    const int8_t *weights;        /* conv OHWI (O, KH, KW, C/groups); depthwise (KH, KW, C*M) */
    const int32_t *bias;          /* (O,) or NULL */
    const int32_t *multiplier, *shift;   /* (O,) */
    int32_t in_h, in_w, in_c, out_h, out_w, out_c;
    int32_t k_h, k_w, stride_h, stride_w, dil_h, dil_w, pad_top, pad_left;
    int32_t group_c;              /* conv: input channels per group; depthwise: multiplier */
    int32_t input_offset, output_offset, act_min, act_max;
} @P@_window_t;
""")

_block("conv", ("window_t", "requantize", "clamp"), r"""
/* TFLite ConvPerChannel: taps outside the image contribute nothing; groups. */
static void @P@_conv(const @P@_window_t *p, const int8_t *x, int8_t *y)
{
    const int32_t per_group = p->out_c / (p->in_c / p->group_c);
    int32_t oy, ox, oc, ky, kx, ic;
    for (oy = 0; oy < p->out_h; oy++)
        for (ox = 0; ox < p->out_w; ox++)
            for (oc = 0; oc < p->out_c; oc++) {
                const int32_t y0 = oy * p->stride_h - p->pad_top;
                const int32_t x0 = ox * p->stride_w - p->pad_left;
                const int32_t c0 = (oc / per_group) * p->group_c;
                int32_t acc = 0;
                for (ky = 0; ky < p->k_h; ky++) {
                    const int32_t iy = y0 + ky * p->dil_h;
                    if (iy < 0 || iy >= p->in_h)
                        continue;
                    for (kx = 0; kx < p->k_w; kx++) {
                        const int32_t ix = x0 + kx * p->dil_w;
                        const int8_t *xi, *w;
                        if (ix < 0 || ix >= p->in_w)
                            continue;
                        xi = x + ((size_t)iy * (size_t)p->in_w + (size_t)ix) * (size_t)p->in_c
                             + (size_t)c0;
                        w = p->weights + (((size_t)oc * (size_t)p->k_h + (size_t)ky)
                                          * (size_t)p->k_w + (size_t)kx) * (size_t)p->group_c;
                        for (ic = 0; ic < p->group_c; ic++)
                            acc += (int32_t)w[ic] * ((int32_t)xi[ic] + p->input_offset);
                    }
                }
                if (p->bias != NULL)
                    acc += p->bias[oc];
                acc = @P@_requantize(acc, p->multiplier[oc], p->shift[oc]) + p->output_offset;
                *y++ = @P@_clamp(acc, p->act_min, p->act_max);
            }
}
""")

_block("depthwise", ("window_t", "requantize", "clamp"), r"""
/* TFLite DepthwiseConvPerChannel: output channel oc = m + ic * multiplier. */
static void @P@_depthwise(const @P@_window_t *p, const int8_t *x, int8_t *y)
{
    int32_t oy, ox, oc, ky, kx;
    for (oy = 0; oy < p->out_h; oy++)
        for (ox = 0; ox < p->out_w; ox++)
            for (oc = 0; oc < p->out_c; oc++) {
                const int32_t y0 = oy * p->stride_h - p->pad_top;
                const int32_t x0 = ox * p->stride_w - p->pad_left;
                const int32_t ic = oc / p->group_c;
                int32_t acc = 0;
                for (ky = 0; ky < p->k_h; ky++) {
                    const int32_t iy = y0 + ky * p->dil_h;
                    if (iy < 0 || iy >= p->in_h)
                        continue;
                    for (kx = 0; kx < p->k_w; kx++) {
                        const int32_t ix = x0 + kx * p->dil_w;
                        int32_t xv;
                        if (ix < 0 || ix >= p->in_w)
                            continue;
                        xv = x[((size_t)iy * (size_t)p->in_w + (size_t)ix) * (size_t)p->in_c
                               + (size_t)ic];
                        acc += (int32_t)p->weights[((size_t)ky * (size_t)p->k_w + (size_t)kx)
                                                   * (size_t)p->out_c + (size_t)oc]
                               * (xv + p->input_offset);
                    }
                }
                if (p->bias != NULL)
                    acc += p->bias[oc];
                acc = @P@_requantize(acc, p->multiplier[oc], p->shift[oc]) + p->output_offset;
                *y++ = @P@_clamp(acc, p->act_min, p->act_max);
            }
}
""")

_block("pool_t", (), r"""
typedef struct {
    int32_t in_h, in_w, c, out_h, out_w, k_h, k_w, stride_h, stride_w, pad_top, pad_left;
    int32_t act_min, act_max;
} @P@_pool_t;
""")

_block("avg_pool", ("pool_t", "clamp"), r"""
/* TFLite AveragePool (int8): sum of the in-image taps, divided by their count, rounded
 * half away from raw 0. */
static void @P@_avg_pool(const @P@_pool_t *p, const int8_t *x, int8_t *y)
{
    int32_t oy, ox, c, iy, ix;
    for (oy = 0; oy < p->out_h; oy++)
        for (ox = 0; ox < p->out_w; ox++) {
            const int32_t y0 = oy * p->stride_h - p->pad_top, x0 = ox * p->stride_w - p->pad_left;
            const int32_t ys = y0 < 0 ? 0 : y0, xs = x0 < 0 ? 0 : x0;
            const int32_t ye = y0 + p->k_h > p->in_h ? p->in_h : y0 + p->k_h;
            const int32_t xe = x0 + p->k_w > p->in_w ? p->in_w : x0 + p->k_w;
            const int32_t n = (ye - ys) * (xe - xs);
            for (c = 0; c < p->c; c++) {
                int32_t acc = 0;
                for (iy = ys; iy < ye; iy++)
                    for (ix = xs; ix < xe; ix++)
                        acc += x[((size_t)iy * (size_t)p->in_w + (size_t)ix) * (size_t)p->c
                                 + (size_t)c];
                acc = acc > 0 ? (acc + n / 2) / n : (acc - n / 2) / n;
                *y++ = @P@_clamp(acc, p->act_min, p->act_max);
            }
        }
}
""")

_block("max_pool", ("pool_t", "clamp"), r"""
/* TFLite MaxPool (int8): maximum of the in-image taps. */
static void @P@_max_pool(const @P@_pool_t *p, const int8_t *x, int8_t *y)
{
    int32_t oy, ox, c, iy, ix;
    for (oy = 0; oy < p->out_h; oy++)
        for (ox = 0; ox < p->out_w; ox++) {
            const int32_t y0 = oy * p->stride_h - p->pad_top, x0 = ox * p->stride_w - p->pad_left;
            const int32_t ys = y0 < 0 ? 0 : y0, xs = x0 < 0 ? 0 : x0;
            const int32_t ye = y0 + p->k_h > p->in_h ? p->in_h : y0 + p->k_h;
            const int32_t xe = x0 + p->k_w > p->in_w ? p->in_w : x0 + p->k_w;
            for (c = 0; c < p->c; c++) {
                int32_t m = -128;
                for (iy = ys; iy < ye; iy++)
                    for (ix = xs; ix < xe; ix++) {
                        int32_t v = x[((size_t)iy * (size_t)p->in_w + (size_t)ix) * (size_t)p->c
                                      + (size_t)c];
                        m = v > m ? v : m;
                    }
                *y++ = @P@_clamp(m, p->act_min, p->act_max);
            }
        }
}
""")

_block("add", ("requantize", "clamp"), r"""
typedef struct {
    int32_t n, input1_offset, input2_offset, left_shift;
    int32_t input1_multiplier, input1_shift, input2_multiplier, input2_shift;
    int32_t output_multiplier, output_shift, output_offset, act_min, act_max;
} @P@_add_t;

/* TFLite Add (int8): each input (x + offset) << 20 scaled to a common scale, summed,
 * scaled to the output. */
static void @P@_add(const @P@_add_t *p, const int8_t *a, const int8_t *b, int8_t *y)
{
    int32_t i;
    for (i = 0; i < p->n; i++) {
        int32_t va = ((int32_t)a[i] + p->input1_offset) * ((int32_t)1 << p->left_shift);
        int32_t vb = ((int32_t)b[i] + p->input2_offset) * ((int32_t)1 << p->left_shift);
        int32_t sum = @P@_requantize(va, p->input1_multiplier, p->input1_shift)
                      + @P@_requantize(vb, p->input2_multiplier, p->input2_shift);
        int32_t v = @P@_requantize(sum, p->output_multiplier, p->output_shift) + p->output_offset;
        y[i] = @P@_clamp(v, p->act_min, p->act_max);
    }
}
""")

_block("mul", ("requantize", "clamp"), r"""
typedef struct {
    int32_t n, input1_offset, input2_offset, output_multiplier, output_shift;
    int32_t output_offset, act_min, act_max;
} @P@_mul_t;

/* TFLite Mul (int8): (a + offset1) * (b + offset2), requantized. */
static void @P@_mul(const @P@_mul_t *p, const int8_t *a, const int8_t *b, int8_t *y)
{
    int32_t i;
    for (i = 0; i < p->n; i++) {
        int32_t v = ((int32_t)a[i] + p->input1_offset) * ((int32_t)b[i] + p->input2_offset);
        v = @P@_requantize(v, p->output_multiplier, p->output_shift) + p->output_offset;
        y[i] = @P@_clamp(v, p->act_min, p->act_max);
    }
}
""")

_block("mean", ("requantize", "clamp", "wadd"), r"""
typedef struct {
    int32_t dims[4], reduced[4];  /* the sample shape in 4 axes; 1 where an axis is reduced */
    int32_t zp_times_n;           /* input zero point * reduced count, modulo 2^32 */
    int32_t multiplier, shift, output_offset;
} @P@_mean_t;

/* TFLite QuantizedMeanOrSum (int8 mean): sum - zp * n, 1/n folded in the multiplier. */
static void @P@_mean(const @P@_mean_t *p, const int8_t *x, int8_t *y)
{
    int32_t o[4], r[4], e[4], f[4];
    int k;
    for (k = 0; k < 4; k++) {
        e[k] = p->reduced[k] ? 1 : p->dims[k];   /* kept-axis extent */
        f[k] = p->reduced[k] ? p->dims[k] : 1;   /* reduced-axis extent */
    }
    for (o[0] = 0; o[0] < e[0]; o[0]++)
    for (o[1] = 0; o[1] < e[1]; o[1]++)
    for (o[2] = 0; o[2] < e[2]; o[2]++)
    for (o[3] = 0; o[3] < e[3]; o[3]++) {
        int32_t sum = 0, v;
        for (r[0] = 0; r[0] < f[0]; r[0]++)
        for (r[1] = 0; r[1] < f[1]; r[1]++)
        for (r[2] = 0; r[2] < f[2]; r[2]++)
        for (r[3] = 0; r[3] < f[3]; r[3]++) {
            size_t i = (size_t)(o[0] + r[0]);
            for (k = 1; k < 4; k++)
                i = i * (size_t)p->dims[k] + (size_t)(o[k] + r[k]);
            sum += x[i];
        }
        v = @P@_requantize(@P@_wadd(sum, -p->zp_times_n), p->multiplier, p->shift)
            + p->output_offset;
        *y++ = @P@_clamp(v, -128, 127);
    }
}
""")

_block("softmax", ("srdhm", "rdbpot", "exp_neg", "one_over", "wadd", "clamp"), r"""
typedef struct {
    int32_t outer, depth, input_multiplier, input_left_shift, diff_min;
} @P@_softmax_t;

/* TFLite Softmax (int8 in, int8 out at 1/256, -128): differences to the row maximum in
 * Q5.26, exp_on_negative_values, sum in Q12.19, GetReciprocal, rescaled to 8 bits. */
static void @P@_softmax(const @P@_softmax_t *p, const int8_t *x, int8_t *y)
{
    int32_t i, c;
    for (i = 0; i < p->outer; i++, x += p->depth, y += p->depth) {
        int32_t max = -128, sum = 0, headroom, shifted_scale, bits_over_unit;
        uint32_t u;
        for (c = 0; c < p->depth; c++)
            max = x[c] > max ? x[c] : max;
        for (c = 0; c < p->depth; c++) {
            int32_t diff = (int32_t)x[c] - max;
            if (diff >= p->diff_min) {
                int32_t scaled = @P@_srdhm(
                    (int32_t)((int64_t)diff * ((int64_t)1 << p->input_left_shift)),
                    p->input_multiplier);
                sum = @P@_wadd(sum, @P@_rdbpot(@P@_exp_on_negative_values(scaled, 5), 12));
            }
        }
        /* GetReciprocal(sum, 12): count leading zeros without a builtin */
        u = (uint32_t)sum;
        for (headroom = 0; headroom < 32 && !(u & 0x80000000u); headroom++)
            u <<= 1;
        bits_over_unit = 12 - headroom;
        shifted_scale = @P@_one_over_one_plus_x((int32_t)(u - 0x80000000u));
        for (c = 0; c < p->depth; c++) {
            int32_t diff = (int32_t)x[c] - max;
            if (diff >= p->diff_min) {
                int32_t scaled = @P@_srdhm(
                    (int32_t)((int64_t)diff * ((int64_t)1 << p->input_left_shift)),
                    p->input_multiplier);
                int32_t e = @P@_exp_on_negative_values(scaled, 5);
                int32_t v = @P@_rdbpot(@P@_srdhm(shifted_scale, e), (int)(bits_over_unit + 23));
                y[c] = @P@_clamp(v - 128, -128, 127);
            } else {
                y[c] = -128;
            }
        }
    }
}
""")

_block("logistic", ("requantize", "rdbpot", "exp_neg", "one_over", "clamp"), r"""
typedef struct {
    int32_t n, input_zero_point, input_range_radius, input_multiplier, input_left_shift;
} @P@_logistic_t;

/* TFLite Logistic (int8 in, int8 out at 1/256, -128): Q4.27 input, gemmlowp logistic. */
static void @P@_logistic(const @P@_logistic_t *p, const int8_t *x, int8_t *y)
{
    int32_t i;
    for (i = 0; i < p->n; i++) {
        int32_t v = (int32_t)x[i] - p->input_zero_point, q4, r;
        if (v <= -p->input_range_radius) {
            y[i] = -128;
            continue;
        }
        if (v >= p->input_range_radius) {
            y[i] = 127;
            continue;
        }
        q4 = @P@_requantize(v, p->input_multiplier, p->input_left_shift);
        if (q4 == 0) {
            r = (int32_t)1 << 30;                      /* RoundingDivideByPOT(One, 1) */
        } else {
            int32_t pos = @P@_one_over_one_plus_x(
                @P@_exp_on_negative_values(q4 > 0 ? -q4 : q4, 4));
            r = q4 > 0 ? pos : INT32_MAX - pos;
        }
        y[i] = @P@_clamp(@P@_rdbpot(r, 23) - 128, -128, 127);
    }
}
""")

_block("hard_swish", ("clamp",), r"""
typedef struct {
    int32_t n, input_zero_point, output_zero_point;
    int32_t output_multiplier16, output_exponent, reluish_multiplier16, reluish_exponent;
} @P@_hard_swish_t;

/* gemmlowp SaturatingRoundingDoublingHighMul on int16. */
static int32_t @P@_srdhm16(int32_t a, int32_t b)
{
    int32_t ab, nudge;
    if (a == b && a == -32768)
        return 32767;
    ab = a * b;
    nudge = ab >= 0 ? (1 << 14) : (1 - (1 << 14));
    return (ab + nudge) / (1 << 15);
}

/* gemmlowp RoundingDivideByPOT on int16 (the mask is an int16: e >= 16 gives -1). */
static int32_t @P@_rdbpot16(int32_t x, int e)
{
    int32_t mask = (int32_t)(((int64_t)1 << e) - 1) & 0xFFFF;
    int32_t remainder, threshold, floor;
    mask = mask > 32767 ? mask - 65536 : mask;
    remainder = x & mask;
    threshold = (mask < 0 ? -1 : (mask >> 1)) + (x < 0 ? 1 : 0);
    floor = x >= 0 ? (e > 30 ? 0 : x >> e) : (e > 30 ? -1 : ~((~x) >> e));
    return floor + (remainder > threshold ? 1 : 0);
}

static int32_t @P@_satshl16(int32_t x, int e)
{
    int32_t v = x * (1 << e);
    return v > 32767 ? 32767 : (v < -32768 ? -32768 : v);
}

/* TFLite reference_ops::HardSwish (int8): int16 fixed point, input at s_in / 128, the
 * "reluish" factor at 3 / 32768. */
static void @P@_hard_swish(const @P@_hard_swish_t *p, const int8_t *x, int8_t *y)
{
    int32_t i;
    for (i = 0; i < p->n; i++) {
        const int32_t hires = ((int32_t)x[i] - p->input_zero_point) * 128;
        const int32_t pre = @P@_srdhm16(hires, p->output_multiplier16);
        int32_t reluish = hires, out;
        if (p->reluish_exponent > 0)
            reluish = @P@_satshl16(reluish, (int)p->reluish_exponent - 1);
        reluish = @P@_srdhm16(reluish, p->reluish_multiplier16);
        if (p->reluish_exponent > 0)
            reluish = @P@_satshl16(reluish, 1);
        if (p->reluish_exponent < 0)
            reluish = @P@_rdbpot16(reluish, (int)-p->reluish_exponent);
        reluish = (reluish + (1 << 15)) / 2;           /* [-1, 1] -> [0, 1], >= 0 */
        /* SaturatingDoublingHighMul: truncating, not rounding (int16 product / 2^15) */
        out = (reluish == -32768 && pre == -32768) ? 32767 : (reluish * pre) / (1 << 15);
        out = @P@_rdbpot16(out, (int)-p->output_exponent) + p->output_zero_point;
        out = out > 32767 ? out - 65536 : out;         /* the int16 sum wraps, as in C++ */
        y[i] = @P@_clamp(out, -128, 127);
    }
}
""")

_block("relu", ("requantize", "clamp"), r"""
typedef struct {
    int32_t n, input_offset, multiplier, shift, output_offset, act_min, act_max;
} @P@_relu_t;

/* TFLite ReluQuantized (RELU; RELU6 too, as LiteRT: requantized to the output's scale,
 * clamped to [act_min, act_max]; with equal scales that is TFLM's RELU6 clamp). */
static void @P@_relu(const @P@_relu_t *p, const int8_t *x, int8_t *y)
{
    int32_t i;
    for (i = 0; i < p->n; i++) {
        int32_t v = @P@_requantize((int32_t)x[i] + p->input_offset, p->multiplier, p->shift)
                    + p->output_offset;
        y[i] = @P@_clamp(v, p->act_min, p->act_max);
    }
}
""")

_block("copy", (), r"""
static void @P@_copy(int32_t n, const int8_t *x, int8_t *y)
{
    int32_t i;
    for (i = 0; i < n; i++)
        y[i] = x[i];
}
""")

_block("concat", (), r"""
/* TFLite Concatenation: per outer index, each input's inner block in turn. */
static void @P@_concat(int32_t n_inputs, int32_t outer, const int32_t *inner,
                       const int8_t *const *x, int8_t *y)
{
    int32_t o, k, i;
    for (o = 0; o < outer; o++)
        for (k = 0; k < n_inputs; k++) {
            const int8_t *src = x[k] + (size_t)o * (size_t)inner[k];
            for (i = 0; i < inner[k]; i++)
                *y++ = src[i];
        }
}
""")

_block("pad", (), r"""
typedef struct {
    int32_t in_dims[4], out_dims[4], before[4];
    int32_t zero_point;
} @P@_pad_t;

/* TFLite Pad (int8): the zero point everywhere, the input copied at the offsets. */
static void @P@_pad(const @P@_pad_t *p, const int8_t *x, int8_t *y)
{
    int32_t i[3], k;
    size_t total = (size_t)p->out_dims[0] * (size_t)p->out_dims[1] * (size_t)p->out_dims[2]
                   * (size_t)p->out_dims[3], t;
    for (t = 0; t < total; t++)
        y[t] = (int8_t)p->zero_point;
    for (i[0] = 0; i[0] < p->in_dims[0]; i[0]++)
    for (i[1] = 0; i[1] < p->in_dims[1]; i[1]++)
    for (i[2] = 0; i[2] < p->in_dims[2]; i[2]++) {
        size_t o = (size_t)(i[0] + p->before[0]);
        o = o * (size_t)p->out_dims[1] + (size_t)(i[1] + p->before[1]);
        o = o * (size_t)p->out_dims[2] + (size_t)(i[2] + p->before[2]);
        o = o * (size_t)p->out_dims[3] + (size_t)p->before[3];
        for (k = 0; k < p->in_dims[3]; k++)
            y[o + (size_t)k] = *x++;
    }
}
""")


def _closure(names: Sequence[str]) -> List[str]:
    """`names` with their dependencies, dependencies first, each once."""
    order: List[str] = []

    def visit(n: str) -> None:
        if n in order:
            return
        for d in _C[n][0]:
            visit(d)
        order.append(n)

    for n in names:
        visit(n)
    return order


# ----------------------------------------------------------------------------- helpers

def _c_int(v: int) -> str:
    v = int(v)
    return "(-2147483647 - 1)" if v == I32_MIN else str(v)


def _macro_int(v: int) -> str:
    return f"({int(v)})" if int(v) < 0 else str(int(v))


def _float_literal(v: float) -> str:
    return f"{float(np.float32(v))!r}f"


def _prod(shape: Sequence[int]) -> int:
    return int(math.prod(int(d) for d in shape))


def _attr(op: Any, name: str, compute: Callable[[], Any]) -> Any:
    """The op's own attribute (the engine's Prepare-time value), else `compute()`."""
    value = getattr(op, name, None)
    return compute() if value is None else value


def _f32(v: float) -> float:
    return float(np.float32(v))


def _quantize_one(real: float) -> Tuple[int, int]:
    m, s = quantize_multiplier([real])
    return int(m[0]), int(s[0])


def _quantize_exact(real: float) -> Tuple[int, int]:
    """TFLite QuantizeMultiplier of one double, without the saturation at shift 30 (the
    softmax and logistic Prepare use the raw frexp form)."""
    q, e = math.frexp(real)
    q_fixed = math.floor(q * 2.0 ** 31 + 0.5)
    if q_fixed == 1 << 31:
        q_fixed //= 2
        e += 1
    return int(q_fixed), int(e)


def _safe(text: str) -> str:
    """Text for a C comment: printable ASCII only, no comment delimiters (tensor names come
    from files and may hold anything)."""
    text = "".join(c if 32 <= ord(c) < 127 else "_" for c in str(text))
    while "*/" in text or "/*" in text:
        text = text.replace("*/", "*_/").replace("/*", "/_*")
    return text


def _collapse(dims: Sequence[int], flags: Sequence[bool]) -> Tuple[List[int], List[bool]]:
    """Merge neighbouring axes of the same kind (and drop size-1 axes)."""
    out_d: List[int] = []
    out_f: List[bool] = []
    for d, f in zip(dims, flags):
        if d == 1:
            continue
        if out_f and out_f[-1] == f:
            out_d[-1] *= int(d)
        else:
            out_d.append(int(d))
            out_f.append(bool(f))
    return out_d, out_f


# ----------------------------------------------------------------------------- planning

def plan_arena(sizes: Dict[str, int], lifetimes: Dict[str, Tuple[int, int]]
               ) -> Tuple[Dict[str, int], int]:
    """Offsets of buffers in one arena: greedy first fit, largest first (ties: earliest
    first use, then name), never overlapping a placed buffer whose lifetime (first and last
    op index, inclusive) meets this one's.  Returns ``(offsets, arena size)``."""
    order = sorted(sizes, key=lambda t: (-sizes[t], lifetimes[t][0], t))
    placed: List[Tuple[int, int, int, int]] = []          # offset, end, first, last
    offsets: Dict[str, int] = {}
    for t in order:
        first, last = lifetimes[t]
        busy = sorted((o, e) for o, e, f, l in placed if f <= last and first <= l)
        offset = 0
        for o, e in busy:
            if offset + sizes[t] <= o:
                break
            offset = max(offset, e)
        offsets[t] = offset
        placed.append((offset, offset + sizes[t], first, last))
    return offsets, max((e for _, e, _, _ in placed), default=0)


# ----------------------------------------------------------------------------- the writer

_OPS = ("FullyConnected", "Conv2D", "DepthwiseConv2D", "Add", "Mul", "AveragePool2D",
        "MaxPool2D", "Mean", "Reshape", "Concatenation", "Pad", "Softmax", "Logistic",
        "HardSwish", "Relu")


#: Ops whose output element i depends on input element i only: they may write in place.
_IN_PLACE = ("Add", "Mul", "Relu", "Logistic", "HardSwish")


class _Writer:
    def __init__(self, model: Any, name: str) -> None:
        for attr in ("tensors", "ops", "inputs", "outputs"):
            if not hasattr(model, attr):
                raise TypeError(f"model must be a qatcore.QuantizedModel; "
                                f"{type(model).__name__} has no attribute {attr!r}")
        self.model = model
        self.p = name
        self.up = name.upper()
        self.tensors = dict(model.tensors)
        self.ops = list(model.ops)
        self.inputs = list(model.inputs)
        self.outputs = list(model.outputs)
        if not self.inputs or not self.outputs:
            raise ValueError("model has no inputs or no outputs")
        if not self.ops:
            raise ValueError("model has no ops")
        self.blocks: List[str] = []
        self.data: List[str] = []
        self.calls: List[str] = []
        for k, op in enumerate(self.ops):
            kind = type(op).__name__
            if kind not in _OPS:
                raise ValueError(f"op {k} ({kind}) has no C kernel; the C export knows "
                                 f"{', '.join(_OPS)}")
            for t in (*op.inputs, op.output):
                if t not in self.tensors:
                    raise ValueError(f"op {k} ({kind}): unknown tensor {t!r}")

    # ------------------------------------------------------------------ memory plan
    def plan(self) -> None:
        produced = {op.output: k for k, op in enumerate(self.ops)}
        for t in self.inputs:
            if t in produced:
                raise ValueError(f"graph input {t!r} is written by op {produced[t]}")
        for k, op in enumerate(self.ops):
            for t in op.inputs:
                if t not in produced and t not in self.inputs:
                    raise ValueError(f"op {k}: tensor {t!r} is neither a graph input nor "
                                     f"written by an earlier op")
                if t in produced and produced[t] >= k:
                    raise ValueError(f"op {k}: tensor {t!r} is used before it is written")
        # Shared memory: a Reshape's output that is not a graph output is its input's
        # memory; an element-wise op writes over an input of its size that no later op
        # reads (each element is read before it is written).  alias: tensor -> the tensor
        # whose memory it uses (follow to the root).
        self.alias: Dict[str, str] = {}
        io = set(self.inputs) | set(self.outputs)

        def root(t: str) -> str:
            while t in self.alias:
                t = self.alias[t]
            return t
        for op in self.ops:
            if type(op).__name__ == "Reshape" and op.output not in self.outputs:
                self.alias[op.output] = op.inputs[0]
        direct_last: Dict[str, int] = {}
        for k, op in enumerate(self.ops):
            for t in op.inputs:
                direct_last[t] = k
        for k, op in enumerate(self.ops):
            if type(op).__name__ not in _IN_PLACE or op.output in io or op.output in self.alias:
                continue
            size = _prod(self.tensors[op.output].shape)
            for t in op.inputs:
                r = root(t)
                if r in io or _prod(self.tensors[r].shape) != size:
                    continue
                if max(direct_last.get(m, -1) for m in direct_last if root(m) == r) == k:
                    self.alias[op.output] = r
                    break
        last_use: Dict[str, int] = {}
        for k, op in enumerate(self.ops):
            for t in op.inputs:
                last_use[root(t)] = k
        self.loc: Dict[str, str] = {}
        for i, t in enumerate(self.inputs):
            self.loc[t] = f"in[{i}]"
        for i, t in enumerate(self.outputs):
            if t not in self.loc:
                self.loc[t] = f"out[{i}]"
        sizes, lifetimes = {}, {}
        for k, op in enumerate(self.ops):
            t = op.output
            if t in self.loc or t in self.alias:
                continue
            sizes[t] = _prod(self.tensors[t].shape)
            lifetimes[t] = (k, last_use.get(t, k))
        self.offsets, self.arena = plan_arena(sizes, lifetimes)
        for t, off in self.offsets.items():
            self.loc[t] = f"arena + {off}"
        for t in self.alias:
            self.loc[t] = self.loc[root(t)]

    def src(self, t: str) -> str:
        return self.loc[t]

    def dst(self, t: str) -> str:
        loc = self.loc[t]
        if loc.startswith("in["):
            raise ValueError(f"tensor {t!r} is a graph input and cannot be written")
        return loc

    # ------------------------------------------------------------------ emitters
    def use(self, *blocks: str) -> None:
        for b in blocks:
            if b not in self.blocks:
                self.blocks.append(b)

    def array(self, ctype: str, cname: str, values: Any, per_line: int) -> str:
        vals = [_c_int(v) for v in np.asarray(values).ravel()]
        lines = [", ".join(vals[i:i + per_line]) for i in range(0, len(vals), per_line)]
        body = ",\n    ".join(lines)
        self.data.append(f"static const {self.up}_ALIGNED {ctype} {cname}[{len(vals)}] = {{\n"
                         f"    {body}\n}};\n")
        return cname

    def struct(self, ctype: str, cname: str, fields: Sequence[Any], comment: str) -> str:
        def fmt(v: Any) -> str:
            if isinstance(v, str):
                return v
            if isinstance(v, (list, tuple)):
                return "{" + ", ".join(fmt(x) for x in v) + "}"
            return _c_int(v)
        body = ", ".join(fmt(v) for v in fields)
        self.data.append(f"/* {_safe(comment)} */\nstatic const {self.p}_{ctype} {cname} = "
                         f"{{{body}}};\n\n")
        return cname

    def spec(self, t: str) -> Any:
        return self.tensors[t]

    def check_shapes(self, k: int, op: Any) -> None:
        """The shapes the C loops index by: a model that is not what its op says would
        read or write out of bounds, so it is refused here (the engine checks the same)."""
        kind = type(op).__name__
        ins = [tuple(int(d) for d in self.spec(t).shape) for t in op.inputs]
        out = tuple(int(d) for d in self.spec(op.output).shape)
        ok = True
        if kind in ("Conv2D", "DepthwiseConv2D", "AveragePool2D", "MaxPool2D"):
            ok = len(ins) == 1 and len(ins[0]) == 3 and len(out) == 3
            if ok:
                h, w, c = ins[0]
                if kind in ("Conv2D", "DepthwiseConv2D"):
                    wq = np.asarray(op.weights_q)
                    kh, kw = int(wq.shape[1]), int(wq.shape[2])
                    dh, dw = (int(v) for v in op.dilation)
                    if kind == "Conv2D":
                        ok = (wq.shape[0] == out[2] and c % wq.shape[3] == 0
                              and out[2] % (c // wq.shape[3]) == 0)
                    else:
                        ok = wq.shape[0] == 1 and wq.shape[3] == out[2] and out[2] % c == 0
                else:
                    kh, kw = (int(v) for v in op.pool)
                    dh = dw = 1
                    ok = out[2] == c and max(op.padding[:2]) < kh and max(op.padding[2:]) < kw
                sh, sw = (int(v) for v in op.stride)
                top, bottom, left, right = (int(v) for v in op.padding)
                ok = ok and min(sh, sw, dh, dw) >= 1 and min(top, bottom, left, right) >= 0
                ok = ok and out[:2] == ((h + top + bottom - (kh - 1) * dh - 1) // sh + 1,
                                        (w + left + right - (kw - 1) * dw - 1) // sw + 1)
        elif kind in ("Add", "Mul"):
            ok = len(ins) == 2 and ins[0] == ins[1] == out
        elif kind in ("Relu", "Logistic", "HardSwish", "Softmax"):
            ok = len(ins) == 1 and ins[0] == out and len(out) >= 1
        elif kind == "Reshape":
            ok = len(ins) == 1 and _prod(ins[0]) == _prod(out)
        elif kind == "Pad":
            ok = (len(ins) == 1 and len(op.paddings) == len(ins[0]) == len(out)
                  and all(min(int(a), int(b)) >= 0 and d + int(a) + int(b) == o
                          for d, (a, b), o in zip(ins[0], op.paddings, out)))
        elif kind == "Concatenation":
            rank = len(out)
            axis = int(op.axis) % rank if rank else 0
            ok = (rank >= 1 and all(len(i) == rank and all(i[a] == out[a] for a in range(rank)
                                                          if a != axis) for i in ins)
                  and sum(i[axis] for i in ins) == out[axis])
        elif kind == "Mean":
            rank = len(ins[0])
            axes = {int(a) % rank for a in op.axes} if rank else set()
            ok = len(ins) == 1 and _prod(out) == _prod(d for a, d in enumerate(ins[0])
                                                       if a not in axes)
        if not ok:
            raise ValueError(f"op {k} ({kind}): the shapes {ins} -> {out} do not match the "
                             f"op's parameters")

    def emit(self) -> None:
        for k, op in enumerate(self.ops):
            self.check_shapes(k, op)
            getattr(self, f"_{type(op).__name__}")(k, op)
        # outputs listed twice, or a graph output that is a graph input
        for i, t in enumerate(self.outputs):
            if self.loc[t] != f"out[{i}]":
                self.use("copy")
                self.calls.append(f"    {self.p}_copy({_prod(self.spec(t).shape)}, "
                                  f"{self.loc[t]}, out[{i}]);")

    def _requant(self, op: Any, ws_scales: np.ndarray, s_in: float, s_out: float, n: int,
                 conv: bool) -> Tuple[np.ndarray, np.ndarray]:
        def compute() -> Tuple[np.ndarray, np.ndarray]:
            ws = np.asarray(ws_scales, np.float32).reshape(-1)
            if conv:   # PopulateConvolutionQuantizationParams: float64 for every channel
                real = np.float64(_f32(s_in)) * ws.astype(np.float64) / np.float64(_f32(s_out))
            else:
                real = requant_real_multiplier(ws, s_in, s_out)
            m, s = quantize_multiplier(np.broadcast_to(real, (n,)))
            return m, s
        if getattr(op, "multiplier", None) is not None and getattr(op, "shift", None) is not None:
            m, s = op.multiplier, op.shift
        else:
            m, s = compute()
        m = np.broadcast_to(np.asarray(m, np.int64).reshape(-1), (n,))
        s = np.broadcast_to(np.asarray(s, np.int64).reshape(-1), (n,))
        return m, s

    def _act(self, op: Any, out: Any) -> Tuple[int, int]:
        lo = getattr(op, "act_min", None)
        hi = getattr(op, "act_max", None)
        if lo is None or hi is None:
            lo, hi = activation_range(getattr(op, "activation", None), out.scale,
                                      out.zero_point)
        return int(lo), int(hi)

    def _FullyConnected(self, k: int, op: Any) -> None:
        x, y = self.spec(op.inputs[0]), self.spec(op.output)
        w = np.ascontiguousarray(op.weights_q, np.int8)
        n_out, n_in = w.shape
        if _prod(x.shape) != n_in or _prod(y.shape) != n_out:
            raise ValueError(f"op {k} (FullyConnected): shapes do not match the weights")
        m, s = self._requant(op, op.weight_scales, x.scale, y.scale, n_out, conv=False)
        lo, hi = self._act(op, y)
        pre = f"{self.p}_op{k}"
        self.data.append(f"/* op {k}: FULLY_CONNECTED {n_in} -> {n_out} */\n")
        wn = self.array("int8_t", f"{pre}_weights", w, 16)
        bn = (self.array("int32_t", f"{pre}_bias", op.bias_q, 8)
              if getattr(op, "bias_q", None) is not None else "NULL")
        mn = self.array("int32_t", f"{pre}_multiplier", m, 8)
        sn = self.array("int32_t", f"{pre}_shift", s, 16)
        self.struct("fc_t", pre, [wn, bn, mn, sn, n_in, n_out, -x.zero_point, y.zero_point,
                                  lo, hi], f"{op.inputs[0]} -> {op.output}")
        self.use("fully_connected")
        self.calls.append(f"    {self.p}_fully_connected(&{pre}, {self.src(op.inputs[0])}, "
                          f"{self.dst(op.output)});")

    def _window(self, k: int, op: Any, depthwise: bool) -> None:
        x, y = self.spec(op.inputs[0]), self.spec(op.output)
        w = np.ascontiguousarray(op.weights_q, np.int8)
        h, wd, c = (int(d) for d in x.shape)
        oh, ow, oc = (int(d) for d in y.shape)
        kh, kw = int(w.shape[1]), int(w.shape[2])
        if depthwise:
            group_c = int(_attr(op, "depth_multiplier", lambda: oc // c))
            kind = "DEPTHWISE_CONV_2D"
        else:
            group_c = int(w.shape[3])
            kind = "CONV_2D"
        top, _, left, _ = (int(v) for v in op.padding)
        sh, sw = (int(v) for v in op.stride)
        dh, dw = (int(v) for v in op.dilation)
        m, s = self._requant(op, op.weight_scales, x.scale, y.scale, oc, conv=True)
        lo, hi = self._act(op, y)
        pre = f"{self.p}_op{k}"
        self.data.append(f"/* op {k}: {kind} {kh}x{kw}, stride {sh}x{sw}, dilation {dh}x{dw}, "
                         f"padding {tuple(op.padding)}: {tuple(x.shape)} -> {tuple(y.shape)} */\n")
        wn = self.array("int8_t", f"{pre}_weights", w, 16)
        bn = (self.array("int32_t", f"{pre}_bias", op.bias_q, 8)
              if getattr(op, "bias_q", None) is not None else "NULL")
        mn = self.array("int32_t", f"{pre}_multiplier", m, 8)
        sn = self.array("int32_t", f"{pre}_shift", s, 16)
        self.struct("window_t", pre, [wn, bn, mn, sn, h, wd, c, oh, ow, oc, kh, kw, sh, sw,
                                      dh, dw, top, left, group_c, -x.zero_point, y.zero_point,
                                      lo, hi], f"{op.inputs[0]} -> {op.output}")
        fn = "depthwise" if depthwise else "conv"
        self.use(fn)
        self.calls.append(f"    {self.p}_{fn}(&{pre}, {self.src(op.inputs[0])}, "
                          f"{self.dst(op.output)});")

    def _Conv2D(self, k: int, op: Any) -> None:
        self._window(k, op, False)

    def _DepthwiseConv2D(self, k: int, op: Any) -> None:
        self._window(k, op, True)

    def _Add(self, k: int, op: Any) -> None:
        a, b = (self.spec(t) for t in op.inputs)
        y = self.spec(op.output)

        def compute() -> Tuple[Tuple[int, int], Tuple[int, int], int, int]:
            s1, s2, so = _f32(a.scale), _f32(b.scale), _f32(y.scale)
            twice_max = 2.0 * max(s1, s2)
            mult, shift = quantize_multiplier([s1 / twice_max, s2 / twice_max,
                                               twice_max / ((1 << 20) * so)])
            return ((int(mult[0]), int(mult[1])), (int(shift[0]), int(shift[1])),
                    int(mult[2]), int(shift[2]))
        if getattr(op, "input_multipliers", None) is not None:
            im, ish = op.input_multipliers, op.input_shifts
            om, osh = op.output_multiplier, op.output_shift
        else:
            im, ish, om, osh = compute()
        lo, hi = self._act(op, y)
        pre = f"{self.p}_op{k}"
        self.struct("add_t", pre, [_prod(y.shape), -a.zero_point, -b.zero_point, 20,
                                   im[0], ish[0], im[1], ish[1], om, osh, y.zero_point, lo, hi],
                    f"op {k}: ADD {op.inputs[0]} + {op.inputs[1]} -> {op.output}")
        self.use("add")
        self.calls.append(f"    {self.p}_add(&{pre}, {self.src(op.inputs[0])}, "
                          f"{self.src(op.inputs[1])}, {self.dst(op.output)});")

    def _Mul(self, k: int, op: Any) -> None:
        a, b = (self.spec(t) for t in op.inputs)
        y = self.spec(op.output)
        om = getattr(op, "output_multiplier", None)
        osh = getattr(op, "output_shift", None)
        if om is None or osh is None:
            om, osh = _quantize_one(_f32(a.scale) * _f32(b.scale) / _f32(y.scale))
        lo, hi = self._act(op, y)
        pre = f"{self.p}_op{k}"
        self.struct("mul_t", pre, [_prod(y.shape), -a.zero_point, -b.zero_point, om, osh,
                                   y.zero_point, lo, hi],
                    f"op {k}: MUL {op.inputs[0]} * {op.inputs[1]} -> {op.output}")
        self.use("mul")
        self.calls.append(f"    {self.p}_mul(&{pre}, {self.src(op.inputs[0])}, "
                          f"{self.src(op.inputs[1])}, {self.dst(op.output)});")

    def _pool(self, k: int, op: Any, fn: str, kind: str) -> None:
        x, y = self.spec(op.inputs[0]), self.spec(op.output)
        h, w, c = (int(d) for d in x.shape)
        oh, ow, _ = (int(d) for d in y.shape)
        top, _, left, _ = (int(v) for v in op.padding)
        lo, hi = self._act(op, y)
        pre = f"{self.p}_op{k}"
        self.struct("pool_t", pre, [h, w, c, oh, ow, int(op.pool[0]), int(op.pool[1]),
                                    int(op.stride[0]), int(op.stride[1]), top, left, lo, hi],
                    f"op {k}: {kind} {tuple(op.pool)}, stride {tuple(op.stride)}, padding "
                    f"{tuple(op.padding)}: {op.inputs[0]} -> {op.output}")
        self.use(fn)
        self.calls.append(f"    {self.p}_{fn}(&{pre}, {self.src(op.inputs[0])}, "
                          f"{self.dst(op.output)});")

    def _AveragePool2D(self, k: int, op: Any) -> None:
        self._pool(k, op, "avg_pool", "AVERAGE_POOL_2D")

    def _MaxPool2D(self, k: int, op: Any) -> None:
        self._pool(k, op, "max_pool", "MAX_POOL_2D")

    def _Mean(self, k: int, op: Any) -> None:
        x, y = self.spec(op.inputs[0]), self.spec(op.output)
        rank = len(x.shape)
        axes = sorted({int(a) % rank for a in op.axes})
        n = _prod([x.shape[a] for a in axes])
        if n * 128 > I32_MAX:
            raise ValueError(f"op {k} (Mean): {n} reduced elements could overflow the int32 sum")

        def compute() -> Tuple[int, int]:
            m, s = _quantize_one(_f32(x.scale) / _f32(y.scale))
            kk = min(n.bit_length() - 1, 32, 31 + s)
            return (m << kk) // n, s - kk
        m = getattr(op, "multiplier", None)
        s = getattr(op, "shift", None)
        if m is None or s is None:
            m, s = compute()
        dims, flags = _collapse(x.shape, [i in axes for i in range(rank)])
        if len(dims) > 4:
            raise ValueError(f"op {k} (Mean): the axes {tuple(op.axes)} of {tuple(x.shape)} "
                             f"need more than 4 alternating axis groups")
        dims = [1] * (4 - len(dims)) + dims
        flags = [False] * (4 - len(flags)) + flags
        zp_n = ((x.zero_point * n + (1 << 31)) % (1 << 32)) - (1 << 31)
        pre = f"{self.p}_op{k}"
        self.struct("mean_t", pre, [dims, [int(f) for f in flags], zp_n, int(m), int(s),
                                    y.zero_point],
                    f"op {k}: MEAN over {tuple(op.axes)}: {op.inputs[0]} -> {op.output}")
        self.use("mean")
        self.calls.append(f"    {self.p}_mean(&{pre}, {self.src(op.inputs[0])}, "
                          f"{self.dst(op.output)});")

    def _Reshape(self, k: int, op: Any) -> None:
        if op.output in self.alias:
            self.calls.append(f"    /* op {k}: RESHAPE {_safe(op.inputs[0])} -> "
                              f"{_safe(op.output)}: same memory */")
            return
        self.use("copy")
        self.calls.append(f"    {self.p}_copy({_prod(self.spec(op.output).shape)}, "
                          f"{self.src(op.inputs[0])}, {self.dst(op.output)});"
                          f"  /* op {k}: RESHAPE */")

    def _Concatenation(self, k: int, op: Any) -> None:
        y = self.spec(op.output)
        rank = len(y.shape)
        axis = int(op.axis) % rank
        outer = _prod(y.shape[:axis])
        inner = [_prod(self.spec(t).shape[axis:]) for t in op.inputs]
        pre = f"{self.p}_op{k}"
        self.data.append(f"/* op {k}: CONCATENATION on axis {axis} -> {_safe(op.output)} */\n")
        iname = self.array("int32_t", f"{pre}_inner", inner, 8)
        self.use("concat")
        ptrs = ", ".join(self.src(t) for t in op.inputs)
        self.calls.append(f"    {{\n        const int8_t *const x[{len(inner)}] = {{{ptrs}}};\n"
                          f"        {self.p}_concat({len(inner)}, {outer}, {iname}, x, "
                          f"{self.dst(op.output)});\n    }}")

    def _Pad(self, k: int, op: Any) -> None:
        x, y = self.spec(op.inputs[0]), self.spec(op.output)
        rank = len(x.shape)
        if rank > 4:
            raise ValueError(f"op {k} (Pad): at most 4 sample axes, got {rank}")
        pads = [tuple(int(v) for v in p) for p in op.paddings]
        in_d = [1] * (4 - rank) + [int(d) for d in x.shape]
        out_d = [1] * (4 - rank) + [int(d) for d in y.shape]
        before = [0] * (4 - rank) + [p[0] for p in pads]
        pre = f"{self.p}_op{k}"
        self.struct("pad_t", pre, [in_d, out_d, before, y.zero_point],
                    f"op {k}: PAD {pads}: {op.inputs[0]} -> {op.output}")
        self.use("pad")
        self.calls.append(f"    {self.p}_pad(&{pre}, {self.src(op.inputs[0])}, "
                          f"{self.dst(op.output)});")

    def _Softmax(self, k: int, op: Any) -> None:
        x, y = self.spec(op.inputs[0]), self.spec(op.output)

        def compute() -> Tuple[int, int, int]:
            real = min(float(op.beta) * _f32(x.scale) * (1 << 26), (1 << 31) - 1.0)
            m, s = _quantize_exact(real)
            radius = math.floor(31.0 * (1 << 26) / (1 << s))
            return m, s, -radius
        if getattr(op, "input_multiplier", None) is not None:
            m, s, dmin = op.input_multiplier, op.input_left_shift, op.diff_min
        else:
            m, s, dmin = compute()
        depth = int(x.shape[-1])
        pre = f"{self.p}_op{k}"
        self.struct("softmax_t", pre, [_prod(x.shape) // depth, depth, m, s, dmin],
                    f"op {k}: SOFTMAX (beta {op.beta!r}): {op.inputs[0]} -> {op.output}")
        self.use("softmax")
        self.calls.append(f"    {self.p}_softmax(&{pre}, {self.src(op.inputs[0])}, "
                          f"{self.dst(op.output)});")

    def _Logistic(self, k: int, op: Any) -> None:
        x = self.spec(op.inputs[0])

        def compute() -> Tuple[int, int, int]:
            m, s = _quantize_exact(_f32(x.scale) * float(1 << 27))
            return m, s, math.floor(15.0 * (1 << 27) / (1 << s))
        if getattr(op, "input_multiplier", None) is not None:
            m, s, r = op.input_multiplier, op.input_left_shift, op.input_range_radius
        else:
            m, s, r = compute()
        pre = f"{self.p}_op{k}"
        self.struct("logistic_t", pre, [_prod(x.shape), x.zero_point, r, m, min(int(s), 31)],
                    f"op {k}: LOGISTIC {op.inputs[0]} -> {op.output}")
        self.use("logistic")
        self.calls.append(f"    {self.p}_logistic(&{pre}, {self.src(op.inputs[0])}, "
                          f"{self.dst(op.output)});")

    def _HardSwish(self, k: int, op: Any) -> None:
        x, y = self.spec(op.inputs[0]), self.spec(op.output)

        def down16(m32: int) -> int:    # DownScaleInt32ToInt16Multiplier
            return 32767 if m32 >= I32_MAX - (1 << 15) else (m32 + (1 << 15)) >> 16

        def compute() -> Tuple[int, int, int, int]:
            hires = np.float32(1.0 / 128.0) * np.float32(x.scale)
            om, oe = _quantize_one(float(hires / np.float32(y.scale)))
            rm, re = _quantize_one(float(hires / (np.float32(3.0) / np.float32(32768.0))))
            return down16(om), oe, down16(rm), re
        if all(getattr(op, a, None) is not None for a in (
                "output_multiplier", "output_exponent", "reluish_multiplier", "reluish_exponent")):
            om, oe = op.output_multiplier, op.output_exponent
            rm, re = op.reluish_multiplier, op.reluish_exponent
        else:
            om, oe, rm, re = compute()
        if oe > 0:
            raise ValueError(f"op {k} (HardSwish): the output scale is too small for the input "
                             f"scale (TFLite requires s_in / 128 / s_out < 1)")
        pre = f"{self.p}_op{k}"
        self.struct("hard_swish_t", pre, [_prod(x.shape), x.zero_point, y.zero_point, om, oe,
                                          rm, re],
                    f"op {k}: HARD_SWISH {op.inputs[0]} -> {op.output}")
        self.use("hard_swish")
        self.calls.append(f"    {self.p}_hard_swish(&{pre}, {self.src(op.inputs[0])}, "
                          f"{self.dst(op.output)});")

    def _Relu(self, k: int, op: Any) -> None:
        x, y = self.spec(op.inputs[0]), self.spec(op.output)
        max_value = getattr(op, "max_value", None)
        if max_value is not None and float(max_value) != 6.0:
            raise ValueError(f"op {k} (Relu): max_value {max_value!r} (TFLite has RELU and "
                             f"RELU6 only)")

        def compute() -> Tuple[int, int, int, int]:
            # TFLite ReluQuantized with TFLM's CalculateReluOpData (as the engine)
            f32 = np.float32
            m, s = _quantize_one(float(f32(x.scale) / f32(y.scale)))
            lo, hi = max(-128, y.zero_point), 127
            if max_value is not None:
                q = f32(6.0) / f32(y.scale)
                six = np.trunc(q + np.copysign(f32(0.49999997), q))       # roundf
                hi = min(127, y.zero_point + int(min(float(six), 2.0 ** 31)))
            return m, s, lo, hi
        if all(getattr(op, a, None) is not None
               for a in ("multiplier", "shift", "act_min", "act_max")):
            m, s, lo, hi = op.multiplier, op.shift, op.act_min, op.act_max
        else:
            m, s, lo, hi = compute()
        kind = "RELU" if max_value is None else "RELU6"
        pre = f"{self.p}_op{k}"
        self.struct("relu_t", pre, [_prod(x.shape), -x.zero_point, int(np.ravel(m)[0]),
                                    int(np.ravel(s)[0]), y.zero_point, int(lo), int(hi)],
                    f"op {k}: {kind} {op.inputs[0]} -> {op.output}")
        self.use("relu")
        self.calls.append(f"    {self.p}_relu(&{pre}, {self.src(op.inputs[0])}, "
                          f"{self.dst(op.output)});")

    # ------------------------------------------------------------------ text
    def sources(self) -> Tuple[str, str]:
        self.plan()
        self.emit()
        p, up = self.p, self.up
        in_sizes = [_prod(self.spec(t).shape) for t in self.inputs]
        out_sizes = [_prod(self.spec(t).shape) for t in self.outputs]
        macros = []
        for what, names, sizes in (("INPUT", self.inputs, in_sizes),
                                   ("OUTPUT", self.outputs, out_sizes)):
            macros.append(f"#define {up}_NUM_{what}S {len(names)}")
            macros.append(f"#define {up}_{what}_SIZE {sum(sizes)}")
            offset = 0
            for i, (t, size) in enumerate(zip(names, sizes)):
                s = self.spec(t)
                shape = ", ".join(str(int(d)) for d in s.shape)
                macros.append(f"/* {what.lower()} {i}: {_safe(repr(t))}, shape ({shape}) */")
                macros.append(f"#define {up}_{what}_{i}_SIZE {size}")
                macros.append(f"#define {up}_{what}_{i}_OFFSET {offset}")
                macros.append(f"#define {up}_{what}_{i}_ZERO_POINT {_macro_int(s.zero_point)}")
                macros.append(f"#define {up}_{what}_{i}_SCALE {_float_literal(s.scale)}")
                offset += size
            s0 = self.spec(names[0])
            macros.append(f"#define {up}_{what}_ZERO_POINT {_macro_int(s0.zero_point)}")
            macros.append(f"#define {up}_{what}_SCALE {_float_literal(s0.scale)}")
        kinds = ", ".join(dict.fromkeys(type(op).__name__ for op in self.ops))
        header = f"""/* {p}.h -- integer graph exported by qatcore {_version()} (qatcore.export.c_graph.write_c).
 *
 * {len(self.ops)} int8 ops ({kinds}); integer-only C99 runtime in {p}.c computing
 * what TensorFlow Lite Micro's int8 reference kernels compute; requantization with
 * TFLM's gemmlowp double rounding (SaturatingRoundingDoublingHighMul, then
 * RoundingDivideByPOT), not TFLITE_SINGLE_ROUNDING.
 *
 *   static int8_t scratch[{up}_SCRATCH_BYTES];
 *   int8_t in[{up}_INPUT_SIZE], out[{up}_OUTPUT_SIZE];
 *   {p}_invoke(in, out, scratch);          returns 0, or -1 on a NULL pointer
 *
 * One sample, NHWC.  With several graph inputs (outputs), `in` (`out`) holds them one
 * after the other ({up}_INPUT_<k>_OFFSET); {p}_invoke_io takes one pointer per tensor.
 * The scratch arena holds the intermediate tensors (planned by liveness; int8, no
 * alignment needed).  Reentrant (no static state): concurrent callers each need their
 * own scratch.  in and out must not overlap each other or the scratch.
 *
 * Codes: real = (code - ZERO_POINT) * SCALE.  The float scales are for the caller's own
 * (de)quantization; the runtime never reads them.
 */
#ifndef {up}_QATCORE_H
#define {up}_QATCORE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {{
#endif

{chr(10).join(macros)}
#define {up}_NUM_OPS {len(self.ops)}
/* int8 scratch arena; at least 1 so that an array of it is valid C. */
#define {up}_SCRATCH_BYTES {max(self.arena, 1)}

int {p}_invoke(const int8_t *in, int8_t *out, void *scratch);
int {p}_invoke_io(const int8_t *const in[], int8_t *const out[], void *scratch);

#ifdef __cplusplus
}}
#endif

#endif /* {up}_QATCORE_H */
"""
        runtime = "".join(_C[b][1] for b in _closure(self.blocks))
        invoke_io = [f"int {p}_invoke_io(const int8_t *const in[], int8_t *const out[], "
                     f"void *scratch)\n{{"]
        invoke_io.append(f"    int8_t *arena = (int8_t *)scratch;" if self.arena else
                         "    (void)scratch;")
        checks = [f"in[{i}] == NULL" for i in range(len(self.inputs))]
        checks += [f"out[{i}] == NULL" for i in range(len(self.outputs))]
        if self.arena:
            checks.append("scratch == NULL")
        invoke_io.append(f"    if (in == NULL || out == NULL)\n        return -1;")
        invoke_io.append(f"    if ({' || '.join(checks)})\n        return -1;")
        invoke_io += self.calls
        invoke_io.append("    return 0;\n}\n")
        ins = ", ".join(f"in + {up}_INPUT_{i}_OFFSET" for i in range(len(self.inputs)))
        outs = ", ".join(f"out + {up}_OUTPUT_{i}_OFFSET" for i in range(len(self.outputs)))
        invoke = (f"int {p}_invoke(const int8_t *in, int8_t *out, void *scratch)\n{{\n"
                  f"    const int8_t *ins[{up}_NUM_INPUTS];\n"
                  f"    int8_t *outs[{up}_NUM_OUTPUTS];\n"
                  f"    if (in == NULL || out == NULL)\n        return -1;\n"
                  + "".join(f"    ins[{i}] = in + {up}_INPUT_{i}_OFFSET;\n"
                            for i in range(len(self.inputs)))
                  + "".join(f"    outs[{i}] = out + {up}_OUTPUT_{i}_OFFSET;\n"
                            for i in range(len(self.outputs)))
                  + f"    return {p}_invoke_io(ins, outs, scratch);\n}}\n")
        del ins, outs
        source = (f"/* {p}.c -- integer graph exported by qatcore; see {p}.h. */\n"
                  f'#include <stddef.h>\n#include <stdint.h>\n\n#include "{p}.h"\n\n'
                  + _sub(_ALIGN, p)
                  + "\n/* ------------------------------------------------------------------ "
                    "runtime\n * Integer only (no float, no malloc).  gemmlowp fixed point as "
                    "TFLite's reference\n * kernels (Jacob et al. 2018): double rounding. */\n"
                  + _sub(runtime, p)
                  + "\n/* ------------------------------------------------------------------ "
                    "parameters */\n\n"
                  + "".join(self.data)
                  + f"/* ------------------------------------------------------------------ "
                    f"graph\n * scratch arena: {self.arena} bytes */\n"
                  + "\n".join(invoke_io) + "\n" + invoke)
        return header, source


def c_sources(model: Any, name: str) -> Tuple[str, str]:
    """The text of ``name.h`` and ``name.c`` for `model` (see :func:`write_c`)."""
    name = check_name(name)
    return _Writer(model, name).sources()


def write_c(model: Any, directory: PathLike, name: str = "model") -> Tuple[str, str]:
    """Write the integer graph `model` as C99 source: ``name.h`` and ``name.c``.

    Parameters
    ----------
    model : qatcore.QuantizedModel
        Read duck-typed: ``tensors`` (name → TensorSpec), ``ops``, ``inputs``, ``outputs``.
    directory : path
        An existing, writable directory.
    name : str
        The C prefix and file stem: a letter, then letters, digits or ``_``, at most 24
        characters.

    Returns
    -------
    (h_path, c_path) : tuple of str

    Raises
    ------
    TypeError, ValueError
        A bad `name` or `directory`, or a model the runtime cannot run (an op without a C
        kernel is named with its index); nothing is written.

    Notes
    -----
    ``int name_invoke(const int8_t *in, int8_t *out, void *scratch)`` runs one sample
    (several inputs / outputs one after the other in `in` / `out`);
    ``name_invoke_io(const int8_t *const in[], int8_t *const out[], void *scratch)`` takes
    one pointer per tensor.  ``NAME_SCRATCH_BYTES`` is the arena planned by liveness.
    Bit-exact with TFLM's int8 reference kernels (gemmlowp double rounding) and with
    ``model.forward_int8(x, rounding="gemmlowp")``.  Both files are written to temporary
    files first and renamed into place.
    """
    directory = check_directory(directory)
    header, source = c_sources(model, name)
    h_path = os.path.join(directory, f"{name}.h")
    c_path = os.path.join(directory, f"{name}.c")
    write_files_atomic([(h_path, header), (c_path, source)])
    return h_path, c_path
