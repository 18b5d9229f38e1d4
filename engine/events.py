"""The engine's event stream: what UIs (TUI, headless, socket clients) see.

Events are small frozen dataclasses. Each carries ``seq`` (monotonic per
engine) and ``t`` (wall clock), stamped by ``EventBus.publish``: the core
builds events without them, the bus gives them their place in the stream.

``EventBus`` fans events out to any number of subscribers, each with its own
filter (one job, chosen kinds) and a bounded queue: a subscriber that falls
behind gets one ``Lagged`` event instead of unbounded memory, and should
re-read the snapshot queries. The engine never waits for a UI. The bus keeps
the last events in a ring, so a subscriber can resume with ``since=seq``; when
that seq is gone from the ring, the first event it gets is ``Lagged``.

``TaskOutput`` is delivered only to a subscriber that names it in ``kinds``
(a 20,000-task shell job must not flood a console that did not ask), and is
not kept in the ring: a task's output tail is a query (``task()``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Collection
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class NodeChanged:
    """A node came up, went down, was drained or undrained, or changed trust.
    The coordinator fills in the node's real values as it publishes."""

    node: str
    state: str  # connecting, up, draining, drained, lost, untrusted, refused
    drained: bool = False
    slots: int = 0
    hostname: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    detail: str = ""
    agent_id: str = ""
    running: int = 0
    slots_busy: int = 0
    cpu: float | None = None
    mem: float | None = None
    load1: float | None = None
    seq: int = 0
    t: float = 0.0


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
    seq: int = 0
    t: float = 0.0


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
    seq: int = 0
    t: float = 0.0


@dataclass(frozen=True, slots=True)
class TaskProgress:
    job: int
    index: int
    fraction: float | None
    message: str = ""
    seq: int = 0
    t: float = 0.0


@dataclass(frozen=True, slots=True)
class TaskOutput:
    job: int
    index: int
    stream: str
    data: bytes
    seq: int = 0
    t: float = 0.0


# Not frozen: the core makes one per moving job on every flush, and a frozen
# dataclass stores each field through object.__setattr__ (1.5 us of a flush's
# few). Nobody changes one once made but the bus, which stamps seq and t.
@dataclass(slots=True)
class JobProgress:
    job: int
    name: str
    status: str
    counts: dict[str, int]
    total: int
    seq: int = 0
    t: float = 0.0


@dataclass(frozen=True, slots=True)
class JobFinished:
    job: int
    name: str
    status: str  # "succeeded", "failed", "cancelled"
    counts: dict[str, int]
    result: Any = None
    seq: int = 0
    t: float = 0.0


@dataclass(frozen=True, slots=True)
class Alert:
    level: str  # "info", "warning", "error"
    message: str
    node: str = ""
    seq: int = 0
    t: float = 0.0


@dataclass(frozen=True, slots=True)
class Lagged:
    """This subscriber missed ``dropped`` events, up to and including ``seq``
    (0 when unknown); re-read the snapshot queries."""

    dropped: int
    seq: int = 0
    t: float = 0.0


Event = NodeChanged | NodeLoad | TaskChanged | TaskProgress | TaskOutput | JobProgress | JobFinished | Alert | Lagged

EVENT_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (NodeChanged, NodeLoad, TaskChanged, TaskProgress, TaskOutput, JobProgress, JobFinished, Alert, Lagged)
}
_FIELDS = {name: frozenset(f.name for f in fields(cls)) for name, cls in EVENT_TYPES.items()}

# Kinds a subscriber gets when it names none: all but the output stream.
DEFAULT_KINDS = frozenset(cls for cls in EVENT_TYPES.values() if cls is not TaskOutput)

RING_EVENTS = 20_000  # events kept for since= resumption
QUEUE_EVENTS = 10_000  # events a subscriber may have waiting before it lags


def event_to_dict(event: Event) -> dict[str, Any]:
    return {"event": type(event).__name__, **asdict(event)}


def event_from_dict(data: dict[str, Any]) -> Event:
    """The inverse of ``event_to_dict``; fields this side does not know (a
    newer engine) are dropped. Raises KeyError/TypeError on a bad map."""
    name = data["event"]
    cls = EVENT_TYPES[name]
    known = _FIELDS[name]
    return cls(**{k: v for k, v in data.items() if k in known})  # type: ignore[no-any-return]


def parse_kinds(kinds: Collection[str] | None) -> frozenset[type[Any]]:
    """Event class names to classes; an unknown name is a ValueError."""
    if kinds is None:
        return DEFAULT_KINDS
    unknown = sorted(set(kinds) - EVENT_TYPES.keys())
    if unknown:
        raise ValueError(f"unknown event kind(s) {', '.join(unknown)}; known: {', '.join(EVENT_TYPES)}")
    # Lagged is how a subscriber learns it missed something: always wanted.
    return frozenset(EVENT_TYPES[k] for k in kinds) | {Lagged}


