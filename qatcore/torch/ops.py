"""The ``qatcore::fake_quantize`` custom op (CPU): qatcore's fake-quantize kernels with
autograd (clipped STE; LSQ / LSQ+ gradients) and a fake implementation for ``torch.compile``."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from ..fake_quantize import (SCALE_FLOOR, fake_quantize_array, lsq_backward_array,
                             ste_backward_array)


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

