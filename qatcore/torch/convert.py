"""Convert a prepared torch model: to torch modules on qatcore's int8 kernels, or to a
torch-free integer model."""

from __future__ import annotations

import copy
from typing import Any, Literal, Union, overload

import numpy as np
import torch
from torch import nn

from ..linear import QuantizedLinear
from ..model import QuantizedModel, QuantizedSequential
from .modules import FakeQuantize, QATLinear, QuantizedLinearModule, _quant_params
from .ops import _scale_forward


def _quantized_linear(layer: QATLinear) -> QuantizedLinear:
    wfq = layer.weight_fq
    if not wfq.config.symmetric:
        raise ValueError("convert: weight quantizers must be symmetric (int8 GEMM with weight "
                         "zero point 0)")
    if wfq.calibrating:
        raise ValueError("convert: a quantizer is still calibrating (call freeze(model) first)")
    w = layer.weight.detach().float().contiguous()
    with torch.no_grad():
        wq_float = wfq(w)            # the forward the model trained with, frozen
    ws = _scale_forward(wfq.scale).numpy().astype(np.float32)
    if wfq.axis is None:
        codes = np.rint(wq_float.numpy() / ws[0])
    else:
        codes = np.rint(wq_float.numpy() / ws[:, None])
    qmax = (1 << (wfq.config.bits - 1)) - 1
    weights_q = np.clip(codes, -qmax, qmax).astype(np.int8)
    x_scale, x_zp, x_range = _quant_params(layer.input_fq)
    state = {
        "weights_q": weights_q,
        "weight_scale": ws if wfq.axis is not None else np.float32(ws[0]),
        "bits": np.int32(wfq.config.bits),
        "per_channel": np.bool_(wfq.axis is not None),
        "input_scale": np.float32(x_scale),
        "input_zero_point": np.int32(x_zp),
        "input_qrange": np.array(x_range, np.int32),
    }
    if layer.bias is not None:
        state["bias"] = layer.bias.detach().float().numpy().copy()
    if layer.output_fq is not None:
        o_scale, o_zp, o_range = _quant_params(layer.output_fq)
        state.update(output_quant_scale=np.float32(o_scale),
                     output_quant_zero_point=np.int32(o_zp),
                     output_quant_qrange=np.array(o_range, np.int32))
    return QuantizedLinear.from_state_dict(state)



def _leaves(module: nn.Module):
    """Modules of nested nn.Sequential containers in order (QATLinear is a leaf)."""
    if isinstance(module, nn.Sequential):
        for child in module.children():
            yield from _leaves(child)
    else:
        yield module


def _chain(model: nn.Module):
    """(QATLinear list, activation after each, leading nn.Flatten()) for a [Flatten]
    Linear / ReLU / ReLU6 / Dropout / Identity chain (nested nn.Sequential allowed), else
    None."""
    layers, acts, flatten = [], [], False
    for m in _leaves(model):
        if isinstance(m, QATLinear):
            layers.append(m)
            acts.append(None)
        elif isinstance(m, (nn.ReLU, nn.ReLU6)):
            if not layers or acts[-1] is not None:
                return None
            acts[-1] = "relu" if isinstance(m, nn.ReLU) else "relu6"
        elif isinstance(m, nn.Flatten):
            if layers:            # only a leading Flatten (the input reshape) is integer-safe
                return None
            flatten = flatten or (m.start_dim == 1 and m.end_dim == -1)
        elif isinstance(m, (nn.Dropout, nn.Identity)):
            continue
        else:
            return None
    return (layers, acts, flatten) if layers else None


@overload
def convert(model: nn.Module, *, integer: Literal[True], inplace: bool = False,
            example_inputs: Any = None) -> Union[QuantizedSequential, QuantizedModel]: ...
@overload
def convert(model: nn.Module, *, integer: Literal[False] = False, inplace: bool = False,
            example_inputs: Any = None) -> nn.Module: ...
@overload
def convert(model: nn.Module, *, integer: bool, inplace: bool = False,
            example_inputs: Any = None
            ) -> Union[nn.Module, QuantizedSequential, QuantizedModel]: ...
