"""Saving, loading and merging observer and fake-quantize state (JSON-safe dicts).

States come from elsewhere (files, other processes): every field is checked and a bad
state is a ``ValueError`` (``TypeError`` when it is not a dict at all) naming the field;
nothing is assigned before everything was checked, so a failed load leaves the object
unchanged.  Floats are stored as Python floats holding float32 values, which JSON text
round-trips exactly (``repr`` is the shortest exact text); ``-0.0`` survives too.
"""

from __future__ import annotations

import math
from array import array
from typing import Any, Callable, Dict, Iterable, Tuple

import numpy as np

from .config import STE_MODES, FakeQuantConfig, ObserverMethod

# This module never imports the classes it serves (not even for annotations: no circle
# with observer / fake_quantize); the objects are typed by what it reads and writes.
QuantObserver = Any
FakeQuantize = Any

State = Dict[str, Any]
_ObserverFields = Tuple[ObserverMethod, int, float, float, "array[float]"]

OBSERVER_FORMAT = "qatcore-observer/1"
FAKE_QUANTIZE_FORMAT = "qatcore-fake-quantize/1"

_F32 = np.float32
_INF = float("inf")
_MA = ObserverMethod.MOVING_AVERAGE
_OBSERVER_KEYS = {"format", "method", "count", "range", "batch_ranges"}
_FQ_KEYS = {"format", "config", "calibrating", "scale", "zero_point", "ste", "observer"}
_CONFIG_KEYS = {"bits", "symmetric", "learnable", "observer"}


# --- field checks ----------------------------------------------------------------------
def _bad(where: str, problem: str) -> ValueError:
    return ValueError(f"bad state: {where}: {problem}")


def _float32(value: Any, where: str) -> float:
    """A finite number that is exactly a float32 value, as a Python float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(where, f"expected a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise _bad(where, f"must be finite, got {v!r}")
    with np.errstate(over="ignore"):
        f = float(_F32(v))
    if f != v:
        raise _bad(where, f"{v!r} is not a float32 value")
    return v


def _int(value: Any, where: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(where, f"expected an integer, got {type(value).__name__}")
    if value < low:
        raise _bad(where, f"must be at least {low}, got {value}")
    return int(value)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(where, f"expected true or false, got {type(value).__name__}")
    return value


def _keys(state: Any, allowed: Iterable[str], required: Iterable[str], where: str) -> None:
    if not isinstance(state, dict):
        raise TypeError(f"{where} must be a dict (a state_dict()), got {type(state).__name__}")
    unknown = set(state) - set(allowed)
    if unknown:
        raise _bad(where, f"unknown keys {sorted(map(str, unknown))}")
    missing = set(required) - set(state)
    if missing:
        raise _bad(where, f"missing keys {sorted(missing)}")


def _method(value: Any, where: str) -> ObserverMethod:
    if not isinstance(value, str):
        raise _bad(where, f"expected a method name, got {type(value).__name__}")
    try:
        return ObserverMethod(value)
    except ValueError:
        names = ", ".join(m.value for m in ObserverMethod)
        raise _bad(where, f"unknown observer method {value!r}; expected one of {names}") from None


# --- QuantObserver ---------------------------------------------------------------------
def observer_state(obs: QuantObserver) -> State:
    count = obs._count
    state: State = {
        "format": OBSERVER_FORMAT,
        "method": obs._method.value,
        "count": count,
        "range": [float(obs._min), float(obs._max)] if count else None,
    }
    if obs._method is _MA:
        h = obs._history
        state["batch_ranges"] = [[h[i], h[i + 1]] for i in range(0, len(h), 2)]
    return state


def _range_pair(value: Any, where: str) -> Tuple[float, float]:
    """A ``[min, max]`` pair of float32 values with min <= max, or a ValueError at `where`."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise _bad(where, "expected [min, max]")
    lo = _float32(value[0], f"{where}[0]")
    hi = _float32(value[1], f"{where}[1]")
    if not lo <= hi:
        raise _bad(where, f"min {lo!r} is greater than max {hi!r}")
    return lo, hi


