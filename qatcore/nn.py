"""A small trainable path in numpy: ``Linear``, ``ReLU``, softmax cross-entropy, ``SGD``, ``Adam``.

Only what a quantization-aware training loop needs, so that the whole loop (float
training, post-training quantization, QAT fine-tuning with :class:`FakeQuantize`)
runs with no other framework.

Conventions shared by every layer here and by :class:`qatcore.FakeQuantize`:

* ``forward(x)`` remembers what ``backward`` needs; ``backward(grad_out)`` returns the
  gradient with respect to the input and **overwrites** (does not accumulate) the
  gradient buffers of the layer's parameters.  One ``backward`` per ``forward``.
* ``parameters()`` returns the live parameter arrays (an optimizer updates them in
  place); ``grads()`` returns the live gradient arrays, same order, same shapes.
* Weights use the Rust layout ``(out_features, in_features)``, so a trained
  ``Linear.weight`` goes straight to :meth:`QuantizedLinear.from_float`.

Examples
--------
>>> import numpy as np
>>> from qatcore.nn import Linear, ReLU, Sequential, SoftmaxCrossEntropy, Adam
>>> model = Sequential([Linear(4, 8, seed=0), ReLU(), Linear(8, 3, seed=1)])
>>> opt = Adam(model.parameters(), model.grads(), lr=0.05)
>>> loss_fn = SoftmaxCrossEntropy()
>>> x = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
>>> y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
>>> first = loss_fn.forward(model(x), y)
>>> for _ in range(50):
...     loss = loss_fn.forward(model(x), y)
...     _ = model.backward(loss_fn.backward())
...     opt.step()
>>> bool(loss < first / 4)
True
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np

from ._checks import base_array, check_index, check_real
from ._typing import ArrayLike
from .config import FakeQuantConfig
from .fake_quantize import FakeQuantize, Module

_L = TypeVar("_L", bound="Layer")
_Seed = Union[None, int, np.random.SeedSequence, np.random.Generator]
_Quantizer = Union[FakeQuantize, FakeQuantConfig, None]

__all__ = [
    "Layer",
    "Linear",
    "ReLU",
    "Sequential",
    "ActivationFakeQuant",
    "QATLinear",
    "SoftmaxCrossEntropy",
    "Optimizer",
    "SGD",
    "Adam",
]

_FLOATS = (np.float32, np.float64)


def _real(x, name: str, dtype=None, *, private: bool = False) -> np.ndarray:
    """`x` as a base-class array of real numbers (complex, strings, objects and masked
    arrays refused), converted to `dtype` when given; with `private`, never the caller's
    own buffer (a layer that keeps it for backward must not see later writes to it)."""
    arr = base_array(x, name)
    if arr.dtype.kind not in "biuf":
        what = "complex" if arr.dtype.kind == "c" else str(arr.dtype)
        raise TypeError(f"{name} must hold real numbers, got dtype {what}")
    if dtype is not None and arr.dtype != dtype:
        return arr.astype(dtype)
    if private and isinstance(x, np.ndarray) and np.may_share_memory(arr, x):
        return arr.copy()
    return arr


def _check_seed(seed):
    if seed is None or isinstance(seed, (np.random.Generator, np.random.SeedSequence,
                                         np.random.BitGenerator)):
        return seed
    seed = check_index(seed, "seed")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return seed


def _check_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.type not in _FLOATS:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


class Layer(Module):
    """Base of the trainable layers: ``forward``, ``backward``, ``parameters``, ``grads``
    on top of qatcore's :class:`~qatcore.fake_quantize.Module` (``__call__``,
    ``train()``/``eval()``).

    Subclasses implement ``forward`` and ``backward``; layers without parameters keep
    the empty defaults.  ``train(mode)`` reaches the quantizers a layer holds (in eval
    mode they record nothing for ``backward``).
    """

    def _children(self) -> list:
        return []

    def train(self: _L, mode: bool = True) -> _L:
        """Set training mode (``mode=False``: eval) on this layer and every quantizer and
        layer it holds; returns the layer."""
        self.training = bool(mode)
        for child in self._children():
            child.train(mode)
        return self

    def forward(self, x: Any) -> Any:  # pragma: no cover - abstract
        """The layer's output for input `x` (remembering what ``backward`` needs)."""
        raise NotImplementedError

    def backward(self, grad_out: Any) -> Any:  # pragma: no cover - abstract
        """The gradient w.r.t. the last ``forward``'s input, given the gradient w.r.t. its
        output; writes the parameters' gradients (:meth:`grads`)."""
        raise NotImplementedError

    def __call__(self, x: Any) -> Any:
        """Same as :meth:`forward`."""
        return self.forward(x)

    def parameters(self) -> List[np.ndarray]:
        """Live parameter arrays (updated in place by an optimizer)."""
        return []

    def grads(self) -> List[np.ndarray]:
        """Live gradient arrays, same order and shapes as :meth:`parameters`."""
        return []

    def zero_grad(self) -> None:
        """Set every gradient buffer to zero."""
        for g in self.grads():
            g[...] = 0


