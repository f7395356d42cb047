"""Whole-model calibration of an ONNX model in onnxruntime, in memory bounded by one batch.

``calibrate_model`` runs the model over calibration inputs with the activations it needs
exposed as extra graph outputs (the tensors onnxruntime's own calibrators select), feeds
each activation of each batch to its qatcore observer and drops it, so memory stays at
one batch's activations whatever the number of inputs (onnxruntime's calibrators keep
every batch's outputs until the end: microsoft/onnxruntime#10503, #11020).  Each range is
held inside what its producing op can output and, for the methods that clip, to a floor of
the observed mass (:mod:`qatcore.onnx.graph`, ``max_clip``).  The ranges go to a
calibration JSON and, with ``qdq_path``, into qatcore's QDQ writer (:mod:`qatcore.onnx.qdq`,
placement in :mod:`qatcore.onnx.placement`) or onnxruntime's ``quantize_static`` (reading
them as its calibration cache, so no second calibration runs).

Needs ``pip install "qatcore[onnx]"`` (onnx, onnxruntime); Pillow only for image folders.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Mapping, Tuple

import numpy as np

from ..config import ObserverMethod
from ..histogram import ChannelObserver, HistogramObserver, percentile_threshold
from ..observer import QuantObserver

__all__ = ["calibrate_model", "CalibrationResult", "CalibrationWarning", "METHODS",
           "iter_inputs", "preprocess_model", "write_qdq", "write_qdq_onnxruntime"]

#: Calibration methods of :func:`calibrate_model`.
METHODS = ("min_max", "mean_min_max", "mean_std", "percentile", "entropy", "entropy_signed",
           "mse", "auto")

#: Methods whose range may cut deep into the observed values (a search over the histogram,
#: or a statistic); they fall back when they do (see ``max_clip``).
CLIPPING_METHODS = ("entropy", "entropy_signed", "mse", "mean_std", "mean_min_max")

#: Fallback percentile (per side) of a method that clipped too much.
FALLBACK_PERCENTILE = 99.99

_FLOAT_TYPES = None                # filled lazily: onnx TensorProto float types


def _require():
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:      # pragma: no cover - exercised where the extra is missing
        raise ImportError('qatcore.onnx needs onnx and onnxruntime: '
                          'pip install "qatcore[onnx]"') from exc
    return onnx, onnxruntime


class CalibrationResult(dict):
    """``{tensor name: (lo, hi)}`` plus how it was obtained (attributes `method`,
    `batches`, `samples`, `seconds`, `model`, `options`)."""

    method: str = ""
    batches: int = 0
    samples: int = 0
    seconds: float = 0.0
    model: str = ""
    options: dict = {}
    #: tensor -> why a search method's range fell back to a percentile
    fallbacks: dict = {}
    #: tensor -> ((lo, hi) of the method, (lo, hi) held inside what its op can output)
    held: dict = {}
    #: tensor -> share of the observed values outside the range (where a histogram exists)
    clipped: dict = {}
    #: what the caller should know (also emitted as CalibrationWarning)
    warnings: list = []
    #: tensor -> (C, 2) per-channel min/max of depthwise Conv inputs
    channel_ranges: dict = {}
    #: tensor -> (counts, edges) when keep_histograms
    histograms: dict = {}
    #: the qatcore QDQ writer's Placement, when it wrote one
    placement = None
    #: [(layer, op type, output SQNR dB with only that layer quantized)], worst first
    sensitivity: list = []
    #: layer -> per-channel bias shift applied (bias_correction)
    bias_shift: dict = {}

    def to_json(self) -> dict:
        """The calibration JSON (format ``qatcore-calibration/1``)."""
        doc = {"format": "qatcore-calibration/1", "model": self.model, "method": self.method,
               "options": self.options, "batches": self.batches, "samples": self.samples,
               "tensors": {k: {"min": v[0], "max": v[1]} for k, v in sorted(self.items())}}
        if self.fallbacks:
            doc["fallbacks"] = dict(sorted(self.fallbacks.items()))
        if self.held:
            doc["held_to_op_range"] = {k: {"method": list(a), "held": list(b)}
                                       for k, (a, b) in sorted(self.held.items())}
        if self.warnings:
            doc["warnings"] = list(self.warnings)
        return doc


class CalibrationWarning(UserWarning):
    """A calibration range clips much of what was observed, or the model's output."""


