"""MEAN over axes of the sample shape (TFLite ``reference_ops::QuantizedMeanOrSum``,
``reduce.h``, as TFLM's ``reduce_common.cc`` calls it for int8).

``M, shift = QuantizeMultiplier(double(s_in) / double(s_out))``; with ``n`` the number
of reduced elements, ``k = min(floor(log2 n), 32, 31 + shift)``, ``M' = (M << k) // n``
(integer division), ``shift' = shift - k``; per output
``MultiplyByQuantizedMultiplier(Σ x - zp_in · n, M', shift') + zp_out`` clamped to
[-128, 127].  Vectorized numpy (exact int64).
"""

from __future__ import annotations

from typing import Any, List, Sequence

import numpy as np

from ...linear import quantize_multiplier
from ._base import Op, check_int, check_name, prod
from ._fixed import mbqm, wrap32

__all__ = ["Mean"]


class Mean(Op):
    """int8 mean over axes of the sample shape (TFLite MEAN).

    Parameters
    ----------
    input, output : str
    axes : tuple of int
        Axes of the sample shape (no batch axis); ``(0, 1)`` is the spatial mean of HWC.
        Negative axes count from the end.
    keepdims : bool
        Keep the reduced axes as size 1.  Reducing every axis without keepdims gives the
        sample shape ``(1,)`` (a TensorSpec has at least one axis).

    Attributes
    ----------
    multiplier, shift : int
        The multiplier and shift after folding ``1 / n`` in (set by the model).

    Raises
    ------
    TypeError, ValueError
        Bad arguments; at binding, axes outside the input's rank or a wrong output shape.

    Examples
    --------
    >>> Mean("x", "y", axes=(0, 1)).axes
    (0, 1)
    """

    op_type = "MEAN"
    _PARAMS = ("axes", "keepdims")

    def __init__(self, input: str, output: str, axes: Sequence[int] = (0, 1),
                 keepdims: bool = False) -> None:
        self._set_io((check_name(input, "input"),), output)
        if isinstance(axes, (str, bytes)) or not hasattr(axes, "__len__") or not len(axes):
            raise TypeError(f"axes must be a non-empty tuple of ints, got {axes!r}")
        self.axes = tuple(check_int(a, f"axes[{i}]", -16, 15) for i, a in enumerate(axes))
        if not isinstance(keepdims, (bool, np.bool_)):
            raise TypeError(f"keepdims must be a bool, got {type(keepdims).__name__}")
        self.keepdims = bool(keepdims)

    def _bind(self, ins: List[Any], out: Any) -> None:
        (spec,) = ins
        rank = len(spec.shape)
        name = f"Mean {self.output!r}"
        axes = []
        for a in self.axes:
            if not -rank <= a < rank:
                raise ValueError(f"{name}: axis {a} is outside the input's {rank} sample axes")
            axes.append(a % rank)
        axes = sorted(set(axes))
        shape = tuple(1 if i in axes else d for i, d in enumerate(spec.shape)
                      if self.keepdims or i not in axes) or (1,)   # no scalar samples
        if tuple(out.shape) != shape:
            raise ValueError(f"{name}: output shape must be {shape}, got {tuple(out.shape)}")
        n = prod(spec.shape[a] for a in axes)
        real = float(np.float32(spec.scale)) / float(np.float32(out.scale))
        m, s = (int(v[0]) for v in quantize_multiplier([real]))
        k = min(n.bit_length() - 1, 32, 31 + s)
        self.multiplier = (m << k) // n
        self.shift = s - k
        self._axes = tuple(a + 1 for a in axes)          # batch axis first in buffers
        self._n = n
        self.input_zero_point = int(spec.zero_point)
        self.output_zero_point = int(out.zero_point)

    def _run(self, xs: List[np.ndarray], out: np.ndarray, rounding: int,
             n_threads: int) -> None:
        total = xs[0].sum(axis=self._axes, dtype=np.int64)
        shifted = wrap32(total - self.input_zero_point * self._n)
        y = mbqm(shifted, self.multiplier, self.shift, 1 if rounding == 1 else 0)
        y = np.clip(y + self.output_zero_point, -128, 127)
        out[...] = y.reshape(out.shape)