class Linear(Layer):
    """Fully connected layer ``y = x @ weight.T + bias`` with a numpy backward pass.

    Parameters
    ----------
    in_features, out_features : int
        Sizes, at least 1.
    bias : bool, default True
        Whether the layer has a bias.
    seed : int or numpy.random.Generator, optional
        Initialisation: weights and bias uniform in ±1/sqrt(in_features) (PyTorch's
        default for ``nn.Linear``).
    dtype : float32 (default) or float64
        Parameter and computation dtype (float64 is for gradient checks).
    weight, bias_value : array_like, optional
        Initial values instead of random ones (``weight`` of shape
        ``(out_features, in_features)``, ``bias_value`` of shape ``(out_features,)``).

    Attributes
    ----------
    weight : ndarray, shape (out_features, in_features)
        Row-major like the Rust ``QuantizedLinear``: ``weight[o, i]``.
    bias : ndarray, shape (out_features,) or None
    grad_weight, grad_bias : ndarray
        Written by :meth:`backward`.

    Examples
    --------
    >>> import numpy as np
    >>> lin = Linear(3, 2, weight=np.ones((2, 3)), bias_value=[0.5, -0.5])
    >>> lin.forward(np.array([[1.0, 2.0, 3.0]]))
    array([[6.5, 5.5]], dtype=float32)
    >>> lin.backward(np.array([[1.0, 0.0]], dtype=np.float32))
    array([[1., 1., 1.]], dtype=float32)
    >>> lin.grad_weight
    array([[1., 2., 3.],
           [0., 0., 0.]], dtype=float32)
    """

    weight: np.ndarray
    bias: Optional[np.ndarray]
    grad_weight: np.ndarray
    grad_bias: Any               # like bias: an array, or None when bias=False

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 seed: _Seed = None, dtype: Any = np.float32, weight: Optional[ArrayLike] = None,
                 bias_value: Optional[ArrayLike] = None) -> None:
        sizes: List[int] = []
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            n = check_index(v, name)
            if n < 1:
                raise ValueError(f"{name} must be at least 1, got {n}")
            sizes.append(n)
        if sizes[0] * sizes[1] > 1 << 32:
            raise ValueError(f"in_features * out_features = {sizes[0] * sizes[1]} is too large "
                             f"(at most 2^32 weights)")
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"bias must be a bool, got {type(bias).__name__}")
        self.in_features: int = sizes[0]
        self.out_features: int = sizes[1]
        self.dtype = _check_dtype(dtype)
        rng = np.random.default_rng(_check_seed(seed))
        bound = 1.0 / np.sqrt(self.in_features)
        shape = (self.out_features, self.in_features)
        if weight is None:
            self.weight = rng.uniform(-bound, bound, size=shape).astype(self.dtype)
        else:
            w = np.array(_real(weight, "weight"), dtype=self.dtype, copy=True)
            if w.size != self.out_features * self.in_features:
                raise ValueError(f"weight: expected shape {shape}, got {np.shape(weight)}")
            self.weight = np.ascontiguousarray(w.reshape(shape))
        if bias:
            if bias_value is None:
                self.bias = rng.uniform(-bound, bound, size=self.out_features).astype(self.dtype)
            else:
                b = np.array(_real(bias_value, "bias_value"), dtype=self.dtype,
                             copy=True).reshape(-1)
                if b.shape != (self.out_features,):
                    raise ValueError(f"bias_value: expected shape ({self.out_features},), "
                                     f"got {np.shape(bias_value)}")
                self.bias = b
        elif bias_value is not None:
            raise ValueError("bias_value given but bias=False")
        else:
            self.bias = None
        if not np.all(np.isfinite(self.weight)) or (
                self.bias is not None and not np.all(np.isfinite(self.bias))):
            raise ValueError("weight/bias_value must be finite")
        self.grad_weight = np.zeros_like(self.weight)
        self.grad_bias = None if self.bias is None else np.zeros_like(self.bias)
        self._x: Optional[np.ndarray] = None

    def _as_input(self, x) -> np.ndarray:
        # A private array: backward computes grad_weight from it, so later writes to the
        # caller's x must not change the gradient.
        x = _real(x, "x", None if isinstance(x, np.ndarray) and x.dtype == self.dtype
                  else self.dtype, private=True)
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"x: expected shape (batch, {self.in_features}), got {x.shape}")
        return x

    def forward(self, x: ArrayLike) -> np.ndarray:
        """``x @ weight.T + bias`` for ``x`` of shape ``(batch, in_features)``."""
        x = self._as_input(x)
        self._x = x
        return self._affine(x, self.weight)

    def _affine(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        y = x @ weight.T
        if self.bias is not None:
            y += self.bias
        return y

    def _check_grad(self, grad_out) -> np.ndarray:
        if self._x is None:
            raise ValueError("backward called before forward")
        g = _real(grad_out, "grad_out", self.dtype)
        if g.shape != (self._x.shape[0], self.out_features):
            raise ValueError(f"grad_out: expected shape {(self._x.shape[0], self.out_features)}, "
                             f"got {g.shape}")
        return g

    def backward(self, grad_out: ArrayLike, need_input_grad: bool = True
                 ) -> Optional[np.ndarray]:
        """Write ``grad_weight``/``grad_bias``; return the gradient w.r.t. the input
        (``None`` when ``need_input_grad`` is false, which skips one product)."""
        g = self._check_grad(grad_out)
        np.matmul(g.T, self._x, out=self.grad_weight)
        if self.bias is not None:
            np.sum(g, axis=0, out=self.grad_bias)
        return g @ self.weight if need_input_grad else None

    def parameters(self) -> List[np.ndarray]:
        """``[weight]`` or ``[weight, bias]``: the live arrays an optimizer updates."""
        return [self.weight] if self.bias is None else [self.weight, self.bias]

    def grads(self) -> List[np.ndarray]:
        """``[grad_weight]`` or ``[grad_weight, grad_bias]``, written by :meth:`backward`."""
        return [self.grad_weight] if self.bias is None else [self.grad_weight, self.grad_bias]

    def __repr__(self) -> str:
        return (f"Linear(in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None})")


class ReLU(Layer):
    """``max(x, 0)``; the backward pass lets the gradient through where ``x > 0``.

    Examples
    --------
    >>> import numpy as np
    >>> r = ReLU()
    >>> r.forward(np.array([-1.0, 0.0, 2.0]))
    array([0., 0., 2.])
    >>> r.backward(np.array([5.0, 5.0, 5.0]))
    array([0., 0., 5.])
    """

    def __init__(self) -> None:
        self._mask: Optional[np.ndarray] = None

    def forward(self, x: ArrayLike) -> np.ndarray:
        """``max(x, 0)`` (any shape); remembers where ``x > 0``."""
        x = _real(x, "x")
        self._mask = x > 0
        return np.maximum(x, 0)

    def backward(self, grad_out: ArrayLike) -> np.ndarray:
        """`grad_out` where the last forward's input was positive, 0 elsewhere."""
        if self._mask is None:
            raise ValueError("backward called before forward")
        g = _real(grad_out, "grad_out")
        if g.shape != self._mask.shape:
            raise ValueError(f"grad_out: expected shape {self._mask.shape}, got {g.shape}")
        return g * self._mask

    def __repr__(self) -> str:
        return "ReLU()"


class Sequential(Layer):
    """Layers applied in order; ``backward`` runs them in reverse.

    ``parameters()``/``grads()`` concatenate those of the layers.
    """

    def __init__(self, layers: Iterable[Layer]) -> None:
        self.layers = list(layers)

    def forward(self, x: ArrayLike) -> Any:
        """Each layer's ``forward`` in order, the output of one the input of the next."""
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, grad_out: ArrayLike, need_input_grad: bool = True) -> Any:
        """Backward through every layer, last first; returns the input gradient.

        With ``need_input_grad=False`` (a training step on data, whose gradient nobody
        uses) the layers in front of the first one with parameters are skipped and that
        layer does not compute its input gradient; returns ``None``.
        """
        first = 0
        if not need_input_grad:
            first = next((i for i, layer in enumerate(self.layers) if layer.parameters()),
                         len(self.layers))
        for i in range(len(self.layers) - 1, first - 1, -1):
            layer = self.layers[i]
            if i == first and not need_input_grad:
                if isinstance(layer, Linear):
                    layer.backward(grad_out, need_input_grad=False)
                else:
                    layer.backward(grad_out)
                return None
            grad_out = layer.backward(grad_out)
        return grad_out

    def parameters(self) -> List[np.ndarray]:
        """The layers' parameters, in layer order."""
        return [p for layer in self.layers for p in layer.parameters()]

    def grads(self) -> List[np.ndarray]:
        """The layers' gradients, in the order of :meth:`parameters`."""
        return [g for layer in self.layers for g in _grads_of(layer)]

    def _children(self) -> list:
        return self.layers

    def __getitem__(self, i: int) -> Layer:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) for layer in self.layers)
        return f"Sequential([{inner}])"


