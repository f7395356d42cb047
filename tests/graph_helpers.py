"""Shared builders for the integer-graph tests (tests/test_model_graph.py,
tests/test_ops_*.py): single-op models and random int8 data."""

from __future__ import annotations

import numpy as np

from qatcore.model import QuantizedModel, TensorSpec

ROUNDINGS = ("gemmlowp", "single", "neon")


def single_op_model(op, in_specs, out_spec, n_threads=1):
    """A model of one op whose inputs are the graph inputs."""
    if isinstance(in_specs, TensorSpec):
        in_specs = [in_specs]
    model = QuantizedModel(list(in_specs) + [out_spec], [op], [s.name for s in in_specs],
                           [out_spec.name])
    model.n_threads = n_threads
    return model


def rand_i8(rng, shape, lo=-128, hi=127):
    return rng.integers(lo, hi + 1, size=shape, dtype=np.int64).astype(np.int8)


def rand_weights(rng, shape, extreme=False):
    if extreme:
        return rng.choice(np.array([-127, 127], np.int8), size=shape)
    return rng.integers(-127, 128, size=shape).astype(np.int8)
