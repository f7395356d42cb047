"""The public API's annotations: a typed usage file passes ``mypy --strict`` and pyright's
strict mode (basedpyright) and runs, and ``stubtest`` finds the kernel stubs (``qatcore/_kernels*.pyi``) and the annotated
core modules in agreement with the runtime objects.

All check the qatcore this test imported (site-packages in CI).  mypy and basedpyright
are in the ``test`` extra; where one is missing its tests skip, except in CI
(QATCORE_REQUIRE_INTEGRATIONS=1 turns the skip into a failure)."""

from __future__ import annotations

import json
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
                    "qatcore._kernels", "qatcore._kernels_avx2", "qatcore._kernels_avx512",
                    "qatcore._kernels_amx"]


def _installed() -> bool:
    """Whether the qatcore under test is an installed package (in site-packages)."""
    paths = site.getsitepackages() + [site.getusersitepackages(),
                                      sysconfig.get_paths()["purelib"],
                                      sysconfig.get_paths()["platlib"]]
    return os.path.realpath(ROOT) in {os.path.realpath(p) for p in paths}


def _env(tmp_path):
    """Run in an empty folder so that both Python and mypy find the qatcore under test:
    PYTHONPATH for the runtime, MYPYPATH for mypy unless it is an installed package
    (mypy refuses site-packages on MYPYPATH and finds it there itself)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    if not _installed():
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


def test_usage_file_passes_pyright_strict(tmp_path):
    """pyright (basedpyright) in strict mode: no error, no needless ignore, and every
    misuse line an error once its ignore is removed."""
    pytest.importorskip("basedpyright")
    config = {"typeCheckingMode": "strict", "reportMissingTypeStubs": False,
              "reportUnnecessaryTypeIgnoreComment": "error",
              "extraPaths": [] if _installed() else [ROOT]}
    (tmp_path / "pyrightconfig.json").write_text(json.dumps(config), encoding="utf-8")
    with open(USAGE, encoding="utf-8") as fh:
        text = fh.read()
    (tmp_path / "usage.py").write_text(text, encoding="utf-8")
    (tmp_path / "bad_usage.py").write_text(text.replace("  # type: ignore[arg-type]", ""),
                                           encoding="utf-8")
    args = ["-m", "basedpyright", "--pythonpath", sys.executable, "-p", "pyrightconfig.json"]
    proc = _run([*args, "usage.py"], tmp_path)
    assert proc.returncode == 0 and "0 errors" in proc.stdout, proc.stdout + proc.stderr
    proc = _run([*args, "bad_usage.py"], tmp_path)
    errors = [line for line in proc.stdout.splitlines() if " - error:" in line]
    assert len(errors) == text.count("# type: ignore[arg-type]"), proc.stdout
