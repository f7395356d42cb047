"""PyTorch integration: quantization-aware training of torch models on qatcore's kernels.

* :func:`fake_quantize` -- the ``qatcore::fake_quantize`` custom op (CPU), with autograd
  (clipped STE; LSQ / LSQ+ gradients for a scale / zero point that requires grad) and a
  fake (meta) implementation, so ``torch.compile`` traces it.
* :class:`FakeQuantize` -- an ``nn.Module`` holding a qatcore observer; calibration state,
  scale and zero point are buffers (Parameters when learnable), so ``state_dict`` restores
  a calibration exactly.
* :func:`prepare_qat` / :func:`convert` -- whole-graph capture of a CNN (torch.fx;
  Conv2d, depthwise, Linear, folded BatchNorm, residual adds, pooling, concatenation)
  converted to a ``qatcore.QuantizedModel``; or, for Linear models, swap ``nn.Linear``
  for :class:`QATLinear`, then for integer layers (:class:`QuantizedLinearModule`, or a
  torch-free :class:`qatcore.QuantizedSequential` for Linear/ReLU chains).

Zero-copy: the kernels read the input tensor's memory and write the output tensor's
memory through ``Tensor.numpy()`` views.  Inputs must be float32 CPU tensors; a
non-contiguous input is made contiguous first (one copy, as ``Tensor.contiguous()``);
float64/float16/bfloat16, integer and non-CPU tensors raise ``TypeError``/``ValueError``
(convert explicitly, e.g. ``x.float()``, so no silent precision change happens).

Requires ``pip install "qatcore[torch]"`` (torch 2.13.0).
"""

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without torch installed
    raise ImportError('qatcore.torch needs PyTorch: pip install "qatcore[torch]"') from exc

from .convert import convert
from .modules import (FakeQuantize, QATLinear, QuantizedLinearModule, default_activation_config,
                      default_weight_config)
from .ops import fake_quantize
from .layers import (FixedQParamsFakeQuantize, QATAvgPool2d, QATConvBn2d, QATLinearBn,
                     freeze_bn_stats)
from .prepare import calibrate, freeze, prepare_qat

__all__ = ["fake_quantize", "FakeQuantize", "QATLinear", "QuantizedLinearModule",
           "prepare_qat", "freeze", "calibrate", "convert", "default_activation_config",
           "default_weight_config", "freeze_bn_stats", "QATConvBn2d", "QATLinearBn",
           "QATAvgPool2d", "FixedQParamsFakeQuantize"]
