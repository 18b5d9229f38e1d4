"""The engine's pure core: ``handle(event)`` in, effects out.

No sockets, no SQLite, no clock: every input carries ``now``, and randomness
(retry jitter) comes from an injected ``random.Random``. The coordinator feeds
it events as frames arrive and, once per flush, calls ``collect(now)`` to get
the batch of effects to carry out: rows to persist, frames to send, events to
publish. Batching is what makes tens of thousands of tasks a second possible:
one SQLite transaction and one frame per node per flush.

This module says what each input means. Every status change goes through the
transition table, and every attempt comes and goes, in ``engine.transitions``;
what a restart leaves behind is taken back in ``engine.recovery``.
An attempt that ends without a verdict (its node was lost, the agent stopped
or refused it) while the task has another live attempt changes nothing else:
the other attempt carries on.
"""

from __future__ import annotations

import random
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine import events as ev
from engine.inputs import (
    AuditEntry,
    AwaitNodes,
    CancelJob,
    DrainNode,
    DrainOrder,
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
from engine.invariants import validate_state
from engine.model import (
    RUNNING,
    TERMINAL,
    Attempt,
    Job,
    JobStatus,
    Node,
    Task,
    TaskStatus,
)
from engine.recovery import Recovery
from engine.reducers import make_reducer, shell_value
from engine.scheduler import JobDemand, NodeRoom, place
from engine.transitions import Why
from nodeagent.protocol import KIND_SHELL, Outcome, RejectCode, TaskResult

S = TaskStatus


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


# What each refusal means for the task and the node. Transient ones never
# exclude a node; a refusal code this engine does not know, or none (an
# agent older than the codes), counts as "this node cannot run it".
TRANSIENT_REJECTS = frozenset({RejectCode.DRAINING, RejectCode.FULL, RejectCode.SHUTTING_DOWN})


class EngineCore(Recovery):
    def __init__(self, config: CoreConfig | None = None, rng: random.Random | None = None) -> None:
        super().__init__(rng)
        self.config = config or CoreConfig()
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
            AwaitNodes: self._on_await_nodes,
        }
        # After a restart: known nodes whose hello restored jobs wait for, until the deadline.
        self.awaiting: set[str] = set()
        self.await_until = 0.0
        # How an attempt's outcome is taken; any other outcome is a failure.
        self._outcomes: dict[str, Callable[[Attempt, TaskResult, float], None]] = {
            Outcome.OK: self._attempt_ok,
            Outcome.CANCELLED: self._attempt_cancelled,
            Outcome.LOST: self._attempt_lost,
            Outcome.STOPPED: self._attempt_stopped,
        }
        self._rejects: dict[str, Callable[[Node, Job, str], None]] = {
            RejectCode.DRAINING: self._refused_draining,
            RejectCode.FULL: lambda node, job, reason: None,
            RejectCode.SHUTTING_DOWN: self._refused_stopping,
            RejectCode.BAD_SPEC: lambda node, job, reason: None,  # the task fails instead
        }

    # --- entry points -----------------------------------------------------------

    def handle(self, event: Any) -> None:
        self._handlers[type(event)](event)

    def collect(self, now: float) -> Effects:
        """Place ready tasks, summarise progress, and hand over the effects."""
        self._schedule(now)
        events = self.out.events
        for job in self._dirty_jobs:
            events.append(ev.JobProgress(job.id, job.spec.name, job.status.value, job.counts_by_label(), job.total))
        self._dirty_jobs.clear()
        out, self.out = self.out, Effects()
        return out

    def validate_state(self) -> None:
        """Assert every invariant (engine.invariants); tests call it after each step."""
        validate_state(self, self.config.prefetch_seconds, self.config.max_prefetch)

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
        if e.rows and job.status is not JobStatus.RUNNING:
            job.status = JobStatus.RUNNING
            job.finished_at = 0.0
            self.open_jobs[job.id] = job
        if e.reduce_from is not None:
            job.reducer = make_reducer(job.spec.reduce)
            for index, value in e.reduce_from:
                try:
                    job.reducer.add(index, value)
                except ValueError:
                    pass  # reported when the value first arrived
        why = Why("resubmitted", e.now)
        for row in e.rows:
            task = Task(job, row.task_index, issued=row.attempts)
            task.status = row.status
            self._move(task, S.QUEUED, why)
        self.out.audit.append(AuditEntry(e.now, e.actor, "resubmit", f"job {job.id}", f"{len(e.rows)} tasks"))

    def _on_cancel(self, e: CancelJob) -> None:
        job = self.jobs.get(e.job_id)
        if job is None or job.status is not JobStatus.RUNNING:
            return
        wanted = None if e.indices is None else set(e.indices)
        why = Why("cancelled", e.now, error="cancelled by operator")
        # Each in-flight task once, however many attempts it has.
        running = dict.fromkeys(a.task for a in self.attempts.values() if a.task.job is job)
        for task in running:
            if wanted is None or task.index in wanted:
                self._move(task, S.CANCELLED, why)
        waiting = [t for t in self.backoff if t.job is job and (wanted is None or t.index in wanted)]
        if waiting:
            gone = set(waiting)
            self.backoff = [t for t in self.backoff if t not in gone]
            for task in waiting:
                self._move(task, S.CANCELLED, why)
        keep: deque[Task] = deque()
        chosen: list[Task] = []
        for task in job.requeued:
            (chosen if wanted is None or task.index in wanted else keep).append(task)
        job.requeued = keep
        # Never-dispatched tasks: materialise only those asked for.
        fresh = range(job.cursor, job.total)
        picked = fresh if wanted is None else [i for i in sorted(wanted) if job.cursor <= i < job.total]
        if wanted is not None and picked:
            # The fresh ones left become explicit queued tasks, in order.
            keep.extend(self._fresh_task(job, index) for index in fresh if index not in wanted)
        if wanted is None or picked:
            job.cursor = job.total
        for task in chosen:
            self._move(task, S.CANCELLED, why)
        for index in picked:
            self._move(self._fresh_task(job, index), S.CANCELLED, why)
        target = f"job {job.id}" if wanted is None else f"job {job.id} tasks {sorted(wanted)}"
        self.out.audit.append(AuditEntry(e.now, e.actor, "cancel", target, ""))

    # --- nodes ------------------------------------------------------------------

    def _on_node_up(self, e: NodeUp) -> None:
        node = self.nodes.get(e.node)
        if node is None:
            node = self.nodes[e.node] = Node(id=e.node)
        hello = e.hello
        node.agent_id, node.hostname, node.slots = hello.id, hello.hostname, max(1, hello.slots)
        node.size_prefetch(self.config.prefetch_seconds, self.config.max_prefetch)
        node.labels, node.drained, node.up, node.last_seen = dict(hello.labels), hello.drained, True, e.now
        node.kinds = frozenset(hello.capabilities)
        node.drain_ordered = None  # a new session: its hello says what it is
        node.stopping = False
        self.roomy[node.id] = node
        self.awaiting.discard(node.id)
        # A new session: whatever made this node refuse a job may have been
        # fixed (a restart with --allow-pickle, more slots), so try it again.
        for job in self.open_jobs.values():
            job.excluded_nodes.discard(node.id)
        # Attempts this engine thinks are on the node but the node no longer
        # holds (and has no result for, as those follow the hello) are lost.
        held = set(hello.holding)
        for attempt in [a for a in node.running.values() if a.id not in held]:
            self._attempt_gone(attempt, e.now, f"node {node.id} restarted", blame=True)
        # Attempts the node holds that this engine does not expect (run
        # elsewhere meanwhile): cancel them so they stop using slots.
        stale = []
        for aid in held:
            if self._live_on(aid, node.id) is not None:
                continue
            if not (self._recoverable(aid) and self._adopt(aid, node, e.now)):
                stale.append(aid)
        if stale:
            self.out.cancels.setdefault(node.id, []).extend(stale)
        self.out.events.append(ev.NodeChanged(node.id, "up", node.drained, node.slots, node.hostname, node.labels))

    def _on_node_lost(self, e: NodeLost) -> None:
        node = self.nodes.get(e.node)
        if node is None or not node.up:
            return
        node.up = False
        lost = list(node.running.values())
        for attempt in lost:
            self._attempt_gone(attempt, e.now, e.reason, blame=True)
            # The agent may only be cut off and still run it: if it comes
            # back holding it (or with its result), the task takes it back
            # rather than running a second time.
            if attempt.task.status not in TERMINAL:
                self.recovering[attempt.id] = attempt.task
        self.out.events.append(ev.NodeChanged(node.id, "lost", node.drained, node.slots, node.hostname, node.labels, e.reason))
        self.out.events.append(ev.Alert("warning", f"node {node.id} lost: {e.reason}; {len(lost)} attempts ended", node.id))
        self.out.audit.append(AuditEntry(e.now, "engine", "node lost", node.id, f"{e.reason}; {len(lost)} attempts ended"))

    def _on_heartbeat(self, e: HeartbeatReceived) -> None:
        node = self.nodes.get(e.node)
        if node is None:
            return
        hb = e.heartbeat
        node.load, node.last_seen = hb, e.now
        reported = hb.drained
        if node.drain_ordered is not None:
            if reported == node.drain_ordered:
                node.drain_ordered = None
            else:
                reported = node.drain_ordered  # sent before our order arrived
        if reported != node.drained:
            node.drained = reported
            self.roomy[node.id] = node
            self.out.events.append(ev.NodeChanged(node.id, "up", node.drained, node.slots, node.hostname, node.labels))
        self.out.events.append(
            ev.NodeLoad(node.id, hb.cpu, hb.mem, hb.load[0] if hb.load else 0.0, hb.slots_total, hb.slots_busy, hb.queued, len(node.running))
        )

    def _on_drain(self, e: DrainNode) -> None:
        node = self.nodes.get(e.node)
        if node is None:
            return
        node.drained = node.drain_ordered = True
        self.out.drains.append(DrainOrder(node.id, True))
        moved = 0
        if e.requeue:
            cancels = self.out.cancels.setdefault(node.id, [])
            reason = f"node {node.id} drained"
            for attempt in list(node.running.values()):
                cancels.append(attempt.id)
                self._attempt_gone(attempt, e.now, reason, blame=False)
                moved += 1
        self.out.events.append(ev.NodeChanged(node.id, "up" if node.up else "lost", True, node.slots, node.hostname, node.labels))
        self.out.audit.append(AuditEntry(e.now, e.actor, "drain", node.id, f"requeued {moved}" if e.requeue else "graceful"))

    def _on_undrain(self, e: UndrainNode) -> None:
        node = self.nodes.get(e.node)
        if node is None:
            return
        node.drained = node.drain_ordered = False
        self.roomy[node.id] = node
        self.out.drains.append(DrainOrder(node.id, False))
        self.out.events.append(ev.NodeChanged(node.id, "up" if node.up else "lost", False, node.slots, node.hostname, node.labels))
        self.out.audit.append(AuditEntry(e.now, e.actor, "undrain", node.id, ""))

    # --- task reports from agents -------------------------------------------------

    def _live_on(self, aid: str, node_id: str) -> Attempt | None:
        """The live attempt ``aid``, if it is the one on ``node_id``: a report
        from any other node is about something else (a late or stale copy)."""
        attempt = self.attempts.get(aid)
        if attempt is None or attempt.node.id != node_id:
            return None
        return attempt

    def _on_started(self, e: TasksStarted) -> None:
        for aid in e.ids:
            attempt = self._live_on(aid, e.node)
            if attempt is not None and not attempt.started_at:
                task = attempt.task
                if not any(a.started_at for a in task.live):  # its first start: sent -> running
                    task.job.started += 1
                    self._dirty_jobs.add(task.job)
                attempt.started_at = e.now

    def _on_finished(self, e: TasksFinished) -> None:
        node = self.nodes.get(e.node)
        acks = self.out.acks.setdefault(e.node, [])
        outcomes, failed, live, now = self._outcomes, self._attempt_failed, self.attempts, e.now
        for result in e.results:
            # Ack everything, duplicates included: once this flush is
            # persisted the agent may forget it. Acks go out after the commit.
            acks.append(result.id)
            attempt = live.get(result.id)
            if attempt is None or attempt.node is not node:  # only its own node speaks for an attempt
                if node is None or not node.up or not self._recoverable(result.id):
                    continue  # late or duplicate: that attempt was re-run or already counted
                attempt = self._adopt(result.id, node, now)
                if attempt is None:
                    continue
            node.completed_since_tick += 1
            outcomes.get(result.outcome, failed)(attempt, result, now)

    def _attempt_ok(self, attempt: Attempt, result: TaskResult, now: float) -> None:
        task = attempt.task
        job = task.job
        self._drop(attempt)
        task.node = attempt.node.id
        if job.spec.kind == KIND_SHELL:
            # Its whole stdout: in ``value`` when longer than the tail the agent keeps.
            value = shell_value(result.value if isinstance(result.value, bytes) else result.stdout)
        else:
            value = result.value
        if result.ended and result.started:
            job.recent_durations.append(result.ended - result.started)
        try:
            job.reducer.add(task.index, value)
        except ValueError as exc:  # the value does not fit the reducer: that task failed
            self._move(task, S.FAILED, Why("reducer refused the value", now, str(exc), result=result, value=value))
        else:
            self._move(task, S.SUCCEEDED, Why("succeeded", now, result=result, value=value))

    def _attempt_cancelled(self, attempt: Attempt, result: TaskResult, now: float) -> None:
        # A console's cancel: final. (This engine drops an attempt before it
        # cancels it, so this is one asked for before a restart.)
        self._drop(attempt)
        attempt.task.node = attempt.node.id
        self._move(attempt.task, S.CANCELLED, Why("cancelled on node", now, result.error, result=result))

    def _attempt_lost(self, attempt: Attempt, result: TaskResult, now: float) -> None:
        self._attempt_gone(attempt, now, result.error or "agent restarted", blame=True)

    def _attempt_stopped(self, attempt: Attempt, result: TaskResult, now: float) -> None:
        self._attempt_gone(attempt, now, result.error or "agent stopped", blame=False)

    def _attempt_failed(self, attempt: Attempt, result: TaskResult, now: float) -> None:
        task = attempt.task
        self._drop(attempt)
        if task.live:
            return  # a copy failed; the other attempt may still succeed
        task.node = attempt.node.id
        task.failures += 1
        error = result.error or result.outcome
        # A value over max_result is not retried: a rerun makes the same value.
        if task.failures <= task.job.spec.retries and result.outcome != Outcome.TOO_BIG:
            self._move(task, S.PENDING, Why(f"attempt {attempt.number} {result.outcome}; retrying", now, error, result=result))
        else:
            self._move(task, S.FAILED, Why(result.outcome, now, error, result=result))

    def _attempt_gone(self, attempt: Attempt, now: float, reason: str, *, blame: bool) -> None:
        """An attempt ended without a verdict: its node died or restarted
        (``blame``: it may have killed the node), or the agent stopped, or the
        operator drained the node with requeue. The task runs again, unless
        another of its attempts still runs, or nodes keep dying under it: a
        poison task fails instead of killing more.

        Blame counts every attempt the first time (agents hold reports back
        for up to 50 ms, so the engine cannot tell a task that just finished
        or still waited in the node's queue from one that ran). A suspect is
        then sent with ``report_start``, so the next time the verdict is
        exact: it counts only if its start was reported, and tasks that
        finished before it have been reported too.
        """
        task = attempt.task
        self._drop(attempt)
        if task.live:
            return  # the other copy carries on
        task.node = attempt.node.id
        if blame:
            if task.node_failures and not attempt.started_at:
                reason = f"{reason}; it had not started there"
            else:
                task.node_failures += 1
                if task.node_failures >= task.job.spec.max_node_failures:
                    msg = f"poison task: lost with its node {task.node_failures} times ({reason})"
                    self.out.audit.append(AuditEntry(now, "engine", "poison", f"task {task.job.id}.{task.index}", msg))
                    self._move(task, S.FAILED, Why("poison", now, msg))
                    return
        self._move(task, S.QUEUED, Why(reason, now))

    def _on_rejected(self, e: TasksRejected) -> None:
        node = self.nodes.get(e.node)
        if node is None:
            return
        transient = e.code in TRANSIENT_REJECTS
        react = self._rejects.get(e.code, self._refused_unsupported)
        cause = f"refused by {e.node}: {e.reason}"
        for aid in e.ids:
            attempt = self._live_on(aid, e.node)
            if attempt is None:
                continue
            task = attempt.task
            self._drop(attempt)
            react(node, task.job, e.reason)
            if task.live:
                continue  # a refused copy: the other attempt runs on
            why = Why(cause, e.now, e.reason)
            if e.code == RejectCode.BAD_SPEC:
                self._move(task, S.FAILED, why)  # no agent will ever take it
            else:
                self._move(task, S.QUEUED, why)
        if not transient and e.code != RejectCode.BAD_SPEC:
            self.out.events.append(ev.Alert("warning", f"node {e.node} refused tasks ({e.code or 'no code'}): {e.reason}", e.node))

    def _refused_draining(self, node: Node, job: Job, reason: str) -> None:
        node.drained = True

    def _refused_stopping(self, node: Node, job: Job, reason: str) -> None:
        node.stopping = True  # until it comes back as a new session

    def _refused_unsupported(self, node: Node, job: Job, reason: str) -> None:
        job.excluded_nodes.add(node.id)

    def _on_progress(self, e: ProgressReported) -> None:
        attempt = self._live_on(e.progress.id, e.node)
        if attempt is not None:
            task = attempt.task
            self.out.events.append(ev.TaskProgress(task.job.id, task.index, e.progress.fraction, e.progress.message))

    def _on_output(self, e: OutputReceived) -> None:
        attempt = self._live_on(e.output.id, e.node)
        if attempt is not None:
            task = attempt.task
            self.out.events.append(ev.TaskOutput(task.job.id, task.index, e.output.stream, e.output.data))

    # --- time -------------------------------------------------------------------

    def _on_await_nodes(self, e: AwaitNodes) -> None:
        self.awaiting = {n for n in e.nodes if not ((node := self.nodes.get(n)) and node.up)}
        self.await_until = e.now + self.config.heartbeat_timeout

    def _on_tick(self, e: Tick) -> None:
        now = e.now
        if self.awaiting and now >= self.await_until:
            missing = ", ".join(sorted(self.awaiting))
            self.awaiting = set()
            self.out.events.append(ev.Alert("warning", f"no hello from {missing} since the restart: restored tasks run elsewhere"))
        if self.backoff:
            due = [t for t in self.backoff if t.ready_at <= now]
            if due:
                self.backoff = [t for t in self.backoff if t.ready_at > now]
                why = Why("backoff over", now)
                for task in due:
                    self._move(task, S.QUEUED, why)
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
        cfg = self.config
        for node in self.nodes.values():
            sample = node.completed_since_tick / dt if dt > 0 else 0.0
            node.rate = 0.5 * node.rate + 0.5 * sample
            node.completed_since_tick = 0
            node.size_prefetch(cfg.prefetch_seconds, cfg.max_prefetch)
            if node.in_flight_slots < node.capacity:
                self.roomy[node.id] = node  # its prefetch may have grown

    def _speculate(self, now: float) -> None:
        """Straggler copies: for a job with nothing left to place, a task
        running far longer than its peers' median gets a second attempt on an
        idle node; the first to finish wins, the other is cancelled.

        At most two attempt numbers are issued past the last stored row
        (``Task.durable``), so a restarted engine knows which ids may still
        be out there: a task that already used its two gets no copy."""
        candidates = [j for j in self.open_jobs.values() if j.spec.speculative and not j.ready]
        if not candidates:
            return
        idle = [n for n in self.nodes.values() if self._accepts_work(n) and n.in_flight_slots < n.slots]
        for job in candidates:
            if len(job.recent_durations) < self.config.speculate_min_peers:
                continue
            limit = self.config.speculate_after * statistics.median(job.recent_durations)
            stragglers = [
                a
                for a in self.attempts.values()
                if a.task.job is job
                and len(a.task.live) == 1
                and a.task.issued - a.task.durable < 2
                and a.started_at
                and now - a.started_at > limit
            ]
            for attempt in stragglers:
                if not idle:
                    return
                node = next((n for n in idle if n is not attempt.node and n.id not in job.excluded_nodes), None)
                if node is None:
                    continue
                task = attempt.task
                self._send(job, node, [self._add_attempt(Attempt(task, node, task.issued + 1))])
                self.out.audit.append(AuditEntry(now, "engine", "speculate", f"task {job.id}.{task.index}", node.id))
                if node.in_flight_slots >= node.slots:
                    idle.remove(node)

    # --- placement --------------------------------------------------------------

    @staticmethod
    def _accepts_work(node: Node) -> bool:
        return node.up and not node.drained and not node.stopping

    def _schedule(self, now: float) -> None:
        """Place ready tasks on the nodes that may have room. Only those are
        looked at (``roomy``: a node joins when an attempt leaves it or it
        becomes able to take work, and leaves once full or unable), so a
        flush after one node's results costs the same with 10 or 10,000
        nodes up."""
        roomy = self.roomy
        if not roomy:
            return
        waiting = bool(self.awaiting)  # restored jobs wait for known nodes' hellos
        demands: list[JobDemand] = []
        for job in self.open_jobs.values():
            ready = job.ready
            if ready and not (waiting and job.restored):
                demand = job.demand
                demand.ready = ready
                demands.append(demand)
        if not demands:
            return
        rooms: list[NodeRoom] = []
        for node in list(roomy.values()):
            if node.in_flight_slots < node.capacity and self._accepts_work(node):
                rooms.append(NodeRoom(node.id, node.capacity, node.in_flight_slots, node.labels, node.kinds))
            else:
                del roomy[node.id]
        if not rooms:
            return
        jobs, nodes = self.jobs, self.nodes
        for placement in place(demands, rooms):
            job = jobs[placement.job_id]
            node = nodes[placement.node_id]
            # All of them in one move: one table lookup and one counts update.
            self._move_all(self._take_ready(job, placement.count), RUNNING, Why("dispatched", now, node=node))
            if node.in_flight_slots >= node.capacity:
                roomy.pop(node.id, None)

    def _take_ready(self, job: Job, count: int) -> list[Task]:
        """The next ``count`` ready tasks of ``job``: requeued ones first, then
        never-dispatched indices in order (their objects are made here).
        Plain loops: see ``engine.scheduler.place``."""
        requeued = job.requeued
        tasks: list[Task] = []
        while requeued and len(tasks) < count:
            tasks.append(requeued.popleft())
        start = job.cursor
        job.cursor = end = start + count - len(tasks)
        fresh = self._fresh_task if job.restored else Task
        for index in range(start, end):
            tasks.append(fresh(job, index))
        return tasks
