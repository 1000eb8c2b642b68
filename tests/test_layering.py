"""The house: every import of the package (module- and function-level) points down the floors of
``docs/architecture.md``, and the import graph has no cycle."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "repzoo"

#: Floors, top to bottom: a module may import its own floor (without cycles) and the floors below.
FLOORS = [
    ("repzoo", "repzoo.cli", "repzoo.cli_support", "repzoo.demo", "repzoo.bench", "repzoo.integrations"),
    ("repzoo.train",),
    ("repzoo.factory", "repzoo.catalog", "repzoo.optim", "repzoo.distributed"),
    ("repzoo.models",),
    ("repzoo.weights",),
    ("repzoo.registry",),
    ("repzoo.layers",),
    ("repzoo.reparam",),
    ("repzoo.errors", "repzoo.version", "repzoo.machine"),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules():
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(base: str, is_package: bool, level: int, module: str) -> str:
    parts = base.split(".") if is_package else base.split(".")[:-1]
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    return ".".join(parts + ([module] if module else []))


def imports(modules) -> dict:
    """``{module: {imported repzoo module, ...}}`` over every import statement, at any depth."""
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        is_package = path.name == "__init__.py"
        found = set()
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node.level, node.module or "") if node.level else node.module
                # ``from pkg import mod`` imports pkg.mod when that is a module, else an attribute of pkg
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target and target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != name and target.startswith("repzoo"):
                    found.add(target)
        graph[name] = found
    return graph


def _floor(module: str) -> int:
    best, depth = None, -1
    for i, floor in enumerate(FLOORS):
        for prefix in floor:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > depth:
                best, depth = i, len(prefix)
    assert best is not None, f"{module} is on no floor: add it to FLOORS and docs/architecture.md"
    return best


GRAPH = imports(_modules())


def test_the_parser_sees_function_level_imports():
    """Not vacuous: an import inside a function counts (the CLI imports everything that way)."""
    assert "repzoo.factory" in GRAPH["repzoo.cli"] and "repzoo.weights.pretrained" in GRAPH["repzoo.cli"]


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module):
    here = _floor(module)
    up = sorted(t for t in GRAPH[module] if _floor(t) < here)
    assert not up, f"{module} (floor {FLOORS[here][0]}) imports {up} from floors above it"


def test_the_import_graph_has_no_cycle():
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_a_cycle_would_be_found():
    """The cycle check can fail: a graph with one back-edge has a cycle."""
    saved = GRAPH.get("repzoo.registry")
    GRAPH["repzoo.registry"] = set(saved) | {"repzoo.models.repvgg"}
    try:
        with pytest.raises(AssertionError, match="import cycles"):
            test_the_import_graph_has_no_cycle()
    finally:
        GRAPH["repzoo.registry"] = saved
