"""The engine's public API: ``Engine`` (embedded, async) and ``Cluster`` (sync).

``Engine`` implements ``EngineAPI`` (engine/interface.py), like
``RemoteEngine`` does over the control socket: the TUI, the headless runner,
the ``shoal`` subcommands and user scripts all speak it. Nothing here knows
about any UI.

    with Cluster(nodes=["10.0.0.5:7447"]) as cluster:
        job = cluster.map("mymod:square", range(100), reduce="sum")
        print(job.reduce())
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Collection, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from engine import core as c
from engine import diagnose, inputs, live, taskquery
from engine.control import SOCKET_NAME, ControlServer
from engine.coordinator import Coordinator, engine_lock
from engine.discovery import parse_node_address
from engine.events import LocalSubscription
from engine.interface import EngineAPI, EngineError, JobFailed, Subscription
from engine.model import TERMINAL, TaskStatus
from engine.paths import config_dir as default_config_dir
from engine.paths import state_dir as default_state_dir
from engine.spec import JobSpec
from engine.store import Store
from engine.trust import KnownHosts, display_endpoint, load_or_create_console_key
from engine.views import AttemptInfo, AuditEntry, JobInfo, LoadSample, NodeInfo, TaskDetail, TaskPage

__all__ = ["AsyncJob", "Cluster", "Engine", "EngineAPI", "EngineError", "JobFailed", "JobHandle", "Subscription", "spec_for"]

log = logging.getLogger("shoal.engine")
T = TypeVar("T")


class Engine:
    """One embedded engine driving one state dir."""

    attached = False

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
                await engine.add_node(address)
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
            # An answer over mDNS is a hint, never trust (see Coordinator.add_node).
            node = event.node
            if event.kind == "removed":
                gone = seen.pop(node.agent_id, None)
                if gone is not None:
                    self.coordinator.forget_hint(gone)
                return
            if not node.addresses or node.agent_id in seen:
                return  # one agent under several names: keep the first address
            address = display_endpoint(node.addresses[0], node.port)
            seen[node.agent_id] = address
            self.coordinator.add_node(address, hint=True)

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

    async def submit(self, spec: JobSpec, *, actor: str = "api") -> int:
        return self.coordinator.submit(spec, actor)

    async def jobs(self) -> list[JobInfo]:
        now, held = time.time(), self.coordinator.core.jobs
        return [
            self._blocked(live.job_info(row, held.get(row["id"]), self.coordinator.live, now))
            for row in self.coordinator.store.jobs()
        ]

    async def job(self, job_id: int) -> JobInfo:
        rows = self.coordinator.store.jobs(job_id)
        if not rows:
            raise EngineError(f"no job {job_id} (see 'shoal jobs')")
        return self._blocked(live.job_info(rows[0], self.coordinator.core.jobs.get(job_id), self.coordinator.live, time.time()))

    def _blocked(self, info: JobInfo) -> JobInfo:
        """A running job says so while the state dir refuses its progress; a
        job whose end is not stored yet is still running."""
        writes = self.coordinator.writes
        if writes.refused is None:
            return info
        if writes.holds_end_of(info.id):
            return dataclasses.replace(info, status="running", finished_at=None, blocked=writes.blocked)
        return dataclasses.replace(info, blocked=writes.blocked) if info.status == "running" else info

    async def result(self, job_id: int) -> Any:
        """The aggregated result (partial while the job runs)."""
        self._known(job_id)
        return self.coordinator.job_result(job_id)

    async def wait(self, job_id: int, timeout: float | None = None) -> str:
        """Wait until the job ends; return its status. TimeoutError if it
        is still running after ``timeout`` seconds."""
        self._known(job_id)
        try:
            await asyncio.wait_for(self.coordinator.wait_job(job_id), timeout)
        except TimeoutError:
            held = self.coordinator.core.jobs.get(job_id)
            why = self.coordinator.writes.blocked or diagnose.why_waiting(held.spec if held else None, self.coordinator.node_infos())
            raise TimeoutError(f"job {job_id} is still running after {timeout:g}s" + (f": {why}" if why else "")) from None
        job = self.coordinator.core.jobs.get(job_id)
        return job.status.value if job is not None else (await self.job(job_id)).status

    async def cancel(self, job_id: int, indices: list[int] | None = None, *, actor: str = "api") -> int:
        """Cancel the job's unfinished tasks (or those of ``indices``);
        returns how many were cancelled. An ended job has none: 0."""
        total = self._known(job_id)
        if indices is not None:
            bad = [i for i in indices if not 0 <= i < total]
            if bad:
                raise EngineError(f"job {job_id} has no task {bad[0]} (it has {total})")
        job = self.coordinator.core.jobs.get(job_id)
        if job is None or job.status.value != "running":
            return 0
        before = job.counts[TaskStatus.CANCELLED]
        self.coordinator.operate(inputs.CancelJob(job_id, actor, time.time(), indices))
        self.coordinator.settle()
        return job.counts[TaskStatus.CANCELLED] - before

    async def resubmit(
        self, job_id: int, indices: list[int] | None = None, *, failed_only: bool = True, actor: str = "api"
    ) -> int:
        """Failed and cancelled tasks (those of ``indices`` only, if given)
        back to the queue; with ``failed_only=False``, the tasks of
        ``indices`` whatever their outcome (a succeeded one's new value
        replaces its old one), or the whole ended job from scratch. Returns
        how many tasks were queued."""
        total = self._known(job_id)
        if indices is not None:
            bad = [i for i in indices if not 0 <= i < total]
            if bad:
                raise EngineError(f"job {job_id} has no task {bad[0]} (it has {total})")
        try:
            count = self.coordinator.resubmit(job_id, failed_only, actor, indices)
        except (KeyError, ValueError) as exc:
            raise EngineError(_one_line(exc)) from None
        self.coordinator.settle()
        return count

    # --- tasks --------------------------------------------------------------------

    async def tasks(
        self,
        job_id: int,
        *,
        status: str | None = None,
        node: str | None = None,
        text: str | None = None,
        order: str = "index",
        descending: bool = False,
        offset: int = 0,
        limit: int = 100,
    ) -> TaskPage:
        total = self._known(job_id)
        self.coordinator.settle()
        core = self.coordinator.core
        job = core.jobs.get(job_id)
        now = time.time()
        if job is not None and job.status.value == "running":
            held = live.live_tasks(core, job, now)
            fresh = range(job.cursor, job.total)
            pending = any(t.status == TaskStatus.PENDING for t in held)
            errors = self.coordinator.store.open_errors(job_id) if pending else {}
            counts = job.counts_by_label()
        else:
            held, fresh, errors = [], range(total, total), {}
            counts = job.counts_by_label() if job is not None else self.coordinator.store.jobs(job_id)[0]["counts"]
        try:
            return taskquery.page(
                self.coordinator.store, job_id, live=held, open_errors=errors, fresh=fresh, counts=counts, status=status,
                node=node, text=text, order=order, descending=descending, offset=offset, limit=limit,
            )
        except taskquery.QueryError as exc:
            raise EngineError(str(exc)) from None

    async def task(self, job_id: int, index: int) -> TaskDetail:
        total = self._known(job_id)
        if not 0 <= index < total:
            raise EngineError(f"job {job_id} has no task {index} (it has {total})")
        self.coordinator.settle()
        coordinator = self.coordinator
        job = coordinator.core.jobs.get(job_id)
        held = live.find_task(coordinator.core, job, index) if job is not None else None
        row = coordinator.store.task_row(job_id, index)
        attempts = [
            AttemptInfo(f"{job_id}.{index}.{number}", node, started, ended, outcome, exit_code, error)
            for number, node, started, ended, outcome, exit_code, error in coordinator.store.attempt_rows(job_id, index)
        ]
        finished = row is not None and row["status"] in TERMINAL and held is None
        if row is not None and finished and row["node"]:
            attempts.append(
                AttemptInfo(
                    f"{job_id}.{index}.{row['attempts']}", row["node"], row["started"], row["ended"],
                    row["status"].label, row["exit_code"], row["error"],
                )
            )
        if held is not None:
            attempts += [AttemptInfo(a.id, a.node.id, a.started_at or None, None, "running") for a in held.live]
            status, node = held.status.label, held.node
        elif row is not None:
            status, node = row["status"].label, row["node"]
        else:
            status, node = "queued", ""
        tail = coordinator.live.tails.get((job_id, index)) if held is not None else None
        if tail is not None:
            stdout, stderr = bytes(tail.stdout), bytes(tail.stderr)
        elif row is not None and finished:
            stdout, stderr = row["stdout"], row["stderr"]
        else:
            stdout = stderr = b""
        progress, message = coordinator.live.progress.get((job_id, index), (None, "")) if held is not None else (None, "")
        return TaskDetail(
            job=job_id,
            index=index,
            status=status,
            node=node,
            attempts=attempts,
            stdout_tail=stdout.decode("utf-8", "replace"),
            stderr_tail=stderr.decode("utf-8", "replace"),
            progress=progress,
            message=message,
            value=row["value"] if row is not None and finished else None,
            # A task waiting for a retry shows why its last attempt failed.
            error=row["error"] if row is not None else "",
            traceback=row["traceback"] if row is not None else "",
        )

    async def task_results(self, job_id: int) -> list[dict[str, Any]]:
        """Every stored task row of the job, by index (the whole job: for
        scripts and exports; a UI pages with ``tasks()``)."""
        self._known(job_id)
        self.coordinator.settle()
        return self.coordinator.store.task_results(job_id)

    # --- nodes ------------------------------------------------------------------

    async def nodes(self) -> list[NodeInfo]:
        return self.coordinator.node_infos()

    async def node_history(self, node: str, seconds: float = 60.0) -> list[LoadSample]:
        return self.coordinator.live.node_history(self._node(node), seconds, time.time())

    async def drain(self, node: str, *, requeue: bool = False, actor: str = "api") -> None:
        self.coordinator.operate(inputs.DrainNode(self._node(node), requeue, actor, time.time()))
        self.coordinator.settle()

    async def undrain(self, node: str, *, actor: str = "api") -> None:
        self.coordinator.operate(inputs.UndrainNode(self._node(node), actor, time.time()))
        self.coordinator.settle()

    async def trust(self, node: str, *, replace: bool = False, actor: str = "api") -> str:
        try:
            return self.coordinator.trust(self._node(node), replace, actor)
        except (KeyError, ValueError) as exc:
            raise EngineError(_one_line(exc)) from None

    async def add_node(self, address: str) -> None:
        try:
            parse_node_address(address)
        except ValueError as exc:
            raise EngineError(str(exc)) from None
        self.coordinator.add_node(address)

    async def audit(self, limit: int = 200) -> list[AuditEntry]:
        self.coordinator.settle()
        return [AuditEntry(*row) for row in self.coordinator.store.audit(max(0, limit))]

    # --- events -----------------------------------------------------------------

    def subscribe(
        self, *, job: int | None = None, kinds: Collection[str] | None = None, since: int | None = None
    ) -> LocalSubscription:
        try:
            return self.coordinator.bus.subscribe(job=job, kinds=kinds, since=since)
        except ValueError as exc:
            raise EngineError(str(exc)) from None

    # --- for scripts (not part of EngineAPI) -------------------------------------------

    def map(self, fn: Any, items: Sequence[Any], **options: Any) -> AsyncJob:
        """The async flavour of ``Cluster.map``: submitted at once."""
        return AsyncJob(self, self.coordinator.submit(spec_for(fn, items, **options), "api"))

    def call(self, fn: Any, *args: Any, **options: Any) -> AsyncJob:
        """One task: ``fn(*args)``."""
        return AsyncJob(self, self.coordinator.submit(_single(fn, args, options), "api"))

    def find_unfinished(self, spec: JobSpec) -> int | None:
        """An unfinished job with exactly this spec (to resume after a crash)."""
        wanted = spec.to_dict()
        for job in self.coordinator.core.jobs.values():
            if job.status.value == "running" and job.spec.to_dict() == wanted:
                return job.id
        return None

    def unfinished_from_file(self, spec: JobSpec) -> list[int]:
        """Unfinished jobs submitted from the same job file as ``spec`` (its
        resolved path), whatever their contents: a changed file is a new job,
        and the caller says so."""
        if spec.source is None:
            return []
        jobs = self.coordinator.core.jobs.values()
        return sorted(j.id for j in jobs if j.status.value == "running" and j.spec.source == spec.source)

    async def wait_for_nodes(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while (up := sum(1 for n in self.coordinator.core.nodes.values() if n.up)) < count:
            if time.monotonic() > deadline:
                why = diagnose.unreachable(self.coordinator.node_infos())
                raise TimeoutError(f"only {up} of {count} nodes up after {timeout:.0f}s" + (f": {why}" if why else ""))
            await asyncio.sleep(0.02)

    # --- helpers ------------------------------------------------------------------

    def _known(self, job_id: int) -> int:
        """The job's task count; EngineError if there is no such job."""
        job = self.coordinator.core.jobs.get(job_id)
        if job is not None:
            return job.total
        rows = self.coordinator.store.jobs(job_id) if isinstance(job_id, int) else []
        if not rows:
            raise EngineError(f"no job {job_id} (see 'shoal jobs')")
        return int(rows[0]["total"])

    def _node(self, name: str) -> str:
        """A node by address, hostname or agent id."""
        if name in self.coordinator.peers:
            return name
        for node in self.coordinator.core.nodes.values():
            if name in (node.hostname, node.agent_id):
                return node.id
        raise EngineError(f"no node {name!r} (see 'shoal nodes')")


