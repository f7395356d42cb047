"""After the ranges: bias correction and a per-layer sensitivity ranking (issue 23 item 3).

``bias_correction``: the fast, per-channel kind (Nagel et al. 2019, "Data-free
quantization", §4.2, empirical form; NNCF's FastBiasCorrection): each quantized Conv /
ConvTranspose / Gemm is run twice on the *float* model's input of that layer — float, and
quantized (its input through its Q/DQ, int8 weights, int32 bias) — and the mean difference
per output channel is subtracted from the layer's float bias before it is quantized.  The
error is the layer's own (its input is the float one), so all layers are corrected from
one pass over the data: one merged graph holds the float model and, beside it, the
quantized layers reading the float activations.  (Measuring the whole QDQ model's error
at each layer instead corrects each layer for what the layers before it will already
have corrected: on the classifier that costs 15 dB.)

``sensitivity``: quantize one layer at a time (its input codes, weights and bias; every
other layer float) and rank the layers by the SQNR of the model's outputs against the
float model — the worst first.  ``keep_float`` of the k worst is the cure when a target
SQNR is not met.
"""

from __future__ import annotations

import copy
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from .graph import GraphIndex
from .placement import COMPUTE, node_key

__all__ = ["bias_correction", "sensitivity"]


def _session(model):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _expose(model, names):
    from onnx import TensorProto, helper
    have = {o.name for o in model.graph.output}
    for n in names:
        if n not in have:
            model.graph.output.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, None))
    return model


def _batches(data, input_names, max_batches, iter_kw):
    from .inputs import iter_inputs
    for i, feed in enumerate(iter_inputs(data, input_names, **iter_kw)):
        if max_batches is not None and i >= max_batches:
            return
        yield {k: np.ascontiguousarray(v, dtype=np.float32) if v.dtype.kind == "f" else v
               for k, v in feed.items()}


def bias_correction(model, ranges: Mapping[str, Tuple[float, float]], data, *, writer_options=None,
                    max_batches: Optional[int] = None, iter_kw=None) -> Dict[str, np.ndarray]:
    """``{layer's output: per-channel mean error}`` of the QDQ model (see the module
    docstring); pass it as ``bias_shift`` to :func:`qatcore.onnx.qdq.write_qdq`.

    `model` is the float ``onnx.ModelProto`` the ranges were calibrated on (opset ≥ 13)."""
    from .qdq import quantize_model
    writer_options = dict(writer_options or {})
    qmodel = copy.deepcopy(model)
    placement = quantize_model(qmodel, ranges, **writer_options)
    nodes = list(model.graph.node)
    targets = [nodes[n_idx].output[0] for n_idx, _b, _w in placement.biases]
    if not targets:
        return {}
    ops = {nodes[n_idx].output[0]: nodes[n_idx].op_type for n_idx, _b, _w in placement.biases}
    probe = _local_probe(model, qmodel)
    wanted = targets + [_Q + t for t in targets]
    sess = _session(_expose(probe, wanted))
    index = GraphIndex(model)
    sums: Dict[str, np.ndarray] = {}
    counts: Dict[str, int] = {}
    for feed in _batches(data, index.graph_inputs, max_batches, iter_kw or {}):
        values = sess.run(wanted, feed)
        n = len(targets)
        for name, f, q in zip(targets, values[:n], values[n:]):
            d = q.astype(np.float64) - f.astype(np.float64)
            axis = 1 if ops[name] != "Gemm" else d.ndim - 1
            other = tuple(i for i in range(d.ndim) if i != axis)
            sums[name] = sums.get(name, 0.0) + d.sum(axis=other)
            counts[name] = counts.get(name, 0) + d.size // d.shape[axis]
    return {n: (sums[n] / max(counts[n], 1)).astype(np.float32) for n in sums}


_Q = "qatcore_probe/"


def _local_probe(model, qmodel):
    """The float graph plus the QDQ graph (names prefixed) whose QuantizeLinear nodes read
    the float tensors: each quantized layer sees the float model's input."""
    probe = copy.deepcopy(model)
    keep = {i.name for i in model.graph.input}

    def ren(name):
        return name if (not name or name in keep) else _Q + name

    for init in qmodel.graph.initializer:
        new = copy.deepcopy(init)
        new.name = ren(init.name)
        probe.graph.initializer.append(new)
    for node in qmodel.graph.node:
        new = copy.deepcopy(node)
        new.name = ren(node.name) if node.name else ""
        for i, name in enumerate(node.input):
            new.input[i] = ren(name)
        if node.op_type == "QuantizeLinear":
            new.input[0] = node.input[0]           # the float model's tensor
        for i, name in enumerate(node.output):
            new.output[i] = ren(name)
        probe.graph.node.append(new)
    from .qdq import _topological
    nodes = _topological(list(probe.graph.node), list(keep))
    probe.graph.ClearField("node")
    probe.graph.node.extend(nodes)
    probe.graph.ClearField("value_info")
    return probe


def sensitivity(model, ranges: Mapping[str, Tuple[float, float]], data, *, writer_options=None,
                max_batches: Optional[int] = 2, iter_kw=None) -> List[Tuple[str, str, float]]:
    """``[(layer, op type, output SQNR dB)]``, one layer quantized at a time, worst first."""
    from .qdq import quantize_model
    writer_options = dict(writer_options or {})
    index = GraphIndex(model)
    feeds = list(_batches(data, index.graph_inputs, max_batches, iter_kw or {}))
    f_sess = _session(model)
    ref = [[o.astype(np.float64) for o in f_sess.run(None, feed)] for feed in feeds]
    probe = copy.deepcopy(model)
    placement = quantize_model(probe, ranges, **writer_options)
    nodes = list(model.graph.node)
    layers = []
    for edges in placement.activations.values():
        for n_idx, _ in edges:
            node = nodes[n_idx]
            if node.op_type in COMPUTE and node_key(node) not in [k for k, _ in layers]:
                layers.append((node_key(node), node.op_type))
    out = []
    for key, op in layers:
        one = copy.deepcopy(model)
        quantize_model(one, ranges, only=[key], **writer_options)
        sess = _session(one)
        sig = noise = 0.0
        for feed, r in zip(feeds, ref):
            for a, b in zip(r, sess.run(None, feed)):
                sig += float((a ** 2).sum())
                noise += float(((a - b.astype(np.float64)) ** 2).sum())
        out.append((key, op, 10 * np.log10(sig / max(noise, 1e-30))))
    out.sort(key=lambda t: t[2])
    return out
