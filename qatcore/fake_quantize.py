"""``FakeQuantize``: simulated quantization for QAT, and the ``Module`` base class."""

from __future__ import annotations

import copy as _copy
from typing import List, Tuple

import numpy as np

from . import _backend
from ._checks import as_float32, check_out
from .config import FakeQuantConfig
from .observer import QuantObserver

__all__ = ["Module", "FakeQuantize"]


class Module:
    """Minimal module protocol (Rust ``nn::Module``): ``forward``, ``__call__``,
    ``parameters``, and a training flag (``train()`` / ``eval()``)."""

    training: bool = True

    def forward(self, x, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x, *args, **kwargs):
        return self.forward(x, *args, **kwargs)

    def parameters(self) -> List[np.ndarray]:
        """Trainable parameters (none unless a subclass has some)."""
        return []

    def train(self, mode: bool = True):
        """Set training mode (forward passes record what backward needs); returns self."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Inference mode: forward passes record nothing for backward; returns self."""
        return self.train(False)


class FakeQuantize(Module):
    """Fake quantization layer for QAT (Rust ``FakeQuantize``).

    While calibrating, every `fake_quantize` call observes its input and recomputes the
    scale and zero point; `disable_calibration` freezes them. The output is the input
    quantized and dequantized in float32, exactly as the Rust code computes it::

        q = clamp(round_half_away(x / scale + zero_point), qmin, qmax)
        y = (q - zero_point) * scale

    Parameters
    ----------
    config : FakeQuantConfig, optional
        Defaults to ``FakeQuantConfig()`` (int8 symmetric, min/max).
    n_threads : int, optional
        Threads for large arrays (default: ``qatcore.get_num_threads()``, i.e. 1).

    Examples
    --------
    >>> import numpy as np
    >>> from qatcore import FakeQuantize, FakeQuantConfig
    >>> fq = FakeQuantize(FakeQuantConfig.int4())
    >>> fq.fake_quantize(np.array([-1.0, 0.1, 0.5, 0.7], dtype=np.float32))
    array([-1.        ,  0.14285715,  0.42857146,  0.71428573], dtype=float32)
    >>> fq.disable_calibration()
    >>> fq.scale, fq.zero_point
    (0.1428571492433548, 0.0)
    >>> fq(np.array([[2.0, -0.3]]))          # frozen forward keeps the shape
    array([[ 1.       , -0.2857143]], dtype=float32)
    """

    def __init__(self, config: FakeQuantConfig = None, *, n_threads=None):
        if config is None:
            config = FakeQuantConfig()
        if not isinstance(config, FakeQuantConfig):
            raise TypeError(f"config must be a FakeQuantConfig, got {type(config).__name__}")
        self._config = config
        self._qrange = config.quant_range()
        self._observer = QuantObserver(config.observer, n_threads=n_threads)
        self._scale = 1.0
        self._zero_point = 0.0
        self._calibrating = True
        self.training = True
        self._mask = None           # STE mask written by the last training forward
        self._mask_shape = None

    # --- Rust accessors --------------------------------------------------------------
    @property
    def scale(self) -> float:
        """Current scale (a float32 value)."""
        return self._scale

    @property
    def zero_point(self) -> float:
        """Current zero point (a float32 value; not rounded for asymmetric configs)."""
        return self._zero_point

    @property
    def config(self) -> FakeQuantConfig:
        """The configuration (immutable)."""
        return self._config

    @property
    def calibrating(self) -> bool:
        """Whether `fake_quantize` observes its input and updates the parameters."""
        return self._calibrating

    @property
    def observer(self) -> QuantObserver:
        """The observer collecting calibration statistics."""
        return self._observer

    @property
    def n_threads(self) -> int:
        """Threads used for large arrays."""
        return self._observer.n_threads

    @n_threads.setter
    def n_threads(self, value) -> None:
        self._observer.n_threads = value

    def enable_calibration(self) -> None:
        """Observe inputs again (the statistics observed so far are kept)."""
        self._calibrating = True

    def disable_calibration(self) -> None:
        """Stop observing and freeze scale and zero point from the observed range.

        Before anything was observed this gives ``(1.0, 0.0)`` (Rust: infinite scale).
        """
        self._scale, self._zero_point = self._observer.compute_qparams(self._config)
        self._calibrating = False

    # --- forward -------------------------------------------------------------------
    def fake_quantize(self, x, out=None) -> np.ndarray:
        """Fake-quantize `x`, first observing it when calibrating (Rust ``fake_quantize``).

        Parameters
        ----------
        x : array_like
            Real numbers, any shape; converted to float32 (copied only when needed).
        out : numpy.ndarray, optional
            A writable C-contiguous float32 array of `x`'s shape to write into (may be
            `x` itself).

        Returns
        -------
        numpy.ndarray
            float32, `x`'s shape (`out` when given).

        Raises
        ------
        TypeError, ValueError
            Bad `x` or `out`; a NaN/±Inf in `x` while calibrating (nothing changes).
        """
        data, shape = as_float32(x)
        dst = self._output(data, shape, out)
        if self._calibrating:
            self._observer.observe(data.reshape(shape) if len(shape) > 1 else data)
            self._scale, self._zero_point = self._observer.compute_qparams(self._config)
        return self._run(data, shape, dst, out)

    def forward(self, x, out=None) -> np.ndarray:
        """Fake-quantize `x` with the current (frozen) parameters; never observes.

        Same result as Rust's ``Module::forward``: ±Inf saturates to the range ends and
        NaN stays NaN. The input's shape is kept.
        """
        data, shape = as_float32(x)
        dst = self._output(data, shape, out)
        return self._run(data, shape, dst, out)

    def _output(self, data, shape, out):
        if out is None:
            return np.empty(data.shape[0], dtype=np.float32)
        flat = check_out(out, shape, np.float32)
        same = flat.ctypes.data == data.ctypes.data
        if not same and np.may_share_memory(flat, data):
            raise ValueError("out overlaps x without being x itself")
        return flat

    def _run(self, data, shape, dst, out):
        qmin, qmax = self._qrange
        mask = None
        if self.training:
            mask = np.empty(data.shape[0], dtype=np.uint8)
        _backend.kernels.fake_quantize(data, dst, self._scale, self._zero_point, qmin, qmax,
                                       mask, self.n_threads)
        self._mask, self._mask_shape = mask, (shape if mask is not None else None)
        return out if out is not None else dst.reshape(shape)

    # --- backward (straight-through estimator) -------------------------------------
    def backward(self, grad_out) -> np.ndarray:
        """Clipped straight-through estimator: ``grad_in = grad_out`` where the last
        training forward's rounded value lay inside [qmin, qmax], 0 elsewhere.

        Raises
        ------
        ValueError
            No training forward happened yet, `grad_out`'s shape differs from that
            forward's input, or `grad_out` holds NaN/±Inf.
        """
        if self._mask is None:
            raise ValueError("backward: call fake_quantize/forward in training mode first")
        grad, shape = as_float32(grad_out, "grad_out")
        if tuple(shape) != tuple(self._mask_shape):
            raise ValueError(f"grad_out has shape {tuple(shape)}, the last forward had "
                             f"{tuple(self._mask_shape)}")
        bad = _backend.kernels.minmax(grad, 1)[2]
        if bad >= 0:
            raise ValueError(f"backward: grad_out contains a non-finite value at flat index {bad}")
        return np.where(self._mask.view(bool), grad, np.float32(0)).reshape(shape)

    # --- Rust Clone, repr ----------------------------------------------------------
    def __copy__(self) -> "FakeQuantize":
        new = FakeQuantize.__new__(FakeQuantize)
        new.__dict__.update(self.__dict__)
        new._observer = _copy.copy(self._observer)
        return new

    def __deepcopy__(self, memo) -> "FakeQuantize":
        new = self.__copy__()
        if self._mask is not None:
            new._mask = self._mask.copy()
        return new

    def __repr__(self) -> str:
        return (f"FakeQuantize(config={self._config!r}, scale={self._scale!r}, "
                f"zero_point={self._zero_point!r}, calibrating={self._calibrating})")

    def qparams(self) -> Tuple[float, float]:
        """``(scale, zero_point)``."""
        return self._scale, self._zero_point
