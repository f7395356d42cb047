"""Read an int8 ``.tflite`` model into a :class:`qatcore.QuantizedModel`.

Reads what TensorFlow's converter writes for a full-integer model (RESHAPE with a shape
tensor, fused activations in the options, SAME / VALID padding, per-channel
``quantized_dimension``, shared buffers, QUANTIZE / DEQUANTIZE at the ends of a float-I/O
model) and what :mod:`qatcore.export.tflite_graph` writes (a PAD in front of a VALID
convolution folds back into the convolution's explicit padding).  QUANTIZE at the inputs
and DEQUANTIZE at the outputs are dropped: the model takes and returns int8 codes, and
``QuantizedModel.forward`` / ``quantize_input`` / ``dequantize_output`` do the float ends.

The file is treated as hostile.  The flatbuffer is parsed here, not by the generated
accessors (which do not check bounds): every offset, vtable and vector is checked against
the file's size before it is read, tensor shapes are bounded (at most 8 dimensions, at most
2^28 elements), constant buffers must match their tensor's shape, indices must name
existing tensors and operators, quantization arrays their channels.  Nothing is allocated
beyond a small multiple of the file's size (constants shared by many operators count once
per use, up to 4 × the file), no loop runs longer than a vector of the file, and any
defect -- including an operator qatcore has no op for, named with its index -- is one
``ValueError``.

Reading needs numpy only (tflite-micro's schema, when installed, names unsupported
operators).
"""

from __future__ import annotations

import math
import os
import re
import struct
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

__all__ = ["read_tflite", "MAX_TFLITE_BYTES"]

#: Largest file read (flatbuffer offsets are 32-bit).
MAX_TFLITE_BYTES = 1 << 31
_MAX_DIMS = 8
_MAX_ELEMENTS = 1 << 28
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,23}\Z")

# TensorType values (tensorflow/lite/schema/schema.fbs).
_FLOAT32, _INT32, _INT8, _INT64 = 0, 2, 9, 4
_TYPE_SIZES = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 9: 1, 10: 8, 11: 16, 14: 1, 15: 8,
               16: 4, 17: 2}
_FUSED = {0: None, 1: "relu", 3: "relu6"}


#: BuiltinOperator codes of the operators read (schema.fbs; the reader needs no schema
#: package).
_CODES = {"ADD": 0, "AVERAGE_POOL_2D": 1, "CONCATENATION": 2, "CONV_2D": 3,
          "DEPTHWISE_CONV_2D": 4, "DEQUANTIZE": 6, "FULLY_CONNECTED": 9, "LOGISTIC": 14,
          "MAX_POOL_2D": 17, "MUL": 18, "RELU": 19, "RELU6": 21, "RESHAPE": 22, "SOFTMAX": 25,
          "CUSTOM": 32, "PAD": 34, "GATHER": 36, "MEAN": 40, "STRIDED_SLICE": 45, "CAST": 53,
          "SLICE": 65, "SHAPE": 77, "PACK": 83, "QUANTIZE": 114, "HARD_SWISH": 117}


def _op_names() -> Dict[int, str]:
    """Code -> name of every builtin operator (from tflite-micro's schema when installed,
    for the message naming an unsupported operator; else of the operators read)."""
    names = {v: k for k, v in _CODES.items()}
    try:
        from tflite_micro.tensorflow.lite.micro.python import schema_py_generated
    except ImportError:
        return names
    names.update({v: k for k, v in vars(schema_py_generated.BuiltinOperator).items()
                  if not k.startswith("_") and isinstance(v, int)})
    return names


class _Bad(ValueError):
    """A structural defect of the flatbuffer."""


class _Buffer:
    """The file's bytes with bounds-checked little-endian reads."""

    def __init__(self, data: bytes):
        self.data = data
        self.n = len(data)

    def _at(self, fmt: str, size: int, pos: int):
        if pos < 0 or pos + size > self.n:
            raise _Bad(f"offset {pos} (+{size}) outside the file ({self.n} bytes)")
        return struct.unpack_from(fmt, self.data, pos)[0]

    def u8(self, pos):
        return self._at("<B", 1, pos)

    def u16(self, pos):
        return self._at("<H", 2, pos)

    def i32(self, pos):
        return self._at("<i", 4, pos)

    def u32(self, pos):
        return self._at("<I", 4, pos)

    def u64(self, pos):
        return self._at("<Q", 8, pos)

    def f32(self, pos):
        return self._at("<f", 4, pos)

    def table(self, pos: int) -> "_Table":
        return _Table(self, pos)


