"""The console under load: an engine process driving N real agents on
loopback, the console attached to it over the control socket (as `shoal
console` attaches to a running `shoal run`).

    .venv/bin/python tests/bench/bench_console.py [--agents 64] [--tasks 100000] [--tp-tasks 20000]
        [--idle-agents]
    .venv/bin/python tests/bench/bench_console.py --ui-only [--key-gap 33]  # the console alone, fixed data
    .venv/bin/python tests/bench/bench_console.py --headless-display   # shoal run's live display

--ui-only runs the same UI measurements against the fixed in-memory engine
of the snapshot tests (100,000 tasks, 64 nodes): the console's own cost,
apart from a cluster's CPU use (on a 2-core machine the agents, the engine
and the console fight for the same cores, and that is what the full run
measures).

Prints:
* throughput of a job of no-op tasks with the console attached vs with no
  console, in alternating rounds of the same run (medians, and the ratio);
* with a 100,000-task job running: the first frame of its task view (Enter
  on the job to the first frame showing its rows), keypress-to-frame p50/p95
  for scrolling the task table and switching screens (wall time, and the
  process's CPU time for the same keys, which a busy machine inflates
  less), the console's CPU while it shows the node table (and how many
  frames a second it drew), and the console process's RSS.

A "frame" is measured to its end: the compositor's update for the screen AND
its conversion to the terminal's bytes (what Textual's driver writes; the
headless test driver skips that, so this script does it in the hook). Keys
are injected the way the terminal driver posts them, without Pilot's waits.
Everything binds to 127.0.0.1; no zeroconf. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

# First: it sets TEXTUAL_FPS as `shoal console` does, and Textual reads it
# once, when its first module loads (until 2026-12-03 this line came after
# two Textual imports, and the bench ran at Textual's default 60 Hz).
import console.launch  # noqa: E402,F401,I001  (ruff would sort it after Textual)

from textual import constants, events  # noqa: E402
from textual._compositor import CompositorUpdate  # noqa: E402

from console.app import ShoalApp, build_app  # noqa: E402
from console.screens.jobs import JobsScreen  # noqa: E402
from console.screens.nodes import NodesScreen  # noqa: E402
from console.screens.tasks import TasksScreen  # noqa: E402
from console.widgets.line_table import ListTable  # noqa: E402
from console.widgets.task_table import TaskTable  # noqa: E402
from demos.cluster import LocalCluster  # noqa: E402
from engine.api import spec_for  # noqa: E402
from engine.control import connect  # noqa: E402
from engine.interface import EngineAPI  # noqa: E402

NOOP = "tests.bench.tasks:noop"
PAUSE = "tests.tui.taskfns:pause"
SIZE = (120, 40)
# Seconds between a key's frame and the next key (--key-gap). 10 ms is a
# burst faster than any keyboard's auto-repeat (25-33 keys/s): a key can then
# land while Textual's screen-update timer sleeps out the one to two
# intervals (1/TEXTUAL_FPS) it sets itself after a frame that followed a
# pause, and waits for it.
KEY_GAP = 0.01


# --- the engine process ------------------------------------------------------------


def serve(state: str, config: str, nodes: list[str]) -> None:
    """Engine-only mode: open an engine on the nodes and serve its socket
    until SIGTERM (a stand-in for a long `shoal run`)."""
    from engine.api import Engine

    async def main() -> None:
        engine = await Engine.open(Path(state), Path(config), nodes=nodes, trust_new=True)
        await engine.wait_for_nodes(len(nodes), timeout=300)
        print("ready", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await engine.close()

    asyncio.run(main())


def start_engine(cluster: LocalCluster, root: Path) -> subprocess.Popen[bytes]:
    state = root / "state"
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(state), str(cluster.config_dir), *cluster.addresses],
        stdout=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != b"ready":
        raise RuntimeError(f"engine did not start: {line!r}")
    return proc


# --- frames --------------------------------------------------------------------------


class Frames:
    """Hooks the app's display: times each finished frame, and resolves a
    waiter on the first frame in which its condition holds."""

    def __init__(self, app: ShoalApp) -> None:
        self.app = app
        self.count = 0
        self.cpu: list[float] = []  # CPU seconds of this process per key_to_frame, in order
        self.queued: list[float] = []  # ... and seconds the app's thread was ready but had no core
        self.early: list[int] = []  # ... and frames drawn before the one where the key's change showed
        self._cpu_at_frame = 0.0
        self._waiter: tuple[Callable[[], bool], asyncio.Future[float]] | None = None
        original = app._display

        def display(screen: Any, renderable: Any) -> None:
            if renderable is not None:
                if isinstance(renderable, CompositorUpdate):
                    renderable.render_segments(app.console)  # the bytes a terminal would get
                self.count += 1
                waiter = self._waiter
                if waiter is not None and waiter[0]():
                    self._waiter = None
                    if not waiter[1].done():
                        self._cpu_at_frame = time.process_time()
                        waiter[1].set_result(time.perf_counter())
            original(screen, renderable)

        app._display = display  # type: ignore[method-assign]

    async def key_to_frame(self, key: str, done: Callable[[], bool], char: str | None = None) -> float:
        """Seconds from posting ``key`` to the end of the first frame where ``done()``."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiter = (done, future)
        event = events.Key(key, char)
        event.set_sender(self.app)
        start, cpu, queued, count = time.perf_counter(), time.process_time(), run_delay(), self.count
        assert self.app._driver is not None
        self.app._driver.send_message(event)
        seconds = await asyncio.wait_for(future, 30) - start
        self.cpu.append(self._cpu_at_frame - cpu)
        self.queued.append(run_delay() - queued)
        self.early.append(self.count - count - 1)
        return seconds


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def run_delay() -> float:
    """Seconds this thread has spent runnable, waiting for a core (the
    kernel's schedstat): the part of a key's wall time that is the machine's
    contention, not the console's work or its timers."""
    with open("/proc/thread-self/schedstat") as f:
        return int(f.read().split()[1]) / 1e9


