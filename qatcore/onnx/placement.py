"""Where the QDQ writer puts quantizers: what an integer runtime consumes, nothing else.

An int8 runtime needs int8 codes at the inputs of the ops it runs in integer arithmetic:
Conv / ConvTranspose / MatMul / Gemm (weights int8 per output channel, bias int32 at
``s_x · s_w``), residual Add / Mul, pooling, Concat and Resize.  A conv or matmul and the
activation after it (Relu, Clip / ReLU6, HardSwish written as ``x · clip(x + 3, 0, 6) / 6``,
Sigmoid / HardSigmoid gating) are one unit: the codes sit after the activation, where the
next integer op reads them, never inside the chain.  Numerically fragile tensors stay
float unless asked for (``quantize_fragile``): the inputs of Softmax, Sigmoid and
HardSigmoid (a saturating curve whose input range is wide while its output lives in
[0, 1]), normalization arithmetic (ReduceMean / Sub / Pow / Sqrt / Div), and the model's
outputs.  This is the placement NNCF's default uses (62–81 activation quantizers on the
PaddleOCR models where quantizing every tensor, as onnxruntime's ``quantize_static``
does, places 146–347).

Presets:

``cnn``
    inputs of Conv / ConvTranspose / MatMul / Gemm, residual Add (two computed inputs) and
    non-gating Mul, MaxPool / AveragePool / GlobalAveragePool, Concat, Resize.
``transformer``
    only the inputs of Conv / ConvTranspose / MatMul / Gemm (both operands of an
    activation × activation MatMul, e.g. attention): residual adds, LayerNorm arithmetic,
    Softmax and GELU stay float, as NNCF's ``ModelType.TRANSFORMER`` does.
``auto``
    ``transformer`` when the graph has attention (a Softmax whose output reaches a
    MatMul through reshapes), else ``cnn``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from .graph import GraphIndex

__all__ = ["PRESETS", "COMPUTE", "Placement", "plan", "choose_preset", "node_key",
           "is_depthwise", "depthwise_inputs"]

PRESETS = ("cnn", "transformer")

COMPUTE = ("Conv", "ConvTranspose", "MatMul", "Gemm")
POOLING = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")
FRAGILE = ("Softmax", "Sigmoid", "HardSigmoid")
#: A Mul one of whose inputs comes from these is an activation or a gate (hardswish's
#: ``x · clip(x + 3, 0, 6)``, swish's ``x · sigmoid(x)``, a squeeze-excite gate): part of
#: the unit, not a residual Mul.
GATES = ("Sigmoid", "HardSigmoid", "Clip", "Relu", "Tanh", "Softmax", "HardSwish")
_SHAPE_OPS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Flatten")


@dataclass
class Placement:
    """The writer's plan: which node inputs get activation Q/DQ, which weights and
    biases are quantized, and what was left float and why."""

    preset: str
    reason: str
    #: tensor -> [(node index, input index)] reading its int8 codes
    activations: Dict[str, List[Tuple[int, int]]] = field(default_factory=dict)
    #: (node index, input index, axis or None for per tensor)
    weights: List[Tuple[int, int, Optional[int]]] = field(default_factory=list)
    #: (node index, bias input index, weight input index)
    biases: List[Tuple[int, int, int]] = field(default_factory=list)
    #: tensor -> why it stays float
    left_float: Dict[str, str] = field(default_factory=dict)
    #: the graph outputs to quantize (quantize_fragile)
    outputs: List[str] = field(default_factory=list)
    #: tensor -> (C, 2) per-channel ranges: codes per channel along axis 1 (every reader
    #: is a depthwise Conv)
    per_channel: Dict[str, object] = field(default_factory=dict)

    def summary(self) -> str:
        return (f"preset {self.preset} ({self.reason}): {len(self.activations)} activation "
                f"tensors quantized, {len(self.weights)} weights int8, {len(self.biases)} "
                f"biases int32, {len(self.left_float)} tensors left float")

    def to_json(self) -> dict:
        return {"preset": self.preset, "reason": self.reason,
                "activations": sorted(self.activations), "weights": len(self.weights),
                "biases": len(self.biases), "left_float": dict(sorted(self.left_float.items()))}


def is_depthwise(index: GraphIndex, node) -> bool:
    """A Conv with one input channel per group (each output channel reads one input
    channel): its input can carry one scale per channel, which folds into the weights'
    per-channel scales (NNCF quantizes these inputs per channel too)."""
    if node.op_type != "Conv" or len(node.input) < 2:
        return False
    group = int(index.attr(node, "group", 1))
    w = index.constant(node.input[1])
    return group > 1 and w is not None and w.ndim >= 2 and w.shape[1] == 1


def depthwise_inputs(index: GraphIndex):
    """Tensors read as input 0 by a depthwise Conv (candidates for per-channel codes)."""
    return {node.input[0] for node in index.nodes
            if is_depthwise(index, node) and index.is_activation(node.input[0])}


def node_key(node) -> str:
    """A node's name for keep_float / only / bias corrections: its first output."""
    return node.output[0]


def _reaches_matmul(index: GraphIndex, name: str, depth=0) -> bool:
    if depth > 8:
        return False
    for node, _ in index.consumers.get(name, ()):
        if node.op_type == "MatMul":
            return True
        if node.op_type in _SHAPE_OPS + ("Dropout", "Cast") and _reaches_matmul(index, node.output[0], depth + 1):
            return True
    return False


