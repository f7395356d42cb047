"""AVERAGE_POOL_2D and MAX_POOL_2D (TFLite ``reference_integer_ops::AveragePool`` /
``MaxPool``, ``pooling.h``).

Only taps inside the image count.  The average sums the raw int8 codes and divides by
the number of in-image taps, rounding half away from zero around raw 0 (``(acc ± n/2) /
n`` in C integer division), not around the zero point; the maximum starts at -128.  Both
clamp to the fused activation's range and keep the input's scale and zero point.
C kernel, rows of the batch split across threads.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import numpy as np

from ... import _backend
from ...linear import activation_range
from ._base import (Op, check_activation, check_ints, check_name, check_spec_qparams_equal,
                    conv_out_size)

__all__ = ["AveragePool2D", "MaxPool2D"]


class _Pool(Op):
    _PARAMS = ("pool", "stride", "padding", "activation")
    _IS_MAX = False

    def __init__(self, input: str, output: str, pool: Sequence[int] = (2, 2),
                 stride: Sequence[int] = (2, 2), padding: Sequence[int] = (0, 0, 0, 0),
                 activation: Optional[str] = None) -> None:
        self._set_io((check_name(input, "input"),), output)
        self.pool = check_ints(pool, 2, "pool", 1)
        self.stride = check_ints(stride, 2, "stride", 1)
        self.padding = check_ints(padding, 4, "padding", 0)
        top, bottom, left, right = self.padding
        if max(top, bottom) >= self.pool[0] or max(left, right) >= self.pool[1]:
            # a window could then hold no in-image tap (TFLite fails at run time)
            raise ValueError(f"padding {self.padding} must be smaller than pool {self.pool} "
                             f"on every side")
        self.activation = check_activation(activation)

    def _bind(self, ins: List[Any], out: Any) -> None:
        (spec,) = ins
        name = f"{type(self).__name__} {self.output!r}"
        if len(spec.shape) != 3:
            raise ValueError(f"{name}: input {spec.name!r} must be (H, W, C), got "
                             f"{tuple(spec.shape)}")
        h, w, c = spec.shape
        top, bottom, left, right = self.padding
        oh = conv_out_size(h, self.pool[0], self.stride[0], 1, top, bottom)
        ow = conv_out_size(w, self.pool[1], self.stride[1], 1, left, right)
        if oh < 1 or ow < 1 or tuple(out.shape) != (oh, ow, c):
            raise ValueError(f"{name}: output shape must be {(oh, ow, c)}, got "
                             f"{tuple(out.shape)}")
        check_spec_qparams_equal(spec, out, name)
        self.act_min, self.act_max = activation_range(self.activation, out.scale,
                                                      out.zero_point)
        self._geom = ((h, w, c), (oh, ow), self.pool, self.stride, (top, left))

    def _run(self, xs: List[np.ndarray], out: np.ndarray, rounding: int,
             n_threads: int) -> None:
        (h, w, c), out_hw, pool, stride, pad_tl = self._geom
        status = _backend.kernels.pool2d_i8(xs[0], out, (out.shape[0], h, w, c), out_hw,
                                            pool, stride, pad_tl, self._IS_MAX,
                                            self.act_min, self.act_max, n_threads)
        if status:
            raise MemoryError(f"{type(self).__name__}: could not allocate scratch memory")


class AveragePool2D(_Pool):
    """int8 average pooling over in-image taps (TFLite AVERAGE_POOL_2D).

    Parameters
    ----------
    input, output : str
        Sample shapes ``(H, W, C)`` and ``(OH, OW, C)``; same (scale, zero_point).
    pool, stride : (int, int)
    padding : (top, bottom, left, right)
        Each side smaller than the pool size.
    activation : {None, "relu", "relu6"}

    Raises
    ------
    TypeError, ValueError
        Bad arguments; at binding, a wrong output shape or different (scale, zero_point).

    Examples
    --------
    >>> AveragePool2D("x", "y", pool=(2, 2), stride=(2, 2)).op_type
    'AVERAGE_POOL_2D'
    """

    op_type = "AVERAGE_POOL_2D"


class MaxPool2D(_Pool):
    """int8 max pooling over in-image taps (TFLite MAX_POOL_2D).

    Parameters and errors as :class:`AveragePool2D`.

    Examples
    --------
    >>> MaxPool2D("x", "y", pool=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1)).padding
    (1, 1, 1, 1)
    """

    op_type = "MAX_POOL_2D"
    _IS_MAX = True
