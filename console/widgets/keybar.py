"""The keys of the current screen on one line, like Textual's Footer but one
widget: the stock Footer mounts a widget per key and rebuilds them on every
screen switch, which costs more than the rest of a switch's frame together.

It reads the ``Binding`` list of its screen (the same list the help screen
and the command palette show) and redraws when the screen says its bindings
changed. A click on a key presses it."""

from __future__ import annotations

from typing import ClassVar

from rich.cells import cell_len
from textual import events
from textual.content import Content
from textual.geometry import Region
from textual.screen import Screen
from textual.strip import Strip
from textual.widget import Widget

PALETTE_HINT = "^p palette"


class KeyBar(Widget, can_focus=False):
    COMPONENT_CLASSES: ClassVar[set[str]] = {"key-bar--key", "key-bar--description"}

    DEFAULT_CSS = """
    KeyBar {
        dock: bottom;
        height: 1;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._keys: list[tuple[int, int, str]] = []  # (start, end, key) cells of each shown key
        self._last: list[tuple[str, str, str]] = []
        self._resumes = -1
        self._drawn: tuple[object, ...] | None = None  # what ``_lines`` show
        self._lines: list[Strip] = []

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._bindings_changed)

    def _bindings_changed(self, screen: Screen[object]) -> None:
        # Textual says "bindings changed" after every key; repaint only when
        # the shown keys did. (A repaint of this bottom line together with a
        # table row near the top makes the frame's dirty area the whole
        # screen, tripling a keypress's cost.)
        shown = self._shown()
        # A resumed screen is drawn with its first repaint, and this is the
        # first to come (Textual counts resumes in ``stack_updates``).
        resumed = screen.stack_updates != self._resumes
        if shown != self._last or resumed:
            self._last = shown
            self._resumes = screen.stack_updates
            self.refresh()

    def render_lines(self, crop: Region) -> list[Strip]:
        # The repaint on resume only has to bring the frame: the same keys
        # at the same size and look are the lines drawn last time (building
        # them again costs more than the rest of a switch's frame).
        drawn = (crop, self.size, tuple(self._last), tuple(self.get_line_filters()))
        if drawn != self._drawn:
            self._lines = super().render_lines(crop)
            self._drawn = drawn
        return self._lines

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._drawn = None

    def _shown(self) -> list[tuple[str, str, str]]:
        out: list[tuple[str, str, str]] = []
        seen: set[str] = set()
        for key, active in self.screen.active_bindings.items():
            binding = active.binding
            if not binding.show or not binding.description or binding.action in seen:
                continue
            seen.add(binding.action)
            out.append((key, binding.key_display or self.app.get_key_display(binding), binding.description))
        return out

    def render(self) -> Content:
        key_style = self.get_visual_style("key-bar--key")
        text_style = self.get_visual_style("key-bar--description")
        parts: list[Content] = []
        self._keys = []
        at = 0
        for key, shown, description in self._shown():
            piece = Content.assemble((f" {shown} ", key_style), (f"{description} ", text_style))
            width = cell_len(piece.plain)
            self._keys.append((at, at + width, key))
            at += width
            parts.append(piece)
        hint = Content.assemble((f" {PALETTE_HINT} ", text_style))
        room = self.size.width - cell_len(hint.plain)
        line = Content("").join(parts)
        if cell_len(line.plain) > room:
            line = line.truncate(max(0, room))
        return Content.assemble(line, " " * max(0, room - cell_len(line.plain)), hint)

    def on_click(self, event: events.Click) -> None:
        for start, end, key in self._keys:
            if start <= event.x < end:
                self.app.simulate_key(key)
                return
