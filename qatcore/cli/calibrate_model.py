"""``qatcore calibrate-model``: calibrate an ONNX model in onnxruntime, write JSON / QDQ."""

from __future__ import annotations

import argparse
import sys

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

_EPILOG = """\
examples:
  qatcore calibrate-model model.onnx --data samples/ --method percentile --json ranges.json
  qatcore calibrate-model model.onnx --data lines/ --image-size 48 192 --qdq model.int8.onnx

data: a folder of .npy (one batch of the single input) / .npz (one array per input name)
files or of images (RGB, resized to --image-size or the model's fixed H x W, x/255, then
(x - mean) / std per channel, NCHW, one image per batch), or one .npy/.npz file.
needs: pip install "qatcore[onnx]" (and Pillow for images).
"""


def _parser():
    from ..onnx import METHODS

    p = argparse.ArgumentParser(
        prog="qatcore calibrate-model", epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run an ONNX model in onnxruntime over calibration inputs, observe every "
                    "activation (memory bounded by one batch) and write the ranges as JSON "
                    "and/or the static int8 QDQ model.")
    p.add_argument("model", help="the float ONNX model")
    p.add_argument("--data", required=True, metavar="PATH", help="folder or .npy/.npz file")
    p.add_argument("--method", default="auto", choices=METHODS,
                   help="range method (default: auto: per tensor, the min/max or percentile "
                        "range of least int8 error)")
    p.add_argument("--percentile", type=float, default=99.999, help="for --method percentile")
    p.add_argument("--symmetric", action="store_true",
                   help="percentile of |x| (default: one cut per side)")
    p.add_argument("--bins", type=int, default=2048, help="histogram bins, a power of two")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None)
    p.add_argument("--image-mean", type=float, nargs=3, default=(0.5, 0.5, 0.5))
    p.add_argument("--image-std", type=float, nargs=3, default=(0.5, 0.5, 0.5))
    p.add_argument("--json", dest="json_path", metavar="FILE",
                   help="write the calibration JSON (the schema of `qatcore calibrate --json`) "
                        "to FILE, '-' for stdout (also the default when neither --json nor "
                        "--qdq is given)")
    p.add_argument("--qdq", dest="qdq_path", metavar="OUT.onnx", help="write the QDQ int8 model")
    p.add_argument("--qdq-writer", choices=("qatcore", "onnxruntime"), default="qatcore",
                   help="qatcore: its own placement (quantizers where an int8 runtime reads "
                        "codes; default); onnxruntime: quantize_static fed these ranges")
    p.add_argument("--preset", choices=("auto", "cnn", "transformer"), default="auto",
                   help="placement preset of the qatcore writer (auto: transformer when the "
                        "graph has attention, else cnn)")
    p.add_argument("--quantize-fragile", action="store_true",
                   help="also quantize Softmax/Sigmoid/HardSigmoid inputs and the model output")
    p.add_argument("--max-clip", type=float, default=0.001, metavar="SHARE",
                   help="share of observed values a range may clip before a clipping method "
                        "falls back to the 99.99th percentile (default 0.001)")
    p.add_argument("--bias-correction", action=argparse.BooleanOptionalAction, default=None,
                   help="shift each quantized conv/gemm bias by its mean output error per "
                        "channel on the calibration data (one more pass; default off: +5 dB "
                        "on the PP-OCRv4 recognizer, -3 dB on its detector)")
    p.add_argument("--sensitivity", action="store_true",
                   help="rank the quantized layers by the output SQNR each costs alone")
    p.add_argument("--keep-float-worst", type=int, default=0, metavar="K",
                   help="leave the K layers that cost the most float (implies --sensitivity)")
    p.add_argument("--report", metavar="DIR",
                   help="write DIR/index.html: per-layer SQNR bars, histograms with the "
                        "chosen ranges, what was left float and why (needs matplotlib: "
                        "pip install 'qatcore[report]')")
    p.add_argument("--per-tensor-weights", action="store_true",
                   help="one weight scale per tensor instead of per output channel")
    p.add_argument("--no-preprocess", action="store_true",
                   help="skip onnxruntime's quant_pre_process (graph optimizations)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line, no summary")
    return p


def _temp_beside(path, what):
    """A fresh temporary name in `path`'s folder (so os.replace is atomic), or None for no
    output or stdout.  Errors name the user's path, never the temporary one."""
    import os
    import tempfile

    if path is None or (what == "--json" and path == "-"):
        return None
    if os.path.isdir(path):
        raise ValueError(f"{what} {path}: cannot write the output: is a directory")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{what} {path}: cannot write the output: folder {folder} does not "
                         "exist")
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".",
                                   suffix=os.path.splitext(path)[1] or ".tmp")
    except OSError as exc:
        raise ValueError(f"{what} {path}: cannot write the output: "
                         f"{exc.strerror or exc}") from None
    os.close(fd)
    return tmp


def calibration_doc(result, model) -> dict:
    """The calibration JSON of a :class:`qatcore.onnx.CalibrationResult`, in the schema of
    ``qatcore calibrate --json`` (qatcore.cli._calibration), so ``qatcore inspect`` reads
    it: the QDQ model's activations are int8 with a zero point, so the quantization
    parameters are those of 8-bit asymmetric codes (shifted to int8 in the deploy fields,
    as onnxruntime stores them)."""
    from ..config import FakeQuantConfig
    from ._calibration import json_doc, range_observer, tensor_entry
    from ._common import _Fail

    config = FakeQuantConfig(bits=8, symmetric=False)
    entries = []
    for name, (lo, hi) in sorted(result.items()):
        try:
            entries.append(tensor_entry(name, range_observer(lo, hi), result.batches, config,
                                        file=str(model)))
        except _Fail as exc:
            raise ValueError(str(exc)) from None
    return json_doc("calibrate-model", result.method, config, entries, [],
                    options=result.options, model=str(model), batches=result.batches,
                    samples=result.samples)


