"""qatcore's QDQ writer: a float ONNX model + calibrated ranges -> a static int8 QDQ model.

Activations: ``QuantizeLinear → DequantizeLinear`` per tensor, int8 with a zero point,
on the node inputs :func:`qatcore.onnx.placement.plan` selects (one Q/DQ pair per tensor,
shared by the consumers that read codes; the others keep reading the float tensor).
Weights: int8 symmetric (codes in [−127, 127], ``scale = max|w| / 127``) per output
channel, ``DequantizeLinear`` with ``axis`` (opset ≥ 13). Bias: int32 at
``s_x · s_w[c]`` with zero point 0, as onnxruntime's and TFLite's integer kernels expect.
onnxruntime's CPU provider fuses ``DQ → Conv → Q`` and friends into QLinear kernels.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np

from .graph import GraphIndex
from .placement import Placement, plan

__all__ = ["write_qdq", "quantize_model", "activation_qparams"]

_INT32_MAX = 2 ** 31 - 1


def activation_qparams(lo: float, hi: float) -> Tuple[np.float32, np.int8]:
    """int8 ``(scale, zero_point)`` of the range ``[lo, hi]`` widened to hold 0."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = (hi - lo) / 255.0
    if not (scale > 0 and math.isfinite(scale)):
        return np.float32(1.0), np.int8(0)
    zp = int(np.clip(np.rint(-128.0 - lo / scale), -128, 127))
    return np.float32(scale), np.int8(zp)


def channel_qparams(ranges: np.ndarray, lo: float, hi: float):
    """Per-channel int8 ``(scales, zero_points)`` of ``(C, 2)`` ranges, each held inside
    the tensor's own ``[lo, hi]`` and widened to hold 0."""
    r = np.asarray(ranges, np.float64)
    c_lo = np.minimum(np.maximum(r[:, 0], float(lo)), 0.0)
    c_hi = np.maximum(np.minimum(r[:, 1], float(hi)), 0.0)
    scale = (c_hi - c_lo) / 255.0
    ok = np.isfinite(scale) & (scale > 0)
    scale = np.where(ok, scale, 1.0)
    zp = np.where(ok, np.clip(np.rint(-128.0 - c_lo / scale), -128, 127), 0)
    return scale.astype(np.float32), zp.astype(np.int8)


def _weight_codes(w: np.ndarray, axis):
    w = w.astype(np.float32)
    if axis is None:
        amax = np.float32(np.abs(w).max()) if w.size else np.float32(0)
        scale = np.float32(amax / 127.0) if amax > 0 else np.float32(1.0)
        q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        return q, np.asarray(scale, np.float32), np.asarray(0, np.int8)
    other = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=other) if w.size else np.zeros(w.shape[axis], np.float32)
    scale = np.where(amax > 0, amax / np.float32(127.0), np.float32(1.0)).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale, np.zeros(scale.shape, np.int8)


