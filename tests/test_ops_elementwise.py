"""ADD, MUL, AVERAGE/MAX_POOL_2D, MEAN, SOFTMAX, LOGISTIC, HARD_SWISH, RELU/RELU6,
RESHAPE, CONCATENATION and PAD of the integer graph against the oracles of
tests/reference.py, bit for bit (zero points at both ends, scales 1e-6 .. 1e2, every
rounding; the C pooling kernel on every CPU target and 1 and 2 threads)."""

from __future__ import annotations

import functools
import zlib

import numpy as np
import pytest

from qatcore.model import (Add, AveragePool2D, Concatenation, HardSwish, Logistic, MaxPool2D,
                           Mean, Mul, Pad, Relu, Reshape, Softmax, TensorSpec)

import reference as ref
from graph_helpers import ROUNDINGS, rand_i8, single_op_model


def _rng(name):
    return np.random.default_rng(zlib.crc32(name.encode()))


# ---------------------------------------------------------------- ADD / MUL
# (qa, qb, qout, activation)
BINARY_CASES = {
    "similar": ((0.05, 3), (0.04, -2), (0.08, 1), None),
    "zp-ends": ((0.1, -128), (0.1, 127), (0.15, -128), "relu"),
    "tiny": ((1e-6, 0), (3e-6, 5), (4e-6, -3), None),
    "huge-relu6": ((1e2, 10), (30.0, -10), (120.0, 0), "relu6"),
    "far-scales": ((1e-3, 0), (1.0, 0), (1.2, 20), None),
}


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("name", list(BINARY_CASES))
@pytest.mark.parametrize("kind", ["add", "mul"])
def test_add_mul_match_reference(kind, name, rounding):
    qa, qb, qout, act = BINARY_CASES[name]
    if kind == "mul":
        qout = (qa[0] * qb[0] * 60, qout[1])
    rng = _rng(name + kind)
    shape = (3, 4, 5, 7)
    a, b = rand_i8(rng, shape), rand_i8(rng, shape)
    op = (Add if kind == "add" else Mul)(("a", "b"), "c", activation=act)
    model = single_op_model(op, [TensorSpec("a", shape[1:], *qa), TensorSpec("b", shape[1:], *qb)],
                            TensorSpec("c", shape[1:], *qout))
    oracle = ref.add_int8_ref if kind == "add" else ref.mul_int8_ref
    np.testing.assert_array_equal(model.forward_int8([a, b], rounding=rounding),
                                  oracle(a, b, qa, qb, qout, act, rounding))


def test_add_refuses_a_too_small_output_scale():
    specs = [TensorSpec("a", (4,), 1.0, 0), TensorSpec("b", (4,), 1.0, 0)]
    with pytest.raises(ValueError, match="output scale"):
        single_op_model(Add(("a", "b"), "c"), specs, TensorSpec("c", (4,), 1e-7, 0))


# ---------------------------------------------------------------- pooling
# (H, W, C, pool, stride, padding, zp, activation)
POOL_CASES = {
    "2x2-s2": (8, 8, 19, (2, 2), (2, 2), (0, 0, 0, 0), -3, None),
    "3x3-s2-same": (9, 9, 16, (3, 3), (2, 2), (1, 1, 1, 1), -128, None),
    "3x3-s1-pad": (5, 6, 33, (3, 3), (1, 1), (1, 1, 2, 2), 127, "relu"),
    "global-7x7": (7, 7, 8, (7, 7), (1, 1), (0, 0, 0, 0), 0, "relu6"),
    "5x2-asym": (10, 5, 3, (5, 2), (3, 2), (2, 1, 0, 1), 40, None),
}


def _pool_case(name):
    h, w, c, pool, stride, pad, zp, act = POOL_CASES[name]
    x = rand_i8(_rng(name), (3, h, w, c))
    return x, pool, stride, pad, zp, act


@pytest.mark.parametrize("n_threads", [1, 2], ids=["1thread", "2threads"])
@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("name", list(POOL_CASES))
def test_pool_matches_reference(target, name, kind, n_threads):
    x, pool, stride, pad, zp, act = _pool_case(name)
    scale = 0.05
    lo, hi = ref.activation_range_ref(act, scale, zp)
    expected = ref.pool2d_int8_ref(x, pool, stride, pad, kind, lo, hi)
    cls = AveragePool2D if kind == "avg" else MaxPool2D
    model = single_op_model(cls("x", "y", pool, stride, pad, act),
                            TensorSpec("x", x.shape[1:], scale, zp),
                            TensorSpec("y", expected.shape[1:], scale, zp), n_threads)
    np.testing.assert_array_equal(model.forward_int8(x), expected)


def test_average_pool_rounds_half_away_from_raw_zero():
    # sums -3 and 3 over 2 taps: -1.5 -> -2, 1.5 -> 2 (not around the zero point)
    x = np.array([[[[-2], [-1]], [[2], [1]]]], np.int8)         # (1, 2, 2, 1)
    model = single_op_model(AveragePool2D("x", "y", (1, 2), (1, 2)),
                            TensorSpec("x", (2, 2, 1), 0.1, 5), TensorSpec("y", (2, 1, 1), 0.1, 5))
    np.testing.assert_array_equal(model.forward_int8(x).ravel(), [-2, 2])


