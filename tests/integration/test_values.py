"""Issue 11 item 3: a task's value is whole or the task fails, at any size up
to the job's max_result. A real agent (asyncssh server, executor, workers)
driven through engine.link, and the real ``shoal run`` with ``shoal agent``
subprocesses on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from nodeagent.protocol import KIND_CALL, OUTCOME_ERROR, OUTCOME_OK, Ack, TaskSpec
from nodeagent.values import VALUES_DIR
from tests.integration.conftest import shell

pytestmark = pytest.mark.timeout(120)

MiB = 1 << 20
# Prints N bytes of a pattern that differs everywhere (a cut or a repeat shows).
PRINT_BYTES = (
    "python3 -c 'import sys,hashlib; n=int(sys.argv[1]); b=b\"\".join(hashlib.sha256(b\"%d\" % i).hexdigest().encode()"
    " for i in range(n // 64 + 1)); sys.stdout.buffer.write(b[:n])' {n}"
)


def pattern(n: int) -> bytes:
    return b"".join(hashlib.sha256(b"%d" % i).hexdigest().encode() for i in range(n // 64 + 1))[:n]


def call(fn: str, *args: object, **fields: object) -> TaskSpec:
    return TaskSpec(id=shell("").id, kind=KIND_CALL, fn=fn, args=list(args), **fields)


def spool_files(state_dir: Path) -> list[str]:
    return sorted(os.listdir(state_dir / VALUES_DIR))


async def test_a_shell_value_past_the_output_tail_comes_whole_and_the_tail_stays_a_tail(start_agent, tmp_path):
    agent = await start_agent()
    # A frame cap of 2 MiB on the console's side: a 20 MB value can only
    # arrive in pieces, never as one giant frame.
    console = await agent.console(max_frame_bytes=2 * MiB)
    sizes = [190_000, 20 * 1000 * 1000]
    ids = console.run(*(shell(PRINT_BYTES.format(n=n), max_result=32 * MiB) for n in sizes))
    results = await console.results(ids, ack=False, timeout=60)
    for attempt_id, n in zip(ids, sizes, strict=True):
        result = results[attempt_id]
        assert result.outcome == OUTCOME_OK, result.error
        assert result.value == pattern(n)  # whole, in order
        assert result.stdout == pattern(n)[-64 * 1024 :]  # the display tail is still a tail
        assert result.value_size == 0
    # Durable until acked: spool files next to the journal, gone with the ack.
    assert len(spool_files(tmp_path / "agent")) == 2
    console.send(Ack(ids=ids))
    await poll_until(lambda: not spool_files(tmp_path / "agent"))


async def test_a_small_shell_value_is_its_tail_and_costs_no_extra_frame(agent, tmp_path):
    console = await agent.console()
    [attempt_id] = console.run(shell(PRINT_BYTES.format(n=64 * 1024)))
    result = (await console.results([attempt_id]))[attempt_id]
    assert result.outcome == OUTCOME_OK and result.value is None and result.stdout == pattern(64 * 1024)
    assert spool_files(tmp_path / "agent") == []


async def test_a_value_over_max_result_fails_with_its_size_and_nothing_is_kept(agent, tmp_path):
    console = await agent.console()
    big = shell(PRINT_BYTES.format(n=int(20.1 * MiB)))
    small = shell(PRINT_BYTES.format(n=2000), max_result=1000)
    returned = call("tests.integration.valuefns:blob", 3 * MiB, max_result=2 * MiB)
    ids = console.run(big, small, returned)
    results = await console.results(ids, timeout=60)
    assert (results[big.id].outcome, results[big.id].error) == (
        OUTCOME_ERROR, "value is 20.1 MiB, over the job's max_result of 16 MiB")
    assert results[small.id].error == "value is 2.0 KiB, over the job's max_result of 1000 bytes"
    assert results[returned.id].outcome == OUTCOME_ERROR
    assert results[returned.id].error.startswith("value is 3.0 MiB, over the job's max_result of 2 MiB")
    assert all(results[i].value is None for i in ids)
    assert spool_files(tmp_path / "agent") == []


async def test_a_big_return_value_of_a_call_task_comes_whole(agent, tmp_path):
    console = await agent.console(max_frame_bytes=2 * MiB)
    small, big = call("tests.integration.valuefns:blob", 1000), call(
        "tests.integration.valuefns:blob", 24 * MiB, max_result=32 * MiB)
    listing = call("tests.integration.valuefns:numbers", 300_000)
    ids = console.run(small, big, listing)
    results = await console.results(ids, ack=False, timeout=60)
    assert results[small.id].value == b"x" * 1000
    assert results[big.id].outcome == OUTCOME_OK and results[big.id].value == b"x" * (24 * MiB)
    assert results[listing.id].value == list(range(300_000))
    assert len(spool_files(tmp_path / "agent")) == 2  # the 24 MiB blob and the list (over 1 MiB encoded)
    console.send(Ack(ids=ids))
    await poll_until(lambda: not spool_files(tmp_path / "agent"))


async def test_an_unacked_big_value_is_sent_whole_again_after_a_reconnect_and_an_agent_restart(start_agent, tmp_path):
    agent = await start_agent()
    console = await agent.console()
    task = shell(PRINT_BYTES.format(n=3 * MiB))
    console.run(task)
    first = (await console.results([task.id], ack=False))[task.id]
    assert first.value == pattern(3 * MiB)
    await console.close()  # no ack: the agent keeps it

    again = await agent.console()
    replayed = (await again.results([task.id], ack=False))[task.id]
    assert replayed.value == pattern(3 * MiB)
    await again.close()

    await agent.stop()
    restarted = await start_agent()  # the same state dir
    after = await restarted.console()
    survived = (await after.results([task.id]))[task.id]
    assert survived.outcome == OUTCOME_OK and survived.value == pattern(3 * MiB)
    await poll_until(lambda: not spool_files(tmp_path / "agent"))


async def poll_until(predicate, timeout: float = 10.0) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)
