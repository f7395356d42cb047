"""``qatcore export``: an integer model -- a saved :class:`qatcore.QuantizedSequential` or
:class:`qatcore.QuantizedModel` (``.npz``), or any int8 ``.tflite`` (TensorFlow's
converter's or qatcore's) -- to ``.tflite``, C or ONNX; and what ``qatcore inspect``
prints for such a file.

Errors are one line on stderr with exit status 2, and nothing is half-written: every
file goes to a temporary name in the target directory first and is renamed into place
(``os.replace``) only when complete.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from .readers import show

EXIT_OK, EXIT_USAGE, EXIT_INTERRUPT = 0, 2, 130

_EPILOG = """\
examples:
  qatcore export mlp.npz --to tflite                  # writes mlp.tflite next to mlp.npz
  qatcore export mlp.npz --to tflite --float-io --out mlp_float.tflite
  qatcore export mlp.npz --to c --out firmware/ --name mlp   # firmware/mlp.h, mlp.c, ...
  qatcore export mlp.npz --to onnx --out mlp.onnx
  qatcore export kws.tflite --to c --out firmware/ --name kws   # a converter's int8 .tflite

MODEL is a QuantizedSequential or QuantizedModel saved with .save(path), or an int8
.tflite (see `qatcore inspect MODEL`).
needs: pip install "qatcore[export]" (.tflite), "qatcore[onnx]" (ONNX).
Exit status: 0 ok, 2 bad usage, bad model or failed export (nothing written), 130
interrupted."""


class _Fail(Exception):
    """A problem phrased for the user (one line)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qatcore export", epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export an integer model (a saved .npz or an int8 .tflite) for deployment: a "
                    ".tflite for LiteRT / TensorFlow Lite Micro, C99 source for "
                    "microcontrollers, or an ONNX QDQ model for onnxruntime.")
    p.add_argument("model", metavar="MODEL",
                   help="a QuantizedSequential / QuantizedModel saved as .npz, or an int8 .tflite")
    p.add_argument("--to", required=True, choices=("tflite", "c", "onnx"), dest="fmt",
                   help="output format")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="output file (tflite, onnx; default: MODEL with the format's "
                        "suffix) or directory (c; default: MODEL's directory)")
    p.add_argument("--name", default=None,
                   help="C identifier prefix and file names for --to c (default: MODEL's "
                        "file name)")
    p.add_argument("--float-io", action="store_true",
                   help="tflite: float32 input/output (QUANTIZE / DEQUANTIZE at the ends)")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary line")
    return p


def _error(msg) -> None:
    print(f"qatcore: error: export: {' '.join(str(msg).split())}", file=sys.stderr, flush=True)


def _kind(path: str) -> str:
    """"tflite" (the flatbuffer identifier TFL3 at byte 4), "graph" (a QuantizedModel
    .npz: a ``graph`` member) or "sequential"."""
    import zipfile

    with open(path, "rb") as f:
        head = f.read(8)
    if head[4:8] == b"TFL3":
        return "tflite"
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as z:
                if "graph.npy" in z.namelist():
                    return "graph"
        except (zipfile.BadZipFile, OSError):
            pass
    return "sequential"


def _load(path: str):
    from ..model import QuantizedModel, QuantizedSequential

    if not os.path.exists(path):
        raise _Fail(f"{show(path)}: no such file")
    if os.path.isdir(path):
        raise _Fail(f"{show(path)}: is a directory")
    try:
        kind = _kind(path)
        if kind == "tflite":
            return QuantizedModel.from_tflite(path)
        if kind == "graph":
            return QuantizedModel.load(path)
        return QuantizedSequential.load(path)
    except ValueError as exc:
        what = {"tflite": "an int8 .tflite qatcore can run", "graph": "a valid QuantizedModel",
                "sequential": "a valid QuantizedSequential"}[kind]
        raise _Fail(f"not {what}: {exc}") from None
    except OSError as exc:
        raise _Fail(f"{show(path)}: cannot read: {exc.strerror or exc}") from None


def _stem(path: str) -> str:
    base = os.path.basename(path)
    for suffix in (".npz", ".tflite"):
        if base.lower().endswith(suffix):
            return base[:-len(suffix)]
    return base


def _c_name(text: str) -> str:
    """A C identifier from a file name (invalid characters become '_')."""
    name = re.sub(r"[^0-9A-Za-z_]", "_", text)
    if not name or name[0].isdigit():
        name = "model_" + name
    return name


def _check_parent(target: str) -> None:
    directory = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(directory):
        raise _Fail(f"{show(target)}: directory {show(directory)} does not exist")


# Every exporter writes its files atomically itself (qatcore._files: temporary files in
# the target folder, renamed into place only when all are complete).
# Both model classes delegate to the exporter of their kind (qatcore.export).
def _export_c(model, out_dir: str, name: str) -> list:
    import importlib

    for module in ("c", "c_graph"):          # a missing exporter fails before the mkdir
        importlib.import_module(f"qatcore.export.{module}")

    if not os.path.isdir(out_dir):
        _check_parent(out_dir)
        os.mkdir(out_dir)
    return list(model.to_c(out_dir, name))


def _export_onnx(model, target: str) -> None:
    _check_parent(target)
    model.to_onnx(target)


def _export_tflite(model, target: str, float_io: bool) -> None:
    _check_parent(target)
    model.to_tflite(target, float_io=float_io)


