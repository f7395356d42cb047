"""Plain-numpy oracles: one function per kernel, written for clarity, not speed.

Every float32 operation here is a numpy float32 operation (no FMA, no widening), in the
order of the Rust code, so the results are what the Rust module computes.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32


def first_nonfinite_ref(x):
    bad = np.flatnonzero(~np.isfinite(np.asarray(x, dtype=np.float32)))
    return int(bad[0]) if bad.size else -1


def minmax_ref(x):
    """(min, max, first_bad) like kernels.minmax."""
    x = np.asarray(x, dtype=np.float32).ravel()
    bad = first_nonfinite_ref(x)
    if x.size == 0:
        return np.inf, -np.inf, -1
    if bad >= 0:
        return None, None, bad
    return float(x.min()), float(x.max()), -1


def mean_std_ref(x):
    """Exact-ish float64 mean and population std (two passes, math.fsum)."""
    import math

    x = np.asarray(x, dtype=np.float64).ravel()
    mean = math.fsum(x) / x.size
    var = math.fsum((x - mean) ** 2) / x.size
    return mean, math.sqrt(var)


def percentile_indices_ref(n):
    """The Rust indices: floor(n*0.001) and min(ceil(n*0.999), n-1), products in f32."""
    nf = F32(n)
    low = int(np.floor(nf * F32(0.001)))
    high = min(int(np.ceil(nf * F32(0.999))), n - 1)
    return low, high


def order_stats_ref(x, k_low, k_high):
    """Order statistics of x at ranks k_low, k_high in a stable sort (Rust sort_by with
    partial_cmp keeps -0.0 and +0.0 in input order)."""
    s = np.sort(np.asarray(x, dtype=np.float32).ravel(), kind="stable")
    return s[k_low], s[k_high]


def round_half_away_ref(v):
    """Round half away from zero in float32 (Rust f32::round)."""
    v = np.asarray(v, dtype=np.float32)
    t = np.trunc(v)
    away = np.abs(v - t) >= F32(0.5)
    return np.where(away, t + np.copysign(F32(1), v), t).astype(np.float32)


def fake_quantize_ref(x, scale, zero_point, qmin, qmax):
    """y = (clamp(round(x / scale + zp), qmin, qmax) - zp) * scale in float32, and the
    clipped-STE mask (rounded value inside [qmin, qmax])."""
    x = np.asarray(x, dtype=np.float32)
    scale, zero_point, qmin, qmax = F32(scale), F32(zero_point), F32(qmin), F32(qmax)
    r = round_half_away_ref(x / scale + zero_point)
    mask = (r >= qmin) & (r <= qmax)
    q = np.where(r < qmin, qmin, r)
    q = np.where(q > qmax, qmax, q).astype(np.float32)
    return ((q - zero_point) * scale).astype(np.float32), mask


def quantize_ref(x, scale, zero_point, qmin, qmax, dtype):
    x = np.asarray(x, dtype=np.float32)
    r = round_half_away_ref(x / F32(scale) + F32(zero_point))
    r = np.clip(r, F32(qmin), F32(qmax))
    return r.astype(dtype)


def dequantize_ref(q, scale, zero_point):
    return ((np.asarray(q).astype(np.float32) - F32(zero_point)) * F32(scale)).astype(np.float32)


def quant_range_ref(bits, symmetric):
    if symmetric:
        m = (1 << (bits - 1)) - 1
        return F32(-m), F32(m)
    return F32(0), F32((1 << bits) - 1)


def compute_qparams_ref(min_val, max_val, bits, symmetric):
    """Rust compute_qparams in f32, with qatcore's fix: nothing observed gives (1, 0)."""
    if np.isinf(min_val) and np.isinf(max_val) and min_val > 0 > max_val:
        return F32(1), F32(0)
    qmin, qmax = quant_range_ref(bits, symmetric)
    lo, hi = F32(min_val), F32(max_val)
    if symmetric:
        max_abs = max(abs(lo), abs(hi))
        scale = max_abs / qmax if max_abs > F32(0) else F32(1)
        return F32(scale), F32(0)
    diff = hi - lo
    scale = diff / (qmax - qmin) if abs(diff) > F32(1e-10) else F32(1)
    zero_point = qmin - lo / F32(scale)
    return F32(scale), F32(zero_point)


class ObserverRef:
    """The Rust QuantObserver, state for state, in numpy float32."""

    def __init__(self, method):
        self.method = getattr(method, "value", method)
        self.reset()

    def reset(self):
        self.min_val, self.max_val = F32(np.inf), F32(-np.inf)
        self.avg_min, self.avg_max = F32(0), F32(0)
        self.count = 0

    def observe(self, data):
        x = np.asarray(data, dtype=np.float32).ravel()
        if x.size == 0:
            return
        if self.method == "min_max":
            self.min_val = min(self.min_val, x.min())
            self.max_val = max(self.max_val, x.max())
        elif self.method == "percentile":
            lo_i, hi_i = percentile_indices_ref(x.size)
            lo, hi = order_stats_ref(x, lo_i, hi_i)
            self.min_val = min(self.min_val, lo)
            self.max_val = max(self.max_val, hi)
        elif self.method == "moving_average":
            lo, hi = x.min(), x.max()
            if self.count == 0:
                self.avg_min, self.avg_max = lo, hi
            else:
                c = F32(0.01)
                self.avg_min = (F32(1) - c) * self.avg_min + c * lo
                self.avg_max = (F32(1) - c) * self.avg_max + c * hi
            self.min_val, self.max_val = self.avg_min, self.avg_max
        elif self.method == "mean_std":
            mean, std = mean_std_ref(x)
            self.min_val = min(self.min_val, F32(mean - 3 * std))
            self.max_val = max(self.max_val, F32(mean + 3 * std))
        self.count += 1

    def range(self):
        return F32(self.min_val), F32(self.max_val)


