"""Task statuses and attempts: the one table of legal moves, and the one
place attempts come and go.

``TaskStates`` is the part of the engine core that every input goes through
in the end (``engine.core.EngineCore`` builds on it and says what each input
means):

* A task's status changes only in ``_move_all``, through the transition
  table ``{(from, to): handler}``; the handler owns every side effect of that
  move (rows, queues, cancelling the task's other attempts). Anything not in
  the table raises ``IllegalTransition``. A move is of one or more tasks of
  one job, all in the same status: a dispatch moves every task a flush gives
  one node in one go (one table lookup, one counts update), the other moves
  are of one task (``_move``).
* An attempt is an object (``engine.model.Attempt``). Adding or dropping
  attempts, in ``_add_attempts`` and ``_drop``, is the only place the
  live-attempt map, the task's attempt list, the node's attempt set and its
  in-flight slot count change. A task with a speculative copy simply has two.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from engine import events as ev
from engine.inputs import Effects, TaskRow
from engine.model import (
    CANCELLED,
    FAILED,
    SUCCEEDED,
    TERMINAL,
    Attempt,
    IllegalTransition,
    Job,
    JobStatus,
    Node,
    Task,
    TaskStatus,
    attempt_id,
)
from nodeagent.protocol import TaskResult

# Jobs this small report every task transition as an event; bigger ones are
# summarised by JobProgress so a UI is not flooded.
TASK_EVENTS_UP_TO = 10_000

S = TaskStatus
JOB_RUNNING = JobStatus.RUNNING  # read on every move (see engine.model's status constants)
# Moves every task of a big job makes: summarised by JobProgress, not evented.
ROUTINE = frozenset({S.RUNNING, S.SUCCEEDED})

# What a handler of the transition table is given: the tasks moved (one job,
# all came from the same status), and why.
Handler = Callable[[Sequence["Task"], "Why"], None]


@dataclass(slots=True)
class Why:
    """What caused a move, and what its handler needs to carry it out."""

    cause: str  # one line for the event
    now: float
    error: str = ""
    node: Node | None = None  # dispatch: where to
    adopted: Attempt | None = None  # recovery: the attempt found running on a node
    result: TaskResult | None = None
    value: Any = None


class TaskStates:
    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self.jobs: dict[int, Job] = {}
        self.open_jobs: dict[int, Job] = {}  # the running ones: what a flush looks at
        self.nodes: dict[str, Node] = {}
        self.roomy: dict[str, Node] = {}  # nodes that may have room for work (see EngineCore._schedule)
        self.attempts: dict[str, Attempt] = {}  # every live attempt, by id
        self.backoff: list[Task] = []  # tasks in PENDING, checked on Tick
        # After a restart: the attempt ids that were perhaps in flight when the
        # engine died. An agent that still runs one, or has its result in its
        # journal, hands it back; the task then adopts it.
        self.recovering: dict[str, Task] = {}
        self.out = Effects()
        self._dirty_jobs: set[Job] = set()
        # The one table of legal moves. Leaving a queue (requeued, backoff) is
        # the caller's part, as callers take tasks out in bulk; everything
        # else a move implies is its handler's.
        self._transitions: dict[tuple[TaskStatus, TaskStatus], Handler] = {
            (S.QUEUED, S.RUNNING): self._t_start,
            (S.RUNNING, S.SUCCEEDED): self._t_succeed,
            (S.RUNNING, S.FAILED): self._t_fail,
            (S.RUNNING, S.CANCELLED): self._t_cancel,
            (S.RUNNING, S.PENDING): self._t_retry_later,
            (S.RUNNING, S.QUEUED): self._t_requeue,  # lost, stopped, drained with requeue, refused
            (S.PENDING, S.QUEUED): self._t_ready,
            (S.PENDING, S.CANCELLED): self._t_cancel,
            (S.QUEUED, S.CANCELLED): self._t_cancel,
            (S.FAILED, S.QUEUED): self._t_resubmit,
            (S.CANCELLED, S.QUEUED): self._t_resubmit,
            (S.SUCCEEDED, S.QUEUED): self._t_resubmit,  # "rerun this task": its value leaves the reducer first
        }

    # --- the one place a task's status changes ------------------------------------

    def _move(self, task: Task, to: TaskStatus, why: Why) -> None:
        self._move_all((task,), to, why)

    def _move_all(self, tasks: Sequence[Task], to: TaskStatus, why: Why) -> None:
        """Move ``tasks`` (one or more, of one job, all in one status) to ``to``."""
        first = tasks[0]
        frm, job = first.status, first.job
        handler = self._transitions.get((frm, to))
        if handler is None:
            raise IllegalTransition(f"task {job.id}.{first.index}: {frm.label} -> {to.label} ({why.cause})")
        moved = 0
        for task in tasks:
            if task.status is not frm or task.job is not job:  # a mixed batch, or one task twice
                for earlier in tasks[:moved]:
                    earlier.status = frm  # an illegal move changes nothing
                raise IllegalTransition(f"task {task.job.id}.{task.index}: {task.status.label} -> {to.label} "
                                        f"in a move of job {job.id}'s {frm.label} tasks ({why.cause})")
            task.status = to
            moved += 1
        counts = job.counts
        counts[frm] -= len(tasks)
        counts[to] += len(tasks)
        self._dirty_jobs.add(job)
        handler(tasks, why)
        if job.total <= TASK_EVENTS_UP_TO or to not in ROUTINE:
            label, events = to.label, self.out.events
            for task in tasks:
                events.append(ev.TaskChanged(job.id, task.index, label, task.node, task.issued, why.cause, why.error))
        if to in TERMINAL and job.status is JOB_RUNNING:
            if counts[SUCCEEDED] + counts[FAILED] + counts[CANCELLED] == job.total:
                self._finish_job(job, why.now)

    def _t_start(self, tasks: Sequence[Task], why: Why) -> None:
        if why.adopted is not None:
            self._add_attempt(why.adopted)
            return
        node = why.node
        assert node is not None
        attempts: list[Attempt] = []
        for task in tasks:
            attempts.append(Attempt(task, node, task.issued + 1))
        job = tasks[0].job
        self._add_attempts(job, node, attempts)
        self._send(job, node, attempts)

    def _t_succeed(self, tasks: Sequence[Task], why: Why) -> None:
        for task in tasks:
            if task.live:  # the other copy lost the race
                self._cancel_live(task)
            self._row(task, why.result, why.value)

    def _t_fail(self, tasks: Sequence[Task], why: Why) -> None:
        for task in tasks:
            self._cancel_live(task)
            self._row(task, why.result, why.value, why.error)

    def _t_cancel(self, tasks: Sequence[Task], why: Why) -> None:
        for task in tasks:
            self._cancel_live(task)
            self._row(task, why.result, error=why.error)

    def _t_retry_later(self, tasks: Sequence[Task], why: Why) -> None:
        for task in tasks:
            self._cancel_live(task)
            spec = task.job.spec
            delay = min(spec.backoff_cap, spec.backoff_base * 2 ** (task.failures - 1))
            task.ready_at = why.now + delay * (0.5 + 0.5 * self.rng.random())  # equal jitter
            self._row(task, why.result)
            self.backoff.append(task)

    def _t_requeue(self, tasks: Sequence[Task], why: Why) -> None:
        for task in tasks:
            self._cancel_live(task)
            self._row(task)
            task.job.requeued.appendleft(task)  # it waited already: first in line

    def _t_ready(self, tasks: Sequence[Task], why: Why) -> None:
        for task in tasks:
            task.job.requeued.append(task)

    def _t_resubmit(self, tasks: Sequence[Task], why: Why) -> None:
        for task in tasks:
            # Stored at once, so a second resubmit does not find it failed again.
            self._row(task)
            task.job.requeued.append(task)

    def _row(self, task: Task, result: TaskResult | None = None, value: Any = None, error: str = "") -> None:
        # Writing ``issued`` makes every attempt number so far durable: after
        # a crash the task goes on past them (see Task.durable).
        task.durable = task.issued
        if self.recovering and task.status in TERMINAL:
            # Its attempts kept for adoption (after a restart, or out on a
            # node that was lost) are stale now.
            for number in range(1, task.issued + 1):
                self.recovering.pop(attempt_id(task.job.id, task.index, number), None)
        r = result
        self.out.task_rows.append(
            TaskRow(
                task.job.id,
                task.index,
                int(task.status),
                task.issued,
                task.failures,
                task.node_failures,
                task.node,
                value,
                error or (r.error if r else ""),
                r.traceback if r else "",
                r.exit_code if r else None,
                r.stdout if r else b"",
                r.stderr if r else b"",
                r.started if r else 0.0,
                r.ended if r else 0.0,
            )
        )

    # --- the one place attempts come and go ---------------------------------------

    def _add_attempt(self, attempt: Attempt) -> Attempt:
        self._add_attempts(attempt.task.job, attempt.node, [attempt])
        return attempt

    def _add_attempts(self, job: Job, node: Node, attempts: list[Attempt]) -> None:
        """Make ``attempts`` live: of ``job``'s tasks, on ``node`` (a dispatch's
        batch, or a single adopted or speculative attempt)."""
        node_id, live, here = node.id, self.attempts, node.running
        for attempt in attempts:
            task, aid = attempt.task, attempt.id
            if attempt.number > task.issued:
                task.issued = attempt.number
            task.live.append(attempt)
            task.node = node_id
            live[aid] = attempt
            here[aid] = attempt
        node.in_flight_slots += len(attempts) * job.spec.slots

    def _drop(self, attempt: Attempt) -> None:
        task, node = attempt.task, attempt.node
        task.live.remove(attempt)
        if attempt.started_at and not any(a.started_at for a in task.live):
            task.job.started -= 1  # no started attempt left (a task leaves RUNNING only through here)
        del self.attempts[attempt.id]
        del node.running[attempt.id]
        node.in_flight_slots -= task.job.spec.slots
        self.roomy[node.id] = node

    def _cancel_live(self, task: Task) -> None:
        """Stop whatever attempts of ``task`` still run: its outcome is decided."""
        for attempt in list(task.live):
            self._drop(attempt)
            self.out.cancels.setdefault(attempt.node.id, []).append(attempt.id)

    def _send(self, job: Job, node: Node, attempts: list[Attempt]) -> None:
        """Queue the ``run`` messages of ``attempts`` (of ``job``'s tasks) for ``node``."""
        make = job.runs.make
        runs = self.out.runs.get(node.id)
        if runs is None:
            runs = self.out.runs[node.id] = []
        for attempt in attempts:
            task = attempt.task
            runs.append(make(attempt.id, task.index, task.node_failures > 0))

    def _finish_job(self, job: Job, now: float) -> None:
        job.status = job.final_status()
        job.finished_at = now
        self.open_jobs.pop(job.id, None)
        self.out.finished_jobs.append(job)
        self.out.events.append(
            ev.JobFinished(job.id, job.spec.name, job.status.value, job.counts_by_label(), job.reducer.result())
        )
        self._dirty_jobs.add(job)

