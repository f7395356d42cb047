"""Integer graphs for the .tflite graph writer / reader tests (qatcore.model's classes,
docs/integer-graph.md), and the rounding each runtime uses."""

import numpy as np

from qatcore.model import (Add, AveragePool2D, Concatenation, Conv2D, DepthwiseConv2D,
                           FullyConnected, HardSwish, Logistic, MaxPool2D, Mean, Mul, Pad,
                           QuantizedModel, Relu, Reshape, Softmax, TensorSpec)

__all__ = ["Add", "AveragePool2D", "Concatenation", "Conv2D", "DepthwiseConv2D",
           "FullyConnected", "HardSwish", "Logistic", "MaxPool2D", "Mean", "Mul", "Pad",
           "QuantizedModel", "Relu", "Reshape", "Softmax", "TensorSpec", "GraphBuilder", "Rec",
           "NETS", "SINGLE_OPS", "ARGS", "RUNTIME_ROUNDING", "per_op_forward",
           "random_inputs"]


class Rec:
    """An op to build: a fresh object for every model made from the builder (the engine
    binds an op to the graph it is given)."""

    def __init__(self, cls, *args, **kwargs):
        self.cls, self.args, self.kwargs = cls, args, kwargs
        self.kind = cls.__name__
        self.inputs = tuple(args[0]) if isinstance(args[0], tuple) else (args[0],)
        self.output = args[1]

    def get(self, name, default=None):
        return self.kwargs.get(name, default)

    def build(self):
        return self.cls(*self.args, **self.kwargs)


def same_padding(in_hw, kernel_hw, stride, dilation=(1, 1)):
    from qatcore.export.tflite_graph import same_padding as sp
    return sp(in_hw, kernel_hw, stride, dilation)


