"""Events: alerts and operator actions (from any client) as a log that
follows its tail; the same lines that matter are also toasts."""

from __future__ import annotations

import time
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType

from console.feed import LogLine
from console.host import Tick
from console.screens.base import ShoalScreen
from console.widgets.line_table import Column, ListTable, Row

COLUMNS = [Column("TIME", 8), Column("LEVEL", 7), Column("EVENT", 0)]
LEVEL_TONES = {"error": "bad", "warning": "warn", "info": "muted"}


def log_row(line: LogLine) -> Row:
    return (time.strftime("%H:%M:%S", time.localtime(line.t)), (line.level, LEVEL_TONES.get(line.level, "")), line.text)


class EventsScreen(ShoalScreen):
    TITLE_TEXT = "Events"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("G", "follow", "Follow", id="events.follow", tooltip="Jump to the newest event and keep following"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._shown = -1

    def compose_body(self) -> ComposeResult:
        yield ListTable(COLUMNS, id="events-table")

    @property
    def table(self) -> ListTable:
        return self.query_one("#events-table", ListTable)

    def show_tick(self, tick: Tick) -> None:
        feed = tick.feed
        if feed.logged == self._shown:
            return
        table = self.table
        following = table.cursor >= table.row_count - 1
        self._shown = feed.logged
        lines = list(feed.log)
        table.set_rows([str(feed.logged - len(lines) + i) for i in range(len(lines))], [log_row(line) for line in lines])
        if following:
            table.action_jump(-1)

    def action_follow(self) -> None:
        self.table.action_jump(-1)
