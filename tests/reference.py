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
