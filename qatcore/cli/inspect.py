"""``qatcore inspect``: a calibration JSON, a saved QuantizedLinear / QuantizedSequential,
or any tensor file, summarized."""

from __future__ import annotations

import os

from ._common import (
    _F32_MAX,
    EXIT_OK,
    EXIT_USAGE,
    _cell,
    _error,
    _f32,
    _Fail,
    _human_bytes,
    _io_error,
    _one_line,
    _scrub,
    _shape_text,
    _show,
    _table,
)
from .observe import memory_chunks


# --- inspect ---------------------------------------------------------------------------
def _cmd_inspect(args) -> int:
    from .readers import check_regular

    path = args.file
    try:
        check_regular(path)      # missing, symlink loop, folder, FIFO, device: refused
        low = path.lower()
        if low.endswith(".json"):
            _inspect_json(path)
        elif low.endswith(".tflite"):
            from .export import inspect_graph
            try:
                inspect_graph(path)
            except ValueError as exc:
                raise _Fail(f"{_show(path)}: {exc}") from None
        elif low.endswith((".npz", ".npy", ".safetensors")):
            import numpy as np

            with np.errstate(all="ignore"):
                _inspect_tensors(path, args.bins)
        else:
            raise _Fail(f"{_show(path)}: not a calibration .json, a saved model (.npz, "
                        f".tflite) or a tensor file")
    except _Fail as exc:
        _error(str(exc))
        return EXIT_USAGE
    except _io_error() as exc:
        _error(str(exc))
        return EXIT_USAGE
    return EXIT_OK


#: Largest calibration JSON `inspect` reads (about 400 000 tensors).
MAX_JSON_BYTES = 256 << 20


def _no_json_constant(text):
    raise ValueError(f"{text} is not valid JSON")


def _is_f32(v) -> bool:
    """`v` is a JSON number a float32 holds (finite, |v| <= float32 max)."""
    import math

    if type(v) not in (int, float):
        return False
    try:
        x = float(v)
    except OverflowError:
        return False
    return math.isfinite(x) and abs(x) <= _F32_MAX


def _inspect_json(path: str) -> None:
    import json

    from .readers import open_regular

    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_JSON_BYTES:
            raise _Fail(f"{_show(path)}: {_human_bytes(size)} is too large for a calibration "
                        f"JSON (at most {_human_bytes(MAX_JSON_BYTES)})")
        raw = f.read(MAX_JSON_BYTES + 1)
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_no_json_constant)
    except RecursionError:
        raise _Fail(f"{_show(path)}: cannot read JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Fail(f"{_show(path)}: cannot read JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("tensors"), dict):
        raise _Fail(f"{_show(path)}: not a calibration written by `qatcore calibrate --json`")

    def bad(name, what):
        return _Fail(f"{_show(path)}: not a valid calibration: tensor {_show(name)}: {what}")

    errors = doc.get("errors", [])
    if not isinstance(errors, list):      # each entry is shown escaped, whatever it is
        raise _Fail(f"{_show(path)}: not a valid calibration: errors is not a list of "
                    f"messages (got {_cell(errors, 40)})")

    def cell(v):
        return "-" if v is None else _cell(v)

    rows = []
    for name, r in doc["tensors"].items():
        if not isinstance(r, dict):
            raise bad(name, "entry is not a JSON object")
        if "scale" not in r and "min" in r and "max" in r:
            raise bad(name, "holds a range only (the JSON of qatcore.onnx.calibrate_model("
                            "json_path=...)); `qatcore calibrate-model MODEL --data DATA --json "
                            "FILE` writes the full calibration")
        for key in ("scale", "zero_point"):
            if not _is_f32(r.get(key)):
                raise bad(name, f"{key} is missing or not a finite float32 number")
        rng = r.get("range")
        if rng is None:
            rng = ["-", "-"]
        elif not (isinstance(rng, list) and len(rng) == 2 and all(_is_f32(v) for v in rng)):
            raise bad(name, "range is not null or [min, max] of finite float32 numbers")
        else:
            rng = [_f32(v) for v in rng]
        shape = r.get("shape", [])
        if shape is not None and not (isinstance(shape, list) and len(shape) <= 64
                                      and all(type(v) is int for v in shape)):
            raise bad(name, "shape is not null or a list of integers")
        rows.append([name, _shape_text(shape) if shape is not None else "-",
                     cell(r.get("dtype")), cell(r.get("batches")), rng[0], rng[1],
                     _f32(r["scale"]), _f32(r["zero_point"]), cell(r.get("zero_point_int")),
                     cell(r.get("code_dtype"))])
    kind = "symmetric" if doc.get("symmetric") else "asymmetric"
    axis = doc.get("batch_axis")
    if doc.get("command") == "calibrate-model":
        batches = (f"model {cell(doc.get('model'))}, {cell(doc.get('batches'))} batches "
                   f"({cell(doc.get('samples'))} samples)")
    else:
        batches = f"batches: {'whole tensor' if axis is None else f'axis {_cell(axis)}'}"
    print(f"calibration  {_show(path)}")
    print("  " + _one_line(
        f"observer {_cell(doc.get('observer'))}, {_cell(doc.get('bits'))}-bit {kind}, quant "
        f"range {_cell(doc.get('quant_range'))}, {batches}, "
        f"qatcore {_cell(doc.get('qatcore_version'))}"))
    print(f"  {len(rows)} tensor{'s' * (len(rows) != 1)}")
    print(_table(["tensor", "shape", "dtype", "batches", "min", "max", "scale", "zero_point",
                  "zp_int", "codes"], rows, right={3, 4, 5, 6, 7, 8}))
    for e in errors:
        print(f"  error: {_one_line(_cell(e))}")


