"""The package layout follows the data path: no import cycles, no imports hidden in functions."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1] / "tnsim"
ENGINE = ("ir", "frontends", "measures", "doubled", "plan", "methods")
#: the order of the data path: a package may import only packages earlier in this list
PATH = ("ir", "measures", "doubled", "plan", "methods")


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level: bool):
    """Absolute names of the tnsim modules ``path`` imports (module level or inside defs)."""
    tree = ast.parse(path.read_text())
    mod = _module(path)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level and ((id(node) in nested) != top_level):
            base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            names = [target + "." + a.name for a in node.names] if not node.module else [target]
            yield from names


def _graph() -> nx.DiGraph:
    g = nx.DiGraph()
    modules = {_module(p): p for p in ROOT.rglob("*.py")}
    for mod, path in modules.items():
        for target in _imports(path, top_level=True):
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target != mod:
                g.add_edge(mod, target)
    return g


def test_no_import_cycles():
    cycles = list(nx.simple_cycles(_graph()))
    assert not cycles, f"import cycles: {cycles[:3]}"


def test_engine_has_no_imports_inside_functions():
    hidden = {
        str(p.relative_to(ROOT.parent)): sorted(set(_imports(p, top_level=False)))
        for pkg in ENGINE for p in (ROOT / pkg).rglob("*.py")
    }
    hidden = {k: v for k, v in hidden.items() if v}
    assert not hidden, f"imports inside functions: {hidden}"


def test_packages_only_import_down_the_data_path():
    g = _graph()
    bad = []
    for a, b in g.edges:
        pa, pb = (m.split(".")[1] if m.count(".") else "" for m in (a, b))
        if pa in PATH and pb in PATH and PATH.index(pb) > PATH.index(pa):
            bad.append((a, b))
    assert not bad, f"imports against the data path: {bad}"


def test_sources_compile_without_warnings():
    """Docstrings with TeX are raw: an invalid escape such as ``\\m`` warns at compile time and
    becomes an error under ``python -W error`` (future Pythons make it a SyntaxError)."""

    sources = [*ROOT.rglob("*.py"), *(ROOT.parent / "tests").glob("*.py"),
               *(ROOT.parent / "benchmarks").glob("*.py")]
    bad = []
    for path in sources:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            compile(path.read_text(), str(path), "exec")
        bad += [f"{path.name}:{w.lineno}: {w.message}" for w in caught]
    assert not bad, bad
