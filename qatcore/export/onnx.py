"""ONNX export: an integer model in the QDQ form onnxruntime fuses into integer kernels.

:func:`to_onnx` writes float input ``"input"`` ``(batch, in_features)`` → float output
``"output"`` ``(batch, out_features)``:

* ``QuantizeLinear`` / ``DequantizeLinear`` on every activation, with the container's
  scales and int8 zero points (``Max`` / ``Min`` in front of the first
  ``QuantizeLinear`` when the model's input codes are narrower than int8, e.g. the
  symmetric [-127, 127]);
* per layer ``Gemm(x, DequantizeLinear(W int8, scale, axis=0), DequantizeLinear(bias
  int32, input_scale · weight_scale, axis=0), transB=1)``: per-axis weight scales for
  per-channel layers (opset >= 13), int32 bias codes at ``s_x · s_w`` with zero point 0,
  as onnxruntime's own quantizer writes them;
* ``Relu`` / ``Clip(0, 6)`` for the fused activations, before the next ``QuantizeLinear``.

onnxruntime's CPU execution provider fuses every ``DequantizeLinear → Gemm →
QuantizeLinear`` into ``QGemm`` (int8 GEMM, exact int32 accumulation; a layer's ReLU /
ReLU6 runs after its own Q/DQ pair, so the fusion happens whatever the zero point).  QGemm
requantizes in float (``acc · s_x · s_w / s_y``, rounded half to even), where qatcore and
TFLite use gemmlowp's Q31 multiplier with *double* rounding (``SaturatingRoundingDoubling
HighMul``, then ``RoundingDivideByPOT``, ties away from zero).  The results differ only
for accumulators whose exact ``acc · M`` lies near a half-integer: within float32 noise of
a tie, or within ``2^-(right+1)`` LSB of it, ``right`` being gemmlowp's rounding right
shift (small for multipliers near 1: 1 for ``M`` in [0.25, 0.5)), where its first
rounding moves the second.  So one layer
is within 1 LSB; in a chain a 1-LSB difference in a hidden code moves the next layer's
accumulator by ``|w|`` and can grow.

Measured by ``tests/test_export_onnx.py`` and the same code on more seeds (onnxruntime
1.32, CPU EP, 1 000 random int8 inputs per model, against ``forward_int8``):

* one layer (40 random layers: sizes 1..300, scales 1e-6..1e2, zero points at -128/127,
  per-tensor and per-channel, None/ReLU/ReLU6): 99.98 % of the codes equal, largest
  difference 1 LSB;
* three-layer random chains (40): 98.4 % equal, largest difference 5 LSB;
* the demo MLP (64-128-64-10, ReLU; ``tests/export_models.demo_model``): 99.1 % of the
  output codes on the test split equal, largest difference 1 LSB; the predicted class is
  the same for every test sample, so the accuracy under onnxruntime equals qatcore's
  (97.21 % on the 359-sample split).

With onnxruntime's graph optimizations off (float ``DequantizeLinear → Gemm →
QuantizeLinear``, no QGemm) the figures are the same to within 0.01 %.

The first ``QuantizeLinear`` rounds half to even (ONNX); qatcore's default input
quantization rounds half away from zero, so a float input exactly on a tie may get
another code (not an issue for inputs that are codes times the scale).

Requires the ``onnx`` package (``pip install onnx``); onnxruntime only to run the file.
"""

from __future__ import annotations

import os
from typing import Any, Callable, List, Optional, Tuple

import numpy as np

from .._files import write_files_atomic
from ._common import PathLike, plan_model

__all__ = ["to_onnx", "onnx_model", "DEFAULT_OPSET"]

#: Lowest opset with per-axis QuantizeLinear / DequantizeLinear.
DEFAULT_OPSET = 13
# Below 128 * scale < this, ReLU6 is written as Relu + Min instead of Clip (see _activation).
_CLIP_FUSION_GUARD = 1e-5


def _import_onnx() -> Tuple[Any, Any, Any]:
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError as exc:  # pragma: no cover - exercised without onnx installed
        raise ImportError('qatcore.export.onnx needs the onnx package: pip install onnx '
                          '(or pip install "qatcore[export]")') from exc
    return onnx, helper, numpy_helper


def _check_opset(opset: Any, onnx: Any) -> int:
    if isinstance(opset, (bool, np.bool_)) or not isinstance(opset, (int, np.integer)):
        raise TypeError(f"opset must be an integer, got {type(opset).__name__}")
    top = int(onnx.defs.onnx_opset_version())
    if not DEFAULT_OPSET <= int(opset) <= top:
        raise ValueError(f"opset must be in [{DEFAULT_OPSET}, {top}] (per-axis "
                         f"DequantizeLinear needs 13; {top} is the newest this onnx knows), "
                         f"got {opset}")
    return int(opset)