def choose_preset(index: GraphIndex) -> Tuple[str, str]:
    """``(preset, reason)`` for ``preset="auto"``."""
    for node in index.nodes:
        if node.op_type == "Softmax" and _reaches_matmul(index, node.output[0]):
            return "transformer", f"attention found: Softmax {node.name or node.output[0]!r} feeds a MatMul"
    return "cnn", "no attention (no Softmax feeding a MatMul)"


def _weight_axis(index: GraphIndex, node, per_channel: bool) -> Optional[int]:
    """Output-channel axis of `node`'s weight (input 1) for per-channel DQ, or None."""
    if not per_channel:
        return None
    w = index.constant(node.input[1])
    if w is None or w.ndim < 1:
        return None
    op = node.op_type
    if op == "Conv":
        return 0
    if op == "ConvTranspose":
        return 1 if int(index.attr(node, "group", 1)) == 1 else None
    if op == "Gemm":
        return 0 if int(index.attr(node, "transB", 0)) else 1
    if op == "MatMul":
        return w.ndim - 1 if w.ndim >= 2 else None
    return None


def plan(index: GraphIndex, ranges, *, preset="auto", per_channel=True,
         quantize_fragile=False, keep_float: Sequence[str] = (),
         only: Optional[Sequence[str]] = None) -> Placement:
    """Where Q/DQ go in the graph of `index`, given the calibrated `ranges`.

    `keep_float`: nodes (by name or first output) left float; `only`: when given,
    quantize the inputs of these nodes only (a sensitivity probe: one layer at a time)."""
    if preset == "auto":
        preset, reason = choose_preset(index)
    elif preset in PRESETS:
        reason = "chosen by the caller"
    else:
        raise ValueError(f"preset must be one of {PRESETS + ('auto',)}, got {preset!r}")
    p = Placement(preset, reason)
    keep = set(keep_float)
    only = None if only is None else set(only)

    def want(name, n_idx, i_idx):
        if not index.is_activation(name):
            return
        if name not in ranges:
            p.left_float.setdefault(name, "no calibrated range")
            return
        p.activations.setdefault(name, []).append((n_idx, i_idx))

    for k, node in enumerate(index.nodes):
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            continue
        if only is not None and node_key(node) not in only and node.name not in only:
            continue
        if (node.name and node.name in keep) or any(o in keep for o in node.output):
            for name in node.input:
                if index.is_activation(name):
                    p.left_float.setdefault(name, f"input of {op} {node.name or node.output[0]!r} kept float")
            continue
        if op in COMPUTE:
            x_ok = index.is_activation(node.input[0]) and node.input[0] in ranges
            want(node.input[0], k, 0)
            if len(node.input) > 1 and index.is_activation(node.input[1]):
                if op in ("MatMul",):
                    want(node.input[1], k, 1)
                continue                          # a computed weight: leave the node as it is
            w = index.constant(node.input[1]) if len(node.input) > 1 else None
            if w is None or not x_ok or w.dtype.kind != "f":
                continue
            axis = _weight_axis(index, node, per_channel)
            p.weights.append((k, 1, axis))
            if op in ("Conv", "ConvTranspose", "Gemm") and len(node.input) > 2 and node.input[2]:
                b = index.constant(node.input[2])
                if b is not None and b.ndim == 1 and b.dtype.kind == "f":
                    p.biases.append((k, 2, 1))
            continue
        if preset == "cnn":
            acts = [i for i, n in enumerate(node.input) if index.is_activation(n)]
            if op == "Add" and len(acts) >= 2:
                for i in acts:
                    want(node.input[i], k, i)
            elif op == "Mul" and len(acts) >= 2:
                producers = [index.producer.get(node.input[i]) for i in acts]
                if any(pr is not None and pr.op_type in GATES for pr in producers):
                    continue
                for i in acts:
                    want(node.input[i], k, i)
            elif op in POOLING or op == "Resize":
                want(node.input[0], k, 0)
            elif op == "Concat":
                for i in acts:
                    want(node.input[i], k, i)
        if op in FRAGILE:
            if quantize_fragile:
                want(node.input[0], k, 0)
            elif index.is_activation(node.input[0]):
                p.left_float.setdefault(node.input[0], f"input of {op} (fragile: a saturating curve)")
        elif op in ("ReduceMean", "Pow", "Sqrt", "LayerNormalization") and preset == "transformer":
            for name in node.input:
                if index.is_activation(name):
                    p.left_float.setdefault(name, f"normalization arithmetic ({op})")
    for out in index.graph_outputs:
        if quantize_fragile and out in ranges and index.is_activation(out):
            p.outputs.append(out)
        else:
            p.left_float.setdefault(out, "model output (quantize_fragile=False)"
                                    if out in ranges else "model output, no range")
    for name in p.activations:
        p.left_float.pop(name, None)
    channel_ranges = getattr(ranges, "channel_ranges", None) or {}
    for name, edges in p.activations.items():
        if name in channel_ranges and all(
                i == 0 and is_depthwise(index, index.nodes[k]) for k, i in edges):
            p.per_channel[name] = channel_ranges[name]
    return p
