"""What the console knows of the engine between two frames.

Engine events are not drawn one by one: ``absorb`` folds a tick's worth of
them into dirty flags, CPU histories and log lines, and the app then asks the
engine's snapshot queries (``nodes()``, ``jobs()``) at most once per tick.
A 100,000-task job sends tens of thousands of events a second; the console
does a few queries a second whatever that rate is.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine import events as ev
from engine.views import AuditEntry, JobInfo, LoadSample, NodeInfo

CPU_SAMPLES = 60  # one a heartbeat (about a second): the last minute
LOG_LINES = 5_000

BAD_NODE_STATES = {"lost", "untrusted", "refused"}

# What the console subscribes to. Not TaskChanged: jobs of up to 10,000 tasks
# send one per task move, and a console does not draw per task; JobProgress
# says which jobs moved and by how much (failures included), the task views
# query the engine for the rest. Not TaskProgress: the task detail polls.
KINDS = ("NodeChanged", "NodeLoad", "JobProgress", "JobFinished", "Alert")


@dataclass(frozen=True, slots=True)
class LogLine:
    t: float
    level: str  # info, warning, error
    text: str
    notify: bool = False  # also raised as a toast


@dataclass
class Feed:
    """The engine as of the last poll, plus what events said since."""

    clock: Callable[[], float] = time.time
    nodes: list[NodeInfo] = field(default_factory=list)
    jobs: list[JobInfo] = field(default_factory=list)
    results: dict[int, Any] = field(default_factory=dict)  # job id -> partial aggregated result
    cpu: dict[str, deque[float]] = field(default_factory=dict)
    log: deque[LogLine] = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    # Set by events, cleared when the app has polled.
    stale: bool = True
    touched_jobs: set[int] = field(default_factory=set)
    node_states: dict[str, str] = field(default_factory=dict)
    failed_seen: dict[int, int] = field(default_factory=dict)  # job -> failed count last logged
    last_audit: float = 0.0
    logged: int = 0  # lines ever logged (the log keeps the last LOG_LINES)
    polls: int = 0

    def job(self, job_id: int) -> JobInfo | None:
        for job in self.jobs:
            if job.id == job_id:
                return job
        return None

    def node(self, node_id: str) -> NodeInfo | None:
        for node in self.nodes:
            if node.id == node_id:
                return node
        return None

    # --- events ------------------------------------------------------------------

    def absorb(self, events: list[ev.Event]) -> list[LogLine]:
        """Fold events in; return the new log lines (the app toasts some)."""
        new: list[LogLine] = []
        failed: dict[int, int] = {}
        for event in events:
            handler = _HANDLERS.get(type(event))
            if handler is not None:
                handler(self, event, new, failed)
        for job_id, count in failed.items():
            job = self.job(job_id)
            name = f" {job.name}" if job else ""
            total = self.failed_seen.get(job_id, 0)
            new.append(LogLine(self.clock(), "warning", f"job {job_id}{name}: {count} task(s) failed ({total} in all)"))
        self.log.extend(new)
        self.logged += len(new)
        return new

    def _node_changed(self, event: ev.NodeChanged, new: list[LogLine], failed: dict[int, int]) -> None:
        self.stale = True
        before = self.node_states.get(event.node)
        self.node_states[event.node] = event.state
        if before == event.state:
            return
        bad = event.state in BAD_NODE_STATES
        detail = f": {event.detail}" if event.detail else ""
        new.append(LogLine(event.t or self.clock(), "error" if bad else "info", f"node {event.node} {event.state}{detail}", bad))

    def _node_load(self, event: ev.NodeLoad, new: list[LogLine], failed: dict[int, int]) -> None:
        self.stale = True
        self.cpu.setdefault(event.node, deque(maxlen=CPU_SAMPLES)).append(event.cpu)

    def _task_changed(self, event: ev.TaskChanged, new: list[LogLine], failed: dict[int, int]) -> None:
        self.stale = True
        self.touched_jobs.add(event.job)

    def _job_progress(self, event: ev.JobProgress, new: list[LogLine], failed: dict[int, int]) -> None:
        self.stale = True
        self.touched_jobs.add(event.job)
        count = event.counts.get("failed", 0)
        before = self.failed_seen.get(event.job, 0)
        self.failed_seen[event.job] = count
        if count > before:
            failed[event.job] = failed.get(event.job, 0) + count - before

    def _task_touched(self, event: ev.TaskProgress, new: list[LogLine], failed: dict[int, int]) -> None:
        self.stale = True
        self.touched_jobs.add(event.job)

    def _job_finished(self, event: ev.JobFinished, new: list[LogLine], failed: dict[int, int]) -> None:
        self.stale = True
        self.touched_jobs.add(event.job)
        level = "info" if event.status == "succeeded" else "warning"
        counts = ", ".join(f"{n} {k}" for k, n in sorted(event.counts.items()) if n)
        new.append(LogLine(event.t or self.clock(), level, f"job {event.job} {event.name} {event.status} ({counts})", True))

    def _alert(self, event: ev.Alert, new: list[LogLine], failed: dict[int, int]) -> None:
        self.stale = True
        where = f"{event.node}: " if event.node else ""
        new.append(LogLine(event.t or self.clock(), event.level, f"{where}{event.message}", True))

    def _lagged(self, event: ev.Lagged, new: list[LogLine], failed: dict[int, int]) -> None:
        # Events were dropped: the snapshots are the truth, re-read them all.
        self.stale = True
        self.touched_jobs.update(job.id for job in self.jobs)

    # --- snapshots ------------------------------------------------------------------

    def seed_history(self, node: str, samples: list[LoadSample]) -> None:
        if node not in self.cpu:
            self.cpu[node] = deque((s.cpu for s in samples), maxlen=CPU_SAMPLES)

    def absorb_audit(self, entries: list[AuditEntry]) -> list[LogLine]:
        """Operator actions (from this console or any other client) as log lines."""
        fresh = sorted((e for e in entries if e.t > self.last_audit), key=lambda e: e.t)
        if not fresh:
            return []
        self.last_audit = fresh[-1].t
        lines = [
            LogLine(e.t, "info", f"{e.actor}: {e.action} {e.target}" + (f" ({e.detail})" if e.detail else ""))
            for e in fresh
        ]
        self.log.extend(lines)
        self.logged += len(lines)
        return lines


_HANDLERS: dict[type[Any], Callable[[Feed, Any, list[LogLine], dict[int, int]], None]] = {
    ev.NodeChanged: Feed._node_changed,
    ev.NodeLoad: Feed._node_load,
    ev.TaskChanged: Feed._task_changed,
    ev.TaskProgress: Feed._task_touched,
    ev.JobProgress: Feed._job_progress,
    ev.JobFinished: Feed._job_finished,
    ev.Alert: Feed._alert,
    ev.Lagged: Feed._lagged,
}
