# Same kernels as qatcore._kernels, compiled for the avx2 target (one .pyx source).
from ._kernels import *