def cpu_seconds(proc: psutil.Process | None = None) -> float:
    """CPU seconds (user and system) of ``proc``, or of this process."""
    if proc is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    times = proc.cpu_times()
    return float(times.user + times.system)


def print_queued(queued: list[float], wall: list[float]) -> None:
    """How much of the keys' wall time was spent waiting for a core."""
    less = [w - q for w, q in zip(wall, queued, strict=True)]
    print(f"  waiting for a core, same keys: p50 {pct(queued, 50) * 1000:.1f} ms, p95 {pct(queued, 95) * 1000:.1f} ms; "
          f"wall less that wait: p95 {pct(less, 95) * 1000:.1f} ms")


# --- measurements ----------------------------------------------------------------------


async def one_job(api: EngineAPI, tasks: int, watch: Callable[[int], Awaitable[None]] | None = None) -> float:
    """Tasks a second of a job of no-op tasks, submit to end."""
    start = time.perf_counter()
    job = await api.submit(spec_for(NOOP, range(tasks), name="noop", reduce="count"))
    if watch is not None:
        await watch(job)
    await api.wait(job, 600)
    return tasks / (time.perf_counter() - start)


async def open_tasks_view(app: ShoalApp, pilot: Any, job: int) -> None:
    """From the Jobs screen, Enter on ``job`` once it is listed."""
    table = app.screen.query_one(ListTable)
    while str(job) not in table.keys:
        await pilot.pause(0.01)
    table.move_to(table.keys.index(str(job)))
    await pilot.press("enter")


async def throughput(state: Path, tasks: int, rounds: int, engine: psutil.Process) -> None:
    """Alternating rounds of one job, with no console and with a console
    attached and showing that job's tasks (the busiest view). On this
    machine the agents take all the CPU the engine and the console leave,
    so a console's own CPU slows the job here as it would not with the
    agents elsewhere; the engine's CPU per task shows what the console
    costs the engine itself."""
    api = await connect(state)
    await api.wait(await api.submit(spec_for(NOOP, range(500), name="warmup")), 120)
    alone: list[float] = []
    attached: list[float] = []
    engine_cpu: dict[str, float] = {"alone": 0.0, "attached": 0.0}
    console_cpu = console_wall = 0.0
    for _ in range(rounds):
        cpu = cpu_seconds(engine)
        alone.append(await one_job(api, tasks))
        engine_cpu["alone"] += cpu_seconds(engine) - cpu
        console_api = await connect(state)
        app = build_app(console_api)
        async with app.run_test(size=SIZE) as pilot:
            Frames(app)
            cpu, mine, wall = cpu_seconds(engine), cpu_seconds(), time.perf_counter()
            attached.append(await one_job(api, tasks, functools.partial(open_tasks_view, app, pilot)))
            engine_cpu["attached"] += cpu_seconds(engine) - cpu
            console_cpu += cpu_seconds() - mine
            console_wall += time.perf_counter() - wall
        await console_api.close()
    await api.close()
    a, b = statistics.median(alone), statistics.median(attached)
    # Each attached round against the round just before it, too: on a busy
    # machine the rounds drift, and a pair shares its moment.
    pairs = statistics.median(y / x for x, y in zip(alone, attached, strict=True))
    print(f"throughput, {tasks:,} no-op tasks, {rounds} alternating rounds: no console {a:,.0f}/s, "
          f"console attached {b:,.0f}/s ({b / a:.0%} of headless; median of the pairs' ratios {pairs:.0%}; "
          f"all rounds' tasks over their time {sum(1 / x for x in alone) / sum(1 / x for x in attached):.0%})")
    print(f"  rounds: no console {[round(x) for x in alone]}, attached {[round(x) for x in attached]}")
    per = {k: v / (rounds * tasks) * 1e6 for k, v in engine_cpu.items()}
    print(f"  engine CPU per task: no console {per['alone']:.0f} us, console attached {per['attached']:.0f} us; "
          f"the console process meanwhile: {console_cpu / console_wall:.1%} of a core")


