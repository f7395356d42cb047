"""The public API's annotations: a typed usage file passes ``mypy --strict`` (and runs),
and ``stubtest`` finds the kernel stubs (``qatcore/_kernels*.pyi``) and the annotated
core modules in agreement with the runtime objects.

Both check the qatcore this test imported (site-packages in CI).  mypy is in the
``test`` extra; where it is missing these tests skip, except in CI
(QATCORE_REQUIRE_INTEGRATIONS=1 turns the skip into a failure)."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import sysconfig

import pytest

import qatcore

HERE = os.path.dirname(os.path.abspath(__file__))
TYPING = os.path.join(HERE, "typing")
USAGE = os.path.join(TYPING, "usage.py")
#: The folder holding the qatcore under test.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(qatcore.__file__)))
#: Modules whose annotations stubtest compares with the runtime.
STUBTEST_MODULES = ["qatcore.config", "qatcore.observer", "qatcore.fake_quantize",
                    "qatcore.linear", "qatcore.dynamic", "qatcore.mixed_precision", "qatcore.nn",
                    "qatcore._kernels", "qatcore._kernels_avx2", "qatcore._kernels_avx512"]


def _env(tmp_path):
    """Run in an empty folder so that both Python and mypy find the qatcore under test:
    PYTHONPATH for the runtime, MYPYPATH for mypy unless it is an installed package
    (mypy refuses site-packages on MYPYPATH and finds it there itself)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    installed = {os.path.realpath(p) for p in site.getsitepackages() + [
        site.getusersitepackages(), sysconfig.get_paths()["purelib"],
        sysconfig.get_paths()["platlib"]]}
    if os.path.realpath(ROOT) not in installed:
        env["MYPYPATH"] = ROOT
    else:
        env.pop("MYPYPATH", None)
    env["MYPY_CACHE_DIR"] = str(tmp_path / ".mypy_cache")
    return env


def _run(args, tmp_path, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=timeout)


def test_usage_file_runs(tmp_path):
    proc = _run([USAGE], tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_usage_file_passes_mypy_strict(tmp_path):
    pytest.importorskip("mypy")
    proc = _run(["-m", "mypy", "--strict", "--follow-imports=silent", "--no-error-summary",
                 USAGE], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == ""


def test_mypy_catches_misuse(tmp_path):
    """The misuse lines are errors without their ignores (so the check can fail)."""
    pytest.importorskip("mypy")
    with open(USAGE, encoding="utf-8") as fh:
        text = fh.read()
    bad = tmp_path / "bad_usage.py"
    bad.write_text(text.replace("  # type: ignore[arg-type]", ""), encoding="utf-8")
    proc = _run(["-m", "mypy", "--strict", "--follow-imports=silent", str(bad)], tmp_path)
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert len(errors) == text.count("# type: ignore[arg-type]"), proc.stdout
    assert any('"fake_quantize"' in e and '"str"' in e for e in errors)
    assert any('"set_input_scale"' in e and '"str"' in e for e in errors)


def test_stubtest(tmp_path):
    pytest.importorskip("mypy")
    proc = _run(["-m", "mypy.stubtest", *STUBTEST_MODULES,
                 "--allowlist", os.path.join(TYPING, "stubtest-allowlist.txt"),
                 "--mypy-config-file", os.path.join(TYPING, "mypy.ini")], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