# --- STE / LSQ backward (qatcore/_k_lsq.pxi) ------------------------------------------

def ste_backward_ref(grad, mask):
    """Clipped STE: grad where mask, else 0 (mask None: identity)."""
    grad = np.asarray(grad, np.float32)
    if mask is None:
        return grad.copy()
    return np.where(np.asarray(mask, bool), grad, np.float32(0))


def lsq_backward_ref(x, grad, scale, zero_point, qmin, qmax, identity=False):
    """LSQ/LSQ+ backward in plain numpy: (grad_in float32, dL/ds, dL/dz) without the
    gradient scale.  v and r in float32 as the forward computes them; sums in float64."""
    x = np.asarray(x, np.float32)
    grad = np.asarray(grad, np.float32)
    s, z = np.float32(scale), np.float32(zero_point)
    v = x / s + z
    r = round_half_away_ref(v)
    lo, hi = r < qmin, r > qmax
    inside = ~(lo | hi)
    grad_in = grad.copy() if identity else np.where(inside, grad, np.float32(0))
    g = grad.astype(np.float64)
    d = np.where(inside, (r - v).astype(np.float64), 0.0)
    d[lo] = float(qmin) - float(z)
    d[hi] = float(qmax) - float(z)
    d_scale = float(np.sum(g * d))
    d_zp = float(-float(s) * np.sum(g[~inside]))
    return grad_in, d_scale, d_zp

# ---------------------------------------------------------------- QuantizedLinear oracles
# Integer formulas in plain Python integers (exact, no overflow), written from the
# gemmlowp / TFLite sources, for the bit-exactness of the integer-only path.

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def gemm_ref(x_q, weights_q, col_offset=None):
    """Σ_k x[m, k]·w[n, k] (+ col_offset[n]) in int64; the Rust loop's result whenever it
    fits int32."""
    acc = np.asarray(x_q, dtype=np.int64) @ np.asarray(weights_q, dtype=np.int64).T
    if col_offset is not None:
        acc = acc + np.asarray(col_offset, dtype=np.int64)
    return acc


def quantize_multiplier_ref(real):
    """TFLite QuantizeMultiplier(double) -> (Q31 multiplier, shift), one value."""
    import math

    real = float(real)
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)                   # real = q · 2^shift, q in [0.5, 1)
    scaled = q * (1 << 31)                        # exact (power-of-two scaling)
    q_fixed = int(scaled)
    if scaled - q_fixed >= 0.5:                   # TfLiteRound: half away from zero
        q_fixed += 1
    if q_fixed == 1 << 31:
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        return INT32_MAX, 30
    return q_fixed, shift


def tflite_real_multiplier_ref(weight_scale, input_scale, output_scale, out_features):
    """The real multipliers TFLite derives from a FULLY_CONNECTED's float32 scales, one per
    output channel: per-tensor (one weight scale) ``double(s_in * s_w) / double(s_out)``
    with the product in float32 (kernel_util.cc GetQuantizedConvolutionMultipler),
    per-channel ``double(s_in) * double(s_w[c]) / double(s_out)``
    (PopulateConvolutionQuantizationParams)."""
    ws = np.asarray(weight_scale, dtype=np.float32).ravel()
    s_in, s_out = F32(input_scale), F32(output_scale)
    if ws.size == 1:
        return [float(F32(s_in * ws[0])) / float(s_out)] * out_features
    return [float(s_in) * float(w) / float(s_out) for w in ws]


def saturating_rounding_doubling_high_mul_ref(a, b):
    """gemmlowp SaturatingRoundingDoublingHighMul for int32 a, b."""
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    num = ab + nudge
    q = abs(num) >> 31                            # C++ division truncates toward zero
    return q if num >= 0 else -q


def rounding_divide_by_pot_ref(x, exponent):
    """gemmlowp RoundingDivideByPOT: x / 2^exponent rounded half away from zero."""
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def multiply_by_quantized_multiplier_ref(x, multiplier, shift):
    """TFLite MultiplyByQuantizedMultiplier; the left shift saturates to int32."""
    left = shift if shift > 0 else 0
    right = -shift if shift < 0 else 0
    v = min(max(x << left, INT32_MIN), INT32_MAX)
    return rounding_divide_by_pot_ref(saturating_rounding_doubling_high_mul_ref(v, multiplier), right)


def multiply_by_quantized_multiplier_single_ref(x, multiplier, shift):
    """TFLite MultiplyByQuantizedMultiplier built with TFLITE_SINGLE_ROUNDING: the exact
    product x·m / 2^(31 - shift) rounded once, ties toward +inf (arithmetic shift)."""
    total = 31 - shift
    return (x * multiplier + (1 << (total - 1))) >> total


def multiply_by_quantized_multiplier_neon_ref(x, multiplier, shift):
    """TFLite's NEON path: vqrdmulh (SaturatingRoundingDoublingHighMul) of the left-shifted
    x, then vrshl by -right (a rounding right shift, ties toward +inf)."""
    left = shift if shift > 0 else 0
    right = -shift if shift < 0 else 0
    v = min(max(x << left, INT32_MIN), INT32_MAX)
    high = saturating_rounding_doubling_high_mul_ref(v, multiplier)
    return (high + ((1 << right) >> 1)) >> right


