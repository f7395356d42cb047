"""What the C and ONNX exports read from an integer-model container, checked once.

Only the container's public interface is used: ``layers`` (``QuantizedLinear``),
``activations`` (None / ``"relu"`` / ``"relu6"`` per layer), ``output_scale``,
``output_zero_point``; and from each layer its documented attributes, ``state_dict()`` and
``_requant_params`` (the multiplier/shift ``forward_int8`` itself uses, so a change of the
multiplier rule in :mod:`qatcore.linear` reaches the exports unchanged).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple, Union

import numpy as np

from ..linear import QuantizedLinear, activation_range

_ACTIVATIONS = (None, "relu", "relu6")
# A C identifier that is not reserved (no leading underscore).  24 characters keep
# ``name_invoke`` within the 31 significant characters C99 guarantees for external names.
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,23}\Z")

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class LayerPlan:
    """One layer as the integer runtimes run it."""
    weights_q: np.ndarray        # int8 (out, in), row-major
    bias_q: Optional[np.ndarray]  # int32 (out,) or None
    acc_offset: np.ndarray       # int64 (out,): bias_q - input_zero_point * sum_i w[o, i]
    per_channel: bool
    weight_scale: np.ndarray     # float32 (out,) or (1,)
    input_scale: float
    input_zero_point: int
    multiplier: np.ndarray       # int32 (out,) or (1,) when per-tensor
    shift: np.ndarray            # int32, same shape
    output_scale: float
    output_zero_point: int
    activation: Optional[str]
    act_min: int                 # output code clamp (activation fused with the int8 range)
    act_max: int


@dataclass(frozen=True)
class ModelPlan:
    layers: List[LayerPlan]
    input_scale: float
    input_zero_point: int
    input_qrange: Tuple[int, int]
    output_scale: float
    output_zero_point: int

    @property
    def in_features(self) -> int:
        return int(self.layers[0].weights_q.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.layers[-1].weights_q.shape[0])


def plan_model(model: Any) -> ModelPlan:
    """Read and check everything an export needs from `model` (raises TypeError /
    ValueError naming the attribute)."""
    for attr in ("layers", "activations", "output_scale", "output_zero_point"):
        if not hasattr(model, attr):
            raise TypeError(f"model must be an integer-model container (QuantizedSequential); "
                            f"{type(model).__name__} has no attribute {attr!r}")
    layers = list(model.layers)
    activations = list(model.activations)
    if not layers:
        raise ValueError("model.layers is empty")
    for i, layer in enumerate(layers):
        if not isinstance(layer, QuantizedLinear):
            raise TypeError(f"model.layers[{i}] must be a QuantizedLinear, got "
                            f"{type(layer).__name__}")
    if len(activations) != len(layers):
        raise ValueError(f"model.activations has {len(activations)} entries for "
                         f"{len(layers)} layers")
    for i, act in enumerate(activations):
        if act not in _ACTIVATIONS:
            raise ValueError(f"model.activations[{i}] must be None, 'relu' or 'relu6', got "
                             f"{act!r}")
    for i in range(1, len(layers)):
        if layers[i - 1].out_features != layers[i].in_features:
            raise ValueError(f"model.layers do not chain: layer {i - 1} has "
                             f"{layers[i - 1].out_features} outputs, layer {i} "
                             f"{layers[i].in_features} inputs")
    try:
        out_scale = float(model.output_scale)
    except (TypeError, ValueError):
        raise TypeError(f"model.output_scale must be a real number, got "
                        f"{type(model.output_scale).__name__}") from None
    if not (math.isfinite(out_scale) and out_scale > 0 and np.float32(out_scale) > 0):
        raise ValueError(f"model.output_scale must be finite and positive, got {out_scale!r}")
    out_zp = model.output_zero_point
    if isinstance(out_zp, (bool, np.bool_)) or not isinstance(out_zp, (int, np.integer)):
        raise TypeError(f"model.output_zero_point must be an integer, got "
                        f"{type(out_zp).__name__}")
    out_zp = int(out_zp)
    if not -128 <= out_zp <= 127:
        raise ValueError(f"model.output_zero_point must be in [-128, 127], got {out_zp}")

    plans = []
    for i, layer in enumerate(layers):
        if i + 1 < len(layers):
            scale, zp = float(layers[i + 1].input_scale), int(layers[i + 1].input_zero_point)
            if not -128 <= zp <= 127:
                raise ValueError(f"model.layers[{i + 1}].input_zero_point {zp} is not an int8 "
                                 f"code (needed to store layer {i}'s output)")
        else:
            scale, zp = out_scale, out_zp
        scale = float(np.float32(scale))         # forward_int8 takes float32 scales
        mult, shift = layer._requant_params(scale, float(layer.input_scale))
        mult = np.asarray(mult, dtype=np.int32)
        shift = np.asarray(shift, dtype=np.int32)
        per_channel = bool(layer.per_channel)
        ws = np.atleast_1d(np.asarray(layer.weight_scale, dtype=np.float32)).copy()
        if not per_channel:
            # One multiplier for the whole tensor: forward_int8 broadcasts it.
            if not (np.all(mult == mult[0]) and np.all(shift == shift[0])):
                raise ValueError(f"model.layers[{i}]: per-tensor layer with per-channel "
                                 f"multipliers")
            mult, shift, ws = mult[:1], shift[:1], ws[:1]
        wq = np.ascontiguousarray(layer.weights_q, dtype=np.int8)
        bias_q = None if layer.bias_q is None else np.asarray(layer.bias_q, dtype=np.int32)
        wsum = wq.astype(np.int64).sum(axis=1)
        offset = -np.int64(layer.input_zero_point) * wsum
        if bias_q is not None:
            offset = offset + bias_q.astype(np.int64)
        if np.abs(offset).max() > (1 << 31) - 1:
            raise ValueError(f"model.layers[{i}]: bias codes with the input zero point "
                             f"correction overflow int32")
        lo, hi = activation_range(activations[i], scale, zp)
        plans.append(LayerPlan(wq, bias_q, offset, per_channel, ws, float(layer.input_scale),
                               int(layer.input_zero_point), mult.copy(), shift.copy(), scale,
                               zp, activations[i], lo, hi))
    first = layers[0]
    qrange = tuple(int(v) for v in np.asarray(first.state_dict()["input_qrange"]).ravel())
    return ModelPlan(plans, float(first.input_scale), int(first.input_zero_point),
                     (qrange[0], qrange[1]), out_scale, out_zp)


def check_name(name: Any) -> str:
    """A C identifier prefix: letters, digits, '_', starting with a letter, <= 24 chars."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if not _NAME_RE.match(name):
        raise ValueError(f"name {name!r} is not a usable C identifier: it must start with a "
                         f"letter, hold only letters, digits and '_', and have at most 24 "
                         f"characters")
    return name


def check_directory(directory: Any) -> str:
    """An existing, writable directory."""
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"directory must be a path, got {type(directory).__name__}")
    path = str(os.fspath(directory))
    if not os.path.isdir(path):
        raise ValueError(f"directory {path!r} does not exist or is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"directory {path!r} is not writable")
    return path
