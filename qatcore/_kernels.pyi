# Type stubs for the private kernel modules (qatcore._kernels, qatcore._kernels_avx2,
# qatcore._kernels_avx512: one source, one module per CPU target).  The kernels trust their
# input; the classes in qatcore/ validate.  Memoryview types are given as comments.

from typing import Optional, Tuple

import numpy as np
import numpy.typing as npt

TARGET: str                  # "baseline", "avx2" or "avx512"
OPENMP: bool                 # built with OpenMP
PAR_MIN_PER_THREAD: int      # below this many elements per thread a kernel stays serial
GEMM_IMPL: str               # "vnni", "avx2", "sse2" or "portable"
GEMM_LAYOUT: str             # name of the packed-weight layout of this target
GEMM_MAX_K: int              # largest K for exact int32 accumulation

def cpu_supports(feature: str) -> bool: ...
def omp_max_threads() -> int: ...

# --- reductions ----------------------------------------------------------------------
def minmax(x: npt.NDArray[np.float32],  # ndarray, C-contiguous float32 (checked)
           n_threads: int = 1) -> Tuple[float, float, int]:
    """(min, max, first non-finite index or -1)."""
def mean_std(x: npt.NDArray[np.float32],  # ndarray, C-contiguous float32
             n_threads: int = 1) -> Tuple[float, float, int]:
    """(mean, population std, first non-finite index or -1), float64 accumulation."""
def select_order_stats(x: npt.NDArray[np.float32],  # ndarray, C-contiguous float32, n >= 1
                       k_low: int, k_high: int, n_threads: int = 1) -> Tuple[float, float, int]:
    """Values at ranks k_low <= k_high of a stable ascending sort, first non-finite index."""
def select_order_stats_path(x: npt.NDArray[np.float32], k_low: int, k_high: int,
                            path: str = "auto", n_threads: int = 1) -> Tuple[float, float, int, str]: ...
def probe_read(x: npt.NDArray[np.float32], n_threads: int = 1) -> float: ...

# --- element-wise ----------------------------------------------------------------------
def fake_quantize(x: npt.NDArray[np.float32],        # ndarray, C-contiguous float32
                  out: npt.NDArray[np.float32],      # ndarray, writable float32, same size
                  scale: float, zero_point: float, qmin: float, qmax: float,
                  mask: Optional[npt.NDArray[np.uint8]] = None,  # writable uint8 or None
                  n_threads: int = 1) -> int:
    """0, or 1 (nothing written) when out partially overlaps x."""
def calibrate_fake_quantize(x: object,        # used if an aligned C-contiguous float32 ndarray
                            run_min: float, run_max: float, count: int,
                            moving_average: bool, avg_min: float, avg_max: float,
                            symmetric: bool, qmin: float, qmax: float, want_mask: bool
                            ) -> "Tuple[npt.NDArray[np.float32], Optional[npt.NDArray[np.uint8]], float, float, float, float, float, float] | int":
    """(out, mask, lo, hi, new_min, new_max, scale, zero_point); the first non-finite
    index of x; or -1 where the fused small-batch path does not apply."""
def fake_quantize_fresh(x: object,          # used if an aligned C-contiguous float32 ndarray
                        scale: float, zero_point: float, qmin: float, qmax: float,
                        want_mask: bool
                        ) -> Optional[Tuple[npt.NDArray[np.float32], Optional[npt.NDArray[np.uint8]]]]:
    """(out, mask) of a small batch into a fresh output, or None where that does not apply."""
def quantize(x: npt.NDArray[np.float32],   # ndarray, C-contiguous float32
             out: np.ndarray,              # ndarray, writable int8/uint8/int16/uint16, same size
             scale: float, zero_point: float, qmin: float, qmax: float,
             n_threads: int = 1) -> None: ...
def dequantize(q: np.ndarray,                       # ndarray, C-contiguous int8/uint8/int16/uint16
               out: npt.NDArray[np.float32],        # ndarray, writable float32, same size
               scale: float, zero_point: float, n_threads: int = 1) -> None: ...
def probe_divide(x: npt.NDArray[np.float32], out: npt.NDArray[np.float32], scale: float,
                 n_threads: int = 1) -> None: ...
def probe_copy(x: npt.NDArray[np.float32], out: npt.NDArray[np.float32],
               n_threads: int = 1) -> None: ...

