"""One accepted task as the executor tracks it, whichever way it runs."""

from __future__ import annotations

import time
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Protocol

from nodeagent.protocol import OUTCOME_TIMEOUT, TaskResult, TaskSpec

ERROR_SHUTDOWN = "agent shutting down"


class SlotHold(Protocol):
    """What a task needs of a slot it holds exclusively: to let go of it.
    (``nodeagent.workerpool.Slot``; named structurally so that this module
    does not import the pool, which imports this one.)"""

    holder: Task | None


class Stage(Enum):
    QUEUED = "queued"
    RUNNING = "running"  # in a worker's batch or a subprocess, not yet reported started
    STARTED = "started"  # the listener has heard task_started
    DONE = "done"


class Task:
    # One per accepted task, so kept small: what only some tasks need
    # (output, exclusive slots, a kill decision) stays None until needed.
    __slots__ = ("owner", "id", "spec", "stage", "seq", "kill", "reserved", "output", "value_part")

    def __init__(self, owner: str, spec: TaskSpec) -> None:
        self.owner = owner
        self.id = spec.id
        self.spec = spec
        self.stage = Stage.QUEUED
        self.seq = 0  # worker batch sequence number while in a worker
        self.kill: tuple[str, str] | None = None  # (outcome, error) once the agent decided to kill it
        self.reserved: Sequence[SlotHold] | None = None  # slots held exclusively (shell or multi-slot task)
        self.output: Output | None = None  # the display tails, not the value
        self.value_part: Path | None = None  # the spool file of a value too big for its result

    def release(self) -> None:
        """Give back the slots this task held exclusively."""
        if self.reserved is not None:
            for slot in self.reserved:
                slot.holder = None
            self.reserved = None

    def tails(self) -> tuple[bytes, bytes]:
        """The kept ends of (stdout, stderr)."""
        if self.output is None:
            return b"", b""
        return self.output.tail("stdout"), self.output.tail("stderr")


class Output:
    """The last ``limit`` bytes of a task's stdout and stderr: what a console
    shows of it. A shell task's value is its whole stdout, kept apart
    (``nodeagent.values.ShellValue``)."""

    __slots__ = ("limit", "streams")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.streams = {"stdout": bytearray(), "stderr": bytearray()}

    def add(self, stream: str, chunk: bytes) -> None:
        data = self.streams[stream]
        data += chunk
        # Trim in amortised steps rather than on every chunk.
        if len(data) > 2 * self.limit:
            del data[: len(data) - self.limit]

    def tail(self, stream: str) -> bytes:
        return bytes(self.streams[stream][-self.limit :]) if self.limit else b""


Done = list[tuple[Task, TaskResult]]  # finished tasks and their results, to journal and report


def timeout_kill(seconds: float) -> tuple[str, str]:
    """``Task.kill`` for a task past its timeout."""
    return OUTCOME_TIMEOUT, f"timed out after {seconds:g} s"


def plain_result(task: Task, outcome: str, *, error: str = "", started: float = 0.0) -> TaskResult:
    """A result with no value and no output, ended now."""
    return TaskResult(id=task.id, outcome=outcome, error=error, started=started, ended=time.time())
