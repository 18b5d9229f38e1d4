"""The console as a user runs it: ``shoal console`` in a real terminal
(tmux), and a console attaching to a ``shoal run`` running in the
background. Real agent processes, real engine processes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from console.app import build_app, open_api
from console.screens.nodes import NodesScreen
from console.widgets.line_table import ListTable
from demos.cluster import REPO, LocalCluster
from engine.api import Engine
from tests.tui.conftest import TEST_HZ, until, wait_for

pytestmark = pytest.mark.timeout(90)

TMUX = shutil.which("tmux")
SLOW_JOB = 'name = "slow"\nfunction = "tests.tui.taskfns:slow_square"\ncount = 240\nreduce = "sum"\nretries = 0\n'
SLOW_RESULT = sum(i * i for i in range(240))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path, [2, 2]) as c:
        yield c


class Tmux:
    """One tmux server of our own (its own socket), so nothing else is touched."""

    def __init__(self) -> None:
        self.socket = f"shoal-test-{uuid.uuid4().hex[:8]}"

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([TMUX or "tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10)

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "console").stdout

    def alive(self) -> bool:
        return self("has-session", "-t", "console").returncode == 0

    def kill(self) -> None:
        self("kill-server")


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.skipif(TMUX is None, reason="needs tmux (apt-get install tmux) for a real terminal")
def test_shoal_console_in_a_real_terminal_quits_with_q_and_leaves_no_process(cluster, tmp_path):
    job_file = tmp_path / "squares.toml"
    job_file.write_text('name = "squares"\nfunction = "tests.tui.taskfns:square"\ncount = 30\nreduce = "sum"\n')
    nodes = [arg for address in cluster.addresses for arg in ("--node", address)]
    argv = [sys.executable, "-m", "console.cli", "console", str(job_file), "--trust-new",
            "--state-dir", str(cluster.state_dir), "--config-dir", str(cluster.config_dir), *nodes]
    # COLUMNS/LINES from pytest's terminal would override the pane's size.
    env = f"-u COLUMNS -u LINES PYTHONPATH={REPO} TERM=xterm-256color"
    tmux = Tmux()
    try:
        tmux("new-session", "-d", "-x", "120", "-y", "40", "-s", "console", "-c", str(REPO),
             f"env {env} {' '.join(argv)}; sleep 0.2")
        pid = int(tmux("display-message", "-p", "-t", "console", "#{pane_pid}").stdout.strip())
        wait_for(lambda: "SHOAL" in tmux.screen() and "squares" in tmux.screen(), 30, "the console's first frame")
        result = str(sum(i * i for i in range(30)))
        wait_for(lambda: "succeeded" in tmux.screen() and result in tmux.screen(), 30, "the job given on the command line, succeeded, with its result")
        assert "embedded" in tmux.screen()
        tmux("send-keys", "-t", "console", "1")
        wait_for(lambda: "Nodes" in tmux.screen() and tmux.screen().count(" up ") >= 2, 15, "two nodes up on the Nodes screen")
        tmux("send-keys", "-t", "console", "q")
        wait_for(lambda: not pid_exists(pid) or "SHOAL" not in tmux.screen(), 15, "the console to exit")
        wait_for(lambda: not tmux.alive(), 15, "the terminal to close")
        # No process left: neither the console nor a child of it.
        wait_for(lambda: not pid_exists(pid), 5, "the console process to be gone")
        leftovers = subprocess.run(["pgrep", "-f", str(cluster.state_dir)], capture_output=True, text=True).stdout.split()
        assert [p for p in leftovers if int(p) != os.getpid()] == []
    finally:
        tmux.kill()


async def test_console_attaches_to_a_background_shoal_run_drains_and_detaches(cluster, tmp_path):
    job_file = tmp_path / "slow.toml"
    job_file.write_text(SLOW_JOB)
    nodes = [arg for address in cluster.addresses for arg in ("--node", address)]
    run = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "console.cli", "run", str(job_file), "--json", "--trust-new",
        "--state-dir", str(cluster.state_dir), "--config-dir", str(cluster.config_dir), *nodes,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        socket = cluster.state_dir / "engine.sock"
        deadline = time.monotonic() + 30
        while not socket.exists():
            assert run.returncode is None and time.monotonic() < deadline, "shoal run did not start its engine"
            await asyncio.sleep(0.05)
        api = await open_api(cluster.state_dir, cluster.config_dir)  # what `shoal console` does
        assert api.attached
        app = build_app(api, config_dir=tmp_path / "settings", refresh_hz=TEST_HZ)
        async with app.run_test(size=(120, 30)) as pilot:
            await pilot.press("1")
            table = await until(pilot, lambda: isinstance(app.screen, NodesScreen) and app.screen.query_one(ListTable))
            await until(pilot, lambda: table.row_count == 2 and all("up" in str(r) for r in table.rows), what="two nodes up")
            drained = table.cursor_key
            await pilot.press("d")
            await until(pilot, lambda: "drain" in str(table.rows[table.keys.index(drained)]), what="node shown draining")
            await pilot.press("q")
        await api.close()
        out, err = await asyncio.wait_for(run.communicate(), 60)
        assert run.returncode == 0, err.decode()
        summary = json.loads(out)
        assert summary["result"] == SLOW_RESULT and summary["counts"]["succeeded"] == 240
    finally:
        if run.returncode is None:
            run.kill()
            await run.wait()
    # The drain is in the engine's audit table, by the console; after it, the
    # drained node started nothing.
    engine = await Engine.open(cluster.state_dir, cluster.config_dir)
    try:
        drains = [e for e in await engine.audit(50) if e.action == "drain"]
        assert drains and drains[0].actor.startswith("console") and drains[0].target == drained
        job_id = (await engine.jobs())[0].id
        late = []
        for offset in range(0, 240, 100):
            for task in (await engine.tasks(job_id, offset=offset, limit=100)).rows:
                detail = await engine.task(job_id, task.index)
                late += [a for a in detail.attempts if a.node == drained and a.started and a.started > drains[0].t + 0.5]
        assert late == []
    finally:
        await engine.close()
