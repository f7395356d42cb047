"""Whole-graph capture for quantization-aware training of CNNs.

Why ``torch.fx.symbolic_trace`` and not ``torch.export``: QAT trains the prepared model in
eager mode with the user's optimizer, train/eval switches and ``state_dict``.
``symbolic_trace`` returns a :class:`torch.fx.GraphModule`, an ordinary ``nn.Module``
whose ``forward`` is Python code calling the original ``nn.Module`` objects (their
Parameters, buffers and ``train()``/``eval()`` behaviour intact) and the functional ops
it saw (``x + y``, ``F.relu``, ``torch.flatten``, ``torch.cat``, ``view``/``reshape``,
``F.avg_pool2d``, ``F.adaptive_avg_pool2d``, ``mean``). ``torch.export`` gives an ATen
graph of decomposed ops with BatchNorm functionalized into ``_native_batch_norm_legit``
and the train/eval decision frozen at export time (PT2E needs
``move_exported_model_to_eval`` for that); swapping in QAT layers and folding BatchNorm
there means pattern-matching decompositions, and the result is not the user's modules
any more. fx's limit -- data-dependent Python control flow in ``forward`` does not
trace -- is rare in CNN classifiers and is reported by fx itself.

What :func:`prepare_graph` inserts (the integer graph's quantization points, nothing
else): a fake quantizer on each model input, after each convolution / Linear (BatchNorm
folded, ReLU / ReLU6 / Hardtanh(0, 6) fused), each add (fused ReLU), concatenation
(inputs and output share one quantizer: TFLite's int8 CONCATENATION does not rescale),
Hardswish, Sigmoid and Softmax (fixed 1/256, zero point -128). Reshape / flatten / view,
max pooling, average pooling, standalone ReLU, Dropout and Identity keep their input's
qparams. A global mean (``adaptive_avg_pool2d(x, 1)``, ``mean(dim=(2, 3))``) becomes a
global AVERAGE_POOL_2D, not a MEAN: its arithmetic (sum of codes, divide, round half
away) is exact and the QAT layer computes it bit for bit, where MEAN's requantization
would add a quantizer and an off-by-one now and then. Average pools round their result
to the input's grid the way TFLite does. Weights are fake-quantized per output channel by
the QAT layers (:mod:`qatcore.torch.layers`), biases to int32 codes at ``s_in · s_w``.
"""

from __future__ import annotations

import copy
import operator
import warnings
from typing import Dict, List, Optional, Sequence

import torch
from torch import fx, nn
from torch.nn import functional as F

from ..config import FakeQuantConfig
from .layers import (FixedQParamsFakeQuantize, QATAvgPool2d, QATConvBn2d, QATLinearBn,
                     _QATWeighted)
from .modules import FakeQuantize

__all__ = ["prepare_graph", "node_kind", "QUANTIZING_KINDS", "PASSTHROUGH_KINDS"]

_RELU_FUNCS = {F.relu, torch.relu, torch.relu_, getattr(F, "relu_", None)}
_ADD_FUNCS = {operator.add, operator.iadd, torch.add}
_CAT_FUNCS = {torch.cat, getattr(torch, "concat", None), getattr(torch, "concatenate", None)}
_MAXPOOL_FUNCS = {F.max_pool2d, getattr(F, "_max_pool2d", None), torch.max_pool2d}
_SIGMOID_FUNCS = {torch.sigmoid, F.sigmoid}
_SOFTMAX_FUNCS = {F.softmax, torch.softmax}
_RESHAPE_FUNCS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze"}
_IDENTITY_FUNCS = {F.dropout, F.dropout2d, F.alpha_dropout}
_META_METHODS = {"size", "dim"}
_META_FUNCS = {getattr, operator.getitem, operator.mul, operator.floordiv, operator.sub,
               operator.add, len}

#: Kinds after which the integer graph stores a new activation tensor (a quantizer).
QUANTIZING_KINDS = frozenset({"input", "conv", "linear", "add", "cat", "hardswish",
                              "sigmoid", "softmax", "relu6"})
