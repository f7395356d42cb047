"""The ``qatcore`` command line: the parser, the dispatch to one module per subcommand,
and the last-resort error handling (every failure is one line on stderr).

Exit status: 0 success, 2 bad usage or bad input (one line on stderr per problem, nothing
written), 130 interrupted (no partial output).
"""

from __future__ import annotations

import argparse
import os
import sys

from ._common import EXIT_FAIL, EXIT_INTERRUPT, EXIT_USAGE, _error, _short_int, _show
from .calibrate import _cmd_calibrate
from .inspect import _cmd_inspect

__all__ = ["main"]


_FORWARDED = {"bench": ("qatcore.bench", "the benchmark suite"),
              "demo": ("qatcore.demo", "the demo"),
              "examples": ("qatcore.cli.examples", "the example files writer"),
              "calibrate-model": ("qatcore.cli.calibrate_model", "whole-ONNX-model calibration"),
              "export": ("qatcore.cli.export", "the model export (.tflite, C, ONNX)")}


#: `qatcore demo --torch`: the digits demo trained in PyTorch (qatcore.torch).
_TORCH_DEMO = ("qatcore.demo.torch_mlp", "the PyTorch demo")
#: `qatcore demo --torch --cnn`: a digits CNN through PyTorch QAT to the integer graph.
_TORCH_CNN_DEMO = ("qatcore.demo.torch_cnn", "the PyTorch CNN demo")


_EPILOG = """\
examples:
  qatcore calibrate acts/ --observer percentile --json ranges.json
      calibrate every .npy/.npz/.safetensors tensor under acts/, write the ranges as JSON
  qatcore calibrate layer1.npy --batch-axis 0 --asymmetric --bits 8
      observe one batch per slice along axis 0 (Rust multi-batch semantics)
  qatcore inspect ranges.json
      show a calibration written by `calibrate --json` or `calibrate-model --json` (or a
      saved QuantizedLinear .npz)
  qatcore bench --quick --json bench.json
      run the benchmark suite on CI-sized inputs
  qatcore demo
      run the end-to-end demo (quantization-aware training to int8 inference)
  qatcore demo --torch
      the same trained in PyTorch with qatcore.torch (needs torch)
  qatcore demo --torch --cnn
      a CNN (conv-BN-ReLU, depthwise-separable, residual add) on the digits: float, PTQ,
      QAT, the integer graph and TFLM in one table
  qatcore examples DIR
      write the files these examples (and the README's) use into DIR

Run `qatcore COMMAND --help` for the options of a command."""


_CALIBRATE_EPILOG = """\
examples:
  qatcore calibrate acts.npy
  qatcore calibrate acts/ more.npz --observer percentile --json ranges.json
  qatcore calibrate layer1.npy --batch-axis 0 --asymmetric --bits 4 --threads 2
  qatcore calibrate dump.safetensors --observer mean_std --keep-going --quiet --json -
  qatcore calibrate batches/ --merge-by-name --asymmetric --json ranges.json
      (batch_000.npz:relu1, batch_001.npz:relu1, ... calibrate one tensor "relu1")

Exit status: 0 ok, 2 bad usage or bad input (nothing written), 130 interrupted."""


_INSPECT_EPILOG = """\
examples:
  qatcore inspect ranges.json      # a calibration written by `calibrate[-model] --json`
  qatcore inspect linear.npz       # a QuantizedLinear saved with .save(path)
  qatcore inspect acts.npy         # any tensor file: shapes, dtypes, value summary"""


