"""The calibration JSON (``qatcore-calibration/1``): one schema for ``qatcore calibrate
--json`` and ``qatcore calibrate-model --json``, which ``qatcore inspect`` reads.

The document::

    format, qatcore_version, command ("calibrate" | "calibrate-model"), observer, options,
    bits, symmetric, quant_range, deploy_convention, batch_axis, merge_by_name,
    tensors: {name: entry}, errors: [one-line messages]

(``calibrate-model`` adds ``model``, ``batches`` and ``samples``.)  Every entry holds
``name, file, shape, dtype, count, batches, range, scale, zero_point`` and the integer
form ``code_dtype, qmin, qmax, deploy_scale, zero_point_int`` (see DEPLOY_CONVENTION);
a field a command cannot know (the shape of an activation inside an ONNX model) is null.
"""

from __future__ import annotations

from ._common import _Fail, _show

#: The ``format`` field of every calibration JSON qatcore writes.
FORMAT = "qatcore-calibration/1"

#: How the deployable (integer) form of a calibration is derived; written into the JSON.
DEPLOY_CONVENTION = (
    "int: q = clamp(round(x / deploy_scale) + zero_point_int, qmin, qmax) in code_dtype. "
    "Symmetric: the Rust codes, zero point 0. Asymmetric: the Rust codes [0, 2^bits-1] "
    "shifted by -2^(bits-1) into the signed range (8 bits: int8 [-128, 127], TFLite style), "
    "zero_point_int = round_half_away(zero_point) - 2^(bits-1); when the range excludes 0 "
    "(the rounded zero point falls outside the codes) the range is first widened to include "
    "0 and deploy_scale differs from scale. code_dtype is int8 up to 8 bits, else int16.")


def _deploy_qparams(obs, scale: float, zero_point: float, config) -> dict:
    """The integer form a runtime stores (TFLite, ONNX QuantizeLinear): code dtype, integer
    zero point inside the codes, code range (see DEPLOY_CONVENTION)."""
    import math

    import numpy as np

    from .. import QuantObserver

    bits = config.bits
    dtype = "int8" if bits <= 8 else "int16"
    f = lambda v: float(np.float32(v))        # noqa: E731
    if config.symmetric:
        qmax = (1 << (bits - 1)) - 1
        return {"code_dtype": dtype, "qmin": -qmax, "qmax": qmax, "deploy_scale": f(scale),
                "zero_point_int": 0}
    shift, top = 1 << (bits - 1), (1 << bits) - 1

    def half_away(v: float) -> int:
        return int(math.copysign(math.floor(abs(v) + 0.5), v))

    zp = half_away(f(zero_point))
    if not 0 <= zp <= top and obs.count:
        # 0 must be a code (runtimes store the zero point in the code dtype): widen the
        # range to include 0, as TFLite's and onnxruntime's calibrators do.
        lo, hi = obs.range()
        wide = QuantObserver("min_max")
        wide.observe(np.array([min(lo, 0.0), max(hi, 0.0)], dtype=np.float32))
        scale, zero_point = wide.compute_qparams(config)
        zp = min(max(half_away(f(zero_point)), 0), top)
    return {"code_dtype": dtype, "qmin": -shift, "qmax": top - shift,
            "deploy_scale": f(scale), "zero_point_int": zp - shift}


def tensor_entry(name, obs, batches, config, *, file=None, shape=None, dtype=None,
                 count=None) -> dict:
    """The JSON entry of one calibrated tensor (`obs`: any observer with ``range()``,
    ``count`` and ``compute_qparams``).  _Fail when its scale or zero point is not
    a finite float32 (e.g. 1-bit codes over a ±2e38 range: the scale overflows to inf):
    strict JSON has no inf/NaN, and writing null would hand a runtime a layer it cannot
    use, so such a tensor is refused, named, with its range."""
    import math

    import numpy as np

    lo, hi = obs.range()
    try:
        scale, zero_point = obs.compute_qparams(config)
    except (ValueError, OverflowError, ZeroDivisionError) as exc:
        raise _Fail(f"{_show(name)}: cannot compute the quantization parameters: {exc}") from None
    f = lambda v: float(np.float32(v))        # noqa: E731  (exact: float32 → float)
    values = {"scale": scale, "zero_point": zero_point}
    if obs.count:
        values.update(min=lo, max=hi)
    for what, v in values.items():
        with np.errstate(over="ignore", invalid="ignore"):
            finite = math.isfinite(f(v))
        if not finite:
            raise _Fail(f"{_show(name)}: {what} is {float(v)!r} for the range "
                        f"[{float(lo)!r}, {float(hi)!r}] with {config.bits}-bit "
                        f"{'symmetric' if config.symmetric else 'asymmetric'} codes (not a "
                        "finite float32: no result for this tensor)")
    try:
        deploy = _deploy_qparams(obs, scale, zero_point, config)
    except (ValueError, OverflowError) as exc:
        raise _Fail(f"{_show(name)}: cannot derive the integer quantization parameters: {exc}") from None
    if not math.isfinite(deploy["deploy_scale"]):
        raise _Fail(f"{_show(name)}: deploy_scale is {deploy['deploy_scale']!r} (not a "
                    "finite float32: no result for this tensor)")
    return {
        "name": name,
        "file": file,
        "shape": None if shape is None else list(shape),
        "dtype": dtype,
        "count": count,
        "batches": batches,
        "range": [f(lo), f(hi)] if obs.count else None,
        "scale": f(scale),
        "zero_point": f(zero_point),
        **deploy,
    }



def json_doc(command, observer, config, results, errors, *, options=None, batch_axis=None,
             merge_by_name=False, **extra) -> dict:
    """The whole document (`results`: entries from :func:`tensor_entry`; `extra`: the
    command's own top-level fields, after the common ones)."""
    from .. import __version__

    return {
        "format": FORMAT,
        "qatcore_version": __version__,
        "command": command,
        "observer": observer,
        "options": dict(options or {}),
        "bits": config.bits,
        "symmetric": config.symmetric,
        "quant_range": list(config.quant_range()),
        "deploy_convention": DEPLOY_CONVENTION,
        "batch_axis": batch_axis,
        "merge_by_name": merge_by_name,
        **extra,
        "tensors": {r["name"]: r for r in results},
        "errors": list(errors),
    }


def range_observer(lo: float, hi: float):
    """A MIN_MAX observer holding exactly the range ``(lo, hi)`` (nothing observed when it
    is not a finite, ordered pair): its qparams are those of that range, as every
    observer's are (``compute_qparams`` depends on the range only)."""
    import math

    import numpy as np

    from .. import QuantObserver

    obs = QuantObserver("min_max")
    if math.isfinite(lo) and math.isfinite(hi) and lo <= hi:
        obs.observe(np.array([lo, hi], dtype=np.float32))
    return obs
