"""The README's command examples run as written and print what the README shows.

Every ``$ qatcore ...`` line of a plain ``` block runs through ``qatcore.cli.main`` in a
fresh folder, in order (so ``qatcore examples .`` makes the files the later lines use).
A trailing ``# exit N`` comment gives the expected exit status (else 0).  The lines
under a command are its expected output, stdout and stderr together: each must be
printed, and nothing else may be unless the block shows ``...``.  Only what depends on
the machine is masked: the ``--version`` line and the timing summary of ``calibrate``.
"""

from __future__ import annotations

import os
import re
import shlex

import pytest

from qatcore import cli

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md")

_MASKS = [
    (re.compile(r"^qatcore \S+ \(kernels: .*\)$"), "qatcore <version line>"),
    (re.compile(r" in \d+\.\d+ s, [\d.]+ GB/s \[(\w+), \d+ threads?, \w+ kernels\]$"),
     r" in <t> s, <r> GB/s [\1, <n> threads, <target> kernels]"),
]


def _mask(line: str) -> str:
    line = line.rstrip()
    for pattern, repl in _MASKS:
        line = pattern.sub(repl, line)
    return line


def cli_blocks():
    """[(first line number, [(command, expected exit status, [expected lines])])]."""
    with open(README, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    fences, start, lang = [], None, ""
    for i, line in enumerate(lines):
        if line.startswith("```"):
            if start is None:
                start, lang = i + 1, line[3:].strip()
            else:
                if not lang:
                    fences.append((start + 1, lines[start:i]))
                start = None
    blocks = []
    for lineno, body in fences:
        steps = []
        for line in body:
            if line.startswith("$ "):
                command, _, comment = line[2:].partition("#")
                status = re.search(r"exit (\d+)", comment)
                steps.append((command.strip(), int(status.group(1)) if status else 0, []))
            elif steps:
                steps[-1][2].append(line)
        if steps and steps[0][0].startswith("qatcore"):
            blocks.append((lineno, steps))
    return blocks


BLOCKS = cli_blocks()


def test_readme_has_cli_examples():
    commands = [c for _, steps in BLOCKS for c, _, _ in steps]
    assert commands[0] == "qatcore examples ."
    assert any(c.startswith("qatcore calibrate") for c in commands)
    assert any(c.startswith("qatcore inspect") for c in commands)


@pytest.mark.parametrize("lineno,steps", BLOCKS, ids=[f"README.md:{n}" for n, _ in BLOCKS])
def test_readme_cli_block(lineno, steps, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COLUMNS", raising=False)
    for command, status, expected in steps:
        argv = shlex.split(command)
        assert argv[0] == "qatcore", command
        rc = cli.main(argv[1:])
        out = capsys.readouterr()
        printed = [_mask(x) for x in (out.out + out.err).splitlines()]
        assert rc == status, f"{command}: exit {rc}, README says {status}\n{out.err}"
        partial = any(x.strip() == "..." for x in expected)
        wanted = [_mask(x) for x in expected if x.strip() != "..."]
        missing = [x for x in wanted if x not in printed]
        assert not missing, f"{command}: README lines not printed:\n" + "\n".join(
            missing) + "\nprinted:\n" + "\n".join(printed)
        if not partial:
            extra = [x for x in printed if x not in wanted]
            assert not extra, f"{command}: printed lines the README does not show:\n" + \
                "\n".join(extra)
        if "--json" in argv:
            target = argv[argv.index("--json") + 1]
            assert os.path.exists(target) == (status == 0), f"{command}: {target}"