def main(argv=None) -> int:
    """Entry point of ``qatcore export``; returns the exit status."""
    p = _parser()
    try:
        args = p.parse_args(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        if args.float_io and args.fmt != "tflite":
            raise _Fail("--float-io applies to --to tflite only")
        if args.name is not None and args.fmt != "c":
            raise _Fail("--name applies to --to c only")
        if args.name is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", args.name):
            raise _Fail(f"--name {args.name!r} is not a C identifier")
        model = _load(args.model)
        src_dir = os.path.dirname(os.path.abspath(args.model))
        if args.fmt == "c":
            out_dir = args.out if args.out is not None else src_dir
            if os.path.exists(out_dir) and not os.path.isdir(out_dir):
                raise _Fail(f"--out {show(out_dir)}: not a directory (--to c writes a directory)")
            written = _export_c(model, out_dir, args.name or _c_name(_stem(args.model)))
        else:
            suffix = ".tflite" if args.fmt == "tflite" else ".onnx"
            target = args.out if args.out is not None else os.path.join(
                src_dir, _stem(args.model) + suffix)
            if os.path.isdir(target):
                raise _Fail(f"--out {show(target)}: is a directory (give a file name)")
            if os.path.abspath(target) == os.path.abspath(args.model):
                raise _Fail("--out would overwrite MODEL")
            if args.fmt == "tflite":
                _export_tflite(model, target, args.float_io)
            else:
                _export_onnx(model, target)
            written = [target]
    except _Fail as exc:
        _error(exc)
        return EXIT_USAGE
    except (ValueError, TypeError, ImportError) as exc:
        _error(exc)
        return EXIT_USAGE
    except OSError as exc:
        _error(f"{exc.filename or ''}: {exc.strerror or exc}" if exc.filename else exc)
        return EXIT_USAGE
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPT
    if not args.quiet:
        sizes = ", ".join(f"{w} ({os.path.getsize(w)} B)" for w in written)
        print(f"exported {model!r} to {sizes}")
    return EXIT_OK


# --------------------------------------------------------------------------- inspect

def inspect_sequential(path: str) -> None:
    """Print a saved QuantizedSequential (``qatcore inspect MODEL``); ValueError when the
    file does not validate."""
    import numpy as np

    from ..model import QuantizedSequential

    model = QuantizedSequential.load(path)
    f32 = lambda v: str(np.float32(v))       # noqa: E731
    print(f"QuantizedSequential  {show(path)}")
    print(f"  {len(model)} layers, {model.in_features} -> {model.out_features}, input "
          f"scale {f32(model.input_scale)} zero point {model.input_zero_point} (codes "
          f"{model.input_qrange[0]}..{model.input_qrange[1]}, rounded as "
          f"{model.input_numerics!r}), output scale {f32(model.output_scale)} zero point "
          f"{model.output_zero_point}")
    head = ["layer", "shape", "act", "weights", "weight scale", "bias", "out scale", "out zp",
            "clamp", "multiplier · 2^shift"]
    rows = []
    params = 0
    for i, layer in enumerate(model.layers):
        ws = np.asarray(layer.weight_scale, np.float32).reshape(-1)
        wtext = (f"int{layer.bits} " + ("per-channel" if layer.per_channel else "per-tensor"))
        stext = f32(ws[0]) if ws.size == 1 else f"{f32(ws.min())}..{f32(ws.max())}"
        btext = "none" if layer.bias_q is None else (
            f"int32 {int(layer.bias_q.min())}..{int(layer.bias_q.max())}")
        o_scale, o_zp = model.output_qparams(i)
        lo, hi = model.activation_range(i)
        mult, shift = model.requantization(i)
        real = mult.astype(np.float64) * np.exp2(shift.astype(np.float64) - 31)
        mtext = (f"{real.min():.4g}" if real.min() == real.max()
                 else f"{real.min():.4g}..{real.max():.4g}")
        rows.append([str(i), f"{layer.in_features}->{layer.out_features}",
                     model.activations[i] or "-", wtext, stext, btext, f32(o_scale), str(o_zp),
                     f"{lo}..{hi}", mtext])
        params += layer.weights_q.size + 4 * layer.out_features
    widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(head)]
    print("  " + "  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for r in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)))
    print(f"  parameters: {params} bytes (int8 weights + int32 biases); export with "
          f"`qatcore export {os.path.basename(path)} --to tflite|c|onnx`")


def inspect_graph(path: str) -> None:
    """Print a QuantizedModel saved as .npz, or an int8 .tflite read as one (``qatcore
    inspect MODEL``); ValueError when the file does not validate."""
    import numpy as np

    from ..model import QuantizedModel

    model = (QuantizedModel.from_tflite(path) if _kind(path) == "tflite"
             else QuantizedModel.load(path))
    f32 = lambda v: str(np.float32(v))       # noqa: E731
    print(f"QuantizedModel {model.name!r}  {show(path)}")
    for what, names in (("input", model.inputs), ("output", model.outputs)):
        for n in names:
            t = model.tensors[n]
            print(f"  {what} {n!r}: int8 {(None, *t.shape)}, scale {f32(t.scale)} "
                  f"zero point {t.zero_point}")
    def short(name: str, width: int = 32) -> str:     # converter names run to 200 chars
        return name if len(name) <= width else name[:width - 13] + "..." + name[-10:]

    head = ["#", "op", "inputs", "output", "shape", "scale", "zp"]
    rows = []
    for i, op in enumerate(model.ops):
        t = model.tensors[op.output]
        rows.append([str(i), op.op_type, ", ".join(short(n) for n in op.inputs),
                     short(op.output), str(t.shape), f32(t.scale), str(t.zero_point)])
    widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(head)]
    print("  " + "  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for r in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)))
    print(f"  {len(model.ops)} ops, activation arena {model.arena_bytes(1)} bytes at batch 1; "
          f"export with `qatcore export {os.path.basename(path)} --to tflite|c|onnx`")


if __name__ == "__main__":
    sys.exit(main())
