"""CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED of the integer graph against the
oracles of tests/reference.py, bit for bit: strides, dilations, paddings, groups, depth
multipliers, channel counts off the SIMD widths, zero points at both ends, scales from
1e-6 to 1e2, saturating outputs, every CPU target, 1 and 2 threads, three roundings."""

from __future__ import annotations

import functools
import zlib

import numpy as np
import pytest

from qatcore.model import Conv2D, DepthwiseConv2D, FullyConnected, TensorSpec, same_padding

import reference as ref
from graph_helpers import ROUNDINGS, rand_i8, rand_weights, single_op_model

# (H, W, C, O, K, stride, dilation, padding, groups, activation, s_in, s_w, zp_in, zp_out, out_gain)
CONV_CASES = {
    "3x3-same": (8, 8, 5, 7, (3, 3), (1, 1), (1, 1), "same", 1, None, 0.02, 0.01, -3, 4, 1.0),
    "1x1-direct": (5, 6, 19, 33, (1, 1), (1, 1), (1, 1), (0, 0, 0, 0), 1, "relu", 0.5, 0.003, 10, -7, 1.0),
    "stride2-valid": (9, 7, 3, 17, (3, 3), (2, 2), (1, 1), (0, 0, 0, 0), 1, "relu6", 0.05, 0.02, 0, -128, 1.0),
    "dilation2": (9, 9, 4, 6, (3, 3), (1, 1), (2, 2), (2, 2, 2, 2), 1, None, 0.1, 0.05, -128, 127, 1.0),
    "asym-pad-5x3": (7, 6, 6, 9, (5, 3), (2, 1), (1, 1), (2, 1, 0, 2), 1, None, 1e-6, 1e-6, 127, 0, 1.0),
    "groups3": (6, 6, 9, 12, (3, 3), (1, 2), (1, 1), (1, 1, 1, 1), 3, "relu", 20.0, 5.0, -50, 30, 1.0),
    "depthwise-as-groups": (5, 5, 4, 8, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 4, None, 1e2, 1e-2, 5, -5, 1.0),
    "saturating": (6, 6, 8, 40, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 1, None, 0.1, 0.1, -128, 0, 0.005),
    "big-k": (4, 4, 70, 3, (3, 3), (1, 1), (1, 1), (0, 0, 0, 0), 1, None, 0.01, 0.002, 1, 1, 1.0),
}


