"""``MixedPrecision``: dynamic loss scaling (Rust ``MixedPrecision``)."""

from __future__ import annotations

from typing import Any, Union, overload

import numpy as np
import numpy.typing as npt

from . import _backend
from ._checks import as_float32
from ._typing import ArrayLike, F32Array, Real

__all__ = ["MixedPrecision"]

_INIT_SCALE = 65536.0
_GROWTH_INTERVAL = 2000
# Repeated overflows halve the scale; it never goes below the smallest normal float32,
# so it stays usable as a divisor.
_MIN_SCALE = float(np.finfo(np.float32).tiny)


class MixedPrecision:
    """Dynamic loss scaling for reduced-precision training.

    The loss scale starts at 65536, doubles after 2000 consecutive steps without
    overflow and halves on an overflow.

    Examples
    --------
    >>> import numpy as np
    >>> from qatcore import MixedPrecision
    >>> mp = MixedPrecision()
    >>> mp.scale_loss(0.5)
    32768.0
    >>> g = np.array([65536.0, np.inf], dtype=np.float32)
    >>> mp.check_overflow(g)
    True
    >>> mp.update(True); mp.loss_scale
    32768.0
    """

    def __init__(self) -> None:
        self.reset()

    @property
    def loss_scale(self) -> float:
        """Current loss scale."""
        return self._scale

    @property
    def steps_since_overflow(self) -> int:
        return self._good_steps

    def reset(self) -> None:
        """Back to the initial scale, no steps counted."""
        self._scale = _INIT_SCALE
        self._good_steps = 0

    @overload
    def scale_loss(self, loss: Real) -> float: ...
    @overload
    def scale_loss(self, loss: npt.NDArray[Any]) -> F32Array: ...

    def scale_loss(self, loss: Union[Real, npt.NDArray[Any]]) -> Union[float, F32Array]:
        """``loss * loss_scale`` (a float, or a float32 array for array input)."""
        if isinstance(loss, np.ndarray):
            data, shape = as_float32(loss, "loss")
            return (data * np.float32(self._scale)).reshape(shape)
        if isinstance(loss, (bool, np.bool_)) or not isinstance(loss, (int, float, np.number)):
            raise TypeError(f"loss must be a real number or array, got {type(loss).__name__}")
        return float(loss) * self._scale

    def unscale_gradients(self, grads: F32Array) -> None:
        """Divide `grads` by the loss scale, in place.

        Raises
        ------
        TypeError
            `grads` is not a float32 numpy array.
        ValueError
            `grads` is read-only.
        """
        if not isinstance(grads, np.ndarray) or grads.dtype != np.float32:
            raise TypeError("grads must be a float32 numpy array (unscaled in place)")
        if not grads.flags.writeable:
            raise ValueError("grads is read-only")
        np.divide(grads, np.float32(self._scale), out=grads)

    def check_overflow(self, grads: ArrayLike) -> bool:
        """True when any gradient is NaN or ±Inf."""
        data, _ = as_float32(grads, "grads")
        return bool(_backend.kernels.minmax(data, _backend.get_num_threads())[2] >= 0)

    def update(self, overflow: bool) -> None:
        """Halve the scale on overflow; double it after 2000 steps without one."""
        if overflow:
            self._scale = max(self._scale * 0.5, _MIN_SCALE)
            self._good_steps = 0
        else:
            self._good_steps += 1
            if self._good_steps >= _GROWTH_INTERVAL:
                self._scale *= 2.0
                self._good_steps = 0

    def __repr__(self) -> str:
        return f"MixedPrecision(loss_scale={self._scale!r}, steps_since_overflow={self._good_steps})"