def _activation(kind: str, scale: float, y: str, tag: str, nodes: List[Any],
                const: Callable[[str, np.ndarray], str], helper: Any) -> str:
    f32 = np.float32
    if kind == "relu":
        nodes.append(helper.make_node("Relu", [y], [f"{tag}_relu"], name=f"{tag}_relu"))
        return f"{tag}_relu"
    if 128 * float(scale) < _CLIP_FUSION_GUARD:
        # onnxruntime's ClipQuantFusion drops a Clip whose range covers the following
        # quantizer's up to an absolute float tolerance (~1.2e-7): with codes this fine a
        # Clip(0, 6) would vanish and negative codes survive.  Relu + Min are not fused.
        nodes.append(helper.make_node("Relu", [y], [f"{tag}_relu"], name=f"{tag}_relu"))
        nodes.append(helper.make_node("Min", [f"{tag}_relu", const(f"{tag}_relu6_max",
                                                                   np.array(6.0, f32))],
                                      [f"{tag}_relu6"], name=f"{tag}_relu6"))
        return f"{tag}_relu6"
    nodes.append(helper.make_node(
        "Clip", [y, const(f"{tag}_relu6_min", np.array(0.0, f32)),
                 const(f"{tag}_relu6_max", np.array(6.0, f32))],
        [f"{tag}_relu6"], name=f"{tag}_relu6"))
    return f"{tag}_relu6"


def onnx_model(model: Any, *, opset: int = DEFAULT_OPSET) -> Any:
    """The QDQ ``onnx.ModelProto`` of `model` (what :func:`to_onnx` writes), checked with
    ``onnx.checker.check_model``."""
    onnx, helper, numpy_helper = _import_onnx()
    opset = _check_opset(opset, onnx)
    plan = plan_model(model)
    if not -128 <= plan.input_zero_point <= 127:
        raise ValueError(f"model's input zero point {plan.input_zero_point} is not an int8 "
                         f"code (ONNX QuantizeLinear stores int8 zero points)")
    f32 = np.float32
    inits: List[Any] = []
    nodes: List[Any] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def qdq(x: str, scale: float, zp: int, tag: str, out: Optional[str] = None) -> str:
        s = const(f"{tag}_scale", np.array(scale, f32))
        z = const(f"{tag}_zero_point", np.array(zp, np.int8))
        out = out or f"{tag}_dq"
        nodes.append(helper.make_node("QuantizeLinear", [x, s, z], [f"{tag}_q"],
                                      name=f"{tag}_quantize"))
        nodes.append(helper.make_node("DequantizeLinear", [f"{tag}_q", s, z], [out],
                                      name=f"{tag}_dequantize"))
        return out

    x = "input"
    lo, hi = plan.input_qrange
    if (lo, hi) != (-128, 127):
        # ONNX QuantizeLinear saturates to the full int8 range: clamp the float input to
        # the model's code range first, so the codes are the model's.  Max + Min, not Clip:
        # onnxruntime's ClipQuantFusion may drop a Clip in front of a quantizer (see
        # _activation).
        s = f32(plan.input_scale)
        nodes.append(helper.make_node(
            "Max", [x, const("input_min", np.array(f32(lo - plan.input_zero_point) * s, f32))],
            ["input_above_min"], name="input_clamp_min"))
        nodes.append(helper.make_node(
            "Min", ["input_above_min",
                    const("input_max", np.array(f32(hi - plan.input_zero_point) * s, f32))],
            ["input_clipped"], name="input_clamp_max"))
        x = "input_clipped"
    x = qdq(x, plan.input_scale, plan.input_zero_point, "input")
    last = len(plan.layers) - 1
    for k, lp in enumerate(plan.layers):
        tag = f"layer{k}"
        ws = lp.weight_scale if lp.per_channel else lp.weight_scale.reshape(())
        w = const(f"{tag}_weight_q", lp.weights_q)
        w_s = const(f"{tag}_weight_scale", ws.astype(f32))
        w_z = const(f"{tag}_weight_zero_point", np.zeros(ws.shape, np.int8))
        nodes.append(helper.make_node("DequantizeLinear", [w, w_s, w_z], [f"{tag}_weight"],
                                      name=f"{tag}_weight_dequantize", axis=0))
        inputs = [x, f"{tag}_weight"]
        if lp.bias_q is not None:
            bs = (ws.astype(f32) * f32(lp.input_scale)).astype(f32)
            b = const(f"{tag}_bias_q", lp.bias_q.astype(np.int32))
            b_s = const(f"{tag}_bias_scale", bs)
            b_z = const(f"{tag}_bias_zero_point", np.zeros(bs.shape, np.int32))
            nodes.append(helper.make_node("DequantizeLinear", [b, b_s, b_z], [f"{tag}_bias"],
                                          name=f"{tag}_bias_dequantize", axis=0))
            inputs.append(f"{tag}_bias")
        nodes.append(helper.make_node("Gemm", inputs, [f"{tag}_gemm"], name=f"{tag}_gemm",
                                      transB=1))
        y = f"{tag}_gemm"
        if lp.activation is not None:
            # Quantize the Gemm's output first, so DequantizeLinear -> Gemm ->
            # QuantizeLinear fuses into QGemm whatever the zero point (onnxruntime folds a
            # Relu into the quantizer only at zero point -128); the activation then runs
            # on the dequantized codes and is quantized again with the same parameters:
            # max(code, zp) and the ReLU6 clamp, exactly.
            y = qdq(y, lp.output_scale, lp.output_zero_point, f"{tag}_gemm")
            y = _activation(lp.activation, lp.output_scale, y, tag, nodes, const, helper)
        if k == last:
            qdq(y, lp.output_scale, lp.output_zero_point, "output_codes", "output")
        else:
            x = qdq(y, lp.output_scale, lp.output_zero_point, f"{tag}_out")
    graph = helper.make_graph(
        nodes, "qatcore_integer_model",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT,
                                       ["batch", plan.in_features])],
        [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT,
                                       ["batch", plan.out_features])],
        initializer=inits)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="qatcore",
                              ir_version=helper.find_min_ir_version_for(opsets))
    proto.doc_string = ("qatcore integer model, QDQ form: float input quantized with scale "
                        f"{plan.input_scale!r} zero point {plan.input_zero_point}; output "
                        f"codes at scale {plan.output_scale!r} zero point "
                        f"{plan.output_zero_point}, dequantized")
    onnx.checker.check_model(proto, full_check=True)
    return proto


