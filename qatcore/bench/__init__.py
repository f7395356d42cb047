"""The ``qatcore bench`` suite (:mod:`.suite`) and its int8 GEMM part (:mod:`.gemm`):
qatcore against numpy, PyTorch, onnxruntime and the Rust reference, measured in one run."""

from .suite import main, run

__all__ = ["main", "run"]
