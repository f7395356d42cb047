"""PyTorch integration: quantization-aware training of torch models on qatcore's kernels.

* :func:`fake_quantize` -- the ``qatcore::fake_quantize`` custom op (CPU), with autograd
  (clipped STE; LSQ / LSQ+ gradients for a scale / zero point that requires grad) and a
  fake (meta) implementation, so ``torch.compile`` traces it.
* :class:`FakeQuantize` -- an ``nn.Module`` holding a qatcore observer; calibration state,
  scale and zero point are buffers (Parameters when learnable), so ``state_dict`` restores
  a calibration exactly.
* :func:`prepare_qat` / :func:`convert` -- swap ``nn.Linear`` for :class:`QATLinear`,
  then for integer layers (:class:`QuantizedLinearModule`, or a torch-free
  :class:`qatcore.QuantizedSequential` for Linear/ReLU chains).

Zero-copy: the kernels read the input tensor's memory and write the output tensor's
memory through ``Tensor.numpy()`` views.  Inputs must be float32 CPU tensors; a
non-contiguous input is made contiguous first (one copy, as ``Tensor.contiguous()``);
float64/float16/bfloat16, integer and non-CPU tensors raise ``TypeError``/``ValueError``
(convert explicitly, e.g. ``x.float()``, so no silent precision change happens).

Requires ``pip install "qatcore[torch]"`` (torch 2.13.0).
"""

from __future__ import annotations

import copy
import math
from typing import Optional, Tuple

try:
    import torch
    from torch import Tensor, nn
except ImportError as exc:  # pragma: no cover - exercised without torch installed
    raise ImportError('qatcore.torch needs PyTorch: pip install "qatcore[torch]"') from exc

import numpy as np

from .config import FakeQuantConfig, ObserverMethod
from .fake_quantize import (SCALE_FLOOR, fake_quantize_array, lsq_backward_array,
                            ste_backward_array)
from .linear import QuantizedLinear
from .model import QuantizedSequential, quantize_codes as _input_codes
from .observer import QuantObserver, qparams_arrays

__all__ = ["fake_quantize", "FakeQuantize", "QATLinear", "QuantizedLinearModule",
           "prepare_qat", "convert", "default_activation_config", "default_weight_config"]

_NUMERICS = ("aprender", "torch", "onnx")


# ------------------------------------------------------------------ the custom op