def _topological(nodes, graph_inputs):
    produced = {}
    for k, n in enumerate(nodes):
        for o in n.output:
            produced[o] = k
    indeg = [0] * len(nodes)
    users = [[] for _ in nodes]
    for k, n in enumerate(nodes):
        deps = {produced[i] for i in n.input if i in produced and produced[i] != k}
        indeg[k] = len(deps)
        for d in deps:
            users[d].append(k)
    ready = [k for k in range(len(nodes)) if indeg[k] == 0]
    order = []
    import heapq
    heapq.heapify(ready)
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for u in users[k]:
            indeg[u] -= 1
            if indeg[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise ValueError("the graph has a cycle")
    return [nodes[k] for k in order]


def quantize_model(model, ranges: Mapping[str, Tuple[float, float]], *, preset="auto",
                   per_channel=True, quantize_fragile=False,
                   keep_float: Sequence[str] = (), only=None,
                   bias_shift: Optional[Mapping[str, np.ndarray]] = None) -> Placement:
    """Rewrite `model` (an ``onnx.ModelProto``, opset ≥ 13) in place into QDQ form.

    `bias_shift`: ``{node's first output: per-channel shift}`` subtracted from that
    node's float bias before it is quantized (bias correction)."""
    from onnx import TensorProto, helper, numpy_helper

    index = GraphIndex(model)
    placement = plan(index, ranges, preset=preset, per_channel=per_channel,
                     quantize_fragile=quantize_fragile, keep_float=keep_float, only=only)
    bias_shift = dict(bias_shift or {})
    g = model.graph
    nodes = list(g.node)
    new_nodes = []
    new_inits = []
    act_params = {}

    def add_init(name, array):
        new_inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def qdq_pair(tensor, dq_name):
        s, zp = act_params[tensor]
        base = tensor.replace("/", "_")
        s_name = add_init(f"{base}_scale", s)
        zp_name = add_init(f"{base}_zero_point", zp)
        q_name = f"{tensor}_QuantizeLinear"
        attrs = {"axis": 1} if np.ndim(s) else {}
        new_nodes.append(helper.make_node("QuantizeLinear", [tensor, s_name, zp_name],
                                          [q_name], name=f"{base}_QuantizeLinear", **attrs))
        new_nodes.append(helper.make_node("DequantizeLinear", [q_name, s_name, zp_name],
                                          [dq_name], name=f"{base}_DequantizeLinear", **attrs))

    # model outputs quantized (quantize_fragile): the producer writes `<out>_float`
    renamed = {}
    for out in placement.outputs:
        renamed[out] = f"{out}_float"
    if renamed:
        for n in nodes:
            for i, name in enumerate(n.input):
                if name in renamed:
                    n.input[i] = renamed[name]
            for i, name in enumerate(n.output):
                if name in renamed:
                    n.output[i] = renamed[name]

    for tensor, edges in placement.activations.items():
        lo, hi = ranges[tensor]
        if tensor in placement.per_channel:
            act_params[tensor] = channel_qparams(placement.per_channel[tensor], lo, hi)
        else:
            act_params[tensor] = activation_qparams(lo, hi)
        src = renamed.get(tensor, tensor)
        act_params[src] = act_params[tensor]
        dq = f"{src}_DequantizeLinear_Output"
        qdq_pair(src, dq)
        for n_idx, i_idx in edges:
            nodes[n_idx].input[i_idx] = dq
    for out in placement.outputs:
        lo, hi = ranges[out]
        act_params[renamed[out]] = activation_qparams(lo, hi)
        qdq_pair(renamed[out], out)

    # weights: int8 per channel
    w_scales = {}
    done = {}
    for n_idx, i_idx, axis in placement.weights:
        node = nodes[n_idx]
        name = node.input[i_idx]
        key = (name, axis)
        if key not in done:
            w = index.constant(name)
            q, scale, zp = _weight_codes(w, axis)
            base = name.replace("/", "_")
            suffix = "" if axis is not None else "_pt"
            q_name = add_init(f"{base}_quantized{suffix}", q)
            s_name = add_init(f"{base}_scale{suffix}", scale)
            z_name = add_init(f"{base}_zero_point{suffix}", zp)
            dq = f"{base}_DequantizeLinear_Output{suffix}"
            attrs = {"axis": axis} if axis is not None else {}
            new_nodes.append(helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [dq],
                                              name=f"{base}_DequantizeLinear{suffix}", **attrs))
            done[key] = (dq, scale)
        node.input[i_idx] = done[key][0]
        w_scales[n_idx] = (done[key][1], axis)

    # biases: int32 at s_x * s_w
    for n_idx, b_idx, _w_idx in placement.biases:
        node = nodes[n_idx]
        if n_idx not in w_scales:
            continue
        b_name = node.input[b_idx]
        b = index.constant(b_name)
        if b is not None and node.output[0] in bias_shift:
            b = (b - np.asarray(bias_shift[node.output[0]], np.float32).reshape(b.shape)).astype(np.float32)
        x_tensor = next((t for t, edges in placement.activations.items() if (n_idx, 0) in edges), None)
        if b is None or x_tensor is None:
            continue
        s_x = np.asarray(act_params[x_tensor][0], np.float32)
        s_w, axis = w_scales[n_idx]
        if s_x.size > 1 and np.size(s_w) != s_x.size:
            continue
        s_b = (s_x * np.asarray(s_w, np.float32)).astype(np.float32)
        if s_b.size not in (1, b.size) or not np.all(s_b > 0):
            continue
        codes = np.rint(b.astype(np.float64) / s_b.astype(np.float64))
        if np.abs(codes).max(initial=0) > _INT32_MAX:
            continue                       # the accumulator scale is too fine: keep it float
        base = f"{b_name.replace('/', '_')}_{n_idx}"
        q_name = add_init(f"{base}_quantized", codes.astype(np.int32))
        if s_b.size == 1:
            s_name = add_init(f"{base}_scale", np.float32(s_b.ravel()[0]))
            z_name = add_init(f"{base}_zero_point", np.int32(0))
            attrs = {}
        else:
            s_name = add_init(f"{base}_scale", s_b)
            z_name = add_init(f"{base}_zero_point", np.zeros(s_b.shape, np.int32))
            attrs = {"axis": 0}
        dq = f"{base}_DequantizeLinear_Output"
        new_nodes.append(helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [dq],
                                          name=f"{base}_DequantizeLinear", **attrs))
        node.input[b_idx] = dq

    all_nodes = _topological(nodes + new_nodes, index.graph_inputs)
    used = {i for n in all_nodes for i in n.input} | set(index.graph_outputs)
    keep_inits = [i for i in g.initializer if i.name in used]
    g.ClearField("node")
    g.node.extend(all_nodes)
    g.ClearField("initializer")
    g.initializer.extend(keep_inits + new_inits)
    g.ClearField("value_info")         # shapes are unchanged, but names moved: let runtimes infer
    del TensorProto
    return placement


