"""Feeding qatcore observers from tensor files (``qatcore calibrate``, in-process and on
Dask through :mod:`.calibrate_dask`).

``calibrate`` runs the public API (:class:`qatcore.QuantObserver`,
:class:`qatcore.FakeQuantConfig`) over tensor files read in bounded chunks, so its figures are
the API's figures bit for bit.  Input files are never memory-mapped (a file truncated by
another process while mapped would kill the run with SIGBUS; a short read is one error
line instead, see :mod:`.readers`).  How each observer is fed without loading a tensor whole:

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
"""

from __future__ import annotations

from ._common import _F32_MAX, _Fail, _io_error, _show

#: Elements per chunk when a tensor is converted piecewise (16 MiB of float32 out).
CHUNK_ELEMS = 1 << 22
#: Elements per read when a float32 tensor is used as stored (16 MiB buffer): large enough
#: that the per-call thread start-up is noise, small enough to bound the heap.
WINDOW_ELEMS = 1 << 22


def memory_chunks(ref):
    """``ref.memory_chunks`` at this module's CHUNK_ELEMS (read at call time)."""
    return ref.memory_chunks(CHUNK_ELEMS)


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

    from .. import QuantObserver
    from ..config import ObserverMethod
    from .readers import materialize_float32, to_float32

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
