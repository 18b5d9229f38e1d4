"""The engine core's fault paths through real agents (``shoal agent``
subprocesses on 127.0.0.1), one test per bug of issue 9.

Each test drives a real coordinator (SQLite store in ``tmp_path``, SSH links)
and forces the state it needs: speculative copies come from a CoreConfig that
speculates early and a job whose last item sleeps much longer than the rest.
Assertions are on what the engine did: the job's end, the store, the frames
it sent (recorded at the link), the core's books.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from demos.cluster import LocalCluster
from engine import core as c
from engine import inputs
from engine.api import EngineAPI
from engine.control import connect
from engine.coordinator import Coordinator
from engine.spec import JobSpec, parse_job_text
from engine.store import Store
from engine.trust import KnownHosts
from nodeagent.protocol import Cancel, Message, Run
from tests.integration.conftest import AgentProcess
from tests.integration.test_engine import open_engine

pytestmark = pytest.mark.timeout(120)

# Speculate as soon as a task runs twice as long as its peers' median.
EAGER = c.CoreConfig(speculate_after=2.0, speculate_min_peers=2)


def job(text: str) -> JobSpec:
    return parse_job_text(text, source="job.toml")


def straggler_job(name: str, slow: float, extra: str = "", fast: int = 4) -> JobSpec:
    """``fast`` quick tasks and, last, one that sleeps ``slow`` seconds."""
    items = ", ".join(["0.05"] * fast + [str(slow)])
    return job(f'name = "{name}"\nshell = "sleep {{item}}; echo 1"\nitems = [{items}]\nreduce = "sum"\nspeculative = true\n{extra}')


async def until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


class Recorder:
    """Every run and cancel frame the coordinator writes, per node."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.runs: list[tuple[str, str]] = []  # (node, attempt id) in send order
        self.cancels: list[tuple[str, str]] = []
        send = coordinator._send

        def recording(node: str, messages: list[Message]) -> None:
            for message in messages:
                if isinstance(message, Run):
                    self.runs.extend((node, task.id) for task in message.tasks)
                elif isinstance(message, Cancel):
                    self.cancels.extend((node, aid) for aid in message.ids)
            send(node, messages)

        coordinator._send = recording  # type: ignore[method-assign]

    def assert_no_id_sent_twice(self) -> None:
        ids = [aid for _, aid in self.runs]
        twice = sorted({aid for aid in ids if ids.count(aid) > 1})
        assert not twice, f"attempt ids sent more than once: {twice} ({self.runs})"


Launch = Callable[..., Awaitable[AgentProcess]]


@pytest.fixture
async def engine(tmp_path: Path, client_key: asyncssh.SSHKey) -> AsyncIterator[Callable[..., Awaitable[Coordinator]]]:
    made: list[tuple[Coordinator, Store]] = []

    async def make(config: c.CoreConfig = EAGER) -> Coordinator:
        store = Store(tmp_path / "shoal.db")
        coordinator = Coordinator(store, KnownHosts(tmp_path / "known_hosts"), client_key, trust_new=True, config=config)
        await coordinator.start()
        made.append((coordinator, store))
        return coordinator

    yield make
    for coordinator, store in made:
        if not coordinator._closing:  # a test may have stopped it (an engine restart)
            await asyncio.wait_for(coordinator.close(), 15)
        store.close()


def address(agent: AgentProcess) -> str:
    return f"127.0.0.1:{agent.port}"


async def nodes_up(coordinator: Coordinator, *agents: AgentProcess) -> None:
    for agent in agents:
        coordinator.add_node(address(agent))
    await until(lambda: all((n := coordinator.core.nodes.get(address(a))) is not None and n.up for a in agents),
                what="nodes up")


def copies(coordinator: Coordinator, job_id: int, index: int) -> dict[str, str]:
    """node -> live attempt id of task ``job_id.index``."""
    prefix = f"{job_id}.{index}."
    return {node.id: aid for node in coordinator.core.nodes.values() for aid in node.running if aid.startswith(prefix)}


