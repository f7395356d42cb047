"""Vectorized (numpy int64) forms of TFLite's and gemmlowp's fixed-point primitives, for
the element-wise ops of the integer graph.

Every function takes int64 arrays holding int32 values and returns the int32 result as
int64, computed exactly as the C++ does on int32 (plain additions wrap modulo 2^32, as
gemmlowp's ``Add`` on int32 does).  Sources: ``tensorflow/lite/kernels/internal/
common.h`` (``MultiplyByQuantizedMultiplier`` and its single-rounding form) and
gemmlowp ``fixedpoint/fixedpoint.h`` (``SaturatingRoundingDoublingHighMul``,
``RoundingDivideByPOT``, ``exp_on_negative_values``, ``one_over_one_plus_x_for_x_in_0_1``).
"""

from __future__ import annotations

from typing import Union

import numpy as np

from ..sequential import ROUNDINGS, _requantize_int64

__all__ = ["ROUNDINGS", "rounding_code", "wrap32", "srdhm", "rdbpot", "mbqm",
           "mbqm_greater_than_one", "saturating_shift_left", "exp_on_negative_values",
           "one_over_one_plus_x", "clz32"]

I32_MIN = -(1 << 31)
I32_MAX = (1 << 31) - 1
_I64 = np.int64
IntArray = Union[np.ndarray, int]


def rounding_code(rounding: str) -> int:
    """0, 1, 2 for "gemmlowp", "single", "neon" (the kernels' ``rounding`` argument);
    ValueError naming `rounding` otherwise."""
    try:
        return ROUNDINGS.index(rounding)
    except (ValueError, TypeError):
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}") from None


def wrap32(v: np.ndarray) -> np.ndarray:
    """v modulo 2^32 as a signed int32 value (C's wrap-around of an int32 addition)."""
    return ((v + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def srdhm(a: IntArray, b: IntArray) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul."""
    a = np.asarray(a, _I64)
    b = np.asarray(b, _I64)
    ab = a * b                                       # |ab| <= 2^62
    num = ab + np.where(ab >= 0, _I64(1 << 30), _I64(1 - (1 << 30)))
    high = np.where(num >= 0, num >> 31, -((-num) >> 31))     # C division truncates
    return np.where((a == I32_MIN) & (b == I32_MIN), _I64(I32_MAX), high)


def rdbpot(x: IntArray, exponent: IntArray) -> np.ndarray:
    """gemmlowp RoundingDivideByPOT: x / 2^exponent, ties away from zero (0 <= e <= 31)."""
    x = np.asarray(x, _I64)
    e = np.asarray(exponent, _I64)
    mask = (_I64(1) << e) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> e) + (remainder > threshold)


def saturating_shift_left(x: np.ndarray, exponent: int) -> np.ndarray:
    """gemmlowp SaturatingRoundingMultiplyByPOT<exponent> for exponent > 0 on int32."""
    threshold = (1 << (31 - exponent)) - 1
    return np.where(x > threshold, _I64(I32_MAX),
                    np.where(x < -threshold, _I64(I32_MIN), x << exponent))


def mbqm(x: IntArray, multiplier: IntArray, shift: IntArray, rounding: int) -> np.ndarray:
    """MultiplyByQuantizedMultiplier(x, multiplier, shift) in the given rounding code
    (0 gemmlowp, 1 single, 2 neon), int32 result."""
    x = np.asarray(x, _I64)
    m = np.asarray(multiplier, _I64)
    sh = np.asarray(shift, _I64)
    if rounding == 0:
        left = np.maximum(sh, 0)
        right = np.maximum(-sh, 0)
        v = np.clip(x << left, I32_MIN, I32_MAX)
        return rdbpot(srdhm(v, m), right)
    # single / neon: the chain's int64 requantization (saturated to int32)
    sh = np.maximum(sh, -31)          # quantize_multiplier never gives less
    return _requantize_int64(x, m, sh, ROUNDINGS[rounding]).astype(_I64)


def mbqm_greater_than_one(x: np.ndarray, multiplier: int, left_shift: int,
                          rounding: int) -> np.ndarray:
    """MultiplyByQuantizedMultiplierGreaterThanOne: double rounding
    ``SRDHM(x · 2^left_shift, multiplier)`` (the shift wraps as C's int32 would), or the
    single-rounding MultiplyByQuantizedMultiplier under rounding 1."""
    if rounding == 1:
        return mbqm(x, multiplier, left_shift, 1)
    return srdhm(wrap32(np.asarray(x, _I64) << left_shift), multiplier)


def clz32(x: np.ndarray) -> np.ndarray:
    """Leading zeros of positive int32 values (as uint32)."""
    _, e = np.frexp(np.asarray(x, np.float64))      # exact below 2^53
    return 32 - e.astype(_I64)


# gemmlowp's Q0.31 constants (fixedpoint.h)
_EXP_MINUS_ONE_EIGHTH = 1895147668
_ONE_THIRD = 715827883
_EXP_BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
               (2, 39332535), (3, 720401), (4, 242))


def _exp_on_interval(a: np.ndarray) -> np.ndarray:
    """exp(a) for a in [-1/4, 0), Q0.31 in and out."""
    x = wrap32(a + (1 << 28))
    x2 = srdhm(x, x)
    x3 = srdhm(x2, x)
    x4 = srdhm(x2, x2)
    x4_over_4 = rdbpot(x4, 2)
    poly = rdbpot(wrap32(srdhm(wrap32(x4_over_4 + x3), _ONE_THIRD) + x2), 1)
    return wrap32(_EXP_MINUS_ONE_EIGHTH + srdhm(_EXP_MINUS_ONE_EIGHTH, wrap32(x + poly)))


def exp_on_negative_values(a: np.ndarray, integer_bits: int) -> np.ndarray:
    """gemmlowp exp_on_negative_values for a FixedPoint<int32, integer_bits> a <= 0;
    result Q0.31."""
    frac = 31 - integer_bits
    quarter = 1 << (frac - 2)
    a_mod = (a & (quarter - 1)) - quarter
    result = _exp_on_interval(saturating_shift_left(a_mod, integer_bits)
                              if integer_bits > 0 else a_mod)
    remainder = wrap32(a_mod - a)
    for exponent, multiplier in _EXP_BARREL:
        if integer_bits > exponent:
            bit = (remainder >> (frac + exponent)) & 1
            result = np.where(bit != 0, srdhm(result, multiplier), result)
    if integer_bits > 5:
        clamp = -(1 << (36 - integer_bits))
        result = np.where(a < clamp, _I64(0), result)
    return np.where(a == 0, _I64(I32_MAX), result)


def one_over_one_plus_x(a: np.ndarray) -> np.ndarray:
    """gemmlowp one_over_one_plus_x_for_x_in_0_1: 1 / (1 + a), Q0.31 in and out
    (Newton-Raphson, three steps)."""
    s = np.asarray(a, _I64) + I32_MAX
    half_den = np.where(s >= 0, (s + 1) // 2, -((-s + 1) // 2))  # (sum ± 1) / 2, truncating
    x = wrap32(1515870810 + srdhm(half_den, -1010580540))        # Q2.29
    for _ in range(3):
        one_minus = wrap32((1 << 29) - srdhm(half_den, x))
        x = wrap32(x + saturating_shift_left(srdhm(x, one_minus), 2))
    return saturating_shift_left(x, 1)
