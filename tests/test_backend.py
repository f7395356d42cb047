"""CPU-target dispatch: QATCORE_TARGET, available targets, bad requests."""

import os
import subprocess
import sys

import numpy as np
import pytest

import qatcore
from qatcore import _backend

from conftest import TARGETS, bits_of

def env_with(target):
    """The environment of a subprocess importing this very qatcore with a forced target."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(qatcore.__file__)))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, QATCORE_TARGET=target, PYTHONPATH=path)


def test_baseline_always_available():
    assert "baseline" in TARGETS and TARGETS[0] == _backend.available_targets()[0]

@pytest.mark.parametrize("target", TARGETS)
def test_forced_target_is_used(target):
    env = env_with(target)
    out = subprocess.run([sys.executable, "-c", "import qatcore._backend as b; print(b.kernels.TARGET)"],
                         env=env, capture_output=True, text=True, cwd="/", timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == target

@pytest.mark.parametrize("value", ["sse9", "avx512"])
def test_forced_target_refused_clearly(value):
    if value in TARGETS:
        pytest.skip("this CPU runs it")
    out = subprocess.run([sys.executable, "-c", "import qatcore"], env=env_with(value),
                         capture_output=True, text=True, cwd="/", timeout=60)
    assert out.returncode != 0 and "QATCORE_TARGET" in out.stderr

def test_targets_agree_bit_for_bit():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(100_003) * 3).astype(np.float32)
    results = []
    for t in TARGETS:
        k = _backend.load(t)
        out = np.empty_like(x)
        k.fake_quantize(x, out, 0.037, 0.0, -127.0, 127.0, None, 1)
        results.append((k.minmax(x, 1), bits_of(out).tobytes()))
    assert all(r == results[0] for r in results)


@pytest.mark.parametrize("target", TARGETS)
def test_kernel_stub_lists_every_kernel(target):
    """qatcore/_kernels.pyi describes exactly the names each kernel module exports."""
    import ast
    import inspect

    stub_path = os.path.join(os.path.dirname(qatcore.__file__), "_kernels.pyi")
    if not os.path.exists(stub_path):
        pytest.skip("stub not installed")
    with open(stub_path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    declared = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    declared |= {node.target.id for node in tree.body if isinstance(node, ast.AnnAssign)}
    module = _backend.load(target)
    exported = {name for name, value in vars(module).items()
                if not name.startswith("_") and not inspect.ismodule(value)}
    assert exported == declared


@pytest.mark.parametrize("target", TARGETS)
def test_hot_kernels_refuse_wrong_arrays(target):
    """minmax and fake_quantize take arrays through the numpy C API; a wrong layout,
    dtype, size or a read-only output is a ValueError, never a silent misread."""
    k = _backend.load(target)
    x = np.linspace(-1, 1, 64, dtype=np.float32)
    out = np.empty_like(x)
    ro = np.empty_like(x)
    ro.setflags(write=False)
    for bad in (x[::2], x.astype(np.float64)):
        with pytest.raises(ValueError, match="x must"):
            k.minmax(bad, 1)
        with pytest.raises(ValueError, match="x must"):
            k.fake_quantize(bad, out[: bad.size], 0.1, 0.0, -127.0, 127.0, None, 1)
    for bad_out in (out[:10], ro, out.astype(np.float64)):
        with pytest.raises(ValueError, match="out must"):
            k.fake_quantize(x, bad_out, 0.1, 0.0, -127.0, 127.0, None, 1)
    with pytest.raises(ValueError, match="mask must"):
        k.fake_quantize(x, out, 0.1, 0.0, -127.0, 127.0, np.empty(64, np.int8), 1)
    x.setflags(write=False)                      # read-only input is fine
    assert k.minmax(x, 1) == (-1.0, 1.0, -1)
    assert k.fake_quantize(x, out, 0.1, 0.0, -127.0, 127.0, None, 1) == 0
