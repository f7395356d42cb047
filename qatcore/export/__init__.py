"""Exports of a :class:`qatcore.QuantizedSequential` for deployment.

* :mod:`qatcore.export.tflite` -- a ``.tflite`` flatbuffer (int8 FULLY_CONNECTED ops) that
  LiteRT and TensorFlow Lite Micro run bit for bit as ``forward_int8``;
* :mod:`qatcore.export.c` -- C99 source for microcontrollers;
* :mod:`qatcore.export.onnx` -- an ONNX QDQ model for onnxruntime.

Nothing is imported here: each exporter imports its third-party package (flatbuffers and
tflite-micro's schema, onnx) when it runs, with a message naming the extra to install
(``pip install "qatcore[export]"``).  The model's ``to_tflite`` / ``to_c`` / ``to_onnx``
methods call them.
"""
