"""Executor throughput: no-op call tasks through real worker processes, or
`true` shell tasks, no SSH.

    .venv/bin/python tests/bench/bench_executor.py [--tasks 100000] [--slots 2] [--chunk 1000] [--shell]
        [--run-as USER]   # as root: tasks as USER, as shoal agent --run-as runs them

Submits in chunks (as run frames would arrive) and acks in batches (as a
console would), and prints tasks per second from the first submit to the
last result.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nodeagent.executor import Executor  # noqa: E402
from nodeagent.protocol import TaskResult, TaskSpec  # noqa: E402
from nodeagent.runas import python_refusal, resolve_run_as  # noqa: E402
from nodeagent.taskenv import TaskEnvironment  # noqa: E402

ACK_EVERY = 4096


class CountingListener:
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.finished = 0
        self.failed = 0
        self.to_ack: list[str] = []
        self.executor: Executor | None = None
        self.done = asyncio.Event()

    def task_started(self, owner: str, attempt_id: str) -> None:
        pass

    def task_progress(self, owner: str, attempt_id: str, fraction: float | None, message: str) -> None:
        pass

    def task_output(self, owner: str, attempt_id: str, stream: str, data: bytes) -> None:
        pass

    def task_finished(self, owner: str, result: TaskResult) -> None:
        self.finished += 1
        if not result.ok:
            self.failed += 1
        self.to_ack.append(result.id)
        if len(self.to_ack) >= ACK_EVERY or self.finished == self.expected:
            assert self.executor is not None
            self.executor.ack(owner, self.to_ack)
            self.to_ack = []
        if self.finished == self.expected:
            self.done.set()


async def run(tasks: int, slots: int, chunk: int, shell: bool, run_as: str | None = None) -> None:
    task_env = TaskEnvironment(socket.gethostname())
    if run_as is not None:
        user = resolve_run_as(run_as)
        refused = python_refusal(user, task_env.base)
        if refused and not shell:
            sys.exit(refused)
        task_env = TaskEnvironment(socket.gethostname(), run_as=user, python_refused=refused)
    if shell:
        specs = [TaskSpec(id=f"t{i}", kind="shell", argv=["true"]) for i in range(tasks)]
    else:
        specs = [TaskSpec(id=f"t{i}", kind="call", fn="tests.bench.tasks:noop", args=[i]) for i in range(tasks)]
    listener = CountingListener(tasks)
    with tempfile.TemporaryDirectory() as state_dir:
        executor = Executor(slots=slots, state_dir=Path(state_dir), listener=listener, max_queued=tasks, task_env=task_env)
        listener.executor = executor
        await executor.start()
        began = time.perf_counter()
        cpu_began = time.process_time()
        for start in range(0, tasks, chunk):
            refused = executor.submit("bench", specs[start : start + chunk])
            assert not refused, refused[:3]
            await asyncio.sleep(0)  # let results flow while submitting, as a session would
        await asyncio.wait_for(listener.done.wait(), 600)
        elapsed = time.perf_counter() - began
        agent_cpu = time.process_time() - cpu_began
        children = os.times()
        await executor.shutdown(1.0)
    what = ("`true` shell" if shell else "no-op call") + (f" (as {run_as})" if run_as else "")
    print(
        f"{tasks} {what} tasks, {slots} slots: {elapsed:.2f} s, "
        f"{tasks / elapsed:,.0f} tasks/s ({listener.failed} failed); "
        f"agent CPU {agent_cpu / tasks * 1e6:.1f} us/task"
        + (f", children {(children.children_user + children.children_system) / tasks * 1e6:.0f} us/task" if shell else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--shell", action="store_true", help="`true` shell tasks instead of Python calls")
    parser.add_argument("--run-as", metavar="USER", help="run tasks as USER, as shoal agent --run-as does (needs root)")
    args = parser.parse_args()
    asyncio.run(run(args.tasks, args.slots, args.chunk, args.shell, args.run_as))


if __name__ == "__main__":
    main()
