"""HARD_SWISH on int8 (TFLite ``reference_ops::HardSwish`` for quantized types,
``hard_swish.h``; parameters as TFLM's ``hard_swish_common.cc``).

int16 fixed-point: the input ``x - zp_in`` goes to a "high resolution" scale
``s_in / 128``; one branch rescales it to the output scale (int16 multiplier from
``(s_in / 128) / s_out``), the other to the "reluish" scale ``3 / 32768`` and maps it
to ``relu6(x + 3) / 6`` in [0, 1) (Q0.15); their product (non-rounding doubling high
multiply) is divided by ``2^-exponent`` with rounding, ``+ zp_out``, clamped to int8.
All multipliers: float32 scale ratios made double, ``QuantizeMultiplier``, then
``DownScaleInt32ToInt16Multiplier``.  Vectorized numpy emulating int16 exactly.
"""

from __future__ import annotations

from typing import Any, List

import numpy as np

from ...linear import quantize_multiplier
from ._base import Op, check_name

__all__ = ["HardSwish"]

_I16_MIN, _I16_MAX = -(1 << 15), (1 << 15) - 1


def _wrap16(v: np.ndarray) -> np.ndarray:
    return ((v + (1 << 15)) & 0xFFFF) - (1 << 15)


def _srdhm16(a: np.ndarray, b: int) -> np.ndarray:
    ab = a * b
    num = ab + np.where(ab >= 0, 1 << 14, 1 - (1 << 14))
    q = np.where(num >= 0, num >> 15, -((-num) >> 15))
    q = np.where((a == _I16_MIN) & (b == _I16_MIN), _I16_MAX, q)
    return _wrap16(q)


def _sdhm16(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = a * b
    q = np.where(ab >= 0, ab >> 15, -((-ab) >> 15))
    q = np.where((a == _I16_MIN) & (b == _I16_MIN), _I16_MAX, q)
    return _wrap16(q)


def _rdbpot(x: np.ndarray, exponent: int) -> np.ndarray:
    mask = (1 << exponent) - 1
    return (x >> exponent) + ((x & mask) > ((mask >> 1) + (x < 0)))


def _sat_left16(v: np.ndarray, amount: int) -> np.ndarray:
    return np.clip(v * (1 << amount), _I16_MIN, _I16_MAX)


def _int16_multiplier(real: float):
    m, e = (int(v[0]) for v in quantize_multiplier([real]))
    if m >= (1 << 31) - 1 - (1 << 15):
        return _I16_MAX, e
    return (m + (1 << 15)) >> 16, e


class HardSwish(Op):
    """int8 hard swish ``x · relu6(x + 3) / 6`` (TFLite HARD_SWISH).

    Parameters
    ----------
    input, output : str
        Same shape; any (scale, zero_point) each.

    Attributes
    ----------
    output_multiplier, output_exponent, reluish_multiplier, reluish_exponent : int
        TFLite's int16 multipliers and exponents, set by the model.

    Raises
    ------
    TypeError, ValueError
        Bad names; at binding, a different shape or a scale ratio TFLite's int16
        arithmetic cannot represent (an output multiplier above one, or an exponent
        below -15).

    Examples
    --------
    >>> HardSwish("x", "y").op_type
    'HARD_SWISH'
    """

    op_type = "HARD_SWISH"

    def __init__(self, input: str, output: str) -> None:
        self._set_io((check_name(input, "input"),), output)

    def _bind(self, ins: List[Any], out: Any) -> None:
        (spec,) = ins
        name = f"HardSwish {self.output!r}"
        if tuple(out.shape) != tuple(spec.shape):
            raise ValueError(f"{name}: output shape must equal the input's {tuple(spec.shape)}")
        f32 = np.float32
        hires = f32(1.0 / 128.0) * f32(spec.scale)
        om, oe = _int16_multiplier(float(f32(hires / f32(out.scale))))
        rm, re = _int16_multiplier(float(f32(hires / f32(3.0 / 32768.0))))
        if oe > 0 or oe < -15 or re < -15 or re > 15:
            raise ValueError(f"{name}: the scale ratios of {spec.name!r} and {out.name!r} are "
                             f"outside TFLite's int16 HARD_SWISH arithmetic")
        self.output_multiplier, self.output_exponent = om, oe
        self.reluish_multiplier, self.reluish_exponent = rm, re
        self.input_zero_point = int(spec.zero_point)
        self.output_zero_point = int(out.zero_point)

    def _run(self, xs: List[np.ndarray], out: np.ndarray, rounding: int,
             n_threads: int) -> None:
        v = _wrap16(xs[0].astype(np.int64) - self.input_zero_point)
        hires = _wrap16(v * 128)
        pre_out = _srdhm16(hires, self.output_multiplier)
        rel = hires
        re = self.reluish_exponent
        if re > 0:
            rel = _sat_left16(rel, re - 1)
        rel = _srdhm16(rel, self.reluish_multiplier)
        if re > 0:
            rel = _sat_left16(rel, 1)
        if re < 0:
            rel = _rdbpot(rel, -re)
        rel = _wrap16((rel + (1 << 15)) >> 1)
        y = _rdbpot(_sdhm16(rel, pre_out), -self.output_exponent)
        y = _wrap16(y + self.output_zero_point)
        out[...] = np.clip(y, -128, 127)
