"""The console's node and job actions, driven with keys through Pilot
against a real engine and real agents; each test checks what the ENGINE
did (state, where tasks ran, the audit table), not what the screen says."""

from __future__ import annotations

import pytest

from console.screens.dialogs import ConfirmScreen
from console.screens.jobs import JobsScreen
from console.screens.nodes import NodesScreen
from console.widgets.line_table import ListTable
from tests.tui.conftest import app_for, job, until, until_async

pytestmark = pytest.mark.timeout(60)


async def audited(engine, action: str, target: str = "") -> bool:
    return any(e.actor == "console" and e.action == action and target in e.target for e in await engine.audit(50))


async def test_drained_node_gets_no_task_and_undrain_brings_it_back(engine, tmp_path):
    app = app_for(engine, tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("1")
        screen = await until(pilot, lambda: isinstance(app.screen, NodesScreen) and app.screen)
        table = screen.query_one(ListTable)
        await until(pilot, lambda: table.row_count == 2 and all("up" in str(r) for r in table.rows), what="two nodes up")
        drained = table.cursor_key
        await pilot.press("d")
        await until_async(pilot, lambda: audited(engine, "drain", drained), what="drain audited")
        node = next(n for n in await engine.nodes() if n.id == drained)
        assert node.drained

        job_id = await engine.submit(job('name = "sq"\nfunction = "tests.tui.taskfns:square"\ncount = 12\nreduce = "sum"\n'))
        assert await engine.wait(job_id, 30) == "succeeded"
        assert (await engine.tasks(job_id, node=drained)).total == 0
        assert (await engine.tasks(job_id)).total == 12
        await until(pilot, lambda: "drained" in str(table.rows[table.keys.index(drained)]), what="row shows drained")

        await pilot.press("u")
        await until_async(pilot, lambda: audited(engine, "undrain", drained), what="undrain audited")
        assert not next(n for n in await engine.nodes() if n.id == drained).drained


async def test_drain_with_requeue_asks_first_and_no_leaves_it_alone(engine, tmp_path):
    app = app_for(engine, tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("1")
        table = await until(pilot, lambda: isinstance(app.screen, NodesScreen) and app.screen.query_one(ListTable))
        await until(pilot, lambda: table.row_count == 2)
        target = table.cursor_key
        await pilot.press("D")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, NodesScreen))
        assert not any(n.drained for n in await engine.nodes())
        await pilot.press("D")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until_async(pilot, lambda: audited(engine, "drain", target), what="drain audited")
        assert next(n for n in await engine.nodes() if n.id == target).drained


async def test_job_files_given_at_start_are_submitted_and_shown_with_their_result(engine, tmp_path):
    spec = job('name = "squares"\nfunction = "tests.tui.taskfns:square"\ncount = 20\nreduce = "sum"\n')
    app = app_for(engine, tmp_path, jobs=[spec])
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await until(pilot, lambda: isinstance(app.screen, JobsScreen) and app.screen)
        table = screen.query_one(ListTable)
        await until(pilot, lambda: table.row_count == 1 and "succeeded" in str(table.rows[0]), what="job row succeeded")
        jobs = await engine.jobs()
        assert [(j.name, j.status, j.total) for j in jobs] == [("squares", "succeeded", 20)]
        assert await engine.result(jobs[0].id) == sum(i * i for i in range(20))
        assert str(sum(i * i for i in range(20))) in str(table.rows[0])  # the result column
        assert await audited(engine, "submit")


async def test_cancel_job_asks_then_cancels_in_the_engine(engine, tmp_path):
    job_id = await engine.submit(job('name = "naps"\nfunction = "tests.tui.taskfns:nap"\nitems = [5, 5, 5, 5, 5, 5, 5, 5]\n'))
    app = app_for(engine, tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:
        table = await until(pilot, lambda: isinstance(app.screen, JobsScreen) and app.screen.query_one(ListTable))
        await until(pilot, lambda: table.row_count == 1)
        await pilot.press("c")
        confirm = await until(pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen)
        assert "Cancel job" in confirm.title_text
        await pilot.press("y")
        await until_async(pilot, lambda: audited(engine, "cancel"), what="cancel audited")
        assert await engine.wait(job_id, 15) == "cancelled"
        await until(pilot, lambda: "cancelled" in str(table.rows[0]), what="row shows cancelled")
