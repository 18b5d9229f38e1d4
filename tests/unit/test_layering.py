"""The engine and the agent know nothing of the UI; the agent nothing of the engine; the protocol nothing of Shoal."""

import ast
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