def _grads_of(layer) -> List[np.ndarray]:
    grads = getattr(layer, "grads", None)
    return [] if grads is None else list(grads())


def _quantizer(value, name: str):
    """A FakeQuantize from None (the default config), a FakeQuantConfig or a FakeQuantize;
    anything else (a string such as ``'int8'``) is a TypeError naming the argument."""
    if value is None:
        value = FakeQuantConfig()
    if isinstance(value, FakeQuantConfig):
        return FakeQuantize(value)
    if not isinstance(value, FakeQuantize):
        raise TypeError(f"{name} must be a FakeQuantize, a FakeQuantConfig or None, got "
                        f"{type(value).__name__} {value!r:.40}"
                        + (" (use FakeQuantConfig.int8() / .int4())"
                           if isinstance(value, str) else ""))
    return value


class ActivationFakeQuant(Layer):
    """A :class:`~qatcore.FakeQuantize` as a layer of a :class:`Sequential` model.

    ``forward`` calls ``fake_quantize`` (so a calibrating quantizer observes the
    activations and updates its range, as in Rust), ``backward`` is the quantizer's
    straight-through ``backward``; ``parameters``/``grads`` are the quantizer's (the
    learned scale and zero point of an LSQ config, nothing otherwise).

    Parameters
    ----------
    fake_quant : FakeQuantize or FakeQuantConfig, optional
        The quantizer, or a config to build one (default: 8-bit symmetric min/max).
    """

    def __init__(self, fake_quant: _Quantizer = None) -> None:
        self.fake_quant = _quantizer(fake_quant, "fake_quant")

    def forward(self, x: ArrayLike) -> np.ndarray:
        """`x` fake-quantized: observed first while the quantizer is calibrating."""
        fq = self.fake_quant
        return fq.fake_quantize(x) if fq.calibrating else fq.forward(x)

    def backward(self, grad_out: ArrayLike) -> np.ndarray:
        """The quantizer's straight-through gradient (and its LSQ gradients when
        learnable)."""
        return self.fake_quant.backward(grad_out)

    def parameters(self) -> List[np.ndarray]:
        """The quantizer's learnable scale (and zero point); empty when not learnable."""
        return list(self.fake_quant.parameters())

    def grads(self) -> List[np.ndarray]:
        """The gradients of :meth:`parameters`."""
        return _grads_of(self.fake_quant)

    def _children(self) -> list:
        return [self.fake_quant]

    def __repr__(self) -> str:
        return f"ActivationFakeQuant({self.fake_quant.config!r})"


