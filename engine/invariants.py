"""Every invariant of the engine core, checked in one pass.

Tests call ``EngineCore.validate_state()`` after every step; it is free to be
slow. Each assertion names what it protects against.
"""

from __future__ import annotations

from collections import Counter

from engine.model import TERMINAL, JobStatus, Task, TaskStatus, node_capacity, parse_attempt_id
from engine.transitions import TaskStates


def validate_state(core: TaskStates, prefetch_seconds: float, max_prefetch: int) -> None:
    # Every live attempt is listed by its node, and every listed one is live.
    listed: set[str] = set()
    for node in core.nodes.values():
        slots = 0
        for aid, attempt in node.running.items():
            assert core.attempts.get(aid) is attempt, f"{aid} on {node.id} is not a live attempt"
            assert attempt.node is node, f"{aid} listed on {node.id} but runs on {attempt.node.id}"
            assert node.up, f"{aid} is live on {node.id}, which is not up"
            assert aid not in listed, f"{aid} on two nodes"
            listed.add(aid)
            slots += attempt.task.job.spec.slots
        assert slots == node.in_flight_slots, f"{node.id}: in-flight slots {node.in_flight_slots}, its attempts hold {slots}"
    assert listed == set(core.attempts), "live attempts not all listed on their node"
    # Placement looks only at ``roomy``: a node with room missing from it would starve.
    for node in core.nodes.values():
        expected = node_capacity(node.slots, node.rate, prefetch_seconds, max_prefetch)
        assert node.capacity == expected, f"{node.id}: capacity {node.capacity}, its slots and rate give {expected}"
        if node.up and not node.drained and not node.stopping:
            if node.in_flight_slots < node.capacity:
                assert node.id in core.roomy, f"{node.id} has room but placement would not look at it"

    # Each running task has one or more live attempts, all in its list, with
    # distinct ids and numbers no higher than it ever issued; at most two
    # numbers were issued past the last stored row (what a restart relies on).
    running: dict[int, set[Task]] = {}
    for aid, attempt in core.attempts.items():
        task = attempt.task
        assert task.status is TaskStatus.RUNNING, f"{aid} is live but its task is {task.status.label}"
        assert attempt in task.live, f"{aid} is live but not in its task's attempts"
        assert parse_attempt_id(aid) == (task.job.id, task.index, attempt.number), f"{aid}: id and number disagree"
        assert attempt.number <= task.issued, f"{aid}: number past the task's issued {task.issued}"
        running.setdefault(task.job.id, set()).add(task)
    for tasks in running.values():
        for task in tasks:
            ids = [a.id for a in task.live]
            assert task.live and len(set(ids)) == len(ids), f"task {task.job.id}.{task.index}: attempts {ids}"
            assert all(core.attempts.get(a.id) is a for a in task.live), f"task {task.job.id}.{task.index}: a dead attempt in its list"
            assert task.issued - task.durable <= 2, f"task {task.job.id}.{task.index}: issued {task.issued}, stored {task.durable}"

    # Waiting tasks have no attempts and sit in exactly one queue.
    for task in core.backoff:
        assert task.status is TaskStatus.PENDING, f"task in backoff is {task.status.label}"
        assert not task.live, "a task waiting for its retry has live attempts"
    pending = Counter(task.job.id for task in core.backoff)
    assert sum(pending.values()) == len(set(map(id, core.backoff))), "a task is twice in backoff"

    for job in core.jobs.values():
        counts = job.counts
        assert sum(counts.values()) == job.total, f"job {job.id}: counts {counts} do not add up to {job.total}"
        assert all(v >= 0 for v in counts.values()), f"job {job.id}: negative count {counts}"
        seen: set[int] = set()
        for task in job.requeued:
            assert task.status is TaskStatus.QUEUED, f"job {job.id}: requeued task {task.index} is {task.status.label}"
            assert not task.live, f"job {job.id}: requeued task {task.index} has live attempts"
            assert task.index not in seen and task.index < job.cursor, f"job {job.id}: task {task.index} queued twice or past the cursor"
            seen.add(task.index)
        assert counts[TaskStatus.QUEUED] == job.ready, f"job {job.id}: {counts[TaskStatus.QUEUED]} queued but {job.ready} ready"
        live_tasks = len(running.get(job.id, ()))
        started = sum(1 for task in running.get(job.id, ()) if any(a.started_at for a in task.live))
        assert job.started == started, f"job {job.id}: counts {job.started} started, {started} have a started attempt"
        assert counts[TaskStatus.RUNNING] == live_tasks, f"job {job.id}: {counts[TaskStatus.RUNNING]} running, {live_tasks} with live attempts"
        assert counts[TaskStatus.PENDING] == pending.get(job.id, 0), f"job {job.id}: pending count != tasks in backoff"
        if job.status is JobStatus.RUNNING:
            assert job.done < job.total, f"job {job.id}: every task ended but the job runs on"
        else:
            assert job.done == job.total, f"job {job.id} is {job.status.value} with tasks left"
            assert job.id not in core.open_jobs, f"job {job.id} ended but is still open"
    open_ = {j.id for j in core.jobs.values() if j.status is JobStatus.RUNNING}
    assert set(core.open_jobs) == open_, "open_jobs out of step with job states"
    for aid, task in core.recovering.items():
        assert task.status not in TERMINAL, f"{aid} is kept for adoption but task {task.job.id}.{task.index} ended"
