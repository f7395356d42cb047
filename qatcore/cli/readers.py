"""Tensor files for the command line: discovery, header parsing, bounded reading.

Formats: ``.npy`` (versions 1-3), ``.npz`` (each ``*.npy`` member a tensor; stored members
are read at their offset inside the zip, deflated members are streamed), folders of those
(searched recursively), and ``.safetensors`` (header parsed here with ``json``, so the
``safetensors`` package is not needed).

Files are hostile.  Every header is parsed here without ``ast``/``pickle`` (the ``.npy``
header by a small literal parser with a nesting bound), every size is computed in Python
integers and checked against the file's size before anything is allocated, only regular
files are opened (a FIFO, device or socket named ``*.npy`` is refused after ``stat``, and
opened ``O_NONBLOCK`` and re-checked with ``fstat`` against a swap in between), and the
data of an input file is never memory-mapped: a file truncated by another process while
mapped would kill the run with SIGBUS.  Data is read with ``readinto`` into bounded
buffers instead (:meth:`TensorRef.memory_chunks`; a short read is an :class:`InputError`),
and :func:`materialize_float32` converts to a float32 C-order copy in an unlinked temporary
file of our own (page cache, not process memory; only that file is mapped) when an exact
computation needs the whole tensor at once.  The CRC-32 of a stored ``.npz`` member is
checked whenever the member is read to its end.  Every problem with a file is an
:class:`InputError` naming the file (escaped when the name holds control characters).
"""

from __future__ import annotations

import errno
import math
import mmap
import os
import re
import stat
import struct
import tempfile
import warnings
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["InputError", "TensorRef", "discover", "open_tensors", "materialize_float32",
           "to_float32", "open_regular", "show", "scrub", "SUFFIXES", "MAX_DIMS"]

SUFFIXES = (".npy", ".npz", ".safetensors")

_MAGIC = b"\x93NUMPY"
_MAX_HEADER = 1 << 20          # refuse absurd headers instead of reading gigabytes
_MAX_ST_HEADER = 100 << 20     # the safetensors format's own bound on its JSON header
#: At most this many dimensions (numpy's own limit).
MAX_DIMS = 64
#: Largest element count of any tensor (also of a zero-size one's non-zero dimensions), so
#: that every index, stride and byte count fits numpy's int64.
_MAX_ELEMS = 1 << 62
#: Nesting bound of the .npy header literal (a structured dtype's descr nests a few levels).
_MAX_DEPTH = 16
#: A DEFLATE stream expands at most ~1032:1; a member claiming more is corrupt.
_MAX_DEFLATE_RATIO = 1100
_F32 = np.dtype(np.float32)
_READ_BLOCK = 1 << 20          # bytes per read when only a checksum is computed

#: safetensors dtype tags → numpy dtypes (BF16 is widened by hand: numpy has no bfloat16).
_ST_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "|i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "|u1", "BOOL": "|b1",
}


# --- messages --------------------------------------------------------------------------
def show(text) -> str:
    """`text` (a file or tensor name) for a message: as is when every character is
    printable, else its ``repr`` (terminal escape sequences, control characters and
    undecodable bytes shown as ``\\x1b``, ``\\n``, ``\\udc9b``, never sent raw)."""
    s = str(text)
    return s if s.isprintable() else repr(s)


