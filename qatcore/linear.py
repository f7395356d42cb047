"""``QuantizedLinear``: int8 weights, int32 bias, int8 x int8 -> int32 GEMM (Rust
``QuantizedLinear``), plus per-channel scales, float and integer-only inference, QAT
conversion and serialization."""

from __future__ import annotations

import math
import os
import threading
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

from . import _backend
from ._checks import as_float32, base_array, check_index, check_scale, int_array
from ._files import write_atomic
from ._typing import ArrayLike, F32Array, Int8Array, Int32Array, Integer, Real
from .config import FakeQuantConfig
from .fake_quantize import FakeQuantize, Module

__all__ = ["QuantizedLinear", "quantize_multiplier", "requant_real_multiplier"]

_F32 = np.float32
_I32_MAX = (1 << 31) - 1
#: Largest in_features for which int32 accumulation of int8 inputs in [-128, 127] times
#: weights in [-127, 127] cannot overflow: floor((2^31 - 1) / (128 * 127)).
MAX_IN_FEATURES = 132104
_STATE_VERSION = 1
#: Zero points (int8 code space) are limited to |zp| <= 2^24 (exact in float32).
_ZP_MAX = 1 << 24
#: Smallest weight scale: the smallest normal float32, 2^-126.  Weights so small that
#: max|w| / qmax falls below it (denormals) get this scale instead of 0 or a denormal
#: one (their codes are then round(w / 2^-126), 0 for anything below ~6e-39).
WEIGHT_SCALE_FLOOR = float(np.finfo(np.float32).tiny)


def _round_half_away(v):
    """Rust f32::round on float32 arrays (bit-exact form, see PERF-NOTES.md)."""
    return np.trunc(v + np.copysign(_F32(0.49999997), v)).astype(np.float32)


def quantize_multiplier(real_multiplier: ArrayLike) -> Tuple[Int32Array, Int32Array]:
    """TFLite ``QuantizeMultiplier`` on an array of positive float64 multipliers.

    Returns ``(multiplier, shift)`` int32 arrays with ``real ≈ multiplier · 2^(shift-31)``,
    ``multiplier`` in [2^30, 2^31) (Q31), rounding half away from zero; multipliers below
    2^-32 flush to 0 and shifts above 30 saturate, as in TFLite.

    Examples
    --------
    >>> quantize_multiplier([0.5, 0.75, 3.0])
    (array([1073741824, 1610612736, 1610612736], dtype=int32), array([0, 0, 2], dtype=int32))
    """
    real = np.atleast_1d(np.asarray(real_multiplier, dtype=np.float64))
    q, shift = np.frexp(real)
    q_fixed = np.floor(q * 2.0 ** 31 + 0.5)          # exact: q * 2^31 < 2^31, + 0.5 exact
    top = q_fixed == 2.0 ** 31
    q_fixed[top] /= 2
    shift = shift.astype(np.int64) + top
    tiny = (shift < -31) | (real == 0)
    q_fixed[tiny] = 0
    shift[tiny] = 0
    big = shift > 30
    q_fixed[big] = _I32_MAX
    shift[big] = 30
    return q_fixed.astype(np.int32), shift.astype(np.int32)


def requant_real_multiplier(weight_scale: Union[float, ArrayLike], input_scale: float,
                            output_scale: float) -> np.ndarray:
    """The real requantization multiplier(s) ``s_in · s_w / s_out`` as TFLite computes them
    from the float32 scales, so that ``quantize_multiplier`` of the result gives the
    multiplier and shift TFLite / TFLM derive from a ``.tflite`` file.

    One weight scale (per-tensor, or a per-channel array of length 1, which TFLite treats
    as per-tensor): ``GetQuantizedConvolutionMultipler`` multiplies the two scales in
    float32 and divides in float64, ``double(s_in * s_w) / double(s_out)``.  Several
    (per-channel): ``PopulateConvolutionQuantizationParams`` works in float64 throughout,
    ``double(s_in) * double(s_w[c]) / double(s_out)``.  The two differ in the last bits
    of the product, which moves the Q31 multiplier by one now and then.

    Examples
    --------
    >>> f32 = np.float32
    >>> real = requant_real_multiplier(0.1, 0.3, 0.7)[0]
    >>> bool(real == float(f32(0.1) * f32(0.3)) / float(f32(0.7)))
    True
    """
    ws = np.asarray(weight_scale, dtype=np.float32).reshape(-1)
    s_in, s_out = np.float32(input_scale), np.float32(output_scale)
    if ws.size == 1:
        return np.array([float(ws[0] * s_in) / float(s_out)], dtype=np.float64)
    return ws.astype(np.float64) * float(s_in) / float(s_out)


def _aligned_empty(nbytes: int, align: int = 64) -> np.ndarray:
    """Uninitialised int8 buffer whose data starts on an `align`-byte boundary.  The
    packed GEMM weights are read in 64-byte vectors: numpy's 16-byte alignment makes
    every AVX-512 load straddle two cache lines (~10% of a batch-1 layer call)."""
    raw = np.empty(nbytes + align, np.int8)
    start = -raw.ctypes.data % align
    return raw[start:start + nbytes]


def _check_int8_codes(x, in_features: int, name: str) -> np.ndarray:
    """int8 codes as a C-contiguous (batch, in_features) base-class array (flat input
    allowed); shape and size come from the buffer, never from a subclass's attributes."""
    x = int_array(x, (np.int8,), name)
    if x.ndim == 1:
        if x.size % in_features:
            raise ValueError(f"{name} has {x.size} elements, not a multiple of in_features="
                             f"{in_features}")
        x = x.reshape(-1, in_features)
    elif x.ndim == 2:
        if x.shape[1] != in_features:
            raise ValueError(f"{name} has shape {x.shape}; expected (batch, {in_features})")
    else:
        raise ValueError(f"{name} must be 1-D (batch*in_features) or 2-D (batch, in_features), "
                         f"got {x.ndim}-D")
    return x                            # C-contiguous (int_array), so is its reshape


def _check_features(value, name: str) -> int:
    value = check_index(value, name)
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value


