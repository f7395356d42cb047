# int8 x int8 -> int32 GEMM and fixed-point requantization (QuantizedLinear).
