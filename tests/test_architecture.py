"""The house rules that keep xmig readable, checked by the suite as well as by CI:

- no module over 600 lines and no class over 400 (DESIGN.md, "Style to follow");
- no import cycle among xmig's own modules, counting imports made inside functions
  too (a cycle hidden in a function body still ties the two modules together) and
  imports under ``if TYPE_CHECKING:`` (a type named across a cycle ties the modules
  together for the reader just the same).

The layers themselves (which package may import which) are import-linter's contract
in pyproject.toml, run by ``.ci/run``. The graph here is built from ``ast`` alone, so
this test needs nothing but the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hypervisor", "guest", "migrate")
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(encoding="utf-8"), filename=str(path)) for name, path in MODULES.items()}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> set[str]:
    """The xmig modules ``name`` imports anywhere in its body: ``import a.b``,
    ``from a import b`` (a.b when that is a module, else a), relative ones resolved."""
    targets: set[str] = set()
    package = name if _is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in MODULES else base)
    resolved = set()
    for target in targets:
        while target and target not in MODULES:      # `import a.b.func`-style leftovers
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


GRAPH = {name: _imports(name) for name in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def _one_cycle(component: list[str]) -> list[str]:
    """A shortest import loop through the component's first module, to name in a message."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(GRAPH[node] & members):
                if child == start:
                    return paths[node] + [start]
                if child not in paths:
                    paths[child] = paths[node] + [child]
                    nxt.append(child)
        frontier = nxt
    return component


def test_the_graph_sees_the_whole_tree():
    assert {"hypervisor.abi", "guest", "migrate.cli.main", "migrate.toolstack.save"} <= set(MODULES)
    assert "migrate.events.types" in GRAPH["migrate.events"]          # a package's own imports
    assert "migrate.cli.teach" in GRAPH["migrate.cli.main"]           # `from migrate.cli import teach`
    assert "migrate.run.runner" in GRAPH["migrate.cli.run"]           # imported inside a function
    assert "migrate.ui.app" not in GRAPH["migrate.ui.screens"]        # the screens ask a ModeHost


def test_the_cycle_finder_finds_a_cycle_and_only_that():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_over_600_lines(name):
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{MODULES[name].relative_to(ROOT)} has {lines} lines (at most {MAX_MODULE_LINES})"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_class_is_over_400_lines(name):
    big = [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(TREES[name])
           if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES]
    assert not big, (f"{MODULES[name].relative_to(ROOT)}: "
                     + ", ".join(f"class {c} has {n} lines" for c, n in big) + f" (at most {MAX_CLASS_LINES})")


def test_no_import_cycles_among_xmigs_modules():
    loops = [" -> ".join(_one_cycle(c)) for c in _cycles(GRAPH)]
    assert not loops, "import cycles (module-level and in-function imports):\n" + "\n".join(loops)
