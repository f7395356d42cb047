"""SOFTMAX and LOGISTIC on int8 (TFLite ``reference_ops::Softmax`` for int8 in
``softmax.h``, ``reference_integer_ops::Logistic`` in ``logistic.h``; parameters as
TFLM's ``softmax_common.cc`` / ``logistic_common.cc`` compute them).

Both outputs have scale 1/256 and zero point -128 (enforced).

SOFTMAX over the last axis: ``diff = x - max(row)``; differences below ``diff_min``
contribute nothing (output -128); the others are rescaled to Q5.26 by
``MultiplyByQuantizedMultiplierGreaterThanOne`` (``beta · s_in · 2^26`` through
``PreprocessSoftmaxScaling``), exponentiated with gemmlowp's ``exp_on_negative_values``,
summed in Q12.19, inverted by ``GetReciprocal`` and scaled to the output by
``RoundingDivideByPOT``.  ``rounding="single"`` changes the rescaling and the cap of
the real multiplier (2^30 - 1 instead of 2^31 - 1), as TFLITE_SINGLE_ROUNDING does; the
gemmlowp fixed-point exp and reciprocal are the same in every build.  ``"neon"`` is the
reference (double rounding) arithmetic: LiteRT's optimized int8 softmax uses a lookup
table instead, which is not reproduced here.

LOGISTIC: ``x - zp_in`` beyond ``±input_range_radius`` saturates to -128 / 127; else it
is rescaled to Q4.27 by ``MultiplyByQuantizedMultiplier`` (multiplier from
``frexp(s_in · 2^27)``), passed through gemmlowp's ``logistic`` and
``RoundingDivideByPOT(·, 23) - 128``.

SOFTMAX runs a C loop (qc_conv.h ``qc_softmax_i8``; the vectorized numpy form is kept as
``Softmax._run_numpy`` and cross-checked in the tests); LOGISTIC vectorized numpy on int64
holding the int32 values (exact, C's int32 wrap-around where the C++ wraps).
"""

from __future__ import annotations

import math
from typing import Any, List

import numpy as np

from ... import _backend
from ._base import Op, check_name
from ._fixed import (I32_MAX, clz32, exp_on_negative_values, mbqm, mbqm_greater_than_one,
                     one_over_one_plus_x, rdbpot, srdhm, wrap32)

__all__ = ["Softmax", "Logistic", "OUTPUT_SCALE", "OUTPUT_ZERO_POINT"]

#: The int8 output quantization both ops require (TFLite's).
OUTPUT_SCALE = 1.0 / 256
OUTPUT_ZERO_POINT = -128
_SCALED_DIFF_BITS = 5
_ACCUM_BITS = 12


def _check_output(op: Op, out: Any) -> None:
    if np.float32(out.scale) != np.float32(OUTPUT_SCALE) or out.zero_point != OUTPUT_ZERO_POINT:
        raise ValueError(f"{type(op).__name__} {op.output!r}: the output must have scale 1/256 "
                         f"and zero point -128 (TFLite int8), got ({out.scale}, "
                         f"{out.zero_point})")


def _quantize_multiplier_exact(real: float):
    """TFLite QuantizeMultiplier on one float64 (q rounded half away from zero)."""
    q, e = math.frexp(real)
    q_fixed = math.floor(q * 2.0 ** 31 + 0.5)
    if q_fixed == 1 << 31:
        q_fixed //= 2
        e += 1
    return int(q_fixed), int(e)


