"""The ``qatcore`` command: ``calibrate``, ``inspect``, ``bench``, ``demo``.

``calibrate`` runs the public API (:class:`qatcore.QuantObserver`,
:class:`qatcore.FakeQuantConfig`) over tensor files read in bounded chunks, so its figures are
the API's figures bit for bit.  Input files are never memory-mapped (a file truncated by
another process while mapped would kill the run with SIGBUS; a short read is one error
line instead, see qatcore._io).  How each observer is fed without loading a tensor whole:

* whole-tensor MIN_MAX: chunk by chunk (min and max are associative, so the range is
  exact; only the sign of a zero extreme may depend on the chunking, as it does on the
  thread count inside the API, and the scale and zero point never do);
* whole-tensor MOVING_AVERAGE: one batch's update depends only on that batch's min and
  max, so they are found chunk by chunk and the batch ``[min, max]`` is observed once;
* whole-tensor PERCENTILE and MEAN_STD: one ``observe`` call on the whole tensor, a
  float32 C-order copy in an unlinked temporary file of our own (made chunk by chunk,
  memory-mapped: page cache, not heap; nobody else can truncate it);
* ``--batch-axis k``: one ``observe`` call per slice along axis k (the Rust multi-batch
  semantics), each slice converted on its own: read slice by slice for axis 0 of a
  C-order tensor, otherwise from the temporary float32 copy.

Exit status: 0 success, 2 bad usage or bad input (one line on stderr per problem, nothing
written), 130 interrupted (no partial output).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

__all__ = ["main"]

#: Elements per chunk when a tensor is converted piecewise (16 MiB of float32 out).
CHUNK_ELEMS = 1 << 22
#: Elements per read when a float32 tensor is used as stored (16 MiB buffer): large enough
#: that the per-call thread start-up is noise, small enough to bound the heap.
WINDOW_ELEMS = 1 << 22

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPT = 0, 1, 2, 130

_FORWARDED = {"bench": ("qatcore._bench", "the benchmark suite"),
              "demo": ("qatcore.demo", "the demo"),
              "examples": ("qatcore._examples", "the example files writer"),
              "calibrate-model": ("qatcore._cli_model", "whole-ONNX-model calibration"),
              "export": ("qatcore._cli_export", "the model export (.tflite, C, ONNX)")}
#: `qatcore demo --torch`: the digits demo trained in PyTorch (qatcore.torch).
_TORCH_DEMO = ("qatcore._demo_torch", "the PyTorch demo")

_EPILOG = """\
examples:
  qatcore calibrate acts/ --observer percentile --json ranges.json
      calibrate every .npy/.npz/.safetensors tensor under acts/, write the ranges as JSON
  qatcore calibrate layer1.npy --batch-axis 0 --asymmetric --bits 8
      observe one batch per slice along axis 0 (Rust multi-batch semantics)
  qatcore inspect ranges.json
      show a calibration written by `calibrate --json` (or a saved QuantizedLinear .npz)
  qatcore bench --quick --json bench.json
      run the benchmark suite on CI-sized inputs
  qatcore demo
      run the end-to-end demo (quantization-aware training to int8 inference)
  qatcore demo --torch
      the same trained in PyTorch with qatcore.torch (needs torch)
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
  qatcore inspect ranges.json      # a calibration written by `calibrate --json`
  qatcore inspect linear.npz       # a QuantizedLinear saved with .save(path)
  qatcore inspect acts.npy         # any tensor file: shapes, dtypes, value summary"""


class _Fail(Exception):
    """A problem already phrased for the user (one line); exit status 2."""


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C."""


# --- entry point -----------------------------------------------------------------------
def main(argv=None) -> int:
    """Run the ``qatcore`` command with `argv` (default ``sys.argv[1:]``); returns the exit
    status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "demo" and "--torch" in argv[1:]:
        rest = [a for a in argv[1:] if a != "--torch"]
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
    except Exception as exc:
        # Last resort: a bug must still be one line, not a traceback over the terminal
        # (QATCORE_DEBUG=1 shows it).  Bad input never gets here: it is exit status 2.
        if os.environ.get("QATCORE_DEBUG"):
            raise
        _error(f"internal error: {type(exc).__name__}: {exc} (please report it; "
               "QATCORE_DEBUG=1 shows the traceback)")
        return EXIT_FAIL
    except BrokenPipeError:            # `qatcore ... | head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_FAIL