def _read_small(ref, limit=1 << 28):
    import numpy as np

    if ref.nbytes > limit:
        return None
    if ref.random_access:
        return np.array(ref.array())
    parts = [np.array(c) for _, c in memory_chunks(ref)]
    flat = np.concatenate(parts) if parts else np.empty(0, ref.dtype)
    return flat.reshape(ref.shape, order="F" if ref.fortran_order else "C")


def _summary(ref) -> str:
    """min / max / mean of a tensor, chunk by chunk (float64 sums)."""
    import numpy as np

    if ref.size == 0:
        return "empty"
    if ref.kind == "bad":
        return f"(values not summarized: dtype {ref.dtype})"
    lo, hi, s, nonfinite = np.inf, -np.inf, 0.0, 0
    for _, chunk in memory_chunks(ref):
        c = ref.to_float32(chunk) if ref.bfloat16 else chunk
        c64 = c.astype(np.float64)
        fin = np.isfinite(c64)
        if not fin.all():
            nonfinite += int((~fin).sum())
            c64 = c64[fin]
        if c64.size:
            lo, hi, s = min(lo, c64.min()), max(hi, c64.max()), s + c64.sum()
    n = ref.size - nonfinite
    text = f"min {lo:.6g}  max {hi:.6g}  mean {s / n:.6g}" if n else "no finite values"
    if nonfinite:
        text += f"  ({nonfinite} non-finite)"
    return text


def _histogram_lines(codes, qmax: int, bins: int):
    import numpy as np

    codes = np.asarray(codes).reshape(-1).astype(np.int64)
    lo = -qmax if codes.size == 0 or codes.min() < 0 else 0
    hi = qmax if lo < 0 else max(qmax, int(codes.max()) if codes.size else qmax)
    edges = np.linspace(lo, hi + 1, bins + 1)
    counts, _ = np.histogram(codes, bins=edges)
    peak = max(int(counts.max()), 1) if counts.size else 1
    out = []
    for i, c in enumerate(counts):
        a, b = int(np.ceil(edges[i])), int(np.ceil(edges[i + 1])) - 1
        bar = "#" * int(round(30 * c / peak))
        out.append(f"    [{a:5d}, {b:5d}]  {bar:30s} {int(c):10d}  {100 * c / max(codes.size, 1):5.1f}%")
    return out


def _inspect_tensors(path: str, bins: int) -> None:
    from .readers import open_tensors

    refs = open_tensors(path)
    members = {r.name.rsplit(":", 1)[-1] if r.name != path else os.path.basename(path): r for r in refs}
    if "weights_q" in members and "weight_scale" in members:
        _inspect_linear(path, members, bins)
        return
    if "graph" in members and "tensor_scales" in members:    # a QuantizedModel
        from .export import inspect_graph
        try:
            inspect_graph(path)
        except ValueError as exc:
            raise _Fail(str(exc)) from None
        return
    if "format" in members and "activations" in members:     # a QuantizedSequential
        from .export import inspect_sequential
        try:
            inspect_sequential(path)
        except ValueError as exc:
            raise _Fail(str(exc)) from None
        return
    print(f"{_show(path)}: {len(refs)} tensor{'s' * (len(refs) != 1)}")
    rows = []
    for key, r in members.items():
        rows.append([key, _shape_text(r.shape), r.dtype_name, _human_bytes(r.nbytes),
                     "stored" if r.random_access else "deflated", _summary(r)])
    print(_table(["tensor", "shape", "dtype", "size", "storage", "values"], rows))


def _scalar(members, key, default=None):
    import numpy as np

    r = members.get(key)
    if r is None:
        return default
    a = _read_small(r)
    if a is None or a.size != 1:
        return default
    v = a.reshape(-1)[0]
    return v.item() if isinstance(v, np.generic) else v


def _scales_text(a) -> str:
    import numpy as np

    a = np.asarray(a, dtype=np.float32).reshape(-1)
    if a.size == 1:
        return _f32(a[0])
    return (f"per channel ({a.size}): min {_f32(a.min())}  median {_f32(np.median(a))}  "
            f"max {_f32(a.max())}")


