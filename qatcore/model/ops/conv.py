"""CONV_2D and DEPTHWISE_CONV_2D (TFLite ``reference_integer_ops::ConvPerChannel`` and
``DepthwiseConvPerChannel``, tflite-micro ``conv.h`` / ``depthwise_conv.h``).

For each output pixel and channel: ``acc = Σ w · (x - zp_in)`` over the taps that fall
inside the image (a padded tap contributes nothing), ``+ bias``, then
``MultiplyByQuantizedMultiplier(acc, multiplier[c], shift[c]) + zp_out`` clamped to the
fused activation's range.  Multipliers: ``double(s_in) · double(s_w[c]) / double(s_out)``
for every channel, per-tensor weights included (``PopulateConvolutionQuantizationParams``).

Tap ``(ky, kx)`` of output ``(oy, ox)`` reads input ``(oy·sh - top + ky·dh,
ox·sw - left + kx·dw)``.  The output size is ``(H + top + bottom - ((KH - 1)·dh + 1)) //
sh + 1`` (TFLite's, for the SAME/VALID paddings it derives; :func:`same_padding`).

Engine: CONV_2D is im2col (the input zero point in padded taps, so ``w · (zp - zp) = 0``)
into a scratch buffer, the int8 GEMM on weights packed once, and the per-channel
requantization as the GEMM's epilogue; a 1x1 stride-1 unpadded convolution skips the
im2col.  DEPTHWISE_CONV_2D has a direct C kernel.  Both split the batch across threads.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from ... import _backend
from ...linear import activation_range, quantize_multiplier
from ._base import (Op, acc_bound_check, check_activation, check_bias,
                    check_ints, check_name, check_weight_scales, check_weights,
                    conv_out_size, frozen)
from ._packed import PackedWeights

__all__ = ["Conv2D", "DepthwiseConv2D", "same_padding"]


def same_padding(in_hw: Sequence[int], kernel_hw: Sequence[int], stride: Sequence[int] = (1, 1),
                 dilation: Sequence[int] = (1, 1)) -> Tuple[int, int, int, int]:
    """TFLite's SAME padding ``(top, bottom, left, right)`` of a window op.

    Output size ``ceil(in / stride)``; total padding ``max((out - 1)·stride +
    (k - 1)·dilation + 1 - in, 0)``, the smaller half before (TFLite
    ``ComputePaddingHeightWidth``).

    Examples
    --------
    >>> same_padding((32, 32), (3, 3), (2, 2))
    (0, 1, 0, 1)
    >>> same_padding((5, 5), (3, 3))
    (1, 1, 1, 1)
    """
    in_hw = check_ints(in_hw, 2, "in_hw", 1)
    kernel_hw = check_ints(kernel_hw, 2, "kernel_hw", 1)
    stride = check_ints(stride, 2, "stride", 1)
    dilation = check_ints(dilation, 2, "dilation", 1)
    pads = []
    for size, k, s, d in zip(in_hw, kernel_hw, stride, dilation):
        out = (size + s - 1) // s
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        pads += [total // 2, total - total // 2]
    return tuple(pads)  # type: ignore[return-value]


def _real_multipliers_per_channel(weight_scales: np.ndarray, s_in: float, s_out: float,
                                  channels: int) -> Tuple[np.ndarray, np.ndarray]:
    real = (np.float64(np.float32(s_in)) * weight_scales.astype(np.float64)
            / np.float64(np.float32(s_out)))
    mult, shift = quantize_multiplier(np.broadcast_to(real, (channels,)))
    return frozen(mult.astype(np.int32)), frozen(shift.astype(np.int32))


class _Window(Op):
    """Geometry shared by the convolutions."""

    def _geometry(self, stride: Any, dilation: Any, padding: Any) -> None:
        self.stride = check_ints(stride, 2, "stride", 1)
        self.dilation = check_ints(dilation, 2, "dilation", 1)
        self.padding = check_ints(padding, 4, "padding", 0)

    def _out_hw(self, in_shape: Tuple[int, ...], kernel: Tuple[int, int]) -> Tuple[int, int]:
        top, bottom, left, right = self.padding
        oh = conv_out_size(in_shape[0], kernel[0], self.stride[0], self.dilation[0], top, bottom)
        ow = conv_out_size(in_shape[1], kernel[1], self.stride[1], self.dilation[1], left, right)
        if oh < 1 or ow < 1:
            raise ValueError(f"{type(self).__name__} {self.output!r}: kernel {kernel} with "
                             f"dilation {self.dilation} does not fit the padded input "
                             f"{in_shape[:2]}")
        return oh, ow


class Conv2D(_Window):
    """int8 2-D convolution, NHWC, OHWI weights, optional groups (TFLite CONV_2D).

    Parameters
    ----------
    input, output : str
        Tensor names; sample shapes ``(H, W, C_in)`` and ``(OH, OW, O)``.
    weights_q : ndarray of int8, shape (O, KH, KW, C_in // groups)
        Symmetric codes in [-127, 127]; ``groups = C_in // weights_q.shape[3]``.
    weight_scales : array-like of float
        One scale or one per output channel (axis 0).
    bias_q : ndarray of int32, shape (O,), optional
    stride, dilation : (int, int)
    padding : (top, bottom, left, right)
        Explicit, non-negative (:func:`same_padding` gives TFLite's SAME).
    activation : {None, "relu", "relu6"}

    Attributes
    ----------
    groups : int
        Set by the model from the input's channels.
    multiplier, shift : ndarray of int32, shape (O,)
    act_min, act_max : int
        Computed by the model as TFLite's ``Prepare`` does.

    Raises
    ------
    TypeError, ValueError
        An argument of the wrong type, dtype, shape or range (the message names it).

    Examples
    --------
    >>> import numpy as np
    >>> conv = Conv2D("x", "y", np.ones((4, 3, 3, 2), np.int8), [0.1], padding=(1, 1, 1, 1))
    >>> conv.stride, conv.padding
    ((1, 1), (1, 1, 1, 1))
    """

    op_type = "CONV_2D"
    _PARAMS = ("stride", "dilation", "padding", "activation")
    _ARRAYS = ("weights_q", "weight_scales", "bias_q")

    def __init__(self, input: str, output: str, weights_q: np.ndarray, weight_scales: Any,
                 bias_q: Optional[np.ndarray] = None, stride: Sequence[int] = (1, 1),
                 dilation: Sequence[int] = (1, 1),
                 padding: Sequence[int] = (0, 0, 0, 0), activation: Optional[str] = None
                 ) -> None:
        self._set_io((check_name(input, "input"),), output)
        self.weights_q = check_weights(weights_q, 4)
        o = self.weights_q.shape[0]
        self.weight_scales = check_weight_scales(weight_scales, o)
        self.bias_q = check_bias(bias_q, o)
        self._geometry(stride, dilation, padding)
        self.activation = check_activation(activation)
        acc_bound_check(self.weights_q.reshape(o, -1), self.bias_q, "Conv2D")
        self._packed_cache: Optional[PackedWeights] = None
        self.groups = 0

    def _bind(self, ins: List[Any], out: Any) -> None:
        (spec,) = ins
        name = f"Conv2D {self.output!r}"
        if len(spec.shape) != 3:
            raise ValueError(f"{name}: input {spec.name!r} must be (H, W, C), got "
                             f"{tuple(spec.shape)}")
        o, kh, kw, ci = self.weights_q.shape
        c = spec.shape[2]
        if c % ci:
            raise ValueError(f"{name}: input channels {c} are not a multiple of "
                             f"weights_q.shape[3] = {ci}")
        groups = c // ci
        if o % groups:
            raise ValueError(f"{name}: {o} output channels do not split into {groups} groups")
        oh, ow = self._out_hw(tuple(spec.shape), (kh, kw))
        if tuple(out.shape) != (oh, ow, o):
            raise ValueError(f"{name}: output shape must be {(oh, ow, o)}, got "
                             f"{tuple(out.shape)}")
        if self._packed_cache is None or self.groups != groups:
            w = np.ascontiguousarray(self.weights_q.reshape(groups, o // groups, -1))
            self._packed_cache = PackedWeights(w)
        self.groups = groups
        self.multiplier, self.shift = _real_multipliers_per_channel(
            self.weight_scales, spec.scale, out.scale, o)
        self.act_min, self.act_max = activation_range(self.activation, out.scale,
                                                      out.zero_point)
        self.input_zero_point = int(spec.zero_point)
        self.output_zero_point = int(out.zero_point)
        offset = -self.input_zero_point * self._packed_cache.wsum.astype(np.int64)
        if self.bias_q is not None:
            offset = offset + self.bias_q
        self._col_offset = frozen(offset.astype(np.int32))
        h, w_, _ = spec.shape
        self._direct = (kh == 1 and kw == 1 and self.stride == (1, 1) and groups == 1
                        and self.padding == (0, 0, 0, 0))
        self._geom = ((h, w_, c), (oh, ow), (kh, kw), self.stride, self.dilation,
                      (self.padding[0], self.padding[2]))

    def _run(self, xs: List[np.ndarray], out: np.ndarray, rounding: int,
             n_threads: int) -> None:
        kernels = _backend.kernels
        (h, w, c), out_hw, kernel, stride, dilation, pad_tl = self._geom
        batch = out.shape[0]
        if self._direct:
            # one GEMM over every pixel of the batch
            in_shape, out_hw = (1, batch * h, w, c), (batch * h, w)
        else:
            in_shape = (batch, h, w, c)
        status = kernels.conv2d_i8(
            xs[0], out, in_shape, out_hw, kernel, stride, dilation, pad_tl, self.groups,
            self._packed_cache.for_kernels(kernels), self._packed_cache.wsum,
            self._col_offset, self.multiplier, self.shift, self.output_zero_point,
            self.act_min, self.act_max, self.input_zero_point, self._direct, rounding,
            n_threads)
        if status:
            raise MemoryError("Conv2D: could not allocate scratch memory")


class DepthwiseConv2D(_Window):
    """int8 depthwise 2-D convolution, NHWC (TFLite DEPTHWISE_CONV_2D).

    Parameters
    ----------
    input, output : str
        Tensor names; sample shapes ``(H, W, C)`` and ``(OH, OW, C · M)``.
    weights_q : ndarray of int8, shape (1, KH, KW, C · M)
        Symmetric codes; output channel ``ic · M + m`` filters input channel ``ic``.
    weight_scales : array-like of float
        One scale or one per output channel (axis 3).
    bias_q : ndarray of int32, shape (C · M,), optional
    stride, dilation : (int, int)
    padding : (top, bottom, left, right)
    activation : {None, "relu", "relu6"}

    Attributes
    ----------
    depth_multiplier : int
        ``M``, set by the model from the input's channels.
    multiplier, shift : ndarray of int32, shape (C · M,)
    act_min, act_max : int

    Raises
    ------
    TypeError, ValueError
        An argument of the wrong type, dtype, shape or range (the message names it).

    Examples
    --------
    >>> import numpy as np
    >>> dw = DepthwiseConv2D("x", "y", np.ones((1, 3, 3, 8), np.int8), [0.1])
    >>> dw.op_type
    'DEPTHWISE_CONV_2D'
    """

    op_type = "DEPTHWISE_CONV_2D"
    _PARAMS = ("stride", "dilation", "padding", "activation")
    _ARRAYS = ("weights_q", "weight_scales", "bias_q")

    def __init__(self, input: str, output: str, weights_q: np.ndarray, weight_scales: Any,
                 bias_q: Optional[np.ndarray] = None, stride: Sequence[int] = (1, 1),
                 dilation: Sequence[int] = (1, 1),
                 padding: Sequence[int] = (0, 0, 0, 0), activation: Optional[str] = None
                 ) -> None:
        self._set_io((check_name(input, "input"),), output)
        self.weights_q = check_weights(weights_q, 4)
        if self.weights_q.shape[0] != 1:
            raise ValueError(f"weights_q must have shape (1, KH, KW, C*M), got "
                             f"{self.weights_q.shape}")
        cm = self.weights_q.shape[3]
        self.weight_scales = check_weight_scales(weight_scales, cm)
        self.bias_q = check_bias(bias_q, cm)
        self._geometry(stride, dilation, padding)
        self.activation = check_activation(activation)
        acc_bound_check(self.weights_q.reshape(-1, cm).T, self.bias_q, "DepthwiseConv2D")
        self._w3 = frozen(self.weights_q.reshape(self.weights_q.shape[1:]))
        self.depth_multiplier = 0

    def _bind(self, ins: List[Any], out: Any) -> None:
        (spec,) = ins
        name = f"DepthwiseConv2D {self.output!r}"
        if len(spec.shape) != 3:
            raise ValueError(f"{name}: input {spec.name!r} must be (H, W, C), got "
                             f"{tuple(spec.shape)}")
        _, kh, kw, cm = self.weights_q.shape
        c = spec.shape[2]
        if cm % c:
            raise ValueError(f"{name}: weights_q.shape[3] = {cm} is not a multiple of the "
                             f"input channels {c}")
        self.depth_multiplier = cm // c
        oh, ow = self._out_hw(tuple(spec.shape), (kh, kw))
        if tuple(out.shape) != (oh, ow, cm):
            raise ValueError(f"{name}: output shape must be {(oh, ow, cm)}, got "
                             f"{tuple(out.shape)}")
        self.multiplier, self.shift = _real_multipliers_per_channel(
            self.weight_scales, spec.scale, out.scale, cm)
        self.act_min, self.act_max = activation_range(self.activation, out.scale,
                                                      out.zero_point)
        self.input_zero_point = int(spec.zero_point)
        self.output_zero_point = int(out.zero_point)
        self._geom = ((spec.shape[0], spec.shape[1], c), (oh, ow), (kh, kw), self.stride,
                      self.dilation, (self.padding[0], self.padding[2]))

    def _run(self, xs: List[np.ndarray], out: np.ndarray, rounding: int,
             n_threads: int) -> None:
        (h, w, c), out_hw, kernel, stride, dilation, pad_tl = self._geom
        status = _backend.kernels.depthwise_conv2d_i8(
            xs[0], out, (out.shape[0], h, w, c), out_hw, kernel, stride, dilation, pad_tl,
            self.depth_multiplier, self._w3, self.bias_q, -self.input_zero_point,
            self.multiplier, self.shift, self.output_zero_point, self.act_min, self.act_max,
            rounding, n_threads)
        if status:
            raise MemoryError("DepthwiseConv2D: could not allocate scratch memory")
