"""Calibration as Dask reductions: the observers' ranges of arrays too large for one
process, on any Dask scheduler (threads, processes, a ``dask.distributed`` cluster).

``pip install "qatcore[dask]"``.  Only this module imports Dask.

How a tensor becomes one graph (each input chunk is read once, by one task):

* ``batch_axis=k``: a batch is one slice along axis k, as in the Rust multi-batch
  semantics.  The array is first rechunked so that every chunk holds whole batches (a
  chunk spans all of the other axes: a batch is observed whole in-process too); each
  chunk's task feeds its slices, in order, to its own :class:`~qatcore.QuantObserver`,
  and the chunk observers are folded with :meth:`~qatcore.QuantObserver.merge` in batch
  order by ``dask.array.reduction``'s tree combine.  ``merge`` is exact, so the result is
  the in-process one bit for bit, for all four observer methods.
* ``batch_axis=None``: the whole tensor is one batch.  MIN_MAX and MOVING_AVERAGE need
  only its min and max (exact chunk by chunk); PERCENTILE keeps, per chunk, the
  ``floor(n·0.001) + 1`` smallest and ``n - ceil(n·0.999)`` largest values and merges them
  (the exact order statistics; memory per task: the chunk plus ~0.2 % of the tensor);
  MEAN_STD merges per-chunk float64 moments with Chan's formula — within the documented
  2e-6 of the exact range, like the in-process kernel, whose last bit itself depends on
  how it splits the array across threads (bit-equal when the tensor is one chunk).

As in the in-process API and ``qatcore calibrate``, which of ``-0.0``/``+0.0`` ends a
range where both occur may depend on the chunking; the scale and zero point never do.

Errors are the in-process ones: a chunk never raises for a NaN/±Inf, it reports the
first bad position it saw and the reduction keeps the earliest, so the ``ValueError``
names the same index whatever chunk a worker happened to finish first.
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np

from ._checks import as_float32, raise_nonfinite
from .config import FakeQuantConfig, ObserverMethod
from .observer import QuantObserver, percentile_indices

__all__ = ["calibrate", "calibrate_graph"]

_F32 = np.float32
_MIN_MAX, _PERCENTILE = ObserverMethod.MIN_MAX, ObserverMethod.PERCENTILE
_MOVING_AVERAGE, _MEAN_STD = ObserverMethod.MOVING_AVERAGE, ObserverMethod.MEAN_STD


def _import_dask():
    try:
        import dask
        import dask.array as da
    except ImportError as exc:          # pragma: no cover - depends on the installation
        raise ImportError('qatcore.dask needs Dask: pip install "qatcore[dask]"') from exc
    return dask, da


# --- what a chunk's task returns ------------------------------------------------------
class _Bad:
    """The first non-finite value a part saw: sortable position, value, and the message
    the in-process ``observe`` gives for it."""

    __slots__ = ("key", "batch", "index", "value", "message")

    def __init__(self, key, batch, index, value, message):
        self.key, self.batch, self.index, self.value, self.message = key, batch, index, value, message

    def __getstate__(self):
        return tuple(getattr(self, n) for n in self.__slots__)

    def __setstate__(self, state):
        for n, v in zip(self.__slots__, state):
            setattr(self, n, v)


class _Part:
    """Partial statistics of a run of consecutive chunks (in C order of the chunk grid).

    ``start`` orders parts; ``obs`` (batch mode) is the chunk observer; ``lo``/``hi``
    (whole-tensor MIN_MAX/MOVING_AVERAGE), ``low``/``high`` (PERCENTILE candidates) and
    ``count``/``mean``/``m2`` (MEAN_STD) the whole-tensor statistics; ``bad`` the first
    non-finite value or None.
    """

    __slots__ = ("start", "obs", "lo", "hi", "low", "high", "count", "mean", "m2", "bad")

    def __init__(self, start):
        self.start = start
        self.obs = None
        self.lo, self.hi = float("inf"), -float("inf")
        self.low = self.high = None
        self.count, self.mean, self.m2 = 0, 0.0, 0.0
        self.bad = None

    def __getstate__(self):
        return tuple(getattr(self, n) for n in self.__slots__)

    def __setstate__(self, state):
        for n, v in zip(self.__slots__, state):
            setattr(self, n, v)


def _message(index, value, shape) -> str:
    try:
        raise_nonfinite("observe", {index: value}, index, shape)
    except ValueError as exc:
        return str(exc)
    raise AssertionError("unreachable")     # pragma: no cover


def _first_bad(data) -> int:
    bad = np.flatnonzero(~np.isfinite(data))
    return int(bad[0]) if bad.size else -1


# --- chunk tasks ------------------------------------------------------------------------
def _batch_chunk(block, method, axis, nb, block_info=None):
    """Observe the slices of one chunk (whole batches along `axis`) in order."""
    loc = block_info[0]["array-location"]
    start = loc[axis][0]
    part = _Part(start)
    obs = QuantObserver(method, n_threads=1)
    index = [slice(None)] * block.ndim
    for j in range(block.shape[axis]):
        index[axis] = j
        x = block[tuple(index)]          # a view; observe converts it as np.take's copy
        try:
            obs.observe(x)
        except ValueError as exc:
            data, _ = as_float32(x)
            i = _first_bad(data)
            value = float(data[i]) if i >= 0 else float("nan")
            part.bad = _Bad((start + j, i), start + j, i, value, str(exc))
            break
    part.obs = obs
    return _wrap(part, block.ndim)


def _whole_chunk(block, method, shape, k_low, k_high, order="C", block_info=None):
    """Whole-tensor statistics of one chunk (the tensor is one batch)."""
    loc = block_info[0]["array-location"]
    offsets = tuple(a for a, _ in loc)
    start = int(np.ravel_multi_index(offsets, shape)) if shape else 0
    part = _Part(start)
    data, bshape = as_float32(block)
    n = data.shape[0]
    if n == 0:
        return _wrap(part, block.ndim)
    bad = np.flatnonzero(~np.isfinite(data))
    if bad.size:
        # The chunk's C order is the tensor's C order restricted to it: its first bad
        # element is its lowest flat index in the tensor.  With order="F" the first is
        # taken in Fortran memory order (what `qatcore calibrate` scans for a Fortran
        # file), still reported by its C index.
        pos = [p + o for p, o in zip(np.unravel_index(bad, bshape), offsets)]
        j = int(np.argmin(np.ravel_multi_index(pos, shape, order="F"))) if order == "F" else 0
        g = int(np.ravel_multi_index(tuple(int(p[j]) for p in pos), shape))
        value = float(data[bad[j]])
        key = int(np.ravel_multi_index(tuple(int(p[j]) for p in pos), shape, order=order))
        part.bad = _Bad((key,), None, g, value, _message(g, value, shape))
        return _wrap(part, block.ndim)
    if method is _MIN_MAX or method is _MOVING_AVERAGE:
        mm = QuantObserver(_MIN_MAX, n_threads=1)
        mm.observe(data)
        part.lo, part.hi = mm.range()
    elif method is _PERCENTILE:
        total = int(np.prod(shape)) if shape else 1
        m_low, m_high = k_low + 1, total - k_high
        part.low = _smallest(data, m_low)
        part.high = _largest(data, m_high)
    else:
        from . import _backend

        mean, std, _ = _backend.kernels.mean_std(data, 1)
        part.count, part.mean, part.m2 = n, mean, std * std * n
    return _wrap(part, block.ndim)


def _smallest(a, m):
    """The m smallest values of a (as a multiset, any order): the kernel's selection of
    the m-th order statistic t, then the values below t and enough copies of t."""
    n = a.shape[0]
    if n <= m:
        return np.array(a, dtype=np.float32)
    from . import _backend

    t, _, _ = _backend.kernels.select_order_stats(a, m - 1, m - 1, 1)
    below = a[a < t]
    return np.concatenate([below, np.full(m - below.shape[0], t, np.float32)])


def _largest(a, m):
    """The m largest values of a (as a multiset, any order)."""
    n = a.shape[0]
    if n <= m:
        return np.array(a, dtype=np.float32)
    from . import _backend

    t, _, _ = _backend.kernels.select_order_stats(a, n - m, n - m, 1)
    above = a[a > t]
    return np.concatenate([above, np.full(m - above.shape[0], t, np.float32)])


def _wrap(part, ndim):
    out = np.empty((1,) * ndim, dtype=object)
    out.reshape(-1)[0] = part
    return out


# --- combining --------------------------------------------------------------------------
def _flatten(parts):
    if isinstance(parts, _Part):
        yield parts
    elif isinstance(parts, np.ndarray):
        for p in parts.reshape(-1):
            yield from _flatten(p)
    else:
        for p in parts:
            yield from _flatten(p)


def _merge_parts(parts, method, k_low, k_high, total):
    """Fold parts in their order (``start``): exact for batch-mode observers and the
    whole-tensor min/max; MEAN_STD by Chan et al.'s pairwise update."""
    parts = sorted(_flatten(parts), key=lambda p: p.start)
    acc = parts[0]
    for p in parts[1:]:
        if p.bad is not None or acc.bad is not None:
            # Past the first bad value nothing else matters: the result is that error.
            if p.bad is not None and (acc.bad is None or p.bad.key < acc.bad.key):
                acc.bad = p.bad
            continue
        if p.obs is not None:
            if acc.obs is None:
                acc.obs = p.obs
            else:
                acc.obs.merge(p.obs)
            continue
        if p.lo < acc.lo:
            acc.lo = p.lo
        if p.hi > acc.hi:
            acc.hi = p.hi
        if p.low is not None:
            acc.low = p.low if acc.low is None else _smallest(np.concatenate([acc.low, p.low]), k_low + 1)
            acc.high = p.high if acc.high is None else _largest(np.concatenate([acc.high, p.high]),
                                                                total - k_high)
        if p.count:
            n = acc.count + p.count
            delta = p.mean - acc.mean
            acc.m2 = acc.m2 + p.m2 + delta * delta * (acc.count * p.count) / n
            acc.mean = acc.mean + delta * p.count / n
            acc.count = n
    return acc