class QATLinear(Linear):
    """:class:`Linear` whose weight passes through a :class:`~qatcore.FakeQuantize`.

    ``y = x @ fq(weight).T + bias``; the backward pass sends the weight gradient
    through the quantizer's straight-through (or LSQ) backward.

    While the weight quantizer is calibrating and not learnable, every ``forward``
    re-derives its range from the current weights alone (the observer is reset first):
    weights move at each step, and a running min/max would keep stale extremes.  The
    resulting scale is then ``max|w| / qmax``, the weight scale
    :meth:`QuantizedLinear.from_float` picks.  Cheaper and usual for fine-tuning: one
    forward to calibrate on the trained float weights, then
    ``weight_fake_quant.disable_calibration()`` freezes the scale (weights that grow
    past the range clip, and the clipped STE stops their gradient); a learnable (LSQ)
    quantizer then trains its scale.  Convert with the quantizer's scale
    (``QuantizedLinear.from_qat``).

    Parameters
    ----------
    in_features, out_features, bias, seed, dtype, weight, bias_value
        As for :class:`Linear` (float32 only).
    weight_fake_quant : FakeQuantize or FakeQuantConfig, optional
        Weight quantizer or its config (default 8-bit symmetric min/max).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 weight_fake_quant: _Quantizer = None, seed: _Seed = None,
                 weight: Optional[ArrayLike] = None, bias_value: Optional[ArrayLike] = None
                 ) -> None:
        super().__init__(in_features, out_features, bias, seed=seed, dtype=np.float32,
                         weight=weight, bias_value=bias_value)
        self.weight_fake_quant = _quantizer(weight_fake_quant, "weight_fake_quant")
        self._wq_used = self.weight
        self._grad_wq = np.empty_like(self.weight)

    @classmethod
    def from_linear(cls, linear: Linear, weight_fake_quant: _Quantizer = None) -> "QATLinear":
        """A QAT copy of a trained float :class:`Linear` (parameters copied)."""
        return cls(linear.in_features, linear.out_features, linear.bias is not None,
                   weight_fake_quant=weight_fake_quant, weight=linear.weight,
                   bias_value=linear.bias)

    def quantized_weight(self) -> np.ndarray:
        """Fake-quantize the current weight (recalibrating as described above)."""
        fq = self.weight_fake_quant
        if fq.calibrating and not fq.config.learnable:
            fq.observer.reset()
        return fq.fake_quantize(self.weight)      # a fresh array is cheaper than out='s checks

    def forward(self, x: ArrayLike) -> np.ndarray:
        """``x @ quantized_weight().T + bias`` for ``x`` of shape ``(batch, in_features)``."""
        x = self._as_input(x)
        self._x = x
        self._wq_used = self.quantized_weight()
        return self._affine(x, self._wq_used)

    def backward(self, grad_out: ArrayLike, need_input_grad: bool = True
                 ) -> Optional[np.ndarray]:
        """As :meth:`Linear.backward`, the weight gradient passed through the weight
        quantizer's straight-through estimator."""
        g = self._check_grad(grad_out)
        np.matmul(g.T, self._x, out=self._grad_wq)
        if self.bias is not None:
            np.sum(g, axis=0, out=self.grad_bias)
        self.weight_fake_quant.backward(self._grad_wq, out=self.grad_weight)
        return g @ self._wq_used if need_input_grad else None

    def parameters(self) -> List[np.ndarray]:
        """Weight, bias, then the weight quantizer's learnable parameters (if any)."""
        return super().parameters() + list(self.weight_fake_quant.parameters())

    def grads(self) -> List[np.ndarray]:
        """The gradients of :meth:`parameters`, same order."""
        return super().grads() + _grads_of(self.weight_fake_quant)

    def _children(self) -> list:
        return [self.weight_fake_quant]

    def __repr__(self) -> str:
        return (f"QATLinear(in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, weight={self.weight_fake_quant.config!r})")


