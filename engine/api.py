"""The engine's public API: ``Engine`` (async) and ``Cluster`` (sync).

The TUI, the headless runner, the control socket and user scripts all go
through ``Engine``; nothing here knows about any UI.

    with Cluster(nodes=["10.0.0.5:7447"]) as cluster:
        job = cluster.map("mymod:square", range(100), reduce="sum")
        print(job.reduce())
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from engine import core as c
from engine import events as ev
from engine import inputs
from engine.control import SOCKET_NAME, ControlServer
from engine.coordinator import Coordinator, engine_lock
from engine.interface import EngineAPI, EngineError, Subscription
from engine.paths import config_dir as default_config_dir
from engine.paths import state_dir as default_state_dir
from engine.spec import JobSpec
from engine.store import Store
from engine.trust import KnownHosts, display_endpoint, load_or_create_console_key

__all__ = ["Cluster", "Engine", "EngineAPI", "EngineError", "Subscription", "spec_for"]

log = logging.getLogger("shoal.engine")


class Engine:
    """One embedded engine driving one state dir."""

    def __init__(self, coordinator: Coordinator, lock: Any, state_dir: Path) -> None:
        self.coordinator = coordinator
        self.state_dir = state_dir
        self._lock = lock
        self._discovery: Any = None
        self._control: Any = None

    @classmethod
    async def open(
        cls,
        state_dir: str | Path | None = None,
        config_dir: str | Path | None = None,
        *,
        nodes: Iterable[str] = (),
        mdns_interfaces: Sequence[str] = (),
        trust_new: bool = False,
        core_config: c.CoreConfig | None = None,
    ) -> Engine:
        sdir = default_state_dir(state_dir)
        cdir = default_config_dir(config_dir)
        lock = engine_lock(sdir)
        try:
            store = Store(sdir / "shoal.db")
            coordinator = Coordinator(
                store,
                KnownHosts(cdir / "known_hosts"),
                load_or_create_console_key(cdir),
                trust_new=trust_new,
                config=core_config,
            )
            engine = cls(coordinator, lock, sdir)
            await coordinator.start()
            control = ControlServer(engine, sdir / SOCKET_NAME)
            try:
                await control.start()
                engine._control = control
            except OSError as exc:  # e.g. a state dir path too long for AF_UNIX
                log.warning("no control socket in %s: %s (local clients cannot attach)", sdir, exc)
            for address in nodes:
                coordinator.add_node(address)
            if mdns_interfaces:
                await engine._start_discovery(list(mdns_interfaces))
        except BaseException:
            lock.close()
            raise
        return engine

    async def _start_discovery(self, interfaces: list[str]) -> None:
        from engine.discovery import Discovery

        seen: dict[str, str] = {}

        def on_event(event: Any) -> None:
            node = event.node
            if event.kind == "removed" or not node.addresses:
                return
            if node.agent_id in seen:
                return  # one agent under several names: keep the first address
            address = display_endpoint(node.addresses[0], node.port)
            seen[node.agent_id] = address
            self.coordinator.add_node(address)

        self._discovery = Discovery(interfaces=interfaces, callback=on_event)
        await self._discovery.start()

    async def close(self) -> None:
        if self._control is not None:
            await self._control.stop()
        if self._discovery is not None:
            await self._discovery.stop()
        await self.coordinator.close()
        self.coordinator.store.close()
        self._lock.close()

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- jobs -------------------------------------------------------------------

    def submit(self, spec: JobSpec, actor: str = "api") -> int:
        return self.coordinator.submit(spec, actor)

    def map(self, fn: Any, items: Sequence[Any], **options: Any) -> AsyncJob:
        """The async flavour of ``Cluster.map``."""
        return AsyncJob(self, self.submit(spec_for(fn, items, **options)))

    def call(self, fn: Any, *args: Any, **options: Any) -> AsyncJob:
        """One task: ``fn(*args)``."""
        return AsyncJob(self, self.submit(_single(fn, args, options)))

    def find_unfinished(self, spec: JobSpec) -> int | None:
        """An unfinished job with exactly this spec (to resume after a crash)."""
        wanted = spec.to_dict()
        for job in self.coordinator.core.jobs.values():
            if job.status.value == "running" and job.spec.to_dict() == wanted:
                return job.id
        return None

    async def wait(self, job_id: int, timeout: float | None = None) -> str:
        """Wait until the job ends; return its status."""
        await asyncio.wait_for(self.coordinator.wait_job(job_id), timeout)
        return self.job_status(job_id)

    def job_status(self, job_id: int) -> str:
        job = self.coordinator.core.jobs.get(job_id)
        if job is not None:
            return job.status.value
        for row in self.coordinator.store.jobs():
            if row["id"] == job_id:
                return str(row["status"])
        raise KeyError(f"no job {job_id}")

    def counts(self, job_id: int) -> dict[str, int]:
        job = self.coordinator.core.jobs.get(job_id)
        if job is not None:
            return job.counts_by_label()
        for row in self.coordinator.store.jobs():
            if row["id"] == job_id:
                return dict(row["counts"])
        raise KeyError(f"no job {job_id}")

    def result(self, job_id: int) -> Any:
        """The aggregated result (partial while the job runs)."""
        return self.coordinator.job_result(job_id)

    def task_results(self, job_id: int) -> list[dict[str, Any]]:
        return self.coordinator.store.task_results(job_id)

    def jobs(self) -> list[dict[str, Any]]:
        return self.coordinator.job_snapshot()

    def nodes(self) -> list[dict[str, Any]]:
        return self.coordinator.node_snapshot()

    def events(self, maxsize: int = 10_000) -> ev.Subscription:
        return self.coordinator.bus.subscribe(maxsize)

    # --- operator actions (all audited) -----------------------------------------

    def resubmit(self, job_id: int, failed_only: bool = True, actor: str = "operator") -> int:
        return self.coordinator.resubmit(job_id, failed_only, actor)

    def cancel(self, job_id: int, indices: list[int] | None = None, actor: str = "operator") -> None:
        self.coordinator.operate(inputs.CancelJob(job_id, actor, time.time(), indices))

    def drain(self, node: str, requeue: bool = False, actor: str = "operator") -> None:
        self.coordinator.operate(inputs.DrainNode(self._node(node), requeue, actor, time.time()))

    def undrain(self, node: str, actor: str = "operator") -> None:
        self.coordinator.operate(inputs.UndrainNode(self._node(node), actor, time.time()))

    def trust(self, node: str, replace: bool = False) -> str:
        return self.coordinator.trust(self._node(node), replace)

    def add_node(self, address: str) -> None:
        self.coordinator.add_node(address)

    async def wait_for_nodes(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while sum(1 for n in self.coordinator.core.nodes.values() if n.up) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {sum(1 for n in self.coordinator.core.nodes.values() if n.up)} of {count} nodes up after {timeout:.0f}s")
            await asyncio.sleep(0.02)

    def _node(self, name: str) -> str:
        """A node by address, hostname or agent id."""
        if name in self.coordinator.peers:
            return name
        for node in self.coordinator.core.nodes.values():
            if name in (node.hostname, node.agent_id):
                return node.id
        raise KeyError(f"no node {name!r}")


class AsyncJob:
    """A submitted job, seen from the async API."""

    def __init__(self, engine: Engine, job_id: int) -> None:
        self.engine = engine
        self.id = job_id

    async def wait(self, timeout: float | None = None) -> str:
        return await self.engine.wait(self.id, timeout)

    async def reduce(self, timeout: float | None = None) -> Any:
        await self.wait(timeout)
        return self.engine.result(self.id)

    async def results(self, timeout: float | None = None) -> list[Any]:
        await self.wait(timeout)
        return [row["value"] for row in self.engine.task_results(self.id)]

    @property
    def counts(self) -> dict[str, int]:
        return self.engine.counts(self.id)

    def cancel(self) -> None:
        self.engine.cancel(self.id)


class JobHandle:
    """A submitted job, seen from the synchronous API."""

    def __init__(self, cluster: Cluster, job_id: int) -> None:
        self.cluster = cluster
        self.id = job_id

    def wait(self, timeout: float | None = None) -> str:
        return str(self.cluster._call(self.cluster.engine.wait(self.id, timeout)))

    def reduce(self, timeout: float | None = None) -> Any:
        self.wait(timeout)
        return self.cluster._sync(lambda e: e.result(self.id))

    def results(self) -> list[Any]:
        self.wait()
        return [row["value"] for row in self.cluster._sync(lambda e: e.task_results(self.id))]

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.cluster._sync(lambda e: e.counts(self.id)))

    def cancel(self) -> None:
        self.cluster._sync(lambda e: e.cancel(self.id))


class Cluster:
    """Synchronous facade for scripts and notebooks: runs an Engine on a
    private event loop thread."""

    def __init__(
        self,
        nodes: Iterable[str] = (),
        *,
        state_dir: str | Path | None = None,
        config_dir: str | Path | None = None,
        mdns_interfaces: Sequence[str] = (),
        trust_new: bool = False,
        wait_for: int = 0,
        timeout: float = 30.0,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="shoal-engine", daemon=True)
        self._thread.start()
        self._engine: Engine | None = None
        self._engine = self._call(
            Engine.open(state_dir, config_dir, nodes=nodes, mdns_interfaces=mdns_interfaces, trust_new=trust_new)
        )
        if wait_for:
            self._call(self._engine.wait_for_nodes(wait_for, timeout))

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _sync(self, fn: Callable[[Engine], Any]) -> Any:
        async def run() -> Any:
            return fn(self._engine)  # type: ignore[arg-type]

        return self._call(run())

    @property
    def engine(self) -> Engine:
        assert self._engine is not None
        return self._engine

    def submit_spec(self, spec: JobSpec) -> JobHandle:
        return JobHandle(self, self._sync(lambda e: e.submit(spec)))

    def map(self, fn: Any, items: Sequence[Any], **options: Any) -> JobHandle:
        """Run ``fn`` over items: ``fn`` is "module:function", a command
        template list, or (with agents started with --allow-pickle) a callable."""
        return self.submit_spec(spec_for(fn, items, **options))

    def submit(self, fn: Any, *args: Any, **options: Any) -> JobHandle:
        """One task: ``fn(*args)``."""
        return self.submit_spec(_single(fn, args, options))

    def close(self) -> None:
        if self._engine is not None:
            self._call(self._engine.close())
            self._engine = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _single(fn: Any, args: tuple[Any, ...], options: dict[str, Any]) -> JobSpec:
    """One task calling ``fn(*args)``: the first arg is the item, the rest go to ``args``."""
    if not args:
        return spec_for(fn, [None], **options)
    return spec_for(fn, [args[0]], args=tuple(args[1:]), **options)


def spec_for(fn: Any, items: Sequence[Any], **options: Any) -> JobSpec:
    """A JobSpec from an API call (the same object a job file becomes)."""
    fields: dict[str, Any] = {"name": options.pop("name", None), "items": items}
    if isinstance(fn, str):
        fields["kind"], fields["fn"] = "call", fn
        fields["name"] = fields["name"] or fn
    elif isinstance(fn, (list, tuple)):
        fields["kind"], fields["argv_template"] = "shell", tuple(fn)
        fields["name"] = fields["name"] or str(fn[0])
    elif callable(fn):
        import cloudpickle

        fields["kind"], fields["payload"] = "pickle", cloudpickle.dumps(fn)
        fields["name"] = fields["name"] or getattr(fn, "__name__", "callable")
    else:
        raise TypeError(f"cannot run {fn!r}: give 'module:function', an argv list, or a callable")
    fields.update(options)
    return JobSpec.build(**fields)
