"""``FakeQuantize``: simulated quantization for QAT, and the ``Module`` base class."""

from __future__ import annotations

import copy as _copy
import math
from typing import Any, Dict, List, Mapping, Optional, Tuple, TypeVar, Union

import numpy as np
import numpy.typing as npt

from . import _backend
from ._checks import as_float32, base_array, check_finite, check_index, check_out, check_scale, overlaps
from ._typing import ArrayLike, F32Array, Integer, Real
from .config import STE_MODES as _STE_MODES
from .config import FakeQuantConfig, ObserverMethod
from .observer import QuantObserver, _qparams

_M = TypeVar("_M", bound="Module")

__all__ = ["Module", "FakeQuantize", "SCALE_FLOOR", "fake_quantize_array", "lsq_backward_array",
           "ste_backward_array"]

_F32 = np.dtype(np.float32)
_OVERLAP = "out overlaps x without being x itself"

#: Smallest value a learned (LSQ) scale may take: the smallest normal float32, 2^-126.
#: An optimizer step that would make the scale zero or negative leaves it here instead
#: (``FakeQuantize.clamp_parameters``, also applied at every forward).
SCALE_FLOOR = float(np.finfo(np.float32).tiny)



def _preset_mode(numerics: str) -> Optional[int]:
    """Kernel mode of a numerics preset (None for the Rust arithmetic)."""
    if numerics == "aprender":
        return None
    kernels = _backend.kernels
    return int(kernels.PRESET_TORCH if numerics == "torch" else kernels.PRESET_ONNX)


class Module:
    """Minimal module protocol (Rust ``nn::Module``): ``forward``, ``__call__``,
    ``parameters``, and a training flag (``train()`` / ``eval()``)."""

    training: bool = True

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        """The layer's output for input `x` (Rust ``Module::forward``); subclasses define it."""
        raise NotImplementedError

    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        """Same as :meth:`forward`."""
        return self.forward(x, *args, **kwargs)

    def parameters(self) -> List[np.ndarray]:
        """Trainable parameters (none unless a subclass has some)."""
        return []

    def train(self: _M, mode: bool = True) -> _M:
        """Set training mode (forward passes record what backward needs); returns self."""
        self.training = bool(mode)
        return self

    def eval(self: _M) -> _M:
        """Inference mode: forward passes record nothing for backward; returns self."""
        return self.train(False)


