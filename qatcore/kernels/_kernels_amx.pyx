# Kernels compiled for one CPU target; the flags come from setup.py.  The source is
# shared by every target: see _kernels_body.pxi.
include "_kernels_body.pxi"