class SoftmaxCrossEntropy:
    """Mean softmax cross-entropy over a batch, and its gradient w.r.t. the logits.

    Examples
    --------
    >>> import numpy as np
    >>> ce = SoftmaxCrossEntropy()
    >>> round(ce.forward(np.zeros((2, 4), dtype=np.float32), [1, 3]), 6)  # log(4)
    1.386294
    >>> ce.backward()
    array([[ 0.125, -0.375,  0.125,  0.125],
           [ 0.125,  0.125,  0.125, -0.375]], dtype=float32)
    """

    def __init__(self) -> None:
        self._probs: Optional[np.ndarray] = None
        self._labels: Optional[np.ndarray] = None

    def forward(self, logits: ArrayLike, labels: ArrayLike) -> float:
        """Mean loss (a Python float, computed in float64)."""
        z = _real(logits, "logits")
        if z.dtype.type not in _FLOATS:
            z = z.astype(np.float32)
        if z.ndim != 2 or z.shape[1] < 1:
            raise ValueError(f"logits: expected shape (batch, classes), got {z.shape}")
        labels = base_array(labels, "labels")
        if labels.shape != (z.shape[0],) or labels.dtype.kind not in "iu":
            raise ValueError(f"labels: expected {z.shape[0]} integer class indices, "
                             f"got shape {labels.shape} dtype {labels.dtype}")
        if labels.size and (labels.min() < 0 or labels.max() >= z.shape[1]):
            raise ValueError(f"labels: class indices must lie in [0, {z.shape[1]})")
        if not np.all(np.isfinite(z)):
            raise ValueError("logits: non-finite value")
        shifted = z - z.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        s = e.sum(axis=1, keepdims=True)
        self._probs = e / s
        self._labels = labels.copy()
        rows = np.arange(z.shape[0])
        logp = shifted[rows, labels].astype(np.float64) - np.log(s[:, 0].astype(np.float64))
        return float(-logp.mean()) if z.shape[0] else 0.0

    def backward(self) -> np.ndarray:
        """Gradient of the mean loss w.r.t. the logits: ``(softmax - onehot) / batch``."""
        if self._probs is None:
            raise ValueError("backward called before forward")
        g = self._probs.copy()
        n = g.shape[0]
        g[np.arange(n), self._labels] -= 1
        if n:
            g *= g.dtype.type(1.0 / n)
        return g


