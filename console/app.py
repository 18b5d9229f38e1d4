"""The Shoal console: a Textual app over ``EngineAPI``.

``build_app(api, ...)`` is how the CLI, the demo and the tests all make it;
``run_console(...)`` opens the engine (attached over the control socket when
one already drives the state dir, else embedded), runs the app in the same
event loop and closes what it opened.

The app never draws per engine event: a timer (``refresh_hz``) takes the
events that arrived (``Subscription.take_ready``), folds them into the
``Feed``, asks the snapshot queries when something changed, and publishes one
``Tick`` that the shown screen draws from.
"""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from textual.app import App
from textual.binding import Binding, BindingType
from textual.notifications import SeverityLevel
from textual.screen import Screen
from textual.signal import Signal
from textual.theme import Theme

import themes
from console.commands import ShoalCommands
from console.feed import KINDS, Feed, LogLine
from console.host import Tick
from console.screens.base import Pump
from console.screens.dialogs import ConfirmScreen, PathSuggester, PromptScreen
from console.screens.events import EventsScreen
from console.screens.help import HelpScreen
from console.screens.jobs import JobsScreen
from console.screens.nodes import NodesScreen
from console.screens.results import ResultsScreen
from console.screens.task_detail import TaskDetailScreen
from console.screens.tasks import FailuresScreen, TasksScreen
from engine.interface import EngineAPI, EngineError, Subscription
from engine.spec import JobSpec, SpecError, load_job_file

ACTOR = "console"
SETTINGS_FILE = "console.json"
RESULT_EVERY = 1.0  # seconds between partial-result queries of a running job
SMALL_RESULTS = frozenset({"sum", "count", "min", "max"})
AUDIT_EVERY = 2.0
TOASTS_PER_TICK = 3
SEVERITIES: dict[str, SeverityLevel] = {"error": "error", "warning": "warning", "info": "information"}
# Textual's own keys that mean nothing in a table of rows.
HIDDEN_IN_HELP = ("scroll_", "screenshot", "copy_text", "focus_")