async def under_load(state: Path, tasks: int, nodes: int, task_seconds: float) -> None:
    driver_api = await connect(state)
    big = await driver_api.submit(spec_for(PAUSE, range(tasks), name="big", kwargs={"seconds": task_seconds}))
    api = await connect(state)
    try:
        await measure_ui(api, big, tasks, nodes)
        done = (await driver_api.job(big)).done
        print(f"  (the {tasks:,}-task job, {task_seconds:g} s a task, had {done:,} tasks done meanwhile)")
    finally:
        await driver_api.cancel(big)
        await api.close()
        await driver_api.close()


async def measure_ui(api: EngineAPI, big: int, tasks: int, nodes: int) -> None:
    app = build_app(api)
    async with app.run_test(size=SIZE) as pilot:
        frames = Frames(app)
        jobs = app.screen
        assert isinstance(jobs, JobsScreen)
        while not (app.feed.jobs and jobs.query_one(ListTable).row_count):
            await pilot.pause(0.05)
        table = jobs.query_one(ListTable)
        table.move_to(table.keys.index(str(big)))
        await pilot.pause(0.3)

        # First frame of the 100,000-row task view, five times.
        first: list[float] = []
        for _ in range(5):
            first.append(await frames.key_to_frame("enter", lambda: isinstance(app.screen, TasksScreen)
                                                   and bool(app.screen.query_one(TaskTable).window)))
            assert app.screen.query_one(TaskTable).total == tasks
            await pilot.pause(0.2)
            await frames.key_to_frame("escape", lambda: isinstance(app.screen, JobsScreen))
            await pilot.pause(0.2)
        print(f"first frame of the {tasks:,}-task view: median {statistics.median(first) * 1000:.1f} ms, "
              f"max {max(first) * 1000:.1f} ms")

        # Scrolling the task table.
        await pilot.press("enter")
        while not app.screen.query_one(TaskTable).window:
            await pilot.pause(0.02)
        tasks_table = app.screen.query_one(TaskTable)
        scroll: list[float] = []
        cpu_from = len(frames.cpu)
        for step, key in [(1, "down")] * 150 + [(tasks_table.visible_rows, "pagedown")] * 60 + [(-1, "up")] * 50:
            want = min(tasks - 1, max(0, tasks_table.cursor + step))
            scroll.append(await frames.key_to_frame(key, lambda want=want: tasks_table.cursor == want
                                                    and tasks_table.task_at(want) is not None))
            await asyncio.sleep(KEY_GAP)  # a person's keys are not back to back
        lines, pages = scroll[:150] + scroll[210:], scroll[150:210]
        print(f"keypress to frame, scrolling {tasks:,} tasks ({len(scroll)} keys): "
              f"p50 {pct(scroll, 50) * 1000:.1f} ms, p95 {pct(scroll, 95) * 1000:.1f} ms, max {max(scroll) * 1000:.1f} ms; "
              f"up/down p95 {pct(lines, 95) * 1000:.1f} ms, pagedown p95 {pct(pages, 95) * 1000:.1f} ms")
        # The same keys in CPU time of this process: what the console spends
        # on a key, which other processes on the cores do not inflate.
        cpu = frames.cpu[cpu_from:]
        cpu_lines, cpu_pages = cpu[:150] + cpu[210:], cpu[150:210]
        print(f"  CPU per key, same keys: p50 {pct(cpu, 50) * 1000:.1f} ms, p95 {pct(cpu, 95) * 1000:.1f} ms; "
              f"up/down p95 {pct(cpu_lines, 95) * 1000:.1f} ms, pagedown p95 {pct(cpu_pages, 95) * 1000:.1f} ms")
        print_queued(frames.queued[cpu_from:], scroll)
        early = frames.early[cpu_from:]
        print(f"  keys whose change showed only in a later frame (rows not there yet, or a tick's frame first): "
              f"up/down {sum(n > 0 for n in early[:150] + early[210:])} of 200, page down {sum(n > 0 for n in early[150:210])} of 60")

        # Switching screens (each visited once first: Textual builds a
        # screen on its first visit).
        await pilot.press("escape", "1", "2", "3", "2")
        switch: list[float] = []
        targets = {"1": NodesScreen, "2": JobsScreen}
        for key in ["1", "2"] * 40:
            switch.append(await frames.key_to_frame(key, lambda key=key: isinstance(app.screen, targets[key]), char=key))
            await asyncio.sleep(KEY_GAP)
        print(f"keypress to frame, switching screens ({len(switch)} keys): p50 {pct(switch, 50) * 1000:.1f} ms, "
              f"p95 {pct(switch, 95) * 1000:.1f} ms, max {max(switch) * 1000:.1f} ms")
        cpu = frames.cpu[-len(switch):]
        print(f"  CPU per key, same keys: p50 {pct(cpu, 50) * 1000:.1f} ms, p95 {pct(cpu, 95) * 1000:.1f} ms")
        print_queued(frames.queued[-len(switch):], switch)
        both = scroll + switch
        print(f"keypress to frame, all {len(both)} keys: p95 {pct(both, 95) * 1000:.1f} ms")

        # The node table at the app's refresh rate, while the job runs.
        await pilot.press("1")
        node_rows = app.screen.query_one(ListTable)
        while node_rows.row_count < nodes:
            await pilot.pause(0.05)
        await pilot.pause(1.0)
        seconds = 10.0
        cpu0, wall0, frames0, polls0 = cpu_seconds(), time.perf_counter(), frames.count, app.feed.polls
        await asyncio.sleep(seconds)
        share = (cpu_seconds() - cpu0) / (time.perf_counter() - wall0)
        fps = (frames.count - frames0) / seconds
        polls = (app.feed.polls - polls0) / seconds
        print(f"node table, {node_rows.row_count} rows, job running: console CPU {share:.1%} of one core, "
              f"{fps:.1f} frames/s, {polls:.1f} engine polls/s")
        rss = psutil.Process().memory_info().rss / 2**20
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"console RSS: {rss:.0f} MiB now, {peak:.0f} MiB peak (this process: console + bench harness)")


