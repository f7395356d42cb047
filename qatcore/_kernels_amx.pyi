# Same kernels as qatcore._kernels, compiled for the amx target (one .pyx source).
from ._kernels import *
