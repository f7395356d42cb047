"""Exports of the integer models (:class:`qatcore.QuantizedSequential`,
:class:`qatcore.QuantizedModel`) for deployment, and the ``.tflite`` reader.

* :mod:`qatcore.export.tflite` -- a ``.tflite`` flatbuffer of a QuantizedSequential (int8
  FULLY_CONNECTED ops) that LiteRT and TensorFlow Lite Micro run bit for bit as
  ``forward_int8``; also the flatbuffer builder the graph writer shares;
* :mod:`qatcore.export.tflite_graph` -- the ``.tflite`` of a QuantizedModel (CONV_2D,
  DEPTHWISE_CONV_2D, FULLY_CONNECTED, ADD, MUL, pools, MEAN, RESHAPE, CONCATENATION, PAD,
  SOFTMAX, LOGISTIC, HARD_SWISH, RELU / RELU6; optional float I/O);
* :mod:`qatcore.export.tflite_read` -- ``read_tflite``: an int8 ``.tflite`` (TensorFlow's
  converter or qatcore) to a QuantizedModel, the file treated as hostile;
* :mod:`qatcore.export.c` -- C99 source for microcontrollers;
* :mod:`qatcore.export.onnx` -- an ONNX QDQ model for onnxruntime.

Nothing is imported here: each exporter imports its third-party package (flatbuffers and
tflite-micro's schema, onnx) when it runs, with a message naming the extra to install
(``pip install "qatcore[export]"``).  The model's ``to_tflite`` / ``to_c`` / ``to_onnx``
methods call them.
"""