async def speculated(coordinator: Coordinator, job_id: int, index: int) -> tuple[str, str]:
    """Wait for the straggler's copy; return (copy's node, original's node)."""
    await until(lambda: len(copies(coordinator, job_id, index)) == 2, what="a speculative copy")
    live = copies(coordinator, job_id, index)
    copy = max(live, key=lambda node: int(live[node].rsplit(".", 1)[1]))
    (original,) = set(live) - {copy}
    return copy, original


def task_started(coordinator: Coordinator, job_id: int, index: int) -> bool:
    prefix = f"{job_id}.{index}."
    return any(aid.startswith(prefix) and attempt.started_at for aid, attempt in coordinator.core.attempts.items())


async def wait_job(coordinator: Coordinator, job_id: int, timeout: float = 40.0) -> str:
    await asyncio.wait_for(coordinator.wait_job(job_id), timeout)
    return coordinator.core.jobs[job_id].status.value


# --- 1. a lost node under a task with a copy ------------------------------------------


async def test_surviving_copy_finishes_the_task_after_the_other_copys_node_is_lost(engine: Any, agent_process: Launch, tmp_path: Path) -> None:
    a = await agent_process("--slots", "1", state_dir=tmp_path / "a")
    b = await agent_process("--slots", "1", state_dir=tmp_path / "b")
    coordinator = await engine()
    await nodes_up(coordinator, a, b)
    job_id = coordinator.submit(straggler_job("lost-copy", 2.0))
    copy_node, original_node = await speculated(coordinator, job_id, 4)
    victim = a if address(a) == copy_node else b
    victim.proc.kill()  # kill -9 the node running the copy
    assert await wait_job(coordinator, job_id) == "succeeded"
    job_ = coordinator.core.jobs[job_id]
    assert job_.reducer.result() == 5
    coordinator.core.validate_state()


# --- 2. cancelling a job while a task has a copy ------------------------------------------


async def test_cancelling_a_job_cancels_both_copies_of_a_speculated_task(engine: Any, agent_process: Launch, tmp_path: Path) -> None:
    a = await agent_process("--slots", "1", state_dir=tmp_path / "a")
    b = await agent_process("--slots", "1", state_dir=tmp_path / "b")
    coordinator = await engine()
    recorder = Recorder(coordinator)
    await nodes_up(coordinator, a, b)
    job_id = coordinator.submit(straggler_job("cancel-copy", 30.0))
    copy_node, original_node = await speculated(coordinator, job_id, 4)
    live = copies(coordinator, job_id, 4)
    coordinator.operate(inputs.CancelJob(job_id, "operator", time.time()))
    assert await wait_job(coordinator, job_id, timeout=10) == "cancelled"
    # Each copy is cancelled on its own node, once.
    assert sorted(cancel for cancel in recorder.cancels if cancel[1] in live.values()) == sorted(live.items())
    assert not coordinator.core.attempts
    coordinator.core.validate_state()


# --- 3. drain --requeue on the node of a copy -------------------------------------------------


async def test_drain_with_requeue_on_a_copys_node_cancels_that_copy_only(engine: Any, agent_process: Launch, tmp_path: Path) -> None:
    a = await agent_process("--slots", "1", state_dir=tmp_path / "a")
    b = await agent_process("--slots", "1", state_dir=tmp_path / "b")
    coordinator = await engine()
    recorder = Recorder(coordinator)
    await nodes_up(coordinator, a, b)
    job_id = coordinator.submit(straggler_job("drain-copy", 2.0))
    copy_node, original_node = await speculated(coordinator, job_id, 4)
    live = copies(coordinator, job_id, 4)
    coordinator.operate(inputs.DrainNode(copy_node, True, "operator", time.time()))
    # The copy's own id is cancelled, on its own node.
    await until(lambda: (copy_node, live[copy_node]) in recorder.cancels, timeout=10, what="the copy cancelled")
    assert (copy_node, live[original_node]) not in recorder.cancels
    assert copies(coordinator, job_id, 4) == {original_node: live[original_node]}  # the original runs on
    assert await wait_job(coordinator, job_id) == "succeeded"
    recorder.assert_no_id_sent_twice()
    coordinator.core.validate_state()


