"""ONNX export of a :class:`qatcore.QuantizedModel` (the integer graph) in QDQ form.

Every activation tensor of the graph is a tensor of the ONNX graph holding the same codes
(as uint8, see below).  Each arithmetic op is written as onnxruntime's own quantizer writes it --
``DequantizeLinear`` on its inputs, the float op, ``QuantizeLinear`` to the output's
``(scale, zero_point)`` -- so that onnxruntime's CPU execution provider fuses it into the
integer kernel:

* Conv2D: ``Conv`` (explicit ``pads``, ``group``) on the DequantizeLinear of the int8 OIHW
  weights (per-channel scales, axis 0) and of the int32 bias at ``s_x · s_w`` (axis 0)
  → QLinearConv;
* DepthwiseConv2D: the same with ``group = C``, weights ``(1, KH, KW, C·M)`` reshaped to
  ``(C·M, 1, KH, KW)`` → QLinearConv;
* FullyConnected: ``Gemm(transB=1)`` (an image input is put back in NHWC order and
  flattened first, as TFLite flattens) → QGemm;
* Add / Mul → QLinearAdd / QLinearMul; AveragePool2D: ``AveragePool(count_include_pad=0)``
  → QLinearAveragePool; Mean over the spatial axes: ``GlobalAveragePool`` →
  QLinearGlobalAveragePool (other axes: ``ReduceMean``, float);
* Softmax: ``Softmax`` on the channel axis (a ``Mul`` by beta first) → QLinearSoftmax;
  Logistic: ``Sigmoid`` → QLinearSigmoid; HardSwish: ``HardSwish`` (opset >= 14, float);
  a Relu that changes the scale: ``Relu`` / ``Clip(0, max_value)`` (float).

Ops that move or select codes run on the codes themselves, exactly: ``MaxPool2D``
(``MaxPool``), ``Reshape`` (``Reshape``, with ``Transpose`` where the NCHW order differs
from NHWC's), ``Pad`` (``Pad`` filled with the zero point), ``Concatenation`` (``Concat``
when every input has the output's scale and zero point), ``Relu`` that keeps its scale
(``Clip``).  A fused activation (``relu`` / ``relu6``) is the ``Clip`` of the output codes to TFLite's activation range (``qatcore.linear.
activation_range``), written only when that range is narrower than [-128, 127] (a ReLU into
a zero point of -128 -- what a calibrated model has -- needs nothing).

Layout: the graph takes and returns NHWC, as ``forward_int8``; inside, images (tensors with
a 3-D sample shape ``(H, W, C)``) are NCHW, ONNX's layout, with one ``Transpose`` after each
image input and before each image output (onnxruntime's layout optimizer moves its fused
convolutions to NHWC and removes them).

Inputs and outputs: by default int8 codes, named after the model's tensors, ``(batch,
*shape)`` -- the same arrays ``forward_int8`` takes and returns.  ``float_io=True`` adds a
``QuantizeLinear`` after each input and a ``DequantizeLinear`` before each output (float32
in and out, as ``forward``: the inputs in the model's ``input_layout``, so a model converted
from torch with ``input_layout="NCHW"`` takes ``(batch, C, H, W)``; the input is rounded
half to even, ONNX's rule, where ``quantize_input`` rounds half away from zero).

Inside, activations are **uint8** codes with zero point ``zp + 128`` (the same numbers:
``(q + 128) - (zp + 128) = q - zp``): onnxruntime on x86 fuses QDQ convolutions only with
uint8 activations and converts int8 ones itself only where a quantizer has a single
consumer, so an int8 graph would leave residual branches and the first convolution in
float.  A ``DequantizeLinear`` / ``QuantizeLinear`` pair converts each int8 input (exact:
``(q - zp) · s / s`` rounds to ``q - zp``) and each output back.

Agreement with ``forward_int8`` (TFLite's arithmetic, ``rounding="gemmlowp"``):
onnxruntime requantizes every fused op in float (``acc · s_x · s_w / s_y`` in float32,
rounded half to even), where TFLite multiplies by a Q31 fixed-point multiplier with
double rounding; the two differ only on accumulators whose scaled value lies near a
half-integer, by 1 LSB.  The same holds for ADD (TFLite: inputs shifted left by 20 and
scaled in fixed point), AVERAGE_POOL_2D (TFLite rounds the raw sum half away from zero),
MEAN, CONCATENATION with rescaling, LOGISTIC and HARD_SWISH (TFLite: fixed-point
approximations).  SOFTMAX: TFLite's int8 softmax is a fixed-point approximation of the
exponential (Q5.26 / Q12 with a reciprocal); its codes are within 1 LSB of the exact
softmax rounded (measured: see ``tests/test_export_onnx_graph.py``).  The exact ops above
(the int8 data movers, the clamps) add no difference.  A 1-LSB difference in a hidden code
moves the next op's accumulator by up to ``|w| · s_x`` and can grow through a chain.

Requires the ``onnx`` package; onnxruntime only to run the file.  The exporter reads the
model duck-typed (``tensors``, ``ops``, ``inputs``, ``outputs``, ``name``; each op by its
class name and its documented constructor attributes, docs/integer-graph.md) and never
imports :mod:`qatcore.model`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .._files import write_files_atomic
from ..linear import activation_range
from ._common import PathLike
from .onnx import _import_onnx, check_onnx_path

__all__ = ["to_onnx", "onnx_bytes", "onnx_graph_model", "OPS", "DEFAULT_OPSET"]

#: opset 17: HardSwish (14), per-axis Q/DQ (13), ReduceMean with an ``axes`` attribute (< 18).
DEFAULT_OPSET = 17
#: The graph ops this exporter writes, by class name.
OPS = ("Conv2D", "DepthwiseConv2D", "FullyConnected", "Add", "Mul", "AveragePool2D",
       "MaxPool2D", "Mean", "Reshape", "Concatenation", "Pad", "Softmax", "Logistic",
       "HardSwish", "Relu")
_NHWC_TO_NCHW = (0, 3, 1, 2)
_NCHW_TO_NHWC = (0, 2, 3, 1)
_F32 = np.float32


def _check_model(model: Any) -> None:
    for attr in ("tensors", "ops", "inputs", "outputs"):
        if not hasattr(model, attr):
            raise TypeError(f"model must be a qatcore.QuantizedModel; {type(model).__name__} "
                            f"has no attribute {attr!r}")
    for i, op in enumerate(model.ops):
        if type(op).__name__ not in OPS:
            raise ValueError(f"op {i} ({type(op).__name__}) has no ONNX export")
    for what in ("inputs", "outputs"):
        names = list(getattr(model, what))
        if not names:
            raise ValueError(f"model.{what} is empty")
        for t in names:
            if t not in model.tensors:
                raise ValueError(f"model.{what}: unknown tensor {t!r}")
    for t, spec in model.tensors.items():
        zp = int(spec.zero_point)
        if not -128 <= zp <= 127:
            raise ValueError(f"tensor {t!r}: zero point {zp} is not an int8 code")
        if not (np.isfinite(spec.scale) and _F32(spec.scale) > 0):
            raise ValueError(f"tensor {t!r}: scale {spec.scale!r} must be finite and positive")


def _pair(value: Any) -> Tuple[int, int]:
    t = tuple(int(v) for v in np.ravel(value))
    if len(t) != 2:
        raise ValueError(f"expected two integers, got {value!r}")
    return t  # type: ignore[return-value]


class _Writer:
    """Builds the node list of one model.  ``self.codes[t]`` is the ONNX value holding
    tensor ``t``'s int8 codes (NCHW for images)."""

    def __init__(self, model: Any, float_io: bool, opset: int, helper: Any,
                 numpy_helper: Any) -> None:
        self.model = model
        self.opset = opset
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: List[Any] = []
        self.inits: List[Any] = []
        self.used = set(model.inputs) | set(model.outputs)
        self.codes: Dict[str, str] = {}
        self.float_io = float_io

    # -- names and constants -----------------------------------------------------------
    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name

    def const(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.inits.append(self.numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op_type: str, inputs: Sequence[str], base: str, **attrs: Any) -> str:
        out = self.fresh(base)
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out],
                                                name=self.fresh(f"{base}/{op_type}"),
                                                **attrs))
        return out

    # -- tensors ---------------------------------------------------------------------
    def spec(self, t: str) -> Any:
        return self.model.tensors[t]

    def image(self, t: str) -> bool:
        return len(self.spec(t).shape) == 3

    def qparams(self, t: str, base: str, int8: bool = False) -> Tuple[str, str]:
        """Scale and zero point of `t` as inside the graph (uint8: ``zp + 128``) or, with
        `int8`, as the model has them."""
        spec = self.spec(t)
        zp = np.array(int(spec.zero_point), np.int8) if int8 else \
            np.array(int(spec.zero_point) + 128, np.uint8)
        return (self.const(f"{base}/scale", np.array(spec.scale, _F32)),
                self.const(f"{base}/zero_point", zp))

    def dq(self, t: str) -> str:
        """A DequantizeLinear of tensor `t` (one per consumer, as onnxruntime's quantizer
        writes them)."""
        s, z = self.qparams(t, f"{t}/dq")
        return self.node("DequantizeLinear", [self.codes[t], s, z], f"{t}/dq")

    def q(self, x: str, t: str) -> None:
        """QuantizeLinear of float `x` into tensor `t`'s codes."""
        s, z = self.qparams(t, f"{t}/q")
        self.codes[t] = self.node("QuantizeLinear", [x, s, z], f"{t}")

    def same_qparams(self, a: str, b: str) -> bool:
        sa, sb = self.spec(a), self.spec(b)
        return _F32(sa.scale) == _F32(sb.scale) and int(sa.zero_point) == int(sb.zero_point)

    def clamp(self, t: str, lo: int, hi: int) -> None:
        """Clip of `t`'s codes to the int8 codes [lo, hi] (exact), when that is narrower
        than int8's range."""
        if (lo, hi) == (-128, 127):
            return
        self.codes[t] = self.node(
            "Clip", [self.codes[t], self.const(f"{t}/act_min", np.array(lo + 128, np.uint8)),
                     self.const(f"{t}/act_max", np.array(hi + 128, np.uint8))], f"{t}/act")

    def activation(self, t: str, kind: Optional[str]) -> None:
        spec = self.spec(t)
        self.clamp(t, *activation_range(kind, spec.scale, int(spec.zero_point)))

    def nhwc(self, t: str) -> str:
        """`t`'s codes in the model's (NHWC) order."""
        if self.image(t):
            return self.node("Transpose", [self.codes[t]], f"{t}/nhwc", perm=_NCHW_TO_NHWC)
        return self.codes[t]

    def from_nhwc(self, t: str, value: str) -> None:
        """Set `t`'s codes from `value` in NHWC order."""
        if self.image(t):
            value = self.node("Transpose", [value], f"{t}/nchw", perm=_NHWC_TO_NCHW)
        self.codes[t] = value

    def requantize_codes(self, src: str, value: str, dst: str) -> str:
        """Codes `value` of tensor `src` re-expressed at `dst`'s (scale, zero point)."""
        if self.same_qparams(src, dst):
            return value
        s, z = self.qparams(src, f"{dst}/from_{src}")
        x = self.node("DequantizeLinear", [value, s, z], f"{dst}/from_{src}")
        s, z = self.qparams(dst, f"{dst}/q")
        return self.node("QuantizeLinear", [x, s, z], f"{dst}/requant")

    def axis(self, t: str, axis: int) -> int:
        """The ONNX axis (batch included, NCHW for images) of sample axis `axis` of `t`."""
        ndim = len(self.spec(t).shape)
        a = int(axis) % ndim
        return (2, 3, 1)[a] if ndim == 3 else a + 1

    # -- weights -----------------------------------------------------------------------
    def weights(self, t: str, w_oihw: np.ndarray, scales: Any, bias: Any, x: str) -> List[str]:
        """DequantizeLinear of the OIHW (or (out, in)) int8 weights and of the int32 bias."""
        ws = np.asarray(scales, _F32).reshape(-1)
        ws_value = ws if ws.size > 1 else ws.reshape(())
        w = self.const(f"{t}/weights_q", np.ascontiguousarray(w_oihw, np.int8))
        w_s = self.const(f"{t}/weight_scale", ws_value)
        w_z = self.const(f"{t}/weight_zero_point", np.zeros(ws_value.shape, np.int8))
        out = [self.node("DequantizeLinear", [w, w_s, w_z], f"{t}/weights", axis=0)]
        if bias is not None:
            # int32 codes at s_x · s_w (float32 product, as TFLite and onnxruntime's quantizer)
            bs = (ws_value * _F32(self.spec(x).scale)).astype(_F32)
            b = self.const(f"{t}/bias_q", np.asarray(bias, np.int32).reshape(-1))
            b_s = self.const(f"{t}/bias_scale", bs)
            b_z = self.const(f"{t}/bias_zero_point", np.zeros(bs.shape, np.int32))
            out.append(self.node("DequantizeLinear", [b, b_s, b_z], f"{t}/bias", axis=0))
        return out

    # -- the ops -------------------------------------------------------------------------
    def write(self, k: int, op: Any) -> None:
        kind = type(op).__name__
        try:
            getattr(self, "_" + kind)(op, list(op.inputs), op.output)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"op {k} ({kind}): {exc}") from None

    def _conv(self, op: Any, x: str, y: str, w_oihw: np.ndarray, group: int) -> None:
        if not self.image(x) or not self.image(y):
            raise ValueError("a convolution needs (H, W, C) tensors")
        top, bottom, left, right = (int(p) for p in op.padding)
        if min(top, bottom, left, right) < 0:
            raise ValueError(f"negative padding {tuple(op.padding)}")
        ins = [self.dq(x)] + self.weights(y, w_oihw, op.weight_scales, op.bias_q, x)
        acc = self.node("Conv", ins, f"{y}/conv", kernel_shape=list(w_oihw.shape[2:]),
                        strides=list(_pair(op.stride)), dilations=list(_pair(op.dilation)),
                        pads=[top, left, bottom, right], group=group)
        self.q(acc, y)
        self.activation(y, op.activation)

    def _Conv2D(self, op: Any, ins: List[str], y: str) -> None:
        wq = np.asarray(op.weights_q)
        c_in = self.spec(ins[0]).shape[2]
        if wq.ndim != 4 or c_in % wq.shape[3]:
            raise ValueError(f"weights_q shape {wq.shape} does not fit {c_in} input channels")
        self._conv(op, ins[0], y, wq.transpose(0, 3, 1, 2), c_in // wq.shape[3])

    def _DepthwiseConv2D(self, op: Any, ins: List[str], y: str) -> None:
        wq = np.asarray(op.weights_q)
        c_in = self.spec(ins[0]).shape[2]
        if wq.ndim != 4 or wq.shape[0] != 1 or wq.shape[3] % c_in:
            raise ValueError(f"weights_q shape {wq.shape} does not fit {c_in} input channels")
        # (1, KH, KW, C·M) -> (C·M, 1, KH, KW): group g = input channel c holds outputs
        # c·M .. c·M + M - 1, TFLite's order.
        self._conv(op, ins[0], y, wq.transpose(3, 0, 1, 2), c_in)

    def _FullyConnected(self, op: Any, ins: List[str], y: str) -> None:
        x = ins[0]
        wq = np.asarray(op.weights_q)
        k = int(np.prod(self.spec(x).shape))
        if wq.ndim != 2 or wq.shape[1] != k:
            raise ValueError(f"weights_q shape {wq.shape} does not fit {k} input features")
        saved = self.codes[x]
        if len(self.spec(x).shape) != 1:
            # TFLite flattens the NHWC sample
            flat = self.node("Reshape", [self.nhwc(x), self.const(f"{y}/flat_shape",
                                                                   np.array([-1, k], np.int64))],
                             f"{y}/flat")
            self.codes[x] = flat
        xin = self.dq(x)
        self.codes[x] = saved
        acc = self.node("Gemm", [xin] + self.weights(y, wq, op.weight_scales, op.bias_q, x),
                        f"{y}/gemm", transB=1)
        self.q(acc, y)
        self.activation(y, op.activation)

    def _binary(self, op: Any, ins: List[str], y: str, onnx_op: str) -> None:
        a, b = ins
        if tuple(self.spec(a).shape) != tuple(self.spec(b).shape):
            raise ValueError(f"inputs of different shapes {self.spec(a).shape} and "
                             f"{self.spec(b).shape}")
        self.q(self.node(onnx_op, [self.dq(a), self.dq(b)], f"{y}/{onnx_op.lower()}"), y)
        self.activation(y, op.activation)

    def _Add(self, op: Any, ins: List[str], y: str) -> None:
        self._binary(op, ins, y, "Add")

    def _Mul(self, op: Any, ins: List[str], y: str) -> None:
        self._binary(op, ins, y, "Mul")

    def _pool_attrs(self, op: Any) -> Dict[str, Any]:
        top, bottom, left, right = (int(p) for p in op.padding)
        return dict(kernel_shape=list(_pair(op.pool)), strides=list(_pair(op.stride)),
                    pads=[top, left, bottom, right])

    def _AveragePool2D(self, op: Any, ins: List[str], y: str) -> None:
        acc = self.node("AveragePool", [self.dq(ins[0])], f"{y}/avgpool",
                        count_include_pad=0, **self._pool_attrs(op))
        self.q(acc, y)
        self.activation(y, op.activation)

    def _MaxPool2D(self, op: Any, ins: List[str], y: str) -> None:
        x = ins[0]
        codes = self.node("MaxPool", [self.codes[x]], f"{y}/maxpool", **self._pool_attrs(op))
        self.codes[y] = self.requantize_codes(x, codes, y)   # max commutes with requantizing
        self.activation(y, op.activation)

    def _Mean(self, op: Any, ins: List[str], y: str) -> None:
        x = ins[0]
        ndim = len(self.spec(x).shape)
        axes = sorted({int(a) % ndim for a in np.ravel(op.axes)})
        if ndim == 3 and axes == [0, 1]:
            m = self.node("GlobalAveragePool", [self.dq(x)], f"{y}/mean")   # (N, C, 1, 1)
            self.q(m, y)
            if not op.keepdims:
                self.codes[y] = self.node("Reshape", [self.codes[y], self.const(
                    f"{y}/shape", np.array([-1, *self.spec(y).shape], np.int64))],
                    f"{y}/squeeze")
            return
        saved = self.codes[x]
        self.codes[x] = self.nhwc(x)
        xin = self.dq(x)
        self.codes[x] = saved
        onnx_axes = [a + 1 for a in axes]
        keep = int(bool(op.keepdims))
        if self.opset >= 18:
            m = self.node("ReduceMean", [xin, self.const(f"{y}/axes",
                                                         np.array(onnx_axes, np.int64))],
                          f"{y}/mean", keepdims=keep)
        else:
            m = self.node("ReduceMean", [xin], f"{y}/mean", axes=onnx_axes, keepdims=keep)
        s, z = self.qparams(y, f"{y}/q")
        codes = self.node("QuantizeLinear", [m, s, z], f"{y}/nhwc_codes")
        # the output's sample shape as the model states it (a mean over every axis is (1,))
        codes = self.node("Reshape", [codes, self.const(
            f"{y}/shape", np.array([-1, *self.spec(y).shape], np.int64))], f"{y}/shaped")
        self.from_nhwc(y, codes)

    def _Reshape(self, op: Any, ins: List[str], y: str) -> None:
        x = ins[0]
        shape = [int(d) for d in self.spec(y).shape]
        if int(np.prod(shape)) != int(np.prod(self.spec(x).shape)):
            raise ValueError(f"cannot reshape {self.spec(x).shape} into {tuple(shape)}")
        codes = self.node("Reshape", [self.nhwc(x), self.const(
            f"{y}/shape", np.array([-1, *shape], np.int64))], f"{y}/reshape")
        self.from_nhwc(y, self.requantize_codes(x, codes, y))

    def _Concatenation(self, op: Any, ins: List[str], y: str) -> None:
        axis = self.axis(y, op.axis)
        if all(self.same_qparams(t, y) for t in ins):
            self.codes[y] = self.node("Concat", [self.codes[t] for t in ins], f"{y}/concat",
                                      axis=axis)
        else:
            self.q(self.node("Concat", [self.dq(t) for t in ins], f"{y}/concat", axis=axis), y)
        self.activation(y, op.activation)

    def _Pad(self, op: Any, ins: List[str], y: str) -> None:
        x = ins[0]
        rows = [(int(a), int(b)) for a, b in op.paddings]
        ndim = len(self.spec(x).shape)
        if len(rows) != ndim or min(min(r) for r in rows) < 0:
            raise ValueError(f"paddings {op.paddings!r} must give (before, after) >= 0 for "
                             f"each of the {ndim} sample dimensions")
        order = [rows[a] for a in (2, 0, 1)] if ndim == 3 else rows
        pads = [0] + [r[0] for r in order] + [0] + [r[1] for r in order]
        zp = np.array(int(self.spec(x).zero_point) + 128, np.uint8)
        codes = self.node("Pad", [self.codes[x], self.const(f"{y}/pads",
                                                            np.array(pads, np.int64)),
                                  self.const(f"{y}/fill", zp)], f"{y}/pad", mode="constant")
        self.codes[y] = self.requantize_codes(x, codes, y)

    def _Softmax(self, op: Any, ins: List[str], y: str) -> None:
        x = self.dq(ins[0])
        beta = _F32(getattr(op, "beta", 1.0))
        if beta != 1:
            x = self.node("Mul", [x, self.const(f"{y}/beta", np.array(beta, _F32))],
                          f"{y}/scaled")
        self.q(self.node("Softmax", [x], f"{y}/softmax", axis=self.axis(ins[0], -1)), y)

    def _Logistic(self, op: Any, ins: List[str], y: str) -> None:
        self.q(self.node("Sigmoid", [self.dq(ins[0])], f"{y}/sigmoid"), y)

    def _HardSwish(self, op: Any, ins: List[str], y: str) -> None:
        if self.opset < 14:
            raise ValueError(f"HardSwish needs opset >= 14, got {self.opset}")
        self.q(self.node("HardSwish", [self.dq(ins[0])], f"{y}/hardswish"), y)

    def _Relu(self, op: Any, ins: List[str], y: str) -> None:
        x = ins[0]
        max_value = getattr(op, "max_value", None)
        if self.same_qparams(x, y) and max_value in (None, 6.0):
            # TFLite's RELU / RELU6 with equal scales: the clamp of the codes, exactly
            self.codes[y] = self.codes[x]
            self.activation(y, "relu" if max_value is None else "relu6")
            return
        if max_value is None:
            r = self.node("Relu", [self.dq(x)], f"{y}/relu")
        else:
            r = self.node("Clip", [self.dq(x), self.const(f"{y}/min", np.array(0, _F32)),
                                   self.const(f"{y}/max", np.array(max_value, _F32))],
                          f"{y}/clip")
        self.q(r, y)


def onnx_graph_model(model: Any, *, float_io: bool = False, opset: int = DEFAULT_OPSET
                     ) -> Any:
    """The ``onnx.ModelProto`` of `model` (what :func:`to_onnx` writes), checked with
    ``onnx.checker.check_model``; see :func:`to_onnx`."""
    onnx, helper, numpy_helper = _import_onnx()
    from .onnx import _check_opset
    opset = _check_opset(opset, onnx)
    if not isinstance(float_io, (bool, np.bool_)):
        raise TypeError(f"float_io must be a bool, got {type(float_io).__name__}")
    _check_model(model)
    w = _Writer(model, bool(float_io), opset, helper, numpy_helper)
    INT8, FLOAT = onnx.TensorProto.INT8, onnx.TensorProto.FLOAT
    io_type = FLOAT if float_io else INT8
    graph_inputs = []
    nchw_in = bool(float_io) and getattr(model, "input_layout", "NHWC") == "NCHW"
    for t in model.inputs:
        spec = w.spec(t)
        shape = tuple(spec.shape)
        nchw = nchw_in and len(shape) >= 2
        if nchw:                          # as the model's float entry points take it
            shape = (shape[-1], *shape[:-1])
        graph_inputs.append(helper.make_tensor_value_info(t, io_type, ["batch", *shape]))
        if float_io:
            s, z = w.qparams(t, f"{t}/input_q")
            codes = w.node("QuantizeLinear", [t, s, z], f"{t}/codes")
            if nchw and len(shape) == 3:
                w.codes[t] = codes        # already ONNX's NCHW
            elif nchw:
                perm = [0, *range(2, len(shape) + 1), 1]
                w.from_nhwc(t, w.node("Transpose", [codes], f"{t}/nhwc", perm=perm))
            else:
                w.from_nhwc(t, codes)
            continue
        w.from_nhwc(t, t)
        # int8 codes -> uint8 codes + 128, exactly: (q - zp)·s / s rounds to q - zp
        s, z = w.qparams(t, f"{t}/input_dq", int8=True)
        real = w.node("DequantizeLinear", [w.codes[t], s, z], f"{t}/input_dq")
        s, z = w.qparams(t, f"{t}/input_q")
        w.codes[t] = w.node("QuantizeLinear", [real, s, z], f"{t}/codes")
    for k, op in enumerate(model.ops):
        for t in op.inputs:
            if t not in w.codes:
                raise ValueError(f"op {k} ({type(op).__name__}): input {t!r} is not produced "
                                 f"before it is used")
        w.write(k, op)
    graph_outputs = []
    for t in model.outputs:
        spec = w.spec(t)
        s, z = w.qparams(t, f"{t}/output_dq")
        if float_io:
            w.nodes.append(helper.make_node("DequantizeLinear", [w.nhwc(t), s, z], [t],
                                            name=w.fresh(f"{t}/output")))
        else:
            real = w.node("DequantizeLinear", [w.nhwc(t), s, z], f"{t}/output_dq")
            s, z = w.qparams(t, f"{t}/output_q", int8=True)
            w.nodes.append(helper.make_node("QuantizeLinear", [real, s, z], [t],
                                            name=w.fresh(f"{t}/output")))
        graph_outputs.append(helper.make_tensor_value_info(t, io_type, ["batch", *spec.shape]))
    graph = helper.make_graph(w.nodes, str(getattr(model, "name", "model")), graph_inputs,
                              graph_outputs, initializer=w.inits)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="qatcore",
                              ir_version=helper.find_min_ir_version_for(opsets))
    proto.doc_string = ("qatcore.QuantizedModel in QDQ form: "
                        + ("float32" if float_io else "int8 code") + " NHWC inputs "
                        + ", ".join(f"{t} (scale {w.spec(t).scale!r}, zero point "
                                    f"{int(w.spec(t).zero_point)})" for t in model.inputs)
                        + "; outputs "
                        + ", ".join(f"{t} (scale {w.spec(t).scale!r}, zero point "
                                    f"{int(w.spec(t).zero_point)})" for t in model.outputs))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def onnx_bytes(model: Any, *, float_io: bool = False, opset: int = DEFAULT_OPSET) -> bytes:
    """The serialized ONNX model :func:`to_onnx` writes."""
    return onnx_graph_model(model, float_io=float_io, opset=opset).SerializeToString()


