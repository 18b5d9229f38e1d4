"""The executor with real worker processes and real subprocesses (no SSH)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import cloudpickle
import psutil
import pytest

from nodeagent.executor import (
    REASON_DRAINED,
    REASON_PICKLE_DISABLED,
    REASON_QUEUE_FULL,
    Executor,
)
from nodeagent.journal import LOST_ERROR
from nodeagent.protocol import (
    OUTCOME_CANCELLED,
    OUTCOME_CRASHED,
    OUTCOME_ERROR,
    OUTCOME_LOST,
    OUTCOME_OK,
    OUTCOME_STOPPED,
    OUTCOME_TIMEOUT,
    OUTCOME_TOO_BIG,
    RejectCode,
    TaskResult,
    TaskSpec,
)
from nodeagent.shelltask import ProgressFilter

REPO_ROOT = Path(__file__).resolve().parents[2]
OWNER = "console-1"
FNS = "tests.unit.taskfns"
WAIT = 10.0  # upper bound on any single wait; tests finish far sooner


class Recorder:
    """An ExecutorListener that records events and lets a test await them."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.progress: list[tuple[str, float | None, str]] = []
        self.output: dict[tuple[str, str], bytes] = {}
        self.results: dict[str, TaskResult] = {}
        self.order: list[tuple[str, str]] = []
        self._changed = asyncio.Event()

    def task_started(self, owner: str, attempt_id: str) -> None:
        self.started.append(attempt_id)
        self.order.append(("started", attempt_id))
        self._changed.set()

    def task_starting(self, owner: str, attempt_id: str) -> None:
        self.started.append(attempt_id)
        self.order.append(("starting", attempt_id))
        self._changed.set()

    def task_progress(self, owner: str, attempt_id: str, fraction: float | None, message: str) -> None:
        self.progress.append((attempt_id, fraction, message))
        self._changed.set()

    def task_output(self, owner: str, attempt_id: str, stream: str, data: bytes) -> None:
        key = (attempt_id, stream)
        self.output[key] = self.output.get(key, b"") + data
        self._changed.set()

    def task_finished(self, owner: str, result: TaskResult) -> None:
        assert result.id not in self.results, f"{result.id} finished twice"
        self.results[result.id] = result
        self.order.append(("finished", result.id))
        self._changed.set()

    async def until(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("timed out waiting for the executor")
            self._changed.clear()
            try:
                # Woken by the executor's reports, and every 50 ms for what
                # it does not report (a file it removes after an ack).
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.05))
            except TimeoutError:
                pass

    async def result(self, attempt_id: str) -> TaskResult:
        await self.until(lambda: attempt_id in self.results)
        return self.results[attempt_id]


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    executors: list[Executor] = []

    async def factory(**kwargs: Any) -> tuple[Executor, Recorder]:
        recorder = Recorder()
        kwargs.setdefault("slots", 2)
        kwargs.setdefault("state_dir", tmp_path / "state")
        executor = Executor(listener=recorder, **kwargs)
        await executor.start()
        executors.append(executor)
        return executor, recorder

    yield factory
    for executor in executors:
        await executor.shutdown(0)


def call(attempt_id: str, fn: str, *args: Any, **fields: Any) -> TaskSpec:
    return TaskSpec(id=attempt_id, kind="call", fn=f"{FNS}:{fn}", args=list(args), **fields)


def sh(attempt_id: str, script: str, **fields: Any) -> TaskSpec:
    return TaskSpec(id=attempt_id, kind="shell", shell=script, **fields)


def gone(pids: list[int]) -> bool:
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


