"""Tensor files for the command line: discovery, header parsing, memory-mapped reading.

Formats: ``.npy`` (versions 1-3), ``.npz`` (each ``*.npy`` member a tensor; stored members
are memory-mapped at their offset inside the zip, deflated members are streamed), folders
of those (searched recursively), and ``.safetensors`` (header parsed here with ``json``,
so the ``safetensors`` package is not needed).

Nothing is ever loaded whole: :meth:`TensorRef.array` maps the data read-only,
:meth:`TensorRef.memory_chunks` maps (or streams) one bounded window at a time, and
:func:`materialize_float32` converts to a float32 C-order copy in an unlinked temporary
file (page cache, not process memory) when an exact computation needs the whole tensor
as float32.  Every problem with a file is an :class:`InputError` naming the file.
"""

from __future__ import annotations

import ast
import mmap
import os
import struct
import tempfile
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["InputError", "TensorRef", "discover", "open_tensors", "materialize_float32",
           "to_float32", "SUFFIXES"]

SUFFIXES = (".npy", ".npz", ".safetensors")

_MAGIC = b"\x93NUMPY"
_MAX_HEADER = 1 << 20          # refuse absurd headers instead of reading gigabytes
_GRAN = mmap.ALLOCATIONGRANULARITY
_F32 = np.dtype(np.float32)

#: safetensors dtype tags → numpy dtypes (BF16 is widened by hand: numpy has no bfloat16).
_ST_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "|i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "|u1", "BOOL": "|b1",
}


class InputError(Exception):
    """A problem with one input file: ``str(err)`` is ``"<file>: <problem>"`` on one line."""

    def __init__(self, path: str, problem: str, name: Optional[str] = None):
        self.path = path
        self.name = name
        self.problem = " ".join(str(problem).split())
        where = path if name is None else name
        super().__init__(f"{where}: {self.problem}")


# --- discovery -------------------------------------------------------------------------
def discover(paths: Sequence[str], seen: Optional[set] = None) -> List[str]:
    """Expand command-line paths into tensor files (folders searched recursively, in
    sorted order; duplicates dropped, also those whose real path is in `seen`, which is
    updated).  Raises InputError for a missing path, a file that is not
    .npy/.npz/.safetensors, or a folder without any."""
    files: List[str] = []
    seen = set() if seen is None else seen

    def add(p):
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            files.append(p)

    for path in paths:
        if not os.path.exists(path):
            raise InputError(path, "no such file or directory")
        if os.path.isdir(path):
            found = []
            for root, dirs, names in os.walk(path):
                dirs.sort()
                for n in sorted(names):
                    if n.lower().endswith(SUFFIXES) and not n.startswith("."):
                        found.append(os.path.join(root, n))
            if not found:
                raise InputError(path, "folder contains no .npy, .npz or .safetensors files")
            for p in found:
                add(p)
        elif path.lower().endswith(SUFFIXES):
            add(path)
        else:
            raise InputError(path, "not a .npy, .npz or .safetensors file")
    return files