def scrub(text) -> str:
    """`text` with every non-printable character escaped (``\\x1b``, ``\\udc9b``), for
    messages that embed names from elsewhere (exception texts, JSON content)."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in s)


class InputError(Exception):
    """A problem with one input file: ``str(err)`` is ``"<file>: <problem>"`` on one line."""

    def __init__(self, path: str, problem: str, name: Optional[str] = None):
        self.path = path
        self.name = name
        self.problem = scrub(" ".join(str(problem).split()))
        where = path if name is None else name
        super().__init__(f"{show(where)}: {self.problem}")


_ERRNO_TEXT = {
    errno.ENOENT: "no such file or directory",
    errno.ELOOP: "too many levels of symbolic links (a symlink loop)",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EISDIR: "is a directory",
    errno.ENOTDIR: "a component of the path is not a directory",
    errno.ENAMETOOLONG: "file name too long",
}


def os_error(path: str, exc: OSError, doing: str = "") -> InputError:
    """An InputError for `exc` on `path`, phrased from its errno."""
    text = _ERRNO_TEXT.get(exc.errno) or (exc.strerror or str(exc))
    return InputError(path, f"{doing}{': ' if doing else ''}{text}")


def _kind(mode: int) -> str:
    for test, what in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return what
    return "not a regular file"


def _refuse(path: str, mode: int) -> InputError:
    if stat.S_ISDIR(mode):
        return InputError(path, "is a directory")
    return InputError(path, f"is {_kind(mode)}, not a regular file (not read)")


def check_regular(path: str) -> os.stat_result:
    """``os.stat(path)`` when `path` is a regular file (symlinks followed); InputError for
    anything else (missing, a symlink loop, a FIFO, device, socket or folder), which is
    never opened."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise os_error(path, exc) from None
    except ValueError as exc:          # an embedded NUL byte
        raise InputError(path, f"invalid file name ({exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(path, st.st_mode)
    return st


def open_regular(path: str):
    """`path` opened for binary reading, only if it is a regular file: refused after
    ``stat`` (a FIFO would block ``open`` forever), then opened ``O_NONBLOCK`` and checked
    again with ``fstat`` (the name may have been swapped in between).  InputError."""
    check_regular(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    flags |= getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise os_error(path, exc) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _refuse(path, mode)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _readinto_exact(f, pos: int, view: memoryview, ref: "TensorRef") -> None:
    """Fill `view` from byte `pos` of `f`; a short read (the file shrank under us) is an
    InputError, never a crash."""
    f.seek(pos)
    got, want = 0, len(view)
    while got < want:
        k = f.readinto(view[got:])
        if not k:
            raise InputError(ref.path, f"the file ends {want - got} bytes early while being read "
                             "(truncated since it was opened?)", ref.name)
        got += k


# --- discovery -------------------------------------------------------------------------
def discover(paths: Sequence[str], seen: Optional[set] = None) -> List[str]:
    """Expand command-line paths into tensor files (folders searched recursively, in
    sorted order; duplicates dropped, also those whose real path is in `seen`, which is
    updated).  Raises InputError for a missing path, a file that is not
    .npy/.npz/.safetensors or not a regular file (FIFO, device, socket), an unreadable
    folder or file found in a folder, or a folder without any tensor file."""
    files: List[str] = []
    seen = set() if seen is None else seen

    def add(p):
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            files.append(p)

    def walk_error(exc: OSError):
        # os.walk skips what it cannot list unless told: an unreadable subfolder is an error.
        raise os_error(exc.filename or path, exc, "cannot read folder") from None

    for path in paths:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise os_error(path, exc) from None
        except ValueError as exc:
            raise InputError(path, f"invalid file name ({exc})") from None
        if stat.S_ISDIR(st.st_mode):
            found = []
            # Symlinked subfolders are followed; a link back to one of its own ancestors
            # (a loop) is an error, as are folders that cannot be listed.
            ancestors = {os.path.normpath(path): frozenset([(st.st_dev, st.st_ino)])}
            for root, dirs, names in os.walk(path, onerror=walk_error, followlinks=True):
                dirs.sort()
                above = ancestors.pop(os.path.normpath(root), frozenset())
                for d in dirs:
                    sub = os.path.join(root, d)
                    try:
                        dst = os.stat(sub)
                    except OSError as exc:
                        raise os_error(sub, exc, "cannot read folder") from None
                    key = (dst.st_dev, dst.st_ino)
                    if key in above:
                        raise InputError(sub, "too many levels of symbolic links (a symlink "
                                         "loop: it leads back to a folder that contains it)")
                    ancestors[os.path.normpath(sub)] = above | {key}
                for n in sorted(names):
                    if n.lower().endswith(SUFFIXES) and not n.startswith("."):
                        p = os.path.join(root, n)
                        check_regular(p)
                        if not os.access(p, os.R_OK):
                            raise InputError(p, "permission denied")
                        found.append(p)
            if not found:
                raise InputError(path, "folder contains no .npy, .npz or .safetensors files")
            for p in found:
                add(p)
        elif not stat.S_ISREG(st.st_mode):
            raise _refuse(path, st.st_mode)
        elif path.lower().endswith(SUFFIXES):
            add(path)
        else:
            raise InputError(path, "not a .npy, .npz or .safetensors file")
    return files


# --- one tensor ------------------------------------------------------------------------
class TensorRef:
    """One tensor inside a file: shape, stored dtype and where its bytes are.

    ``offset`` is the byte offset of the data in ``path`` when the bytes are stored as-is
    (random access); deflated ``.npz`` members have ``offset=None`` and are read through
    ``zip_member``.  A stored ``.npz`` member keeps ``zip_member`` and ``zip_start`` (its
    first byte: the .npy header) so its CRC-32 can be checked when it is read whole.
    """

    def __init__(self, path, name, shape, dtype, fortran_order=False, offset=None,
                 zip_member=None, bfloat16=False, zip_start=None):
        self.path = path
        self.name = name
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.fortran_order = bool(fortran_order) and len(self.shape) > 1
        self.offset = offset
        self.zip_member = zip_member
        self.zip_start = zip_start
        self.bfloat16 = bfloat16

    def __repr__(self):
        return f"TensorRef({self.name!r}, shape={self.shape}, dtype={self.dtype_name})"

    @property
    def size(self) -> int:
        return math.prod(self.shape)          # Python ints: never wraps

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def dtype_name(self) -> str:
        if self.bfloat16:
            return "bfloat16"
        return self.dtype.name if self.dtype.isnative else self.dtype.str

    @property
    def kind(self) -> str:
        """'float', 'int' (integers and bools: converted with a warning), or 'bad'."""
        if self.bfloat16:
            return "float"
        if self.dtype.shape or self.dtype.fields:
            return "bad"
        k = self.dtype.kind
        if k == "f":
            return "float"
        if k in "iub":
            return "int"
        return "bad"

    @property
    def random_access(self) -> bool:
        return self.offset is not None

    @property
    def direct(self) -> bool:
        """The stored bytes are already what the kernels read (native float32 in C order):
        a chunk read from the file is passed to the API without a conversion."""
        return (self.random_access and not self.bfloat16 and self.dtype == _F32
                and self.dtype.isnative and not self.fortran_order)

    # --- reading ---------------------------------------------------------------------
    def _read(self, start: int, count: int) -> np.ndarray:
        """Elements [start, start+count) in memory order, read (not mapped) into a new
        array.  Only for random-access tensors; callers bound `count`."""
        buf = np.empty(count, self.dtype)
        if count and self.dtype.itemsize:
            with self._open() as f:
                _readinto_exact(f, self.offset + start * self.dtype.itemsize,
                                memoryview(buf.view(np.uint8)), self)
        return buf

    def _open(self):
        try:
            return open_regular(self.path)
        except InputError as exc:
            raise InputError(self.path, exc.problem, self.name) from None

    def array(self) -> np.ndarray:
        """The whole tensor read into memory (a copy) with its shape and order; callers
        bound :attr:`nbytes` first."""
        n = self.size
        if self.random_access and self.zip_member is None:
            flat = self._read(0, n)
        else:
            flat = np.empty(n, self.dtype)
            for start, chunk in self.memory_chunks(max(1, min(n, 1 << 22))):
                flat[start:start + chunk.shape[0]] = chunk
        return flat.reshape(self.shape, order="F" if self.fortran_order else "C")

    def memory_chunks(self, max_elems: int) -> Iterator[Tuple[int, np.ndarray]]:
        """Yield ``(start, chunk)``: the tensor in memory order as 1-D chunks of the
        stored dtype, at most `max_elems` each, read into one reused buffer (consume each
        chunk before asking for the next).  Reading a stored .npz member to its end
        checks its CRC-32 (an InputError after the last chunk when it does not match)."""
        n = self.size
        if n == 0:
            return
        buf = np.empty(min(max_elems, n), self.dtype)
        raw = memoryview(buf.view(np.uint8))
        item = self.dtype.itemsize
        if not self.random_access:
            with self._open_member() as f:
                start = 0
                while start < n:
                    count = min(max_elems, n - start)
                    want = count * item
                    got = 0
                    while got < want:
                        k = f.readinto(raw[got:want])
                        if not k:
                            raise InputError(self.path, f"member {self.zip_member.filename!r} "
                                             "ends before its data (truncated archive)", self.name)
                        got += k
                    yield start, buf[:count]
                    start += count
            return
        import zlib

        info = self.zip_member
        with self._open() as f:
            crc = None
            if info is not None:
                head = bytearray(self.offset - self.zip_start)
                _readinto_exact(f, self.zip_start, memoryview(head), self)
                crc = zlib.crc32(head)
            for start in range(0, n, max_elems):
                count = min(max_elems, n - start)
                view = raw[:count * item]
                _readinto_exact(f, self.offset + start * item, view, self)
                if crc is not None:
                    crc = zlib.crc32(view, crc)
                yield start, buf[:count]
            if crc is not None:
                tail = info.file_size - (self.offset - self.zip_start) - self.nbytes
                pos = self.offset + self.nbytes
                while tail > 0:
                    block = bytearray(min(tail, _READ_BLOCK))
                    _readinto_exact(f, pos, memoryview(block), self)
                    crc = zlib.crc32(block, crc)
                    pos += len(block)
                    tail -= len(block)
                if crc != info.CRC:
                    raise InputError(self.path, f"corrupt archive member {info.filename!r}: "
                                     f"bad CRC-32 (stored {info.CRC:08x}, data {crc:08x})", self.name)

    def _open_member(self):
        """The deflated member positioned at its data (the .npy header skipped)."""
        import zipfile

        info = self.zip_member
        raw = self._open()
        try:
            zf = zipfile.ZipFile(raw)
            try:
                f = zf.open(info)
                _read_npy_header(f, self.path, self.name)
            except BaseException:
                zf.close()
                raise
        except BaseException as exc:
            raw.close()
            if isinstance(exc, _ZIP_ERRORS):
                raise InputError(self.path, f"corrupt archive member {info.filename!r}: "
                                 f"{type(exc).__name__}: {exc}", self.name) from None
            raise
        return _ClosingStream(f, zf, raw, self)

    def c_index(self, mem_pos: int) -> int:
        """Flat C-order index of the element at memory-order position `mem_pos`."""
        if not self.fortran_order:
            return int(mem_pos)
        pos = np.unravel_index(mem_pos, self.shape, order="F")
        return int(np.ravel_multi_index(pos, self.shape))

    def position(self, c_flat: int) -> Tuple[int, ...]:
        return tuple(int(i) for i in np.unravel_index(c_flat, self.shape)) if self.shape else ()

    def value_at(self, c_flat: int):
        """The stored value at flat C-order index `c_flat` as a Python number (for error
        messages: read alone, or streamed up to it for a deflated member)."""
        if self.fortran_order:
            pos = np.unravel_index(c_flat, self.shape)
            mem = int(np.ravel_multi_index(pos, self.shape, order="F"))
        else:
            mem = int(c_flat)
        if self.random_access:
            v = self._read(mem, 1)
        else:
            v = None
            for start, chunk in self.memory_chunks(1 << 20):
                if start <= mem < start + chunk.shape[0]:
                    v = chunk[mem - start:mem - start + 1].copy()
                    break
        if self.bfloat16:
            v = self.to_float32(v)
        return v[0].item()

    def to_float32(self, a: np.ndarray) -> np.ndarray:
        """`a` (part of this tensor, stored dtype) as an aligned C-contiguous float32 array;
        no copy when it already is one.  Values beyond the float32 range become ±inf
        (silently: the caller reports them by position)."""
        if self.bfloat16:
            wide = np.ascontiguousarray(a, dtype=np.uint16).astype(np.uint32)
            wide <<= 16
            return wide.view(np.float32)
        return to_float32(a)


def to_float32(a: np.ndarray) -> np.ndarray:
    """`a` as an aligned, C-contiguous, native float32 array (a copy only when needed)."""
    if (a.dtype == _F32 and a.dtype.isnative and a.flags.c_contiguous and a.flags.aligned):
        return a
    out = np.empty(a.shape, np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        np.copyto(out, a, casting="unsafe")
    return out


def _zip_errors():
    import zipfile
    import zlib

    return (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError,
            NotImplementedError, RuntimeError, ValueError, OverflowError, struct.error,
            UnicodeDecodeError, OSError, IndexError, KeyError)


_ZIP_ERRORS = _zip_errors()


class _ClosingStream:
    """A zip member stream that also closes its archive and file; InputError on corrupt
    data (bad CRC, bad deflate stream, truncation)."""

    def __init__(self, f, zf, raw, ref):
        self._f, self._zf, self._raw, self._ref = f, zf, raw, ref

    def readinto(self, b):
        try:
            return self._f.readinto(b)
        except _ZIP_ERRORS as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(self._ref.path, f"corrupt archive member "
                             f"{self._ref.zip_member.filename!r}: {type(exc).__name__}: {exc}",
                             self._ref.name) from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()
        self._zf.close()
        self._raw.close()


# --- headers ---------------------------------------------------------------------------
def _read_exact(f, n: int, path: str, what: str, name=None) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise InputError(path, f"truncated .npy header ({what}: expected {n} bytes, got {len(data)})", name)
    return data


class _Corrupt(Exception):
    """The .npy header literal does not parse (the message says where)."""


# Python's own whitespace and ASCII digits only (re.ASCII): "\x1c" or "\u0663" would pass
# for a separator or a digit with a Unicode \s / \d, and numpy (ast) refuses them.
_WS = " \t\n\r\f"
_TOKEN = re.compile(r"""
    [ \t\n\r\f]*(?:
      (?P<str>'(?:[^'\\\n\r]|\\.)*'|"(?:[^"\\\n\r]|\\.)*")
    | (?P<num>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?L?)
    | (?P<name>[A-Za-z_]\w*)
    | (?P<punct>[{}()\[\],:])
    )""", re.VERBOSE | re.DOTALL | re.ASCII)
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)", re.DOTALL)
_SIMPLE_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t", "r": "\r", "0": "\0"}


def _unescape(m: "re.Match") -> str:
    e = m.group(1)
    if e[0] in "xuU" and len(e) > 1:
        cp = int(e[1:], 16)
        if cp > 0x10FFFF:
            raise _Corrupt("bad escape in a string")
        return chr(cp)
    if e in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[e]
    raise _Corrupt(f"unknown escape \\{e} in a string")


def _parse_header_literal(text: str):
    """The Python literal of a .npy header (a dict of strings, ints, floats, bools, None,
    tuples and lists), parsed without ``ast``: nesting is bounded by _MAX_DEPTH and
    nothing is evaluated.  Floats are returned as floats so the caller can name them."""
    if "\x00" in text:
        raise _Corrupt("NUL byte in the header")
    tokens = []
    pos, n = 0, len(text)
    while pos < n:
        if not text[pos:].strip(_WS):
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise _Corrupt(f"unexpected character {text[pos:pos + 1]!r} at offset {pos}")
        pos = m.end()
        kind = m.lastgroup
        tok = m.group(kind)
        if kind == "str":
            tokens.append(("v", _ESCAPE.sub(_unescape, tok[1:-1])))
        elif kind == "num":
            body = tok[:-1] if tok.endswith("L") else tok
            if any(c in body for c in ".eE"):
                tokens.append(("v", float(body)))
            else:
                if len(body) > 400:
                    raise _Corrupt("integer literal too long")
                digits = body.lstrip("+-")
                if len(digits) > 1 and digits[0] == "0" and digits.strip("0"):
                    raise _Corrupt(f"integer literal {body!r} has a leading zero")
                tokens.append(("v", int(body)))
        elif kind == "name":
            consts = {"True": True, "False": False, "None": None}
            if tok not in consts:
                raise _Corrupt(f"unexpected name {tok!r}")
            tokens.append(("v", consts[tok]))
        else:
            tokens.append((tok, None))
    i = 0

    def value(depth):
        nonlocal i
        if depth > _MAX_DEPTH:
            raise _Corrupt("nested too deeply")
        if i >= len(tokens):
            raise _Corrupt("ends early")
        kind, v = tokens[i]
        i += 1
        if kind == "v":
            return v
        if kind == "{":
            out: dict = {}
            if i < len(tokens) and tokens[i][0] == "}":
                i += 1
                return out
            while True:
                k = value(depth + 1)
                if not isinstance(k, str):
                    raise _Corrupt("a dict key is not a string")
                expect(":")
                if k in out:
                    raise _Corrupt(f"key {k!r} appears twice")
                out[k] = value(depth + 1)
                if sep("}")[0]:
                    return out
        if kind in "([":
            close = ")" if kind == "(" else "]"
            items, trailing = [], False
            if i < len(tokens) and tokens[i][0] == close:
                i += 1
                return () if kind == "(" else []
            while True:
                items.append(value(depth + 1))
                closed, trailing = sep(close)
                if closed:
                    break
            if kind == "(":
                # (x) is x; (x,) and (x, y) are tuples.
                return items[0] if len(items) == 1 and not trailing else tuple(items)
            return items
        raise _Corrupt(f"unexpected {kind!r}")

    def expect(p):
        nonlocal i
        if i >= len(tokens) or tokens[i][0] != p:
            raise _Corrupt(f"expected {p!r}")
        i += 1

    def sep(close):
        """After an item: ',' (then maybe the closer) or the closer.  Returns (closed,
        closed right after a comma)."""
        nonlocal i
        if i >= len(tokens):
            raise _Corrupt("ends early")
        kind = tokens[i][0]
        i += 1
        if kind == close:
            return True, False
        if kind != ",":
            raise _Corrupt(f"expected ',' or {close!r}")
        if i < len(tokens) and tokens[i][0] == close:
            i += 1
            return True, True
        return False, True

    result = value(0)
    if i != len(tokens):
        raise _Corrupt("trailing text after the header dict")
    return result


def _read_npy_header(f, path: str, name=None):
    """Parse a .npy header from the current position: (shape, dtype, fortran_order,
    header_bytes).  Raises InputError with the reason."""
    magic = _read_exact(f, 8, path, "magic string", name)
    if magic[:6] != _MAGIC:
        raise InputError(path, "not a .npy file (bad magic string)", name)
    major = magic[6]
    if major == 1:
        hlen = struct.unpack("<H", _read_exact(f, 2, path, "header length", name))[0]
        used = 10
    elif major in (2, 3):
        hlen = struct.unpack("<I", _read_exact(f, 4, path, "header length", name))[0]
        used = 12
    else:
        raise InputError(path, f"unsupported .npy format version {major}.{magic[7]}", name)
    if hlen > _MAX_HEADER:
        raise InputError(path, f"corrupt .npy header (header length {hlen} is implausible)", name)
    raw = _read_exact(f, hlen, path, "header", name)
    try:
        text = raw.decode("utf8" if major == 3 else "latin1")
        d = _parse_header_literal(text)
    except (_Corrupt, ValueError, UnicodeDecodeError) as exc:
        raise InputError(path, f"corrupt .npy header ({exc})", name) from None
    if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
        raise InputError(path, "corrupt .npy header (expected the keys descr, fortran_order, shape)", name)
    shape = d["shape"]
    if (not isinstance(shape, tuple) or not all(type(s) is int and s >= 0 for s in shape)):
        raise InputError(path, f"corrupt .npy header (bad shape {shape!r}: dimensions must be "
                         "integers >= 0)", name)
    if not isinstance(d["fortran_order"], bool):
        raise InputError(path, "corrupt .npy header (fortran_order is not a bool)", name)
    try:
        with warnings.catch_warnings():      # e.g. the deprecated 'a' alias: not our line
            warnings.simplefilter("ignore")
            dtype = np.lib.format.descr_to_dtype(d["descr"])
    except Exception as exc:    # numpy's descr parsers raise many types (',f4': SyntaxError)
        raise InputError(path, f"corrupt .npy header (bad dtype {d['descr']!r}: {exc})", name) from None
    _check_shape(path, name, shape)
    return shape, dtype, d["fortran_order"], used + hlen


def _check_shape(path, name, shape) -> None:
    """Bound a shape before anything uses it: at most MAX_DIMS dimensions, and the product
    of its non-zero dimensions (computed in Python ints: it cannot wrap) below 2**62."""
    if len(shape) > MAX_DIMS:
        raise InputError(path, f"corrupt header (shape has {len(shape)} dimensions, at most "
                         f"{MAX_DIMS} are supported)", name)
    if math.prod(s for s in shape if s) >= _MAX_ELEMS:
        raise InputError(path, f"corrupt header (shape {_short(shape)} has 2**62 elements "
                         "or more)", name)


def _short(shape) -> str:
    text = repr(tuple(shape))
    return text if len(text) <= 120 else text[:117] + "..."


def _check_data(path, name, ref: "TensorRef", available: int, what: str) -> None:
    """The data `ref` promises (a Python int, no wrap) must fit the `available` bytes."""
    if ref.nbytes > available:
        raise InputError(path, f"{what}: the header promises {ref.nbytes} bytes of data "
                         f"({ref.dtype_name} {_short(ref.shape)}), the file holds "
                         f"{max(available, 0)}", name)


def _check_dtype_storable(path, name, dtype):
    if dtype.hasobject:
        raise InputError(path, "object arrays are not supported (they hold Python objects, not numbers)", name)


def open_tensors(path: str) -> List[TensorRef]:
    """Parse `path` (.npy, .npz or .safetensors) and return its tensors; the data is not
    read.  Raises InputError for unreadable, corrupt or truncated files, and for anything
    that is not a regular file."""
    low = path.lower()
    try:
        if low.endswith(".npy"):
            return [_open_npy(path)]
        if low.endswith(".npz"):
            return _open_npz(path)
        if low.endswith(".safetensors"):
            return _open_safetensors(path)
    except OSError as exc:
        raise os_error(path, exc, "cannot read") from None
    raise InputError(path, "not a .npy, .npz or .safetensors file")


def _open_npy(path: str) -> TensorRef:
    with open_regular(path) as f:
        shape, dtype, fortran, offset = _read_npy_header(f, path)
        size = os.fstat(f.fileno()).st_size
    _check_dtype_storable(path, None, dtype)
    ref = TensorRef(path, path, shape, dtype, fortran, offset=offset)
    _check_data(path, None, ref, size - offset, "truncated")
    return ref


def _open_npz(path: str) -> List[TensorRef]:
    import zipfile

    with open_regular(path) as raw:
        try:
            return _npz_members(path, raw)
        except InputError:
            raise
        except _ZIP_ERRORS as exc:
            if isinstance(exc, zipfile.BadZipFile):
                raise InputError(path, f"not a valid .npz archive ({exc})") from None
            raise InputError(path, f"corrupt .npz archive ({type(exc).__name__}: {exc})") from None


def _npz_members(path: str, raw) -> List[TensorRef]:
    import zipfile

    fsize = os.fstat(raw.fileno()).st_size
    zf = zipfile.ZipFile(raw)
    refs = []
    names = set()
    with zf:
        for info in zf.infolist():
            if not info.filename:
                raise InputError(path, "corrupt archive (a member has an empty name)")
            if info.is_dir():
                continue
            if not info.filename.endswith(".npy"):
                raise InputError(path, f"archive member {info.filename!r} is not a .npy array")
            if info.filename in names:
                # np.load would show the last one under both: refuse the ambiguity.
                raise InputError(path, f"archive holds two members named {info.filename!r}")
            names.add(info.filename)
            member = info.filename[:-4]
            name = f"{path}:{member}"
            if info.flag_bits & 0x1:
                raise InputError(path, f"member {member!r} is encrypted", name)
            if not 0 <= info.header_offset < fsize:
                raise InputError(path, f"corrupt archive (member {member!r} starts outside the file)", name)
            if info.compress_type == zipfile.ZIP_STORED:
                # Local file header: 30 bytes, then the name and the extra field (their
                # lengths may differ from the central directory's, so read them here).
                if info.compress_size != info.file_size:
                    raise InputError(path, f"corrupt archive (stored member {member!r} has "
                                     "different stored and original sizes)", name)
                raw.seek(info.header_offset)
                head = raw.read(30)
                if len(head) != 30 or head[:4] != b"PK\x03\x04":
                    raise InputError(path, f"corrupt archive (bad local header for {member!r})", name)
                nlen, xlen = struct.unpack("<HH", head[26:30])
                start = info.header_offset + 30 + nlen + xlen
                raw.seek(start)
                shape, dtype, fortran, hbytes = _read_npy_header(raw, path, name)
                _check_dtype_storable(path, name, dtype)
                ref = TensorRef(path, name, shape, dtype, fortran, offset=start + hbytes,
                                zip_member=info, zip_start=start)
                _check_data(path, name, ref, min(info.file_size, fsize - start) - hbytes,
                            f"member {member!r} is truncated")
            else:
                if (info.compress_type == zipfile.ZIP_DEFLATED
                        and info.file_size > _MAX_DEFLATE_RATIO * max(info.compress_size, 1)):
                    raise InputError(path, f"corrupt archive member {member!r} (claims "
                                     f"{info.file_size} bytes from {info.compress_size} "
                                     "deflated bytes)", name)
                if info.compress_size > fsize:
                    raise InputError(path, f"corrupt archive member {member!r} (larger than "
                                     "the archive)", name)
                try:
                    with zf.open(info) as f:
                        shape, dtype, fortran, hbytes = _read_npy_header(f, path, name)
                except InputError:
                    raise
                except _ZIP_ERRORS as exc:
                    raise InputError(path, f"corrupt archive member {member!r}: "
                                     f"{type(exc).__name__}: {exc}", name) from None
                _check_dtype_storable(path, name, dtype)
                ref = TensorRef(path, name, shape, dtype, fortran, zip_member=info)
                _check_data(path, name, ref, info.file_size - hbytes,
                            f"member {member!r} is truncated")
            refs.append(ref)
    if not refs:
        raise InputError(path, "archive holds no arrays")
    return refs


def _unique_keys(pairs):
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"key {dup!r} appears twice")
    return out


def _no_constant(text):
    raise ValueError(f"{text} is not valid JSON")


def _open_safetensors(path: str) -> List[TensorRef]:
    import json

    with open_regular(path) as f:
        head = f.read(8)
        size = os.fstat(f.fileno()).st_size
        if len(head) != 8:
            raise InputError(path, "not a .safetensors file (shorter than its 8-byte header length)")
        (hlen,) = struct.unpack("<Q", head)
        if hlen > min(_MAX_ST_HEADER, size - 8):
            raise InputError(path, f"corrupt .safetensors header (header length {hlen} does not fit the file)")
        raw = f.read(hlen)
        if len(raw) != hlen:
            raise InputError(path, "truncated .safetensors header")
    try:
        meta = json.loads(raw.decode("utf-8"), parse_constant=_no_constant,
                          object_pairs_hook=_unique_keys)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        what = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise InputError(path, f"corrupt .safetensors header ({what})") from None
    if not isinstance(meta, dict):
        raise InputError(path, "corrupt .safetensors header (not a JSON object)")
    base = 8 + hlen
    data_size = size - base
    refs = []
    for key, entry in meta.items():
        if key == "__metadata__":
            continue
        name = f"{path}:{key}"
        bad = InputError(path, f"corrupt .safetensors header (bad entry for {key!r}: expected "
                         '{"dtype": TAG, "shape": [ints >= 0], "data_offsets": [begin, end]})', name)
        if not isinstance(entry, dict):
            raise bad
        tag, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if (not isinstance(tag, str) or not isinstance(shape, list)
                or not all(type(s) is int and s >= 0 for s in shape)
                or not isinstance(offsets, list) or len(offsets) != 2
                or not all(type(v) is int for v in offsets)):
            raise bad
        if tag not in _ST_DTYPES:
            raise InputError(path, f"tensor {key!r}: dtype {tag!r} is not supported", name)
        _check_shape(path, name, shape)
        begin, end = offsets
        ref = TensorRef(path, name, shape, _ST_DTYPES[tag], offset=base + begin,
                        bfloat16=(tag == "BF16"))
        if not 0 <= begin <= end <= data_size or end - begin != ref.nbytes:
            raise InputError(path, f"tensor {key!r} is truncated or corrupt (data offsets "
                             f"[{begin}, {end}) for {ref.nbytes} bytes, file data {data_size})", name)
        refs.append(ref)
    if not refs:
        raise InputError(path, "file holds no tensors")
    return refs


# --- float32 copies in the page cache --------------------------------------------------
def _temp_file():
    """An anonymous temporary file (unlinked at once: nothing is left behind, even after
    a crash or Ctrl-C)."""
    fd, name = tempfile.mkstemp(prefix="qatcore-", suffix=".tmp")
    try:
        os.unlink(name)
    except OSError:
        pass
    return os.fdopen(fd, "w+b")


def _map_file(f, dtype, shape, order="C") -> np.ndarray:
    """Map our own temporary file `f` (unlinked: nobody else can truncate it)."""
    count = math.prod(shape)
    if count == 0:
        return np.empty(shape, dtype)
    f.flush()
    mm = mmap.mmap(f.fileno(), count * np.dtype(dtype).itemsize, access=mmap.ACCESS_READ)
    return np.frombuffer(mm, dtype=dtype, count=count).reshape(shape, order=order)


def c_order_blocks(a: np.ndarray, max_elems: int) -> Iterator[np.ndarray]:
    """Sub-arrays of `a` whose C-order flattenings, concatenated, are `a`'s C-order
    flattening; each holds at most `max_elems` elements (or one row of a 1-D split)."""
    if a.ndim <= 1:
        flat = a.reshape(-1)
        for i in range(0, flat.shape[0], max_elems):
            yield flat[i:i + max_elems]
        return
    row = a.size // a.shape[0] if a.shape[0] else 0
    if row == 0:
        return
    if row <= max_elems:
        rows = max(1, max_elems // row)
        for i in range(0, a.shape[0], rows):
            yield a[i:i + rows]
    else:
        for i in range(a.shape[0]):
            yield from c_order_blocks(a[i], max_elems)


#: A whole-tensor float32 copy needing at most this many bytes of memory (the stored bytes
#: read plus the float32 result, or the result alone when the stored bytes are already
#: native float32) is made in process memory; larger ones in an unlinked temporary file.
HEAP_COPY_BYTES = 256 << 20


def materialize_float32(ref: TensorRef, max_elems: int, progress=None) -> np.ndarray:
    """The tensor as a C-order float32 array: read into process memory when that needs
    at most HEAP_COPY_BYTES, otherwise converted chunkwise into an unlinked temporary
    file of our own, memory-mapped (bounded process memory; the copy lives in the page
    cache and can be written back to disk, unlike anonymous memory).  The input file is
    only read, never mapped.  `progress(nbytes)` is called as stored bytes are consumed.
    InputError when the temporary folder is full."""
    need = ref.size * 4 + (0 if ref.direct else ref.nbytes)
    if need <= HEAP_COPY_BYTES:
        out = ref.to_float32(ref.array())
        if progress:
            progress(ref.nbytes)
        return out.reshape(ref.shape)
    try:
        return _materialize(ref, max_elems, progress)
    except OSError as exc:
        raise InputError(ref.path, f"cannot write a float32 copy ({_human(ref.size * 4)}) to the "
                         f"temporary folder {tempfile.gettempdir()}: {exc.strerror or exc} "
                         "(set TMPDIR to a folder with room)", ref.name) from None


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0


def _materialize(ref: TensorRef, max_elems: int, progress) -> np.ndarray:
    n = ref.size
    if n == 0:
        return np.empty(ref.shape, np.float32)
    if not ref.fortran_order:
        # Memory order is C order: one bounded read (or streamed window) at a time.
        blocks = (chunk for _, chunk in ref.memory_chunks(max_elems))
    else:
        # Fortran order: spill the raw bytes (read in bounded chunks) to a temporary
        # file of our own, map that (never the input file), then reorder.
        with _temp_file() as raw:
            for _, chunk in ref.memory_chunks(max_elems):
                raw.write(memoryview(np.ascontiguousarray(chunk).view(np.uint8)))
            src = _map_file(raw, ref.dtype, ref.shape, order="F")
        blocks = c_order_blocks(src, max_elems)
    # Each block is converted into one reused buffer and written with write(): page-cache
    # copies, about 20x faster than storing through a fresh shared mapping (a page fault
    # per 4 KiB).  The space is reserved first, so a full disk is an OSError here.
    buf = np.empty(min(max_elems, n), np.float32)
    with _temp_file() as out:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(out.fileno(), 0, n * 4)
        written = 0
        for block in blocks:
            k = block.size
            target = buf[:k].reshape(block.shape)
            if ref.bfloat16:
                target[...] = ref.to_float32(block)
            else:
                with np.errstate(over="ignore", invalid="ignore"):   # ±inf: reported by position
                    np.copyto(target, block, casting="unsafe")     # C order of the block's shape
            out.write(memoryview(buf[:k].view(np.uint8)))
            written += k
            if progress:
                progress(k * ref.dtype.itemsize)
        if written != n:        # pragma: no cover - the blocks cover the tensor
            raise InputError(ref.path, f"internal: converted {written} of {n} elements", ref.name)
        return _map_file(out, np.float32, ref.shape)
