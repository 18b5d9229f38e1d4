"""What screens and the palette may ask of the app that hosts them, as a
Protocol: they depend on this, the app implements it, and nothing below the
app imports the app (no import cycle, and a screen can be tested on any host)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from textual.signal import Signal

from console.feed import Feed
from engine.interface import EngineAPI


@dataclass(frozen=True, slots=True)
class Tick:
    """What the app publishes after each poll: the feed, and the jobs whose
    tasks changed since the previous tick (their task views refetch)."""

    feed: Feed
    touched: frozenset[int]
    forced: bool = False  # an operator action just ran: refetch everything


class ConsoleHost(Protocol):
    api: EngineAPI
    feed: Feed
    clock: Callable[[], float]
    tick_signal: Signal[Tick]

    def act(self, call: Callable[[], Awaitable[Any]], done: str | Callable[[Any], str]) -> None:
        """Run an operator action through the API; toast what happened."""
        ...

    def open_job_screen(self, what: str, job_id: int) -> None: ...

    def open_task(self, job_id: int, index: int) -> None: ...

    def shoal_theme_names(self) -> list[str]: ...

    def set_theme(self, name: str) -> None: ...
