"""The task table's scrollbar draws its own lines (console/widgets/scrollbar.py)
instead of going through Textual's line pipeline: they must be the lines
Textual makes, cell for cell and style for style (mouse actions included),
in every theme and wherever the thumb is. A Textual upgrade that changes
its pipeline fails here, not on a screen."""

from __future__ import annotations

import pytest
from textual.geometry import Region
from textual.scrollbar import ScrollBar

from console.app import build_app
from console.widgets.scrollbar import ThumbScrollBar
from console.widgets.task_table import TaskTable
from tests.tui.conftest import until
from tests.tui.static_engine import StaticEngine
from tests.tui.test_snapshots import THEMES

pytestmark = pytest.mark.timeout(120)


async def test_scrollbar_lines_are_textuals_own_in_every_theme_and_thumb_position() -> None:
    engine = StaticEngine()
    app = build_app(engine, refresh_hz=1.0)
    async with app.run_test(size=(120, 40)) as pilot:
        app.open_job_screen("tasks", 3)
        table = await until(pilot, lambda: isinstance(app.screen.focused, TaskTable) and app.screen.focused.window and app.screen.focused, what="the task table")
        bar = table.vertical_scrollbar
        assert isinstance(bar, ThumbScrollBar) and bar._plain_box()
        compared = 0
        for theme in THEMES:
            app.set_theme(theme)
            for row in [0, 1, 37, 5_000, 33_333, 50_000, 77_777, 99_000, engine.task_count - 1]:
                table.move_to(row)
                await pilot.pause()
                full = Region(0, 0, *bar.size)
                textuals = ScrollBar.render_lines(bar, full)
                ours = bar._draw()
                assert [list(line) for line in ours] == [list(line) for line in textuals], (theme, row)
                assert [line.cell_length for line in ours] == [line.cell_length for line in textuals]
                compared += 1
        assert compared == len(THEMES) * 9