def _parse_observer_state(state: Any, where: str = "observer state") -> _ObserverFields:
    """Checked (method, count, lo, hi, history) from a state dict."""
    _keys(state, _OBSERVER_KEYS, {"format", "method", "count", "range"}, where)
    if state["format"] != OBSERVER_FORMAT:
        raise _bad(f"{where}.format", f"expected {OBSERVER_FORMAT!r}, got {state['format']!r}")
    method = _method(state["method"], f"{where}.method")
    count = _int(state["count"], f"{where}.count")
    rng = state["range"]
    if count == 0:
        if rng is not None:
            raise _bad(f"{where}.range", "must be null when count is 0")
        lo, hi = _INF, -_INF
    else:
        lo, hi = _range_pair(rng, f"{where}.range")
    history = array("f")
    if method is _MA:
        if "batch_ranges" not in state:
            raise _bad(where, "missing keys ['batch_ranges'] (needed by moving_average)")
        ranges = state["batch_ranges"]
        if not isinstance(ranges, (list, tuple)) or len(ranges) != count:
            raise _bad(f"{where}.batch_ranges", f"expected a list of {count} [min, max] pairs")
        for i, pair in enumerate(ranges):
            b_lo, b_hi = _range_pair(pair, f"{where}.batch_ranges[{i}]")
            history.append(b_lo)
            history.append(b_hi)
    elif "batch_ranges" in state:
        raise _bad(where, f"batch_ranges belongs to moving_average states, not {method.value}")
    return method, count, lo, hi, history


def _replay(observer_cls: type, method: ObserverMethod, history: "array[float]"
            ) -> QuantObserver:
    """A fresh observer (of the caller's class) of `method` fed `history`
    (MOVING_AVERAGE), for checking."""
    obs = observer_cls(method)
    for i in range(0, len(history), 2):
        obs._moving_average_step(history[i], history[i + 1])
        obs._count += 1
    return obs


def _same_bits(a: Tuple[float, float], b: Tuple[float, float]) -> bool:
    return np.array(a, _F32).tobytes() == np.array(b, _F32).tobytes()


def load_observer_state(obs: QuantObserver, state: Any, same_method: bool,
                        where: str = "observer state") -> None:
    method, count, lo, hi, history = _parse_observer_state(state, where)
    if same_method and method is not obs._method:
        raise ValueError(f"bad state: {where}.method: the state is for {method.value}, "
                         f"this observer uses {obs._method.value}")
    avg_min, avg_max = _F32(0.0), _F32(0.0)
    if method is _MA and count:
        ref = _replay(type(obs), method, history)
        if not _same_bits((ref._min, ref._max), (lo, hi)):
            raise _bad(f"{where}.range", f"[{lo!r}, {hi!r}] is not what its batch_ranges give "
                       f"([{ref._min!r}, {ref._max!r}])")
        avg_min, avg_max = ref._avg_min, ref._avg_max
    _assign(obs, method, count, lo, hi, avg_min, avg_max, history)


def _assign(obs: QuantObserver, method: ObserverMethod, count: int, lo: float, hi: float,
            avg_min: Any, avg_max: Any, history: "array[float]") -> None:
    obs._method = method
    obs._min, obs._max = lo, hi
    obs._avg_min, obs._avg_max = avg_min, avg_max
    obs._count = count
    obs._history = history
    obs._qcache = None


def merge_observer(obs: QuantObserver, other: Any) -> None:
    if not isinstance(other, type(obs)):
        raise TypeError(f"other must be a QuantObserver, got {type(other).__name__}")
    if other._method is not obs._method:
        raise ValueError(f"merge: cannot merge a {other._method.value} observer into a "
                         f"{obs._method.value} one")
    if other._count == 0:
        return
    if other is obs:
        other = other.__copy__()
    if obs._method is _MA:
        h = other._history
        for i in range(0, len(h), 2):
            obs._moving_average_step(h[i], h[i + 1])
            obs._count += 1
        obs._history.extend(h)
    else:
        # The same strict comparisons as `observe`: the first of equal extremes wins.
        if other._min < obs._min:
            obs._min = other._min
        if other._max > obs._max:
            obs._max = other._max
        obs._count += other._count
    obs._qcache = None


# --- FakeQuantize ----------------------------------------------------------------------
def config_state(config: FakeQuantConfig) -> State:
    return {"bits": config.bits, "symmetric": config.symmetric,
            "learnable": config.learnable, "observer": config.observer.value}


