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

#: Operator versions written (the lowest that has the int8 kernels; runtimes accept any
#: registered version).
_FC_VERSION, _QUANTIZE_VERSION, _DEQUANTIZE_VERSION = 4, 2, 2


def _schema():
    try:
        import flatbuffers  # noqa: F401
        from tflite_micro.tensorflow.lite.micro.python import schema_py_generated
    except ImportError as exc:
        raise ImportError('the .tflite export needs flatbuffers and tflite-micro (its TFLite '
                          'schema): pip install "qatcore[export]"') from exc
    return schema_py_generated


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
    from .._checks import check_index

    _check_model(model)
    if not isinstance(float_io, (bool, np.bool_)):
        raise TypeError(f"float_io must be a bool, got {type(float_io).__name__}")
    batch_size = check_index(batch_size, "batch_size")
    if not 1 <= batch_size <= 1 << 24:
        raise ValueError(f"batch_size must be in [1, 2^24], got {batch_size}")
    s = _schema()
    import flatbuffers

    buffers = [s.BufferT()]                 # buffer 0: the empty sentinel, by convention
    tensors = []

    def buffer(array: np.ndarray) -> int:
        b = s.BufferT()
        b.data = np.ascontiguousarray(array).view(np.uint8).ravel()
        buffers.append(b)
        return len(buffers) - 1

    def quant(scales, zero_points, dim: int = 0):
        q = s.QuantizationParametersT()
        q.scale = [float(np.float32(v)) for v in scales]
        q.zeroPoint = [int(z) for z in zero_points]
        q.quantizedDimension = dim
        return q

    def tensor(name: str, shape, ttype: int, buf: int = 0, q=None) -> int:
        t = s.TensorT()
        t.name = name
        t.shape = [int(d) for d in shape]
        t.type = ttype
        t.buffer = buf
        t.quantization = q
        tensors.append(t)
        return len(tensors) - 1

    opcodes = []

    def opcode(builtin: int, version: int) -> int:
        for i, (b, _) in enumerate(opcodes):
            if b == builtin:
                return i
        opcodes.append((builtin, version))
        return len(opcodes) - 1

    operators = []

    def operator(builtin: int, version: int, inputs, outputs, options_type=0, options=None):
        op = s.OperatorT()
        op.opcodeIndex = opcode(builtin, version)
        op.inputs = list(inputs)
        op.outputs = list(outputs)
        op.builtinOptionsType = options_type
        op.builtinOptions = options
        operators.append(op)

    BO, TT = s.BuiltinOperator, s.TensorType
    fused = {None: s.ActivationFunctionType.NONE, "relu": s.ActivationFunctionType.RELU,
             "relu6": s.ActivationFunctionType.RELU6}
    n = batch_size
    x_scale, x_zp = model.input_scale, model.input_zero_point
    current = tensor("input_int8" if float_io else "input", (n, model.in_features), TT.INT8,
                     q=quant([x_scale], [x_zp]))
    graph_input = current
    if float_io:
        graph_input = tensor("input", (n, model.in_features), TT.FLOAT32)
        operator(BO.QUANTIZE, _QUANTIZE_VERSION, [graph_input], [current],
                 s.BuiltinOptions.QuantizeOptions, s.QuantizeOptionsT())
    last = len(model.layers) - 1
    for i, layer in enumerate(model.layers):
        ws = np.asarray(layer.weight_scale, dtype=np.float32).reshape(-1)
        s_in = np.float32(layer.input_scale)
        w = tensor(f"layer{i}/weights", layer.weights_q.shape, TT.INT8,
                   buffer(layer.weights_q.astype(np.int8)),
                   quant(ws, [0] * ws.size, 0))
        bias_q = (np.zeros(layer.out_features, np.int32) if layer.bias_q is None
                  else np.asarray(layer.bias_q, dtype=np.int32))
        b = tensor(f"layer{i}/bias", (layer.out_features,), TT.INT32,
                   buffer(bias_q.astype("<i4")),
                   quant((ws * s_in).astype(np.float32), [0] * ws.size, 0))
        o_scale, o_zp = model.output_qparams(i)
        name = "output_int8" if (i == last and float_io) else (
            "output" if i == last else f"layer{i}/output")
        out = tensor(name, (n, layer.out_features), TT.INT8, q=quant([o_scale], [o_zp]))
        opts = s.FullyConnectedOptionsT()
        opts.fusedActivationFunction = fused[model.activations[i]]
        opts.weightsFormat = s.FullyConnectedOptionsWeightsFormat.DEFAULT
        opts.keepNumDims = False
        operator(BO.FULLY_CONNECTED, _FC_VERSION, [current, w, b], [out],
                 s.BuiltinOptions.FullyConnectedOptions, opts)
        current = out
    graph_output = current
    if float_io:
        graph_output = tensor("output", (n, model.out_features), TT.FLOAT32)
        operator(BO.DEQUANTIZE, _DEQUANTIZE_VERSION, [current], [graph_output],
                 s.BuiltinOptions.DequantizeOptions, s.DequantizeOptionsT())

    sub = s.SubGraphT()
    sub.tensors = tensors
    sub.inputs = [graph_input]
    sub.outputs = [graph_output]
    sub.operators = operators
    sub.name = "main"
    m = s.ModelT()
    m.version = 3
    m.description = "qatcore.QuantizedSequential"
    m.buffers = buffers
    m.subgraphs = [sub]
    codes = []
    for builtin, version in opcodes:
        c = s.OperatorCodeT()
        c.builtinCode = builtin
        c.deprecatedBuiltinCode = min(builtin, 127)   # the int8 field older readers use
        c.version = version
        codes.append(c)
    m.operatorCodes = codes
    builder = flatbuffers.Builder(1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def write_tflite(model, path: Union[str, "os.PathLike[str]"], *, float_io: bool = False,
                 batch_size: int = 1) -> int:
    """Write :func:`tflite_bytes` to `path` atomically (a temporary file in the same
    directory, then ``os.replace``: an error leaves nothing behind); returns the size in
    bytes."""
    data = tflite_bytes(model, float_io=float_io, batch_size=batch_size)
    write_files_atomic([(os.fspath(path), data)])
    return len(data)
