"""Quantization configuration: ``FakeQuantConfig`` and ``ObserverMethod`` (Rust names)."""

from __future__ import annotations

import dataclasses
import enum
from typing import TYPE_CHECKING, Tuple, Union

__all__ = ["FakeQuantConfig", "ObserverMethod", "NUMERICS"]

#: Numerics presets: whose arithmetic a fake quantize reproduces bit for bit.
NUMERICS = ("aprender", "torch", "onnx")

#: Straight-through estimators a FakeQuantize's backward can use.
STE_MODES = ("clipped", "identity")


class ObserverMethod(enum.Enum):
    """How an observer turns data into a range (Rust ``ObserverMethod``).

    Examples
    --------
    >>> ObserverMethod("percentile")
    <ObserverMethod.PERCENTILE: 'percentile'>
    """

    #: Running min and max of everything observed.
    MIN_MAX = "min_max"
    #: 0.1 % and 99.9 % order statistics of each batch (reduces outlier impact).
    PERCENTILE = "percentile"
    #: Exponential moving average (constant 0.01) of each batch's min and max.
    MOVING_AVERAGE = "moving_average"
    #: mean ± 3 std of each batch (population std), widened across batches.
    MEAN_STD = "mean_std"


def _coerce_observer(value: object) -> ObserverMethod:
    if isinstance(value, ObserverMethod):
        return value
    if isinstance(value, str):
        try:
            return ObserverMethod(value.lower())
        except ValueError:
            pass
        try:
            return ObserverMethod[value.upper()]
        except KeyError:
            pass
        names = ", ".join(m.value for m in ObserverMethod)
        raise ValueError(f"observer: unknown observer method {value!r}; expected one of {names}")
    raise TypeError(f"observer must be an ObserverMethod or its name, got {type(value).__name__}")


@dataclasses.dataclass(frozen=True)
class FakeQuantConfig:
    """Fake quantization configuration (Rust ``FakeQuantConfig``).

    Parameters
    ----------
    bits : int, default 8
        Code width: 2..=16 when symmetric, 1..=16 when asymmetric.
    symmetric : bool, default True
        Symmetric codes in ±(2^(bits-1) - 1) with zero point 0, or asymmetric codes in
        [0, 2^bits - 1] with a (float, unrounded) zero point.
    learnable : bool, default False
        Learn the scale (and asymmetric zero point) with LSQ.
    observer : ObserverMethod or str, default ObserverMethod.MIN_MAX
        How calibration turns data into a range.
    numerics : {"aprender", "torch", "onnx"}, default "aprender"
        Whose arithmetic fake quantization reproduces bit for bit. ``"aprender"``: the
        Rust code (division, round half away from zero, float zero point, Rust qparams).
        ``"torch"``: ``torch.fake_quantize_per_tensor_affine`` /
        ``_per_channel_affine`` (``x * (1.0f / scale)``, round half to even, integer
        zero point, mask on the rounded value) with qparams as torch's
        ``MinMaxObserver`` computes them (range widened to include 0, scale floored at
        float32 eps, ``zp = qmin - round(min / scale)`` clamped). ``"onnx"``: ONNX
        ``QuantizeLinear`` -> ``DequantizeLinear`` (true division, half to even,
        integer zero point, saturation; NaN gives qmin as in onnxruntime) with qparams
        as onnxruntime's quantizer computes them (``compute_scale_zp``). The observed
        range itself (min/max, percentile, ...) is the same in every preset.

    Raises
    ------
    ValueError
        `bits` outside the range above (Rust would overflow or divide by zero).
    TypeError
        `bits` not an integer, `symmetric`/`learnable` not bools, unknown observer type.

    Examples
    --------
    >>> FakeQuantConfig.int4().quant_range()
    (-7.0, 7.0)
    >>> FakeQuantConfig(bits=8, symmetric=False).quant_range()
    (0.0, 255.0)
    >>> FakeQuantConfig().with_observer(ObserverMethod.PERCENTILE).observer
    <ObserverMethod.PERCENTILE: 'percentile'>
    >>> FakeQuantConfig(numerics="torch").numerics
    'torch'
    """

    bits: int = 8
    symmetric: bool = True
    learnable: bool = False
    observer: ObserverMethod = ObserverMethod.MIN_MAX
    numerics: str = "aprender"

    if TYPE_CHECKING:
        # What type checkers see as the constructor: the observer may be given by name
        # (``observer="mean_std"``); __post_init__ turns it into an ObserverMethod.
        # Keep in step with the fields (stubtest checks it against the runtime __init__).
        def __init__(self, bits: int = 8, symmetric: bool = True, learnable: bool = False,
                     observer: Union[ObserverMethod, str] = ObserverMethod.MIN_MAX,
                     numerics: str = "aprender") -> None: ...

    def __post_init__(self) -> None:
        from ._checks import check_index

        bits = check_index(self.bits, "bits")
        for name in ("symmetric", "learnable"):
            value = getattr(self, name)
            if not isinstance(value, (bool,)) and type(value).__name__ != "bool_":
                raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
            object.__setattr__(self, name, bool(value))
        low = 2 if self.symmetric else 1
        if not low <= bits <= 16:
            kind = "symmetric" if self.symmetric else "asymmetric"
            raise ValueError(f"bits must be in {low}..=16 for a {kind} config, got {bits}")
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "observer", _coerce_observer(self.observer))
        if not isinstance(self.numerics, str):
            raise TypeError(f"numerics must be a str, got {type(self.numerics).__name__}")
        if self.numerics not in NUMERICS:
            raise ValueError(f"numerics must be one of {NUMERICS}, got {self.numerics!r}")

    @classmethod
    def int8(cls) -> "FakeQuantConfig":
        """8-bit symmetric, min/max observer."""
        return cls(bits=8, symmetric=True)

    @classmethod
    def int4(cls) -> "FakeQuantConfig":
        """4-bit symmetric, min/max observer."""
        return cls(bits=4, symmetric=True)

    def with_learnable(self) -> "FakeQuantConfig":
        """A copy with learnable (LSQ) scale."""
        return dataclasses.replace(self, learnable=True)

    def with_observer(self, observer: Union[ObserverMethod, str]) -> "FakeQuantConfig":
        """A copy with another observer method."""
        return dataclasses.replace(self, observer=_coerce_observer(observer))

    def with_numerics(self, numerics: str) -> "FakeQuantConfig":
        """A copy with another numerics preset (``"aprender"``, ``"torch"``, ``"onnx"``)."""
        return dataclasses.replace(self, numerics=numerics)

    def quant_range(self) -> Tuple[float, float]:
        """``(qmin, qmax)`` as floats: ±(2^(bits-1) - 1) symmetric, [0, 2^bits - 1] otherwise."""
        if self.symmetric:
            qmax = (1 << (self.bits - 1)) - 1
            return (-float(qmax), float(qmax))
        return (0.0, float((1 << self.bits) - 1))
