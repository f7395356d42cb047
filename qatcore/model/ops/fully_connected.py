"""FULLY_CONNECTED (TFLite ``reference_integer_ops::FullyConnected`` and TFLM's
per-channel variant, ``fully_connected_common.cc``).

``acc[o] = Σ_i w[o, i] · (x[i] - zp_in) + bias[o]`` in int32, then
``MultiplyByQuantizedMultiplier(acc, multiplier[o], shift[o]) + zp_out`` clamped to the
fused activation's range.  Multipliers as TFLite derives them from the float32 scales:
one weight scale, ``double(s_in · s_w) / double(s_out)`` with the product in float32
(``GetQuantizedConvolutionMultipler``); several, ``double(s_in) · double(s_w[o]) /
double(s_out)``.  The engine runs it as one GEMM over the batch on the packed weights
(the input zero point folded into a per-column offset), with the requantization fused.
"""

from __future__ import annotations

from typing import Any, List, Optional

import numpy as np

from ... import _backend
from ...linear import activation_range, quantize_multiplier, requant_real_multiplier
from ._base import (Op, acc_bound_check, check_activation, check_bias, check_name,
                    check_weight_scales, check_weights, frozen, prod)
from ._packed import PackedWeights

__all__ = ["FullyConnected"]


class FullyConnected(Op):
    """int8 fully connected layer (TFLite FULLY_CONNECTED).

    Parameters
    ----------
    input, output : str
        Tensor names.  The input's sample shape is flattened (``in`` = its size); the
        output's shape must be ``(out,)``.
    weights_q : ndarray of int8, shape (out, in)
        Symmetric weight codes in [-127, 127].
    weight_scales : array-like of float
        One scale, or one per output channel (float32).
    bias_q : ndarray of int32, shape (out,), optional
        Bias codes at ``s_in · s_w[o]``.
    activation : {None, "relu", "relu6"}
        Fused activation (the output clamp).

    Attributes
    ----------
    multiplier, shift : ndarray of int32, shape (out,)
        TFLite's per-channel requantization (``QuantizeMultiplier``), set by the model.
    act_min, act_max : int
        The output clamp (``CalculateActivationRangeQuantized``), set by the model.

    Raises
    ------
    TypeError, ValueError
        An argument of the wrong type, dtype, shape or range (the message names it).

    Examples
    --------
    >>> import numpy as np
    >>> fc = FullyConnected("x", "y", np.array([[1, -2]], np.int8), [0.5])
    >>> fc.inputs, fc.output
    (('x',), 'y')
    """

    op_type = "FULLY_CONNECTED"
    _PARAMS = ("activation",)
    _ARRAYS = ("weights_q", "weight_scales", "bias_q")

    def __init__(self, input: str, output: str, weights_q: np.ndarray, weight_scales: Any,
                 bias_q: Optional[np.ndarray] = None, activation: Optional[str] = None
                 ) -> None:
        self._set_io((check_name(input, "input"),), output)
        self.weights_q = check_weights(weights_q, 2)
        out_features = self.weights_q.shape[0]
        self.weight_scales = check_weight_scales(weight_scales, out_features)
        self.bias_q = check_bias(bias_q, out_features)
        self.activation = check_activation(activation)
        acc_bound_check(self.weights_q, self.bias_q, "FullyConnected")
        self._packed = PackedWeights(self.weights_q[None])

    def _bind(self, ins: List[Any], out: Any) -> None:
        (spec,) = ins
        n_out, n_in = self.weights_q.shape
        if prod(spec.shape) != n_in:
            raise ValueError(f"FullyConnected {self.output!r}: input {spec.name!r} has "
                             f"{prod(spec.shape)} elements per sample, weights_q expects "
                             f"{n_in}")
        if tuple(out.shape) != (n_out,):
            raise ValueError(f"FullyConnected {self.output!r}: output shape must be "
                             f"({n_out},), got {tuple(out.shape)}")
        real = requant_real_multiplier(self.weight_scales, spec.scale, out.scale)
        mult, shift = quantize_multiplier(np.broadcast_to(real, (n_out,)))
        self.multiplier = frozen(mult.astype(np.int32))
        self.shift = frozen(shift.astype(np.int32))
        self.act_min, self.act_max = activation_range(self.activation, out.scale,
                                                      out.zero_point)
        self.input_zero_point = int(spec.zero_point)
        self.output_zero_point = int(out.zero_point)
        offset = -self.input_zero_point * self._packed.wsum.astype(np.int64)
        if self.bias_q is not None:
            offset = offset + self.bias_q
        self._col_offset = frozen(offset.astype(np.int32))   # bounded by acc_bound_check
        self._n_in = n_in

    def _run(self, xs: List[np.ndarray], out: np.ndarray, rounding: int,
             n_threads: int) -> None:
        kernels = _backend.kernels
        batch = out.shape[0]
        status = kernels.conv2d_i8(
            xs[0], out, (1, batch, 1, self._n_in), (batch, 1), (1, 1), (1, 1), (1, 1),
            (0, 0), 1, self._packed.for_kernels(kernels), self._packed.wsum,
            self._col_offset, self.multiplier, self.shift, self.output_zero_point,
            self.act_min, self.act_max, self.input_zero_point, True, rounding, n_threads)
        if status:
            raise MemoryError("FullyConnected: could not allocate scratch memory")