def _combine(parts, axis=None, keepdims=False, method=None, k_low=0, k_high=0, total=0):
    part = _merge_parts(parts, method, k_low, k_high, total)
    return _wrap(part, len(axis) if axis is not None else 0) if keepdims else part


def _aggregate(parts, axis=None, keepdims=False, **kw):
    part = _merge_parts(parts, kw["method"], kw["k_low"], kw["k_high"], kw["total"])
    out = np.empty((), dtype=object)
    out[()] = part
    return out


def _identity(block, axis=None, keepdims=False):
    return block


# --- building and finishing -------------------------------------------------------------
def _as_dask(x, name):
    _, da = _import_dask()
    if not isinstance(x, da.Array):
        raise TypeError(f"{name} must be a dask.array.Array, got {type(x).__name__}")
    if any(math.isnan(c) for cs in x.chunks for c in cs):
        raise ValueError(f"{name} has unknown chunk sizes; call .compute_chunk_sizes() first")
    kind = np.dtype(x.dtype).kind
    if kind not in "biuf":
        what = "complex" if kind == "c" else str(x.dtype)
        raise TypeError(f"{name} must be a real numeric array, got dtype {what}")
    return x


def calibrate_graph(x, config: FakeQuantConfig, batch_axis: Optional[int] = None,
                    split_every=None, name: str = "x", _nan_order: str = "C"):
    """The lazy reduction behind :func:`calibrate` for one dask array: a 0-d dask array of
    dtype object whose computed value :func:`finish` turns into the result.  For
    callers that schedule several tensors themselves (one ``dask.compute`` call)."""
    _, da = _import_dask()
    x = _as_dask(x, name)
    method = config.observer
    shape = tuple(int(s) for s in x.shape)
    if batch_axis is not None:
        if isinstance(batch_axis, bool) or not isinstance(batch_axis, (int, np.integer)):
            raise TypeError(f"batch_axis must be an int or None, got {type(batch_axis).__name__}")
        if not -len(shape) <= batch_axis < len(shape):
            raise ValueError(f"batch_axis {batch_axis} is out of range for {name} of shape {shape}")
        axis = int(batch_axis) % len(shape)
        x = x.rechunk({a: -1 for a in range(len(shape)) if a != axis})
        nb = shape[axis]
        if nb == 0:
            return None
        parts = x.map_blocks(_batch_chunk, method, axis, nb, dtype=object,
                             chunks=tuple((1,) * len(c) for c in x.chunks), meta=np.empty((0,) * x.ndim, object))
        kw = dict(method=method, k_low=0, k_high=0, total=0)
    else:
        total = int(np.prod(shape)) if shape else 1
        if total == 0:
            return None
        if x.ndim == 0:
            x = x.reshape(1)
            shape = (1,)
        k_low, k_high = percentile_indices(total) if method is _PERCENTILE else (0, 0)
        parts = x.map_blocks(_whole_chunk, method, shape, k_low, k_high, _nan_order, dtype=object,
                             chunks=tuple((1,) * len(c) for c in x.chunks), meta=np.empty((0,) * x.ndim, object))
        kw = dict(method=method, k_low=k_low, k_high=k_high, total=total)
    from functools import partial

    return da.reduction(parts, _identity, partial(_aggregate, **kw), combine=partial(_combine, **kw),
                        axis=None, keepdims=False, dtype=object, split_every=split_every,
                        concatenate=False, meta=np.empty((), object), name="qatcore-calibrate")


