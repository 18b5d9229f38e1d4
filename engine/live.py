"""What the engine knows right now, kept for the read side of the API.

The core keeps only what scheduling needs. UIs want a little more, all of it
bounded: the output tail of each running attempt (so ``task()`` shows it
while the task runs, not only once it ended), each task's last progress, a
ring of load samples per node (sparklines), per-node attempt counts, and a
per-job window of completion counts (rate and ETA). ``LiveState.observe``
takes it from each flush's effects; the coordinator calls it once per flush.

The functions below read the core's records (``Task``, ``Attempt``, ``Node``)
into API views; they are the one place that knows those records' fields.
"""

from __future__ import annotations

from collections import Counter, deque
from operator import itemgetter
from typing import TYPE_CHECKING, Any, NamedTuple

from engine import events as ev
from engine.model import TaskStatus
from engine.views import JobInfo, LoadSample, NodeInfo

if TYPE_CHECKING:
    from engine.core import EngineCore
    from engine.model import Job, Node, Task

TAIL_BYTES = 16 * 1024  # per stream, per running task
MAX_TAILS = 4096  # running tasks with a tail kept at once (the oldest go first)
HISTORY_SAMPLES = 900  # per node: 15 minutes of one-second heartbeats
RATE_WINDOW = 10.0  # seconds of completions a job's rate is taken over
_FAILED, _PENDING, _SUCCEEDED_CODE = int(TaskStatus.FAILED), int(TaskStatus.PENDING), int(TaskStatus.SUCCEEDED)
_STATUS, _NODE = itemgetter(2), itemgetter(6)  # of a task row


class LiveTask(NamedTuple):
    """A task the core holds in memory (running, waiting for a retry, or
    queued again), in the shape the task queries sort and filter."""

    idx: int  # the task's index in its job
    status: int
    node: str
    attempts: int
    duration: float | None
    started: float | None  # of its (newest) live attempt, when the node reported it


class Tail:
    """The last bytes of a running task's stdout and stderr."""

    __slots__ = ("stdout", "stderr")

    def __init__(self) -> None:
        self.stdout = bytearray()
        self.stderr = bytearray()

    def add(self, stream: str, data: bytes) -> None:
        buf = self.stderr if stream == "stderr" else self.stdout
        buf += data
        if len(buf) > TAIL_BYTES:
            del buf[: len(buf) - TAIL_BYTES]


class LiveState:
    def __init__(self) -> None:
        self.tails: dict[tuple[int, int], Tail] = {}
        self.progress: dict[tuple[int, int], tuple[float | None, str]] = {}
        self.history: dict[str, deque[LoadSample]] = {}
        self.node_done: Counter[str] = Counter()
        self.node_failed: Counter[str] = Counter()
        self.job_done: dict[int, deque[tuple[float, int]]] = {}  # (t, tasks ended) samples

    def observe(self, task_rows: list[Any], events: list[Any], now: float) -> None:
        """One flush's effects: events first (output that arrived before a
        task's end), then the rows that end attempts and drop their tails."""
        for event in events:
            kind = type(event)
            if kind is ev.TaskOutput:
                key = (event.job, event.index)
                tail = self.tails.get(key)
                if tail is None:
                    if len(self.tails) >= MAX_TAILS:
                        del self.tails[next(iter(self.tails))]
                    tail = self.tails[key] = Tail()
                tail.add(event.stream, event.data)
            elif kind is ev.TaskProgress:
                self.progress[(event.job, event.index)] = (event.fraction, event.message)
            elif kind is ev.NodeLoad:
                ring = self.history.get(event.node)
                if ring is None:
                    ring = self.history[event.node] = deque(maxlen=HISTORY_SAMPLES)
                ring.append(LoadSample(now, event.cpu, event.mem, event.load1, event.slots_busy))
            elif kind is ev.JobProgress:
                done = sum(event.counts.get(k, 0) for k in ("succeeded", "failed", "cancelled"))
                samples = self.job_done.get(event.job)
                if samples is None:
                    samples = self.job_done[event.job] = deque()
                samples.append((now, done))
                while len(samples) > 2 and samples[1][0] < now - RATE_WINDOW:
                    samples.popleft()
        if not task_rows:
            return
        # Every row with a node ends an attempt there. Counted in C (Counter,
        # map): this runs for every task the engine finishes.
        self.node_done.update(map(_NODE, task_rows))
        statuses = list(map(_STATUS, task_rows))
        if statuses.count(_SUCCEEDED_CODE) != len(statuses):
            for row in task_rows:
                if row[2] == _FAILED or row[2] == _PENDING:  # failed, for good or retried
                    self.node_failed[row[6]] += 1
        tails, progress = self.tails, self.progress
        if tails or progress:
            for row in task_rows:
                key = (row[0], row[1])
                tails.pop(key, None)
                progress.pop(key, None)

    def rate(self, job_id: int, now: float) -> float:
        """Tasks ended per second over the last few seconds."""
        samples = self.job_done.get(job_id)
        if not samples or len(samples) < 2:
            return 0.0
        t0, done0 = samples[0]
        t1, done1 = samples[-1]
        if now - t1 > RATE_WINDOW or t1 <= t0:
            return 0.0  # nothing ended lately
        return (done1 - done0) / max(now - t0, t1 - t0)

    def node_history(self, node: str, seconds: float, now: float) -> list[LoadSample]:
        ring = self.history.get(node)
        if not ring:
            return []
        since = now - seconds
        return [sample for sample in ring if sample.t >= since]