# --- backward (STE, LSQ) ---------------------------------------------------------------
def ste_backward(grad: npt.NDArray[np.float32],               # const float[::1]
                 mask: Optional[npt.NDArray[np.uint8]],       # const uint8_t[::1] or None
                 out: npt.NDArray[np.float32]) -> int:        # float[::1]
    """First non-finite index of grad, or -1."""
def lsq_backward(x: npt.NDArray[np.float32], grad: npt.NDArray[np.float32],
                 grad_in: npt.NDArray[np.float32], scale: float, zero_point: float,
                 qmin: float, qmax: float, identity: bool = False
                 ) -> Tuple[int, float, float, float]:
    """(first bad index or -1, sum_inside, sum_below, sum_above) in float64."""

# --- int8 GEMM -------------------------------------------------------------------------
def packed_size(n: int, k: int) -> int: ...
def pack_weights(w: npt.NDArray[np.int8],        # const int8_t[:, ::1] (N, K), in [-127, 127]
                 packed: npt.NDArray[np.int8]    # int8_t[::1], packed_size(N, K)
                 ) -> None: ...
def gemm_i8_i32(x: npt.NDArray[np.int8],                 # ndarray, C-contiguous int8 (M, K)
                packed: npt.NDArray[np.int8],            # ndarray, packed_size(N, K) int8
                n: int,
                wsum: npt.NDArray[np.int32],             # ndarray, int32 (N,)
                col_offset: Optional[npt.NDArray[np.int32]],  # ndarray, int32 (N,) or None
                out: npt.NDArray[np.int32],              # ndarray, writable int32 (M, N)
                n_threads: int = 1) -> int:
    """0, or -1 when scratch memory could not be allocated."""
def requantize_fixed_point(acc: npt.NDArray[np.int32],         # const int32_t[:, ::1]
                           multiplier: npt.NDArray[np.int32],  # const int32_t[::1] (N,)
                           shift: npt.NDArray[np.int32],       # const int32_t[::1] (N,)
                           zero_point: int, qmin: int, qmax: int,
                           out: npt.NDArray[np.int8],          # int8_t[:, ::1]
                           n_threads: int = 1) -> None: ...

# --- integer CNN ops (_k_conv.pxi, qc_conv.h; rounding 0 gemmlowp, 1 single, 2 neon) -----
def conv2d_i8(x: npt.NDArray[np.int8],             # ndarray, C-contiguous int8 (N, H, W, C)
              out: npt.NDArray[np.int8],           # ndarray, writable int8 (N, OH, OW, COUT)
              in_shape: Tuple[int, int, int, int], out_hw: Tuple[int, int], kernel: Tuple[int, int], stride: Tuple[int, int], dilation: Tuple[int, int],
              pad_tl: Tuple[int, int], groups: int,
              packed: npt.NDArray[np.int8],        # ndarray, groups x packed_size(COUT/groups, K)
              wsum: npt.NDArray[np.int32],         # ndarray, int32 (COUT,)
              col_offset: npt.NDArray[np.int32],   # ndarray, int32 (COUT,)
              multiplier: npt.NDArray[np.int32],   # ndarray, int32 (COUT,)
              shift: npt.NDArray[np.int32],        # ndarray, int32 (COUT,)
              out_zp: int, qmin: int, qmax: int, pad_value: int, direct: bool,
              rounding: int, n_threads: int = 1) -> int:
    """0, or -1 when scratch memory could not be allocated."""
def depthwise_conv2d_i8(x: npt.NDArray[np.int8],           # ndarray, int8 (N, H, W, C)
                        out: npt.NDArray[np.int8],         # ndarray, writable int8 (N, OH, OW, C*M)
                        in_shape: Tuple[int, int, int, int], out_hw: Tuple[int, int], kernel: Tuple[int, int], stride: Tuple[int, int],
                        dilation: Tuple[int, int], pad_tl: Tuple[int, int], depth_multiplier: int,
                        weights: npt.NDArray[np.int8],     # ndarray, int8 (KH, KW, C*M)
                        bias: Optional[npt.NDArray[np.int32]],  # ndarray, int32 (C*M,) or None
                        input_offset: int,
                        multiplier: npt.NDArray[np.int32],  # ndarray, int32 (C*M,)
                        shift: npt.NDArray[np.int32],       # ndarray, int32 (C*M,)
                        out_zp: int, qmin: int, qmax: int, rounding: int,
                        n_threads: int = 1) -> int:
    """0, or -1 when scratch memory could not be allocated."""
