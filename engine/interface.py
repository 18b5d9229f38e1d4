"""The one API every client of the engine uses: ``EngineAPI``.

``Engine`` (embedded, engine/api.py) and ``RemoteEngine`` (over the control
socket, engine/control.py) both implement it; a client written against it
cannot tell which it has, except through ``attached``. Every method is async,
even a cheap one, so the two are interchangeable.

This module is a leaf of the API (views and events only), so the control
socket and the embedded engine can both name it without importing each other.
``engine.api`` re-exports it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from engine.events import Event
from engine.spec import JobSpec
from engine.views import AuditEntry, JobInfo, LoadSample, NodeInfo, TaskDetail, TaskPage


class EngineError(Exception):
    """The engine refused a call: an unknown job or node, a bad argument, or
    no engine to talk to. ``str()`` is one line for a person."""


class JobFailed(EngineError):
    """``reduce()`` of a job that did not succeed: names its failed tasks."""

    def __init__(self, job_id: int, status: str, counts: dict[str, int], failed: list[tuple[int, str]]) -> None:
        self.job_id, self.status, self.counts, self.failed = job_id, status, counts, failed
        n_failed, n_cancelled = counts.get("failed", 0), counts.get("cancelled", 0)
        named = "; ".join(f"task {index}: {error or 'failed'}" for index, error in failed)
        more = ", ..." if n_failed > len(failed) else ""
        parts = [f"{n_failed} failed" + (f" ({named}{more})" if named else "")]
        if n_cancelled:
            parts.append(f"{n_cancelled} cancelled")
        super().__init__(
            f"job {job_id} {status}: {', '.join(parts)}; reduce(partial=True) gives the result of the tasks that succeeded"
        )


class Subscription(Protocol):
    """A stream of engine events (async-iterable); ``close()`` ends it."""

    def __aiter__(self) -> AsyncIterator[Event]: ...

    def take_ready(self) -> list[Event]:
        """The events that have arrived, without waiting (a UI redrawing on a
        timer takes them in one go)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class EngineAPI(Protocol):
    attached: bool  # False: the embedded Engine; True: RemoteEngine over the socket
    state_dir: Path

    # --- jobs -----------------------------------------------------------------
    async def submit(self, spec: JobSpec, *, actor: str = "api") -> int: ...
    async def jobs(self) -> list[JobInfo]: ...
    async def job(self, job_id: int) -> JobInfo: ...
    async def result(self, job_id: int) -> Any: ...
    async def wait(self, job_id: int, timeout: float | None = None) -> str: ...
    async def cancel(self, job_id: int, indices: list[int] | None = None, *, actor: str = "api") -> int: ...
    async def resubmit(
        self, job_id: int, indices: list[int] | None = None, *, failed_only: bool = True, actor: str = "api"
    ) -> int: ...

    # --- tasks ----------------------------------------------------------------
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
    ) -> TaskPage: ...
    async def task(self, job_id: int, index: int) -> TaskDetail: ...
    async def task_results(self, job_id: int) -> list[dict[str, Any]]:
        """Every stored task row of the job, by index (index, status,
        attempts, node, value, error, exit_code, duration, stdout, stderr,
        traceback): for exports and scripts. A UI pages with ``tasks()``."""
        ...

    # --- nodes ----------------------------------------------------------------
    async def nodes(self) -> list[NodeInfo]: ...
    async def node_history(self, node: str, seconds: float = 60.0) -> list[LoadSample]: ...
    async def drain(self, node: str, *, requeue: bool = False, actor: str = "api") -> None: ...
    async def undrain(self, node: str, *, actor: str = "api") -> None: ...
    async def trust(self, node: str, *, replace: bool = False, actor: str = "api") -> str: ...
    async def add_node(self, address: str) -> None: ...
    async def audit(self, limit: int = 200) -> list[AuditEntry]: ...

    # --- events ---------------------------------------------------------------
    def subscribe(
        self, *, job: int | None = None, kinds: Collection[str] | None = None, since: int | None = None
    ) -> Subscription: ...

    async def close(self) -> None: ...
