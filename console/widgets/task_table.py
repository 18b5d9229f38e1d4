"""The tasks of one job, however many: a window of rows from a paged query.

The widget holds one window (``WINDOW`` rows around what is on screen) and
the filtered total; when the view nears the window's edge it posts
``WindowNeeded`` and its screen fetches that page from the engine, which
sorts and filters with its indexes. Rows not loaded yet draw as a
placeholder for the one frame it takes, so a keypress never waits on I/O.
"""

from __future__ import annotations

from textual.message import Message

from console.widgets.format import duration, status_tone
from console.widgets.line_table import Column, LineTable, Row
from engine.views import TaskInfo, TaskPage

WINDOW = 300  # rows fetched per query, at least: three screens of a tall terminal
WINDOW_SCREENS = 10  # ... and at least this many screens of rows
AHEAD_SCREENS = 2  # fetch the next window when the view is this close to an edge

COLUMNS = [
    Column("TASK", 8, right=True),
    Column("STATUS", 10),
    Column("NODE", 22, keep=6),
    Column("TRIES", 5, right=True, keep=5),
    Column("TIME", 8, right=True, keep=7),
    Column("ERROR", 0, keep=8),
]


class TaskTable(LineTable):
    class WindowNeeded(Message):
        """Rows from ``offset`` (``limit`` of them) are wanted."""

        def __init__(self, table: TaskTable, offset: int, limit: int) -> None:
            super().__init__()
            self.table = table
            self.offset = offset
            self.limit = limit

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(COLUMNS, id=id, classes=classes)
        self.total = 0
        self.window_offset = 0
        self.window: list[TaskInfo] = []
        self._asked: int | None = None
        self._ahead_pending = False  # a fetch ahead waits for the frame to be out

    @property
    def row_count(self) -> int:
        return self.total

    def task_at(self, index: int) -> TaskInfo | None:
        at = index - self.window_offset
        return self.window[at] if 0 <= at < len(self.window) else None

    @property
    def cursor_task(self) -> TaskInfo | None:
        return self.task_at(self.cursor)

    def row(self, index: int) -> Row | None:
        task = self.task_at(index)
        if task is None:
            return None
        return (
            str(task.index),
            (task.status, status_tone(task.status)),
            task.node or "-",
            str(task.attempts),
            duration(task.duration),
            (task.error.splitlines()[0] if task.error else "", "bad"),
        )

    def set_page(self, page: TaskPage) -> None:
        """A page arrived. Rows inside the window (the visible rows of a
        running job, refreshed) are updated in place; any other page becomes
        the window. Only the lines on screen whose row changed are repainted
        (a running job's refresh changes a few; a window fetched ahead, none)."""
        top = self.first_visible
        shown = range(top, min(top + self.visible_rows, max(self.total, page.total)))
        before = [self.row(i) for i in shown]
        same_total = page.total == self.total
        start = page.offset - self.window_offset
        if same_total and self.window and 0 <= start and start + len(page.rows) <= len(self.window):
            self.window[start : start + len(page.rows)] = page.rows
        else:
            self.total = page.total
            self.window_offset = page.offset
            self.window = list(page.rows)
        self._asked = None
        if same_total and self.first_visible == top:
            for index, old in zip(shown, before, strict=True):
                if self.row(index) != old:
                    self.refresh_line(index + 1)
        else:
            self.rows_changed()
        self.check_window()

    def clear(self) -> None:
        """The query changed (filter, sort): forget the rows, ask again."""
        self.window = []
        self._asked = None
        self.cursor = 0
        self.scroll_to(y=0, animate=False, immediate=True)
        self.refresh()
        self.request(0)

    @property
    def window_size(self) -> int:
        """Rows to fetch: a window centred on the view, screens deep each way."""
        return max(WINDOW, WINDOW_SCREENS * self.visible_rows)

    def wanted_offset(self) -> int:
        """Where the window should start for what is on screen now."""
        return max(0, self.first_visible - (self.window_size - self.visible_rows) // 2)

    def check_window(self) -> None:
        top, bottom = self.first_visible, min(self.total, self.first_visible + self.visible_rows)
        start, end = self.window_offset, self.window_offset + len(self.window)
        covered = start <= top and bottom <= end
        # Refetch while the edge is still screens away, so neither a scroll
        # by a row nor a page ever waits for a query (or shows a placeholder).
        ahead = AHEAD_SCREENS * self.visible_rows
        near = (top - start < ahead and start > 0) or (end - bottom < ahead and end < self.total)
        if not covered:
            self.request(self.wanted_offset())
        elif near and not self._ahead_pending:
            # Still covered: fetch once this frame is out, not before it (the
            # query and the rows it makes would delay the frame of the key
            # that came near the edge).
            self._ahead_pending = True
            self.call_after_refresh(self._fetch_ahead)

    def _fetch_ahead(self) -> None:
        self._ahead_pending = False
        self.request(self.wanted_offset())  # centred on the view as it is now

    def request(self, offset: int) -> None:
        if self._asked == offset:
            return
        self._asked = offset
        self.post_message(self.WindowNeeded(self, offset, self.window_size))

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if int(old_value) != int(new_value):
            self.check_window()
