"""``QuantObserver``: tracks tensor statistics and turns them into (scale, zero_point)."""

from __future__ import annotations

import copy as _copy
import math
import threading
from array import array
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import numpy.typing as npt

from . import _backend
from ._checks import as_float32, raise_nonfinite
from ._typing import ArrayLike, Integer, ObserverLike
from .config import FakeQuantConfig, ObserverMethod, _coerce_observer

__all__ = ["QuantObserver", "qparams_arrays"]

F32 = np.float32
_INF = float("inf")
_AVERAGING_CONSTANT = F32(0.01)
_ONE_MINUS_C = F32(1.0) - _AVERAGING_CONSTANT
_EPS = F32(1e-10)                      # Rust's `1e-10` literal compared with an f32
_P_LOW, _P_HIGH = F32(0.001), F32(0.999)
_MIN_MAX, _PERCENTILE = ObserverMethod.MIN_MAX, ObserverMethod.PERCENTILE
_MOVING_AVERAGE = ObserverMethod.MOVING_AVERAGE


def percentile_indices(n: int) -> Tuple[int, int]:
    """The order-statistic ranks Rust's percentile observer reads in a batch of n.

    ``floor(n * 0.001)`` and ``min(ceil(n * 0.999), n - 1)``, products in float32 (so
    they match Rust's ``n as f32 * 0.001``, including rounding of n above 2^24).
    """
    nf = F32(n)
    low = int(math.floor(nf * _P_LOW))
    high = min(int(math.ceil(nf * _P_HIGH)), n - 1)
    return low, high


