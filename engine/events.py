"""The engine's event stream: what UIs (TUI, headless, socket clients) see.

Events are small frozen dataclasses. ``EventBus`` fans them out to any number
of subscribers, each with a bounded queue: a subscriber that falls behind gets
one ``Lagged`` event instead of unbounded memory, and should re-read the
snapshot queries. The engine never waits for a UI.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from typing import Any, AsyncIterator


@dataclass(frozen=True, slots=True)
class NodeChanged:
    """A node came up, went down, was drained or undrained, or changed trust."""

    node: str
    state: str  # "up", "lost", "connecting", "untrusted", "refused"
    drained: bool = False
    slots: int = 0
    hostname: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    detail: str = ""


@dataclass(frozen=True, slots=True)
class NodeLoad:
    node: str
    cpu: float
    mem: float
    load1: float
    slots_total: int
    slots_busy: int
    queued: int
    in_flight: int


@dataclass(frozen=True, slots=True)
class TaskChanged:
    """A task changed state. Routine queued/running/succeeded moves of big
    jobs are summarised by ``JobProgress`` instead (see the core)."""

    job: int
    index: int
    status: str
    node: str = ""
    attempt: int = 0
    cause: str = ""
    error: str = ""


@dataclass(frozen=True, slots=True)
class TaskProgress:
    job: int
    index: int
    fraction: float | None
    message: str = ""


@dataclass(frozen=True, slots=True)
class TaskOutput:
    job: int
    index: int
    stream: str
    data: bytes


@dataclass(frozen=True, slots=True)
class JobProgress:
    job: int
    name: str
    status: str
    counts: dict[str, int]
    total: int


@dataclass(frozen=True, slots=True)
class JobFinished:
    job: int
    name: str
    status: str  # "succeeded", "failed", "cancelled"
    counts: dict[str, int]
    result: Any = None


@dataclass(frozen=True, slots=True)
class Alert:
    level: str  # "info", "warning", "error"
    message: str
    node: str = ""


@dataclass(frozen=True, slots=True)
class Lagged:
    """This subscriber missed events; re-read snapshots."""

    dropped: int


Event = NodeChanged | NodeLoad | TaskChanged | TaskProgress | TaskOutput | JobProgress | JobFinished | Alert | Lagged

EVENT_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (NodeChanged, NodeLoad, TaskChanged, TaskProgress, TaskOutput, JobProgress, JobFinished, Alert, Lagged)
}


def event_to_dict(event: Event) -> dict[str, Any]:
    return {"event": type(event).__name__, **asdict(event)}


def event_from_dict(data: dict[str, Any]) -> Event:
    fields = dict(data)
    cls = EVENT_TYPES[fields.pop("event")]
    return cls(**fields)  # type: ignore[no-any-return]


class Subscription:
    def __init__(self, bus: EventBus, maxsize: int) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._maxsize = maxsize
        self._dropped = 0

    def _put(self, event: Event) -> None:
        if self._queue.qsize() >= self._maxsize:
            self._dropped += 1
            return
        if self._dropped:
            self._queue.put_nowait(Lagged(self._dropped))
            self._dropped = 0
        self._queue.put_nowait(event)

    async def get(self) -> Event | None:
        """Next event, or None once the bus is closed."""
        return await self._queue.get()

    def get_nowait_all(self) -> list[Event]:
        events: list[Event] = []
        while not self._queue.empty():
            event = self._queue.get_nowait()
            if event is not None:
                events.append(event)
        return events

    def close(self) -> None:
        self._bus._subscribers.discard(self)
        self._queue.put_nowait(None)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            event = await self._queue.get()
            if event is None:
                return
            yield event


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()

    def subscribe(self, maxsize: int = 10_000) -> Subscription:
        sub = Subscription(self, maxsize)
        self._subscribers.add(sub)
        return sub

    def publish(self, events: list[Event]) -> None:
        if not self._subscribers or not events:
            return
        for sub in list(self._subscribers):
            for event in events:
                sub._put(event)

    def close(self) -> None:
        for sub in list(self._subscribers):
            sub.close()
