"""The dependency direction between the parts of ``src/phantom_token`` (docs/design.md, "Dependency direction").

A node is a subpackage (``core``, ``cache``, ``config``, ``http``, ``frontends``, ``introspection``, ``demo``) or a
top-level module (``gateway``, ``process``, ``cli``, ``errors``...); ``phantom_token`` itself is the package's
``__init__``. Every import counts, at module level or inside a function (a lazy import is still a dependency),
except those under ``if TYPE_CHECKING:``, which never run. The sources are read with ``ast``, not imported.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import phantom_token

PACKAGE = Path(phantom_token.__file__).resolve().parent
ROOT = "phantom_token"

CORE_MUST_NOT_IMPORT = frozenset({
    "cache", "http", "introspection", "frontends", "admin", "admin_client", "app", "gateway", "process", "cli",
    "demo",
})
"""``core`` is the pattern's rules: the adapters, front doors and runners depend on it, never the reverse."""

Edges = dict[str, dict[str, list[str]]]
"""node -> node it imports -> where (``file:line``)."""


def _node_of_module(dotted: str) -> str | None:
    """The node a ``phantom_token...`` module belongs to; None for a module outside the package."""
    parts = dotted.split(".")
    if parts[0] != ROOT:
        return None
    return parts[1] if len(parts) > 1 else ROOT


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(nodes: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: module level, in functions and classes, not under TYPE_CHECKING."""
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _imports(node.orelse)  # an ``else:`` of ``if TYPE_CHECKING:`` does run
        else:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    yield from _imports([child])
                elif isinstance(child, ast.ExceptHandler | ast.match_case):
                    yield from _imports(child.body)


def _module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _targets(statement: ast.Import | ast.ImportFrom, module: str, is_package: bool, package: Path) -> Iterator[str]:
    """The dotted modules a statement imports (``from phantom_token import x``: ``phantom_token.x`` when x is one)."""
    if isinstance(statement, ast.Import):
        yield from (alias.name for alias in statement.names)
        return
    base = statement.module or ""
    if statement.level:
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - statement.level + 1]
        base = ".".join([*anchor, base] if base else anchor)
    for alias in statement.names:
        candidate = package.parent.joinpath(*base.split("."), alias.name)
        submodule = candidate.is_dir() or candidate.with_suffix(".py").exists()
        yield f"{base}.{alias.name}" if submodule else base


def import_graph(package: Path = PACKAGE) -> Edges:
    edges: Edges = {}
    for path in sorted(package.rglob("*.py")):
        module = _module_name(path, package)
        source = _node_of_module(module)
        assert source is not None
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for statement in _imports(tree.body):
            for target in _targets(statement, module, path.name == "__init__.py", package):
                node = _node_of_module(target)
                if node is not None and node != source:
                    where = f"{path.relative_to(package.parent)}:{statement.lineno}"
                    sites = edges.setdefault(source, {}).setdefault(node, [])
                    if where not in sites:  # one site per statement, however many names it imports
                        sites.append(where)
    return edges


def cycles(edges: Edges) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted; [] when acyclic."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in edges.get(node, {}):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
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

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def _explain(component: list[str], edges: Edges) -> str:
    members = set(component)
    lines = [f"import cycle between {', '.join(component)}:"]
    for source in component:
        for target, where in sorted(edges.get(source, {}).items()):
            if target in members:
                lines.append(f"  {source} -> {target}: {', '.join(where)}")
    return "\n".join(lines)


def test_no_import_cycle_between_the_packages() -> None:
    edges = import_graph()
    found = cycles(edges)
    assert not found, "\n".join(_explain(component, edges) for component in found)


def test_core_imports_no_adapter_front_door_or_runner() -> None:
    imported = import_graph().get("core", {})
    wrong = {node: where for node, where in imported.items() if node in CORE_MUST_NOT_IMPORT}
    assert not wrong, f"core must not import {sorted(wrong)}: {wrong}"


def test_the_graph_sees_module_level_lazy_and_package_imports() -> None:
    """The two tests above are only as good as the graph: check it on imports known to exist."""
    edges = import_graph()
    assert "core/engine.py" in " ".join(edges["core"]["config"])  # module level
    assert any(where.startswith("phantom_token/cli.py") for where in edges["cli"]["process"])  # inside a function
    assert "compiled" in edges[ROOT]  # ``from phantom_token import compiled as _compiled``: the submodule
    assert "gateway" in edges["frontends"]  # the ASGI middleware runs on the Gateway


def test_type_checking_imports_are_left_out(tmp_path: Path) -> None:
    package = tmp_path / "phantom_token"
    (package / "core").mkdir(parents=True)
    (package / "cache").mkdir()
    (package / "__init__.py").write_text("")
    (package / "cache" / "__init__.py").write_text("from phantom_token.core import ports\n")
    (package / "core" / "__init__.py").write_text("")
    (package / "core" / "ports.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from phantom_token.cache import memory\n"
        "def later() -> None:\n    from . import ports\n")
    edges = import_graph(package)
    assert edges == {"cache": {"core": ["phantom_token/cache/__init__.py:1"]}}
    (package / "core" / "ports.py").write_text("def later() -> None:\n    from ..cache import memory\n")
    found = cycles(import_graph(package))
    assert found == [["cache", "core"]]
