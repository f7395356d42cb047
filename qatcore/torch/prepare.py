"""Prepare a torch model for quantization-aware training, and switch its quantizers
between calibrating and frozen."""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from ..config import FakeQuantConfig
from .modules import FakeQuantize, QATLinear, default_activation_config, default_weight_config


#: Modules the Linear-only path cannot handle: their presence selects graph capture.
_GRAPH_ONLY = (nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d,
               nn.AdaptiveAvgPool2d)


def _quantizers(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, FakeQuantize)]


def prepare_qat(model: nn.Module, example_inputs=None,
                activation: Optional[FakeQuantConfig] = None,
                weight: Optional[FakeQuantConfig] = None, *, inplace: bool = False,
                per_channel: bool = True, quantize_output: bool = True) -> nn.Module:
    """Prepare a torch model for quantization-aware training.

    **Whole graph** (given `example_inputs`, or a model with a ``Conv2d`` or BatchNorm):
    the model is traced with ``torch.fx`` (:mod:`qatcore.torch.capture` says why fx) and
    comes back as a ``torch.fx.GraphModule`` with fake quantizers exactly where the
    integer graph quantizes (the model input; after each Conv2d / Linear with its
    BatchNorm folded and ReLU / ReLU6 fused, each add, concatenation, mean, Hardswish,
    Sigmoid, Softmax), weights per output channel, biases as int32 codes; pooling,
    reshape and flatten keep their input's qparams. Everything it cannot quantize stays
    float, is named in a warning and in the GraphModule's ``qat_left_float`` list, and
    ``convert(model, integer=True)`` then refuses it. Train with BatchNorm batch
    statistics, then :func:`freeze_bn_stats`; :func:`freeze`; ``convert(model,
    integer=True)`` gives a ``qatcore.QuantizedModel``.

    **Linear only** (no `example_inputs`, no Conv2d / BatchNorm): every ``nn.Linear``
    (the only layer type swapped; everything else stays as it is) becomes a
    :class:`QATLinear` that
    fake-quantizes its input activation (per tensor, `activation` config) and its weight
    (per output channel symmetric, `weight` config), keeping the original Parameters.
    With `quantize_output`, the last Linear in module order also fake-quantizes its
    output, so an integer model's output quantization is trained too. The quantizers
    start calibrating: run a few batches, then call ``disable_calibration()`` on them (or
    :func:`freeze`), then train.

    Parameters
    ----------
    model : torch.nn.Module
    example_inputs : torch.Tensor or tuple of torch.Tensor, optional
        A batch of inputs (only their shapes are used): selects whole-graph capture.
        (A FakeQuantConfig here is taken as `activation`, the former second argument.)
    activation : FakeQuantConfig, optional
        Default :func:`default_activation_config` (uint8 asymmetric, torch numerics).
    weight : FakeQuantConfig, optional
        Default :func:`default_weight_config` (int8 symmetric, torch numerics).
    inplace : bool, default False
        Modify `model` itself instead of a deep copy.
    per_channel : bool, default True
        Per-output-channel weight scales.
    quantize_output : bool, default True

    Returns
    -------
    torch.nn.Module
        The prepared model (`model` itself when `inplace`).

    Raises
    ------
    TypeError
        `model` is not an nn.Module, or a config is not a FakeQuantConfig.
    ValueError
        The model has no nn.Linear.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(example_inputs, FakeQuantConfig):      # the former positional order
        example_inputs, activation, weight = None, example_inputs, activation
    activation = default_activation_config() if activation is None else activation
    weight = default_weight_config() if weight is None else weight
    for name, cfg in (("activation", activation), ("weight", weight)):
        if not isinstance(cfg, FakeQuantConfig):
            raise TypeError(f"{name} must be a FakeQuantConfig, got {type(cfg).__name__}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if example_inputs is not None or any(isinstance(m, _GRAPH_ONLY) for m in model.modules()):
        if not per_channel:
            raise ValueError("prepare_qat: whole-graph capture quantizes weights per channel "
                             "(per_channel=False is the Linear-only path's option)")
        from .capture import prepare_graph
        return prepare_graph(model, example_inputs, activation, weight, inplace=inplace)
    if not inplace:
        model = copy.deepcopy(model)
    parents = {id(child): (parent, name) for parent in model.modules()
               for name, child in parent.named_children()}
    targets = [parents[id(m)] for m in model.modules()           # in module (forward) order
               if type(m) is nn.Linear and id(m) in parents]
    if isinstance(model, nn.Linear) and type(model) is nn.Linear:
        return QATLinear(model, activation, weight, activation if quantize_output else None,
                         per_channel)
    if not targets:
        raise ValueError("prepare_qat: the model has no torch.nn.Linear to prepare")
    for i, (parent, name) in enumerate(targets):
        last = i == len(targets) - 1
        out_cfg = activation if (quantize_output and last) else None
        setattr(parent, name, QATLinear(getattr(parent, name), activation, weight, out_cfg,
                                        per_channel))
    return model


def freeze(model: nn.Module) -> nn.Module:
    """``disable_calibration()`` on every qatcore FakeQuantize of `model`; returns it."""
    for q in _quantizers(model):
        q.disable_calibration()
    return model


def calibrate(model: nn.Module, enabled: bool = True) -> nn.Module:
    """``enable_calibration()`` (or, with ``enabled=False``, ``disable_calibration()``) on
    every qatcore FakeQuantize of `model`; returns it."""
    for q in _quantizers(model):
        q.enable_calibration() if enabled else q.disable_calibration()
    return model


# ------------------------------------------------------------------ conversion