# --- entry point -----------------------------------------------------------------------
def main(argv=None) -> int:
    """Run the ``qatcore`` command with `argv` (default ``sys.argv[1:]``); returns the exit
    status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "demo" and "--torch" in argv[1:]:
        rest = [a for a in argv[1:] if a != "--torch"]
        if "--cnn" in rest:
            return _forward("demo --torch --cnn", [a for a in rest if a != "--cnn"])
        return _forward("demo --torch", rest)
    if argv and argv[0] in _FORWARDED:
        return _forward(argv[0], argv[1:])
    parser = _build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            # A typo'd option of a command gets that command's usage, not the top-level one.
            command = _command_parser(parser, getattr(args, "command", None))
            command.error(f"unrecognized arguments: {' '.join(_show(a) for a in extra)}")
    except SystemExit as exc:          # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.func is None:
        return _forward(args.command, [])
    try:
        return args.func(args)
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPT
    except MemoryError:
        _error("out of memory")
        return EXIT_FAIL
    except BrokenPipeError:            # `qatcore ... | head` (before Exception: a subclass)
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_FAIL
    except Exception as exc:
        # Last resort: a bug must still be one line, not a traceback over the terminal
        # (QATCORE_DEBUG=1 shows it).  Bad input never gets here: it is exit status 2.
        if os.environ.get("QATCORE_DEBUG"):
            raise
        _error(f"internal error: {type(exc).__name__}: {exc} (please report it; "
               "QATCORE_DEBUG=1 shows the traceback)")
        return EXIT_FAIL


def _version_text() -> str:
    import numpy as np

    from .. import __version__, _backend

    k = _backend.kernels
    omp = "OpenMP" if getattr(k, "OPENMP", False) else "no OpenMP"
    return (f"qatcore {__version__} (kernels: {k.TARGET}, {omp}; numpy {np.__version__}; "
            f"Python {sys.version.split()[0]})")


class _VersionAction(argparse.Action):
    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version_text())
        parser.exit()


#: Upper bound of ``inspect --bins`` (8-bit codes have 255 levels; more bins only allocate).
MAX_BINS = 1024


def _bins(text: str) -> int:
    """``--bins`` value: an integer in [1, MAX_BINS] (an argument error otherwise)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not 1 <= n <= MAX_BINS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_BINS}, got {_short_int(n)}")
    return n


def _observer_name(text: str) -> str:
    """``--observer`` value: case and ``-``/``_`` do not matter (``PERCENTILE``,
    ``mean-std``), as in the Python API."""
    return text.strip().lower().replace("-", "_")