# --- 4. a speculated task's retry --------------------------------------------------------------


async def test_retry_of_a_speculated_task_that_failed_uses_a_fresh_attempt_id(engine: Any, agent_process: Launch, tmp_path: Path) -> None:
    a = await agent_process("--slots", "1", state_dir=tmp_path / "a")
    b = await agent_process("--slots", "1", state_dir=tmp_path / "b")
    coordinator = await engine()
    recorder = Recorder(coordinator)
    await nodes_up(coordinator, a, b)
    # The last item sleeps, then fails; one retry, with no backoff.
    spec = job('name = "retry-copy"\nshell = "sleep {item}; test {item} = 0.05"\nitems = [0.05, 0.05, 0.05, 0.05, 1.5]\n'
               'retries = 1\nbackoff = { base = "0s", cap = "0s" }\nspeculative = true\n')
    job_id = coordinator.submit(spec)
    await speculated(coordinator, job_id, 4)
    assert await wait_job(coordinator, job_id) == "failed"
    recorder.assert_no_id_sent_twice()
    straggler = [aid for _, aid in recorder.runs if aid.startswith(f"{job_id}.4.")]
    assert len(straggler) >= 3  # the original, its copy, and at least the retry
    coordinator.core.validate_state()


# --- 5. a refusal because the agent is shutting down ---------------------------------------------


async def test_agent_shutting_down_is_not_excluded_and_runs_the_job_when_it_is_back(engine: Any, agent_process: Launch, tmp_path: Path) -> None:
    state = tmp_path / "a"
    a = await agent_process("--slots", "1", "--grace", "10", state_dir=state)
    coordinator = await engine(c.CoreConfig())
    recorder = Recorder(coordinator)
    await nodes_up(coordinator, a)
    # Task 0 runs 2 s; the rest are quick and wait behind it.
    spec = job('name = "stopping"\nshell = "sleep {item}; echo 1"\nitems = [2, 0, 0, 0, 0, 0]\nreduce = "sum"\n')
    job_id = coordinator.submit(spec)
    await until(lambda: task_started(coordinator, job_id, 0), what="task 0 started")
    sent = len(recorder.runs)
    a.proc.terminate()  # SIGTERM: task 0 finishes within the grace; new work is refused
    await asyncio.wait_for(a.proc.wait(), 20)
    node = coordinator.core.nodes[address(a)]
    await until(lambda: not node.up, what="the node lost")
    assert len(recorder.runs) > sent  # work was sent to the stopping agent, and refused
    assert not coordinator.core.jobs[job_id].excluded_nodes  # "shutting down" is transient
    # The agent comes back on the same address: the job finishes there.
    await agent_process("--slots", "1", "--listen", address(a), state_dir=state)
    assert await wait_job(coordinator, job_id) == "succeeded"
    assert coordinator.core.jobs[job_id].reducer.result() == 6
    coordinator.core.validate_state()


# --- 6. a graceful agent stop with tasks queued -------------------------------------------------