def frame_rate() -> str:
    return f"Textual's frame timer at {constants.MAX_FPS} Hz"


async def ui_only() -> None:
    from tests.tui.static_engine import StaticEngine

    engine = StaticEngine(extra_nodes=58)
    print(f"console alone on fixed data: {engine.task_count:,} tasks, {len(await engine.nodes())} nodes; {frame_rate()}")
    await measure_ui(engine, 3, engine.task_count, len(await engine.nodes()))


def headless_display() -> None:
    """CPU a frame of `shoal run`'s live display on a terminal (to /dev/null,
    as a truecolor terminal would get it), 4 and 64 nodes."""
    from rich.console import Console

    from console.headless_progress import LiveProgress, Snapshot
    from engine.views import JobInfo, NodeInfo

    with open(os.devnull, "w") as sink:
        for count in (4, 64):
            nodes = [NodeInfo(f"10.0.0.{i}:7447", "up", slots=4, slots_busy=i % 5, cpu=float(i)) for i in range(count)]
            display = LiveProgress(sink, Console(file=sink, force_terminal=True, width=120, height=50, color_system="truecolor"))
            frames = 200
            cpu = cpu_seconds()
            for k in range(frames):
                job = JobInfo(1, "frames", "running", 100_000, {"succeeded": 100 * k, "running": 8}, 0.0, None, rate=12.5, eta=48.0)
                display.show(Snapshot("frames", job, nodes, 3.0), 1.0)
            per_frame = (cpu_seconds() - cpu) / frames
            display.close()
            print(f"headless live display, {count} nodes (120x50): {per_frame * 1000:.1f} ms CPU a frame, "
                  f"{per_frame * 4:.1%} of one core at its 4 frames/s")