def to_onnx(model: Any, path: PathLike, *, float_io: bool = False,
            opset: int = DEFAULT_OPSET) -> str:
    """Write a :class:`qatcore.QuantizedModel` as an ONNX file in QDQ form (see the module
    docstring).

    Parameters
    ----------
    model : qatcore.QuantizedModel
        Read through ``tensors``, ``ops``, ``inputs``, ``outputs`` and ``name``.
    path : path
        The ``.onnx`` file; its directory must exist.  Written to a temporary file and
        renamed into place.
    float_io : bool, default False
        False: int8 NHWC codes in and out, the arrays ``forward_int8`` takes and returns.
        True: float32 NHWC in (QuantizeLinear, half to even) and float32 out.
    opset : int, default 17
        ONNX opset, 13 to the newest the installed ``onnx`` knows (HardSwish needs 14).

    Returns
    -------
    str
        `path`.

    Raises
    ------
    ImportError
        The ``onnx`` package is missing.
    TypeError, ValueError
        Not a QuantizedModel, an op without an ONNX form, a bad `opset`, `float_io` or
        `path`; nothing is written.

    Notes
    -----
    onnxruntime requantizes in float (ties to even), so its codes can differ from
    ``forward_int8`` by 1 LSB per op; the module docstring says where.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> class Spec:
    ...     def __init__(self, name, shape, scale, zero_point):
    ...         self.name, self.shape = name, shape
    ...         self.scale, self.zero_point = scale, zero_point
    >>> class MaxPool2D:                       # any op with the contract's attributes
    ...     inputs, output = ("x",), "y"
    ...     pool, stride, padding, activation = (2, 2), (2, 2), (0, 0, 0, 0), None
    >>> class Model:
    ...     tensors = {"x": Spec("x", (4, 4, 3), 0.1, 0), "y": Spec("y", (2, 2, 3), 0.1, 0)}
    ...     ops, inputs, outputs, name = [MaxPool2D()], ["x"], ["y"], "pool"
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = to_onnx(Model(), os.path.join(d, "pool.onnx"))
    ...     os.path.getsize(path) > 0
    True
    """
    path = check_onnx_path(path)
    data = onnx_bytes(model, float_io=float_io, opset=opset)
    write_files_atomic([(path, data)])
    return path