def _check_tensor(x: Tensor, name: str = "x") -> None:
    """A float32 CPU tensor, or a TypeError/ValueError naming `name`."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.device.type != "cpu":
        raise ValueError(f"{name} is on {x.device}; qatcore.torch runs on CPU tensors only "
                         f"(move it with .cpu())")
    if x.dtype != torch.float32:
        raise TypeError(f"{name} must be float32, got {x.dtype} (convert it with .float())")


def _as_input(x: Tensor, name: str = "x") -> Tensor:
    _check_tensor(x, name)
    return x.detach().contiguous()


def _zp_forward(zp: Tensor, qmin: int, qmax: int, numerics: str) -> Tensor:
    """The zero point the forward uses: float as is (aprender), else rounded half to even
    and clamped to [qmin, qmax] (torch's learnable fake quantize does the same)."""
    zp = zp.detach().to(torch.float32).reshape(-1)
    if numerics == "aprender":
        return zp
    return torch.clamp(torch.round(zp), qmin, qmax)


def _scale_forward(scale: Tensor) -> Tensor:
    return torch.clamp(scale.detach().to(torch.float32).reshape(-1), min=SCALE_FLOOR)


def _scalar_qparams(scale: Tensor, zero_point: Tensor, qmin: int, qmax: int,
                    numerics: str) -> Tuple[float, float]:
    """Per-tensor (scale, zero point) as the forward uses them (see _scale_forward,
    _zp_forward), in Python floats: one .item() each."""
    s = float(scale) if isinstance(scale, float) else scale.item()
    z = float(zero_point) if isinstance(zero_point, float) else zero_point.item()
    s = max(float(np.float32(s)), SCALE_FLOOR)
    z = float(np.float32(z))
    if numerics != "aprender":
        z = min(max(float(round(z)), qmin), qmax)        # round(): half to even
    return s, z


def _forward_impl(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int,
                  numerics: str, axis: int, with_mask: bool = True):
    """(y, mask or None): the kernels write straight into the new tensors' memory."""
    xc = x.detach()
    if not xc.is_contiguous():
        xc = xc.contiguous()
    out = torch.empty_like(xc, memory_format=torch.contiguous_format)
    mask = torch.empty(xc.shape, dtype=torch.uint8) if with_mask else None
    mask_np = mask.numpy() if with_mask else None
    if axis < 0:
        s, z = _scalar_qparams(scale, zero_point, qmin, qmax, numerics)
        fake_quantize_array(xc.numpy(), s, z, qmin, qmax, numerics=numerics, out=out.numpy(),
                            mask=mask_np)
    else:
        s = _scale_forward(scale)
        z = _zp_forward(zero_point, qmin, qmax, numerics)
        fake_quantize_array(xc.numpy(), s.numpy(), z.numpy(), qmin, qmax, numerics=numerics,
                            axis=axis, out=out.numpy(), mask=mask_np)
    return out, mask


@torch.library.custom_op("qatcore::fake_quantize", mutates_args=(), device_types="cpu")
def _fake_quantize_op(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int,
                      numerics: str, axis: int, grad_scale: float) -> Tuple[Tensor, Tensor]:
    xc = _as_input(x)
    return _forward_impl(xc, scale, zero_point, qmin, qmax, numerics, axis)


@_fake_quantize_op.register_fake
def _(x, scale, zero_point, qmin, qmax, numerics, axis, grad_scale):
    return torch.empty_like(x, memory_format=torch.contiguous_format), \
        torch.empty(x.shape, dtype=torch.uint8, device=x.device)


@torch.library.custom_op("qatcore::fake_quantize_lsq_grads", mutates_args=(),
                         device_types="cpu")
def _lsq_grads_op(x: Tensor, grad: Tensor, scale: Tensor, zero_point: Tensor, qmin: int,
                  qmax: int, numerics: str, axis: int, grad_scale: float
                  ) -> Tuple[Tensor, Tensor]:
    """dL/dscale, dL/dzero_point (LSQ, LSQ+), shaped like scale / zero_point."""
    return _lsq_grads_impl(x, grad, scale, zero_point, qmin, qmax, numerics, axis, grad_scale)


def _lsq_grads_impl(x, grad, scale, zero_point, qmin, qmax, numerics, axis, grad_scale):
    xc = _as_input(x)
    g = _as_input(grad, "grad")
    s = _scale_forward(scale)
    z = _zp_forward(zero_point, qmin, qmax, numerics)
    if axis < 0:
        n = xc.numel()
        _, ds, dz = lsq_backward_array(xc.numpy(), g.numpy(), float(s[0]), float(z[0]), qmin,
                                       qmax, numerics=numerics)
        gs = grad_scale if grad_scale > 0 else (1.0 / math.sqrt(n * qmax) if n else 0.0)
        d_scale = torch.tensor([ds * gs], dtype=torch.float64)
        d_zp = torch.tensor([dz * gs], dtype=torch.float64)
    else:
        # Per channel, in torch ops with the forward's float32 arithmetic.
        shape = [1] * xc.dim()
        shape[axis] = -1
        sb, zb = s.reshape(shape), z.reshape(shape)
        if numerics == "torch":
            v = xc * (1.0 / sb)
        elif numerics == "onnx":
            v = xc / sb
        else:
            v = xc / sb + zb
        r = torch.round(v) if numerics != "aprender" else \
            torch.trunc(v + torch.copysign(torch.tensor(0.49999997, dtype=torch.float32), v))
        q = r + zb if numerics != "aprender" else r
        lo, hi = ~(q >= qmin), q > qmax
        inside = ~(lo | hi)
        g64 = g.double()
        dims = [d for d in range(xc.dim()) if d != axis]
        d_in = torch.where(inside, (r - v).double(), torch.zeros((), dtype=torch.float64))
        s_in = (g64 * d_in).sum(dims)
        s_lo = torch.where(lo, g64, 0.0).sum(dims)
        s_hi = torch.where(hi, g64, 0.0).sum(dims)
        n = xc.numel() // max(xc.shape[axis], 1)
        gs = grad_scale if grad_scale > 0 else (1.0 / math.sqrt(n * qmax) if n else 0.0)
        z64 = z.double()
        d_scale = gs * (s_in + (qmin - z64) * s_lo + (qmax - z64) * s_hi)
        d_zp = gs * (-s.double() * (s_lo + s_hi))
        if not torch.isfinite(g64).all():
            raise ValueError("backward: grad contains a non-finite value")
    return (d_scale.to(torch.float32).reshape(scale.shape),
            d_zp.to(torch.float32).reshape(zero_point.shape))


@_lsq_grads_op.register_fake
def _(x, grad, scale, zero_point, qmin, qmax, numerics, axis, grad_scale):
    return torch.empty_like(scale), torch.empty_like(zero_point)


def _setup_context(ctx, inputs, output):
    x, scale, zero_point, qmin, qmax, numerics, axis, grad_scale = inputs
    _, mask = output
    need_lsq = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
    ctx.save_for_backward(mask, x if need_lsq else None, scale, zero_point)
    ctx.args = (qmin, qmax, numerics, axis, grad_scale)


def _backward(ctx, grad_y, grad_mask):
    mask, x, scale, zero_point = ctx.saved_tensors
    qmin, qmax, numerics, axis, grad_scale = ctx.args
    grad_x = grad_y * mask if ctx.needs_input_grad[0] else None      # torch's own formula
    d_scale = d_zp = None
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        d_scale, d_zp = _lsq_grads_op(x, grad_y.contiguous(), scale, zero_point, qmin, qmax,
                                      numerics, axis, grad_scale)
        d_scale = d_scale.to(scale.dtype) if ctx.needs_input_grad[1] else None
        d_zp = d_zp.to(zero_point.dtype) if ctx.needs_input_grad[2] else None
    return grad_x, d_scale, d_zp, None, None, None, None, None


_fake_quantize_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerFakeQuantize(torch.autograd.Function):
    """The same forward and backward as the custom op, for eager mode only: the custom
    op's Python autograd wrapper costs ~50 µs a call, several times a 1 000-element
    kernel.  Under torch.compile `fake_quantize` always takes the custom op (PyTorch warns
    that autograd.Function under compile can be silently wrong)."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, numerics, axis, grad_scale):
        y, mask = _forward_impl(x, scale, zero_point, qmin, qmax, numerics, axis)
        need_lsq = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        if need_lsq:
            ctx.save_for_backward(mask, x, scale, zero_point)
        else:
            ctx.save_for_backward(mask)
        ctx.args = (qmin, qmax, numerics, axis, grad_scale)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        saved = ctx.saved_tensors
        mask = saved[0]
        qmin, qmax, numerics, axis, grad_scale = ctx.args
        grad_x = None
        if ctx.needs_input_grad[0]:       # grad_y * mask, torch's formula, in one kernel pass
            g = grad_y.detach().contiguous()
            grad_x = torch.empty_like(g, memory_format=torch.contiguous_format)
            ste_backward_array(g.numpy(), mask.numpy(), out=grad_x.numpy())
        d_scale = d_zp = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            _, x, scale, zero_point = saved
            d_scale, d_zp = _lsq_grads_impl(x, grad_y.contiguous(), scale, zero_point, qmin,
                                            qmax, numerics, axis, grad_scale)
            d_scale = d_scale.to(scale.dtype) if ctx.needs_input_grad[1] else None
            d_zp = d_zp.to(zero_point.dtype) if ctx.needs_input_grad[2] else None
        return grad_x, d_scale, d_zp, None, None, None, None, None


def _as_param_tensor(value, name: str, axis) -> Tensor:
    if isinstance(value, Tensor):
        if value.device.type != "cpu":
            raise ValueError(f"{name} must be on the CPU, got {value.device}")
        if not value.dtype.is_floating_point:
            value = value.to(torch.float32)
        if axis is None and value.numel() != 1:
            raise ValueError(f"{name} must have one element when axis is None, got "
                             f"{value.numel()}")
        return value
    if axis is None and isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor([float(value)], dtype=torch.float32)
    t = torch.as_tensor(np.asarray(value, dtype=np.float32))
    return t.reshape(1) if axis is None else t.reshape(-1)


def fake_quantize(x: Tensor, scale, zero_point, qmin: int, qmax: int, *,
                  numerics: str = "torch", axis: Optional[int] = None,
                  grad_scale: Optional[float] = None) -> Tensor:
    """Fake-quantize a float32 CPU tensor on qatcore's kernels (op ``qatcore::fake_quantize``).

    ``numerics="torch"`` gives exactly ``torch.fake_quantize_per_tensor_affine(x, scale,
    zero_point, qmin, qmax)`` (``axis`` set: ``torch.fake_quantize_per_channel_affine``),
    values and gradient; ``"onnx"`` QuantizeLinear -> DequantizeLinear; ``"aprender"`` the
    Rust arithmetic (see :class:`qatcore.FakeQuantConfig`).

    Gradients: ``x`` gets the clipped straight-through estimator ``grad * mask`` (mask = 1
    where the rounded value lay inside [qmin, qmax]). A `scale` / `zero_point` tensor
    that requires grad gets the LSQ / LSQ+ gradient (Esser et al. 2020; Bhalgat et al.
    2020) times `grad_scale` (default ``1/sqrt(N·qmax)``, N = elements per scale). The
    scale used is at least :data:`qatcore.SCALE_FLOOR` (kept positive); the torch/onnx
    forward rounds a (learned) zero point half to even and clamps it to [qmin, qmax].

    Parameters
    ----------
    x : torch.Tensor
        float32, on the CPU, any shape (a non-contiguous tensor is copied once).
    scale, zero_point : float or torch.Tensor
        One value each, or ``x.shape[axis]`` values when `axis` is given.
    qmin, qmax : int
        Integer code range, e.g. -128, 127 or 0, 255.
    numerics : {"torch", "onnx", "aprender"}, default "torch"
    axis : int, optional
        Per-channel quantization axis.
    grad_scale : float, optional
        LSQ gradient scale (default ``1/sqrt(N·qmax)``).

    Returns
    -------
    torch.Tensor
        float32, x's shape, contiguous.

    Raises
    ------
    TypeError, ValueError
        Not a float32 CPU tensor, bad scale / zero point / range / axis / numerics.

    Examples
    --------
    >>> import torch
    >>> from qatcore.torch import fake_quantize
    >>> x = torch.tensor([0.26, -1.0, 3.0])
    >>> fake_quantize(x, 0.5, 0, -4, 4)
    tensor([ 0.5000, -1.0000,  2.0000])
    >>> bool((fake_quantize(x, 0.5, 0, -4, 4)
    ...       == torch.fake_quantize_per_tensor_affine(x, 0.5, 0, -4, 4)).all())
    True
    """
    if numerics not in _NUMERICS:
        raise ValueError(f"numerics must be one of {_NUMERICS}, got {numerics!r}")
    if isinstance(qmin, bool) or isinstance(qmax, bool) or not (
            isinstance(qmin, (int, np.integer)) and isinstance(qmax, (int, np.integer))):
        raise TypeError("qmin and qmax must be integers")
    qmin, qmax = int(qmin), int(qmax)
    if not qmin <= qmax or max(abs(qmin), abs(qmax)) > 1 << 24:
        raise ValueError(f"qmin/qmax must satisfy qmin <= qmax, |q| <= 2^24; got {qmin}, {qmax}")
    _check_tensor(x, "x")
    if axis is not None:
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
            raise TypeError(f"axis must be an integer or None, got {type(axis).__name__}")
        if not -x.dim() <= int(axis) < max(x.dim(), 1):
            raise ValueError(f"axis {axis} is out of range for a {x.dim()}-D tensor")
        axis = int(axis) % x.dim()
    numbers = (axis is None and isinstance(scale, (int, float)) and not isinstance(scale, bool)
               and isinstance(zero_point, (int, float)) and not isinstance(zero_point, bool))
    if numbers:
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be finite and positive, got {scale!r}")
        if not math.isfinite(zero_point):
            raise ValueError(f"zero_point must be finite, got {zero_point!r}")
        s = z = None
    else:
        s = _as_param_tensor(scale, "scale", axis)
        z = _as_param_tensor(zero_point, "zero_point", axis)
        if axis is not None and (s.numel() != x.shape[axis] or z.numel() != x.shape[axis]):
            raise ValueError(f"scale and zero_point need {x.shape[axis]} values "
                             f"(x.shape[{axis}])")
    if not numbers and not torch.compiler.is_compiling():  # data-dependent checks break a graph
        if not torch.isfinite(s.detach()).all() or not (s.detach() > 0).all():
            raise ValueError("scale must be finite and positive")
        if not torch.isfinite(z.detach()).all():
            raise ValueError("zero_point must be finite")
    if grad_scale is not None and not (isinstance(grad_scale, (int, float)) and grad_scale > 0):
        raise ValueError(f"grad_scale must be a positive number, got {grad_scale!r}")
    ax = -1 if axis is None else axis
    gs = -1.0 if grad_scale is None else float(grad_scale)
    if s is None and not torch.compiler.is_compiling():
        # Python-number qparams: no tensors to build, nothing to differentiate but x
        if torch.is_grad_enabled() and x.requires_grad:
            return _EagerFakeQuantize.apply(x, float(scale), float(zero_point), qmin, qmax,
                                            numerics, ax, gs)
        return _forward_impl(x, float(scale), float(zero_point), qmin, qmax, numerics, ax,
                             with_mask=False)[0]
    if s is None:
        s = _as_param_tensor(scale, "scale", axis)
        z = _as_param_tensor(zero_point, "zero_point", axis)
    if torch.compiler.is_compiling():
        return _fake_quantize_op(x, s, z, qmin, qmax, numerics, ax, gs)[0]
    if torch.is_grad_enabled() and (x.requires_grad or s.requires_grad or z.requires_grad):
        return _EagerFakeQuantize.apply(x, s, z, qmin, qmax, numerics, ax, gs)
    return _forward_impl(x, s, z, qmin, qmax, numerics, ax, with_mask=False)[0]


# ------------------------------------------------------------------ the module

def default_activation_config() -> FakeQuantConfig:
    """Activations: 8-bit asymmetric (codes 0..255, integer zero point), torch numerics."""
    return FakeQuantConfig(bits=8, symmetric=False, numerics="torch")


def default_weight_config() -> FakeQuantConfig:
    """Weights: 8-bit symmetric (codes -127..127), torch numerics (per channel in
    :func:`prepare_qat`)."""
    return FakeQuantConfig(bits=8, symmetric=True, numerics="torch")


_PER_CHANNEL_OBSERVERS = (ObserverMethod.MIN_MAX, ObserverMethod.MOVING_AVERAGE)
_AVG = float(np.float32(0.01))
_ONE_MINUS_AVG = float(np.float32(1) - np.float32(0.01))


class FakeQuantize(nn.Module):
    """Fake quantization as a torch module, with a qatcore observer.

    While calibrating (the initial state) each forward observes its input (per tensor:
    a :class:`qatcore.QuantObserver` with the config's method; per channel, ``axis``
    set: running min/max, or their moving average, of each channel) and recomputes
    scale and zero point in the config's numerics; `disable_calibration` freezes them.
    The forward then runs :func:`fake_quantize` (train and eval alike).

    ``scale``, ``zero_point``, the observed ``min_val`` / ``max_val`` / ``obs_count`` and
    the calibrating flag are buffers (``scale``/``zero_point`` are Parameters for a
    learnable config), so ``state_dict()`` / ``load_state_dict()`` restore a calibration
    bit for bit.

    Parameters
    ----------
    config : FakeQuantConfig, optional
        Default :func:`default_activation_config` (uint8 asymmetric, torch numerics).
    axis : int, optional
        Per-channel axis (observers MIN_MAX or MOVING_AVERAGE); None for per tensor.
    num_channels : int, optional
        Size of `axis`; given, the buffers have their final shape at construction
        (needed to ``load_state_dict`` into a fresh module); otherwise set at the first
        forward.

    Examples
    --------
    >>> import torch
    >>> from qatcore.torch import FakeQuantize
    >>> fq = FakeQuantize()
    >>> y = fq(torch.tensor([-1.0, 0.0, 2.0]))
    >>> fq.disable_calibration()
    >>> float(fq.scale), float(fq.zero_point)
    (0.0117647061124444, 85.0)
    """

    def __init__(self, config: Optional[FakeQuantConfig] = None, axis: Optional[int] = None,
                 num_channels: Optional[int] = None):
        super().__init__()
        if config is None:
            config = default_activation_config()
        if not isinstance(config, FakeQuantConfig):
            raise TypeError(f"config must be a FakeQuantConfig, got {type(config).__name__}")
        if axis is not None:
            if isinstance(axis, bool) or not isinstance(axis, int):
                raise TypeError(f"axis must be an int or None, got {type(axis).__name__}")
            if config.observer not in _PER_CHANNEL_OBSERVERS:
                raise ValueError(f"per-channel quantization (axis={axis}) supports the MIN_MAX "
                                 f"and MOVING_AVERAGE observers, got {config.observer.value}")
        self.config = config
        self.axis = axis
        qmin, qmax = config.quant_range()
        self.qmin, self.qmax = int(qmin), int(qmax)
        c = 1 if axis is None else (num_channels or 0)
        shape = (c,)
        if config.learnable:
            self.scale = nn.Parameter(torch.ones(shape))
            self.zero_point = nn.Parameter(torch.zeros(shape),
                                           requires_grad=not config.symmetric)
        else:
            self.register_buffer("scale", torch.ones(shape))
            self.register_buffer("zero_point", torch.zeros(shape))
        self.register_buffer("min_val", torch.full(shape, math.inf))
        self.register_buffer("max_val", torch.full(shape, -math.inf))
        self.register_buffer("obs_count", torch.zeros((), dtype=torch.int64))
        self.register_buffer("calibrating_flag", torch.ones((), dtype=torch.bool))
        self._observer = QuantObserver(config.observer) if axis is None else None

    # --- state -----------------------------------------------------------------------
    @property
    def calibrating(self) -> bool:
        """Whether forward observes its input and updates scale and zero point."""
        return bool(self.calibrating_flag)

    def enable_calibration(self) -> None:
        """Observe inputs again (statistics observed so far are kept)."""
        self.calibrating_flag.fill_(True)

    def disable_calibration(self) -> None:
        """Freeze scale and zero point at the observed range's qparams ((1, 0) before
        anything was observed)."""
        self._update_qparams()
        self.calibrating_flag.fill_(False)

    def get_extra_state(self):
        """The per-tensor observer's own state (``QuantObserver.state_dict()``, JSON-safe:
        it includes what MOVING_AVERAGE needs to merge), stored in ``state_dict()``."""
        return {"observer": self._observer.state_dict()} if self.axis is None else {}

    def set_extra_state(self, state) -> None:
        """Restore what :meth:`get_extra_state` stored (validated by the observer)."""
        if self.axis is None:
            if not isinstance(state, dict) or "observer" not in state:
                raise ValueError("FakeQuantize extra state: expected {'observer': ...}")
            self._observer.load_state_dict(state["observer"])

    def _observer_state(self) -> QuantObserver:
        """The per-tensor QuantObserver; if the buffers were changed without its state
        (a state_dict without extra state), rebuilt from them."""
        obs = self._observer
        lo, hi = float(self.min_val[0]), float(self.max_val[0])
        count = int(self.obs_count)
        if obs.range() != (lo, hi) or obs.count != count:
            state = {"format": "qatcore-observer/1", "method": obs.method.value, "count": count,
                     "range": [lo, hi] if count else None}
            if obs.method is ObserverMethod.MOVING_AVERAGE:
                # the average is the range; one batch at it reproduces the next update
                state.update(count=min(count, 1), batch_ranges=[[lo, hi]] if count else [])
                obs.load_state_dict(state)
                obs.__setstate__({**obs.__getstate__(), "_count": count})
            else:
                obs.load_state_dict(state)
        return obs

    def _resize(self, c: int) -> None:
        for name in ("scale", "zero_point", "min_val", "max_val"):
            t = getattr(self, name)
            fill = {"scale": 1.0, "zero_point": 0.0, "min_val": math.inf,
                    "max_val": -math.inf}[name]
            new = torch.full((c,), fill, dtype=torch.float32)
            if isinstance(t, nn.Parameter):
                setattr(self, name, nn.Parameter(new, requires_grad=t.requires_grad))
            else:
                setattr(self, name, new)

    def _observe(self, x: Tensor) -> None:
        xd = _as_input(x)
        if self.axis is None:
            obs = self._observer_state()
            obs.observe(xd.numpy())
            lo, hi = obs.range()
            self.min_val.fill_(lo)
            self.max_val.fill_(hi)
            self.obs_count.fill_(obs.count)
            return
        axis = self.axis % xd.dim()
        c = xd.shape[axis]
        if self.scale.numel() != c:
            if int(self.obs_count) or self.scale.numel() not in (0, c):
                raise ValueError(f"x has {c} channels on axis {axis}, this quantizer "
                                 f"{self.scale.numel()}")
            self._resize(c)
        if xd.numel() == 0:
            return
        flat = xd.movedim(axis, 0).reshape(c, -1)
        lo, hi = torch.aminmax(flat, dim=1)
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            raise ValueError("observe: input contains a non-finite value; nothing was observed")
        if self.config.observer is ObserverMethod.MOVING_AVERAGE and int(self.obs_count):
            # float32, the core observer's formula: (1 - c) * avg + c * batch
            lo = self.min_val * _ONE_MINUS_AVG + lo * _AVG
            hi = self.max_val * _ONE_MINUS_AVG + hi * _AVG
        elif self.config.observer is ObserverMethod.MIN_MAX:
            lo = torch.minimum(lo, self.min_val)
            hi = torch.maximum(hi, self.max_val)
        self.min_val.copy_(lo)
        self.max_val.copy_(hi)
        self.obs_count += 1

    def _update_qparams(self) -> None:
        if self.axis is None:
            scale, zp = self._observer_state().compute_qparams(self.config)
            scale, zp = np.float32([scale]), np.float32([zp])
        elif int(self.obs_count) == 0:
            scale = np.ones(self.scale.numel(), np.float32)
            zp = np.zeros(self.scale.numel(), np.float32)
        else:
            scale, zp = qparams_arrays(self.min_val.numpy(), self.max_val.numpy(), self.config)
        with torch.no_grad():
            self.scale.copy_(torch.from_numpy(np.ascontiguousarray(scale)))
            self.zero_point.copy_(torch.from_numpy(np.ascontiguousarray(zp)))

    # --- forward ---------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Observe `x` (when calibrating), then fake-quantize it."""
        if self.calibrating:
            self._observe(x)
            self._update_qparams()
        elif self.config.learnable:
            with torch.no_grad():                 # keep the learned scale positive
                self.scale.clamp_(min=SCALE_FLOOR)
        if self.axis is not None and self.scale.numel() != x.shape[self.axis]:
            raise ValueError(f"x has {x.shape[self.axis]} channels on axis {self.axis}, this "
                             f"quantizer {self.scale.numel()}")
        return fake_quantize(x, self.scale, self.zero_point, self.qmin, self.qmax,
                             numerics=self.config.numerics,
                             axis=None if self.axis is None else self.axis % x.dim())

    def quantize_int8(self, x) -> np.ndarray:
        """int8 codes of `x` exactly as this (frozen, per-tensor, bits <= 8) quantizer's
        forward rounds them; asymmetric codes 0..255 are shifted by -128 (the input
        codes of the integer model :func:`convert` builds).

        Parameters
        ----------
        x : torch.Tensor or numpy.ndarray of float32
        """
        scale, zp, (lo, hi) = _quant_params(self)
        arr = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x, np.float32)
        return _input_codes(np.ascontiguousarray(arr, dtype=np.float32), scale, zp, lo, hi,
                            self.config.numerics)

    def extra_repr(self) -> str:
        return (f"bits={self.config.bits}, symmetric={self.config.symmetric}, "
                f"numerics={self.config.numerics!r}, axis={self.axis}, "
                f"calibrating={self.calibrating}")