async def test_tasks_queued_on_a_stopping_agent_are_requeued_not_cancelled(engine: Any, agent_process: Launch, tmp_path: Path) -> None:
    a = await agent_process("--slots", "1", "--grace", "10", state_dir=tmp_path / "a")
    coordinator = await engine(c.CoreConfig())
    recorder = Recorder(coordinator)
    await nodes_up(coordinator, a)
    spec = job('name = "sigterm"\nshell = "sleep {item}; echo 1"\nitems = [1, 0, 0, 0]\nreduce = "sum"\nretries = 0\n')
    job_id = coordinator.submit(spec)
    await until(lambda: task_started(coordinator, job_id, 0) and len(recorder.runs) >= 2, what="a task queued behind task 0")
    a.proc.terminate()  # SIGTERM with a task queued behind the running one
    await asyncio.wait_for(a.proc.wait(), 20)
    b = await agent_process("--slots", "1", state_dir=tmp_path / "b")
    await nodes_up(coordinator, b)
    assert await wait_job(coordinator, job_id) == "succeeded"
    job_ = coordinator.core.jobs[job_id]
    assert job_.reducer.result() == 4
    assert job_.counts_by_label()["cancelled"] == 0
    coordinator.core.validate_state()


# --- 7. a refused speculative copy ---------------------------------------------------------------


async def test_refused_speculative_copy_frees_its_nodes_slots(engine: Any, agent_process: Launch, tmp_path: Path) -> None:
    a = await agent_process("--slots", "2", state_dir=tmp_path / "a")
    coordinator = await engine()
    await nodes_up(coordinator, a)
    # Tasks take two slots; b has one, so it refuses the copy it is sent.
    job_id = coordinator.submit(straggler_job("refused-copy", 8.0, extra="slots = 2\n"))
    await until(lambda: coordinator.core.jobs[job_id].ready == 0 and len(coordinator.core.jobs[job_id].recent_durations) >= 4,
                what="all but the straggler done")
    b = await agent_process("--slots", "1", state_dir=tmp_path / "b")
    await nodes_up(coordinator, b)
    node_b = coordinator.core.nodes[address(b)]
    await until(lambda: address(b) in coordinator.core.jobs[job_id].excluded_nodes, timeout=10, what="b refusing the copy")
    # The refusal gave b's slots back at once, while the original still runs.
    assert node_b.in_flight_slots == 0 and not node_b.running
    assert coordinator.core.jobs[job_id].status.value == "running"
    coordinator.core.validate_state()
    coordinator.operate(inputs.CancelJob(job_id, "operator", time.time()))
    assert await wait_job(coordinator, job_id, timeout=10) == "cancelled"


# --- resubmitting a whole job, or chosen tasks of it --------------------------------------------


def summing_job(name: str, count: int = 6) -> JobSpec:
    """Task i prints i + 1: the job's sum is 1 + 2 + ... + count."""
    items = ", ".join(str(i + 1) for i in range(count))
    return job(f'name = "{name}"\nshell = "echo {{item}}"\nitems = [{items}]\nreduce = "sum"\n')


def stored_rows(coordinator: Coordinator, job_id: int) -> list[tuple[int, str, int]]:
    """(index, status, attempts) of every stored task row of the job."""
    return [(r["index"], r["status"], r["attempts"]) for r in coordinator.store.task_results(job_id)]


async def test_whole_job_resubmit_issues_fresh_attempt_ids_and_gives_the_exact_result(engine: Any, agent_process: Launch, tmp_path: Path) -> None:
    a = await agent_process("--slots", "2", state_dir=tmp_path / "a")
    coordinator = await engine(c.CoreConfig())
    recorder = Recorder(coordinator)
    await nodes_up(coordinator, a)
    job_id = coordinator.submit(summing_job("whole"))
    assert await wait_job(coordinator, job_id) == "succeeded"
    first = {aid for _, aid in recorder.runs}
    assert coordinator.resubmit(job_id, failed_only=False) == 6
    assert await wait_job(coordinator, job_id, timeout=20) == "succeeded"
    recorder.assert_no_id_sent_twice()
    assert len(recorder.runs) == 12 and first < {aid for _, aid in recorder.runs}
    assert coordinator.job_result(job_id) == 21
    assert [(i, s) for i, s, _ in stored_rows(coordinator, job_id)] == [(i, "succeeded") for i in range(6)]
    assert all(attempts == 2 for _, _, attempts in stored_rows(coordinator, job_id))
    coordinator.core.validate_state()