def test_pool_refuses_padding_as_large_as_the_window():
    with pytest.raises(ValueError, match="padding"):
        AveragePool2D("x", "y", (2, 2), (1, 1), (2, 0, 0, 0))


# ---------------------------------------------------------------- MEAN
# (shape, axes, keepdims, q_in, q_out)
MEAN_CASES = {
    "spatial": ((6, 7, 9), (0, 1), False, (0.05, -3), (0.02, 4)),
    "spatial-keep": ((5, 5, 16), (0, 1), True, (0.1, -128), (0.1, -128)),
    "last-axis": ((4, 33), (-1,), False, (1e-6, 127), (3e-6, 0)),
    "all-axes": ((3, 4, 5), (0, 1, 2), False, (1e2, 10), (0.5, -20)),
    "big-n": ((64, 64, 2), (0, 1), False, (0.01, 7), (0.001, -1)),
}


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("name", list(MEAN_CASES))
def test_mean_matches_reference(name, rounding):
    shape, axes, keep, q_in, q_out = MEAN_CASES[name]
    x = rand_i8(_rng(name), (2,) + shape)
    batch_axes = tuple((a % len(shape)) + 1 for a in axes)
    expected = ref.mean_int8_ref(x, batch_axes, q_in, q_out, keep, rounding)
    expected = expected.reshape(2, -1) if expected.ndim == 1 else expected   # sample (1,)
    model = single_op_model(Mean("x", "y", axes, keep), TensorSpec("x", shape, *q_in),
                            TensorSpec("y", expected.shape[1:], *q_out))
    np.testing.assert_array_equal(model.forward_int8(x, rounding=rounding), expected)


# ---------------------------------------------------------------- SOFTMAX / LOGISTIC
# (shape, s_in, zp_in, beta)
SOFTMAX_CASES = {
    "logits-10": ((10,), 0.1, 3, 1.0),
    "rows-1000": ((3, 1000), 0.05, -128, 1.0),
    "tiny-scale": ((17,), 1e-6 * 2**5, 0, 1.0),
    "huge-scale": ((33,), 1e2, 127, 1.0),
    "beta-half": ((2, 21), 0.25, -10, 0.5),
}


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("name", list(SOFTMAX_CASES))
def test_softmax_matches_reference(name, rounding):
    shape, s_in, zp, beta = SOFTMAX_CASES[name]
    x = rand_i8(_rng(name), (4,) + shape)
    model = single_op_model(Softmax("x", "y", beta), TensorSpec("x", shape, s_in, zp),
                            TensorSpec("y", shape, 1 / 256, -128))
    np.testing.assert_array_equal(model.forward_int8(x, rounding=rounding),
                                  ref.softmax_int8_ref(x, s_in, beta, rounding))


def test_softmax_of_equal_logits_is_uniform():
    model = single_op_model(Softmax("x", "y"), TensorSpec("x", (4,), 0.1, 0),
                            TensorSpec("y", (4,), 1 / 256, -128))
    y = model.forward_int8(np.zeros((1, 4), np.int8))
    np.testing.assert_array_equal(y, np.full((1, 4), 64 - 128, np.int8))


@pytest.mark.parametrize("out", [(1 / 255, -128), (1 / 256, 0)], ids=["scale", "zero-point"])
def test_softmax_and_logistic_enforce_the_output_quantization(out):
    for op in (Softmax("x", "y"), Logistic("x", "y")):
        with pytest.raises(ValueError, match="1/256"):
            single_op_model(op, TensorSpec("x", (4,), 0.1, 0), TensorSpec("y", (4,), *out))


LOGISTIC_CASES = {"typical": (0.05, 3), "coarse": (0.5, -128), "fine": (1e-3, 127),
                  "tiny": (1e-6, 0), "saturating": (2.0, 0)}


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("name", list(LOGISTIC_CASES))
def test_logistic_matches_reference(name, rounding):
    q_in = LOGISTIC_CASES[name]
    x = np.arange(-128, 128, dtype=np.int8).reshape(4, 64)
    model = single_op_model(Logistic("x", "y"), TensorSpec("x", (64,), *q_in),
                            TensorSpec("y", (64,), 1 / 256, -128))
    np.testing.assert_array_equal(model.forward_int8(x, rounding=rounding),
                                  ref.logistic_int8_ref(x, q_in, rounding))


# ---------------------------------------------------------------- HARD_SWISH / RELU
HARD_SWISH_CASES = {"typical": ((0.05, 3), (0.03, -100)), "zp-ends": ((0.1, -128), (0.06, 127)),
                    "same-scale": ((0.02, 0), (0.02, 0)), "coarse": ((0.2, 10), (0.15, -50))}