def _build_parser() -> argparse.ArgumentParser:
    import textwrap

    fmt = argparse.RawDescriptionHelpFormatter
    wrap = lambda text: textwrap.fill(text, 88)     # noqa: E731  (raw formatter: wrap here)
    parser = argparse.ArgumentParser(
        prog="qatcore", formatter_class=fmt, epilog=_EPILOG,
        description=wrap("Quantization-aware training core: calibrate activation files, "
                         "inspect quantized layers, benchmark the kernels."))
    parser.add_argument("--version", action=_VersionAction,
                        help="show the version, the CPU target of the kernels and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    cal = sub.add_parser(
        "calibrate", formatter_class=fmt, epilog=_CALIBRATE_EPILOG,
        help="compute quantization ranges, scales and zero points of tensor files",
        description=wrap("Calibrate quantizers over tensor files (.npy, .npz, .safetensors, "
                         "or folders of them) with qatcore.QuantObserver. Files are "
                         "read in bounded chunks, never loaded whole; results equal the Python API's "
                         "bit for bit. A table goes to stdout, a progress bar to stderr when "
                         "it is a terminal."))
    cal.add_argument("paths", nargs="+", metavar="PATH", help=".npy/.npz/.safetensors file or folder")
    cal.add_argument("--observer", default="min_max", type=_observer_name,
                     choices=["min_max", "percentile", "moving_average", "mean_std",
                              "entropy", "entropy_signed", "mse", "hist_percentile"],
                     help="observer method, any case, - or _ (default: min_max): a "
                          "QuantObserver method, or a HistogramObserver method (entropy, "
                          "entropy_signed, mse; hist_percentile: --percentile of the "
                          "whole stream, of |x| when --symmetric)")
    cal.add_argument("--percentile", type=float, default=None, metavar="P",
                     help="for --observer hist_percentile (default: 99.99)")
    cal.add_argument("--bins", type=int, default=None, metavar="N",
                     help="histogram bins of the histogram observers, a power of two "
                          "(default: 2048)")
    cal.add_argument("--bits", type=int, default=8, help="code width (default: 8)")
    sym = cal.add_mutually_exclusive_group()
    sym.add_argument("--symmetric", dest="symmetric", action="store_true", default=True,
                     help="symmetric codes, zero point 0 (default)")
    sym.add_argument("--asymmetric", dest="symmetric", action="store_false",
                     help="asymmetric codes [0, 2^bits-1] with a zero point")
    cal.add_argument("--batch-axis", type=int, default=None, metavar="AXIS",
                     help="observe one batch per slice along AXIS (default: the whole tensor "
                          "is one batch)")
    cal.add_argument("--threads", type=int, default=None, metavar="N",
                     help="kernel threads (default: the CPUs available to this process)")
    dist = cal.add_mutually_exclusive_group()
    dist.add_argument("--dask-workers", type=int, default=None, metavar="N",
                      help="calibrate on a local dask.distributed cluster of N worker "
                           "processes, --threads threads each (default 1; needs "
                           "qatcore[dask]); same results")
    dist.add_argument("--scheduler", default=None, metavar="ADDRESS",
                      help="calibrate on a running dask.distributed scheduler, e.g. "
                           "tcp://host:8786 (the workers must see the same files)")
    cal.add_argument("--json", dest="json_path", default=None, metavar="FILE",
                     help="also write the results as JSON to FILE ('-' for stdout, which "
                          "replaces the table); written atomically")
    cal.add_argument("--merge-by-name", action="store_true",
                     help="feed tensors of the same name in different files (batch_000.npz:"
                          "relu1, batch_001.npz:relu1, ...; a .npy file's name is its file "
                          "name without .npy) to one observer, one batch per file in file "
                          "order (Rust multi-batch semantics); reported under the name")
    cal.add_argument("--keep-going", action="store_true",
                     help="skip bad tensors and calibrate the others (exit status stays 2)")
    cal.add_argument("-q", "--quiet", action="store_true",
                     help="no table, progress bar, warnings or summary (errors still shown)")
    cal.set_defaults(func=_cmd_calibrate)

    ins = sub.add_parser(
        "inspect", formatter_class=fmt, epilog=_INSPECT_EPILOG,
        help="show a calibration JSON, a saved QuantizedLinear or a tensor file",
        description=wrap("Show what a file holds: a calibration JSON written by `calibrate "
                         "--json` or `calibrate-model --json` (scales, zero points, ranges), a QuantizedLinear saved as "
                         ".npz (shapes, scales, bit width, weight-code histogram) or any "
                         "tensor file."))
    ins.add_argument("file", metavar="FILE")
    ins.add_argument("--bins", type=_bins, default=16,
                     help=f"histogram bins, 1 to {MAX_BINS} (default: 16)")
    ins.set_defaults(func=_cmd_inspect)

    for cmd, (_, what) in _FORWARDED.items():
        p = sub.add_parser(cmd, add_help=False, help=f"run {what} (see `qatcore {cmd} --help`)")
        p.set_defaults(func=None)
    return parser


def _command_parser(parser: argparse.ArgumentParser, command) -> argparse.ArgumentParser:
    """The sub-parser of `command` (the top-level parser when there is none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return parser


def _forward(cmd: str, argv) -> int:
    import importlib

    modname, what = {"demo --torch": _TORCH_DEMO, "demo --torch --cnn": _TORCH_CNN_DEMO
                     }.get(cmd) or _FORWARDED[cmd]
    try:
        mod = importlib.import_module(modname)
    except ModuleNotFoundError as exc:
        if exc.name != modname:
            raise
        _error(f"{cmd}: {what} is not available in this installation ({modname} is missing)")
        return EXIT_USAGE
    try:
        rc = mod.main(list(argv))
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) or exc.code is None else EXIT_USAGE
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPT
    return 0 if rc is None else int(rc)