class EventQueue:
    """A subscriber's bounded queue of events: past ``maxsize`` waiting, the
    newest are dropped and counted, and the reader gets one ``Lagged`` in
    their place. Async-iterable; ``close()`` ends the iteration."""

    def __init__(self, maxsize: int = QUEUE_EVENTS) -> None:
        self._maxsize = maxsize
        self._items: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._dropped = 0
        self._dropped_seq = 0
        self._closed = False

    def _offer(self, event: Event) -> None:
        if self._closed:
            return
        if len(self._items) >= self._maxsize:
            self._dropped += 1
            self._dropped_seq = event.seq
            return
        if self._dropped:
            self._items.append(self._lagged())
        self._items.append(event)
        self._wake()

    def _lagged(self) -> Lagged:
        event = Lagged(self._dropped, self._dropped_seq, time.time())
        self._dropped = self._dropped_seq = 0
        return event

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take_ready(self) -> list[Event]:
        """The events that have arrived, without waiting."""
        items = list(self._items)
        self._items.clear()
        if self._dropped:
            items.append(self._lagged())
        return items

    async def next(self) -> Event | None:
        """The next event, or None once this subscription closed."""
        while True:
            if self._items:
                return self._items.popleft()
            if self._dropped:
                return self._lagged()
            if self._closed:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _end(self) -> None:
        """No more events will come (what was queued is still read)."""
        self._closed = True
        self._wake()

    def close(self) -> None:
        self._items.clear()
        self._dropped = 0
        self._end()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            event = await self.next()
            if event is None:
                return
            yield event


class LocalSubscription(EventQueue):
    """One subscriber of the bus, in this process: its filter and its queue."""

    def __init__(self, bus: EventBus, job: int | None, kinds: frozenset[type[Any]], maxsize: int) -> None:
        super().__init__(maxsize)
        self._bus = bus
        self._job = job
        self._kinds = kinds

    def wants(self, event: Event) -> bool:
        if type(event) not in self._kinds:
            return False
        if self._job is None:
            return True
        job = getattr(event, "job", None)
        return job is None or job == self._job

    def close(self) -> None:
        self._bus._subscribers.pop(self, None)
        super().close()


class EventBus:
    def __init__(self, ring_size: int = RING_EVENTS) -> None:
        self._subscribers: dict[LocalSubscription, None] = {}  # insertion-ordered set
        self._seq = 0
        self._ring: deque[Event] = deque()
        self._ring_size = ring_size
        self._forgotten_seq = 0  # the newest seq no longer in the ring

    @property
    def seq(self) -> int:
        """The seq of the last event published."""
        return self._seq

    def subscribe(
        self,
        *,
        job: int | None = None,
        kinds: Collection[str] | None = None,
        since: int | None = None,
        maxsize: int = QUEUE_EVENTS,
    ) -> LocalSubscription:
        """A new subscriber; events published from now on reach it, and with
        ``since`` first the ring's events after that seq (or ``Lagged`` when
        some of them are gone)."""
        sub = LocalSubscription(self, job, parse_kinds(kinds), maxsize)
        if since is not None:
            if since > self._seq:
                # A seq this engine never gave (an earlier engine's): the
                # client cannot know what it missed.
                sub._offer(Lagged(0, 0, time.time()))
            else:
                if since < self._forgotten_seq:
                    sub._offer(Lagged(self._forgotten_seq - since, self._forgotten_seq, time.time()))
                for event in self._ring:
                    if event.seq > since and sub.wants(event):
                        sub._offer(event)
        self._subscribers[sub] = None
        return sub

    def publish(self, events: list[Event]) -> None:
        if not events:
            return
        now = time.time()
        seq = self._seq
        ring = self._ring
        stamp = object.__setattr__  # the bus gives each (frozen) event its place in the stream
        for event in events:
            seq += 1
            stamp(event, "seq", seq)
            stamp(event, "t", now)
            if type(event) is not TaskOutput:
                if len(ring) >= self._ring_size:
                    self._forgotten_seq = ring.popleft().seq
                ring.append(event)
        self._seq = seq
        for sub in list(self._subscribers):
            for event in events:
                if sub.wants(event):
                    sub._offer(event)

    def close(self) -> None:
        """The engine stops: subscribers read what is queued, then the end."""
        for sub in list(self._subscribers):
            self._subscribers.pop(sub, None)
            sub._end()