class _Table:
    """One flatbuffer table: its vtable checked on construction, each field on access."""

    __slots__ = ("b", "pos", "vt", "vt_len", "tbl_len")

    def __init__(self, b: _Buffer, pos: int):
        self.b, self.pos = b, pos
        vt = pos - b.i32(pos)
        vt_len = b.u16(vt)
        if vt_len < 4 or vt_len % 2 or vt + vt_len > b.n:
            raise _Bad(f"bad vtable at {vt}")
        tbl_len = b.u16(vt + 2)
        if tbl_len < 4 or pos + tbl_len > b.n:
            raise _Bad(f"table at {pos} runs past the file")
        self.vt, self.vt_len, self.tbl_len = vt, vt_len, tbl_len

    def _field(self, i: int) -> int:
        off = 4 + 2 * i
        if off + 2 > self.vt_len:
            return 0
        o = self.b.u16(self.vt + off)
        if o and o + 1 > self.tbl_len:
            raise _Bad(f"field {i} of the table at {self.pos} lies outside it")
        return o

    def scalar(self, i: int, kind: str, default=0):
        o = self._field(i)
        return default if not o else getattr(self.b, kind)(self.pos + o)

    def _target(self, i: int) -> Optional[int]:
        o = self._field(i)
        if not o:
            return None
        p = self.pos + o
        t = p + self.b.u32(p)
        if t >= self.b.n:
            raise _Bad(f"offset of field {i} of the table at {self.pos} leaves the file")
        return t

    def table(self, i: int) -> Optional["_Table"]:
        t = self._target(i)
        return None if t is None else _Table(self.b, t)

    def vector(self, i: int, elem: int) -> Tuple[int, int]:
        """``(start, length)`` of vector field `i` with `elem`-byte elements (0, 0 if
        absent), checked to lie inside the file."""
        t = self._target(i)
        if t is None:
            return 0, 0
        length = self.b.u32(t)
        if t + 4 + length * elem > self.b.n:
            raise _Bad(f"vector field {i} of the table at {self.pos} ({length} elements) "
                       f"runs past the file")
        return t + 4, length

    def array(self, i: int, dtype: str) -> np.ndarray:
        dt = np.dtype(dtype)
        start, length = self.vector(i, dt.itemsize)
        return np.frombuffer(self.b.data, dt, length, start)

    def tables(self, i: int) -> List["_Table"]:
        start, length = self.vector(i, 4)
        return [_Table(self.b, start + 4 * k + self.b.u32(start + 4 * k))
                for k in range(length)]

    def string(self, i: int) -> str:
        start, length = self.vector(i, 1)
        return bytes(self.b.data[start:start + length]).decode("utf-8", "replace")


# ---------------------------------------------------------------------------- the file

class _Tensor:
    __slots__ = ("index", "shape", "type", "buffer", "name", "scale", "zero_point", "qdim",
                 "data")

    def __repr__(self):
        return f"tensor {self.index} ({self.name!r})"


def _tensor(k: int, t: _Table, buffers: List[Optional[Tuple[int, int]]], b: _Buffer):
    r = _Tensor()
    r.index = k
    shape = t.array(0, "<i4")
    if shape.size > _MAX_DIMS:
        raise ValueError(f"tensor {k} has {shape.size} dimensions (at most {_MAX_DIMS})")
    if (shape < 0).any():
        raise ValueError(f"tensor {k} has a negative dimension {tuple(shape)}")
    r.shape = tuple(int(d) for d in shape)
    count = 1
    for d in r.shape:
        count *= d
    if count > _MAX_ELEMENTS:
        raise ValueError(f"tensor {k} has {count} elements (at most 2^28)")
    r.type = t.scalar(1, "u8")
    r.buffer = t.scalar(2, "u32")
    r.name = t.string(3)
    if t._field(6):
        raise ValueError(f"tensor {k} is sparse (not supported)")
    q = t.table(4)
    r.scale = np.zeros(0, np.float32)
    r.zero_point = np.zeros(0, np.int64)
    r.qdim = 0
    if q is not None:
        # views of the file (a shared quantization table is not copied per tensor)
        r.scale = q.array(2, "<f4")
        r.zero_point = q.array(3, "<i8")
        r.qdim = q.scalar(6, "i32")
        if q.scalar(4, "u8"):
            raise ValueError(f"tensor {k} has custom quantization details (not supported)")
    if r.buffer >= len(buffers):
        raise ValueError(f"tensor {k} names buffer {r.buffer}; the file has {len(buffers)}")
    r.data = None
    where = buffers[r.buffer]
    if where is not None and where[1]:
        start, nbytes = where
        size = _TYPE_SIZES.get(r.type)
        if size is None or nbytes != count * size:
            raise ValueError(f"tensor {k}: buffer of {nbytes} bytes for shape {r.shape} of "
                             f"type {r.type}")
        r.data = (start, nbytes)
    return r


def _buffers(root: _Table, b: _Buffer) -> List[Optional[Tuple[int, int]]]:
    out = []
    for buf in root.tables(4):
        start, length = buf.vector(0, 1)
        if length == 0:
            offset, size = buf.scalar(1, "u64"), buf.scalar(2, "u64")
            if offset > 1:                 # data appended after the flatbuffer (> 2 GB files)
                if offset + size > b.n:
                    raise ValueError(f"buffer {len(out)} lies outside the file")
                start, length = offset, size
        out.append((start, length))
    return out


# ---------------------------------------------------------------------------- the graph

