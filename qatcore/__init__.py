"""qatcore: quantization-aware training, calibration and int8 inference on CPU.

The QAT module of the Rust crate aprender-core (``nn::quantization``) rebuilt on Cython
kernels: the same structs under the same names, the same numbers bit for bit.
"""

def _cli_target_error(exc: ValueError) -> None:
    """A bad QATCORE_TARGET under the ``qatcore`` command (script or ``python -m qatcore``):
    one line on stderr and exit status 2, as for any bad input, instead of a traceback.
    Imported as a library the ValueError propagates."""
    import os
    import sys

    argv = list(getattr(sys, "orig_argv", sys.argv))
    is_cli = os.path.basename(sys.argv[0] or "") == "qatcore" or any(
        a == "-m" and b == "qatcore" for a, b in zip(argv, argv[1:]))
    if is_cli and str(exc).startswith("QATCORE_TARGET"):
        print(f"qatcore: error: {' '.join(str(exc).split())}", file=sys.stderr)
        raise SystemExit(2)


try:
    from ._backend import get_num_threads, set_num_threads
except ValueError as _exc:
    _cli_target_error(_exc)
    raise
from .config import FakeQuantConfig, ObserverMethod
from .dynamic import DynamicQuantizer
from .fake_quantize import (FakeQuantize, Module, fake_quantize_array, lsq_backward_array,
                            ste_backward_array)
from .histogram import ChannelObserver, HistogramObserver
from .linear import QuantizedLinear
from .mixed_precision import MixedPrecision
from .model import QuantizedModel, QuantizedSequential
from .observer import QuantObserver

__version__ = "0.1.0"

__all__ = [
    "ChannelObserver",
    "DynamicQuantizer",
    "FakeQuantConfig",
    "FakeQuantize",
    "HistogramObserver",
    "MixedPrecision",
    "Module",
    "ObserverMethod",
    "QuantObserver",
    "QuantizedLinear",
    "QuantizedModel",
    "QuantizedSequential",
    "fake_quantize_array",
    "lsq_backward_array",
    "ste_backward_array",
    "get_num_threads",
    "set_num_threads",
    "__version__",
]