class MeanMinMaxObserver:
    """The mean over batches of each batch's min and max (NNCF's ``MEAN_MINMAX``; less
    swayed by one batch's outlier than the global min/max)."""

    __slots__ = ("_batch", "_lo", "_hi", "_n")

    def __init__(self):
        self._batch = QuantObserver(ObserverMethod.MIN_MAX)
        self._lo = self._hi = 0.0
        self._n = 0

    def observe(self, x) -> None:
        if np.size(x) == 0:
            return
        self._batch.observe(x)
        lo, hi = self._batch.range()
        self._batch.reset()
        self._lo += float(lo)
        self._hi += float(hi)
        self._n += 1

    def range(self):
        if self._n == 0:
            return math.inf, -math.inf
        return self._lo / self._n, self._hi / self._n


class AutoRangeObserver:
    """Per tensor, the candidate range of least expected int8 error on the tensor's own
    histogram: the observed min/max or the 99.9 / 99.99 / 99.999th percentile per side;
    the error of a candidate is ``scale²/12`` for each value inside and the squared
    distance to the range for each value outside (``scale = (hi − lo) / 255``)."""

    CANDIDATES = (None, 99.9, 99.99, 99.999)

    def __init__(self, bins=2048):
        self.hist = HistogramObserver("percentile", bins=bins, symmetric=False)
        self.choice = None

    def observe(self, x) -> None:
        self.hist.observe(x)

    def range(self):
        counts, edges = self.hist.histogram(False)
        if counts.sum() == 0:
            return self.hist.range()
        centers = (edges[:-1] + edges[1:]) / 2
        nz = np.flatnonzero(counts)
        obs = (float(edges[nz[0]]), float(edges[nz[-1] + 1]))
        best = None
        for p in self.CANDIDATES:
            lo, hi = obs if p is None else (float(v) for v in percentile_threshold(counts, edges, p, False))
            lo, hi = max(min(lo, 0.0), obs[0]), min(max(hi, 0.0), obs[1])
            scale = (hi - lo) / 255.0
            outside = np.clip(centers, lo, hi) - centers
            err = float((counts * outside ** 2).sum() + counts[outside == 0].sum() * scale ** 2 / 12)
            if best is None or err < best[0]:
                best = (err, lo, hi, p)
        self.choice = "min_max" if best[3] is None else f"percentile {best[3]}"
        return best[1], best[2]


def _make_observer(method, percentile, symmetric, bins):
    if method == "auto":
        return AutoRangeObserver(bins)
    if method == "mean_min_max":
        return MeanMinMaxObserver()
    if method == "min_max":
        return QuantObserver(ObserverMethod.MIN_MAX)
    if method == "mean_std":
        return QuantObserver(ObserverMethod.MEAN_STD)
    if method == "percentile":
        return HistogramObserver("percentile", bins=bins, percentile=percentile, symmetric=symmetric)
    return HistogramObserver(method, bins=bins)


from .inputs import _IMAGE_EXT, iter_inputs  # noqa: E402  (re-exported)


# --- the graph --------------------------------------------------------------------------------
def tensors_to_calibrate(model, op_types=None):
    """Float activations onnxruntime's calibrators would calibrate: inputs and outputs of
    the nodes of `op_types` (all nodes by default) that are float32/float16 tensors, not
    initializers (the model's outputs included, as onnxruntime does: its quantizer pins a
    Softmax output to [0, 1] and needs the entry).
    Returns ``(names, value_infos)``."""
    onnx, _ = _require()
    tp = onnx.TensorProto
    inferred = onnx.shape_inference.infer_shapes(model)
    value_infos = {vi.name: vi for vi in itertools.chain(
        inferred.graph.value_info, inferred.graph.input, inferred.graph.output)}
    initializers = {init.name for init in inferred.graph.initializer}
    names = []
    seen = set()
    for node in inferred.graph.node:
        if op_types and node.op_type not in op_types:
            continue
        for name in itertools.chain(node.input, node.output):
            vi = value_infos.get(name)
            if (vi is None or name in seen or name in initializers
                    or not vi.type.HasField("tensor_type")
                    or vi.type.tensor_type.elem_type not in (tp.FLOAT, tp.FLOAT16)):
                continue
            seen.add(name)
            names.append(name)
    return names, value_infos


