"""``.tflite`` export of a :class:`qatcore.QuantizedSequential`.

One int8 FULLY_CONNECTED operator per layer, as TFLite's int8 quantization spec wants it:

* weights int8 ``(out_features, in_features)`` in [-127, 127], zero point 0, one scale
  (per-tensor) or one per output channel (``quantized_dimension`` 0);
* bias int32 ``(out_features,)`` at scale ``s_in · s_w`` (per channel), zero point 0 (zeros
  for a layer without bias: the same arithmetic);
* activations int8 with the container's scales and zero points; ReLU / ReLU6 as the
  operator's fused activation, which TFLite turns into the same output clamp as qatcore
  (``CalculateActivationRangeQuantized``);
* with ``float_io=True`` a QUANTIZE (float32 → int8) in front and a DEQUANTIZE
  (int8 → float32) behind, so the model takes and returns float32.

The requantization multipliers are not stored: every runtime derives them from the float32
scales, and qatcore derives its own the same way (see
:func:`qatcore.linear.requant_real_multiplier`).  The runtimes then round the fixed-point
product in three different ways, and ``QuantizedSequential.forward_int8(x, rounding=...)``
reproduces each bit for bit (tests/test_export_tflite.py):

* TensorFlow Lite Micro: gemmlowp's double rounding, ``rounding="gemmlowp"`` -- the
  default of ``forward_int8``, qatcore's kernels and its C export;
* LiteRT (ai-edge-litert 2.3) reference kernels, ``OpResolverType.BUILTIN_REF``: built
  with ``TFLITE_SINGLE_ROUNDING``, ``rounding="single"``;
* LiteRT builtin (optimized) kernels, ``BUILTIN_WITHOUT_DEFAULT_DELEGATES``: NEON's
  vqrdmulh + rounding shift (through NEON_2_SSE on x86), ``rounding="neon"``.

The three differ by one LSB at near-ties only (about 0.1% of the outputs of a random
chain).  LiteRT's default XNNPACK delegate requantizes its own way (within one LSB here).
With ``float_io=True``, the reference kernels and TFLM quantize the input as
``input_numerics="tflite"`` and dequantize as ``(q - zp) * s``; LiteRT's optimized
QUANTIZE / DEQUANTIZE use ``round(x / s + zp)`` and ``q * s - zp * s``.

The flatbuffer is built with the flatc-generated object API of TFLite's schema that ships
in the ``tflite-micro`` wheel (``schema_py_generated``) and the ``flatbuffers`` package:
``pip install "qatcore[export]"``.
"""

from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np

from .._files import write_files_atomic

__all__ = ["tflite_bytes", "write_tflite"]

# FlatbufferModel, weight_tensors, fully_connected, schema, check_write_args and
# OP_VERSIONS are shared with the graph writer (tflite_graph) and reader (tflite_read).

#: Operator versions written (the lowest that has the int8 kernels; runtimes accept any
#: registered version).  The graph writer (:mod:`qatcore.export.tflite_graph`) uses the same
#: table.
OP_VERSIONS = {"FULLY_CONNECTED": 4, "QUANTIZE": 2, "DEQUANTIZE": 2, "CONV_2D": 3,
               "DEPTHWISE_CONV_2D": 3, "ADD": 2, "MUL": 2, "AVERAGE_POOL_2D": 2,
               "MAX_POOL_2D": 2, "MEAN": 2, "RESHAPE": 1, "CONCATENATION": 2, "PAD": 2,
               "SOFTMAX": 2, "LOGISTIC": 2, "HARD_SWISH": 1, "RELU": 2, "RELU6": 2}


def schema():
    """tflite-micro's flatc-generated TFLite schema module (the object API the writers use
    and the enum values the reader checks against)."""
    try:
        import flatbuffers  # noqa: F401
        from tflite_micro.tensorflow.lite.micro.python import schema_py_generated
    except ImportError as exc:
        raise ImportError('the .tflite export needs flatbuffers and tflite-micro (its TFLite '
                          'schema): pip install "qatcore[export]"') from exc
    return schema_py_generated


def check_write_args(float_io, batch_size) -> int:
    """The writers' shared arguments: `float_io` a bool, `batch_size` in [1, 2^24]."""
    from .._checks import check_index

    if not isinstance(float_io, (bool, np.bool_)):
        raise TypeError(f"float_io must be a bool, got {type(float_io).__name__}")
    batch_size = check_index(batch_size, "batch_size")
    if not 1 <= batch_size <= 1 << 24:
        raise ValueError(f"batch_size must be in [1, 2^24], got {batch_size}")
    return batch_size


