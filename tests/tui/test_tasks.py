"""Tasks, task detail, failures and results screens, and the actions on
tasks, against a real engine and real agents."""

from __future__ import annotations

import asyncio
import csv
import json

import pytest
from textual.widgets import Input, Static

from console.screens.dialogs import ConfirmScreen, PromptScreen
from console.screens.jobs import JobsScreen
from console.screens.results import ResultsScreen
from console.screens.task_detail import TaskDetailScreen
from console.screens.tasks import FailuresScreen, TasksScreen
from console.widgets.line_table import ListTable
from console.widgets.task_table import TaskTable
from tests.tui.conftest import app_for, job, until, until_async

pytestmark = pytest.mark.timeout(60)

ODD_FAILS = 'name = "odd"\nfunction = "tests.tui.taskfns:square_odd_fails"\ncount = 10\nreduce = "sum"\nretries = 0\n'


def text_of(screen, selector: str) -> str:
    return str(screen.query_one(selector, Static).render())


async def open_jobs(pilot, app) -> ListTable:
    table = await until(pilot, lambda: isinstance(app.screen, JobsScreen) and app.screen.query_one(ListTable))
    await until(pilot, lambda: table.row_count >= 1 and "running" not in str(table.rows[0]), what="job ended in the table")
    return table


async def test_tasks_filter_and_sort_are_the_engines(engine, tmp_path):
    job_id = await engine.submit(job(ODD_FAILS))
    assert await engine.wait(job_id, 30) == "failed"
    app = app_for(engine, tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:
        await open_jobs(pilot, app)
        await pilot.press("enter")
        screen = await until(pilot, lambda: isinstance(app.screen, TasksScreen) and app.screen)
        table = screen.query_one(TaskTable)
        await until(pilot, lambda: table.total == 10 and len(table.window) == 10)
        assert [t.index for t in table.window] == list(range(10))

        await pilot.press("slash")
        prompt = await until(pilot, lambda: isinstance(app.screen, PromptScreen) and app.screen)
        prompt.query_one(Input).value = "status:failed"
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, TasksScreen) and table.total == 5 and len(table.window) == 5)
        assert [t.index for t in table.window] == [1, 3, 5, 7, 9]
        assert all(t.status == "failed" for t in table.window)

        await pilot.press("O")  # reverse
        await until(pilot, lambda: [t.index for t in table.window] == [9, 7, 5, 3, 1], what="descending")

        await pilot.press("slash")
        prompt = await until(pilot, lambda: isinstance(app.screen, PromptScreen) and app.screen)
        prompt.query_one(Input).value = "status:bogus"
        await pilot.press("enter")
        assert isinstance(app.screen, PromptScreen)  # refused inline, the dialog stays
        assert "status must be one of" in text_of(prompt, "#prompt-error")
        prompt.query_one(Input).value = ""
        await pilot.press("enter")
        await until(pilot, lambda: table.total == 10 and len(table.window) == 10)

        await pilot.press("o")  # sort by the next order: status
        expected = await engine.tasks(job_id, order="status", descending=True, limit=10)
        await until(pilot, lambda: table.window == expected.rows, what="rows in the engine's status order")


# 5,000 tasks that no node can take: they stay queued, a big real job whose
# pages the engine builds from its never-dispatched block.
PARKED = 'name = "parked"\nfunction = "tests.tui.taskfns:square"\ncount = 5000\nlabels = { gpu = "yes" }\n'


