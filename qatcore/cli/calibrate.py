"""``qatcore calibrate``: ranges, scales and zero points of tensor files, as the public
API computes them, in a table and a calibration JSON."""

from __future__ import annotations

import os
import sys
import threading
import time

from ._common import (
    EXIT_INTERRUPT,
    EXIT_OK,
    EXIT_USAGE,
    _check_output,
    _cpu_count,
    _dumps,
    _error,
    _f32,
    _Fail,
    _human_bytes,
    _io_error,
    _Progress,
    _shape_text,
    _show,
    _table,
    _Terminated,
    _warn,
    _write_json_atomic,
)
from .observe import _calibrate_one


def _preflight(args):
    """Discover and open every input; returns (refs, errors).  Each error is a one-line
    message; warnings (integer dtypes) are printed here."""
    from .readers import InputError, discover, open_tensors

    refs, errors = [], []
    files, seen = [], set()
    for p in args.paths:
        try:
            files.extend(discover([p], seen))
        except InputError as exc:
            errors.append(str(exc))
    for f in files:
        try:
            opened = open_tensors(f)
        except InputError as exc:
            errors.append(str(exc))
            continue
        for ref in opened:
            if ref.kind == "bad":
                what = ("complex numbers" if ref.dtype.kind == "c" else
                        "structured records" if ref.dtype.kind == "V" else
                        "strings" if ref.dtype.kind in "SU" else f"kind {ref.dtype.kind!r}")
                errors.append(f"{_show(ref.name)}: dtype {ref.dtype} is not supported ({what}; "
                              "calibration needs real numbers)")
                continue
            if args.batch_axis is not None and not -len(ref.shape) <= args.batch_axis < len(ref.shape):
                errors.append(f"{_show(ref.name)}: --batch-axis {args.batch_axis} is out of range for "
                              f"a tensor of shape {ref.shape}")
                continue
            if ref.kind == "int" and not args.quiet:
                _warn(f"{_show(ref.name)}: {ref.dtype_name} values converted to float32")
            refs.append(ref)
    return refs, errors


def _cmd_calibrate(args) -> int:
    import signal

    from .. import _backend
    from ..config import FakeQuantConfig

    try:
        config = FakeQuantConfig(bits=args.bits, symmetric=args.symmetric, observer=args.observer)
    except (TypeError, ValueError) as exc:
        _error(f"--bits: {exc}")
        return EXIT_USAGE
    try:
        n_threads = _backend.check_threads(
            args.threads if args.threads is not None else min(_cpu_count(), 64), "--threads")
    except (TypeError, ValueError) as exc:
        _error(str(exc))
        return EXIT_USAGE

    json_path = args.json_path
    try:
        if json_path not in (None, "-"):
            _check_output(json_path)
    except _Fail as exc:
        _error(str(exc))
        return EXIT_USAGE

    def on_term(signum, frame):
        raise _Terminated()

    old_term = signal.signal(signal.SIGTERM, on_term) if threading.current_thread() is threading.main_thread() else None
    progress = None
    close_dask = None
    try:
        refs, errors = _preflight(args)
        for msg in errors:
            _error(msg)
        if errors and not args.keep_going:
            return EXIT_USAGE

        show_progress = not args.quiet and sys.stderr.isatty()
        progress = _Progress(sum(r.nbytes for r in refs), show_progress)
        results = []
        t0 = time.perf_counter()
        calibrate_one = _calibrate_one
        if getattr(args, "dask_workers", None) is not None or getattr(args, "scheduler", None) is not None:
            from .calibrate_dask import dask_calibrator  # everything runs here, on the cluster

            progress.label = "dask"
            try:
                calibrate_one, close_dask = dask_calibrator(args, refs, config, progress)
            except _Fail as exc:
                progress.error(str(exc))
                return EXIT_USAGE
        groups = _merge_groups(refs) if args.merge_by_name else [(None, [r]) for r in refs]
        for key, members in groups:
            obs, batches, failed = None, 0, False
            for ref in members:
                progress.label = _show(os.path.basename(ref.name))
                try:
                    obs, nb = calibrate_one(ref, config, args.batch_axis, n_threads, progress,
                                            obs)
                except (_Fail, _io_error()) as exc:
                    progress.error(str(exc))
                    errors.append(str(exc))
                    if not args.keep_going:
                        return EXIT_USAGE
                    failed = True       # a merged tensor is reported whole or not at all
                    break
                batches += nb
            if failed:
                continue
            try:
                result = _result(members[0], obs, batches, config)
            except _Fail as exc:
                progress.error(str(exc))
                errors.append(str(exc))
                if not args.keep_going:
                    return EXIT_USAGE
                continue
            if key is not None:
                result.update(_merged_fields(key, members))
            results.append(result)
        elapsed = time.perf_counter() - t0
        progress.close()

        doc = _json_doc(config, args.batch_axis, n_threads, results, errors,
                        args.merge_by_name)
        if json_path == "-":
            sys.stdout.write(_dumps(doc) + "\n")
        elif not args.quiet:
            _print_table(results)
        if json_path not in (None, "-"):
            try:
                _write_json_atomic(json_path, doc)
            except OSError as exc:
                _error(f"{_show(json_path)}: cannot write the JSON output: {exc.strerror or exc}")
                return EXIT_USAGE
        if not args.quiet:
            nbytes = sum(r.nbytes for r in refs)
            rate = nbytes / elapsed / 1e9 if elapsed > 0 else float("inf")
            print(f"qatcore: calibrated {len(results)} tensor{'s' * (len(results) != 1)} "
                  f"({_human_bytes(nbytes)}) in {elapsed:.3f} s, {rate:.2f} GB/s "
                  f"[{config.observer.value}, {n_threads} thread{'s' * (n_threads != 1)}, "
                  f"{_backend.kernels.TARGET} kernels]", file=sys.stderr)
        return EXIT_USAGE if errors else EXIT_OK
    except KeyboardInterrupt as exc:
        if progress is not None:
            progress.close()
        _error("terminated" if isinstance(exc, _Terminated) else "interrupted")
        return 143 if isinstance(exc, _Terminated) else EXIT_INTERRUPT
    finally:
        if progress is not None:
            progress.close()
        if close_dask is not None:
            close_dask()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