def finish(part, config: FakeQuantConfig, shape, batch_axis, name=None) -> dict:
    """The result dict of one tensor from its computed reduction (raises its error)."""
    method = config.observer
    prefix = "" if name is None else f"{name}: "
    if part is not None and not isinstance(part, _Part):
        part = np.asarray(part, dtype=object)[()]
    if part is not None and part.bad is not None:
        err = ValueError(prefix + part.bad.message)
        err.qatcore_position = (part.bad.batch, part.bad.index, part.bad.value)
        raise err
    if batch_axis is not None:
        axis = int(batch_axis) % len(shape)
        batches = shape[axis]
        obs = part.obs if part is not None else QuantObserver(method)
    else:
        batches = 0 if part is None else 1
        obs = QuantObserver(method)
        if part is not None:
            if method is _MIN_MAX:
                obs._min, obs._max, obs._count = part.lo, part.hi, 1
            elif method is _MOVING_AVERAGE:
                obs.observe(np.array([part.lo, part.hi], dtype=np.float32))
            elif method is _PERCENTILE:
                obs._min, obs._max, obs._count = float(part.low.max()), float(part.high.min()), 1
            else:
                mean, std = part.mean, math.sqrt(part.m2 / part.count)
                with np.errstate(over="ignore"):
                    lo, hi = float(_F32(mean - 3.0 * std)), float(_F32(mean + 3.0 * std))
                if not (math.isfinite(lo) and math.isfinite(hi)):
                    raise ValueError(prefix + "observe: mean ± 3·std of x overflows float32")
                obs._min, obs._max, obs._count = lo, hi, 1
    obs._n_threads = None
    lo, hi = obs.range()
    scale, zero_point = obs.compute_qparams(config)
    return {"min": lo if obs.count else None, "max": hi if obs.count else None,
            "scale": scale, "zero_point": zero_point, "batches": batches, "observer": obs}


