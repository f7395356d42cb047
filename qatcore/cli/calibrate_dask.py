"""``qatcore calibrate --dask-workers N`` / ``--scheduler ADDRESS``: the same calibration
on a ``dask.distributed`` cluster (a local one with N worker processes, or a running one).

Each tensor file becomes a dask array whose chunks the workers read themselves (the
chunk's window of the file read into a bounded buffer -- never memory-mapped, so a file
truncated meanwhile is an error, not a SIGBUS -- converted to float32 on the worker: the
client never touches the data), and :func:`qatcore.dask.calibrate_graph`
reduces it; results, JSON and error messages are those of the in-process command.
Deflated ``.npz`` members cannot be read piecewise by several processes and are
calibrated in the client process, as without Dask.
"""

from __future__ import annotations

import os
import threading

import numpy as np

#: Elements per chunk a worker reads (64 MiB of float32): the bound on a worker's memory.
DASK_CHUNK_ELEMS = 1 << 24
#: Upper bound of ``--dask-workers`` (each is a process on this machine).
MAX_DASK_WORKERS = 256


__all__ = ["DASK_CHUNK_ELEMS", "ReadError", "dask_calibrator"]


class ReadError(Exception):
    """A worker could not read its chunk of a file (a one-line message naming the file)."""


class _FileArray:
    """A random-access tensor in a file, sliceable by dask.array.from_array: each
    ``__getitem__`` reads just the window holding the requested block and returns it as
    float32 (the conversions of ``qatcore calibrate``).  Pickles as the file reference."""

    def __init__(self, ref):
        self.ref = ref
        self.shape = ref.shape
        self.ndim = len(ref.shape)
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, index):
        ref = self.ref
        if not isinstance(index, tuple):
            index = (index,)
        index = index + (slice(None),) * (self.ndim - len(index))
        starts, shape = [], []
        for sl, n in zip(index, self.shape):
            a, b, step = sl.indices(n)
            if step != 1:                   # pragma: no cover - from_array never asks
                return ref.to_float32(ref.array()[index])
            starts.append(a)
            shape.append(max(b - a, 0))
        if 0 in shape or self.ndim == 0:
            if self.ndim == 0:
                return ref.to_float32(np.array(ref.array()))
            return np.empty(shape, np.float32)
        order = "F" if ref.fortran_order else "C"
        item = ref.dtype.itemsize
        strides = np.empty(self.shape, dtype=np.uint8, order=order).strides   # in elements
        last = [s + k - 1 for s, k in zip(starts, shape)]
        first = int(np.ravel_multi_index(starts, self.shape, order=order))
        stop = int(np.ravel_multi_index(last, self.shape, order=order)) + 1
        try:
            window = ref._read(first, stop - first)
        except Exception as exc:        # InputError does not pickle back to the client
            raise ReadError(str(exc)) from None
        block = np.lib.stride_tricks.as_strided(
            window, shape=tuple(shape), strides=tuple(s * item for s in strides), writeable=False)
        return ref.to_float32(block)


