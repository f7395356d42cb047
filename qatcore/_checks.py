"""Input policy shared by the public classes: coercion, validation, error messages.

The kernels trust their input; everything a user can get wrong is caught here, before
any state changes.
"""

from __future__ import annotations

import math

import numpy as np

_NUMERIC_KINDS = "biuf"
_F32 = np.dtype(np.float32)


def as_float32(x, name: str = "x"):
    """``x`` as a flat C-contiguous float32 array (a copy only when needed) + its shape.

    Raises TypeError for non-numeric, complex or object data.
    """
    if type(x) is np.ndarray and x.dtype is _F32 and x.flags.c_contiguous:
        return (x if x.ndim == 1 else x.reshape(-1)), x.shape      # the common case, no copy
    if type(x) is not np.ndarray:
        try:
            x = np.asarray(x)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be a numeric array-like: {exc}") from None
    kind = x.dtype.kind
    if kind not in _NUMERIC_KINDS:
        what = "complex" if kind == "c" else str(x.dtype)
        raise TypeError(f"{name} must be a real numeric array, got dtype {what}")
    shape = x.shape
    if kind != "f" or x.dtype.itemsize != 4 or not x.flags.c_contiguous or x.dtype.byteorder == ">":
        x = np.ascontiguousarray(x, dtype=np.float32)
    return x.reshape(-1), shape


def check_out(out, shape, dtype, name: str = "out"):
    """Validate a caller-supplied output array: exact dtype (a numpy dtype object), shape,
    C-contiguous, writable.  Returns it flattened (a view)."""
    if type(out) is np.ndarray and out.dtype is dtype and out.shape == shape:
        flags = out.flags
        if flags.c_contiguous and flags.writeable:          # the common case, cheaply
            return out if out.ndim == 1 else out.reshape(-1)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype.name}, got {out.dtype.name}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} has shape {out.shape}, expected {tuple(shape)}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    return out.reshape(-1)


def check_scale(scale, name: str = "scale") -> float:
    """A finite, positive float32 scale (as a Python float holding a float32 value)."""
    value = check_finite(scale, name)
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    if float(np.float32(value)) == 0.0:
        raise ValueError(f"{name} {value!r} underflows to 0 in float32")
    return float(np.float32(value))


def check_finite(value, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or not math.isfinite(float(np.float32(value))):
        raise ValueError(f"{name} must be finite in float32, got {value!r}")
    return value


def raise_nonfinite(op: str, data, index: int, shape=None):
    """The error for a NaN/Inf found by a kernel at flat index `index`."""
    where = f"flat index {index}"
    if shape is not None and len(shape) > 1:
        where += f" (position {np.unravel_index(index, shape)})"
    raise ValueError(f"{op}: input contains a non-finite value ({float(data[index])!r}) at {where}; "
                     f"nothing was observed")
