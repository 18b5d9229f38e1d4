"""Call tasks for tests/integration/test_security.py, imported by real workers."""

from __future__ import annotations

import os
import subprocess
import sys


def environment() -> list[object]:
    return [dict(os.environ), os.getcwd()]


def open_descriptors() -> list[str]:
    links = []
    for name in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{name}"))
        except OSError:
            pass  # the listing's own descriptor, closed since
    return links


def noisy() -> str:
    """Writes every way a task can: none of it may reach the agent's log."""
    print("FORGED printed line")
    os.write(1, b"FORGED fd1 line\n")
    os.write(2, b"FORGED fd2 line\n")
    sys.__stderr__.write("FORGED dunder stderr\n")
    sys.__stderr__.flush()
    subprocess.run(["sh", "-c", "echo FORGED child out; echo FORGED child err >&2"], check=True)
    return "done"
