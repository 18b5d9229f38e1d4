"""What the console knows of the engine between two frames.

The console draws from snapshots, polled once per tick (``nodes()``,
``jobs()``): what moved is found by comparing two polls, so the cost to the
engine and to the console is a few small queries a second whether a job runs
ten tasks a second or twenty thousand. Events are subscribed to only for what
is rare and must not be missed between two polls (a node lost, a host key
changed, a job ended, an alert): they become log lines and toasts.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine import events as ev
from engine.views import AuditEntry, JobInfo, LoadSample, NodeInfo

CPU_SAMPLES = 60  # one a second: the last minute
LOG_LINES = 5_000

BAD_NODE_STATES = {"lost", "untrusted", "refused"}

# Not TaskChanged (a job of up to 10,000 tasks sends one per task move) nor
# JobProgress (one per engine loop turn while tasks move) nor NodeLoad: the
# polls carry all of that, summed, at the console's own pace.
KINDS = ("NodeChanged", "JobFinished", "Alert")


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
    touched_jobs: set[int] = field(default_factory=set)  # jobs that moved since the last tick
    node_states: dict[str, str] = field(default_factory=dict)
    counts_seen: dict[int, dict[str, int]] = field(default_factory=dict)
    cpu_sampled: dict[str, float] = field(default_factory=dict)  # node -> when its last CPU sample was kept
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

    def _add(self, lines: list[LogLine]) -> list[LogLine]:
        self.log.extend(lines)
        self.logged += len(lines)
        return lines

    # --- events ------------------------------------------------------------------

    def absorb(self, events: list[ev.Event]) -> list[LogLine]:
        """Fold events in; return the new log lines (the app toasts some)."""
        new: list[LogLine] = []
        for event in events:
            handler = _HANDLERS.get(type(event))
            if handler is not None:
                handler(self, event, new)
        return self._add(new)

    def _node_changed(self, event: ev.NodeChanged, new: list[LogLine]) -> None:
        before = self.node_states.get(event.node)
        self.node_states[event.node] = event.state
        if before == event.state:
            return
        bad = event.state in BAD_NODE_STATES
        detail = f": {event.detail}" if event.detail else ""
        new.append(LogLine(event.t or self.clock(), "error" if bad else "info", f"node {event.node} {event.state}{detail}", bad))

    def _job_finished(self, event: ev.JobFinished, new: list[LogLine]) -> None:
        self.touched_jobs.add(event.job)
        level = "info" if event.status == "succeeded" else "warning"
        counts = ", ".join(f"{n} {k}" for k, n in sorted(event.counts.items()) if n)
        new.append(LogLine(event.t or self.clock(), level, f"job {event.job} {event.name} {event.status} ({counts})", True))

    def _alert(self, event: ev.Alert, new: list[LogLine]) -> None:
        where = f"{event.node}: " if event.node else ""
        new.append(LogLine(event.t or self.clock(), event.level, f"{where}{event.message}", True))

    def _lagged(self, event: ev.Lagged, new: list[LogLine]) -> None:
        # Events were dropped (alerts among them, perhaps): say so; the polls
        # carry on regardless.
        new.append(LogLine(event.t or self.clock(), "warning", f"missed {event.dropped} engine event(s): the console fell behind"))

    # --- polls ------------------------------------------------------------------------

    def absorb_poll(self, nodes: list[NodeInfo], jobs: list[JobInfo]) -> list[LogLine]:
        """A new snapshot: the jobs whose counts moved are touched (their task
        views refetch), new failures become one line per job, and each node's
        CPU is sampled about once a second for its sparkline."""
        now = self.clock()
        new: list[LogLine] = []
        for job in jobs:
            before = self.counts_seen.get(job.id)
            if before == job.counts:
                continue
            self.touched_jobs.add(job.id)
            self.counts_seen[job.id] = dict(job.counts)
            failed = job.counts.get("failed", 0) - (before or {}).get("failed", 0)
            if before is not None and failed > 0:
                new.append(LogLine(now, "warning", f"job {job.id} {job.name}: {failed} task(s) failed ({job.counts.get('failed', 0)} in all)"))
        for node in nodes:
            if node.cpu is not None and now - self.cpu_sampled.get(node.id, 0.0) >= 1.0:
                self.cpu_sampled[node.id] = now
                self.cpu.setdefault(node.id, deque(maxlen=CPU_SAMPLES)).append(node.cpu)
        self.nodes, self.jobs = nodes, jobs
        self.polls += 1
        return self._add(new)

    def seed_history(self, node: str, samples: list[LoadSample]) -> None:
        if node not in self.cpu:
            self.cpu[node] = deque((s.cpu for s in samples), maxlen=CPU_SAMPLES)

    def absorb_audit(self, entries: list[AuditEntry]) -> list[LogLine]:
        """Operator actions (from this console or any other client) as log lines."""
        fresh = sorted((e for e in entries if e.t > self.last_audit), key=lambda e: e.t)
        if not fresh:
            return []
        self.last_audit = fresh[-1].t
        return self._add(
            [LogLine(e.t, "info", f"{e.actor}: {e.action} {e.target}" + (f" ({e.detail})" if e.detail else "")) for e in fresh]
        )


_HANDLERS: dict[type[Any], Callable[[Feed, Any, list[LogLine]], None]] = {
    ev.NodeChanged: Feed._node_changed,
    ev.JobFinished: Feed._job_finished,
    ev.Alert: Feed._alert,
    ev.Lagged: Feed._lagged,
}
