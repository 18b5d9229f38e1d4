"""One client, two engines: the same code against the embedded Engine and a
RemoteEngine over the control socket, on real agents, gets the same answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from demos.cluster import LocalCluster
from engine import events as ev
from engine.api import AsyncJob, Engine, EngineAPI, EngineError, JobFailed
from engine.control import connect
from tests.integration.test_engine import job, open_engine

pytestmark = pytest.mark.timeout(180)
T = TypeVar("T")


async def eventually(probe: Callable[[], Awaitable[T]], ok: Callable[[T], bool], what: str, timeout: float = 30.0) -> T:
    """Poll ``probe`` until ``ok`` holds (a deadline, not a sleep for state)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if ok(value):
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}: last {value!r}"
        await asyncio.sleep(0.05)


@pytest.fixture
def cluster(tmp_path: Path) -> Any:
    with LocalCluster(tmp_path, [2, 2]) as c:
        yield c


@pytest.fixture(params=["embedded", "attached"])
async def engines(request: Any, cluster: LocalCluster) -> AsyncIterator[tuple[EngineAPI, Engine]]:
    """(the client's engine, the embedded engine behind it)."""
    engine = await open_engine(cluster)
    remote = await connect(cluster.state_dir) if request.param == "attached" else None
    try:
        yield (remote or engine), engine
    finally:
        if remote is not None:
            await remote.close()
        await engine.close()


def actor_of(entry_actor: str) -> str:
    """The actor a client named (a socket client's entry adds who it is)."""
    return entry_actor.split("@socket:uid=")[0]


async def test_the_same_client_code_gets_the_same_answers(engines, cluster, tmp_path):
    api, embedded = engines
    a, b = cluster.addresses
    marker = tmp_path / "fixed"
    events = api.subscribe(kinds=["TaskChanged", "JobFinished", "NodeChanged"])

    nodes = await api.nodes()
    assert {n.id for n in nodes} == {a, b}
    assert all(n.state == "up" and n.slots == 2 and n.fingerprint.startswith("SHA256:") for n in nodes)

    # 30 tasks, 25..29 fail until the marker exists.
    spec = job(f'name = "half"\nshell = "test {{item}} -lt 25 -o -e {marker} && echo {{item}}"\n'
               'items = { range = [0, 30] }\nretries = 0\nreduce = "sum"\n')
    job_id = await api.submit(spec, actor="test")
    assert await api.wait(job_id, timeout=60) == "failed"
    info = await api.job(job_id)
    assert (info.status, info.total, info.kind, info.reduce) == ("failed", 30, "shell", "sum")
    assert info.counts["succeeded"] == 25 and info.counts["failed"] == 5 and info.eta is None
    assert [j.id for j in await api.jobs()] == [job_id]

    # reduce() names the failed tasks unless asked for the partial result.
    with pytest.raises(JobFailed, match=r"5 failed \(task 25: .*partial=True"):
        await AsyncJob(api, job_id).reduce(timeout=10)
    assert await AsyncJob(api, job_id).reduce(timeout=10, partial=True) == sum(range(25))

    # Pages, filters, orders: done by the engine.
    page = await api.tasks(job_id, offset=10, limit=5)
    assert page.total == 30 and [r.index for r in page.rows] == [10, 11, 12, 13, 14]
    failed = await api.tasks(job_id, status="failed")
    assert failed.total == 5 and [r.index for r in failed.rows] == [25, 26, 27, 28, 29]
    assert all(r.status == "failed" and r.error for r in failed.rows)
    newest = await api.tasks(job_id, descending=True, limit=2)
    assert [r.index for r in newest.rows] == [29, 28]
    by_status = await api.tasks(job_id, order="status", descending=True, limit=5)
    assert {r.status for r in by_status.rows} == {"failed"}
    on_a = await api.tasks(job_id, node=a, limit=100)
    assert on_a.total == len(on_a.rows) > 0 and {r.node for r in on_a.rows} == {a}
    assert on_a.total + (await api.tasks(job_id, node=b)).total == 30
    with pytest.raises(EngineError, match="unknown order"):
        await api.tasks(job_id, order="colour")

    detail = await api.task(job_id, 27)
    assert detail.status == "failed" and len(detail.attempts) == 1
    assert detail.attempts[0].outcome == "failed" and detail.attempts[0].exit_code == 1
    good = await api.task(job_id, 3)
    assert good.status == "succeeded" and good.value == 3 and good.stdout_tail.strip() == "3"
    with pytest.raises(EngineError, match="no task 30"):
        await api.task(job_id, 30)

    # A live output tail while a shell task sleeps; then cancel it.
    sleeper = await api.submit(job('name = "tail"\nshell = "echo started-{item}; sleep 30"\nitems = [7]\n'), actor="test")
    live = await eventually(lambda: api.task(sleeper, 0), lambda d: "started-7" in d.stdout_tail, "live tail")
    assert live.status == "running" and live.attempts[-1].outcome == "running" and live.attempts[-1].ended is None
    assert await api.cancel(sleeper, actor="test") == 1
    assert await api.wait(sleeper, timeout=30) == "cancelled"

    # Load samples from heartbeats.
    samples = await eventually(lambda: api.node_history(a, 60), lambda s: len(s) >= 1, "a load sample")
    assert all(s.t > time.time() - 61 and 0 <= s.cpu <= 100 for s in samples)

    # Drain and undrain, seen in nodes().
    await api.drain(a, actor="test")
    assert next(n for n in await api.nodes() if n.id == a).state in ("draining", "drained")
    await api.undrain(a, actor="test")
    assert next(n for n in await api.nodes() if n.id == a).state == "up"

    # Resubmit the failed ones, now fixed; their timeline keeps the first attempt.
    marker.write_text("")
    with pytest.raises(EngineError, match="no task 30"):
        await api.resubmit(job_id, [30])
    assert await api.resubmit(job_id, [25, 26], actor="test") == 2
    assert await api.wait(job_id, timeout=60) == "failed"
    assert [r.index for r in (await api.tasks(job_id, status="failed")).rows] == [27, 28, 29]
    assert await api.resubmit(job_id, actor="test") == 3
    assert await api.wait(job_id, timeout=60) == "succeeded"
    assert await api.result(job_id) == sum(range(30))
    again = await api.task(job_id, 27)
    assert [x.outcome for x in again.attempts] == ["failed", "succeeded"]

    # Unknown ids are errors, not silent successes.
    for call in (api.cancel(99), api.resubmit(99), api.job(99), api.wait(99)):
        with pytest.raises(EngineError, match="no job 99"):
            await call

    audit = await api.audit()
    seen = {(e.action, actor_of(e.actor)) for e in audit}
    for action in ("submit", "cancel", "drain", "undrain", "resubmit"):
        assert (action, "test") in seen, (action, audit)

    got: list[ev.Event] = []
    async for event in events:
        got.append(event)
        if isinstance(event, ev.JobFinished) and event.job == job_id and event.status == "succeeded":
            break
    events.close()
    assert [e.seq for e in got] == sorted(e.seq for e in got) and all(e.t > 0 for e in got)
    assert any(isinstance(e, ev.TaskChanged) and e.job == job_id and e.status == "failed" for e in got)
    assert any(isinstance(e, ev.NodeChanged) and e.node == a and e.drained and e.slots == 2 for e in got)

    if api is not embedded:
        # Over the socket, the very same answers as in the engine's process.
        for query in (
            lambda e: e.tasks(job_id, order="node", offset=3, limit=9),
            lambda e: e.tasks(job_id, status="succeeded", descending=True),
            lambda e: e.task(job_id, 27),
            lambda e: e.job(job_id),
            lambda e: e.audit(),
            lambda e: e.task_results(job_id),
        ):
            assert await query(api) == await query(embedded)


