"""What the ONNX graph says about its tensors: who produces and consumes each one, which
inputs are constants, and the interval an op's output can lie in.

Shared by the calibration (ranges held to what the producing op can output) and the QDQ
writer (placement).  Only the main graph is read; subgraphs (If / Loop bodies) are left
alone.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import numpy as np

__all__ = ["GraphIndex", "op_output_bounds", "hold_to_op_bounds"]

INF = math.inf

#: Ops whose output is a selection, a copy or a convex combination of input 0's values:
#: their output interval is their input's (pooling averages, Resize interpolates
#: linearly or takes the nearest value).
_PASS_THROUGH = {"MaxPool", "GlobalMaxPool", "AveragePool", "GlobalAveragePool", "Reshape",
                 "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Slice",
                 "Gather", "Expand", "Tile", "SpaceToDepth", "DepthToSpace", "Split",
                 "ReduceMax", "ReduceMin", "ReduceMean", "Pad", "Dropout"}


class GraphIndex:
    """Producers, consumers and constant values of a model's main graph."""

    def __init__(self, model):
        from onnx import numpy_helper

        g = model.graph
        self.model = model
        self.nodes = list(g.node)
        self.initializers = {i.name: i for i in g.initializer}
        self.constants: Dict[str, np.ndarray] = {}
        self.producer: Dict[str, object] = {}
        self.consumers: Dict[str, List[Tuple[object, int]]] = {}
        for node in self.nodes:
            for o in node.output:
                self.producer[o] = node
            for i, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append((node, i))
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for a in node.attribute:
                    if a.name == "value":
                        self.constants[node.output[0]] = numpy_helper.to_array(a.t)
        self._numpy_helper = numpy_helper
        self.graph_inputs = [i.name for i in g.input if i.name not in self.initializers]
        self.graph_outputs = [o.name for o in g.output]

    def constant(self, name) -> Optional[np.ndarray]:
        """The value of `name` when it is an initializer or a Constant's output, else None."""
        if name in self.constants:
            return self.constants[name]
        init = self.initializers.get(name)
        if init is None:
            return None
        value = self._numpy_helper.to_array(init)
        self.constants[name] = value
        return value

    def is_activation(self, name) -> bool:
        """A tensor computed at run time (not an initializer, not a Constant's output)."""
        return bool(name) and name not in self.initializers and name not in self.constants

    def attr(self, node, name, default=None):
        from onnx import helper

        for a in node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default


def _scalar(value) -> Optional[float]:
    if value is None or np.size(value) != 1:
        return None
    v = float(np.asarray(value).ravel()[0])
    return v if math.isfinite(v) else None


def op_output_bounds(index: GraphIndex, name: str, _depth: int = 0) -> Tuple[float, float]:
    """``(lo, hi)`` that `name`'s producing op cannot leave: ReLU ``[0, inf)``, Clip its
    ``[min, max]``, Sigmoid / HardSigmoid / Softmax ``[0, 1]``, Tanh ``[-1, 1]``,
    HardSwish ``[-0.375, inf)``; value-preserving ops (pooling, reshapes, Concat …) carry
    their inputs' bounds through.  ``(-inf, inf)`` when nothing is known."""
    node = index.producer.get(name)
    if node is None or _depth > 64 or node.domain not in ("", "ai.onnx"):
        return -INF, INF
    op = node.op_type
    if op == "Relu":
        lo, hi = op_output_bounds(index, node.input[0], _depth + 1)
        return max(0.0, lo), max(0.0, hi)
    if op in ("Sigmoid", "HardSigmoid", "Softmax"):
        return 0.0, 1.0
    if op == "Tanh":
        return -1.0, 1.0
    if op == "HardSwish":
        return -0.375, INF
    if op == "Abs":
        return 0.0, INF
    if op == "Clip":
        lo = hi = None
        if len(node.input) > 1 and node.input[1]:
            lo = _scalar(index.constant(node.input[1]))
        if len(node.input) > 2 and node.input[2]:
            hi = _scalar(index.constant(node.input[2]))
        if lo is None:
            lo = _scalar(index.attr(node, "min"))
        if hi is None:
            hi = _scalar(index.attr(node, "max"))
        in_lo, in_hi = op_output_bounds(index, node.input[0], _depth + 1)
        lo = in_lo if lo is None else max(lo, in_lo)
        hi = in_hi if hi is None else min(hi, in_hi)
        return (lo, hi) if lo <= hi else (-INF, INF)
    if op in _PASS_THROUGH:
        if op == "Pad" and index.attr(node, "mode", b"constant") in (b"constant", "constant"):
            lo, hi = op_output_bounds(index, node.input[0], _depth + 1)
            value = _scalar(index.constant(node.input[2])) if len(node.input) > 2 and node.input[2] else 0.0
            if value is None:
                return -INF, INF
            return min(lo, value), max(hi, value)
        return op_output_bounds(index, node.input[0], _depth + 1)
    if op == "Concat":
        bounds = [op_output_bounds(index, i, _depth + 1) if index.is_activation(i)
                  else _const_bounds(index.constant(i)) for i in node.input]
        return min(b[0] for b in bounds), max(b[1] for b in bounds)
    return -INF, INF


def _const_bounds(value):
    if value is None or value.size == 0:
        return -INF, INF
    return float(value.min()), float(value.max())


def hold_to_op_bounds(lo: float, hi: float, bounds: Tuple[float, float]) -> Tuple[float, float]:
    """`(lo, hi)` held inside the op's output interval; never inverted."""
    b_lo, b_hi = bounds
    new_lo, new_hi = max(lo, b_lo), min(hi, b_hi)
    if new_lo > new_hi:            # the method's whole range lies outside what the op makes
        if hi < b_lo:
            new_lo = new_hi = b_lo
        else:
            new_lo = new_hi = b_hi
    return new_lo, new_hi
