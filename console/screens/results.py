"""A job's aggregated result (partial while it runs), and its export to a
JSON or CSV file the operator names."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import Static

from console.host import Tick
from console.screens.base import Pump, ShoalScreen
from console.screens.dialogs import PathSuggester, PromptScreen
from console.widgets import format as fmt
from engine.reducers import results_to_csv, results_to_json
from engine.views import JobInfo


def export_path(text: str) -> Path:
    """Where to write: a .json or .csv file in an existing folder."""
    if not text.strip():
        raise ValueError("type a path ending in .json or .csv")
    path = Path(os.path.expanduser(text.strip()))
    if path.suffix.lower() not in (".json", ".csv"):
        raise ValueError(f"{path.name}: the name must end in .json or .csv (that picks the format)")
    if not path.parent.is_dir():
        raise ValueError(f"{path.parent}: no such folder")
    if path.is_dir():
        raise ValueError(f"{path}: is a folder")
    return path


def render_export(path: Path, job: JobInfo, result: Any, tasks: list[dict[str, Any]]) -> str:
    """JSON: the job, its aggregated result and every task's row; CSV: one
    row per task. The rows are the engine's export format, the same as
    `shoal results --json/--csv`."""
    if path.suffix.lower() == ".csv":
        return results_to_csv(tasks)
    doc = {
        "job": job.id, "name": job.name, "status": job.status, "counts": job.counts, "total": job.total,
        "result": result, "tasks": json.loads(results_to_json(tasks)),
    }
    return json.dumps(doc, default=repr, ensure_ascii=False, indent=2) + "\n"


class ResultsScreen(ShoalScreen):
    TITLE_TEXT = "Result"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("e", "export", "Export", id="result.export", tooltip="Write the result and every task's row to a .json or .csv file"),
        Binding("escape", "back", "Back", id="result.back", tooltip="Back to the jobs"),
    ]

    def __init__(self, job_id: int) -> None:
        super().__init__()
        self.job_id = job_id
        self.result: Any = None
        self.loads: Pump[None] = Pump(self, self._fetch, "result")
        self._fetched = 0.0

    def compose_body(self) -> ComposeResult:
        yield Static("", id="result-head")
        with VerticalScroll(id="result-pane"):
            yield Static("", id="result-body", markup=False)

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#result-pane").focus()

    def show_tick(self, tick: Tick) -> None:
        # A running job's partial result at most once a second: it may be big.
        now = time.monotonic()
        if tick.forced or (self.job_id in tick.touched and now - self._fetched >= 1.0):
            self._fetched = now
            self.loads.want(None)

    async def _fetch(self, _: None) -> None:
        self.result = await self.shoal.api.result(self.job_id)
        job = await self.shoal.api.job(self.job_id)
        partial = " [$warning](partial: the job is still running)[/]" if job.status == "running" else ""
        self.query_one("#result-head", Static).update(
            f"[b]job {job.id} {job.name}[/]  {job.status}  {job.done:,}/{job.total:,} tasks  reduce: {job.reduce or '-'}{partial}"
        )
        self.query_one("#result-body", Static).update(fmt.pretty(self.result))

    def action_export(self) -> None:
        self.app.push_screen(
            PromptScreen(
                "Export the result",
                export_path,
                value=f"job-{self.job_id}.json",
                hint="a path ending in .json (job, result and every task) or .csv (one row per task)",
                suggester=PathSuggester((".json", ".csv")),
            ),
            self._export_to,
        )

    def _export_to(self, path: Path | None) -> None:
        if path is not None:
            self.run_worker(self._export(path), group="export")

    async def _export(self, path: Path) -> None:
        api = self.shoal.api
        job = await api.job(self.job_id)
        result, tasks = await api.result(self.job_id), await api.task_results(self.job_id)
        text = render_export(path, job, result, tasks)
        try:
            await asyncio.to_thread(path.write_text, text)
        except OSError as exc:
            self.notify(f"cannot write {path}: {exc.strerror}", severity="error")
            return
        self.notify(f"wrote job {job.id}: result and {len(tasks):,} task row(s) to {path}")

    def action_back(self) -> None:
        self.app.pop_screen()
