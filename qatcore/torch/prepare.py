"""Prepare a torch model for quantization-aware training, and switch its quantizers
between calibrating and frozen."""

from __future__ import annotations

import copy
from typing import Optional

from torch import nn

from ..config import FakeQuantConfig
from .modules import FakeQuantize, QATLinear, default_activation_config, default_weight_config


def _quantizers(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, FakeQuantize)]


def prepare_qat(model: nn.Module, activation: Optional[FakeQuantConfig] = None,
                weight: Optional[FakeQuantConfig] = None, *, inplace: bool = False,
                per_channel: bool = True, quantize_output: bool = True) -> nn.Module:
    """Prepare a torch model for quantization-aware training.

    Every ``nn.Linear`` (the only layer type swapped; everything else -- activations,
    convolutions, norms, containers -- stays as it is) becomes a :class:`QATLinear` that
    fake-quantizes its input activation (per tensor, `activation` config) and its weight
    (per output channel symmetric, `weight` config), keeping the original Parameters.
    With `quantize_output`, the last Linear in module order also fake-quantizes its
    output, so an integer model's output quantization is trained too. The quantizers
    start calibrating: run a few batches, then call ``disable_calibration()`` on them (or
    :func:`freeze`), then train.

    Parameters
    ----------
    model : torch.nn.Module
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
    activation = default_activation_config() if activation is None else activation
    weight = default_weight_config() if weight is None else weight
    for name, cfg in (("activation", activation), ("weight", weight)):
        if not isinstance(cfg, FakeQuantConfig):
            raise TypeError(f"{name} must be a FakeQuantConfig, got {type(cfg).__name__}")
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

