"""Whole-ONNX-model calibration in onnxruntime (``pip install "qatcore[onnx]"``).

:func:`calibrate_model` runs a model over calibration inputs, feeds every activation to a
qatcore observer and writes the ranges (and, with ``qdq_path``, the int8 QDQ model:
qatcore's own writer and placement, :mod:`qatcore.onnx.qdq` and
:mod:`qatcore.onnx.placement`, or onnxruntime's ``quantize_static``).
onnx and onnxruntime are imported when a function needs them, not at import time.
"""

from .calibrate import (METHODS, CalibrationResult, CalibrationWarning, calibrate_model,
                        iter_inputs, preprocess_model, tensors_to_calibrate, write_qdq,
                        write_qdq_onnxruntime)

__all__ = ["calibrate_model", "CalibrationResult", "CalibrationWarning", "METHODS",
           "iter_inputs", "preprocess_model", "tensors_to_calibrate", "write_qdq",
           "write_qdq_onnxruntime"]
