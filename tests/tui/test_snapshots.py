"""Screenshots of the main screens in each theme, compared with the accepted
ones in __snapshots__/ (update with --snapshot-update after checking the
report). The data is the fixed StaticEngine and a frozen clock, in UTC, so
a run on any machine draws the same cells."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from console.app import build_app
from console.widgets.line_table import LineTable
from tests.tui.static_engine import T0, StaticEngine

pytestmark = pytest.mark.timeout(60)

THEMES = ["shoal-dark", "shoal-light", "shoal-high-contrast"]


@pytest.fixture(autouse=True)
def utc() -> Iterator[None]:
    before = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


def static_app(theme: str = "shoal-dark") -> Any:
    # refresh_hz is low so no tick lands between loading and the shot; the
    # first poll is made at mount.
    return build_app(StaticEngine(), theme=theme, refresh_hz=1.0, clock=lambda: T0)


async def settle(pilot: Any, table: str = "LineTable") -> None:
    """Until the screen's table has its rows (the first poll is a worker)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        tables = list(pilot.app.screen.query(table))
        if tables and all(t.row_count for t in tables if isinstance(t, LineTable)):
            break
        await pilot.pause(0.02)
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def keys_then_settle(*keys: str) -> Callable[[Any], Awaitable[None]]:
    async def run_before(pilot: Any) -> None:
        await settle(pilot)
        for key in keys:
            await pilot.press(key)
            await settle(pilot)

    return run_before


@pytest.mark.parametrize("theme", THEMES)
def test_jobs_screen(snap_compare: Any, theme: str) -> None:
    assert snap_compare(static_app(theme), terminal_size=(120, 24), run_before=keys_then_settle())


@pytest.mark.parametrize("theme", THEMES)
def test_nodes_screen(snap_compare: Any, theme: str) -> None:
    assert snap_compare(static_app(theme), terminal_size=(120, 24), run_before=keys_then_settle("1"))


@pytest.mark.parametrize("theme", THEMES)
def test_tasks_screen_of_100000(snap_compare: Any, theme: str) -> None:
    assert snap_compare(static_app(theme), terminal_size=(120, 24), run_before=keys_then_settle("enter", "pagedown"))


def test_task_detail_at_80x24(snap_compare: Any) -> None:
    assert snap_compare(static_app(), terminal_size=(80, 24), run_before=keys_then_settle("f", "enter"))


def test_failures_screen_at_80x24(snap_compare: Any) -> None:
    assert snap_compare(static_app(), terminal_size=(80, 24), run_before=keys_then_settle("f"))


def test_nodes_and_help_at_80x24(snap_compare: Any) -> None:
    assert snap_compare(static_app(), terminal_size=(80, 24), run_before=keys_then_settle("1", "question_mark"))
