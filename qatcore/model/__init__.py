"""The integer model: int8 codes in, int8 codes out, TFLite's arithmetic.

``sequential`` holds :class:`QuantizedSequential`, a chain of fully connected layers with
fused ReLU / ReLU6.  The exporters (:mod:`qatcore.export`) take a model as an argument;
the model's ``to_tflite`` / ``to_c`` / ``to_onnx`` delegate to them.
"""

from .sequential import (ACTIVATIONS, MAX_FILE_BYTES, NUMERICS, ROUNDINGS, QuantizedSequential,
                         activation_range, quantize_codes)

__all__ = ["QuantizedSequential", "NUMERICS", "ACTIVATIONS", "ROUNDINGS", "MAX_FILE_BYTES",
           "activation_range", "quantize_codes"]
