"""No import cycles through the engine's API modules (type-only imports
count: a cycle a reader must hold in their head is a cycle)."""

import ast

from demos.cluster import REPO


def import_graph(package: str) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        edges = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            edges.update(name for name in names if name.split(".")[0] == package and name != module)
    return {m: {e for e in edges if e in graph} for m, edges in graph.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


# The API side of the engine (the core's modules have their own layering).
API_MODULES = ["engine.api", "engine.control", "engine.interface", "engine.views", "engine.events",
               "engine.live", "engine.taskquery", "engine.store", "engine.coordinator"]


def reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), list(graph.get(start, ()))
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return False


def test_api_modules_are_in_no_import_cycle():
    graph = import_graph("engine")
    assert "engine.api" not in graph["engine.control"]  # the cycle there used to be
    for module in API_MODULES:
        assert not reaches(graph, module, module), f"{module} imports itself through " + " -> ".join(
            find_cycle({m: e for m, e in graph.items()}) or []
        )


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