def parse_config(state: Any, where: str = "config") -> FakeQuantConfig:
    _keys(state, _CONFIG_KEYS, _CONFIG_KEYS, where)
    bits = _int(state["bits"], f"{where}.bits", 1)
    symmetric = _bool(state["symmetric"], f"{where}.symmetric")
    learnable = _bool(state["learnable"], f"{where}.learnable")
    method = _method(state["observer"], f"{where}.observer")
    try:
        return FakeQuantConfig(bits=bits, symmetric=symmetric, learnable=learnable, observer=method)
    except (TypeError, ValueError) as exc:
        raise _bad(where, str(exc)) from None


def fake_quantize_state(fq: FakeQuantize) -> State:
    return {
        "format": FAKE_QUANTIZE_FORMAT,
        "config": config_state(fq._config),
        "calibrating": fq._calibrating,
        "scale": float(fq.scale),
        "zero_point": float(fq.zero_point),
        "ste": fq._ste,
        "observer": observer_state(fq._observer),
    }


def parse_fake_quantize_state(state: Any, qparams: Callable[..., Tuple[float, float]]
                              ) -> Tuple[FakeQuantConfig, bool, float, float, str,
                                         _ObserverFields]:
    """Checked (config, calibrating, scale, zero_point, ste, observer fields);
    ``qparams(lo, hi, count, config)`` is the observer's qparams rule, given by the caller."""
    where = "fake_quantize state"
    _keys(state, _FQ_KEYS, _FQ_KEYS, where)
    if state["format"] != FAKE_QUANTIZE_FORMAT:
        raise _bad(f"{where}.format", f"expected {FAKE_QUANTIZE_FORMAT!r}, got {state['format']!r}")
    config = parse_config(state["config"], f"{where}.config")
    calibrating = _bool(state["calibrating"], f"{where}.calibrating")
    scale = _float32(state["scale"], f"{where}.scale")
    if not scale > 0:
        raise _bad(f"{where}.scale", f"must be positive, got {scale!r}")
    zero_point = _float32(state["zero_point"], f"{where}.zero_point")
    if config.symmetric and zero_point != 0.0:
        raise _bad(f"{where}.zero_point", f"must be 0 for a symmetric config, got {zero_point!r}")
    ste = state["ste"]
    if ste not in STE_MODES:
        raise _bad(f"{where}.ste", f"expected one of {STE_MODES}, got {ste!r}")
    obs_fields = _parse_observer_state(state["observer"], f"{where}.observer")
    method, count, lo, hi = obs_fields[:4]
    if method is not config.observer:
        raise _bad(f"{where}.observer.method", f"{method.value} does not match the config's "
                   f"observer {config.observer.value}")
    if not config.learnable:
        # Without learning the parameters are always the observer's qparams.
        want = qparams(lo, hi, count, config)
        if (scale, zero_point) != want:
            raise _bad(where, f"scale/zero_point ({scale!r}, {zero_point!r}) are not the "
                       f"observer's qparams {want!r}")
    return config, calibrating, scale, zero_point, ste, obs_fields


def load_fake_quantize_state(fq: FakeQuantize, state: Any, same_config: bool,
                             qparams: Callable[..., Tuple[float, float]]) -> None:
    config, calibrating, scale, zero_point, ste, obs_fields = parse_fake_quantize_state(
        state, qparams)
    if same_config and config != fq._config:
        raise ValueError(f"bad state: fake_quantize state.config: {config!r} differs from "
                         f"this FakeQuantize's {fq._config!r}")
    method, count, lo, hi, history = obs_fields
    avg_min = avg_max = _F32(0.0)
    if method is _MA and count:
        ref = _replay(type(fq._observer), method, history)
        if not _same_bits((ref._min, ref._max), (lo, hi)):
            raise _bad("fake_quantize state.observer.range", f"[{lo!r}, {hi!r}] is not what its "
                       f"batch_ranges give ([{ref._min!r}, {ref._max!r}])")
        avg_min, avg_max = ref._avg_min, ref._avg_max
    # Everything checked: assign (parameter arrays in place, so optimizers keep them).
    _assign(fq._observer, method, count, lo, hi, avg_min, avg_max, history)
    fq._calibrating = calibrating
    fq._scale, fq._zero_point = scale, zero_point
    fq._ste = ste
    if fq._learnable:
        fq._scale_param[0] = scale
        fq._zp_param[0] = zero_point
    fq._mask = fq._mask_shape = None
    fq._x_saved = None
