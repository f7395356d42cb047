"""``.tflite`` export of a :class:`qatcore.QuantizedModel` (the integer graph).

Each op of the graph (docs/integer-graph.md) becomes the TFLite builtin operator of the same
arithmetic, written as TensorFlow's converter writes a full-integer model:

* activations int8, per tensor, shape ``(batch, *sample_shape)`` (NHWC for images);
* weights int8, symmetric, per-channel scales on ``quantized_dimension`` 0 (CONV_2D, OHWI;
  FULLY_CONNECTED, ``(out, in)``) or 3 (DEPTHWISE_CONV_2D, ``(1, KH, KW, C·M)``); bias
  int32 at ``s_in · s_w[c]`` (float32), zero point 0 (zeros for an op without bias: the
  same arithmetic, and TFLM's int8 CONV_2D needs the tensor);
* fused ReLU / ReLU6 in the operator's options;
* a convolution's explicit padding becomes ``SAME`` or ``VALID`` when it equals one of them;
  otherwise a PAD operator (filled with the input's zero point, which contributes nothing to
  the accumulator, exactly as TFLite's in-bounds test) feeds a ``VALID`` convolution.  A pool
  whose padding is neither is refused (a PAD would change the average's tap count);
* RESHAPE takes its shape as an int32 tensor ``[-1, *shape]`` (LiteRT can resize the
  batch); MEAN its axes, PAD its paddings as int32 tensors;
* with ``float_io=True`` each graph input gets a QUANTIZE (float32 → int8) and each output
  a DEQUANTIZE (int8 → float32).

Runtimes (tests/test_export_tflite_graph.py, measured with tflite-micro 0.dev20261023 and
ai-edge-litert 2.3): every op runs in TensorFlow Lite Micro and in LiteRT, and
``forward_int8(x, rounding=...)`` is what they compute, bit for bit:

* TFLM: ``rounding="gemmlowp"`` (double rounding) for every op;
* LiteRT reference kernels (``BUILTIN_REF``): gemmlowp for every op except
  FULLY_CONNECTED, which rounds once (``"single"``) -- a graph holding both is matched op
  by op, not by one ``forward_int8`` call;
* LiteRT builtin kernels (``BUILTIN_WITHOUT_DEFAULT_DELEGATES``): ``"neon"``, except MEAN
  with ``keepdims`` and DEPTHWISE_CONV_2D with a depth multiplier and stride 2, one LSB
  off on some outputs;
* LiteRT's default XNNPACK delegate: ``"single"`` on every net tested (not guaranteed).

TFLM's int8 RELU6 clamps in the input's quantization and ignores the output's: a
``Relu(max_value=6.0)`` whose output scale or zero point differs from its input's runs
differently there (LiteRT requantizes).

The exporter reads the model duck-typed (``tensors``, ``ops``, ``inputs``, ``outputs``,
``name``; each op by its class name and documented attributes) and never imports
:mod:`qatcore.model`.  :func:`qatcore.export.tflite_read.read_tflite` reads the files back.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Tuple, Union

import numpy as np

from .._files import write_files_atomic
from .tflite import FlatbufferModel, check_write_args, fully_connected, weight_tensors

__all__ = ["tflite_bytes", "write_tflite", "same_padding", "OPS"]

#: The graph ops the writer and the reader know, by class name, with their TFLite operator.
OPS = {"Conv2D": "CONV_2D", "DepthwiseConv2D": "DEPTHWISE_CONV_2D",
       "FullyConnected": "FULLY_CONNECTED", "Add": "ADD", "Mul": "MUL",
       "AveragePool2D": "AVERAGE_POOL_2D", "MaxPool2D": "MAX_POOL_2D", "Mean": "MEAN",
       "Reshape": "RESHAPE", "Concatenation": "CONCATENATION", "Pad": "PAD",
       "Softmax": "SOFTMAX", "Logistic": "LOGISTIC", "HardSwish": "HARD_SWISH",
       "Relu": "RELU"}


def same_padding(in_hw, kernel_hw, stride, dilation=(1, 1)) -> Tuple[int, int, int, int]:
    """TFLite's SAME padding ``(top, bottom, left, right)`` (``ComputePaddingHeightWidth``:
    output ``ceil(in / stride)``, the odd pixel at the bottom / right)."""
    pads = []
    for n, k, s, d in zip(in_hw, kernel_hw, stride, dilation):
        eff = (int(k) - 1) * int(d) + 1
        out = (int(n) + int(s) - 1) // int(s)
        total = max((out - 1) * int(s) + eff - int(n), 0)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


def padding_option(padding, in_hw, kernel_hw, stride, dilation=(1, 1)):
    """``"VALID"``, ``"SAME"`` or None (neither) for an explicit `padding`."""
    padding = tuple(int(p) for p in padding)
    if padding == (0, 0, 0, 0):
        return "VALID"
    if padding == same_padding(in_hw, kernel_hw, stride, dilation):
        return "SAME"
    return None


def _pair(value, what: str) -> Tuple[int, int]:
    t = tuple(int(v) for v in np.ravel(value))
    if len(t) != 2 or min(t) < 1:
        raise ValueError(f"{what} must be two positive integers, got {value!r}")
    return t


def _check_model(model: Any) -> None:
    for attr in ("tensors", "ops", "inputs", "outputs"):
        if not hasattr(model, attr):
            raise TypeError(f"model must be a qatcore.QuantizedModel; {type(model).__name__} "
                            f"has no attribute {attr!r}")
    for i, op in enumerate(model.ops):
        if type(op).__name__ not in OPS:
            raise ValueError(f"op {i} ({type(op).__name__}) has no .tflite operator")


class _GraphWriter:
    """Writes the ops of one model into a :class:`FlatbufferModel`."""

    def __init__(self, model, batch_size: int, float_io: bool):
        self.model = model
        self.n = batch_size
        self.fb = FlatbufferModel()
        self.float_io = float_io
        self.index: Dict[str, int] = {}
        # Every activation gets its tensor up front, in the model's order.
        for name, spec in model.tensors.items():
            suffix = "_int8" if float_io and (name in model.inputs or name in model.outputs) \
                else ""
            self.index[name] = self.fb.act_tensor(name + suffix, (self.n, *spec.shape),
                                                  spec.scale, spec.zero_point)

    def spec(self, name: str):
        return self.model.tensors[name]

    def int32(self, name: str, values) -> int:
        arr = np.asarray(values, dtype="<i4")
        return self.fb.constant(name, arr, self.fb.s.TensorType.INT32)

    def write(self, k: int, op) -> None:
        kind = type(op).__name__
        getattr(self, "_" + kind)(k, op, [self.index[t] for t in op.inputs],
                                  self.index[op.output])

    # -- convolutions ----------------------------------------------------------------
    def _conv_input(self, k: int, op, x: int, kernel_hw):
        """The convolution's input tensor and padding option (a PAD op in front when the
        padding is neither SAME nor VALID)."""
        spec = self.spec(op.inputs[0])
        stride, dilation = _pair(op.stride, "stride"), _pair(op.dilation, "dilation")
        pad = padding_option(op.padding, spec.shape[:2], kernel_hw, stride, dilation)
        if pad is not None:
            return x, pad, stride, dilation
        top, bottom, left, right = (int(p) for p in op.padding)
        h, w, c = spec.shape
        padded = self.fb.act_tensor(f"{op.output}/pad",
                                    (self.n, h + top + bottom, w + left + right, c),
                                    spec.scale, spec.zero_point)
        paddings = self.int32(f"{op.output}/paddings",
                              [[0, 0], [top, bottom], [left, right], [0, 0]])
        self.fb.operator("PAD", [x, paddings], [padded], "PadOptions")
        return padded, "VALID", stride, dilation

    def _Conv2D(self, k, op, ins, out):
        wq = np.asarray(op.weights_q)
        x, pad, stride, dilation = self._conv_input(k, op, ins[0], wq.shape[1:3])
        w, b = weight_tensors(self.fb, op.output, wq, op.weight_scales, op.bias_q,
                              self.spec(op.inputs[0]).scale, 0, wq.shape[0])
        self.fb.operator("CONV_2D", [x, w, b], [out], "Conv2DOptions",
                         padding=getattr(self.fb.s.Padding, pad), strideH=stride[0],
                         strideW=stride[1], dilationHFactor=dilation[0],
                         dilationWFactor=dilation[1],
                         fusedActivationFunction=self.fb.fused[op.activation])

    def _DepthwiseConv2D(self, k, op, ins, out):
        wq = np.asarray(op.weights_q)
        x, pad, stride, dilation = self._conv_input(k, op, ins[0], wq.shape[1:3])
        c_in = self.spec(op.inputs[0]).shape[-1]
        w, b = weight_tensors(self.fb, op.output, wq, op.weight_scales, op.bias_q,
                              self.spec(op.inputs[0]).scale, 3, wq.shape[3])
        self.fb.operator("DEPTHWISE_CONV_2D", [x, w, b], [out], "DepthwiseConv2DOptions",
                         padding=getattr(self.fb.s.Padding, pad), strideH=stride[0],
                         strideW=stride[1], depthMultiplier=wq.shape[3] // c_in,
                         dilationHFactor=dilation[0], dilationWFactor=dilation[1],
                         fusedActivationFunction=self.fb.fused[op.activation])

    def _FullyConnected(self, k, op, ins, out):
        fully_connected(self.fb, op.output, ins[0], out, np.asarray(op.weights_q),
                        op.weight_scales, op.bias_q, self.spec(op.inputs[0]).scale,
                        op.activation)

    # -- pools and reductions ------------------------------------------------------
    def _pool(self, k, op, ins, out, builtin):
        spec = self.spec(op.inputs[0])
        pool, stride = _pair(op.pool, "pool"), _pair(op.stride, "stride")
        pad = padding_option(op.padding, spec.shape[:2], pool, stride)
        if pad is None:
            raise ValueError(f"op {k} ({type(op).__name__}): padding {tuple(op.padding)} is "
                             f"neither SAME {same_padding(spec.shape[:2], pool, stride)} nor "
                             f"VALID; TFLite pools have no explicit padding (a PAD op would "
                             f"change the average's tap count)")
        self.fb.operator(builtin, ins, [out], "Pool2DOptions",
                         padding=getattr(self.fb.s.Padding, pad), strideH=stride[0],
                         strideW=stride[1], filterHeight=pool[0], filterWidth=pool[1],
                         fusedActivationFunction=self.fb.fused[op.activation])

    def _AveragePool2D(self, k, op, ins, out):
        self._pool(k, op, ins, out, "AVERAGE_POOL_2D")

    def _MaxPool2D(self, k, op, ins, out):
        self._pool(k, op, ins, out, "MAX_POOL_2D")

    def _Mean(self, k, op, ins, out):
        ndim = len(self.spec(op.inputs[0]).shape)
        axes = sorted(int(a) % ndim + 1 for a in np.ravel(op.axes))
        self.fb.operator("MEAN", [ins[0], self.int32(f"{op.output}/axes", axes)], [out],
                         "ReducerOptions", keepDims=bool(op.keepdims))

    # -- shape ops -------------------------------------------------------------------
    def _Reshape(self, k, op, ins, out):
        shape = [-1, *self.spec(op.output).shape]
        self.fb.operator("RESHAPE", [ins[0], self.int32(f"{op.output}/shape", shape)], [out],
                         "ReshapeOptions", newShape=shape)

    def _Concatenation(self, k, op, ins, out):
        ndim = len(self.spec(op.output).shape)
        self.fb.operator("CONCATENATION", ins, [out], "ConcatenationOptions",
                         axis=int(op.axis) % ndim + 1,
                         fusedActivationFunction=self.fb.fused[op.activation])

    def _Pad(self, k, op, ins, out):
        rows = [[0, 0]] + [[int(a), int(b)] for a, b in op.paddings]
        self.fb.operator("PAD", [ins[0], self.int32(f"{op.output}/paddings", rows)], [out],
                         "PadOptions")

    # -- element-wise ----------------------------------------------------------------
    def _Add(self, k, op, ins, out):
        self.fb.operator("ADD", ins, [out], "AddOptions",
                         fusedActivationFunction=self.fb.fused[op.activation])

    def _Mul(self, k, op, ins, out):
        self.fb.operator("MUL", ins, [out], "MulOptions",
                         fusedActivationFunction=self.fb.fused[op.activation])

    def _Softmax(self, k, op, ins, out):
        self.fb.operator("SOFTMAX", ins, [out], "SoftmaxOptions",
                         beta=float(np.float32(op.beta)))

    def _Logistic(self, k, op, ins, out):
        self.fb.operator("LOGISTIC", ins, [out])

    def _HardSwish(self, k, op, ins, out):
        self.fb.operator("HARD_SWISH", ins, [out], "HardSwishOptions")

    def _Relu(self, k, op, ins, out):
        if op.max_value is None:
            self.fb.operator("RELU", ins, [out])
        elif float(op.max_value) == 6.0:
            self.fb.operator("RELU6", ins, [out])
        else:
            raise ValueError(f"op {k} (Relu): max_value {op.max_value!r} has no TFLite "
                             f"operator (RELU has none, RELU6 has 6.0)")


def tflite_bytes(model, *, float_io: bool = False, batch_size: int = 1) -> bytes:
    """The ``.tflite`` flatbuffer of a :class:`qatcore.QuantizedModel` (see the module
    docstring).

    Parameters
    ----------
    model : qatcore.QuantizedModel
    float_io : bool, default False
        float32 inputs and outputs (QUANTIZE / DEQUANTIZE at the ends) instead of int8
        codes.
    batch_size : int, default 1
        The batch dimension of every activation tensor (LiteRT can resize it at run time;
        TFLM cannot).

    Returns
    -------
    bytes

    Raises
    ------
    TypeError
        Not a QuantizedModel, `float_io` not a bool, `batch_size` not an integer.
    ValueError
        `batch_size` out of [1, 2^24]; an op TFLite cannot express (a pool whose padding is
        neither SAME nor VALID, a Relu with a ``max_value`` other than 6).
    ImportError
        flatbuffers / tflite-micro missing.
    """
    _check_model(model)
    n = check_write_args(float_io, batch_size)
    w = _GraphWriter(model, n, bool(float_io))
    for k, op in enumerate(model.ops):
        w.write(k, op)
    fb = w.fb
    inputs = [w.index[t] for t in model.inputs]
    outputs = [w.index[t] for t in model.outputs]
    if float_io:
        F32 = fb.s.TensorType.FLOAT32
        q_ops = []
        for i, t in enumerate(model.inputs):
            f = fb.tensor(t, (n, *model.tensors[t].shape), F32)
            fb.operator("QUANTIZE", [f], [inputs[i]], "QuantizeOptions")
            q_ops.append(fb.operators.pop())
            inputs[i] = f
        fb.operators[:0] = q_ops          # the QUANTIZE ops run first
        for i, t in enumerate(model.outputs):
            f = fb.tensor(t, (n, *model.tensors[t].shape), F32)
            fb.operator("DEQUANTIZE", [outputs[i]], [f], "DequantizeOptions")
            outputs[i] = f
    name = getattr(model, "name", "model")
    return fb.finish(inputs, outputs, name=str(name), description="qatcore.QuantizedModel")


def write_tflite(model, path: Union[str, "os.PathLike[str]"], *, float_io: bool = False,
                 batch_size: int = 1) -> int:
    """Write :func:`tflite_bytes` to `path` atomically (a temporary file in the same
    directory, then ``os.replace``: an error leaves nothing behind); returns the size in
    bytes."""
    data = tflite_bytes(model, float_io=float_io, batch_size=batch_size)
    write_files_atomic([(os.fspath(path), data)])
    return len(data)