# --- one tensor ------------------------------------------------------------------------
class TensorRef:
    """One tensor inside a file: shape, stored dtype and where its bytes are.

    ``offset`` is the byte offset of the data in ``path`` when the bytes are stored as-is
    (random access by memory mapping); deflated ``.npz`` members have ``offset=None`` and
    are read through ``zip_member``.
    """

    def __init__(self, path, name, shape, dtype, fortran_order=False, offset=None,
                 zip_member=None, bfloat16=False):
        self.path = path
        self.name = name
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.fortran_order = bool(fortran_order) and len(self.shape) > 1
        self.offset = offset
        self.zip_member = zip_member
        self.bfloat16 = bfloat16

    def __repr__(self):
        return f"TensorRef({self.name!r}, shape={self.shape}, dtype={self.dtype_name})"

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

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
        """The stored bytes are already what the kernels read: aligned native float32 in
        C order, so a memory map is passed to the API without any copy."""
        return (self.random_access and not self.bfloat16 and self.dtype == _F32
                and self.dtype.isnative and not self.fortran_order
                and self.offset % _F32.itemsize == 0)

    # --- reading ---------------------------------------------------------------------
    def _map(self, start: int, count: int) -> np.ndarray:
        """Elements [start, start+count) in memory order, memory-mapped read-only."""
        if count == 0:
            return np.empty(0, self.dtype)
        byte0 = self.offset + start * self.dtype.itemsize
        base = byte0 - byte0 % _GRAN
        length = count * self.dtype.itemsize + (byte0 - base)
        try:
            with open(self.path, "rb") as f:
                mm = mmap.mmap(f.fileno(), length, offset=base, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise InputError(self.path, f"cannot memory-map: {exc}", self.name) from None
        return np.frombuffer(mm, dtype=self.dtype, count=count, offset=byte0 - base)

    def array(self) -> np.ndarray:
        """The whole tensor, memory-mapped read-only, with its shape and order.
        Only for random-access tensors."""
        flat = self._map(0, self.size)
        return flat.reshape(self.shape, order="F" if self.fortran_order else "C")

    def memory_chunks(self, max_elems: int) -> Iterator[Tuple[int, np.ndarray]]:
        """Yield ``(start, chunk)``: the tensor in memory order as 1-D chunks of the
        stored dtype, at most `max_elems` each.  Random-access tensors map one window at
        a time (unmapped when the chunk is dropped); deflated members are streamed into a
        reused buffer, so consume each chunk before asking for the next."""
        n = self.size
        if self.random_access:
            for start in range(0, n, max_elems):
                yield start, self._map(start, min(max_elems, n - start))
            return
        buf = np.empty(min(max_elems, n), self.dtype)
        view = memoryview(buf).cast("B")
        with self._open_member() as f:
            start = 0
            while start < n:
                count = min(max_elems, n - start)
                want = count * self.dtype.itemsize
                got = 0
                while got < want:
                    k = f.readinto(view[got:want])
                    if not k:
                        raise InputError(self.path, f"member {self.zip_member.filename!r} "
                                         "ends before its data (truncated archive)", self.name)
                    got += k
                yield start, buf[:count]
                start += count

    def _open_member(self):
        """The deflated member positioned at its data (the .npy header skipped)."""
        import zipfile

        info = self.zip_member
        zf = zipfile.ZipFile(self.path)
        try:
            f = zf.open(info)
            _read_npy_header(f, self.path, self.name)
        except Exception:
            zf.close()
            raise
        return _ClosingStream(f, zf, self)

    def c_index(self, mem_pos: int) -> int:
        """Flat C-order index of the element at memory-order position `mem_pos`."""
        if not self.fortran_order:
            return int(mem_pos)
        pos = np.unravel_index(mem_pos, self.shape, order="F")
        return int(np.ravel_multi_index(pos, self.shape))

    def position(self, c_flat: int) -> Tuple[int, ...]:
        return tuple(int(i) for i in np.unravel_index(c_flat, self.shape)) if self.shape else ()

    def to_float32(self, a: np.ndarray) -> np.ndarray:
        """`a` (part of this tensor, stored dtype) as an aligned C-contiguous float32 array;
        no copy when it already is one."""
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
    np.copyto(out, a, casting="unsafe")
    return out


class _ClosingStream:
    """A zip member stream that also closes its archive; InputError on corrupt data."""

    def __init__(self, f, zf, ref):
        self._f, self._zf, self._ref = f, zf, ref

    def readinto(self, b):
        import zipfile
        import zlib

        try:
            return self._f.readinto(b)
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise InputError(self._ref.path, f"corrupt archive member "
                             f"{self._ref.zip_member.filename!r}: {exc}", self._ref.name) from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()
        self._zf.close()


# --- headers ---------------------------------------------------------------------------
def _read_exact(f, n: int, path: str, what: str, name=None) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise InputError(path, f"truncated .npy header ({what}: expected {n} bytes, got {len(data)})", name)
    return data


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
        d = ast.literal_eval(text)
    except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError) as exc:
        raise InputError(path, f"corrupt .npy header ({type(exc).__name__}: {exc})", name) from None
    if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
        raise InputError(path, "corrupt .npy header (expected the keys descr, fortran_order, shape)", name)
    shape = d["shape"]
    if (not isinstance(shape, tuple) or not all(type(s) is int and s >= 0 for s in shape)):
        raise InputError(path, f"corrupt .npy header (bad shape {shape!r})", name)
    if not isinstance(d["fortran_order"], bool):
        raise InputError(path, "corrupt .npy header (fortran_order is not a bool)", name)
    try:
        dtype = np.lib.format.descr_to_dtype(d["descr"])
    except (TypeError, ValueError) as exc:
        raise InputError(path, f"corrupt .npy header (bad dtype {d['descr']!r}: {exc})", name) from None
    return shape, dtype, d["fortran_order"], used + hlen


