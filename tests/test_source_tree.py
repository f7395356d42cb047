"""Importing qatcore from a source folder without compiled kernels (the root of a fresh
clone) fails with an error that says so and what to do, not a "circular import"."""

import os
import shutil
import subprocess
import sys

import qatcore

PKG = os.path.dirname(os.path.abspath(qatcore.__file__))


def test_source_tree_without_kernels_says_what_to_do(tmp_path):
    src = tmp_path / "clone" / "qatcore"
    shutil.copytree(PKG, src, ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    if not (src / "_kernels.pyx").exists():          # an installed wheel without sources
        (src / "_kernels.pyx").write_text("# source marker\n")
    proc = subprocess.run([sys.executable, "-c", "import qatcore"], cwd=src.parent,
                          capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: qatcore was imported from its source folder")
    assert "no compiled kernels" in last and "pip install -e ." in last
    assert "build_ext --inplace" in last and "circular import" not in proc.stderr


def test_built_tree_imports(tmp_path):
    """The same folder with its kernels imports (the check does not misfire)."""
    src = tmp_path / "clone" / "qatcore"
    shutil.copytree(PKG, src, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-c", "import qatcore; print(qatcore.__file__)"],
                          cwd=src.parent, capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(src / "__init__.py")
