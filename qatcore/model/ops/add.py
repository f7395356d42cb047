"""ADD and MUL of two int8 tensors of the same shape (TFLite ``reference_integer_ops``
``add.h`` / ``mul.h``, TFLM ``add_common.cc`` / ``mul_common.cc``).

ADD: ``left_shift = 20``, ``twice_max = 2 · max(s1, s2)`` (float64), input multipliers
``s_i / twice_max`` and output multiplier ``twice_max / (2^20 · s_out)``, each through
``QuantizeMultiplierSmallerThanOneExp``; per element ``(x_i - zp_i) << 20`` is scaled by
its input multiplier, the two are added, scaled by the output multiplier, ``+ zp_out``
and clamped to the fused activation's range.

MUL: ``MultiplyByQuantizedMultiplier((x1 - zp1) · (x2 - zp2), M, shift) + zp_out`` with
``M`` from ``double(s1) · double(s2) / double(s_out)``, clamped.

The scalings are ``MultiplyByQuantizedMultiplier*`` calls: ``rounding="single"`` makes
them TFLITE_SINGLE_ROUNDING's; ``"gemmlowp"`` and ``"neon"`` compute TFLite's double
rounding (the NEON difference only exists in the GEMM-based kernels' epilogue).
ADD runs a C loop (qc_conv.h ``qc_add_i8``); MUL vectorized numpy (int64 holding the
int32 values, exact).
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import numpy as np

from ... import _backend
from ...linear import activation_range, quantize_multiplier
from ._base import Op, check_activation, check_name
from ._fixed import mbqm

__all__ = ["Add", "Mul"]

_LEFT_SHIFT = 20


def _pair(inputs: Any) -> tuple:
    if isinstance(inputs, (str, bytes)) or not hasattr(inputs, "__len__"):
        raise TypeError(f"inputs must be a pair of tensor names, got {inputs!r}")
    if len(inputs) != 2:
        raise ValueError(f"inputs must name 2 tensors, got {len(inputs)}")
    return tuple(check_name(v, f"inputs[{i}]") for i, v in enumerate(inputs))


def _elementwise_rounding(rounding: int) -> int:
    return 1 if rounding == 1 else 0


class _Binary(Op):
    _PARAMS = ("activation",)
    _MULTI_INPUT = True

    def __init__(self, inputs: Sequence[str], output: str,
                 activation: Optional[str] = None) -> None:
        self._set_io(_pair(inputs), output)
        self.activation = check_activation(activation)

    def _check_shapes(self, ins: List[Any], out: Any) -> None:
        a, b = ins
        if tuple(a.shape) != tuple(b.shape) or tuple(out.shape) != tuple(a.shape):
            raise ValueError(f"{type(self).__name__} {self.output!r}: inputs and output must "
                             f"have equal shapes (no broadcasting), got {tuple(a.shape)}, "
                             f"{tuple(b.shape)} -> {tuple(out.shape)}")
        self.act_min, self.act_max = activation_range(self.activation, out.scale,
                                                      out.zero_point)
        self.input_zero_points = (int(a.zero_point), int(b.zero_point))
        self.output_zero_point = int(out.zero_point)


class Add(_Binary):
    """Element-wise int8 addition with rescaling (TFLite ADD).

    Parameters
    ----------
    inputs : (str, str)
        The two input tensors (equal shapes).
    output : str
    activation : {None, "relu", "relu6"}

    Attributes
    ----------
    input_multipliers, input_shifts : (int, int)
    output_multiplier, output_shift : int
    act_min, act_max : int
        TFLite's ``Prepare`` values, set by the model.

    Raises
    ------
    TypeError, ValueError
        Bad arguments; at binding, shapes that differ or an output scale so small that
        the output multiplier is not below one (TFLite refuses it too).

    Examples
    --------
    >>> Add(("a", "b"), "c").inputs
    ('a', 'b')
    """

    op_type = "ADD"

    def _bind(self, ins: List[Any], out: Any) -> None:
        self._check_shapes(ins, out)
        s1, s2 = (float(np.float32(s.scale)) for s in ins)
        twice_max = 2.0 * max(s1, s2)
        so = float(np.float32(out.scale))
        real_out = twice_max / ((1 << _LEFT_SHIFT) * so)
        if not real_out < 1.0:
            raise ValueError(f"Add {self.output!r}: output scale {out.scale} is too small "
                             f"for the inputs' scales (2·max(s1, s2) / (2^20 · s_out) must be "
                             f"below 1, as in TFLite)")
        mult, shift = quantize_multiplier([s1 / twice_max, s2 / twice_max, real_out])
        self.input_multipliers = (int(mult[0]), int(mult[1]))
        self.input_shifts = (int(shift[0]), int(shift[1]))
        self.output_multiplier, self.output_shift = int(mult[2]), int(shift[2])

    def _run(self, xs: List[np.ndarray], out: np.ndarray, rounding: int,
             n_threads: int) -> None:
        (za, zb), (ma, mb), (sa, sb) = (self.input_zero_points, self.input_multipliers,
                                        self.input_shifts)
        _backend.kernels.add_i8(xs[0], xs[1], out, za, zb, ma, sa, mb, sb,
                                self.output_multiplier, self.output_shift,
                                self.output_zero_point, self.act_min, self.act_max,
                                rounding == 1)


class Mul(_Binary):
    """Element-wise int8 multiplication with rescaling (TFLite MUL).

    Parameters
    ----------
    inputs : (str, str)
        The two input tensors (equal shapes).
    output : str
    activation : {None, "relu", "relu6"}

    Attributes
    ----------
    output_multiplier, output_shift : int
    act_min, act_max : int

    Raises
    ------
    TypeError, ValueError
        Bad arguments; shapes that differ at binding.

    Examples
    --------
    >>> Mul(("a", "b"), "c").op_type
    'MUL'
    """

    op_type = "MUL"

    def _bind(self, ins: List[Any], out: Any) -> None:
        self._check_shapes(ins, out)
        a, b = ins
        real = (float(np.float32(a.scale)) * float(np.float32(b.scale))
                / float(np.float32(out.scale)))
        mult, shift = quantize_multiplier([real])
        self.output_multiplier, self.output_shift = int(mult[0]), int(shift[0])

    def _run(self, xs: List[np.ndarray], out: np.ndarray, rounding: int,
             n_threads: int) -> None:
        za, zb = self.input_zero_points
        prod = (xs[0].astype(np.int64) - za) * (xs[1].astype(np.int64) - zb)
        y = mbqm(prod, self.output_multiplier, self.output_shift,
                 _elementwise_rounding(rounding)) + self.output_zero_point
        np.clip(y, self.act_min, self.act_max, out=y)
        out[...] = y