class Optimizer:
    """Base of :class:`SGD` and :class:`Adam`: updates ``params`` in place from ``grads``.

    Parameters
    ----------
    params, grads : sequences of ndarray
        Live parameter arrays and their gradient arrays (``model.parameters()`` and
        ``model.grads()``), same length, pairwise same shapes; floating dtypes.
    after_step : callable, optional
        Called with no argument after each :meth:`step`, e.g. to project parameters
        back into their domain (``FakeQuantize.clamp_parameters`` keeps a learned
        scale positive).
    """

    def __init__(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray],
                 after_step: Optional[Callable[[], None]] = None) -> None:
        params, grads = list(params), list(grads)
        if len(params) != len(grads):
            raise ValueError(f"params and grads differ in length ({len(params)} vs {len(grads)})")
        for i, (p, g) in enumerate(zip(params, grads)):
            if not isinstance(p, np.ndarray) or not isinstance(g, np.ndarray) or \
                    isinstance(p, np.ma.MaskedArray) or isinstance(g, np.ma.MaskedArray):
                raise TypeError(f"params[{i}] and grads[{i}] must be numpy arrays (not masked)")
            if p.shape != g.shape:
                raise ValueError(f"params[{i}] has shape {p.shape} but grads[{i}] {g.shape}")
            if p.dtype.type not in _FLOATS or not p.flags.writeable:
                raise TypeError(f"params[{i}] must be a writable float32/float64 array")
        if after_step is not None and not callable(after_step):
            raise TypeError(f"after_step must be callable, got {type(after_step).__name__}")
        self.params = params
        self.grads = grads
        self.after_step = after_step

    def step(self) -> None:  # pragma: no cover - abstract
        """Update every parameter in place from its gradient."""
        raise NotImplementedError

    def _done(self) -> None:
        if self.after_step is not None:
            self.after_step()


def _check_lr(lr) -> float:
    return check_real(lr, "lr", 0.0, lo_open=True)