#: Kinds that keep their input's qparams (a global mean is a global AVERAGE_POOL_2D).
PASSTHROUGH_KINDS = frozenset({"reshape", "maxpool", "avgpool", "mean", "identity", "relu"})


def _arg(node: fx.Node, i: int, name: str, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _is_act_bounds(lo, hi):
    if lo == 0 and hi is None:
        return "relu"
    if lo == 0 and hi == 6:
        return "relu6"
    return None


def _tensor_args(node: fx.Node, meta: set) -> List[fx.Node]:
    return [a for a in node.all_input_nodes if a not in meta]


def node_kind(node: fx.Node, modules: Dict[str, nn.Module], meta: set) -> str:
    """The integer-graph role of one fx node: a kind of :data:`QUANTIZING_KINDS` or
    :data:`PASSTHROUGH_KINDS`, ``"bn"``, ``"meta"`` (shape arithmetic), ``"output"``,
    ``"qat"`` (already a qatcore module) or ``"float"`` (no integer op)."""
    op, t = node.op, node.target
    if op == "placeholder":
        return "input"
    if op == "output":
        return "output"
    if op == "get_attr":
        return "float"
    if op == "call_module":
        m = modules[t]
        if isinstance(m, (FakeQuantize, _QATWeighted, QATAvgPool2d)):
            return "qat"
        if type(m) is nn.Conv2d:
            return "conv" if m.padding_mode == "zeros" else "float"
        if type(m) is nn.Linear:
            return "linear"
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            return "bn"
        if isinstance(m, nn.ReLU):
            return "relu"
        if isinstance(m, nn.ReLU6):
            return "relu6"
        if isinstance(m, nn.Hardtanh):
            return _is_act_bounds(m.min_val, m.max_val) or "float"
        if isinstance(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout,
                          nn.Identity)):
            return "identity"
        if isinstance(m, nn.Flatten):
            return "reshape"
        if isinstance(m, nn.MaxPool2d):
            return "maxpool" if not m.return_indices else "float"
        if isinstance(m, nn.AvgPool2d):
            return "avgpool"
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return "mean" if _pair(m.output_size) == (1, 1) else "float"
        if isinstance(m, nn.Hardswish):
            return "hardswish"
        if isinstance(m, nn.Sigmoid):
            return "sigmoid"
        if isinstance(m, nn.Softmax):
            return "softmax"
        return "float"
    tensors = _tensor_args(node, meta)
    if op == "call_method":
        if t in _META_METHODS:
            return "meta"
        if t in ("relu", "relu_"):
            return "relu"
        if t in ("clamp", "clamp_", "clip"):
            return _is_act_bounds(_arg(node, 1, "min"), _arg(node, 2, "max")) or "float"
        if t in ("add", "add_"):
            return "add" if len(tensors) == 2 and _arg(node, 2, "alpha", 1) == 1 else "float"
        if t in _RESHAPE_METHODS:
            return "reshape"
        if t == "contiguous":
            return "identity"
        if t == "mean":
            return "mean"
        if t == "sigmoid":
            return "sigmoid"
        if t == "softmax":
            return "softmax"
        return "float"
    # call_function
    if t in _META_FUNCS and not tensors and node.all_input_nodes:
        return "meta"
    if t in _RELU_FUNCS:
        return "relu"
    if t is F.relu6:
        return "relu6"
    if t is F.hardtanh:
        return _is_act_bounds(_arg(node, 1, "min_val", -1.0), _arg(node, 2, "max_val", 1.0)) \
            or "float"
    if t in (torch.clamp, torch.clip):
        return _is_act_bounds(_arg(node, 1, "min"), _arg(node, 2, "max")) or "float"
    if t in _ADD_FUNCS:
        ok = len(tensors) == 2 and all(isinstance(a, fx.Node) for a in node.args[:2]) \
            and node.kwargs.get("alpha", 1) == 1
        return "add" if ok else "float"
    if t in _CAT_FUNCS:
        return "cat"
    if t in _RESHAPE_FUNCS:
        return "reshape"
    if t in _MAXPOOL_FUNCS:
        return "maxpool" if not _arg(node, 6, "return_indices", False) else "float"
    if t is F.avg_pool2d:
        return "avgpool"
    if t is F.adaptive_avg_pool2d:
        return "mean" if _pair(_arg(node, 1, "output_size")) == (1, 1) else "float"
    if t is torch.mean:
        return "mean"
    if t is F.hardswish:
        return "hardswish"
    if t in _SIGMOID_FUNCS:
        return "sigmoid"
    if t in _SOFTMAX_FUNCS:
        return "softmax"
    if t in _IDENTITY_FUNCS:
        return "identity"
    return "float"


