"""The engine's pure core: ``handle(event)`` in, effects out.

No sockets, no SQLite, no clock: every input carries ``now``, and randomness
(retry jitter) comes from an injected ``random.Random``. The coordinator feeds
it events as frames arrive and, once per flush, calls ``collect(now)`` to get
the batch of effects to carry out: rows to persist, frames to send, events to
publish. Batching is what makes tens of thousands of tasks a second possible:
one SQLite transaction and one frame per node per flush.

A task's status is set in exactly one place, ``_move``, which checks the
transition table in ``engine.model``.
"""

from __future__ import annotations

import random
import statistics
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from engine import events as ev
from engine.inputs import (
    CancelJob,
    DrainNode,
    Effects,
    HeartbeatReceived,
    JobSubmitted,
    NodeLost,
    NodeUp,
    OutputReceived,
    ProgressReported,
    ResubmitTasks,
    TasksFinished,
    TasksRejected,
    TasksStarted,
    Tick,
    UndrainNode,
)
from engine.model import (
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    Job,
    JobStatus,
    Node,
    Task,
    TaskStatus,
    attempt_id,
    parse_attempt_id,
)
from nodeagent.protocol import (
    KIND_SHELL,
    OUTCOME_CANCELLED,
    OUTCOME_LOST,
    OUTCOME_OK,
    TaskResult,
    TaskSpec,
)
from engine.reducers import make_reducer, shell_value
from engine.scheduler import JobDemand, NodeRoom, place
from engine.spec import JobSpec

# Jobs this small report every task transition as an event; bigger ones are
# summarised by JobProgress so a UI is not flooded.
TASK_EVENTS_UP_TO = 10_000

@dataclass(frozen=True, slots=True)
class CoreConfig:
    # What a node may hold beyond its slots: about this long of its work.
    # Twice the 50 ms an agent may hold its reports back while busy, so a
    # node never runs dry waiting for the engine to learn it has room.
    prefetch_seconds: float = 0.1
    max_prefetch: int = 4096
    heartbeat_timeout: float = 3.0
    speculate_after: float = 3.0  # x the median duration of finished peers
    speculate_min_peers: int = 5


