"""A plain-numpy interpreter of the integer graph's data (qatcore.torch.lower.GraphSpec),
op by op with TensorFlow Lite's int8 reference arithmetic (gemmlowp double rounding),
vectorized in int64. The oracle the torch converter is checked against independently of
the engine (qatcore.model); slow but small models only."""

from __future__ import annotations

import math

import numpy as np

from qatcore.linear import activation_range, quantize_multiplier, requant_real_multiplier

I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1


def mbqm(x, multiplier, shift):
    """TFLite MultiplyByQuantizedMultiplier (gemmlowp), broadcasting int64 arrays."""
    x = np.asarray(x, np.int64)
    m = np.asarray(multiplier, np.int64)
    sh = np.asarray(shift, np.int64)
    left = np.maximum(sh, 0)
    right = np.maximum(-sh, 0)
    v = np.clip(x << left, I32_MIN, I32_MAX)
    ab = v * m
    num = ab + np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    high = np.where(num >= 0, num >> 31, -((-num) >> 31))
    mask = (np.int64(1) << right) - 1
    rem = high & mask
    thr = (mask >> 1) + (high < 0)
    return (high >> right) + (rem > thr)


def _pad_windows(x, kh, kw, stride, dilation, padding, fill):
    """(N, OH, OW, C, KH, KW) windows of an NHWC array padded with `fill`."""
    t, b, l, r = padding
    xp = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=fill)
    win = np.lib.stride_tricks.sliding_window_view(
        xp, ((kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1), axis=(1, 2))
    win = win[:, ::stride[0], ::stride[1], :, ::dilation[0], ::dilation[1]]
    return win


def _requant(acc, ws, s_in, s_out, zp_out, activation):
    m, sh = quantize_multiplier(requant_real_multiplier(ws, s_in, s_out))
    if m.size == 1:
        m, sh = np.repeat(m, acc.shape[-1]), np.repeat(sh, acc.shape[-1])
    lo, hi = activation_range(activation, s_out, zp_out)
    return np.clip(mbqm(acc, m, sh) + zp_out, lo, hi).astype(np.int8)


def run(spec, x_q):
    """int8 NHWC codes through the graph; returns the output codes (one output)."""
    return run_multi(spec, {spec.inputs[0]: x_q})


def run_multi(spec, inputs):
    """Like :func:`run` with ``{input name: codes}``."""
    T = {t["name"]: t for t in spec.tensors}
    env = {k: np.asarray(v, np.int8) for k, v in inputs.items()}
    for kind, kw in spec.ops:
        out = T[kw["output"]]
        so, zo = out["scale"], out["zero_point"]
        if "input" in kw:
            ti = T[kw["input"]]
            x = env[kw["input"]]
            si, zi = ti["scale"], ti["zero_point"]
        if kind == "FullyConnected":
            xf = x.reshape(len(x), -1).astype(np.int64) - zi
            acc = xf @ kw["weights_q"].astype(np.int64).T
            if kw["bias_q"] is not None:
                acc = acc + kw["bias_q"].astype(np.int64)
            y = _requant(acc, kw["weight_scales"], si, so, zo, kw["activation"])
        elif kind in ("Conv2D", "DepthwiseConv2D"):
            w = kw["weights_q"].astype(np.int64)
            kh, kwd = w.shape[1], w.shape[2]
            win = _pad_windows(x.astype(np.int64) - zi, kh, kwd, kw["stride"], kw["dilation"],
                               kw["padding"], 0)          # (N, OH, OW, C, KH, KW)
            if kind == "Conv2D":
                cin = x.shape[3]
                g = cin // w.shape[3]
                opg = w.shape[0] // g
                parts = []
                for gi in range(g):
                    wi = w[gi * opg:(gi + 1) * opg]                  # (O/g, KH, KW, C/g)
                    xi = win[:, :, :, gi * w.shape[3]:(gi + 1) * w.shape[3]]
                    parts.append(np.einsum("nhwcij,oijc->nhwo", xi, wi))
                acc = np.concatenate(parts, axis=-1)
            else:
                cm = w.shape[3]
                mult = cm // x.shape[3]
                xr = np.repeat(win, mult, axis=3)                     # channel c -> c·M + m
                acc = np.einsum("nhwcij,ijc->nhwc", xr, w[0])
            if kw["bias_q"] is not None:
                acc = acc + kw["bias_q"].astype(np.int64)
            y = _requant(acc, kw["weight_scales"], si, so, zo, kw["activation"])
        elif kind == "Add":
            a, b = (env[n] for n in kw["inputs"])
            ta, tb = (T[n] for n in kw["inputs"])
            sa, sb = np.float32(ta["scale"]), np.float32(tb["scale"])
            twice = 2.0 * max(float(sa), float(sb))
            ma, sha = quantize_multiplier(float(sa) / twice)
            mb, shb = quantize_multiplier(float(sb) / twice)
            mo, sho = quantize_multiplier(twice / ((1 << 20) * float(np.float32(so))))
            va = mbqm((a.astype(np.int64) - ta["zero_point"]) << 20, ma[0], sha[0])
            vb = mbqm((b.astype(np.int64) - tb["zero_point"]) << 20, mb[0], shb[0])
            lo, hi = activation_range(kw["activation"], so, zo)
            y = np.clip(mbqm(va + vb, mo[0], sho[0]) + zo, lo, hi).astype(np.int8)
        elif kind in ("AveragePool2D", "MaxPool2D"):
            kh, kwd = kw["pool"]
            if kind == "MaxPool2D":
                win = _pad_windows(x.astype(np.int64), kh, kwd, kw["stride"], (1, 1),
                                   kw["padding"], -(1 << 20))
                y = win.max(axis=(4, 5)).astype(np.int8)
            else:
                win = _pad_windows(x.astype(np.int64), kh, kwd, kw["stride"], (1, 1),
                                   kw["padding"], 0)
                ones = _pad_windows(np.ones((1,) + x.shape[1:3] + (1,), np.int64), kh, kwd,
                                    kw["stride"], (1, 1), kw["padding"], 0)
                acc = win.sum(axis=(4, 5))
                n = ones.sum(axis=(4, 5))
                r = np.where(acc > 0, acc + n // 2, acc - n // 2)
                y = np.clip(np.trunc(r / n), -128, 127).astype(np.int8)
        elif kind == "Mean":
            n = x.shape[1] * x.shape[2]
            acc = x.astype(np.int64).sum(axis=(1, 2)) - zi * n
            m, sh = quantize_multiplier(float(np.float32(si)) / float(np.float32(so)))
            m, sh = int(m[0]), int(sh[0])
            s2 = min(int(math.floor(math.log2(n))), 32, 31 + sh)
            m2 = (m << s2) // n
            y = np.clip(mbqm(acc, m2, sh - s2) + zo, -128, 127).astype(np.int8)
            if kw["keepdims"]:
                y = y[:, None, None, :]
        elif kind == "Reshape":
            y = x.reshape((len(x),) + tuple(out["shape"]))
        elif kind == "Concatenation":
            arrs = [env[n] for n in kw["inputs"]]
            y = np.concatenate(arrs, axis=kw["axis"] % (arrs[0].ndim - 1) + 1)
        elif kind == "Relu":
            lo = zi
            hi = 127
            if kw.get("max_value") == 6.0:
                _, hi = activation_range("relu6", so, zo)
            y = np.clip(x, lo, hi).astype(np.int8)
        else:
            raise NotImplementedError(kind)
        env[kw["output"]] = y
    return env[spec.outputs[0]]
