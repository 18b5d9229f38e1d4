"""Runs tasks in bounded slots with process isolation. Knows nothing of SSH.

INTERFACE STUB: the implementation is being written; the signatures below are
the contract between the executor and the SSH session layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from engine.protocol import TaskResult, TaskSpec


class ExecutorListener(Protocol):
    """What the executor reports. ``owner`` is the console id that submitted."""

    def task_started(self, owner: str, attempt_id: str) -> None: ...

    def task_progress(self, owner: str, attempt_id: str, fraction: float | None, message: str) -> None: ...

    def task_output(self, owner: str, attempt_id: str, stream: str, data: bytes) -> None: ...

    def task_finished(self, owner: str, result: TaskResult) -> None:
        """Called after the result is in the journal."""


class Executor:
    def __init__(
        self,
        *,
        slots: int,
        state_dir: Path,
        allow_pickle: bool = False,
        max_queued: int = 100_000,
        output_tail_bytes: int = 64 * 1024,
        listener: ExecutorListener | None = None,
    ) -> None: ...

    async def start(self) -> None:
        """Open the journal and pre-start one Python worker per slot."""

    def submit(self, owner: str, tasks: list[TaskSpec]) -> list[tuple[str, str]]:
        """Queue tasks; return (attempt_id, reason) for each one refused."""
        raise NotImplementedError

    def cancel(self, owner: str, ids: list[str]) -> None: ...

    def ack(self, owner: str, ids: list[str]) -> None: ...

    def unacked(self, owner: str) -> list[TaskResult]:
        raise NotImplementedError

    def holding(self, owner: str) -> list[str]:
        raise NotImplementedError

    @property
    def drained(self) -> bool:
        raise NotImplementedError

    def drain(self) -> None: ...

    def undrain(self) -> None: ...

    @property
    def slots_total(self) -> int:
        raise NotImplementedError

    @property
    def slots_busy(self) -> int:
        raise NotImplementedError

    @property
    def queued(self) -> int:
        raise NotImplementedError

    async def shutdown(self, grace: float = 5.0) -> None: ...
