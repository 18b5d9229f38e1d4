"""The tasks of one job, sorted and filtered by the engine, drawn a window at
a time (see widgets/task_table.py); and Failures, the same table fixed on
failed tasks with the highlighted one's error and stderr below."""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import time
from dataclasses import dataclass, replace
from typing import ClassVar

from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import Static

from console.host import Tick
from console.screens.base import Pump, ShoalScreen
from console.screens.dialogs import ConfirmScreen, PromptScreen
from console.widgets.line_table import LineTable
from console.widgets.task_table import TaskTable
from engine.views import TASK_ORDERS, TaskDetail, TaskInfo

FIRST_PAGE_WAIT = 0.05  # seconds a new task view waits for its first page before it draws
REFRESH_EVERY = 0.5  # seconds between refetches of a running job's visible rows
STATUSES = ("pending", "queued", "running", "succeeded", "failed", "cancelled")


@dataclass(frozen=True, slots=True)
class TaskQuery:
    """What the engine is asked: filter and order (the window is the table's)."""

    status: str | None = None
    node: str | None = None
    text: str | None = None
    order: str = "index"
    descending: bool = False

    def describe(self) -> str:
        parts = [f"status:{self.status}" if self.status else "", f"node:{self.node}" if self.node else "", self.text or ""]
        shown = " ".join(p for p in parts if p)
        return f"sorted by {self.order}{' (descending)' if self.descending else ''}" + (f" · filter: {shown}" if shown else "")

    def filter_text(self) -> str:
        parts = [f"status:{self.status}" if self.status else "", f"node:{self.node}" if self.node else "", self.text or ""]
        return " ".join(p for p in parts if p)


def parse_filter(text: str) -> dict[str, str | None]:
    """``status:failed node:10.0.0.5:7447 some words`` -> the query's filter
    fields; a bad status is a ValueError shown under the input."""
    status = node = None
    words: list[str] = []
    try:
        tokens = shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"cannot read the filter: {exc}") from None
    for token in tokens:
        key, sep, value = token.partition(":")
        if sep and key == "status":
            if value not in STATUSES:
                raise ValueError(f"status must be one of {', '.join(STATUSES)}")
            status = value
        elif sep and key == "node":
            node = value
        else:
            words.append(token)
    return {"status": status, "node": node, "text": " ".join(words) or None}


