"""Make the converter-made .tflite fixtures of tests/test_tflite_read.py (run once, by hand).

TensorFlow is never needed by the tests or CI: they read the committed files.  To remake
them, in a throw-away virtual environment outside the repository::

    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu==2.21.0 numpy
    /tmp/tfvenv/bin/python tests/data/make_tflite_fixtures.py

Three tiny Keras CNNs (seeded weights, random batch-norm statistics so the folding is not
trivial), full-integer int8 quantization with a seeded representative dataset:

* ``keras_cnn.tflite`` -- conv + BN + ReLU, depthwise + BN + ReLU6, 1x1 conv, add (a
  residual), average pool, flatten (RESHAPE with a shape tensor), dense, softmax; float32
  input and output (QUANTIZE / DEQUANTIZE at the ends);
* ``keras_dscnn.tflite`` -- DS-CNN-like: strided conv, two depthwise-separable blocks,
  global average pooling (MEAN), dense, softmax; int8 input and output;
* ``keras_resnet.tflite`` -- VALID conv, max pool, a residual block with a 1x1 projection,
  ReLU6, global average pooling, two dense layers; int8 input, float32 output;
* ``keras_branches.tflite`` -- zero padding (PAD) before a VALID conv, two branches
  concatenated, max pool, an element-wise product, global average pooling, dense with a
  sigmoid (LOGISTIC); int8 input and output.
"""

import os

import numpy as np
import tensorflow as tf

HERE = os.path.dirname(os.path.abspath(__file__))
L = tf.keras.layers


def _randomize_bn(model, rng):
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            n = gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n).astype(np.float32),
                               rng.normal(0, 0.2, n).astype(np.float32),
                               rng.normal(0, 0.2, n).astype(np.float32),
                               rng.uniform(0.5, 2.0, n).astype(np.float32)])


def keras_cnn():
    x = inp = L.Input((16, 16, 3))
    a = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, padding="same", use_bias=False)(x)))
    b = L.ReLU(6.0)(L.BatchNormalization()(L.DepthwiseConv2D(3, padding="same",
                                                              use_bias=False)(a)))
    c = L.Conv2D(8, 1)(b)
    d = L.Add()([a, c])
    e = L.AveragePooling2D(2)(d)
    f = L.Flatten()(e)
    out = L.Softmax()(L.Dense(10)(f))
    return tf.keras.Model(inp, out), (16, 16, 3), tf.float32, tf.float32


def keras_dscnn():
    x = inp = L.Input((25, 10, 1))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, (5, 3), strides=2, padding="same",
                                                 use_bias=False)(x)))
    for _ in range(2):
        x = L.ReLU()(L.BatchNormalization()(L.DepthwiseConv2D(3, padding="same",
                                                               use_bias=False)(x)))
        x = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 1, use_bias=False)(x)))
    x = L.GlobalAveragePooling2D()(x)
    out = L.Softmax()(L.Dense(12)(x))
    return tf.keras.Model(inp, out), (25, 10, 1), tf.int8, tf.int8


def keras_resnet():
    x = inp = L.Input((20, 20, 2))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(12, 3, padding="valid")(x)))
    x = L.MaxPooling2D(2)(x)
    y = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(16, 3, padding="same")(x)))
    y = L.BatchNormalization()(L.Conv2D(16, 3, strides=2, padding="same")(y))
    s = L.Conv2D(16, 1, strides=2)(x)
    z = L.ReLU()(L.Add()([y, s]))
    z = L.GlobalAveragePooling2D()(z)
    z = L.Dense(8, activation="relu")(z)
    out = L.Dense(4)(z)
    return tf.keras.Model(inp, out), (20, 20, 2), tf.int8, tf.float32


def keras_branches():
    x = inp = L.Input((12, 12, 3))
    p = L.ZeroPadding2D(((1, 2), (2, 1)))(x)
    a = L.ReLU()(L.BatchNormalization()(L.Conv2D(6, 3, padding="valid")(p)))
    b = L.Conv2D(6, 1, padding="same")(a)
    c = L.Conv2D(4, 3, padding="same", activation="relu")(a)
    cat = L.Concatenate()([b, c])
    m = L.MaxPooling2D(2)(cat)
    g = L.Multiply()([m, L.Conv2D(10, 1)(m)])
    z = L.GlobalAveragePooling2D()(g)
    out = L.Dense(3, activation="sigmoid")(z)
    return tf.keras.Model(inp, out), (12, 12, 3), tf.int8, tf.int8


def convert(build, name, seed):
    tf.keras.utils.set_random_seed(seed)
    model, shape, in_type, out_type = build()
    rng = np.random.default_rng(seed)
    _randomize_bn(model, rng)

    def representative():
        r = np.random.default_rng(seed + 1000)
        for _ in range(64):
            yield [r.standard_normal((1, *shape)).astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = in_type
    conv.inference_output_type = out_type
    data = conv.convert()
    path = os.path.join(HERE, name)
    with open(path, "wb") as f:
        f.write(data)
    print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    convert(keras_cnn, "keras_cnn.tflite", 1)
    convert(keras_dscnn, "keras_dscnn.tflite", 2)
    convert(keras_resnet, "keras_resnet.tflite", 3)
    convert(keras_branches, "keras_branches.tflite", 4)