def _check_data(data) -> None:
    """Parse the header of every .npy/.npz the data reader will load (the files it picks:
    a folder's regular files, not recursive) with qatcore._io, which bounds every shape by
    the file's size: a tiny file claiming a 32 TiB array is one error line here instead of
    a MemoryError inside np.load.  InputError."""
    import os

    from .readers import check_regular, open_tensors

    if os.path.isdir(data):
        names = sorted(os.listdir(data))
        files = [os.path.join(data, n) for n in names
                 if n.lower().endswith((".npy", ".npz"))
                 and os.path.isfile(os.path.join(data, n))]
    elif os.path.lexists(data):
        check_regular(data)
        files = [data] if data.lower().endswith((".npy", ".npz")) else []
    else:
        files = []                      # the reader says it does not exist
    for f in files:
        open_tensors(f)


def _error(msg) -> None:
    from .readers import scrub

    print(f"qatcore: error: calibrate-model: {scrub(' '.join(str(msg).split()))}",
          file=sys.stderr, flush=True)


def main(argv=None) -> int:
    """Run ``qatcore calibrate-model``.  The JSON and QDQ outputs are written to temporary
    files beside their targets and renamed over them only when everything succeeded:
    nothing is half-written, and a failed run leaves no file behind."""
    import os

    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    tmps = {}
    try:
        from .readers import check_regular, InputError

        try:
            check_regular(args.model)     # a FIFO would block the ONNX reader forever
            _check_data(args.data)
        except InputError as exc:
            raise ValueError(str(exc)) from None
        for key, what in (("json_path", "--json"), ("qdq_path", "--qdq")):
            tmps[key] = _temp_beside(getattr(args, key), what)
        from ..onnx import calibrate_model
        result = calibrate_model(
            args.model, args.data, method=args.method, percentile=args.percentile,
            symmetric=args.symmetric, bins=args.bins, image_size=args.image_size,
            image_mean=tuple(args.image_mean), image_std=tuple(args.image_std),
            qdq_path=tmps["qdq_path"],
            per_channel=not args.per_tensor_weights, preprocess=not args.no_preprocess,
            progress=not args.quiet and sys.stderr.isatty(), max_clip=args.max_clip,
            qdq_writer=args.qdq_writer, preset=args.preset,
            quantize_fragile=args.quantize_fragile, warn=False,
            bias_correction=bool(args.bias_correction),
            sensitivity=args.sensitivity or (args.report is not None and args.qdq_path is not None),
            keep_float_worst=args.keep_float_worst, keep_histograms=args.report is not None)
        if args.report is not None:
            from ..onnx.report import write_report
            page = write_report(result, args.report)
        doc = calibration_doc(result, args.model)
        if tmps["json_path"] is not None:
            from ._common import _dumps

            with open(tmps["json_path"], "w", encoding="utf-8") as f:
                f.write(_dumps(doc) + "\n")
                f.flush()
                os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        for key, tmp in tmps.items():
            if tmp is not None:
                os.chmod(tmp, 0o666 & ~mask)
                os.replace(tmp, getattr(args, key))
                tmps[key] = None
    except KeyboardInterrupt:
        raise
    except (ImportError, MemoryError) as exc:
        _error(exc if isinstance(exc, ImportError) else "out of memory")
        return EXIT_FAIL
    except Exception as exc:
        # The model, the data files and the paths come from the user: a problem with any
        # of them (onnxruntime's own exception types included) is one line and status 2.
        text = str(exc) if isinstance(exc, (ValueError, TypeError)) else f"{type(exc).__name__}: {exc}"
        _error(text)
        return EXIT_USAGE
    finally:
        for tmp in tmps.values():
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
    for text in result.warnings:
        print(f"qatcore: warning: {text}", file=sys.stderr)
    # stdout holds the JSON only (--json -, or no output file at all); people read stderr.
    if args.json_path == "-" or (args.json_path is None and args.qdq_path is None):
        from ._common import _dumps

        sys.stdout.write(_dumps(doc) + "\n")
        sys.stdout.flush()
    if not args.quiet:
        err = sys.stderr
        print(f"qatcore: calibrated {len(result)} tensors of {args.model} over "
              f"{result.batches} batches ({result.samples} samples) with {args.method} in "
              f"{result.seconds:.2f} s", file=err)
        if args.json_path not in (None, "-"):
            print(f"qatcore: ranges: {args.json_path}", file=err)
        if args.qdq_path:
            print(f"qatcore: QDQ model: {args.qdq_path}", file=err)
            if result.placement is not None:
                print(f"qatcore: placement: {result.placement.summary()}", file=err)
        if result.sensitivity:
            worst = ", ".join(f"{k} {v:.1f} dB" for k, _, v in result.sensitivity[:5])
            print(f"qatcore: most sensitive layers (output SQNR with only that layer "
                  f"quantized): {worst}", file=err)
        if args.report is not None:
            print(f"qatcore: report: {page}", file=err)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
