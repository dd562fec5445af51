"""Layers: no import cycles between the modules of npa_precompute and npa_train.

Every intra-project import counts, wherever it is written: module level and inside
functions, ``import a.b``, ``from a.b import c`` (``c`` a submodule or a name),
relative ``from . import x``, ``importlib.import_module("npa_...")`` literals and the
lazy re-export tables of the packages' ``__init__`` (a module named there is reached by
``from npa_train import Trainer``). Imports under ``if TYPE_CHECKING:`` never run and
are left out. The modules are read with :mod:`ast`, nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("npa_precompute", "npa_train")


def module_files(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> source file, for every ``.py`` file of ``packages``."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST):
    """Walk ``tree``, skipping the bodies of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, source: str, is_package: bool, known: set[str]) -> set[str]:
    """The project modules that module ``name`` (source ``source``) imports, at any level."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str) -> None:
        # the deepest known module that ``target`` names (``a.b.func`` -> ``a.b``)
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    for node in _runtime_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in known else base)
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called == "import_module" and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    add(arg.value)
        elif is_package and isinstance(node, ast.Constant) and isinstance(node.value, str):
            # lazy re-export tables (``_LAZY``/``_MODULES``) name their modules as strings
            if node.value in known:
                add(node.value)
    return found


def import_graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """Module -> the project modules it imports, for every module of ``packages``."""
    files = module_files(root, packages)
    known = set(files)
    return {
        name: imports_of(name, path.read_text(encoding="utf-8"), path.name == "__init__.py", known)
        for name, path in files.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None when it is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_checker_finds_a_synthetic_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) is None
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_collector_sees_every_import_form(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "_LAZY = {'Thing': 'pkg.lazy'}\n"
        "if TYPE_CHECKING:\n    from pkg.typed import T\n"
    )
    (pkg / "lazy.py").write_text("def f():\n    from . import deep\n")
    (pkg / "deep.py").write_text("import importlib\nX = importlib.import_module('pkg.sub.leaf')\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "leaf.py").write_text("def g():\n    from pkg import Thing\n")
    (pkg / "typed.py").write_text("from .sub import leaf\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert graph == {
        "pkg": {"pkg.lazy"},
        "pkg.lazy": {"pkg.deep"},
        "pkg.deep": {"pkg.sub.leaf"},
        "pkg.sub": set(),
        "pkg.sub.leaf": {"pkg"},
        "pkg.typed": {"pkg.sub.leaf"},
    }
    # a function-level import through a lazy table closes a cycle
    assert find_cycle(graph) == ["pkg", "pkg.lazy", "pkg.deep", "pkg.sub.leaf", "pkg"]


@pytest.mark.parametrize("package", PACKAGES)
def test_graph_reaches_the_lazy_tables(package):
    graph = import_graph()
    assert graph[package], f"{package}/__init__.py: no lazy re-export seen"


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 40
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


GOOGLE_SECTION = ("Args", "Arguments", "Returns", "Raises", "Shape", "Example", "Examples")


def google_style_sections(source: str) -> list[str]:
    """Docstring section headers written Google-style (``Args:``), by function or class."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
            doc = ast.get_docstring(node, clean=False) or ""
            for line in doc.splitlines():
                head = line.strip()
                if head.endswith(":") and head[:-1] in GOOGLE_SECTION:
                    found.append(f"{getattr(node, 'name', '<module>')}: {head}")
    return found


def test_the_checker_finds_a_google_style_section():
    src = 'def f(x):\n    """Doc.\n\n    Args:\n        x: a value.\n    """\n'
    assert google_style_sections(src) == ["f: Args:"]
    assert google_style_sections(src.replace("Args:", "Parameters\n    ----------")) == []


def test_docstrings_use_one_style_numpy():
    """Issue 19 item 9: one docstring style (NumPy), as most of the code is."""
    offenders = {
        name: found
        for name, path in module_files().items()
        if (found := google_style_sections(path.read_text()))
    }
    assert offenders == {}