class FakeQuantize(Module):
    """Fake quantization layer for QAT (Rust ``FakeQuantize``).

    While calibrating, every `fake_quantize` call observes its input and recomputes the
    scale and zero point; `disable_calibration` freezes them. The output is the input
    quantized and dequantized in float32, exactly as the Rust code computes it::

        q = clamp(round_half_away(x / scale + zero_point), qmin, qmax)
        y = (q - zero_point) * scale

    or, with ``config.numerics`` ``"torch"`` / ``"onnx"``, exactly as
    ``torch.fake_quantize_per_tensor_affine`` / ONNX QuantizeLinear -> DequantizeLinear
    compute it (see :class:`FakeQuantConfig`; the STE mask and the LSQ gradients then use
    that arithmetic too).

    Training: ``backward(grad_out)`` is the straight-through estimator (clipped by
    default, ``ste="identity"`` for the unclipped variant). With a learnable config
    (``config.with_learnable()``) the scale, and the zero point of an asymmetric config,
    are LSQ parameters (Esser et al. 2020; LSQ+ for the zero point): initialised from
    the observer by `disable_calibration` (or set by `initialize`), returned by
    `parameters()` as live float32 arrays of shape ``(1,)`` that an optimizer updates in
    place, with their gradients in `grads()` (same order) written by `backward`. The
    scale never drops below :data:`SCALE_FLOOR` (`clamp_parameters`, also applied at
    every forward). The forward arithmetic is the same with or without learning.

    Parameters
    ----------
    config : FakeQuantConfig, optional
        Defaults to ``FakeQuantConfig()`` (int8 symmetric, min/max).
    n_threads : int, optional
        Threads for large arrays (default: ``qatcore.get_num_threads()``, i.e. 1).
    ste : {"clipped", "identity"}, default "clipped"
        Gradient of `backward` w.r.t. the input: zero where the forward clamped
        (clipped), or passed everywhere (identity).

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

    # LSQ parameter and gradient arrays (float32, shape (1,)), None unless learnable.
    _scale_param: Any
    _zp_param: Any
    _scale_grad: Any
    _zp_grad: Any

    def __init__(self, config: Optional[FakeQuantConfig] = None, *,
                 n_threads: Optional[Integer] = None, ste: str = "clipped") -> None:
        if config is None:
            config = FakeQuantConfig()
        if not isinstance(config, FakeQuantConfig):
            raise TypeError(f"config must be a FakeQuantConfig, got {type(config).__name__}")
        if ste not in _STE_MODES:
            raise ValueError(f"ste must be one of {_STE_MODES}, got {ste!r}")
        self._config = config
        self._qrange = config.quant_range()
        self._observer = QuantObserver(config.observer, n_threads=n_threads)
        # One lock per quantizer, held by every method that reads and writes its state
        # (qparams, STE mask, LSQ input and parameters) for the whole call, kernel
        # included: concurrent calls on one object equal some serial order, and a
        # backward never reads a mask or saved input that another thread's forward is
        # replacing (docs/threading.md).  It is the observer's own lock: one lock covers
        # both (calibrating calls update both), and a caller holding the observer locks
        # the quantizer too.
        self._lock = self._observer._lock
        self._scale = 1.0
        self._zero_point = 0.0
        self._calibrating = True
        self.training = True
        # Kernel mode of the numerics preset (None: the Rust arithmetic).
        self._mode = _preset_mode(config.numerics)
        self._mask = None           # STE mask written by the last training forward
        self._mask_shape = None
        self._ste = ste
        # LSQ state (learnable configs): live parameter and gradient arrays of shape
        # (1,), float32; the input of the last training forward (LSQ needs x).
        self._learnable = config.learnable
        self._x_saved = None
        # Small calibrating batches take one fused kernel call (observe + qparams + fake
        # quantize) where the observer and the qparams are the Rust ones it reimplements.
        self._fused_observer = (not self._learnable and config.numerics == "aprender"
                                and config.observer in (ObserverMethod.MIN_MAX,
                                                        ObserverMethod.MOVING_AVERAGE))
        self._moving_average = config.observer is ObserverMethod.MOVING_AVERAGE
        # ... and the frozen call on a small batch with a fresh output (Rust arithmetic,
        # no LSQ parameters to sync): one kernel call that also allocates the output.
        self._fresh_frozen = not self._learnable and self._mode is None
        if self._learnable:
            self._scale_param = np.ones(1, dtype=np.float32)
            self._zp_param = np.zeros(1, dtype=np.float32)
            self._scale_grad = np.zeros(1, dtype=np.float32)
            self._zp_grad = np.zeros(1, dtype=np.float32)
        else:
            self._scale_param = self._zp_param = self._scale_grad = self._zp_grad = None

    # --- Rust accessors --------------------------------------------------------------
    @property
    def scale(self) -> float:
        """Current scale (a float32 value; for a frozen learnable config, the learned
        parameter, at least :data:`SCALE_FLOOR`)."""
        if self._learnable and not self._calibrating:
            return max(float(self._scale_param[0]), SCALE_FLOOR)
        return self._scale

    @property
    def zero_point(self) -> float:
        """Current zero point (a float32 value; not rounded for asymmetric configs)."""
        if self._learnable and not self._calibrating and not self._config.symmetric:
            return float(self._zp_param[0])
        return self._zero_point

    @property
    def ste(self) -> str:
        """Straight-through estimator of `backward`: ``"clipped"`` (default) or
        ``"identity"``."""
        return self._ste

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
    def n_threads(self, value: Optional[Integer]) -> None:
        self._observer.n_threads = value

    def enable_calibration(self) -> None:
        """Observe inputs again (the statistics observed so far are kept)."""
        with self._lock:
            self._calibrating = True

    def disable_calibration(self) -> None:
        """Stop observing and freeze scale and zero point from the observed range.

        Before anything was observed this gives ``(1.0, 0.0)`` (Rust: infinite scale).
        For a learnable config this initialises the LSQ parameters from the observer.

        Raises
        ------
        ValueError
            Learnable config whose observed range gives a scale that is not positive in
            float32 (e.g. all values below ~1e-43); nothing changes.
        """
        with self._lock:
            scale, zp = self._observer.compute_qparams(self._config)
            if self._learnable:
                self._check_initial(scale, zp)
            self._scale, self._zero_point = scale, zp
            self._calibrating = False
            if self._learnable:
                self._scale_param[0] = scale
                self._zp_param[0] = zp

    # --- LSQ (learned step size) ---------------------------------------------------
    def _check_initial(self, scale, zero_point):
        scale = check_finite(scale, "scale")
        if not float(np.float32(scale)) > 0:
            raise ValueError(f"scale: a learnable quantizer needs a positive initial scale, "
                             f"got {scale!r} (in float32: {float(np.float32(scale))!r})")
        return float(np.float32(scale)), float(np.float32(check_finite(zero_point, "zero_point")))

    def initialize(self, scale: Real, zero_point: Real = 0.0) -> None:
        """Set the LSQ parameters explicitly and stop calibrating (learnable configs).

        Parameters
        ----------
        scale : float
            Initial step size, positive and finite in float32.
        zero_point : float, default 0.0
            Initial zero point (asymmetric configs; must be 0 for symmetric ones).

        Raises
        ------
        ValueError
            Config not learnable, non-positive or non-finite scale, non-zero zero point
            for a symmetric config; nothing changes.
        """
        if not self._learnable:
            raise ValueError("initialize: the config is not learnable (use with_learnable())")
        scale, zero_point = self._check_initial(scale, zero_point)
        if self._config.symmetric and zero_point != 0.0:
            raise ValueError(f"zero_point must be 0 for a symmetric config, got {zero_point!r}")
        with self._lock:
            self._scale, self._zero_point = float(scale), float(zero_point)
            self._scale_param[0] = scale
            self._zp_param[0] = zero_point
            self._calibrating = False

    def parameters(self) -> List[F32Array]:
        """The learned parameters: ``[scale]`` (symmetric) or ``[scale, zero_point]``
        (asymmetric, LSQ+) for a learnable config, each a live float32 array of shape
        ``(1,)`` an optimizer updates in place; ``[]`` otherwise (Rust: no parameters).

        While calibrating, the arrays mirror the observer's qparams after each
        `fake_quantize`; `disable_calibration` (or `initialize`) hands them over to
        training.
        """
        if not self._learnable:
            return []
        if self._config.symmetric:
            return [self._scale_param]
        return [self._scale_param, self._zp_param]

    def grads(self) -> List[F32Array]:
        """Gradient arrays matching :meth:`parameters` (same order, shapes, dtype),
        overwritten by each `backward`."""
        if not self._learnable:
            return []
        if self._config.symmetric:
            return [self._scale_grad]
        return [self._scale_grad, self._zp_grad]

    def clamp_parameters(self) -> None:
        """Keep the learned scale positive: raise it to :data:`SCALE_FLOOR` if an update
        took it below (pass this as an optimizer's ``after_step``; `forward` also does
        it).  NaN parameters are left for `forward` to report."""
        if self._learnable:
            with self._lock:
                if self._scale_param[0] < SCALE_FLOOR:
                    self._scale_param[0] = SCALE_FLOOR

    def _sync_learned(self) -> None:
        """Before a forward: mirror the calibrated qparams into the parameter arrays, or
        (frozen) take the learned values, clamped; NaN/Inf parameters are refused."""
        if self._calibrating:
            self._scale_param[0] = self._scale
            self._zp_param[0] = self._zero_point
            return
        s = float(self._scale_param[0])
        z = float(self._zp_param[0]) if not self._config.symmetric else 0.0
        if not (math.isfinite(s) and math.isfinite(z)):
            raise ValueError(f"learned parameters are not finite (scale={s!r}, zero_point={z!r}); "
                             f"was a NaN gradient applied?")
        if s < SCALE_FLOOR:
            s = SCALE_FLOOR
            self._scale_param[0] = s
        if self._mode is not None and z != 0.0:
            # Presets use an integer zero point: a learned one is rounded half to even and
            # clamped to [qmin, qmax] for the forward, as torch's learnable fake quantize.
            qmin, qmax = self._qrange
            z = min(max(float(np.round(np.float32(z))), qmin), qmax)
        self._scale, self._zero_point = s, z

    # --- forward -------------------------------------------------------------------
    def fake_quantize(self, x: ArrayLike, out: Optional[F32Array] = None) -> F32Array:
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
        if self._fused_observer and out is None and self._calibrating:
            # One kernel call for a small aligned float32 batch (observe + Rust qparams +
            # fake quantize, bit for bit the steps below); the kernel checks x and
            # returns a non-tuple where it does not apply.
            obs = self._observer
            qmin, qmax = self._qrange
            # The quantizer's lock, which is its observer's: the mask and qparams written
            # here are what a concurrent backward reads under it.
            with self._lock:
                ma = self._moving_average
                r = _backend.kernels.calibrate_fake_quantize(
                    x, obs._min, obs._max, obs._count, ma, obs._avg_min, obs._avg_max,
                    self._config.symmetric, qmin, qmax, self.training) \
                    if self._calibrating else -1     # another thread may have frozen it
                if type(r) is tuple:
                    y, mask, lo, hi, obs._min, obs._max, scale, zero_point = r
                    if ma:
                        obs._avg_min, obs._avg_max = np.float32(obs._min), np.float32(obs._max)
                        obs._history.append(lo)
                        obs._history.append(hi)
                    obs._count += 1
                    self._scale, self._zero_point = scale, zero_point
                    self._mask, self._mask_shape = mask, (y.shape if mask is not None else None)
                    return y
        if out is None and self._fresh_frozen and not self._calibrating:
            y = self._frozen_small(x)
            if y is not None:
                return y
        data, shape = as_float32(x)
        with self._lock:
            dst = self._output(data, shape, out)
            if self._calibrating:
                self._observer.observe(data.reshape(shape) if len(shape) > 1 else data)
                self._scale, self._zero_point = self._observer.compute_qparams(self._config)
            return self._run(data, shape, dst, out, _owns(data, x))

    def forward(self, x: ArrayLike, out: Optional[F32Array] = None) -> F32Array:
        """Fake-quantize `x` with the current (frozen) parameters; never observes.

        Same result as Rust's ``Module::forward``: ±Inf saturates to the range ends and
        NaN stays NaN. The input's shape is kept.
        """
        if out is None and self._fresh_frozen:
            y = self._frozen_small(x)
            if y is not None:
                return y
        data, shape = as_float32(x)
        with self._lock:
            dst = self._output(data, shape, out)
            return self._run(data, shape, dst, out, _owns(data, x))

    def _frozen_small(self, x):
        """The frozen forward of a small aligned float32 ndarray into a fresh output in one
        kernel call (as _run computes it); None where that call does not apply."""
        qmin, qmax = self._qrange
        with self._lock:
            r = _backend.kernels.fake_quantize_fresh(x, self._scale, self._zero_point, qmin,
                                                     qmax, self.training)
            if r is None:
                return None
            y, mask = r
            self._mask, self._mask_shape = mask, (y.shape if mask is not None else None)
            return y

    def _output(self, data, shape, out):
        if out is None:
            return np.empty(data.shape[0], dtype=np.float32)
        flat = check_out(out, shape, _F32)
        # A calibrating call observes before the kernel runs, so a partial overlap must be
        # refused up front; otherwise the kernel refuses it (cheaper than numpy's check).
        if (self._calibrating and flat.ctypes.data != data.ctypes.data
                and np.may_share_memory(flat, data)):
            raise ValueError(_OVERLAP)
        return flat

    def _run(self, data, shape, dst, out, owned=False):
        qmin, qmax = self._qrange
        mask = None
        if self._learnable:
            self._sync_learned()
        saved = None
        if self.training:
            mask = np.empty(data.shape[0], dtype=np.uint8)
            if self._learnable:
                # LSQ's backward needs this forward's x: a private copy, so that the caller
                # overwriting x (or out being x) cannot change the gradient.
                saved = data if owned and not overlaps(dst, data) else data.copy()
        nt = self._observer.n_threads
        kernels = _backend.kernels
        if self._mode is None:
            status = kernels.fake_quantize(data, dst, self._scale, self._zero_point, qmin, qmax,
                                           mask, nt)
        else:
            status = kernels.fake_quantize_preset(data, dst, self._scale, self._zero_point,
                                                  qmin, qmax, self._mode, mask, nt)
        if status:
            raise ValueError(_OVERLAP)
        if saved is not None:
            self._x_saved = saved
        self._mask, self._mask_shape = mask, (shape if mask is not None else None)
        return out if out is not None else dst.reshape(shape)

    # --- backward (straight-through estimator, LSQ) -------------------------------
    def backward(self, grad_out: ArrayLike, out: Optional[F32Array] = None) -> F32Array:
        """Gradient of the last training forward: straight-through for `x`, LSQ for the
        learned parameters.

        ``grad_in = grad_out`` where that forward's rounded value lay inside
        [qmin, qmax] and 0 elsewhere (clipped STE, the default), or everywhere
        (``ste="identity"``).  For a learnable config, also writes the LSQ gradients
        (Esser et al. 2020; zero point as in LSQ+) into :meth:`grads`, with
        ``v = x/scale + zero_point``, ``r = round(v)`` and gradient scale
        ``g = 1/sqrt(N·qmax)`` (``N`` = elements of that forward's input)::

            dL/dscale      = g · Σ grad_out · (r − v       inside,
                                               qmin − zp   below,
                                               qmax − zp   above)
            dL/dzero_point = g · Σ grad_out · (0 inside, −scale outside)

        summed in float64 by one fused kernel pass (which also writes ``grad_in``).

        Parameters
        ----------
        grad_out : array_like
            Gradient of the loss w.r.t. the forward's output, that output's shape.
        out : numpy.ndarray, optional
            Writable C-contiguous float32 array of that shape for ``grad_in`` (may be
            `grad_out` itself); its content is unspecified if an error is raised.

        Returns
        -------
        numpy.ndarray
            ``grad_in``, float32, the forward input's shape (`out` when given).

        Raises
        ------
        ValueError
            No training forward happened yet, `grad_out`'s shape differs from that
            forward's input, `grad_out` holds NaN/±Inf, or (LSQ) the parameter gradient
            is not finite (a NaN/Inf in the forward's input). Nothing is written then.
        """
        grad, shape = as_float32(grad_out, "grad_out")
        with self._lock:
            return self._backward(grad, shape, out)

    def _backward(self, grad, shape, out):
        """backward() on a flat float32 gradient, the lock held."""
        if self._mask is None:
            raise ValueError("backward: call fake_quantize/forward in training mode first")
        if tuple(shape) != tuple(self._mask_shape):
            raise ValueError(f"grad_out has shape {tuple(shape)}, the last forward had "
                             f"{tuple(self._mask_shape)}")
        kernels = _backend.kernels
        if out is None:
            grad_in = np.empty(grad.shape[0], dtype=np.float32)
        else:
            grad_in = check_out(out, shape, _F32)
            if np.may_share_memory(grad_in, grad) and grad_in.ctypes.data != grad.ctypes.data:
                raise ValueError("out overlaps grad_out without being grad_out itself")
        identity = self._ste == "identity"
        if self._learnable:
            scale, zp = self._scale, self._zero_point
            qmin, qmax = self._qrange
            if self._mode is None:
                bad, s_in, s_lo, s_hi = kernels.lsq_backward(self._x_saved, grad, grad_in,
                                                             scale, zp, qmin, qmax, identity)
            else:
                bad, s_in, s_lo, s_hi = kernels.lsq_backward_preset(
                    self._x_saved, grad, grad_in, scale, zp, qmin, qmax, self._mode, identity)
        elif self._mode is None or identity:
            bad = kernels.ste_backward(grad, None if identity else self._mask, grad_in)
        else:
            # torch's backward is grad * mask (a negative gradient becomes -0.0 outside)
            bad = kernels.ste_backward(grad, None, grad_in)
            if bad < 0:
                np.multiply(grad_in, self._mask, out=grad_in)
        if bad >= 0:
            raise ValueError(f"backward: grad_out contains a non-finite value at flat index {bad}")
        if self._learnable:
            n = grad.shape[0]
            g = 1.0 / math.sqrt(n * qmax) if n else 0.0
            d_scale = g * (s_in + (qmin - zp) * s_lo + (qmax - zp) * s_hi)
            d_zp = g * (-scale * (s_lo + s_hi))
            if not (math.isfinite(d_scale) and math.isfinite(d_zp)):
                raise ValueError("backward: the scale/zero-point gradient is not finite "
                                 "(NaN or Inf in the last forward's input)")
            self._scale_grad[0] = d_scale
            self._zp_grad[0] = d_zp
        return out if out is not None else grad_in.reshape(shape)

    # --- saving and loading (qatcore._state) -------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """The quantizer's state as a plain JSON-safe dict (``json.dumps`` works).

        Keys: ``format`` (``"qatcore-fake-quantize/1"``), ``config`` (bits, symmetric,
        learnable, observer), ``calibrating``, ``scale`` and ``zero_point`` (the current
        values, learned ones included; Python floats holding float32 values, exact
        through JSON), ``ste`` and ``observer`` (:meth:`QuantObserver.state_dict`).
        What only the next `backward` needs (the STE mask) is not state.

        Examples
        --------
        >>> import json, numpy as np
        >>> from qatcore import FakeQuantize
        >>> fq = FakeQuantize()
        >>> _ = fq.fake_quantize(np.array([-1.0, 3.0]))
        >>> copy = FakeQuantize.from_state(json.loads(json.dumps(fq.state_dict())))
        >>> copy.scale == fq.scale, copy.observer.range()
        (True, (-1.0, 3.0))
        """
        from ._state import fake_quantize_state

        with self._lock:
            return fake_quantize_state(self)

    @classmethod
    def from_state(cls, state: Mapping[str, Any], *, n_threads: Optional[Integer] = None
                   ) -> "FakeQuantize":
        """A new FakeQuantize from a :meth:`state_dict` (every field validated).

        Raises
        ------
        ValueError
            A malformed or inconsistent state: wrong format, invalid config, a scale that
            is not a positive finite float32, a non-zero symmetric zero point, an
            observer state that is invalid or of another method, or (not learnable)
            a scale/zero point that are not the observer's qparams.
        TypeError
            `state` is not a dict.
        """
        from ._state import load_fake_quantize_state, parse_config

        if not isinstance(state, dict):
            raise TypeError(f"fake_quantize state must be a dict (a state_dict()), "
                            f"got {type(state).__name__}")
        config = parse_config(state.get("config"), "fake_quantize state.config") \
            if isinstance(state.get("config"), dict) else None
        if config is None:
            raise ValueError("bad state: fake_quantize state.config: expected a dict")
        new = cls(config, n_threads=n_threads)
        load_fake_quantize_state(new, state, same_config=True, qparams=_qparams)
        return new

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the state with a :meth:`state_dict` of the same config; the learnable
        parameter arrays are updated in place (optimizers keep working on them).

        Raises
        ------
        ValueError, TypeError
            As :meth:`from_state`, or the state's config differs; nothing changes then.
        """
        from ._state import load_fake_quantize_state

        with self._lock:
            load_fake_quantize_state(self, state, same_config=True, qparams=_qparams)

    # --- Rust Clone, repr ----------------------------------------------------------
    def __copy__(self) -> "FakeQuantize":
        new = FakeQuantize.__new__(FakeQuantize)
        with self._lock:
            new.__dict__.update(self.__dict__)
            new._observer = _copy.copy(self._observer)
            if self._learnable:     # the learned values are state, not shared storage
                for name in ("_scale_param", "_zp_param", "_scale_grad", "_zp_grad"):
                    setattr(new, name, getattr(self, name).copy())
        new._lock = new._observer._lock
        return new

    def __deepcopy__(self, memo: Any) -> "FakeQuantize":
        with self._lock:
            new = self.__copy__()
            if self._mask is not None:
                new._mask = self._mask.copy()
        return new

    def __getstate__(self) -> Dict[str, Any]:
        with self._lock:
            state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = self._observer._lock

    def __repr__(self) -> str:
        return (f"FakeQuantize(config={self._config!r}, scale={self._scale!r}, "
                f"zero_point={self._zero_point!r}, calibrating={self._calibrating})")


def _owns(data, x) -> bool:
    """Whether as_float32 gave `data` as a fresh copy of the ndarray `x` (so nothing the
    caller holds aliases it)."""
    return isinstance(x, np.ndarray) and data is not x and not np.may_share_memory(data, x)


# --- stateless forms (used by the framework integrations) -----------------------------

def _preset_code(numerics: str, per_channel: bool) -> Optional[int]:
    if numerics not in ("aprender", "torch", "onnx"):
        raise ValueError(f"numerics must be 'aprender', 'torch' or 'onnx', got {numerics!r}")
    mode = _preset_mode(numerics)
    if per_channel and numerics == "torch":
        mode = int(_backend.kernels.PRESET_TORCH_CHANNEL)
    return mode


def _real_array(value, name: str) -> F32Array:
    """Scales / zero points given as arrays: real numbers only (no mask, no complex)."""
    arr = base_array(value, name)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return np.require(arr, dtype=np.float32, requirements="C")


def _check_range(qmin: Real, qmax: Real) -> Tuple[float, float]:
    qmin, qmax = check_finite(qmin, "qmin"), check_finite(qmax, "qmax")
    if not (qmin <= qmax and qmin == int(qmin) and qmax == int(qmax)
            and abs(qmin) <= 1 << 24 and abs(qmax) <= 1 << 24):
        raise ValueError(f"qmin/qmax must be integers with qmin <= qmax, got {qmin!r}, {qmax!r}")
    return qmin, qmax


def _check_zero_points(zp: ArrayLike, numerics: str, name: str = "zero_point") -> F32Array:
    zp = _real_array(zp, name)
    if not np.isfinite(zp).all():
        raise ValueError(f"{name} must be finite")
    if numerics != "aprender" and not (zp == np.rint(zp)).all():
        raise ValueError(f"{name} must hold integers for numerics={numerics!r}")
    return zp


def fake_quantize_array(x: ArrayLike, scale: Union[Real, ArrayLike],
                        zero_point: Union[Real, ArrayLike], qmin: Real, qmax: Real, *,
                        numerics: str = "aprender", axis: Optional[Integer] = None,
                        out: Optional[F32Array] = None,
                        mask: Optional[npt.NDArray[np.uint8]] = None,
                        n_threads: Optional[Integer] = None) -> F32Array:
    """Fake-quantize an array with given quantization parameters (no observer, no state).

    Parameters
    ----------
    x : array_like
        Real numbers, any shape (converted to C-contiguous float32 only when needed).
    scale, zero_point : float, or 1-D arrays of ``x.shape[axis]`` values when `axis` is set
        Positive finite scales; zero points must be integers for the torch/onnx presets.
    qmin, qmax : int or float
        Integer code range.
    numerics : {"aprender", "torch", "onnx"}
        Whose arithmetic (see :class:`FakeQuantConfig`). With ``axis``, ``"torch"`` is
        ``torch.fake_quantize_per_channel_affine``.
    axis : int, optional
        Quantization axis (per channel); None for one scale and zero point.
    out : numpy.ndarray, optional
        Writable C-contiguous float32 array of x's shape (may be `x` itself).
    mask : numpy.ndarray, optional
        Writable C-contiguous uint8 array of x's shape: 1 where the rounded value lay in
        [qmin, qmax] (the clipped-STE mask).
    n_threads : int, optional
        Threads for large per-tensor arrays.

    Returns
    -------
    numpy.ndarray
        float32, x's shape (`out` when given).

    Raises
    ------
    TypeError, ValueError
        Bad arrays, scales, zero points, range or axis (nothing is written).

    Examples
    --------
    >>> import numpy as np
    >>> from qatcore import fake_quantize_array
    >>> fake_quantize_array(np.array([0.25, 0.75, -0.25], np.float32), 0.5, 0, -127, 127,
    ...                     numerics="torch")
    array([0., 1., 0.], dtype=float32)
    """
    data, shape = as_float32(x)
    qmin, qmax = _check_range(qmin, qmax)
    per_channel = axis is not None
    mode = _preset_code(numerics, per_channel)
    dst = np.empty(data.shape[0], dtype=np.float32) if out is None else check_out(out, shape, _F32)
    m = None if mask is None else check_out(mask, shape, np.dtype(np.uint8), "mask")
    if m is not None and (overlaps(m, dst) or overlaps(m, data)):
        raise ValueError("mask overlaps out or x")
    kernels = _backend.kernels
    nt = _backend.get_num_threads() if n_threads is None else _backend.check_threads(n_threads)
    if not per_channel:
        scale = check_scale(scale)
        if isinstance(zero_point, (int, float)) and not isinstance(zero_point, bool):
            zp = float(zero_point)                      # the common case, cheaply
            if not (math.isfinite(zp) and (mode is None or zp == round(zp))):
                _check_zero_points(zp, numerics)        # raises the error
        elif np.size(zero_point) == 1:
            zp = float(_check_zero_points(zero_point, numerics).reshape(-1)[0])
        else:
            raise ValueError("zero_point must be a scalar when axis is None")
        if mode is None:
            status = kernels.fake_quantize(data, dst, scale, zp, qmin, qmax, m, nt)
        else:
            status = kernels.fake_quantize_preset(data, dst, scale, zp, qmin, qmax, mode, m, nt)
        if status:
            raise ValueError(_OVERLAP)
        return out if out is not None else dst.reshape(shape)
    ndim = len(shape)
    axis = check_index(axis, "axis")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for an array of {ndim} dimensions")
    axis %= ndim
    C = shape[axis]
    scales = _real_array(scale, "scale").reshape(-1)
    zps = np.ascontiguousarray(_check_zero_points(zero_point, numerics), np.float32).reshape(-1)
    if scales.size != C or zps.size != C:
        raise ValueError(f"scale and zero_point need {C} values (x.shape[{axis}]), got "
                         f"{scales.size} and {zps.size}")
    if not (np.isfinite(scales).all() and (scales > 0).all()):
        raise ValueError("scale must be finite and positive")
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    if mode is None:
        # The Rust arithmetic has one scale per call: one kernel call per channel slice.
        if dst is not data and np.may_share_memory(dst, data):
            raise ValueError(_OVERLAP)
        x3 = data.reshape(outer, C, inner)
        y3 = dst.reshape(outer, C, inner)
        m3 = None if m is None else m.reshape(outer, C, inner)
        for o in range(outer):
            for c in range(C):
                kernels.fake_quantize(np.ascontiguousarray(x3[o, c]), y3[o, c], float(scales[c]),
                                      float(zps[c]), qmin, qmax,
                                      None if m3 is None else m3[o, c], 1)
    elif kernels.fake_quantize_preset_channels(data, dst, scales, zps, outer, inner, qmin, qmax,
                                               mode, m):
        raise ValueError(_OVERLAP)
    return out if out is not None else dst.reshape(shape)


def lsq_backward_array(x: ArrayLike, grad_out: ArrayLike, scale: Real, zero_point: Real,
                       qmin: Real, qmax: Real, *, numerics: str = "aprender",
                       grad_in: Optional[F32Array] = None,
                       identity: bool = False) -> Tuple[F32Array, float, float]:
    """Gradients of a per-tensor fake quantize (clipped STE for x, LSQ/LSQ+ for the scale
    and zero point, see :meth:`FakeQuantize.backward`), without the LSQ gradient scale.

    Returns ``(grad_in, d_scale, d_zero_point)``: ``grad_in`` float32 of x's shape (into
    `grad_in` when given), the two sums as Python floats (float64 accumulation).

    Raises
    ------
    ValueError
        Shapes differ, bad scale / zero point / range, or `grad_out` holds NaN/±Inf.
    """
    data, shape = as_float32(x)
    grad, gshape = as_float32(grad_out, "grad_out")
    if tuple(gshape) != tuple(shape):
        raise ValueError(f"grad_out has shape {tuple(gshape)}, x has {tuple(shape)}")
    qmin, qmax = _check_range(qmin, qmax)
    mode = _preset_code(numerics, False)
    scale = check_scale(scale)
    zp = float(_check_zero_points(zero_point, numerics))
    gin = np.empty(data.shape[0], np.float32) if grad_in is None else \
        check_out(grad_in, shape, _F32, "grad_in")
    if grad_in is not None:
        # The kernel reads x[i] and grad_out[i] before writing grad_in[i]: the same bytes
        # are fine, a shifted overlap would read gradients it has already written.
        for other, what in ((data, "x"), (grad, "grad_out")):
            if overlaps(gin, other) and gin.ctypes.data != other.ctypes.data:
                raise ValueError(f"grad_in overlaps {what} without being {what} itself")
    kernels = _backend.kernels
    if mode is None:
        bad, s_in, s_lo, s_hi = kernels.lsq_backward(data, grad, gin, scale, zp, qmin, qmax,
                                                     bool(identity))
    else:
        bad, s_in, s_lo, s_hi = kernels.lsq_backward_preset(data, grad, gin, scale, zp, qmin,
                                                            qmax, mode, bool(identity))
    if bad >= 0:
        raise ValueError(f"backward: grad_out contains a non-finite value at flat index {bad}")
    d_scale = s_in + (qmin - zp) * s_lo + (qmax - zp) * s_hi
    d_zp = -float(np.float32(scale)) * (s_lo + s_hi)
    return (grad_in if grad_in is not None else gin.reshape(shape)), d_scale, d_zp


def ste_backward_array(grad_out: ArrayLike, mask: npt.NDArray[np.uint8], *,
                       out: Optional[F32Array] = None) -> F32Array:
    """Clipped straight-through backward ``grad_out * mask`` (float multiply, as torch's
    fake-quantize backward computes it: a negative gradient outside the range gives -0.0).

    Parameters
    ----------
    grad_out : array_like of float32
    mask : numpy.ndarray of uint8, same shape
        The mask a forward wrote (``fake_quantize_array(..., mask=...)``).
    out : numpy.ndarray, optional
        Writable C-contiguous float32 array of that shape (may be `grad_out` itself).

    Returns
    -------
    numpy.ndarray
        float32, `grad_out`'s shape (`out` when given).
    """
    grad, shape = as_float32(grad_out, "grad_out")
    m = check_out(mask, shape, np.dtype(np.uint8), "mask") if not (
        type(mask) is np.ndarray and mask.dtype == np.uint8 and mask.flags.c_contiguous
        and mask.shape == tuple(shape)) else mask
    dst = np.empty(grad.shape[0], np.float32) if out is None else check_out(out, shape, _F32)
    if dst is not grad and dst.ctypes.data != grad.ctypes.data and np.may_share_memory(dst, grad):
        raise ValueError("out overlaps grad_out without being grad_out itself")
    if overlaps(dst, m):
        raise ValueError("out overlaps mask")
    _backend.kernels.grad_times_mask(grad, m, dst)
    return out if out is not None else dst.reshape(shape)