_MBQM = {"gemmlowp": multiply_by_quantized_multiplier_ref,
         "single": multiply_by_quantized_multiplier_single_ref,
         "neon": multiply_by_quantized_multiplier_neon_ref}


def requantize_ref(acc, multiplier, shift, zero_point, qmin=-128, qmax=127,
                   rounding="gemmlowp"):
    """int32 accumulators (M, N) -> int8 codes, per-column multiplier/shift."""
    mbqm = _MBQM[rounding]
    acc = np.asarray(acc, dtype=np.int64)
    out = np.empty(acc.shape, dtype=np.int8)
    for (i, j), a in np.ndenumerate(acc):
        v = mbqm(int(a), int(multiplier[j]), int(shift[j]))
        v = min(max(v, INT32_MIN), INT32_MAX)
        out[i, j] = min(max(v + int(zero_point), qmin), qmax)
    return out


def activation_range_ref(activation, scale, zero_point):
    """TFLite CalculateActivationRangeQuantized for int8: [-128, 127]; ReLU from
    max(-128, zp); ReLU6 up to min(127, zp + TfLiteRound(6.0f / scale))."""
    lo, hi = -128, 127
    if activation is None:
        return lo, hi
    lo = max(lo, int(zero_point))
    if activation == "relu6":
        hi = min(hi, int(zero_point) + int(round_half_away_ref(F32(6.0) / F32(scale))))
    return lo, hi


def fully_connected_int8_ref(x_q, weights_q, bias_q, input_zero_point, weight_scale,
                             input_scale, output_scale, output_zero_point, activation=None,
                             rounding="gemmlowp"):
    """TFLite reference int8 FULLY_CONNECTED (reference_integer_ops::FullyConnected):
    acc = Σ w·(x - zp_in) + bias, MultiplyByQuantizedMultiplier with the multipliers
    TFLite derives from the float32 scales, + zp_out, clamped to the activation range."""
    w = np.asarray(weights_q, dtype=np.int64)
    acc = (np.asarray(x_q, dtype=np.int64) - int(input_zero_point)) @ w.T
    if bias_q is not None:
        acc = acc + np.asarray(bias_q, dtype=np.int64)
    reals = tflite_real_multiplier_ref(weight_scale, input_scale, output_scale, w.shape[0])
    pairs = [quantize_multiplier_ref(r) for r in reals]
    mult = [p[0] for p in pairs]
    shift = [p[1] for p in pairs]
    lo, hi = activation_range_ref(activation, output_scale, output_zero_point)
    return requantize_ref(acc, mult, shift, output_zero_point, lo, hi, rounding)


def sequential_int8_ref(layers, x_q, rounding="gemmlowp"):
    """A chain of fully_connected_int8_ref; `layers` is a list of dicts with the keys of
    its arguments (weights_q, bias_q, input_zero_point, weight_scale, input_scale,
    output_scale, output_zero_point, activation); `rounding` as in
    QuantizedSequential.forward_int8."""
    h = np.asarray(x_q, dtype=np.int8)
    for layer in layers:
        h = fully_connected_int8_ref(h, rounding=rounding, **layer)
    return h


# --- numerics presets (qatcore/_k_presets.pxi, src/qc_presets.h) -----------------------
# Written from the ATen CPU kernels (fake_quantize_tensor_cachemask_kernel,
# fake_quant_per_channel_cachemask_cpu) and onnxruntime's QuantizeLinear/DequantizeLinear.

def fake_quantize_torch_ref(x, scale, zero_point, qmin, qmax, per_channel=False):
    """torch.fake_quantize_per_tensor_affine (per_channel=False) or one channel of
    _per_channel_affine: y and the mask, float32.  `scale`/`zero_point` broadcast."""
    x = np.asarray(x, dtype=np.float32)
    scale = np.asarray(scale, dtype=np.float32)
    zp = np.asarray(zero_point, dtype=np.float32)
    inv = (F32(1) / scale).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        q = (zp + np.rint(x * inv)).astype(np.float32)    # np.rint: ties to even
    if per_channel:
        # static_cast<int64_t>: NaN and |q| >= 2^63 become INT64_MIN on x86
        q = np.where(q < F32(2.0 ** 63), q, F32(-np.inf)).astype(np.float32)
    mask = (q >= F32(qmin)) & (q <= F32(qmax))
    c = np.where(q > F32(qmin), q, F32(qmin))               # std::fmax: NaN -> qmin
    c = np.where(c < F32(qmax), c, F32(qmax)).astype(np.float32)
    return ((c - zp) * scale).astype(np.float32), mask


