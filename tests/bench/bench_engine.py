"""End-to-end engine benchmarks, side by side with peers in the same run.

    .venv/bin/python tests/bench/bench_engine.py [throughput latency shell memory idle] [--tasks N]

* throughput: N no-op Python tasks over 4 local agents (1 slot each), state
  persisted to SQLite, submit to last result; then the same job on a Dask
  LocalCluster with 4 worker processes (if dask is installed). Prints the ratio.
* latency: one-task submit-to-result on an idle cluster, p50/p99 (and Dask's).
* shell: 2,000 `true` shell tasks over 4 agents (1 slot each) vs `xargs -P4`
  and GNU Parallel `-j4` (if installed), in alternating rounds; medians.
* memory: engine RSS per pending task for a 1,000,000-task job, and the whole
  engine process at 100,000 tasks.
* idle: 64 agents connected to one engine, engine CPU % while idle.

Everything binds to 127.0.0.1; no zeroconf. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from demos.cluster import LocalCluster  # noqa: E402
from engine.api import Engine, spec_for  # noqa: E402

NOOP = "tests.bench.tasks:noop"


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


async def open_engine(cluster: LocalCluster, root: Path) -> Engine:
    engine = await Engine.open(root / "state", cluster.config_dir, nodes=cluster.addresses, trust_new=True)
    await engine.wait_for_nodes(len(cluster.addresses), timeout=120)
    return engine


async def shoal_throughput(root: Path, tasks: int, agents: int) -> float:
    with LocalCluster(root, [1] * agents) as cluster:
        engine = await open_engine(cluster, root)
        try:
            # Warm up the workers' import of the task module.
            await engine.wait(await engine.submit(spec_for(NOOP, range(agents * 4), name="warmup")), 60)
            start = time.perf_counter()
            job = await engine.submit(spec_for(NOOP, range(tasks), name="noop", reduce="count"))
            await engine.wait(job, 600)
            elapsed = time.perf_counter() - start
            assert (await engine.job(job)).counts["succeeded"] == tasks, (await engine.job(job)).counts
        finally:
            await engine.close()
    rate = tasks / elapsed
    print(f"shoal: {tasks:,} no-op tasks over {agents} agents in {elapsed:.2f}s = {rate:,.0f} tasks/s (persisted)")
    return rate


def dask_throughput(tasks: int, workers: int, limit: float = 180.0) -> float | None:
    try:
        from dask.distributed import Client, wait
        from dask.distributed import LocalCluster as DaskCluster
    except ImportError:
        print("dask: not installed (pip install 'dask[distributed]')")
        return None
    sys.path.insert(0, str(REPO))
    with DaskCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None) as dc:
        with Client(dc) as client:
            from tests.bench.tasks import noop

            client.gather(client.map(noop, range(10), pure=False))
            start = time.perf_counter()
            futures = client.map(noop, range(tasks), pure=False)
            try:
                wait(futures, timeout=limit, return_when="ALL_COMPLETED")
            except TimeoutError:  # newer Dask raises where older returned the unfinished
                pass
            elapsed = time.perf_counter() - start
            finished = sum(1 for f in futures if f.done())
    rate = finished / elapsed
    note = "" if finished == tasks else f" (only {finished:,} of {tasks:,} finished within {limit:.0f}s)"
    print(f"dask:  {tasks:,} no-op tasks over {workers} worker processes in {elapsed:.2f}s = {rate:,.0f} tasks/s{note}")
    return rate


async def shoal_latency(root: Path, samples: int) -> tuple[float, float]:
    with LocalCluster(root, [1] * 4) as cluster:
        engine = await open_engine(cluster, root)
        try:
            await engine.wait(await engine.submit(spec_for(NOOP, range(16), name="warmup")), 60)
            times = []
            for i in range(samples):
                start = time.perf_counter()
                await engine.wait(await engine.submit(spec_for(NOOP, [i], name="one")), 30)
                times.append(time.perf_counter() - start)
        finally:
            await engine.close()
    p50, p99 = _pcts(times)
    print(f"shoal: one-task submit-to-result latency p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms ({samples} samples)")
    return p50, p99


def dask_latency(samples: int) -> None:
    try:
        from dask.distributed import Client
        from dask.distributed import LocalCluster as DaskCluster
    except ImportError:
        return
    with DaskCluster(n_workers=4, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None) as dc:
        with Client(dc) as client:
            from tests.bench.tasks import noop

            client.submit(noop, 0, pure=False).result()
            times = []
            for i in range(samples):
                start = time.perf_counter()
                client.submit(noop, i, pure=False).result()
                times.append(time.perf_counter() - start)
    p50, p99 = _pcts(times)
    print(f"dask:  one-task submit-to-result latency p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms")


def _pcts(times: list[float]) -> tuple[float, float]:
    times = sorted(times)
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


async def shell_tasks(root: Path, count: int, rounds: int) -> None:
    """Rounds alternate Shoal, xargs and GNU Parallel on the same machine, so
    that drift in the machine's speed hits all of them alike; the medians
    are compared. The agents stay up (idle) while the peers run."""
    items = "\n".join(str(i) for i in range(count)) + "\n"
    peers = {
        "xargs -P4": ["xargs", "-P4", "-n1", "true"],
        "parallel -j4": ["parallel", "-j4", "true", "{}"],
    }
    rates: dict[str, list[float]] = {"shoal": [], **{name: [] for name in peers}}
    with LocalCluster(root, [1] * 4) as cluster:
        engine = await open_engine(cluster, root)
        try:
            await engine.wait(await engine.submit(spec_for(["true"], range(40), name="warmup")), 60)
            for _ in range(rounds):
                start = time.perf_counter()
                job = await engine.submit(spec_for(["true"], range(count), name="true"))
                await engine.wait(job, 600)
                rates["shoal"].append(count / (time.perf_counter() - start))
                assert (await engine.job(job)).counts["succeeded"] == count, (await engine.job(job)).counts
                for name, argv in peers.items():
                    if shutil.which(argv[0]) is None:
                        continue
                    start = time.perf_counter()
                    subprocess.run(argv, input=items, text=True, check=True, capture_output=True)
                    rates[name].append(count / (time.perf_counter() - start))
        finally:
            await engine.close()
    medians = {name: statistics.median(r) for name, r in rates.items() if r}
    for name, r in rates.items():
        if not r:
            print(f"{name}: not installed")
            continue
        each = ", ".join(f"{rate:,.0f}" for rate in r)
        print(f"{name}: {count:,} x true: median {medians[name]:,.0f} tasks/s (rounds: {each})")
    if "xargs -P4" in medians:
        print(f"ratio shoal/xargs (medians): {medians['shoal'] / medians['xargs -P4']:.2f}x")


async def memory(root: Path) -> None:
    gc.collect()
    base = rss_mib()
    engine = await Engine.open(root / "mem-state", root / "mem-config")
    try:
        opened = rss_mib()
        job = await engine.submit(spec_for(NOOP, range(1_000_000), name="million"))
        gc.collect()
        after = rss_mib()
        per_task = (after - opened) * 2**20 / 1_000_000
        print(
            f"shoal: 1,000,000 pending tasks: engine process RSS {after:.0f} MiB, {per_task:.1f} bytes per pending task"
            f" (RSS {base:.0f} MiB before the engine opened, {opened:.0f} MiB after)"
        )
        await engine.cancel(job)
    finally:
        await engine.close()
    with LocalCluster(root / "m100k", [1] * 4) as cluster:
        engine = await open_engine(cluster, root / "m100k")
        try:
            job = await engine.submit(spec_for(NOOP, range(100_000), name="100k", reduce="count"))
            peak = 0.0
            while (await engine.job(job)).status == "running":
                peak = max(peak, rss_mib())
                await asyncio.sleep(0.2)
            print(f"shoal: whole engine process during a 100,000-task job: peak RSS {peak:.0f} MiB")
        finally:
            await engine.close()


async def idle_cpu(root: Path, agents: int, seconds: float = 10.0) -> None:
    cluster = LocalCluster(root, [1] * agents)
    try:
        for agent in cluster.agents:
            agent.start(cluster.authorized_keys, timeout=120)
        engine = await open_engine(cluster, root)
        try:
            await asyncio.sleep(2)
            proc = psutil.Process()
            before = proc.cpu_times()
            start = time.perf_counter()
            await asyncio.sleep(seconds)
            after = proc.cpu_times()
            wall = time.perf_counter() - start
            used = (after.user - before.user) + (after.system - before.system)
            print(f"shoal: {agents} agents connected, engine idle CPU {100 * used / wall:.1f}% of one core")
        finally:
            await engine.close()
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="*", default=["throughput", "latency", "shell", "memory", "idle"])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--latency-samples", type=int, default=1000)
    parser.add_argument("--idle-agents", type=int, default=64)
    parser.add_argument("--shell-rounds", type=int, default=5)
    parser.add_argument("--no-peers", action="store_true", help="skip Dask")
    args = parser.parse_args()
    if args.which != ["memory"]:
        print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        root = Path(tmp)
        if "throughput" in args.which:
            ours = asyncio.run(shoal_throughput(root / "tp", args.tasks, args.agents))
            if not args.no_peers:
                theirs = dask_throughput(args.tasks, args.agents)
                if theirs:
                    print(f"ratio shoal/dask: {ours / theirs:.1f}x")
        if "latency" in args.which:
            asyncio.run(shoal_latency(root / "lat", args.latency_samples))
            if not args.no_peers:
                dask_latency(args.latency_samples)
        if "shell" in args.which:
            asyncio.run(shell_tasks(root / "sh", 2000, args.shell_rounds))
        if "memory" in args.which:
            if args.which == ["memory"]:
                asyncio.run(memory(root / "mem"))
            else:  # RSS is only meaningful in a fresh process (Dask ran in this one)
                subprocess.run([sys.executable, __file__, "memory"], check=False)
        if "idle" in args.which:
            asyncio.run(idle_cpu(root / "idle", args.idle_agents))


if __name__ == "__main__":
    main()