def _progress(i, total, t0, stream):
    rate = i / max(time.perf_counter() - t0, 1e-9)
    of = f"/{total}" if total else ""
    stream.write(f"\rcalibrate: batch {i}{of} ({rate:.1f} batches/s)")
    stream.flush()


# --- the API ------------------------------------------------------------------------------------
def calibrate_model(model_path, data, *, method="auto", percentile=99.999, symmetric=False,
                    bins=2048, op_types=None, image_size=None, image_mean=(0.5, 0.5, 0.5),
                    image_std=(0.5, 0.5, 0.5), json_path=None, qdq_path=None,
                    per_channel=True, preprocess=True, progress=False,
                    providers=None, session_options=None, max_clip=0.001,
                    qdq_writer="qatcore", preset="auto", quantize_fragile=False,
                    keep_float=(), keep_histograms=False, warn=True, bias_correction=False,
                    sensitivity=False, keep_float_worst=0) -> CalibrationResult:
    """Calibrate every activation of an ONNX model over `data`; optionally write QDQ.

    Parameters
    ----------
    model_path : str or Path
        The float ONNX model.
    data : path, array, dict or iterable
        A folder (every ``.npy`` / ``.npz`` / image file in name order is one batch), one
        ``.npy`` / ``.npz`` file, or an iterable of arrays (one-input models) or of
        ``{input name: array}`` dicts. ``.npy`` holds the batch of the model's single
        input, ``.npz`` one array per input name (read with ``allow_pickle=False``, at
        most 1 GiB per file). An image (Pillow) becomes a batch of one: RGB, resized to
        `image_size` ``(H, W)`` bilinear (default: the model's fixed input size), scaled
        to [0, 1], then ``(x - image_mean) / image_std`` per channel (PaddleOCR's 0.5 /
        0.5 by default), NCHW.
    method : str, default "auto"
        One of :data:`METHODS`: ``min_max`` / ``mean_std`` (:class:`QuantObserver`),
        ``mean_min_max`` (the mean of each batch's min and max), ``percentile``,
        ``entropy`` (TensorRT / ModelOpt KL on ``|x|``), ``entropy_signed``
        (onnxruntime's KL), ``mse`` (ModelOpt) — the histogram methods use
        :class:`HistogramObserver` with `bins` — or ``auto`` (per tensor, the min/max or
        99.9 / 99.99 / 99.999th percentile range of least expected int8 error:
        :class:`AutoRangeObserver`).
    percentile : float, default 99.999
        For ``percentile`` (onnxruntime's default).
    symmetric : bool, default False
        For ``percentile``: one threshold of ``|x|`` instead of one per side.
    bins : int, default 2048
        Histogram resolution (power of two).
    op_types : sequence of str, optional
        Calibrate only the inputs/outputs of these node types.
    json_path : path, optional
        Write the calibration JSON there.
    qdq_path : path, optional
        Write the statically quantized QDQ model there (see `qdq_writer`).
    max_clip : float, default 0.001
        The share of a tensor's observed values a range may leave outside. A search method
        (``entropy``, ``entropy_signed``, ``mse``) whose cut drops more, or lands at or
        below the tensor's own smallest magnitude, falls back to the 99.99th percentile per
        side (``result.fallbacks`` says which tensors and why); any method that still
        clips more than this, or that clips the model's output, is reported in
        ``result.warnings`` and as a :class:`CalibrationWarning` (when `warn`).
    qdq_writer : {"qatcore", "onnxruntime"}, default "qatcore"
        ``qatcore``: :func:`qatcore.onnx.qdq.write_qdq` with the placement `preset`
        (quantizers where an integer runtime consumes int8; see
        :mod:`qatcore.onnx.placement`); ``onnxruntime``: onnxruntime's ``quantize_static``
        fed these ranges as its calibration cache (Q/DQ on every tensor it knows).
    preset : {"auto", "cnn", "transformer"}, default "auto"
        Placement preset of the qatcore writer (``auto``: ``transformer`` when the graph
        has attention, a Softmax feeding a MatMul; else ``cnn``).
    quantize_fragile : bool, default False
        qatcore writer: also quantize Softmax / Sigmoid / HardSigmoid inputs and the
        model's outputs.
    keep_float : sequence of str
        qatcore writer: names of nodes to leave float (e.g. from a sensitivity ranking).
    keep_histograms : bool, default False
        Keep a histogram of every tensor in ``result.histograms`` (for a report).
    bias_correction : bool or "auto", default False
        qatcore writer: shift each quantized Conv / Gemm bias by its mean output error per
        channel on `data` (:func:`qatcore.onnx.tune.bias_correction`; one more pass over
        `data`, so it must be re-readable: a path, an array or a list). ``"auto"``: on
        when a QDQ model is written by the qatcore writer and `data` is re-readable.
        Measured (bench/RESULTS-onnx.md): +5 dB on the PP-OCRv4 recognizer, −3 dB on its
        detector, so it is not the default.
    sensitivity : bool, default False
        Rank the quantized layers by the output SQNR each costs alone
        (``result.sensitivity``, worst first; :func:`qatcore.onnx.tune.sensitivity`, on
        the first two batches of `data`).
    keep_float_worst : int, default 0
        qatcore writer: leave the k layers that cost the most (by `sensitivity`) float.
    preprocess : bool, default True
        First run onnxruntime's ``quant_pre_process`` (graph optimizations: constants
        folded into initializers, BatchNorm fused into Conv; symbolic shape inference
        skipped) and raise the opset to 13 (per-channel QDQ needs it), as onnxruntime
        recommends before quantizing. The tensor names of the
        result, the JSON and the QDQ model are then those of the pre-processed graph.
        Without it, weights that a graph computes through ``Constant`` nodes are
        calibrated like activations (and clipped by the clipping methods).
    progress : bool, default False
        A progress line on stderr.
    providers : list, optional
        onnxruntime execution providers (default CPU).
    session_options : onnxruntime.SessionOptions, optional
        For the calibration session (default: onnxruntime's defaults, all graph
        optimizations on; onnxruntime's own calibrators turn them off, which changes
        activations in the last float digits).

    Every range is held inside what its producing op can output (ReLU ``>= 0``, Clip /
    ReLU6 its ``[min, max]``, Sigmoid / HardSigmoid / Softmax ``[0, 1]``, carried through
    pooling and reshapes): ``result.held`` lists the ranges that moved. The model's
    inputs are observed in every batch.

    Returns
    -------
    CalibrationResult
        ``{tensor: (lo, hi)}``.

    Raises
    ------
    ValueError
        Unknown method, unreadable or missing data, inputs that do not fit the model,
        non-finite activations (the message names the tensor), or no data at all.
    """
    onnx, ort = _require()
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if qdq_writer not in ("qatcore", "onnxruntime"):
        raise ValueError(f"qdq_writer must be 'qatcore' or 'onnxruntime', got {qdq_writer!r}")
    if not (isinstance(max_clip, (int, float)) and 0.0 <= max_clip <= 1.0):
        raise ValueError(f"max_clip must be a share in [0, 1], got {max_clip!r}")
    from .placement import PRESETS
    if preset not in PRESETS + ("auto",):
        raise ValueError(f"preset must be one of {PRESETS + ('auto',)}, got {preset!r}")
    _make_observer(method, percentile, symmetric, bins)          # check options early
    rereadable = isinstance(data, (str, os.PathLike, np.ndarray, Mapping, list, tuple))
    if bias_correction == "auto":
        bias_correction = qdq_path is not None and qdq_writer == "qatcore" and rereadable
    elif not isinstance(bias_correction, (bool, np.bool_)):
        raise ValueError(f"bias_correction must be True, False or 'auto', got {bias_correction!r}")
    if (bias_correction or sensitivity or keep_float_worst) and not rereadable:
        raise ValueError("bias_correction / sensitivity / keep_float_worst read the data "
                         "again: give a path or a list of batches, not an iterator")
    if (bias_correction or sensitivity or keep_float_worst) and qdq_writer != "qatcore":
        raise ValueError("bias_correction / sensitivity / keep_float_worst need "
                         "qdq_writer='qatcore'")
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ValueError(f"model_path: {model_path} is not a file")
    _check_onnx_file(onnx, model_path)
    opts = dict(method=method, percentile=percentile, symmetric=symmetric, bins=bins,
                op_types=op_types, image_size=image_size, image_mean=image_mean,
                image_std=image_std, json_path=json_path, qdq_path=qdq_path,
                per_channel=per_channel, progress=progress, providers=providers,
                session_options=session_options, max_clip=float(max_clip),
                qdq_writer=qdq_writer, preset=preset, quantize_fragile=quantize_fragile,
                keep_float=tuple(keep_float), keep_histograms=keep_histograms, warn=warn,
                bias_correction=bias_correction, sensitivity=sensitivity,
                keep_float_worst=int(keep_float_worst))
    if preprocess:
        with tempfile.TemporaryDirectory(prefix="qatcore.pre.") as tmp:
            pre = Path(tmp) / "pre.onnx"
            preprocess_model(model_path, pre)
            return _calibrate(onnx, ort, pre, model_path, data, **opts)
    return _calibrate(onnx, ort, model_path, model_path, data, **opts)


