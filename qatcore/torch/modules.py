"""torch modules on qatcore's kernels: :class:`FakeQuantize` (a qatcore observer with
its state in buffers), :class:`QATLinear`, :class:`QuantizedLinearModule`."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from ..config import FakeQuantConfig, ObserverMethod
from ..fake_quantize import SCALE_FLOOR
from ..linear import QuantizedLinear
from ..model import quantize_codes as _input_codes
from ..observer import QuantObserver, qparams_arrays
from .ops import _NUMERICS, _as_input, _scale_forward, _zp_forward, fake_quantize


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
        # A Python mirror of the buffer for `calibrating`: reading the buffer is a
        # Tensor.item(), a graph break under torch.compile.  Kept in sync by
        # enable/disable_calibration and _load_from_state_dict.
        self._calibrating = True
        self._observer = QuantObserver(config.observer) if axis is None else None

    # --- state -----------------------------------------------------------------------
    @property
    def calibrating(self) -> bool:
        """Whether forward observes its input and updates scale and zero point."""
        flag = self.__dict__.get("_calibrating")
        if flag is None:                # a module pickled before the mirror existed
            flag = self._calibrating = bool(self.calibrating_flag)
        return flag

    def enable_calibration(self) -> None:
        """Observe inputs again (statistics observed so far are kept)."""
        self.calibrating_flag.fill_(True)
        self._calibrating = True

    def disable_calibration(self) -> None:
        """Freeze scale and zero point at the observed range's qparams ((1, 0) before
        anything was observed)."""
        self._update_qparams()
        self.calibrating_flag.fill_(False)
        self._calibrating = False

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._calibrating = bool(self.calibrating_flag)

    def get_extra_state(self):
        """The per-tensor observer's own state (``QuantObserver.state_dict()``, JSON-safe:
        it includes what MOVING_AVERAGE needs to merge), stored in ``state_dict()``.

        During ``torch.onnx.export`` an empty tensor: the TorchScript exporter detaches
        every ``state_dict`` value, and a frozen quantizer's observer has no place in the
        exported graph."""
        if torch.onnx.is_in_onnx_export():
            return torch.empty(0)
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
        if torch.onnx.is_in_onnx_export():
            return self._onnx_forward(x)
        return fake_quantize(x, self.scale, self.zero_point, self.qmin, self.qmax,
                             numerics=self.config.numerics,
                             axis=None if self.axis is None else self.axis % x.dim())

    def _onnx_forward(self, x: Tensor) -> Tensor:
        """torch's own fake quantize, which ``torch.onnx.export`` writes as
        QuantizeLinear -> DequantizeLinear (the same values as the "torch" numerics;
        ONNX's QuantizeLinear divides where torch multiplies by the inverse, which can
        move a value lying on a rounding tie). 8-bit only; ONNX allows the code ranges
        [0, 255] and [-128, 127], so a [-127, 127] weight range is clamped first."""
        if self.config.bits != 8:
            raise ValueError("torch.onnx.export: ONNX QuantizeLinear is 8-bit, this quantizer "
                             f"has {self.config.bits} bits")
        scale = _scale_forward(self.scale)
        zp = _zp_forward(self.zero_point, self.qmin, self.qmax, "torch").to(torch.int32)
        lo, hi = (0, 255) if self.qmin >= 0 else (-128, 127)
        if self.axis is None:
            if self.qmin > lo or self.qmax < hi:
                x = torch.clamp(x, float((self.qmin - zp[0]) * scale[0]),
                                float((self.qmax - zp[0]) * scale[0]))
            return torch.fake_quantize_per_tensor_affine(x, float(scale[0]), int(zp[0]), lo, hi)
        axis = self.axis % x.dim()
        shape = [1] * x.dim()
        shape[axis] = -1
        if self.qmin > lo or self.qmax < hi:
            s = scale.reshape(shape)
            z = zp.reshape(shape).to(torch.float32)
            x = torch.maximum(torch.minimum(x, (self.qmax - z) * s), (self.qmin - z) * s)
        return torch.fake_quantize_per_channel_affine(x, scale, zp, axis, lo, hi)

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
        """Bits, symmetry, numerics, axis and calibrating state, for ``repr``."""
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
        """``linear(input_fq(x), weight_fq(weight), bias)``, then ``output_fq`` if any."""
        y = nn.functional.linear(self.input_fq(x), self.weight_fq(self.weight), self.bias)
        return self.output_fq(y) if self.output_fq is not None else y

    def quantizers(self):
        """The fake quantizers of this layer."""
        return [q for q in (self.input_fq, self.weight_fq, self.output_fq) if q is not None]



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
        """Float in, float out through the int8 GEMM of :class:`qatcore.QuantizedLinear`."""
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
        """The wrapped layer and the input numerics, for ``repr``."""
        return f"{self.layer!r}, numerics={self.numerics!r}"


