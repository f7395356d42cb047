"""The house rules, checked on the source: no import circles between qatcore's modules,
and the core imports none of the wings.

Every ``import`` counts: the ones inside functions (a lazy import is still a dependency)
and those under ``if TYPE_CHECKING:`` too.  A package's ``__init__`` is a module of its
own: ``from .observe import x`` is an edge to ``qatcore.cli.observe``; ``from . import
observe`` reads the package, so it is an edge to ``qatcore.cli`` as well (not for the
root: ``from . import _backend`` in the core is the usual way to reach a sibling).
"""

import ast
from pathlib import Path

import pytest

import qatcore

PKG = Path(qatcore.__file__).resolve().parent

#: The wings: audiences of their own.  The core (qatcore/*.py) imports none of them.
WINGS = ("qatcore.cli", "qatcore.demo", "qatcore.bench", "qatcore.torch", "qatcore.dask",
         "qatcore.onnx", "qatcore.export")
#: The flat module names the house replaced (issue 19); none may come back.
OLD_FLAT = ("cli", "_cli_dask", "_cli_export", "_cli_model", "_io", "_examples", "demo",
            "_demo_torch", "_bench", "_bench_gemm", "onnx_calibrate", "torch", "model")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules():
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _is_extension(module: str) -> bool:
    """A compiled module (the kernels): a stub ``.pyi`` and no ``.py``."""
    path = PKG.parent.joinpath(*module.split("."))
    return path.with_suffix(".pyi").exists()


def _imports(name: str, path: Path, modules) -> set:
    """qatcore modules that `name` (at `path`) imports, anywhere in its body."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found = set()

    def visit(node):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("qatcore"):
                    found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("qatcore"):
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in modules:
                        found.add(sub)
                        if target != "qatcore":         # the package is read for it
                            found.add(target)           # (the root's facade aside)
                    elif not _is_extension(sub):       # a name defined in `target`
                        found.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    found.discard(name)
    return {m for m in found if m in modules}


@pytest.fixture(scope="module")
def graph():
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_no_import_circles(graph):
    assert _cycles(graph) == []


def test_finds_a_planted_circle():
    """The check itself can fail: a two-module circle is found."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def _in(module: str, wing: str) -> bool:
    return module == wing or module.startswith(wing + ".")


def test_core_imports_no_wing(graph):
    core = [m for m in graph if (m.count(".") == 1 or m == "qatcore")
            and not any(_in(m, w) for w in WINGS)]
    assert "qatcore.observer" in core and "qatcore.linear" in core
    bad = {m: sorted(d for d in graph[m] if any(_in(d, w) for w in WINGS))
           for m in core if m != "qatcore.__main__"}
    assert {m: d for m, d in bad.items() if d} == {}


def test_exporters_do_not_import_the_model(graph):
    """The model delegates to its exporters; they take it as an argument."""
    bad = {m: sorted(d for d in graph[m] if _in(d, "qatcore.model") and d != "qatcore.model.ops"
                     and not d.startswith("qatcore.model.ops.") and d != "qatcore.model.tensor")
           for m in graph if _in(m, "qatcore.export")}
    assert {m: d for m, d in bad.items() if d} == {}


def test_wings_use_the_public_kernels_only(graph):
    """The command and the demos go through the public API, never the kernel modules."""
    for m, deps in graph.items():
        if _in(m, "qatcore.cli") or _in(m, "qatcore.demo"):
            assert not any(d.startswith("qatcore._kernels") for d in deps), m


@pytest.mark.parametrize("old", OLD_FLAT)
def test_old_flat_module_is_gone(old):
    assert not (PKG / f"{old}.py").exists()


ROOT = Path(__file__).resolve().parents[1]          # the checkout the tests come from


def test_every_package_is_shipped():
    """Each qatcore folder with an __init__.py in the checkout is listed in pyproject's
    packages (an unlisted one would be missing from the wheel)."""
    import re

    text = (ROOT / "pyproject.toml").read_text()
    listed = set(re.findall(r'"(qatcore[\w.]*)"', re.search(r"packages = \[(.*?)\]", text, re.S).group(1)))
    src = ROOT / "qatcore"
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in src.rglob("__init__.py")}
    assert found == listed


def test_license_ships():
    """MIT: the text in the checkout, the metadata naming it, and (when qatcore was
    installed from a wheel, as in CI) the file inside the installed distribution."""
    from importlib import metadata

    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    text = (ROOT / "pyproject.toml").read_text()
    assert 'license = "MIT"' in text and 'license-files = ["LICENSE"]' in text
    assert (ROOT / "CHANGELOG.md").read_text().startswith("# Changelog")
    try:
        dist = metadata.distribution("qatcore")
    except metadata.PackageNotFoundError:
        pytest.skip("qatcore is not installed (in-place build): no distribution to look in")
    assert dist.metadata["License-Expression"] == "MIT"
    names = [f.name for f in (dist.files or [])]
    if not any(n.endswith(".dist-info/RECORD") or n == "RECORD" for n in names):
        pytest.skip("an editable install lists no files")
    assert "LICENSE" in names