def _check_int(value, name: str, lo: int, hi: int) -> int:
    value = check_index(value, name)
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def _finite_f32(x, name: str, shape=None) -> np.ndarray:
    arr, in_shape = as_float32(x, name)
    if shape is not None and len(in_shape) > 1 and tuple(in_shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(in_shape)}; expected {tuple(shape)} "
                         f"(or flat)")
    if shape is not None and arr.size != int(np.prod(shape)):
        raise ValueError(f"{name} has {arr.size} elements (shape {in_shape}); expected "
                         f"{int(np.prod(shape))} for shape {tuple(shape)}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{name} contains a non-finite value ({float(arr[bad[0]])!r}) at flat "
                         f"index {int(bad[0])}")
    arr = arr.copy()
    return arr if shape is None else arr.reshape(shape)


def _float_layer(weights, bias, in_features, out_features, wname: str):
    """Checked float32 copies of a layer's (out, in) weights and (out,) bias (or None)."""
    in_features = _check_features(in_features, "in_features")
    out_features = _check_features(out_features, "out_features")
    if in_features > MAX_IN_FEATURES:
        raise ValueError(f"in_features={in_features} exceeds the exact int32 accumulation "
                         f"bound MAX_IN_FEATURES={MAX_IN_FEATURES}")
    w = _finite_f32(weights, wname, (out_features, in_features))
    if bias is not None:
        bias = _finite_f32(bias, "bias", (out_features,))
    return w, bias


def _qparams_of(fq, name: str, bits_max: int = 8):
    """(scale, int8 zero point, (qmin, qmax) in int8 code space) of a FakeQuantize.

    Symmetric codes are int8 as they are; asymmetric [0, 2^bits - 1] codes are shifted
    by -128 into int8 and the (float) zero point is rounded half away from zero."""
    from .fake_quantize import FakeQuantize

    if not isinstance(fq, FakeQuantize):
        raise TypeError(f"{name} must be a FakeQuantize, got {type(fq).__name__}")
    config = fq.config
    if config.bits > bits_max:
        raise ValueError(f"{name}: integer inference needs bits <= {bits_max}, got {config.bits}")
    scale = check_scale(fq.scale, f"{name}.scale")
    qmin, qmax = (int(v) for v in config.quant_range())
    if config.symmetric:
        return scale, 0, (qmin, qmax), None
    zp = float(fq.zero_point)
    if not math.isfinite(zp):
        raise ValueError(f"{name}.zero_point must be finite, got {zp!r}")
    if abs(zp) > _ZP_MAX:
        raise ValueError(f"{name}.zero_point {zp!r} is out of range (|zp| <= {_ZP_MAX})")
    zp_int = int(_round_half_away(np.float32(zp))) - 128
    return scale, zp_int, (qmin - 128, qmax - 128), float(np.float32(zp))


def _frozen(arr: np.ndarray) -> np.ndarray:
    """A private, immutable copy of `arr`: backed by a bytes object, so no view of it can
    ever be made writable again (``flags.writeable = True`` raises) and codes cannot
    change behind the packed GEMM weights.  The caller's array is left as it was."""
    arr = np.ascontiguousarray(arr)
    return np.frombuffer(arr.tobytes(), dtype=arr.dtype).reshape(arr.shape)


def _state_int(state, key: str, lo: int, hi: int) -> int:
    """An integer field of a state dict / .npz: an integer (or bool-free integral) scalar
    array or number, never a float that int() would truncate (bits 8.9, zero point 0.7)."""
    name = f"state_dict[{key!r}]"
    value = state[key]
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(f"{name} must be a scalar, got shape {value.shape}")
        if value.dtype.kind not in "iu":
            raise ValueError(f"{name} must be an integer, got dtype {value.dtype} "
                             f"({value.reshape(-1)[0]!r})")
        value = value.reshape(-1)[0]
    try:
        return _check_int(value, name, lo, hi)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


def _state_bool(state, key: str) -> bool:
    value = state[key]
    arr = np.asarray(value) if isinstance(value, (np.ndarray, np.generic, bool)) else None
    if arr is None or arr.size != 1 or arr.dtype.kind not in "biu" \
            or int(arr.reshape(-1)[0]) not in (0, 1):
        raise ValueError(f"state_dict[{key!r}] must be a bool, got {value!r}")
    return bool(arr.reshape(-1)[0])


def _state_qrange(state, key: str) -> Tuple[int, ...]:
    arr = base_array(state[key], f"state_dict[{key!r}]")
    if arr.dtype.kind not in "iu" or arr.size != 2:
        raise ValueError(f"state_dict[{key!r}] must be two integers (qmin, qmax), got "
                         f"{arr.dtype} of shape {arr.shape}")
    return tuple(int(v) for v in arr.ravel())


def _state_float(state, key: str) -> float:
    value = state[key]
    arr = np.asarray(value) if isinstance(value, (np.ndarray, np.generic, int, float)) \
        and not isinstance(value, bool) else None
    if arr is None or arr.size != 1 or arr.dtype.kind not in "iuf":
        raise ValueError(f"state_dict[{key!r}] must be a real scalar, got {value!r}")
    return float(arr.reshape(-1)[0])