def _chunks(shape, batch_axis, limit=DASK_CHUNK_ELEMS):
    """Chunk sizes: whole batches per chunk along `batch_axis`; otherwise C-order runs of
    rows (each chunk a contiguous window of a C-order file)."""
    if not shape:
        return ()
    if batch_axis is not None:
        axis = batch_axis % len(shape)
        per = int(np.prod([s for i, s in enumerate(shape) if i != axis], dtype=np.int64))
        return tuple(max(1, limit // max(per, 1)) if i == axis else -1 for i in range(len(shape)))
    chunks = []
    inner = int(np.prod(shape, dtype=np.int64))
    for i, n in enumerate(shape):
        inner //= max(n, 1)
        if inner <= limit:
            chunks.append(max(1, limit // max(inner, 1)))
            chunks.extend(-1 for _ in shape[i + 1:])
            return tuple(chunks)
        chunks.append(1)
    return tuple(chunks)         # pragma: no cover


class _ProgressFeed:
    """Feeds the command's progress bar from the scheduler's count of finished tasks."""

    def __init__(self, futures, progress):
        self.progress = progress
        self.thread = None
        if not progress.enabled:
            return
        try:
            from distributed.diagnostics.progressbar import TextProgressBar

            feed = self

            class _Bar(TextProgressBar):
                def _draw_bar(self, remaining, all, **kwargs):
                    frac = (1 - remaining / all) if all else 1.0
                    feed.progress.done = frac * feed.progress.total

                def _draw_stop(self, **kwargs):
                    pass

            bar = _Bar(futures, start=False)
            self.thread = threading.Thread(target=lambda: bar._loop_runner.run_sync(bar.listen),
                                           name="qatcore-dask-progress", daemon=True)
            self.thread.start()
        except Exception:       # progress is a nicety: never fail the calibration for it
            self.thread = None


def open_client(args, opened=None):
    """A ``distributed.Client`` for ``--dask-workers N`` (a new local cluster) or
    ``--scheduler ADDRESS``; returns (client, cluster-or-None), each also appended to
    `opened` as soon as it exists (so an interrupt right after can close it).  Raises
    _Fail."""
    opened = [] if opened is None else opened
    from ._common import _Fail

    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise _Fail('--dask-workers/--scheduler need Dask: pip install "qatcore[dask]"') from None
    if args.scheduler is not None:
        try:
            client = Client(args.scheduler, timeout="10s")
            opened.append(client)
            return client, None
        except (OSError, TimeoutError, ValueError) as exc:
            raise _Fail(f"--scheduler {args.scheduler}: cannot connect: {exc}") from None
    n = args.dask_workers
    if n < 1:
        raise _Fail(f"--dask-workers must be at least 1, got {n}")
    if n > MAX_DASK_WORKERS:
        raise _Fail(f"--dask-workers must be at most {MAX_DASK_WORKERS}, got {n}")
    threads = args.threads if args.threads is not None else 1
    import warnings

    with warnings.catch_warnings():
        # No dashboard; the scheduler's small HTTP server still binds a port and warns
        # when 8787 is taken by another cluster. That is not the user's concern here.
        warnings.filterwarnings("ignore", message="Port .* is already in use")
        cluster = LocalCluster(n_workers=n, threads_per_worker=threads, processes=True,
                               dashboard_address=None, silence_logs=50)
    opened.append(cluster)
    client = Client(cluster)
    opened.append(client)
    return client, cluster


class _SigintDeferred:
    """Ctrl-C while a local cluster starts is remembered, not raised inside distributed's
    constructor (which left a half-built cluster whose exit handler printed a traceback),
    and raised as KeyboardInterrupt when the block ends, once the cluster exists and can
    be closed.  Only in the main thread (where Python handles signals)."""

    def __enter__(self):
        import signal
        import threading

        self.old = None
        self.hit = False
        if threading.current_thread() is threading.main_thread():
            def remember(signum, frame):
                self.hit = True

            self.old = signal.signal(signal.SIGINT, remember)
        return self

    def __exit__(self, *exc):
        import signal

        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
            if self.hit and exc[0] is None:
                raise KeyboardInterrupt
        return False


#: First statement of every process spawned while a local cluster runs (see
#: _QuietWorkers): SIGINT ignored before anything is imported.
_IGNORE_SIGINT = "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "


class _QuietWorkers:
    """Worker processes of our local cluster ignore SIGINT from their first statement.

    Ctrl-C at a terminal signals the whole foreground process group: the command and
    every worker process, which each died with a KeyboardInterrupt traceback of its own
    (33 lines for two workers) before the command's one line.  The command alone handles
    the interrupt: it closes the cluster, which stops the workers.  multiprocessing
    spawns a worker as ``python -c "from multiprocessing.spawn import spawn_main; ..."``;
    while the cluster runs, that program starts by ignoring SIGINT (an ignored signal
    also keeps asyncio from installing its handler in the worker).  Our own process keeps
    its handler.  Undone by :meth:`close`."""

    def __init__(self):
        import multiprocessing.spawn as spawn

        self.spawn = spawn
        self.original = spawn.get_command_line

        def get_command_line(**kwds):
            cmd = list(self.original(**kwds))
            if "-c" in cmd[:-1]:
                i = cmd.index("-c") + 1
                cmd[i] = _IGNORE_SIGINT + cmd[i]
            return cmd

        spawn.get_command_line = get_command_line

    def close(self):
        if self.spawn is not None:
            self.spawn.get_command_line = self.original
            self.spawn = None


def calibrate_refs(args, refs, config, progress, client):
    """Calibrate `refs` on `client`; returns [(ref, result-or-None, error-or-None)] in
    the order of `refs` (error: the command's one-line message)."""
    from .. import QuantObserver
    from ._common import _Fail, _io_error, _show
    from .observe import _calibrate_one, _position_text, _stored_value
    from ..dask import calibrate_graph, finish

    import dask.array as da

    axis_arg = args.batch_axis
    graphs, local = {}, []
    for i, ref in enumerate(refs):
        if not ref.random_access:
            local.append(i)
            continue
        axis = None if axis_arg is None else axis_arg % len(ref.shape)
        x = da.from_array(_FileArray(ref), chunks=_chunks(ref.shape, axis), asarray=False,
                          fancy=False, name=f"qatcore-read-{i}-{os.path.basename(ref.path)}",
                          meta=np.empty((0,) * len(ref.shape), np.float32))
        # Whole-tensor MIN_MAX/MOVING_AVERAGE scan a file in memory order in-process.
        scan = "F" if ref.fortran_order and config.observer.value in ("min_max", "moving_average") else "C"
        g = calibrate_graph(x, config, axis, name=ref.name, _nan_order=scan)
        graphs[i] = g
    lazy = {i: g for i, g in graphs.items() if g is not None}
    futures = client.compute(list(lazy.values())) if lazy else []
    feed = _ProgressFeed(futures, progress) if futures else None
    by_index = dict(zip(lazy, futures))

    out = []
    for i, ref in enumerate(refs):
        if i in local:
            try:
                obs, batches = _calibrate_one(ref, config, axis_arg, 1, progress)
            except (_Fail, _io_error()) as exc:
                out.append((ref, None, str(exc)))
                continue
            out.append((ref, (obs, batches), None))
            continue
        try:
            part = by_index[i].result() if i in by_index else None
            r = finish(part, config, ref.shape, axis_arg)
        except ValueError as exc:
            pos = getattr(exc, "qatcore_position", None)
            if pos is None:
                out.append((ref, None, f"{_show(ref.name)}: {str(exc).removeprefix('observe: ')}"))
                continue
            batch, index, value = pos
            if batch is None:
                where, c_flat = _position_text(ref, index), index
            else:
                axis = axis_arg % len(ref.shape)
                slice_shape = ref.shape[:axis] + ref.shape[axis + 1:]
                p = tuple(int(v) for v in np.unravel_index(index, slice_shape)) if slice_shape else ()
                p = p[:axis] + (batch,) + p[axis:]
                where = f"batch {batch} along axis {axis}, position {p}"
                c_flat = int(np.ravel_multi_index(p, ref.shape))
            stored = _stored_value(ref, c_flat)
            if stored is not None:
                out.append((ref, None, f"{_show(ref.name)}: value {stored!r} at {where} is "
                            "outside the float32 range that calibration computes in "
                            "(|x| <= 3.4028234663852886e+38)"))
                continue
            out.append((ref, None, f"{_show(ref.name)}: non-finite value {value!r} at {where}"))
            continue
        except (_io_error(), ReadError) as exc:
            out.append((ref, None, str(exc)))
            continue
        obs = r["observer"]
        if not isinstance(obs, QuantObserver):      # pragma: no cover
            raise TypeError("internal: no observer")
        out.append((ref, (obs, r["batches"]), None))
    if feed is not None and feed.thread is not None:
        feed.thread.join(timeout=1.0)
    return out


def dask_calibrator(args, refs, config, progress):
    """Run every tensor of `refs` on the cluster the arguments ask for; returns
    ``(calibrate_one, close)``: a drop-in for the command's per-tensor function that
    hands back each result (raising its one-line error as ``_Fail``), and the function
    that shuts the client (and a cluster it started) down."""
    from ._common import _Fail

    opened: list = []

    def close():
        for thing in reversed(opened):      # the client, then a cluster we started
            try:
                thing.close()
            except Exception:               # closing is best effort (workers gone, ...)
                pass
        opened.clear()

    try:
        if args.scheduler is None:
            opened.append(_QuietWorkers())     # closed last: after the cluster
        with _SigintDeferred():
            client, cluster = open_client(args, opened)
        done = {id(ref): (res, err) for ref, res, err in calibrate_refs(args, refs, config, progress, client)}
    except _Fail:
        close()
        raise
    except Exception as exc:        # the cluster itself failed (lost workers, environments)
        close()
        raise _Fail(f"dask: {type(exc).__name__}: {exc}") from None
    except BaseException:
        close()
        raise

    def calibrate_one(ref, config, batch_axis, n_threads, progress, obs=None):
        res, err = done[id(ref)]
        if err is not None:
            raise _Fail(err)
        if obs is None:
            return res
        part, batches = res
        obs.merge(part)             # --merge-by-name: this file's batches after the earlier ones
        return obs, batches

    return calibrate_one, close
