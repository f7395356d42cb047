"""Data movement: RESHAPE, CONCATENATION and PAD.  None of them changes a code: the
output keeps the input's (scale, zero_point), which the model checks (TFLM's int8
CONCATENATION requires it too; PAD fills with the zero point)."""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import numpy as np

from ._base import MAX_DIM, Op, check_int, check_ints, check_name, check_spec_qparams_equal, prod

__all__ = ["Reshape", "Concatenation", "Pad"]


class Reshape(Op):
    """Same codes, new sample shape: the output TensorSpec's (TFLite RESHAPE).

    Parameters
    ----------
    input, output : str
        Tensors with the same number of elements per sample and the same
        (scale, zero_point).

    Raises
    ------
    TypeError, ValueError
        A bad name; at binding, a different size or quantization.

    Examples
    --------
    >>> Reshape("x", "y").op_type
    'RESHAPE'
    """

    op_type = "RESHAPE"

    def __init__(self, input: str, output: str) -> None:
        self._set_io((check_name(input, "input"),), output)

    def _bind(self, ins: List[Any], out: Any) -> None:
        (spec,) = ins
        if prod(spec.shape) != prod(out.shape):
            raise ValueError(f"Reshape {self.output!r}: {tuple(spec.shape)} and "
                             f"{tuple(out.shape)} differ in size")
        check_spec_qparams_equal(spec, out, f"Reshape {self.output!r}")

    def _run(self, xs: List[np.ndarray], out: np.ndarray, rounding: int,
             n_threads: int) -> None:
        out.reshape(-1)[...] = xs[0].reshape(-1)


class Concatenation(Op):
    """Join tensors along one axis of the sample shape (TFLite CONCATENATION).

    Parameters
    ----------
    inputs : sequence of str
        At least one tensor; equal shapes except along `axis`, all with the output's
        (scale, zero_point).
    output : str
    axis : int
        Axis of the sample shape (negative: from the end).
    activation : None
        TFLite's int8 kernels take no fused activation; anything else is a ValueError.

    Raises
    ------
    TypeError, ValueError
        Bad arguments; at binding, shapes or quantization that do not match.

    Examples
    --------
    >>> Concatenation(["a", "b"], "c", axis=-1).axis
    -1
    """

    op_type = "CONCATENATION"
    _PARAMS = ("axis", "activation")
    _MULTI_INPUT = True

    def __init__(self, inputs: Sequence[str], output: str, axis: int = -1,
                 activation: Optional[str] = None) -> None:
        if isinstance(inputs, (str, bytes)) or not hasattr(inputs, "__len__") or not len(inputs):
            raise TypeError(f"inputs must be a non-empty sequence of tensor names, got {inputs!r}")
        if len(inputs) > 1024:
            raise ValueError("inputs: at most 1024 tensors")
        self._set_io(tuple(check_name(v, f"inputs[{i}]") for i, v in enumerate(inputs)), output)
        self.axis = check_int(axis, "axis", -16, 15)
        if activation is not None:
            raise ValueError(f"activation must be None for CONCATENATION (TFLite's int8 "
                             f"kernels refuse a fused activation), got {activation!r}")
        self.activation = None

    def _bind(self, ins: List[Any], out: Any) -> None:
        name = f"Concatenation {self.output!r}"
        rank = len(out.shape)
        if not -rank <= self.axis < rank:
            raise ValueError(f"{name}: axis {self.axis} outside the output's {rank} axes")
        axis = self.axis % rank
        total = 0
        for spec in ins:
            if len(spec.shape) != rank or any(d != out.shape[i] for i, d in enumerate(spec.shape)
                                              if i != axis):
                raise ValueError(f"{name}: input {spec.name!r} shape {tuple(spec.shape)} does "
                                 f"not match the output {tuple(out.shape)} off axis {axis}")
            check_spec_qparams_equal(out, spec, name)
            total += spec.shape[axis]
        if total != out.shape[axis]:
            raise ValueError(f"{name}: the inputs add up to {total} along axis {axis}, the "
                             f"output has {out.shape[axis]}")
        self._axis = axis + 1

    def _run(self, xs: List[np.ndarray], out: np.ndarray, rounding: int,
             n_threads: int) -> None:
        np.concatenate(xs, axis=self._axis, out=out)


class Pad(Op):
    """Pad with the zero point (TFLite PAD on int8).

    Parameters
    ----------
    input, output : str
        Same (scale, zero_point).
    paddings : sequence of (before, after)
        One pair per axis of the sample shape, non-negative.

    Raises
    ------
    TypeError, ValueError
        Bad arguments; at binding, a wrong output shape or quantization.

    Examples
    --------
    >>> Pad("x", "y", [(1, 1), (1, 1), (0, 0)]).paddings
    ((1, 1), (1, 1), (0, 0))
    """

    op_type = "PAD"
    _PARAMS = ("paddings",)

    def __init__(self, input: str, output: str, paddings: Sequence[Sequence[int]]) -> None:
        self._set_io((check_name(input, "input"),), output)
        if isinstance(paddings, (str, bytes)) or not hasattr(paddings, "__len__"):
            raise TypeError("paddings must be a sequence of (before, after) pairs")
        if not 1 <= len(paddings) <= 16:
            raise ValueError(f"paddings must have 1 to 16 pairs, got {len(paddings)}")
        self.paddings = tuple(check_ints(p, 2, f"paddings[{i}]", 0, MAX_DIM)
                              for i, p in enumerate(paddings))

    def _bind(self, ins: List[Any], out: Any) -> None:
        (spec,) = ins
        name = f"Pad {self.output!r}"
        if len(self.paddings) != len(spec.shape):
            raise ValueError(f"{name}: paddings has {len(self.paddings)} pairs for "
                             f"{len(spec.shape)} axes")
        shape = tuple(d + a + b for d, (a, b) in zip(spec.shape, self.paddings))
        if tuple(out.shape) != shape:
            raise ValueError(f"{name}: output shape must be {shape}, got {tuple(out.shape)}")
        check_spec_qparams_equal(spec, out, name)
        self._zp = int(out.zero_point)
        self._inner = (slice(None),) + tuple(slice(a, a + d) for d, (a, _) in
                                             zip(spec.shape, self.paddings))

    def _run(self, xs: List[np.ndarray], out: np.ndarray, rounding: int,
             n_threads: int) -> None:
        out.fill(self._zp)
        out[self._inner] = xs[0]
