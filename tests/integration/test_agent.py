"""A real agent (asyncssh server, real executor and workers) driven through
engine.link, the way the console drives it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import msgpack
import psutil
import pytest

from engine.link import KEX_ALGS, AgentRefused, LinkClosed, open_link
from nodeagent.protocol import (
    ERR_STATE,
    ERR_VERSION,
    KIND_CALL,
    KIND_SHELL,
    OUTCOME_CANCELLED,
    OUTCOME_CRASHED,
    OUTCOME_ERROR,
    OUTCOME_TIMEOUT,
    PROTOCOL_VERSION,
    Cancel,
    Drain,
    Error,
    Finished,
    FrameDecoder,
    Heartbeat,
    Hello,
    Output,
    Progress,
    Rejected,
    Started,
    TaskSpec,
    Undrain,
    encode,
)
from tests.integration.conftest import ConsoleProbe, shell

pytestmark = pytest.mark.timeout(60)


def call(fn: str, *args: object, **fields: object) -> TaskSpec:
    return TaskSpec(id=shell("").id, kind=KIND_CALL, fn=fn, args=list(args), **fields)


async def poll(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` with a deadline (for state with no event to await)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


# --- tasks end to end ----------------------------------------------------------------


async def test_shell_task_streams_output_and_keeps_its_tail(agent):
    console = await agent.console()
    task = shell("echo one; echo two >&2")
    console.run(task)
    result = (await console.results([task.id]))[task.id]
    assert result.ok and result.exit_code == 0
    assert (result.stdout, result.stderr) == (b"one\n", b"two\n")
    streamed = [m for m in console.seen if isinstance(m, Output) and m.id == task.id]
    assert b"".join(m.data for m in streamed if m.stream == "stdout") == b"one\n"
    assert b"".join(m.data for m in streamed if m.stream == "stderr") == b"two\n"


async def test_failing_shell_task_reports_its_exit_code(agent):
    console = await agent.console()
    task = shell("echo bad >&2; exit 3")
    console.run(task)
    result = (await console.results([task.id]))[task.id]
    assert (result.outcome, result.exit_code, result.stderr) == (OUTCOME_ERROR, 3, b"bad\n")


async def test_python_call_returns_its_value_and_exceptions_come_back(agent):
    console = await agent.console()
    good, bad = call("operator:add", 2, 3), call("operator:truediv", 1, 0)
    console.run(good, bad)
    results = await console.results([good.id, bad.id])
    assert results[good.id].ok and results[good.id].value == 5
    assert results[bad.id].outcome == OUTCOME_ERROR
    assert "ZeroDivisionError" in results[bad.id].error and results[bad.id].traceback


async def test_progress_line_of_a_shell_task_is_reported(agent):
    console = await agent.console()
    task = shell("echo '::shoal-progress 0.5 halfway'; sleep 0.2")
    console.run(task)
    progress = await console.next(Progress, lambda p: p.id == task.id)
    assert (progress.fraction, progress.message) == (0.5, "halfway")
    assert (await console.results([task.id]))[task.id].ok


async def test_timeout_kills_the_whole_process_group(agent, tmp_path):
    console = await agent.console()
    pid_file = tmp_path / "child.pid"
    task = shell(f"sleep 30 & echo $! > {pid_file}; wait", timeout=0.5)
    console.run(task)
    result = (await console.results([task.id], timeout=10))[task.id]
    assert result.outcome == OUTCOME_TIMEOUT
    child = int(pid_file.read_text())
    await poll(lambda: not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE,
               what="the background sleep to die")


async def test_worker_crash_is_reported_and_the_slot_recovers(agent):
    console = await agent.console()
    crash = call("os:_exit", 7)
    console.run(crash)
    assert (await console.results([crash.id]))[crash.id].outcome == OUTCOME_CRASHED
    after = call("operator:mul", 6, 7)
    console.run(after)
    assert (await console.results([after.id]))[after.id].value == 42


async def test_cancel_stops_a_running_task(agent):
    console = await agent.console()
    task = shell("sleep 30")
    console.run(task)
    await console.next(Started, lambda s: task.id in s.ids)
    console.send(Cancel(ids=[task.id]))
    result = (await console.results([task.id], timeout=10))[task.id]
    assert result.outcome == OUTCOME_CANCELLED


# --- agent state seen by consoles ------------------------------------------------------------


async def test_heartbeats_arrive_about_once_a_second(agent):
    console = await agent.console()
    loop = asyncio.get_running_loop()
    stamps = []
    for _ in range(3):
        beat = await console.next(Heartbeat, timeout=3)
        stamps.append(loop.time())
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    # The first beat comes with the hello; the rest follow the 1 s grid.
    assert all(0.4 < gap < 1.6 for gap in gaps[1:]), gaps
    assert beat.slots_total == 2 and len(beat.load) == 3
    assert 0 <= beat.cpu <= 100 and 0 < beat.mem <= 100


async def test_drain_is_seen_by_every_console_and_refuses_new_work(agent):
    operator, other = await agent.console("operator"), await agent.console("other")
    operator.send(Drain())
    await other.next(Heartbeat, lambda h: h.drained)
    refused = shell("echo never")
    other.run(refused)
    rejected = await other.next(Rejected)
    assert rejected.ids == [refused.id] and rejected.reason
    late = await agent.console("late")
    assert late.hello.drained

    operator.send(Undrain())
    await other.next(Heartbeat, lambda h: not h.drained)
    accepted = shell("echo now")
    other.run(accepted)
    assert (await other.results([accepted.id]))[accepted.id].stdout == b"now\n"


async def test_each_console_gets_only_its_own_results(agent):
    first, second = await agent.console("first"), await agent.console("second")
    mine, theirs = shell("echo first"), shell("echo second")
    first.run(mine)
    second.run(theirs)
    assert (await second.results([theirs.id]))[theirs.id].stdout == b"second\n"
    assert (await first.results([mine.id]))[mine.id].stdout == b"first\n"
    assert not any(isinstance(m, Finished) and theirs.id in [r.id for r in m.results] for m in first.seen)


# --- journal and reconnects -----------------------------------------------------------------


async def test_results_wait_in_the_journal_until_acknowledged(agent):
    executor = agent.agent.hub.executor
    console = await agent.console("roamer")
    task = shell("sleep 0.3; echo done")
    console.run(task)
    await console.next(Started, lambda s: task.id in s.ids)
    await console.close()
    # The task ends while no session of this console exists.
    await poll(lambda: any(r.id == task.id for r in executor.unacked("roamer")), what="the result to be journaled")

    back = await agent.console("roamer")
    assert back.hello.holding == [task.id]  # held: its result follows the hello
    result = (await back.results([task.id], ack=False))[task.id]
    assert result.ok and result.stdout == b"done\n"
    await back.close()

    again = await agent.console("roamer")  # not acknowledged: sent again
    assert (await again.results([task.id]))[task.id].ok  # ...and acknowledged now
    await again.close()

    last = await agent.console("roamer")
    # Unacked results go out in the first flush with the first heartbeat.
    await last.next(Heartbeat)
    assert not any(isinstance(m, Finished) for m in last.seen)


async def test_reconnecting_console_replaces_its_old_session(agent):
    old = await agent.console("same-id")
    new = await agent.console("same-id")
    messages = await old.closed()
    assert any(isinstance(m, Error) and m.code == ERR_STATE for m in messages)
    task = shell("echo still here")
    new.run(task)
    assert (await new.results([task.id]))[task.id].ok


async def test_running_task_is_listed_in_hello_holding(agent):
    console = await agent.console("holder")
    task = shell("sleep 30")
    console.run(task)
    await console.next(Started, lambda s: task.id in s.ids)
    await console.close()
    back = await agent.console("holder")
    assert task.id in back.hello.holding
    back.send(Cancel(ids=[task.id]))
    assert (await back.results([task.id]))[task.id].outcome == OUTCOME_CANCELLED


# --- the shoal agent process --------------------------------------------------------------


def _process_tree(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def _console_for(process, client_key: asyncssh.SSHKey, state_dir: Path) -> ConsoleProbe:
    host_key = asyncssh.read_private_key(state_dir / "host_key")
    return ConsoleProbe(
        await open_link("127.0.0.1", process.port, client_key=client_key, console_id="cli", pinned_host_key=host_key)
    )


async def test_agent_process_serves_a_task_and_exits_cleanly_on_sigterm(agent_process, client_key, tmp_path):
    state_dir = tmp_path / "proc"
    process = await agent_process("--slots", "2", state_dir=state_dir)
    console = await _console_for(process, client_key, state_dir)
    slow = shell("sleep 30")
    console.run(slow)
    await console.next(Started, lambda s: slow.id in s.ids)
    quick = shell("echo served")
    console.run(quick)
    assert (await console.results([quick.id]))[quick.id].stdout == b"served\n"
    workers = _process_tree(process.proc.pid)
    assert workers

    process.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.proc.wait(), 15) == 0
    await poll(lambda: not any(_alive(w) for w in workers), what="workers to exit")


async def test_killed_agent_process_leaves_no_worker_behind(agent_process, client_key, tmp_path):
    state_dir = tmp_path / "proc"
    process = await agent_process("--slots", "2", state_dir=state_dir)
    console = await _console_for(process, client_key, state_dir)
    # One task in a Python worker, one a direct child of the agent: a shell
    # task's grandchildren are beyond the agent's reach (see executor.py).
    in_worker = call("time:sleep", 30)
    child = TaskSpec(id=shell("").id, kind=KIND_SHELL, argv=["sleep", "30"])
    console.run(in_worker, child)
    await console.next(Started, lambda s: child.id in s.ids)
    await poll(lambda: len(_process_tree(process.proc.pid)) >= 3, what="the worker and the child to run")
    workers = _process_tree(process.proc.pid)

    os.kill(process.proc.pid, signal.SIGKILL)
    await asyncio.wait_for(process.proc.wait(), 10)
    await poll(lambda: not any(_alive(w) for w in workers), timeout=10, what="orphaned workers to exit")
    console.link.close()


async def test_report_start_gets_the_start_and_earlier_results_out_before_the_task_runs(
    agent_process, client_key, tmp_path
):
    # One slot: "before" finishes while two tasks still wait, so its result
    # would be held back for coalescing; the suspect kills its agent at once.
    state_dir = tmp_path / "suspect"
    process = await agent_process("--slots", "1", state_dir=state_dir)
    console = await _console_for(process, client_key, state_dir)
    before = shell("true")
    suspect = shell("kill -9 $PPID; sleep 5", report_start=True)
    behind = shell("true")
    console.run(before, suspect, behind)
    messages = await console.closed()
    await asyncio.wait_for(process.proc.wait(), 10)
    finished = {r.id for m in messages if isinstance(m, Finished) for r in m.results}
    started = {i for m in messages if isinstance(m, Started) for i in m.ids}
    assert before.id in finished and suspect.id in started
    assert behind.id not in finished | started


# --- the console's side of a broken agent -----------------------------------------------------


@contextlib.asynccontextmanager
async def scripted_agent(client_key: asyncssh.SSHKey, reply: bytes) -> AsyncIterator[tuple[int, asyncssh.SSHKey, bytearray]]:
    """A real SSH server that answers the console's hello with ``reply`` and
    records what the console sends back."""
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    received = bytearray()

    async def handle(process: asyncssh.SSHServerProcess[bytes]) -> None:
        await process.stdin.read(4096)  # the console's hello
        process.stdout.write(reply)
        received.extend(await process.stdin.read())
        process.exit(0)

    server = await asyncssh.listen(
        "127.0.0.1", 0, server_host_keys=[host_key], process_factory=handle, encoding=None,
        authorized_client_keys=asyncssh.import_authorized_keys(client_key.export_public_key().decode()),
        kex_algs=KEX_ALGS, config=None,
    )
    try:
        yield server.get_port(), host_key, received
    finally:
        server.close()
        await server.wait_closed()


async def test_link_reports_an_incompatible_agent(client_key):
    refusal = encode(Error(code=ERR_VERSION, message="agent speaks version 9"))
    async with scripted_agent(client_key, refusal) as (port, host_key, _):
        with pytest.raises(AgentRefused) as caught:
            await open_link("127.0.0.1", port, client_key=client_key, console_id="c", pinned_host_key=host_key)
    assert caught.value.code == ERR_VERSION and "version 9" in str(caught.value)


async def test_link_refuses_a_malformed_frame_from_the_agent(client_key):
    hello = encode(Hello(version=PROTOCOL_VERSION, role="agent", id="odd-agent"))
    async with scripted_agent(client_key, hello + msgpack.packb({"type": "teleport"})) as (port, host_key, received):
        link = await open_link("127.0.0.1", port, client_key=client_key, console_id="c", pinned_host_key=host_key)
        assert link.hello is not None and link.hello.id == "odd-agent"
        with pytest.raises(LinkClosed, match="unknown message type"):
            await asyncio.wait_for(link.recv(), 10)
        await asyncio.wait_for(link.wait_closed(), 10)
    # The console told the agent why before closing.
    assert [(m.code, "teleport" in m.message) for m in FrameDecoder().feed(bytes(received))] == [("protocol", True)]
