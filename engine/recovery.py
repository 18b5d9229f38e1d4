"""Restart recovery: a job rebuilt from the store, and the attempts that
may still be out there after the engine died.

Running is not stored, so a task that was in flight may still run on an agent
under ``durable + 1`` or, with a speculative copy, ``durable + 2`` (see
``Task.durable``). Those ids stay adoptable until the task ends: an agent that
lists one in its hello, or hands back its result from its journal, gives the
task that attempt. Both numbers are reserved, and stored at once, so the
task's next attempts, and those after another crash, go on past them.
"""

from __future__ import annotations

from typing import Any

from engine.model import TERMINAL, Attempt, Job, JobStatus, Node, Task, TaskStatus, attempt_id, parse_attempt_id
from engine.reducers import make_reducer
from engine.spec import JobSpec
from engine.transitions import TaskStates, Why

S = TaskStatus


class Recovery(TaskStates):
    def restore_job(
        self,
        job_id: int,
        spec: JobSpec,
        submitted_at: float,
        rows: list[tuple[int, TaskStatus, int, int, int]],
        values: list[tuple[int, Any]],
    ) -> Job:
        """Rebuild a job after a restart from its stored rows
        (index, status, attempts, failures, node_failures) and the values of
        its succeeded tasks. Running is not persisted: a task that was in
        flight may still run under ``attempts + 1`` or, with a speculative
        copy, ``attempts + 2``. Those ids are adopted if an agent reports
        them; a fresh dispatch goes on past them."""
        job = Job(id=job_id, spec=spec, reducer=make_reducer(spec.reduce), submitted_at=submitted_at)
        job.restored = True
        self.jobs[job_id] = job
        self.open_jobs[job_id] = job
        stored = {row[0]: row[1:] for row in rows}
        # Dispatch takes fresh indices in order, so every index below the
        # highest stored one was dispatched at some point.
        job.cursor = max(stored) + 1 if stored else 0
        counts = {status: 0 for status in TaskStatus}
        for index in range(job.cursor):
            row = stored.get(index)
            if row is not None and row[0] in TERMINAL:
                counts[row[0]] += 1
                continue
            if row is None:
                task = self._recovering_task(job, index, 0, 0, 0)
            else:
                task = self._recovering_task(job, index, row[1], row[2], row[3])
            job.requeued.append(task)
            counts[S.QUEUED] += 1
        counts[S.QUEUED] += job.total - job.cursor
        job.counts = counts
        for index, value in values:
            try:
                job.reducer.add(index, value)
            except ValueError:
                pass  # reported when the value first arrived
        if job.done == job.total:
            job.status = job.final_status()
            self.open_jobs.pop(job_id, None)
        self._dirty_jobs.add(job)
        return job

    def _recovering_task(self, job: Job, index: int, durable: int, failures: int, node_failures: int) -> Task:
        """A task that may have attempts ``durable + 1`` and ``durable + 2``
        out there: they stay adoptable until the task ends, and are reserved
        (stored at once), so its next attempt, and those after another
        crash, are past them."""
        task = Task(job, index, issued=durable + 2)
        task.failures, task.node_failures = failures, node_failures
        self._row(task)
        self.recovering[attempt_id(job.id, index, durable + 1)] = task
        self.recovering[attempt_id(job.id, index, durable + 2)] = task
        return task

    def _fresh_task(self, job: Job, index: int) -> Task:
        """The object for a never-dispatched index. In a restored job it may
        have been in flight before the crash, as .1 or .2 (nothing is stored
        at dispatch): those stay adoptable, and its attempts go on past them."""
        if job.restored:
            return self._recovering_task(job, index, 0, 0, 0)
        return Task(job, index)

    def _recoverable(self, aid: str) -> bool:
        """Was ``aid`` perhaps in flight when the engine last died? Tasks with
        rows are listed in ``recovering``; never-finished fresh indices of a
        restored job are materialised here, in order, up to the one asked for
        (they were dispatched in index order, so this is the in-flight window)."""
        if aid in self.recovering:
            return True
        parsed = parse_attempt_id(aid)
        if parsed is None:
            return False
        job_id, index, number = parsed
        job = self.jobs.get(job_id)
        if job is None or not job.restored or job.status is not JobStatus.RUNNING:
            return False
        if number not in (1, 2) or not job.cursor <= index < job.total:
            return False
        for i in range(job.cursor, index + 1):
            job.requeued.append(self._recovering_task(job, i, 0, 0, 0))
        job.cursor = index + 1
        return True

    def _adopt(self, aid: str, node: Node, now: float) -> Attempt | None:
        """Take back an attempt that was in flight before a restart, or on a
        node that was lost and is back: it runs on ``node`` (or finished
        there) under the same id. A task dispatched afresh meanwhile gets it
        as a second attempt; the first result wins."""
        task = self.recovering.pop(aid)
        parsed = parse_attempt_id(aid)
        assert parsed is not None
        attempt = Attempt(task, node, parsed[2])
        if task.status is S.RUNNING:
            return self._add_attempt(attempt)
        if task.status is S.QUEUED:
            task.job.requeued.remove(task)
            self._move(task, S.RUNNING, Why(f"taken back: {node.id} still holds it", now, adopted=attempt))
            return attempt
        return None  # ended or waiting for a retry meanwhile: that attempt is stale

