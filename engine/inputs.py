"""What the engine core is told and what it asks for.

Events in are named, frozen records of something that happened (a frame
arrived, a node was lost, the operator drained a node); each carries ``now``.
``Effects`` is the batch of instructions the core hands back per flush: rows
to persist, frames to send, events to publish. Batches rather than one object
per effect, because a flush may cover thousands of tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from engine.model import Job, TaskStatus
from engine.spec import JobSpec
from nodeagent.protocol import Heartbeat, Hello, Output, Progress, TaskResult, TaskSpec

# --- events in ------------------------------------------------------------------


class ResubmitRow(NamedTuple):
    task_index: int
    status: TaskStatus
    attempts: int  # attempt numbers the task has issued (the store's ``attempts``)


@dataclass(frozen=True, slots=True)
class JobSubmitted:
    job_id: int
    spec: JobSpec
    now: float


@dataclass(frozen=True, slots=True)
class NodeUp:
    node: str
    hello: Hello
    now: float


@dataclass(frozen=True, slots=True)
class NodeLost:
    node: str
    reason: str
    now: float


@dataclass(frozen=True, slots=True)
class HeartbeatReceived:
    node: str
    heartbeat: Heartbeat
    now: float


@dataclass(frozen=True, slots=True)
class TasksStarted:
    node: str
    ids: list[str]
    now: float


@dataclass(frozen=True, slots=True)
class TasksFinished:
    node: str
    results: list[TaskResult]
    now: float


@dataclass(frozen=True, slots=True)
class TasksRejected:
    node: str
    ids: list[str]
    reason: str  # for people
    now: float
    code: str = ""  # a RejectCode value, or "" from an agent older than the codes


@dataclass(frozen=True, slots=True)
class ProgressReported:
    node: str
    progress: Progress
    now: float


@dataclass(frozen=True, slots=True)
class OutputReceived:
    node: str
    output: Output
    now: float


@dataclass(frozen=True, slots=True)
class Tick:
    now: float


@dataclass(frozen=True, slots=True)
class ResubmitTasks:
    """Put ended tasks back in the queue. ``rows`` are the stored states
    of those tasks; the coordinator reads them. When a succeeded task is
    among them, ``reduce_from`` holds the stored values of the job's other
    succeeded tasks: the job's result is rebuilt from those, so the rerun
    task's new value replaces its old one instead of adding to it."""

    job_id: int
    rows: list[ResubmitRow]
    actor: str
    now: float
    reduce_from: list[tuple[int, Any]] | None = None


@dataclass(frozen=True, slots=True)
class CancelJob:
    job_id: int
    actor: str
    now: float
    indices: list[int] | None = None  # None: the whole job


@dataclass(frozen=True, slots=True)
class DrainNode:
    node: str
    requeue: bool
    actor: str
    now: float


@dataclass(frozen=True, slots=True)
class UndrainNode:
    node: str
    actor: str
    now: float


@dataclass(frozen=True, slots=True)
class AwaitNodes:
    """After a restart: these known nodes may still run restored tasks.
    Restored jobs wait for their hellos (up to the heartbeat timeout) before
    anything of theirs is placed, so a task still running on one of them is
    adopted rather than started again elsewhere."""

    nodes: list[str]
    now: float


# --- effects out ----------------------------------------------------------------

class TaskRow(NamedTuple):
    """A task's state to upsert, in the store's column order."""

    job_id: int
    task_index: int
    status: int
    attempts: int  # attempt numbers issued so far: the next attempt is past it
    failures: int
    node_failures: int
    node: str
    value: Any
    error: str
    traceback: str
    exit_code: int | None
    stdout: bytes
    stderr: bytes
    started: float
    ended: float


class AuditEntry(NamedTuple):
    when: float
    actor: str  # "operator", "engine", ...
    action: str
    target: str
    detail: str


class DrainOrder(NamedTuple):
    node: str
    drained: bool  # True: drain, False: undrain


@dataclass(slots=True)
class Effects:
    runs: dict[str, list[TaskSpec]] = field(default_factory=dict)
    cancels: dict[str, list[str]] = field(default_factory=dict)
    acks: dict[str, list[str]] = field(default_factory=dict)
    drains: list[DrainOrder] = field(default_factory=list)
    disconnects: list[str] = field(default_factory=list)  # nodes declared lost while still connected
    task_rows: list[TaskRow] = field(default_factory=list)
    finished_jobs: list[Job] = field(default_factory=list)
    audit: list[AuditEntry] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.runs
            or self.cancels
            or self.acks
            or self.drains
            or self.disconnects
            or self.task_rows
            or self.finished_jobs
            or self.audit
            or self.events
        )
