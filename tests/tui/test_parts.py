"""The console's pure parts, without an app: filter syntax, path completion,
column dropping on a narrow terminal, what a poll says moved."""

from __future__ import annotations

import pytest
from textual.app import App

from console.feed import Feed
from console.screens.dialogs import PathSuggester
from console.screens.nodes import COLUMNS as NODE_COLUMNS
from console.screens.tasks import parse_filter
from console.widgets.line_table import Column, LineTable
from engine.views import JobInfo


def test_filter_takes_status_node_and_words():
    assert parse_filter('status:failed node:10.0.0.5:7447 "disk full" io') == {
        "status": "failed", "node": "10.0.0.5:7447", "text": "disk full io"}
    assert parse_filter("") == {"status": None, "node": None, "text": None}
    with pytest.raises(ValueError, match="status must be one of"):
        parse_filter("status:broken")
    with pytest.raises(ValueError, match="cannot read the filter"):
        parse_filter('"unclosed')


async def test_path_completion_prefers_job_files_and_folders(tmp_path):
    (tmp_path / "render.toml").write_text("")
    (tmp_path / "readme.txt").write_text("")
    (tmp_path / "recipes").mkdir()
    suggest = PathSuggester((".toml",))
    assert await suggest.get_suggestion(str(tmp_path / "ren")) == str(tmp_path / "render.toml")
    assert await suggest.get_suggestion(str(tmp_path / "rec")) == str(tmp_path / "recipes") + "/"
    assert await suggest.get_suggestion(str(tmp_path / "rea")) is None  # not a job file
    assert await suggest.get_suggestion(str(tmp_path / "nothing" / "x")) is None


def test_narrow_terminal_drops_the_columns_least_worth_keeping():
    table = LineTable(NODE_COLUMNS)
    wide = dict(zip((c.label for c in NODE_COLUMNS), table._column_widths(160), strict=True))
    narrow = dict(zip((c.label for c in NODE_COLUMNS), table._column_widths(80), strict=True))
    assert all(wide.values())
    assert sum(narrow.values()) + sum(1 for w in narrow.values() if w) <= 80
    assert narrow["NODE"] and narrow["STATE"] and narrow["CPU 1 MIN"]  # kept
    assert not narrow["HOST"] and not narrow["LOAD"]  # dropped first


def job(counts: dict[str, int]) -> JobInfo:
    return JobInfo(1, "frames", "running", 10, counts, 0.0, None)


def test_a_poll_marks_moved_jobs_and_logs_new_failures_once():
    feed = Feed(clock=lambda: 100.0)
    assert feed.absorb_poll([], [job({"queued": 10})]) == []
    assert feed.touched_jobs == {1}
    feed.touched_jobs.clear()
    assert feed.absorb_poll([], [job({"queued": 10})]) == [] and feed.touched_jobs == set()
    lines = feed.absorb_poll([], [job({"queued": 7, "failed": 3})])
    assert [line.text for line in lines] == ["job 1 frames: 3 task(s) failed (3 in all)"]
    assert feed.touched_jobs == {1} and feed.logged == 1


class _Rows(LineTable):
    DEFAULT_CSS = "_Rows > .line-table--bad { color: red; }"

    def __init__(self, rows: list) -> None:
        super().__init__([Column("TASK", 5, right=True), Column("STATUS", 8), Column("ERROR", 0)])
        self.rows = rows

    @property
    def row_count(self) -> int:
        return len(self.rows)

    def row(self, index: int):
        return self.rows[index]


async def test_a_table_line_is_one_segment_per_style_run_cut_to_its_columns():
    error = "ValueError: 界 " + "x" * 80  # wide characters, and longer than its column
    table = _Rows([("7", ("failed", "bad"), error), ("12345678", "queued", "")])

    class One(App[None]):
        def compose(self):
            yield table

    app = One()
    async with app.run_test(size=(60, 5)) as pilot:
        width = table.content_region.width
        first, second = table.render_line(1), table.render_line(2)
        assert first.cell_length == second.cell_length == width == 60
        # 5 cells right-aligned, 8, and what is left (60 - 6 - 9 - 1 = 44),
        # a space after each; "界" takes two cells, so 43 characters fill 44.
        assert first.text == "    7 failed   " + error[:43] + " "
        assert second.text == "12345 queued   " + " " * 45  # too long: cut to its column
        styles = [segment.style for segment in first]
        assert len(styles) == 3  # the plain run, the toned cell, the plain run
        assert styles[0] == styles[2] != styles[1]
        # Drawn again from the cache: the very same strip, so its filtered
        # copy and the compositor's cuts are reused too; styles re-applied
        # as they were (a screen coming back) keep it.
        assert table.render_line(1) is first
        table.notify_style_update()
        assert table.render_line(1) is first
        # Another theme: lines in its colours.
        app.theme = "textual-light" if app.theme != "textual-light" else "textual-dark"
        await pilot.pause()
        again = table.render_line(1)
        assert again.text == first.text and [s.style for s in again][0] != styles[0]
