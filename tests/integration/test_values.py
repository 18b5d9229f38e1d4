"""Issue 11 item 3: a task's value is whole or the task fails, at any size up
to the job's max_result. A real agent (asyncssh server, executor, workers)
driven through engine.link, and the real ``shoal run`` with ``shoal agent``
subprocesses on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from nodeagent.protocol import KIND_CALL, OUTCOME_ERROR, OUTCOME_OK, OUTCOME_TOO_BIG, Ack, TaskSpec
from nodeagent.values import VALUES_DIR, size_text
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
        OUTCOME_TOO_BIG, "value is 20.1 MiB, over the job's max_result of 16 MiB")
    assert results[small.id].outcome == OUTCOME_TOO_BIG
    assert results[small.id].error == "value is 2.0 KiB, over the job's max_result of 1000 bytes"
    assert results[returned.id].outcome == OUTCOME_TOO_BIG
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


# --- through the real CLI: shoal run, shoal results, shoal agent subprocesses -------------

from tests.integration.test_never_silent import node_flags, shoal, write_job  # noqa: E402

# Task i prints the JSON list of the integers in [a, b): concat of every task is range(0, last b).
RANGE_JOB = """command = ["python3", "-c", "import json, sys; a, b = json.loads(sys.argv[1]); print(json.dumps(list(range(a, b))))", "{item}"]
items = [[0, 30000], [30000, 2200000]]
reduce = "concat"
max_result = "32MiB"
"""


@pytest.fixture
def one_agent(tmp_path: Path):
    from demos.cluster import LocalCluster

    with LocalCluster(tmp_path, [2]) as running:
        yield running


def env_of(cluster) -> dict[str, str]:
    return {**os.environ, "SHOAL_STATE_DIR": str(cluster.state_dir), "SHOAL_CONFIG_DIR": str(cluster.config_dir)}


def test_shoal_run_gives_the_exact_value_of_a_190_kb_and_a_20_mb_json_list(one_agent, tmp_path):
    import json

    run = shoal("run", str(write_job(tmp_path, RANGE_JOB)), *node_flags(one_agent), "--json", env=env_of(one_agent))
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    assert report["result"] == list(range(2_200_000))  # each value whole, and concat put them together
    values = json.loads(shoal("results", str(report["job"]), "--json", env=env_of(one_agent)).stdout)["tasks"]
    assert [len(row["value"]) for row in values] == [30000, 2_170_000]


def test_shoal_run_fails_a_task_whose_value_is_over_max_result_at_once_and_says_why(one_agent, tmp_path):
    """Not retried, whatever ``retries`` says: a rerun makes the same value."""
    import json

    job = write_job(tmp_path, RANGE_JOB.replace('"32MiB"', '"1MiB"').replace("2200000", "300000") + "retries = 3\n")
    run = shoal("run", str(job), *node_flags(one_agent), "--json", env=env_of(one_agent))
    assert run.returncode == 1, run.stderr[-2000:]
    report = json.loads(run.stdout)
    assert report["counts"]["succeeded"] == 1 and report["counts"]["failed"] == 1
    rows = json.loads(shoal("results", str(report["job"]), "--json", env=env_of(one_agent)).stdout)["tasks"]
    failed = rows[1]
    assert failed["status"] == "failed" and failed["value"] is None and failed["attempts"] == 1
    printed = len(json.dumps(list(range(30000, 300000)))) + 1
    assert failed["error"] == f"value is {size_text(printed)}, over the job's max_result of 1 MiB"
    assert f"value is {size_text(printed)}, over the job's max_result of 1 MiB" in run.stderr


@pytest.mark.parametrize(
    "setting, problem",
    [
        ('max_result = "lots"', "expected a size like \"64MiB\" or a number of bytes, got \"lots\""),
        ('max_result = "2GiB"', "must be 1 byte to 512 MiB, got \"2GiB\""),
        ("max_result = 0", "must be 1 byte to 512 MiB, got 0"),
    ],
)
def test_a_malformed_max_result_names_its_line_and_field_with_exit_2(tmp_path, setting, problem):
    job = write_job(tmp_path, 'command = ["echo", "{item}"]\nitems = [1]\n' + setting + "\n")
    env = {**os.environ, "SHOAL_STATE_DIR": str(tmp_path / "state"), "SHOAL_CONFIG_DIR": str(tmp_path / "cfg")}
    run = shoal("run", str(job), "--node", "127.0.0.1:1", env=env)
    assert run.returncode == 2
    [line] = run.stderr.strip().splitlines()  # one line, no traceback
    assert line.endswith(f"{job}:3: field 'max_result': {problem}")


def test_a_big_value_that_ends_while_the_engine_is_down_is_sent_again_and_recorded_once(one_agent, tmp_path):
    import json
    import subprocess
    import sys
    import time

    from demos.cluster import REPO

    gate, runs = tmp_path / "gate", tmp_path / "runs"
    script = tmp_path / "task.py"
    script.write_text(
        "import json, os, sys, time\n"
        f"open({str(runs)!r}, 'a').write('run\\n')\n"
        f"while not os.path.exists({str(gate)!r}):\n    time.sleep(0.02)\n"
        "print(json.dumps(list(range(600000))))\n"  # 4.6 MB: spooled, five value frames
    )
    job = write_job(tmp_path, f'command = ["python3", "{script}", "{{item}}"]\nitems = [1]\nreduce = "concat"\n')
    env = env_of(one_agent)
    engine = subprocess.Popen([sys.executable, "-m", "console.cli", "run", str(job), *node_flags(one_agent)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, env=env)
    spool = one_agent.agents[0].state_dir / VALUES_DIR
    try:
        deadline = time.monotonic() + 60
        while not runs.exists():  # the task runs on the agent
            assert time.monotonic() < deadline and engine.poll() is None
            time.sleep(0.05)
    finally:
        engine.kill()  # kill -9: nobody will ack what the task is about to give
        engine.wait(10)
    gate.touch()
    deadline = time.monotonic() + 30
    while not any(name.endswith(".value") for name in os.listdir(spool)):  # journaled, with no engine to send it to
        assert time.monotonic() < deadline
        time.sleep(0.05)

    rerun = shoal("run", str(job), *node_flags(one_agent), "--json", env=env)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    report = json.loads(rerun.stdout)
    assert report["result"] == list(range(600000)) and report["counts"]["succeeded"] == 1
    [row] = json.loads(shoal("results", str(report["job"]), "--json", env=env).stdout)["tasks"]
    # Recorded once, from the one execution (attempt numbers reserved by the
    # restart are not runs: the runs file counts those).
    assert row["status"] == "succeeded" and row["value"] == list(range(600000))
    assert runs.read_text() == "run\n"  # executed once
    deadline = time.monotonic() + 10
    while os.listdir(spool):  # acked: the agent let go of it
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_the_python_api_takes_max_result_and_gets_big_values_whole_or_a_clear_failure(one_agent, tmp_path):
    from engine.api import Cluster, JobFailed
    from engine.spec import SpecError

    with Cluster(one_agent.addresses, state_dir=tmp_path / "api-state", config_dir=one_agent.config_dir,
                 wait_for=1) as api:
        big = api.map("tests.integration.valuefns:blob", [20 * 1000 * 1000, 10], max_result="24MiB", reduce="collect")
        assert big.reduce(timeout=60) == [b"x" * (20 * 1000 * 1000), b"x" * 10]
        over = api.map("tests.integration.valuefns:blob", [2 * MiB], max_result=MiB, retries=0)
        with pytest.raises(JobFailed) as failed:
            over.reduce(timeout=60)
        assert "value is 2.0 MiB, over the job's max_result of 1 MiB" in str(failed.value)
        with pytest.raises(SpecError, match="field 'max_result': expected a size like"):
            api.map("tests.integration.valuefns:blob", [1], max_result="big")


async def test_a_forged_spooled_value_cannot_move_another_file_into_the_spool(agent, tmp_path):
    """Task code shares its worker's results pipe: a task that claims its value
    waits in some other file must not have the agent move (rename) that file
    into its spool and send it as the value."""
    victim = tmp_path / "not-a-value"
    victim.write_bytes(b"\xa6secret")
    console = await agent.console()
    task = call("tests.integration.runastasks:forged_part", str(victim), 7, "path")
    console.run(task)
    result = (await console.results([task.id]))[task.id]
    assert result.outcome == OUTCOME_ERROR and "refused the value's spool file" in result.error
    assert result.value is None and victim.read_bytes() == b"\xa6secret"


async def test_a_value_cut_off_mid_stream_is_dropped_by_the_console_and_sent_whole_again(start_agent, tmp_path):
    agent = await start_agent()
    console = await agent.console()
    task = shell(PRINT_BYTES.format(n=20 * 1000 * 1000), max_result=32 * MiB)
    console.run(task)
    link = console.link
    await poll_until(lambda: bool(link._values), timeout=60)  # pieces arrived, the result not yet
    link.close()  # the connection drops mid-value: the pieces die with the link
    again = await agent.console()
    result = (await again.results([task.id], timeout=60))[task.id]
    assert result.outcome == OUTCOME_OK and result.value == pattern(20 * 1000 * 1000)
    await poll_until(lambda: not spool_files(tmp_path / "agent"))