class TasksScreen(ShoalScreen):
    TITLE_TEXT = "Tasks"
    FIXED_STATUS: str | None = None

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open_detail", "Detail", id="task.detail", tooltip="Attempts, output, result or error of this task"),
        Binding("slash", "filter", "Filter", id="task.filter", tooltip="Filter: status:failed node:HOST:PORT or words of the error"),
        Binding("o", "sort", "Sort", id="task.sort", tooltip="Sort by the next column (index, status, node, attempts, duration, error)"),
        Binding("O", "reverse", "Reverse", id="task.reverse", tooltip="Reverse the sort order"),
        Binding("R", "resubmit_task", "Rerun task", id="task.resubmit", tooltip="Run this ended task again (asks first for a succeeded one)"),
        Binding("x", "cancel_task", "Cancel task", id="task.cancel", tooltip="Cancel this task (asks first)"),
        Binding("F", "resubmit_failed", "Rerun failed", id="task.resubmit_failed", tooltip="Run all failed tasks of this job again"),
        Binding("escape", "back", "Back", id="task.back", tooltip="Back to the jobs"),
    ]

    def __init__(self, job_id: int) -> None:
        super().__init__()
        self.job_id = job_id
        self.query_state = TaskQuery(status=self.FIXED_STATUS)
        self.pages: Pump[tuple[int, int]] = Pump(self, self._fetch_page, "tasks")
        self.fetches = 0
        self._refreshed = 0.0
        self._moved = False  # the job moved since its rows were last refetched
        self._caption_text = ""
        self._first_page = asyncio.Event()

    def compose_body(self) -> ComposeResult:
        yield Static("", id="tasks-caption")
        yield TaskTable(id="tasks-table")

    @property
    def table(self) -> TaskTable:
        return self.query_one(TaskTable)

    def on_mount(self) -> None:
        super().on_mount()
        self._caption()
        self.table.focus()
        # Asked here, not by the table's WindowNeeded: that message would
        # wait behind the resume handler below, which waits for this page.
        self.pages.want((0, self.table.window_size))

    @on(events.ScreenResume)
    async def _first_frame_with_rows(self) -> None:
        # Runs before Textual's own resume handler, which lays the screen out
        # and draws it: the first frame waits (a little) for the first page,
        # asked for at the mount. One full frame with the rows instead of one
        # of placeholders and a second, laid out again, with them. A slow
        # engine gets the placeholders.
        if not self._first_page.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._first_page.wait(), FIRST_PAGE_WAIT)

    def _caption(self) -> None:
        job = self.shoal.feed.job(self.job_id)
        name = f"job {self.job_id}" + (f" {job.name}" if job else "")
        total = f" · {self.table.total:,} shown" if self.table.total or self.table.window else ""
        text = f"{name} · {self.query_state.describe()}{total}"
        if text != self._caption_text:
            # Said again with every page: a repaint of its one line only when
            # it changed, and never a layout of the screen (its height is fixed).
            self._caption_text = text
            self.query_one("#tasks-caption", Static).update(text, layout=False)

    # --- data ----------------------------------------------------------------------

    def on_task_table_window_needed(self, event: TaskTable.WindowNeeded) -> None:
        self.pages.want((event.offset, event.limit))

    async def _fetch_page(self, window: tuple[int, int]) -> None:
        offset, limit = window
        q = self.query_state
        page = await self.shoal.api.tasks(
            self.job_id, status=q.status, node=q.node, text=q.text, order=q.order, descending=q.descending, offset=offset, limit=limit
        )
        self.fetches += 1
        if q == self.query_state:  # the query did not change while we asked
            self.table.set_page(page)
            self._caption()
            self.page_shown(page.rows)
            self._first_page.set()

    def page_shown(self, rows: list[TaskInfo]) -> None:
        """A page arrived (the failures screen shows the highlighted task)."""

    def show_tick(self, tick: Tick) -> None:
        # A running job's rows refresh at most REFRESH_EVERY: readable, and a
        # page query less for the engine on most ticks.
        now = time.monotonic()
        # A move that comes too soon after the last refresh is kept for a
        # later tick, or the job's last moves (it ended) would never show.
        self._moved = self._moved or self.job_id in tick.touched
        if (tick.forced or (self._moved and now - self._refreshed >= REFRESH_EVERY)) and self.is_mounted:
            self._refreshed = now
            self._moved = False
            table = self.table
            if table.window and not tick.forced:
                # What is on screen (and a row each side): the rest of the
                # window is refetched when the view comes near it.
                first = max(0, table.first_visible - 1)
                self.pages.want((first, table.visible_rows + 2))
            else:
                self.pages.want((table.window_offset if table.window else table.wanted_offset(), table.window_size))

    def _requery(self, **changes: object) -> None:
        self.query_state = replace(self.query_state, **changes)  # type: ignore[arg-type]
        self._caption()
        self.table.clear()

    # --- actions ------------------------------------------------------------------

    def _selected(self) -> TaskInfo | None:
        task = self.table.cursor_task
        if task is None:
            self.notify("no task selected", severity="warning")
        return task

    def on_line_table_selected(self, event: LineTable.Selected) -> None:
        self.action_open_detail()

    def action_open_detail(self) -> None:
        task = self._selected()
        if task is not None:
            self.shoal.open_task(self.job_id, task.index)

    def action_filter(self) -> None:
        def check(text: str) -> dict[str, str | None]:
            fields = parse_filter(text)
            if self.FIXED_STATUS and fields["status"] not in (None, self.FIXED_STATUS):
                raise ValueError(f"this screen shows {self.FIXED_STATUS} tasks only")
            return fields

        self.app.push_screen(
            PromptScreen(
                "Filter tasks",
                check,
                value=self.query_state.filter_text(),
                placeholder="status:failed node:HOST:PORT words in the error",
                hint="status:STATE · node:HOST:PORT · other words match the error text · empty shows all",
            ),
            lambda fields: self._requery(**{**fields, "status": fields["status"] or self.FIXED_STATUS}) if fields is not None else None,
        )

    def action_sort(self) -> None:
        at = TASK_ORDERS.index(self.query_state.order) if self.query_state.order in TASK_ORDERS else 0
        self._requery(order=TASK_ORDERS[(at + 1) % len(TASK_ORDERS)])

    def action_reverse(self) -> None:
        self._requery(descending=not self.query_state.descending)

    def action_resubmit_task(self) -> None:
        task = self._selected()
        if task is not None:
            rerun_task(self, self.job_id, task.index, task.status)

    def action_cancel_task(self) -> None:
        task = self._selected()
        if task is None:
            return
        if task.status in ("succeeded", "failed", "cancelled"):
            self.notify(f"task {self.job_id}/{task.index} has already ended ({task.status})", severity="warning")
            return
        api, job_id, index = self.shoal.api, self.job_id, task.index
        self.app.push_screen(
            ConfirmScreen(f"Cancel task {job_id}/{index}?", "It is killed if it runs and will not run again unless resubmitted.", yes="Cancel task"),
            lambda yes: self.act(lambda: api.cancel(job_id, [index], actor="console"), f"task {job_id}/{index} cancelled") if yes else None,
        )

    def action_resubmit_failed(self) -> None:
        api, job_id = self.shoal.api, self.job_id
        self.act(lambda: api.resubmit(job_id, failed_only=True, actor="console"), f"job {job_id}: failed tasks queued again")

    def action_back(self) -> None:
        self.app.pop_screen()


