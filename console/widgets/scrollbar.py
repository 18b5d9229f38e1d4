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

from rich.segment import Segment
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
        if crop != full:
            return super().render_lines(crop)
        look = self._look()
        if look != self._drawn:
            self._lines = self._draw() if self._plain_box() else super().render_lines(crop)
            self._drawn = look
        return self._lines

    def _plain_box(self) -> bool:
        styles = self.styles
        return (
            styles.gutter == (0, 0, 0, 0)
            and not styles.tint.a
            and styles.text_opacity == 1.0
            and self.opacity == 1.0
            and not any(edge for edge, _ in styles.outline)
        )

    def _draw(self) -> list[Strip]:
        """The bar's lines as Textual's line pipeline makes them for a plain
        box (the renderable on the widget's style, then the line filters;
        tests/tui/test_scrollbar.py holds them equal), in a third of its
        time: a moved thumb costs a page down 1.5 ms instead of 4-6. The
        bar's lines are mostly alike, and alike lines share one strip."""
        width, height = self.size
        console = self.app.console
        options = console.options.update_dimensions(width, height)
        lines = console.render_lines(self.render(), options, style=self.visual_style.rich_style, pad=True)
        background = self.background_colors[1]
        filters = self.get_line_filters()
        made: dict[tuple[Segment, ...], Strip] = {}
        strips: list[Strip] = []
        for line in lines:
            key = tuple(line)
            strip = made.get(key)
            if strip is None:
                strip = Strip(line, width)
                for line_filter in filters:
                    strip = strip.apply_filter(line_filter, background)
                made[key] = strip
            strips.append(strip)
        return strips

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._drawn = None