async def test_scrolling_by_a_row_or_a_page_never_waits_for_a_query(engine, tmp_path):
    job_id = await engine.submit(job(PARKED))
    held: list[asyncio.Event] = []  # queries in flight, each answered when the test says
    answered: list[int] = []
    real_tasks = engine.tasks

    async def slow_tasks(*args, **kwargs):
        # A slow link: every answer takes longer than the gap between two
        # keys. A keypress that needed it would show placeholders.
        gate = asyncio.Event()
        held.append(gate)
        await gate.wait()
        page = await real_tasks(*args, **kwargs)
        answered.append(kwargs.get("offset", 0))
        return page

    engine.tasks = slow_tasks
    app = app_for(engine, tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:
        jobs = await until(pilot, lambda: isinstance(app.screen, JobsScreen) and app.screen.query_one(ListTable))
        await until(pilot, lambda: jobs.row_count == 1)
        await pilot.press("enter")
        table = await until(pilot, lambda: isinstance(app.screen, TasksScreen) and app.screen.query_one(TaskTable))
        await until(pilot, lambda: held, what="the first query")
        held[0].set()
        await until(pilot, lambda: table.total == 5000 and table.window)
        queries_before = len(held)
        keys = [("down", 1)] * 60 + [("pagedown", table.visible_rows)] * 12 + [("up", -1)] * 20
        for key, step in keys:
            in_flight = [g for g in held if not g.is_set()]  # asked before this key
            want = table.cursor + step
            await pilot.press(key)
            assert table.cursor == want
            shown = range(table.first_visible, table.first_visible + table.visible_rows)
            missing = [i for i in shown if table.task_at(i) is None]
            assert missing == [], f"rows {missing[:3]}... not loaded after {key} to row {want}"
            task = table.task_at(want)
            assert task is not None and (task.index, task.status) == (want, "queued")
            if in_flight:  # one keypress later, what was asked before it lands
                goal = len(answered) + len(in_flight)
                for gate in in_flight:
                    gate.set()
                await until(pilot, lambda goal=goal: len(answered) >= goal, what="answers")
                await pilot.pause()
        # Windows fetched ahead, not a query per key (~380 rows travelled).
        assert 1 <= len(held) - queries_before <= 8, answered
    await engine.cancel(job_id)


async def test_a_running_jobs_rows_follow_the_engine_refetching_only_the_visible_ones(engine, tmp_path):
    job_id = await engine.submit(job('name = "naps"\nfunction = "tests.tui.taskfns:nap"\nitems = ' + str([0.3] * 12) + "\n"))
    limits: list[int] = []
    real_tasks = engine.tasks

    async def counted_tasks(*args, **kwargs):
        limits.append(kwargs.get("limit", 100))
        return await real_tasks(*args, **kwargs)

    engine.tasks = counted_tasks
    app = app_for(engine, tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:
        jobs = await until(pilot, lambda: isinstance(app.screen, JobsScreen) and app.screen.query_one(ListTable))
        await until(pilot, lambda: jobs.row_count == 1)
        await pilot.press("enter")
        table = await until(pilot, lambda: isinstance(app.screen, TasksScreen) and app.screen.query_one(TaskTable))
        await until(pilot, lambda: len(table.window) == 12)
        loaded = len(limits)
        assert any(t.status != "succeeded" for t in table.window)  # shown while it runs
        await until(pilot, lambda: all(t.status == "succeeded" for t in table.window), timeout=30, what="every row succeeded")
        assert table.window == (await real_tasks(job_id, limit=12)).rows
        refreshes = limits[loaded:]
        assert refreshes and max(refreshes) <= table.visible_rows + 2  # the rows on screen, not the window


async def test_resubmitted_failed_task_reruns_and_is_audited(engine, tmp_path):
    job_id = await engine.submit(job(ODD_FAILS))
    assert await engine.wait(job_id, 30) == "failed"
    app = app_for(engine, tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:
        await open_jobs(pilot, app)
        await pilot.press("f")
        screen = await until(pilot, lambda: isinstance(app.screen, FailuresScreen) and app.screen)
        table = screen.query_one(TaskTable)
        await until(pilot, lambda: table.total == 5 and table.cursor_task is not None)
        # The failure pane shows the highlighted task's error and stderr tail.
        await until(pilot, lambda: "odd item 1" in text_of(screen, "#failure-error"), what="error shown")
        await until(pilot, lambda: "about to fail on 1" in text_of(screen, "#failure-stderr"), what="stderr shown")

        assert table.cursor_task.index == 1
        await pilot.press("R")
        await until_async(pilot, lambda: _attempts(engine, job_id, 1, 2), what="task 1 ran a second time")
        entries = [e for e in await engine.audit(50) if e.action == "resubmit"]
        assert entries and entries[0].actor == "console"
        assert (await engine.task(job_id, 3)).attempts.__len__() == 1  # only the chosen task reran


async def _attempts(engine, job_id: int, index: int, count: int) -> bool:
    detail = await engine.task(job_id, index)
    return len(detail.attempts) >= count and detail.status in ("succeeded", "failed")


async def test_task_detail_shows_attempts_error_traceback_and_output(engine, tmp_path):
    job_id = await engine.submit(job(ODD_FAILS))
    assert await engine.wait(job_id, 30) == "failed"
    app = app_for(engine, tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:
        await open_jobs(pilot, app)
        await pilot.press("enter")
        table = await until(pilot, lambda: isinstance(app.screen, TasksScreen) and app.screen.query_one(TaskTable))
        await until(pilot, lambda: len(table.window) == 10)
        await pilot.press("down", "enter")  # task 1: failed
        screen = await until(pilot, lambda: isinstance(app.screen, TaskDetailScreen) and app.screen)
        await until(pilot, lambda: screen.detail is not None)
        assert screen.index == 1
        result = text_of(screen, "#detail-result")
        assert "odd item 1" in result and "Traceback" in result
        assert "about to fail on 1" in text_of(screen, "#detail-stderr")
        attempts = screen.query_one("#attempts-table", ListTable)
        assert attempts.row_count == len((await engine.task(job_id, 1)).attempts) >= 1

        await pilot.press("escape", "up", "enter")  # task 0: succeeded
        screen = await until(pilot, lambda: isinstance(app.screen, TaskDetailScreen) and app.screen.detail and app.screen)
        assert "RESULT" in text_of(screen, "#detail-result") and "square of 0" in text_of(screen, "#detail-stdout")


async def test_rerun_of_a_succeeded_task_asks_then_replaces_its_result(engine, tmp_path):
    job_id = await engine.submit(job('name = "sq"\nfunction = "tests.tui.taskfns:square"\ncount = 6\nreduce = "sum"\n'))
    assert await engine.wait(job_id, 30) == "succeeded"
    app = app_for(engine, tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:
        await open_jobs(pilot, app)
        await pilot.press("enter")
        table = await until(pilot, lambda: isinstance(app.screen, TasksScreen) and app.screen.query_one(TaskTable))
        await until(pilot, lambda: len(table.window) == 6)
        await pilot.press("down", "down", "enter")  # task 2: succeeded
        screen = await until(pilot, lambda: isinstance(app.screen, TaskDetailScreen) and app.screen.detail and app.screen)
        assert screen.index == 2
        await pilot.press("R")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")  # declined: nothing runs
        await until(pilot, lambda: app.screen is screen)
        assert len((await engine.task(job_id, 2)).attempts) == 1
        await pilot.press("R")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until_async(pilot, lambda: _attempts(engine, job_id, 2, 2), what="task 2 ran a second time")
    assert await engine.wait(job_id, 30) == "succeeded"
    assert await engine.result(job_id) == sum(n * n for n in range(6))  # the rerun task counted once
    assert [len((await engine.task(job_id, i)).attempts) for i in range(6)] == [1, 1, 2, 1, 1, 1]
    assert any(e.actor == "console" and e.action == "resubmit" for e in await engine.audit(20))


async def test_cancel_one_task_asks_then_only_that_task_is_cancelled(engine, tmp_path):
    job_id = await engine.submit(job('name = "naps"\nfunction = "tests.tui.taskfns:nap"\nitems = [3, 3, 3, 3, 3, 3, 3, 3]\n'))
    app = app_for(engine, tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:
        table = await until(pilot, lambda: isinstance(app.screen, JobsScreen) and app.screen.query_one(ListTable))
        await until(pilot, lambda: table.row_count == 1)
        await pilot.press("enter")
        tasks = await until(pilot, lambda: isinstance(app.screen, TasksScreen) and app.screen.query_one(TaskTable))
        await until(pilot, lambda: len(tasks.window) == 8)
        await pilot.press("end")
        await until(pilot, lambda: tasks.cursor_task is not None and tasks.cursor_task.index == 7)
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until_async(pilot, lambda: _status(engine, job_id, 7, "cancelled"), what="task 7 cancelled")
        statuses = {t.index: t.status for t in (await engine.tasks(job_id)).rows}
        assert list(statuses.values()).count("cancelled") == 1
        await engine.cancel(job_id)  # end the naps now


async def _status(engine, job_id: int, index: int, status: str) -> bool:
    return (await engine.task(job_id, index)).status == status


async def test_results_export_to_json_and_csv(engine, tmp_path):
    job_id = await engine.submit(job('name = "sq"\nfunction = "tests.tui.taskfns:square"\ncount = 6\nreduce = "collect"\n'))
    assert await engine.wait(job_id, 30) == "succeeded"
    expected = await engine.result(job_id)
    app = app_for(engine, tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:
        await open_jobs(pilot, app)
        await pilot.press("r")
        screen = await until(pilot, lambda: isinstance(app.screen, ResultsScreen) and app.screen)
        await until(pilot, lambda: screen.result == expected)
        for name in ("out.json", "out.csv"):
            await pilot.press("e")
            prompt = await until(pilot, lambda: isinstance(app.screen, PromptScreen) and app.screen)
            prompt.query_one(Input).value = str(tmp_path / "missing-dir" / name)
            await pilot.press("enter")
            assert "no such folder" in text_of(prompt, "#prompt-error")
            prompt.query_one(Input).value = str(tmp_path / name)
            await pilot.press("enter")
            written = tmp_path / name
            await until(pilot, written.exists, what=f"{name} written")
        await until(pilot, lambda: (tmp_path / "out.csv").stat().st_size > 0)
    doc = json.loads((tmp_path / "out.json").read_text())
    assert doc["result"] == expected and doc["job"] == job_id and doc["status"] == "succeeded"
    assert [(t["index"], t["value"]) for t in doc["tasks"]] == [(i, i * i) for i in range(6)]
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert [(int(r["index"]), json.loads(r["value"]), r["status"]) for r in rows] == [(i, i * i, "succeeded") for i in range(6)]


async def test_submit_job_file_shows_spec_errors_inline_then_submits(engine, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nfunction = "tests.tui.taskfns:square"\ncount = 3\ntimeout = "soon"\n')
    good = tmp_path / "good.toml"
    good.write_text('name = "good"\nfunction = "tests.tui.taskfns:square"\ncount = 3\nreduce = "sum"\n')
    app = app_for(engine, tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("s")
        prompt = await until(pilot, lambda: isinstance(app.screen, PromptScreen) and app.screen)
        prompt.query_one(Input).value = str(bad)
        await pilot.press("enter")
        error = text_of(prompt, "#prompt-error")
        assert "bad.toml:4" in error and "timeout" in error
        assert await engine.jobs() == []
        prompt.query_one(Input).value = str(good)
        await pilot.press("enter")
        jobs = await until_async(pilot, engine.jobs, what="job submitted")
        assert [j.name for j in jobs] == ["good"]
        assert await engine.wait(jobs[0].id, 30) == "succeeded" and await engine.result(jobs[0].id) == 5
        assert any(e.actor == "console" and e.action == "submit" for e in await engine.audit(20))


async def test_rerun_failed_of_a_job_reruns_every_failed_task_once(engine, tmp_path):
    job_id = await engine.submit(job(ODD_FAILS))
    assert await engine.wait(job_id, 30) == "failed"
    app = app_for(engine, tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:
        await open_jobs(pilot, app)
        await pilot.press("R")
        for index in (1, 3, 5, 7, 9):
            await until_async(pilot, lambda index=index: _attempts(engine, job_id, index, 2), what=f"task {index} rerun")
        assert [len((await engine.task(job_id, i)).attempts) for i in (0, 2, 4)] == [1, 1, 1]  # succeeded ones stay
        assert any(e.actor == "console" and e.action == "resubmit" for e in await engine.audit(20))