def convert(model: nn.Module, *, integer: bool = False, inplace: bool = False,
            example_inputs: Any = None
            ) -> Union[nn.Module, QuantizedSequential, QuantizedModel]:
    """Turn a QAT model (from :func:`prepare_qat`, frozen) into integer layers.

    ``integer=False`` (default): every :class:`QATLinear` becomes a
    :class:`QuantizedLinearModule` (int8 weights, int32 accumulation, float in/out); the
    rest of the model stays torch. Works for any model.

    ``integer=True``: for a chain ``[Flatten] (Linear [ReLU|ReLU6]) ...`` (Dropout and
    Identity anywhere), a :class:`qatcore.QuantizedSequential` that runs without torch:
    ``forward_int8`` is int8 end to end (layer i's output quantization is layer i+1's
    input quantizer; the last layer's is its output quantizer, so prepare the model with
    ``quantize_output=True``), ``forward`` float in / float out.

    A whole-graph model (``prepare_qat(model, example_inputs)`` or a CNN): only
    ``integer=True``, which returns a ``qatcore.QuantizedModel`` (NHWC inside; a 4-D
    input is taken NCHW by ``forward``/``quantize_input``, ``input_layout="NCHW"``;
    ``forward_int8`` takes NHWC codes). `example_inputs` gives the input shape if the
    model was prepared without and never run. ``integer=False`` stays the Linear-only
    path (torch modules on qatcore's int8 GEMM); it refuses a captured graph.

    Raises
    ------
    ValueError
        A quantizer is still calibrating, asymmetric weight quantizer, bits > 8; with
        ``integer=True`` also a model that is not such a chain or whose last layer has no
        output quantizer; for a captured graph, a node without an integer op (the
        message names the node and what it calls).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if hasattr(model, "qat_left_float"):
        if not integer:
            raise ValueError("convert: a whole-graph QAT model converts with integer=True "
                             "(a qatcore.QuantizedModel); integer=False is Linear-only")
        from .lower import build, lower
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        return build(lower(model, example_inputs, name=type(model).__name__))
    if integer:
        found = _chain(model)
        if found is None:
            raise ValueError("convert(integer=True) needs a chain of QATLinear / ReLU / ReLU6 "
                             "/ Dropout / Identity (and a leading Flatten); use integer=False "
                             "for other models")
        layers, acts, flatten = found
        if layers[-1].output_fq is None:
            raise ValueError("convert(integer=True): the last layer has no output quantizer "
                             "(prepare_qat(..., quantize_output=True))")
        qlayers = [_quantized_linear(layer) for layer in layers]
        o_scale, o_zp, _ = _quant_params(layers[-1].output_fq)
        return QuantizedSequential(qlayers, activations=acts, output_scale=o_scale,
                                   output_zero_point=o_zp,
                                   input_numerics=layers[0].input_fq.config.numerics,
                                   flatten_input=flatten)
    if not inplace:
        model = copy.deepcopy(model)
    if isinstance(model, QATLinear):
        return _to_module(model)
    targets = [(parent, name) for parent in model.modules()
               for name, child in parent.named_children() if isinstance(child, QATLinear)]
    if not targets:
        raise ValueError("convert: the model has no QATLinear (run prepare_qat first)")
    for parent, name in targets:
        setattr(parent, name, _to_module(getattr(parent, name)))
    return model


def _to_module(layer: QATLinear) -> nn.Module:
    mod = QuantizedLinearModule(_quantized_linear(layer), layer.input_fq.config.numerics)
    if layer.output_fq is None:
        return mod
    return nn.Sequential(mod, _FrozenOutput(layer.output_fq))


class _FrozenOutput(nn.Module):
    """The output fake quantizer of a converted layer (frozen copy)."""

    def __init__(self, fq: FakeQuantize):
        super().__init__()
        self.fq = copy.deepcopy(fq)

    def forward(self, x):
        with torch.no_grad():
            return self.fq(x)