class _Reader:
    def __init__(self, data: bytes, ns):
        self.ns = ns
        b = self.b = _Buffer(data)
        if b.n < 8 or bytes(data[4:8]) != b"TFL3":
            raise ValueError("not a .tflite file (no TFL3 flatbuffer identifier)")
        root = b.table(b.u32(0))
        version = root.scalar(0, "u32")
        if version != 3:
            raise ValueError(f"schema version {version} (only 3 is read)")
        names = _op_names()
        self.opcodes = []
        for c in root.tables(1):
            code = max(c.scalar(0, "u8"), c.scalar(3, "i32"))
            name = names.get(code, f"builtin {code}")
            if code == 32:                                   # CUSTOM
                name = f"custom op {c.string(1)!r}"
            self.opcodes.append(name)
        subgraphs = root.tables(2)
        if len(subgraphs) != 1:
            raise ValueError(f"{len(subgraphs)} subgraphs (only single-subgraph models are "
                             f"read)")
        sg = subgraphs[0]
        self.sg_name = sg.string(4)
        buffers = _buffers(root, b)
        self.tensors = [_tensor(k, t, buffers, b) for k, t in enumerate(sg.tables(0))]
        self.inputs = [self._index(i, "graph input") for i in sg.array(1, "<i4")]
        self.outputs = [self._index(i, "graph output") for i in sg.array(2, "<i4")]
        if not self.inputs or not self.outputs:
            raise ValueError("the graph has no inputs or no outputs")
        self.ops = []
        for k, o in enumerate(sg.tables(3)):
            idx = o.scalar(0, "u32")
            if idx >= len(self.opcodes):
                raise ValueError(f"operator {k} names operator code {idx}; the file has "
                                 f"{len(self.opcodes)}")
            ins = [None if i == -1 else self._index(i, f"operator {k} input")
                   for i in o.array(1, "<i4")]
            outs = [self._index(i, f"operator {k} output") for i in o.array(2, "<i4")]
            self.ops.append((k, self.opcodes[idx], ins, outs, o.scalar(3, "u8"), o.table(4)))

    def _index(self, i, what: str) -> _Tensor:
        i = int(i)
        if not 0 <= i < len(self.tensors):
            raise ValueError(f"{what} names tensor {i}; the file has {len(self.tensors)}")
        return self.tensors[i]

    # -- tensors -----------------------------------------------------------------------
    def const(self, t: Optional[_Tensor], dtype: str, what: str) -> np.ndarray:
        if t is None or t.data is None:
            raise ValueError(f"{what} must be a constant tensor")
        dt = np.dtype(dtype)
        if t.type != {1: _INT8, 4: _INT32, 8: _INT64}[dt.itemsize]:
            raise ValueError(f"{what} ({t!r}) has type {t.type}, expected {dt}")
        start, nbytes = t.data
        self.weight_bytes += nbytes
        if self.weight_bytes > 4 * self.b.n + (1 << 20):
            raise ValueError("constant buffers are shared too many times (their total "
                             "exceeds 4 × the file's size)")
        # a copy: aligned for the kernels whatever the buffer's offset in the file, and
        # bounded by the check above
        return np.frombuffer(self.b.data, dt, nbytes // dt.itemsize,
                             start).reshape(t.shape).astype(dt.newbyteorder("="))

    def index_const(self, t, what) -> np.ndarray:
        if t is not None and t.type == _INT64:
            arr = self.const(t, "<i8", what)
        else:
            arr = self.const(t, "<i4", what)
        if arr.size and np.abs(arr).max() > 1 << 28:
            raise ValueError(f"{what} holds out-of-range values")
        return arr.astype(np.int64)

    def act(self, t: Optional[_Tensor], what: str) -> str:
        """The name of int8 activation tensor `t` (its TensorSpec made on first use)."""
        if t is None:
            raise ValueError(f"{what} is missing")
        if t.index in self.spec_names:
            return self.spec_names[t.index]
        if t.data is not None:
            raise ValueError(f"{what} ({t!r}) is a constant; qatcore's ops take only "
                             f"activations there")
        if t.type != _INT8:
            raise ValueError(f"{what} ({t!r}) has type {t.type}; activations must be int8")
        if t.scale.size != 1 or t.zero_point.size != 1:
            raise ValueError(f"{what} ({t!r}) must have one scale and one zero point")
        scale, zp = float(t.scale[0]), int(t.zero_point[0])
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"{what} ({t!r}) has scale {scale}")
        if not -128 <= zp <= 127:
            raise ValueError(f"{what} ({t!r}) has zero point {zp}")
        if len(t.shape) < 1 or 0 in t.shape:
            raise ValueError(f"{what} ({t!r}) has shape {t.shape}: expected a batch "
                             f"dimension and a non-empty sample")
        sample = tuple(t.shape[1:]) or (1,)      # (batch,): one value per sample
        self.act_elements += math.prod(sample)
        if self.act_elements > 1 << 30:
            raise ValueError("the activations hold more than 2^30 elements in all")
        name = self.prefer.get(t.index, t.name)
        name = name if name.isprintable() and 0 < len(name) <= 256 else ""
        if not name or name in self.used_names:
            name = f"tensor_{t.index}"
            while name in self.used_names:
                name += "_"
        self.used_names.add(name)
        self.spec_names[t.index] = name
        self.specs.append(self.ns.TensorSpec(name, sample, scale, zp))
        self.spec_of[name] = (sample, scale, zp)
        return name

    def weights(self, t, what, rank, axis, n_channels):
        wq = self.const(t, "<i1", what)
        if wq.ndim != rank:
            raise ValueError(f"{what} has shape {wq.shape} (rank {rank} expected)")
        scale, zp = t.scale, t.zero_point
        if scale.size not in (1, n_channels) or zp.size not in (1, scale.size):
            raise ValueError(f"{what}: {scale.size} scales / {zp.size} zero points for "
                             f"{n_channels} channels")
        if scale.size > 1 and t.qdim != axis:
            raise ValueError(f"{what}: quantized_dimension {t.qdim}, expected {axis}")
        if not (np.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError(f"{what}: scales must be finite and positive")
        if zp.any():
            raise ValueError(f"{what}: weights must be symmetric (zero point 0)")
        return wq, scale.copy()

    def bias(self, t, n, what):
        if t is None:
            return None
        b = self.const(t, "<i4", what)
        if b.shape != (n,):
            raise ValueError(f"{what} has shape {b.shape}, expected ({n},)")
        return b

    # -- ops --------------------------------------------------------------------------
    def options(self, k, name, opts, opt_type, expected: Optional[int]):
        if expected is not None and opts is not None and opt_type != expected:
            raise ValueError(f"operator {k} ({name}) has options of type {opt_type}")
        return opts

    def fused(self, k, name, value):
        if value not in _FUSED:
            raise ValueError(f"operator {k} ({name}): fused activation {value} is not "
                             f"supported (NONE, RELU, RELU6 are)")
        return _FUSED[value]

    def convert(self) -> Tuple[list, list, list, bool]:
        from .tflite_graph import same_padding

        self.spec_names: Dict[int, str] = {}
        self.prefer: Dict[int, str] = {}      # an int8 graph end takes its float twin's name
        self.used_names = set()
        self.specs = []
        self.spec_of = {}
        self.weight_bytes = 0
        self.act_elements = 0
        ops = list(self.ops)
        float_io = False
        graph_in, graph_out = [], []
        # QUANTIZE (float32 -> int8) on a graph input, DEQUANTIZE (int8 -> float32) on a
        # graph output: the float ends, dropped.
        skip = set()
        users: Dict[int, list] = {}
        makers: Dict[int, list] = {}
        for o in ops:
            for t in o[2]:
                if t is not None:
                    users.setdefault(t.index, []).append(o)
            for t in o[3]:
                makers.setdefault(t.index, []).append(o)
        if len({t.index for t in self.inputs}) != len(self.inputs) or \
                len({t.index for t in self.outputs}) != len(self.outputs):
            raise ValueError("a tensor is listed twice among the graph inputs or outputs")
        for t in self.inputs:
            if t.type == _FLOAT32:
                u = users.get(t.index, [])
                if len(u) != 1 or u[0][1] != "QUANTIZE" or len(u[0][3]) != 1 or \
                        len(u[0][2]) != 1:
                    raise ValueError(f"graph input {t!r} is float32 but not quantized by one "
                                     f"QUANTIZE operator")
                skip.add(u[0][0])
                graph_in.append(u[0][3][0])
                self.prefer[u[0][3][0].index] = t.name
                float_io = True
            else:
                graph_in.append(t)
        for t in self.outputs:
            if t.type == _FLOAT32:
                mk = makers.get(t.index, [])
                if len(mk) != 1 or mk[0][1] != "DEQUANTIZE" or len(mk[0][2]) != 1 or \
                        len(mk[0][3]) != 1:
                    raise ValueError(f"graph output {t!r} is float32 but not made by one "
                                     f"DEQUANTIZE operator")
                skip.add(mk[0][0])
                graph_out.append(mk[0][2][0])
                self.prefer[mk[0][2][0].index] = t.name
                float_io = True
            else:
                graph_out.append(t)
        skip |= self._shape_ops(ops)
        for t in graph_in:
            self.act(t, "graph input")
        out_ops = []
        available = {self.spec_names[t.index] for t in graph_in}
        for k, name, ins, outs, opt_type, opts in ops:
            if k in skip:
                continue
            handler = getattr(self, "_op_" + name, None) if name.isidentifier() else None
            if handler is None:
                raise ValueError(f"operator {k} is {name}, which qatcore does not support")
            if len(outs) != 1:
                raise ValueError(f"operator {k} ({name}) has {len(outs)} outputs")
            rec = handler(k, name, ins, outs[0], opt_type, opts, same_padding)
            for x in (rec[1][0] if rec[0] in _MULTI else (rec[1][0],)):
                if x not in available:
                    raise ValueError(f"operator {k} ({name}) reads {x!r} before any operator "
                                     f"writes it")
            if rec[1][1] in available:
                raise ValueError(f"operator {k} ({name}) writes {rec[1][1]!r}, which is "
                                 f"already written")
            available.add(rec[1][1])
            out_ops.append(rec)
        outputs = [self.act(t, "graph output") for t in graph_out]
        inputs = [self.spec_names[t.index] for t in graph_in]
        return self._fold_pads(out_ops, set(outputs)), inputs, outputs, float_io

    def _shape_ops(self, ops) -> set:
        """The operators that only compute a RESHAPE's shape input at run time (the
        converter's SHAPE → STRIDED_SLICE → PACK for a flatten with a dynamic batch): the
        file records the RESHAPE's output shape, which is all qatcore needs."""
        shape_t = {id(o[2][1]) for o in ops if o[1] == "RESHAPE" and len(o[2]) > 1
                   and o[2][1] is not None}
        skipped = set()
        for k, name, ins, outs, _, _ in reversed(ops):
            if (name in _SHAPE_OPS and outs and all(id(t) in shape_t for t in outs)
                    and all(t.type in (_INT32, _INT64) for t in outs)):
                skipped.add(k)
                shape_t.update(id(t) for t in ins if t is not None and t.type != _INT8)
        for k, name, ins, _, _, _ in ops:
            for j, t in enumerate(ins):
                if t is not None and id(t) in shape_t and k not in skipped and not (
                        name == "RESHAPE" and j == 1):
                    raise ValueError(f"operator {k} ({name}) reads the shape tensor {t!r}")
        if any(id(t) in shape_t for t in self.outputs):
            raise ValueError("a graph output is a shape tensor")
        return skipped

    def _fold_pads(self, ops, outputs):
        """PAD (zero-point fill, same scale and zero point) on H, W feeding only a VALID
        convolution: the convolution's explicit padding -- the same arithmetic, and what
        the graph writer emits for a padding that is neither SAME nor VALID."""
        users: Dict[str, list] = {}
        for kind, args, kw in ops:
            ins = args[0] if kind in _MULTI else (args[0],)
            for t in ins:
                users.setdefault(t, []).append((kind, args, kw))
        folded, dropped = {}, set()
        for kind, args, kw in ops:
            if kind != "Pad" or args[1] in outputs:
                continue
            u = users.get(args[1], [])
            p = kw["paddings"]
            if (len(u) == 1 and u[0][0] in ("Conv2D", "DepthwiseConv2D") and len(p) == 3
                    and p[2] == (0, 0) and u[0][2]["padding"] == (0, 0, 0, 0)
                    and self.spec_of[args[0]][1:] == self.spec_of[args[1]][1:]):
                folded[id(u[0][1])] = (args[0], (p[0][0], p[0][1], p[1][0], p[1][1]))
                dropped.add(args[1])
        out = []
        for kind, args, kw in ops:
            if kind == "Pad" and args[1] in dropped:
                continue
            if id(args) in folded:
                x, padding = folded[id(args)]
                args = (x,) + args[1:]
                kw = dict(kw, padding=padding)
            out.append((kind, args, kw))
        self.specs = [s for s in self.specs if s.name not in dropped]
        return out

    def _check_out(self, k, name, out, shape):
        got = self.spec_of[out][0]
        if tuple(got) != tuple(shape):
            raise ValueError(f"operator {k} ({name}): output shape {tuple(got)}, the op "
                             f"computes {tuple(shape)}")

    def _conv_common(self, k, name, ins, opts, kernel, same_padding, depthwise):
        if len(ins) not in (2, 3):
            raise ValueError(f"operator {k} ({name}) has {len(ins)} inputs")
        if opts is None:
            raise ValueError(f"operator {k} ({name}) has no options")
        x = self.act(ins[0], f"operator {k} ({name}) input")
        in_shape = self.spec_of[x][0]
        if len(in_shape) != 3:
            raise ValueError(f"operator {k} ({name}): input shape {tuple(in_shape)} is not "
                             f"HWC")
        if depthwise:
            pad_f, sw, sh, act_f, dw, dh = 0, 1, 2, 4, 5, 6
        else:
            pad_f, sw, sh, act_f, dw, dh = 0, 1, 2, 3, 4, 5
        stride = (opts.scalar(sh, "i32"), opts.scalar(sw, "i32"))
        dilation = (opts.scalar(dh, "i32", 1), opts.scalar(dw, "i32", 1))
        if min(stride) < 1 or min(dilation) < 1 or max(stride + dilation) > 1 << 16:
            raise ValueError(f"operator {k} ({name}): stride {stride} / dilation {dilation}")
        padding = self._padding(k, name, opts.scalar(pad_f, "u8"), in_shape, kernel, stride,
                                dilation, same_padding)
        activation = self.fused(k, name, opts.scalar(act_f, "u8"))
        out_hw = _out_hw(in_shape, kernel, stride, dilation, padding)
        if min(out_hw) < 1:
            raise ValueError(f"operator {k} ({name}): the kernel does not fit the input")
        return x, in_shape, stride, dilation, padding, activation, out_hw

    @staticmethod
    def _padding(k, name, code, in_shape, kernel, stride, dilation, same_padding):
        if code == 0:
            return same_padding(in_shape[:2], kernel, stride, dilation)
        if code == 1:
            return (0, 0, 0, 0)
        raise ValueError(f"operator {k} ({name}): padding {code} is neither SAME nor VALID")

    def _op_CONV_2D(self, k, name, ins, out, opt_type, opts, same_padding):
        w_t = ins[1] if len(ins) > 1 else None
        if w_t is None or len(w_t.shape) != 4:
            raise ValueError(f"operator {k} ({name}): filter must be a 4-D constant")
        o, kh, kw, ci = w_t.shape
        x, in_shape, stride, dilation, padding, act, out_hw = self._conv_common(
            k, name, ins, opts, (kh, kw), same_padding, False)
        if ci < 1 or in_shape[2] % ci:
            raise ValueError(f"operator {k} ({name}): {in_shape[2]} input channels, filter "
                             f"depth {ci}")
        wq, ws = self.weights(w_t, f"operator {k} ({name}) filter", 4, 0, o)
        bias = self.bias(ins[2] if len(ins) > 2 else None, o, f"operator {k} ({name}) bias")
        y = self.act(out, f"operator {k} ({name}) output")
        self._check_out(k, name, y, (*out_hw, o))
        return _rec("Conv2D", x, y, wq, ws, bias, stride=stride, dilation=dilation,
                              padding=padding, activation=act)

    def _op_DEPTHWISE_CONV_2D(self, k, name, ins, out, opt_type, opts, same_padding):
        w_t = ins[1] if len(ins) > 1 else None
        if w_t is None or len(w_t.shape) != 4 or w_t.shape[0] != 1:
            raise ValueError(f"operator {k} ({name}): filter must be a (1, H, W, C) constant")
        _, kh, kw, c = w_t.shape
        x, in_shape, stride, dilation, padding, act, out_hw = self._conv_common(
            k, name, ins, opts, (kh, kw), same_padding, True)
        if c % in_shape[2]:
            raise ValueError(f"operator {k} ({name}): {c} filter channels for "
                             f"{in_shape[2]} input channels")
        wq, ws = self.weights(w_t, f"operator {k} ({name}) filter", 4, 3, c)
        bias = self.bias(ins[2] if len(ins) > 2 else None, c, f"operator {k} ({name}) bias")
        y = self.act(out, f"operator {k} ({name}) output")
        self._check_out(k, name, y, (*out_hw, c))
        return _rec("DepthwiseConv2D", x, y, wq, ws, bias, stride=stride, dilation=dilation,
                                       padding=padding, activation=act)

    def _op_FULLY_CONNECTED(self, k, name, ins, out, opt_type, opts, same_padding):
        if len(ins) not in (2, 3):
            raise ValueError(f"operator {k} ({name}) has {len(ins)} inputs")
        x = self.act(ins[0], f"operator {k} ({name}) input")
        w_t = ins[1]
        if w_t is None or len(w_t.shape) != 2:
            raise ValueError(f"operator {k} ({name}): weights must be a 2-D constant")
        o, i = w_t.shape
        act = None
        if opts is not None:
            act = self.fused(k, name, opts.scalar(0, "u8"))
            if opts.scalar(1, "u8"):
                raise ValueError(f"operator {k} ({name}): shuffled weights format")
        if math.prod(self.spec_of[x][0]) != i:
            raise ValueError(f"operator {k} ({name}): input of {math.prod(self.spec_of[x][0])}"
                             f" elements per sample, weights of {i} columns")
        wq, ws = self.weights(w_t, f"operator {k} ({name}) weights", 2, 0, o)
        bias = self.bias(ins[2] if len(ins) > 2 else None, o, f"operator {k} ({name}) bias")
        y = self.act(out, f"operator {k} ({name}) output")
        self._check_out(k, name, y, (o,))
        return _rec("FullyConnected", x, y, wq, ws, bias, activation=act)

    def _binary(self, k, name, ins, out, opts, cls):
        if len(ins) != 2:
            raise ValueError(f"operator {k} ({name}) has {len(ins)} inputs")
        a = self.act(ins[0], f"operator {k} ({name}) input 0")
        b = self.act(ins[1], f"operator {k} ({name}) input 1")
        y = self.act(out, f"operator {k} ({name}) output")
        if not (self.spec_of[a][0] == self.spec_of[b][0] == self.spec_of[y][0]):
            raise ValueError(f"operator {k} ({name}): shapes {self.spec_of[a][0]}, "
                             f"{self.spec_of[b][0]} -> {self.spec_of[y][0]} (broadcasting is "
                             f"not supported)")
        act = None if opts is None else self.fused(k, name, opts.scalar(0, "u8"))
        return _rec(cls, (a, b), y, activation=act)

    def _op_ADD(self, k, name, ins, out, opt_type, opts, same_padding):
        return self._binary(k, name, ins, out, opts, "Add")

    def _op_MUL(self, k, name, ins, out, opt_type, opts, same_padding):
        return self._binary(k, name, ins, out, opts, "Mul")

    def _pool(self, k, name, ins, out, opts, same_padding, cls):
        if len(ins) != 1 or opts is None:
            raise ValueError(f"operator {k} ({name}) needs one input and options")
        x = self.act(ins[0], f"operator {k} ({name}) input")
        in_shape = self.spec_of[x][0]
        if len(in_shape) != 3:
            raise ValueError(f"operator {k} ({name}): input shape {tuple(in_shape)} is not "
                             f"HWC")
        stride = (opts.scalar(2, "i32"), opts.scalar(1, "i32"))
        pool = (opts.scalar(4, "i32"), opts.scalar(3, "i32"))
        if min(stride + pool) < 1 or max(stride + pool) > 1 << 16:
            raise ValueError(f"operator {k} ({name}): filter {pool} / stride {stride}")
        padding = self._padding(k, name, opts.scalar(0, "u8"), in_shape, pool, stride, (1, 1),
                                same_padding)
        act = self.fused(k, name, opts.scalar(5, "u8"))
        out_hw = _out_hw(in_shape, pool, stride, (1, 1), padding)
        if min(out_hw) < 1:
            raise ValueError(f"operator {k} ({name}): the filter does not fit the input")
        y = self.act(out, f"operator {k} ({name}) output")
        self._check_out(k, name, y, (*out_hw, in_shape[2]))
        return _rec(cls, x, y, pool=pool, stride=stride, padding=padding, activation=act)

    def _op_AVERAGE_POOL_2D(self, k, name, ins, out, opt_type, opts, same_padding):
        return self._pool(k, name, ins, out, opts, same_padding, "AveragePool2D")

    def _op_MAX_POOL_2D(self, k, name, ins, out, opt_type, opts, same_padding):
        return self._pool(k, name, ins, out, opts, same_padding, "MaxPool2D")

    def _op_MEAN(self, k, name, ins, out, opt_type, opts, same_padding):
        if len(ins) != 2:
            raise ValueError(f"operator {k} ({name}) has {len(ins)} inputs")
        x = self.act(ins[0], f"operator {k} ({name}) input")
        ndim = len(self.spec_of[x][0]) + 1
        axes = self.index_const(ins[1], f"operator {k} ({name}) axes").reshape(-1)
        if axes.size > ndim:
            raise ValueError(f"operator {k} ({name}): {axes.size} axes")
        axes = sorted({int(a) % ndim for a in axes if -ndim <= a < ndim} |
                      ({-1} if ((axes < -ndim) | (axes >= ndim)).any() else set()))
        if not axes or axes[0] < 1:
            raise ValueError(f"operator {k} ({name}): axes must be sample axes (not the "
                             f"batch)")
        keep = bool(opts.scalar(0, "u8")) if opts is not None else False
        y = self.act(out, f"operator {k} ({name}) output")
        return _rec("Mean", x, y, axes=tuple(a - 1 for a in axes), keepdims=keep)

    def _op_RESHAPE(self, k, name, ins, out, opt_type, opts, same_padding):
        if not ins:
            raise ValueError(f"operator {k} ({name}) has no input")
        x = self.act(ins[0], f"operator {k} ({name}) input")
        if out.shape[:1] != ins[0].shape[:1]:
            raise ValueError(f"operator {k} ({name}) reshapes the batch dimension")
        y = self.act(out, f"operator {k} ({name}) output")
        if math.prod(self.spec_of[x][0]) != math.prod(self.spec_of[y][0]):
            raise ValueError(f"operator {k} ({name}): {self.spec_of[x][0]} -> "
                             f"{self.spec_of[y][0]} changes the size")
        return _rec("Reshape", x, y)

    def _op_CONCATENATION(self, k, name, ins, out, opt_type, opts, same_padding):
        if not ins or opts is None:
            raise ValueError(f"operator {k} ({name}) needs inputs and options")
        xs = tuple(self.act(t, f"operator {k} ({name}) input {j}") for j, t in enumerate(ins))
        y = self.act(out, f"operator {k} ({name}) output")
        ndim = len(self.spec_of[y][0]) + 1
        axis = opts.scalar(0, "i32")
        if not -ndim <= axis < ndim or axis % ndim == 0:
            raise ValueError(f"operator {k} ({name}): axis {axis}")
        act = self.fused(k, name, opts.scalar(1, "u8"))
        return _rec("Concatenation", xs, y, axis=axis % ndim - ndim, activation=act)

    def _op_PAD(self, k, name, ins, out, opt_type, opts, same_padding):
        if len(ins) != 2:
            raise ValueError(f"operator {k} ({name}) has {len(ins)} inputs")
        x = self.act(ins[0], f"operator {k} ({name}) input")
        ndim = len(self.spec_of[x][0]) + 1
        p = self.index_const(ins[1], f"operator {k} ({name}) paddings")
        if p.shape != (ndim, 2) or (p < 0).any() or p[0].any():
            raise ValueError(f"operator {k} ({name}): paddings {p.tolist()} (non-negative, "
                             f"none on the batch)")
        y = self.act(out, f"operator {k} ({name}) output")
        return _rec("Pad", x, y, paddings=tuple((int(a), int(b)) for a, b in p[1:]))

    def _unary(self, k, name, ins, out):
        if len(ins) != 1:
            raise ValueError(f"operator {k} ({name}) has {len(ins)} inputs")
        return (self.act(ins[0], f"operator {k} ({name}) input"),
                self.act(out, f"operator {k} ({name}) output"))

    def _op_SOFTMAX(self, k, name, ins, out, opt_type, opts, same_padding):
        x, y = self._unary(k, name, ins, out)
        beta = opts.scalar(0, "f32", 0.0) if opts is not None else 1.0
        if not (math.isfinite(beta) and beta > 0):
            raise ValueError(f"operator {k} ({name}): beta {beta}")
        return _rec("Softmax", x, y, beta=beta)

    def _op_LOGISTIC(self, k, name, ins, out, opt_type, opts, same_padding):
        return _rec("Logistic", *self._unary(k, name, ins, out))

    def _op_HARD_SWISH(self, k, name, ins, out, opt_type, opts, same_padding):
        return _rec("HardSwish", *self._unary(k, name, ins, out))

    def _op_RELU(self, k, name, ins, out, opt_type, opts, same_padding):
        return _rec("Relu", *self._unary(k, name, ins, out), max_value=None)

    def _op_RELU6(self, k, name, ins, out, opt_type, opts, same_padding):
        return _rec("Relu", *self._unary(k, name, ins, out), max_value=6.0)


#: operators that may compute a RESHAPE's shape at run time (dropped)
_SHAPE_OPS = ("SHAPE", "STRIDED_SLICE", "PACK", "CONCATENATION", "SLICE", "GATHER",
              "CAST")

#: ops whose first argument is a tuple of inputs
_MULTI = ("Add", "Mul", "Concatenation")


def _rec(kind: str, *args, **kwargs):
    """An op to build: (class name in qatcore.model, positional, keyword arguments)."""
    return kind, args, kwargs


def _out_hw(in_shape, kernel, stride, dilation, padding):
    out = []
    for j in range(2):
        eff = (kernel[j] - 1) * dilation[j] + 1
        n = in_shape[j] + padding[2 * j] + padding[2 * j + 1]
        out.append((n - eff) // stride[j] + 1 if n >= eff else 0)
    return tuple(out)


def _load(path_or_bytes) -> bytes:
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data = bytes(path_or_bytes)
    elif isinstance(path_or_bytes, (str, os.PathLike)):
        path = os.fspath(path_or_bytes)
        size = os.path.getsize(path)
        if size > MAX_TFLITE_BYTES:
            raise ValueError(f"{path}: {size} bytes (at most 2^31 are read)")
        with open(path, "rb") as f:
            data = f.read(MAX_TFLITE_BYTES + 1)
    else:
        raise TypeError(f"read_tflite takes a path or bytes, got {type(path_or_bytes).__name__}")
    if len(data) > MAX_TFLITE_BYTES:
        raise ValueError(f"{len(data)} bytes (at most 2^31 are read)")
    return data


def parse_tflite(path_or_bytes, ns) -> Tuple[Any, bool]:
    """The model of a ``.tflite`` file built from the classes of namespace `ns` (the
    names of :mod:`qatcore.model`), and whether the file had float inputs / outputs."""
    data = _load(path_or_bytes)
    try:
        r = _Reader(data, ns)
        ops, inputs, outputs, float_io = r.convert()
        name = r.sg_name if _NAME_RE.match(r.sg_name) else "model"
        ops = [getattr(ns, kind)(*args, **kw) for kind, args, kw in ops]
        model = ns.QuantizedModel(r.specs, ops, inputs, outputs, name=name)
    except ValueError as exc:
        raise ValueError(f"not a usable int8 .tflite model: {exc}") from None
    except Exception as exc:        # anything else a malformed file provokes: one ValueError
        raise ValueError(f"not a usable int8 .tflite model: {type(exc).__name__}: "
                         f"{exc}") from None
    return model, float_io


def read_tflite(path_or_bytes: Union[str, "os.PathLike[str]", bytes]):
    """Read an int8 ``.tflite`` model (TensorFlow's converter or qatcore's writer) into a
    :class:`qatcore.QuantizedModel`.

    Parameters
    ----------
    path_or_bytes : str, os.PathLike or bytes
        The file, or its content.

    Returns
    -------
    qatcore.QuantizedModel
        int8 NHWC in and out; a float-I/O file's QUANTIZE / DEQUANTIZE are dropped (use
        ``forward`` / ``quantize_input`` / ``dequantize_output`` for the float ends).

    Raises
    ------
    ValueError
        Any defect of the file, or an operator qatcore has no op for (named with its
        index).
    TypeError
        `path_or_bytes` is neither a path nor bytes.
    OSError
        The file cannot be read.
    """
    from .. import model as ns                  # the model package imports us lazily
    return parse_tflite(path_or_bytes, ns)[0]
