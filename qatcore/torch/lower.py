"""Lower a captured, frozen QAT graph (:func:`qatcore.torch.prepare_qat` with
`example_inputs` or a CNN) to the integer graph of ``docs/integer-graph.md``.

:func:`lower` returns the graph as plain data (:class:`GraphSpec`: tensor specs and
``(op name, keyword arguments)`` pairs); :func:`build` turns it into a
``qatcore.QuantizedModel``. Layout: torch's NCHW activations become NHWC tensors
(``(C, H, W)`` -> ``(H, W, C)``), conv weights OIHW -> OHWI, depthwise weights
``(C·M, 1, KH, KW)`` -> ``(1, KH, KW, C·M)``; a flatten of an NCHW tensor is a Reshape
of the NHWC one (the HWC order), and the Linear reading it gets its weight columns
permuted so it computes what torch computed on the CHW order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import fx
from torch.fx.passes.shape_prop import ShapeProp

from .capture import _arg, _pair, describe, node_kind
from .layers import QATAvgPool2d, QATConvBn2d, QATLinearBn, _QATWeighted
from .modules import FakeQuantize, _quant_params

__all__ = ["GraphSpec", "lower", "build"]


@dataclass
class GraphSpec:
    """The integer graph as data: ``tensors`` (dicts with the TensorSpec fields),
    ``ops`` (``(op class name, kwargs)``), ``inputs`` / ``outputs`` (tensor names)."""
    tensors: List[Dict[str, Any]] = field(default_factory=list)
    ops: List[Tuple[str, Dict[str, Any]]] = field(default_factory=list)
    inputs: List[str] = field(default_factory=list)
    outputs: List[str] = field(default_factory=list)
    input_layout: str = "NHWC"
    name: str = "model"
    #: tensor name -> the fx node whose (fake-quantized) output it holds
    values: Dict[str, str] = field(default_factory=dict)


@dataclass
class _T:
    """A materialized integer tensor: name, torch sample shape, qparams, and the
    permutation `perm` of a flat tensor (int index i holds torch index perm[i])."""
    name: str
    torch_shape: Tuple[int, ...]
    scale: float
    zero_point: int
    perm: Optional[np.ndarray] = None


@dataclass
class _Pending:
    """A quantizing op whose output tensor is the quantizer after it."""
    node: fx.Node
    kind: str
    activation: Optional[str] = None


class _Raw:
    """A float graph input before its quantizer."""


def _nhwc(shape: Tuple[int, ...]) -> Tuple[int, ...]:
    if len(shape) == 3:
        c, h, w = shape
        return (h, w, c)
    return tuple(shape)


def _channel_axis(dim: int, rank: int) -> int:
    """Axis of the NHWC sample shape for torch dim `dim` of a batched tensor of `rank`."""
    dim = dim % rank
    if dim == 0:
        raise ValueError("the batch dimension")
    if rank == 4:
        return {1: 2, 2: 0, 3: 1}[dim]
    return dim - 1


def _flat_perm(c: int, h: int, w: int) -> Optional[np.ndarray]:
    if h * w == 1 or c == 1:
        return None
    return np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).ravel()


def _conv_padding(conv, in_hw) -> Tuple[int, int, int, int]:
    p = conv.padding
    if isinstance(p, str):
        if p == "valid":
            return (0, 0, 0, 0)
        pads = []
        for k, d in zip(conv.kernel_size, conv.dilation):       # "same": stride 1
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return tuple(pads)
    ph, pw = _pair(p)
    return (ph, ph, pw, pw)


def lower(gm: fx.GraphModule, example_inputs=None, name: str = "model") -> GraphSpec:
    """The integer graph of a frozen captured QAT model, as a :class:`GraphSpec`.

    Raises
    ------
    ValueError
        A quantizer still calibrating, no known input shape, or a node without an integer
        op (the message names the node and what it calls).
    """
    modules = dict(gm.named_modules())
    for mname, m in modules.items():
        if isinstance(m, FakeQuantize) and m.calibrating:
            raise ValueError(f"convert: quantizer {mname!r} is still calibrating (call "
                             f"freeze(model) first)")
    if example_inputs is None:
        shapes = getattr(gm, "qat_input_shapes", None)
        if not shapes:
            raise ValueError("convert: the input shape is unknown: pass example_inputs to "
                             "prepare_qat or convert, or run the model once")
        example_inputs = [torch.zeros((1,) + tuple(s)) for s in shapes]
    example_inputs = [t[:1].detach().float() for t in example_inputs]
    was_training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*example_inputs)
    finally:
        gm.train(was_training)

    def shape(n: fx.Node) -> Tuple[int, ...]:
        return tuple(n.meta["tensor_meta"].shape)[1:]

    spec = GraphSpec(name=name)
    env: Dict[fx.Node, Any] = {}
    meta: set = set()

    def fail(n, why=""):
        raise ValueError(f"convert: node {describe(n, modules)} has no integer op"
                         + (f" ({why})" if why else ""))

    def tensor(n: fx.Node) -> _T:
        v = env.get(n)
        if not isinstance(v, _T):
            fail(n, "its input is not a quantized tensor")
        return v

    def add_tensor(nm: str, torch_shape, scale, zp, perm=None) -> _T:
        t = _T(nm, tuple(torch_shape), float(np.float32(scale)), int(zp), perm)
        spec.tensors.append({"name": nm, "shape": _nhwc(t.torch_shape), "scale": t.scale,
                             "zero_point": t.zero_point})
        return t

    def inputs_of(n):
        return [a for a in n.all_input_nodes if a not in meta]

    def _lower_node(n):
        k = node_kind(n, modules, meta)
        if k == "meta":
            meta.add(n)
            return
        if k == "input":
            env[n] = _Raw()
            return
        if k == "output":
            outs = n.args[0]
            outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
            for o in outs:
                t = tensor(o) if isinstance(o, fx.Node) else fail(n, "non-tensor output")
                if t.perm is not None:
                    fail(o, "a flattened NCHW tensor as a graph output (its order differs)")
                spec.outputs.append(t.name)
            return
        if k == "qat":
            m = modules[n.target]
            if isinstance(m, FakeQuantize):
                src = n.args[0]
                scale, zp, _ = _quant_params(m)
                v = env[src]
                if isinstance(v, _Raw):
                    sh = shape(src)
                    env[n] = add_tensor(src.name, sh, scale, zp)
                    spec.inputs.append(src.name)
                    if len(sh) == 3:
                        spec.input_layout = "NCHW"
                elif isinstance(v, _T):
                    if (v.scale, v.zero_point) != (float(np.float32(scale)), zp):
                        fail(n, "re-quantization of a stored tensor")
                    env[n] = v
                else:
                    env[n] = _emit(spec, v, n, shape(n), scale, zp, modules, env, tensor,
                                   add_tensor, inputs_of, fail)
                return
            if isinstance(m, _QATWeighted):
                env[n] = _Pending(n, k)
                return
            if isinstance(m, QATAvgPool2d):
                t = tensor(inputs_of(n)[0])
                if len(t.torch_shape) != 3:
                    fail(n, "pooling needs an NCHW input")
                if m.kernel_size is None:                  # global
                    kh, kw = t.torch_shape[1:]
                    sh, sw = 1, 1
                    ph = pw = 0
                    pooled = (t.torch_shape[0], 1, 1)
                else:
                    kh, kw = m.kernel_size
                    sh, sw = m.stride
                    ph, pw = m.padding
                    pooled = shape(n)
                out = add_tensor(n.name if m.keepdim else n.name + "_pool", pooled, t.scale,
                                 t.zero_point)
                spec.ops.append(("AveragePool2D", dict(input=t.name, output=out.name,
                                                       pool=(kh, kw), stride=(sh, sw),
                                                       padding=(ph, ph, pw, pw))))
                if not m.keepdim:
                    flat = add_tensor(n.name, shape(n), t.scale, t.zero_point)
                    spec.ops.append(("Reshape", dict(input=out.name, output=flat.name)))
                    out = flat
                env[n] = out
                return
            fail(n)
        if k in ("relu", "relu6"):
            src = inputs_of(n)[0]
            v = env.get(src)
            if isinstance(v, _Pending) and v.activation is None and \
                    isinstance(v.node, fx.Node) and len(src.users) == 1 and \
                    v.kind in ("qat", "add"):
                env[n] = _Pending(v.node, v.kind, k)
                return
            t = tensor(src)
            if k == "relu6":
                env[n] = _Pending(n, k, "relu6-standalone")
                return
            out = add_tensor(n.name, shape(n), t.scale, t.zero_point, t.perm)
            spec.ops.append(("Relu", dict(input=t.name, output=out.name)))
            env[n] = out
            return
        if k in ("add", "cat", "mean", "hardswish", "sigmoid", "softmax"):
            env[n] = _Pending(n, k)
            return
        if k == "identity":
            env[n] = tensor(inputs_of(n)[0])
            return
        if k == "reshape":
            src = inputs_of(n)[0]
            t = tensor(src)
            out_shape = shape(n)
            perm = _reshape_perm(t, out_shape)
            if perm is False:
                fail(n, f"reshape {t.torch_shape} -> {out_shape} changes the NHWC order")
            if len(out_shape) not in (1, 3):
                fail(n, f"reshape to a sample shape of rank {len(out_shape)}")
            if out_shape == t.torch_shape:
                env[n] = t
                return
            out = add_tensor(n.name, out_shape, t.scale, t.zero_point, perm)
            spec.ops.append(("Reshape", dict(input=t.name, output=out.name)))
            env[n] = out
            return
        if k == "maxpool":
            t = tensor(inputs_of(n)[0])
            if len(t.torch_shape) != 3:
                fail(n, "pooling needs an NCHW input")
            if n.op == "call_module":
                mp = modules[n.target]
                kk, ss, pp, dd, ceil = (mp.kernel_size, mp.stride, mp.padding, mp.dilation,
                                        mp.ceil_mode)
            else:
                kk = _arg(n, 1, "kernel_size")
                ss = _arg(n, 2, "stride", None)
                pp = _arg(n, 3, "padding", 0)
                dd = _arg(n, 4, "dilation", 1)
                ceil = _arg(n, 5, "ceil_mode", False)
            kk = _pair(kk)
            ss = _pair(ss) if ss not in (None, [], ()) else kk
            pp, dd = _pair(pp), _pair(dd)
            if dd != (1, 1):
                fail(n, "dilated max pooling")
            out_shape = shape(n)
            pads = [pp[0], pp[0], pp[1], pp[1]]
            for i, (size, o) in enumerate(zip(t.torch_shape[1:], out_shape[1:])):
                extra = (o - 1) * ss[i] + kk[i] - (size + 2 * pp[i])
                if extra > 0:
                    if not ceil:
                        fail(n)
                    pads[2 * i + 1] += extra
            out = add_tensor(n.name, out_shape, t.scale, t.zero_point)
            spec.ops.append(("MaxPool2D", dict(input=t.name, output=out.name, pool=kk,
                                               stride=ss, padding=tuple(pads))))
            env[n] = out
            return
        fail(n)

    for n in gm.graph.nodes:
        prev = env.get(n)
        _lower_node(n)
        v = env.get(n)
        if isinstance(v, _T) and v is not prev and v.name not in spec.values:
            spec.values[v.name] = n.name
    return spec


def _reshape_perm(t: _T, out_shape):
    """The permutation of the reshaped tensor, or False when NHWC cannot follow."""
    src = t.torch_shape
    if len(src) == 3 and len(out_shape) == 1:
        c, h, w = src
        return _flat_perm(c, h, w)
    if len(src) == 1 and len(out_shape) == 1:
        return t.perm
    if len(src) == 3 and len(out_shape) == 3:
        # only moves between (C, 1, 1)-like shapes where C stays last in NHWC
        return None if src[1] * src[2] == 1 and out_shape[1] * out_shape[2] == 1 else False
    if len(src) == 1 and len(out_shape) == 3:
        return None if t.perm is None and out_shape[1] * out_shape[2] == 1 else False
    return False


def _emit(spec, pending: _Pending, fq_node, out_shape, scale, zp, modules, env, tensor,
          add_tensor, inputs_of, fail):
    """Emit the op of a quantizing node; its output tensor has the quantizer's qparams."""
    n, kind, act = pending.node, pending.kind, pending.activation
    fused = act if act in ("relu", "relu6") else None
    name = n.name                 # a fused activation's output is named after the op
    srcs = inputs_of(n)
    if act == "relu6-standalone":
        t = tensor(srcs[0])
        out = add_tensor(name, out_shape, scale, zp, t.perm)
        spec.ops.append(("Relu", dict(input=t.name, output=out.name, max_value=6.0)))
        return out
    if kind == "qat":
        m = modules[n.target]
        t = tensor(srcs[0])
        if m._input_fq is None:
            fail(n, "its input has no quantizer")
        s_in, _, _ = _quant_params(m._input_fq)
        if float(np.float32(s_in)) != t.scale:
            fail(n, "its bias scale does not match its input tensor")
        weights_q, ws, bias_q = m.integer_parameters()
        if isinstance(m, QATConvBn2d):
            if len(t.torch_shape) != 3:
                fail(n, "Conv2d needs an NCHW input")
            conv = m.layer
            common = dict(input=t.name, weight_scales=ws, bias_q=bias_q,
                          stride=tuple(conv.stride), dilation=tuple(conv.dilation),
                          padding=_conv_padding(conv, t.torch_shape[1:]), activation=fused)
            out = add_tensor(name, out_shape, scale, zp)
            if conv.groups > 1 and conv.groups == conv.in_channels:
                wq = np.ascontiguousarray(weights_q.transpose(1, 2, 3, 0))   # (1, KH, KW, C·M)
                spec.ops.append(("DepthwiseConv2D", dict(output=out.name, weights_q=wq,
                                                         **common)))
            else:
                wq = np.ascontiguousarray(weights_q.transpose(0, 2, 3, 1))   # OHWI
                spec.ops.append(("Conv2D", dict(output=out.name, weights_q=wq, **common)))
            return out
        if isinstance(m, QATLinearBn):
            if len(t.torch_shape) != 1:
                fail(n, "Linear needs a (batch, features) input")
            wq = weights_q if t.perm is None else np.ascontiguousarray(weights_q[:, t.perm])
            out = add_tensor(name, out_shape, scale, zp)
            spec.ops.append(("FullyConnected", dict(input=t.name, output=out.name,
                                                    weights_q=wq, weight_scales=ws,
                                                    bias_q=bias_q, activation=fused)))
            return out
        fail(n)
    if kind == "add":
        a, b = (tensor(s) for s in srcs[:2])
        if a.torch_shape != b.torch_shape:
            fail(n, f"broadcasting add {a.torch_shape} + {b.torch_shape}")
        if (a.perm is None) != (b.perm is None) or \
                (a.perm is not None and not np.array_equal(a.perm, b.perm)):
            fail(n, "adds tensors in different orders")
        out = add_tensor(name, out_shape, scale, zp, a.perm)
        spec.ops.append(("Add", dict(inputs=(a.name, b.name), output=out.name,
                                     activation=fused)))
        return out
    if kind == "cat":
        ts = [tensor(s) for s in srcs]
        rank = len(ts[0].torch_shape) + 1
        dim = _arg(n, 1, "dim", 0)
        perm = None
        if any(t.perm is not None for t in ts):
            if rank != 2:
                fail(n, "concatenates flattened NCHW tensors")
            parts, offset = [], 0
            for t in ts:
                size = t.torch_shape[0]
                parts.append((t.perm if t.perm is not None else np.arange(size)) + offset)
                offset += size
            perm = np.concatenate(parts)
        for t in ts:
            if (t.scale, t.zero_point) != (float(np.float32(scale)), zp):
                fail(n, "inputs with other qparams than the output")
        try:
            axis = _channel_axis(dim, rank)
        except (ValueError, KeyError):
            fail(n, f"concatenation on dim {dim}")
        out = add_tensor(name, out_shape, scale, zp, perm)
        spec.ops.append(("Concatenation", dict(inputs=tuple(t.name for t in ts),
                                               output=out.name, axis=axis)))
        return out
    if kind == "mean":
        t = tensor(srcs[0])
        if len(t.torch_shape) != 3:
            fail(n, "mean needs an NCHW input")
        if n.op == "call_module" or n.target is torch.nn.functional.adaptive_avg_pool2d:
            keep = True
        else:
            dims = _arg(n, 1, "dim")
            dims = tuple(dims) if isinstance(dims, (tuple, list)) else (dims,)
            if sorted(d % 4 for d in dims) != [2, 3]:
                fail(n, f"mean over dims {dims} (only the spatial dims (2, 3))")
            keep = bool(_arg(n, 2, "keepdim", False))
        out = add_tensor(name, out_shape, scale, zp)
        spec.ops.append(("Mean", dict(input=t.name, output=out.name, axes=(0, 1),
                                      keepdims=keep)))
        return out
    if kind in ("hardswish", "sigmoid", "softmax"):
        t = tensor(srcs[0])
        out = add_tensor(name, out_shape, scale, zp, t.perm)
        if kind == "softmax":
            dim = _arg(n, 1, "dim", None)
            if n.op == "call_module":
                dim = modules[n.target].dim
            if len(t.torch_shape) != 1 or dim not in (1, -1):
                fail(n, "softmax over the features of a (batch, features) tensor only")
            spec.ops.append(("Softmax", dict(input=t.name, output=out.name, beta=1.0)))
        else:
            spec.ops.append(({"hardswish": "HardSwish", "sigmoid": "Logistic"}[kind],
                             dict(input=t.name, output=out.name)))
        return out
    fail(n)


def build(spec: GraphSpec):
    """A ``qatcore.QuantizedModel`` from a :class:`GraphSpec` (needs the integer engine,
    ``qatcore.model``)."""
    from .. import model as M

    if not hasattr(M, "QuantizedModel"):
        raise NotImplementedError("convert(integer=True) of a captured graph needs "
                                  "qatcore.model.QuantizedModel (the integer engine)")
    tensors = [M.TensorSpec(t["name"], tuple(t["shape"]), t["scale"], t["zero_point"])
               for t in spec.tensors]
    ops = [getattr(M, kind)(**kwargs) for kind, kwargs in spec.ops]
    return M.QuantizedModel(tensors, ops, spec.inputs, spec.outputs, name=spec.name,
                            input_layout=spec.input_layout)