class FlatbufferModel:
    """A one-subgraph ``.tflite`` model under construction (flatc object API): buffers
    (buffer 0 is the empty sentinel, by convention), tensors, operator codes and
    operators, appended in execution order; :meth:`finish` packs the flatbuffer."""

    def __init__(self):
        self.s = s = schema()
        self.buffers = [s.BufferT()]
        self.tensors = []
        self.opcodes = []
        self.operators = []
        self.fused = {None: s.ActivationFunctionType.NONE,
                      "relu": s.ActivationFunctionType.RELU,
                      "relu6": s.ActivationFunctionType.RELU6}

    def buffer(self, array: np.ndarray) -> int:
        b = self.s.BufferT()
        b.data = np.ascontiguousarray(array).view(np.uint8).ravel()
        self.buffers.append(b)
        return len(self.buffers) - 1

    def quant(self, scales, zero_points, dim: int = 0):
        q = self.s.QuantizationParametersT()
        q.scale = [float(np.float32(v)) for v in np.ravel(scales)]
        q.zeroPoint = [int(z) for z in np.ravel(zero_points)]
        q.quantizedDimension = int(dim)
        return q

    def tensor(self, name: str, shape, ttype: int, buf: int = 0, q=None) -> int:
        t = self.s.TensorT()
        t.name = name
        t.shape = [int(d) for d in shape]
        t.type = ttype
        t.buffer = buf
        t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def constant(self, name: str, array: np.ndarray, ttype: int, q=None) -> int:
        """A constant tensor holding `array` (already in the file's little-endian dtype)."""
        return self.tensor(name, array.shape, ttype, self.buffer(array), q)

    def act_tensor(self, name: str, shape, scale: float, zero_point: int) -> int:
        """A per-tensor int8 activation."""
        return self.tensor(name, shape, self.s.TensorType.INT8,
                           q=self.quant([scale], [zero_point]))

    def opcode(self, op: str) -> int:
        builtin = getattr(self.s.BuiltinOperator, op)
        for i, (b, _) in enumerate(self.opcodes):
            if b == builtin:
                return i
        self.opcodes.append((builtin, OP_VERSIONS[op]))
        return len(self.opcodes) - 1

    def operator(self, op: str, inputs, outputs, options_name: Optional[str] = None,
                 **options) -> None:
        """Append operator `op` (a BuiltinOperator name); `options_name` is its options
        table (e.g. ``"Conv2DOptions"``), `options` that table's fields (object API
        names)."""
        o = self.s.OperatorT()
        o.opcodeIndex = self.opcode(op)
        o.inputs = [int(i) for i in inputs]
        o.outputs = [int(i) for i in outputs]
        if options_name is not None:
            table = getattr(self.s, options_name + "T")()
            for key, value in options.items():
                setattr(table, key, value)
            o.builtinOptionsType = getattr(self.s.BuiltinOptions, options_name)
            o.builtinOptions = table
        self.operators.append(o)

    def finish(self, inputs, outputs, *, name: str, description: str) -> bytes:
        import flatbuffers

        s = self.s
        sub = s.SubGraphT()
        sub.tensors = self.tensors
        sub.inputs = list(inputs)
        sub.outputs = list(outputs)
        sub.operators = self.operators
        sub.name = name
        m = s.ModelT()
        m.version = 3
        m.description = description
        m.buffers = self.buffers
        m.subgraphs = [sub]
        codes = []
        for builtin, version in self.opcodes:
            c = s.OperatorCodeT()
            c.builtinCode = builtin
            c.deprecatedBuiltinCode = min(builtin, 127)   # the int8 field older readers use
            c.version = version
            codes.append(c)
        m.operatorCodes = codes
        builder = flatbuffers.Builder(1024)
        builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def weight_tensors(fb: FlatbufferModel, name: str, weights_q, weight_scales, bias_q,
                   input_scale: float, dim: int, n_out: int):
    """The int8 weight tensor (symmetric, scales on axis `dim`) and the int32 bias tensor
    (``s_in · s_w[c]`` in float32, zero point 0; zeros when `bias_q` is None: the same
    arithmetic, and TFLM's int8 CONV_2D refuses an omitted bias), as TensorFlow's
    converter writes them."""
    TT = fb.s.TensorType
    ws = np.asarray(weight_scales, dtype=np.float32).reshape(-1)
    w = fb.constant(f"{name}/weights", np.ascontiguousarray(weights_q, dtype=np.int8),
                    TT.INT8, fb.quant(ws, [0] * ws.size, dim))
    bias = (np.zeros(n_out, "<i4") if bias_q is None
            else np.ascontiguousarray(bias_q, dtype="<i4").reshape(-1))
    bs = (ws * np.float32(input_scale)).astype(np.float32)
    b = fb.constant(f"{name}/bias", bias, TT.INT32, fb.quant(bs, [0] * bs.size, 0))
    return w, b


