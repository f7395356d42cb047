"""Writing files whole: each into a temporary file beside its target (same folder, so the
same filesystem), moved into place with ``os.replace`` only once it is complete.  A reader
never sees half a file, and a failure (or Ctrl-C) leaves the target as it was and no
temporary file behind.  Used by every ``save``, export and CLI output."""

from __future__ import annotations

import errno
import os
import tempfile
from typing import Callable, Sequence, Tuple, Union


def file_mode() -> int:
    """The permissions a plain ``open(path, "w")`` gives under the current umask
    (``mkstemp`` creates 0600, which is not what users expect of a saved model)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _check_target(path: str) -> None:
    """Refuse a target that cannot become a file, with an OSError naming `path` itself:
    left to ``mkstemp`` / ``os.replace`` the error would name the temporary file."""
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "Is a directory (give a file name)", path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, f"No such file or directory (folder "
                                f"{folder!r} does not exist)", path)


def _temp_beside(path: str, suffix: str) -> str:
    _check_target(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".qatcore-", suffix=suffix,
                                   dir=os.path.dirname(os.path.abspath(path)))
    except OSError as exc:          # e.g. a read-only folder: name the user's path
        raise type(exc)(exc.errno, exc.strerror, path) from None
    os.close(fd)
    return tmp


def _replace(tmp: str, path: str) -> None:
    try:
        os.replace(tmp, path)
    except OSError as exc:          # the target turned into a directory meanwhile, ...
        raise type(exc)(exc.errno, exc.strerror, path) from None


def _remove(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


def write_atomic(path: str, write: Callable[[str], None], *, suffix: str = ".tmp") -> None:
    """Call ``write(tmp_path)`` (which writes the whole file there), then move it to
    `path`.  `suffix` is the temporary name's ending (e.g. ``".npz"`` for writers that
    add their own extension otherwise)."""
    tmp = _temp_beside(path, suffix)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        _replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_files_atomic(files: Sequence[Tuple[str, Union[str, bytes]]]) -> None:
    """Write each ``(path, content)`` (str as UTF-8) to a temporary file beside it, then
    move them all into place: a failure before the moves leaves none of them."""
    temps = []
    for path, _ in files:
        _check_target(path)        # before any temporary file exists
    try:
        for path, content in files:
            tmp = _temp_beside(path, ".tmp")
            temps.append(tmp)
            data = content.encode("utf-8") if isinstance(content, str) else content
            with open(tmp, "wb") as f:
                f.write(data)
            os.chmod(tmp, file_mode())
        for (path, _), tmp in zip(files, temps):
            _replace(tmp, path)
    finally:
        for tmp in temps:
            if os.path.exists(tmp):
                _remove(tmp)
