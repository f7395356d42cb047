"""A minimal .tflite writer for the engine's runtime check (tests/test_model_tflm.py):
the h2 writer (qatcore.export.tflite_graph) is not on this branch yet.  It covers the
ops those tests build, with SAME/VALID padding only; it is a test fixture, not an
exporter."""

from __future__ import annotations

import numpy as np

from qatcore.model import (Add, AveragePool2D, Conv2D, DepthwiseConv2D, FullyConnected,
                           HardSwish, Logistic, MaxPool2D, Mean, Mul, Relu, Reshape, Softmax,
                           same_padding)


def _schema():
    import flatbuffers  # noqa: F401
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as s
    return s


_ACT = {None: 0, "relu": 1, "relu6": 3}


def model_to_tflite(model) -> bytes:
    import flatbuffers
    s = _schema()
    buffers = [s.BufferT()]
    tensors = []
    index = {}

    def add_buffer(arr):
        b = s.BufferT()
        b.data = np.frombuffer(np.ascontiguousarray(arr).tobytes(), np.uint8)
        buffers.append(b)
        return len(buffers) - 1

    def add_tensor(name, shape, ttype, scales=None, zps=None, axis=0, data=None):
        t = s.TensorT()
        t.name = name
        t.shape = np.array(shape, np.int32)
        t.type = ttype
        t.buffer = add_buffer(data) if data is not None else 0
        if scales is not None:
            q = s.QuantizationParametersT()
            q.scale = [float(v) for v in np.atleast_1d(scales)]
            q.zeroPoint = [int(v) for v in np.atleast_1d(zps)]
            q.quantizedDimension = axis
            t.quantization = q
        tensors.append(t)
        return len(tensors) - 1

    for name, spec in model.tensors.items():
        index[name] = add_tensor(name, (1,) + spec.shape, s.TensorType.INT8, spec.scale,
                                 spec.zero_point)
    codes, operators = [], []

    def opcode(code):
        if code not in codes:
            codes.append(code)
        return codes.index(code)

    def padding_of(op, in_hw, k, stride, dil):
        if tuple(op.padding) == (0, 0, 0, 0):
            return s.Padding.VALID
        if tuple(op.padding) == same_padding(in_hw, k, stride, dil):
            return s.Padding.SAME
        raise ValueError("fixture writes SAME/VALID only")

    for i, op in enumerate(model.ops):
        o = s.OperatorT()
        ins = [index[t] for t in op.inputs]
        spec_in = model.tensors[op.inputs[0]]
        spec_out = model.tensors[op.output]
        code, opt_type, opt = None, 0, None
        if isinstance(op, (Conv2D, DepthwiseConv2D, FullyConnected)):
            w = op.weights_q
            scales = op.weight_scales
            ch = w.shape[3] if isinstance(op, DepthwiseConv2D) else w.shape[0]
            axis = 3 if isinstance(op, DepthwiseConv2D) else 0
            ws = np.broadcast_to(scales, (ch,)) if scales.size > 1 else scales
            ins.append(add_tensor(f"w{i}", w.shape, s.TensorType.INT8, ws,
                                  np.zeros(ws.size, np.int64), axis, w))
            if op.bias_q is not None:
                bs = (np.float32(spec_in.scale) * ws.astype(np.float32)).astype(np.float32)
                ins.append(add_tensor(f"b{i}", (ch,), s.TensorType.INT32, bs,
                                      np.zeros(bs.size, np.int64), 0, op.bias_q))
            else:
                ins.append(-1)
        if isinstance(op, Conv2D):
            code, opt_type, opt = s.BuiltinOperator.CONV_2D, s.BuiltinOptions.Conv2DOptions, s.Conv2DOptionsT()
            opt.padding = padding_of(op, spec_in.shape[:2], op.weights_q.shape[1:3], op.stride, op.dilation)
            opt.strideH, opt.strideW = op.stride
            opt.dilationHFactor, opt.dilationWFactor = op.dilation
            opt.fusedActivationFunction = _ACT[op.activation]
        elif isinstance(op, DepthwiseConv2D):
            code, opt_type, opt = (s.BuiltinOperator.DEPTHWISE_CONV_2D,
                                   s.BuiltinOptions.DepthwiseConv2DOptions, s.DepthwiseConv2DOptionsT())
            opt.padding = padding_of(op, spec_in.shape[:2], op.weights_q.shape[1:3], op.stride, op.dilation)
            opt.strideH, opt.strideW = op.stride
            opt.dilationHFactor, opt.dilationWFactor = op.dilation
            opt.depthMultiplier = op.depth_multiplier
            opt.fusedActivationFunction = _ACT[op.activation]
        elif isinstance(op, FullyConnected):
            code, opt_type, opt = (s.BuiltinOperator.FULLY_CONNECTED,
                                   s.BuiltinOptions.FullyConnectedOptions, s.FullyConnectedOptionsT())
            opt.fusedActivationFunction = _ACT[op.activation]
        elif isinstance(op, (AveragePool2D, MaxPool2D)):
            code = (s.BuiltinOperator.AVERAGE_POOL_2D if isinstance(op, AveragePool2D)
                    else s.BuiltinOperator.MAX_POOL_2D)
            opt_type, opt = s.BuiltinOptions.Pool2DOptions, s.Pool2DOptionsT()
            opt.padding = padding_of(op, spec_in.shape[:2], op.pool, op.stride, (1, 1))
            opt.strideH, opt.strideW = op.stride
            opt.filterHeight, opt.filterWidth = op.pool
            opt.fusedActivationFunction = _ACT[op.activation]
        elif isinstance(op, (Add, Mul)):
            code = s.BuiltinOperator.ADD if isinstance(op, Add) else s.BuiltinOperator.MUL
            opt_type = s.BuiltinOptions.AddOptions if isinstance(op, Add) else s.BuiltinOptions.MulOptions
            opt = s.AddOptionsT() if isinstance(op, Add) else s.MulOptionsT()
            opt.fusedActivationFunction = _ACT[op.activation]
        elif isinstance(op, Reshape):
            code, opt_type, opt = s.BuiltinOperator.RESHAPE, s.BuiltinOptions.ReshapeOptions, s.ReshapeOptionsT()
            opt.newShape = [1] + list(spec_out.shape)
            shape = np.array([1] + list(spec_out.shape), np.int32)
            ins.append(add_tensor(f"shape{i}", (shape.size,), s.TensorType.INT32, data=shape))
        elif isinstance(op, Softmax):
            code, opt_type, opt = s.BuiltinOperator.SOFTMAX, s.BuiltinOptions.SoftmaxOptions, s.SoftmaxOptionsT()
            opt.beta = op.beta
        elif isinstance(op, Mean):
            code, opt_type, opt = s.BuiltinOperator.MEAN, s.BuiltinOptions.ReducerOptions, s.ReducerOptionsT()
            opt.keepDims = op.keepdims
            axes = np.array([(a % len(spec_in.shape)) + 1 for a in op.axes], np.int32)
            ins.append(add_tensor(f"axes{i}", (axes.size,), s.TensorType.INT32, data=axes))
        elif isinstance(op, Logistic):
            code = s.BuiltinOperator.LOGISTIC
        elif isinstance(op, HardSwish):
            code = s.BuiltinOperator.HARD_SWISH
        elif isinstance(op, Relu):
            code = s.BuiltinOperator.RELU if op.max_value is None else s.BuiltinOperator.RELU6
        else:
            raise ValueError(f"fixture cannot write {type(op).__name__}")
        o.opcodeIndex = opcode(code)
        o.inputs = ins
        o.outputs = [index[op.output]]
        o.builtinOptionsType = opt_type
        o.builtinOptions = opt
        operators.append(o)
    sub = s.SubGraphT()
    sub.tensors = tensors
    sub.inputs = [index[t] for t in model.inputs]
    sub.outputs = [index[t] for t in model.outputs]
    sub.operators = operators
    sub.name = "main"
    m = s.ModelT()
    m.version = 3
    m.description = "qatcore test fixture"
    m.subgraphs = [sub]
    m.buffers = buffers
    oc = []
    for code in codes:
        c = s.OperatorCodeT()
        c.builtinCode = code
        c.deprecatedBuiltinCode = min(code, 127)
        c.version = 1
        oc.append(c)
    m.operatorCodes = oc
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())
