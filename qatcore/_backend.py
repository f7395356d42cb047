"""Choose the kernel module built for the best CPU target this machine supports.

``QATCORE_TARGET`` (``baseline``, ``avx2``, ``avx512``, ``amx``) forces a target; asking
for one the CPU cannot run, or one that was not built, is an error rather than a crash.
``amx`` is the avx512 build plus Intel AMX tiles for the int8 GEMM: it needs AMX-INT8 and
the Linux kernel's grant of the tile state (asked once, by ``cpu_supports("amx")``).  Tests
load every available target with :func:`load`.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import numpy as np



def _source_tree_error(exc: ImportError) -> ImportError:
    """The error for a qatcore folder that has the sources but no compiled kernels: the
    usual cause is ``python -c "import qatcore"`` run in the root of a clone, where the
    source folder shadows the installed package."""
    import importlib.machinery

    here = os.path.dirname(os.path.abspath(__file__))
    built = [f for f in os.listdir(here)
             if f.startswith("_kernels") and f.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))]
    if built or not os.path.exists(os.path.join(here, "_kernels.pyx")):
        return exc
    root = os.path.dirname(here)
    return ImportError(
        f"qatcore was imported from its source folder {here}, which holds no compiled "
        f"kernels (qatcore/_kernels*.so). Python found it before the installed package because "
        f"{root} is on sys.path (the current directory is, for `python -c`, `python -m` "
        f"and `python -m pytest`). Either run Python from another folder (the "
        f"installed qatcore is used there), or build the kernels into the source tree: "
        f"`pip install -e .` (editable install) or `python setup.py build_ext --inplace` "
        f"in {root}. A C compiler is needed for both.")


try:
    from . import _kernels as _baseline
except ImportError as _exc:
    raise _source_tree_error(_exc) from None

#: Targets from the most to the least capable.
ALL_TARGETS = ("amx", "avx512", "avx2", "baseline")

__all__ = ["ALL_TARGETS", "available_targets", "load", "kernels", "get_num_threads",
           "set_num_threads"]


def _module_name(target: str) -> str:
    return "qatcore._kernels" if target == "baseline" else f"qatcore._kernels_{target}"


def available_targets() -> "list[str]":
    """Targets that were built and that this CPU can run, best first."""
    found = []
    for target in ALL_TARGETS:
        if target != "baseline" and not _baseline.cpu_supports(target):
            continue
        try:
            importlib.import_module(_module_name(target))
        except ImportError:
            continue
        found.append(target)
    return found


def load(target: str) -> ModuleType:
    """The kernel module for `target`; ValueError if it was not built or the CPU lacks it."""
    if target not in ALL_TARGETS:
        raise ValueError(f"QATCORE_TARGET: unknown target {target!r}; expected one of {ALL_TARGETS}")
    if target != "baseline" and not _baseline.cpu_supports(target):
        if target == "amx" and _baseline.cpu_supports("avx512"):
            raise ValueError(f"QATCORE_TARGET: this CPU cannot run the 'amx' kernels: "
                             f"{_baseline.amx_status()}")
        raise ValueError(f"QATCORE_TARGET: this CPU cannot run the {target!r} kernels")
    try:
        return importlib.import_module(_module_name(target))
    except ImportError as exc:
        raise ValueError(f"QATCORE_TARGET: the {target!r} kernels were not built ({exc})") from exc


def _choose() -> ModuleType:
    forced = os.environ.get("QATCORE_TARGET", "").strip().lower()
    if forced:
        return load(forced)     # ValueError naming QATCORE_TARGET (the CLI prints one line)
    return load(available_targets()[0])


#: The kernel module every class uses.
kernels: ModuleType = _choose()

_num_threads = 1


def get_num_threads() -> int:
    """Library-wide default thread count for kernels (1 unless changed)."""
    return _num_threads


def set_num_threads(n: "int | np.integer[Any]") -> None:
    """Set the library-wide default thread count for kernels.

    One thread is the default: on a machine with few cores a preempted worker thread can
    stall a call for a scheduler tick, so threads are opt-in.
    """
    global _num_threads
    _num_threads = check_threads(n, "n")


def resolve_threads(n_threads: "Optional[int]") -> int:
    """An object's thread setting (None = follow the library-wide default)."""
    return _num_threads if n_threads is None else n_threads


def check_threads(n_threads: object, name: str = "n_threads") -> int:
    """Validate a thread count (None means the library-wide default)."""
    if n_threads is None:
        return _num_threads
    if type(n_threads) is int:
        n = n_threads
    else:
        from ._checks import check_index

        n = check_index(n_threads, name)
    if n < 1 or n > 64:
        raise ValueError(f"{name} must be between 1 and 64, got {n}")
    return n
