"""qatcore: quantization-aware training, calibration and int8 inference on CPU.

The QAT module of the Rust crate aprender-core (``nn::quantization``) rebuilt on Cython
kernels: the same structs under the same names, the same numbers bit for bit.
"""

from ._backend import get_num_threads, set_num_threads
from .config import FakeQuantConfig, ObserverMethod
from .dynamic import DynamicQuantizer
from .fake_quantize import (FakeQuantize, Module, fake_quantize_array, lsq_backward_array,
                            ste_backward_array)
from .histogram import ChannelObserver, HistogramObserver
from .linear import QuantizedLinear
from .mixed_precision import MixedPrecision
from .observer import QuantObserver

__version__ = "0.1.0"

__all__ = [
    "ChannelObserver",
    "DynamicQuantizer",
    "FakeQuantConfig",
    "FakeQuantize",
    "HistogramObserver",
    "MixedPrecision",
    "Module",
    "ObserverMethod",
    "QuantObserver",
    "QuantizedLinear",
    "fake_quantize_array",
    "lsq_backward_array",
    "ste_backward_array",
    "get_num_threads",
    "set_num_threads",
    "__version__",
]
