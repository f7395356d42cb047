"""``QuantizedModel``: the integer graph (int8 NHWC tensors, TFLite's int8 ops), the
contract of ``docs/integer-graph.md``.

The constructor validates the graph once (names, order, shapes, quantization) and binds
every op to its tensors, which computes what TFLite's ``Prepare`` computes.  A *plan* per
batch size holds the activation buffers, assigned by liveness (a buffer is reused once
the tensor it held has been read for the last time) and allocated once; a call then runs
one kernel per op with no further checks.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .. import _backend
from .._checks import as_float32, check_scale
from .._files import write_atomic
from .ops import OP_CLASSES, Op
from .ops._base import MAX_DIM, check_int, check_name, prod
from .ops._fixed import rounding_code
from .sequential import quantize_codes, read_npz

__all__ = ["TensorSpec", "QuantizedModel", "MAX_TENSORS", "MAX_OPS", "MAX_FILE_BYTES"]

#: The ``rounding="litert_ref"`` code: per op, 1 (single) for FULLY_CONNECTED, else 0.
LITERT_REF = 3

PathLike = Union[str, "os.PathLike[str]"]
#: Bounds of a graph (and of the files :meth:`QuantizedModel.load` accepts).
MAX_TENSORS = 4096
MAX_OPS = 4096
MAX_FILE_BYTES = 1 << 31
MAX_ELEMENTS = 1 << 28            # per tensor and sample
_FORMAT = "qatcore.QuantizedModel"
_VERSION = 1
_LAYOUTS = ("NHWC", "NCHW")


class TensorSpec:
    """An int8 activation tensor of the graph: name, one sample's shape, quantization.

    Parameters
    ----------
    name : str
    shape : tuple of int
        One sample's shape (no batch axis), NHWC order for images: ``(H, W, C)``.
    scale : float
        Positive and finite; stored rounded to float32.
    zero_point : int
        In [-128, 127].

    Raises
    ------
    TypeError, ValueError
        An argument of the wrong type or out of range (the message names it).

    Examples
    --------
    >>> TensorSpec("x", (8, 8, 3), 0.02, -5)
    TensorSpec(name='x', shape=(8, 8, 3), scale=0.019999999552965164, zero_point=-5)
    """

    __slots__ = ("name", "shape", "scale", "zero_point")
    name: str
    shape: Tuple[int, ...]
    scale: float
    zero_point: int

    def __init__(self, name: str, shape: Sequence[int], scale: float, zero_point: int) -> None:
        object.__setattr__(self, "name", check_name(name, "name"))
        if isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__"):
            raise TypeError(f"shape must be a tuple of ints, got {shape!r}")
        if not 1 <= len(shape) <= 8:
            raise ValueError(f"shape must have 1 to 8 axes, got {len(shape)}")
        dims = tuple(check_int(d, f"shape[{i}]", 1, MAX_DIM) for i, d in enumerate(shape))
        if prod(dims) > MAX_ELEMENTS:
            raise ValueError(f"shape {dims} has more than {MAX_ELEMENTS} elements")
        object.__setattr__(self, "shape", dims)
        object.__setattr__(self, "scale", float(np.float32(check_scale(scale, "scale"))))
        if not (np.isfinite(np.float32(self.scale)) and self.scale > 0):
            raise ValueError(f"scale must be positive and finite in float32, got {scale!r}")
        object.__setattr__(self, "zero_point", check_int(zero_point, "zero_point", -128, 127))

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("TensorSpec is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TensorSpec):
            return NotImplemented
        return (self.name, self.shape, self.scale, self.zero_point) == (
            other.name, other.shape, other.scale, other.zero_point)

    def __hash__(self) -> int:
        return hash((self.name, self.shape, self.scale, self.zero_point))

    def __repr__(self) -> str:
        return (f"TensorSpec(name={self.name!r}, shape={self.shape}, scale={self.scale!r}, "
                f"zero_point={self.zero_point})")


class _Plan:
    """Buffers and steps for one batch size."""

    def __init__(self, model: "QuantizedModel", batch: int) -> None:
        names = model._order                      # tensor index -> name
        index = {n: i for i, n in enumerate(names)}
        n_in = len(model.inputs)
        last_use: Dict[int, int] = {}
        for s, op in enumerate(model.ops):
            for t in op.inputs:
                last_use[index[t]] = s
        keep = {index[t] for t in model.outputs} | set(range(n_in))
        free: List[np.ndarray] = []               # flat int8 buffers no tensor holds
        holding: Dict[int, np.ndarray] = {}
        views: Dict[int, np.ndarray] = {}
        steps = []
        for s, op in enumerate(model.ops):
            t = index[op.output]
            spec = model.tensors[op.output]
            need = batch * prod(spec.shape)
            fits = [b for b in free if b.size >= need]
            if fits:
                buf = min(fits, key=lambda b: b.size)
                free = [b for b in free if b is not buf]
            else:
                buf = np.empty(max(need, 1), np.int8)
            holding[t] = buf
            views[t] = buf[:need].reshape((batch,) + spec.shape)
            steps.append((op, tuple(index[i] for i in op.inputs), t))
            for i in set(index[i] for i in op.inputs):
                if last_use.get(i) == s and i not in keep and i in holding:
                    free.append(holding.pop(i))
        self.batch = batch
        self.steps = steps
        self.views = views
        self.arena_bytes = sum(b.size for b in free) + sum(b.size for b in holding.values())
        self.outputs = [index[t] for t in model.outputs]
        self.template: List[Any] = [views.get(i) for i in range(len(names))]
        self.lock = threading.Lock()

    def run(self, xs: List[np.ndarray], rounding: int, n_threads: int) -> List[np.ndarray]:
        values = self.template.copy()
        values[:len(xs)] = xs
        for op, ins, out in self.steps:
            r = rounding
            if r == LITERT_REF:     # LiteRT's reference kernels: FC rounds once, the rest twice
                r = 1 if type(op).__name__ == "FullyConnected" else 0
            op._run([values[i] for i in ins], values[out], r, n_threads)
        return [values[t].copy() for t in self.outputs]


class QuantizedModel:
    """An integer graph: int8 NHWC tensors in, TFLite's int8 arithmetic op by op, int8
    tensors out (``docs/integer-graph.md``).

    Parameters
    ----------
    tensors : sequence of TensorSpec
        Every graph input, op input and op output, with unique names.
    ops : sequence of ops
        :mod:`qatcore.model` op instances in an order where every input is produced
        before it is used (checked, never reordered).  Each op is bound to its tensors
        here (TFLite's ``Prepare``: multipliers, shifts, clamps).
    inputs, outputs : sequence of str
        Graph input / output tensor names (a single str is one name).
    name : str, default "model"
    input_layout : {"NHWC", "NCHW"}, default "NHWC"
        "NCHW" makes the float entry points (:meth:`quantize_input`, :meth:`forward`)
        take torch's channels-first float input; :meth:`forward_int8` always takes NHWC.

    Attributes
    ----------
    tensors : dict of str to TensorSpec
    ops : list
    inputs, outputs : list of str
    name, input_layout : str
    n_threads : int or None
        Threads for the kernels (None: ``qatcore.get_num_threads()``).

    Raises
    ------
    TypeError, ValueError
        A malformed graph (the message names the tensor, op or argument).

    Examples
    --------
    >>> import numpy as np
    >>> from qatcore.model import QuantizedModel, TensorSpec, FullyConnected
    >>> w = np.array([[1, 2], [3, -4]], np.int8)
    >>> model = QuantizedModel(
    ...     [TensorSpec("x", (2,), 0.1, 0), TensorSpec("y", (2,), 0.05, 0)],
    ...     [FullyConnected("x", "y", w, [0.5])], ["x"], ["y"])
    >>> model.forward_int8(np.array([[10, -10]], np.int8))
    array([[-10,  70]], dtype=int8)
    """

    def __init__(self, tensors: Sequence[TensorSpec], ops: Sequence[Op],
                 inputs: Sequence[str], outputs: Sequence[str], *, name: str = "model",
                 input_layout: str = "NHWC") -> None:
        self.name = check_name(name, "name")
        if input_layout not in _LAYOUTS:
            raise ValueError(f"input_layout must be one of {_LAYOUTS}, got {input_layout!r}")
        self.input_layout = input_layout
        specs = _sequence(tensors, "tensors", MAX_TENSORS)
        table: Dict[str, TensorSpec] = {}
        for i, spec in enumerate(specs):
            if not isinstance(spec, TensorSpec):
                raise TypeError(f"tensors[{i}] must be a TensorSpec, got {type(spec).__name__}")
            if spec.name in table:
                raise ValueError(f"tensors: the name {spec.name!r} appears twice")
            table[spec.name] = spec
        op_list = _sequence(ops, "ops", MAX_OPS)
        for i, op in enumerate(op_list):
            if not isinstance(op, Op):
                raise TypeError(f"ops[{i}] must be a qatcore.model op, got {type(op).__name__}")
        ins = _names(inputs, "inputs")
        outs = _names(outputs, "outputs")
        if not ins or not outs:
            raise ValueError("inputs and outputs must each name at least one tensor")
        for what, group in (("inputs", ins), ("outputs", outs)):
            for n in group:
                if n not in table:
                    raise ValueError(f"{what}: tensor {n!r} is not in tensors")
            if len(set(group)) != len(group):
                raise ValueError(f"{what}: a tensor is named twice")
        produced = set(ins)
        for i, op in enumerate(op_list):
            for t in op.inputs:
                if t not in table:
                    raise ValueError(f"ops[{i}] ({type(op).__name__}): input {t!r} is not in "
                                     f"tensors")
                if t not in produced:
                    raise ValueError(f"ops[{i}] ({type(op).__name__}): input {t!r} is used "
                                     f"before any op produces it (ops must be in order)")
            if op.output not in table:
                raise ValueError(f"ops[{i}] ({type(op).__name__}): output {op.output!r} is not "
                                 f"in tensors")
            if op.output in produced:
                raise ValueError(f"ops[{i}] ({type(op).__name__}): output {op.output!r} is "
                                 f"already a graph input or another op's output")
            produced.add(op.output)
        for n in outs:
            if n not in produced:
                raise ValueError(f"outputs: no op produces {n!r}")
        for n in table:
            if n not in produced:
                raise ValueError(f"tensors: {n!r} is neither a graph input nor an op's output")
        if len({id(op) for op in op_list}) != len(op_list):
            raise ValueError("ops: the same op object appears twice")
        for i, op in enumerate(op_list):
            op._bind([table[t] for t in op.inputs], table[op.output])
        self.tensors: Dict[str, TensorSpec] = table
        self.ops: List[Op] = op_list
        self.inputs: List[str] = ins
        self.outputs: List[str] = outs
        self._order = ins + [op.output for op in op_list]
        self._plans: Dict[int, _Plan] = {}
        self._plans_lock = threading.Lock()
        self._n_threads: Optional[int] = None

    # ------------------------------------------------------------------ properties
    @property
    def input_shape(self) -> Tuple[Optional[int], ...]:
        """``(None, *shape)`` of the first input (NHWC)."""
        return (None,) + self.tensors[self.inputs[0]].shape

    @property
    def output_shape(self) -> Tuple[Optional[int], ...]:
        """``(None, *shape)`` of the first output."""
        return (None,) + self.tensors[self.outputs[0]].shape

    @property
    def n_threads(self) -> Optional[int]:
        """Threads the kernels use (the batch is split across them); ``None`` means
        :func:`qatcore.get_num_threads`."""
        return self._n_threads

    @n_threads.setter
    def n_threads(self, value: Optional[int]) -> None:
        self._n_threads = None if value is None else check_int(value, "n_threads", 1, 1024)

    def arena_bytes(self, batch: int = 1) -> int:
        """Bytes of activation buffers the plan for `batch` holds (graph inputs excluded):
        the static arena a C runtime needs for this buffer assignment."""
        return self._plan(check_int(batch, "batch", 1, MAX_DIM)).arena_bytes

    def _plan(self, batch: int) -> _Plan:
        plan = self._plans.get(batch)
        if plan is None:
            with self._plans_lock:
                plan = self._plans.get(batch)
                if plan is None:
                    plan = _Plan(self, batch)
                    if len(self._plans) >= 8:          # keep a few batch sizes
                        self._plans.pop(next(iter(self._plans)))
                    self._plans[batch] = plan
        return plan

    # ------------------------------------------------------------------ inference
    def _codes(self, x_q: Any) -> List[np.ndarray]:
        many = len(self.inputs) > 1
        if many:
            if not isinstance(x_q, (list, tuple)) or len(x_q) != len(self.inputs):
                raise TypeError(f"x_q must be a list of {len(self.inputs)} int8 arrays (one "
                                f"per graph input)")
            arrays = list(x_q)
        else:
            arrays = [x_q]
        out = []
        batch = None
        for k, (a, t) in enumerate(zip(arrays, self.inputs)):
            what = f"x_q[{k}]" if many else "x_q"
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{what} must be a numpy int8 array, got {type(a).__name__}")
            if a.dtype != np.int8:
                raise TypeError(f"{what} must have dtype int8, got {a.dtype} (no silent "
                                f"casting)")
            shape = self.tensors[t].shape
            if a.shape[1:] != shape or a.ndim != len(shape) + 1:
                raise ValueError(f"{what} must have shape (batch, {', '.join(map(str, shape))})"
                                 f" (NHWC), got {a.shape}")
            if batch is None:
                batch = a.shape[0]
            elif a.shape[0] != batch:
                raise ValueError(f"{what}: batch {a.shape[0]} differs from the first input's "
                                 f"{batch}")
            out.append(np.ascontiguousarray(a))
        return out

    def forward_int8(self, x_q: Any, *, rounding: str = "gemmlowp") -> Any:
        """int8 NHWC codes in, int8 codes out, integer only.

        Parameters
        ----------
        x_q : ndarray of int8, shape (batch, *input shape), or a list of them
            One per graph input, in the inputs' quantization.
        rounding : {"gemmlowp", "single", "neon", "litert_ref"}
            How ``MultiplyByQuantizedMultiplier`` rounds: TFLite's default double rounding
            (TFLM), ``TFLITE_SINGLE_ROUNDING`` everywhere, the NEON GEMM epilogue of
            LiteRT's optimized kernels (``BUILTIN_WITHOUT_DEFAULT_DELEGATES``; conv,
            depthwise, fully connected; the other ops compute the double rounding then),
            or ``"litert_ref"``: what ai-edge-litert 2.3's reference kernels
            (``BUILTIN_REF``) compute, single rounding in FULLY_CONNECTED and double
            rounding in every other op (measured: their conv, depthwise, add, mul and mean
            round twice).

        Returns
        -------
        ndarray of int8, or a list of them (one per graph output)

        Raises
        ------
        TypeError, ValueError
            Not int8, a wrong shape, an unknown `rounding`.
        """
        r = LITERT_REF if rounding == "litert_ref" else rounding_code(rounding)
        xs = self._codes(x_q)
        batch = xs[0].shape[0]
        if batch == 0:
            ys = [np.empty((0,) + self.tensors[t].shape, np.int8) for t in self.outputs]
        else:
            n_threads = self._n_threads or _backend.get_num_threads()
            plan = self._plan(batch)
            if plan.lock.acquire(blocking=False):
                try:
                    ys = plan.run(xs, r, n_threads)
                finally:
                    plan.lock.release()
            else:                                  # another thread runs this plan
                ys = _Plan(self, batch).run(xs, r, n_threads)
        return ys if len(self.outputs) > 1 else ys[0]

    def quantize_input(self, x: Any) -> Any:
        """int8 codes of float input, rounded as TFLite's QUANTIZE
        (``round_half_away(x / scale) + zero_point``, float32, clamped to int8).

        `x` has shape ``(batch, *input shape)`` (NHWC), or ``(batch, C, H, W)`` when
        ``input_layout="NCHW"`` (transposed here).  A list for several inputs.

        Raises
        ------
        TypeError, ValueError
            Non-numeric input, a wrong shape, NaN.
        """
        many = len(self.inputs) > 1
        if many and (not isinstance(x, (list, tuple)) or len(x) != len(self.inputs)):
            raise TypeError(f"x must be a list of {len(self.inputs)} arrays")
        arrays = list(x) if many else [x]
        codes = []
        for k, (a, t) in enumerate(zip(arrays, self.inputs)):
            what = f"x[{k}]" if many else "x"
            flat, shape = as_float32(a, what)
            spec = self.tensors[t]
            want = spec.shape
            if self.input_layout == "NCHW" and len(want) >= 2:
                want = (want[-1],) + want[:-1]
            if len(shape) != len(want) + 1 or tuple(shape[1:]) != want:
                raise ValueError(f"{what} must have shape (batch, {', '.join(map(str, want))})"
                                 f" ({self.input_layout}), got {tuple(shape)}")
            nan = np.flatnonzero(np.isnan(flat))
            if nan.size:
                raise ValueError(f"{what} contains NaN at flat index {int(nan[0])}")
            q = quantize_codes(flat, spec.scale, spec.zero_point, -128, 127, "tflite")
            q = q.reshape(shape)
            if self.input_layout == "NCHW" and len(want) >= 2:
                q = np.ascontiguousarray(np.moveaxis(q, 1, -1))
            codes.append(q)
        return codes if many else codes[0]

    def dequantize_output(self, q: Any) -> Any:
        """float32 ``(q - zero_point) · scale`` of int8 output codes (a list for several
        outputs)."""
        many = len(self.outputs) > 1
        arrays = list(q) if many else [q]
        if len(arrays) != len(self.outputs):
            raise TypeError(f"q must be a list of {len(self.outputs)} int8 arrays")
        res = []
        for k, (a, t) in enumerate(zip(arrays, self.outputs)):
            if not isinstance(a, np.ndarray) or a.dtype != np.int8:
                raise TypeError(f"q{f'[{k}]' if many else ''} must be a numpy int8 array")
            spec = self.tensors[t]
            res.append(((a.astype(np.float32) - np.float32(spec.zero_point))
                        * np.float32(spec.scale)).astype(np.float32))
        return res if many else res[0]

    def forward(self, x: Any, *, rounding: str = "gemmlowp") -> Any:
        """Float in, float out: :meth:`quantize_input`, :meth:`forward_int8`,
        :meth:`dequantize_output`."""
        return self.dequantize_output(self.forward_int8(self.quantize_input(x),
                                                        rounding=rounding))

    __call__ = forward

    # ------------------------------------------------------------------ conversion
    @classmethod
    def from_sequential(cls, seq: Any) -> "QuantizedModel":
        """The graph of a :class:`~qatcore.QuantizedSequential`: one FullyConnected per
        layer, the same arithmetic (``forward_int8`` agrees bit for bit)."""
        from .sequential import QuantizedSequential
        if not isinstance(seq, QuantizedSequential):
            raise TypeError(f"seq must be a QuantizedSequential, got {type(seq).__name__}")
        from .ops import FullyConnected
        layer0 = seq.layers[0]
        tensors = [TensorSpec("input", (layer0.in_features,), layer0.input_scale,
                              layer0.input_zero_point)]
        ops = []
        prev = "input"
        for i, layer in enumerate(seq.layers):
            scale, zp = seq.output_qparams(i)
            name = "output" if i == len(seq.layers) - 1 else f"fc{i}"
            tensors.append(TensorSpec(name, (layer.out_features,), scale, zp))
            ops.append(FullyConnected(prev, name, layer.weights_q.reshape(layer.out_features, -1),
                                      np.atleast_1d(np.asarray(layer.weight_scale, np.float32)),
                                      layer.bias_q, seq.activations[i]))
            prev = name
        return cls(tensors, ops, ["input"], ["output"], name="sequential")

    def to_tflite(self, path: PathLike, *, float_io: bool = False) -> None:
        """Write a ``.tflite`` (:func:`qatcore.export.tflite_graph.write_tflite`)."""
        from ..export import tflite_graph
        return tflite_graph.write_tflite(self, path, float_io=float_io)

    def to_c(self, directory: PathLike, name: str = "model") -> Any:
        """Write C sources (:func:`qatcore.export.c_graph.write_c`)."""
        from ..export import c_graph
        return c_graph.write_c(self, directory, name)

    def to_onnx(self, path: PathLike) -> Any:
        """Write an ONNX model (:func:`qatcore.export.onnx_graph.to_onnx`)."""
        from ..export import onnx_graph
        return onnx_graph.to_onnx(self, path)

    @classmethod
    def from_tflite(cls, path: PathLike) -> "QuantizedModel":
        """Read an int8 ``.tflite`` model (TensorFlow's converter or qatcore's writer).

        The file is hostile input: :func:`qatcore.export.tflite_read.parse_tflite` checks
        every offset, size and index before use, and builds the model from this package's
        classes (passed to it, so the reader never imports the model package). A float-I/O
        file's QUANTIZE / DEQUANTIZE are dropped (``forward`` / ``quantize_input`` /
        ``dequantize_output`` are the float ends).

        Raises
        ------
        ValueError
            Any defect of the file, or an operator qatcore has no op for (named with its
            index).
        TypeError
            `path` is neither a path nor bytes.
        """
        import sys

        from ..export import tflite_read
        return tflite_read.parse_tflite(path, sys.modules[__package__])[0]

    # ------------------------------------------------------------------ files
    def save(self, path: PathLike) -> None:
        """Write the model to one ``.npz`` (no pickle), atomically."""
        path = os.fspath(path)
        order = list(self.tensors)
        header: Dict[str, Any] = {
            "format": _FORMAT, "version": _VERSION, "name": self.name,
            "input_layout": self.input_layout, "inputs": self.inputs,
            "outputs": self.outputs,
            "tensors": [{"name": n, "shape": list(self.tensors[n].shape)} for n in order],
            "ops": []}
        arrays: Dict[str, np.ndarray] = {
            "tensor_scales": np.array([self.tensors[n].scale for n in order], np.float32),
            "tensor_zero_points": np.array([self.tensors[n].zero_point for n in order],
                                           np.int32)}
        for i, op in enumerate(self.ops):
            params, op_arrays = op._describe()
            header["ops"].append({"class": type(op).__name__, "inputs": list(op.inputs),
                                  "output": op.output, "params": params,
                                  "arrays": sorted(op_arrays)})
            for key, value in op_arrays.items():
                arrays[f"op{i}.{key}"] = value
        arrays["graph"] = np.array(json.dumps(header))

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

        write_atomic(path, write)

    @classmethod
    def load(cls, path: PathLike) -> "QuantizedModel":
        """Read a model written by :meth:`save`.

        The file is hostile: no pickle, every ``.npy`` header read and the declared sizes
        bounded (``MAX_FILE_BYTES`` in all, ``MAX_OPS`` / ``MAX_TENSORS``) before any data
        is allocated, only known keys, and every op rebuilt through its constructor and
        the graph through :class:`QuantizedModel` (all checks apply).

        Raises
        ------
        ValueError
            Not a QuantizedModel file, or any field invalid (the message names it).
        OSError
            The file cannot be read.
        """
        path = os.fspath(path)
        data = read_npz(path, 2 * MAX_OPS * 4 + 8, "QuantizedModel")

        def fail(msg: str) -> ValueError:
            return ValueError(f"{path}: {msg}")

        graph = data.pop("graph", None)
        if graph is None or graph.dtype.kind != "U" or graph.ndim != 0:
            raise fail("no 'graph' header (not a QuantizedModel file)")
        text = str(graph[()])
        if len(text) > 1 << 26:
            raise fail("graph header too large")
        try:
            header = json.loads(text)
        except ValueError as exc:
            raise fail(f"graph header is not JSON: {exc}") from None
        if not isinstance(header, dict) or header.get("format") != _FORMAT:
            raise fail("not a QuantizedModel file")
        if header.get("version") != _VERSION:
            raise fail(f"unsupported version {header.get('version')!r}")
        try:
            entries = header["tensors"]
            op_entries = header["ops"]
            if not isinstance(entries, list) or not isinstance(op_entries, list):
                raise TypeError("tensors and ops must be lists")
            if len(entries) > MAX_TENSORS or len(op_entries) > MAX_OPS:
                raise ValueError("too many tensors or ops")
            scales = data.pop("tensor_scales")
            zps = data.pop("tensor_zero_points")
            if (scales.dtype != np.float32 or zps.dtype.kind not in "iu"
                    or scales.shape != (len(entries),) or zps.shape != (len(entries),)):
                raise ValueError("tensor_scales / tensor_zero_points do not match the tensors")
            tensors = []
            for k, e in enumerate(entries):
                if not isinstance(e, dict) or set(e) != {"name", "shape"}:
                    raise ValueError(f"tensors[{k}] malformed")
                tensors.append(TensorSpec(e["name"], e["shape"], float(scales[k]), int(zps[k])))
            ops = []
            for i, e in enumerate(op_entries):
                if not isinstance(e, dict) or set(e) != {"class", "inputs", "output", "params",
                                                         "arrays"}:
                    raise ValueError(f"ops[{i}] malformed")
                klass = OP_CLASSES.get(e["class"]) if isinstance(e["class"], str) else None
                if klass is None:
                    raise ValueError(f"ops[{i}]: unknown op class {e['class']!r}")
                params = e["params"]
                if not isinstance(params, dict) or set(params) - set(klass._PARAMS):
                    raise ValueError(f"ops[{i}]: unexpected parameters")
                names = e["arrays"]
                if not isinstance(names, list) or set(names) - set(klass._ARRAYS):
                    raise ValueError(f"ops[{i}]: unexpected arrays")
                kwargs = dict(params)
                for key in names:
                    arr = data.pop(f"op{i}.{key}", None)
                    if arr is None:
                        raise ValueError(f"ops[{i}]: array {key!r} missing")
                    kwargs[key] = arr
                for key in klass._ARRAYS:
                    if key not in names and key != "bias_q":
                        raise ValueError(f"ops[{i}]: array {key!r} missing")
                if klass._MULTI_INPUT:
                    kwargs["inputs"] = e["inputs"]
                else:
                    if not isinstance(e["inputs"], list) or len(e["inputs"]) != 1:
                        raise ValueError(f"ops[{i}]: one input expected")
                    kwargs["input"] = e["inputs"][0]
                kwargs["output"] = e["output"]
                ops.append(klass(**kwargs))
            if data:
                raise ValueError(f"unexpected entries {sorted(data)[:5]}")
            return cls(tensors, ops, header["inputs"], header["outputs"],
                       name=header.get("name", "model"),
                       input_layout=header.get("input_layout", "NHWC"))
        except (KeyError, TypeError, ValueError) as exc:
            raise fail(f"invalid model: {exc}") from None

    def __repr__(self) -> str:
        kinds = ", ".join(op.op_type for op in self.ops[:8])
        more = ", ..." if len(self.ops) > 8 else ""
        return (f"QuantizedModel({self.name!r}: {self.input_shape} -> {self.output_shape}, "
                f"{len(self.ops)} ops: {kinds}{more})")


def _sequence(value: Any, what: str, limit: int) -> list:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{what} must be a sequence, got {type(value).__name__}")
    items = list(value)
    if len(items) > limit:
        raise ValueError(f"{what} has {len(items)} entries; at most {limit}")
    return items


def _names(value: Any, what: str) -> List[str]:
    if isinstance(value, str):
        value = [value]
    items = _sequence(value, what, MAX_TENSORS)
    return [check_name(v, f"{what}[{i}]") for i, v in enumerate(items)]