def idle_cpu_group() -> Path | None:
    """A new CPU cgroup with ``cpu.idle`` set (v1's cpu hierarchy, else v2's
    root), or None where the kernel or the mounts have none."""
    for base in (Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup")):
        if not (base / "cgroup.procs").exists():
            continue  # not a cgroup directory (v1 mounts a tmpfs at /sys/fs/cgroup)
        group = base / f"shoal-bench-{os.getpid()}"
        try:
            group.mkdir()
        except OSError:
            continue
        try:
            (group / "cpu.idle").write_text("1")
            return group
        except OSError:  # no cpu.idle here (older kernel, or v2 without the cpu controller)
            group.rmdir()
    return None


@contextlib.contextmanager
def idle_agents(cluster: LocalCluster) -> Iterator[str]:
    """Run the agents and their workers only on CPU nobody else wants: on a
    LAN they run on other machines, and here they would otherwise take the
    cores that the console's machine has to itself there for the engine and
    the console. Yields how.

    One idle CPU group (``cpu.idle``) for all of them, where the kernel has
    one: the scheduler then weighs the 192 processes as one idle entity.
    Else SCHED_IDLE per thread, which is weaker: each idle thread still
    counts, and a key's few milliseconds of work lose their core to them
    again and again (measured: 4-9 ms a key at p50). Niceness is weaker still: 64
    agents at nice 19 with their workers outweigh two processes at nice 0.
    """
    procs = []
    for agent in cluster.agents:
        assert agent.proc is not None
        root = psutil.Process(agent.proc.pid)
        procs += [root, *root.children(recursive=True)]
    group = idle_cpu_group()
    try:
        for proc in procs:
            if group is not None:
                (group / "cgroup.procs").write_text(str(proc.pid))  # every thread; children follow
            else:
                # Every thread: a policy is a thread's; threads and workers
                # started later inherit it from the thread that starts them.
                for thread in proc.threads():
                    os.sched_setscheduler(thread.id, os.SCHED_IDLE, os.sched_param(0))
        yield f"agents in the idle CPU group {group}" if group else "agents under SCHED_IDLE (no cgroup cpu.idle here)"
    finally:
        if group is not None:
            with contextlib.suppress(OSError):
                for pid in (group / "cgroup.procs").read_text().split():  # still running: back to the parent
                    (group.parent / "cgroup.procs").write_text(pid)
                group.rmdir()


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="shoal-bench-console-") as tmp:
        root = Path(tmp)
        print(f"starting {args.agents} agents ({args.slots} slots each) on 127.0.0.1 ...", flush=True)
        started = time.perf_counter()
        with LocalCluster(root, [args.slots] * args.agents) as cluster, contextlib.ExitStack() as stack:
            if args.idle_agents:
                print(stack.enter_context(idle_agents(cluster)), flush=True)
            engine = start_engine(cluster, root)
            print(f"cluster and engine up in {time.perf_counter() - started:.1f}s; {os.cpu_count()} CPUs here; {frame_rate()}", flush=True)
            try:
                await throughput(root / "state", args.tp_tasks, args.rounds, psutil.Process(engine.pid))
                await under_load(root / "state", args.tasks, args.agents, args.task_seconds)
            finally:
                engine.send_signal(signal.SIGTERM)
                engine.wait(60)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3], sys.argv[4:])
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=64)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks of the job running under the UI measurements")
    parser.add_argument("--tp-tasks", type=int, default=20_000, help="tasks of each throughput round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--task-seconds", type=float, default=0.2, help="how long each task of the big job sleeps")
    parser.add_argument("--key-gap", type=float, default=10.0, metavar="MS",
                        help="milliseconds from a key's frame to the next key (default 10; keyboard auto-repeat is 30-40)")
    parser.add_argument("--idle-agents", action="store_true",
                        help="run the agents only on CPU left idle (an idle cgroup, else SCHED_IDLE): a stand-in for agents on other machines")
    parser.add_argument("--ui-only", action="store_true", help="the UI figures against fixed in-memory data, no cluster")
    parser.add_argument("--headless-display", action="store_true", help="only the CPU a frame of shoal run's live display")
    options = parser.parse_args()
    KEY_GAP = options.key_gap / 1000
    if options.headless_display:
        headless_display()
    else:
        asyncio.run(ui_only() if options.ui_only else main(options))
