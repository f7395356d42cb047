"""``QuantizedSequential``: a chain of :class:`~qatcore.QuantizedLinear` layers with fused
ReLU / ReLU6, run integer-only (int8 in, int8 out) with TFLite's arithmetic, saved as one
``.npz`` and exported to ``.tflite`` (and, through :mod:`qatcore.export`, to C and ONNX).

The arithmetic of one layer is TFLite's int8 FULLY_CONNECTED: int32 accumulators
``Σ w_q · (x_q - zp_in) + bias_q``, requantized with the fixed-point multiplier and shift
TFLite derives from the float32 scales (:func:`qatcore.linear.requant_real_multiplier`),
plus the output zero point, clamped to ``[-128, 127]`` intersected with the fused
activation's range (TFLite ``CalculateActivationRangeQuantized``: ReLU from the zero
point, ReLU6 up to ``zp + round_half_away(6 / scale)``).  Layer ``i``'s output
quantization is layer ``i + 1``'s input quantization; the last layer's is the model's
``output_scale`` / ``output_zero_point``.
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .. import _backend
from .._checks import as_float32, base_array, check_index, check_scale
from ..linear import QuantizedLinear, _check_int8_codes, _qparams_of, quantize_multiplier
from ..linear import activation_range, requant_real_multiplier
from .._files import write_atomic

__all__ = ["QuantizedSequential", "NUMERICS", "ACTIVATIONS", "ROUNDINGS"]

#: How :meth:`QuantizedSequential.quantize_input` rounds float input to int8 codes.
NUMERICS = ("aprender", "torch", "onnx", "tflite")
#: The fused activations (``None``: none).
ACTIVATIONS = (None, "relu", "relu6")
#: Roundings of the fixed-point requantization (:meth:`QuantizedSequential.forward_int8`).
ROUNDINGS = ("gemmlowp", "single", "neon")
_ACT_CODE = {None: 0, "relu": 1, "relu6": 2}
_FORMAT = "qatcore.QuantizedSequential"
_VERSION = 1
#: Bounds for files read by :meth:`QuantizedSequential.load` (checked before allocating).
MAX_LAYERS = 1024
MAX_FILE_BYTES = 1 << 31
_LAYER_KEYS = frozenset({"version", "weights_q", "weight_scale", "bits", "per_channel",
                         "input_scale", "input_zero_point", "input_qrange",
                         "input_zero_point_float", "bias", "bias_q", "output_quant_scale",
                         "output_quant_zero_point", "output_quant_qrange"})
_TOP_KEYS = frozenset({"format", "version", "activations", "output_scale",
                       "output_zero_point", "input_numerics"})
#: Optional top-level entries (written only when not the default, so files of models
#: without them stay readable by a qatcore that predates them).
_OPTIONAL_KEYS = frozenset({"flatten_input"})
_F32 = np.float32


def _round_half_away(v: np.ndarray) -> np.ndarray:
    """Rust f32::round / C roundf on float32 arrays (bit-exact form, see PERF-NOTES.md)."""
    return np.trunc(v + np.copysign(_F32(0.49999997), v))


def quantize_codes(x: np.ndarray, scale: float, zero_point: int, qmin: int, qmax: int,
                   numerics: str) -> np.ndarray:
    """int8 codes of a float32 array, rounded as the `numerics` quantizer rounds:

    * ``"aprender"``: ``round_half_away(x / scale + zp)`` (qatcore's FakeQuantize);
    * ``"torch"``: ``rint(x * (1 / scale)) + zp`` (ties to even, torch);
    * ``"onnx"``: ``rint(x / scale) + zp`` (ONNX QuantizeLinear);
    * ``"tflite"``: ``round_half_away(x / scale) + zp`` (TFLite QUANTIZE),

    all in float32, clamped to ``[qmin, qmax]`` (±Inf saturate)."""
    f32 = np.float32
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if numerics == "torch":
            q = np.rint(x * (f32(1) / f32(scale))) + f32(zero_point)
        elif numerics == "onnx":
            q = np.rint(x / f32(scale)) + f32(zero_point)
        elif numerics == "tflite":
            q = _round_half_away(x / f32(scale)) + f32(zero_point)
        else:
            q = _round_half_away(x / f32(scale) + f32(zero_point))
    q = np.where(q > qmin, q, f32(qmin))
    q = np.where(q < qmax, q, f32(qmax))
    return q.astype(np.int8)


def _requantize_int64(acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray,
                      rounding: str) -> np.ndarray:
    """``acc · multiplier · 2^(shift - 31)`` rounded the `rounding` way ("single" or
    "neon", see :meth:`QuantizedSequential.forward_int8`), int64, saturated to int32."""
    a = acc.astype(np.int64)
    m = multiplier.astype(np.int64)
    sh = shift.astype(np.int64)
    lo32, hi32 = -(1 << 31), (1 << 31) - 1
    if rounding == "single":
        total = 31 - sh                                   # in [1, 62]: shift <= 30
        v = (a * m + (np.int64(1) << (total - 1))) >> total
    else:
        left = np.maximum(sh, 0)
        right = np.maximum(-sh, 0)
        x = np.clip(a << left, lo32, hi32)               # |a| < 2^31, left <= 30: no overflow
        ab = x * m                                        # m >= 0; |ab| < 2^62
        num = ab + np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
        high = np.where(num >= 0, num >> 31, -((-num) >> 31))   # C division truncates
        v = (high + ((np.int64(1) << right) >> 1)) >> right
    return np.clip(v, lo32, hi32)


def _check_activations(activations, n: int) -> List[Optional[str]]:
    if activations is None:
        return [None] * n
    if isinstance(activations, (str, bytes)):
        raise TypeError("activations must be a sequence (one entry per layer), got a string")
    try:
        acts = list(activations)
    except TypeError:
        raise TypeError(f"activations must be a sequence, got {type(activations).__name__}"
                        ) from None
    if len(acts) != n:
        raise ValueError(f"activations has {len(acts)} entries for {n} layers")
    for i, a in enumerate(acts):
        if a is not None and not isinstance(a, str):
            raise TypeError(f"activations[{i}] must be None, 'relu' or 'relu6', got "
                            f"{type(a).__name__}")
        if a not in ACTIVATIONS:
            raise ValueError(f"activations[{i}] must be None, 'relu' or 'relu6', got {a!r}")
    return acts


def _check_output_scale(value) -> float:
    return check_scale(value, "output_scale")


def _check_output_zero_point(value) -> int:
    zp = check_index(value, "output_zero_point")
    if not -128 <= zp <= 127:
        raise ValueError(f"output_zero_point must be in [-128, 127], got {zp}")
    return zp


def _check_numerics(value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"input_numerics must be a string, got {type(value).__name__}")
    if value not in NUMERICS:
        raise ValueError(f"input_numerics must be one of {NUMERICS}, got {value!r}")
    return value


class QuantizedSequential:
    """A chain of :class:`~qatcore.QuantizedLinear` layers run integer-only.

    ``forward_int8`` takes int8 codes in layer 0's input quantization and returns int8
    codes in (`output_scale`, `output_zero_point`); between layers the int32 accumulators
    are requantized to the next layer's input scale and zero point with TFLite's
    fixed-point arithmetic, and ReLU / ReLU6 are output clamps (see the module docstring).
    ``forward`` is float in (quantized as `input_numerics` rounds), float out.

    Parameters
    ----------
    layers : sequence of QuantizedLinear
        Non-empty; ``layers[i].out_features == layers[i + 1].in_features``; every input
        zero point an int8 code.  Layer 0's input scale / zero point / code range are the
        model's input quantization.
    activations : sequence of {None, "relu", "relu6"}, optional
        The activation after each layer (default: none).
    output_scale : float
        Scale of the int8 output codes (finite, positive).
    output_zero_point : int, default 0
        In [-128, 127].
    input_numerics : {"aprender", "torch", "onnx", "tflite"}, default "aprender"
        How :meth:`quantize_input` rounds float input (the QAT framework's quantizer; use
        ``"tflite"`` to match a ``.tflite`` exported with ``float_io=True``).
    flatten_input : bool, default False
        The model starts with a flatten (``torch.nn.Flatten()``: every dimension after the
        batch one): :meth:`quantize_input`, :meth:`forward_int8` and :meth:`forward` also
        take ``(batch, d1, d2, ...)`` input with ``d1·d2·... == in_features`` and flatten
        it, as the float model did (``qatcore.torch.convert(integer=True)`` sets it for a
        leading ``nn.Flatten``). The exports keep the flat ``(batch, in_features)`` input.

    Attributes
    ----------
    layers : list of QuantizedLinear
    activations : list of {None, "relu", "relu6"}
    output_scale : float
        A float32 value.
    output_zero_point : int
    input_numerics : str
    flatten_input : bool

    Raises
    ------
    TypeError, ValueError
        Naming the argument: a layer that is not a QuantizedLinear, sizes that do not
        chain, an unknown activation, a non-finite / non-positive scale, a zero point
        outside int8.

    Examples
    --------
    >>> import numpy as np
    >>> from qatcore import QuantizedLinear, QuantizedSequential
    >>> l1 = QuantizedLinear.from_float([[1.0, -0.5], [0.25, 2.0]], [0.1, 0.0], 2, 2)
    >>> l1.set_input_scale(0.1)
    >>> l2 = QuantizedLinear.from_float([[0.5, 0.5]], None, 2, 1)
    >>> l2.set_input_scale(0.05)
    >>> model = QuantizedSequential([l1, l2], ["relu", None], output_scale=0.02)
    >>> model  # doctest: +NORMALIZE_WHITESPACE
    QuantizedSequential(2 -> 2 relu -> 1, per-tensor int8 weights;
                        input scale 0.1 zp 0, output scale 0.02 zp 0)
    >>> model.forward_int8(np.array([[20, 10]], dtype=np.int8))
    array([[103]], dtype=int8)
    >>> model.forward([[2.0, 1.0]])
    array([[2.06]], dtype=float32)
    """

    def __init__(self, layers: Sequence[QuantizedLinear], activations=None,
                 output_scale=None, output_zero_point=0, *, input_numerics: str = "aprender",
                 flatten_input: bool = False):
        if isinstance(layers, QuantizedLinear):
            raise TypeError("layers must be a sequence of QuantizedLinear (got one layer: "
                            "wrap it in a list)")
        try:
            layers = list(layers)
        except TypeError:
            raise TypeError(f"layers must be a sequence of QuantizedLinear, got "
                            f"{type(layers).__name__}") from None
        if not layers:
            raise ValueError("layers must not be empty")
        if len(layers) > MAX_LAYERS:
            raise ValueError(f"layers has {len(layers)} entries; at most {MAX_LAYERS}")
        for i, layer in enumerate(layers):
            if not isinstance(layer, QuantizedLinear):
                raise TypeError(f"layers[{i}] must be a QuantizedLinear, got "
                                f"{type(layer).__name__}")
            if not -128 <= layer.input_zero_point <= 127:
                raise ValueError(f"layers[{i}].input_zero_point = {layer.input_zero_point} is "
                                 f"not an int8 code (int8 chains need zero points in "
                                 f"[-128, 127])")
        for i, (a, b) in enumerate(zip(layers[:-1], layers[1:])):
            if a.out_features != b.in_features:
                raise ValueError(f"layer sizes do not chain: layers[{i}].out_features = "
                                 f"{a.out_features}, layers[{i + 1}].in_features = "
                                 f"{b.in_features}")
        acts = _check_activations(activations, len(layers))
        if output_scale is None:
            raise ValueError("output_scale is required (the scale of the int8 output codes)")
        scale = _check_output_scale(output_scale)
        zp = _check_output_zero_point(output_zero_point)
        numerics = _check_numerics(input_numerics)
        if not isinstance(flatten_input, (bool, np.bool_)):
            raise TypeError(f"flatten_input must be a bool, got {type(flatten_input).__name__}")
        self.flatten_input: bool = bool(flatten_input)
        self.layers: List[QuantizedLinear] = layers
        self.activations: List[Optional[str]] = acts
        self._output_scale = scale
        self._output_zero_point = zp
        self._input_numerics = numerics

    # Validated on assignment too (the object is unchanged when the value is refused).
    @property
    def output_scale(self) -> float:
        """Scale of the int8 output codes (a float32 value)."""
        return self._output_scale

    @output_scale.setter
    def output_scale(self, value) -> None:
        self._output_scale = _check_output_scale(value)

    @property
    def output_zero_point(self) -> int:
        """Zero point of the int8 output codes, in [-128, 127]."""
        return self._output_zero_point

    @output_zero_point.setter
    def output_zero_point(self, value) -> None:
        self._output_zero_point = _check_output_zero_point(value)

    @property
    def input_numerics(self) -> str:
        """How :meth:`quantize_input` rounds (one of ``NUMERICS``)."""
        return self._input_numerics

    @input_numerics.setter
    def input_numerics(self, value) -> None:
        self._input_numerics = _check_numerics(value)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_layers(cls, layers: Sequence[QuantizedLinear], activations=None, *,
                    output_scale, output_zero_point=0, input_numerics: str = "aprender"
                    ) -> "QuantizedSequential":
        """The constructor with the output quantization as keywords (see the class)."""
        return cls(layers, activations, output_scale, output_zero_point,
                   input_numerics=input_numerics)

    @classmethod
    def from_qat(cls, model, *, output_fake_quant=None) -> "QuantizedSequential":
        """Convert a :mod:`qatcore.nn` QAT model: ``ActivationFakeQuant → QATLinear
        [→ ReLU]`` repeated (nested :class:`~qatcore.nn.Sequential` allowed), optionally
        ending with an ``ActivationFakeQuant`` that quantizes the output.

        Each ``QATLinear`` becomes :meth:`QuantizedLinear.from_qat` with the
        ``ActivationFakeQuant`` in front of it as its input quantizer; the next one (or the
        output quantizer) is its requantization target.  Every quantizer must be frozen
        (``disable_calibration()``), weight quantizers symmetric, all bits <= 8.

        Parameters
        ----------
        model : qatcore.nn.Sequential
        output_fake_quant : FakeQuantize, optional
            The output quantizer (e.g. calibrated on the model's logits) when the model
            does not end with an ``ActivationFakeQuant``.

        Raises
        ------
        TypeError, ValueError
            Another layer type, a QATLinear without an input quantizer, a quantizer still
            calibrating, no output quantizer (or two), and the errors of
            :meth:`QuantizedLinear.from_qat`.
        """
        from .. import nn
        from ..fake_quantize import FakeQuantize

        if not isinstance(model, nn.Sequential):
            if any(c.__module__.split(".")[0] == "torch" for c in type(model).__mro__):
                raise TypeError(f"model must be a qatcore.nn.Sequential, got the torch module "
                                f"{type(model).__module__}.{type(model).__name__}: convert a "
                                "PyTorch QAT model with qatcore.torch.convert(model, "
                                "integer=True) (after qatcore.torch.prepare_qat and freeze)")
            raise TypeError(f"model must be a qatcore.nn.Sequential, got {type(model).__name__}")
        if output_fake_quant is not None and not isinstance(output_fake_quant, FakeQuantize):
            raise TypeError(f"output_fake_quant must be a FakeQuantize, got "
                            f"{type(output_fake_quant).__name__}")

        def leaves(seq):
            for layer in seq.layers:
                if isinstance(layer, nn.Sequential):
                    yield from leaves(layer)
                else:
                    yield layer

        linears: list = []          # (QATLinear, input quantizer)
        acts: List[Optional[str]] = []
        pending = None              # an ActivationFakeQuant not yet consumed
        for k, layer in enumerate(leaves(model)):
            if isinstance(layer, nn.ActivationFakeQuant):
                if pending is not None:
                    raise ValueError("model has two ActivationFakeQuant in a row")
                pending = layer.fake_quant
            elif isinstance(layer, nn.QATLinear):
                if pending is None:
                    raise ValueError(f"model: QATLinear #{len(linears)} has no "
                                     f"ActivationFakeQuant in front (its input quantizer)")
                linears.append((layer, pending))
                acts.append(None)
                pending = None
            elif isinstance(layer, nn.ReLU):
                if not linears or pending is not None:
                    raise ValueError("model: a ReLU must follow a QATLinear (before the next "
                                     "quantizer) to be fused")
                acts[-1] = "relu"
            else:
                raise ValueError(f"model: layer {type(layer).__name__} has no integer form "
                                 f"(QuantizedSequential takes ActivationFakeQuant, QATLinear "
                                 f"and ReLU)")
        if not linears:
            raise ValueError("model has no QATLinear")
        if pending is not None and output_fake_quant is not None:
            raise ValueError("model ends with an ActivationFakeQuant and output_fake_quant is "
                             "given too: pass only one output quantizer")
        out_fq = pending if pending is not None else output_fake_quant
        if out_fq is None:
            raise ValueError("model has no output quantizer: end it with an "
                             "ActivationFakeQuant or pass output_fake_quant")
        quantizers = [fq for lin, fq in linears] + [lin.weight_fake_quant for lin, _ in linears]
        for fq in quantizers + [out_fq]:
            if fq.calibrating:
                raise ValueError("model: a quantizer is still calibrating (call "
                                 "disable_calibration() on every FakeQuantize first)")
        layers = []
        for i, (lin, in_fq) in enumerate(linears):
            nxt = linears[i + 1][1] if i + 1 < len(linears) else out_fq
            layers.append(QuantizedLinear.from_qat(lin.weight, lin.bias, lin.weight_fake_quant,
                                                   in_fq, nxt))
        o_scale, o_zp, _, _ = _qparams_of(out_fq, "output quantizer")
        return cls(layers, acts, o_scale, o_zp, input_numerics="aprender")

    # ------------------------------------------------------------------ structure
    def __len__(self) -> int:
        return len(self.layers)

    @property
    def in_features(self) -> int:
        """Input width (layer 0's ``in_features``)."""
        return self.layers[0].in_features

    @property
    def out_features(self) -> int:
        """Output width (the last layer's ``out_features``)."""
        return self.layers[-1].out_features

    @property
    def input_scale(self) -> float:
        """Scale of the int8 input codes (layer 0's)."""
        return self.layers[0].input_scale

    @property
    def input_zero_point(self) -> int:
        """Zero point of the int8 input codes (layer 0's)."""
        return self.layers[0].input_zero_point

    @property
    def input_qrange(self) -> Tuple[int, int]:
        """Code range :meth:`quantize_input` clamps to (layer 0's input quantizer's)."""
        lo, hi = self.layers[0]._input_qrange
        return int(lo), int(hi)

    def _index(self, i) -> int:
        i = check_index(i, "i")
        if not 0 <= i < len(self.layers):
            raise ValueError(f"i must be in [0, {len(self.layers) - 1}], got {i}")
        return i

    def output_qparams(self, i) -> Tuple[float, int]:
        """``(scale, zero_point)`` of layer `i`'s int8 output codes: layer ``i + 1``'s
        input quantization, or the model's output quantization for the last layer."""
        i = self._index(i)
        if i + 1 < len(self.layers):
            nxt = self.layers[i + 1]
            return nxt.input_scale, nxt.input_zero_point
        return self.output_scale, self.output_zero_point

    def activation_range(self, i) -> Tuple[int, int]:
        """int8 clamp ``(qmin, qmax)`` of layer `i`'s output (its fused activation within
        [-128, 127], TFLite's ``CalculateActivationRangeQuantized``)."""
        i = self._index(i)
        scale, zp = self.output_qparams(i)
        return activation_range(self.activations[i], scale, zp)

    def requantization(self, i) -> Tuple[np.ndarray, np.ndarray]:
        """Layer `i`'s fixed-point requantization: ``(multiplier, shift)`` int32 arrays of
        length ``out_features`` (TFLite ``QuantizeMultiplier`` of
        :func:`~qatcore.linear.requant_real_multiplier`; ``shift`` > 0 is a left shift)."""
        i = self._index(i)
        layer = self.layers[i]
        real = requant_real_multiplier(layer.weight_scale, layer.input_scale,
                                       self.output_qparams(i)[0])
        return quantize_multiplier(np.broadcast_to(real, (layer.out_features,)))

    # ------------------------------------------------------------------ inference
    def forward_int8(self, x_q: np.ndarray, *, rounding: str = "gemmlowp") -> np.ndarray:
        """int8 codes in (layer 0's input quantization, flat ``batch · in_features`` or
        ``(batch, in_features)``), int8 codes ``(batch, out_features)`` out; integer only.

        Parameters
        ----------
        x_q : ndarray of int8
        rounding : {"gemmlowp", "single", "neon"}, default "gemmlowp"
            How ``acc · multiplier · 2^(shift - 31)`` is rounded to an integer (the only
            place where int8 runtimes differ, by one LSB at near-ties):

            * ``"gemmlowp"``: ``SaturatingRoundingDoublingHighMul`` then
              ``RoundingDivideByPOT`` (ties away from zero), TFLite's default
              ``MultiplyByQuantizedMultiplier``: TensorFlow Lite Micro, qatcore's kernels
              (``QuantizedLinear.forward_int8``) and its C export;
            * ``"single"``: one rounding of the exact product, ties toward +inf (TFLite
              built with ``TFLITE_SINGLE_ROUNDING``): LiteRT 2.3's reference kernels
              (``OpResolverType.BUILTIN_REF``);
            * ``"neon"``: ``SaturatingRoundingDoublingHighMul`` then a rounding right
              shift with ties toward +inf (NEON ``vqrdmulh`` + ``vrshl``, which TFLite's
              optimized kernels use, on x86 through NEON_2_SSE): LiteRT 2.3's builtin
              kernels (``BUILTIN_WITHOUT_DEFAULT_DELEGATES``).

            ``"single"`` and ``"neon"`` run the requantization in numpy (int64) on the
            kernel's int32 accumulators.

        Raises
        ------
        TypeError, ValueError
            `x_q` not an int8 array, or of the wrong size; an unknown `rounding`.
        """
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
        h = _check_int8_codes(self._flatten(x_q, "x_q"), self.in_features, "x_q")
        kernels = _backend.kernels
        for layer, col_offset, mult, shift, zp, lo, hi in self._plan():
            acc = layer._gemm(h, col_offset)
            if rounding == "gemmlowp":
                # the activation clamp is the kernel's output clamp (within [-128, 127])
                h = np.empty(acc.shape, dtype=np.int8)
                kernels.requantize_fixed_point(acc, mult, shift, zp, lo, hi, h,
                                               layer.n_threads)
            else:
                v = _requantize_int64(acc, mult, shift, rounding)
                h = np.clip(v + zp, lo, hi).astype(np.int8)
        return h

    def _plan(self) -> list:
        """Per layer ``(layer, col_offset, multiplier, shift, zero_point, qmin, qmax)``,
        rebuilt when a layer, scale, zero point or activation changed (layers stay
        mutable through ``set_input_scale``; their offsets array is replaced then)."""
        plan = getattr(self, "_plan_cache", None)
        key = (self.output_scale, self.output_zero_point, tuple(self.activations))
        if plan is not None and len(plan) == len(self.layers) and self._plan_key == key:
            ok = True
            for entry, layer in zip(plan, self.layers):
                if entry[0] is not layer or entry[1] is not layer._col_offset:
                    ok = False
                    break
            if ok:
                return plan
        # layers / activations are plain lists: check what they hold now
        type(self)(self.layers, self.activations, self.output_scale, self.output_zero_point,
                   input_numerics=self.input_numerics, flatten_input=self.flatten_input)
        plan = []
        for i, layer in enumerate(self.layers):
            scale, zp = self.output_qparams(i)
            lo, hi = activation_range(self.activations[i], scale, zp)
            mult, shift = self.requantization(i)
            plan.append((layer, layer._col_offset, np.ascontiguousarray(mult, np.int32),
                         np.ascontiguousarray(shift, np.int32), int(zp), lo, hi))
        self._plan_cache = plan
        self._plan_key = key
        return plan

    def quantize_input(self, x) -> np.ndarray:
        """int8 codes ``(batch, in_features)`` of float input (flat or ``(..., in_features)``)
        with layer 0's input scale, zero point and code range, rounded as
        `input_numerics` says.

        Raises
        ------
        TypeError, ValueError
            Non-numeric input, a size that is not a multiple of ``in_features``, NaN.
        """
        flat, shape = as_float32(self._flatten(x, "x"), "x")
        n = self.in_features
        if len(shape) >= 2 and shape[-1] != n:
            raise ValueError(f"x has shape {tuple(shape)}; expected (..., {n})")
        if flat.size % n:
            raise ValueError(f"x has {flat.size} elements, not a multiple of in_features={n}")
        nan = np.flatnonzero(np.isnan(flat))
        if nan.size:
            raise ValueError(f"x contains NaN at flat index {int(nan[0])}")
        lo, hi = self.input_qrange
        codes = quantize_codes(flat, self.input_scale, self.input_zero_point, lo, hi,
                               self.input_numerics)
        return codes.reshape(-1, n)

    def _flatten(self, x, name: str):
        """``(batch, d1, d2, ...)`` input as ``(batch, d1·d2·...)`` when the model flattens
        its input and the trailing dimensions hold ``in_features`` values (as
        ``torch.nn.Flatten()`` did before the first layer); anything else unchanged (the
        checks that follow name it)."""
        if not getattr(self, "flatten_input", False):
            return x
        if not isinstance(x, np.ndarray):
            if name == "x_q":
                return x                    # codes must be an int8 ndarray: said below
            x = base_array(x, name)
        shape = x.shape
        if len(shape) < 3:
            return x
        if math.prod(shape[1:]) != self.in_features:
            raise ValueError(f"{name} has shape {tuple(shape)}; expected (batch, ...) with "
                             f"{self.in_features} values per sample (this model flattens "
                             f"its input), or (batch, {self.in_features})")
        return x.reshape(shape[0], self.in_features)

    def dequantize_output(self, q: np.ndarray) -> np.ndarray:
        """float32 values ``(q - output_zero_point) · output_scale`` of int8 output codes."""
        if not isinstance(q, np.ndarray) or q.dtype != np.int8:
            raise TypeError("q must be a numpy int8 array")
        return ((q.astype(np.float32) - np.float32(self.output_zero_point))
                * np.float32(self.output_scale)).astype(np.float32)

    def forward(self, x, *, rounding: str = "gemmlowp") -> np.ndarray:
        """Float in, float out: :meth:`quantize_input`, :meth:`forward_int8` (with
        `rounding`), :meth:`dequantize_output`; ``(batch, out_features)`` float32."""
        return self.dequantize_output(self.forward_int8(self.quantize_input(x),
                                                        rounding=rounding))

    __call__ = forward

    # ------------------------------------------------------------------ serialization
    def state_dict(self) -> Dict[str, Any]:
        """Flat dict of numpy arrays (``layer{i}.{key}`` for each layer's
        :meth:`QuantizedLinear.state_dict`), what :meth:`save` writes."""
        state: Dict[str, Any] = {
            "format": np.array(_FORMAT),
            "version": np.int32(_VERSION),
            "activations": np.array([_ACT_CODE[a] for a in self.activations], np.int8),
            "output_scale": np.float32(self.output_scale),
            "output_zero_point": np.int32(self.output_zero_point),
            "input_numerics": np.array(self.input_numerics),
        }
        if self.flatten_input:
            state["flatten_input"] = np.bool_(True)
        for i, layer in enumerate(self.layers):
            for key, value in layer.state_dict().items():
                state[f"layer{i}.{key}"] = value
        return state

    def save(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Write the model to one ``.npz`` (no pickles), atomically: a temporary file in
        the target directory, then ``os.replace``.  ``numpy.savez`` adds ``.npz`` to a
        name without it; this does not."""
        path = os.fspath(path)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **self.state_dict())

        write_atomic(path, write)

    @classmethod
    def load(cls, path: Union[str, "os.PathLike[str]"]) -> "QuantizedSequential":
        """Read a model written by :meth:`save`.

        The file is hostile until proven otherwise: no pickles, every ``.npy`` header read
        and its size bounded (``MAX_FILE_BYTES`` in all) before any data is allocated,
        only the known keys, every field validated (by :meth:`QuantizedLinear.from_state_dict`
        for the layers and the constructor for the chain).

        Raises
        ------
        ValueError
            Not a QuantizedSequential file, or any field invalid (the message names it).
        OSError
            The file cannot be read.
        """
        path = os.fspath(path)
        state = read_npz(path)
        return cls.from_state_dict(state, _where=path)

    @classmethod
    def from_state_dict(cls, state, *, _where: str = "state") -> "QuantizedSequential":
        """Rebuild a model from :meth:`state_dict` output (validated as in :meth:`load`)."""
        if not hasattr(state, "keys"):
            raise TypeError(f"state must be a mapping, got {type(state).__name__}")

        def fail(msg):
            return ValueError(f"{_where}: {msg}")

        if "format" not in state and "weights_q" in state and "weight_scale" in state:
            raise fail(f"not a {_FORMAT} file: it was saved by QuantizedLinear.save (one "
                       "layer): read it with qatcore.QuantizedLinear.load, or build a model "
                       "with QuantizedSequential([layer], ...)")
        if "format" not in state or _text(state["format"]) != _FORMAT:
            raise fail(f"not a {_FORMAT} file (no 'format' = {_FORMAT!r} entry)")
        for key in _TOP_KEYS:
            if key not in state:
                raise fail(f"missing entry {key!r}")
        version = _scalar(state["version"], "version", "iu", fail)
        if version != _VERSION:
            raise fail(f"unsupported version {version} (this qatcore reads {_VERSION})")
        acts = np.asarray(state["activations"])
        if acts.dtype.kind not in "iu" or acts.ndim != 1 or not 1 <= acts.size <= MAX_LAYERS:
            raise fail(f"'activations' must be a 1-D integer array of 1..{MAX_LAYERS} entries")
        codes = {v: k for k, v in _ACT_CODE.items()}
        if not all(int(a) in codes for a in acts):
            raise fail("'activations' holds a code other than 0 (none), 1 (relu), 2 (relu6)")
        n = int(acts.size)
        expected = set(_TOP_KEYS) | _OPTIONAL_KEYS | {f"layer{i}.{k}" for i in range(n)
                                                       for k in _LAYER_KEYS}
        extra = sorted(set(state.keys()) - expected)
        if extra:
            raise fail(f"unexpected entry {extra[0]!r}")
        oscale = _scalar(state["output_scale"], "output_scale", "f", fail)
        ozp = _scalar(state["output_zero_point"], "output_zero_point", "iu", fail)
        numerics = _text(state["input_numerics"])
        if numerics is None:
            raise fail("'input_numerics' must be a string")
        layers = []
        for i in range(n):
            prefix = f"layer{i}."
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if not sub:
                raise fail(f"layer {i} is missing")
            try:
                layers.append(QuantizedLinear.from_state_dict(sub))
            except (TypeError, ValueError) as exc:
                raise fail(f"layer {i}: {exc}") from None
        flatten = False
        if "flatten_input" in state:
            f = np.asarray(state["flatten_input"])
            if f.ndim != 0 or f.dtype.kind != "b":
                raise fail(f"'flatten_input' must be a bool scalar, got {f.dtype} {f.shape}")
            flatten = bool(f[()])
        try:
            return cls(layers, [codes[int(a)] for a in acts], oscale, ozp,
                       input_numerics=numerics, flatten_input=flatten)
        except (TypeError, ValueError) as exc:
            raise fail(str(exc)) from None

    # ------------------------------------------------------------------ export
    def to_tflite(self, path: Union[str, "os.PathLike[str]"], *, float_io: bool = False,
                  batch_size: int = 1) -> int:
        """Write the model as a ``.tflite`` flatbuffer (int8 FULLY_CONNECTED ops; with
        ``float_io=True`` also QUANTIZE / DEQUANTIZE at the ends); returns its size in
        bytes.  TFLM runs it bit for bit as :meth:`forward_int8`, LiteRT's reference and
        builtin kernels as ``forward_int8(x, rounding="single")`` / ``"neon"`` (see
        :mod:`qatcore.export.tflite`).  `batch_size` is the batch dimension of the input and
        output tensors.  Written atomically.  Needs ``pip install "qatcore[export]"``; see
        :func:`qatcore.export.tflite.tflite_bytes`."""
        from ..export.tflite import write_tflite
        return write_tflite(self, path, float_io=float_io, batch_size=batch_size)

    def to_c(self, directory, name: str = "model"):
        """C export (``name.h`` / ``name.c`` + runtime): :func:`qatcore.export.c.write_c`."""
        from ..export.c import write_c
        return write_c(self, directory, name)

    def to_onnx(self, path):
        """ONNX QDQ export: :func:`qatcore.export.onnx.to_onnx`."""
        from ..export.onnx import to_onnx
        return to_onnx(self, path)

    def __repr__(self) -> str:
        parts = [str(self.in_features)]
        for layer, act in zip(self.layers, self.activations):
            parts.append(f"{layer.out_features}" + (f" {act}" if act else ""))
        kinds = sorted({"per-channel" if l.per_channel else "per-tensor" for l in self.layers})
        bits = sorted({l.bits for l in self.layers})
        wbits = "/".join(f"int{b}" for b in bits)
        return (f"QuantizedSequential({' -> '.join(parts)}, {'+'.join(kinds)} {wbits} weights; "
                f"input scale {str(np.float32(self.input_scale))} zp {self.input_zero_point}, "
                f"output scale {str(np.float32(self.output_scale))} zp "
                f"{self.output_zero_point})")


# ---------------------------------------------------------------------- file reading



def _text(value) -> Optional[str]:
    a = np.asarray(value)
    if a.dtype.kind != "U" or a.ndim != 0:
        return None
    return str(a[()])


def _scalar(value, name: str, kinds: str, fail):
    a = np.asarray(value)
    if a.ndim != 0 or a.dtype.kind not in kinds:
        raise fail(f"{name!r} must be a scalar of kind {kinds!r}, got {a.dtype} {a.shape}")
    v = a[()]
    return float(v) if a.dtype.kind == "f" else int(v)


def read_npz(path: str, max_members: int = 16 * MAX_LAYERS + 16,
             what: str = "QuantizedSequential") -> Dict[str, np.ndarray]:
    """The arrays of a saved model's .npz (a `what` has at most `max_members` entries),
    each ``.npy`` header checked (no object dtypes, version 1/2, every dimension and the
    total declared size <= MAX_FILE_BYTES) before its data is read; no pickle."""
    fmt = np.lib.format
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ValueError(f"{path}: not a .npz file (not a zip archive)") from None
    out: Dict[str, np.ndarray] = {}
    total = 0
    with zf:
        infos = zf.infolist()
        if len(infos) > max_members:
            raise ValueError(f"{path}: {len(infos)} entries (a {what} has at most "
                             f"{max_members})")
        for info in infos:
            name = info.filename
            if not name.endswith(".npy"):
                raise ValueError(f"{path}: entry {name!r} is not a .npy array")
            key = name[:-4]
            if key in out:
                raise ValueError(f"{path}: entry {key!r} appears twice")
            try:
                with zf.open(info) as f:
                    version = fmt.read_magic(f)
                    if version == (1, 0):
                        shape, fortran, dtype = fmt.read_array_header_1_0(f)
                    elif version == (2, 0):
                        shape, fortran, dtype = fmt.read_array_header_2_0(f)
                    else:
                        raise ValueError(f"unsupported .npy version {version}")
                    if dtype.hasobject or dtype.kind not in "biufU":
                        raise ValueError(f"dtype {dtype} is not allowed")
                    nbytes = math.prod(shape) * dtype.itemsize
                    total += nbytes
                    if total > MAX_FILE_BYTES:
                        raise ValueError(f"declares more than {MAX_FILE_BYTES} bytes of data")
                    if any(d < 0 or d > MAX_FILE_BYTES for d in shape):
                        raise ValueError(f"declared shape {shape} out of range")
                with zf.open(info) as f:
                    arr = fmt.read_array(f, allow_pickle=False)
            except (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error,
                    NotImplementedError, RuntimeError) as exc:
                raise ValueError(f"{path}: entry {key!r}: {exc}") from None
            out[key] = arr
    return out