def _version_text() -> str:
    import numpy as np

    from . import __version__, _backend

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


def _short_int(n: int) -> str:
    text = str(n)
    return text if len(text) <= 30 else f"{text[:12]}...({len(text)} digits)"


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
                     choices=["min_max", "percentile", "moving_average", "mean_std"],
                     help="observer method, any case, - or _ (default: min_max)")
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
                         "--json` (scales, zero points, ranges), a QuantizedLinear saved as "
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

    modname, what = _TORCH_DEMO if cmd == "demo --torch" else _FORWARDED[cmd]
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


# --- messages --------------------------------------------------------------------------
def _one_line(text) -> str:
    """One line, every non-printable character escaped: messages quote file names and
    file contents, which must never reach the terminal raw (escape sequences)."""
    from ._io import scrub

    return scrub(" ".join(str(text).split()))


def _scrub(text) -> str:
    """`text` with its non-printable characters escaped (spacing kept)."""
    from ._io import scrub

    return scrub(text)


def _show(name) -> str:
    """A file or tensor name for a message or table cell (repr-escaped if not printable)."""
    from ._io import show

    return show(name)


def _error(msg: str) -> None:
    print(f"qatcore: error: {_one_line(msg)}", file=sys.stderr, flush=True)


def _warn(msg: str) -> None:
    print(f"qatcore: warning: {_one_line(msg)}", file=sys.stderr, flush=True)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} TiB"


def _f32(v) -> str:
    """A float32 value, shortest text that reads back to the same float32."""
    import numpy as np

    return str(np.float32(v))


# --- progress --------------------------------------------------------------------------
class _Progress:
    """``label [#####     ] 45% 450.0 MiB/1.0 GiB 2.1 GB/s ETA 0:03`` on stderr, redrawn
    by a background thread (the kernels release the GIL), only when enabled."""

    def __init__(self, total: int, enabled: bool, stream=None):
        self.total = max(int(total), 1)
        self.done = 0.0
        self.label = ""
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = None
        if enabled:
            self._thread = threading.Thread(target=self._run, name="qatcore-progress", daemon=True)
            self._thread.start()

    def advance(self, nbytes) -> None:
        self.done += nbytes

    def _run(self):
        while not self._stop.wait(0.1):
            self._draw()

    def _draw(self):
        elapsed = time.perf_counter() - self.t0
        frac = min(self.done / self.total, 1.0)
        width = 24
        fill = int(frac * width)
        bar = "#" * fill + "-" * (width - fill)
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta_s = f"{int(eta) // 60}:{int(eta) % 60:02d}" if eta == eta else "-:--"
        label = self.label if len(self.label) <= 28 else "…" + self.label[-27:]
        line = (f"\r{label:28s} [{bar}] {frac * 100:3.0f}% {_human_bytes(self.done)}/"
                f"{_human_bytes(self.total)} {rate / 1e9:.2f} GB/s ETA {eta_s}\x1b[K")
        with self._lock:
            try:
                self.stream.write(line)
                self.stream.flush()
            except (OSError, ValueError):
                pass

    def error(self, msg: str) -> None:
        """Print an error line above the bar (the bar is redrawn on the next tick)."""
        with self._lock:
            if self._thread is not None:
                try:
                    self.stream.write("\r\x1b[K")
                except (OSError, ValueError):
                    pass
            _error(msg)

    def close(self):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            try:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
            except (OSError, ValueError):
                pass