class SGD(Optimizer):
    """Stochastic gradient descent with (heavy-ball) momentum and weight decay.

    ``v = momentum * v + (g + weight_decay * p)``; ``p -= lr * v``.

    Examples
    --------
    >>> import numpy as np
    >>> p = np.array([1.0], dtype=np.float32); g = np.array([0.5], dtype=np.float32)
    >>> opt = SGD([p], [g], lr=0.1, momentum=0.9)
    >>> opt.step(); opt.step(); p
    array([0.855], dtype=float32)
    """

    def __init__(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray],
                 lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                 after_step: Optional[Callable[[], None]] = None) -> None:
        super().__init__(params, grads, after_step)
        self.lr = _check_lr(lr)
        self.momentum = check_real(momentum, "momentum", 0.0, 1.0, hi_open=True)
        self.weight_decay = check_real(weight_decay, "weight_decay", 0.0)
        self._velocity = [np.zeros_like(p) for p in self.params]

    def step(self) -> None:
        """One update of every parameter, in place."""
        for p, g, v in zip(self.params, self.grads, self._velocity):
            if self.momentum:
                v *= self.momentum
                v += g
            else:
                v[...] = g
            if self.weight_decay:
                v += self.weight_decay * p
            p -= self.lr * v
        self._done()


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction; optional L2 weight decay.

    Examples
    --------
    >>> import numpy as np
    >>> p = np.array([1.0], dtype=np.float32); g = np.array([3.0], dtype=np.float32)
    >>> opt = Adam([p], [g], lr=0.1)
    >>> opt.step(); p   # the first Adam step moves by lr whatever the gradient size
    array([0.9], dtype=float32)
    """

    def __init__(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray],
                 lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0,
                 after_step: Optional[Callable[[], None]] = None) -> None:
        super().__init__(params, grads, after_step)
        self.lr = _check_lr(lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair of numbers, got {betas!r}")
        b1 = check_real(betas[0], "betas[0]", 0.0, 1.0, hi_open=True)
        b2 = check_real(betas[1], "betas[1]", 0.0, 1.0, hi_open=True)
        self.betas = (b1, b2)
        self.eps = check_real(eps, "eps", 0.0, lo_open=True)
        self.weight_decay = check_real(weight_decay, "weight_decay", 0.0)
        self.t = 0
        self._m = [np.zeros_like(p) for p in self.params]
        self._v = [np.zeros_like(p) for p in self.params]
        self._tmp = [np.empty_like(p) for p in self.params]
        # One-element parameters (learned quantizer scales) take a scalar path: a numpy
        # call costs ~1 µs whatever the size, a float operation ~30 ns.
        self._scalar = [p.size == 1 for p in self.params]
        self._ms = [0.0] * len(self.params)
        self._vs = [0.0] * len(self.params)

    def step(self) -> None:
        """One update of every parameter, in place."""
        b1, b2 = self.betas
        self.t += 1
        step_size = self.lr * np.sqrt(1.0 - b2 ** self.t) / (1.0 - b1 ** self.t)
        eps_hat = self.eps * np.sqrt(1.0 - b2 ** self.t)
        for i, (p, g, m, v, tmp) in enumerate(zip(self.params, self.grads, self._m, self._v,
                                                   self._tmp)):
            if self._scalar[i]:
                gs = float(g.flat[0])
                ps = float(p.flat[0])
                if self.weight_decay:
                    gs += self.weight_decay * ps
                ms = self._ms[i] = b1 * self._ms[i] + (1.0 - b1) * gs
                vs = self._vs[i] = b2 * self._vs[i] + (1.0 - b2) * gs * gs
                p.flat[0] = ps - step_size * ms / (math.sqrt(vs) + eps_hat)
                continue
            if self.weight_decay:
                g = g + self.weight_decay * p
            m *= b1
            m += (1.0 - b1) * g
            np.multiply(g, g, out=tmp)
            v *= b2
            tmp *= (1.0 - b2)
            v += tmp
            np.sqrt(v, out=tmp)
            tmp += eps_hat
            np.divide(m, tmp, out=tmp)
            tmp *= step_size
            p -= tmp
        self._done()
