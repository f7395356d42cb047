"""RELU and RELU6 on int8 (TFLite ``ReluQuantized`` with the parameters of TFLM's
``CalculateReluOpData``): ``zp_out + MultiplyByQuantizedMultiplier(x - zp_in, M, shift)``
with ``M`` from ``double(float32(s_in / s_out))``, clamped to
``[max(-128, zp_out), min(127, zp_out + roundf(6 / s_out))]`` (the upper bound for
ReLU6 only).  With equal scales the multiplier is exactly one and this is TFLM's RELU6
clamp.  ``rounding="single"`` uses TFLITE_SINGLE_ROUNDING's multiply; ``"gemmlowp"`` and
``"neon"`` the double rounding.  Vectorized numpy (exact)."""

from __future__ import annotations

from typing import Any, List, Optional

import numpy as np

from ...linear import quantize_multiplier
from ._base import Op, check_name
from ._fixed import mbqm

__all__ = ["Relu"]


class Relu(Op):
    """int8 ReLU / ReLU6 with requantization (TFLite RELU, RELU6).

    Parameters
    ----------
    input, output : str
        Same shape.
    max_value : {None, 6.0}
        ``6.0`` makes it RELU6.

    Attributes
    ----------
    multiplier, shift, act_min, act_max : int
        Set by the model.

    Raises
    ------
    TypeError, ValueError
        Bad arguments (`max_value` other than None or 6); a different shape at binding.

    Examples
    --------
    >>> Relu("x", "y", max_value=6.0).op_type
    'RELU6'
    """

    _PARAMS = ("max_value",)

    def __init__(self, input: str, output: str, max_value: Optional[float] = None) -> None:
        self._set_io((check_name(input, "input"),), output)
        if max_value is not None:
            if isinstance(max_value, (bool, np.bool_)) or not isinstance(
                    max_value, (int, float, np.number)):
                raise TypeError(f"max_value must be None or 6.0, got {max_value!r}")
            if float(max_value) != 6.0:
                raise ValueError(f"max_value must be None (RELU) or 6.0 (RELU6), got "
                                 f"{max_value!r}")
            max_value = 6.0
        self.max_value = max_value

    @property
    def op_type(self) -> str:  # type: ignore[override]
        """``"RELU"`` or ``"RELU6"``."""
        return "RELU" if self.max_value is None else "RELU6"

    def _bind(self, ins: List[Any], out: Any) -> None:
        (spec,) = ins
        if tuple(out.shape) != tuple(spec.shape):
            raise ValueError(f"Relu {self.output!r}: output shape must equal the input's "
                             f"{tuple(spec.shape)}")
        f32 = np.float32
        real = float(f32(spec.scale) / f32(out.scale))
        m, s = quantize_multiplier([real])
        self.multiplier, self.shift = int(m[0]), int(s[0])
        zp = int(out.zero_point)
        self.act_min = max(-128, zp)
        self.act_max = 127
        if self.max_value is not None:
            with np.errstate(over="ignore"):
                q = f32(6.0) / f32(out.scale)
            six = np.trunc(q + np.copysign(f32(0.49999997), q))   # roundf
            self.act_max = min(127, zp + int(min(float(six), 2.0 ** 31)))
        self.input_zero_point = int(spec.zero_point)
        self.output_zero_point = zp

    def _run(self, xs: List[np.ndarray], out: np.ndarray, rounding: int,
             n_threads: int) -> None:
        v = xs[0].astype(np.int64) - self.input_zero_point
        y = mbqm(v, self.multiplier, self.shift, 1 if rounding == 1 else 0)
        out[...] = np.clip(y + self.output_zero_point, self.act_min, self.act_max)