@pytest.mark.parametrize("name", list(HARD_SWISH_CASES))
def test_hard_swish_matches_reference(name):
    q_in, q_out = HARD_SWISH_CASES[name]
    x = np.arange(-128, 128, dtype=np.int8).reshape(2, 128)
    model = single_op_model(HardSwish("x", "y"), TensorSpec("x", (128,), *q_in),
                            TensorSpec("y", (128,), *q_out))
    np.testing.assert_array_equal(model.forward_int8(x), ref.hard_swish_int8_ref(x, q_in, q_out))


RELU_CASES = {"same": ((0.05, -10), (0.05, -10)), "rescale": ((0.05, 3), (0.02, -128)),
              "tiny": ((1e-6, 127), (2e-6, 0)), "huge": ((1e2, -128), (30.0, 5))}


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("six", [False, True], ids=["relu", "relu6"])
@pytest.mark.parametrize("name", list(RELU_CASES))
def test_relu_matches_reference(name, six, rounding):
    q_in, q_out = RELU_CASES[name]
    x = np.arange(-128, 128, dtype=np.int8).reshape(2, 128)
    model = single_op_model(Relu("x", "y", 6.0 if six else None), TensorSpec("x", (128,), *q_in),
                            TensorSpec("y", (128,), *q_out))
    np.testing.assert_array_equal(model.forward_int8(x, rounding=rounding),
                                  ref.relu_int8_ref(x, q_in, q_out, six, rounding))


# ---------------------------------------------------------------- data movement
def test_reshape_concatenation_pad():
    rng = _rng("move")
    a, b = rand_i8(rng, (2, 3, 4, 5)), rand_i8(rng, (2, 3, 4, 2))
    q = (0.1, -7)
    model = single_op_model(Concatenation(["a", "b"], "c", axis=-1),
                            [TensorSpec("a", (3, 4, 5), *q), TensorSpec("b", (3, 4, 2), *q)],
                            TensorSpec("c", (3, 4, 7), *q))
    np.testing.assert_array_equal(model.forward_int8([a, b]), np.concatenate([a, b], axis=-1))
    model = single_op_model(Pad("a", "p", [(1, 2), (0, 1), (3, 0)]), TensorSpec("a", (3, 4, 5), *q),
                            TensorSpec("p", (6, 5, 8), *q))
    expected = np.pad(a, [(0, 0), (1, 2), (0, 1), (3, 0)], constant_values=-7)
    np.testing.assert_array_equal(model.forward_int8(a), expected)
    model = single_op_model(Reshape("a", "r"), TensorSpec("a", (3, 4, 5), *q),
                            TensorSpec("r", (60,), *q))
    np.testing.assert_array_equal(model.forward_int8(a), a.reshape(2, 60))


@pytest.mark.parametrize("op, out", [
    (Reshape("a", "r"), TensorSpec("r", (60,), 0.2, -7)),
    (Pad("a", "r", [(0, 0), (0, 0), (1, 1)]), TensorSpec("r", (3, 4, 7), 0.1, 0)),
    (MaxPool2D("a", "r", (1, 1), (1, 1)), TensorSpec("r", (3, 4, 5), 0.1, 1)),
], ids=["reshape", "pad", "maxpool"])
def test_ops_that_keep_quantization_refuse_another(op, out):
    with pytest.raises(ValueError, match="keep the"):
        single_op_model(op, TensorSpec("a", (3, 4, 5), 0.1, -7), out)


@functools.lru_cache(maxsize=None)
def _pool_parallel_case(kind):
    x = rand_i8(_rng("parallel"), (4, 24, 24, 16))
    return x, ref.pool2d_int8_ref(x, (3, 3), (1, 1), (1, 1, 1, 1), kind)


@pytest.mark.parametrize("n_threads", [1, 2], ids=["1thread", "2threads"])
@pytest.mark.parametrize("kind", ["avg", "max"])
def test_pool_large_enough_for_the_parallel_path(target, kind, n_threads):
    x, expected = _pool_parallel_case(kind)
    cls = AveragePool2D if kind == "avg" else MaxPool2D
    model = single_op_model(cls("x", "y", (3, 3), (1, 1), (1, 1, 1, 1)),
                            TensorSpec("x", (24, 24, 16), 0.05, 0),
                            TensorSpec("y", (24, 24, 16), 0.05, 0), n_threads)
    np.testing.assert_array_equal(model.forward_int8(x), expected)


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("name", list(SOFTMAX_CASES))
def test_softmax_c_loop_equals_the_numpy_form(target, name, rounding):
    shape, s_in, zp, beta = SOFTMAX_CASES[name]
    x = rand_i8(_rng(name + "np"), (3,) + shape)
    model = single_op_model(Softmax("x", "y", beta), TensorSpec("x", shape, s_in, zp),
                            TensorSpec("y", shape, 1 / 256, -128))
    expected = np.empty_like(x)
    model.ops[0]._run_numpy([x], expected, ["gemmlowp", "single", "neon"].index(rounding))
    np.testing.assert_array_equal(model.forward_int8(x, rounding=rounding), expected)
