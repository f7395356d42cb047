"""What every subcommand of the ``qatcore`` command shares: exit statuses, one-line
messages, progress, safe output files, JSON and tables."""

from __future__ import annotations

import os
import sys
import threading
import time

#: The largest finite float32.
_F32_MAX = 3.4028234663852886e+38


EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPT = 0, 1, 2, 130


class _Fail(Exception):
    """A problem already phrased for the user (one line); exit status 2."""


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C."""


def _short_int(n: int) -> str:
    text = str(n)
    return text if len(text) <= 30 else f"{text[:12]}...({len(text)} digits)"


# --- messages --------------------------------------------------------------------------
def _one_line(text) -> str:
    """One line, every non-printable character escaped: messages quote file names and
    file contents, which must never reach the terminal raw (escape sequences)."""
    from .readers import scrub

    return scrub(" ".join(str(text).split()))


def _scrub(text) -> str:
    """`text` with its non-printable characters escaped (spacing kept)."""
    from .readers import scrub

    return scrub(text)


def _show(name) -> str:
    """A file or tensor name for a message or table cell (repr-escaped if not printable)."""
    from .readers import show

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
    import stat
    import tempfile

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
    from .._files import write_atomic

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


def _io_error():
    from .readers import InputError

    return InputError


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


def _cell(v, limit: int = 80) -> str:
    """A JSON value from a file as one short, escaped line."""
    text = _one_line(v if isinstance(v, str) else repr(v))
    return text if len(text) <= limit else text[:limit - 3] + "..."