def _one_line(exc: BaseException) -> str:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return str(text).splitlines()[0] if str(text) else type(exc).__name__


async def reduce_job(engine: EngineAPI, job_id: int, timeout: float | None = None, *, partial: bool = False) -> Any:
    """Wait for the job, then its aggregated result. A job that did not
    succeed raises ``JobFailed`` naming its failed tasks, unless the caller
    asks for the ``partial`` result of the tasks that did."""
    status = await engine.wait(job_id, timeout)
    if status != "succeeded" and not partial:
        failed = await engine.tasks(job_id, status="failed", limit=5)
        info = await engine.job(job_id)
        raise JobFailed(job_id, status, info.counts, [(r.index, r.error) for r in failed.rows])
    return await engine.result(job_id)


class AsyncJob:
    """A submitted job, seen from the async API."""

    def __init__(self, engine: EngineAPI, job_id: int) -> None:
        self.engine = engine
        self.id = job_id

    async def wait(self, timeout: float | None = None) -> str:
        return await self.engine.wait(self.id, timeout)

    async def reduce(self, timeout: float | None = None, *, partial: bool = False) -> Any:
        return await reduce_job(self.engine, self.id, timeout, partial=partial)

    async def results(self, timeout: float | None = None) -> list[Any]:
        """The values of the succeeded tasks, by index."""
        await self.wait(timeout)
        return [row["value"] for row in await self.engine.task_results(self.id) if row["status"] == "succeeded"]

    async def counts(self) -> dict[str, int]:
        return (await self.engine.job(self.id)).counts

    async def cancel(self) -> int:
        return await self.engine.cancel(self.id)