class GraphBuilder:
    """Builds a random model op by op: each op's output scale is a guess of its range
    (4 standard deviations of random codes span the int8 range), the weights are random
    codes with per-channel scales, the zero points vary."""

    def __init__(self, seed, shape, scale=0.05, zero_point=-3, name="x"):
        self.rng = np.random.default_rng(seed)
        self.tensors = {}
        self.ops = []
        self.inputs = []
        self.keep = set()          # outputs that keep their (first) input's scale and zp
        self.input(name, shape, scale, zero_point)

    def input(self, name, shape, scale=0.05, zero_point=0):
        self.tensors[name] = TensorSpec(name, tuple(shape), scale, zero_point)
        self.inputs.append(name)
        return name

    def _new(self, shape, scale, zero_point=None):
        name = f"t{len(self.tensors)}"
        if zero_point is None:
            zero_point = int(self.rng.integers(-30, 31))
        self.tensors[name] = TensorSpec(name, tuple(int(d) for d in shape),
                                        float(np.float32(scale)), int(zero_point))
        return name

    def spec(self, name):
        return self.tensors[name]

    def _weights(self, shape, axis, per_channel=True):
        wq = self.rng.integers(-127, 128, shape).astype(np.int8)
        n = shape[axis] if per_channel else 1
        ws = self.rng.uniform(0.004, 0.03, n).astype(np.float32)
        return wq, ws

    def _bias(self, n, acc_std):
        return (self.rng.standard_normal(n) * acc_std).astype(np.int32)

    @staticmethod
    def _out_scale(s_in, ws, k):
        # acc ~ sqrt(k) * 70 * 70 codes (random int8 codes), 4 std over 255 codes
        return float(np.float32(4 * np.sqrt(k) * 70 * 70 * s_in * float(np.mean(ws)) / 255))

    def conv(self, x, out_ch, kernel=(3, 3), stride=(1, 1), dilation=(1, 1), padding="same",
             activation=None, groups=1, bias=True, per_channel=True):
        s = self.spec(x)
        h, w, c = s.shape
        if padding == "same":
            padding = same_padding((h, w), kernel, stride, dilation)
        elif padding == "valid":
            padding = (0, 0, 0, 0)
        wq, ws = self._weights((out_ch, *kernel, c // groups), 0, per_channel)
        k = kernel[0] * kernel[1] * c // groups
        oh = (h + padding[0] + padding[1] - (kernel[0] - 1) * dilation[0] - 1) // stride[0] + 1
        ow = (w + padding[2] + padding[3] - (kernel[1] - 1) * dilation[1] - 1) // stride[1] + 1
        y = self._new((oh, ow, out_ch), self._out_scale(s.scale, ws, k),
                      -128 if activation else None)
        self.ops.append(Rec(Conv2D, x, y, wq, ws, self._bias(out_ch, 4900 * np.sqrt(k))
                               if bias else None, stride=stride, dilation=dilation,
                               padding=tuple(padding), activation=activation))
        return y

    def depthwise(self, x, multiplier=1, kernel=(3, 3), stride=(1, 1), dilation=(1, 1),
                  padding="same", activation=None, bias=True, per_channel=True):
        s = self.spec(x)
        h, w, c = s.shape
        if padding == "same":
            padding = same_padding((h, w), kernel, stride, dilation)
        elif padding == "valid":
            padding = (0, 0, 0, 0)
        wq, ws = self._weights((1, *kernel, c * multiplier), 3, per_channel)
        k = kernel[0] * kernel[1]
        oh = (h + padding[0] + padding[1] - (kernel[0] - 1) * dilation[0] - 1) // stride[0] + 1
        ow = (w + padding[2] + padding[3] - (kernel[1] - 1) * dilation[1] - 1) // stride[1] + 1
        y = self._new((oh, ow, c * multiplier), self._out_scale(s.scale, ws, k),
                      -128 if activation else None)
        self.ops.append(Rec(DepthwiseConv2D, x, y, wq, ws, self._bias(c * multiplier, 4900 * 3)
                                        if bias else None, stride=stride, dilation=dilation,
                                        padding=tuple(padding), activation=activation))
        return y

    def fc(self, x, out, activation=None, bias=True, per_channel=True):
        s = self.spec(x)
        k = int(np.prod(s.shape))
        wq, ws = self._weights((out, k), 0, per_channel)
        y = self._new((out,), self._out_scale(s.scale, ws, k), -128 if activation else None)
        self.ops.append(Rec(FullyConnected, x, y, wq, ws, self._bias(out, 4900 * np.sqrt(k))
                                       if bias else None, activation=activation))
        return y

    def add(self, a, b, activation=None):
        sa, sb = self.spec(a), self.spec(b)
        y = self._new(sa.shape, 1.5 * max(sa.scale, sb.scale))
        self.ops.append(Rec(Add, (a, b), y, activation=activation))
        return y

    def mul(self, a, b, activation=None):
        sa, sb = self.spec(a), self.spec(b)
        y = self._new(sa.shape, sa.scale * sb.scale * 70 * 70 * 4 / 255)
        self.ops.append(Rec(Mul, (a, b), y, activation=activation))
        return y

    def pool(self, x, kind, pool=(2, 2), stride=(2, 2), padding="valid", activation=None):
        s = self.spec(x)
        h, w, c = s.shape
        if padding == "same":
            padding = same_padding((h, w), pool, stride)
        elif padding == "valid":
            padding = (0, 0, 0, 0)
        oh = (h + padding[0] + padding[1] - pool[0]) // stride[0] + 1
        ow = (w + padding[2] + padding[3] - pool[1]) // stride[1] + 1
        y = self._new((oh, ow, c), s.scale, s.zero_point)
        self.keep.add(y)
        cls = AveragePool2D if kind == "avg" else MaxPool2D
        self.ops.append(Rec(cls, x, y, pool=pool, stride=stride, padding=tuple(padding),
                            activation=activation))
        return y

    def mean(self, x, axes=(0, 1), keepdims=False):
        s = self.spec(x)
        shape = [d for i, d in enumerate(s.shape) if i not in axes] if not keepdims else \
            [1 if i in axes else d for i, d in enumerate(s.shape)]
        y = self._new(shape, s.scale * 0.7)
        self.ops.append(Rec(Mean, x, y, axes=axes, keepdims=keepdims))
        return y

    def reshape(self, x, shape):
        s = self.spec(x)
        y = self._new(shape, s.scale, s.zero_point)
        self.keep.add(y)
        self.ops.append(Rec(Reshape, x, y))
        return y

    def concat(self, xs, axis=-1):
        s = self.spec(xs[0])
        ndim = len(s.shape)
        shape = list(s.shape)
        shape[axis % ndim] = sum(self.spec(t).shape[axis % ndim] for t in xs)
        y = self._new(shape, s.scale, s.zero_point)
        self.keep.add(y)
        self.ops.append(Rec(Concatenation, tuple(xs), y, axis=axis))
        return y

    def pad(self, x, paddings):
        s = self.spec(x)
        shape = [d + a + b for d, (a, b) in zip(s.shape, paddings)]
        y = self._new(shape, s.scale, s.zero_point)
        self.keep.add(y)
        self.ops.append(Rec(Pad, x, y, paddings=tuple(tuple(p) for p in paddings)))
        return y

    def softmax(self, x, beta=1.0):
        y = self._new(self.spec(x).shape, 1 / 256, -128)
        self.ops.append(Rec(Softmax, x, y, beta=beta))
        return y

    def logistic(self, x):
        y = self._new(self.spec(x).shape, 1 / 256, -128)
        self.ops.append(Rec(Logistic, x, y))
        return y

    def hard_swish(self, x):
        s = self.spec(x)
        y = self._new(s.shape, s.scale * 0.8)
        self.ops.append(Rec(HardSwish, x, y))
        return y

    def relu(self, x, max_value=None, rescale=1.0):
        s = self.spec(x)
        y = self._new(s.shape, s.scale * rescale, -128 if rescale != 1.0 else s.zero_point)
        if rescale == 1.0:
            self.keep.add(y)
        self.ops.append(Rec(Relu, x, y, max_value=max_value))
        return y

    def model(self, outputs, name="model", calibrate=True):
        outputs = [outputs] if isinstance(outputs, str) else list(outputs)
        if calibrate:
            self.calibrate()
        return self._model(self.ops, outputs, name)

    def _model(self, recs, outputs, name="model"):
        used = {t for r in recs for t in (*r.inputs, r.output)}
        return QuantizedModel([t for n, t in self.tensors.items() if n in used],
                              [r.build() for r in recs],
                              [i for i in self.inputs if i in used], outputs, name=name)

    #: ops whose output scale and zero point are free (the others keep their input's or are
    #: fixed by TFLite)
    _FREE = ("Conv2D", "DepthwiseConv2D", "FullyConnected", "Add", "Mul", "Mean",
             "HardSwish")

    def calibrate(self, n=128, seed=99):
        """Set each free output scale from what LiteRT computes on random codes, op by op
        in order (an op's codes depend only on the scales before it): 4 standard
        deviations over the int8 range, the zero point at the mean (-128 under a fused
        ReLU), so that the outputs use the range without saturating."""
        from qatcore.export.tflite_graph import tflite_bytes
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        squashed = {op.inputs[0] for op in self.ops if op.kind in ("Softmax", "Logistic")}
        for k, op in enumerate(self.ops):
            if op.output in self.keep:
                src = self.tensors[op.inputs[0]]
                self.tensors[op.output] = TensorSpec(op.output, self.tensors[op.output].shape,
                                                     src.scale, src.zero_point)
            if op.kind not in self._FREE:
                continue
            for _ in range(12):
                model = self._model(self.ops[:k + 1], [op.output])
                xs = random_inputs(model, n, seed)
                it = Interpreter(model_content=tflite_bytes(model, batch_size=n),
                                 experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
                it.allocate_tensors()
                for d, x in zip(it.get_input_details(), xs):
                    it.set_tensor(d["index"], x)
                it.invoke()
                q = it.get_tensor(it.get_output_details()[0]["index"]).astype(np.float64)
                spec = self.tensors[op.output]
                saturated = np.mean((q == -128) | (q == 127))
                relu = op.get("activation") is not None
                if relu:
                    saturated = np.mean(q == 127)
                real = (q - spec.zero_point) * spec.scale
                if saturated > 0.02:
                    scale, zp = spec.scale * 4, spec.zero_point
                else:
                    std = float(real.std()) or spec.scale
                    scale = 4 * std / 127 if not relu else 6 * std / 255
                    zp = -128 if relu else int(np.clip(np.round(-real.mean() / scale),
                                                       -100, 100))
                    done = 0.5 < scale / spec.scale < 2
                if (saturated <= 0.02 and op.kind == "FullyConnected"
                        and op.output in squashed and real.std() > 3):
                    # logits of a softmax / logistic: a spread of about 2, not one-hot
                    x, y, wq, ws, bias = op.args
                    ws = np.asarray(ws, np.float32) * np.float32(2 / real.std())
                    op = self.ops[k] = Rec(FullyConnected, x, y, wq, ws, bias, **op.kwargs)
                    continue
                self.tensors[op.output] = TensorSpec(op.output, spec.shape,
                                                     float(np.float32(scale)), zp)
                if saturated <= 0.02 and done:
                    break


# ------------------------------------------------------------------------------ models

def _single(op):
    def build(seed):
        shape = {"fc": (24,), "softmax": (10,), "logistic": (12,),
                 "conv-groups": (9, 11, 6)}.get(op, (9, 11, 5))
        g = GraphBuilder(seed, shape, zero_point={"conv-valid": -128}.get(op, 7))
        x = "x"
        if op == "conv":
            y = g.conv(x, 6, activation="relu")
        elif op == "conv-valid":
            y = g.conv(x, 4, kernel=(2, 3), stride=(2, 1), padding="valid", activation="relu6")
        elif op == "conv-pad":                        # explicit padding: PAD + VALID conv
            y = g.conv(x, 4, kernel=(3, 3), stride=(2, 2), padding=(2, 0, 1, 1))
        elif op == "conv-dilated":
            y = g.conv(x, 3, kernel=(3, 3), dilation=(2, 2), per_channel=False, bias=False)
        elif op == "conv-groups":
            y = g.conv(x, 4, groups=2, activation="relu")
        elif op == "conv-1x1-stride":
            y = g.conv(x, 7, kernel=(1, 1), stride=(2, 2))
        elif op == "depthwise":
            y = g.depthwise(x, activation="relu6")
        elif op == "depthwise-mult":
            y = g.depthwise(x, multiplier=2, stride=(2, 2), kernel=(3, 5))
        elif op == "depthwise-pad":
            y = g.depthwise(x, padding=(0, 2, 1, 0), activation="relu")
        elif op == "fc":
            y = g.fc(x, 10, activation="relu")
        elif op == "fc-flatten":
            y = g.fc(x, 8, per_channel=False)
        elif op == "add":
            b = g.input("y", (9, 11, 5), 0.08, -20)
            y = g.add(x, b, activation="relu")
        elif op == "mul":
            b = g.input("y", (9, 11, 5), 0.03, 11)
            y = g.mul(x, b)
        elif op == "avgpool":
            y = g.pool(x, "avg", pool=(3, 3), stride=(2, 2), padding="same")
        elif op == "avgpool-valid":
            y = g.pool(x, "avg", pool=(2, 3), stride=(2, 2), activation="relu")
        elif op == "maxpool":
            y = g.pool(x, "max", pool=(3, 3), stride=(2, 2), padding="same")
        elif op == "mean":
            y = g.mean(x)
        elif op == "mean-keepdims":
            y = g.mean(x, axes=(0, 1), keepdims=True)
        elif op == "reshape":
            y = g.reshape(x, (11, 45))
        elif op == "concat":
            b = g.input("y", (9, 11, 3), g.spec("x").scale, g.spec("x").zero_point)
            y = g.concat(["x", b])
        elif op == "pad":
            y = g.pad(x, ((1, 2), (0, 3), (0, 0)))
        elif op == "softmax":
            y = g.softmax(x)
        elif op == "logistic":
            y = g.logistic(x)
        elif op == "hard_swish":
            y = g.hard_swish(x)
        elif op == "relu":
            y = g.relu(x)
        elif op == "relu-rescale":
            y = g.relu(x, rescale=0.6)
        elif op == "relu6":
            y = g.relu(x, max_value=6.0)
        elif op == "relu6-rescale":              # LiteRT requantizes, TFLM does not
            y = g.relu(x, max_value=6.0, rescale=0.3)
        else:
            raise KeyError(op)
        return g.model(y, name=op.replace("-", "_"))
    return build


SINGLE_OPS = ["conv", "conv-valid", "conv-pad", "conv-dilated", "conv-groups", "conv-1x1-stride",
              "depthwise", "depthwise-mult", "depthwise-pad", "fc", "fc-flatten", "add", "mul",
              "avgpool", "avgpool-valid", "maxpool", "mean", "mean-keepdims", "reshape",
              "concat", "pad", "softmax", "logistic", "hard_swish", "relu", "relu-rescale",
              "relu6", "relu6-rescale"]


def small_cnn(seed):
    """conv → depthwise → add → avgpool → reshape → fc → softmax."""
    g = GraphBuilder(seed, (12, 12, 3), 0.02, -5)
    a = g.conv("x", 8, activation="relu")
    b = g.depthwise(a, activation="relu6")
    c = g.conv(b, 8, kernel=(1, 1))
    d = g.add(a, c)
    e = g.pool(d, "avg", pool=(2, 2), stride=(2, 2))
    f = g.reshape(e, (6 * 6 * 8,))
    h = g.fc(f, 10)
    return g.model(g.softmax(h), name="small_cnn")


def resnet_block(seed):
    """conv(stride 2) → [conv → conv] + skip (1x1 stride-2 conv) → add(relu) → maxpool →
    mean → fc → softmax; one conv with an explicit (non-SAME) padding."""
    g = GraphBuilder(seed, (16, 16, 4), 0.03, 0)
    a = g.conv("x", 8, kernel=(3, 3), stride=(2, 2), activation="relu")
    b = g.conv(a, 8, activation="relu")
    c = g.conv(b, 8, kernel=(3, 3), padding=(1, 1, 1, 1))          # == SAME
    skip = g.conv(a, 8, kernel=(1, 1))
    d = g.add(c, skip, activation="relu")
    e = g.conv(d, 12, kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1),  # != SAME: PAD
               activation="relu")
    f = g.pool(e, "max", pool=(2, 2), stride=(1, 1), padding="same")
    m = g.mean(f)
    return g.model(g.softmax(g.fc(m, 5)), name="resnet_block")


def ds_cnn(seed):
    """DS-CNN-like (keyword spotting): conv(stride 2, relu) → 2 × (depthwise(relu) →
    pointwise(relu)) → avgpool → reshape → fc → softmax, on a 25 × 10 "spectrogram"."""
    g = GraphBuilder(seed, (25, 10, 1), 0.1, -128)
    a = g.conv("x", 16, kernel=(5, 3), stride=(2, 2), activation="relu")
    for _ in range(2):
        a = g.depthwise(a, activation="relu")
        a = g.conv(a, 16, kernel=(1, 1), activation="relu")
    h, w, _ = g.spec(a).shape
    p = g.pool(a, "avg", pool=(h, w), stride=(1, 1))
    r = g.reshape(p, (16,))
    return g.model(g.softmax(g.fc(r, 12)), name="ds_cnn")


def mixed_net(seed):
    """The second batch of ops together: pad, hard_swish, concat, mul, logistic, relu6,
    max pool, mean keepdims, two inputs and three outputs."""
    g = GraphBuilder(seed, (8, 8, 4), 0.04, 3)
    g.input("z", (8, 8, 4), 0.05, -7)
    a = g.conv("x", 4, activation="relu6")
    b = g.hard_swish(g.depthwise("z"))
    m = g.mul(a, b)
    p = g.pad(m, ((1, 1), (1, 1), (0, 0)))
    q = g.pool(p, "max", pool=(2, 2), stride=(2, 2))
    lo = g.logistic(g.mean(q, keepdims=True))
    cat = g.concat([q, g.relu(q)])
    return g.model([g.relu(q, max_value=6.0), lo, cat], name="mixed")


NETS = {"small_cnn": small_cnn, "resnet_block": resnet_block, "ds_cnn": ds_cnn,
        "mixed": mixed_net}


def random_inputs(model, n, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(-128, 128, (n, *model.tensors[t].shape)).astype(np.int8)
            for t in model.inputs]


# ------------------------------------------------------------------ runtimes' roundings

#: The contract's constructor arguments of each op (what rebuilds it, what a round trip
#: keeps).
ARGS = {"Conv2D": ("weights_q", "weight_scales", "bias_q", "stride", "dilation", "padding",
                   "activation"),
        "FullyConnected": ("weights_q", "weight_scales", "bias_q", "activation"),
        "Add": ("activation",), "Mul": ("activation",),
        "AveragePool2D": ("pool", "stride", "padding", "activation"),
        "Mean": ("axes", "keepdims"), "Reshape": (), "Concatenation": ("axis", "activation"),
        "Pad": ("paddings",), "Softmax": ("beta",), "Logistic": (), "HardSwish": (),
        "Relu": ("max_value",)}
ARGS["DepthwiseConv2D"] = ARGS["Conv2D"]
ARGS["MaxPool2D"] = ARGS["AveragePool2D"]
_MULTI = ("Add", "Mul", "Concatenation")

#: The fixed-point rounding each runtime's int8 kernels use, per op (measured with
#: ai-edge-litert 2.3 and tflite-micro 0.dev20261023; the ops not listed compute the same
#: in every rounding): TFLM keeps gemmlowp's double rounding everywhere; LiteRT's reference
#: kernels (BUILTIN_REF) too, except FULLY_CONNECTED, which rounds once; LiteRT's builtin
#: kernels take NEON's path; XNNPACK rounds once.
RUNTIME_ROUNDING = {
    "tflm": lambda kind: "gemmlowp",
    "ref": lambda kind: "single" if kind == "FullyConnected" else "gemmlowp",
    "builtin": lambda kind: "neon",
    "xnnpack": lambda kind: "single",
}


def per_op_forward(model, xs, rounding_of):
    """forward_int8 op by op, each op with the rounding `rounding_of(kind)` (a runtime that
    rounds differently per op is matched this way); returns the outputs as a list."""
    values = dict(zip(model.inputs, xs))
    for op in model.ops:
        kind = type(op).__name__
        kwargs = {a: getattr(op, a) for a in ARGS[kind]}
        first = tuple(op.inputs) if kind in _MULTI else op.inputs[0]
        fresh = type(op)(first, op.output, **kwargs)
        ins = list(dict.fromkeys(op.inputs))
        one = QuantizedModel([model.tensors[t] for t in ins + [op.output]], [fresh], ins,
                             [op.output])
        args = [values[t] for t in ins]
        values[op.output] = one.forward_int8(args if len(args) > 1 else args[0],
                                             rounding=rounding_of(kind))
    return [values[t] for t in model.outputs]