# ------------------------------------------------------------------ QAT layers

class QATLinear(nn.Module):
    """``nn.Linear`` with fake-quantized input activation and weight (and, optionally,
    output), sharing the original layer's ``weight`` and ``bias`` Parameters.

    Parameters
    ----------
    linear : torch.nn.Linear
    activation, weight : FakeQuantConfig
        Input-activation config (per tensor) and weight config (per output channel,
        axis 0, when `per_channel`; must be symmetric for integer conversion).
    output : FakeQuantConfig, optional
        Also fake-quantize the output (what an integer model's last layer writes).
    per_channel : bool, default True
    """

    def __init__(self, linear: nn.Linear, activation: FakeQuantConfig, weight: FakeQuantConfig,
                 output: Optional[FakeQuantConfig] = None, per_channel: bool = True):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.input_fq = FakeQuantize(activation)
        self.weight_fq = FakeQuantize(weight, axis=0 if per_channel else None,
                                      num_channels=linear.out_features if per_channel else None)
        self.output_fq = FakeQuantize(output) if output is not None else None

    def forward(self, x: Tensor) -> Tensor:
        y = nn.functional.linear(self.input_fq(x), self.weight_fq(self.weight), self.bias)
        return self.output_fq(y) if self.output_fq is not None else y

    def quantizers(self):
        """The fake quantizers of this layer."""
        return [q for q in (self.input_fq, self.weight_fq, self.output_fq) if q is not None]