def check_onnx_path(path: Any) -> Any:
    """``os.fspath(path)``, checked: a file path (not a directory) in an existing, writable
    directory (shared with :mod:`qatcore.export.onnx_graph`)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a path, got {type(path).__name__}")
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"path {path!r} is a directory")
    if not os.path.isdir(parent):
        raise ValueError(f"path {path!r}: directory {parent!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"path {path!r}: directory {parent!r} is not writable")
    return path


def to_onnx(model: Any, path: PathLike, *, opset: int = DEFAULT_OPSET) -> str:
    """Write `model` as an ONNX file in the QDQ form (see the module docstring).

    Parameters
    ----------
    model : integer-model container
        ``.layers`` (QuantizedLinear), ``.activations``, ``.output_scale``,
        ``.output_zero_point`` (``qatcore.QuantizedSequential``).
    path : path
        The ``.onnx`` file; its directory must exist.  Written to a temporary file and
        renamed into place.
    opset : int, default 13
        ONNX opset, from 13 (per-axis DequantizeLinear) to the newest the installed
        ``onnx`` knows.

    Returns
    -------
    str
        `path`.

    Raises
    ------
    ImportError
        The ``onnx`` package is missing.
    TypeError, ValueError
        A bad `opset` or `path`, or a model ONNX cannot hold (an input zero point outside
        int8); nothing is written.

    Notes
    -----
    onnxruntime runs it with float requantization (ties to even), so its codes can differ
    from ``forward_int8`` by 1 LSB per layer; the module docstring gives the measured
    agreement.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from qatcore import QuantizedLinear
    >>> from qatcore.export.onnx import to_onnx
    >>> layer = QuantizedLinear.from_float([[1.0, -0.5]], None, 2, 1)
    >>> layer.set_input_scale(0.1)
    >>> class Model:                     # any container with these four attributes
    ...     layers, activations, output_scale, output_zero_point = [layer], ["relu"], 0.05, 0
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = to_onnx(Model(), os.path.join(d, "tiny.onnx"))
    ...     os.path.getsize(path) > 0
    True
    """
    path = check_onnx_path(path)
    proto = onnx_model(model, opset=opset)
    write_files_atomic([(path, proto.SerializeToString())])
    return path
