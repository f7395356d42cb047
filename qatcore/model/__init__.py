"""The integer model: int8 codes in, int8 codes out, TFLite's arithmetic.

``sequential`` holds :class:`QuantizedSequential`, a chain of fully connected layers with
fused ReLU / ReLU6.  ``graph`` holds :class:`QuantizedModel`, the integer graph of
``docs/integer-graph.md`` (NHWC int8 tensors, one module per op family in ``ops``).  The
exporters (:mod:`qatcore.export`) take a model as an argument; the models' ``to_tflite`` /
``to_c`` / ``to_onnx`` delegate to them.
"""

from .sequential import (ACTIVATIONS, MAX_FILE_BYTES, NUMERICS, ROUNDINGS, QuantizedSequential,
                         activation_range, quantize_codes)
from .graph import QuantizedModel, TensorSpec
from .ops import (Add, AveragePool2D, Concatenation, Conv2D, DepthwiseConv2D, FullyConnected,
                  HardSwish, Logistic, MaxPool2D, Mean, Mul, Op, Pad, Relu, Reshape, Softmax,
                  same_padding)

__all__ = ["QuantizedSequential", "NUMERICS", "ACTIVATIONS", "ROUNDINGS", "MAX_FILE_BYTES",
           "activation_range", "quantize_codes",
           "QuantizedModel", "TensorSpec", "Op", "FullyConnected", "Conv2D", "DepthwiseConv2D",
           "Add", "Mul", "AveragePool2D", "MaxPool2D", "Mean", "Reshape", "Concatenation",
           "Pad", "Softmax", "Logistic", "HardSwish", "Relu", "same_padding"]
