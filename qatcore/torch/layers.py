"""QAT layers of the captured graph (:mod:`qatcore.torch.capture`): convolution and Linear
with BatchNorm folded the way integer inference sees it, the average pool that rounds as
TFLite's int8 AVERAGE_POOL_2D, and a fake quantizer with fixed qparams (LOGISTIC, SOFTMAX).

In the captured graph, activation fake quantizers are separate nodes; these layers
fake-quantize only what belongs to them: the (folded) weight per output channel and the
bias at ``s_in · s_w[c]`` (int32 codes, as the integer graph stores it).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..config import FakeQuantConfig
from .modules import FakeQuantize
from .ops import _scale_forward, _zp_forward

__all__ = ["QATConvBn2d", "QATLinearBn", "QATAvgPool2d", "FixedQParamsFakeQuantize",
           "freeze_bn_stats"]

_INT32_MAX = float(2 ** 31 - 1)


def multiply_by_quantized_multiplier(x: Tensor, multiplier: Tensor, shift: Tensor) -> Tensor:
    """TFLite ``MultiplyByQuantizedMultiplier`` (gemmlowp: SaturatingRoundingDoublingHighMul
    then RoundingDivideByPOT) on int64 tensors holding int32 values, broadcasting."""
    i32_min, i32_max = -(1 << 31), (1 << 31) - 1
    left = torch.clamp(shift, min=0)
    right = torch.clamp(-shift, min=0)
    v = torch.clamp(x << left, i32_min, i32_max)
    ab = v * multiplier
    num = ab + torch.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    high = torch.where(num >= 0, num >> 31, -((-num) >> 31))
    mask = (torch.ones_like(right) << right) - 1
    rem = high & mask
    thr = (mask >> 1) + (high < 0).to(torch.int64)
    return (high >> right) + (rem > thr).to(torch.int64)


def _fq_qparams(fq: FakeQuantize):
    """(scale, zero point, shift to int8 codes) tensors of a per-tensor quantizer as its
    forward uses them."""
    s = _scale_forward(fq.scale)[0]
    z = _zp_forward(fq.zero_point, fq.qmin, fq.qmax, fq.config.numerics)[0]
    return s, z, (128 if fq.qmin >= 0 else 0)


def _clamp_activation(y: Tensor, activation: Optional[str]) -> Tensor:
    if activation == "relu":
        return F.relu(y)
    if activation == "relu6":
        return F.hardtanh(y, 0.0, 6.0)
    return y


class _QATWeighted(nn.Module):
    """Shared by :class:`QATConvBn2d` and :class:`QATLinearBn`: weight fake quantizer per
    output channel, optional BatchNorm folded (simulated folding), bias fake-quantized to
    int32 codes at ``s_in · s_w[c]``, fused ReLU / ReLU6 clamp."""

    def __init__(self, layer: nn.Module, bn: Optional[nn.Module], weight: FakeQuantConfig,
                 activation: Optional[str] = None):
        super().__init__()
        if not weight.symmetric:
            raise ValueError("weight quantizers must be symmetric (int8 weights, zero point 0)")
        self.layer = layer
        self.bn = bn
        self.activation = activation
        out = layer.weight.shape[0]
        self.weight_fq = FakeQuantize(weight, axis=0, num_channels=out)
        self.register_buffer("bn_frozen", torch.zeros((), dtype=torch.bool))
        # The input and output activation quantizers (modules of the graph, not
        # registered here): the bias is quantized at s_in times the weight scales, and the
        # integer evaluation requantizes to the output's qparams.
        self._input_fq: Optional[FakeQuantize] = None
        self._output_fq: Optional[FakeQuantize] = None
        #: In eval mode with frozen quantizers, compute the layer as the integer graph
        #: does (int32 accumulators, TFLite's fixed-point requantization): the
        #: fake-quant model then gives the integer model's codes, not only nearly.
        self.integer_eval = True

    # --- folding -------------------------------------------------------------------------
    def _bn_factor(self):
        """(gamma / sqrt(running_var + eps), gamma, beta) of the BatchNorm."""
        bn = self.bn
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
        return gamma / std, gamma, beta

    def _shape(self, n: int, axis: int):
        s = [1] * n
        s[axis] = -1
        return s

    def folded(self):
        """(weight, bias) of the layer with BatchNorm's running statistics folded in
        (float, with autograd): ``W · γ/σ`` and ``β + (b − μ) · γ/σ``."""
        w, b = self.layer.weight, self.layer.bias
        if self.bn is None:
            return w, b
        factor, _, beta = self._bn_factor()
        wf = w * factor.reshape(self._shape(w.dim(), 0))
        b0 = b if b is not None else torch.zeros_like(factor)
        return wf, beta + (b0 - self.bn.running_mean) * factor

    def _bias_scale(self) -> Optional[Tensor]:
        """``s_in · s_w[c]`` in float32 (TFLite's bias scale), or None without an input
        quantizer."""
        if self._input_fq is None:
            return None
        s_in, _, _ = _fq_qparams(self._input_fq)
        return (s_in * _scale_forward(self.weight_fq.scale)).to(torch.float32)

    def bias_codes(self, bias: Tensor) -> Optional[Tensor]:
        """int32 codes of `bias` at ``s_in · s_w[c]`` (ties to even, float32), int64."""
        s = self._bias_scale()
        if s is None:
            return None
        return torch.clamp(torch.round(bias.detach() / s), -_INT32_MAX, _INT32_MAX).to(torch.int64)

    def _quantize_bias(self, bias: Optional[Tensor]) -> Optional[Tensor]:
        if bias is None:
            return None
        s = self._bias_scale()
        if s is None:
            return bias
        with torch.no_grad():
            bq = torch.clamp(torch.round(bias / s), -_INT32_MAX, _INT32_MAX) * s
        return bias + (bq - bias).detach()          # straight-through

    # --- forward -------------------------------------------------------------------------
    def _op(self, x: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
        raise NotImplementedError

    def _can_integer_eval(self) -> bool:
        ins, outs = self._input_fq, self._output_fq
        return (self.integer_eval and not self.training and ins is not None
                and not torch.onnx.is_in_onnx_export()
                and outs is not None and not ins.calibrating and not outs.calibrating
                and not self.weight_fq.calibrating and ins.config.bits <= 8
                and outs.config.bits <= 8)

    def _integer_forward(self, x: Tensor) -> Tensor:
        """The integer graph's computation of this layer on a fake-quantized input:
        exact int32 accumulators (float64 arithmetic on integer values), TFLite's
        per-channel multiplier and shift, gemmlowp rounding, + zero point, clamp to int8;
        returned dequantized (on the output quantizer's grid)."""
        from ..linear import quantize_multiplier, requant_real_multiplier

        with torch.no_grad():
            s_in, _, _ = _fq_qparams(self._input_fq)
            s_out, z_out, shift = _fq_qparams(self._output_fq)
            zp = int(z_out) - shift
            w, b = self.folded()
            ws = _scale_forward(self.weight_fq.scale)
            wq = self.weight_fq(w.detach().float().contiguous())
            wc = torch.round(wq / ws.reshape(self._shape(wq.dim(), 0))).double()
            xc = torch.round(x.detach() * (1.0 / s_in)).double()      # codes minus zp
            acc = self._op(xc, wc, None)
            if b is not None:
                acc = acc + self.bias_codes(b).double().reshape(self._shape(acc.dim(), 1))
            m, sh = quantize_multiplier(requant_real_multiplier(ws.numpy(), float(s_in),
                                                                float(s_out)))
            if m.size == 1:
                m, sh = np.repeat(m, acc.shape[1]), np.repeat(sh, acc.shape[1])
            shape = self._shape(acc.dim(), 1)
            q = multiply_by_quantized_multiplier(
                acc.to(torch.int64), torch.from_numpy(m.astype(np.int64)).reshape(shape),
                torch.from_numpy(sh.astype(np.int64)).reshape(shape))
            q = torch.clamp(q + zp, -128, 127)
            return (q - zp).to(torch.float32) * s_out

    def forward(self, x: Tensor) -> Tensor:
        if self._can_integer_eval():
            y_int = self._integer_forward(x)
            if not torch.is_grad_enabled():
                return _clamp_activation(y_int, self.activation)
            w, b = self.folded()
            y = self._op(x, self.weight_fq(w), self._quantize_bias(b))
            return _clamp_activation(y + (y_int - y).detach(), self.activation)
        if self.bn is not None and self.training and not bool(self.bn_frozen):
            # torch.ao _ConvBnNd._forward_approximate: the folded weight (running std) is
            # fake-quantized, the conv runs without bias, is scaled back by the factor, and
            # the real BatchNorm normalizes with the batch statistics (and updates the
            # running ones). The factor is per output channel and the layer linear in each
            # channel's weights, so conv(x, fq(W·f)) / f = conv(x, fq(W·f) / f): dividing
            # the weights instead of the output saves two activation-sized passes (and
            # their backward) per layer.
            factor, _, _ = self._bn_factor()
            w = self.layer.weight
            shape = self._shape(w.dim(), 0)
            wq = self.weight_fq(w * factor.reshape(shape)) / factor.reshape(shape)
            y = self.bn(self._op(x, wq, self.layer.bias))
        else:
            # What integer inference computes: folded weight and bias, quantized.
            w, b = self.folded()
            y = self._op(x, self.weight_fq(w), self._quantize_bias(b))
        return _clamp_activation(y, self.activation)

    def integer_parameters(self):
        """(weights_q int8 in torch layout, weight scales float32, bias codes int32 or
        None) as the frozen model computes them (eval, running statistics)."""
        if self.weight_fq.calibrating:
            raise ValueError("convert: a quantizer is still calibrating (call freeze(model) "
                             "first)")
        with torch.no_grad():
            w, b = self.folded()
            wq = self.weight_fq(w.detach().float().contiguous())
            ws = _scale_forward(self.weight_fq.scale)
            codes = torch.round(wq / ws.reshape(self._shape(wq.dim(), 0)))
            qmax = self.weight_fq.qmax
            weights_q = torch.clamp(codes, -qmax, qmax).to(torch.int8).numpy()
            bias_q = None
            if b is not None:
                bc = self.bias_codes(b)
                if bc is None:
                    raise ValueError("convert: the layer has no input quantizer for its bias")
                bias_q = bc.to(torch.int32).numpy()
        return weights_q, ws.numpy().astype(np.float32), bias_q

    def set_input_quantizer(self, fq: Optional[FakeQuantize]) -> None:
        """The quantizer of this layer's input (its scale is the bias scale's factor);
        kept as a plain reference, not a submodule (it belongs to the graph)."""
        object.__setattr__(self, "_input_fq", fq)

    def set_output_quantizer(self, fq: Optional[FakeQuantize]) -> None:
        """The quantizer of this layer's output (integer evaluation); a plain reference."""
        object.__setattr__(self, "_output_fq", fq)

    def freeze_bn_stats(self, frozen: bool = True) -> None:
        """Train with the running statistics (folded weights as inference sees them)."""
        self.bn_frozen.fill_(bool(frozen))


class QATConvBn2d(_QATWeighted):
    """``nn.Conv2d`` (any groups) [+ ``nn.BatchNorm2d`` folded] [+ ReLU / ReLU6] for QAT.

    Keeps the original modules as ``layer`` and ``bn`` (their Parameters and buffers);
    the weight is fake-quantized per output channel (``weight_fq``), the bias at
    ``s_in · s_w[c]``. With BatchNorm, training runs torch.ao's simulated folding
    (batch statistics) until :func:`freeze_bn_stats`; eval and frozen statistics run
    the folded layer exactly as the integer graph does.
    """

    def __init__(self, conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d], weight: FakeQuantConfig,
                 activation: Optional[str] = None):
        if conv.padding_mode != "zeros":
            raise ValueError(f"Conv2d padding_mode={conv.padding_mode!r} is not supported "
                             f"(integer convolutions pad with the zero point)")
        super().__init__(conv, bn, weight, activation)

    def _op(self, x, w, b):
        c = self.layer
        return F.conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups)


