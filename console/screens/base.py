"""What every screen shares: the status line, the footer, the feed hookup,
and ``Pump`` (engine queries off the UI path, the latest request wins)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar, cast

from textual import events
from textual.app import App, ComposeResult
from textual.message import Message
from textual.screen import Screen
from textual.widget import Widget
from textual.worker import WorkType

from console.host import ConsoleHost, Tick
from console.widgets.keybar import KeyBar
from console.widgets.status import StatusBar
from engine.interface import EngineError

T = TypeVar("T")


class Pump(Generic[T]):
    """Runs ``fetch(arg)`` in a worker for the newest ``want(arg)``.

    Requests that arrive while a fetch runs collapse into one (the newest).
    A fetch in flight is never cancelled (so no ``exclusive=True``): a call
    over the control socket that is cut halfway would leave its answer in
    the stream for the next call to read.
    """

    def __init__(self, node: Widget | App[Any], fetch: Callable[[T], Awaitable[None]], name: str) -> None:
        self._node = node
        self._fetch = fetch
        self._name = name
        self._pending: tuple[T] | None = None
        self._running = False

    @property
    def busy(self) -> bool:
        return self._running

    def want(self, arg: T) -> None:
        self._pending = (arg,)
        if not self._running:
            self._running = True
            # The function, not a coroutine made here: a worker that never starts
            # (its node is being removed) then leaves no coroutine unawaited.
            drain: WorkType[None] = self._drain
            self._node.run_worker(drain, name=self._name, group=self._name, exit_on_error=False)

    async def _drain(self) -> None:
        try:
            while self._pending is not None:
                (arg,) = self._pending
                self._pending = None
                try:
                    await self._fetch(arg)
                except EngineError as exc:
                    self._node.notify(str(exc), title=self._name, severity="error")
        finally:
            self._running = False


class ShoalScreen(Screen[None]):
    """A screen with the status line on top and the footer below; it redraws
    from the feed when the app ticks, and only while it is the one shown."""

    TITLE_TEXT = ""
    # Its widgets cover it whole: its own lines are plain background, made
    # without the line renderer (forty full-width lines at every switch).
    BLANK = True

    def __init__(self) -> None:
        super().__init__()
        self._stale = True
        self._suspended_look: tuple[object, ...] | None = None
        self._drawn_polls = -1  # the feed's poll count when this screen last drew it

    def _look(self) -> tuple[object, ...]:
        """What outside a screen decides its styles: the theme, the app's
        focus and colour mode, the terminal's size (breakpoints)."""
        app = self.app
        return (app.theme, app.app_focus, app.ansi_color, app.size)

    def post_message(self, message: Message) -> bool:
        # Textual re-applies the whole stylesheet to every node of a screen
        # each time a mode switch resumes it (its component classes one by
        # one, uncached): two thirds of a switch's CPU. A screen that comes
        # back to the same theme, focus and size has the styles it left with
        # (a CSS change or a new theme also bumps Textual's own count, which
        # makes switch_mode refresh the CSS anyway), so it resumes without.
        # A screen pushed anew gets its styles when it mounts, after this.
        if (
            isinstance(message, events.ScreenResume)
            and message.refresh_styles
            and (not self.is_mounted or self._suspended_look == self._look())
        ):
            message = events.ScreenResume(refresh_styles=False)
        return super().post_message(message)

    @property
    def shoal(self) -> ConsoleHost:
        return cast(ConsoleHost, self.app)

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        yield from self.compose_body()
        yield KeyBar()

    def compose_body(self) -> ComposeResult:
        yield from ()

    def on_mount(self) -> None:
        self.shoal.tick_signal.subscribe(self, self._on_tick)
        self._on_tick(Tick(self.shoal.feed, frozenset(), forced=True))

    def on_screen_resume(self) -> None:
        self.shoal.tick_signal.subscribe(self, self._on_tick)
        # Redrawn only if the feed moved since this screen last drew it:
        # a switch back and forth between two polls draws nothing anew.
        if self._stale and self.shoal.feed.polls != self._drawn_polls:
            self._on_tick(Tick(self.shoal.feed, frozenset(), forced=True))

    def on_screen_suspend(self) -> None:
        # Covered by another screen: no ticks until it is back. Even an
        # ignored tick wakes a screen, and Textual repaints the whole top
        # screen each time the screen right below it wakes (it counts that
        # one as visible, opaque top or not): a full frame per tick.
        self.shoal.tick_signal.unsubscribe(self)
        self._stale = True
        self._suspended_look = self._look()

    def _on_tick(self, tick: Tick) -> None:
        if not self.is_current:
            self._stale = True
            return
        self._stale = False
        feed = tick.feed
        self._drawn_polls = feed.polls
        self.query_one(StatusBar).show(self.TITLE_TEXT, self.shoal.api.attached, str(self.shoal.api.state_dir), feed.nodes, feed.jobs)
        self.show_tick(tick)

    def show_tick(self, tick: Tick) -> None:
        """Redraw from the feed (override)."""

    def act(self, call: Callable[[], Awaitable[Any]], done: str) -> None:
        """Run an operator action through the API; say what happened."""
        self.shoal.act(call, done)