def fully_connected(fb: FlatbufferModel, name: str, x: int, out, weights_q,
                    weight_scales, bias_q, input_scale: float, activation) -> int:
    """A FULLY_CONNECTED operator (weights ``(out, in)``, per-channel on axis 0); `out` is
    the output tensor's index, or ``(name, shape, scale, zero_point)`` to create it after
    the weights.  Returns the output tensor's index."""
    w, b = weight_tensors(fb, name, weights_q, weight_scales, bias_q, input_scale, 0,
                          weights_q.shape[0])
    if isinstance(out, tuple):
        out = fb.act_tensor(*out)
    fb.operator("FULLY_CONNECTED", [x, w, b], [out], "FullyConnectedOptions",
                fusedActivationFunction=fb.fused[activation],
                weightsFormat=fb.s.FullyConnectedOptionsWeightsFormat.DEFAULT,
                keepNumDims=False)
    return out


def _check_model(model):
    # Duck-typed, as the other exporters (plan_model): the exporters take the model as an
    # argument and never import the model package (which delegates to them).
    if not all(hasattr(model, a) for a in ("layers", "activations", "output_qparams",
                                           "requantization", "forward_int8")):
        raise TypeError(f"model must be a qatcore.QuantizedSequential, got "
                        f"{type(model).__name__}")


def tflite_bytes(model, *, float_io: bool = False, batch_size: int = 1) -> bytes:
    """The ``.tflite`` flatbuffer of `model` (see the module docstring).

    Parameters
    ----------
    model : qatcore.QuantizedSequential
    float_io : bool, default False
        float32 input and output (QUANTIZE / DEQUANTIZE at the ends) instead of int8 codes.
        The QUANTIZE op rounds ``round_half_away(x / s_in) + zp`` and clamps to
        [-128, 127]: ``model.forward`` with ``input_numerics="tflite"`` (and a full int8
        input code range) computes the same.
    batch_size : int, default 1
        The batch dimension of the input and output tensors (LiteRT can resize it at run
        time; TFLM cannot).

    Returns
    -------
    bytes

    Raises
    ------
    TypeError, ValueError
        Not a QuantizedSequential, `float_io` not a bool, `batch_size` not a positive int.
    ImportError
        flatbuffers / tflite-micro missing.
    """
    _check_model(model)
    n = check_write_args(float_io, batch_size)
    fb = FlatbufferModel()
    TT = fb.s.TensorType
    current = fb.act_tensor("input_int8" if float_io else "input", (n, model.in_features),
                            model.input_scale, model.input_zero_point)
    graph_input = current
    if float_io:
        graph_input = fb.tensor("input", (n, model.in_features), TT.FLOAT32)
        fb.operator("QUANTIZE", [graph_input], [current], "QuantizeOptions")
    last = len(model.layers) - 1
    for i, layer in enumerate(model.layers):
        ws = np.asarray(layer.weight_scale, dtype=np.float32).reshape(-1)
        o_scale, o_zp = model.output_qparams(i)
        name = "output_int8" if (i == last and float_io) else (
            "output" if i == last else f"layer{i}/output")
        current = fully_connected(fb, f"layer{i}", current,
                                  (name, (n, layer.out_features), o_scale, o_zp),
                                  layer.weights_q, ws, layer.bias_q, layer.input_scale,
                                  model.activations[i])
    graph_output = current
    if float_io:
        graph_output = fb.tensor("output", (n, model.out_features), TT.FLOAT32)
        fb.operator("DEQUANTIZE", [current], [graph_output], "DequantizeOptions")
    return fb.finish([graph_input], [graph_output], name="main",
                     description="qatcore.QuantizedSequential")


def write_tflite(model, path: Union[str, "os.PathLike[str]"], *, float_io: bool = False,
                 batch_size: int = 1) -> int:
    """Write :func:`tflite_bytes` to `path` atomically (a temporary file in the same
    directory, then ``os.replace``: an error leaves nothing behind); returns the size in
    bytes."""
    data = tflite_bytes(model, float_io=float_io, batch_size=batch_size)
    write_files_atomic([(os.fspath(path), data)])
    return len(data)
