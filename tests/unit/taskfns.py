"""Call-task targets for the executor tests, imported inside worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import nodeagent


def add(a: int, b: int) -> int:
    return a + b


def fail(message: str) -> None:
    raise ValueError(message)


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def hog_the_gil() -> int:
    """Loops in C without ever releasing the GIL: the worker cannot answer."""
    return sum(range(10**13))


def exit_hard(code: int) -> None:
    os._exit(code)


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def unsendable() -> set[int]:
    return {1, 2}


def env_and_cwd(name: str) -> list[Any]:
    return [os.environ.get(name), os.getcwd()]


def chatty(lines: int) -> int:
    for i in range(lines):
        print(f"line {i}")
    print("oops", file=sys.stderr)
    return lines


def halfway() -> str:
    nodeagent.progress(0.5, "half")
    return "done"


def worker_pid() -> int:
    return os.getpid()


def spawn_sleepers(pid_file: str) -> None:
    """Start two grandchildren, note their pids, then wait forever."""
    children = [subprocess.Popen(["sleep", "100"]) for _ in range(2)]
    with open(pid_file, "w") as f:
        f.write(" ".join(str(child.pid) for child in children))
    time.sleep(100)
