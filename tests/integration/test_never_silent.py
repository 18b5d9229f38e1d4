"""Issue 11, "never silent, never wrong": each fault a new user met, through
the real `shoal` command and real agents on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from demos.cluster import REPO, LocalCluster


def shoal(*args: str, env: dict[str, str] | None = None, timeout: float = 90, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "console.cli", *args],
        capture_output=True, text=True, timeout=timeout, cwd=kwargs.pop("cwd", REPO), env=env, **kwargs,
    )


@pytest.fixture
def cluster(tmp_path: Path):
    with LocalCluster(tmp_path, [2, 1]) as running:
        yield running


def cluster_env(cluster: LocalCluster) -> dict[str, str]:
    return {**os.environ, "SHOAL_STATE_DIR": str(cluster.state_dir), "SHOAL_CONFIG_DIR": str(cluster.config_dir)}


def node_flags(cluster: LocalCluster) -> list[str]:
    return [flag for address in cluster.addresses for flag in ("--node", address)]


@pytest.mark.timeout(120)
def test_demo_flaky_job_fails_each_item_first_one_or_two_attempts_then_succeeds(cluster):
    env = cluster_env(cluster)
    run = shoal("run", "demos/jobs/flaky.toml", *node_flags(cluster), "--json", env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    assert report["result"] == 40 and report["counts"]["succeeded"] == 40
    rows = json.loads(shoal("results", str(report["job"]), "--json", env=env).stdout)["tasks"]
    assert [row["attempts"] for row in rows] == [2 + index % 2 for index in range(40)]
