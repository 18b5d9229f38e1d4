"""Task states, the one table of legal transitions, and the in-memory records.

Memory is the constraint that shapes these records: a job of a million tasks
must cost well under 1 KiB per pending task. So a job that has not started a
task yet holds no object for it at all: ``Job.cursor`` marks the first index
never dispatched, and a ``Task`` object exists only while a task is in flight,
waiting for a retry, or requeued. Finished tasks live in SQLite and in the
job's counters and reducer, not in memory.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from engine.reducers import Reducer
from engine.spec import JobSpec


class TaskStatus(enum.IntEnum):
    PENDING = 0  # waiting out a retry backoff
    QUEUED = 1  # ready, waiting for a slot
    RUNNING = 2  # sent to a node (the node may still have it queued)
    SUCCEEDED = 3
    FAILED = 4
    CANCELLED = 5

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {status: status.name.lower() for status in TaskStatus}

TERMINAL = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED})

S = TaskStatus
# (from, to) -> what such a move means; anything else is a bug and raises.
TRANSITIONS: dict[tuple[TaskStatus, TaskStatus], str] = {
    (S.QUEUED, S.RUNNING): "dispatched",
    (S.RUNNING, S.SUCCEEDED): "succeeded",
    (S.RUNNING, S.FAILED): "failed",
    (S.RUNNING, S.CANCELLED): "cancelled",
    (S.RUNNING, S.PENDING): "retry after backoff",
    (S.RUNNING, S.QUEUED): "requeued",  # node lost, drained with requeue, or refused
    (S.PENDING, S.QUEUED): "backoff over",
    (S.PENDING, S.CANCELLED): "cancelled",
    (S.QUEUED, S.CANCELLED): "cancelled",
    (S.FAILED, S.QUEUED): "resubmitted",
    (S.CANCELLED, S.QUEUED): "resubmitted",
}
del S


class IllegalTransition(RuntimeError):
    pass


class JobStatus(enum.Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


def attempt_id(job_id: int, index: int, attempt: int) -> str:
    """Attempt ids are deterministic: after an engine crash, re-sending an
    attempt that was in flight reuses its id, so the agent recognises it (it
    is still running, or its result waits in the journal) instead of running
    it as something new."""
    return f"{job_id}.{index}.{attempt}"


def parse_attempt_id(text: str) -> tuple[int, int, int] | None:
    parts = text.split(".")
    if len(parts) != 3:
        return None
    try:
        return int(parts[0]), int(parts[1]), int(parts[2])
    except ValueError:
        return None


class Task:
    """A task that is in flight, waiting for a retry, or requeued."""

    __slots__ = (
        "job",
        "index",
        "status",
        "attempts",
        "failures",
        "node_failures",
        "node",
        "attempt_id",
        "sent_at",
        "started_at",
        "ready_at",
        "spare",
    )

    def __init__(self, job: Job, index: int) -> None:
        self.job = job
        self.index = index
        self.status = TaskStatus.QUEUED
        self.attempts = 0  # attempts that ended (durable); the live one is attempts + 1
        self.failures = 0  # failed attempts counted against retries
        self.node_failures = 0  # attempts lost with their node (poison count)
        self.node = ""
        self.attempt_id = ""
        self.sent_at = 0.0
        self.started_at = 0.0
        self.ready_at = 0.0
        self.spare: tuple[str, str] | None = None  # speculative copy: (attempt id, node)


@dataclass(eq=False)
class Job:
    id: int
    spec: JobSpec
    reducer: Reducer
    submitted_at: float
    total: int = 0
    cursor: int = 0  # indices >= cursor were never dispatched
    requeued: deque[Task] = field(default_factory=deque)
    counts: dict[TaskStatus, int] = field(default_factory=dict)
    excluded_nodes: set[str] = field(default_factory=set)
    recent_durations: deque[float] = field(default_factory=lambda: deque(maxlen=64))
    status: JobStatus = JobStatus.RUNNING
    finished_at: float = 0.0
    restored: bool = False  # rebuilt from the store after a restart

    def __post_init__(self) -> None:
        self.total = self.spec.task_count()
        if not self.counts:
            self.counts = {status: 0 for status in TaskStatus}
            self.counts[TaskStatus.QUEUED] = self.total

    @property
    def ready(self) -> int:
        return len(self.requeued) + (self.total - self.cursor)

    @property
    def done(self) -> int:
        return sum(self.counts[s] for s in TERMINAL)

    def counts_by_label(self) -> dict[str, int]:
        return {status.label: count for status, count in self.counts.items()}

    def final_status(self) -> JobStatus:
        if self.counts[TaskStatus.FAILED]:
            return JobStatus.FAILED
        if self.counts[TaskStatus.CANCELLED]:
            return JobStatus.CANCELLED
        return JobStatus.SUCCEEDED


@dataclass(eq=False)
class Node:
    """A connected (or once connected) agent, keyed by its address."""

    id: str  # "host:port"
    agent_id: str = ""
    hostname: str = ""
    slots: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    up: bool = False
    drained: bool = False
    running: dict[str, Task] = field(default_factory=dict)  # attempt id -> task
    in_flight_slots: int = 0
    completed_since_tick: int = 0
    rate: float = 0.0  # tasks/s, smoothed
    load: Any = None  # last Heartbeat
    last_seen: float = 0.0

    def capacity(self, prefetch_seconds: float, max_prefetch: int) -> int:
        # Enough queued work on the agent to cover the round trip, but never
        # more than the node gets through in ``prefetch_seconds``: a slow node
        # holds its slots plus one task per slot, so it cannot hoard work.
        prefetch = min(max_prefetch, max(self.slots, int(self.rate * prefetch_seconds)))
        return self.slots + prefetch
