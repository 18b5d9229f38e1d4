"""Throughput and latency of one agent, seen from a console.

Runs ``shoal agent`` as a real subprocess (2 slots, loopback), connects
through ``engine.link`` and pushes no-op Python call tasks:

* throughput: N tasks in run frames of ``--batch``, at most two batches in
  flight, every result acknowledged; prints tasks/s completed-and-acked;
* latency: ``--latency-tasks`` tasks one at a time (run, wait for finished,
  ack); prints p50/p99 of the round trip.

Also prints the CPU seconds spent by this console process, the agent process
and its workers, so a low figure says where the time went.

    .venv/bin/python tests/bench/bench_agent.py [--tasks 100000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import asyncssh
import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from engine.link import AgentLink, open_link  # noqa: E402
from nodeagent.protocol import KIND_CALL, Ack, Finished, Run, TaskSpec  # noqa: E402

NOOP = "tests.bench.tasks:noop"


async def start_agent(tmp: Path, slots: int) -> tuple[asyncio.subprocess.Process, int]:
    argv = [
        sys.executable, "-c", "import sys; from nodeagent.server import main; sys.exit(main(sys.argv[1:]))",
        "--listen", "127.0.0.1:0", "--authorized-keys", str(tmp / "authorized_keys"),
        "--state-dir", str(tmp / "agent"), "--slots", str(slots), "--no-advertise", "--grace", "1",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(*argv, cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    if b"listening on" not in line:
        raise SystemExit(f"agent did not start: {line!r}")
    return proc, int(line.rsplit(b":", 1)[1])


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and all its descendants (alive now)."""
    total = 0.0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


async def throughput(link: AgentLink, total: int, batch: int, prefix: str) -> float:
    sent = done = 0
    started = time.perf_counter()
    while done < total:
        runs = []
        while sent - done + len(runs) * batch < 2 * batch and sent < total:
            n = min(batch, total - sent)
            runs.append(Run(tasks=[TaskSpec(id=f"{prefix}{sent + i}", kind=KIND_CALL, fn=NOOP) for i in range(n)]))
            sent += n
        if runs:
            link.send_many(runs)
        acked = [r.id for m in await link.recv_many() if isinstance(m, Finished) for r in m.results]
        if acked:
            link.send(Ack(ids=acked))
            done += len(acked)
    return total / (time.perf_counter() - started)


async def latency(link: AgentLink, count: int) -> list[float]:
    samples = []
    for i in range(count):
        task_id = f"lat{i}"
        began = time.perf_counter()
        link.send(Run(tasks=[TaskSpec(id=task_id, kind=KIND_CALL, fn=NOOP)]))
        while True:
            message = await link.recv()
            if isinstance(message, Finished) and any(r.id == task_id for r in message.results):
                break
        samples.append(time.perf_counter() - began)
        link.send(Ack(ids=[task_id]))
    return samples


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--latency-tasks", type=int, default=2000)
    parser.add_argument("--slots", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        key = asyncssh.generate_private_key("ssh-ed25519")
        (tmp / "authorized_keys").write_bytes(key.export_public_key())
        proc, port = await start_agent(tmp, args.slots)
        try:
            host_key = asyncssh.read_private_key(tmp / "agent" / "host_key")
            link = await open_link("127.0.0.1", port, client_key=key, console_id="bench", pinned_host_key=host_key)
            await throughput(link, min(args.tasks, 5000), args.batch, "warm")

            me = psutil.Process()
            console_cpu, agent_cpu = sum(me.cpu_times()[:2]), cpu_seconds(proc.pid)
            rate = await throughput(link, args.tasks, args.batch, "t")
            console_cpu = sum(me.cpu_times()[:2]) - console_cpu
            agent_cpu = cpu_seconds(proc.pid) - agent_cpu
            print(f"throughput: {rate:,.0f} tasks/s completed and acked "
                  f"({args.tasks:,} no-op call tasks, batch {args.batch}, {args.slots} slots)")
            print(f"  cpu: console {console_cpu:.2f} s, agent+workers {agent_cpu:.2f} s "
                  f"({1e6 * console_cpu / args.tasks:.1f} + {1e6 * agent_cpu / args.tasks:.1f} us/task)")

            samples = sorted(await latency(link, args.latency_tasks))
            p50 = statistics.median(samples)
            p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
            print(f"latency: p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms ({len(samples)} sequential tasks)")
            link.close()
            await link.wait_closed()
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 20)


if __name__ == "__main__":
    asyncio.run(main())