class EngineCore:
    def __init__(self, config: CoreConfig | None = None, rng: random.Random | None = None) -> None:
        self.config = config or CoreConfig()
        self.rng = rng or random.Random()
        self.jobs: dict[int, Job] = {}
        self.open_jobs: dict[int, Job] = {}  # the running ones: what a flush looks at
        self.nodes: dict[str, Node] = {}
        self.attempts: dict[str, Task] = {}  # live attempt id -> task
        # After a restart: the attempt ids that were perhaps in flight when the
        # engine died. An agent that still runs one, or has its result in its
        # journal, hands it back; the task is then adopted instead of rerun.
        self.recovering: dict[str, Task] = {}
        self.backoff: list[Task] = []  # tasks in PENDING, checked on Tick
        self.out = Effects()
        self._dirty_jobs: set[Job] = set()
        self._handlers: dict[type, Callable[[Any], None]] = {
            JobSubmitted: self._on_job_submitted,
            NodeUp: self._on_node_up,
            NodeLost: self._on_node_lost,
            HeartbeatReceived: self._on_heartbeat,
            TasksStarted: self._on_started,
            TasksFinished: self._on_finished,
            TasksRejected: self._on_rejected,
            ProgressReported: self._on_progress,
            OutputReceived: self._on_output,
            Tick: self._on_tick,
            ResubmitTasks: self._on_resubmit,
            CancelJob: self._on_cancel,
            DrainNode: self._on_drain,
            UndrainNode: self._on_undrain,
        }

    # --- entry points -----------------------------------------------------------

    def handle(self, event: Any) -> None:
        self._handlers[type(event)](event)

    def collect(self, now: float) -> Effects:
        """Place ready tasks, summarise progress, and hand over the effects."""
        self._schedule(now)
        for job in self._dirty_jobs:
            self.out.events.append(
                ev.JobProgress(job.id, job.spec.name, job.status.value, job.counts_by_label(), job.total)
            )
        self._dirty_jobs.clear()
        out, self.out = self.out, Effects()
        return out

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
        its succeeded tasks. Tasks that were in flight have no row (running is
        not persisted): they are simply dispatched again with the same attempt
        id, which the agent recognises."""
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
            task = Task(job, index)
            if row is not None:
                task.attempts, task.failures, task.node_failures = row[1], row[2], row[3]
            job.requeued.append(task)
            self.recovering[attempt_id(job.id, index, task.attempts + 1)] = task
            counts[TaskStatus.QUEUED] += 1
        counts[TaskStatus.QUEUED] += job.total - job.cursor
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

    # --- jobs -------------------------------------------------------------------

    def _on_job_submitted(self, e: JobSubmitted) -> None:
        job = Job(id=e.job_id, spec=e.spec, reducer=make_reducer(e.spec.reduce), submitted_at=e.now)
        self.jobs[job.id] = job
        self.open_jobs[job.id] = job
        self._dirty_jobs.add(job)
        if job.total == 0:
            self._finish_job(job, e.now)

    def _on_resubmit(self, e: ResubmitTasks) -> None:
        job = self.jobs[e.job_id]
        for index, status, attempts in e.rows:
            task = Task(job, index)
            task.status = status
            task.attempts = attempts
            self._move(task, TaskStatus.QUEUED, e.actor)
            job.requeued.append(task)
        if e.rows and job.status is not JobStatus.RUNNING:
            job.status = JobStatus.RUNNING
            job.finished_at = 0.0
            self.open_jobs[job.id] = job
        self.out.audit.append((e.now, e.actor, "resubmit", f"job {job.id}", f"{len(e.rows)} tasks"))

    def _on_cancel(self, e: CancelJob) -> None:
        job = self.jobs.get(e.job_id)
        if job is None or job.status is not JobStatus.RUNNING:
            return
        wanted = None if e.indices is None else set(e.indices)
        # In-flight and waiting tasks.
        for task in [t for t in self.attempts.values() if t.job is job]:
            if wanted is None or task.index in wanted:
                self._release(task)
                self.out.cancels.setdefault(task.node, []).append(task.attempt_id)
                self._cancel_task(task, e.actor)
        for task in [t for t in self.backoff if t.job is job and (wanted is None or t.index in wanted)]:
            self.backoff.remove(task)
            self._cancel_task(task, e.actor)
        keep: deque[Task] = deque()
        for task in job.requeued:
            if wanted is None or task.index in wanted:
                self._cancel_task(task, e.actor)
            else:
                keep.append(task)
        job.requeued = keep
        # Never-dispatched tasks: materialise only those asked for.
        fresh = range(job.cursor, job.total)
        chosen = fresh if wanted is None else [i for i in sorted(wanted) if i >= job.cursor]
        for index in chosen:
            self._cancel_task(Task(job, index), e.actor)
        if wanted is None:
            job.cursor = job.total
        elif chosen:
            # Keep the remaining fresh ones as explicit requeued tasks.
            for index in fresh:
                if index not in wanted:
                    job.requeued.append(Task(job, index))
            job.cursor = job.total
        target = f"job {job.id}" if wanted is None else f"job {job.id} tasks {sorted(wanted)}"
        self.out.audit.append((e.now, e.actor, "cancel", target, ""))
        self._check_done(job, e.now)

    def _cancel_task(self, task: Task, actor: str) -> None:
        self._move(task, TaskStatus.CANCELLED, actor, error="cancelled by operator")
        self._row(task, error="cancelled by operator")

    def _finish_job(self, job: Job, now: float) -> None:
        job.status = job.final_status()
        job.finished_at = now
        self.open_jobs.pop(job.id, None)
        self.out.finished_jobs.append(job)
        self.out.events.append(
            ev.JobFinished(job.id, job.spec.name, job.status.value, job.counts_by_label(), job.reducer.result())
        )
        self._dirty_jobs.add(job)

    def _check_done(self, job: Job, now: float) -> None:
        if job.status is JobStatus.RUNNING and job.done == job.total:
            self._finish_job(job, now)

    # --- the one place a task's status changes ------------------------------------

    def _move(self, task: Task, to: TaskStatus, cause: str, error: str = "") -> None:
        frm = task.status
        if (frm, to) not in TRANSITIONS:
            raise IllegalTransition(f"task {task.job.id}.{task.index}: {frm.label} -> {to.label} ({cause})")
        task.status = to
        job = task.job
        job.counts[frm] -= 1
        job.counts[to] += 1
        self._dirty_jobs.add(job)
        routine = to in (TaskStatus.RUNNING, TaskStatus.SUCCEEDED)
        if job.total <= TASK_EVENTS_UP_TO or not routine:
            self.out.events.append(
                ev.TaskChanged(job.id, task.index, to.label, task.node, task.attempts + 1, cause, error)
            )

    def _row(self, task: Task, result: TaskResult | None = None, value: Any = None, error: str = "") -> None:
        r = result
        self.out.task_rows.append(
            (
                task.job.id,
                task.index,
                int(task.status),
                task.attempts,
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

    # --- nodes ------------------------------------------------------------------

    def _on_node_up(self, e: NodeUp) -> None:
        node = self.nodes.get(e.node)
        if node is None:
            node = self.nodes[e.node] = Node(id=e.node)
        hello = e.hello
        node.agent_id, node.hostname, node.slots = hello.id, hello.hostname, max(1, hello.slots)
        node.labels, node.drained, node.up, node.last_seen = dict(hello.labels), hello.drained, True, e.now
        # Attempts this engine thinks are on the node but the node no longer
        # holds (and has no result for, as those follow the hello) are lost.
        held = set(hello.holding)
        for aid, task in list(node.running.items()):
            if aid not in held and task.attempt_id == aid:
                self._requeue_lost(task, e.now, f"node {node.id} restarted")
        # Attempts the node holds that this engine does not expect (re-run
        # elsewhere meanwhile): cancel them so they stop using slots.
        for aid in held:
            if self._recoverable(aid):
                self._adopt(aid, node)
        stale = [aid for aid in held if aid not in self.attempts]
        if stale:
            self.out.cancels.setdefault(node.id, []).extend(stale)
        self.out.events.append(
            ev.NodeChanged(node.id, "up", node.drained, node.slots, node.hostname, node.labels)
        )

    def _on_node_lost(self, e: NodeLost) -> None:
        node = self.nodes.get(e.node)
        if node is None or not node.up:
            return
        node.up = False
        lost = list(node.running.values())
        for task in lost:
            self._requeue_lost(task, e.now, e.reason)
        self.out.events.append(ev.NodeChanged(node.id, "lost", node.drained, node.slots, node.hostname, node.labels, e.reason))
        self.out.events.append(ev.Alert("warning", f"node {node.id} lost: {e.reason}; {len(lost)} tasks requeued", node.id))
        self.out.audit.append((e.now, "engine", "node lost", node.id, f"{e.reason}; requeued {len(lost)}"))

    def _requeue_lost(self, task: Task, now: float, reason: str) -> None:
        """The task's node died under it (or was drained with requeue)."""
        spare = task.spare
        self._release(task)
        if spare is not None and spare[0] != task.attempt_id:
            return  # the other copy is still running
        task.attempts += 1
        self._lost_attempt(task, now, reason)

    def _lost_attempt(self, task: Task, now: float, reason: str) -> None:
        """Rerun a task whose attempt was lost with its node, unless nodes
        keep dying under it: a poison task fails instead of killing more.

        An attempt the node may have run counts against the task: all of them
        the first time (agents hold reports back for up to 50 ms, so
        the engine cannot tell a task that just finished or still waited in
        the node's queue from one that ran). A suspect is then sent with
        ``report_start``, so the next time the verdict is exact: it counts
        only if its start was reported, and tasks that finished before it
        have been reported too.
        """
        if task.node_failures and not task.started_at:
            reason = f"{reason}; it had not started there"
        else:
            task.node_failures += 1
            if task.node_failures >= task.job.spec.max_node_failures:
                msg = f"poison task: lost with its node {task.node_failures} times ({reason})"
                self._move(task, TaskStatus.FAILED, "poison", msg)
                self._row(task, error=msg)
                self.out.audit.append((now, "engine", "poison", f"task {task.job.id}.{task.index}", msg))
                self._check_done(task.job, now)
                return
        self._move(task, TaskStatus.QUEUED, reason)
        self._row(task)
        task.job.requeued.appendleft(task)

    def _release(self, task: Task) -> None:
        """Forget the live attempt(s) of a task on their nodes."""
        for aid, node_id in ((task.attempt_id, task.node), task.spare or ("", "")):
            if not aid:
                continue
            self.attempts.pop(aid, None)
            node = self.nodes.get(node_id)
            if node is not None and node.running.pop(aid, None) is not None:
                node.in_flight_slots -= task.job.spec.slots
        task.spare = None

    def _on_heartbeat(self, e: HeartbeatReceived) -> None:
        node = self.nodes.get(e.node)
        if node is None:
            return
        hb = e.heartbeat
        node.load, node.last_seen = hb, e.now
        if hb.drained != node.drained:
            node.drained = hb.drained
            self.out.events.append(ev.NodeChanged(node.id, "up", node.drained, node.slots, node.hostname, node.labels))
        self.out.events.append(
            ev.NodeLoad(node.id, hb.cpu, hb.mem, hb.load[0] if hb.load else 0.0, hb.slots_total, hb.slots_busy, hb.queued, len(node.running))
        )

    def _on_drain(self, e: DrainNode) -> None:
        node = self.nodes.get(e.node)
        if node is None:
            return
        node.drained = True
        self.out.drains.append((node.id, True))
        moved = 0
        if e.requeue:
            for task in list(node.running.values()):
                self.out.cancels.setdefault(node.id, []).append(task.attempt_id)
                self._release(task)
                task.attempts += 1
                self._move(task, TaskStatus.QUEUED, f"node {node.id} drained")
                self._row(task)
                task.job.requeued.appendleft(task)
                moved += 1
        self.out.events.append(ev.NodeChanged(node.id, "up" if node.up else "lost", True, node.slots, node.hostname, node.labels))
        self.out.audit.append((e.now, e.actor, "drain", node.id, f"requeued {moved}" if e.requeue else "graceful"))

    def _on_undrain(self, e: UndrainNode) -> None:
        node = self.nodes.get(e.node)
        if node is None:
            return
        node.drained = False
        self.out.drains.append((node.id, False))
        self.out.events.append(ev.NodeChanged(node.id, "up" if node.up else "lost", False, node.slots, node.hostname, node.labels))
        self.out.audit.append((e.now, e.actor, "undrain", node.id, ""))

    # --- task reports from agents -------------------------------------------------

    def _on_started(self, e: TasksStarted) -> None:
        attempts = self.attempts
        for aid in e.ids:
            task = attempts.get(aid)
            if task is not None and not task.started_at:
                task.started_at = e.now

    def _on_finished(self, e: TasksFinished) -> None:
        attempts = self.attempts
        node = self.nodes.get(e.node)
        acks = self.out.acks.setdefault(e.node, [])
        for result in e.results:
            # Ack everything, duplicates included: once this flush is
            # persisted the agent may forget it. Acks go out after the commit.
            acks.append(result.id)
            task = attempts.get(result.id)
            if task is None:
                if node is None or not self._recoverable(result.id):
                    continue  # late or duplicate: that attempt was re-run or already counted
                task = self._adopt(result.id, node)
            if node is not None:
                node.completed_since_tick += 1
            self._complete(task, result, e.node, e.now)

    def _complete(self, task: Task, result: TaskResult, node_id: str, now: float) -> None:
        job = task.job
        spec = job.spec
        other = None
        if task.spare is not None:
            pair = {task.attempt_id: task.node, task.spare[0]: task.spare[1]}
            pair.pop(result.id, None)
            other = next(iter(pair.items()), None)
        self._release(task)
        if other is not None:
            self.out.cancels.setdefault(other[1], []).append(other[0])
        task.node = node_id
        task.attempts += 1
        outcome = result.outcome
        if outcome == OUTCOME_OK:
            value = shell_value(result.stdout) if spec.kind == KIND_SHELL else result.value
            if result.ended and result.started:
                job.recent_durations.append(result.ended - result.started)
            try:
                job.reducer.add(task.index, value)
            except ValueError as exc:  # the value does not fit the reducer: that task failed
                self._move(task, TaskStatus.FAILED, "reducer refused the value", str(exc))
                self._row(task, result, value, error=str(exc))
            else:
                self._move(task, TaskStatus.SUCCEEDED, "succeeded")
                self._row(task, result, value)
            self._check_done(job, now)
        elif outcome == OUTCOME_CANCELLED:
            self._move(task, TaskStatus.CANCELLED, "cancelled on node", result.error)
            self._row(task, result)
            self._check_done(job, now)
        elif outcome == OUTCOME_LOST:
            self._lost_attempt(task, now, result.error or "agent restarted")
        else:
            task.failures += 1
            error = result.error or outcome
            if task.failures <= spec.retries:
                delay = min(spec.backoff_cap, spec.backoff_base * 2 ** (task.failures - 1))
                task.ready_at = now + delay * (0.5 + 0.5 * self.rng.random())  # equal jitter
                self._move(task, TaskStatus.PENDING, f"attempt {task.attempts} {outcome}; retry in {task.ready_at - now:.1f}s", error)
                self._row(task, result)
                self.backoff.append(task)
            else:
                self._move(task, TaskStatus.FAILED, outcome, error)
                self._row(task, result)
                self._check_done(job, now)

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
        job_id, index, attempt = parsed
        job = self.jobs.get(job_id)
        if job is None or not job.restored or job.status is not JobStatus.RUNNING:
            return False
        if attempt != 1 or not job.cursor <= index < job.total:
            return False
        for i in range(job.cursor, index + 1):
            task = Task(job, i)
            job.requeued.append(task)
            self.recovering[attempt_id(job.id, i, 1)] = task
        job.cursor = index + 1
        return True

    def _adopt(self, aid: str, node: Node) -> Task:
        """Take back an attempt that was in flight before a restart: it is
        running on ``node`` (or finished there) under the same id."""
        task = self.recovering.pop(aid)
        task.job.requeued.remove(task)
        task.node = node.id
        self._move(task, TaskStatus.RUNNING, "recovered after restart")
        task.attempt_id = aid
        self.attempts[aid] = task
        node.running[aid] = task
        node.in_flight_slots += task.job.spec.slots
        return task

    def _on_rejected(self, e: TasksRejected) -> None:
        node = self.nodes.get(e.node)
        transient = "drained" in e.reason or "full" in e.reason
        if node is not None and "drained" in e.reason:
            node.drained = True
        for aid in e.ids:
            task = self.attempts.get(aid)
            if task is None or task.attempt_id != aid:
                continue
            self._release(task)
            if not transient:
                task.job.excluded_nodes.add(e.node)
                self.out.events.append(ev.Alert("warning", f"node {e.node} refused job {task.job.id}: {e.reason}", e.node))
            self._move(task, TaskStatus.QUEUED, f"refused by {e.node}: {e.reason}")
            task.job.requeued.appendleft(task)

    def _on_progress(self, e: ProgressReported) -> None:
        task = self.attempts.get(e.progress.id)
        if task is not None:
            self.out.events.append(ev.TaskProgress(task.job.id, task.index, e.progress.fraction, e.progress.message))

    def _on_output(self, e: OutputReceived) -> None:
        task = self.attempts.get(e.output.id)
        if task is not None:
            self.out.events.append(ev.TaskOutput(task.job.id, task.index, e.output.stream, e.output.data))

    # --- time -------------------------------------------------------------------

    def _on_tick(self, e: Tick) -> None:
        now = e.now
        if self.backoff:
            due = [t for t in self.backoff if t.ready_at <= now]
            if due:
                self.backoff = [t for t in self.backoff if t.ready_at > now]
                for task in due:
                    self._move(task, TaskStatus.QUEUED, "backoff over")
                    task.job.requeued.append(task)
        for node in self.nodes.values():
            if node.up and now - node.last_seen > self.config.heartbeat_timeout:
                self.handle(NodeLost(node.id, f"no heartbeat for {now - node.last_seen:.1f}s", now))
                # The connection may still be open (a stopped or wedged
                # agent): drop it, so a recovered agent comes back through a
                # fresh handshake that reconciles what it holds.
                self.out.disconnects.append(node.id)
        self._speculate(now)

    def update_rates(self, dt: float) -> None:
        """Smooth each node's completion rate (drives its prefetch)."""
        for node in self.nodes.values():
            sample = node.completed_since_tick / dt if dt > 0 else 0.0
            node.rate = 0.5 * node.rate + 0.5 * sample
            node.completed_since_tick = 0

    def _speculate(self, now: float) -> None:
        """Straggler copies: for a job with nothing left to place, a task
        running far longer than its peers' median gets a second attempt on an
        idle node; the first to finish wins, the other is cancelled."""
        candidates = [j for j in self.open_jobs.values() if j.spec.speculative and not j.ready]
        if not candidates:
            return
        idle = [n for n in self.nodes.values() if n.up and not n.drained and n.in_flight_slots < n.slots]
        for job in candidates:
            if len(job.recent_durations) < self.config.speculate_min_peers:
                continue
            limit = self.config.speculate_after * statistics.median(job.recent_durations)
            for task in [t for t in self.attempts.values() if t.job is job and t.spare is None]:
                if not idle:
                    return
                if task.started_at and now - task.started_at > limit:
                    node = next((n for n in idle if n.id != task.node and n.id not in job.excluded_nodes), None)
                    if node is None:
                        continue
                    aid = attempt_id(job.id, task.index, task.attempts + 2)
                    task.spare = (aid, node.id)
                    self._send(task, node, aid)
                    self.out.audit.append((now, "engine", "speculate", f"task {job.id}.{task.index}", node.id))
                    if node.in_flight_slots >= node.slots:
                        idle.remove(node)

    # --- placement --------------------------------------------------------------

    def _schedule(self, now: float) -> None:
        cfg = self.config
        rooms = [
            NodeRoom(n.id, n.capacity(cfg.prefetch_seconds, cfg.max_prefetch), n.in_flight_slots, n.labels)
            for n in self.nodes.values()
            if n.up and not n.drained
        ]
        if not rooms:
            return
        demands = [
            JobDemand(j.id, j.spec.priority, j.ready, j.spec.slots, j.spec.labels, frozenset(j.excluded_nodes))
            for j in self.open_jobs.values()
            if j.ready
        ]
        if not demands:
            return
        for placement in place(demands, rooms):
            job = self.jobs[placement.job_id]
            node = self.nodes[placement.node_id]
            for _ in range(placement.count):
                if job.requeued:
                    task = job.requeued.popleft()
                else:
                    task = Task(job, job.cursor)
                    job.cursor += 1
                task.node = node.id
                self._move(task, TaskStatus.RUNNING, "dispatched")
                task.sent_at = now
                task.started_at = 0.0
                self._send(task, node, attempt_id(job.id, task.index, task.attempts + 1))

    def _send(self, task: Task, node: Node, aid: str) -> None:
        spec = task.job.spec
        if self.recovering:
            self.recovering.pop(aid, None)
        if task.spare is None or task.spare[0] != aid:
            task.attempt_id = aid
        self.attempts[aid] = task
        node.running[aid] = task
        node.in_flight_slots += spec.slots
        runs = self.out.runs.get(node.id)
        if runs is None:
            runs = self.out.runs[node.id] = []
        runs.append(TaskSpec(aid, spec.kind, report_start=task.node_failures > 0, **spec.task_fields(task.index)))

    # --- invariants (tests call this after every step) ------------------------------

    def validate_state(self) -> None:
        seen: set[str] = set()
        for node in self.nodes.values():
            slots = 0
            for aid, task in node.running.items():
                assert self.attempts.get(aid) is task, f"{aid} on {node.id} not a live attempt"
                assert task.status is TaskStatus.RUNNING, f"{aid} on {node.id} is {task.status.label}"
                assert aid not in seen, f"{aid} on two nodes"
                seen.add(aid)
                slots += task.job.spec.slots
            assert slots == node.in_flight_slots, f"{node.id}: slot count {node.in_flight_slots} != {slots}"
        assert seen == set(self.attempts), "live attempts not all on a node"
        for job in self.jobs.values():
            assert sum(job.counts.values()) == job.total, f"job {job.id} counts do not add up"
            assert all(v >= 0 for v in job.counts.values()), f"job {job.id} negative count"
            for task in job.requeued:
                assert task.status is TaskStatus.QUEUED, f"requeued task {task.index} is {task.status.label}"
            queued = job.counts[TaskStatus.QUEUED]
            assert queued == job.ready, f"job {job.id}: {queued} queued but {job.ready} ready"
        for task in self.backoff:
            assert task.status is TaskStatus.PENDING
        running = {j.id for j in self.jobs.values() if j.status is JobStatus.RUNNING}
        assert set(self.open_jobs) == running, "open_jobs out of step with job states"