def _quantizers(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, FakeQuantize)]


def prepare_qat(model: nn.Module, activation: Optional[FakeQuantConfig] = None,
                weight: Optional[FakeQuantConfig] = None, *, inplace: bool = False,
                per_channel: bool = True, quantize_output: bool = True) -> nn.Module:
    """Prepare a torch model for quantization-aware training.

    Every ``nn.Linear`` (the only layer type swapped; everything else -- activations,
    convolutions, norms, containers -- stays as it is) becomes a :class:`QATLinear` that
    fake-quantizes its input activation (per tensor, `activation` config) and its weight
    (per output channel symmetric, `weight` config), keeping the original Parameters.
    With `quantize_output`, the last Linear in module order also fake-quantizes its
    output, so an integer model's output quantization is trained too. The quantizers
    start calibrating: run a few batches, then call ``disable_calibration()`` on them (or
    :func:`freeze`), then train.

    Parameters
    ----------
    model : torch.nn.Module
    activation : FakeQuantConfig, optional
        Default :func:`default_activation_config` (uint8 asymmetric, torch numerics).
    weight : FakeQuantConfig, optional
        Default :func:`default_weight_config` (int8 symmetric, torch numerics).
    inplace : bool, default False
        Modify `model` itself instead of a deep copy.
    per_channel : bool, default True
        Per-output-channel weight scales.
    quantize_output : bool, default True

    Returns
    -------
    torch.nn.Module
        The prepared model (`model` itself when `inplace`).

    Raises
    ------
    TypeError
        `model` is not an nn.Module, or a config is not a FakeQuantConfig.
    ValueError
        The model has no nn.Linear.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    activation = default_activation_config() if activation is None else activation
    weight = default_weight_config() if weight is None else weight
    for name, cfg in (("activation", activation), ("weight", weight)):
        if not isinstance(cfg, FakeQuantConfig):
            raise TypeError(f"{name} must be a FakeQuantConfig, got {type(cfg).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    parents = {id(child): (parent, name) for parent in model.modules()
               for name, child in parent.named_children()}
    targets = [parents[id(m)] for m in model.modules()           # in module (forward) order
               if type(m) is nn.Linear and id(m) in parents]
    if isinstance(model, nn.Linear) and type(model) is nn.Linear:
        return QATLinear(model, activation, weight, activation if quantize_output else None,
                         per_channel)
    if not targets:
        raise ValueError("prepare_qat: the model has no torch.nn.Linear to prepare")
    for i, (parent, name) in enumerate(targets):
        last = i == len(targets) - 1
        out_cfg = activation if (quantize_output and last) else None
        setattr(parent, name, QATLinear(getattr(parent, name), activation, weight, out_cfg,
                                        per_channel))
    return model


def freeze(model: nn.Module) -> nn.Module:
    """``disable_calibration()`` on every qatcore FakeQuantize of `model`; returns it."""
    for q in _quantizers(model):
        q.disable_calibration()
    return model


def calibrate(model: nn.Module, enabled: bool = True) -> nn.Module:
    """``enable_calibration()`` (or, with ``enabled=False``, ``disable_calibration()``) on
    every qatcore FakeQuantize of `model`; returns it."""
    for q in _quantizers(model):
        q.enable_calibration() if enabled else q.disable_calibration()
    return model


# ------------------------------------------------------------------ conversion

def _quant_params(fq: FakeQuantize):
    """(scale, int8 zero point, int8 code range) of a frozen per-tensor quantizer."""
    if fq.calibrating:
        raise ValueError("convert: a quantizer is still calibrating (call freeze(model) first)")
    if fq.config.bits > 8:
        raise ValueError(f"convert: integer layers need bits <= 8, got {fq.config.bits}")
    scale = float(_scale_forward(fq.scale)[0])
    zp = float(_zp_forward(fq.zero_point, fq.qmin, fq.qmax, fq.config.numerics)[0])
    if fq.config.numerics == "aprender" and not fq.config.symmetric:
        zp = float(np.trunc(np.float32(zp) + np.copysign(np.float32(0.49999997), zp)))
    shift = 128 if fq.qmin >= 0 else 0
    return scale, int(zp) - shift, (fq.qmin - shift, fq.qmax - shift)


def _quantized_linear(layer: QATLinear) -> QuantizedLinear:
    wfq = layer.weight_fq
    if not wfq.config.symmetric:
        raise ValueError("convert: weight quantizers must be symmetric (int8 GEMM with weight "
                         "zero point 0)")
    if wfq.calibrating:
        raise ValueError("convert: a quantizer is still calibrating (call freeze(model) first)")
    w = layer.weight.detach().float().contiguous()
    with torch.no_grad():
        wq_float = wfq(w)            # the forward the model trained with, frozen
    ws = _scale_forward(wfq.scale).numpy().astype(np.float32)
    if wfq.axis is None:
        codes = np.rint(wq_float.numpy() / ws[0])
    else:
        codes = np.rint(wq_float.numpy() / ws[:, None])
    qmax = (1 << (wfq.config.bits - 1)) - 1
    weights_q = np.clip(codes, -qmax, qmax).astype(np.int8)
    x_scale, x_zp, x_range = _quant_params(layer.input_fq)
    state = {
        "weights_q": weights_q,
        "weight_scale": ws if wfq.axis is not None else np.float32(ws[0]),
        "bits": np.int32(wfq.config.bits),
        "per_channel": np.bool_(wfq.axis is not None),
        "input_scale": np.float32(x_scale),
        "input_zero_point": np.int32(x_zp),
        "input_qrange": np.array(x_range, np.int32),
    }
    if layer.bias is not None:
        state["bias"] = layer.bias.detach().float().numpy().copy()
    if layer.output_fq is not None:
        o_scale, o_zp, o_range = _quant_params(layer.output_fq)
        state.update(output_quant_scale=np.float32(o_scale),
                     output_quant_zero_point=np.int32(o_zp),
                     output_quant_qrange=np.array(o_range, np.int32))
    return QuantizedLinear.from_state_dict(state)


class QuantizedLinearModule(nn.Module):
    """A torch module running a :class:`qatcore.QuantizedLinear` (int8 weights, int32
    accumulation, int32 bias): float32 in, float32 out, inference only.

    The input is quantized to int8 codes exactly as the QAT layer's input quantizer
    rounded it (torch / onnx numerics; ``"aprender"`` uses ``QuantizedLinear.forward``),
    the int8 GEMM accumulates in int32 (bias included), and the output is
    ``acc · output_scale``.

    Parameters
    ----------
    layer : qatcore.QuantizedLinear
        With its input scale, int8 zero point and input code range set.
    numerics : {"torch", "onnx", "aprender"}, default "torch"
    """

    def __init__(self, layer: QuantizedLinear, numerics: str = "torch"):
        super().__init__()
        if not isinstance(layer, QuantizedLinear):
            raise TypeError(f"layer must be a QuantizedLinear, got {type(layer).__name__}")
        if numerics not in _NUMERICS:
            raise ValueError(f"numerics must be one of {_NUMERICS}, got {numerics!r}")
        self.layer = layer
        self.numerics = numerics
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self._qrange = tuple(int(v) for v in layer.state_dict()["input_qrange"])

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """int8 codes of a float32 array, as the input quantizer rounded them."""
        return _input_codes(x, self.layer.input_scale, self.layer.input_zero_point,
                            *self._qrange, self.numerics)

    def forward(self, x: Tensor) -> Tensor:
        xd = _as_input(x)
        lead = xd.shape[:-1]
        x2 = xd.reshape(-1, self.in_features).numpy()
        if self.numerics == "aprender":
            y = self.layer.forward(x2)
        else:
            acc = self.layer.forward_quantized(self.quantize_input(x2))
            y = acc.astype(np.float32) * np.asarray(self.layer.output_scale, np.float32)
        return torch.from_numpy(np.ascontiguousarray(y)).reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"{self.layer!r}, numerics={self.numerics!r}"


def _leaves(module: nn.Module):
    """Modules of nested nn.Sequential containers in order (QATLinear is a leaf)."""
    if isinstance(module, nn.Sequential):
        for child in module.children():
            yield from _leaves(child)
    else:
        yield module


def _chain(model: nn.Module):
    """(QATLinear list, activation after each) for a [Flatten] Linear / ReLU / ReLU6 /
    Dropout / Identity chain (nested nn.Sequential allowed), else None."""
    layers, acts = [], []
    for m in _leaves(model):
        if isinstance(m, QATLinear):
            layers.append(m)
            acts.append(None)
        elif isinstance(m, (nn.ReLU, nn.ReLU6)):
            if not layers or acts[-1] is not None:
                return None
            acts[-1] = "relu" if isinstance(m, nn.ReLU) else "relu6"
        elif isinstance(m, nn.Flatten):
            if layers:            # only a leading Flatten (the input reshape) is integer-safe
                return None
        elif isinstance(m, (nn.Dropout, nn.Identity)):
            continue
        else:
            return None
    return (layers, acts) if layers else None


def convert(model: nn.Module, *, integer: bool = False, inplace: bool = False):
    """Turn a QAT model (from :func:`prepare_qat`, frozen) into integer layers.

    ``integer=False`` (default): every :class:`QATLinear` becomes a
    :class:`QuantizedLinearModule` (int8 weights, int32 accumulation, float in/out); the
    rest of the model stays torch. Works for any model.

    ``integer=True``: for a chain ``[Flatten] (Linear [ReLU|ReLU6]) ...`` (Dropout and
    Identity anywhere), a :class:`qatcore.QuantizedSequential` that runs without torch:
    ``forward_int8`` is int8 end to end (layer i's output quantization is layer i+1's
    input quantizer; the last layer's is its output quantizer, so prepare the model with
    ``quantize_output=True``), ``forward`` float in / float out.

    Raises
    ------
    ValueError
        A quantizer is still calibrating, asymmetric weight quantizer, bits > 8; with
        ``integer=True`` also a model that is not such a chain or whose last layer has no
        output quantizer.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if integer:
        found = _chain(model)
        if found is None:
            raise ValueError("convert(integer=True) needs a chain of QATLinear / ReLU / ReLU6 "
                             "/ Dropout / Identity (and a leading Flatten); use integer=False "
                             "for other models")
        layers, acts = found
        if layers[-1].output_fq is None:
            raise ValueError("convert(integer=True): the last layer has no output quantizer "
                             "(prepare_qat(..., quantize_output=True))")
        qlayers = [_quantized_linear(layer) for layer in layers]
        o_scale, o_zp, _ = _quant_params(layers[-1].output_fq)
        return QuantizedSequential(qlayers, activations=acts, output_scale=o_scale,
                                   output_zero_point=o_zp,
                                   input_numerics=layers[0].input_fq.config.numerics)
    if not inplace:
        model = copy.deepcopy(model)
    if isinstance(model, QATLinear):
        return _to_module(model)
    targets = [(parent, name) for parent in model.modules()
               for name, child in parent.named_children() if isinstance(child, QATLinear)]
    if not targets:
        raise ValueError("convert: the model has no QATLinear (run prepare_qat first)")
    for parent, name in targets:
        setattr(parent, name, _to_module(getattr(parent, name)))
    return model


def _to_module(layer: QATLinear) -> nn.Module:
    mod = QuantizedLinearModule(_quantized_linear(layer), layer.input_fq.config.numerics)
    if layer.output_fq is None:
        return mod
    return nn.Sequential(mod, _FrozenOutput(layer.output_fq))


class _FrozenOutput(nn.Module):
    """The output fake quantizer of a converted layer (frozen copy)."""

    def __init__(self, fq: FakeQuantize):
        super().__init__()
        self.fq = copy.deepcopy(fq)

    def forward(self, x):
        with torch.no_grad():
            return self.fq(x)