async def until_gone(pids: list[int], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not gone(pids):
        assert time.monotonic() < deadline, f"processes still alive: {pids}"
        await asyncio.sleep(0.02)  # polling the OS with a deadline: there is no event for another's death


async def until_file(path: Path, timeout: float = WAIT) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline, f"{path} never written"
        await asyncio.sleep(0.02)
    return path.read_text()


# --- shell tasks -------------------------------------------------------------------------


async def test_shell_argv_and_shell_string_capture_exit_and_output(make: Any) -> None:
    executor, rec = await make()
    assert executor.submit(OWNER, [
        TaskSpec(id="argv", kind="shell", argv=["echo", "hello world"]),
        sh("str", "echo out; echo err >&2; exit 3"),
        sh("sig", "kill -9 $$"),
        TaskSpec(id="missing", kind="shell", argv=["/no/such/program"]),
    ]) == []
    ok = await rec.result("argv")
    assert (ok.outcome, ok.exit_code, ok.stdout) == (OUTCOME_OK, 0, b"hello world\n")
    failed = await rec.result("str")
    assert (failed.outcome, failed.exit_code, failed.error) == (OUTCOME_ERROR, 3, "exit code 3")
    assert (failed.stdout, failed.stderr) == (b"out\n", b"err\n")
    assert rec.output[("str", "stderr")] == b"err\n"
    killed = await rec.result("sig")
    assert (killed.outcome, killed.signal) == (OUTCOME_ERROR, 9)
    assert "SIGKILL" in killed.error
    missing = await rec.result("missing")
    assert missing.outcome == OUTCOME_ERROR and missing.error.startswith("FileNotFoundError")


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
async def test_shell_task_inherits_only_stdin_stdout_and_stderr(make: Any) -> None:
    executor, rec = await make()
    executor.submit(OWNER, [TaskSpec(id="fds", kind="shell", argv=["ls", "/proc/self/fd"])])
    result = await rec.result("fds")
    assert result.stdout.split() == [b"0", b"1", b"2", b"3"]  # 3: the directory ls is reading


async def test_shell_task_writing_more_than_a_pipe_holds_at_once_still_finishes(make: Any) -> None:
    # A fast writer fills its pipes faster than one read empties them.
    executor, rec = await make()
    executor.submit(OWNER, [sh("flood", "head -c 1000000 /dev/zero | tr '\\0' x; echo; echo end >&2")])
    result = await rec.result("flood")
    assert result.ok
    assert len(rec.output[("flood", "stdout")]) == 1_000_001
    assert result.stdout.endswith(b"xxx\n") and result.stderr == b"end\n"


async def test_many_short_shell_tasks_all_succeed(make: Any) -> None:
    # Descriptors of finished tasks are reused at once by new ones: a watch
    # left behind on an old pidfd would report a new task as exited and kill it.
    executor, rec = await make(slots=4)
    ids = [f"quick{i}" for i in range(1500)]
    executor.submit(OWNER, [TaskSpec(id=i, kind="shell", argv=["true"]) for i in ids])
    await rec.until(lambda: len(rec.results) == len(ids), timeout=60)
    failed = [r for r in rec.results.values() if not r.ok]
    assert failed == []


async def test_program_found_on_path_is_found_again_after_it_moves(make: Any, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    program = first / "shoal-test-prog"
    program.write_text("#!/bin/sh\necho from-$0\n")
    program.chmod(0o755)
    env = {"PATH": f"{first}{os.pathsep}{second}"}
    executor, rec = await make()
    executor.submit(OWNER, [TaskSpec(id="one", kind="shell", argv=["shoal-test-prog"], env=env)])
    assert (await rec.result("one")).stdout == f"from-{program}\n".encode()
    program.rename(second / program.name)  # the path the agent remembered is gone
    executor.submit(OWNER, [TaskSpec(id="two", kind="shell", argv=["shoal-test-prog"], env=env)])
    assert (await rec.result("two")).stdout == f"from-{second / program.name}\n".encode()


async def test_report_start_task_is_reported_before_it_is_started(make: Any, tmp_path: Path) -> None:
    executor, rec = await make(slots=1)
    marker = tmp_path / "ran"
    executor.submit(OWNER, [
        sh("first", "true"),
        sh("suspect", f"touch {marker}", report_start=True),
        call("suspect-py", "add", 1, 2, report_start=True),
    ])
    await rec.result("suspect-py")
    assert rec.order.index(("starting", "suspect")) < rec.order.index(("finished", "suspect"))
    assert rec.order.index(("finished", "first")) < rec.order.index(("starting", "suspect"))
    assert ("starting", "suspect-py") in rec.order and rec.started.count("suspect-py") == 1
    assert marker.exists()


async def test_shell_env_is_added_and_cwd_is_used(make: Any, tmp_path: Path) -> None:
    executor, rec = await make()
    executor.submit(OWNER, [sh("t", 'echo "$SHOAL_X $HOME"; pwd', env={"SHOAL_X": "yes"}, cwd=str(tmp_path))])
    result = await rec.result("t")
    assert result.stdout == f"yes {os.environ['HOME']}\n{tmp_path}\n".encode()


async def test_shell_timeout_kills_the_whole_process_group(make: Any) -> None:
    executor, rec = await make()
    executor.submit(OWNER, [sh("t", "sleep 100 & sleep 100; wait", timeout=1.0)])
    await rec.until(lambda: "t" in rec.started)
    sleepers: list[int] = []

    def find_sleepers() -> bool:
        sleepers[:] = [
            p.pid for p in psutil.Process().children(recursive=True) if p.cmdline()[:1] == ["sleep"]
        ]
        return len(sleepers) == 2

    deadline = time.monotonic() + WAIT
    while not find_sleepers():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    began = time.monotonic()
    result = await rec.result("t")
    assert result.outcome == OUTCOME_TIMEOUT and result.error == "timed out after 1 s"
    assert result.ended - result.started >= 1.0
    assert time.monotonic() - began < 10  # killed at its timeout, not after the sleeps' 100 s (a loose bound: a loaded machine)
    await until_gone(sleepers, timeout=2)


async def test_shell_progress_lines_are_reported_and_removed_from_stdout(make: Any) -> None:
    executor, rec = await make()
    script = "echo before; echo '::shoal-progress 0.25 a quarter'; printf '::shoal-progress 1\\n'; echo after"
    executor.submit(OWNER, [sh("t", script)])
    result = await rec.result("t")
    assert result.stdout == b"before\nafter\n"
    assert rec.output[("t", "stdout")] == b"before\nafter\n"
    assert [(f, m) for _, f, m in rec.progress] == [(0.25, "a quarter"), (1.0, "")]


def test_progress_filter_keeps_stream_order_across_chunk_boundaries() -> None:
    progress_filter = ProgressFilter()
    pieces = []
    for chunk in [b"a\n::sho", b"al-progress 0.5 half", b"\nb\n", b"x::shoal-progress 1\n", b"::"]:
        pieces.extend(progress_filter.feed(chunk))
    assert pieces == [b"a\n", (0.5, "half"), b"b\n", b"x::shoal-progress 1\n"]
    assert progress_filter.finish() == b"::"
    assert ProgressFilter().feed(b"::shoal-progress soon\n") == [(None, "soon")]


async def test_output_tail_is_bounded_while_all_output_streams(make: Any) -> None:
    executor, rec = await make(output_tail_bytes=1000)
    executor.submit(OWNER, [sh("t", "seq 1 5000"), call("py", "chatty", 2000)])
    result = await rec.result("t")
    expected = b"".join(b"%d\n" % i for i in range(1, 5001))
    assert result.stdout == expected[-1000:]
    assert rec.output[("t", "stdout")] == expected
    py = await rec.result("py")
    assert len(py.stdout) == 1000 and py.stdout.endswith(b"line 1999\n")
    assert py.stderr == b"oops\n"


# --- python tasks --------------------------------------------------------------------


async def test_call_returns_value_and_exception_becomes_error_with_traceback(make: Any) -> None:
    executor, rec = await make()
    executor.submit(OWNER, [call("ok", "add", 2, 3), call("bad", "fail", "no good\nsecond line")])
    assert (await rec.result("ok")).value == 5
    bad = await rec.result("bad")
    assert bad.outcome == OUTCOME_ERROR
    assert bad.error == "ValueError: no good"
    assert bad.traceback.startswith("Traceback") and "taskfns.py" in bad.traceback
    assert "raise ValueError(message)" in bad.traceback


async def test_unsendable_return_value_is_an_error_naming_the_type(make: Any) -> None:
    executor, rec = await make()
    executor.submit(OWNER, [call("t", "unsendable"), TaskSpec(id="nofn", kind="call", fn="tests.unit.taskfns:nope")])
    result = await rec.result("t")
    assert result.outcome == OUTCOME_ERROR and "type set" in result.error
    assert (await rec.result("nofn")).error.startswith("AttributeError")


async def test_call_env_and_cwd_apply_to_that_task_only(make: Any, tmp_path: Path) -> None:
    executor, rec = await make(slots=1)
    executor.submit(OWNER, [
        call("with", "env_and_cwd", "SHOAL_Y", env={"SHOAL_Y": "1"}, cwd=str(tmp_path)),
        call("without", "env_and_cwd", "SHOAL_Y"),
    ])
    assert (await rec.result("with")).value == ["1", str(tmp_path)]
    without = (await rec.result("without")).value
    # Back in the worker's own directory, not the agent's (issue 12).
    assert without[0] is None and without[1] != os.getcwd() and os.path.basename(without[1]).startswith("worker-")
    # The worker's bootstrap variable does not reach task code or its subprocesses.
    executor.submit(OWNER, [call("bootstrap", "env_and_cwd", "SHOAL_WORKER_SYS_PATH")])
    assert (await rec.result("bootstrap")).value[0] is None


async def test_python_output_and_progress_reach_the_listener(make: Any) -> None:
    executor, rec = await make()
    executor.submit(OWNER, [call("out", "chatty", 2), call("prog", "halfway")])
    out = await rec.result("out")
    assert out.stdout == b"line 0\nline 1\n" and out.stderr == b"oops\n"
    assert rec.output[("out", "stdout")] == b"line 0\nline 1\n"
    assert (await rec.result("prog")).value == "done"
    assert ("prog", 0.5, "half") in rec.progress
    assert rec.order.index(("started", "prog")) < rec.order.index(("finished", "prog"))


async def test_progress_outside_a_worker_is_a_silent_no_op() -> None:
    import nodeagent

    assert nodeagent.progress(0.5, "nothing listens") is None


async def test_pickle_is_refused_by_default_and_runs_when_allowed(make: Any, tmp_path: Path) -> None:
    payload = cloudpickle.dumps(lambda x, y=1: x * 10 + y)
    spec = TaskSpec(id="p", kind="pickle", payload=payload, args=[4], kwargs={"y": 2})
    executor, _ = await make()
    assert executor.submit(OWNER, [spec]) == [("p", RejectCode.UNSUPPORTED, REASON_PICKLE_DISABLED)]
    allowed, rec = await make(allow_pickle=True, state_dir=tmp_path / "other")
    assert allowed.submit(OWNER, [spec]) == []
    assert (await rec.result("p")).value == 42


async def test_python_timeout_kills_the_worker_and_the_slot_recovers(make: Any) -> None:
    executor, rec = await make(slots=1)
    executor.submit(OWNER, [call("slow", "nap", 30, timeout=0.3), call("next", "add", 1, 1)])
    slow = await rec.result("slow")
    assert slow.outcome == OUTCOME_TIMEOUT and slow.error == "timed out after 0.3 s"
    assert slow.ended - slow.started >= 0.3
    assert (await rec.result("next")).value == 2


async def test_timeout_holds_for_a_task_that_never_releases_the_gil(make: Any) -> None:
    executor, rec = await make(slots=1)
    executor.submit(OWNER, [call("hog", "hog_the_gil", timeout=0.3)])
    hog = await rec.result("hog")
    assert hog.outcome == OUTCOME_TIMEOUT and 0.3 <= hog.ended - hog.started < 1.0


@pytest.mark.parametrize(
    ("fn", "args", "signal_number", "exit_code", "error"),
    [
        ("kill_self", [], 9, None, "worker killed by signal 9 (SIGKILL)"),
        ("exit_hard", [3], None, 3, "worker exited with code 3"),
    ],
)
async def test_worker_crash_is_reported_and_the_slot_recovers(
    make: Any, fn: str, args: list[Any], signal_number: int | None, exit_code: int | None, error: str
) -> None:
    executor, rec = await make(slots=1)
    executor.submit(OWNER, [call("first", "worker_pid")])
    first_pid = (await rec.result("first")).value
    executor.submit(OWNER, [call("boom", fn, *args), call("after", "worker_pid")])
    boom = await rec.result("boom")
    assert (boom.outcome, boom.signal, boom.exit_code, boom.error) == (OUTCOME_CRASHED, signal_number, exit_code, error)
    after = await rec.result("after")
    assert after.outcome == OUTCOME_OK and after.value != first_pid
    assert executor.slots_busy == 0


async def test_many_call_tasks_run_once_each(make: Any) -> None:
    executor, rec = await make()
    specs = [call(f"t{i}", "add", i, 1) for i in range(3000)]
    for start in range(0, len(specs), 500):
        assert executor.submit(OWNER, specs[start : start + 500]) == []
    await rec.until(lambda: len(rec.results) == 3000)
    assert all(rec.results[f"t{i}"].value == i + 1 for i in range(3000))
    assert executor.holding(OWNER) == [] and executor.queued == 0


# --- cancel, drain, admission ---------------------------------------------------------------


async def test_cancel_queued_and_running_tasks(make: Any) -> None:
    executor, rec = await make(slots=1)
    executor.submit(OWNER, [sh("shell", "sleep 30"), call("queued", "add", 1, 2)])
    await rec.until(lambda: "shell" in rec.started)
    assert executor.holding(OWNER) == ["shell", "queued"]
    executor.cancel(OWNER, ["queued"])
    queued = await rec.result("queued")
    assert queued.outcome == OUTCOME_CANCELLED and "queued" not in rec.started
    executor.cancel(OWNER, ["shell"])
    assert (await rec.result("shell")).outcome == OUTCOME_CANCELLED

    executor.submit(OWNER, [call("py", "nap", 30)])
    await rec.until(lambda: "py" in rec.started)
    executor.cancel(OWNER, ["py", "unknown-id"])
    py = await rec.result("py")
    assert py.outcome == OUTCOME_CANCELLED and py.error == "cancelled"
    executor.submit(OWNER, [call("after", "add", 2, 2)])
    assert (await rec.result("after")).value == 4


async def test_cancel_of_a_task_waiting_in_a_workers_batch_answers_at_once(make: Any) -> None:
    executor, rec = await make(slots=1)
    # Two tasks on a fresh one-slot agent travel to the worker as one batch.
    executor.submit(OWNER, [call("running", "nap", 30), call("batched", "add", 1, 1)])
    await rec.until(lambda: "running" in rec.started)
    assert executor.queued == 0
    executor.cancel(OWNER, ["batched"])
    batched = await rec.result("batched")
    assert batched.outcome == OUTCOME_CANCELLED and "batched" not in rec.started
    assert "running" not in rec.results  # the worker was not disturbed
    executor.cancel(OWNER, ["running"])
    assert (await rec.result("running")).outcome == OUTCOME_CANCELLED


async def test_drain_refuses_new_tasks_and_undrain_accepts_them(make: Any) -> None:
    executor, rec = await make(slots=1)
    executor.submit(OWNER, [call("running", "nap", 0.3), call("queued", "add", 1, 1)])
    executor.drain()
    assert executor.drained
    assert executor.submit(OWNER, [call("late", "add", 1, 1)]) == [("late", RejectCode.DRAINING, REASON_DRAINED)]
    assert (await rec.result("queued")).value == 2  # accepted work still runs
    executor.undrain()
    assert executor.submit(OWNER, [call("late", "add", 1, 1)]) == []
    assert (await rec.result("late")).value == 2


async def test_admission_limits_and_duplicate_submits(make: Any) -> None:
    executor, rec = await make(slots=2, max_queued=2)
    refused = executor.submit(OWNER, [sh("a", "sleep 30"), sh("b", "sleep 30"), sh("wide", "true", slots=3)])
    assert refused == [("wide", RejectCode.UNSUPPORTED, "task needs 3 slots, this agent has 2")]
    await rec.until(lambda: len(rec.started) == 2)
    assert executor.submit(OWNER, [call("q1", "add", 0, 1), call("q2", "add", 0, 2), call("q3", "add", 0, 3)]) == [
        ("q3", RejectCode.FULL, REASON_QUEUE_FULL)
    ]
    # Resending what the agent holds is ignored, not refused and not run twice.
    assert executor.submit(OWNER, [sh("a", "sleep 30"), call("q1", "add", 0, 1)]) == []
    assert executor.queued == 2 and executor.slots_busy == 2
    executor.cancel(OWNER, ["a", "b"])
    await rec.until(lambda: {"q1", "q2"} <= set(rec.results))
    # ... and so is resending a finished attempt whose result is not acked yet.
    assert executor.submit(OWNER, [call("q1", "add", 0, 1)]) == []
    assert "q1" not in executor.holding(OWNER)


async def test_a_two_slot_task_occupies_both_slots(make: Any) -> None:
    executor, rec = await make(slots=2)
    executor.submit(OWNER, [sh("wide", "sleep 30", slots=2), call("narrow", "add", 1, 1)])
    await rec.until(lambda: "wide" in rec.started)
    assert executor.slots_busy == 2 and executor.queued == 1
    assert "narrow" not in rec.started
    executor.cancel(OWNER, ["wide"])
    assert (await rec.result("narrow")).value == 2
    executor.submit(OWNER, [call("wide-py", "worker_pid", slots=2), sh("other", "true")])
    assert (await rec.result("wide-py")).outcome == OUTCOME_OK
    assert (await rec.result("other")).outcome == OUTCOME_OK


# --- journal across restarts ------------------------------------------------------------------


async def test_unacked_results_survive_a_new_executor_and_acked_ones_do_not(make: Any, tmp_path: Path) -> None:
    state = tmp_path / "journal-state"
    first, rec = await make(state_dir=state)
    first.submit(OWNER, [call("keep", "add", 1, 1), call("drop", "add", 2, 2)])
    await rec.until(lambda: len(rec.results) == 2)
    first.ack(OWNER, ["drop", "drop", "never-existed"])
    await first.shutdown(1.0)

    second, _ = await make(state_dir=state)
    assert [(r.id, r.value) for r in second.unacked(OWNER)] == [("keep", 2)]
    assert second.unacked("someone-else") == []
    second.ack(OWNER, ["keep"])
    assert second.unacked(OWNER) == []


AGENT_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from nodeagent.protocol import TaskSpec
    from nodeagent.executor import Executor

    class Listener:
        def __init__(self): self.started = set(); self.event = asyncio.Event()
        def task_started(self, owner, attempt_id): self.started.add(attempt_id); self.event.set()
        def task_progress(self, *args): pass
        def task_output(self, *args): pass
        def task_finished(self, owner, result): pass

    async def main():
        listener = Listener()
        executor = Executor(slots=2, state_dir=Path(sys.argv[1]), listener=listener)
        await executor.start()
        executor.submit("console-1", [
            TaskSpec(id="py", kind="call", fn="tests.unit.taskfns:spawn_sleepers", args=[sys.argv[2]]),
            TaskSpec(id="shell", kind="shell", shell="sleep 60 & sleep 60; wait"),
            TaskSpec(id="waiting", kind="call", fn="tests.unit.taskfns:add", args=[1, 1]),
        ])
        while len(listener.started) < 2:
            listener.event.clear()
            await listener.event.wait()
        print("ready", flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


async def test_an_agent_killed_by_sigkill_takes_its_tasks_along_and_reports_them_lost(
    make: Any, tmp_path: Path
) -> None:
    state = tmp_path / "killed-agent"
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", AGENT_SCRIPT, str(state), str(tmp_path / "sleepers"),
        cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )
    try:
        assert agent.stdout is not None
        assert await asyncio.wait_for(agent.stdout.readline(), WAIT) == b"ready\n"
        await until_file(tmp_path / "sleepers")
        tree = psutil.Process(agent.pid)
        deadline = time.monotonic() + WAIT
        # The python task's two sleepers and the shell task's two.
        while sum(p.name() == "sleep" for p in tree.children(recursive=True)) < 4:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        descendants = [p.pid for p in tree.children(recursive=True)]
    finally:
        agent.send_signal(signal.SIGKILL)
        await asyncio.wait_for(agent.communicate(), WAIT)  # to the pipe's end: its transport closes now
    # Workers, shell tasks and all their children die with the agent.
    await until_gone(descendants)

    executor, _ = await make(state_dir=state)
    lost = {r.id: r for r in executor.unacked(OWNER)}
    assert set(lost) == {"py", "shell", "waiting"}
    assert all(r.outcome == OUTCOME_LOST and r.error == LOST_ERROR for r in lost.values())
    assert executor.submit(OWNER, [call("py", "add", 1, 1)]) == []  # not run again: its result is unacked
    assert executor.holding(OWNER) == []


# --- shutdown --------------------------------------------------------------------------------


async def test_task_killed_behind_another_in_its_batch_is_not_reported_started(make: Any) -> None:
    executor, rec = await make(slots=1)
    # One slot, two queued: both travel in one batch to the worker.
    executor.submit(OWNER, [call("slow", "nap", 30), call("behind", "add", 1, 1)])
    await rec.until(lambda: "slow" in rec.started)
    await executor.shutdown(grace=0.2)
    assert rec.results["behind"].outcome == OUTCOME_STOPPED  # not cancelled: a console reruns it
    assert "behind" not in rec.started


async def test_exits_are_seen_without_pidfd_too(make: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pidfd(pid: int) -> int:
        raise OSError("pidfd_open is not available here")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    executor, rec = await make()
    executor.submit(OWNER, [sh("polled", "exit 4")])
    assert (await rec.result("polled")).exit_code == 4


async def test_shutdown_stops_what_outlives_the_grace_and_leaves_no_child(make: Any, tmp_path: Path) -> None:
    executor, rec = await make(slots=2)
    pid_file = tmp_path / "grandchildren"
    executor.submit(OWNER, [
        sh("shell", "sleep 30"),
        call("py", "spawn_sleepers", str(pid_file)),
        call("queued", "add", 1, 1),
    ])
    grandchildren = [int(pid) for pid in (await until_file(pid_file)).split()]
    await rec.until(lambda: {"shell", "py"} <= set(rec.started))
    await executor.shutdown(grace=0.2)
    for attempt_id in ("shell", "py", "queued"):
        result = rec.results[attempt_id]
        assert (result.outcome, result.error) == (OUTCOME_STOPPED, "agent shutting down")
    assert "queued" not in rec.started
    assert psutil.Process().children(recursive=True) == []
    await until_gone(grandchildren, timeout=2)
    assert executor.submit(OWNER, [call("late", "add", 1, 1)])[0][0] == "late"


async def test_shutdown_lets_short_tasks_finish(make: Any) -> None:
    executor, rec = await make(slots=1)
    executor.submit(OWNER, [call("short", "nap", 0.2)])
    await rec.until(lambda: "short" in rec.started)
    await executor.shutdown(grace=5)
    assert rec.results["short"].outcome == OUTCOME_OK
    assert psutil.Process().children(recursive=True) == []


# --- values: whole or the task fails (issue 11 item 3) ---------------------------------------


async def test_a_shell_value_is_its_whole_stdout_past_the_tail_without_its_progress_lines(make: Any, tmp_path: Path) -> None:
    import msgpack

    executor, rec = await make(output_tail_bytes=1000)
    body = "".join(f"line {i}\n" for i in range(400))  # ~3.5 KB, over the 1000-byte tail
    cut = body.index("\n", 1000) + 1  # a progress line starts a line
    script = f"printf '%s' '{body[:cut]}'; echo '::shoal-progress 0.5 half'; printf '%s' '{body[cut:]}'"
    executor.submit(OWNER, [sh("tail-sized", "head -c 1000 /dev/zero"), sh("big", script),
                            sh("over", script, max_result=3000), sh("failed", script + "; exit 4")])
    exact, big, over, failed = [await rec.result(i) for i in ("tail-sized", "big", "over", "failed")]
    assert exact.value is None and exact.value_size == 0 and exact.stdout == bytes(1000)  # the tail is the value
    assert big.outcome == OUTCOME_OK and big.stdout == body.encode()[-1000:]  # the display tail stays a tail
    spool = executor.value_path(OWNER, "big")
    assert big.value_size == spool.stat().st_size and msgpack.unpackb(spool.read_bytes()) == body.encode()
    assert (over.outcome, over.error, over.value_size) == (
        OUTCOME_TOO_BIG, f"value is {len(body) / 1024:.1f} KiB, over the job's max_result of 3,000 bytes", 0)
    assert failed.outcome == OUTCOME_ERROR and failed.exit_code == 4 and failed.value_size == 0
    assert sorted(os.listdir(spool.parent)) == [spool.name]  # nothing kept of the others
    executor.ack(OWNER, ["big"])
    await rec.until(lambda: not spool.exists())


async def test_a_value_whose_spool_file_cannot_be_put_in_place_fails_its_task(make: Any, monkeypatch: Any) -> None:
    executor, rec = await make(output_tail_bytes=100)
    journal = executor._journal
    real_record = journal.record

    def no_room(owner: str, result: TaskResult, part: Path | None = None) -> None:
        if part is not None:  # the rename into the spool, as a full or broken disk would refuse it
            raise OSError(28, "No space left on device")
        real_record(owner, result)

    monkeypatch.setattr(journal, "record", no_room)
    executor.submit(OWNER, [sh("big", "head -c 5000 /dev/zero")])
    result = await rec.result("big")
    assert (result.outcome, result.value_size) == (OUTCOME_ERROR, 0)
    assert result.error == "the agent cannot keep the value: [Errno 28] No space left on device"
    assert executor.unacked(OWNER) == [result]  # journaled as the error it is
    assert os.listdir(journal.values_dir) == []  # the part file went too
