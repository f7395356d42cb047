"""``DynamicQuantizer``: observe one array, compute its qparams, quantize it."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np
import numpy.typing as npt

from . import _backend
from ._checks import as_float32, check_finite, check_out, check_scale, int_array, overlaps
from ._typing import ArrayLike, F32Array, Integer, Real
from .config import FakeQuantConfig
from .observer import QuantObserver

__all__ = ["DynamicQuantizer"]

_F32 = np.dtype(np.float32)


def code_dtype(config: FakeQuantConfig) -> "np.dtype[Any]":
    """Smallest integer dtype holding the config's codes: int8/uint8 up to 8 bits,
    int16/uint16 above (Rust casts everything to i8, which saturates at 127)."""
    if config.bits <= 8:
        return np.dtype(np.int8 if config.symmetric else np.uint8)
    return np.dtype(np.int16 if config.symmetric else np.uint16)


class DynamicQuantizer:
    """Dynamic (per-call) quantization (Rust ``DynamicQuantizer``).

    Each `quantize` call observes its input with a fresh observer of the config's
    method, computes ``(scale, zero_point)`` and returns integer codes.

    Parameters
    ----------
    config : FakeQuantConfig, optional
        Defaults to int8 symmetric min/max.
    n_threads : int, optional
        Threads for large arrays (default: ``qatcore.get_num_threads()``).

    Examples
    --------
    >>> import numpy as np
    >>> from qatcore import DynamicQuantizer, FakeQuantConfig
    >>> dq = DynamicQuantizer(FakeQuantConfig.int8())
    >>> q, scale, zp = dq.quantize(np.array([-1.0, 0.0, 0.5, 1.27]))
    >>> q
    array([-100,    0,   50,  127], dtype=int8)
    >>> dq.dequantize(q, scale, zp)
    array([-1.  ,  0.  ,  0.5 ,  1.27], dtype=float32)
    """

    def __init__(self, config: Optional[FakeQuantConfig] = None, *,
                 n_threads: Optional[Integer] = None) -> None:
        if config is None:
            config = FakeQuantConfig()
        if not isinstance(config, FakeQuantConfig):
            raise TypeError(f"config must be a FakeQuantConfig, got {type(config).__name__}")
        self._config = config
        self._n_threads = None if n_threads is None else _backend.check_threads(n_threads)

    @property
    def config(self) -> FakeQuantConfig:
        """The quantization config (bits, symmetry, observer) this quantizer applies."""
        return self._config

    @property
    def code_dtype(self) -> "np.dtype[Any]":
        """dtype of the codes `quantize` returns and `dequantize` accepts."""
        return code_dtype(self._config)

    def _threads(self) -> int:
        return _backend.resolve_threads(self._n_threads)

    def quantize(self, x: ArrayLike, out: Optional[npt.NDArray[Any]] = None
                 ) -> Tuple[npt.NDArray[Any], float, float]:
        """Observe `x`, compute its qparams and quantize it.

        Parameters
        ----------
        x : array_like
            Real numbers, any shape.
        out : numpy.ndarray, optional
            Writable C-contiguous array of `x`'s shape and dtype `code_dtype`.

        Returns
        -------
        (codes, scale, zero_point)
            codes in `code_dtype`, `x`'s shape; scale and zero point as floats.

        Raises
        ------
        ValueError
            NaN/±Inf in `x` (first bad index named), bad `out`.
        TypeError
            Non-numeric, complex or masked `x` (a mask would be ignored), `out` not a plain
            ndarray of `code_dtype`.

        Notes
        -----
        `out` may share memory with `x` (even a view of its bytes): the codes are then
        computed into a temporary and copied, so the result is always right.
        """
        data, shape = as_float32(x)
        dtype = self.code_dtype
        dst = np.empty(data.shape[0], dtype=dtype) if out is None else check_out(out, shape, dtype)
        observer = QuantObserver(self._config.observer, n_threads=self._threads())
        observer.observe(data.reshape(shape) if len(shape) > 1 else data)
        scale, zero_point = observer.compute_qparams(self._config)
        qmin, qmax = self._config.quant_range()
        # `out` sharing bytes with `x` (a view of the same buffer under another dtype):
        # the kernel would read codes it has just written, so it writes a temporary that
        # is copied into `out` afterwards (the right codes, as if they did not overlap).
        target = np.empty_like(dst) if out is not None and overlaps(dst, data) else dst
        _backend.kernels.quantize(data, target, scale, zero_point, qmin, qmax, self._threads())
        if target is not dst:
            dst[...] = target
        return (out if out is not None else dst.reshape(shape)), scale, zero_point

    def dequantize(self, q: npt.NDArray[Any], scale: Real, zero_point: Real,
                   out: Optional[F32Array] = None) -> F32Array:
        """``(q - zero_point) * scale`` in float32.

        Parameters
        ----------
        q : numpy.ndarray
            Codes of dtype `code_dtype` exactly (no silent casting), any shape.
        scale : float
            Finite and positive.
        zero_point : float
            Finite.
        out : numpy.ndarray, optional
            Writable C-contiguous float32 array of `q`'s shape; may share memory with `q`
            (the result then goes through a temporary).

        Raises
        ------
        TypeError
            `q` not a numpy array of `code_dtype` (masked arrays included), bad `out`.
        ValueError
            Non-finite or non-positive `scale`, non-finite `zero_point`, bad `out` shape.
        """
        if isinstance(q, np.ndarray) and not isinstance(q, np.ma.MaskedArray) \
                and q.dtype != self.code_dtype:
            raise TypeError(f"q must have dtype {self.code_dtype.name} for this config, "
                            f"got {q.dtype.name}")
        arr = int_array(q, (self.code_dtype,), "q")      # the buffer's own shape and size
        scale = check_scale(scale, "scale")
        zero_point = check_finite(zero_point, "zero_point")
        codes = arr.reshape(-1)
        dst = (np.empty(codes.shape[0], dtype=np.float32) if out is None
               else check_out(out, arr.shape, _F32))
        # As in quantize: an `out` sharing bytes with `q` gets the result via a temporary.
        target = np.empty_like(dst) if out is not None and overlaps(dst, codes) else dst
        _backend.kernels.dequantize(codes, target, scale, zero_point, self._threads())
        if target is not dst:
            dst[...] = target
        return out if out is not None else dst.reshape(arr.shape)

    def __repr__(self) -> str:
        return f"DynamicQuantizer(config={self._config!r})"
