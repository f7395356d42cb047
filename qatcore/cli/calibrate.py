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
from ._calibration import json_doc, tensor_entry
from .observe import _calibrate_one

#: ``--observer`` values that are :class:`qatcore.HistogramObserver` methods
#: (``hist_percentile``: its percentile of the whole stream, as ChannelObserver names it;
#: ``percentile`` stays QuantObserver's 0.1 % / 99.9 % order statistics).
HISTOGRAM_OBSERVERS = {"entropy": "entropy", "entropy_signed": "entropy_signed",
                       "mse": "mse", "hist_percentile": "percentile"}


def _result(ref, obs, batches, config) -> dict:
    """The JSON entry of one calibrated tensor (_Fail when it has no finite result)."""
    return tensor_entry(ref.name, obs, batches, config, file=ref.path, shape=ref.shape,
                        dtype=ref.dtype_name, count=ref.size)


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
        args.file_stats[f] = _file_stat(f)
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


def _file_stat(path):
    """What tells a file changed: size, modification time, inode (None if unreadable)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev


def _check_unchanged(args, ref) -> None:
    """_Fail when `ref`'s file was truncated or rewritten since the preflight read its
    header: a read that happened to end before the cut, or a file rewritten in place
    (``np.save`` truncates, then writes), would otherwise give a result for data that is
    no longer, or never wholly was, in the file."""
    before = args.file_stats.get(ref.path)
    now = _file_stat(ref.path)
    if before is None or now == before:
        return
    if now is None:
        what = "disappeared"
    elif now[0] < before[0]:
        what = f"was truncated from {before[0]} to {now[0]} bytes"
    else:
        what = "was modified"
    raise _Fail(f"{_show(ref.path)}: the file {what} while being read (by another "
                "process?): no result for it")


def _cmd_calibrate(args) -> int:
    import signal

    from .. import _backend
    from ..config import FakeQuantConfig

    hist = HISTOGRAM_OBSERVERS.get(args.observer)
    try:
        config = FakeQuantConfig(bits=args.bits, symmetric=args.symmetric,
                                 observer="min_max" if hist else args.observer)
    except (TypeError, ValueError) as exc:
        _error(f"--bits: {exc}")
        return EXIT_USAGE
    options = {}
    if hist is not None:
        from .. import HistogramObserver

        options = {"bins": 2048 if args.bins is None else args.bins}
        if hist == "percentile":
            # |x| for symmetric codes (one threshold), one cut per side otherwise
            options.update(percentile=99.99 if args.percentile is None else args.percentile,
                           symmetric=args.symmetric)
        try:
            HistogramObserver(hist, **options)          # the options, checked now
        except (TypeError, ValueError) as exc:
            _error(f"--observer {args.observer}: {exc}")
            return EXIT_USAGE
        if getattr(args, "dask_workers", None) is not None or getattr(args, "scheduler", None) is not None:
            _error(f"--observer {args.observer}: histogram methods run in-process only (drop "
                   "--dask-workers/--scheduler)")
            return EXIT_USAGE
    elif args.percentile is not None or args.bins is not None:
        _error("--percentile and --bins apply to the histogram observers only (entropy, "
               "entropy_signed, mse, hist_percentile)")
        return EXIT_USAGE
    args.histogram = (hist, options) if hist is not None else None
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

    args.file_stats = {}

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
            if args.histogram is not None:
                from .. import HistogramObserver

                # Fed like MIN_MAX, chunk by chunk: a HistogramObserver's histogram does
                # not depend on how the stream was split (qatcore.histogram, "Exact merge").
                obs = HistogramObserver(args.histogram[0], n_threads=n_threads,
                                        **args.histogram[1])
            for ref in members:
                progress.label = _show(os.path.basename(ref.name))
                try:
                    obs, nb = calibrate_one(ref, config, args.batch_axis, n_threads, progress,
                                            obs)
                    _check_unchanged(args, ref)
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
                if obs is None or obs.count == 0:
                    # An empty tensor has no range: a scale of 1.0 from nothing would be
                    # a made-up result that a runtime then trusts.
                    shapes = ", ".join(_shape_text(r.shape) for r in members)
                    raise _Fail(f"{_show(key if key is not None else members[0].name)}: "
                                f"no values (shape {shapes}): an empty tensor has no range "
                                "to calibrate")
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

        doc = json_doc("calibrate", args.observer, config, results, errors, options=options,
                       batch_axis=args.batch_axis, merge_by_name=args.merge_by_name)
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
                  f"[{args.observer}, {n_threads} thread{'s' * (n_threads != 1)}, "
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


def _print_table(results) -> None:
    rows = []
    for r in results:
        lo, hi = r["range"] if r["range"] else ("-", "-")
        rows.append([r["name"], _shape_text(r["shape"]), r["dtype"],
                     _f32(lo) if lo != "-" else lo, _f32(hi) if hi != "-" else hi,
                     _f32(r["scale"]), _f32(r["zero_point"])])
    print(_table(["tensor", "shape", "dtype", "min", "max", "scale", "zero_point"], rows,
                 right={3, 4, 5, 6}))
