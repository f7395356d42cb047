"""Input policy shared by the public classes: coercion, validation, error messages.

The kernels trust their input; everything a user can get wrong is caught here, before
any state changes.
"""

from __future__ import annotations

import math
import operator

import numpy as np

_NUMERIC_KINDS = "biuf"
_F32 = np.dtype(np.float32)


def base_array(x, name: str = "x"):
    """`x` as a base-class ndarray whose shape, strides and size are the buffer's own
    (``np.asarray``): a subclass's Python-level ``shape``/``reshape`` are never trusted.
    Masked arrays are refused (their mask would be silently ignored)."""
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(f"{name} is a numpy.ma.MaskedArray: qatcore does not apply masks; "
                        f"pass {name}.compressed() (or {name}.filled(value)) instead")
    if not isinstance(x, np.ndarray):
        _refuse_grad_tensor(x, name)
    try:
        return np.asarray(x)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"{name} must be a numeric array-like: {exc}") from None


def _refuse_grad_tensor(x, name: str) -> None:
    """A tensor that records gradients (torch ``requires_grad``) cannot become a numpy
    array without leaving the autograd graph: say so instead of torch's RuntimeError
    (torch itself is never imported here)."""
    try:
        needs_grad = getattr(x, "requires_grad", False) is True
    except Exception:       # a hostile __getattr__ is the conversion's problem, not ours
        return
    if needs_grad:
        raise TypeError(f"{name} is a {type(x).__module__}.{type(x).__name__} that requires "
                        f"grad: qatcore's numpy API does not track gradients; pass "
                        f"{name}.detach() (or use qatcore.torch for autograd)")


def int_array(x, dtypes, name: str):
    """`x` as a C-contiguous, aligned base-class array of one of `dtypes` (integer codes:
    never cast); shape and size come from the buffer, not from a subclass's attributes."""
    if type(x) is np.ndarray and x.dtype.type in dtypes and x.dtype.isnative:
        flags = x.flags
        if flags.c_contiguous and flags.aligned:
            return x                    # the common case (a per-call path: keep it cheap)
    names = " or ".join(np.dtype(d).name for d in dtypes)
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy {names} array, got {type(x).__name__}")
    arr = base_array(x, name)
    if not any(arr.dtype == d for d in dtypes):
        raise TypeError(f"{name} must have dtype {names}, got {_dtype_text(arr.dtype)} "
                        f"(no silent casting)")
    return np.require(arr, requirements="CA")


def overlaps(a, b) -> bool:
    """Whether two arrays may share bytes (numpy's bounds test: conservative, never a
    false "no").  Two distinct arrays that both own their data cannot overlap."""
    if a is b:
        return True
    if a.base is None and b.base is None:
        return False
    return bool(np.may_share_memory(a, b))


def as_float32(x, name: str = "x"):
    """``x`` as a flat C-contiguous, aligned float32 base-class array (a copy only when
    needed) + its shape.

    Raises TypeError for non-numeric, complex or object data, and for masked arrays.
    """
    if type(x) is np.ndarray and x.dtype is _F32:
        flags = x.flags
        if flags.c_contiguous and flags.aligned:
            return (x if x.ndim == 1 else x.reshape(-1)), x.shape   # the common case, no copy
    elif type(x) is not np.ndarray:
        x = base_array(x, name)
    kind = x.dtype.kind
    if kind not in _NUMERIC_KINDS:
        what = "complex" if kind == "c" else str(x.dtype)
        raise TypeError(f"{name} must be a real numeric array, got dtype {what}")
    shape = x.shape
    # np.require copies unaligned (e.g. np.frombuffer at an odd offset), non-native and
    # non-contiguous data once, so kernels only ever read aligned native float32.
    x = np.require(x, dtype=np.float32, requirements="CA")
    return x.reshape(-1), shape


def _dtype_text(dtype) -> str:
    """A dtype's name, with its byte order when that is not the machine's."""
    return dtype.name if dtype.isnative else f"{dtype.name} ({dtype.str}, non-native byte order)"


def check_out(out, shape, dtype, name: str = "out"):
    """Validate a caller-supplied output array: exact dtype (a numpy dtype object, native
    byte order), shape, C-contiguous, aligned, writable.  Returns a flat base-class view of
    its buffer (shape and size from the buffer itself, never from a subclass's attributes)."""
    if type(out) is np.ndarray:
        if out.dtype is dtype and out.shape == shape:
            flags = out.flags
            if flags.c_contiguous and flags.writeable and flags.aligned:  # the common case
                return out if out.ndim == 1 else out.reshape(-1)
        arr = out
    elif not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(out).__name__}")
    elif isinstance(out, (np.matrix, np.ma.MaskedArray)):
        raise TypeError(f"{name} must be a plain numpy.ndarray, got {type(out).__module__}."
                        f"{type(out).__name__} (use np.asarray({name}))")
    else:
        arr = np.asarray(out)        # a base-class view of the same buffer
    if arr.dtype != dtype or not arr.dtype.isnative:
        raise TypeError(f"{name} must have dtype {dtype.name} in native byte order, got "
                        f"{_dtype_text(arr.dtype)}")
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} has shape {arr.shape}, expected {tuple(shape)}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if not arr.flags.aligned:
        raise ValueError(f"{name} is not aligned to its {arr.dtype.itemsize}-byte items")
    if not arr.flags.writeable:
        raise ValueError(f"{name} is read-only")
    return arr.reshape(-1)


def check_index(value, name: str) -> int:
    """An integer argument: Python int, numpy integer or integer 0-d array (never a bool,
    a float, or a non-integral numpy value, which int() would truncate)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}"
                        + (f" {value!r}" if isinstance(value, (float, np.ndarray, np.generic))
                           else "")) from None


def check_real(value, name: str, lo=None, hi=None, *, lo_open: bool = False,
               hi_open: bool = False) -> float:
    """A finite real hyper-parameter (Python float) within optional bounds; NaN, ±Inf,
    bools, strings and complex numbers are refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        v = float(value)
    except OverflowError:
        raise ValueError(f"{name} must be finite, got an integer too large for a float") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v!r}")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {v!r}")
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise ValueError(f"{name} must be {'<' if hi_open else '<='} {hi}, got {v!r}")
    return v


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
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(f"{name} must be finite in float32, got an integer too large "
                         f"for a float") from None
    if not math.isfinite(value) or not math.isfinite(float(np.float32(value))):
        raise ValueError(f"{name} must be finite in float32, got {value!r}")
    return value


def raise_nonfinite(op: str, data, index: int, shape=None, source=None):
    """The error for a NaN/Inf found by a kernel at flat index `index`.  `source` (the
    caller's array before its float32 conversion, optional) tells a value that only
    overflowed in the conversion (float64 1e39) from a real Inf."""
    where = f"flat index {index}"
    if shape is not None and len(shape) > 1:
        where += f" (position {np.unravel_index(index, shape)})"
    if source is not None and not isinstance(source, np.ndarray):
        try:
            source = base_array(source)     # a list: the error path may convert it again
        except (TypeError, ValueError):
            source = None
    if source is not None and source.dtype.kind in "iuf" and source.dtype.itemsize > 4 \
            and 0 <= index < source.size:
        original = source.reshape(-1)[index].item()     # C order, as as_float32's copy
        if math.isfinite(original):
            raise ValueError(f"{op}: input value {original!r} at {where} is finite but "
                             f"outside float32's range (|x| <= 3.4028235e+38), which "
                             f"qatcore computes in; nothing was observed")
    raise ValueError(f"{op}: input contains a non-finite value ({float(data[index])!r}) at {where}; "
                     f"nothing was observed")
