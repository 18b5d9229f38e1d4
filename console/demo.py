"""`shoal demo`: a LAN cluster on this one machine, and real workloads.

Starts N real `shoal agent` processes on 127.0.0.1 (each its own state dir,
host key and slots, advertising over mDNS bound to 127.0.0.1 only), lets the
engine discover them over zeroconf and trust them (--trust-new, as a demo
may), then runs the example jobs in demos/jobs/ one after another. With
--chaos, one agent is killed with SIGKILL in the middle of a job and started
again a little later: every task still completes exactly once.
"""

from __future__ import annotations

import asyncio
import random
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import demos
from console.headless import run_job
from demos.cluster import LocalCluster, until_signalled
from engine.api import Engine
from engine.spec import load_job_file

JOBS_DIR = Path(demos.__file__).resolve().parent / "jobs"
DEMO_JOBS = ["squares.toml", "wordcount.toml", "collatz.toml", "flaky.toml"]


async def _chaos(cluster: LocalCluster, stop: asyncio.Event, kills: list[str], say: Callable[[str], None] | None = None) -> None:
    """Kill a random agent now and then, and bring it back on its port."""
    say = say or (lambda text: print(text, file=sys.stderr))
    rng = random.Random()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=rng.uniform(2.0, 4.0))
            return
        except TimeoutError:
            pass
        victim = rng.choice(cluster.agents)
        say(f"chaos: kill -9 {victim.name} ({victim.address})")
        victim.kill(signal.SIGKILL)
        kills.append(victim.name)
        await asyncio.sleep(1.5)
        await asyncio.to_thread(victim.start, cluster.authorized_keys, victim.port)
        say(f"chaos: {victim.name} is back")


async def run_demo(nodes: int, chaos: bool, jobs: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="shoal-demo-") as tmp:
        root = Path(tmp)
        slots = [1 + (i % 3) for i in range(nodes)]  # heterogeneous on purpose
        print(f"demo: starting {nodes} agents on 127.0.0.1 with slots {slots} ...", file=sys.stderr)
        with LocalCluster(root, slots, advertise=True, tied_to_parent=True) as cluster:
            print(f"demo: agents at {', '.join(cluster.addresses)}; discovering them over mDNS on 127.0.0.1", file=sys.stderr)
            engine = await Engine.open(root / "console-state", cluster.config_dir, mdns_interfaces=["127.0.0.1"], trust_new=True)
            stop = asyncio.Event()
            kills: list[str] = []
            chaos_task = asyncio.create_task(_chaos(cluster, stop, kills)) if chaos else None
            worst = 0
            ran: list[int] = []
            try:
                try:
                    await engine.wait_for_nodes(nodes, timeout=30)
                except TimeoutError:
                    print("demo: not every agent was discovered over mDNS; adding them by address", file=sys.stderr)
                    for address in cluster.addresses:
                        await engine.add_node(address)
                for name in jobs:
                    spec = load_job_file(JOBS_DIR / name)
                    print(f"\ndemo: job {name}: {spec.task_count()} tasks", file=sys.stderr)
                    worst = max(worst, await run_job(engine, spec, as_json=False, summary=True))
                    ran.append(spec.task_count())
                stop.set()  # chaos ends (its agent back) before the summary, not after it
                if chaos_task:
                    await chaos_task
                rows = sum([len(await engine.task_results(job.id)) for job in await engine.jobs()])
                verdict = "each task exactly once" if rows == sum(ran) else "MISMATCH"
                print(
                    f"\ndemo: {len(ran)} jobs, {sum(ran)} tasks, {rows} results stored: {verdict}"
                    + (f", through {len(kills)} agent kills (kill -9)" if chaos else ""),
                    file=sys.stderr,
                )
            finally:
                stop.set()
                if chaos_task:
                    await chaos_task
                await engine.close()
            return worst


async def run_demo_console(nodes: int, chaos: bool, jobs: list[str]) -> int:
    """The demo in the console: the same cluster, every job submitted at
    start, the TUI on the terminal. Quitting stops the engine, then every
    agent this demo started (the cluster's context)."""
    import console.launch  # noqa: F401  (sets the console's frame rate before Textual loads)
    from console.app import build_app, run_console
    from engine.paths import config_dir as user_config_dir

    specs = [load_job_file(JOBS_DIR / name) for name in jobs]
    with tempfile.TemporaryDirectory(prefix="shoal-demo-") as tmp:
        root = Path(tmp)
        slots = [1 + (i % 3) for i in range(nodes)]
        print(f"demo: starting {nodes} agents on 127.0.0.1 ...", file=sys.stderr)
        with LocalCluster(root, slots, advertise=True, tied_to_parent=True) as cluster:
            engine = await Engine.open(root / "console-state", cluster.config_dir, mdns_interfaces=["127.0.0.1"], trust_new=True)
            try:
                await engine.wait_for_nodes(nodes, timeout=15)
            except TimeoutError:
                for address in cluster.addresses:
                    await engine.add_node(address)
            app = build_app(engine, config_dir=user_config_dir(None), jobs=specs, durable=False)  # the theme is the user's
            stop = asyncio.Event()
            kills: list[str] = []
            chaos_task = asyncio.create_task(_chaos(cluster, stop, kills, say=lambda text: None)) if chaos else None
            try:
                await run_console(engine, app)
            finally:
                stop.set()
                if chaos_task:
                    await chaos_task
    return 0


def main(nodes: int = 4, chaos: bool = False, jobs: list[str] | None = None, *, tui: bool = False) -> int:
    # SIGTERM or SIGHUP end the demo like Ctrl-C: its agents stop and its temp dir goes.
    if tui:
        return asyncio.run(until_signalled(run_demo_console(nodes, chaos, jobs or DEMO_JOBS)))
    return asyncio.run(until_signalled(run_demo(nodes, chaos, jobs or DEMO_JOBS)))
