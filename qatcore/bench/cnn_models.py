"""The benchmark CNNs of issue 20, built directly as integer graphs (``QuantizedModel``)
with seeded random int8 weights and plausible scales.

* ``ds_cnn`` -- the MLPerf Tiny keyword spotter: 49×10×1 → conv 10×4 stride 2 (64, ReLU)
  → 4 × (depthwise 3×3 (ReLU) → pointwise 1×1 64 (ReLU)) → average pool 25×5 → FC 12 →
  softmax;
* ``mobilenet_v1_025`` -- MobileNetV1 width 0.25 at 96×96×3 (MLPerf Tiny visual wake
  words): conv 3×3 stride 2 (8) and 13 depthwise-separable blocks (ReLU6) up to 256
  channels at 3×3, average pool, FC 2, softmax;
* ``resnet8`` -- the MLPerf Tiny image classifier: 32×32×3 → conv 3×3 16 → three residual
  stacks (16, 32, 64 channels; stride 2 with a 1×1 projection on the last two) with ADD +
  ReLU → average pool 8×8 → FC 10 → softmax;
* ``conv3x3`` / ``pointwise`` / ``depthwise`` / ``fc`` -- one op each, the shapes that
  dominate the models above (per-op rows of the benchmark).

Scales: each tensor's scale is set from the spread its codes would have under random
weights (the accumulator's standard deviation, tracked layer by layer from the codes' RMS),
so activations use the int8 range without saturating: ReLU / ReLU6 outputs at zero point
-128 over [0, 4σ] (ReLU6 at 6/255, as a converter writes a saturated ReLU6), linear
outputs at zero point 0 over ±4σ; ReLU6 layers and the logits get weight scales that give
them a spread of 1.5 (4σ = 6) and 2 (a softmax that is not one-hot).  The fused
activations' clamps are then the int8 range, as in models TensorFlow's converter writes
from calibrated ranges.

:func:`runner` gives a one-argument callable (int8 NHWC codes in, int8 codes out) for
qatcore and each peer runtime, shared by ``bench/bench_cnn.py`` and ``qatcore bench``.

``tiny=True`` shrinks every model (fewer channels, small images) for smoke tests.
The op classes come from :mod:`qatcore.model`; ``classes=`` takes another namespace with the
same names (tests use it for stand-ins).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["MODELS", "OPS", "RUNTIMES", "build", "random_codes", "runner"]

_RELU_RMS = 255 / 4 / np.sqrt(2)      # RMS of (code - zp) of a ReLU over [0, 4σ]
_LINEAR_RMS = 255 / 8                 # RMS of the codes of a linear output over ±4σ


def _classes(classes: Any) -> Any:
    if classes is not None:
        return classes
    import qatcore.model as m
    return m


def _same(size: int, k: int, s: int) -> Tuple[int, int]:
    out = (size + s - 1) // s
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


class _Builder:
    def __init__(self, classes: Any, seed: int, shape: Sequence[int], name: str) -> None:
        self.m = classes
        self.rng = np.random.default_rng(seed)
        self.tensors: Dict[str, Any] = {}
        self.rms: Dict[str, float] = {}
        self.ops: List[Any] = []
        self.name = name
        self.tensor("input", shape, 0.02, -1, 74.0)       # uniform int8 codes

    def tensor(self, name: str, shape: Sequence[int], scale: float, zp: int,
               rms: float) -> str:
        self.tensors[name] = self.m.TensorSpec(name, tuple(int(d) for d in shape),
                                               float(np.float32(scale)), int(zp))
        self.rms[name] = float(rms)
        return name

    def new(self, shape: Sequence[int], scale: float, zp: int, rms: float) -> str:
        return self.tensor(f"t{len(self.tensors)}", shape, scale, zp, rms)

    def shape(self, t: str) -> Tuple[int, ...]:
        return tuple(self.tensors[t].shape)

    def _out(self, x: str, shape: Sequence[int], k: int, ws: np.ndarray, w_rms: float,
             activation: Optional[str], target: Optional[float] = None
             ) -> Tuple[str, np.ndarray, np.ndarray]:
        sigma = np.sqrt(k) * w_rms * self.rms[x] * self.tensors[x].scale * float(np.mean(ws))
        if activation == "relu6" and target is None:
            target = 1.5                      # ReLU6's [0, 6] is 4 standard deviations
        if target is not None:                # weight scales chosen for that spread
            ws = (ws * np.float32(target / sigma)).astype(np.float32)
            sigma = target
        if activation == "relu6":
            y = self.new(shape, 6 / 255, -128, _RELU_RMS)
        elif activation == "relu":
            y = self.new(shape, 4 * sigma / 255, -128, _RELU_RMS)
        else:
            y = self.new(shape, 8 * sigma / 255, 0, _LINEAR_RMS)
        bias_scale = self.tensors[x].scale * ws
        bias = (self.rng.standard_normal(ws.size) * 0.3 * sigma / bias_scale)
        return y, np.round(bias).astype(np.int32), ws

    def weights(self, shape: Sequence[int], channels: int) -> Tuple[np.ndarray, np.ndarray]:
        wq = np.clip(np.round(self.rng.standard_normal(shape) * 40), -127, 127).astype(np.int8)
        ws = self.rng.uniform(0.002, 0.02, channels).astype(np.float32)
        return wq, ws

    def conv(self, x: str, out_ch: int, kernel: Tuple[int, int] = (3, 3),
             stride: Tuple[int, int] = (1, 1), activation: Optional[str] = "relu") -> str:
        h, w, c = self.shape(x)
        pt, pb = _same(h, kernel[0], stride[0])
        pl, pr = _same(w, kernel[1], stride[1])
        oh, ow = (h + stride[0] - 1) // stride[0], (w + stride[1] - 1) // stride[1]
        wq, ws = self.weights((out_ch, *kernel, c), out_ch)
        k = kernel[0] * kernel[1] * c
        y, bias, ws = self._out(x, (oh, ow, out_ch), k, ws, 40.0, activation)
        self.ops.append(self.m.Conv2D(x, y, wq, ws, bias, stride=stride,
                                      padding=(pt, pb, pl, pr), activation=activation))
        return y

    def depthwise(self, x: str, stride: Tuple[int, int] = (1, 1),
                  activation: Optional[str] = "relu") -> str:
        h, w, c = self.shape(x)
        pt, pb = _same(h, 3, stride[0])
        pl, pr = _same(w, 3, stride[1])
        oh, ow = (h + stride[0] - 1) // stride[0], (w + stride[1] - 1) // stride[1]
        wq, ws = self.weights((1, 3, 3, c), c)
        y, bias, ws = self._out(x, (oh, ow, c), 9, ws, 40.0, activation)
        self.ops.append(self.m.DepthwiseConv2D(x, y, wq, ws, bias, stride=stride,
                                               padding=(pt, pb, pl, pr),
                                               activation=activation))
        return y

    def fc(self, x: str, out: int, activation: Optional[str] = None,
           logits: bool = False) -> str:
        k = int(np.prod(self.shape(x)))
        wq, ws = self.weights((out, k), out)
        # logits spread ~2 (a softmax that is not one-hot)
        y, bias, ws = self._out(x, (out,), k, ws, 40.0, activation, 2.0 if logits else None)
        self.ops.append(self.m.FullyConnected(x, y, wq, ws, bias, activation=activation))
        return y

    def add(self, a: str, b: str, activation: Optional[str] = "relu") -> str:
        sa, sb = self.tensors[a], self.tensors[b]
        real_rms = np.hypot(self.rms[a] * sa.scale, self.rms[b] * sb.scale)
        if activation == "relu":
            y = self.new(self.shape(a), 4 * real_rms / 255, -128, _RELU_RMS)
        else:
            y = self.new(self.shape(a), 8 * real_rms / 255, 0, _LINEAR_RMS)
        self.ops.append(self.m.Add((a, b), y, activation=activation))
        return y

    def avgpool_all(self, x: str) -> str:
        h, w, c = self.shape(x)
        s = self.tensors[x]
        y = self.new((1, 1, c), s.scale, s.zero_point, self.rms[x])
        self.ops.append(self.m.AveragePool2D(x, y, pool=(h, w), stride=(1, 1),
                                             padding=(0, 0, 0, 0)))
        r = self.new((c,), s.scale, s.zero_point, self.rms[x])
        self.ops.append(self.m.Reshape(y, r))
        return r

    def softmax(self, x: str) -> str:
        y = self.new(self.shape(x), 1 / 256, -128, 40.0)
        self.ops.append(self.m.Softmax(x, y))
        return y

    def model(self, out: str) -> Any:
        return self.m.QuantizedModel(list(self.tensors.values()), self.ops, ["input"], [out],
                                     name=self.name)


def ds_cnn(seed: int = 0, tiny: bool = False, classes: Any = None) -> Any:
    ch = 8 if tiny else 64
    g = _Builder(_classes(classes), seed, (13, 6, 1) if tiny else (49, 10, 1), "ds_cnn")
    x = g.conv("input", ch, kernel=(10, 4), stride=(2, 2))
    for _ in range(4):
        x = g.depthwise(x)
        x = g.conv(x, ch, kernel=(1, 1))
    return g.model(g.softmax(g.fc(g.avgpool_all(x), 12, logits=True)))


def mobilenet_v1_025(seed: int = 0, tiny: bool = False, classes: Any = None) -> Any:
    g = _Builder(_classes(classes), seed, (16, 16, 3) if tiny else (96, 96, 3),
                 "mobilenet_v1_025")
    x = g.conv("input", 8, stride=(2, 2), activation="relu6")
    blocks = [(16, 1), (32, 2), (32, 1), (64, 2), (64, 1), (128, 2)] + [(128, 1)] * 5 \
        + [(256, 2), (256, 1)]
    if tiny:
        blocks = [(8, 1), (16, 2), (16, 2)]
    for ch, s in blocks:
        x = g.depthwise(x, stride=(s, s), activation="relu6")
        x = g.conv(x, ch, kernel=(1, 1), activation="relu6")
    return g.model(g.softmax(g.fc(g.avgpool_all(x), 2, logits=True)))


def resnet8(seed: int = 0, tiny: bool = False, classes: Any = None) -> Any:
    g = _Builder(_classes(classes), seed, (8, 8, 3) if tiny else (32, 32, 3), "resnet8")
    widths = (4, 8, 8) if tiny else (16, 32, 64)
    x = g.conv("input", widths[0])
    for i, ch in enumerate(widths):
        s = 1 if i == 0 else 2
        y = g.conv(x, ch, stride=(s, s))
        y = g.conv(y, ch, activation=None)
        skip = x if i == 0 else g.conv(x, ch, kernel=(1, 1), stride=(s, s), activation=None)
        x = g.add(y, skip)
    return g.model(g.softmax(g.fc(g.avgpool_all(x), 10, logits=True)))


def _one_op(kind: str) -> Callable[..., Any]:
    def build(seed: int = 0, tiny: bool = False, classes: Any = None) -> Any:
        if kind == "conv3x3":                 # ResNet-8's first stack
            g = _Builder(_classes(classes), seed, (8, 8, 4) if tiny else (32, 32, 16), kind)
            y = g.conv("input", 4 if tiny else 16)
        elif kind == "pointwise":             # DS-CNN's 1×1 convolutions
            g = _Builder(_classes(classes), seed, (5, 3, 8) if tiny else (25, 5, 64), kind)
            y = g.conv("input", 8 if tiny else 64, kernel=(1, 1))
        elif kind == "depthwise":             # MobileNetV1-0.25's second block
            g = _Builder(_classes(classes), seed, (8, 8, 8) if tiny else (48, 48, 16), kind)
            y = g.depthwise("input")
        else:                                 # a hidden FC layer
            g = _Builder(_classes(classes), seed, (32,) if tiny else (1024,), kind)
            y = g.fc("input", 16 if tiny else 256, activation="relu")
        return g.model(y)
    return build


#: Whole models, by name.
MODELS: Dict[str, Callable[..., Any]] = {"ds_cnn": ds_cnn,
                                         "mobilenet_v1_025": mobilenet_v1_025,
                                         "resnet8": resnet8}
#: One-op models (the per-op rows).
OPS: Dict[str, Callable[..., Any]] = {k: _one_op(k) for k in ("conv3x3", "pointwise",
                                                               "depthwise", "fc")}


def build(name: str, seed: int = 0, tiny: bool = False, classes: Any = None) -> Any:
    """The model `name` (a key of :data:`MODELS` or :data:`OPS`)."""
    table = {**MODELS, **OPS}
    if name not in table:
        raise KeyError(f"unknown benchmark model {name!r}; known: {sorted(table)}")
    return table[name](seed, tiny, classes)


def random_codes(model: Any, batch: int, seed: int = 0) -> np.ndarray:
    """Uniform random int8 codes for the model's (first) input, ``(batch, *shape)``."""
    rng = np.random.default_rng(seed)
    shape = model.tensors[model.inputs[0]].shape
    return rng.integers(-128, 128, (batch, *shape), dtype=np.int8)



