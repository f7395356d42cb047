"""Type aliases of the public API (for annotations only; nothing here runs at import).

The public classes accept what their docstrings say: any real array-like for float input
(`ArrayLike`), exact numpy arrays where the dtype matters (`out=`, integer codes), an
``ObserverMethod`` or its name in any case (`ObserverLike`), and Python or numpy real
scalars for scales and zero points (`Real`)."""

from __future__ import annotations

from typing import Any, Union

import numpy as np
import numpy.typing as npt

from .config import ObserverMethod

__all__ = ["ArrayLike", "F32Array", "Int8Array", "Int32Array", "ObserverLike", "Real",
           "Integer"]

ArrayLike = npt.ArrayLike
F32Array = npt.NDArray[np.float32]
Int8Array = npt.NDArray[np.int8]
Int32Array = npt.NDArray[np.int32]
#: ``ObserverMethod.PERCENTILE``, ``"percentile"``, ``"PERCENTILE"``, ``"mean-std"``...
ObserverLike = Union[ObserverMethod, str]
#: A real scalar: Python int/float or a numpy integer/floating scalar (not bool, not str).
Real = Union[float, int, np.floating[Any], np.integer[Any]]
Integer = Union[int, np.integer[Any]]
