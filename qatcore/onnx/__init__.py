"""Whole-ONNX-model calibration in onnxruntime (``pip install "qatcore[onnx]"``).

:func:`calibrate_model` runs a model over calibration inputs, feeds every activation to a
qatcore observer and writes the ranges (and, with ``qdq_path``, the int8 QDQ model).
onnx and onnxruntime are imported when a function needs them, not at import time.
"""

from .calibrate import METHODS, CalibrationResult, calibrate_model, iter_inputs, tensors_to_calibrate, write_qdq

__all__ = ["calibrate_model", "CalibrationResult", "METHODS", "iter_inputs",
           "tensors_to_calibrate", "write_qdq"]
