"""Issue 11 item 13: an agent stopped (SIGSTOP) long enough for the engine to
drop it, then resumed (SIGCONT), writes to a channel the engine has closed.
That is a closed session, said in one info line: no traceback in the agent's
log, and the results it journaled reach the engine on the next connection."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgpack
import psutil
import pytest

from demos.cluster import REPO, AgentProcess, LocalCluster
from engine.api import Engine
from engine.spec import parse_job_text
from nodeagent.journal import JOURNAL_FILE, REC_ACK, REC_RESULT

pytestmark = pytest.mark.timeout(120)


def journaled(state_dir: Path, owner: str) -> tuple[set[str], set[str]]:
    """(attempt ids with a result, attempt ids acked) in an agent's journal."""
    results: set[str] = set()
    acked: set[str] = set()
    with open(state_dir / JOURNAL_FILE, "rb") as handle:
        for record in msgpack.Unpacker(handle, raw=False):
            if record[1] != owner:
                continue
            if record[0] == REC_RESULT:
                results.add(record[2])
            elif record[0] == REC_ACK:
                acked.update(record[2])
    return results, acked


@asynccontextmanager
async def one_agent(tmp_path: Path) -> AsyncIterator[tuple[Engine, AgentProcess]]:
    """An engine on one real 4-slot agent; afterwards the agent is resumed if
    a test left it stopped, and everything is stopped."""
    cluster = LocalCluster(tmp_path, [4]).start()
    agent = cluster.agents[0]
    assert agent.proc is not None
    engine = await Engine.open(cluster.state_dir, cluster.config_dir, nodes=cluster.addresses)
    try:
        await engine.wait_for_nodes(1, timeout=30)
        yield engine, agent
    finally:
        if agent.proc.poll() is None:
            agent.proc.send_signal(signal.SIGCONT)
        await engine.close()
        cluster.stop()


async def until(condition, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.05)


async def stop_until_dropped(engine: Engine, agent, job_id: int) -> set[str]:
    """SIGSTOP the agent once 4 of its tasks run, until the engine gives up on
    it (missed heartbeats) and closes the connection, while the stopped
    agent's workers finish its tasks. The attempts in flight at the stop."""

    async def four_running() -> bool:
        return (await engine.job(job_id)).counts.get("running", 0) >= 4

    await until(four_running, "4 tasks running", 20)
    in_flight = set(engine.coordinator.core.attempts)
    agent.proc.send_signal(signal.SIGSTOP)

    async def dropped() -> bool:
        return (await engine.nodes())[0].state != "up"

    await until(dropped, "the stopped agent declared lost", 15)
    return in_flight


async def test_an_agent_resumed_after_the_engine_dropped_it_ends_the_session_quietly_and_delivers_its_results(tmp_path, caplog):
    async with one_agent(tmp_path) as (engine, agent):
        assert agent.proc is not None
        spec = parse_job_text(
            'name = "resumed"\nshell = "sleep 1; echo {item}"\nitems = { range = [0, 8] }\nreduce = "sum"\n',
            source="resumed.toml", base_dir=REPO,
        )
        job_id = await engine.submit(spec)
        in_flight = await stop_until_dropped(engine, agent, job_id)
        stopped, engine_process = psutil.Process(agent.proc.pid), psutil.Process()

        async def redialed() -> bool:
            # The engine's close of the old connection sits unread in the
            # stopped agent's socket, and its redial in the listen backlog:
            # on SIGCONT the agent has results to write and learns of both.
            closed = any(c.status == psutil.CONN_CLOSE_WAIT for c in stopped.net_connections(kind="tcp"))
            return closed and any(
                c.raddr and c.raddr.port == agent.port and c.status == psutil.CONN_ESTABLISHED
                for c in engine_process.net_connections(kind="tcp")
            )

        await until(redialed, "the engine's close and redial pending at the stopped agent", 15)
        agent.proc.send_signal(signal.SIGCONT)
        assert await engine.wait(job_id, timeout=60) == "succeeded"
        assert await engine.result(job_id) == sum(range(8))
        owner = engine.coordinator.console_id

        async def all_acked() -> bool:
            results, acked = journaled(agent.state_dir, owner)
            return in_flight <= results and results <= acked

        # What ran while the agent was cut off was journaled, sent again on
        # the new connection and acknowledged by the engine.
        await until(all_acked, "the journaled results delivered and acked", 20)
    assert agent.proc.stderr is not None
    log = agent.proc.stderr.read().decode(errors="replace")
    assert "Traceback" not in log and "BrokenPipeError" not in log, log
    # The agent did write to the dead channel, and said so once, plainly.
    closed = [line for line in log.splitlines() if "channel closed" in line]
    assert len(closed) == 1 and "results stay journaled for its next connection" in closed[0], log
    # Nor a traceback on the engine's side (asyncio logs an exception that
    # escapes a callback with exc_info).
    assert not [record for record in caplog.records if record.exc_info], caplog.text


async def test_tasks_of_an_agent_dropped_and_back_run_once(tmp_path):
    """Its hello lists what it still runs and the results it still has: the
    engine takes those attempts back instead of running the tasks again."""
    runs = tmp_path / "runs.txt"
    async with one_agent(tmp_path) as (engine, agent):
        assert agent.proc is not None
        spec = parse_job_text(
            f'name = "once"\nshell = "echo {{item}} >> {runs}; sleep 1; echo {{item}}"\n'
            'items = { range = [0, 12] }\nreduce = "sum"\n',
            source="once.toml", base_dir=REPO,
        )
        job_id = await engine.submit(spec)
        await stop_until_dropped(engine, agent, job_id)
        counts = (await engine.job(job_id)).counts
        assert counts["running"] + counts["sent"] == 0  # its attempts ended in the engine's eyes
        agent.proc.send_signal(signal.SIGCONT)
        assert await engine.wait(job_id, timeout=60) == "succeeded"
        assert await engine.result(job_id) == sum(range(12))
    executed = sorted(int(line) for line in runs.read_text().split())
    assert executed == list(range(12)), executed  # each task ran once