def fake_quantize_onnx_ref(x, scale, zero_point, qmin, qmax):
    """QuantizeLinear -> DequantizeLinear: saturate(rint(x / scale) + zp), then
    (q - zp) * scale; NaN saturates to qmin (onnxruntime/MLAS)."""
    x = np.asarray(x, dtype=np.float32)
    scale = np.asarray(scale, dtype=np.float32)
    zp = np.asarray(zero_point, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        q = (np.rint(x / scale) + zp).astype(np.float32)
    mask = (q >= F32(qmin)) & (q <= F32(qmax))
    c = np.where(np.isnan(q), F32(qmin), np.clip(q, F32(qmin), F32(qmax))).astype(np.float32)
    return ((c - zp) * scale).astype(np.float32), mask


def lsq_backward_preset_ref(x, grad, scale, zero_point, qmin, qmax, numerics,
                            identity=False):
    """LSQ backward in a preset's arithmetic (no gradient scale): (grad_in, dL/ds, dL/dz)."""
    x = np.asarray(x, np.float32)
    grad = np.asarray(grad, np.float32)
    s, z = np.float32(scale), np.float32(zero_point)
    with np.errstate(over="ignore", invalid="ignore"):
        v = (x * (F32(1) / s)) if numerics == "torch" else x / s
        v = v.astype(np.float32)
        r = np.rint(v).astype(np.float32)
        q = (z + r).astype(np.float32)
    lo, hi = ~(q >= qmin), q > qmax
    inside = ~(lo | hi)
    grad_in = grad.copy() if identity else np.where(inside, grad, np.float32(0))
    g = grad.astype(np.float64)
    d = np.where(inside, (r - v).astype(np.float64), 0.0)
    d[lo] = float(qmin) - float(z)
    d[hi] = float(qmax) - float(z)
    return grad_in, float(np.sum(g * d)), float(-float(s) * np.sum(g[~inside]))


def torch_qparams_ref(min_val, max_val, qmin, qmax, symmetric):
    """torch MinMaxObserver._calculate_qparams, float32, written out scalar by scalar."""
    lo, hi = min(F32(min_val), F32(0)), max(F32(max_val), F32(0))
    eps = np.finfo(np.float32).eps
    if symmetric:
        hi = max(-lo, hi)
        scale = max(F32(hi / F32((qmax - qmin) / 2)), eps)
        return float(scale), 0.0
    scale = max(F32((hi - lo) / F32(qmax - qmin)), eps)
    zp = qmin - float(np.round(F32(lo / F32(scale))))
    return float(scale), float(min(max(zp, qmin), qmax))

# --- histogram calibration (qatcore/histogram.py) ---------------------------------------
# Plain transcriptions of the published algorithms, one stop at a time, written for
# clarity (the library computes the same searches vectorized / from prefix sums).

def sign_magnitude_histogram_ref(x, bins):
    """The histogram HistogramObserver holds after observing all of x (any split):
    2h bins, h = 2*bins, width 2^e / h with 2^e the smallest power of two > max|x|."""
    x = np.asarray(x, dtype=np.float32).ravel().astype(np.float64)
    h = 2 * bins
    counts = np.zeros(2 * h, dtype=np.int64)
    amax = np.abs(x).max() if x.size else 0.0
    if amax == 0:
        counts[h] = x.size
        return counts, 0.0
    e = int(np.frexp(amax)[1])
    w = 2.0 ** e / h
    k = np.floor(np.abs(x) / w).astype(np.int64)
    neg = x < 0
    np.add.at(counts, h + k[~neg], 1)
    np.add.at(counts, h - 1 - k[neg], 1)
    return counts, w


def _kl_ref(p, q):
    """scipy.stats.entropy(p, q): both normalized; inf where q = 0 < p; NaN -> inf."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p = p / p.sum()
    q = q / q.sum()
    total = 0.0
    for pj, qj in zip(p, q):
        if pj > 0:
            if not qj > 0:
                return np.inf
            total += pj * np.log(pj / qj)
    return np.inf if np.isnan(total) else total


def entropy_amax_modelopt_ref(hist, edges, num_bits=8, unsigned=False, stride=1, start_bin=128):
    """(amax, {stop: KL}) of ModelOpt's ``_compute_amax_entropy`` (last argmin)."""
    bins = np.array(hist, dtype=np.int64)
    bins[0] = bins[1]
    levels = 1 << (num_bits - 1 + int(unsigned))
    divergences = {}
    for i in range(start_bin, bins.size + 1, stride):
        space = np.linspace(0, i, levels + 1)
        group = np.digitize(np.arange(i), space) - 1
        keep = bins[:i] != 0
        sums = np.bincount(group[keep], weights=bins[:i][keep], minlength=levels)
        counts = np.bincount(group[keep], minlength=levels)
        q = np.zeros(i)
        q[keep] = sums[group[keep]] / counts[group[keep]]
        p = bins[:i].astype(np.float64)
        p[-1] += bins[i:].sum()
        divergences[i] = _kl_ref(p, q)
    best = min(divergences.values())
    last = max(i for i, d in divergences.items() if d == best)
    return float(edges[last]), divergences


def _smooth_ref(p, eps=1e-4):
    p = np.asarray(p)
    zeros = int((p == 0).sum())
    nonzeros = p.size - zeros
    if nonzeros == 0:
        return None
    out = p.astype(np.float32)
    out[p == 0] += np.float32(eps)
    out[p != 0] -= np.float32(eps * zeros / nonzeros)
    return out


def entropy_threshold_onnxruntime_ref(hist, edges, min_value, max_value, num_quantized_bins=128):
    """((lo, hi), {i: KL}) of onnxruntime's ``get_entropy_threshold`` (first argmin)."""
    hist = np.asarray(hist, dtype=np.int64)
    n = hist.size
    zero = n // 2
    divergences, thresholds = {}, {}
    for i in range(num_quantized_bins // 2, zero + 1):
        start, end = zero - i, min(zero + i + 1, n)
        thresholds[i] = (float(edges[start]), float(edges[end]))
        sliced = hist[start:end]
        p = sliced.copy()
        p[0] += hist[:start].sum()
        p[-1] += hist[end:].sum()
        merged = sliced.size // num_quantized_bins
        q = np.zeros(p.size, dtype=np.int64)
        for g in range(num_quantized_bins):
            lo_j, hi_j = g * merged, (g + 1) * merged
            total = sliced[lo_j:hi_j].sum()
            if g == num_quantized_bins - 1:
                total += sliced[num_quantized_bins * merged:].sum()
            norm = int((p[lo_j:hi_j] != 0).sum())
            if norm:
                q[lo_j:hi_j] = int(total / norm)
        ps, qs = _smooth_ref(p), _smooth_ref(q)
        divergences[i] = np.inf if ps is None or qs is None else _kl_ref(ps, qs)
    best = min(divergences, key=lambda i: (divergences[i], i))
    lo, hi = thresholds[best]
    return (max(lo, float(min_value)), min(hi, float(max_value))), divergences


def mse_amax_modelopt_ref(hist, edges, num_bits=8, unsigned=False, stride=1, start_bin=128):
    """(amax, {i: mse}) of ModelOpt's ``_compute_amax_mse`` (float32, first argmin)."""
    counts = np.asarray(hist, dtype=np.float32)
    e = np.asarray(edges, dtype=np.float32)
    centers = (e[1:] + e[:-1]) / np.float32(2)
    bound = np.float32(2.0 ** (num_bits - 1 + int(unsigned)) - 1)
    mses = {}
    for i in range(start_bin, centers.size, stride):
        scale = bound / centers[i]
        q = np.round(centers * scale)                       # half to even, like torch.round
        q = np.minimum(np.maximum(q, np.float32(0) if unsigned else -bound), bound)
        mses[i] = float(np.mean((q / scale - centers) ** 2 * counts, dtype=np.float32))
    best = min(mses, key=lambda i: (mses[i], i))
    return float(centers[best]), mses


def percentile_threshold_ref(hist, edges, percentile, symmetric=True):
    """The left edge of the first bin whose cumulative fraction reaches the target."""
    hist = np.asarray(hist)
    total = hist.sum()

    def edge_at(target):
        cdf = 0.0
        for j, c in enumerate(hist):
            cdf += c / total
            if cdf >= target:
                return float(edges[j])
        return float(edges[hist.size])

    if symmetric:
        return edge_at(percentile / 100.0)
    cut = (100.0 - percentile) / 200.0
    return edge_at(cut), edge_at(1.0 - cut)


# --- integer graph ops (qatcore/model/ops) -----------------------------------------------
# Transcribed from TFLite's int8 reference kernels (tflite-micro
# tensorflow/lite/kernels/internal/reference/integer_ops/{conv,depthwise_conv,add,mul,
# pooling,logistic}.h, reference/{softmax,reduce,hard_swish}.h, common.h; parameters as the
# micro/kernels/*_common.cc Prepare functions compute them) and gemmlowp fixedpoint.h.
# Scalar Python integers throughout: slow and plain on purpose.  `rounding` chooses the
# MultiplyByQuantizedMultiplier of conv / depthwise / fully connected; the other ops use
# the double rounding except under "single" (TFLITE_SINGLE_ROUNDING).

def _wrap32_ref(v):
    return ((v + (1 << 31)) % (1 << 32)) - (1 << 31)


def _clamp_ref(v, lo, hi):
    return min(max(v, lo), hi)


def _elementwise_mbqm_ref(rounding):
    return (multiply_by_quantized_multiplier_single_ref if rounding == "single"
            else multiply_by_quantized_multiplier_ref)


def _conv_multipliers_ref(weight_scales, input_scale, output_scale, channels):
    """PopulateConvolutionQuantizationParams: double(s_in) * double(s_w[c]) / double(s_out)."""
    ws = np.asarray(weight_scales, dtype=np.float32).ravel()
    pairs = []
    for c in range(channels):
        w = ws[c] if ws.size > 1 else ws[0]
        pairs.append(quantize_multiplier_ref(float(F32(input_scale)) * float(w)
                                             / float(F32(output_scale))))
    return pairs


def _out_size_ref(size, k, stride, dilation, before, after):
    return (size + before + after - ((k - 1) * dilation + 1)) // stride + 1


def conv2d_int8_ref(x, weights_q, bias_q, input_zero_point, weight_scales, input_scale,
                    output_scale, output_zero_point, stride=(1, 1), dilation=(1, 1),
                    padding=(0, 0, 0, 0), activation=None, rounding="gemmlowp"):
    """reference_integer_ops::ConvPerChannel on NHWC int8 `x` with OHWI weights; groups =
    C_in // weights.shape[3]; only in-image taps accumulate w * (x - zp_in)."""
    x = np.asarray(x)
    n, h, w, c = x.shape
    o, kh, kw, cg = weights_q.shape
    groups = c // cg
    og = o // groups
    top, bottom, left, right = padding
    oh = _out_size_ref(h, kh, stride[0], dilation[0], top, bottom)
    ow = _out_size_ref(w, kw, stride[1], dilation[1], left, right)
    pairs = _conv_multipliers_ref(weight_scales, input_scale, output_scale, o)
    lo, hi = activation_range_ref(activation, output_scale, output_zero_point)
    mbqm = _MBQM[rounding]
    xi = x.astype(np.int64) - int(input_zero_point)
    wt = weights_q.astype(np.int64)
    out = np.empty((n, oh, ow, o), dtype=np.int8)
    for oy in range(oh):
        for ox in range(ow):
            acc = np.zeros((n, o), dtype=np.int64)
            for ky in range(kh):
                iy = oy * stride[0] - top + ky * dilation[0]
                for kx in range(kw):
                    ix = ox * stride[1] - left + kx * dilation[1]
                    if not (0 <= iy < h and 0 <= ix < w):
                        continue
                    for g in range(groups):
                        tap = xi[:, iy, ix, g * cg:(g + 1) * cg]                 # (n, cg)
                        filt = wt[g * og:(g + 1) * og, ky, kx, :]               # (og, cg)
                        acc[:, g * og:(g + 1) * og] += tap @ filt.T
            if bias_q is not None:
                acc += np.asarray(bias_q, dtype=np.int64)
            for b in range(n):
                for ch in range(o):
                    v = mbqm(int(acc[b, ch]), pairs[ch][0], pairs[ch][1])
                    out[b, oy, ox, ch] = _clamp_ref(v + int(output_zero_point), lo, hi)
    return out


def depthwise_conv2d_int8_ref(x, weights_q, bias_q, input_zero_point, weight_scales,
                              input_scale, output_scale, output_zero_point, stride=(1, 1),
                              dilation=(1, 1), padding=(0, 0, 0, 0), activation=None,
                              rounding="gemmlowp"):
    """reference_integer_ops::DepthwiseConvPerChannel: weights (1, KH, KW, C*M), output
    channel m + ic*M filters input channel ic."""
    x = np.asarray(x)
    n, h, w, c = x.shape
    _, kh, kw, cm = weights_q.shape
    mult = cm // c
    top, bottom, left, right = padding
    oh = _out_size_ref(h, kh, stride[0], dilation[0], top, bottom)
    ow = _out_size_ref(w, kw, stride[1], dilation[1], left, right)
    pairs = _conv_multipliers_ref(weight_scales, input_scale, output_scale, cm)
    lo, hi = activation_range_ref(activation, output_scale, output_zero_point)
    mbqm = _MBQM[rounding]
    xi = x.astype(np.int64) - int(input_zero_point)
    wt = weights_q.astype(np.int64)[0]
    out = np.empty((n, oh, ow, cm), dtype=np.int8)
    in_channel = np.arange(cm) // mult
    for oy in range(oh):
        for ox in range(ow):
            acc = np.zeros((n, cm), dtype=np.int64)
            for ky in range(kh):
                iy = oy * stride[0] - top + ky * dilation[0]
                for kx in range(kw):
                    ix = ox * stride[1] - left + kx * dilation[1]
                    if 0 <= iy < h and 0 <= ix < w:
                        acc += xi[:, iy, ix, in_channel] * wt[ky, kx]
            if bias_q is not None:
                acc += np.asarray(bias_q, dtype=np.int64)
            for b in range(n):
                for ch in range(cm):
                    v = mbqm(int(acc[b, ch]), pairs[ch][0], pairs[ch][1])
                    out[b, oy, ox, ch] = _clamp_ref(v + int(output_zero_point), lo, hi)
    return out


def add_int8_ref(a, b, qa, qb, qout, activation=None, rounding="gemmlowp"):
    """reference_integer_ops::Add (add_common.cc parameters); q* = (scale, zero_point)."""
    left_shift = 20
    sa, sb, so = (float(F32(q[0])) for q in (qa, qb, qout))
    twice_max = 2 * max(sa, sb)
    m1, s1 = quantize_multiplier_ref(sa / twice_max)
    m2, s2 = quantize_multiplier_ref(sb / twice_max)
    mo, so_ = quantize_multiplier_ref(twice_max / ((1 << left_shift) * so))
    mbqm = _elementwise_mbqm_ref(rounding)
    lo, hi = activation_range_ref(activation, qout[0], qout[1])
    out = np.empty(np.shape(a), dtype=np.int8)
    for idx, (va, vb) in enumerate(zip(np.ravel(a), np.ravel(b))):
        x1 = (int(va) - int(qa[1])) * (1 << left_shift)
        x2 = (int(vb) - int(qb[1])) * (1 << left_shift)
        raw = mbqm(x1, m1, s1) + mbqm(x2, m2, s2)
        v = mbqm(raw, mo, so_) + int(qout[1])
        out.flat[idx] = _clamp_ref(v, lo, hi)
    return out


def mul_int8_ref(a, b, qa, qb, qout, activation=None, rounding="gemmlowp"):
    """reference_integer_ops::Mul (mul_common.cc: double(s1) * double(s2) / double(s_out))."""
    real = float(F32(qa[0])) * float(F32(qb[0])) / float(F32(qout[0]))
    m, s = quantize_multiplier_ref(real)
    mbqm = _elementwise_mbqm_ref(rounding)
    lo, hi = activation_range_ref(activation, qout[0], qout[1])
    out = np.empty(np.shape(a), dtype=np.int8)
    for idx, (va, vb) in enumerate(zip(np.ravel(a), np.ravel(b))):
        p = (int(va) - int(qa[1])) * (int(vb) - int(qb[1]))
        out.flat[idx] = _clamp_ref(mbqm(p, m, s) + int(qout[1]), lo, hi)
    return out


def pool2d_int8_ref(x, pool, stride, padding, kind, act_min=-128, act_max=127):
    """reference_integer_ops::AveragePool / MaxPool over in-image taps; the average rounds
    half away from zero around raw 0 with C integer division."""
    x = np.asarray(x)
    n, h, w, c = x.shape
    top, bottom, left, right = padding
    oh = _out_size_ref(h, pool[0], stride[0], 1, top, bottom)
    ow = _out_size_ref(w, pool[1], stride[1], 1, left, right)
    out = np.empty((n, oh, ow, c), dtype=np.int8)
    for b in range(n):
        for oy in range(oh):
            for ox in range(ow):
                y0, x0 = oy * stride[0] - top, ox * stride[1] - left
                ys = range(max(0, y0), min(h, y0 + pool[0]))
                xs = range(max(0, x0), min(w, x0 + pool[1]))
                for ch in range(c):
                    vals = [int(x[b, iy, ix, ch]) for iy in ys for ix in xs]
                    if kind == "max":
                        v = max([-128] + vals)
                    else:
                        acc, count = sum(vals), len(vals)
                        q = (acc + count // 2) if acc > 0 else (acc - count // 2)
                        v = abs(q) // count * (1 if q >= 0 else -1)     # C truncation
                    out[b, oy, ox, ch] = _clamp_ref(v, act_min, act_max)
    return out


def mean_int8_ref(x, axes, q_in, q_out, keepdims=False, rounding="gemmlowp"):
    """reference_ops::QuantizedMeanOrSum (mean) with reduce_common.cc's multiplier; `axes`
    are axes of `x` (batch axis included)."""
    x = np.asarray(x)
    m, s = quantize_multiplier_ref(float(F32(q_in[0])) / float(F32(q_out[0])))
    n = 1
    for a in axes:
        n *= x.shape[a]
    k = min(63 - (64 - n.bit_length()), 32, 31 + s)       # 63 - CountLeadingZeros(uint64 n)
    m = (m << k) // n
    s = s - k
    mbqm = _elementwise_mbqm_ref(rounding)
    sums = x.astype(np.int64).sum(axis=tuple(axes), keepdims=keepdims)
    out = np.empty(sums.shape, dtype=np.int8)
    for idx, total in np.ndenumerate(sums):
        shifted = _wrap32_ref(int(total) - int(q_in[1]) * n)
        out[idx] = _clamp_ref(mbqm(shifted, m, s) + int(q_out[1]), -128, 127)
    return out


# gemmlowp fixed point, scalar
def _srmpot_ref(x, exponent):
    """SaturatingRoundingMultiplyByPOT<exponent> on int32."""
    if exponent < 0:
        return rounding_divide_by_pot_ref(x, -exponent)
    threshold = (1 << (31 - exponent)) - 1
    if x > threshold:
        return INT32_MAX
    if x < -threshold:
        return INT32_MIN
    return x << exponent


def _fx_mul_ref(a, b):
    return saturating_rounding_doubling_high_mul_ref(a, b)


def exp_on_negative_values_ref(a, integer_bits):
    frac = 31 - integer_bits
    quarter = 1 << (frac - 2)
    a_mod = _wrap32_ref((a & (quarter - 1)) - quarter)
    # exp on [-1/4, 0): Taylor around -1/8
    z = _srmpot_ref(a_mod, integer_bits)                       # Rescale<0>
    x = _wrap32_ref(z + (1 << 28))
    x2 = _fx_mul_ref(x, x)
    x3 = _fx_mul_ref(x2, x)
    x4 = _fx_mul_ref(x2, x2)
    x4_4 = _srmpot_ref(x4, -2)
    t = _srmpot_ref(_wrap32_ref(_fx_mul_ref(_wrap32_ref(x4_4 + x3), 715827883) + x2), -1)
    result = _wrap32_ref(1895147668 + _fx_mul_ref(1895147668, _wrap32_ref(x + t)))
    remainder = _wrap32_ref(a_mod - a)
    for exponent, mult in ((-2, 1672461947), (-1, 1302514674), (0, 790015084),
                           (1, 290630308), (2, 39332535), (3, 720401), (4, 242)):
        if integer_bits > exponent and remainder & (1 << (frac + exponent)):
            result = _fx_mul_ref(result, mult)
    if integer_bits > 5 and a < -(1 << (36 - integer_bits)):
        result = 0
    return INT32_MAX if a == 0 else result


def one_over_one_plus_x_ref(a):
    s = a + INT32_MAX
    half = (s + (1 if s >= 0 else -1))
    half = abs(half) // 2 * (1 if half >= 0 else -1)             # C truncation
    x = _wrap32_ref(1515870810 + _fx_mul_ref(half, -1010580540))
    for _ in range(3):
        om = _wrap32_ref((1 << 29) - _fx_mul_ref(half, x))
        x = _wrap32_ref(x + _srmpot_ref(_fx_mul_ref(x, om), 2))
    return _srmpot_ref(x, 1)


def softmax_int8_ref(x, input_scale, beta=1.0, rounding="gemmlowp"):
    """reference_ops::Softmax for int8 in / int8 out (scale 1/256, zp -128) over the last
    axis, with softmax_common.cc's PreprocessSoftmaxScaling / CalculateInputRadius."""
    import math

    single = rounding == "single"
    cap = (1 << 30) - 1.0 if single else (1 << 31) - 1.0
    real = min(float(F32(beta)) * float(F32(input_scale)) * (1 << 26), cap)
    mult, left = quantize_multiplier_ref(real)
    diff_min = -math.floor(1.0 * 31 * (1 << 26) / (1 << left))
    x = np.asarray(x)
    rows = x.reshape(-1, x.shape[-1])
    out = np.empty(rows.shape, dtype=np.int8)

    def rescale(d):
        if single:
            return multiply_by_quantized_multiplier_single_ref(d, mult, left)
        return _fx_mul_ref(_wrap32_ref(d * (1 << left)), mult)

    for r, row in enumerate(rows):
        mx = int(row.max())
        total = 0
        for v in row:
            d = int(v) - mx
            if d >= diff_min:
                total = _wrap32_ref(total + _srmpot_ref(
                    exp_on_negative_values_ref(rescale(d), 5), -12))
        headroom = 32 - total.bit_length()
        bits_over_unit = 12 - headroom
        shifted = _wrap32_ref(((total << headroom) % (1 << 32)) - (1 << 31))
        scale = one_over_one_plus_x_ref(shifted)
        for c, v in enumerate(row):
            d = int(v) - mx
            if d >= diff_min:
                e = exp_on_negative_values_ref(rescale(d), 5)
                u = rounding_divide_by_pot_ref(_fx_mul_ref(scale, e), bits_over_unit + 23)
                out[r, c] = _clamp_ref(u - 128, -128, 127)
            else:
                out[r, c] = -128
    return out.reshape(x.shape)


def logistic_int8_ref(x, q_in, rounding="gemmlowp"):
    """reference_integer_ops::Logistic with logistic_common.cc's parameters."""
    import math

    q, shift = math.frexp(float(F32(q_in[0])) * float(1 << 27))
    mult = math.floor(q * (1 << 31) + 0.5)
    radius = math.floor(15.0 * (1 << 27) / (1 << shift))
    mbqm = _elementwise_mbqm_ref(rounding)
    out = np.empty(np.shape(x), dtype=np.int8)
    for idx, v in enumerate(np.ravel(x)):
        d = int(v) - int(q_in[1])
        if d <= -radius:
            out.flat[idx] = -128
        elif d >= radius:
            out.flat[idx] = 127
        else:
            a = mbqm(d, mult, shift)                              # Q4.27
            if a == 0:
                y = 1 << 30
            else:
                pos = one_over_one_plus_x_ref(exp_on_negative_values_ref(-abs(a), 4))
                y = pos if a > 0 else _wrap32_ref(INT32_MAX - pos)
            out.flat[idx] = _clamp_ref(rounding_divide_by_pot_ref(y, 23) - 128, -128, 127)
    return out


def _i16_ref(v):
    return ((v + (1 << 15)) % (1 << 16)) - (1 << 15)


def hard_swish_int8_ref(x, q_in, q_out):
    """reference_ops::HardSwish (quantized) with hard_swish_common.cc's parameters."""
    def to16(m):
        if m >= INT32_MAX - (1 << 15):
            return (1 << 15) - 1
        return (m + (1 << 15)) >> 16

    def srdhm16(a, b):
        if a == b == -(1 << 15):
            return (1 << 15) - 1
        ab = a * b
        num = ab + ((1 << 14) if ab >= 0 else 1 - (1 << 14))
        return _i16_ref(abs(num) // (1 << 15) * (1 if num >= 0 else -1))

    def sdhm16(a, b):
        if a == b == -(1 << 15):
            return (1 << 15) - 1
        ab = a * b
        return _i16_ref(abs(ab) // (1 << 15) * (1 if ab >= 0 else -1))

    def satl16(v, amount):
        return _clamp_ref(v * (1 << amount), -(1 << 15), (1 << 15) - 1)

    hires = F32(1.0 / 128.0) * F32(q_in[0])
    om, oe = quantize_multiplier_ref(float(F32(hires / F32(q_out[0]))))
    rm, re = quantize_multiplier_ref(float(F32(hires / F32(3.0 / 32768.0))))
    om, rm = to16(om), to16(rm)
    out = np.empty(np.shape(x), dtype=np.int8)
    for idx, v in enumerate(np.ravel(x)):
        iv = _i16_ref(int(v) - int(q_in[1]))
        hv = _i16_ref(iv * 128)
        pre = srdhm16(hv, om)
        rel = hv
        if re > 0:
            rel = satl16(rel, re - 1)
        rel = srdhm16(rel, rm)
        if re > 0:
            rel = satl16(rel, 1)
        if re < 0:
            rel = rounding_divide_by_pot_ref(rel, -re)
        rel = _i16_ref((rel + (1 << 15)) >> 1)
        o = rounding_divide_by_pot_ref(sdhm16(rel, pre), -oe)
        o = _i16_ref(o + int(q_out[1]))
        out.flat[idx] = _clamp_ref(o, -128, 127)
    return out


def relu_int8_ref(x, q_in, q_out, six=False, rounding="gemmlowp"):
    """ReluQuantized with activations_common.cc's CalculateReluOpData (act_max 6 for
    ReLU6)."""
    m, s = quantize_multiplier_ref(float(F32(q_in[0]) / F32(q_out[0])))
    zp = int(q_out[1])
    lo = max(-128, zp)
    hi = 127
    if six:
        hi = min(127, zp + int(round_half_away_ref(F32(6.0) / F32(q_out[0]))))
    mbqm = _elementwise_mbqm_ref(rounding)
    out = np.empty(np.shape(x), dtype=np.int8)
    for idx, v in enumerate(np.ravel(x)):
        out.flat[idx] = _clamp_ref(zp + mbqm(int(v) - int(q_in[1]), m, s), lo, hi)
    return out