def preprocess_model(model_path, out_path) -> None:
    """onnxruntime's ``quant_pre_process`` (symbolic shape inference skipped) and opset
    raised to 13: what :func:`calibrate_model` does first when `preprocess`."""
    onnx, _ = _require()
    import logging
    from onnxruntime.quantization.shape_inference import quant_pre_process
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        quant_pre_process(str(model_path), str(out_path), skip_symbolic_shape=True)
    finally:
        logging.disable(previous)
    _raise_opset(onnx, out_path)


def _check_onnx_file(onnx, path: Path) -> None:
    """ValueError naming `path` when it is not an ONNX model (protobuf's DecodeError names
    neither the file nor what was expected; an empty or text file may even parse as an
    empty ModelProto)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:        # google.protobuf.message.DecodeError, ...
        raise ValueError(f"model_path: {path} is not an ONNX model (cannot parse it: "
                         f"{type(exc).__name__}: {exc})") from None
    if not model.graph.node and not model.graph.input:
        raise ValueError(f"model_path: {path} is not an ONNX model (no graph)")


class _Runner:
    """``sess.run(wanted, feed)``, writing each batch's activations into the arrays of the
    previous batch when the input shapes repeat (onnxruntime I/O binding): fresh output
    arrays page-fault on every batch, which costs more than observing them."""

    def __init__(self, sess, wanted):
        self.sess, self.wanted = sess, wanted
        self.key = self.buffers = self.binding = None

    def run(self, feed):
        key = tuple((k, v.shape, v.dtype.str) for k, v in feed.items())
        if self.buffers is not None and key == self.key:
            b = self.binding
            try:
                for k, v in feed.items():
                    b.bind_cpu_input(k, v)
                self.sess.run_with_iobinding(b)
                return self.buffers
            except Exception:           # an output changed shape: plain runs from here
                self.buffers = self.binding = None
            finally:
                # release the batch: onnxruntime's binding keeps its last input array
                # alive (clear_binding_inputs does not drop it); bind empty arrays instead
                for k, v in feed.items():
                    b.bind_cpu_input(k, np.empty((0,) * v.ndim, v.dtype))
        values = self.sess.run(self.wanted, feed)
        self.buffers = self.binding = None
        if all(isinstance(v, np.ndarray) and v.flags.c_contiguous and v.flags.writeable
               and v.dtype.kind == "f" for v in values):
            b = self.sess.io_binding()
            for name, v in zip(self.wanted, values):
                b.bind_output(name, "cpu", 0, v.dtype.type, list(v.shape), v.ctypes.data)
            self.key, self.buffers, self.binding = key, values, b
        return values


def _check_finite_inputs(feed, batch):
    for name, value in feed.items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ValueError(f"data batch {batch}: input {name!r} contains a non-finite value")


def _raise_opset(onnx, path, opset=13):
    """Per-channel QDQ (DequantizeLinear with `axis`) needs opset >= 13."""
    model = onnx.load(str(path))
    current = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=opset)
    if current < opset:
        onnx.save(onnx.version_converter.convert_version(model, opset), str(path))


def _clipped_share(hist_obs, lo, hi) -> float:
    """Share of the observed values outside ``[lo, hi]`` (to one histogram bin)."""
    counts, edges = hist_obs.histogram(False)
    n = counts.sum()
    if n == 0:
        return 0.0
    out = counts[edges[1:] <= lo].sum() + counts[edges[:-1] > hi].sum()
    return float(out) / float(n)


def _observed_extent(hist_obs):
    """(lowest, highest) observed value, to one bin, from a histogram."""
    counts, edges = hist_obs.histogram(False)
    nz = np.flatnonzero(counts)
    if nz.size == 0:
        return 0.0, 0.0
    return float(edges[nz[0]]), float(edges[nz[-1] + 1])


def _smallest_magnitude_cut(hist_obs, lo, hi) -> bool:
    """True when a cut lands at or below the tensor's own smallest magnitude: every value
    of one sign lies at or beyond it (a saturated gate cut at its minimum)."""
    counts, edges = hist_obs.histogram(False)
    nz = np.flatnonzero(counts)
    if nz.size == 0:
        return False
    low, high = edges[nz[0]], edges[nz[-1] + 1]
    return bool((low >= 0 and hi <= low and high > 0) or (high <= 0 and lo >= high and low < 0))


def _calibrate(onnx, ort, model_path, source_path, data, *, method, percentile, symmetric,
               bins, op_types, image_size, image_mean, image_std, json_path, qdq_path,
               per_channel, progress, providers, session_options, max_clip, qdq_writer,
               preset, quantize_fragile, keep_float, keep_histograms, warn, bias_correction,
               sensitivity, keep_float_worst):
    from .graph import GraphIndex, hold_to_op_bounds, op_output_bounds

    model = onnx.load(str(model_path))
    index = GraphIndex(model)
    names, value_infos = tensors_to_calibrate(model, op_types)
    graph_inputs = set(index.graph_inputs)
    outputs_now = {o.name for o in model.graph.output}
    for n in names:
        if n not in outputs_now and n not in graph_inputs:
            model.graph.output.append(value_infos[n])

    input_names = [i.name for i in model.graph.input
                   if i.name not in {init.name for init in model.graph.initializer}]
    if image_size is None:
        dims = model.graph.input[0].type.tensor_type.shape.dim
        if len(dims) == 4 and all(d.HasField("dim_value") and d.dim_value > 0 for d in dims[2:]):
            image_size = (dims[2].dim_value, dims[3].dim_value)

    so = ort.SessionOptions() if session_options is None else session_options
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=providers or ["CPUExecutionProvider"])
    out_names = [o.name for o in sess.get_outputs()]
    name_set = set(names)
    # The model's inputs are read from the feed, never from the session: onnxruntime
    # hands a graph input exposed as an output back from its first batch's buffer when
    # outputs are bound (I/O binding), which kept only the first batch's input range.
    fed = [n for n in names if n in graph_inputs]
    wanted = [n for n in out_names if n in name_set and n not in graph_inputs]
    observers = {n: _make_observer(method, percentile, symmetric, bins) for n in fed + wanted}
    # A histogram beside the observers that keep none: to measure what a range clips
    # (mean_std, mean_min_max) and for a report.
    # Per-channel ranges of depthwise Conv inputs (min/max per channel, held later inside
    # the method's per-tensor range): the writer gives them one scale per channel.
    from .placement import depthwise_inputs
    channel_obs = {n: ChannelObserver("min_max", axis=1)
                   for n in depthwise_inputs(index) if n in observers}
    companions = {}
    if method in ("mean_std", "mean_min_max") or (keep_histograms and method == "min_max"):
        companions = {n: HistogramObserver("percentile", bins=min(bins, 512))
                      for n in fed + wanted}

    total = len(data) if hasattr(data, "__len__") and not isinstance(data, (str, os.PathLike, np.ndarray, Mapping)) else None
    if isinstance(data, (str, os.PathLike)) and Path(data).is_dir():
        total = sum(1 for p in Path(data).iterdir() if p.suffix.lower() in (".npy", ".npz") + _IMAGE_EXT)
    runner = _Runner(sess, wanted)
    stream = sys.stderr
    t0 = time.perf_counter()
    batches = samples = 0

    def observe(name, value):
        try:
            observers[name].observe(value)
            if name in channel_obs:
                channel_obs[name].observe(value)
            if companions:
                companions[name].observe(value)
        except ValueError as exc:
            raise ValueError(f"tensor {name!r} in batch {batches}: {exc}") from None

    for feed in iter_inputs(data, input_names, image_size, image_mean, image_std):
        feed = {k: np.ascontiguousarray(v, dtype=np.float32) if v.dtype.kind == "f" else v
                for k, v in feed.items()}
        _check_finite_inputs(feed, batches)
        for name in fed:
            observe(name, feed[name])
        try:
            values = runner.run(feed) if wanted else []
        except Exception as exc:   # onnxruntime raises its own exception types
            raise ValueError(f"data batch {batches}: onnxruntime could not run the model on "
                             f"it ({type(exc).__name__}: {exc})") from None
        for name, value in zip(wanted, values):
            observe(name, value)
        del values                   # memory stays at one batch's activations (+ the reused buffers)
        batches += 1
        first = next(iter(feed.values()))
        samples += int(first.shape[0]) if first.ndim else 1
        del feed, first
        if progress:
            _progress(batches, total, t0, stream)
    if progress:
        stream.write("\n")
    if batches == 0:
        raise ValueError("data: no calibration batches")

    result = CalibrationResult()
    result.fallbacks, result.held, result.clipped, result.warnings = {}, {}, {}, []
    result.histograms = {}
    model_outputs = set(index.graph_outputs)
    for name in fed + wanted:
        obs = observers[name]
        lo, hi = (float(v) for v in obs.range())
        hist = (obs if isinstance(obs, HistogramObserver) else
                obs.hist if isinstance(obs, AutoRangeObserver) else companions.get(name))
        if hist is not None and method in CLIPPING_METHODS:
            share = _clipped_share(hist, lo, hi)
            at_min = _smallest_magnitude_cut(hist, lo, hi)
            if share > max_clip or at_min:
                why = ("cut at the tensor's own smallest magnitude" if at_min else
                       f"left {100 * share:.2f} % of the values outside (> {100 * max_clip:g} %)")
                counts, edges = hist.histogram(False)
                flo, fhi = percentile_threshold(counts, edges, FALLBACK_PERCENTILE, False)
                o_lo, o_hi = _observed_extent(hist)
                flo, fhi = max(float(flo), min(o_lo, 0.0)), min(float(fhi), max(o_hi, 0.0))
                result.fallbacks[name] = (f"{method} {why}; fell back to percentile "
                                          f"{FALLBACK_PERCENTILE} per side")
                lo, hi = flo, fhi
        bounds = op_output_bounds(index, name)
        new = hold_to_op_bounds(lo, hi, bounds)
        if new != (lo, hi):
            result.held[name] = ((lo, hi), new)
            lo, hi = new
        result[name] = (lo, hi)
        if hist is not None:
            share = _clipped_share(hist, lo, hi)
            result.clipped[name] = share
            if keep_histograms:
                result.histograms[name] = hist.histogram(False)
            if name in model_outputs:
                o_lo, o_hi = _observed_extent(hist)
                span = max(o_hi - o_lo, 1e-30)
                if share > 0 or (o_hi - hi) > 0.01 * span or (lo - o_lo) > 0.01 * span:
                    result.warnings.append(
                        f"{method} clips the model output {name!r} to [{lo:.4g}, {hi:.4g}] "
                        f"(observed about [{o_lo:.4g}, {o_hi:.4g}], {100 * share:.2f} % of "
                        f"the values outside)")
    heavy = sorted(((s, n) for n, s in result.clipped.items()
                    if s > max_clip and n not in model_outputs), reverse=True)
    if heavy:
        worst = ", ".join(f"{n!r} {100 * s:.2f} %" for s, n in heavy[:4])
        result.warnings.append(
            f"{method} leaves more than {100 * max_clip:g} % of the observed values outside "
            f"the range of {len(heavy)} tensors (worst: {worst}{', …' if len(heavy) > 4 else ''})")
    if result.fallbacks:
        first = ", ".join(repr(n) for n in list(result.fallbacks)[:4])
        result.warnings.append(
            f"{method}: {len(result.fallbacks)} tensors fell back to percentile "
            f"{FALLBACK_PERCENTILE} per side ({first}{', …' if len(result.fallbacks) > 4 else ''}; "
            f"result.fallbacks says why)")
    result.channel_ranges = {n: o.ranges() for n, o in channel_obs.items()}
    result.method, result.batches, result.samples = method, batches, samples
    result.model = str(source_path)
    result.options = {"percentile": percentile, "symmetric": symmetric, "bins": bins,
                      "max_clip": max_clip}
    result.seconds = time.perf_counter() - t0
    if warn:
        import warnings
        for text in result.warnings:
            warnings.warn(text, CalibrationWarning, stacklevel=3)
    if json_path is not None:
        Path(json_path).write_text(json.dumps(result.to_json(), indent=1))
    if qdq_writer == "onnxruntime":
        if qdq_path is not None:
            write_qdq_onnxruntime(model_path, result, qdq_path, per_channel=per_channel)
        return result
    wopts = dict(preset=preset, per_channel=per_channel, quantize_fragile=quantize_fragile,
                 keep_float=tuple(keep_float))
    result.sensitivity, result.bias_shift = [], {}
    if sensitivity or keep_float_worst or bias_correction:
        from .tune import bias_correction as correct_bias, sensitivity as rank_layers
        fmodel = onnx.load(str(model_path))
        if max((o.version for o in fmodel.opset_import if o.domain in ("", "ai.onnx")), default=13) < 13:
            fmodel = onnx.version_converter.convert_version(fmodel, 13)
        iter_kw = dict(image_size=image_size, image_mean=image_mean, image_std=image_std)
        if sensitivity or keep_float_worst:
            result.sensitivity = rank_layers(fmodel, result, data, writer_options=wopts,
                                             iter_kw=iter_kw)
            if keep_float_worst:
                wopts["keep_float"] += tuple(k for k, _, _ in result.sensitivity[:keep_float_worst])
        if bias_correction and qdq_path is not None:
            result.bias_shift = correct_bias(fmodel, result, data, writer_options=wopts,
                                             iter_kw=iter_kw)
        del fmodel
    if qdq_path is not None:
        from .qdq import write_qdq as write_own
        result.placement = write_own(model_path, result, qdq_path, bias_shift=result.bias_shift,
                                     **wopts)
    return result


def write_qdq(model_path, ranges: Mapping[str, Tuple[float, float]], qdq_path, *,
              per_channel=True, writer="qatcore", **options):
    """Write the QDQ model of `model_path` quantized with `ranges` ({tensor: (lo, hi)}):
    qatcore's writer and placement (:func:`qatcore.onnx.qdq.write_qdq`, `options` go to
    it) or, with ``writer="onnxruntime"``, onnxruntime's ``quantize_static``."""
    if writer == "onnxruntime":
        return write_qdq_onnxruntime(model_path, ranges, qdq_path, per_channel=per_channel)
    if writer != "qatcore":
        raise ValueError(f"writer must be 'qatcore' or 'onnxruntime', got {writer!r}")
    from .qdq import write_qdq as write_own
    return write_own(model_path, ranges, qdq_path, per_channel=per_channel, **options)