def _conv_setup(name):
    h, w, c, o, k, stride, dil, pad, groups, act, s_in, s_w, zp_in, zp_out, gain = CONV_CASES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    if pad == "same":
        pad = same_padding((h, w), k, stride, dil)
    weights = rand_weights(rng, (o, k[0], k[1], c // groups), extreme=(name == "saturating"))
    scales = (s_w * rng.uniform(0.5, 2.0, size=o)).astype(np.float32)
    bias = rng.integers(-5000, 5000, size=o).astype(np.int32)
    fan = k[0] * k[1] * c // groups
    s_out = float(s_in * s_w * np.sqrt(fan) * 100 * gain)
    x = rand_i8(rng, (3, h, w, c))
    return dict(x=x, weights=weights, scales=scales, bias=bias, stride=stride, dil=dil,
                pad=tuple(pad), act=act, s_in=s_in, s_out=s_out, zp_in=zp_in, zp_out=zp_out)


@functools.lru_cache(maxsize=None)
def _conv_expected(name, rounding):
    p = _conv_setup(name)
    return ref.conv2d_int8_ref(p["x"], p["weights"], p["bias"], p["zp_in"], p["scales"],
                               p["s_in"], p["s_out"], p["zp_out"], p["stride"], p["dil"],
                               p["pad"], p["act"], rounding)


def _conv_model(name, n_threads):
    p = _conv_setup(name)
    exp = _conv_expected(name, "gemmlowp")
    op = Conv2D("x", "y", p["weights"], p["scales"], p["bias"], stride=p["stride"],
                dilation=p["dil"], padding=p["pad"], activation=p["act"])
    model = single_op_model(op, TensorSpec("x", p["x"].shape[1:], p["s_in"], p["zp_in"]),
                            TensorSpec("y", exp.shape[1:], p["s_out"], p["zp_out"]), n_threads)
    return model, p["x"]


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("name", list(CONV_CASES))
def test_conv2d_matches_reference(name, rounding):
    model, x = _conv_model(name, 1)
    np.testing.assert_array_equal(model.forward_int8(x, rounding=rounding),
                                  _conv_expected(name, rounding))


@pytest.mark.parametrize("n_threads", [1, 2], ids=["1thread", "2threads"])
@pytest.mark.parametrize("name", ["3x3-same", "1x1-direct", "groups3", "big-k"])
def test_conv2d_every_target_and_thread_count(target, name, n_threads):
    model, x = _conv_model(name, n_threads)
    np.testing.assert_array_equal(model.forward_int8(x), _conv_expected(name, "gemmlowp"))
    # batch 1 (the GEMM gets the threads) gives the first sample's result
    np.testing.assert_array_equal(model.forward_int8(x[:1]), _conv_expected(name, "gemmlowp")[:1])


def test_conv2d_saturating_case_saturates():
    exp = _conv_expected("saturating", "gemmlowp")
    assert (exp == 127).any() and (exp == -128).any()


# (H, W, C, M, K, stride, dilation, padding, activation, s_in, s_w, zp_in, zp_out)
DW_CASES = {
    "3x3-same-m1": (8, 8, 19, 1, (3, 3), (1, 1), (1, 1), "same", None, 0.02, 0.01, -3, 4),
    "stride2-m1": (9, 8, 33, 1, (3, 3), (2, 2), (1, 1), "same", "relu6", 0.05, 0.05, -128, -128),
    "multiplier3": (6, 7, 5, 3, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), "relu", 1e-6, 1e-3, 127, 10),
    "dilation-5x5": (10, 10, 4, 2, (5, 5), (1, 1), (2, 2), (4, 4, 4, 4), None, 1e2, 1e-4, 0, 127),
    "valid-asym": (7, 5, 16, 1, (3, 2), (2, 1), (1, 1), (0, 1, 1, 0), None, 0.3, 0.02, 60, -60),
}


def _dw_setup(name):
    h, w, c, m, k, stride, dil, pad, act, s_in, s_w, zp_in, zp_out = DW_CASES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    if pad == "same":
        pad = same_padding((h, w), k, stride, dil)
    weights = rand_weights(rng, (1, k[0], k[1], c * m))
    scales = (s_w * rng.uniform(0.5, 2.0, size=c * m)).astype(np.float32)
    bias = rng.integers(-3000, 3000, size=c * m).astype(np.int32)
    s_out = float(s_in * s_w * k[0] * k[1] * 30)
    x = rand_i8(rng, (3, h, w, c))
    return dict(x=x, weights=weights, scales=scales, bias=bias, stride=stride, dil=dil,
                pad=tuple(pad), act=act, s_in=s_in, s_out=s_out, zp_in=zp_in, zp_out=zp_out)


@functools.lru_cache(maxsize=None)
def _dw_expected(name, rounding):
    p = _dw_setup(name)
    return ref.depthwise_conv2d_int8_ref(p["x"], p["weights"], p["bias"], p["zp_in"],
                                         p["scales"], p["s_in"], p["s_out"], p["zp_out"],
                                         p["stride"], p["dil"], p["pad"], p["act"], rounding)


def _dw_model(name, n_threads):
    p = _dw_setup(name)
    exp = _dw_expected(name, "gemmlowp")
    op = DepthwiseConv2D("x", "y", p["weights"], p["scales"], p["bias"], stride=p["stride"],
                         dilation=p["dil"], padding=p["pad"], activation=p["act"])
    model = single_op_model(op, TensorSpec("x", p["x"].shape[1:], p["s_in"], p["zp_in"]),
                            TensorSpec("y", exp.shape[1:], p["s_out"], p["zp_out"]), n_threads)
    return model, p["x"]


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("name", list(DW_CASES))
def test_depthwise_matches_reference(name, rounding):
    model, x = _dw_model(name, 1)
    np.testing.assert_array_equal(model.forward_int8(x, rounding=rounding),
                                  _dw_expected(name, rounding))


@pytest.mark.parametrize("n_threads", [1, 2], ids=["1thread", "2threads"])
@pytest.mark.parametrize("name", ["3x3-same-m1", "multiplier3"])
def test_depthwise_every_target_and_thread_count(target, name, n_threads):
    model, x = _dw_model(name, n_threads)
    np.testing.assert_array_equal(model.forward_int8(x), _dw_expected(name, "gemmlowp"))


# (in, out, per_channel, s_in, s_w, zp_in, zp_out, activation)
FC_CASES = {
    "per-tensor": (37, 11, False, 0.02, 0.01, -3, 4, None),
    "per-channel-relu": (64, 33, True, 1e-6, 1e-6, 127, -128, "relu"),
    "relu6-wide": (200, 5, True, 1e2, 1e-3, -128, 0, "relu6"),
}


@functools.lru_cache(maxsize=None)
def _fc_setup(name):
    n_in, n_out, per_channel, s_in, s_w, zp_in, zp_out, act = FC_CASES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    w = rand_weights(rng, (n_out, n_in))
    scales = (s_w * rng.uniform(0.5, 2, size=n_out if per_channel else 1)).astype(np.float32)
    bias = rng.integers(-2000, 2000, size=n_out).astype(np.int32)
    s_out = float(s_in * s_w * np.sqrt(n_in) * 100)
    x = rand_i8(rng, (5, n_in))
    return w, scales, bias, s_in, s_out, zp_in, zp_out, act, x


@pytest.mark.parametrize("n_threads", [1, 2], ids=["1thread", "2threads"])
@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("name", list(FC_CASES))
def test_fully_connected_matches_reference(target, name, rounding, n_threads):
    w, scales, bias, s_in, s_out, zp_in, zp_out, act, x = _fc_setup(name)
    model = single_op_model(FullyConnected("x", "y", w, scales, bias, act),
                            TensorSpec("x", (x.shape[1],), s_in, zp_in),
                            TensorSpec("y", (w.shape[0],), s_out, zp_out), n_threads)
    expected = ref.fully_connected_int8_ref(x, w, bias, zp_in, scales, s_in, s_out, zp_out,
                                            act, rounding)
    np.testing.assert_array_equal(model.forward_int8(x, rounding=rounding), expected)


def test_fully_connected_flattens_an_image_input():
    rng = np.random.default_rng(3)
    w = rand_weights(rng, (4, 2 * 3 * 5))
    model = single_op_model(FullyConnected("x", "y", w, [0.01]),
                            TensorSpec("x", (2, 3, 5), 0.1, 3), TensorSpec("y", (4,), 0.2, -1))
    x = rand_i8(rng, (2, 2, 3, 5))
    expected = ref.fully_connected_int8_ref(x.reshape(2, -1), w, None, 3, [0.01], 0.1, 0.2, -1)
    np.testing.assert_array_equal(model.forward_int8(x), expected)


@pytest.mark.parametrize("args, expected", [
    (((32, 32), (3, 3), (2, 2)), (0, 1, 0, 1)),
    (((5, 5), (3, 3)), (1, 1, 1, 1)),
    (((10, 7), (5, 3), (1, 1), (2, 2)), (4, 4, 2, 2)),
    (((1, 1), (1, 1)), (0, 0, 0, 0)),
], ids=["stride2", "3x3", "dilated", "1x1"])
def test_same_padding(args, expected):
    assert same_padding(*args) == expected


@functools.lru_cache(maxsize=None)
def _dw_parallel_case():
    rng = np.random.default_rng(99)
    x = rand_i8(rng, (4, 16, 16, 32))
    w = rand_weights(rng, (1, 3, 3, 32))
    scales = rng.uniform(0.005, 0.02, 32).astype(np.float32)
    bias = rng.integers(-900, 900, 32).astype(np.int32)
    expected = ref.depthwise_conv2d_int8_ref(x, w, bias, -5, scales, 0.05, 0.4, 3,
                                             padding=(1, 1, 1, 1))
    return x, w, scales, bias, expected


@pytest.mark.parametrize("n_threads", [1, 2], ids=["1thread", "2threads"])
def test_depthwise_large_enough_for_the_parallel_path(target, n_threads):
    x, w, scales, bias, expected = _dw_parallel_case()
    model = single_op_model(DepthwiseConv2D("x", "y", w, scales, bias, padding=(1, 1, 1, 1)),
                            TensorSpec("x", (16, 16, 32), 0.05, -5),
                            TensorSpec("y", (16, 16, 32), 0.4, 3), n_threads)
    np.testing.assert_array_equal(model.forward_int8(x), expected)
