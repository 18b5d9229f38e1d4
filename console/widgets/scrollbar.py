"""A vertical scrollbar that is redrawn only when its thumb moves on screen.

Textual redraws a scrollbar whenever its position changes: on a 100,000-row
table, every scroll by one row re-renders all its lines (about as much work
as the table's own new line, and more than the rest of the frame), though
the thumb moves by one eighth of a cell only every few hundred rows. It
also refreshes it at every layout of its screen, so at every screen switch
(``ScrollView._size_updated`` compares the table's virtual size with the
region's, which differ whenever it scrolls): 4-6 ms of a switch. This
one remembers its last lines and the thumb's extent (in eighths of a cell,
as Textual's ``ScrollBarRender`` draws it) and hands them back while
neither that nor its look changed.
"""

from __future__ import annotations

from math import ceil

from textual.geometry import Region
from textual.scrollbar import ScrollBar, ScrollBarRender
from textual.strip import Strip


class ThumbScrollBar(ScrollBar):
    def __init__(self, vertical: bool = True, name: str | None = None, *, thickness: int = 1) -> None:
        super().__init__(vertical, name, thickness=thickness)
        self._drawn: tuple[object, ...] | None = None
        self._lines: list[Strip] = []

    def _thumb(self) -> tuple[int, int]:
        """The thumb's first and last eighth of a cell (ScrollBarRender's sums)."""
        size = self.size.height
        virtual = self.window_virtual_size
        window = self.window_size if self.window_size < virtual else 0
        if not (window and size and virtual and size != virtual):
            return (-1, -1)
        thumb = max(1, window / (virtual / size))
        position = (size - thumb) * (self.position / (virtual - window))
        start = int(position * 8)
        return (start, start + ceil(thumb * 8))

    def _look(self) -> tuple[object, ...]:
        parent = self.parent
        styles = parent.styles if parent is not None else self.styles
        return (
            self.size,
            self._thumb(),
            self.grabbed is not None,
            self.mouse_over,
            styles.scrollbar_background,
            styles.scrollbar_color,
            styles.scrollbar_background_hover,
            styles.scrollbar_color_hover,
            styles.scrollbar_background_active,
            styles.scrollbar_color_active,
            self.screen.styles.scrollbar_color,
            parent.background_colors if parent is not None else None,
            self.app.get_line_filters(),
        )

    def render_lines(self, crop: Region) -> list[Strip]:
        if not self.vertical or type(self).renderer is not ScrollBarRender:
            return super().render_lines(crop)
        full = Region(0, 0, *self.size)
        look = self._look()
        if look != self._drawn or crop != full:
            lines = super().render_lines(crop)
            if crop != full:
                return lines
            self._drawn, self._lines = look, lines
        return self._lines

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._drawn = None