def write_qdq_onnxruntime(model_path, ranges: Mapping[str, Tuple[float, float]], qdq_path, *,
                          per_channel=True) -> None:
    """Write the QDQ model of `model_path` quantized with `ranges` by onnxruntime.

    onnxruntime's ``quantize_static`` does the rewriting: the ranges are handed to it as a
    calibration cache (``calibration_cache_path``), which makes it skip its own
    calibration; the cache is labelled ``MinMax``, which to onnxruntime only means "use
    these ranges as they are". Weights: int8 symmetric, per output channel (opset raised
    to 13 by onnxruntime when needed); activations: int8 per tensor with a zero point;
    bias: int32 at ``s_x · s_w``.
    """
    _require()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    data = {}
    for name, (lo, hi) in ranges.items():
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            raise ValueError(f"ranges: tensor {name!r} has no valid range ({lo}, {hi})")
        data[name] = TensorData(lowest=np.float32(lo), highest=np.float32(hi))
    with tempfile.TemporaryDirectory(prefix="qatcore.qdq.") as tmp:
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache)
        import logging
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)     # its "consider pre-processing" advice, via root
        try:
            quantize_static(str(model_path), str(qdq_path), calibration_data_reader=None,
                            quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax,
                            calibration_cache_path=str(cache))
        finally:
            logging.disable(previous)