class QATLinearBn(_QATWeighted):
    """``nn.Linear`` [+ ``nn.BatchNorm1d`` folded] [+ ReLU / ReLU6] for QAT (see
    :class:`QATConvBn2d`)."""

    def _op(self, x, w, b):
        return F.linear(x, w, b)


class QATAvgPool2d(nn.Module):
    """Average pooling whose output is what TFLite's int8 AVERAGE_POOL_2D writes: the sum
    of the in-bounds int8 codes divided by their count, rounded half away from raw 0
    (``(acc ± n/2) / n``), in the input's scale and zero point (straight-through gradient
    to the float average).

    ``kernel_size=None`` is a global pool (``adaptive_avg_pool2d(x, 1)``, ``mean(dim=(2,
    3))``): the kernel is the input's spatial size and, with ``keepdim=False``, the
    output is ``(N, C)``.
    """

    def __init__(self, kernel_size=None, stride=None, padding=(0, 0), keepdim: bool = True):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.keepdim = keepdim
        self._input_fq: Optional[FakeQuantize] = None

    def set_input_quantizer(self, fq: Optional[FakeQuantize]) -> None:
        """The quantizer whose grid the output is rounded to (a plain reference)."""
        object.__setattr__(self, "_input_fq", fq)

    def forward(self, x: Tensor) -> Tensor:
        """The float average with the int8 average's value (straight-through gradient)."""
        if torch.onnx.is_in_onnx_export():
            # ONNX has no int8 average pool: the float average (GlobalAveragePool /
            # AveragePool), requantized by the next QuantizeLinear.
            if self.kernel_size is None:
                y = F.adaptive_avg_pool2d(x, 1)
            else:
                y = F.avg_pool2d(x, self.kernel_size, self.stride, self.padding,
                                 count_include_pad=False)
            return y if self.keepdim else y.flatten(1)
        k = tuple(x.shape[2:]) if self.kernel_size is None else self.kernel_size
        st = k if self.stride is None else self.stride
        y = F.avg_pool2d(x, k, st, self.padding, count_include_pad=False)
        fq = self._input_fq
        if fq is not None:
            with torch.no_grad():
                s, z, shift = _fq_qparams(fq)
                codes = torch.round(x.detach() * (1.0 / s)) + (z - shift)   # raw int8 codes
                acc = torch.round(F.avg_pool2d(codes, k, st, self.padding,
                                               divisor_override=1)).to(torch.int64)
                ones = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype)
                n = torch.round(F.avg_pool2d(ones, k, st, self.padding,
                                             divisor_override=1)).to(torch.int64)
                half = torch.div(n, 2, rounding_mode="floor")
                r = torch.div(torch.where(acc > 0, acc + half, acc - half), n,
                              rounding_mode="trunc")
                yq = (r.to(torch.float32) - (z - shift)) * s
            y = y + (yq - y).detach()
        return y if self.keepdim else y.flatten(1)

    def extra_repr(self) -> str:
        """Kernel, stride, padding and keepdim, for ``repr``."""
        k = "global" if self.kernel_size is None else self.kernel_size
        return (f"kernel_size={k}, stride={self.stride}, padding={self.padding}, "
                f"keepdim={self.keepdim}")


class FixedQParamsFakeQuantize(FakeQuantize):
    """A frozen 8-bit asymmetric fake quantizer with fixed qparams (TFLite's LOGISTIC and
    SOFTMAX outputs: scale 1/256, int8 zero point -128); calibration never changes it."""

    def __init__(self, scale: float = 1.0 / 256.0, zero_point: int = 0):
        super().__init__(FakeQuantConfig(bits=8, symmetric=False, numerics="torch"))
        with torch.no_grad():
            self.scale.fill_(scale)
            self.zero_point.fill_(zero_point)
        self.calibrating_flag.fill_(False)
        self._calibrating = False          # the Python mirror FakeQuantize.calibrating reads

    def enable_calibration(self) -> None:
        """Fixed qparams: nothing to calibrate."""

    def disable_calibration(self) -> None:
        """Fixed qparams: nothing to freeze."""


def freeze_bn_stats(model: nn.Module, frozen: bool = True) -> nn.Module:
    """Switch every folded BatchNorm of `model` to its running statistics (``frozen=True``)
    or back to batch statistics while training; returns `model`."""
    for m in model.modules():
        if isinstance(m, _QATWeighted):
            m.freeze_bn_stats(frozen)
    return model