def _merge_key(ref) -> str:
    """The name `--merge-by-name` groups by: the member name in a .npz/.safetensors file, the
    file name without ``.npy`` for a .npy file."""
    if ref.name != ref.path and ref.name.startswith(ref.path + ":"):
        return ref.name[len(ref.path) + 1:]
    base = os.path.basename(ref.path)
    return base[:-4] if base.lower().endswith(".npy") else base


def _merge_groups(refs):
    """[(name, [refs in file order])] in order of first appearance."""
    groups: dict = {}
    for ref in refs:
        groups.setdefault(_merge_key(ref), []).append(ref)
    return list(groups.items())


def _merged_fields(key, members) -> dict:
    shapes = {tuple(r.shape) for r in members}
    dtypes = {r.dtype_name for r in members}
    return {
        "name": key,
        "files": [r.path for r in members],
        "shape": list(members[0].shape) if len(shapes) == 1 else None,
        "dtype": members[0].dtype_name if len(dtypes) == 1 else "mixed",
        "count": sum(r.size for r in members),
    }


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


def _result(ref, obs, batches, config) -> dict:
    """The JSON entry of one calibrated tensor.  _Fail when its scale or zero point is not
    a finite float32 (e.g. 1-bit codes over a ±2e38 range: the scale overflows to inf):
    strict JSON has no inf/NaN, and writing null would hand a runtime a layer it cannot
    use, so such a tensor is refused, named, with its range."""
    import math

    import numpy as np

    lo, hi = obs.range()
    try:
        scale, zero_point = obs.compute_qparams(config)
    except (ValueError, OverflowError, ZeroDivisionError) as exc:
        raise _Fail(f"{_show(ref.name)}: cannot compute the quantization parameters: {exc}") from None
    f = lambda v: float(np.float32(v))        # noqa: E731  (exact: float32 → float)
    values = {"scale": scale, "zero_point": zero_point}
    if obs.count:
        values.update(min=lo, max=hi)
    for what, v in values.items():
        with np.errstate(over="ignore", invalid="ignore"):
            finite = math.isfinite(f(v))
        if not finite:
            raise _Fail(f"{_show(ref.name)}: {what} is {float(v)!r} for the range "
                        f"[{float(lo)!r}, {float(hi)!r}] with {config.bits}-bit "
                        f"{'symmetric' if config.symmetric else 'asymmetric'} codes (not a "
                        "finite float32: no result for this tensor)")
    try:
        deploy = _deploy_qparams(obs, scale, zero_point, config)
    except (ValueError, OverflowError) as exc:
        raise _Fail(f"{_show(ref.name)}: cannot derive the integer quantization parameters: {exc}") from None
    if not math.isfinite(deploy["deploy_scale"]):
        raise _Fail(f"{_show(ref.name)}: deploy_scale is {deploy['deploy_scale']!r} (not a "
                    "finite float32: no result for this tensor)")
    return {
        "name": ref.name,
        "file": ref.path,
        "shape": list(ref.shape),
        "dtype": ref.dtype_name,
        "count": ref.size,
        "batches": batches,
        "range": [f(lo), f(hi)] if obs.count else None,
        "scale": f(scale),
        "zero_point": f(zero_point),
        **deploy,
    }


def _json_doc(config, batch_axis, n_threads, results, errors, merge_by_name=False) -> dict:
    from .. import __version__

    return {
        "format": "qatcore-calibration/1",
        "qatcore_version": __version__,
        "observer": config.observer.value,
        "bits": config.bits,
        "symmetric": config.symmetric,
        "quant_range": list(config.quant_range()),
        "deploy_convention": DEPLOY_CONVENTION,
        "batch_axis": batch_axis,
        "merge_by_name": merge_by_name,
        "tensors": {r["name"]: r for r in results},
        "errors": list(errors),
    }


def _print_table(results) -> None:
    rows = []
    for r in results:
        lo, hi = r["range"] if r["range"] else ("-", "-")
        rows.append([r["name"], _shape_text(r["shape"]), r["dtype"],
                     _f32(lo) if lo != "-" else lo, _f32(hi) if hi != "-" else hi,
                     _f32(r["scale"]), _f32(r["zero_point"])])
    print(_table(["tensor", "shape", "dtype", "min", "max", "scale", "zero_point"], rows,
                 right={3, 4, 5, 6}))
