"""Local clients steer a running engine over its Unix socket."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import stat
import subprocess
import sys

import pytest

from demos.cluster import REPO, LocalCluster
from engine import events as ev
from engine.api import Engine
from engine.control import SOCKET_NAME, connect
from engine.interface import EngineError
from tests.integration.test_engine import job, open_engine

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def cluster(tmp_path):
    with LocalCluster(tmp_path, [1, 1]) as c:
        yield c


def shoal(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "console.cli", *args], capture_output=True, text=True, timeout=60, cwd=REPO)


async def test_remote_client_sees_the_same_api_and_events(cluster):
    engine = await open_engine(cluster)
    try:
        path = cluster.state_dir / SOCKET_NAME
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        remote = await connect(cluster.state_dir)
        async with remote:
            stream = remote.subscribe()
            job_id = await remote.submit(job('name = "r"\nshell = "sleep 0.2; echo 3"\ncount = 4\nreduce = "sum"\n'))
            assert await remote.wait(job_id, timeout=30) == "succeeded"
            assert await remote.result(job_id) == 12 == await engine.result(job_id)
            assert (await remote.job(job_id)).counts["succeeded"] == 4
            assert {n.id for n in await remote.nodes()} == set(cluster.addresses)
            seen = []

            async def until_finished() -> None:
                async for event in stream:
                    seen.append(event)
                    if isinstance(event, ev.JobFinished) and event.job == job_id:
                        return

            await asyncio.wait_for(until_finished(), 10)
            stream.close()
            assert any(isinstance(e, ev.TaskChanged) and e.status == "succeeded" for e in seen)
            with pytest.raises(EngineError, match="unknown call"):
                await remote.call("__class__")
            with pytest.raises(EngineError, match="no node"):
                await remote.drain("nowhere:1")
    finally:
        await engine.close()
    assert not (cluster.state_dir / SOCKET_NAME).exists()


async def test_companion_commands_steer_a_running_engine_and_are_audited(cluster, tmp_path):
    engine = await open_engine(cluster)
    marker = tmp_path / "fixed"
    state = str(cluster.state_dir)
    try:
        a, _ = cluster.addresses
        drained = await asyncio.to_thread(shoal, "drain", a, "--state-dir", state)
        assert drained.returncode == 0, drained.stderr
        job_id = await engine.submit(job(f'name = "c"\nshell = "test -e {marker} && echo 1"\ncount = 3\nretries = 0\nreduce = "sum"\n'))
        assert await engine.wait(job_id, timeout=30) == "failed"
        assert a not in {r["node"] for r in await engine.task_results(job_id)}
        marker.write_text("")
        again = await asyncio.to_thread(shoal, "resubmit", str(job_id), "--state-dir", state, "--json")
        assert again.returncode == 0, again.stderr
        assert await engine.wait(job_id, timeout=30) == "succeeded"
        assert (await asyncio.to_thread(shoal, "undrain", a, "--state-dir", state)).returncode == 0
        long = await engine.submit(job('name = "long"\ncommand = ["sleep", "30"]\ncount = 4\n'))
        cancelled = await asyncio.to_thread(shoal, "cancel", str(long), "--state-dir", state)
        assert cancelled.returncode == 0, cancelled.stderr
        assert await engine.wait(long, timeout=30) == "cancelled"
        listing = await asyncio.to_thread(shoal, "nodes", "--state-dir", state, "--json")
        assert {n["state"] for n in __import__("json").loads(listing.stdout)} == {"up"}
        unknown = await asyncio.to_thread(shoal, "cancel", "77", "--state-dir", state)
        assert unknown.returncode == 2 and unknown.stderr.strip() == "shoal: no job 77 (see 'shoal jobs')"
    finally:
        await engine.close()
    db = sqlite3.connect(cluster.state_dir / "shoal.db")
    actions = db.execute("SELECT actor, action FROM audit").fetchall()
    db.close()
    by_action = {action: actor for actor, action in actions}
    for action in ("drain", "undrain", "resubmit", "cancel"):
        assert by_action[action] == f"shoal {action}@socket:uid={os.getuid()}" or by_action[action].startswith(
            f"shoal {action}@socket:uid={os.getuid()},pid="
        )


async def test_garbage_on_the_socket_gets_an_error_and_the_engine_keeps_serving(cluster):
    engine = await open_engine(cluster)
    try:
        raw = socket.socket(socket.AF_UNIX)
        raw.connect(str(cluster.state_dir / SOCKET_NAME))
        raw.sendall(b"\xc1\xc1 definitely not msgpack")
        raw.settimeout(5)
        reply = await asyncio.to_thread(raw.recv, 4096)
        raw.close()
        assert b"malformed" in reply
        async with await connect(cluster.state_dir) as remote:
            assert await remote.jobs() == []
    finally:
        await engine.close()


async def test_one_engine_per_state_dir(cluster):
    engine = await open_engine(cluster)
    try:
        with pytest.raises(RuntimeError, match="another shoal engine"):
            await Engine.open(cluster.state_dir, cluster.config_dir)
        busy = await asyncio.to_thread(
            shoal, "run", "demos/jobs/squares.toml", "--node", cluster.addresses[0], "--state-dir", str(cluster.state_dir)
        )
        assert busy.returncode == 2
        assert len(busy.stderr.strip().splitlines()) == 1 and "another shoal engine" in busy.stderr
    finally:
        await engine.close()
    no_engine = await asyncio.to_thread(shoal, "drain", "x:1", "--state-dir", str(cluster.state_dir))
    assert no_engine.returncode == 2 and "no shoal engine is running" in no_engine.stderr


async def test_shoal_events_tails_the_stream_as_json_lines(cluster):
    engine = await open_engine(cluster)
    try:
        done = await engine.submit(job('name = "e"\nshell = "echo 5"\ncount = 2\nreduce = "sum"\n'))
        assert await engine.wait(done, timeout=30) == "succeeded"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "console.cli", "events", "--json", "--job", str(done), "--kind", "JobFinished",
            "--since", "0", "--state-dir", str(cluster.state_dir), cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            event = __import__("json").loads(line)
            assert (event["event"], event["job"], event["status"], event["result"]) == ("JobFinished", done, "succeeded", 10)
            assert event["seq"] > 0 and event["t"] > 0
            bad = await asyncio.to_thread(shoal, "events", "--kind", "Bogus", "--state-dir", str(cluster.state_dir))
            assert bad.returncode == 2 and "unknown event kind" in bad.stderr and "Traceback" not in bad.stderr
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.communicate(), 10)  # to the pipes' end: its transport closes now
    finally:
        await engine.close()
    gone = await asyncio.to_thread(shoal, "events", "--state-dir", str(cluster.state_dir))
    assert gone.returncode == 2 and "no shoal engine is running" in gone.stderr
