"""Small ONNX models built with onnx.helper for the calibration tests (seeded weights)."""

import numpy as np


def _save(graph, path, opset=13):
    import onnx
    from onnx import helper
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def conv_relu_gemm(path, seed=0):
    """x [N,1,8,8] -> Conv(4, 3x3) -> Relu -> Flatten -> Gemm(10) -> logits [N,10]."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32)
    b = rng.normal(-0.3, 0.3, 4).astype(np.float32)
    fc = rng.normal(0, 0.2, (10, 144)).astype(np.float32)
    fb = rng.normal(0, 0.1, 10).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "fc", "fb"], ["y"], transB=1)]
    graph = helper.make_graph(
        nodes, "conv_relu_gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (b, "b"), (fc, "fc"), (fb, "fb"))])
    return _save(graph, path)


def conv_hardsigmoid_gate(path, seed=0):
    """x -> Conv(8) -> Relu = a; gate = HardSigmoid(Conv(8, 1x1)(GlobalAveragePool(a)) + 3)
    (a squeeze-excite gate saturated near 1: no value near 0); y = Conv(a * gate)."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 8).astype(np.float32)
    w2 = rng.normal(0, 0.1, (8, 8, 1, 1)).astype(np.float32)
    b2 = np.full(8, 2.0, np.float32)                     # gates between ~0.7 and 1
    w3 = rng.normal(0, 0.3, (4, 8, 3, 3)).astype(np.float32)
    b3 = rng.normal(0, 0.1, 4).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["a"]),
             helper.make_node("GlobalAveragePool", ["a"], ["p"]),
             helper.make_node("Conv", ["p", "w2", "b2"], ["c2"], kernel_shape=[1, 1]),
             helper.make_node("HardSigmoid", ["c2"], ["gate"], alpha=1 / 6, beta=0.5),
             helper.make_node("Mul", ["a", "gate"], ["m"]),
             helper.make_node("Conv", ["m", "w3", "b3"], ["y"], kernel_shape=[3, 3])]
    inits = [numpy_helper.from_array(a, n) for a, n in
             ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"), (w3, "w3"), (b3, "b3"))]
    graph = helper.make_graph(
        nodes, "gate",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 14, 14])], inits)
    return _save(graph, path)


def conv_sigmoid_output(path, seed=0):
    """x -> Conv(4) -> Relu -> Conv(1) -> Sigmoid = probability map (a detector head)."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.4, (4, 1, 3, 3)).astype(np.float32)
    b1 = np.zeros(4, np.float32)
    w2 = rng.normal(0, 1.0, (1, 4, 3, 3)).astype(np.float32)
    b2 = np.array([-3.0], np.float32)                    # mostly background, a few hot spots
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r"]),
             helper.make_node("Conv", ["r", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c2"], ["y"])]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    graph = helper.make_graph(
        nodes, "sigmoid_head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 16, 16])], inits)
    return _save(graph, path)