# --- calibrate -------------------------------------------------------------------------
def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _check_output(path: str) -> None:
    """Fail now (before any work) if `path` cannot be written: a directory, a missing or
    read-only folder.  Probes with a real temporary file in the target folder."""
    import tempfile

    import stat

    if os.path.isdir(path):
        raise _Fail(f"{_show(path)}: cannot write the JSON output: is a directory")
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        # os.replace would put a regular file in place of a FIFO or /dev/... node.
        raise _Fail(f"{_show(path)}: cannot write the JSON output: not a regular file "
                    "(use --json - for stdout)")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise _Fail(f"{_show(path)}: cannot write the JSON output: folder {_show(folder)} "
                    "does not exist")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise _Fail(f"{_show(path)}: cannot write the JSON output: file is read-only")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".qatcore-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise _Fail(f"{_show(path)}: cannot write the JSON output: {exc.strerror or exc}") from None


def _write_json_atomic(path: str, obj) -> None:
    """Write `obj` as JSON (fsync'ed) to a temporary file beside `path`, then rename it over
    `path`: readers see the old file or the whole new one, never a partial one."""
    from ._files import write_atomic

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(_dumps(obj) + "\n")
            f.flush()
            os.fsync(f.fileno())

    write_atomic(path, write)


def _dumps(obj, indent: int = 0) -> str:
    """JSON with one key per line but lists of numbers on one line.  Floats are Python
    floats holding float32 values: ``repr`` round-trips them exactly."""
    import json

    pad = " " * indent
    if isinstance(obj, dict) and obj:
        items = [f"{pad}  {json.dumps(str(k))}: {_dumps(v, indent + 2)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        items = [f"{pad}  {_dumps(v, indent + 2)}" for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(obj, allow_nan=False)


def _first_nonfinite(data) -> int:
    """Flat index of the first NaN/Inf in a C-contiguous array, blockwise; -1 if none."""
    import numpy as np

    flat = data.reshape(-1)
    step = 1 << 20
    for i in range(0, flat.shape[0], step):
        bad = ~np.isfinite(flat[i:i + step])
        if bad.any():
            return i + int(np.argmax(bad))
    return -1


def _observe(obs, data, ref, where, c_index=None):
    """``obs.observe(data)``; a ValueError becomes a one-line _Fail naming the tensor and,
    for NaN/Inf, the position (``where(i)`` maps an index in `data` to a phrase).  When
    ``c_index(i)`` (the flat C-order index in the tensor) is given and the stored value
    there is finite, the problem is a value beyond the float32 range (float64 1e39):
    reported as such with the stored value, not as the ``inf`` it would become."""
    try:
        obs.observe(data)
    except ValueError as exc:
        i = _first_nonfinite(data)
        if i < 0:
            raise _Fail(f"{_show(ref.name)}: {str(exc).removeprefix('observe: ')}") from None
        value = float(data.reshape(-1)[i])
        stored = _stored_value(ref, c_index(i)) if c_index is not None else None
        if stored is not None:
            raise _Fail(f"{_show(ref.name)}: value {stored!r} at {where(i)} is outside the "
                        f"float32 range that calibration computes in (|x| <= {_F32_MAX!r})") from None
        raise _Fail(f"{_show(ref.name)}: non-finite value {value!r} at {where(i)}") from None


_F32_MAX = 3.4028234663852886e+38


def _stored_value(ref, c_flat: int):
    """The stored value at `c_flat` when it is finite but beyond float32 (else None)."""
    import math

    if ref.kind != "float" or ref.bfloat16 or ref.dtype.itemsize <= 4:
        return None
    try:
        v = float(ref.value_at(c_flat))
    except (_io_error(), OSError, ValueError, IndexError):
        return None
    return v if math.isfinite(v) else None


def _position_text(ref, c_flat: int) -> str:
    if len(ref.shape) <= 1:
        return f"index {c_flat}"
    return f"index {c_flat} (position {ref.position(c_flat)})"


def _calibrate_one(ref, config, batch_axis, n_threads, progress, obs=None):
    """Calibrate one tensor into `obs` (a new observer when None); returns (observer,
    batches).  The input file is only ever read in bounded chunks (never mapped, see
    qatcore._io); a whole-tensor float32 copy, when an observer needs one, lives in an
    unlinked temporary file."""
    import numpy as np

    from . import QuantObserver
    from ._io import materialize_float32, to_float32
    from .config import ObserverMethod

    method = config.observer
    if obs is None:
        obs = QuantObserver(method, n_threads=n_threads)
    total = ref.nbytes

    if batch_axis is None:
        if ref.size == 0:
            return obs, 0
        if method in (ObserverMethod.MIN_MAX, ObserverMethod.MOVING_AVERAGE):
            # Both need only the batch's min and max: exact chunk by chunk.
            mm = obs if method is ObserverMethod.MIN_MAX else QuantObserver(
                ObserverMethod.MIN_MAX, n_threads=n_threads)
            for start, chunk in ref.memory_chunks(WINDOW_ELEMS if ref.direct else CHUNK_ELEMS):
                data = ref.to_float32(chunk)
                _observe(mm, data, ref,
                         lambda i, s=start: _position_text(ref, ref.c_index(s + i)),
                         lambda i, s=start: ref.c_index(s + i))
                progress.advance(chunk.nbytes)
                del chunk, data
            if mm is not obs:
                lo, hi = mm.range()
                obs.observe(np.array([lo, hi], dtype=np.float32))   # one batch: avg = (lo, hi)
            return obs, 1
        # PERCENTILE, MEAN_STD: one observe call on the whole tensor.
        data = materialize_float32(ref, CHUNK_ELEMS, lambda n: progress.advance(n / 2)).reshape(-1)
        _observe(obs, data, ref, lambda i: _position_text(ref, i), lambda i: i)
        progress.advance(total / 2)
        return obs, 1

    # --batch-axis: one observe call per slice.
    axis = batch_axis + len(ref.shape) if batch_axis < 0 else batch_axis
    nb = ref.shape[axis]
    slice_shape = ref.shape[:axis] + ref.shape[axis + 1:]
    per_elems = ref.size // nb if nb else 0
    if axis == 0 and not ref.fortran_order:
        # Slices along axis 0 of a C-order tensor are consecutive runs of the file: read
        # one slice at a time (a bounded buffer of one batch, which the API needs whole).
        slices = (chunk.reshape(slice_shape) for _, chunk in ref.memory_chunks(max(per_elems, 1)))
        convert = ref.to_float32
        per = total / nb if nb else 0
    else:
        src = materialize_float32(ref, CHUNK_ELEMS, lambda n: progress.advance(n / 2))
        slices, convert = np.moveaxis(src, axis, 0), to_float32
        per = total / 2 / nb if nb else 0
    b = 0

    def where(i):
        return f"batch {b} along axis {axis}, position {full(i)}"

    def full(i):
        pos = tuple(int(p) for p in np.unravel_index(i, slice_shape)) if slice_shape else ()
        return pos[:axis] + (b,) + pos[axis:]

    def c_index(i):
        return int(np.ravel_multi_index(full(i), ref.shape))

    observe = obs.observe
    if per_elems == 0:
        for b in range(nb):
            observe(np.empty(slice_shape, np.float32))
            progress.done += per
        return obs, nb
    for b, part in enumerate(slices):
        data = convert(part)
        try:
            observe(data)
        except ValueError:
            _observe(obs, data, ref, where, c_index)      # re-raises it as a one-line message
            raise
        progress.done += per
    return obs, nb


def _preflight(args):
    """Discover and open every input; returns (refs, errors).  Each error is a one-line
    message; warnings (integer dtypes) are printed here."""
    from ._io import InputError, discover, open_tensors

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

    from . import _backend
    from .config import FakeQuantConfig

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
            from ._cli_dask import dask_calibrator      # everything runs here, on the cluster

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


def _io_error():
    from ._io import InputError

    return InputError


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

    from . import QuantObserver

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
    from . import __version__

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


def _table(headers, rows, right=()) -> str:
    rows = [[_show(c) if isinstance(c, str) else c for c in row] for row in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    lines = []
    for row in [headers] + rows:
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _shape_text(shape) -> str:
    if shape is None:
        return "mixed"
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _print_table(results) -> None:
    rows = []
    for r in results:
        lo, hi = r["range"] if r["range"] else ("-", "-")
        rows.append([r["name"], _shape_text(r["shape"]), r["dtype"],
                     _f32(lo) if lo != "-" else lo, _f32(hi) if hi != "-" else hi,
                     _f32(r["scale"]), _f32(r["zero_point"])])
    print(_table(["tensor", "shape", "dtype", "min", "max", "scale", "zero_point"], rows,
                 right={3, 4, 5, 6}))


# --- inspect ---------------------------------------------------------------------------
def _cmd_inspect(args) -> int:
    from ._io import check_regular

    path = args.file
    try:
        check_regular(path)      # missing, symlink loop, folder, FIFO, device: refused
        low = path.lower()
        if low.endswith(".json"):
            _inspect_json(path)
        elif low.endswith((".npz", ".npy", ".safetensors")):
            import numpy as np

            with np.errstate(all="ignore"):
                _inspect_tensors(path, args.bins)
        else:
            raise _Fail(f"{_show(path)}: not a calibration .json, a QuantizedLinear .npz or a tensor file")
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

    from ._io import open_regular

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

    rows = []
    for name, r in doc["tensors"].items():
        if not isinstance(r, dict):
            raise bad(name, "entry is not a JSON object")
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
        rows.append([name, _shape_text(shape), _cell(r.get("dtype", "?")),
                     _cell(r.get("batches", "?")), rng[0], rng[1], _f32(r["scale"]),
                     _f32(r["zero_point"]), _cell(r.get("zero_point_int", "-")),
                     _cell(r.get("code_dtype", "-"))])
    kind = "symmetric" if doc.get("symmetric") else "asymmetric"
    axis = doc.get("batch_axis")
    print(f"calibration  {_show(path)}")
    print("  " + _one_line(
        f"observer {_cell(doc.get('observer'))}, {_cell(doc.get('bits'))}-bit {kind}, quant "
        f"range {_cell(doc.get('quant_range'))}, batches: "
        f"{'whole tensor' if axis is None else f'axis {_cell(axis)}'}, "
        f"qatcore {_cell(doc.get('qatcore_version'))}"))
    print(f"  {len(rows)} tensor{'s' * (len(rows) != 1)}")
    print(_table(["tensor", "shape", "dtype", "batches", "min", "max", "scale", "zero_point",
                  "zp_int", "codes"], rows, right={3, 4, 5, 6, 7, 8}))
    errors = doc.get("errors") or []
    for e in errors if isinstance(errors, list) else [errors]:
        print(f"  error: {_one_line(_cell(e))}")


def _cell(v, limit: int = 80) -> str:
    """A JSON value from a file as one short, escaped line."""
    text = _one_line(v if isinstance(v, str) else repr(v))
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _read_small(ref, limit=1 << 28):
    import numpy as np

    if ref.nbytes > limit:
        return None
    if ref.random_access:
        return np.array(ref.array())
    parts = [np.array(c) for _, c in ref.memory_chunks(CHUNK_ELEMS)]
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
    for _, chunk in ref.memory_chunks(CHUNK_ELEMS):
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
    from ._io import open_tensors

    refs = open_tensors(path)
    members = {r.name.rsplit(":", 1)[-1] if r.name != path else os.path.basename(path): r for r in refs}
    if "weights_q" in members and "weight_scale" in members:
        _inspect_linear(path, members, bins)
        return
    if "format" in members and "activations" in members:     # a QuantizedSequential
        from ._cli_export import inspect_sequential
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


if __name__ == "__main__":        # pragma: no cover
    sys.exit(main())