# ----------------------------------------------------------------------------- runtimes

#: Runtimes :func:`runner` knows: qatcore's ``forward_int8``, LiteRT with its default
#: XNNPACK delegate and with its optimized builtin kernels (no delegate), TensorFlow Lite
#: Micro (its Python wheel; one sample per call), onnxruntime on the QDQ export.
RUNTIMES = ("qatcore", "litert_xnnpack", "litert_builtin", "tflm", "onnxruntime")


def runner(kind: str, model: Any, batch: int, threads: int = 1) -> Callable[[np.ndarray], Any]:
    """A callable running `model` on a ``(batch, *input shape)`` int8 array in `kind`
    (a name of :data:`RUNTIMES`) with `threads` threads.  Raises ImportError when that
    runtime is not installed, ValueError when it cannot run this case (TFLM: batch 1,
    one thread)."""
    if kind == "qatcore":
        model.n_threads = threads

        def run_qatcore(x: np.ndarray) -> Any:
            return model.forward_int8(x)
        return run_qatcore
    if kind in ("litert_xnnpack", "litert_builtin"):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
        from qatcore.export.tflite_graph import tflite_bytes
        resolver = (OpResolverType.AUTO if kind == "litert_xnnpack"
                    else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        it = Interpreter(model_content=tflite_bytes(model, batch_size=batch),
                         num_threads=threads, experimental_op_resolver_type=resolver)
        it.allocate_tensors()
        i_in = it.get_input_details()[0]["index"]
        i_out = it.get_output_details()[0]["index"]

        def run_litert(x: np.ndarray) -> Any:
            it.set_tensor(i_in, x)
            it.invoke()
            return it.get_tensor(i_out)
        return run_litert
    if kind == "tflm":
        from tflite_micro import runtime
        from qatcore.export.tflite_graph import tflite_bytes
        if batch != 1 or threads != 1:
            raise ValueError("TFLM runs one sample on one thread")
        tm = runtime.Interpreter.from_bytes(tflite_bytes(model, batch_size=1),
                                            arena_size=1 << 22)

        def run_tflm(x: np.ndarray) -> Any:
            tm.set_input(x, 0)
            tm.invoke()
            return tm.get_output(0)
        return run_tflm
    if kind == "onnxruntime":
        import onnxruntime as ort
        from qatcore.export.onnx_graph import onnx_bytes
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        sess = ort.InferenceSession(onnx_bytes(model), so, providers=["CPUExecutionProvider"])
        name = model.inputs[0]

        def run_ort(x: np.ndarray) -> Any:
            return sess.run(None, {name: x})[0]
        return run_ort
    raise ValueError(f"unknown runtime {kind!r}; known: {RUNTIMES}")
