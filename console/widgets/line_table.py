"""A keyboard-first table drawn with Textual's Line API.

Only the visible rows are ever formatted: ``render_line(y)`` asks the
subclass for row ``scroll_y + y - 1`` (line 0 is the header, which does not
scroll). The stock ``DataTable`` keeps every row as widgets' state and costs
seconds of CPU at 100,000 rows; this one costs the same at 10 rows or 10
million, because a subclass may hold only a window of them (``TaskTable``).

Cells are plain strings or ``(text, tone)`` pairs; a tone names a component
class (``line-table--bad``...) so colours come from the theme's stylesheet.

A frame after a keypress must cost little whatever the terminal's height, so
a cursor move repaints two lines, not the table, and finished lines are kept
(``_strips``, keyed by the cells themselves) with the styles they use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from typing import ClassVar

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.scrollbar import ScrollBar
from textual.strip import Strip

from console.widgets.scrollbar import ThumbScrollBar

Span = tuple[str, str]  # (text, tone)
Cell = str | Span | tuple[Span, ...]  # plain text, toned text, or toned pieces (a progress bar)
Row = tuple[Cell, ...]

TONES = ("good", "bad", "warn", "muted", "accent", "bar", "dim-bar")
STRIP_CACHE = 1024  # finished lines kept: a few screens of them


FLEX_MIN = 10  # a flexible column narrower than this is dropped instead


def _cells(text: str) -> int:
    """Terminal cells of ``text``: its length when it is ASCII (most cells)."""
    return len(text) if text.isascii() else cell_len(text)


@dataclass(frozen=True, slots=True)
class Column:
    label: str
    width: int  # cells; 0 = share what the fixed columns leave
    right: bool = False  # right-aligned (numbers)
    keep: int = 9  # on a narrow terminal, columns with the lowest ``keep`` go first


class LineTable(ScrollView, can_focus=True):
    """Rows from ``row(index)``; a cursor; Enter selects."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "line-table--header",
        "line-table--cursor",
        "line-table--placeholder",
        *(f"line-table--{tone}" for tone in TONES),
    }

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "cursor(-1)", "Up", show=False),
        Binding("down,j", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown,space", "page(1)", "Page down", show=False),
        Binding("home,g", "jump(0)", "First row", show=False),
        Binding("end,G", "jump(-1)", "Last row", show=False),
        Binding("enter", "select", "Open", show=False),
    ]

    cursor: reactive[int] = reactive(0, always_update=True, init=False, repaint=False)

    class Highlighted(Message):
        """The cursor moved to ``row``."""

        def __init__(self, table: LineTable, row: int) -> None:
            super().__init__()
            self.table = table
            self.row = row

        @property
        def control(self) -> LineTable:
            return self.table

    class Selected(Highlighted):
        """Enter (or a click) on ``row``."""

    def __init__(self, columns: Sequence[Column], *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.columns = list(columns)
        self._widths: tuple[int, list[int]] = (-1, [])
        self._styles: dict[tuple[str, ...], Style] = {}
        self._strips: dict[tuple[object, ...], Strip] = {}

    # --- what subclasses provide -------------------------------------------------

    @property
    def row_count(self) -> int:
        raise NotImplementedError

    def row(self, index: int) -> Row | None:
        """The cells of row ``index``; None while it is not loaded yet."""
        raise NotImplementedError

    # --- geometry ------------------------------------------------------------------

    @property
    def vertical_scrollbar(self) -> ScrollBar:
        """Textual's own property, making a ``ThumbScrollBar`` instead (see
        widgets/scrollbar.py). Textual 8 makes it the same way, and has no
        public hook for the class of a widget's scrollbar (``ScrollBar.renderer``
        swaps the renderable only, not the per-line pipeline the cache skips),
        hence the two private names here."""
        if self._vertical_scrollbar is None:
            bar = ThumbScrollBar(vertical=True, name="vertical", thickness=self.scrollbar_size_vertical)
            bar.display = False
            self._vertical_scrollbar = bar
            self.app._start_widget(self, bar)
        return self._vertical_scrollbar

    @property
    def visible_rows(self) -> int:
        return max(1, self.scrollable_content_region.height - 1)

    @property
    def first_visible(self) -> int:
        return int(self.scroll_offset.y)

    def rows_changed(self) -> None:
        """Call after the row count or any row changed: resize and redraw."""
        count = self.row_count
        self.virtual_size = Size(self.scrollable_content_region.width, count + 1)
        if count and self.cursor >= count:
            self.cursor = count - 1
        self.refresh()

    def on_resize(self, event: events.Resize) -> None:
        self.virtual_size = Size(event.size.width, self.row_count + 1)

    def _column_widths(self, width: int) -> list[int]:
        """Cells per column for this width (0: not shown). Flexible columns
        share the spare room; when it is too narrow, the columns least worth
        keeping are dropped until the rest fit, so 80 columns stay readable."""
        if self._widths[0] == width:
            return self._widths[1]
        shown = list(range(len(self.columns)))

        def spare() -> int:
            fixed = sum(self.columns[i].width + 1 for i in shown)
            flex = sum(1 for i in shown if self.columns[i].width == 0)
            return width - fixed - flex * FLEX_MIN

        while spare() < 0 and len(shown) > 1:
            shown.remove(min(shown, key=lambda i: (self.columns[i].keep, -i)))
        flex = [i for i in shown if self.columns[i].width == 0]
        room = width - sum(self.columns[i].width + 1 for i in shown)
        widths = [0] * len(self.columns)
        for i in shown:
            widths[i] = self.columns[i].width or max(0, room // len(flex))
        self._widths = (width, widths)
        return widths

    # --- drawing -------------------------------------------------------------------

    def notify_style_update(self) -> None:
        # Textual re-applies the stylesheet to every widget of a screen each
        # time the screen comes back: keep the finished lines unless a style
        # they use really changed (a theme, focus), or every screen switch
        # would rebuild every visible line.
        super().notify_style_update()
        kept = self._styles
        self._styles = {}
        if any(self._style(*parts) != style for parts, style in kept.items()):
            self._strips.clear()

    def _style(self, *parts: str) -> Style:
        """The widget's style plus the named component styles, in order."""
        style = self._styles.get(parts)
        if style is None:
            style = self.rich_style
            for part in parts:
                if part:
                    style += self.get_component_rich_style(f"line-table--{part}", partial=True)
            self._styles[parts] = style
        return style

    def _line(self, cells: Sequence[Cell], mode: str, width: int, full: int) -> Strip:
        """One finished line: the cells laid out in ``width``, padded to
        ``full`` (the content width, under the scrollbar too) so Textual
        need not adjust it."""
        key = (mode, full, width, *cells)
        strip = self._strips.get(key)
        if strip is not None:
            return strip
        base = self._style(mode)
        # Pieces of text in one style are joined into one segment: a line is
        # a few segments, not two per cell, and every later step (filters,
        # the compositor's cuts, the driver) costs per segment.
        segments: list[Segment] = []
        text: list[str] = []  # pieces in ``style`` not yet made a segment
        style = base
        used = 0
        for column, size, cell in zip(self.columns, self._column_widths(width), cells, strict=False):
            if size <= 0:
                continue
            if type(cell) is str:  # the common case: plain text in the line's style
                length = _cells(cell)
                if length > size:
                    cell, length = set_cell_size(cell, size), size
                pad = " " * (size - length)
                if style is not base:
                    segments.append(Segment("".join(text), style))
                    text, style = [], base
                text.append(pad + cell + " " if column.right else cell + pad + " ")
                used += size + 1
                continue
            spans: Sequence[Span] = (cell,) if isinstance(cell[0], str) else cell  # type: ignore[assignment]
            room = size
            if column.right:
                total = sum(_cells(piece) for piece, _ in spans)
                if total < size:
                    if style is not base:
                        segments.append(Segment("".join(text), style))
                        text, style = [], base
                    text.append(" " * (size - total))
                    room = total
            for piece, tone in spans:
                if room <= 0:
                    break
                length = _cells(piece)
                if length > room:
                    piece, length = set_cell_size(piece, room), room
                piece_style = self._style(mode, tone) if tone else base
                if piece_style is not style:
                    if text:
                        segments.append(Segment("".join(text), style))
                    text, style = [], piece_style
                text.append(piece)
                room -= length
            if style is not base:
                segments.append(Segment("".join(text), style))
                text, style = [], base
            text.append(" " * (room + 1))  # what the cell leaves, and the gap after it
            used += size + 1
        if used <= width and used < full:  # the rest of the line, under the scrollbar too
            if style is not base:
                segments.append(Segment("".join(text), style))
                text, style = [], base
            text.append(" " * (full - used))
        if text:
            segments.append(Segment("".join(text), style))
        if used <= width:
            strip = Strip(segments, max(used, full))
        else:  # the columns overflow (a terminal narrower than the fixed ones)
            strip = Strip(segments, used).crop(0, width).adjust_cell_length(full, base)
        if len(self._strips) >= STRIP_CACHE:
            # The older half goes (the dict keeps insertion order): lines
            # drawn ahead for the next page must outlive the purge.
            for old in list(islice(self._strips, STRIP_CACHE // 2)):
                del self._strips[old]
        self._strips[key] = strip
        return strip

    def render_line(self, y: int) -> Strip:
        return self._row_line(y, self.scrollable_content_region.width, self.content_region.width)

    def _row_line(self, y: int, width: int, full: int) -> Strip:
        if y == 0:
            return self._line([c.label for c in self.columns], "header", width, full)
        index = self.first_visible + y - 1
        if index >= self.row_count:
            return Strip.blank(full, self._style())
        mode = "cursor" if index == self.cursor else ""
        cells = self.row(index)
        if cells is None:
            return self._line(["…"], mode or "placeholder", width, full)
        return self._line(cells, mode, width, full)

    def render_lines(self, crop: Region) -> list[Strip]:
        """The lines in ``crop``, with the app's line filters applied.

        Textual's own path re-renders every line of a widget that scrolled,
        builds a new strip for each (background, tint, opacity) and runs the
        filters on it: 37 lines a keypress on a full-height table. A table
        with a plain box (no border, padding, tint or opacity: what the theme
        gives it) needs none of that: its lines are already finished strips,
        cached per row, and a filtered strip is cached on the strip itself,
        so a scroll by one row costs one new line. Any other box takes
        Textual's path."""
        styles = self.styles
        if (
            styles.gutter != (0, 0, 0, 0)
            or styles.tint.a
            or styles.text_opacity != 1.0
            or self.opacity != 1.0
            or self.border_title is not None
            or self.border_subtitle is not None
            or (styles.has_rule("hatch") and styles.hatch != "none")
            or any(edge for edge, _ in styles.outline)
        ):
            return super().render_lines(crop)
        width = self.content_region.width
        inner = self.scrollable_content_region.width
        background = self.background_colors[1]
        filters = self.get_line_filters()
        strips: list[Strip] = []
        for y in crop.line_range:
            strip = self._row_line(y, inner, width)
            for line_filter in filters:
                strip = strip.apply_filter(line_filter, background)
            strips.append(strip)
        if crop.column_span != (0, width):
            x1, x2 = crop.column_span
            strips = [strip.crop(x1, x2) for strip in strips]
        return strips

    def _draw_ahead(self, step: int) -> None:
        """Make (and filter) the lines of the view one ``step`` on, with the
        cursor where that step would put it, into the line cache: what a
        frame then finds made costs it a dictionary look-up."""
        count = self.row_count
        cursor = max(0, min(self.cursor + step, count - 1))
        top = max(0, min(self.first_visible + step, count - self.visible_rows))
        if not count or cursor == self.cursor:
            return
        width, inner = self.content_region.width, self.scrollable_content_region.width
        background = self.background_colors[1]
        filters = self.get_line_filters()
        for index in range(top, min(count, top + self.visible_rows)):
            cells = self.row(index)
            if cells is None:
                return  # not loaded yet: that page will be drawn when it comes
            strip = self._line(cells, "cursor" if index == cursor else "", inner, width)
            for line_filter in filters:
                strip = strip.apply_filter(line_filter, background)

    def on_focus(self) -> None:
        self.notify_style_update()  # :focus changes the cursor's look
        self.refresh()

    def on_blur(self) -> None:
        self.notify_style_update()
        self.refresh()

    # --- cursor ----------------------------------------------------------------------

    def watch_cursor(self, old: int, new: int) -> None:
        top = self.first_visible
        if new < top:
            self.scroll_to(y=new, animate=False, immediate=True)
        elif new >= top + self.visible_rows:
            self.scroll_to(y=new - self.visible_rows + 1, animate=False, immediate=True)
        if self.first_visible == top:
            # Same view: only the two rows whose look changed are repainted.
            self.refresh_line(old + 1)
            self.refresh_line(new + 1)
        else:
            self.refresh()
            if abs(new - old) > 1:
                # A page (or a jump): once this frame is out, draw the next
                # page the same way, so another press finds its lines made.
                self.call_after_refresh(self._draw_ahead, new - old)
        if self.row_count:
            self.post_message(self.Highlighted(self, new))

    def move_to(self, index: int) -> None:
        count = self.row_count
        self.cursor = max(0, min(index, count - 1)) if count else 0

    def action_cursor(self, step: int) -> None:
        self.move_to(self.cursor + step)

    def action_page(self, direction: int) -> None:
        self.move_to(self.cursor + direction * self.visible_rows)

    def action_jump(self, where: int) -> None:
        self.move_to(self.row_count - 1 if where < 0 else where)

    def action_select(self) -> None:
        if self.row_count:
            self.post_message(self.Selected(self, self.cursor))

    def on_click(self, event: events.Click) -> None:
        if event.y >= 1:
            self.move_to(self.first_visible + event.y - 1)
            if event.chain == 2:
                self.action_select()


class ListTable(LineTable):
    """A table of a few hundred rows at most (nodes, jobs, attempts), held
    whole; ``set_rows`` keeps the cursor on the same key."""

    def __init__(self, columns: Sequence[Column], *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(columns, id=id, classes=classes)
        self.keys: list[str] = []
        self.rows: list[Row] = []

    @property
    def row_count(self) -> int:
        return len(self.rows)

    def row(self, index: int) -> Row | None:
        return self.rows[index] if 0 <= index < len(self.rows) else None

    @property
    def cursor_key(self) -> str | None:
        return self.keys[self.cursor] if 0 <= self.cursor < len(self.keys) else None

    def set_rows(self, keys: list[str], rows: list[Row]) -> None:
        current = self.cursor_key
        if keys == self.keys:
            # Same rows in the same order (a node table between two polls):
            # repaint only the visible lines whose cells changed.
            top = self.first_visible
            changed = [i for i in range(top, min(len(rows), top + self.visible_rows)) if rows[i] != self.rows[i]]
            self.rows = rows
            for index in changed:
                self.refresh_line(index + 1)
            return
        self.keys, self.rows = keys, rows
        self.rows_changed()
        if current is not None and current in keys and keys.index(current) != self.cursor:
            self.cursor = keys.index(current)
        elif current is None and rows:
            self.cursor = 0