def _refuse_other_saver(path) -> None:
    """ValueError naming the class that saved `path` when it is a QuantizedSequential
    archive (its ``format`` / ``activations`` members), not a layer: the member-by-member
    check below would only say that a string member is not a number."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist()[:1024])
    except (zipfile.BadZipFile, OSError, ValueError, RuntimeError):
        return                          # _read_npz says what is wrong with it
    if {"format.npy", "activations.npy"} <= names:
        raise ValueError(f"QuantizedLinear.load: {os.fspath(path)!r} was saved by "
                         f"QuantizedSequential.save (a whole integer model, not one layer): "
                         f"read it with qatcore.QuantizedSequential.load")


def _read_npz(path) -> Dict[str, np.ndarray]:
    """The arrays of a ``.npz`` archive, read without numpy's loader: every member's
    claimed size is bounded by the archive's own bytes before anything is allocated
    (a tiny file claiming a 32 TiB array is refused), only plain numeric dtypes, no
    pickles.  Any corruption is a ValueError naming the file."""
    import zipfile
    import zlib

    fmt = np.lib.format

    def bad(problem: str) -> ValueError:
        return ValueError(f"QuantizedLinear.load: {os.fspath(path)!r}: {problem}")

    file_size = os.path.getsize(path)
    state: Dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > 64:
                raise bad(f"{len(infos)} members (a saved layer has at most 13)")
            for info in infos:
                if not info.filename.endswith(".npy") or info.filename[:-4] in state:
                    raise bad(f"unexpected member {info.filename!r}")
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise bad(f"member {info.filename!r}: unsupported compression")
                # Deflate expands at most ~1032:1; stored members hold their own size.
                ratio = 1 if info.compress_type == zipfile.ZIP_STORED else 1032
                if info.compress_size > file_size or \
                        info.file_size > ratio * info.compress_size + 1024:
                    raise bad(f"member {info.filename!r} claims {info.file_size} bytes, "
                              f"more than the archive can hold")
                with zf.open(info) as f:
                    version = fmt.read_magic(f)
                    if version == (1, 0):
                        shape, fortran, dtype = fmt.read_array_header_1_0(f)
                    elif version in ((2, 0), (3, 0)):
                        shape, fortran, dtype = fmt.read_array_header_2_0(f)
                    else:
                        raise bad(f"member {info.filename!r}: .npy version {version}")
                    if dtype.kind not in "biuf" or dtype.fields is not None \
                            or dtype.subdtype is not None:
                        raise bad(f"member {info.filename!r}: dtype {dtype} is not a plain "
                                  f"number type")
                    if not all(type(d) is int and d >= 0 for d in shape) or len(shape) > 8:
                        raise bad(f"member {info.filename!r}: bad shape {shape!r}")
                    nbytes = math.prod(shape) * dtype.itemsize
                    if nbytes > info.file_size:
                        raise bad(f"member {info.filename!r}: its header claims shape "
                                  f"{shape} ({nbytes} bytes) but the member holds "
                                  f"{info.file_size} bytes")
                    data = f.read(nbytes)
                    if len(data) != nbytes:
                        raise bad(f"member {info.filename!r} is truncated")
                arr = np.frombuffer(data, dtype=dtype)
                arr = arr.reshape(shape, order="F" if fortran else "C")
                state[info.filename[:-4]] = np.array(arr, dtype=dtype.newbyteorder("="))
    except ValueError as exc:
        if str(exc).startswith("QuantizedLinear.load"):
            raise
        raise bad(f"corrupt archive ({exc})") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, SyntaxError, RecursionError,
            OverflowError, NotImplementedError, KeyError, TypeError, MemoryError) as exc:
        raise bad(f"corrupt archive ({type(exc).__name__}: {exc})") from None
    return state


_READ_ONLY = frozenset({"weights_q", "bias_q", "weight_scale", "input_scale", "input_zero_point",
                        "in_features", "out_features", "bits", "per_channel"})


class QuantizedLinear(Module):
    """Quantized linear layer for int8 inference (Rust ``QuantizedLinear``).

    ``y = x @ W.T + b`` with int8 weight codes ``weights_q`` (symmetric, in
    ``[-qmax, qmax]``, ``qmax = 2^(bits-1) - 1``), int32 bias codes ``bias_q`` at scale
    ``output_scale = weight_scale · input_scale``, and int8 activation codes. The weights
    are packed once into the layout the CPU's GEMM microkernel reads.

    Build one with :meth:`from_float` (Rust-compatible), :meth:`from_qat` or
    :meth:`from_state_dict`; the constructor is private.

    Attributes
    ----------
    weights_q : ndarray of int8, shape (out_features, in_features), read-only
        Rust indexes the same data flat as ``weights_q[o * in_features + i]``.
    bias_q : ndarray of int32, shape (out_features,), or None
        ``round_half_away(bias / (input_scale · weight_scale))`` in float32; re-quantized
        by :meth:`set_input_scale` (Rust quantizes at ``weight_scale`` only, once).
    weight_scale : float, or float32 ndarray of shape (out_features,) when per-channel
    input_scale : float
    input_zero_point : int
        Zero point of the int8 input codes (0 for Rust-compatible layers).
    in_features, out_features : int
    bits : int
        Weight code width (2..8).
    per_channel : bool
        Whether `weight_scale` holds one scale per output channel.
    output_scale : float, or float32 ndarray when per-channel (property)
        ``weight_scale · input_scale``: the scale of the int32 accumulators (Rust's name).
        The `output_scale` argument of :meth:`forward_int8` is another thing: the scale
        of the int8 output codes.

    All nine attributes above the property are read-only.

    Notes
    -----
    Accumulation is int32 and exact: ``in_features`` is limited to ``MAX_IN_FEATURES``
    (132 104, so ``128 · 127 · K < 2^31``) and a bias whose codes could overflow the
    accumulator is refused.

    Examples
    --------
    >>> import numpy as np
    >>> from qatcore import QuantizedLinear, FakeQuantConfig
    >>> w = np.array([[0.5, -1.0], [0.25, 0.75]], dtype=np.float32)
    >>> layer = QuantizedLinear.from_float(w, [0.1, -0.2], 2, 2, FakeQuantConfig.int8())
    >>> layer.weights_q
    array([[  64, -127],
           [  32,   95]], dtype=int8)
    >>> layer.forward_quantized(np.array([[10, -3]], dtype=np.int8))
    array([[1034,   10]], dtype=int32)
    >>> layer.set_input_scale(0.05)
    >>> layer.forward(np.array([[0.5, -0.15]], dtype=np.float32))
    array([[ 0.5019685 , -0.18622048]], dtype=float32)
    """

    MAX_IN_FEATURES = MAX_IN_FEATURES

    # The nine documented attributes (set once by _build, read-only afterwards).
    weights_q: Int8Array
    bias_q: Optional[Int32Array]
    weight_scale: Union[float, F32Array]
    input_scale: float
    input_zero_point: int
    in_features: int
    out_features: int
    bits: int
    per_channel: bool
    # Derived state (private).
    _n_threads: Optional[int]
    _wsum: Int32Array
    _l1: npt.NDArray[np.int64]
    _bias: Optional[F32Array]
    _input_qrange: Tuple[int, int]
    _output_q: Optional[Tuple[float, int, Tuple[int, int]]]
    _input_zp_float: Optional[float]
    _col_offset: Int32Array
    _zp_offset: Int32Array
    _requant_cache: Any
    _packed: Dict[str, Int8Array]
    _lock: Any                  # threading.RLock

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("use QuantizedLinear.from_float, from_qat or from_state_dict")

    def _set(self, name, value):
        if isinstance(value, np.ndarray):
            value = _frozen(value)
        object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _READ_ONLY:
            raise AttributeError(f"QuantizedLinear.{name} is read-only (the packed weights and "
                                 f"offsets derive from it): use set_input_scale or build a new "
                                 f"layer")
        object.__setattr__(self, name, value)

    # ------------------------------------------------------------------ construction
    @classmethod
    def _build(cls, weights_q, weight_scale, bits, per_channel, bias, bias_q, input_scale,
               input_zero_point, input_qrange, output_q, n_threads, input_zp_float=None):
        """Validate the derived state and return a new, fully built layer."""
        self = object.__new__(cls)
        out_features, in_features = weights_q.shape
        if in_features > MAX_IN_FEATURES:
            raise ValueError(f"in_features={in_features} exceeds the exact int32 accumulation "
                             f"bound MAX_IN_FEATURES={MAX_IN_FEATURES}")
        self._n_threads = None if n_threads is None else _backend.check_threads(n_threads)
        # Per-layer lock: set_input_scale replaces the input-derived state under it, and
        # each forward takes a consistent snapshot of that state under it, then runs the
        # GEMM unlocked holding its own references (arrays are only ever replaced, never
        # changed in place), so concurrent forwards still run in parallel.
        object.__setattr__(self, "_lock", threading.RLock())
        self._set("weights_q", np.asarray(weights_q, dtype=np.int8))   # an immutable copy
        weights_q = self.weights_q
        self._set("in_features", int(in_features))
        self._set("out_features", int(out_features))
        self._set("bits", int(bits))
        self._set("per_channel", bool(per_channel))
        self._set("weight_scale", weight_scale if not isinstance(weight_scale, np.ndarray)
                  else np.asarray(weight_scale, dtype=np.float32))
        wide = weights_q.astype(np.int64)
        self._wsum = wide.sum(axis=1).astype(np.int32)                 # |.| <= 127 K < 2^31
        self._l1 = np.abs(wide).sum(axis=1)
        self._bias = bias
        self._input_qrange = input_qrange
        self._output_q = output_q
        self._input_zp_float = input_zp_float
        self._set("input_scale", 1.0)
        self._set("input_zero_point", 0)
        self._set("bias_q", None)
        self._apply_input(input_scale, input_zero_point, bias_q, "input_scale")
        self._packed = {}
        self._packed_for(_backend.kernels)
        return self

    def _bias_codes(self, input_scale: float, name: str):
        """bias_q at output scale input_scale · weight_scale (float32), int32 checked."""
        if self._bias is None:
            return None
        denom = np.float32(input_scale) * np.asarray(self.weight_scale, dtype=np.float32)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            codes = _round_half_away(self._bias / denom)
        bad = np.flatnonzero(~(np.abs(codes) < 2.0 ** 31))
        if bad.size:
            raise ValueError(f"{name}: bias[{int(bad[0])}] = {float(self._bias[bad[0]])!r} "
                             f"quantizes outside int32 at scale {float(np.ravel(denom)[0])!r}")
        return codes.astype(np.int64)

    def _apply_input(self, input_scale: float, zero_point: int, bias_q, name: str) -> None:
        """Set input scale/zero point and the derived bias codes and column offsets, after
        checking that no int8 input can overflow the int32 accumulators and that the
        accumulators' scale ``weight_scale · input_scale`` is a finite, non-zero float32
        (a scale saturated near FLT_MAX, e.g. a diverged learnable one, would otherwise
        give inf outputs: refused, not clamped, since any clamp changes the model)."""
        with np.errstate(over="ignore", under="ignore"):
            acc_scale = np.asarray(self.weight_scale, np.float32) * np.float32(input_scale)
        if not np.isfinite(acc_scale).all() or not (acc_scale > 0).all():
            ws = float(np.max(self.weight_scale)) if not np.isfinite(acc_scale).all() else \
                float(np.min(self.weight_scale))
            raise ValueError(f"{name} {float(input_scale)!r} times the weight scale "
                             f"{ws!r} is {'not finite' if not np.isfinite(acc_scale).all() else '0'}"
                             f" in float32: the int32 accumulators would have no usable "
                             f"scale (the input quantizer's scale saturated?)")
        if bias_q is None:
            bias_q = self._bias_codes(input_scale, name)
        offset = -np.int64(zero_point) * self._wsum.astype(np.int64)
        if bias_q is not None:
            offset = offset + bias_q
        worst = 128 * self._l1 + np.abs(offset)
        bad = np.flatnonzero(worst > _I32_MAX)
        if bad.size:
            raise ValueError(f"{name}: output channel {int(bad[0])} could overflow the int32 "
                             f"accumulator (bias code / zero point correction too large)")
        col_offset = _frozen(offset.astype(np.int32))
        zp_offset = _frozen((-np.int64(zero_point) * self._wsum.astype(np.int64)).astype(np.int32))
        with self._lock:
            self._set("input_scale", float(np.float32(input_scale)))
            self._set("input_zero_point", int(zero_point))
            self._set("bias_q", None if bias_q is None else bias_q.astype(np.int32))
            self._col_offset = col_offset
            self._zp_offset = zp_offset
            self._requant_cache = None

    @classmethod
    def from_float(cls, weights: ArrayLike, bias: Optional[ArrayLike], in_features: Integer,
                   out_features: Integer, config: Optional[FakeQuantConfig] = None, *,
                   per_channel: bool = False, n_threads: Optional[Integer] = None
                   ) -> "QuantizedLinear":
        """Quantize a float layer (Rust ``QuantizedLinear::from_float``).

        Parameters
        ----------
        weights : array_like of float
            ``(out_features, in_features)`` or flat ``out_features * in_features``
            (row-major, Rust's layout). Must be finite.
        bias : array_like of float, shape (out_features,), or None
        in_features, out_features : int
        config : FakeQuantConfig, optional
            Only ``bits`` (<= 8) is used: weights are always symmetric with
            ``qmax = 2^(bits-1) - 1`` (Rust takes qmax from the config even when asymmetric).
        per_channel : bool, default False
            One scale per output channel (``max|w[o]| / qmax``) instead of one per tensor.
        n_threads : int, optional
            Threads for the GEMM (default: ``qatcore.get_num_threads()`` at call time).

        Raises
        ------
        ValueError
            Size mismatches, non-finite weights or bias, bits > 8, in_features above
            ``MAX_IN_FEATURES``, bias codes that could overflow int32.
        TypeError
            Wrong argument types.
        """
        if config is None:
            config = FakeQuantConfig()
        if not isinstance(config, FakeQuantConfig):
            raise TypeError(f"config must be a FakeQuantConfig, got {type(config).__name__}")
        if config.bits > 8:
            raise ValueError(f"config.bits must be <= 8 for QuantizedLinear, got {config.bits}")
        if not isinstance(per_channel, (bool, np.bool_)):
            raise TypeError(f"per_channel must be a bool, got {type(per_channel).__name__}")
        w, bias = _float_layer(weights, bias, in_features, out_features, "weights")
        qmax = _F32((1 << (config.bits - 1)) - 1)
        weight_scale: Union[float, F32Array]
        if per_channel:
            max_abs = np.abs(w).max(axis=1, initial=_F32(0))
            scale = np.where(max_abs > 0, np.maximum(max_abs / qmax, _F32(WEIGHT_SCALE_FLOOR)),
                             _F32(1)).astype(np.float32)
            codes = _round_half_away(w / scale[:, None])
            weight_scale = scale
        else:
            max_abs = np.abs(w).max(initial=_F32(0))
            # Denormal weights: max|w| / qmax can underflow to 0 (or a denormal scale that
            # save/load would refuse): floored at the smallest normal float32.
            weight_scale = float(max(max_abs / qmax, _F32(WEIGHT_SCALE_FLOOR))) \
                if max_abs > 0 else 1.0
            codes = _round_half_away(w / _F32(weight_scale))
        weights_q = np.clip(codes, -qmax, qmax).astype(np.int8)
        return cls._build(weights_q, weight_scale, config.bits, per_channel, bias, None, 1.0, 0,
                          (-128, 127), None, n_threads)

    @classmethod
    def from_qat(cls, weight: ArrayLike, bias: Optional[ArrayLike],
                 weight_fake_quant: FakeQuantize, input_fake_quant: FakeQuantize,
                 output_fake_quant: Optional[FakeQuantize] = None,
                 *, n_threads: Optional[Integer] = None) -> "QuantizedLinear":
        """Convert a layer trained with :class:`~qatcore.FakeQuantize` quantizers.

        The weights are quantized with the (frozen) scale of `weight_fake_quant` exactly as
        its forward pass did in training; `input_fake_quant` gives the input scale and zero
        point; `output_fake_quant`, when given, the default output quantization of
        :meth:`forward_int8`. Asymmetric quantizers (codes ``[0, 2^bits - 1]``) map to int8
        codes by subtracting 128, with their float zero point rounded half away from zero.

        Parameters
        ----------
        weight : array_like of float, shape (out_features, in_features)
        bias : array_like of float, shape (out_features,), or None
        weight_fake_quant : FakeQuantize
            Symmetric, bits <= 8.
        input_fake_quant : FakeQuantize
            bits <= 8.
        output_fake_quant : FakeQuantize, optional
            bits <= 8.

        Raises
        ------
        TypeError, ValueError
            As for :meth:`from_float`; also an asymmetric weight quantizer, bits > 8, or a
            non-finite / non-positive scale.

        Examples
        --------
        >>> import numpy as np
        >>> from qatcore import FakeQuantize, QuantizedLinear
        >>> w = np.array([[0.5, -1.0]], dtype=np.float32)
        >>> wq, xq = FakeQuantize(), FakeQuantize()
        >>> _ = wq.fake_quantize(w); wq.disable_calibration()
        >>> _ = xq.fake_quantize(np.array([2.0, -1.0], dtype=np.float32)); xq.disable_calibration()
        >>> layer = QuantizedLinear.from_qat(w, None, wq, xq)
        >>> layer.weights_q, round(layer.input_scale * 127, 5)
        (array([[  64, -127]], dtype=int8), 2.0)
        """
        from .fake_quantize import FakeQuantize

        if not isinstance(weight_fake_quant, FakeQuantize):
            raise TypeError(f"weight_fake_quant must be a FakeQuantize, got "
                            f"{type(weight_fake_quant).__name__}")
        wconf = weight_fake_quant.config
        if not wconf.symmetric:
            raise ValueError("weight_fake_quant must be symmetric (integer GEMM assumes weight "
                             "zero point 0)")
        if wconf.bits > 8:
            raise ValueError(f"weight_fake_quant: bits must be <= 8, got {wconf.bits}")
        w_scale = check_scale(weight_fake_quant.scale, "weight_fake_quant.scale")
        x_scale, x_zp, x_range, x_zpf = _qparams_of(input_fake_quant, "input_fake_quant")
        with np.errstate(over="ignore"):
            if not np.isfinite(np.float32(w_scale) * np.float32(x_scale)):
                raise ValueError(f"input_fake_quant.scale {x_scale!r} times "
                                 f"weight_fake_quant.scale {w_scale!r} overflows float32: "
                                 f"the layer's outputs would be inf (did the input "
                                 f"quantizer's scale saturate in training?)")
        output_q = None
        if output_fake_quant is not None:
            output_q = _qparams_of(output_fake_quant, "output_fake_quant")[:3]
        arr = base_array(weight, "weight")        # the buffer's own shape
        if arr.ndim != 2:
            raise ValueError(f"weight must be 2-D (out_features, in_features), got shape "
                             f"{arr.shape}")
        out_features, in_features = arr.shape
        w, bias = _float_layer(weight, bias, in_features, out_features, "weight")
        qmax = _F32((1 << (wconf.bits - 1)) - 1)
        # Same float32 arithmetic as FakeQuantize's forward: round(w / scale + 0).
        weights_q = np.clip(_round_half_away(w / _F32(w_scale)), -qmax, qmax).astype(np.int8)
        return cls._build(weights_q, w_scale, wconf.bits, False, bias, None, x_scale, x_zp,
                          x_range, output_q, n_threads, x_zpf)

    # ------------------------------------------------------------------ Rust surface
    @property
    def output_scale(self) -> Union[float, F32Array]:
        """``weight_scale · input_scale`` in float32 (an array when per-channel): the scale
        of the int32 accumulators of :meth:`forward_quantized` (Rust's name).  Not the
        `output_scale` argument of :meth:`forward_int8`, which is the int8 output's."""
        s = np.asarray(self.weight_scale, dtype=np.float32) * np.float32(self.input_scale)
        return float(s) if s.ndim == 0 else s

    @property
    def n_threads(self) -> int:
        """Threads for the GEMM (the library default when not set)."""
        return _backend.resolve_threads(self._n_threads)

    @n_threads.setter
    def n_threads(self, value: Optional[Integer]) -> None:
        self._n_threads = None if value is None else _backend.check_threads(value)

    def set_input_scale(self, scale: Real, zero_point: Optional[Integer] = None) -> None:
        """Set the input scale (Rust ``set_input_scale``) and, optionally, the int8 input
        zero point; re-quantizes the bias at the new output scale.

        Raises ValueError (non-finite, non-positive or too large scale, zero point
        outside [-128, 127], bias codes that would overflow int32) or TypeError (a
        zero point that is not an integer) with the layer unchanged.
        """
        scale = check_scale(scale, "scale")
        if zero_point is not None:
            zero_point = _check_int(zero_point, "zero_point", -128, 127)
        with self._lock:
            zp = self.input_zero_point if zero_point is None else zero_point
            self._apply_input(scale, zp, None, "scale")
            if zero_point is not None:
                self._input_zp_float = None

    def _packed_for(self, kernels):
        layout = kernels.GEMM_LAYOUT
        packed = self._packed.get(layout)
        if packed is None:
            with self._lock:            # packed once per layout, never replaced
                packed = self._packed.get(layout)
                if packed is None:
                    packed = _aligned_empty(kernels.packed_size(self.out_features,
                                                                self.in_features))
                    kernels.pack_weights(self.weights_q, packed)
                    self._packed[layout] = packed
        return packed

    def _snapshot(self):
        """The input-derived state one call uses, read consistently under the lock."""
        with self._lock:
            return (self.input_scale, self.input_zero_point, self._input_zp_float,
                    self._col_offset, self._zp_offset)

    def _gemm(self, x2d: np.ndarray, col_offset: Optional[np.ndarray]) -> np.ndarray:
        kernels = _backend.kernels
        packed = self._packed_for(kernels)
        out = np.empty((x2d.shape[0], self.out_features), dtype=np.int32)
        if kernels.gemm_i8_i32(x2d, packed, self.out_features, self._wsum, col_offset, out,
                               self.n_threads) != 0:
            raise MemoryError("QuantizedLinear: could not allocate GEMM scratch memory")
        return out

    def forward_quantized(self, x_q: Int8Array) -> Int32Array:
        """Raw int32 accumulators ``Σ_i weights_q[o, i] · (x_q[b, i] - input_zero_point)
        + bias_q[o]`` as ``(batch, out_features)`` (Rust ``forward_quantized``; bit-exact
        with the Rust loop when ``input_zero_point`` is 0, as in Rust).

        `x_q` must be an int8 array, flat ``batch · in_features`` or
        ``(batch, in_features)``; anything else raises TypeError/ValueError (Rust silently
        truncates the batch).
        """
        x2d = _check_int8_codes(x_q, self.in_features, "x_q")
        return self._gemm(x2d, self._snapshot()[3])

    def forward(self, x: ArrayLike) -> F32Array:
        """Float in, float out: quantize `x` with the input scale and zero point, int8
        GEMM, then ``acc · output_scale + bias`` in float32; ``(batch, out_features)``.

        `x` is flat ``batch · in_features`` or ``(batch, in_features)``; NaN raises
        ValueError, ±Inf saturates to the code range.
        """
        flat, shape = as_float32(x, "x")
        if len(shape) == 2:
            if shape[1] != self.in_features:
                raise ValueError(f"x has shape {shape}; expected (batch, {self.in_features})")
        elif len(shape) == 1:
            if flat.size % self.in_features:
                raise ValueError(f"x has {flat.size} elements, not a multiple of in_features="
                                 f"{self.in_features}")
        else:
            raise ValueError(f"x must be 1-D or 2-D, got {len(shape)}-D")
        if np.isnan(flat).any():
            index = int(np.flatnonzero(np.isnan(flat))[0])
            raise ValueError(f"forward: x contains NaN at flat index {index}")
        kernels = _backend.kernels
        qmin, qmax = self._input_qrange
        input_scale, input_zp, zpf, _, zp_offset = self._snapshot()
        if zpf is None:
            codes = np.empty(flat.size, dtype=np.int8)
            if flat.size:
                kernels.quantize(flat, codes, input_scale, float(input_zp),
                                 float(qmin), float(qmax), self.n_threads)
            acc = self._gemm(codes.reshape(-1, self.in_features), zp_offset)
            y = acc.astype(np.float32)
        else:
            # Asymmetric input quantizer with a float zero point (Rust keeps it unrounded):
            # the same uint8 codes as its FakeQuantize, shifted to int8 for the GEMM, and
            # the exact (128 - zp) * Σw correction in float.
            codes_u8 = np.empty(flat.size, dtype=np.uint8)
            if flat.size:
                kernels.quantize(flat, codes_u8, input_scale, zpf, float(qmin + 128),
                                 float(qmax + 128), self.n_threads)
            codes = (codes_u8 ^ np.uint8(0x80)).view(np.int8)
            acc = self._gemm(codes.reshape(-1, self.in_features), None)
            y = acc.astype(np.float32)
            y += ((128.0 - zpf) * self._wsum.astype(np.float64)).astype(np.float32)
        y *= np.asarray(self.weight_scale, dtype=np.float32) * np.float32(input_scale)
        if self._bias is not None:
            y += self._bias
        return y

    __call__ = forward

    # ------------------------------------------------------------------ integer-only
    def _requant_params(self, output_scale: float, input_scale: float):
        key = (output_scale, input_scale)
        cache = self._requant_cache          # read once: another thread may replace it
        if cache is None or cache[0] != key:
            real = requant_real_multiplier(self.weight_scale, input_scale, output_scale)
            mult, shift = quantize_multiplier(np.broadcast_to(real, (self.out_features,)))
            cache = (key, mult, shift)
            with self._lock:
                if self.input_scale == input_scale:
                    self._requant_cache = cache
        return cache[1], cache[2]

    def forward_int8(self, x_q: Int8Array, output_scale: Optional[Real] = None,
                     output_zero_point: Optional[Integer] = None) -> Int8Array:
        """Integer-only inference: int8 in, int8 out, no float in the loop.

        The int32 accumulators (zero point and bias included, as in
        :meth:`forward_quantized`) are requantized per output channel with the fixed-point
        multiplier and shift of ``weight_scale · input_scale / output_scale`` computed as
        TFLite computes it from the float32 scales (:func:`requant_real_multiplier`: the
        per-tensor product in float32, per-channel in float64; then ``QuantizeMultiplier``),
        gemmlowp
        ``SaturatingRoundingDoublingHighMul`` + ``RoundingDivideByPOT`` (Jacob et al. 2018),
        plus ``output_zero_point``, clamped to the output code range ([-128, 127], or the
        output quantizer's range given to :meth:`from_qat`).

        Parameters
        ----------
        x_q : ndarray of int8, flat or (batch, in_features)
        output_scale : float, optional
            The scale of the int8 *output* codes (real value = (code - zero point) ·
            output_scale). Not the :attr:`output_scale` property, which is the scale of
            the int32 accumulators (``weight_scale · input_scale``, Rust's name).
            Default: the scale of the `output_fake_quant` given to :meth:`from_qat`.
        output_zero_point : int, optional
            Zero point of the int8 output codes, in [-128, 127] (TFLite int8); default:
            the from_qat output zero point, else 0. The result is clamped to the output
            code range.

        Raises
        ------
        TypeError, ValueError
            `x_q` not int8 or of the wrong shape; `output_scale` not finite and positive;
            `output_zero_point` not an integer in [-128, 127].

        Examples
        --------
        >>> import numpy as np
        >>> from qatcore import QuantizedLinear
        >>> layer = QuantizedLinear.from_float([[1.0, -0.5]], None, 2, 1)
        >>> layer.set_input_scale(0.1)
        >>> layer.forward_int8(np.array([[20, 10]], dtype=np.int8), 0.05, 0)
        array([[30]], dtype=int8)
        """
        x2d = _check_int8_codes(x_q, self.in_features, "x_q")
        qmin, qmax = -128, 127
        if output_scale is None:
            if self._output_q is None:
                raise ValueError("output_scale is required (no output quantizer was given to "
                                 "from_qat)")
            output_scale, default_zp, (qmin, qmax) = self._output_q
        else:
            default_zp = 0 if self._output_q is None else self._output_q[1]
            output_scale = check_scale(output_scale, "output_scale")
        if output_zero_point is None:
            output_zero_point = _check_int(default_zp, "output_zero_point", -_ZP_MAX, _ZP_MAX)
        else:
            # A zero point outside the int8 codes cannot be stored by any runtime (TFLite,
            # ONNX) and saturates nearly every output.
            output_zero_point = _check_int(output_zero_point, "output_zero_point", -128, 127)
        input_scale, _, _, col_offset, _ = self._snapshot()
        mult, shift = self._requant_params(float(output_scale), input_scale)
        # One kernel call: the amx target requantizes each block as it leaves the tiles.
        kernels = _backend.kernels
        packed = self._packed_for(kernels)
        out = np.empty((x2d.shape[0], self.out_features), dtype=np.int8)
        if kernels.gemm_requant_i8(x2d, packed, self.out_features, self._wsum, col_offset,
                                   mult, shift, output_zero_point, qmin, qmax, out,
                                   self.n_threads) != 0:
            raise MemoryError("QuantizedLinear: could not allocate GEMM scratch memory")
        return out

    # ------------------------------------------------------------------ serialization
    def state_dict(self) -> Dict[str, Any]:
        """Plain numpy arrays and scalars that :meth:`from_state_dict` rebuilds from."""
        state = {
            "version": np.int32(_STATE_VERSION),
            "weights_q": np.array(self.weights_q),
            "weight_scale": np.array(self.weight_scale, dtype=np.float32),
            "bits": np.int32(self.bits),
            "per_channel": np.bool_(self.per_channel),
            "input_scale": np.float32(self.input_scale),
            "input_zero_point": np.int32(self.input_zero_point),
            "input_qrange": np.array(self._input_qrange, dtype=np.int32),
        }
        if self._input_zp_float is not None:
            state["input_zero_point_float"] = np.float32(self._input_zp_float)
        if self._bias is not None:
            state["bias"] = self._bias.copy()
        if self.bias_q is not None:
            state["bias_q"] = self.bias_q.copy()
        if self._output_q is not None:
            scale, zp, qrange = self._output_q
            state["output_quant_scale"] = np.float32(scale)
            state["output_quant_zero_point"] = np.int32(zp)
            state["output_quant_qrange"] = np.array(qrange, dtype=np.int32)
        return state

    @classmethod
    def from_state_dict(cls, state: Any, *, n_threads: Optional[Integer] = None
                        ) -> "QuantizedLinear":
        """Rebuild a layer from :meth:`state_dict` output (or a loaded ``.npz``).

        Everything is validated (dtypes, shapes, code ranges, finite positive scales) before
        anything is built; errors are ValueError/TypeError naming the key.
        """
        if not hasattr(state, "keys"):
            raise TypeError(f"state must be a mapping, got {type(state).__name__}")
        for key in ("weights_q", "weight_scale", "bits", "per_channel", "input_scale",
                    "input_zero_point", "input_qrange"):
            if key not in state:
                raise ValueError(f"state_dict: missing key {key!r}")
        if "version" in state and _state_int(state, "version", -_I32_MAX, _I32_MAX) \
                != _STATE_VERSION:
            raise ValueError(f"state_dict: unsupported version {state['version']!r}")
        wq = base_array(state["weights_q"], "state_dict['weights_q']")
        if wq.dtype != np.int8 or wq.ndim != 2 or wq.shape[0] < 1 or wq.shape[1] < 1:
            raise ValueError(f"state_dict['weights_q'] must be a non-empty 2-D int8 array, got "
                             f"{wq.dtype} {wq.shape}")
        out_features, in_features = wq.shape
        bits = _state_int(state, "bits", 2, 8)
        qmax = (1 << (bits - 1)) - 1
        if wq.size and int(np.abs(wq.astype(np.int16)).max()) > qmax:
            raise ValueError(f"state_dict['weights_q'] has codes outside [-{qmax}, {qmax}]")
        per_channel = _state_bool(state, "per_channel")
        ws = base_array(state["weight_scale"], "state_dict['weight_scale']")
        if ws.dtype.kind not in "iuf":
            raise ValueError(f"state_dict['weight_scale'] must be real, got dtype {ws.dtype}")
        ws = ws.astype(np.float32)
        weight_scale: Union[float, F32Array]
        if per_channel:
            if ws.shape != (out_features,):
                raise ValueError(f"state_dict['weight_scale'] must have shape ({out_features},)")
            if not (np.isfinite(ws).all() and (ws > 0).all()):
                raise ValueError("state_dict['weight_scale'] must be finite and positive")
            weight_scale = ws.copy()
        else:
            if ws.size != 1:
                raise ValueError("state_dict['weight_scale'] must be a scalar")
            weight_scale = check_scale(float(ws.reshape(())), "state_dict['weight_scale']")
        input_scale = check_scale(_state_float(state, "input_scale"), "state_dict['input_scale']")
        zp = _state_int(state, "input_zero_point", -_ZP_MAX, _ZP_MAX)
        zpf = None
        if "input_zero_point_float" in state:
            zpf = float(np.float32(_state_float(state, "input_zero_point_float")))
            if not abs(zpf) <= _ZP_MAX:
                raise ValueError("state_dict['input_zero_point_float'] must be finite and "
                                 f"|zp| <= {_ZP_MAX}")
        qrange = _state_qrange(state, "input_qrange")
        if len(qrange) != 2 or not -128 <= qrange[0] <= qrange[1] <= 127:
            raise ValueError("state_dict['input_qrange'] must be (qmin, qmax) within int8")
        bias = None
        if "bias" in state and state["bias"] is not None:
            bias = _finite_f32(state["bias"], "state_dict['bias']", (out_features,))
        bias_q = None
        if "bias_q" in state and state["bias_q"] is not None:
            bq = base_array(state["bias_q"], "state_dict['bias_q']")
            if bq.dtype != np.int32 or bq.shape != (out_features,):
                raise ValueError(f"state_dict['bias_q'] must be int32 of shape ({out_features},)")
            bias_q = bq.astype(np.int64)
            if bias is None:
                # Only codes were shipped: keep them, and their float value for re-quantizing.
                bias = (bq.astype(np.float32) * (np.asarray(weight_scale, dtype=np.float32)
                                                 * np.float32(input_scale))).astype(np.float32)
        output_q = None
        if "output_quant_scale" in state:
            oscale = check_scale(_state_float(state, "output_quant_scale"),
                                 "state_dict['output_quant_scale']")
            ozp = _state_int(state, "output_quant_zero_point", -_ZP_MAX, _ZP_MAX) \
                if "output_quant_zero_point" in state else 0
            orange = _state_qrange(state, "output_quant_qrange") \
                if "output_quant_qrange" in state else (-128, 127)
            if len(orange) != 2 or not -128 <= orange[0] <= orange[1] <= 127:
                raise ValueError("state_dict['output_quant_qrange'] must be (qmin, qmax) in int8")
            output_q = (oscale, ozp, orange)
        layer = cls._build(wq, weight_scale, bits, per_channel, bias, bias_q, input_scale, zp,
                           qrange, output_q, n_threads, zpf)
        return layer

    def save(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Write :meth:`state_dict` to `path` exactly, as an ``.npz`` archive.

        Unlike ``numpy.savez`` no ``.npz`` suffix is added: ``save("fc")`` writes
        ``fc`` and ``load("fc")`` reads it back (give ``"fc.npz"`` for the usual name).
        The archive is written to a temporary file beside `path` and renamed over it,
        so a failed save leaves no partial file.

        Raises
        ------
        ValueError
            `path` is an existing directory.
        TypeError
            `path` is not a str or os.PathLike.
        OSError
            The file cannot be written.
        """
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        path = os.fspath(path)
        if os.path.isdir(path):
            raise ValueError(f"path {path!r} is a directory; give a file name such as "
                             f"{os.path.join(path, 'layer.npz')!r}")
        state = self.state_dict()

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **state)

        write_atomic(path, write)

    @classmethod
    def load(cls, path: Union[str, "os.PathLike[str]"], *, n_threads: Optional[Integer] = None
             ) -> "QuantizedLinear":
        """Read a layer written by :meth:`save` from `path` exactly.

        No pickles; every member's size is checked against the archive's bytes before
        anything is allocated, and every field is validated (:meth:`from_state_dict`).
        A file written by an older qatcore as ``path + ".npz"`` (``numpy.savez`` added
        the suffix) is found when `path` itself does not exist.

        Raises
        ------
        ValueError
            A corrupt or hostile archive, or an invalid state (the key is named).
        FileNotFoundError
            Neither `path` nor ``path + ".npz"`` exists.
        """
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        path = os.fspath(path)
        if not os.path.exists(path) and os.path.isfile(path + ".npz"):
            path = path + ".npz"
        if os.path.isdir(path):
            raise ValueError(f"path {path!r} is a directory, not a saved layer")
        if not os.path.isfile(path):
            if os.path.exists(path):       # a FIFO or device would block or never end
                raise ValueError(f"path {path!r} is not a regular file")
            if os.path.lexists(path):
                raise ValueError(f"path {path!r} is a dangling symbolic link or a link loop")
            raise FileNotFoundError(f"no such file: {path!r}")
        _refuse_other_saver(path)
        state = _read_npz(path)
        return cls.from_state_dict(state, n_threads=n_threads)

    def __getstate__(self) -> Dict[str, Any]:
        with self._lock:
            state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_lock", threading.RLock())

    def __repr__(self) -> str:
        kind = "per-channel" if self.per_channel else "per-tensor"
        return (f"QuantizedLinear(in_features={self.in_features}, "
                f"out_features={self.out_features}, bits={self.bits}, {kind}, "
                f"bias={'yes' if self.bias_q is not None else 'no'})")


def activation_range(activation: Optional[str], scale: float, zero_point: int
                     ) -> Tuple[int, int]:
    """int8 output clamp ``(qmin, qmax)`` of a fused activation, as TFLite's
    ``CalculateActivationRangeQuantized`` computes it: ``[-128, 127]``; ReLU from
    ``max(-128, zp)``; ReLU6 also up to ``min(127, zp + round_half_away(6.0f / scale))``
    (float32 division)."""
    lo, hi = -128, 127
    if activation is None:
        return lo, hi
    lo = max(lo, int(zero_point))
    if activation == "relu6":
        with np.errstate(over="ignore"):
            six = _round_half_away(np.float32(6.0) / np.float32(scale))
        hi = min(hi, int(zero_point) + int(min(float(six), 2.0 ** 31)))
    return lo, hi
