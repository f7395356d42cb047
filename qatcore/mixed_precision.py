"""``MixedPrecision``: dynamic loss scaling (Rust ``MixedPrecision``)."""

from __future__ import annotations

import threading
from typing import Any, Union, overload

import numpy as np
import numpy.typing as npt

from . import _backend
from ._checks import as_float32
from ._typing import ArrayLike, F32Array, Real

__all__ = ["MixedPrecision", "MAX_LOSS_SCALE"]

_INIT_SCALE = 65536.0
_GROWTH_INTERVAL = 2000
# Repeated overflows halve the scale; it never goes below the smallest normal float32,
# so it stays usable as a divisor.
_MIN_SCALE = float(np.finfo(np.float32).tiny)
#: Largest loss scale: 2^24.  Growth stops here (Rust doubles without bound: after
#: ~226 000 clean steps the scale is 6.8e38 and ``scale_loss`` returns inf); 2^24 times
#: any loss below ~2e31 stays finite in float32, and it is apex's ``max_loss_scale``.
MAX_LOSS_SCALE = float(2 ** 24)


class MixedPrecision:
    """Dynamic loss scaling for reduced-precision training.

    The loss scale starts at 65536, doubles after 2000 consecutive steps without
    overflow (up to :data:`MAX_LOSS_SCALE`, 2^24) and halves on an overflow (down to
    the smallest normal float32).  Methods are thread-safe: concurrent calls on one
    object equal some serial order.

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
        self._lock = threading.Lock()
        self.reset()

    @property
    def loss_scale(self) -> float:
        """Current loss scale."""
        return self._scale

    @property
    def steps_since_overflow(self) -> int:
        """Clean steps since the last overflow (the scale doubles at 2000)."""
        return self._good_steps

    def reset(self) -> None:
        """Back to the initial scale, no steps counted."""
        with self._lock:
            self._scale = _INIT_SCALE
            self._good_steps = 0

    @overload
    def scale_loss(self, loss: Real) -> float: ...
    @overload
    def scale_loss(self, loss: npt.NDArray[Any]) -> F32Array: ...

    def scale_loss(self, loss: Union[Real, npt.NDArray[Any]]) -> Union[float, F32Array]:
        """``loss * loss_scale`` (a float, or a float32 array for array input)."""
        scale = self._scale
        if isinstance(loss, np.ndarray):
            data, shape = as_float32(loss, "loss")
            return (data * np.float32(scale)).reshape(shape)
        if isinstance(loss, (bool, np.bool_, complex, np.complexfloating)) or \
                not isinstance(loss, (int, float, np.integer, np.floating)):
            raise TypeError(f"loss must be a real number or array, got {type(loss).__name__}")
        try:
            return float(loss) * scale
        except OverflowError:
            raise ValueError("loss is an integer too large for a float") from None

    def unscale_gradients(self, grads: F32Array) -> None:
        """Divide `grads` by the loss scale, in place.

        Raises
        ------
        TypeError
            `grads` is not a float32 numpy array.
        ValueError
            `grads` is read-only.
        """
        if not isinstance(grads, np.ndarray) or isinstance(grads, (np.ma.MaskedArray, np.matrix)) \
                or grads.dtype != np.float32:
            raise TypeError("grads must be a plain float32 numpy array in native byte order "
                            "(unscaled in place)")
        if not grads.flags.writeable:
            raise ValueError("grads is read-only")
        flat = np.asarray(grads)            # a base-class view of the same buffer
        np.divide(flat, np.float32(self._scale), out=flat)

    def check_overflow(self, grads: ArrayLike) -> bool:
        """True when any gradient is NaN or ±Inf."""
        data, _ = as_float32(grads, "grads")
        return bool(_backend.kernels.minmax(data, _backend.get_num_threads())[2] >= 0)

    def update(self, overflow: bool) -> None:
        """Halve the scale on overflow; double it after 2000 steps without one (never
        above :data:`MAX_LOSS_SCALE`).

        Parameters
        ----------
        overflow : bool
            A Python or numpy bool (e.g. :meth:`check_overflow`'s result).

        Raises
        ------
        TypeError
            `overflow` is not a bool (``"no"``, None, 0/1 ...); the state is unchanged.
        """
        if not isinstance(overflow, (bool, np.bool_)):
            raise TypeError(f"overflow must be a bool, got {type(overflow).__name__} "
                            f"{overflow!r}")
        with self._lock:
            if overflow:
                self._scale = max(self._scale * 0.5, _MIN_SCALE)
                self._good_steps = 0
            else:
                self._good_steps += 1
                if self._good_steps >= _GROWTH_INTERVAL:
                    self._scale = min(self._scale * 2.0, MAX_LOSS_SCALE)
                    self._good_steps = 0

    def __getstate__(self) -> "dict[str, Any]":
        with self._lock:
            return {"_scale": self._scale, "_good_steps": self._good_steps}

    def __setstate__(self, state: "dict[str, Any]") -> None:
        self._scale, self._good_steps = state["_scale"], state["_good_steps"]
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MixedPrecision(loss_scale={self._scale!r}, steps_since_overflow={self._good_steps})"