def live_tasks(core: EngineCore, job: Job, now: float) -> list[LiveTask]:
    """The tasks of ``job`` the core holds: in flight, in backoff, queued again."""
    held: dict[int, Task] = {}
    for attempt in core.attempts.values():
        if attempt.task.job is job:
            held[attempt.task.index] = attempt.task
    for task in job.requeued:
        held[task.index] = task
    for task in core.backoff:
        if task.job is job:
            held[task.index] = task
    return [live_task(task, now) for task in held.values()]


def live_task(task: Task, now: float) -> LiveTask:
    started = max((a.started_at for a in task.live), default=0.0)
    running = task.status is TaskStatus.RUNNING
    return LiveTask(
        task.index,
        int(task.status),
        task.node if running else "",
        task.issued,
        (now - started) if running and started else None,
        started or None,
    )


def find_task(core: EngineCore, job: Job, index: int) -> Task | None:
    """The core's record of one task, if it holds one."""
    for attempt in core.attempts.values():
        if attempt.task.job is job and attempt.task.index == index:
            return attempt.task
    for task in job.requeued:
        if task.index == index:
            return task
    for task in core.backoff:
        if task.job is job and task.index == index:
            return task
    return None


def job_info(row: dict[str, Any], job: Job | None, live: LiveState, now: float) -> JobInfo:
    """A stored job row, with the core's live counts when it is running."""
    counts = job.counts_by_label() if job is not None else dict(row["counts"])
    status = job.status.value if job is not None else str(row["status"])
    rate = live.rate(row["id"], now) if status == "running" else 0.0
    done = sum(counts.get(k, 0) for k in ("succeeded", "failed", "cancelled"))
    eta = (row["total"] - done) / rate if status == "running" and rate > 0 else None
    finished = (job.finished_at or None) if job is not None else row["finished_at"]
    return JobInfo(
        id=row["id"],
        name=row["name"],
        status=status,
        total=row["total"],
        counts=counts,
        submitted_at=row["submitted_at"],
        finished_at=finished if status != "running" else None,
        rate=rate,
        eta=eta,
        kind=job.spec.kind if job is not None else row["kind"],
        reduce=(job.spec.reduce or "") if job is not None else row["reduce"],
    )


def node_state(peer_state: str, node: Node | None) -> str:
    if peer_state == "up" and node is not None and node.drained:
        return "draining" if node.running else "drained"
    return peer_state


def node_info(
    address: str, peer_state: str, detail: str, fingerprint: str, node: Node | None, live: LiveState, now: float
) -> NodeInfo:
    hb = node.load if node is not None else None
    return NodeInfo(
        id=address,
        state=node_state(peer_state, node),
        detail=detail,
        hostname=node.hostname if node else "",
        agent_id=node.agent_id if node else "",
        slots=node.slots if node else 0,
        slots_busy=hb.slots_busy if hb else 0,
        running=len(node.running) if node else 0,
        labels=dict(node.labels) if node else {},
        drained=bool(node and node.drained),
        cpu=hb.cpu if hb else None,
        mem=hb.mem if hb else None,
        load1=hb.load[0] if hb and hb.load else None,
        queued=hb.queued if hb else 0,
        done=live.node_done.get(address, 0),
        failed=live.node_failed.get(address, 0),
        heartbeat_age=(now - node.last_seen) if node and node.last_seen else None,
        fingerprint=fingerprint,
        kinds=sorted(node.kinds) if node else [],
    )


def node_changed(event: ev.NodeChanged, info: NodeInfo) -> ev.NodeChanged:
    """The core's NodeChanged with the node's real values filled in. The
    event's own drained flag and detail stand: they say what this change was."""
    state, drained = event.state, event.drained or info.drained
    if state == "up" and drained:
        state = "draining" if info.running else "drained"
    return ev.NodeChanged(
        node=event.node,
        state=state,
        drained=drained,
        slots=info.slots,
        hostname=info.hostname,
        labels=info.labels,
        detail=event.detail or info.detail,
        agent_id=info.agent_id,
        running=info.running,
        slots_busy=info.slots_busy,
        cpu=info.cpu,
        mem=info.mem,
        load1=info.load1,
    )
