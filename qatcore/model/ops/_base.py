"""What every op of the integer graph shares: argument checks, the op protocol the graph
calls (``_bind`` once per model, ``_run`` once per call), and the description an op
saves itself as.

An op is built from its constructor arguments only (int8 weights, float32 scales, int32
bias, geometry).  :class:`~qatcore.model.QuantizedModel` then *binds* it to the
:class:`~qatcore.model.TensorSpec` of its inputs and output: shapes are checked and the
integer parameters TFLite's ``Prepare`` would compute (multipliers, shifts, clamps) are
computed once, as read-only attributes.  An op belongs to the model that bound it last.
"""

from __future__ import annotations

import math
import operator
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["Op", "ACTIVATIONS"]

#: The fused activations (``None``: none).
ACTIVATIONS = (None, "relu", "relu6")
I32_MIN = -(1 << 31)
I32_MAX = (1 << 31) - 1
#: Largest dimension / element count accepted anywhere in a graph (also bounds files).
MAX_DIM = 1 << 24


def check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{what} must be a non-empty str tensor name, got {value!r}")
    if len(value) > 256:
        raise ValueError(f"{what} is longer than 256 characters")
    return value


def check_int(value: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{what} must be an integer, got a bool")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {type(value).__name__}") from None
    if not lo <= v <= hi:
        raise ValueError(f"{what} must be in [{lo}, {hi}], got {v}")
    return int(v)


def check_ints(value: Any, n: int, what: str, lo: int, hi: int = MAX_DIM) -> Tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TypeError(f"{what} must be a tuple of {n} integers, got {value!r}")
    if len(value) != n:
        raise ValueError(f"{what} must have {n} entries, got {len(value)}")
    return tuple(check_int(v, f"{what}[{i}]", lo, hi) for i, v in enumerate(value))


def check_activation(value: Any) -> Optional[str]:
    if value not in ACTIVATIONS or (value is not None and not isinstance(value, str)):
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {value!r}")
    return value


def frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    if a.base is not None or a.flags.writeable:
        a = a.copy()
    a.flags.writeable = False
    return a


def check_weights(value: Any, ndim: int, what: str = "weights_q") -> np.ndarray:
    """int8 codes in [-127, 127] (TFLite's symmetric weights), never cast."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{what} must be a numpy int8 array, got {type(value).__name__}")
    if value.dtype != np.int8:
        raise TypeError(f"{what} must have dtype int8, got {value.dtype} (no silent casting)")
    if value.ndim != ndim:
        raise ValueError(f"{what} must be {ndim}-D, got shape {value.shape}")
    if value.size == 0:
        raise ValueError(f"{what} is empty (shape {value.shape})")
    if any(d > MAX_DIM for d in value.shape):
        raise ValueError(f"{what} has a dimension above {MAX_DIM}")
    if (value == -128).any():
        raise ValueError(f"{what} holds -128: int8 weights are symmetric, in [-127, 127]")
    return frozen(value)


def check_weight_scales(value: Any, channels: int, what: str = "weight_scales") -> np.ndarray:
    """float32 scales, one or one per output channel, positive and finite."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{what} must be float scales, got a bool")
    try:
        arr = np.asarray(value)
    except Exception:
        raise TypeError(f"{what} must be an array of float scales") from None
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{what} must be real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float32).reshape(-1)
    if arr.size not in (1, channels):
        raise ValueError(f"{what} must have 1 or {channels} entries (one per output channel), "
                         f"got {arr.size}")
    if not (np.isfinite(arr).all() and (arr > 0).all()):
        raise ValueError(f"{what} must be finite and positive")
    return frozen(arr)


def check_bias(value: Any, channels: int, what: str = "bias_q") -> Optional[np.ndarray]:
    if value is None:
        return None
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "iu":
        raise TypeError(f"{what} must be None or an int32 numpy array")
    if value.shape != (channels,):
        raise ValueError(f"{what} must have shape ({channels},), got {value.shape}")
    if value.size and (value.min() < I32_MIN or value.max() > I32_MAX):
        raise ValueError(f"{what} values must fit int32")
    return frozen(value.astype(np.int32))


def conv_out_size(size: int, kernel: int, stride: int, dilation: int, before: int,
                  after: int) -> int:
    """Output length of a window op with explicit padding (< 1: no valid output)."""
    effective = (kernel - 1) * dilation + 1
    return (size + before + after - effective) // stride + 1


def acc_bound_check(weights_2d: np.ndarray, bias: Optional[np.ndarray], what: str) -> None:
    """Refuse filters whose int32 accumulator Σ w·(x - zp) + bias could overflow
    (|x - zp| <= 255): TFLite's int32 sum would wrap there (undefined behaviour in C++)."""
    worst = np.abs(weights_2d.astype(np.int64)).sum(axis=1) * 255
    if bias is not None:
        worst = worst + np.abs(bias.astype(np.int64))
    if worst.size and int(worst.max()) > I32_MAX:
        raise ValueError(f"{what}: the int32 accumulator of this filter could overflow "
                         f"(sum |w| * 255 + |bias| > 2^31 - 1)")


class Op:
    """Base class of the integer graph's ops (see :mod:`qatcore.model.ops`)."""

    #: TFLite builtin operator this op computes.
    op_type: ClassVar[str] = ""
    #: Constructor arguments saved as JSON (scalars / tuples) and as arrays.
    _PARAMS: ClassVar[Tuple[str, ...]] = ()
    _ARRAYS: ClassVar[Tuple[str, ...]] = ()
    #: Whether the constructor takes ``inputs`` (a sequence) instead of ``input``.
    _MULTI_INPUT: ClassVar[bool] = False

    _inputs: Tuple[str, ...]
    _output: str

    def _set_io(self, inputs: Sequence[str], output: str) -> None:
        self._inputs = tuple(inputs)
        self._output = check_name(output, "output")
        self._bound = False

    @property
    def inputs(self) -> Tuple[str, ...]:
        """Names of the input tensors."""
        return self._inputs

    @property
    def output(self) -> str:
        """Name of the output tensor."""
        return self._output

    # ------------------------------------------------------------------ graph protocol
    def _bind(self, ins: List[Any], out: Any) -> None:
        """Check the input/output TensorSpecs and compute the Prepare-time parameters."""
        raise NotImplementedError

    def _run(self, xs: List[np.ndarray], out: np.ndarray, rounding: int,
             n_threads: int) -> None:
        """Compute `out` (int8, (batch, *output shape)) from the input buffers."""
        raise NotImplementedError

    # ------------------------------------------------------------------ description
    def _describe(self) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
        params = {name: _jsonable(getattr(self, name)) for name in self._PARAMS}
        arrays = {name: getattr(self, name) for name in self._ARRAYS
                  if getattr(self, name) is not None}
        return params, arrays

    def __repr__(self) -> str:
        ins = ", ".join(self._inputs)
        return f"{type(self).__name__}({ins} -> {self._output})"


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return value


def check_spec_qparams_equal(a: Any, b: Any, what: str) -> None:
    if np.float32(a.scale) != np.float32(b.scale) or a.zero_point != b.zero_point:
        raise ValueError(f"{what}: tensor {b.name!r} must keep the (scale, zero_point) of "
                         f"{a.name!r} ({a.scale}, {a.zero_point}), got ({b.scale}, "
                         f"{b.zero_point})")


def prod(shape: Sequence[int]) -> int:
    return int(math.prod(shape))
