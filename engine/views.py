"""What the engine's API answers: plain frozen records, the same in-process
and over the control socket.

Each has ``to_dict``/``from_dict``: the socket carries the dicts (msgpack),
``RemoteEngine`` rebuilds the records, so a client cannot tell the two apart.
Fields may grow; names do not change (the console is written against them).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

V = TypeVar("V", bound="_View")


class _View:
    """to_dict/from_dict for a flat record; nested records say so in NESTED."""

    __slots__ = ()
    NESTED: dict[str, type[_View]] = {}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name in self.NESTED:
                value = [item.to_dict() for item in value]
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls: type[V], data: dict[str, Any]) -> V:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        # Unknown keys are dropped: a newer engine may send fields an older
        # client does not have yet.
        args = {k: v for k, v in data.items() if k in known}
        for name, kind in cls.NESTED.items():
            if name in args:
                args[name] = [kind.from_dict(item) for item in args[name]]
        return cls(**args)


@dataclass(frozen=True, slots=True)
class JobInfo(_View):
    id: int
    name: str
    status: str  # running, succeeded, failed, cancelled
    total: int
    # pending, queued, sent (on an agent, waiting in its queue), running
    # (started on an agent), succeeded, failed, cancelled
    counts: dict[str, int]
    submitted_at: float
    finished_at: float | None
    rate: float = 0.0  # tasks ended per second, smoothed
    eta: float | None = None  # seconds left at that rate; None when unknown or ended
    kind: str = ""  # call, shell, pickle
    reduce: str = ""
    # Why the engine cannot store this running job's progress now ("state dir
    # /x: disk full (...); results are held, retrying every 2 s"), or "".
    blocked: str = ""

    @property
    def done(self) -> int:
        return sum(self.counts.get(k, 0) for k in ("succeeded", "failed", "cancelled"))


@dataclass(frozen=True, slots=True)
class NodeInfo(_View):
    id: str  # "host:port"
    state: str  # connecting, up, draining, drained, lost, untrusted, refused
    detail: str = ""
    hostname: str = ""
    agent_id: str = ""
    slots: int = 0
    slots_busy: int = 0
    running: int = 0  # attempts this engine has on it
    labels: dict[str, str] = field(default_factory=dict)
    drained: bool = False
    cpu: float | None = None
    mem: float | None = None
    load1: float | None = None
    queued: int = 0  # waiting for a slot on the agent (its last heartbeat)
    done: int = 0  # attempts that ended there (since this engine started)
    failed: int = 0
    heartbeat_age: float | None = None  # seconds since its last heartbeat
    fingerprint: str = ""  # SHA256 of the host key it presented
    kinds: list[str] = field(default_factory=list)  # task kinds it runs (shell, call, pickle); empty: not known


@dataclass(frozen=True, slots=True)
class TaskInfo(_View):
    job: int
    index: int
    status: str  # pending, queued, running, succeeded, failed, cancelled
    node: str = ""
    attempts: int = 0  # attempts made, the live one included
    duration: float | None = None  # of the last attempt (so far, while running)
    error: str = ""


@dataclass(frozen=True, slots=True)
class TaskPage(_View):
    total: int  # tasks that match the filter
    offset: int
    rows: list[TaskInfo]

    NESTED = {"rows": TaskInfo}


@dataclass(frozen=True, slots=True)
class AttemptInfo(_View):
    id: str
    node: str
    started: float | None
    ended: float | None  # None while it runs
    outcome: str  # running, succeeded, failed, cancelled, requeued
    exit_code: int | None = None
    error: str = ""


@dataclass(frozen=True, slots=True)
class TaskDetail(_View):
    job: int
    index: int
    status: str
    node: str
    attempts: list[AttemptInfo]
    stdout_tail: str = ""
    stderr_tail: str = ""
    progress: float | None = None
    message: str = ""
    value: Any = None
    error: str = ""
    traceback: str = ""

    NESTED = {"attempts": AttemptInfo}


@dataclass(frozen=True, slots=True)
class LoadSample(_View):
    t: float
    cpu: float
    mem: float
    load1: float
    slots_busy: int


@dataclass(frozen=True, slots=True)
class AuditEntry(_View):
    t: float
    actor: str
    action: str
    target: str
    detail: str


TASK_ORDERS = ("index", "status", "node", "attempts", "duration", "error")
