"""The engine against real `shoal agent` processes on loopback, real SQLite."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from demos.cluster import REPO, LocalCluster
from engine.api import Engine
from engine.spec import parse_job_text

pytestmark = pytest.mark.timeout(120)


def job(text: str, base: Path = REPO):
    return parse_job_text(text, source="test.toml", base_dir=base)


async def open_engine(cluster: LocalCluster, nodes: list[str] | None = None) -> Engine:
    engine = await Engine.open(
        cluster.state_dir, cluster.config_dir, nodes=cluster.addresses if nodes is None else nodes, trust_new=True
    )
    await engine.wait_for_nodes(len(cluster.addresses if nodes is None else nodes), timeout=30)
    return engine


def succeeded_rows(state_dir: Path, job_id: int) -> list[tuple[int, int]]:
    db = sqlite3.connect(state_dir / "shoal.db")
    try:
        return db.execute("SELECT idx, attempts FROM tasks WHERE job_id = ? AND status = 3 ORDER BY idx", (job_id,)).fetchall()
    finally:
        db.close()


@pytest.fixture
def cluster(tmp_path):
    with LocalCluster(tmp_path, [2, 2]) as c:
        yield c


def shoal(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "console.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def test_squares_job_file_runs_as_written(cluster):
    proc = shoal(
        "run", "demos/jobs/squares.toml", "--json", "--trust-new",
        "--state-dir", str(cluster.state_dir), "--config-dir", str(cluster.config_dir),
        *[arg for a in cluster.addresses for arg in ("--node", a)],
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["result"] == 333833500
    assert summary["counts"]["succeeded"] == 1000


def test_malformed_job_file_is_one_line_naming_line_and_field(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\ncommand = ["echo", "{item}"]\nitems = [1, 2]\ntimeout = "soon"\n')
    proc = shoal("run", str(bad), "--node", "127.0.0.1:1", "--state-dir", str(tmp_path / "s"), "--config-dir", str(tmp_path / "c"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "bad.toml:4" in proc.stderr and "timeout" in proc.stderr


async def test_python_callables_reduce_and_partial_results(cluster):
    engine = await open_engine(cluster)
    try:
        job_id = await engine.submit(job('name = "fact"\nfunction = "math:factorial"\nitems = { range = [0, 20] }\nreduce = "max"\n'))
        assert await engine.wait(job_id, timeout=60) == "succeeded"
        import math

        assert await engine.result(job_id) == math.factorial(19)
        values = [row["value"] for row in await engine.task_results(job_id)]
        assert values == [math.factorial(i) for i in range(20)]
    finally:
        await engine.close()


async def test_retries_with_backoff_then_failure_is_recorded(cluster):
    engine = await open_engine(cluster)
    try:
        job_id = await engine.submit(
            job('name = "flaky"\nshell = "echo oops >&2; exit 3"\ncount = 2\nretries = 2\nbackoff = { base = "50ms", cap = "200ms" }\n')
        )
        assert await engine.wait(job_id, timeout=60) == "failed"
        rows = await engine.task_results(job_id)
        assert [r["status"] for r in rows] == ["failed", "failed"]
        assert all(r["attempts"] == 3 and r["exit_code"] == 3 for r in rows)
        assert "oops" in rows[0]["stderr"]
    finally:
        await engine.close()


async def test_timeout_fails_the_attempt(cluster):
    engine = await open_engine(cluster)
    try:
        started = time.monotonic()
        job_id = await engine.submit(job('name = "slow"\ncommand = ["sleep", "30"]\ncount = 1\nretries = 0\ntimeout = "500ms"\n'))
        assert await engine.wait(job_id, timeout=30) == "failed"
        assert time.monotonic() - started < 15
        assert "timed out" in (await engine.task_results(job_id))[0]["error"]
    finally:
        await engine.close()


async def test_lost_node_tasks_rerun_exactly_once(cluster):
    engine = await open_engine(cluster)
    try:
        job_id = await engine.submit(job('name = "sleepy"\nshell = "sleep 0.2; echo {item}"\nitems = { range = [0, 40] }\nreduce = "sum"\n'))
        deadline = time.monotonic() + 30
        while (await engine.job(job_id)).counts["succeeded"] < 5:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        cluster.agents[0].kill(signal.SIGKILL)
        assert await engine.wait(job_id, timeout=60) == "succeeded"
        assert await engine.result(job_id) == sum(range(40))
        rows = succeeded_rows(cluster.state_dir, job_id)
        assert [idx for idx, _ in rows] == list(range(40))
    finally:
        await engine.close()


async def test_poison_task_fails_instead_of_killing_every_node(tmp_path):
    with LocalCluster(tmp_path, [1, 1, 1]) as cluster:
        engine = await open_engine(cluster)
        try:
            # Item 0 kills the agent that runs it; every other item is fine.
            spec = job(
                'name = "poison"\nshell = "if [ {item} = 0 ]; then kill -9 $PPID; sleep 5; fi; echo {item}"\n'
                'items = { range = [0, 6] }\nmax_node_failures = 2\nreduce = "sum"\n'
            )
            job_id = await engine.submit(spec)
            assert await engine.wait(job_id, timeout=60) == "failed"
            rows = {r["index"]: r for r in await engine.task_results(job_id)}
            assert rows[0]["status"] == "failed" and "poison" in rows[0]["error"]
            assert all(rows[i]["status"] == "succeeded" for i in range(1, 6))
            assert await engine.result(job_id) == sum(range(1, 6))
        finally:
            await engine.close()


async def test_drain_with_requeue_moves_running_tasks_and_undrain_restores(cluster):
    engine = await open_engine(cluster)
    try:
        a, b = cluster.addresses
        job_id = await engine.submit(job('name = "drain"\nshell = "sleep 0.3; echo 1"\ncount = 16\nreduce = "sum"\n'))
        await asyncio.sleep(0.2)
        await engine.drain(a, requeue=True)
        assert await engine.wait(job_id, timeout=60) == "succeeded"
        assert await engine.result(job_id) == 16
        nodes = {r["node"]: r for r in await engine.task_results(job_id)}
        assert set(nodes) == {b} or a not in {r["node"] for r in (await engine.task_results(job_id))[8:]}
        await engine.undrain(a)
        job2 = await engine.submit(job('name = "after"\nshell = "sleep 0.2; echo 1"\ncount = 8\nreduce = "sum"\n'))
        assert await engine.wait(job2, timeout=60) == "succeeded"
        assert a in {r["node"] for r in await engine.task_results(job2)}
    finally:
        await engine.close()


async def test_resubmit_failed_tasks_and_cancel(cluster, tmp_path):
    marker = tmp_path / "ok"
    engine = await open_engine(cluster)
    try:
        # Fails until the marker file exists.
        job_id = await engine.submit(job(f'name = "fix"\nshell = "test -e {marker} && echo 2"\ncount = 3\nretries = 0\nreduce = "sum"\n'))
        assert await engine.wait(job_id, timeout=60) == "failed"
        marker.write_text("")
        assert await engine.resubmit(job_id) == 3
        assert await engine.wait(job_id, timeout=60) == "succeeded"
        assert await engine.result(job_id) == 6
        long = await engine.submit(job('name = "long"\ncommand = ["sleep", "30"]\ncount = 10\n'))
        await asyncio.sleep(0.3)
        await engine.cancel(long)
        assert await engine.wait(long, timeout=30) == "cancelled"
    finally:
        await engine.close()


async def test_labels_and_heterogeneous_slots(tmp_path):
    with LocalCluster(tmp_path, [1, 3], labels=["", "gpu=yes"]) as cluster:
        engine = await open_engine(cluster)
        try:
            plain, gpu = cluster.addresses
            only_gpu = await engine.submit(job('name = "g"\nshell = "echo 1"\ncount = 6\nlabels = { gpu = "yes" }\nreduce = "sum"\n'))
            assert await engine.wait(only_gpu, timeout=60) == "succeeded"
            assert {r["node"] for r in await engine.task_results(only_gpu)} == {gpu}
            spread = await engine.submit(job('name = "s"\nshell = "sleep 0.3; echo 1"\ncount = 24\nreduce = "sum"\n'))
            assert await engine.wait(spread, timeout=60) == "succeeded"
            per_node = [r["node"] for r in await engine.task_results(spread)]
            assert per_node.count(gpu) > per_node.count(plain)
        finally:
            await engine.close()


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_a_run_stopped_midway_resumes_and_runs_each_task_once(cluster, tmp_path, stop):
    """Executions are counted, not only stored rows: each task appends its item
    to a file when it runs, so a task re-run after the restart shows twice
    even though its second result would be stored once."""
    executions = tmp_path / "executions"
    jobfile = tmp_path / "resume.toml"
    jobfile.write_text(
        f'name = "resume"\nshell = "echo {{item}} >> {executions}; sleep 0.1; echo {{item}}"\n'
        'items = { range = [0, 60] }\nreduce = "sum"\n'
    )
    args = [
        sys.executable, "-m", "console.cli", "run", str(jobfile), "--json", "--trust-new",
        "--state-dir", str(cluster.state_dir), "--config-dir", str(cluster.config_dir),
        *[arg for a in cluster.addresses for arg in ("--node", a)],
    ]
    first = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    db_path = cluster.state_dir / "shoal.db"
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, "no progress before the stop"
        if db_path.exists():
            try:
                db = sqlite3.connect(db_path)
                done = db.execute("SELECT count(*) FROM tasks WHERE status = 3").fetchone()[0]
                db.close()
            except sqlite3.Error:
                done = 0
            if done >= 10:
                break
        time.sleep(0.05)
    first.send_signal(stop)
    _, stderr = first.communicate(timeout=30)
    if stop == signal.SIGINT:
        assert first.returncode == 130 and b"Traceback" not in stderr, stderr
    second = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=90)
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout)
    assert summary["result"] == sum(range(60))
    assert "resuming" in second.stderr
    rows = succeeded_rows(cluster.state_dir, summary["job"])
    assert [idx for idx, _ in rows] == list(range(60))
    ran = sorted(int(item) for item in executions.read_text().split())
    assert ran == list(range(60)), f"run twice: {sorted({i for i in ran if ran.count(i) > 1})}"


async def test_node_that_comes_back_is_reconnected_and_used_again(cluster):
    engine = await open_engine(cluster)
    try:
        agent = cluster.agents[0]
        agent.kill(signal.SIGKILL)
        deadline = time.monotonic() + 20
        while any(n.state == "up" for n in (await engine.nodes()) if n.id == agent.address):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.to_thread(agent.start, cluster.authorized_keys, agent.port)
        await engine.wait_for_nodes(2, timeout=40)
        job_id = await engine.submit(job('name = "back"\nshell = "sleep 0.2; echo 1"\ncount = 12\nreduce = "sum"\n'))
        assert await engine.wait(job_id, timeout=60) == "succeeded"
        assert agent.address in {r["node"] for r in await engine.task_results(job_id)}
    finally:
        await engine.close()


def test_failed_tasks_exit_1_and_results_export_as_csv_and_json(cluster, tmp_path):
    jobfile = tmp_path / "half.toml"
    jobfile.write_text('name = "half"\nshell = "test $(( {item} % 2 )) -eq 0 && echo {item}"\nitems = [1, 2, 3, 4]\nretries = 0\nreduce = "sum"\n')
    common = ["--state-dir", str(cluster.state_dir)]
    run = shoal("run", str(jobfile), "--trust-new", "--config-dir", str(cluster.config_dir), *common,
                *[arg for a in cluster.addresses for arg in ("--node", a)])
    assert run.returncode == 1, run.stderr
    assert run.stdout.strip() == "6"
    assert "task 0 failed" in run.stderr
    as_csv = shoal("results", "1", "--csv", *common)
    lines = as_csv.stdout.strip().splitlines()
    assert lines[0] == "index,item,status,value,error,node,attempts,duration" and len(lines) == 5
    assert lines[1].startswith("0,1,failed,") and lines[2].startswith("1,2,succeeded,2,")
    as_json = json.loads(shoal("results", "1", "--json", *common).stdout)
    assert as_json["result"] == 6 and [t["status"] for t in as_json["tasks"]] == ["failed", "succeeded"] * 2
    listing = json.loads(shoal("jobs", "--json", *common).stdout)
    assert listing[0]["status"] == "failed"


async def test_stopped_agent_is_lost_by_missed_heartbeats_then_rejoins(cluster):
    engine = await open_engine(cluster)
    stopped = cluster.agents[0]
    try:
        job_id = await engine.submit(job('name = "stop"\nshell = "sleep 0.2; echo {item}"\nitems = { range = [0, 40] }\nreduce = "sum"\n'))
        deadline = time.monotonic() + 30
        while (await engine.job(job_id)).counts["succeeded"] < 4:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        stopped.proc.send_signal(signal.SIGSTOP)
        lost_by = time.monotonic() + 10
        while next(n for n in (await engine.nodes()) if n.id == stopped.address).state == "up":
            assert time.monotonic() < lost_by, "missed heartbeats were not noticed"
            await asyncio.sleep(0.05)
        stopped.proc.send_signal(signal.SIGCONT)
        assert await engine.wait(job_id, timeout=60) == "succeeded"
        assert await engine.result(job_id) == sum(range(40))
        assert [idx for idx, _ in succeeded_rows(cluster.state_dir, job_id)] == list(range(40))
        await engine.wait_for_nodes(2, timeout=40)  # it rejoins through a fresh handshake
    finally:
        if stopped.proc and stopped.proc.poll() is None:
            stopped.proc.send_signal(signal.SIGCONT)
        await engine.close()
