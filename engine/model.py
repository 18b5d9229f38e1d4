"""Task states and the in-memory records: jobs, tasks, their attempts, nodes.

The legal moves between task states are the transition table in ``engine.transitions``.

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
from engine.runspec import RunSpecs
from engine.scheduler import JobDemand
from engine.spec import JobSpec


class TaskStatus(enum.IntEnum):
    PENDING = 0  # waiting out a retry backoff
    QUEUED = 1  # ready, waiting for a slot
    RUNNING = 2  # sent to a node: started there, or waiting in its queue (``Job.started`` tells them apart)
    SUCCEEDED = 3
    FAILED = 4
    CANCELLED = 5

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {status: status.name.lower() for status in TaskStatus}

TERMINAL = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED})

# The statuses as module constants, for code run per task or per flush:
# reading a member off the enum class costs about 0.2 us on Python 3.11, as
# much as setting three attributes.
PENDING, QUEUED, RUNNING = TaskStatus.PENDING, TaskStatus.QUEUED, TaskStatus.RUNNING
SUCCEEDED, FAILED, CANCELLED = TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED


class IllegalTransition(RuntimeError):
    pass


class JobStatus(enum.Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


def attempt_id(job_id: int, index: int, attempt: int) -> str:
    """Attempt ids are deterministic (job, index, attempt number), so after an
    engine crash an agent's held attempts and journaled results can be
    matched to their tasks and adopted instead of run again."""
    return f"{job_id}.{index}.{attempt}"


def parse_attempt_id(text: str) -> tuple[int, int, int] | None:
    parts = text.split(".")
    if len(parts) != 3:
        return None
    try:
        return int(parts[0]), int(parts[1]), int(parts[2])
    except ValueError:
        return None


class Attempt:
    """One try of a task on one node, live from its dispatch (or adoption
    after a restart) until its result, its node's loss, a rejection or a
    cancel. A task has one live attempt, or two while a speculative copy runs."""

    __slots__ = ("id", "task", "node", "number", "started_at")

    def __init__(self, task: Task, node: Node, number: int) -> None:
        self.id = f"{task.job.attempt_prefix}{task.index}.{number}"  # attempt_id(), inline: made for every dispatch
        self.task = task
        self.node = node
        self.number = number
        self.started_at = 0.0  # when the node reported it started; 0 while queued there


class Task:
    """A task that is in flight, waiting for a retry, or requeued."""

    __slots__ = ("job", "index", "status", "issued", "durable", "failures", "node_failures", "node", "live", "ready_at")

    def __init__(self, job: Job, index: int, issued: int = 0) -> None:
        self.job = job
        self.index = index
        self.status = QUEUED
        # Attempt numbers are never reused: the next one is ``issued + 1``.
        # ``durable`` is ``issued`` as last written to the store; at most two
        # numbers (a dispatch and its speculative copy) are issued past it,
        # so after a crash ``durable + 1`` and ``durable + 2`` cover every
        # attempt that may still be out there.
        self.issued = issued
        self.durable = issued
        self.failures = 0  # failed attempts counted against retries
        self.node_failures = 0  # attempts lost with their node (poison count)
        self.node = ""  # the node of the latest attempt, for rows and events
        self.live: list[Attempt] = []
        self.ready_at = 0.0


@dataclass(eq=False, slots=True)
class Job:
    id: int
    spec: JobSpec
    reducer: Reducer
    submitted_at: float
    total: int = 0
    cursor: int = 0  # indices >= cursor were never dispatched
    requeued: deque[Task] = field(default_factory=deque)
    counts: dict[TaskStatus, int] = field(default_factory=dict)
    excluded_nodes: set[str] = field(default_factory=set)  # refused it; admitted again on reconnect
    recent_durations: deque[float] = field(default_factory=lambda: deque(maxlen=64))
    status: JobStatus = JobStatus.RUNNING
    finished_at: float = 0.0
    restored: bool = False  # rebuilt from the store after a restart
    # RUNNING tasks an agent said it started (a live attempt has ``started_at``);
    # the others were sent and wait in an agent's queue (prefetch).
    started: int = 0
    runs: RunSpecs = field(init=False, repr=False)  # makes each attempt's run message
    attempt_prefix: str = field(init=False, repr=False)  # "<job id>.": what its attempt ids start with
    # What placement is told about it. All but ``ready`` is fixed (the spec
    # is frozen, ``excluded_nodes`` is changed in place), so each flush only
    # brings ``ready`` up to date rather than making a new one.
    demand: JobDemand = field(init=False, repr=False)

    def __post_init__(self) -> None:
        spec = self.spec
        self.total = spec.task_count()
        self.runs = RunSpecs(spec)
        self.attempt_prefix = f"{self.id}."
        self.demand = JobDemand(self.id, spec.priority, 0, spec.slots, spec.labels, self.excluded_nodes, spec.kind)
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
        """Tasks per status, with RUNNING split in two: ``running`` (started
        on an agent) and ``sent`` (dispatched, waiting in an agent's queue)."""
        counts = self.counts  # made for every flush's progress event: the module's status constants
        return {
            "pending": counts[PENDING],
            "queued": counts[QUEUED],
            "sent": counts[RUNNING] - self.started,
            "running": self.started,
            "succeeded": counts[SUCCEEDED],
            "failed": counts[FAILED],
            "cancelled": counts[CANCELLED],
        }

    def final_status(self) -> JobStatus:
        if self.counts[TaskStatus.FAILED]:
            return JobStatus.FAILED
        if self.counts[TaskStatus.CANCELLED]:
            return JobStatus.CANCELLED
        return JobStatus.SUCCEEDED


@dataclass(eq=False, slots=True)
class Node:
    """A connected (or once connected) agent, keyed by its address."""

    id: str  # "host:port"
    agent_id: str = ""
    hostname: str = ""
    slots: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    kinds: frozenset[str] = frozenset()  # task kinds its hello offers; empty: it did not say
    up: bool = False
    drained: bool = False
    # The drain state this engine last ordered, until a heartbeat agrees:
    # a heartbeat sent before the order arrived must not undo it.
    drain_ordered: bool | None = None
    running: dict[str, Attempt] = field(default_factory=dict)  # live attempts here, by id
    in_flight_slots: int = 0  # the slots of those attempts
    stopping: bool = False  # said it is shutting down: no work until it comes back
    completed_since_tick: int = 0
    rate: float = 0.0  # tasks/s, smoothed
    # The most slot-units it may hold: its slots and its prefetch. Kept by
    # ``size_prefetch`` whenever ``slots`` or ``rate`` change, since every
    # flush reads it.
    capacity: int = 0
    load: Any = None  # last Heartbeat
    last_seen: float = 0.0

    def size_prefetch(self, prefetch_seconds: float, max_prefetch: int) -> None:
        self.capacity = node_capacity(self.slots, self.rate, prefetch_seconds, max_prefetch)


def node_capacity(slots: int, rate: float, prefetch_seconds: float, max_prefetch: int) -> int:
    # Enough queued work on the agent to cover the round trip, but never
    # more than the node gets through in ``prefetch_seconds``: a slow node
    # holds its slots plus one task per slot, so it cannot hoard work.
    return slots + min(max_prefetch, max(slots, int(rate * prefetch_seconds)))
