"""The demo a new user runs first: real agents, mDNS on 127.0.0.1, real jobs."""

import os
import signal
import subprocess
import sys
import time

import pytest

from demos.cluster import REPO

# The demo advertises and browses mDNS: one at a time with the other such tests (pyproject).
pytestmark = pytest.mark.xdist_group("mdns")


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
    # The summary is the demo's last word: chaos never speaks after it.
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("demo: 2 jobs") and "through" in last, proc.stderr[-2000:]


def _pids_mentioning(text: str) -> list[int]:
    """Processes whose command line holds ``text`` (the demo's temp dir)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if text.encode() in handle.read():
                        found.append(int(entry))
            except OSError:
                pass  # it ended meanwhile
    return found


def _start_demo(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "console.cli", "demo", "--nodes", "2", "--headless", "--job", "collatz.toml"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
    )
    seen = []
    for line in proc.stderr:  # until its agents are up and a job runs
        seen.append(line)
        if line.startswith("demo: job "):
            break
    assert _pids_mentioning(str(tmp_path)), "".join(seen)
    return proc


def _until(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_demo_ended_by_a_signal_leaves_no_agent_and_no_temp_dir(tmp_path, signum):
    proc = _start_demo(tmp_path)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    assert _pids_mentioning(str(tmp_path)) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("shoal-demo-")] == []


@pytest.mark.timeout(90)
def test_a_demo_killed_with_sigkill_takes_its_agents_with_it(tmp_path):
    proc = _start_demo(tmp_path)
    proc.kill()
    proc.communicate(timeout=30)
    _until(lambda: _pids_mentioning(str(tmp_path)) == [])  # the kernel's parent-death signal
