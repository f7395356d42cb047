"""Typed use of the public API, checked with ``mypy --strict`` (tests/test_typing.py).

Everything the README and the docstrings show must type-check; the lines marked
``# type: ignore[...]`` are misuses that a type checker has to reject (``--strict``
includes ``--warn-unused-ignores``, so an ignore that stops being needed is an error).
The file also runs (``python tests/typing/usage.py``), so the typed forms are real.
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
from typing import List, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

import qatcore as q
from qatcore import nn

F32 = npt.NDArray[np.float32]


def calibrate(batches: F32) -> Tuple[F32, F32, float, float]:
    config = q.FakeQuantConfig.int8().with_observer(q.ObserverMethod.PERCENTILE)
    by_name = q.FakeQuantConfig(bits=8, symmetric=False, observer="mean_std")
    also = q.FakeQuantConfig(4, True, False, q.ObserverMethod.MOVING_AVERAGE)
    qmin, qmax = also.quant_range()
    assert (qmin, qmax) == (-7.0, 7.0) and by_name.observer is q.ObserverMethod.MEAN_STD
    fq = q.FakeQuantize(config, n_threads=1)
    for batch in batches:
        fq.fake_quantize(batch)
    fq.disable_calibration()
    last = batches[-1]
    y: F32 = fq.forward(last)
    fq.forward(last, out=last)
    grad_in: F32 = fq.backward(np.ones_like(y))
    scale: float = fq.scale
    zero_point: float = fq.zero_point
    params: List[F32] = fq.parameters() + fq.grads()
    assert params == [] and fq.config is config and not fq.calibrating
    return y, grad_in, scale, zero_point


def observe() -> Tuple[float, float]:
    obs = q.QuantObserver("percentile")
    obs2 = q.QuantObserver(q.ObserverMethod.MIN_MAX, n_threads=2)
    obs.observe([1.0, -2.0, 3.5])
    obs2.observe(np.arange(10, dtype=np.float64))
    lo, hi = obs.range()
    clone: q.QuantObserver = copy.copy(obs)
    scale, zp = clone.compute_qparams(q.FakeQuantConfig())
    method: q.ObserverMethod = obs.method
    count: int = obs.count
    assert method.value == "percentile" and count == 1 and lo <= hi and scale > 0
    merged: q.QuantObserver = obs.merge(q.QuantObserver("percentile"))
    restored = q.QuantObserver.from_state(merged.state_dict(), n_threads=1)
    restored.load_state_dict(obs.state_dict())
    fq = q.FakeQuantize.from_state(q.FakeQuantize().state_dict())
    fq.load_state_dict(fq.state_dict())
    return scale, zp


def integer_inference(folder: str) -> int:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((16, 32)).astype(np.float32)
    layer = q.QuantizedLinear.from_float(w, None, 32, 16, q.FakeQuantConfig.int8())
    layer.set_input_scale(0.02)
    layer.set_input_scale(np.float32(0.02), zero_point=0)
    x_q = rng.integers(-127, 128, (4, 32), dtype=np.int8)
    acc: npt.NDArray[np.int32] = layer.forward_quantized(x_q)
    y_q: npt.NDArray[np.int8] = layer.forward_int8(x_q, output_scale=0.05, output_zero_point=0)
    y: F32 = layer.forward(rng.standard_normal((4, 32)))
    # The nine documented attributes, with their types.
    weights_q: npt.NDArray[np.int8] = layer.weights_q
    bias_q: Optional[npt.NDArray[np.int32]] = layer.bias_q
    weight_scale: Union[float, F32] = layer.weight_scale
    input_scale: float = layer.input_scale
    input_zero_point: int = layer.input_zero_point
    in_features: int = layer.in_features
    out_features: int = layer.out_features
    bits: int = layer.bits
    per_channel: bool = layer.per_channel
    output_scale: Union[float, F32] = layer.output_scale
    assert weights_q.shape == (out_features, in_features) and bias_q is None and bits == 8
    assert not per_channel and input_zero_point == 0 and input_scale > 0
    assert isinstance(weight_scale, float) and isinstance(output_scale, float)
    path = os.path.join(folder, "fc.npz")
    layer.save(path)
    again = q.QuantizedLinear.load(path)
    assert again.state_dict().keys() == layer.state_dict().keys()
    wfq, xfq = q.FakeQuantize(), q.FakeQuantize(q.FakeQuantConfig(symmetric=False))
    wfq.fake_quantize(w)
    wfq.disable_calibration()
    xfq.fake_quantize(rng.standard_normal(64))
    xfq.disable_calibration()
    qat = q.QuantizedLinear.from_qat(w, np.zeros(16, np.float32), wfq, xfq)
    assert qat.forward_quantized(x_q).shape == (4, 16) and y.dtype == np.float32
    return int(acc[0, 0]) + int(y_q[0, 0])


def dynamic_and_mixed() -> float:
    dq = q.DynamicQuantizer(q.FakeQuantConfig.int8())
    codes, scale, zp = dq.quantize(np.array([-1.0, 0.0, 0.5, 1.27]))
    back: F32 = dq.dequantize(codes, scale, zp)
    mp = q.MixedPrecision()
    loss: float = mp.scale_loss(0.5)
    arr: F32 = mp.scale_loss(np.ones(3, dtype=np.float32))
    grads = np.ones(4, dtype=np.float32)
    mp.unscale_gradients(grads)
    mp.update(mp.check_overflow(grads))
    q.set_num_threads(1)
    threads: int = q.get_num_threads()
    assert back.shape == (4,) and arr.shape == (3,) and threads == 1
    return loss * mp.loss_scale


def train_with_nn() -> float:
    rng = np.random.default_rng(3)
    model = nn.Sequential([nn.ActivationFakeQuant(), nn.QATLinear(16, 32, seed=0), nn.ReLU(),
                           nn.ActivationFakeQuant(q.FakeQuantConfig(symmetric=False)),
                           nn.QATLinear(32, 4, seed=1, weight_fake_quant=q.FakeQuantConfig.int4())])
    opt = nn.Adam(model.parameters(), model.grads(), lr=1e-2)
    sgd = nn.SGD([np.zeros(1, np.float32)], [np.zeros(1, np.float32)], lr=0.1, momentum=0.9)
    loss_fn = nn.SoftmaxCrossEntropy()
    x = rng.standard_normal((64, 16), dtype=np.float32)
    labels = (x[:, :4] ** 2).argmax(axis=1)
    loss = 0.0
    for _ in range(3):
        loss = loss_fn.forward(model(x), labels)
        model.backward(loss_fn.backward())
        opt.step()
    sgd.step()
    first: nn.Layer = model[1]
    qat = nn.QATLinear.from_linear(nn.Linear(4, 2, seed=0))
    assert isinstance(first, nn.QATLinear) and len(model) == 5 and qat.in_features == 4
    return loss


def histogram(x: F32) -> Tuple[float, float]:
    h = q.HistogramObserver("entropy", bins=256, n_threads=1)
    for batch in x:
        h.observe(batch)
    lo, hi = h.range()
    scale, zero_point = h.compute_qparams(q.FakeQuantConfig.int8())
    per_ch = q.ChannelObserver("min_max", axis=1)
    per_ch.observe(x)
    ranges = per_ch.ranges()
    assert ranges.shape == (x.shape[1], 2) and lo <= hi and zero_point == 0.0
    return scale, float(per_ch.compute_qparams(q.FakeQuantConfig.int8())[0][0])


def misuse() -> None:
    """Never called: each line is a documented misuse a type checker must catch."""
    fq = q.FakeQuantize()
    x = np.zeros(4, dtype=np.float32)
    fq.fake_quantize(x, out="nope")  # type: ignore[arg-type]
    layer = q.QuantizedLinear.from_float(np.ones((2, 2)), None, 2, 2)
    layer.set_input_scale("0.1")  # type: ignore[arg-type]
    layer.forward_int8(x, 0.1)  # type: ignore[arg-type]
    q.FakeQuantConfig(bits="8")  # type: ignore[arg-type]
    q.QuantObserver(3)  # type: ignore[arg-type]
    q.FakeQuantize(q.ObserverMethod.MIN_MAX)  # type: ignore[arg-type]
    q.MixedPrecision().unscale_gradients([1.0])  # type: ignore[arg-type]
    q.set_num_threads("2")  # type: ignore[arg-type]
    nn.QATLinear(4, 2, weight_fake_quant="int8")  # type: ignore[arg-type]
    nn.Adam([np.zeros(1)], [np.zeros(1)], after_step=3)  # type: ignore[arg-type]


def main() -> int:
    rng = np.random.default_rng(0)
    calibrate(rng.standard_normal((4, 256), dtype=np.float32))
    observe()
    with tempfile.TemporaryDirectory() as folder:
        integer_inference(folder)
    dynamic_and_mixed()
    train_with_nn()
    histogram(rng.standard_normal((3, 64), dtype=np.float32))
    return 0


if __name__ == "__main__":
    sys.exit(main())
