"""Weights packed once per kernel layout for the int8 GEMM (FULLY_CONNECTED, CONV_2D)."""

from __future__ import annotations

import threading
from typing import Dict

import numpy as np

from ...linear import _aligned_empty

__all__ = ["PackedWeights"]


class PackedWeights:
    """The (groups, rows, K) int8 weights of a GEMM-backed op, packed per kernel module's
    ``GEMM_LAYOUT`` on first use (each group's block follows the previous one), plus the
    per-row weight sums the GEMM's VNNI path needs."""

    def __init__(self, weights_grouped: np.ndarray) -> None:
        self._w = weights_grouped                   # (groups, rows, K) int8, C-contiguous
        self.wsum = weights_grouped.astype(np.int64).sum(axis=2).reshape(-1).astype(np.int32)
        self.wsum.flags.writeable = False
        self._packed: Dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def for_kernels(self, kernels) -> np.ndarray:
        layout = kernels.GEMM_LAYOUT
        packed = self._packed.get(layout)
        if packed is None:
            with self._lock:
                packed = self._packed.get(layout)
                if packed is None:
                    groups, rows, k = self._w.shape
                    block = kernels.packed_size(rows, k)
                    packed = _aligned_empty(groups * block)
                    for g in range(groups):
                        kernels.pack_weights(self._w[g], packed[g * block:(g + 1) * block])
                    packed.flags.writeable = False
                    self._packed[layout] = packed
        return packed