def _inspect_linear(path: str, members, bins: int) -> None:
    """A QuantizedLinear saved with ``.save(path)`` (keys of ``state_dict()``): weights_q
    (out_features, in_features) int8, weight_scale (scalar or per output channel), bits,
    input_scale / input_zero_point / input_qrange, bias_q int32, optional output_quant_*."""
    import numpy as np

    import qatcore

    loader = getattr(getattr(qatcore, "QuantizedLinear", None), "load", None)
    if loader is not None:
        try:
            loader(path)
        except MemoryError:
            raise _Fail(f"{_show(path)}: not a valid QuantizedLinear: too large to load") from None
        except Exception as exc:        # a hostile file may fail anywhere in np.load
            raise _Fail(f"{_show(path)}: not a valid QuantizedLinear: "
                        f"{type(exc).__name__}: {exc}") from None
    wq = _read_small(members["weights_q"], limit=1 << 31)
    if wq is None or wq.ndim != 2:
        raise _Fail(f"{_show(path)}: weights_q is not a 2-D array")
    out_f, in_f = wq.shape
    ws = _read_small(members["weight_scale"])
    bits = _scalar(members, "bits", 8)
    if type(bits) is not int or not 1 <= bits <= 8:
        raise _Fail(f"{_show(path)}: not a valid QuantizedLinear: bits {bits!r} is not an "
                    "integer in [1, 8]")
    qmax = (1 << (bits - 1)) - 1
    input_scale = _scalar(members, "input_scale", 1.0)
    out_scale = np.asarray(ws, dtype=np.float32) * np.float32(input_scale)
    per_channel = bool(_scalar(members, "per_channel", np.asarray(ws).size > 1))
    info = [("in_features", in_f), ("out_features", out_f), ("bits", bits),
            ("weights_q", f"{members['weights_q'].dtype_name} {_shape_text(wq.shape)}, "
                          f"{'per-channel' if per_channel else 'per-tensor'} symmetric"),
            ("weight_scale", _scales_text(ws)),
            ("input_scale", _f32(input_scale)),
            ("output_scale", _scales_text(out_scale)
             + "  (of the int32 accumulators: weight_scale · input_scale)")]
    if "input_zero_point" in members:
        qr = _read_small(members["input_qrange"]) if "input_qrange" in members else None
        notes = []
        zpf = _scalar(members, "input_zero_point_float")
        if zpf is not None:
            notes.append(f"float {_f32(zpf)} in the uint8 input quantizer")
        if qr is not None and qr.size == 2:
            notes.append(f"input codes {int(qr.reshape(-1)[0])}..{int(qr.reshape(-1)[1])}")
        info.append(("input_zero_point", f"{_scalar(members, 'input_zero_point')}"
                     + (f"  ({', '.join(notes)})" if notes else "")))
    if "bias_q" in members:
        b = _read_small(members["bias_q"]).reshape(-1).astype(np.int64)
        info.append(("bias_q", f"{members['bias_q'].dtype_name} {_shape_text(b.shape)}, "
                     f"min {b.min()}  max {b.max()}" if b.size else "empty"))
    else:
        info.append(("bias_q", "none"))
    if "output_quant_scale" in members:
        info.append(("int8 output", f"scale {_f32(_scalar(members, 'output_quant_scale'))}, "
                     f"zero point {_scalar(members, 'output_quant_zero_point', 0)}  "
                     f"(forward_int8's default output_scale / output_zero_point)"))
    shown = {"weights_q", "weight_scale", "bits", "per_channel", "input_scale",
             "input_zero_point", "input_zero_point_float", "input_qrange", "bias_q", "bias", "version",
             "output_quant_scale", "output_quant_zero_point", "output_quant_qrange"}
    for key, r in members.items():
        if key not in shown:
            info.append((_show(key), f"{r.dtype_name} {_shape_text(r.shape)}"))
    print(f"QuantizedLinear  {_show(path)}")     # everything read: no partial output
    w = max(len(k) for k, _ in info)
    for k, v in info:
        print(f"  {k.ljust(w)}  {_scrub(v)}")
    flat = wq.reshape(-1).astype(np.int64)
    if flat.size == 0:
        print("  weight codes: none (empty weights)")
        return
    sat = np.count_nonzero(np.abs(flat) >= qmax)
    print(f"  weight codes: mean |q| {np.abs(flat).mean():.2f}, zeros "
          f"{100 * np.count_nonzero(flat == 0) / flat.size:.1f}%, at ±{qmax} "
          f"{100 * sat / flat.size:.2f}%, {np.unique(flat).size} of {2 * qmax + 1} levels used")
    lo = -qmax if flat.size == 0 or flat.min() < 0 else 0
    print(f"  weight code histogram ({bins} bins over [{lo}, {qmax}]):")
    for line in _histogram_lines(flat, qmax, bins):
        print(line)