def _check_dtype_storable(path, name, dtype):
    if dtype.hasobject:
        raise InputError(path, "object arrays are not supported (they hold Python objects, not numbers)", name)


def open_tensors(path: str) -> List[TensorRef]:
    """Parse `path` (.npy, .npz or .safetensors) and return its tensors; the data is not
    read.  Raises InputError for unreadable, corrupt or truncated files."""
    low = path.lower()
    try:
        if low.endswith(".npy"):
            return [_open_npy(path)]
        if low.endswith(".npz"):
            return _open_npz(path)
        if low.endswith(".safetensors"):
            return _open_safetensors(path)
    except IsADirectoryError:
        raise InputError(path, "is a directory") from None
    except PermissionError:
        raise InputError(path, "permission denied") from None
    except FileNotFoundError:
        raise InputError(path, "no such file or directory") from None
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}") from None
    raise InputError(path, "not a .npy, .npz or .safetensors file")


def _open_npy(path: str) -> TensorRef:
    with open(path, "rb") as f:
        shape, dtype, fortran, offset = _read_npy_header(f, path)
        size = os.fstat(f.fileno()).st_size
    _check_dtype_storable(path, None, dtype)
    ref = TensorRef(path, path, shape, dtype, fortran, offset=offset)
    if size < offset + ref.nbytes:
        raise InputError(path, f"truncated: the header promises {ref.nbytes} bytes of data "
                         f"({dtype} {shape}), the file holds {max(size - offset, 0)}")
    return ref


def _open_npz(path: str) -> List[TensorRef]:
    import zipfile

    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise InputError(path, f"not a valid .npz archive ({exc})") from None
    refs = []
    with zf, open(path, "rb") as raw:
        fsize = os.fstat(raw.fileno()).st_size
        for info in zf.infolist():
            if info.is_dir():
                continue
            if not info.filename.endswith(".npy"):
                raise InputError(path, f"archive member {info.filename!r} is not a .npy array")
            member = info.filename[:-4]
            name = f"{path}:{member}"
            if info.flag_bits & 0x1:
                raise InputError(path, f"member {member!r} is encrypted", name)
            if info.compress_type == zipfile.ZIP_STORED:
                # Local file header: 30 bytes, then the name and the extra field (their
                # lengths may differ from the central directory's, so read them here).
                raw.seek(info.header_offset)
                head = raw.read(30)
                if len(head) != 30 or head[:4] != b"PK\x03\x04":
                    raise InputError(path, f"corrupt archive (bad local header for {member!r})", name)
                nlen, xlen = struct.unpack("<HH", head[26:30])
                start = info.header_offset + 30 + nlen + xlen
                raw.seek(start)
                shape, dtype, fortran, hbytes = _read_npy_header(raw, path, name)
                _check_dtype_storable(path, name, dtype)
                ref = TensorRef(path, name, shape, dtype, fortran, offset=start + hbytes)
                if hbytes + ref.nbytes > info.file_size or start + hbytes + ref.nbytes > fsize:
                    raise InputError(path, f"member {member!r} is truncated: the header promises "
                                     f"{ref.nbytes} bytes of data", name)
            else:
                try:
                    with zf.open(info) as f:
                        shape, dtype, fortran, hbytes = _read_npy_header(f, path, name)
                except (zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError) as exc:
                    raise InputError(path, f"corrupt archive member {member!r}: {exc}", name) from None
                except Exception as exc:
                    if isinstance(exc, InputError):
                        raise
                    import zlib
                    if isinstance(exc, zlib.error):
                        raise InputError(path, f"corrupt archive member {member!r}: {exc}", name) from None
                    raise
                _check_dtype_storable(path, name, dtype)
                ref = TensorRef(path, name, shape, dtype, fortran, zip_member=info)
                if hbytes + ref.nbytes > info.file_size:
                    raise InputError(path, f"member {member!r} is truncated: the header promises "
                                     f"{ref.nbytes} bytes of data", name)
            refs.append(ref)
    if not refs:
        raise InputError(path, "archive holds no arrays")
    return refs


