"""Integer models for the export tests: a local container with the interface of
``qatcore.QuantizedSequential`` (built on the reference clamps, so the exports are
checked against more than the container they read), random chains of QuantizedLinear, and the demo MLP trained briefly."""

from __future__ import annotations

import numpy as np

from reference import activation_range_ref

from qatcore import FakeQuantConfig, QuantizedLinear

F32 = np.float32


class Chain:
    """layers / activations / output_scale / output_zero_point, forward_int8 and forward
    with the container's arithmetic (relu clamps at the zero point, relu6 also at
    zp + rint(6 / scale))."""

    def __init__(self, layers, activations, output_scale, output_zero_point):
        self.layers = list(layers)
        self.activations = list(activations)
        self.output_scale = float(F32(output_scale))
        self.output_zero_point = int(output_zero_point)

    def _out_q(self, i):
        if i + 1 < len(self.layers):
            nxt = self.layers[i + 1]
            return nxt.input_scale, nxt.input_zero_point
        return self.output_scale, self.output_zero_point

    def forward_int8(self, x_q):
        h = x_q
        for i, layer in enumerate(self.layers):
            scale, zp = self._out_q(i)
            h = layer.forward_int8(h, scale, zp)
            act = self.activations[i]
            if act is not None:
                lo, hi = activation_range_ref(act, scale, zp)
                h = np.clip(h, lo, hi).astype(np.int8)
        return h

    def quantize_input(self, x):
        """int8 codes of float `x` (round half away from zero, as FakeQuantize)."""
        first = self.layers[0]
        lo, hi = (int(v) for v in first.state_dict()["input_qrange"])
        v = np.asarray(x, F32).reshape(-1, first.in_features) / F32(first.input_scale) \
            + F32(first.input_zero_point)
        q = np.trunc(v + np.copysign(F32(0.49999997), v))
        return np.clip(q, lo, hi).astype(np.int8)

    def forward(self, x):
        q = self.forward_int8(self.quantize_input(x))
        return (q.astype(F32) - F32(self.output_zero_point)) * F32(self.output_scale)


def _zero_point(rng):
    return int(rng.choice([-128, 127, 0, int(rng.integers(-128, 128))]))


def random_layer(rng, in_f, out_f, in_scale, in_zp, per_channel, w_mag, with_bias=True):
    """A QuantizedLinear with weights ~ N(0, w_mag) (per-row magnitudes spread over a
    decade when per-channel), input quantization (in_scale, in_zp), bias codes ~ N(0, 500)."""
    w = rng.normal(size=(out_f, in_f)) * w_mag
    if per_channel:
        w *= 10.0 ** rng.uniform(-1, 1, size=(out_f, 1))
    w = w.astype(F32)
    layer = QuantizedLinear.from_float(w, None, in_f, out_f, FakeQuantConfig.int8(),
                                       per_channel=per_channel)
    state = layer.state_dict()
    state["input_scale"] = F32(in_scale)
    state["input_zero_point"] = np.int32(in_zp)
    if with_bias:
        state["bias_q"] = np.round(rng.normal(size=out_f) * 500).astype(np.int32)
    return QuantizedLinear.from_state_dict(state)


def _real_spread(layer, h):
    real = layer.forward_quantized(h).astype(np.float64) * np.asarray(layer.output_scale,
                                                                        np.float64)
    return float(np.std(real)) or 1.0


def random_model(seed, *, n_layers=None, extreme=False):
    """1..3 layers of sizes 1..300, input scale and weight magnitudes log-uniform in
    1e-6..1e2, zero points often at -128 / 127, per-tensor or per-channel, activations
    None / relu / relu6.  Each output scale comes from the spread of the layer's real
    outputs on random inputs propagated through the chain (times a factor 10^+-3 when
    `extreme`: saturated outputs, multipliers and shifts near their limits)."""
    rng = np.random.default_rng(seed)
    n_layers = int(rng.integers(1, 4)) if n_layers is None else n_layers
    sizes = [int(s) for s in rng.integers(1, 301, size=n_layers + 1)]
    sizes = [min(s | 1, 299) if rng.random() < 0.7 else s for s in sizes]     # mostly odd
    scale = float(10.0 ** rng.uniform(-6, 2))
    zp = _zero_point(rng)
    h = rng.integers(-128, 128, size=(256, sizes[0])).astype(np.int8)
    layers, acts = [], []
    for k in range(n_layers):
        layer = random_layer(rng, sizes[k], sizes[k + 1], scale, zp, bool(rng.random() < 0.5),
                             float(10.0 ** rng.uniform(-6, 2)), with_bias=rng.random() < 0.8)
        layers.append(layer)
        acts.append(rng.choice([None, "relu", "relu6"]))
        factor = 10.0 ** (rng.choice([-3.0, 3.0]) if extreme else rng.uniform(-0.5, 0.5))
        scale = float(F32(_real_spread(layer, h) / 40 * factor))
        zp = _zero_point(rng)
        if acts[-1] is not None and zp > 100 and rng.random() < 0.8:
            zp = _zero_point(rng)              # a ReLU at zero point 127 outputs only 127
        h = Chain([layer], acts[-1:], scale, zp).forward_int8(h)
    return Chain(layers, acts, scale, zp)


def random_codes(model, n, seed):
    """n int8 input rows in the model's input code range, the extremes included."""
    rng = np.random.default_rng(seed)
    first = model.layers[0]
    lo, hi = (int(v) for v in first.state_dict()["input_qrange"])
    x = rng.integers(lo, hi + 1, size=(n, first.in_features)).astype(np.int8)
    x[0], x[1] = lo, hi
    return x


def demo_model(seed=0, epochs=20, n_train=None):
    """The demo MLP (64-128-64-10, ReLU) trained as the demo trains it (float, 20 epochs,
    under a second), post-training quantized and converted with the demo's own pipeline
    (``demo.convert``: output quantizer calibrated on the training rows).  Returns
    (model, X_test, y_test)."""
    from qatcore.demo import mlp as demo

    X, y = demo.load_digits()
    Xtr, ytr, Xte, yte = demo.split_dataset(X, y, 0.2, seed=seed)
    if n_train is not None:
        Xtr, ytr = Xtr[:n_train], ytr[:n_train]
    float_model = demo.build_mlp(seed)
    demo.train(float_model, Xtr, ytr, epochs=epochs, lr=1e-2, seed=seed + 1)
    qat = demo.build_qat_model(float_model, FakeQuantConfig(bits=8), FakeQuantConfig(bits=8))
    demo.calibrate(qat, Xtr)
    for fq in demo._activation_quants(qat) + demo._weight_quants(qat):
        fq.disable_calibration()
    model = demo.convert(qat, Xtr)     # a qatcore.QuantizedSequential
    return model, Xte, yte