def describe(node: fx.Node, modules: Dict[str, nn.Module]) -> str:
    """``name (what it calls)`` of an fx node, for messages."""
    if node.op == "call_module":
        what = f"{type(modules[node.target]).__name__} module {node.target!r}"
    elif node.op == "call_function":
        t = node.target
        what = f"function {getattr(t, '__module__', '') or ''}.{getattr(t, '__name__', t)}"
    elif node.op == "call_method":
        what = f"method Tensor.{node.target}"
    else:
        what = node.op
    return f"{node.name} ({what})"


class _Tracer(fx.Tracer):
    """fx's default leaves (torch.nn modules) plus qatcore's QAT modules."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (FakeQuantize, _QATWeighted, QATAvgPool2d)):
            return True
        return super().is_leaf_module(m, qualname)


def _record_input_shape(module, args):
    if args and isinstance(args[0], torch.Tensor):
        module.qat_input_shapes = [tuple(a.shape[1:]) for a in args
                                   if isinstance(a, torch.Tensor)]


class _Domains:
    """Union-find over quantization domains: tensors in one domain share a quantizer."""

    def __init__(self):
        self.parent: List[int] = []
        self.fixed: Dict[int, bool] = {}

    def new(self, fixed: bool = False) -> int:
        self.parent.append(len(self.parent))
        d = len(self.parent) - 1
        self.fixed[d] = fixed
        return d

    def find(self, d: int) -> int:
        while self.parent[d] != d:
            self.parent[d] = self.parent[self.parent[d]]
            d = self.parent[d]
        return d

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if self.fixed[rb] and not self.fixed[ra]:
                ra, rb = rb, ra
            self.parent[rb] = ra
        return ra


def _set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_name, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, name, module)


def _avgpool_params(node: fx.Node, modules) -> Optional[tuple]:
    """(kernel, stride, padding) of an average pool the integer graph can run, else None."""
    if node.op == "call_module":
        m = modules[node.target]
        k, s, p = m.kernel_size, m.stride, m.padding
        ceil, cip, div = m.ceil_mode, m.count_include_pad, m.divisor_override
    else:
        k = _arg(node, 1, "kernel_size")
        s = _arg(node, 2, "stride", None)
        p = _arg(node, 3, "padding", 0)
        ceil = _arg(node, 4, "ceil_mode", False)
        cip = _arg(node, 5, "count_include_pad", True)
        div = _arg(node, 6, "divisor_override", None)
    k = _pair(k)
    s = _pair(s) if s not in (None, [], ()) else k
    p = _pair(p)
    if ceil or div is not None or (cip and any(p)):
        return None          # TFLite averages the in-bounds taps only
    return k, s, p


def _mean_keepdim(node: fx.Node, modules) -> Optional[bool]:
    """keepdim of a global spatial mean (adaptive pool to 1: True), None for other means."""
    if node.op == "call_module" or node.target is F.adaptive_avg_pool2d:
        return True
    dims = _arg(node, 1, "dim")
    dims = tuple(dims) if isinstance(dims, (tuple, list)) else (dims,)
    if any(not isinstance(d, int) for d in dims) or sorted(d % 4 for d in dims) != [2, 3]:
        return None
    if _arg(node, 3, "dtype", None) is not None:
        return None
    return bool(_arg(node, 2, "keepdim", False))


def prepare_graph(model: nn.Module, example_inputs: Optional[Sequence] = None,
                  activation: Optional[FakeQuantConfig] = None,
                  weight: Optional[FakeQuantConfig] = None, *, inplace: bool = False,
                  warn: bool = True) -> fx.GraphModule:
    """Trace `model` with torch.fx and insert QAT layers and fake quantizers where the
    integer graph quantizes (see the module docstring). Used by
    :func:`qatcore.torch.prepare_qat`; returns the GraphModule, with the attributes
    ``qat_left_float`` (``"node (op)"`` strings of everything left float) and
    ``qat_input_shapes`` (per-sample input shapes, from `example_inputs` or the first
    forward)."""
    from .modules import default_activation_config, default_weight_config

    activation = default_activation_config() if activation is None else activation
    weight = default_weight_config() if weight is None else weight
    if not inplace:
        model = copy.deepcopy(model)
    root = model
    graph = _Tracer().trace(root)
    gm = fx.GraphModule(root, graph, class_name=type(model).__name__ + "QAT")
    graph = gm.graph
    modules = dict(gm.named_modules())

    meta: set = set()
    kinds: Dict[fx.Node, str] = {}
    for n in graph.nodes:
        kinds[n] = node_kind(n, modules, meta)
        if kinds[n] == "meta":
            meta.add(n)

    # 1. Conv2d / Linear [+ BatchNorm] -> QAT layers (the BN node is removed).
    for n in list(graph.nodes):
        if kinds.get(n) not in ("conv", "linear"):
            continue
        layer = modules[n.target]
        users = list(n.users)
        bn = None
        want = nn.BatchNorm2d if kinds[n] == "conv" else nn.BatchNorm1d
        if len(users) == 1 and kinds.get(users[0]) == "bn" and \
                type(modules[users[0].target]) is want and \
                modules[users[0].target].track_running_stats:
            b = users[0]
            bn = modules[b.target]
            b.replace_all_uses_with(n)
            graph.erase_node(b)
            gm.delete_submodule(b.target)       # it lives on inside the QAT layer
            del kinds[b]
        qat = (QATConvBn2d if kinds[n] == "conv" else QATLinearBn)(layer, bn, weight)
        _set_module(gm, n.target, qat)

    modules = dict(gm.named_modules())
    # 2. Which nodes quantize, and the domains (shared qparams) of every tensor.
    dom = _Domains()
    domain: Dict[fx.Node, Optional[int]] = {}
    quantize_after: List[fx.Node] = []
    left_float: List[str] = []
    fused: set = set()

    def src_domain(n):
        srcs = _tensor_args(n, meta)
        return domain.get(srcs[0]) if srcs else None

    for n in list(graph.nodes):
        k = kinds[n]
        if k in ("meta", "output", "qat"):
            continue
        if k in ("relu", "relu6"):
            src = _tensor_args(n, meta)[0]
            if kinds.get(src) in ("conv", "linear", "add") and len(src.users) == 1:
                fused.add(src)                      # the activation is the op's clamp
                quantize_after.remove(src)
                domain[n] = domain[src]
                quantize_after.append(n)
                continue
            d = src_domain(n)
            domain[n] = d
            if k == "relu6":                         # 6 need not be on the grid
                if d is None:
                    domain[n] = dom.new()
                quantize_after.append(n)
            continue
        if k in ("input", "conv", "linear", "add", "hardswish"):
            domain[n] = dom.new()
            quantize_after.append(n)
        elif k in ("sigmoid", "softmax"):
            domain[n] = dom.new(fixed=True)
            quantize_after.append(n)
        elif k == "cat":
            d = dom.new()
            for s in _tensor_args(n, meta):
                if domain.get(s) is not None:
                    d = dom.union(d, domain[s])
            domain[n] = d
            quantize_after.append(n)
        elif k == "avgpool":
            params = _avgpool_params(n, modules)
            if params is None:
                kinds[n] = "float"
                left_float.append(describe(n, modules) + ": ceil_mode, divisor_override "
                                  "or count_include_pad with padding")
                domain[n] = None
                continue
            domain[n] = src_domain(n)
        elif k == "mean":
            if _mean_keepdim(n, modules) is None:
                kinds[n] = "float"
                left_float.append(describe(n, modules) + ": a mean over other dims than "
                                  "the spatial (2, 3)")
                domain[n] = None
                continue
            domain[n] = src_domain(n)
        elif k in PASSTHROUGH_KINDS:
            domain[n] = src_domain(n)
        else:                                        # float: no integer op
            if k == "bn":
                left_float.append(describe(n, modules) + ": BatchNorm not after a "
                                  "Conv2d / Linear")
            else:
                left_float.append(describe(n, modules))
            kinds[n] = "float"
            domain[n] = None

    # 3. One quantizer per domain root.
    fq_of_root: Dict[int, FakeQuantize] = {}
    used_names = set(dict(gm.named_children()))

    def fq_for(d: int, n: fx.Node) -> str:
        r = dom.find(d)
        if r not in fq_of_root:
            name = f"{n.name}_fq"
            while name in used_names:
                name += "_"
            used_names.add(name)
            fq = FixedQParamsFakeQuantize() if dom.fixed[r] else FakeQuantize(activation)
            gm.add_submodule(name, fq)
            fq_of_root[r] = (name, fq)
        return fq_of_root[r][0]

    inserted: Dict[fx.Node, fx.Node] = {}          # quantizer node -> quantized node
    for n in quantize_after:
        name = fq_for(domain[n], n)
        with graph.inserting_after(n):
            q = graph.call_module(name, (n,))
        inserted[q] = n
        n.replace_all_uses_with(q, delete_user_cb=lambda u, q=q: u is not q)

    def input_fq(n: fx.Node) -> Optional[FakeQuantize]:
        srcs = _tensor_args(n, meta)
        src = inserted.get(srcs[0], srcs[0]) if srcs else None
        d = domain.get(src) if src is not None else None
        return fq_of_root[dom.find(d)][1] if d is not None else None

    # 4. Bias scales and average pools read their input's quantizer.
    counter = 0
    for n in list(graph.nodes):
        k = kinds.get(n)
        if k in ("conv", "linear"):
            modules[n.target].set_input_quantizer(input_fq(n))
            modules[n.target].set_output_quantizer(fq_of_root[dom.find(domain[n])][1])
        elif k in ("avgpool", "mean"):
            if k == "avgpool":
                kernel, stride, padding = _avgpool_params(n, modules)
                pool = QATAvgPool2d(kernel, stride, padding)
            else:
                pool = QATAvgPool2d(None, None, (0, 0), _mean_keepdim(n, modules))
            pool.set_input_quantizer(input_fq(n))
            if n.op == "call_module":
                _set_module(gm, n.target, pool)
            else:
                name = f"{n.name}_pool"
                while name in used_names:
                    name += "_"
                used_names.add(name)
                gm.add_submodule(name, pool)
                src = _tensor_args(n, meta)[0]
                with graph.inserting_before(n):
                    p = graph.call_module(name, (src,))
                n.replace_all_uses_with(p)
                domain[p] = domain[n]
                graph.erase_node(n)
                counter += 1

    graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    gm.qat_left_float = left_float
    gm.qat_input_shapes = ([tuple(t.shape[1:]) for t in example_inputs]
                           if example_inputs is not None else None)
    gm.register_forward_pre_hook(_record_input_shape)
    if left_float and warn:
        warnings.warn("prepare_qat left these float (no integer op; convert(integer=True) "
                      "will refuse them): " + "; ".join(left_float), stacklevel=3)
    return gm


def summary(gm: fx.GraphModule) -> str:
    """A text table of the prepared graph: each node, its kind, its quantizer."""
    modules = dict(gm.named_modules())
    lines = []
    meta: set = set()
    for n in gm.graph.nodes:
        k = node_kind(n, modules, meta)
        if k == "meta":
            meta.add(n)
            continue
        lines.append(f"{n.name:<24} {k:<10} {describe(n, modules)}")
    if getattr(gm, "qat_left_float", None):
        lines.append("left float: " + "; ".join(gm.qat_left_float))
    return "\n".join(lines)
