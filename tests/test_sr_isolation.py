"""``sr/`` must not import nipype, pybids or the config: it is usable as a plain library."""

from __future__ import annotations

import ast
from pathlib import Path

import bids_mrisr

FORBIDDEN = ("nipype", "bids", "bids_mrisr.bids", "bids_mrisr.config", "bids_mrisr.cli",
             "bids_mrisr.workflows",
             "bids_mrisr.interfaces")
SR_DIR = Path(bids_mrisr.__file__).parent / "sr"


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_sr_imports_nothing_forbidden():
    files = sorted(SR_DIR.rglob("*.py"))
    assert len(files) > 5
    offenders = [
        f"{path.relative_to(SR_DIR)}: {name}"
        for path in files for name in _imports(path)
        if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN)
    ]
    assert offenders == []


def test_checker_catches_a_forbidden_import(tmp_path):
    sample = tmp_path / "x.py"
    sample.write_text("import nipype.pipeline\nfrom bids import BIDSLayout\n")
    assert _imports(sample) == ["nipype.pipeline", "bids"]


PACKAGE = Path(bids_mrisr.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    """Module -> the bids_mrisr modules it imports (at any level, lazy imports included)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def test_sr_never_imports_the_bids_layer():
    assert "bids_mrisr.bids" in FORBIDDEN


def test_nothing_below_cli_imports_cli():
    offenders = [f"{mod} -> {dep}" for mod, deps in _graph().items()
                 if not mod.startswith("bids_mrisr.cli") for dep in deps
                 if dep.startswith("bids_mrisr.cli")]
    assert offenders == []


def test_adaptation_reaches_no_training_code():
    """Per-scan adaptation runs at inference: it shares pairs and loss with training through
    ``sr/pairs.py`` and ``sr/objectives.py``, never by importing ``sr/training/``."""
    graph, seen, todo = _graph(), set(), ["bids_mrisr.sr.adapt"]
    while todo:
        for dep in graph[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    assert {"bids_mrisr.sr.pairs", "bids_mrisr.sr.objectives"} <= seen
    assert sorted(m for m in seen if m.startswith("bids_mrisr.sr.training")) == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _without_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's ``__init__`` re-exporting its submodules is not a cycle of design: drop the
    edges from a package to its own submodules."""
    return {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}


def test_no_import_cycles_in_the_package():
    assert _cycles(_without_package_inits(_graph())) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
