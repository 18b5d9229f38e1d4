"""One task: its attempts as a timeline, its progress, the tail of its output
(live while it runs), and its result or its error with the traceback."""

from __future__ import annotations

import time
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Static

from console.host import Tick
from console.screens.base import Pump, ShoalScreen
from console.screens.dialogs import ConfirmScreen
from console.screens.tasks import rerun_task
from console.widgets import format as fmt
from console.widgets.line_table import Column, ListTable, Row
from engine.views import AttemptInfo, TaskDetail

ATTEMPT_COLUMNS = [
    Column("#", 3, right=True),
    Column("NODE", 21),
    Column("START", 8, keep=5),
    Column("END", 8, keep=4),
    Column("TIME", 8, right=True),
    Column("OUTCOME", 10),
    Column("EXIT", 4, right=True),
    Column("ERROR", 0),
]

TIMELINE = 24  # cells of the bar that places each attempt in the task's life


def clock(t: float | None) -> str:
    return "-" if t is None else time.strftime("%H:%M:%S", time.localtime(t))


def attempt_rows(attempts: list[AttemptInfo], now: float) -> list[Row]:
    rows: list[Row] = []
    for number, a in enumerate(attempts, 1):
        took = None if a.started is None else (a.ended if a.ended is not None else now) - a.started
        rows.append(
            (
                str(number),
                a.node or "-",
                clock(a.started),
                clock(a.ended) if a.ended is not None else "…",
                fmt.duration(took),
                (a.outcome, fmt.status_tone(a.outcome)),
                "-" if a.exit_code is None else str(a.exit_code),
                (a.error.splitlines()[0] if a.error else "", "bad"),
            )
        )
    return rows


def timeline(attempts: list[AttemptInfo], now: float) -> str:
    """Each attempt as a run of its number along the task's life: a retry
    after a lost node reads as ``111111  2222``."""
    spans = [(a.started, a.ended if a.ended is not None else now) for a in attempts if a.started is not None]
    if not spans:
        return ""
    start, end = min(s for s, _ in spans), max(e for _, e in spans)
    width = max(end - start, 1e-6)
    cells = [" "] * TIMELINE
    for number, (s, e) in enumerate(spans, 1):
        first = int((s - start) / width * (TIMELINE - 1))
        last = max(first, int((e - start) / width * (TIMELINE - 1)))
        for i in range(first, last + 1):
            cells[i] = str(number % 10)
    return "".join(cells)


class TaskDetailScreen(ShoalScreen):
    TITLE_TEXT = "Task"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("R", "resubmit", "Rerun", id="detail.resubmit", tooltip="Run this ended task again (asks first for a succeeded one)"),
        Binding("x", "cancel", "Cancel", id="detail.cancel", tooltip="Cancel this task (asks first)"),
        Binding("escape", "back", "Back", id="detail.back", tooltip="Back to the tasks"),
    ]

    def __init__(self, job_id: int, index: int) -> None:
        super().__init__()
        self.job_id = job_id
        self.index = index
        self.detail: TaskDetail | None = None
        self.loads: Pump[None] = Pump(self, self._fetch, "task")
        self._last_fetch = 0.0

    def compose_body(self) -> ComposeResult:
        yield Static("", id="detail-head")
        yield ListTable(ATTEMPT_COLUMNS, id="attempts-table")
        with Horizontal(id="detail-panes"):
            with VerticalScroll(id="detail-outcome"):
                yield Static("", id="detail-result", markup=False)
            with VerticalScroll(id="detail-output"):
                yield Static("", id="detail-stdout", markup=False)
                yield Static("", id="detail-stderr", markup=False)

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one(ListTable).focus()

    def show_tick(self, tick: Tick) -> None:
        running = self.detail is None or self.detail.status in ("running", "queued", "pending")
        # Output tails change without task events: refetch a running task
        # about once a second even when nothing else said it changed.
        if tick.forced or self.job_id in tick.touched or (running and time.monotonic() - self._last_fetch > 1.0):
            self.loads.want(None)

    async def _fetch(self, _: None) -> None:
        self._last_fetch = time.monotonic()
        self.show_detail(await self.shoal.api.task(self.job_id, self.index))

    def show_detail(self, d: TaskDetail) -> None:
        self.detail = d
        now = self.shoal.clock()
        progress = ""
        if d.progress is not None:
            filled, empty = fmt.bar(d.progress, 20)
            progress = f"  [$accent]{filled}[/][$text-muted]{empty}[/] {d.progress:.0%}"
        message = f"  {d.message}" if d.message else ""
        tone = {"good": "$success", "bad": "$error", "accent": "$accent", "muted": "$text-muted"}.get(fmt.status_tone(d.status), "$foreground")
        head = f"[b]task {d.job}/{d.index}[/]  [{tone}]{d.status}[/]  on {d.node or '-'}{progress}{message}"
        line = timeline(d.attempts, now)
        if line:
            head += f"\n[$text-muted]attempts[/] [$accent]{line}[/]"
        self.query_one("#detail-head", Static).update(head)
        self.query_one(ListTable).set_rows([a.id for a in d.attempts], attempt_rows(d.attempts, now))
        if d.error or d.traceback:
            outcome = f"ERROR\n{d.error}" + (f"\n\n{d.traceback.rstrip()}" if d.traceback else "")
        elif d.status == "succeeded":
            outcome = f"RESULT\n{fmt.pretty(d.value)}"
        else:
            outcome = "no result yet"
        self.query_one("#detail-result", Static).update(outcome)
        self.query_one("#detail-stdout", Static).update("STDOUT (tail)\n" + (d.stdout_tail.rstrip() or "(empty)"))
        self.query_one("#detail-stderr", Static).update("STDERR (tail)\n" + (d.stderr_tail.rstrip() or "(empty)"))

    def action_resubmit(self) -> None:
        if self.detail is not None:
            rerun_task(self, self.job_id, self.index, self.detail.status)

    def action_cancel(self) -> None:
        api, job_id, index = self.shoal.api, self.job_id, self.index
        self.app.push_screen(
            ConfirmScreen(f"Cancel task {job_id}/{index}?", "It is killed if it runs and will not run again unless resubmitted.", yes="Cancel task"),
            lambda yes: self.act(lambda: api.cancel(job_id, [index], actor="console"), f"task {job_id}/{index} cancelled") if yes else None,
        )

    def action_back(self) -> None:
        self.app.pop_screen()