def pool2d_i8(x: npt.NDArray[np.int8],      # ndarray, int8 (N, H, W, C)
              out: npt.NDArray[np.int8],    # ndarray, writable int8 (N, OH, OW, C)
              in_shape: Tuple[int, int, int, int], out_hw: Tuple[int, int], kernel: Tuple[int, int], stride: Tuple[int, int], pad_tl: Tuple[int, int],
              is_max: bool, qmin: int, qmax: int, n_threads: int = 1) -> int:
    """0, or -1 when scratch memory could not be allocated."""
def add_i8(a: npt.NDArray[np.int8],      # ndarray, C-contiguous int8
           b: npt.NDArray[np.int8],      # ndarray, C-contiguous int8, same size
           out: npt.NDArray[np.int8],    # ndarray, writable int8, same size
           zp_a: int, zp_b: int, m_a: int, s_a: int, m_b: int, s_b: int, m_out: int,
           s_out: int, zp_out: int, qmin: int, qmax: int, single: bool) -> None: ...
def softmax_i8(x: npt.NDArray[np.int8],     # ndarray, C-contiguous int8, rows x depth
               out: npt.NDArray[np.int8],   # ndarray, writable int8, same size
               depth: int, multiplier: int, left_shift: int, diff_min: int,
               single: bool) -> None: ...
def requantize_rows(acc: npt.NDArray[np.int32],         # ndarray, int32 (M, N)
                    multiplier: npt.NDArray[np.int32],  # ndarray, int32 (N,)
                    shift: npt.NDArray[np.int32],       # ndarray, int32 (N,)
                    zero_point: int, qmin: int, qmax: int, rounding: int,
                    out: npt.NDArray[np.int8]           # ndarray, writable int8 (M, N)
                    ) -> None: ...

# --- numerics presets (torch / onnx arithmetic, _k_presets.pxi) ------------------------
PRESET_TORCH: int            # torch.fake_quantize_per_tensor_affine
PRESET_ONNX: int             # QuantizeLinear -> DequantizeLinear
PRESET_TORCH_CHANNEL: int    # torch.fake_quantize_per_channel_affine
def fake_quantize_preset(x: npt.NDArray[np.float32],     # ndarray, C-contiguous float32
                         out: npt.NDArray[np.float32],   # ndarray, writable float32, same size
                         scale: float, zero_point: float, qmin: float, qmax: float, mode: int,
                         mask: Optional[npt.NDArray[np.uint8]] = None,  # writable uint8 or None
                         n_threads: int = 1) -> int:
    """0, or 1 (nothing written) when out partially overlaps x."""
def fake_quantize_preset_channels(x: npt.NDArray[np.float32],     # ndarray, C-contiguous
                                  out: npt.NDArray[np.float32],   # ndarray, same size
                                  scale: npt.NDArray[np.float32],       # const float[::1], (C,)
                                  zero_point: npt.NDArray[np.float32],  # const float[::1], (C,)
                                  outer: int, inner: int, qmin: float, qmax: float, mode: int,
                                  mask: Optional[npt.NDArray[np.uint8]] = None) -> int:
    """x viewed as (outer, C, inner); 0, or 1 when out partially overlaps x."""
def lsq_backward_preset(x: npt.NDArray[np.float32], grad: npt.NDArray[np.float32],
                        grad_in: npt.NDArray[np.float32], scale: float, zero_point: float,
                        qmin: float, qmax: float, mode: int,
                        identity: bool = False) -> Tuple[int, float, float, float]:
    """(first non-finite grad index or -1, sum inside, sum below, sum above)."""
def grad_times_mask(grad: npt.NDArray[np.float32],   # ndarray, C-contiguous float32
                    mask: npt.NDArray[np.uint8],     # ndarray, C-contiguous uint8, same size
                    out: npt.NDArray[np.float32]) -> None:
    """out = grad * mask (torch's clipped-STE backward)."""

# --- histogram (qatcore/histogram.py) --------------------------------------------------
def hist_fill(x: npt.NDArray[np.float32],       # const float[::1], finite, |v|*inv_width < h
              inv_width: float,                 # 1 / bin width, a power of two
              counts: npt.NDArray[np.int64]     # int64_t[::1], 2h sign-magnitude bins
              ) -> None: ...
