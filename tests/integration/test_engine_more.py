"""More of the engine through real agents: trust, discovery, graceful drain,
speculative copies, and the synchronous Cluster API."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncssh
import pytest

from demos.cluster import LocalCluster
from engine import events as ev
from engine.api import Cluster, Engine
from engine.trust import KnownHosts
from tests.integration.test_engine import job, open_engine

pytestmark = pytest.mark.timeout(120)


async def until(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``predicate`` (a coroutine function) until it holds."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def node_state(engine: Engine, address: str) -> str:
    return next((n.state for n in await engine.nodes() if n.id == address), "")


async def _is(state: Any, wanted: str) -> bool:
    return await state == wanted


@pytest.fixture
def one_agent(tmp_path):
    with LocalCluster(tmp_path, [2], trusted=False) as c:  # its key is for the test to trust
        yield c


async def test_new_node_stays_untrusted_until_the_operator_trusts_it(one_agent):
    address = one_agent.addresses[0]
    engine = await Engine.open(one_agent.state_dir, one_agent.config_dir, nodes=[address])
    try:
        await until(lambda: _is(node_state(engine, address), "untrusted"), what="untrusted state")
        job_id = await engine.submit(job('name = "t"\nshell = "echo 1"\ncount = 2\nreduce = "sum"\n'))
        await asyncio.sleep(0.5)
        assert (await engine.job(job_id)).counts["succeeded"] == 0  # nothing runs on an untrusted node
        fp = await engine.trust(address)
        assert fp.startswith("SHA256:")
        assert await engine.wait(job_id, timeout=30) == "succeeded"
        host, port = address.rsplit(":", 1)
        assert KnownHosts(one_agent.config_dir / "known_hosts").lookup(host, int(port)) is not None
    finally:
        await engine.close()


async def test_changed_host_key_is_refused_and_raised_as_an_alert(one_agent):
    address = one_agent.addresses[0]
    host, port = address.rsplit(":", 1)
    impostor = asyncssh.generate_private_key("ssh-ed25519")
    KnownHosts(one_agent.config_dir / "known_hosts").pin(host, int(port), impostor)
    engine = await Engine.open(one_agent.state_dir, one_agent.config_dir, nodes=[address], trust_new=True)
    events = engine.subscribe(kinds=["Alert", "NodeChanged", "TaskProgress", "TaskOutput", "JobFinished"])
    try:
        await until(lambda: _is(node_state(engine, address), "refused"), what="refused state")
        alerts = [e for e in events.take_ready() if isinstance(e, ev.Alert)]
        assert any("CHANGED" in a.message for a in alerts)
        # --trust-new never overrides a pinned key.
        assert KnownHosts(one_agent.config_dir / "known_hosts").lookup(host, int(port)) is not None
        assert await node_state(engine, address) == "refused"
    finally:
        events.close()
        await engine.close()


@pytest.mark.xdist_group("mdns")
async def test_agents_are_discovered_over_mdns_on_loopback(tmp_path):
    with LocalCluster(tmp_path, [1, 1], advertise=True) as cluster:
        engine = await Engine.open(cluster.state_dir, cluster.config_dir, mdns_interfaces=["127.0.0.1"], trust_new=True)
        try:
            await engine.wait_for_nodes(2, timeout=30)
            assert {n.id for n in (await engine.nodes()) if n.state == "up"} == set(cluster.addresses)
            job_id = await engine.submit(job('name = "d"\nshell = "echo 2"\ncount = 4\nreduce = "sum"\n'))
            assert await engine.wait(job_id, timeout=30) == "succeeded"
            assert await engine.result(job_id) == 8
        finally:
            await engine.close()


async def test_graceful_drain_lets_running_tasks_finish_and_sends_no_new_ones(tmp_path):
    with LocalCluster(tmp_path, [1, 1]) as cluster:
        engine = await open_engine(cluster)
        try:
            a, b = cluster.addresses
            job_id = await engine.submit(job('name = "g"\nshell = "sleep 0.4; echo 1"\ncount = 10\nreduce = "sum"\n'))
            async def running_on_a() -> bool:
                return any(n.running for n in await engine.nodes() if n.id == a)

            await until(running_on_a, what="a task on a")
            await engine.drain(a)
            drained_at = time.time()
            assert await engine.wait(job_id, timeout=60) == "succeeded"
            rows = await engine.task_results(job_id)
            on_a = [r for r in rows if r["node"] == a]
            assert 1 <= len(on_a) <= 2  # the running one (and one prefetched) finished there
            assert all(r["attempts"] == 1 for r in rows)  # nothing was killed or rerun
            assert len(rows) - len(on_a) >= 8
            async def a_drained() -> bool:
                return next(n for n in await engine.nodes() if n.id == a).drained

            await until(a_drained, what="drained in snapshot")
            assert drained_at
        finally:
            await engine.close()


async def test_straggler_gets_a_speculative_copy_on_an_idle_node(tmp_path):
    marker = tmp_path / "slow-once"
    with LocalCluster(tmp_path, [1, 1]) as cluster:
        engine = await open_engine(cluster)
        try:
            # Item 7's first attempt hangs for a minute; any later copy is quick.
            spec = job(
                'name = "spec"\n'
                f'shell = "if [ {{item}} = 7 ] && [ ! -e {marker} ]; then touch {marker}; sleep 60; fi; sleep 0.1; echo 1"\n'
                'count = 8\nreduce = "sum"\nspeculative = true\n'
            )
            started = time.monotonic()
            job_id = await engine.submit(spec)
            assert await engine.wait(job_id, timeout=50) == "succeeded"
            assert time.monotonic() - started < 30
            assert await engine.result(job_id) == 8
        finally:
            await engine.close()


def test_sync_cluster_api_maps_callables_and_commands(tmp_path):
    with LocalCluster(tmp_path, [2, 1], extra=["--allow-pickle"]) as cluster:
        with Cluster(
            cluster.addresses,
            state_dir=cluster.state_dir,
            config_dir=cluster.config_dir,
            trust_new=True,
            wait_for=2,
        ) as shoal:
            by_ref = shoal.map("math:sqrt", [4, 9, 16], reduce="sum")
            assert by_ref.reduce(timeout=30) == 9.0
            by_value = shoal.map(lambda x: x * 3, range(5), reduce="collect")
            assert by_value.reduce(timeout=30) == [0, 3, 6, 9, 12]
            command = shoal.map(["echo", "{item}"], ["a", "b"], reduce="concat")
            assert command.wait(30) == "succeeded"
            assert command.counts["succeeded"] == 2
            one = shoal.submit("math:factorial", 5)
            assert one.results() == [120]


async def test_async_api_map_and_call(one_agent):
    engine = await open_engine(one_agent)
    try:
        squares = engine.map("math:pow", range(4), args=(2,), reduce="sum")
        assert await squares.reduce(timeout=30) == 0 + 1 + 4 + 9
        one = engine.call("math:gcd", 12, 18)
        assert await one.results(timeout=30) == [6]
        assert (await one.counts())["succeeded"] == 1
    finally:
        await engine.close()


async def test_progress_and_output_reach_the_event_stream(one_agent):
    engine = await open_engine(one_agent)
    events = engine.subscribe(kinds=["Alert", "NodeChanged", "TaskProgress", "TaskOutput", "JobFinished"])
    try:
        job_id = await engine.submit(
            job('name = "p"\nshell = "echo ::shoal-progress 0.5 halfway; echo hello >&2; sleep 0.3; echo 7"\ncount = 1\nreduce = "sum"\n')
        )
        assert await engine.wait(job_id, timeout=30) == "succeeded"
        seen = events.take_ready()
        progress = [e for e in seen if isinstance(e, ev.TaskProgress) and e.job == job_id]
        output = b"".join(e.data for e in seen if isinstance(e, ev.TaskOutput) and e.job == job_id)
        assert progress and progress[0].fraction == 0.5 and progress[0].message == "halfway"
        assert b"hello" in output and b"::shoal-progress" not in output
        assert any(isinstance(e, ev.JobFinished) and e.job == job_id for e in seen)
    finally:
        events.close()
        await engine.close()