def _open_safetensors(path: str) -> List[TensorRef]:
    import json

    with open(path, "rb") as f:
        head = f.read(8)
        size = os.fstat(f.fileno()).st_size
        if len(head) != 8:
            raise InputError(path, "not a .safetensors file (shorter than its 8-byte header length)")
        (hlen,) = struct.unpack("<Q", head)
        if hlen > min(100 << 20, size - 8):
            raise InputError(path, f"corrupt .safetensors header (header length {hlen} does not fit the file)")
        try:
            meta = json.loads(f.read(hlen))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(path, f"corrupt .safetensors header ({exc})") from None
    if not isinstance(meta, dict):
        raise InputError(path, "corrupt .safetensors header (not a JSON object)")
    base = 8 + hlen
    refs = []
    for key, entry in meta.items():
        if key == "__metadata__":
            continue
        name = f"{path}:{key}"
        try:
            tag, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            shape = tuple(int(s) for s in shape)
            begin, end = int(begin), int(end)
        except (KeyError, TypeError, ValueError):
            raise InputError(path, f"corrupt .safetensors header (bad entry for {key!r})", name) from None
        if tag not in _ST_DTYPES:
            raise InputError(path, f"tensor {key!r}: dtype {tag} is not supported", name)
        ref = TensorRef(path, name, shape, _ST_DTYPES[tag], offset=base + begin,
                        bfloat16=(tag == "BF16"))
        if end - begin != ref.nbytes or begin < 0 or base + end > size:
            raise InputError(path, f"tensor {key!r} is truncated or corrupt (data offsets "
                             f"[{begin}, {end}) for {ref.nbytes} bytes, file data {size - base})", name)
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
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
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


def materialize_float32(ref: TensorRef, max_elems: int, progress=None) -> np.ndarray:
    """The tensor as a C-order float32 array in an unlinked temporary file, memory-mapped
    (converted chunkwise: bounded process memory; the copy lives in the page cache and
    can be written back to disk, unlike anonymous memory).  `progress(nbytes)` is called
    as stored bytes are consumed.  InputError when the temporary folder is full."""
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
    # Convert straight into a shared writable mapping of the temporary file (one copy
    # fewer than write()); the space is reserved first, so a full disk is an OSError
    # here rather than a SIGBUS on a page fault later.
    with _temp_file() as out:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(out.fileno(), 0, n * 4)
        else:               # pragma: no cover
            os.ftruncate(out.fileno(), n * 4)
        mm = mmap.mmap(out.fileno(), n * 4)
    dst = np.frombuffer(mm, dtype=np.float32, count=n)
    if not ref.fortran_order:
        # Memory order is C order: one mapped (or streamed) window at a time.
        blocks = (chunk for _, chunk in ref.memory_chunks(max_elems))
    elif ref.random_access:
        blocks = c_order_blocks(ref.array(), max_elems)
    else:
        # A Fortran-order deflated member: spill the raw bytes, then reorder.
        with _temp_file() as raw:
            for _, chunk in ref.memory_chunks(max_elems):
                raw.write(memoryview(np.ascontiguousarray(chunk)).cast("B"))
            src = _map_file(raw, ref.dtype, ref.shape, order="F")
        blocks = c_order_blocks(src, max_elems)
    pos = 0
    for block in blocks:
        k = block.size
        target = dst[pos:pos + k].reshape(block.shape)
        if ref.bfloat16:
            target[...] = ref.to_float32(block)
        else:
            np.copyto(target, block, casting="unsafe")     # C order of the block's shape
        pos += k
        if progress:
            progress(k * ref.dtype.itemsize)
    return dst.reshape(ref.shape)