class ShoalApp(App[None]):
    TITLE = "Shoal"
    CSS_PATH: ClassVar[Any] = themes.STYLESHEETS
    MODES: ClassVar[dict[str, Any]] = {"nodes": NodesScreen, "jobs": JobsScreen, "events": EventsScreen}
    DEFAULT_MODE = "jobs"
    COMMANDS = App.COMMANDS | {ShoalCommands}
    ENABLE_COMMAND_PALETTE = True

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("1", "switch_mode('nodes')", "Nodes", id="screen.nodes", tooltip="Every node: state, slots, CPU, heartbeat"),
        Binding("2", "switch_mode('jobs')", "Jobs", id="screen.jobs", tooltip="Every job: progress, rate, ETA, result"),
        Binding("3", "switch_mode('events')", "Events", id="screen.events", tooltip="Alerts and operator actions"),
        Binding("s", "submit_job", "Submit", id="app.submit", tooltip="Submit a job file (TOML)"),
        Binding("T", "next_theme", "Theme", id="app.theme", tooltip="Next theme: dark, light, high contrast (remembered)"),
        Binding("question_mark", "help", "Help", id="app.help", tooltip="Every key of this screen"),
        Binding("q", "quit_console", "Quit", id="app.quit", tooltip="Detach (attached) or stop the embedded engine (asks when jobs are unfinished)"),
        Binding("ctrl+c", "quit_now", "Quit now", id="app.quit_now", show=False, priority=True, tooltip="Leave at once; jobs resume on the next start"),
    ]

    def __init__(
        self,
        api: EngineAPI,
        *,
        config_dir: Path | None = None,
        theme: str | None = None,
        jobs: Sequence[JobSpec] = (),
        refresh_hz: float = 5.0,
        clock: Callable[[], float] = time.time,
        durable: bool = True,
    ) -> None:
        super().__init__()
        self.durable = durable  # False: the state dir goes when the app does (the demo)
        self.api = api
        self.config_dir = config_dir
        self.clock = clock
        self.refresh_hz = refresh_hz
        self.feed = Feed(clock=clock)
        self.tick_signal: Signal[Tick] = Signal(self, "tick")
        self.to_submit = list(jobs)
        self.polls: Pump[bool] = Pump(self, self._poll, "poll")
        self.subscription: Subscription | None = None
        self._result_seen: dict[int, tuple[str, float]] = {}  # job -> (status, when) of its last result query
        self._last_audit = 0.0
        self._forced = False
        for definition in themes.THEMES.values():
            self.register_theme(definition)
        self.theme = themes.resolve(theme or "") or self._saved_theme() or themes.DEFAULT_THEME

    # --- lifecycle --------------------------------------------------------------------

    def on_mount(self) -> None:
        self.subscription = self.api.subscribe(kinds=KINDS)
        self.theme_changed_signal.subscribe(self, self._theme_changed)
        self.set_interval(1.0 / self.refresh_hz, self._tick, name="feed")
        self.polls.want(True)
        for spec in self.to_submit:
            self.submit(spec)
        self.to_submit = []
        self.call_after_refresh(self._freeze_startup_objects)

    def _freeze_startup_objects(self) -> None:
        # Textual, its stylesheet and the first screen are some 80,000
        # long-lived objects: each full collection walked them all (about
        # 80 ms, a frozen frame a few times a minute, at any keypress).
        # Frozen, the collector skips them; garbage made later is collected
        # as before. Once, after the first frame, so startup is not slowed.
        gc.collect()
        gc.freeze()

    def submit(self, spec: JobSpec) -> None:
        self.act(lambda: self.api.submit(spec, actor=ACTOR), lambda job_id: f"submitted job {job_id} ({spec.name})")

    def on_unmount(self) -> None:
        gc.unfreeze()  # what this app froze can be collected again (tests start many apps)
        if self.subscription is not None:
            self.subscription.close()

    def _tick(self) -> None:
        if self.subscription is not None:
            self._toast(self.feed.absorb(self.subscription.take_ready()))
        # One poll a tick (the pump never stacks them): a few small queries a
        # second, whatever the engine's event rate.
        self.polls.want(self._forced)
        self._forced = False

    def force_poll(self) -> None:
        """After an operator action: refetch everything at the next tick."""
        self._forced = True

    async def _poll(self, forced: bool) -> None:
        try:
            await self._poll_once(forced)
        except EngineError as exc:
            if not self.api.attached:
                raise
            # The engine we attached to stopped (its `shoal run` ended, or it
            # was killed): nothing left to show or steer.
            self.exit(return_code=0, message=f"detached: the engine stopped ({exc})")

    async def _poll_once(self, forced: bool) -> None:
        feed, api = self.feed, self.api
        nodes, jobs = await api.nodes(), await api.jobs()
        for node in nodes:
            if node.id not in feed.cpu:
                feed.seed_history(node.id, await api.node_history(node.id, 60.0))
        now = time.monotonic()
        for job in jobs:
            # A job's result when first seen and when its status changes; a
            # running job's partial result about once a second when it is
            # small (a "collect" of 100,000 values is not sent 1/s for a cell).
            seen = self._result_seen.get(job.id)
            partial_due = job.status == "running" and job.reduce in SMALL_RESULTS and now - seen[1] >= RESULT_EVERY if seen else False
            if seen is None or seen[0] != job.status or partial_due:
                self._result_seen[job.id] = (job.status, now)
                feed.results[job.id] = await api.result(job.id)
        if now - self._last_audit >= AUDIT_EVERY or forced:
            self._last_audit = now
            feed.absorb_audit(await api.audit(200))
        feed.absorb_poll(nodes, jobs)
        touched = frozenset(feed.touched_jobs)
        feed.touched_jobs = set()
        self.tick_signal.publish(Tick(feed, touched, forced))

    def _toast(self, lines: Iterable[LogLine]) -> None:
        loud = [line for line in lines if line.notify]
        for line in loud[:TOASTS_PER_TICK]:
            self.notify(line.text, severity=SEVERITIES.get(line.level, "information"), timeout=6)
        if len(loud) > TOASTS_PER_TICK:
            self.notify(f"{len(loud) - TOASTS_PER_TICK} more alerts: see Events (3)", severity="warning")

    # --- operator actions ------------------------------------------------------------

    def act(self, call: Callable[[], Awaitable[Any]], done: str | Callable[[Any], str]) -> None:
        """Run one operator action through the API in a worker; toast the
        outcome, and refetch so the screen shows its effect at once."""

        async def run() -> None:
            try:
                answer = await call()
            except EngineError as exc:
                self.notify(str(exc), title="refused", severity="error", timeout=8)
                return
            self.notify(done(answer) if callable(done) else done)
            self.force_poll()
            self.feed.touched_jobs.update(job.id for job in self.feed.jobs)

        self.run_worker(run(), group="actions", exit_on_error=False)

    def open_job_screen(self, what: str, job_id: int) -> None:
        screens = {"tasks": TasksScreen, "failures": FailuresScreen, "results": ResultsScreen}
        self.push_screen(screens[what](job_id))

    def open_task(self, job_id: int, index: int) -> None:
        self.push_screen(TaskDetailScreen(job_id, index))

    def action_submit_job(self) -> None:
        def check(text: str) -> JobSpec:
            path = Path(text.strip()).expanduser()
            if not text.strip():
                raise ValueError("type the path of a job file (.toml)")
            try:
                return load_job_file(path)
            except SpecError as exc:
                raise ValueError(str(exc)) from None
            except OSError as exc:
                raise ValueError(f"cannot read {path}: {exc.strerror}") from None

        self.push_screen(
            PromptScreen(
                "Submit a job file",
                check,
                placeholder="path/to/job.toml",
                hint="→ (or End) takes the suggested completion · Enter submits · Esc cancels",
                suggester=PathSuggester((".toml",)),
            ),
            lambda spec: self.submit(spec) if spec is not None else None,
        )

    def action_help(self) -> None:
        self.push_screen(HelpScreen(getattr(self.screen, "TITLE_TEXT", "") or type(self.screen).__name__, help_rows(self.screen)))

    # --- themes ----------------------------------------------------------------------

    def shoal_theme_names(self) -> list[str]:
        return list(themes.THEMES)

    def set_theme(self, name: str) -> None:
        self.theme = name

    def action_next_theme(self) -> None:
        names = self.shoal_theme_names()
        at = names.index(self.theme) if self.theme in names else -1
        self.theme = names[(at + 1) % len(names)]
        self.notify(f"theme {self.theme}")

    def _settings_path(self) -> Path | None:
        return self.config_dir / SETTINGS_FILE if self.config_dir is not None else None

    def _saved_theme(self) -> str | None:
        path = self._settings_path()
        try:
            saved = json.loads(path.read_text()) if path is not None else {}
        except (OSError, ValueError):
            return None
        return themes.resolve(str(saved.get("theme", ""))) if isinstance(saved, dict) else None

    def _theme_changed(self, theme: Theme) -> None:
        self._save_theme(theme.name)

    def _save_theme(self, name: str) -> None:
        path = self._settings_path()
        if path is None or themes.resolve(name) is None:
            return
        try:
            saved = json.loads(path.read_text()) if path.exists() else {}
            saved = saved if isinstance(saved, dict) else {}
            saved["theme"] = name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(saved, indent=2) + "\n")
        except (OSError, ValueError) as exc:
            self.notify(f"cannot remember the theme in {path}: {exc}", severity="warning")

    # --- leaving ---------------------------------------------------------------------

    async def action_quit_console(self) -> None:
        if self.api.attached:
            self.exit(message="detached; the engine and its jobs go on")
            return
        try:
            unfinished = [job for job in await self.api.jobs() if job.status == "running"]
        except EngineError:
            unfinished = []
        if not unfinished:
            self.exit()
            return
        left = sum(job.total - job.done for job in unfinished)
        self.push_screen(
            ConfirmScreen(
                "Stop the engine?",
                f"{len(unfinished)} job(s) have {left:,} unfinished task(s). Quitting stops this engine; "
                + (
                    "the state is on disk, so they resume on the next start (shoal console or shoal run on this state dir)."
                    if self.durable
                    else "this demo's agents and state are removed, so they end here."
                ),
                yes="Quit",
            ),
            lambda yes: self.exit(message="stopped; unfinished jobs resume on the next start" if self.durable else "stopped") if yes else None,
        )

    def action_quit_now(self) -> None:
        self.exit()


