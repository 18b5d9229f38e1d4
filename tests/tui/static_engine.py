"""A fixed, in-memory ``EngineAPI`` for snapshot tests only: the same data on
every run (times are fixed, nothing moves), so a screenshot can be compared.
Every behaviour test runs against the real engine with real agents instead
(see conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from pathlib import Path
from typing import Any

from engine.events import Event
from engine.spec import JobSpec
from engine.views import AttemptInfo, AuditEntry, JobInfo, LoadSample, NodeInfo, TaskDetail, TaskInfo, TaskPage

T0 = 1_780_000_000.0  # a fixed wall clock for every timestamp shown

STATUS_CYCLE = ("succeeded",) * 7 + ("failed", "running", "queued")


class StaticSubscription:
    def __aiter__(self) -> AsyncIterator[Event]:
        return self._none()

    async def _none(self) -> AsyncIterator[Event]:
        return
        yield  # pragma: no cover

    def take_ready(self) -> list[Event]:
        return []

    def close(self) -> None:
        pass


def _task(job: int, index: int) -> TaskInfo:
    status = STATUS_CYCLE[index % len(STATUS_CYCLE)]
    node = f"10.0.0.{11 + index % 5}:7447" if status != "queued" else ""
    error = f"ValueError: cannot parse frame 0x{index:04x}" if status == "failed" else ""
    return TaskInfo(job, index, status, node, 1 + (index % 3 == 0), None if status == "queued" else 0.5 + (index % 17) / 10, error)


class StaticEngine:
    attached = False

    def __init__(self, state_dir: Path = Path("/var/lib/shoal"), *, tasks: int = 100_000, extra_nodes: int = 0) -> None:
        self.state_dir = state_dir
        self.task_count = tasks
        self.calls: list[tuple[str, Any]] = []
        self._nodes = [
            NodeInfo("10.0.0.11:7447", "up", hostname="render-01", slots=8, slots_busy=8, cpu=97.0, mem=41.0, load1=7.9, queued=3, done=18_230, failed=2, heartbeat_age=0.4),
            NodeInfo("10.0.0.12:7447", "up", hostname="render-02", slots=8, slots_busy=6, cpu=74.0, mem=38.0, load1=6.1, queued=0, done=17_902, heartbeat_age=0.7),
            NodeInfo("10.0.0.13:7447", "draining", hostname="render-03", slots=4, slots_busy=2, drained=True, cpu=51.0, mem=22.0, load1=2.0, done=9_114, failed=1, heartbeat_age=0.2),
            NodeInfo("10.0.0.14:7447", "lost", detail="no heartbeat for 12 s", hostname="render-04", slots=4, done=4_410, failed=7, heartbeat_age=12.3),
            NodeInfo("10.0.0.15:7447", "untrusted", detail="host key not pinned yet", fingerprint="SHA256:q1Zx4n7mJ0cR2e9VbL8tKp3sWd6yHf5uGa0oNi1rTeM"),
            NodeInfo("10.0.0.16:7447", "refused", detail="host key CHANGED since it was pinned", fingerprint="SHA256:Xx0bad0key0changed0000000000000000000000000"),
        ]
        self._nodes += [
            NodeInfo(f"10.0.1.{i}:7447", "up", hostname=f"farm-{i:02d}", slots=4, slots_busy=i % 5, cpu=float(i * 7 % 100), mem=30.0, load1=2.5, done=1000 + i, heartbeat_age=0.5)
            for i in range(1, extra_nodes + 1)
        ]
        self._jobs = [
            JobInfo(3, "frames", "running", tasks, {"succeeded": 61_204, "failed": 173, "running": 22, "queued": tasks - 61_399}, T0, None, 812.4, 47.7, "shell", "count"),
            JobInfo(2, "squares", "succeeded", 1000, {"succeeded": 1000}, T0 - 600, T0 - 540, 0.0, None, "call", "sum"),
            JobInfo(1, "flaky", "failed", 40, {"succeeded": 37, "failed": 3}, T0 - 900, T0 - 880, 0.0, None, "call", "list"),
        ]
        self._results: dict[int, Any] = {3: {"frames": 61_204, "bytes": 9_813_442_112}, 2: 333_833_500, 1: [0, 1, 4, None, 16]}

    # jobs
    async def submit(self, spec: JobSpec, *, actor: str = "api") -> int:
        self.calls.append(("submit", (spec.name, actor)))
        return 4

    async def jobs(self) -> list[JobInfo]:
        return list(self._jobs)

    async def job(self, job_id: int) -> JobInfo:
        return next(j for j in self._jobs if j.id == job_id)

    async def result(self, job_id: int) -> Any:
        return self._results.get(job_id)

    async def wait(self, job_id: int, timeout: float | None = None) -> str:
        return (await self.job(job_id)).status

    async def cancel(self, job_id: int, indices: list[int] | None = None, *, actor: str = "api") -> int:
        self.calls.append(("cancel", (job_id, indices, actor)))
        return 0

    async def resubmit(self, job_id: int, indices: list[int] | None = None, *, failed_only: bool = True, actor: str = "api") -> int:
        self.calls.append(("resubmit", (job_id, indices, failed_only, actor)))
        return 0

    # tasks
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
        total = (await self.job(job_id)).total if job_id != 3 else self.task_count
        if status == "failed":
            period = len(STATUS_CYCLE)
            count = total // period
            indices = [i * period + 7 for i in range(offset, min(count, offset + limit))]
            return TaskPage(count, offset, [_task(job_id, i) for i in indices])
        end = min(total, offset + limit)
        indices = list(range(offset, end)) if not descending else [total - 1 - i for i in range(offset, end)]
        return TaskPage(total, offset, [_task(job_id, i) for i in indices])

    async def task_results(self, job_id: int) -> list[dict[str, Any]]:
        return []

    async def task(self, job_id: int, index: int) -> TaskDetail:
        info = _task(job_id, index)
        attempts = [AttemptInfo(f"{job_id}.{index}.1", "10.0.0.14:7447", T0 - 30, T0 - 18, "requeued", None, "node lost")]
        attempts.append(AttemptInfo(f"{job_id}.{index}.2", info.node or "10.0.0.11:7447", T0 - 12, T0 - 2, info.status, 1 if info.status == "failed" else 0, info.error))
        return TaskDetail(
            job_id, index, info.status, info.node, attempts,
            stdout_tail="decoding frame\nwriting tile 1/4\nwriting tile 2/4\n", stderr_tail="warning: slow disk\n" + (info.error + "\n" if info.error else ""),
            progress=0.5 if info.status == "running" else None, message="tile 2/4",
            value={"frame": index, "ok": True} if info.status == "succeeded" else None,
            error=info.error, traceback="Traceback (most recent call last):\n  File \"render.py\", line 42, in frame\nValueError: cannot parse frame\n" if info.error else "",
        )

    # nodes
    async def nodes(self) -> list[NodeInfo]:
        return list(self._nodes)

    async def node_history(self, node: str, seconds: float = 60.0) -> list[LoadSample]:
        seed = sum(map(ord, node))
        return [LoadSample(T0 - 60 + i, float((seed * (i + 3)) % 100), 40.0, 1.0, 1) for i in range(60)]

    async def drain(self, node: str, *, requeue: bool = False, actor: str = "api") -> None:
        self.calls.append(("drain", (node, requeue, actor)))

    async def undrain(self, node: str, *, actor: str = "api") -> None:
        self.calls.append(("undrain", (node, actor)))

    async def trust(self, node: str, *, replace: bool = False, actor: str = "api") -> str:
        self.calls.append(("trust", (node, replace, actor)))
        return "SHA256:x"

    async def add_node(self, address: str) -> None:
        self.calls.append(("add_node", address))

    async def audit(self, limit: int = 200) -> list[AuditEntry]:
        return [AuditEntry(T0 - 120, "console", "drain", "10.0.0.13:7447", "graceful"), AuditEntry(T0 - 60, "cli", "resubmit", "job 1", "3 tasks")]

    def subscribe(self, *, job: int | None = None, kinds: Collection[str] | None = None, since: int | None = None) -> StaticSubscription:
        return StaticSubscription()

    async def close(self) -> None:
        pass