async def test_whole_job_resubmit_after_an_engine_restart_issues_fresh_attempt_ids(engine: Any, agent_process: Launch, tmp_path: Path) -> None:
    a = await agent_process("--slots", "2", state_dir=tmp_path / "a")
    first = await engine(c.CoreConfig())
    before = Recorder(first)
    await nodes_up(first, a)
    job_id = first.submit(summing_job("whole-restart"))
    assert await wait_job(first, job_id) == "succeeded"
    await asyncio.wait_for(first.close(), 15)
    second = await engine(c.CoreConfig())  # the same store: a restarted engine
    after = Recorder(second)
    await nodes_up(second, a)
    assert second.resubmit(job_id, failed_only=False) == 6
    assert await wait_job(second, job_id, timeout=20) == "succeeded"
    ids = [aid for _, aid in before.runs + after.runs]
    assert len(ids) == 12 and len(set(ids)) == 12, f"an attempt id issued twice: {sorted(ids)}"
    assert second.job_result(job_id) == 21
    assert second.store.jobs(job_id)[0]["status"] == "succeeded"
    second.core.validate_state()


@pytest.fixture(params=["embedded", "attached"])
async def api_engine(request: Any, tmp_path: Path) -> AsyncIterator[tuple[EngineAPI, Coordinator]]:
    """(a client's engine API, the coordinator behind it) on one real agent."""
    with LocalCluster(tmp_path, [2]) as cluster:
        engine = await open_engine(cluster)
        remote = await connect(cluster.state_dir) if request.param == "attached" else None
        try:
            yield (remote or engine), engine.coordinator
        finally:
            if remote is not None:
                await remote.close()
            await engine.close()


async def test_rerunning_succeeded_tasks_replaces_their_results(api_engine: tuple[EngineAPI, Coordinator], tmp_path: Path) -> None:
    api, coordinator = api_engine
    factor = tmp_path / "factor"
    factor.write_text("1")
    # Task i prints (i + 1) x factor: the rerun tasks' values change.
    spec = job(f'name = "rerun"\nshell = "echo $(({{item}} * $(cat {factor})))"\nitems = [1, 2, 3, 4, 5, 6]\nreduce = "sum"\n')
    recorder = Recorder(coordinator)
    job_id = await api.submit(spec, actor="test")
    assert await api.wait(job_id, timeout=30) == "succeeded"
    assert await api.result(job_id) == 21
    factor.write_text("10")
    assert await api.resubmit(job_id, [2, 4], failed_only=False, actor="test") == 2
    assert await api.wait(job_id, timeout=30) == "succeeded"
    # 3 and 5 count once each, with their new values: 21 - 3 - 5 + 30 + 50.
    assert await api.result(job_id) == 93
    info = await api.job(job_id)
    assert info.counts["succeeded"] == 6 and sum(info.counts.values()) == 6 and info.counts["sent"] == info.counts["running"] == 0
    assert [(i, s) for i, s, _ in stored_rows(coordinator, job_id)] == [(i, "succeeded") for i in range(6)]
    again = await api.task(job_id, 2)
    assert [a.outcome for a in again.attempts] == ["succeeded", "succeeded"] and again.value == 30
    assert len({a.id for a in again.attempts}) == 2
    untouched = await api.task(job_id, 0)
    assert [a.outcome for a in untouched.attempts] == ["succeeded"]
    recorder.assert_no_id_sent_twice()
    assert len(recorder.runs) == 8
    # A whole-job rerun from scratch: every task once more, the sum rebuilt.
    factor.write_text("2")
    assert await api.resubmit(job_id, failed_only=False, actor="test") == 6
    assert await api.wait(job_id, timeout=30) == "succeeded"
    assert await api.result(job_id) == 42
    recorder.assert_no_id_sent_twice()
    coordinator.core.validate_state()
