"""The engine and the agent know nothing of the UI (and the agent nothing of the engine but its protocol)."""

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


def test_agent_imports_only_the_protocol_of_the_engine():
    loaded = imported_after(["nodeagent.server", "nodeagent.executor", "nodeagent.worker", "nodeagent.advertise"])
    assert not {m for m in loaded if m.split(".")[0] in ("textual", "console")}
    assert {m for m in loaded if m.startswith("engine.")} <= {"engine.protocol"}
