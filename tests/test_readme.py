"""The README's Python examples run as written."""

import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md")


def blocks():
    with open(README, encoding="utf-8") as fh:
        text = fh.read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_starts_with_the_two_commands():
    with open(README, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    assert lines[2:6] == ["```bash", "pip install . && qatcore demo",
                          'pip install ".[test,all]" && pytest', "```"]
    with open(os.path.join(os.path.dirname(README), ".ci", "run"), encoding="utf-8") as fh:
        assert fh.read().rstrip().splitlines()[-1] == lines[4]


def test_readme_examples_run(tmp_path, monkeypatch):
    code = blocks()
    assert len(code) >= 2
    monkeypatch.chdir(tmp_path)
    import importlib.util

    # the Deploy example needs the export extra (flatbuffers, tflite-micro)
    export = all(importlib.util.find_spec(m) for m in ("flatbuffers", "tflite_micro"))
    namespace = {}
    for block in code:
        if "to_tflite" in block and not export:
            continue
        exec(compile(block, README, "exec"), namespace)
    assert (tmp_path / "fc.npz").exists()
    assert (tmp_path / "mlp.tflite").exists() == export
