"""``qatcore calibrate-model``: calibrate an ONNX model in onnxruntime, write JSON / QDQ."""

from __future__ import annotations

import argparse
import json
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
    from .onnx_calibrate import METHODS

    p = argparse.ArgumentParser(
        prog="qatcore calibrate-model", epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run an ONNX model in onnxruntime over calibration inputs, observe every "
                    "activation (memory bounded by one batch) and write the ranges as JSON "
                    "and/or the static int8 QDQ model.")
    p.add_argument("model", help="the float ONNX model")
    p.add_argument("--data", required=True, metavar="PATH", help="folder or .npy/.npz file")
    p.add_argument("--method", default="min_max", choices=METHODS,
                   help="range method (default: min_max)")
    p.add_argument("--percentile", type=float, default=99.999, help="for --method percentile")
    p.add_argument("--symmetric", action="store_true",
                   help="percentile of |x| (default: one cut per side)")
    p.add_argument("--bins", type=int, default=2048, help="histogram bins, a power of two")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None)
    p.add_argument("--image-mean", type=float, nargs=3, default=(0.5, 0.5, 0.5))
    p.add_argument("--image-std", type=float, nargs=3, default=(0.5, 0.5, 0.5))
    p.add_argument("--json", dest="json_path", metavar="FILE", help="write the calibration JSON")
    p.add_argument("--qdq", dest="qdq_path", metavar="OUT.onnx", help="write the QDQ int8 model")
    p.add_argument("--per-tensor-weights", action="store_true",
                   help="one weight scale per tensor instead of per output channel")
    p.add_argument("--no-preprocess", action="store_true",
                   help="skip onnxruntime's quant_pre_process (graph optimizations)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line, no summary")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        from .onnx_calibrate import calibrate_model
        result = calibrate_model(
            args.model, args.data, method=args.method, percentile=args.percentile,
            symmetric=args.symmetric, bins=args.bins, image_size=args.image_size,
            image_mean=tuple(args.image_mean), image_std=tuple(args.image_std),
            json_path=args.json_path, qdq_path=args.qdq_path,
            per_channel=not args.per_tensor_weights, preprocess=not args.no_preprocess,
            progress=not args.quiet and sys.stderr.isatty())
    except (ValueError, TypeError, ImportError, OSError) as exc:
        print(f"qatcore: error: calibrate-model: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, (ValueError, TypeError)) else EXIT_FAIL
    if not args.quiet:
        print(f"calibrated {len(result)} tensors of {args.model} over {result.batches} batches "
              f"({result.samples} samples) with {args.method} in {result.seconds:.2f} s")
        if args.json_path:
            print(f"ranges: {args.json_path}")
        if args.qdq_path:
            print(f"QDQ model: {args.qdq_path}")
        if not args.json_path and not args.qdq_path:
            json.dump(result.to_json()["tensors"], sys.stdout, indent=1)
            print()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