def help_rows(screen: Screen[Any]) -> list[tuple[str, str, str]]:
    """(key, action, what it does) for every key of ``screen``: its own keys
    first, then the app's, then the focused widget's (moving around)."""
    app = screen.app
    rank = {screen: 0, app: 1}
    rows: list[tuple[int, str, str, str]] = []
    seen: set[str] = set()
    for active in screen.active_bindings.values():
        binding = active.binding
        if not binding.description or binding.action in seen or binding.action.rpartition(".")[2].startswith(HIDDEN_IN_HELP):
            continue
        seen.add(binding.action)
        key = binding.key_display or app.get_key_display(binding)
        rows.append((rank.get(active.node, 2), key, binding.description, active.tooltip or binding.tooltip))
    rows.sort(key=lambda row: row[0])
    return [(key, what, why) for _, key, what, why in rows]


def build_app(
    api: EngineAPI,
    *,
    config_dir: Path | None = None,
    theme: str | None = None,
    jobs: Sequence[JobSpec] = (),
    refresh_hz: float = 5.0,
    clock: Callable[[], float] = time.time,
    durable: bool = True,
) -> ShoalApp:
    """The console over ``api``: the one way the CLI, the demo and the tests make it."""
    return ShoalApp(api, config_dir=config_dir, theme=theme, jobs=jobs, refresh_hz=refresh_hz, clock=clock, durable=durable)


async def open_api(
    state_dir: str | Path | None,
    config_dir: str | Path | None,
    *,
    nodes: Sequence[str] = (),
    mdns_interfaces: Sequence[str] = (),
    trust_new: bool = False,
) -> EngineAPI:
    """Attach to the engine that drives ``state_dir``, or embed one."""
    from engine.api import Engine
    from engine.control import connect
    from engine.paths import state_dir as default_state_dir

    sdir = default_state_dir(state_dir)
    try:
        remote: EngineAPI = await connect(sdir)
    except EngineError:
        pass
    else:
        for address in nodes:
            await remote.add_node(address)
        return remote
    engine: EngineAPI = await Engine.open(sdir, config_dir, nodes=nodes, mdns_interfaces=mdns_interfaces, trust_new=trust_new)
    return engine


async def run_console(api: EngineAPI, app: ShoalApp, *, headless: bool = False) -> None:
    """Run ``app`` until it exits or SIGTERM; then close ``api``. The terminal
    is restored by Textual on the way out, signal or not. (Ctrl-C is a key
    in the app's raw terminal: a binding, ``quit_now``.)"""
    loop = asyncio.get_running_loop()
    installed = []
    for signum in (signal.SIGTERM, signal.SIGHUP):
        try:
            loop.add_signal_handler(signum, app.exit)
            installed.append(signum)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        await app.run_async(headless=headless)
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        await api.close()
