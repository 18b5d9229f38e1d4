"""The demo a new user runs first: real agents, mDNS on 127.0.0.1, real jobs."""

import subprocess
import sys

import pytest

from demos.cluster import REPO


@pytest.mark.timeout(120)
def test_demo_cluster_runs_example_jobs_with_chaos():
    proc = subprocess.run(
        [sys.executable, "-m", "console.cli", "demo", "--nodes", "3", "--chaos", "--job", "collatz.toml", "--job", "wordcount.toml"],
        capture_output=True, text=True, timeout=110, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"n": 6171' in proc.stdout and '"steps": 261' in proc.stdout
    assert "each task exactly once" in proc.stderr
    assert "Traceback" not in proc.stderr
