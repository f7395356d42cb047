# Same kernels as qatcore._kernels, compiled for the avx512 target (one .pyx source).
from ._kernels import *