def rerun_task(screen: ShoalScreen, job_id: int, index: int, status: str) -> None:
    """Run one ended task again. A failed or cancelled one goes at once; a
    succeeded one asks first, as its result is replaced by the new run's (the
    job's result counts each task once)."""
    if status not in ("failed", "cancelled", "succeeded"):
        screen.notify(f"task {job_id}/{index} is {status}: it runs again only once it has ended", severity="warning")
        return
    api = screen.shoal.api

    def rerun() -> None:
        screen.act(lambda: api.resubmit(job_id, [index], failed_only=False, actor="console"), f"task {job_id}/{index} queued again")

    if status != "succeeded":
        rerun()
        return
    screen.app.push_screen(
        ConfirmScreen(
            f"Rerun succeeded task {job_id}/{index}?",
            "Its stored result is replaced by the new run's; the job's result counts it once.",
            yes="Rerun",
        ),
        lambda yes: rerun() if yes else None,
    )


class FailuresScreen(TasksScreen):
    """The failed tasks of a job; the highlighted one's error and stderr tail
    below the table."""

    TITLE_TEXT = "Failures"
    FIXED_STATUS = "failed"

    def __init__(self, job_id: int) -> None:
        super().__init__(job_id)
        self.details: Pump[int] = Pump(self, self._fetch_detail, "failure")

    def compose_body(self) -> ComposeResult:
        yield from super().compose_body()
        with VerticalScroll(id="failure-pane"):
            yield Static("", id="failure-error", markup=False)
            yield Static("", id="failure-stderr", markup=False)

    def on_line_table_highlighted(self, event: LineTable.Highlighted) -> None:
        task = self.table.task_at(event.row)
        if task is not None:
            self.details.want(task.index)

    def page_shown(self, rows: list[TaskInfo]) -> None:
        task = self.table.cursor_task
        if task is not None:
            self.details.want(task.index)
        elif not rows:
            self.query_one("#failure-error", Static).update("no failed tasks")
            self.query_one("#failure-stderr", Static).update("")

    async def _fetch_detail(self, index: int) -> None:
        detail: TaskDetail = await self.shoal.api.task(self.job_id, index)
        cursor = self.table.cursor_task
        if cursor is None or cursor.index != index:
            return
        error = detail.error or "(no error text)"
        if detail.traceback:
            error += "\n\n" + detail.traceback.rstrip()
        self.query_one("#failure-error", Static).update(f"task {self.job_id}/{index} on {detail.node or '-'}: {error}")
        self.query_one("#failure-stderr", Static).update("stderr:\n" + (detail.stderr_tail.rstrip() or "(empty)"))
