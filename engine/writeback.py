"""The engine's flushes on their way to disk, held while the state dir refuses them.

Each flush of the coordinator is a ``Batch``: what the core decided (task
outcomes, audit entries, ended jobs) and what depends on it being durable
(acks, the frames that dispatch more work, a job's end and its waiters). The
batch is committed before any of that is carried out. When the state dir
refuses the commit (disk full, an I/O error), the batch is held, and so is
every batch after it, whatever it holds: they are retried together, in
order, as one transaction every ``retry_seconds``, and handed back for
carrying out only once that transaction is on disk. So what was carried out
is always what is on disk, and the in-memory core is the disk plus the held
batches.

Nothing held can be lost: a held batch's results are not acked, and an agent
keeps every result it has not had acked in its journal, so an engine that
dies while blocked collects them again when the next one reconnects.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.inputs import Effects
from engine.store import Store, StoreUnavailable

RETRY_SECONDS = 2.0

JobRow = tuple[int, str, float, Any, dict[str, int]]  # id, status, finished_at, result, counts


@dataclass(slots=True)
class Batch:
    """One flush: the core's effects, its ended jobs as stored, and the link
    each node's frames were meant for (a frame held past a reconnect is
    dropped: the core ended that attempt when the old link went)."""

    effects: Effects
    jobs: list[JobRow] = field(default_factory=list)
    links: dict[str, object] = field(default_factory=dict)


class WriteBack:
    def __init__(self, store: Store, retry_seconds: float = RETRY_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.retry_seconds = retry_seconds
        self._clock = clock
        self.held: list[Batch] = []
        self._nodes: list[str] = []  # addresses to remember, waiting with the batches
        self.refused: StoreUnavailable | None = None  # why writes are held; None while they go through
        self._next_try = 0.0

    @property
    def blocked(self) -> str:
        """One line saying why the engine waits on its state dir, or ''."""
        if self.refused is None:
            return ""
        return f"{self.refused}; results are held, retrying every {self.retry_seconds:g} s"

    def holds_end_of(self, job_id: int) -> bool:
        """Whether the job ended in memory but its end is not stored yet."""
        return any(job[0] == job_id for batch in self.held for job in batch.jobs)

    def held_results(self) -> int:
        """Task outcomes waiting for the disk."""
        return sum(len(batch.effects.task_rows) for batch in self.held)

    def persist(self, batch: Batch) -> list[Batch]:
        """Commit ``batch`` after the batches held before it. Returns those
        now on disk, oldest first: ``[]`` while the state dir refuses writes
        (then ``batch`` waits with them; it is not tried before the retry
        is due, so a full disk is not hammered once per event-loop turn)."""
        self.held.append(batch)
        if self.refused is not None and self._clock() < self._next_try:
            return []
        return self._commit()

    def remember_node(self, address: str) -> None:
        """Remember a reached node, now or with the held batches."""
        self._nodes.append(address)
        if self.refused is None:
            self._commit()

    def retry(self, force: bool = False) -> list[Batch]:
        """Try the held batches again if the retry is due (or ``force``)."""
        if self.refused is None or (not force and self._clock() < self._next_try):
            return []
        return self._commit()

    def _commit(self) -> list[Batch]:
        held = self.held
        if len(held) == 1:  # the common case, once per flush: no copies
            rows, audit, jobs = held[0].effects.task_rows, held[0].effects.audit, held[0].jobs
        else:
            rows = [row for batch in held for row in batch.effects.task_rows]
            audit = [entry for batch in held for entry in batch.effects.audit]
            jobs = [job for batch in held for job in batch.jobs]
        try:
            self.store.write(rows, audit, jobs, self._nodes)
        except StoreUnavailable as exc:
            self.refused = exc
            self._next_try = self._clock() + self.retry_seconds
            return []
        self.held, self._nodes, self.refused = [], [], None
        return held
