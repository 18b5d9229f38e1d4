"""Jobs: one row per job with its progress, rate, ETA and partial result;
Enter opens its tasks."""

from __future__ import annotations

from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType

from console.host import Tick
from console.screens.base import ShoalScreen
from console.screens.dialogs import ConfirmScreen
from console.widgets import format as fmt
from console.widgets.line_table import Column, LineTable, ListTable, Row
from engine.views import JobInfo

BAR = 12

COLUMNS = [
    Column("JOB", 4, right=True),
    Column("NAME", 14),
    Column("STATE", 9),
    Column("PROGRESS", BAR + 5, keep=8),
    Column("DONE", 15, right=True, keep=7),
    Column("FAIL", 5, right=True, keep=6),
    Column("RUN", 4, right=True, keep=2),
    Column("SENT", 5, right=True, keep=1),  # on an agent, waiting in its queue
    Column("QUEUE", 7, right=True, keep=2),
    Column("RATE", 8, right=True, keep=5),
    Column("ETA", 7, right=True, keep=4),
    Column("RESULT", 0, keep=3),
]


def job_row(job: JobInfo, result: Any) -> Row:
    fraction = job.done / job.total if job.total else 1.0
    filled, empty = fmt.bar(fraction, BAR)
    counts = job.counts
    queued = counts.get("queued", 0) + counts.get("pending", 0)
    failed = counts.get("failed", 0)
    status = "blocked" if job.blocked else job.status  # the engine's state dir refuses writes
    return (
        str(job.id),
        job.name,
        (status, fmt.status_tone(status)),
        ((filled, "bar"), (empty, "dim-bar"), (f" {fraction:4.0%}", "")),
        f"{job.done:,}/{job.total:,}",
        (str(failed), "bad" if failed else ""),
        str(counts.get("running", 0)),
        str(counts.get("sent", 0)),
        f"{queued:,}",
        fmt.rate(job.rate),
        fmt.duration(job.eta) if job.status == "running" else "",
        fmt.short(result, 80),
    )


class JobsScreen(ShoalScreen):
    TITLE_TEXT = "Jobs"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open_tasks", "Tasks", id="job.tasks", tooltip="The tasks of this job: sort, filter, inspect"),
        Binding("f", "open('failures')", "Failures", id="job.failures", tooltip="The failed tasks of this job with their errors"),
        Binding("r", "open('results')", "Result", id="job.results", tooltip="The job's aggregated result; export it to JSON or CSV"),
        Binding("c", "cancel_job", "Cancel job", id="job.cancel", tooltip="Cancel every unfinished task of this job (asks first)"),
        Binding("R", "resubmit_failed", "Rerun failed", id="job.resubmit_failed", tooltip="Run this job's failed and cancelled tasks again"),
    ]

    def compose_body(self) -> ComposeResult:
        yield ListTable(COLUMNS, id="jobs-table")

    @property
    def table(self) -> ListTable:
        return self.query_one("#jobs-table", ListTable)

    def show_tick(self, tick: Tick) -> None:
        feed = tick.feed
        jobs = sorted(feed.jobs, key=lambda j: -j.id)  # newest first
        self.table.set_rows([str(j.id) for j in jobs], [job_row(j, feed.results.get(j.id)) for j in jobs])

    def _selected(self) -> JobInfo | None:
        key = self.table.cursor_key
        job = self.shoal.feed.job(int(key)) if key else None
        if job is None:
            self.notify("no job selected", severity="warning")
        return job

    def on_line_table_selected(self, event: LineTable.Selected) -> None:
        self.action_open_tasks()

    def action_open_tasks(self) -> None:
        self.action_open("tasks")

    def action_open(self, what: str) -> None:
        job = self._selected()
        if job is not None:
            self.shoal.open_job_screen(what, job.id)

    def action_cancel_job(self) -> None:
        job = self._selected()
        if job is None:
            return
        if job.status != "running":
            self.notify(f"job {job.id} has already {job.status}", severity="warning")
            return
        left = job.total - job.done
        api = self.shoal.api
        self.app.push_screen(
            ConfirmScreen(
                f"Cancel job {job.id} ({job.name})?",
                f"{left:,} unfinished task(s) are cancelled; running ones are killed. Finished results are kept.",
                yes="Cancel job",
            ),
            lambda yes: self.act(lambda: api.cancel(job.id, actor="console"), f"job {job.id}: cancelled") if yes else None,
        )

    def action_resubmit_failed(self) -> None:
        job = self._selected()
        if job is not None:
            api = self.shoal.api
            self.act(lambda: api.resubmit(job.id, failed_only=True, actor="console"), f"job {job.id}: failed tasks queued again")