def write_qdq(model_path, ranges: Mapping[str, Tuple[float, float]], qdq_path, *,
              preset="auto", per_channel=True, quantize_fragile=False,
              keep_float: Sequence[str] = (), only=None, bias_shift=None) -> Placement:
    """Write the QDQ model of `model_path` quantized with `ranges` ``{tensor: (lo, hi)}``.

    Parameters
    ----------
    model_path : str or Path
        The float model the ranges were calibrated on (pre-processed the same way).
    ranges : mapping
        ``{tensor name: (lo, hi)}`` (a :class:`CalibrationResult`).
    qdq_path : str or Path
        Where the QDQ model goes.
    preset : {"auto", "cnn", "transformer"}
        Placement preset (:mod:`qatcore.onnx.placement`).
    per_channel : bool
        Weights per output channel (True) or per tensor.
    quantize_fragile : bool
        Also quantize Softmax / Sigmoid / HardSigmoid inputs and the model's outputs.
    keep_float : sequence of str
        Node names (or output tensor names) to leave float.
    only : sequence of str, optional
        Quantize the inputs of these nodes only (by name or first output).
    bias_shift : mapping, optional
        ``{node's first output: per-channel shift}`` taken off the float bias before it
        is quantized (:func:`qatcore.onnx.tune.bias_correction`).

    Returns
    -------
    Placement
        What was quantized and what was left float, and why.
    """
    import onnx

    model = onnx.load(str(model_path))
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=13)
    if opset < 13:
        model = onnx.version_converter.convert_version(model, 13)
    for name, (lo, hi) in ranges.items():
        if not (math.isfinite(float(lo)) and math.isfinite(float(hi))) or float(lo) > float(hi):
            raise ValueError(f"ranges: tensor {name!r} has no valid range ({lo}, {hi})")
    placement = quantize_model(model, ranges, preset=preset, per_channel=per_channel,
                               quantize_fragile=quantize_fragile, keep_float=keep_float,
                               only=only, bias_shift=bias_shift)
    onnx.save(model, str(qdq_path))
    return placement
