"""Build qatcore's Cython kernels once per CPU target.

The kernel sources live in ``qatcore/kernels/`` (``_kernels_body.pxi`` includes the
``_k_*.pxi`` parts, which include the C headers ``qc_*.h``); they are compiled into one extension per
instruction-set target; ``qatcore._backend`` imports the best one the running CPU
supports (``QATCORE_TARGET`` forces one).  The baseline module ``qatcore._kernels``
always exists and is safe on any x86-64 (or any other architecture).

Environment switches
--------------------
QATCORE_DEBUG=1        Cython bounds checks and wraparound on, -O1 -g.
QATCORE_NO_OPENMP=1    build without OpenMP even when the compiler has it.
QATCORE_TARGETS=a,b    build only these targets (default: all the platform allows).

A C compiler (gcc or clang) and the Python headers are needed; their absence is reported
before anything is built.
"""

import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from setuptools import Extension, setup

DEBUG = os.environ.get("QATCORE_DEBUG", "") not in ("", "0")

# -ffp-contract=off: a fused multiply-add changes the last bit (bit parity with Rust).
# -fno-trapping-math: lets gcc vectorize truncf/roundf instead of calling libm.
BASE_FLAGS = ["-ffp-contract=off", "-fno-trapping-math", "-fno-math-errno"]
BASE_FLAGS += ["-O1", "-g"] if DEBUG else ["-O3"]

IS_X86_64 = platform.machine().lower() in ("x86_64", "amd64")
IS_MSVC = sys.platform == "win32"

# target name -> extra compiler flags.  The baseline keeps the compiler's default ISA.
TARGETS = {"baseline": []}
if IS_X86_64 and not IS_MSVC:
    TARGETS["avx2"] = ["-march=x86-64-v3", "-mprefer-vector-width=256"]
    TARGETS["avx512"] = ["-march=x86-64-v4", "-mavx512vnni", "-mprefer-vector-width=512"]
    # The avx512 build plus the Intel AMX tile instructions (only qc_amx.h's intrinsics
    # emit them; the module imports on any avx512 CPU, _backend runs it only where the
    # CPU has AMX-INT8 and Linux grants the tile state).
    TARGETS["amx"] = TARGETS["avx512"] + ["-mamx-tile", "-mamx-int8"]

wanted = os.environ.get("QATCORE_TARGETS")
if wanted:
    names = [t.strip() for t in wanted.split(",") if t.strip()]
    TARGETS = {t: TARGETS[t] for t in ["baseline"] + names if t in TARGETS}


def _compiler_accepts(flags, source="int main(void){return 0;}\n"):
    cc = os.environ.get("CC", "cc").split()[0]
    if shutil.which(cc) is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "t.c")
        with open(src, "w") as fh:
            fh.write(source)
        cmd = [cc, *flags, src, "-o", os.path.join(tmp, "t")]
        return subprocess.run(cmd, capture_output=True).returncode == 0


_BUILDING = {"build", "build_ext", "bdist_wheel", "install", "develop", "editable_wheel"}


def _check_toolchain():
    """Before a build: a clear error when there is no C compiler or no Python headers
    (pip's own message is a generic "Failed building wheel")."""
    if IS_MSVC or not _BUILDING & set(sys.argv[1:]):
        return
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        sys.exit(f"error: qatcore compiles Cython/C kernels and needs a C compiler, but "
                 f"{cc!r} was not found. Install gcc or clang (Debian/Ubuntu: apt-get install "
                 f"build-essential python3-dev; Fedora: dnf install gcc python3-devel; macOS: "
                 f"xcode-select --install), or point CC at one.")
    include = sysconfig.get_paths()["include"]
    if not os.path.exists(os.path.join(include, "Python.h")):
        sys.exit(f"error: the Python headers (Python.h) are missing from {include}; install "
                 f"them (Debian/Ubuntu: apt-get install python3-dev; Fedora: dnf install "
                 f"python3-devel).")


_check_toolchain()

# Build requirements (pyproject's build-system), imported after the toolchain check so a
# missing compiler is reported first even where they are absent.
import numpy as np  # noqa: E402
from Cython.Build import cythonize  # noqa: E402

OMP_TEST = "#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n"
USE_OPENMP = (
    os.environ.get("QATCORE_NO_OPENMP", "") in ("", "0")
    and not IS_MSVC
    and _compiler_accepts(["-fopenmp"], OMP_TEST)
)
OMP_FLAGS = ["-fopenmp"] if USE_OPENMP else []

# Drop a target the compiler cannot build (an old gcc without x86-64-v4, say).
TARGETS = {
    name: flags
    for name, flags in TARGETS.items()
    if name == "baseline" or _compiler_accepts(flags)
}

DIRECTIVES = {
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "language_level": 3,
    "embedsignature": True,
}


# Every kernel source (Cython and C) sits in one folder; the compiled modules keep their
# names (qatcore._kernels, qatcore._kernels_avx2, ...) and their stubs (qatcore/_kernels*.pyi).
KERNELS = os.path.join("qatcore", "kernels")


def _extension(target, flags):
    module = "qatcore._kernels" if target == "baseline" else f"qatcore._kernels_{target}"
    pyx = os.path.join(KERNELS, "_kernels.pyx" if target == "baseline" else f"_kernels_{target}.pyx")
    return Extension(
        module,
        [pyx],
        include_dirs=[np.get_include(), KERNELS],
        define_macros=[
            ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
            ("QATCORE_TARGET_NAME", f'"{target}"'),
        ],
        extra_compile_args=BASE_FLAGS + flags + OMP_FLAGS,
        extra_link_args=OMP_FLAGS,
        depends=[os.path.join(KERNELS, f) for f in os.listdir(KERNELS) if f.endswith((".pxi", ".h"))],
    )


extensions = [_extension(t, f) for t, f in TARGETS.items()]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=DIRECTIVES,
        nthreads=0,
    ),
)
