"""The engine and the agent know nothing of the UI; the agent nothing of the engine; the protocol nothing of Shoal."""

import ast
import re
import subprocess
import sys

from demos.cluster import REPO


def imported_after(modules: list[str]) -> set[str]:
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO, check=True)
    return set(out.stdout.split())


def test_engine_imports_no_ui():
    loaded = imported_after(["engine.api", "engine.coordinator", "engine.core", "engine.discovery", "engine.control"])
    assert not {m for m in loaded if m.split(".")[0] in ("textual", "console")}


def test_agent_imports_nothing_of_the_engine():
    loaded = imported_after(["nodeagent.server", "nodeagent.executor", "nodeagent.worker", "nodeagent.advertise"])
    assert not {m for m in loaded if m.split(".")[0] in ("textual", "console", "engine", "demos")}


def test_protocol_is_a_leaf():
    """nodeagent/protocol/ imports msgpack and the standard library, and of Shoal only itself."""
    for path in (REPO / "nodeagent" / "protocol").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top not in ("engine", "console", "demos") and (
                    top != "nodeagent" or name.startswith("nodeagent.protocol")
                ), f"{path.name} imports {name}"


# --- the module import graph -------------------------------------------------------------

PACKAGES = ("engine", "nodeagent", "console", "demos")
# Which top-level folder may import which (DESIGN.md, "Layers"): imports point down only.
MAY_IMPORT = {
    "console": {"engine", "demos", "nodeagent", "themes"},
    "demos": {"engine", "nodeagent"},
    "engine": {"nodeagent"},  # its wire protocol only (nodeagent.protocol)
    "nodeagent": set(),
}


def module_graph() -> dict[str, set[str]]:
    """Module -> the Shoal modules it imports anywhere in its text (at the top,
    in a function, or for type checking only: a cycle through any of them is
    a knot in the design, even where Python would tolerate it at run time)."""
    files = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's own package
                    anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                    base = ".".join(anchor + ([base] if base else []))
                # "from pkg import mod" imports the module pkg.mod when there is one.
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names]
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]  # "import a.b.c" of a name inside a.b
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_modules():
    graph = module_graph()
    knots = [
        "; ".join(f"{m} -> {', '.join(sorted(t for t in graph[m] if t in cycle))}" for m in cycle)
        for cycle in cycles(graph)
    ]
    assert not knots, "import cycles:\n" + "\n".join(knots)


def test_folders_import_downwards_only():
    wrong = {
        f"{module} imports {target}"
        for module, targets in module_graph().items()
        for target in targets
        if target.split(".")[0] != module.split(".")[0] and target.split(".")[0] not in MAY_IMPORT[module.split(".")[0]]
    }
    assert not wrong, sorted(wrong)
    engine_uses = {t for m, ts in module_graph().items() if m.startswith("engine") for t in ts if t.startswith("nodeagent")}
    assert all(t.startswith("nodeagent.protocol") for t in engine_uses), engine_uses


def test_demos_and_engine_never_start_the_console_by_name():
    """A module run by name in a subprocess (``-m console.cli``, code in a
    string) is an import the graph above cannot see."""
    for folder in ("demos", "engine", "nodeagent"):
        for path in (REPO / folder).rglob("*.py"):
            found = re.search(r"\bconsole\.cli\b|\bfrom console(\.\w+)* import\b", path.read_text())
            assert found is None, f"{path} reaches into console/: {found and found.group()}"