async def test_a_pending_wait_does_not_delay_other_calls(engines):
    api, _ = engines
    long = await api.submit(job('name = "long"\ncommand = ["sleep", "30"]\ncount = 1\n'))
    waiter = asyncio.create_task(api.wait(long))
    await asyncio.sleep(0)
    nodes = await asyncio.wait_for(api.nodes(), 10)
    assert len(nodes) == 2 and not waiter.done()
    await api.cancel(long)
    assert await asyncio.wait_for(waiter, 30) == "cancelled"


async def test_events_resume_from_a_seq_and_filter_by_job(engines):
    api, _ = engines
    first = await api.submit(job('name = "one"\nshell = "echo 1"\ncount = 3\nreduce = "sum"\n'))
    assert await api.wait(first, timeout=30) == "succeeded"
    second = await api.submit(job('name = "two"\nshell = "echo 2"\ncount = 2\nreduce = "sum"\n'))
    assert await api.wait(second, timeout=30) == "succeeded"
    replay = api.subscribe(job=second, kinds=["TaskChanged", "JobFinished"], since=0)
    got: list[ev.Event] = []
    async for event in replay:
        got.append(event)
        if isinstance(event, ev.JobFinished):
            break
    replay.close()
    assert {getattr(e, "job", None) for e in got} == {second}
    assert sum(1 for e in got if isinstance(e, ev.TaskChanged) and e.status == "succeeded") == 2
    # Resuming after the last one seen gives nothing old.
    later = api.subscribe(job=second, kinds=["TaskChanged", "JobFinished"], since=got[-1].seq)
    third = await api.submit(job('name = "three"\nshell = "echo 3"\ncount = 1\n'))
    await api.wait(third, timeout=30)
    await asyncio.sleep(0.2)  # any event of job 2 would have arrived by now; none may
    assert later.take_ready() == []
    later.close()
    with pytest.raises(EngineError, match="unknown event kind"):
        api.subscribe(kinds=["Bogus"])


async def test_a_running_job_has_a_rate_and_an_eta(engines):
    api, _ = engines
    job_id = await api.submit(job('name = "steady"\nshell = "sleep 0.1"\ncount = 120\n'))
    info = await eventually(lambda: api.job(job_id), lambda i: i.rate > 0 and i.eta is not None, "a rate")
    assert info.status == "running" and 0 < info.eta < 120 / info.rate + 1
    assert await api.cancel(job_id) > 0
    done = await api.job(job_id)
    assert done.status == "cancelled" and done.eta is None and done.rate == 0.0


def test_sync_reduce_names_the_failed_tasks_unless_partial(cluster, tmp_path):
    from engine.api import Cluster

    with Cluster(cluster.addresses, state_dir=tmp_path / "sync-state", config_dir=cluster.config_dir,
                 trust_new=True, wait_for=2) as shoal:
        handle = shoal.map(["sh", "-c", 'test "$1" != 2 && echo "$1"', "sh", "{item}"], [1, 2, 3], reduce="sum", retries=0)
        with pytest.raises(JobFailed) as failed:
            handle.reduce(timeout=30)
        assert failed.value.failed and failed.value.failed[0][0] == 1 and "task 1:" in str(failed.value)
        assert handle.reduce(timeout=30, partial=True) == 4
        assert handle.counts == {**handle.counts, "succeeded": 2, "failed": 1}
