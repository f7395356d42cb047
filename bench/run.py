#!/usr/bin/env python
"""Run the qatcore benchmark suite: ``python bench/run.py [options]`` is
``qatcore bench [options]`` (see ``--help``).  Unset OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE first to time numpy fairly."""

import os
import sys

if __name__ == "__main__":
    # Prefer the checkout's package when run from a source tree with built kernels.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    pkg = os.path.join(root, "qatcore")
    built = os.path.isdir(pkg) and any(f.startswith("_kernels") and f.endswith((".so", ".pyd"))
                                       for f in os.listdir(pkg))
    if built and root not in sys.path:
        sys.path.insert(0, root)
    from qatcore.bench import main

    sys.exit(main())
