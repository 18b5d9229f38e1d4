"""The app around the screens: events and notifications, help, the command
palette, themes, leaving (detach, quit with unfinished jobs), attaching over
the control socket, and trusting a node; all on a real engine."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import pytest

from console.app import build_app, run_console
from console.screens.dialogs import ConfirmScreen
from console.screens.events import EventsScreen
from console.screens.help import HelpScreen
from console.screens.nodes import NodesScreen
from console.widgets.line_table import ListTable
from engine.api import Engine
from engine.control import connect
from tests.tui.conftest import TEST_HZ, app_for, job, until, until_async

pytestmark = pytest.mark.timeout(60)

NAPS = 'name = "naps"\nfunction = "tests.tui.taskfns:nap"\nitems = [5, 5, 5, 5, 5, 5]\n'


def toasts(app) -> list[str]:
    return [str(n.message) for n in app._notifications]


async def nodes_table(pilot, app) -> ListTable:
    await pilot.press("1")
    table = await until(pilot, lambda: isinstance(app.screen, NodesScreen) and app.screen.query_one(ListTable))
    await until(pilot, lambda: table.row_count >= 1 and "up" in str(table.rows[0]), what="a node up")
    return table


async def test_events_log_operator_actions_of_any_client_and_alerts_as_toasts(engine, tmp_path):
    app = app_for(engine, tmp_path)
    async with app.run_test(size=(120, 30), notifications=True) as pilot:
        table = await nodes_table(pilot, app)
        node = table.cursor_key
        await engine.drain(node, actor="cli")  # another client steers the engine
        job_id = await engine.submit(job('name = "sq"\nfunction = "tests.tui.taskfns:square"\ncount = 4\n'), actor="cli")
        await engine.wait(job_id, 30)
        await pilot.press("3")
        events = await until(pilot, lambda: isinstance(app.screen, EventsScreen) and app.screen.query_one(ListTable))
        await until(pilot, lambda: any(f"cli: drain {node}" in str(r) for r in events.rows), what="drain by cli logged")
        await until(pilot, lambda: any("job 1 sq succeeded" in str(r) for r in events.rows), what="job end logged")
        assert any("job 1 sq succeeded" in t for t in toasts(app))


async def test_help_lists_every_key_of_the_current_screen(engine, tmp_path):
    app = app_for(engine, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await nodes_table(pilot, app)
        await pilot.press("question_mark")
        help_screen = await until(pilot, lambda: isinstance(app.screen, HelpScreen) and app.screen)
        shown = {(key, what) for key, what, _ in help_screen.bindings}
        for binding in [*NodesScreen.BINDINGS, *app.BINDINGS]:
            if binding.description and binding.show:
                assert (binding.key_display or app.get_key_display(binding), binding.description) in shown
        assert all(why for key, what, why in help_screen.bindings if (key, what) in {("d", "Drain"), ("t", "Trust")})
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, NodesScreen))


async def test_command_palette_runs_the_screens_actions(engine, tmp_path):
    app = app_for(engine, tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:
        table = await nodes_table(pilot, app)
        node = table.cursor_key
        await pilot.press("ctrl+p")
        await pilot.press(*"drain")
        palette = app.screen
        hits = palette.query_one("CommandList")
        await until(pilot, lambda: hits.option_count == 3 and hits.highlighted == 0, what="hits")
        assert str(hits.get_option_at_index(0).prompt).startswith("Drain (d)")  # help line: the binding's tooltip
        await pilot.press("enter")
        await until_async(pilot, lambda: _drained(engine, node), what="drained through the palette")
        assert any(e.actor == "console" and e.action == "drain" for e in await engine.audit(20))


async def _drained(engine, node: str) -> bool:
    return any(n.id == node and n.drained for n in await engine.nodes())


async def test_theme_switch_is_remembered_in_the_config_dir(engine, tmp_path):
    app = app_for(engine, tmp_path)
    settings = tmp_path / "console-settings" / "console.json"
    async with app.run_test() as pilot:
        assert app.theme == "shoal-dark"
        await pilot.press("T")
        await until(pilot, lambda: settings.exists())
        assert app.theme == "shoal-light"
    assert json.loads(settings.read_text())["theme"] == "shoal-light"
    again = app_for(engine, tmp_path)
    assert again.theme == "shoal-light"
    assert app_for(engine, tmp_path, theme="high-contrast").theme == "shoal-high-contrast"  # --theme wins


async def test_no_color_is_honoured(engine, tmp_path, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    app = app_for(engine, tmp_path)
    async with app.run_test() as pilot:
        await pilot.pause()
        assert app.no_color


async def test_quit_embedded_with_unfinished_jobs_asks_and_says_they_resume(engine, tmp_path):
    job_id = await engine.submit(job(NAPS))
    app = app_for(engine, tmp_path)
    async with app.run_test() as pilot:
        await pilot.press("q")
        confirm = await until(pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen)
        assert "resume on the next start" in confirm.body
        await pilot.press("n")  # stays
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
        await pilot.press("q")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
    assert app.return_code == 0
    assert (await engine.job(job_id)).status == "running"  # quitting the app left the job alone

    again = app_for(engine, tmp_path)
    async with again.run_test() as pilot:
        await until(pilot, lambda: again.feed.jobs)
        await pilot.press("ctrl+c")  # at once, no question: the state is durable
        await until(pilot, lambda: not again.is_running, what="ctrl+c to end the app")
    assert again.return_code == 0
    await engine.cancel(job_id)


async def test_sigterm_ends_the_console_and_closes_the_engine(engine, tmp_path):
    closed = asyncio.Event()

    class Watched:  # the real engine; only close() is observed
        def __getattr__(self, name):
            return getattr(engine, name)

        async def close(self):
            closed.set()

    api = Watched()
    app = app_for(api, tmp_path)
    running = asyncio.create_task(run_console(api, app, headless=True))
    deadline = time.monotonic() + 15
    while not (app.is_running and app.feed.polls):
        assert time.monotonic() < deadline and not running.done(), "the console did not start"
        await asyncio.sleep(0.02)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(running, 15)
    assert closed.is_set() and app.return_code == 0


async def test_attached_console_steers_the_engine_over_the_socket_and_q_detaches(engine, tmp_path):
    remote = await connect(engine.state_dir)
    app = build_app(remote, config_dir=tmp_path / "settings", refresh_hz=TEST_HZ)
    try:
        async with app.run_test(size=(120, 30)) as pilot:
            table = await nodes_table(pilot, app)
            assert "attached" in str(app.screen.query_one("#status").render())
            node = table.cursor_key
            await pilot.press("d")
            await until_async(pilot, lambda: _drained(engine, node), what="drained over the socket")
            await pilot.press("q")  # no question: detaching stops nothing
        assert app.return_code == 0
        assert any(e.actor.startswith("console@") and e.action == "drain" and e.target == node for e in await engine.audit(20))
        assert len(await engine.nodes()) == 2  # the engine runs on
    finally:
        await remote.close()


@pytest.fixture
async def wary_engine(tmp_path: Path, console_config: Path, agents) -> Engine:
    """An engine that pins no key by itself: its nodes start untrusted."""
    engine = await Engine.open(tmp_path / "wary", console_config, nodes=[f"127.0.0.1:{agents[0].port}"])
    try:
        yield engine
    finally:
        await engine.close()


async def test_trust_shows_the_fingerprint_and_pins_only_after_yes(wary_engine, agents, tmp_path):
    engine = wary_engine
    app = app_for(engine, tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("1")
        table = await until(pilot, lambda: isinstance(app.screen, NodesScreen) and app.screen.query_one(ListTable))
        await until(pilot, lambda: table.row_count == 1 and "untrusted" in str(table.rows[0]), what="untrusted node")
        fingerprint = agents[0].host_key.get_fingerprint("sha256")
        await pilot.press("t")
        confirm = await until(pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen)
        assert fingerprint in confirm.body
        await pilot.press("n")
        assert (await engine.nodes())[0].state == "untrusted"
        await until(pilot, lambda: isinstance(app.screen, NodesScreen))
        await pilot.press("t")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await engine.wait_for_nodes(1, timeout=15)
        assert any(e.actor == "console" and e.action == "trust" for e in await engine.audit(20))


async def test_attached_console_leaves_when_its_engine_stops(tmp_path):
    engine = await Engine.open(tmp_path / "alone", tmp_path / "config")
    remote = await connect(engine.state_dir)
    app = build_app(remote, config_dir=tmp_path / "settings", refresh_hz=TEST_HZ)
    try:
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.feed.polls)
            await engine.close()
            await until(pilot, lambda: not app.is_running, what="the console to leave")
        assert app.return_code == 0
    finally:
        await remote.close()