class Softmax(Op):
    """int8 softmax over the last axis (TFLite SOFTMAX).

    Parameters
    ----------
    input, output : str
        Same shape; the output has scale 1/256 and zero point -128.
    beta : float
        Positive, finite (stored as float32, as in a .tflite file).

    Attributes
    ----------
    input_multiplier, input_left_shift, diff_min : int
        TFLite's parameters (double rounding build), set by the model.

    Raises
    ------
    TypeError, ValueError
        Bad arguments; at binding, another output quantization, a different shape, or
        ``beta · s_in · 2^26 <= 1`` (TFLite refuses it).

    Examples
    --------
    >>> Softmax("logits", "probs").beta
    1.0
    """

    op_type = "SOFTMAX"
    _PARAMS = ("beta",)

    def __init__(self, input: str, output: str, beta: float = 1.0) -> None:
        self._set_io((check_name(input, "input"),), output)
        if isinstance(beta, (bool, np.bool_)) or not isinstance(beta, (int, float, np.number)):
            raise TypeError(f"beta must be a float, got {type(beta).__name__}")
        b = np.float32(beta)
        if not (np.isfinite(b) and b > 0):
            raise ValueError(f"beta must be positive and finite, got {beta!r}")
        self.beta = float(b)

    def _bind(self, ins: List[Any], out: Any) -> None:
        (spec,) = ins
        _check_output(self, out)
        if tuple(out.shape) != tuple(spec.shape):
            raise ValueError(f"Softmax {self.output!r}: output shape must equal the input's "
                             f"{tuple(spec.shape)}")
        params = []
        for cap in ((1 << 31) - 1.0, (1 << 30) - 1.0):    # double, single rounding
            real = min(self.beta * float(np.float32(spec.scale))
                       * (1 << (31 - _SCALED_DIFF_BITS)), cap)
            if not real > 1.0:
                raise ValueError(f"Softmax {self.output!r}: beta · input scale · 2^26 must "
                                 f"exceed 1 (TFLite's QuantizeMultiplierGreaterThanOne), got "
                                 f"{real}")
            mult, shift = _quantize_multiplier_exact(real)
            radius = math.floor(1.0 * ((1 << _SCALED_DIFF_BITS) - 1)
                                * (1 << (31 - _SCALED_DIFF_BITS)) / (1 << shift))
            params.append((mult, shift, -radius))
        self.input_multiplier, self.input_left_shift, self.diff_min = params[0]
        self._params = params

    def _run(self, xs: List[np.ndarray], out: np.ndarray, rounding: int,
             n_threads: int) -> None:
        mult, left, diff_min = self._params[1 if rounding == 1 else 0]
        _backend.kernels.softmax_i8(xs[0], out, out.shape[-1], mult, left, diff_min,
                                    rounding == 1)

    def _run_numpy(self, xs: List[np.ndarray], out: np.ndarray, rounding: int) -> None:
        """The same arithmetic in vectorized numpy (kept as a cross-check of the C loop)."""
        mult, left, diff_min = self._params[1 if rounding == 1 else 0]
        x = xs[0].astype(np.int64)
        diff = x - x.max(axis=-1, keepdims=True)
        valid = diff >= diff_min
        scaled = mbqm_greater_than_one(np.where(valid, diff, 0), mult, left,
                                       1 if rounding == 1 else 0)
        exp = exp_on_negative_values(scaled, _SCALED_DIFF_BITS)          # Q0.31
        terms = np.where(valid, rdbpot(exp, _ACCUM_BITS), 0)             # Rescale to Q12.19
        total = wrap32(terms.sum(axis=-1, keepdims=True))
        headroom = clz32(total)
        bits_over_unit = _ACCUM_BITS - headroom
        shifted_minus_one = wrap32(((total << headroom) & 0xFFFFFFFF) - (1 << 31))
        scale = one_over_one_plus_x(shifted_minus_one)
        y = rdbpot(srdhm(scale, exp), bits_over_unit + 31 - 8) - 128
        y = np.where(valid, np.clip(y, -128, 127), -128)
        out[...] = y


class Logistic(Op):
    """int8 logistic sigmoid (TFLite LOGISTIC).

    Parameters
    ----------
    input, output : str
        Same shape; the output has scale 1/256 and zero point -128.

    Attributes
    ----------
    input_multiplier, input_left_shift, input_range_radius : int
        TFLite's parameters, set by the model.

    Raises
    ------
    TypeError, ValueError
        Bad names; at binding, another output quantization, a different shape, or an
        input scale outside what TFLite's parameters can represent.

    Examples
    --------
    >>> Logistic("x", "y").op_type
    'LOGISTIC'
    """

    op_type = "LOGISTIC"

    def __init__(self, input: str, output: str) -> None:
        self._set_io((check_name(input, "input"),), output)

    def _bind(self, ins: List[Any], out: Any) -> None:
        (spec,) = ins
        _check_output(self, out)
        if tuple(out.shape) != tuple(spec.shape):
            raise ValueError(f"Logistic {self.output!r}: output shape must equal the input's "
                             f"{tuple(spec.shape)}")
        real = float(np.float32(spec.scale)) * float(1 << 27)
        q, shift = math.frexp(real)
        mult = math.floor(q * 2.0 ** 31 + 0.5)
        if mult >= 1 << 31 or not 0 <= shift <= 62:
            raise ValueError(f"Logistic {self.output!r}: input scale {spec.scale} is outside "
                             f"the range TFLite's LOGISTIC parameters represent")
        self.input_multiplier, self.input_left_shift = int(mult), int(shift)
        self.input_range_radius = math.floor(15.0 * (1 << 27) / (1 << shift))
        self.input_zero_point = int(spec.zero_point)

    def _run(self, xs: List[np.ndarray], out: np.ndarray, rounding: int,
             n_threads: int) -> None:
        r = 1 if rounding == 1 else 0
        radius = self.input_range_radius
        v = xs[0].astype(np.int64) - self.input_zero_point
        inside = (v > -radius) & (v < radius)
        shift = min(self.input_left_shift, 31)
        q4 = mbqm(np.where(inside, v, 0), self.input_multiplier, shift, r)
        positive = q4 > 0
        a = np.where(positive, q4, -q4)
        rip = one_over_one_plus_x(exp_on_negative_values(-a, 4))
        rin = wrap32(I32_MAX - rip)
        y0 = np.where(q4 == 0, 1 << 30, np.where(positive, rip, rin))
        y = np.clip(rdbpot(y0, 31 - 8) - 128, -128, 127)
        y = np.where(v <= -radius, -128, np.where(v >= radius, 127, y))
        out[...] = y
