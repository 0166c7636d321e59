"""The package's shape: data flows one way (no import circle), the CLI is imported by nothing."""

from __future__ import annotations

import ast

from tests.conftest import REPO


def _imports(folder: str = "study") -> dict[str, set[str]]:
    """Each module of ``folder`` and the modules of study/ it imports (anywhere in its body)."""
    graph: dict[str, set[str]] = {}
    for path in (REPO / folder).glob("*.py"):
        name = folder if path.stem == "__init__" else f"{folder}.{path.stem}"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("study"):
                if node.module == "study":
                    deps |= {f"study.{a.name}" for a in node.names}
                else:
                    deps.add(node.module)  # type: ignore[arg-type]
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("study")}
        graph[name] = deps - {name}
    return graph


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done or node not in graph:
            return None
        for dep in sorted(graph[node]):
            if found := visit(dep, [*path, node]):
                return found
        done.add(node)
        return None

    for node in sorted(graph):
        if found := visit(node, []):
            return found
    return None


def test_no_module_of_the_package_imports_itself_back() -> None:
    assert _circle(_imports()) is None


def test_the_circle_finder_finds_a_circle() -> None:
    assert _circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_command_line_module_is_imported_by_nothing() -> None:
    for folder in ("study", "scripts"):
        assert [m for m, deps in _imports(folder).items() if "study.run" in deps] == []