class QuantObserver:
    """Observer of tensor statistics (Rust ``QuantObserver``).

    Parameters
    ----------
    method : ObserverMethod or str, default ObserverMethod.MIN_MAX
        MIN_MAX keeps the running min and max; PERCENTILE the min of the 0.1 % and the
        max of the 99.9 % order statistics of each batch; MOVING_AVERAGE an exponential
        average (constant 0.01) of each batch's min and max, the first batch setting it;
        MEAN_STD the min/max of each batch's mean ∓ 3 std (population std, float64).
    n_threads : int, optional
        Threads for large batches (default: ``qatcore.get_num_threads()``, i.e. 1).

    Examples
    --------
    >>> import numpy as np
    >>> from qatcore import QuantObserver, ObserverMethod, FakeQuantConfig
    >>> obs = QuantObserver(ObserverMethod.MIN_MAX)
    >>> obs.observe(np.array([-1.0, 0.5, 2.0]))
    >>> obs.range()
    (-1.0, 2.0)
    >>> obs.compute_qparams(FakeQuantConfig.int8())  # doctest: +ELLIPSIS
    (0.015748..., 0.0)
    """

    __slots__ = ("_method", "_n_threads", "_min", "_max", "_avg_min", "_avg_max", "_count",
                 "_qcache", "_history", "_lock")
    _qcache: Optional[Tuple[FakeQuantConfig, float, float, Tuple[float, float]]]

    def __init__(self, method: ObserverLike = ObserverMethod.MIN_MAX, *,
                 n_threads: Optional[Integer] = None) -> None:
        self._method = _coerce_observer(method)
        self._n_threads = None if n_threads is None else _backend.check_threads(n_threads)
        # One lock per observer: every method that reads and writes the statistics holds
        # it, so concurrent calls on one observer equal some serial order (docs/threading.md).
        self._lock = threading.RLock()
        self._reset()

    # --- state -----------------------------------------------------------------------
    @property
    def method(self) -> ObserverMethod:
        """The observer method."""
        return self._method

    @property
    def count(self) -> int:
        """Number of non-empty batches observed since construction or `reset`."""
        return self._count

    @property
    def n_threads(self) -> int:
        """Threads used for large batches."""
        return _backend.resolve_threads(self._n_threads)

    @n_threads.setter
    def n_threads(self, value: Optional[Integer]) -> None:
        self._n_threads = None if value is None else _backend.check_threads(value)

    def reset(self) -> None:
        """Forget everything observed."""
        with self._lock:
            self._reset()

    def _reset(self) -> None:
        self._min = _INF
        self._max = -_INF
        self._avg_min = F32(0.0)
        self._avg_max = F32(0.0)
        self._count = 0
        self._qcache = None
        # MOVING_AVERAGE only: every batch's (min, max), interleaved float32, so that
        # `merge` can replay them exactly (the average depends on the batch order).
        self._history = array("f")

    def range(self) -> Tuple[float, float]:
        """Observed ``(min, max)``; ``(inf, -inf)`` before anything was observed."""
        with self._lock:
            return self._min, self._max

    # --- observing -------------------------------------------------------------------
    def observe(self, x: ArrayLike) -> None:
        """Update the statistics with one batch.

        Parameters
        ----------
        x : array_like
            Real numbers, any shape; converted to float32 (no copy when already a
            C-contiguous float32 array). An empty batch is a no-op, as in Rust.

        Raises
        ------
        TypeError
            Non-numeric or complex data.
        ValueError
            A NaN or ±Inf in `x` (the message gives the first bad index); the observer
            is left unchanged.
        """
        data, shape = as_float32(x)
        with self._lock:
            self._observe(data, shape, x)

    def _observe(self, data, shape, source=None) -> None:
        """observe() on a flat C-contiguous float32 array, the lock held."""
        n = data.shape[0]
        if n == 0:
            return
        k = _backend.kernels
        nt = _backend.resolve_threads(self._n_threads)
        method = self._method
        # lo/hi are Python floats holding float32 values (cheaper than numpy scalars).
        if method is _MIN_MAX or method is _MOVING_AVERAGE:
            lo, hi, bad = k.minmax(data, nt)
        elif method is _PERCENTILE:
            k_low, k_high = percentile_indices(n)
            lo, hi, bad = k.select_order_stats(data, k_low, k_high, nt)
        else:
            mean, std, bad = k.mean_std(data, nt)
            if bad < 0:
                with np.errstate(over="ignore"):
                    lo, hi = float(F32(mean - 3.0 * std)), float(F32(mean + 3.0 * std))
                if not (math.isfinite(lo) and math.isfinite(hi)):
                    raise ValueError("observe: mean ± 3·std of x overflows float32")
        if bad >= 0:
            raise_nonfinite("observe", data, bad, shape, source)

        if method is _MOVING_AVERAGE:
            self._moving_average_step(lo, hi)
            self._history.append(lo)
            self._history.append(hi)
        else:
            # f32::min/max: which zero wins between -0.0 and +0.0 is left to the
            # comparison, as in Rust's fold (the scale does not depend on it).
            if lo < self._min:
                self._min = lo
            if hi > self._max:
                self._max = hi
        self._count += 1

    def _moving_average_step(self, lo: float, hi: float) -> None:
        """One MOVING_AVERAGE update with a batch's (min, max); `_count` not changed."""
        if self._count == 0:
            self._avg_min, self._avg_max = F32(lo), F32(hi)
        else:
            c = _AVERAGING_CONSTANT
            self._avg_min = _ONE_MINUS_C * self._avg_min + c * F32(lo)
            self._avg_max = _ONE_MINUS_C * self._avg_max + c * F32(hi)
        self._min, self._max = float(self._avg_min), float(self._avg_max)

    # --- saving, loading, merging (qatcore._state) ---------------------------------
    def merge(self, other: "QuantObserver") -> "QuantObserver":
        """Fold `other`'s statistics into this observer, exactly as if this observer had
        then observed `other`'s batches itself (bit for bit); returns ``self``.

        MIN_MAX, PERCENTILE and MEAN_STD keep the min of per-batch lows and the max of
        per-batch highs, so merging is exact and associative: parts observed anywhere
        and merged in their batch order give the one-observer result. (Merged out of
        order the range is the same number; only which of ``-0.0``/``+0.0`` is kept may
        differ, as it does for batches observed in another order, and the scale and
        zero point never do.) MOVING_AVERAGE depends on the batch order: the observer
        keeps each batch's (min, max) (8 bytes per batch) and `merge` replays `other`'s
        batches, in order, through the same float32 update as `observe`.

        Raises
        ------
        TypeError
            `other` is not a QuantObserver.
        ValueError
            The two observers use different methods (nothing changes).

        Examples
        --------
        >>> import numpy as np
        >>> from qatcore import QuantObserver
        >>> a, b, whole = (QuantObserver("moving_average") for _ in range(3))
        >>> for i, x in enumerate(np.arange(12, dtype=np.float32).reshape(4, 3)):
        ...     (a if i < 2 else b).observe(x); whole.observe(x)
        >>> a.merge(b).range() == whole.range(), a.count
        (True, 4)
        """
        from ._state import merge_observer

        if isinstance(other, QuantObserver):
            other = _copy.copy(other)       # a consistent snapshot, taken under its lock
        with self._lock:
            merge_observer(self, other)
        return self

    def state_dict(self) -> Dict[str, Any]:
        """The observer's statistics as a plain JSON-safe dict (``json.dumps`` works).

        Keys: ``format`` (``"qatcore-observer/1"``), ``method``, ``count``, ``range``
        (``[min, max]`` as Python floats holding the float32 values, exact through JSON;
        ``None`` before anything was observed) and, for MOVING_AVERAGE,
        ``batch_ranges`` (every batch's ``[min, max]``, needed to merge exactly).
        The thread count is a runtime setting and not part of the state.
        """
        from ._state import observer_state

        with self._lock:
            return observer_state(self)

    @classmethod
    def from_state(cls, state: Mapping[str, Any], *, n_threads: Optional[Integer] = None
                   ) -> "QuantObserver":
        """A new observer from a :meth:`state_dict` (every field validated).

        Raises
        ------
        ValueError
            A malformed or inconsistent state (wrong format, unknown method, negative or
            non-integer count, non-finite or non-float32 range ends, min > max, a
            MOVING_AVERAGE range that its batch ranges do not reproduce, ...).
        TypeError
            `state` is not a dict.
        """
        obs = cls(ObserverMethod.MIN_MAX, n_threads=n_threads)
        from ._state import load_observer_state

        load_observer_state(obs, state, same_method=False)
        return obs

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the statistics with those of a :meth:`state_dict` of the same method.

        Raises
        ------
        ValueError, TypeError
            As :meth:`from_state`, or the state is for another method; the observer is
            unchanged on any error.
        """
        from ._state import load_observer_state

        with self._lock:
            load_observer_state(self, state, same_method=True)

    def compute_qparams(self, config: FakeQuantConfig) -> Tuple[float, float]:
        """``(scale, zero_point)`` for `config` from the observed range (Rust formulas, f32).

        Symmetric: ``scale = max(|min|, |max|) / qmax`` (1.0 when that is 0), zero
        point 0. Asymmetric: ``scale = (max - min) / (qmax - qmin)`` (1.0 when the range
        is within 1e-10), ``zero_point = qmin - min / scale`` (a float, not rounded).
        Before anything was observed: ``(1.0, 0.0)`` (Rust: an infinite scale).

        Raises
        ------
        TypeError
            `config` is not a FakeQuantConfig.
        """
        if not isinstance(config, FakeQuantConfig):
            raise TypeError(f"config must be a FakeQuantConfig, got {type(config).__name__}")
        with self._lock:
            cached = self._qcache
            if cached is not None and cached[0] is config and cached[1] == self._min \
                    and cached[2] == self._max and self._count:
                return cached[3]            # ±0.0 range ends give the same qparams
            result = _qparams(self._min, self._max, self._count, config)
            self._qcache = (config, self._min, self._max, result)
            return result

    # --- Rust Clone ----------------------------------------------------------------
    def __copy__(self) -> "QuantObserver":
        new = QuantObserver.__new__(QuantObserver)
        with self._lock:
            for name in _STATE_SLOTS:
                setattr(new, name, getattr(self, name))
            new._history = array("f", self._history)    # state, not shared storage
        new._lock = threading.RLock()
        return new

    def __deepcopy__(self, memo: Any) -> "QuantObserver":
        return self.__copy__()

    def __getstate__(self) -> "dict[str, Any]":
        with self._lock:
            return {name: getattr(self, name) for name in _STATE_SLOTS}

    def __setstate__(self, state: "dict[str, Any]") -> None:
        for name, value in state.items():
            if name != "_lock":
                setattr(self, name, value)
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        lo, hi = self.range()
        return (f"QuantObserver(method={self._method}, range=({lo!r}, {hi!r}), "
                f"count={self._count})")


_STATE_SLOTS = tuple(n for n in QuantObserver.__slots__ if n != "_lock")


def _qparams(min_val, max_val, count, config) -> Tuple[float, float]:
    if count == 0:
        return 1.0, 0.0
    if config.numerics != "aprender":
        s_arr, z_arr = qparams_arrays(np.array([min_val], F32), np.array([max_val], F32), config)
        return float(s_arr[0]), float(z_arr[0])
    qmin, qmax = (F32(v) for v in config.quant_range())
    min_val, max_val = F32(min_val), F32(max_val)
    if config.symmetric:
        max_abs = max(abs(min_val), abs(max_val))
        scale = max_abs / qmax if max_abs > 0 else F32(1.0)
        if scale == 0:          # max_abs / qmax underflowed (denormal data)
            scale = F32(1.0)
        return float(scale), 0.0
    with np.errstate(over="ignore"):
        diff = max_val - min_val
    if not math.isfinite(diff):
        # The range spans more than float32 can hold: Rust's scale would be infinite.
        # Few codes over such a range (bits=1 over ±2e38) can need a step above float32's
        # largest value: it saturates there, so outputs stay finite (never inf/NaN).
        scale = F32(min((float(max_val) - float(min_val)) / float(qmax - qmin), _F32_MAX))
    elif abs(diff) > _EPS:
        scale = diff / (qmax - qmin)
    else:
        scale = F32(1.0)
    zero_point = qmin - min_val / scale
    return float(scale), float(zero_point)


_TORCH_EPS = F32(np.finfo(np.float32).eps)
_F32_MAX = float(np.finfo(np.float32).max)
_F32_TINY = float(np.finfo(np.float32).tiny)


def qparams_arrays(min_val: npt.ArrayLike, max_val: npt.ArrayLike,
                   config: FakeQuantConfig) -> Tuple[npt.NDArray[np.float32],
                                                     npt.NDArray[np.float32]]:
    """Per-channel ``(scale, zero_point)`` float32 arrays from arrays of observed ranges,
    in `config`'s numerics (one channel per element; used for per-channel quantizers).

    ``"aprender"``: the Rust formulas of :meth:`QuantObserver.compute_qparams`.
    ``"torch"``: torch's ``MinMaxObserver._calculate_qparams`` in float32 -- the range
    widened to include 0; symmetric ``scale = max(-min, max) / ((qmax - qmin) / 2)``,
    zero point 0; affine ``scale = (max - min) / (qmax - qmin)``,
    ``zp = clamp(qmin - round_half_even(min / scale), qmin, qmax)``; scale at least
    float32 eps.  ``"onnx"``: onnxruntime's ``compute_scale_zp`` -- the range widened to
    include 0 (symmetrized when symmetric), ``scale = (max - min) / (qmax - qmin)`` in
    float64 (1.0 with zero point 0 below float32's smallest normal), ``zp =
    round_half_even(qmin - min / scale)`` in float64 (``(qmin + qmax) / 2`` rounded when
    symmetric), the scale then stored as float32.  Zero points of the presets are
    integers (held in float32).

    Parameters
    ----------
    min_val, max_val : array_like of float32
        Observed range ends (finite), same shape.
    config : FakeQuantConfig

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        float32 scale and zero point, the shape of `min_val`.

    Examples
    --------
    >>> from qatcore import FakeQuantConfig
    >>> qparams_arrays([-1.0, 0.5], [2.0, 1.0], FakeQuantConfig(symmetric=False, numerics="torch"))
    (array([0.01176471, 0.00392157], dtype=float32), array([85.,  0.], dtype=float32))
    """
    if not isinstance(config, FakeQuantConfig):
        raise TypeError(f"config must be a FakeQuantConfig, got {type(config).__name__}")
    lo: Any = np.asarray(min_val, dtype=F32)
    hi: Any = np.asarray(max_val, dtype=F32)
    if lo.shape != hi.shape:
        raise ValueError(f"min_val and max_val differ in shape: {lo.shape} vs {hi.shape}")
    qmin, qmax = (F32(v) for v in config.quant_range())
    numerics = config.numerics
    if numerics == "aprender":
        pairs = [_qparams(a, b, 1, config) for a, b in zip(lo.ravel().tolist(), hi.ravel().tolist())]
        scale = np.array([p[0] for p in pairs], F32).reshape(lo.shape)
        zp = np.array([p[1] for p in pairs], F32).reshape(lo.shape)
        return scale, zp
    lo = np.minimum(lo, F32(0))
    hi = np.maximum(hi, F32(0))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if numerics == "torch":
            if config.symmetric:
                hi = np.maximum(-lo, hi)
                scale = (hi / F32((float(qmax) - float(qmin)) / 2)).astype(F32)
                scale = np.maximum(scale, _TORCH_EPS)
                zp = np.zeros(lo.shape, F32)
            else:
                diff = hi - lo
                # A range wider than float32 holds: torch's scale would be infinite.
                wide = ~np.isfinite(diff)
                scale = np.where(wide, ((hi.astype(np.float64) - lo) / float(qmax - qmin)
                                        ).astype(F32), diff / F32(qmax - qmin)).astype(F32)
                scale = np.clip(scale, _TORCH_EPS, F32(_F32_MAX))
                zp = qmin - np.round(lo / scale).astype(F32)
                zp = np.clip(zp, qmin, qmax).astype(F32)
            return scale, zp
        # onnx
        if config.symmetric:
            absmax = np.maximum(np.abs(lo), np.abs(hi))
            lo, hi = -absmax, absmax
        scale64 = (hi.astype(np.float64) - lo.astype(np.float64)) / (float(qmax) - float(qmin))
        small = scale64 < _F32_TINY
        if config.symmetric:
            zp = np.full(lo.shape, np.round((float(qmin) + float(qmax)) / 2.0), np.float64)
        else:
            zp = np.round(float(qmin) - lo.astype(np.float64) / np.where(small, 1.0, scale64))
        scale = np.where(small, F32(1.0), np.minimum(scale64, _F32_MAX).astype(F32)).astype(F32)
        zp = np.where(small, 0.0, zp).astype(F32)
    return scale, zp
