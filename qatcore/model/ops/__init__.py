"""The ops of the integer graph, one module per family; each computes what TensorFlow
Lite's int8 reference kernel of the same name computes (see each module)."""

from ._base import ACTIVATIONS, Op
from .add import Add, Mul
from .conv import Conv2D, DepthwiseConv2D, same_padding
from .fully_connected import FullyConnected
from .hard_swish import HardSwish
from .mean import Mean
from .pool import AveragePool2D, MaxPool2D
from .relu import Relu
from .reshape import Concatenation, Pad, Reshape
from .softmax import Logistic, Softmax

__all__ = ["Op", "ACTIVATIONS", "FullyConnected", "Conv2D", "DepthwiseConv2D", "Add", "Mul",
           "AveragePool2D", "MaxPool2D", "Mean", "Reshape", "Concatenation", "Pad",
           "Softmax", "Logistic", "HardSwish", "Relu", "same_padding", "OP_CLASSES"]

#: Op classes by name (what QuantizedModel.save writes and load accepts).
OP_CLASSES = {cls.__name__: cls for cls in (
    FullyConnected, Conv2D, DepthwiseConv2D, Add, Mul, AveragePool2D, MaxPool2D, Mean,
    Reshape, Concatenation, Pad, Softmax, Logistic, HardSwish, Relu)}