def calibrate(arrays, config: FakeQuantConfig = None, batch_axis: Optional[int] = None, *,
              scheduler=None, split_every=None):
    """Calibrate dask arrays on any Dask scheduler: per tensor, the range, scale and zero
    point that :class:`~qatcore.QuantObserver` gives in-process, bit for bit.

    Parameters
    ----------
    arrays : dask.array.Array or dict of str to dask.array.Array
        One tensor, or named tensors (all computed in one ``dask.compute`` call).
    config : FakeQuantConfig, optional
        Bits, symmetry and observer method (default ``FakeQuantConfig()``).
    batch_axis : int, optional
        A batch is one slice along this axis (``observe`` once per slice, in order);
        ``None``: the whole tensor is one batch.  Chunks are rechunked so that each holds
        whole batches.
    scheduler : str or distributed.Client, optional
        Passed to ``dask.compute`` (``"threads"``, ``"processes"``, ``"sync"``, a
        client); default: the active one (a ``distributed.Client`` if one exists).
    split_every : int, optional
        Fan-in of the tree combine (``dask.array.reduction``).

    Returns
    -------
    dict
        For one array: ``{"min", "max", "scale", "zero_point", "batches", "observer"}``
        (``min``/``max`` None when nothing was observed; ``observer`` the merged
        :class:`~qatcore.QuantObserver`, whose ``state_dict()`` can be saved and merged
        later); for a dict of arrays, a dict of those by name.

    Raises
    ------
    ValueError
        A NaN/±Inf in the data: the in-process ``observe`` error (the first bad index,
        in the batch of the first bad batch), prefixed with the tensor's name for a dict;
        a bad `batch_axis`; unknown chunk sizes.
    TypeError
        Not a dask array, a non-numeric dtype, `config` not a FakeQuantConfig.
    ImportError
        Dask is not installed (``pip install "qatcore[dask]"``).

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> from qatcore import FakeQuantConfig, QuantObserver
    >>> from qatcore.dask import calibrate
    >>> x = np.random.default_rng(0).normal(size=(64, 1000)).astype(np.float32)
    >>> cfg = FakeQuantConfig().with_observer("moving_average")
    >>> r = calibrate(da.from_array(x, chunks=(8, 500)), cfg, batch_axis=0, scheduler="sync")
    >>> obs = QuantObserver("moving_average")
    >>> for batch in x:
    ...     obs.observe(batch)
    >>> (r["min"], r["max"]) == obs.range(), r["scale"] == obs.compute_qparams(cfg)[0]
    (True, True)
    """
    dask, _ = _import_dask()
    if config is None:
        config = FakeQuantConfig()
    if not isinstance(config, FakeQuantConfig):
        raise TypeError(f"config must be a FakeQuantConfig, got {type(config).__name__}")
    single = not isinstance(arrays, dict)
    named: Dict[str, object] = {None: arrays} if single else dict(arrays)
    if not single:
        for k in named:
            if not isinstance(k, str):
                raise TypeError(f"arrays: keys must be str, got {type(k).__name__}")
    graphs, shapes = {}, {}
    for key, x in named.items():
        label = "arrays" if key is None else f"arrays[{key!r}]"
        graphs[key] = calibrate_graph(x, config, batch_axis, split_every, label)
        shapes[key] = tuple(int(s) for s in x.shape)
    lazy = {k: g for k, g in graphs.items() if g is not None}
    kwargs = {} if scheduler is None else {"scheduler": scheduler}
    computed = dict(zip(lazy, dask.compute(*lazy.values(), **kwargs))) if lazy else {}
    results = {}
    for key in named:
        results[key] = finish(computed.get(key), config, shapes[key], batch_axis, key)
    return results[None] if single else results
