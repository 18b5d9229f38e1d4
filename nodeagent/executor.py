"""Runs tasks in bounded slots with process isolation. Knows nothing of SSH.

The executor takes tasks from consoles, queues them, and places them: call
and pickle tasks go in batches to the slots' pre-started Python workers
(``nodeagent.workerpool``); a shell task, or any task needing several slots,
holds its slots exclusively; shell tasks run as subprocesses in their own
process group (``nodeagent.shelltask``).

A timeout or cancel kills the whole process group of the task (the worker's,
for a Python task, which is then replaced). Finished results go to the
journal before the listener hears of them, and stay there until acked.

If the agent itself dies, even by SIGKILL, its work dies with it: workers
get PR_SET_PDEATHSIG, and a small reaper process (``GroupReaper``) kills the
process group of every running task when its pipe from the agent closes.
Limit: a task process that leaves its process group (setsid) escapes both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections import deque
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Protocol

from nodeagent.journal import COMPACT_MIN_ENTRIES, Journal
from nodeagent.procs import FdWatcher, GroupReaper
from nodeagent.protocol import (
    KIND_CALL,
    KIND_PICKLE,
    KIND_SHELL,
    OUTCOME_CANCELLED,
    OUTCOME_ERROR,
    OUTCOME_STOPPED,
    TASK_KINDS,
    RejectCode,
    TaskResult,
    TaskSpec,
)
from nodeagent.shelltask import ShellRun, seal_inherited_descriptors, shell_result
from nodeagent.taskenv import TaskEnvironment
from nodeagent.tasks import (
    ERROR_SHUTDOWN,
    Done,
    Output,
    Stage,
    Task,
    plain_result,
    timeout_kill,
)
from nodeagent.values import ShellValue
from nodeagent.workerpool import WorkerPool

log = logging.getLogger("shoal.agent.executor")

REASON_PICKLE_DISABLED = "pickled callables are disabled on this agent (start it with --allow-pickle)"
REASON_DRAINED = "node is drained"
REASON_QUEUE_FULL = "agent queue full"
REASON_SHUTTING_DOWN = "agent is shutting down"
ERROR_CANCELLED = "cancelled"

WORKER_START_SECONDS = 30.0
EXIT_WAIT_SECONDS = 5.0


class ExecutorListener(Protocol):
    """What the executor reports. ``owner`` is the console id that submitted."""

    def task_started(self, owner: str, attempt_id: str) -> None: ...

    def task_starting(self, owner: str, attempt_id: str) -> None:
        """A ``report_start`` task is about to start: write that, and whatever
        is held back for ``owner``, now."""

    def task_progress(self, owner: str, attempt_id: str, fraction: float | None, message: str) -> None: ...

    def task_output(self, owner: str, attempt_id: str, stream: str, data: bytes) -> None: ...

    def task_finished(self, owner: str, result: TaskResult) -> None:
        """Called after the result is in the journal."""


class _NoListener:
    def task_started(self, owner: str, attempt_id: str) -> None:
        pass

    def task_starting(self, owner: str, attempt_id: str) -> None:
        pass

    def task_progress(self, owner: str, attempt_id: str, fraction: float | None, message: str) -> None:
        pass

    def task_output(self, owner: str, attempt_id: str, stream: str, data: bytes) -> None:
        pass

    def task_finished(self, owner: str, result: TaskResult) -> None:
        pass


class Executor:
    def __init__(
        self,
        *,
        slots: int,
        state_dir: Path,
        allow_pickle: bool = False,
        max_queued: int = 100_000,
        output_tail_bytes: int = 64 * 1024,
        listener: ExecutorListener | None = None,
        journal_compact_entries: int = COMPACT_MIN_ENTRIES,
        task_env: TaskEnvironment | None = None,
    ) -> None:
        if slots < 1:
            raise ValueError("an agent needs at least one slot")
        self._allow_pickle = allow_pickle
        self._max_queued = max_queued
        self._tail_bytes = output_tail_bytes
        self._listener: ExecutorListener = listener if listener is not None else _NoListener()
        self._journal = Journal(state_dir, compact_min_entries=journal_compact_entries)
        self._shell_values = 0  # names the spool parts of shell values being written
        self._reaper = GroupReaper()
        # What tasks see of the agent: a minimal environment, a directory each.
        self._task_env = task_env if task_env is not None else TaskEnvironment(socket.gethostname())
        self._python_refused = self._task_env.python_refused
        self._pool = WorkerPool(
            slots,
            self._reaper,
            self._task_env,
            on_started=self._report_started,
            on_progress=self._task_progress,
            on_output=self._task_output,
            on_settled=self._settle,
            on_requeue=self._requeue,
            values_dir=self._journal.values_dir,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._readers: FdWatcher | None = None  # shell tasks' pipes and exit watches
        self._queue: deque[Task] = deque()  # cancelled tasks stay until they reach the head
        self._queued_live = 0
        self._held: dict[str, dict[str, Task]] = {}  # owner -> attempt id -> task, queued or running
        self._shells: dict[Task, ShellRun] = {}
        self._drained = False
        self._closing = False
        self._closed = False
        self._pump_scheduled = False
        self._flush_scheduled = False
        self._idle: asyncio.Event | None = None

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Open the journal and pre-start one Python worker per slot."""
        self._loop = asyncio.get_running_loop()
        seal_inherited_descriptors()
        self._readers = FdWatcher(self._loop)
        self._idle = asyncio.Event()
        self._journal.open()
        self._reaper.start()
        failure = await self._pool.start(WORKER_START_SECONDS)
        if failure:
            await self.shutdown(0)
            raise RuntimeError(failure)

    async def shutdown(self, grace: float = 5.0) -> None:
        """Stop taking work, give running tasks ``grace`` seconds, kill the rest,
        flush the journal and stop every worker."""
        if self._closed or self._loop is None:
            return
        self._closing = True
        assert self._idle is not None
        # Queued tasks never start; tasks a worker holds but has not begun
        # come back as skipped. Each is reported ``stopped``: not the task's
        # doing and not a console's cancel, so a console runs it again.
        queued = [task for task in self._queue if task.stage is Stage.QUEUED]
        for task in queued:
            task.stage = Stage.DONE
        self._queue.clear()
        self._queued_live = 0
        self._complete([(task, plain_result(task, OUTCOME_STOPPED, error=ERROR_SHUTDOWN)) for task in queued])
        self._pool.stop()
        self._check_idle()
        if not await _wait(self._idle, grace):
            self._kill_everything()
            if not await _wait(self._idle, EXIT_WAIT_SECONDS):
                log.error("tasks still running after their process groups were killed")
        await self._pool.close(EXIT_WAIT_SECONDS)
        self._journal.close()
        self._reaper.close(EXIT_WAIT_SECONDS)  # nothing is registered any more: it just exits
        if self._readers is not None:
            self._readers.close()
        self._task_env.close()
        self._closed = True

    def _kill_everything(self) -> None:
        kill = (OUTCOME_STOPPED, ERROR_SHUTDOWN)
        self._pool.kill_all(kill)
        for task, run in self._shells.items():
            task.kill = task.kill or kill
            run.kill()

    def _check_idle(self) -> None:
        if self._closing and self._idle is not None and not self._shells and not self._pool.has_inflight:
            self._idle.set()

    # --- the console-facing API --------------------------------------------------------

    def submit(self, owner: str, tasks: list[TaskSpec]) -> list[tuple[str, RejectCode, str]]:
        """Queue tasks; return (attempt_id, code, reason) for each one refused.

        An attempt this agent already holds, or holds an unacked result for,
        is ignored: a console that resends after a reconnect gets it run once.
        """
        if self._closing or self._drained:
            if self._closing:
                code, reason = RejectCode.SHUTTING_DOWN, REASON_SHUTTING_DOWN
            else:
                code, reason = RejectCode.DRAINING, REASON_DRAINED
            return [(spec.id, code, reason) for spec in tasks]
        refused: list[tuple[str, RejectCode, str]] = []
        accepted: list[str] = []
        held = self._held.get(owner)
        if held is None:
            held = self._held[owner] = {}
        unacked = self._journal.unacked_ids(owner)
        queue = self._queue
        room = self._max_queued - self._queued_live
        for spec in tasks:
            attempt_id = spec.id
            if attempt_id in held or attempt_id in unacked:
                continue
            # The common case, a one-slot call task, is checked inline.
            if spec.kind != KIND_CALL or spec.slots != 1 or ":" not in (spec.fn or "") or self._python_refused:
                refusal = self._refusal(spec)
                if refusal is not None:
                    refused.append((attempt_id, *refusal))
                    continue
            if room <= 0:
                refused.append((attempt_id, RejectCode.FULL, REASON_QUEUE_FULL))
                continue
            room -= 1
            task = Task(owner, spec)
            held[attempt_id] = task
            queue.append(task)
            accepted.append(attempt_id)
        if accepted:
            self._queued_live += len(accepted)
            self._journal.accepted(owner, accepted)
            self._schedule_pump()
        return refused

    def _refusal(self, spec: TaskSpec) -> tuple[RejectCode, str] | None:
        """Why this agent cannot take ``spec``: a malformed task (no agent
        could) or one this agent cannot run (another may)."""
        kind = spec.kind
        if kind == KIND_CALL:
            if not spec.fn or ":" not in spec.fn:
                return RejectCode.BAD_SPEC, "a call task needs fn as 'package.module:function'"
        elif kind == KIND_PICKLE:
            if not self._allow_pickle:
                return RejectCode.UNSUPPORTED, REASON_PICKLE_DISABLED
            if spec.payload is None:
                return RejectCode.BAD_SPEC, "a pickle task needs a payload"
        elif kind == KIND_SHELL:
            if (spec.argv is None) == (spec.shell is None) or spec.argv == []:
                return RejectCode.BAD_SPEC, "a shell task needs exactly one of a non-empty argv or a shell string"
        else:
            return RejectCode.UNSUPPORTED, f"unknown task kind {kind!r} (known: {', '.join(TASK_KINDS)})"
        if kind != KIND_SHELL and self._python_refused:
            return RejectCode.UNSUPPORTED, self._python_refused  # --run-as USER cannot run this Python
        if spec.slots > self._pool.size:
            return RejectCode.UNSUPPORTED, f"task needs {spec.slots} slots, this agent has {self._pool.size}"
        if spec.slots < 1:
            return RejectCode.BAD_SPEC, "a task needs at least one slot"
        return None

    def cancel(self, owner: str, ids: list[str]) -> None:
        held = self._held.get(owner, {})
        done: Done = []
        for attempt_id in ids:
            task = held.get(attempt_id)
            if task is None or task.kill is not None:
                continue  # unknown, finished, or already being killed
            if task.stage is Stage.QUEUED:
                task.stage = Stage.DONE
                self._queued_live -= 1
                done.append((task, plain_result(task, OUTCOME_CANCELLED, error=ERROR_CANCELLED)))
                continue
            task.kill = (OUTCOME_CANCELLED, ERROR_CANCELLED)
            run = self._shells.get(task)
            if run is not None:
                run.kill()
            else:
                self._pool.cancel(task)
        self._complete(done)

    def ack(self, owner: str, ids: list[str]) -> None:
        self._journal.ack(owner, ids)
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_journal)

    def _flush_journal(self) -> None:
        self._flush_scheduled = False
        if not self._closed:
            self._journal.flush()

    def unacked(self, owner: str) -> list[TaskResult]:
        return self._journal.unacked(owner)

    def value_path(self, owner: str, attempt_id: str) -> Path:
        """The spool file of an unacked result's value (one with a ``value_size``)."""
        return self._journal.value_path(owner, attempt_id)

    def holding(self, owner: str) -> list[str]:
        return list(self._held.get(owner, ()))

    def holds_any(self, owner: str) -> bool:
        """Whether any task of ``owner`` is still queued or running here."""
        return bool(self._held.get(owner))

    @property
    def drained(self) -> bool:
        return self._drained

    def drain(self) -> None:
        self._drained = True

    def undrain(self) -> None:
        self._drained = False

    @property
    def slots_total(self) -> int:
        return self._pool.size

    @property
    def slots_busy(self) -> int:
        return self._pool.busy

    @property
    def queued(self) -> int:
        return self._queued_live

    # --- placing work ------------------------------------------------------------------

    def _schedule_pump(self) -> None:
        # Deferred to the end of the loop turn: several submits in one turn
        # (several run frames in one read) make fewer, bigger batches.
        if not self._pump_scheduled and self._loop is not None:
            self._pump_scheduled = True
            self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        self._pump_scheduled = False
        if self._closing:
            return
        # Accepted records reach the file before their tasks start, so a task
        # running when the agent dies is reported lost after a restart.
        self._journal.flush()
        queue = self._queue
        pool = self._pool
        while self._queued_live:
            head = queue[0]
            if head.stage is not Stage.QUEUED:
                queue.popleft()
                continue
            spec = head.spec
            if spec.kind != KIND_SHELL and spec.slots == 1 and not spec.report_start:
                slot = pool.slot_for_batch()
                if slot is None:
                    return
                self._queued_live -= pool.send_batch(slot, queue, self._queued_live)
                continue
            if not pool.reserve(head, need_worker=spec.kind != KIND_SHELL):
                return  # the head waits: tasks behind it do not overtake a wide task
            queue.popleft()
            self._queued_live -= 1
            head.stage = Stage.RUNNING
            if spec.report_start:
                head.stage = Stage.STARTED
                self._listener.task_starting(head.owner, head.id)
            if spec.kind == KIND_SHELL:
                self._start_shell(head)
            else:
                pool.send_alone(head)

    def _requeue(self, tasks: list[Task]) -> None:
        """Tasks a dead worker never finished go back to the head of the queue."""
        self._queue.extendleft(reversed(tasks))
        self._queued_live += len(tasks)

    # --- shell tasks ---------------------------------------------------------------------

    def _start_shell(self, task: Task) -> None:
        assert self._loop is not None
        assert self._readers is not None
        # The value is the whole stdout, kept apart from the display tail; up
        # to the tail's size the tail is the whole of it and nothing is spilled.
        self._shell_values += 1
        value = ShellValue(
            self._journal.values_dir, f"s{self._shell_values}", inline=self._tail_bytes, limit=task.spec.max_result
        )
        run = ShellRun(
            task.spec,
            self._loop,
            self._readers,
            self._reaper,
            self._task_env,
            on_output=partial(self._shell_output, task, value),
            on_progress=partial(self._task_progress, task),
            on_exit=partial(self._shell_exited, task, value),
        )
        error = run.start()
        if error:
            task.release()
            self._settle([(task, plain_result(task, OUTCOME_ERROR, error=error, started=run.started))])
            return
        self._shells[task] = run
        self._report_started(task)
        if task.spec.timeout is not None:
            run.arm_timeout(task.spec.timeout, partial(self._shell_timed_out, task, run))

    def _shell_timed_out(self, task: Task, run: ShellRun) -> None:
        assert task.spec.timeout is not None
        if task.kill is None:
            task.kill = timeout_kill(task.spec.timeout)
        run.kill()

    def _shell_output(self, task: Task, value: ShellValue, stream: str, data: bytes) -> None:
        if stream == "stdout":
            value.add(data)
        self._task_output(task, stream, data)

    def _shell_exited(self, task: Task, value: ShellValue, returncode: int) -> None:
        run = self._shells.pop(task)
        task.release()
        stdout, stderr = task.tails()
        result, task.value_part = shell_result(
            task.id, returncode, task.kill, started=run.started, stdout=stdout, stderr=stderr, value=value
        )
        self._settle([(task, result)])

    # --- what running tasks report -----------------------------------------------------

    def _report_started(self, task: Task) -> None:
        if task.stage is Stage.RUNNING:
            task.stage = Stage.STARTED
            self._listener.task_started(task.owner, task.id)

    def _task_output(self, task: Task, stream: str, data: bytes) -> None:
        self._report_started(task)
        if task.output is None:
            task.output = Output(self._tail_bytes)
        task.output.add(stream, data)
        self._listener.task_output(task.owner, task.id, stream, data)

    def _task_progress(self, task: Task, fraction: float | None, message: str) -> None:
        self._report_started(task)
        self._listener.task_progress(task.owner, task.id, fraction, message)

    def _settle(self, done: Done) -> None:
        """Complete ``done``; a slot may have freed up, so place more work."""
        self._complete(done)
        self._schedule_pump()

    def _complete(self, done: Done) -> None:
        """Journal the results (one write), then tell the listener."""
        if not done:
            return
        journal = self._journal
        for i, (task, result) in enumerate(done):
            part = task.value_part
            if part is None:
                journal.record(task.owner, result)
                continue
            task.value_part = None
            try:
                journal.record(task.owner, result, part)
            except OSError as exc:  # the spool file could not be put in place: no value, said so
                log.error("value of %s: %s", task.id, exc)
                with contextlib.suppress(OSError):
                    os.unlink(part)
                result = replace(result, outcome=OUTCOME_ERROR, error=f"the agent cannot keep the value: {exc}", value_size=0)
                done[i] = (task, result)
                journal.record(task.owner, result)
        journal.flush()
        held = self._held
        listener = self._listener
        running = Stage.RUNNING
        finished = Stage.DONE
        for task, result in done:
            owner = task.owner
            held[owner].pop(task.id, None)
            if task.reserved is not None:
                task.release()
            if task.stage is running:
                # Reported together with the result: a short task's started
                # and finished reach the console in the same frame batch.
                listener.task_started(owner, task.id)
            task.stage = finished
            listener.task_finished(owner, result)
        if self._closing:
            self._check_idle()


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    if event.is_set():
        return True
    try:
        await asyncio.wait_for(event.wait(), max(timeout, 0.0))
    except TimeoutError:
        return False
    return True
