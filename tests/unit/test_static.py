"""Type and lint checks run with the tests, so CI fails on a type error."""

import subprocess
import sys

from demos.cluster import REPO


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_mypy_strict_is_clean():
    done = _run("mypy", "engine", "nodeagent", "console", "demos")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_ruff_is_clean():
    done = _run("ruff", "check", "engine", "nodeagent", "console", "demos", "tests")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