class JobHandle:
    """A submitted job, seen from the synchronous API."""

    def __init__(self, cluster: Cluster, job_id: int) -> None:
        self.cluster = cluster
        self.id = job_id

    def wait(self, timeout: float | None = None) -> str:
        return self.cluster._call(self.cluster.engine.wait(self.id, timeout))

    def reduce(self, timeout: float | None = None, *, partial: bool = False) -> Any:
        """The aggregated result; raises ``JobFailed`` naming the failed
        tasks unless ``partial=True`` (then: the result of those that succeeded)."""
        return self.cluster._call(reduce_job(self.cluster.engine, self.id, timeout, partial=partial))

    def results(self, timeout: float | None = None) -> list[Any]:
        return self.cluster._call(AsyncJob(self.cluster.engine, self.id).results(timeout))

    @property
    def counts(self) -> dict[str, int]:
        return self.cluster._call(self.cluster.engine.job(self.id)).counts

    def cancel(self) -> int:
        return self.cluster._call(self.cluster.engine.cancel(self.id))


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

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def engine(self) -> Engine:
        assert self._engine is not None
        return self._engine

    def submit_spec(self, spec: JobSpec) -> JobHandle:
        return JobHandle(self, self._call(self.engine.submit(spec)))

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


def _implements_api(engine: Engine) -> EngineAPI:
    return engine  # mypy checks here that Engine is an EngineAPI
