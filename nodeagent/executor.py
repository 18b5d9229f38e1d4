"""Runs tasks in bounded slots with process isolation. Knows nothing of SSH.

Each slot owns one pre-started Python worker (``nodeagent.worker``). Call and
pickle tasks go to workers in batches sized to the queue depth and to how
long tasks have been taking, so ten thousand no-op calls cost a few pipe
writes, while slow tasks still spread one by one over the slots. A shell
task, or any task needing several slots, holds its slots exclusively; shell
tasks run as subprocesses in their own process group.

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
import logging
import os
import subprocess
import time
from collections import deque
from collections.abc import Callable
from enum import Enum
from functools import partial
from pathlib import Path
from typing import IO, Any, Protocol

from engine.protocol import (
    KIND_CALL,
    KIND_PICKLE,
    KIND_SHELL,
    OUTCOME_CANCELLED,
    OUTCOME_CRASHED,
    OUTCOME_ERROR,
    OUTCOME_OK,
    OUTCOME_TIMEOUT,
    SHELL_PROGRESS_PREFIX,
    TASK_KINDS,
    TaskResult,
    TaskSpec,
)
from nodeagent.journal import COMPACT_MIN_ENTRIES, Journal
from nodeagent.worker import (
    CALL,
    EV_ERROR,
    EV_OK,
    EV_OUTPUT,
    EV_PROGRESS,
    EV_READY,
    EV_SKIPPED,
    EV_STARTED,
    PICKLE,
    GroupReaper,
    WorkerProcess,
    kill_group,
    signal_name,
    watch_exit,
)

log = logging.getLogger("shoal.agent.executor")

REASON_PICKLE_DISABLED = "pickled callables are disabled on this agent (start it with --allow-pickle)"
REASON_DRAINED = "node is drained"
REASON_QUEUE_FULL = "agent queue full"
REASON_SHUTTING_DOWN = "agent is shutting down"
ERROR_CANCELLED = "cancelled"
ERROR_SHUTDOWN = "agent shutting down"

MAX_BATCH = 256
# A batch should take about this long: short tasks travel in big batches,
# slow ones one at a time so they spread over all slots.
TARGET_BATCH_SECONDS = 0.005
INITIAL_TASK_SECONDS = TARGET_BATCH_SECONDS / 8  # until results say otherwise
# A worker may hold a second batch while it runs one, so it never waits for
# the agent; only when tasks are short, or a slow batch would hold up tasks
# another slot could start.
PIPELINE_BATCHES = 2
PIPELINE_MAX_TASK_SECONDS = 0.0005
# A worker stuck in C code holding the GIL cannot honour a cancel itself.
CANCEL_GRACE_SECONDS = 2.0
TIMEOUT_POLL_SECONDS = 0.05
WORKER_START_SECONDS = 30.0
WORKER_RESPAWN_DELAY = 1.0  # after a worker died before it was ready
SHELL_READ_BYTES = 65536
EXIT_WAIT_SECONDS = 5.0
MAX_PROGRESS_LINE = 4096


class ExecutorListener(Protocol):
    """What the executor reports. ``owner`` is the console id that submitted."""

    def task_started(self, owner: str, attempt_id: str) -> None: ...

    def task_progress(self, owner: str, attempt_id: str, fraction: float | None, message: str) -> None: ...

    def task_output(self, owner: str, attempt_id: str, stream: str, data: bytes) -> None: ...

    def task_finished(self, owner: str, result: TaskResult) -> None:
        """Called after the result is in the journal."""


class _NoListener:
    def task_started(self, owner: str, attempt_id: str) -> None:
        pass

    def task_progress(self, owner: str, attempt_id: str, fraction: float | None, message: str) -> None:
        pass

    def task_output(self, owner: str, attempt_id: str, stream: str, data: bytes) -> None:
        pass

    def task_finished(self, owner: str, result: TaskResult) -> None:
        pass


class _Stage(Enum):
    QUEUED = "queued"
    RUNNING = "running"  # in a worker's batch or a subprocess, not yet reported started
    STARTED = "started"  # the listener has heard task_started
    DONE = "done"


class _Task:
    # One per accepted task, so kept small: what only some tasks need
    # (output, exclusive slots, a kill decision) stays None until needed.
    __slots__ = ("owner", "id", "spec", "stage", "seq", "kill", "reserved", "output")

    def __init__(self, owner: str, spec: TaskSpec) -> None:
        self.owner = owner
        self.id = spec.id
        self.spec = spec
        self.stage = _Stage.QUEUED
        self.seq = 0  # worker batch sequence number while in a worker
        self.kill: tuple[str, str] | None = None  # (outcome, error) once the agent decided to kill it
        self.reserved: list[_Slot] | None = None  # slots held exclusively (shell or multi-slot task)
        self.output: _Output | None = None


class _Output:
    """The last ``limit`` bytes of a task's stdout and stderr."""

    __slots__ = ("limit", "streams")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.streams = {"stdout": bytearray(), "stderr": bytearray()}

    def add(self, stream: str, chunk: bytes) -> None:
        data = self.streams[stream]
        data += chunk
        # Trim in amortised steps rather than on every chunk.
        if len(data) > 2 * self.limit:
            del data[: len(data) - self.limit]

    def tail(self, stream: str) -> bytes:
        return bytes(self.streams[stream][-self.limit :]) if self.limit else b""


def _tails(task: _Task) -> tuple[bytes, bytes]:
    if task.output is None:
        return b"", b""
    return task.output.tail("stdout"), task.output.tail("stderr")


class _Slot:
    __slots__ = ("index", "worker", "inflight", "batch_ends", "holder", "timeout_watch", "failed_starts")

    def __init__(self, index: int) -> None:
        self.index = index
        self.worker: WorkerProcess | None = None
        self.inflight: dict[int, _Task] = {}  # seq -> task, in the order the worker runs them
        self.batch_ends: deque[int] = deque()  # last seq of each batch the worker holds
        self.holder: _Task | None = None  # a task holding this slot exclusively
        self.timeout_watch: asyncio.TimerHandle | None = None
        self.failed_starts = 0

    @property
    def idle(self) -> bool:
        return self.holder is None and not self.inflight

    @property
    def worker_ready(self) -> bool:
        return self.worker is not None and self.worker.ready


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
    ) -> None:
        if slots < 1:
            raise ValueError("an agent needs at least one slot")
        self._slots = [_Slot(i) for i in range(slots)]
        self._allow_pickle = allow_pickle
        self._max_queued = max_queued
        self._tail_bytes = output_tail_bytes
        self._listener: ExecutorListener = listener if listener is not None else _NoListener()
        self._journal = Journal(state_dir, compact_min_entries=journal_compact_entries)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: deque[_Task] = deque()  # cancelled tasks stay until they reach the head
        self._queued_live = 0
        self._held: dict[str, dict[str, _Task]] = {}  # owner -> attempt id -> task, queued or running
        self._shells: dict[_Task, _ShellRun] = {}
        self._reaper = GroupReaper()
        self._seq = 0
        self._task_seconds = INITIAL_TASK_SECONDS  # moving average of Python task run time
        self._drained = False
        self._closing = False
        self._closed = False
        self._pump_scheduled = False
        self._flush_scheduled = False
        self._workers_started: asyncio.Event | None = None
        self._startup_failure = ""
        self._idle: asyncio.Event | None = None

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Open the journal and pre-start one Python worker per slot."""
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        self._workers_started = asyncio.Event()
        self._journal.open()
        self._reaper.start()
        for slot in self._slots:
            self._spawn_worker(slot)
        if not await _wait(self._workers_started, WORKER_START_SECONDS):
            self._startup_failure = f"python workers did not start within {WORKER_START_SECONDS:g} s"
        if self._startup_failure:
            await self.shutdown(0)
            raise RuntimeError(self._startup_failure)

    async def shutdown(self, grace: float = 5.0) -> None:
        """Stop taking work, give running tasks ``grace`` seconds, kill the rest,
        flush the journal and stop every worker."""
        if self._closed or self._loop is None:
            return
        self._closing = True
        assert self._idle is not None
        # Queued tasks never start; tasks a worker holds but has not begun
        # come back as skipped.
        queued = [task for task in self._queue if task.stage is _Stage.QUEUED]
        for task in queued:
            task.stage = _Stage.DONE
        self._queue.clear()
        self._queued_live = 0
        self._complete([(task, _result(task, OUTCOME_CANCELLED, error=ERROR_SHUTDOWN)) for task in queued])
        for slot in self._slots:
            if slot.worker is not None and slot.inflight:
                slot.worker.stop()
        self._check_idle()
        if not await _wait(self._idle, grace):
            self._kill_everything()
            if not await _wait(self._idle, EXIT_WAIT_SECONDS):
                log.error("tasks still running after their process groups were killed")
        workers = [slot.worker for slot in self._slots if slot.worker is not None]
        for worker in workers:
            worker.close()  # an idle worker exits on the EOF
        exits = [worker.exited for worker in workers if not worker.exited.done()]
        if exits:
            _, pending = await asyncio.wait(exits, timeout=EXIT_WAIT_SECONDS)
            for worker in workers:
                worker.kill()
            if pending:
                await asyncio.wait(pending, timeout=EXIT_WAIT_SECONDS)
        self._journal.close()
        self._reaper.close(EXIT_WAIT_SECONDS)  # nothing is registered any more: it just exits
        self._closed = True

    def _kill_everything(self) -> None:
        for slot in self._slots:
            if slot.worker is not None and slot.inflight:
                for task in slot.inflight.values():
                    task.kill = task.kill or (OUTCOME_CANCELLED, ERROR_SHUTDOWN)
                slot.worker.kill()
        for task, run in self._shells.items():
            task.kill = task.kill or (OUTCOME_CANCELLED, ERROR_SHUTDOWN)
            run.kill()

    def _check_idle(self) -> None:
        if self._closing and self._idle is not None and not self._shells:
            if all(not slot.inflight for slot in self._slots):
                self._idle.set()

    # --- the console-facing API --------------------------------------------------------

    def submit(self, owner: str, tasks: list[TaskSpec]) -> list[tuple[str, str]]:
        """Queue tasks; return (attempt_id, reason) for each one refused.

        An attempt this agent already holds, or holds an unacked result for,
        is ignored: a console that resends after a reconnect gets it run once.
        """
        if self._closing or self._drained:
            reason = REASON_SHUTTING_DOWN if self._closing else REASON_DRAINED
            return [(spec.id, reason) for spec in tasks]
        refused: list[tuple[str, str]] = []
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
            if spec.kind != KIND_CALL or spec.slots != 1 or ":" not in (spec.fn or ""):
                reason = self._refusal(spec)
                if reason:
                    refused.append((attempt_id, reason))
                    continue
            if room <= 0:
                refused.append((attempt_id, REASON_QUEUE_FULL))
                continue
            room -= 1
            task = _Task(owner, spec)
            held[attempt_id] = task
            queue.append(task)
            accepted.append(attempt_id)
        if accepted:
            self._queued_live += len(accepted)
            self._journal.accepted(owner, accepted)
            self._schedule_pump()
        return refused

    def _refusal(self, spec: TaskSpec) -> str:
        kind = spec.kind
        if kind == KIND_CALL:
            if not spec.fn or ":" not in spec.fn:
                return "a call task needs fn as 'package.module:function'"
        elif kind == KIND_PICKLE:
            if not self._allow_pickle:
                return REASON_PICKLE_DISABLED
            if spec.payload is None:
                return "a pickle task needs a payload"
        elif kind == KIND_SHELL:
            if (spec.argv is None) == (spec.shell is None) or spec.argv == []:
                return "a shell task needs exactly one of a non-empty argv or a shell string"
        else:
            return f"unknown task kind {kind!r} (known: {', '.join(TASK_KINDS)})"
        if spec.slots > len(self._slots):
            return f"task needs {spec.slots} slots, this agent has {len(self._slots)}"
        if spec.slots < 1:
            return "a task needs at least one slot"
        return ""

    def cancel(self, owner: str, ids: list[str]) -> None:
        held = self._held.get(owner, {})
        done: list[tuple[_Task, TaskResult]] = []
        for attempt_id in ids:
            task = held.get(attempt_id)
            if task is None or task.kill is not None:
                continue  # unknown, finished, or already being killed
            if task.stage is _Stage.QUEUED:
                task.stage = _Stage.DONE
                self._queued_live -= 1
                done.append((task, _result(task, OUTCOME_CANCELLED, error=ERROR_CANCELLED)))
            else:
                task.kill = (OUTCOME_CANCELLED, ERROR_CANCELLED)
                self._kill_running(task)
        self._complete(done)

    def _kill_running(self, task: _Task) -> None:
        run = self._shells.get(task)
        if run is not None:
            run.kill()
            return
        for slot in self._slots:
            if task.seq in slot.inflight and slot.worker is not None:
                worker = slot.worker
                # The worker skips it if not begun, or kills itself if it
                # runs it; only a worker that cannot answer is killed here.
                worker.cancel(task.seq)
                assert self._loop is not None
                self._loop.call_later(CANCEL_GRACE_SECONDS, self._force_cancel, slot, worker, task)
                return

    def _force_cancel(self, slot: _Slot, worker: WorkerProcess, task: _Task) -> None:
        if slot.worker is worker and slot.inflight.get(task.seq) is task:
            log.warning("worker %d did not honour a cancel: killing it", worker.pid)
            worker.kill()

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

    def holding(self, owner: str) -> list[str]:
        return list(self._held.get(owner, ()))

    @property
    def drained(self) -> bool:
        return self._drained

    def drain(self) -> None:
        self._drained = True

    def undrain(self) -> None:
        self._drained = False

    @property
    def slots_total(self) -> int:
        return len(self._slots)

    @property
    def slots_busy(self) -> int:
        return sum(1 for slot in self._slots if not slot.idle)

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
        while self._queued_live:
            head = queue[0]
            if head.stage is not _Stage.QUEUED:
                queue.popleft()
                continue
            spec = head.spec
            if spec.kind != KIND_SHELL and spec.slots == 1:
                slot = self._slot_for_batch()
                if slot is None:
                    return
                self._dispatch_batch(slot)
                continue
            slots = self._idle_slots(spec.slots, spec.kind != KIND_SHELL)
            if slots is None:
                return  # the head waits: tasks behind it do not overtake a wide task
            queue.popleft()
            self._queued_live -= 1
            head.stage = _Stage.RUNNING
            head.reserved = slots
            for slot in slots:
                slot.holder = head
            if spec.kind == KIND_SHELL:
                self._start_shell(head)
            else:
                self._send_one(slots[0], head)

    def _slot_for_batch(self) -> _Slot | None:
        for slot in self._slots:
            if slot.idle and slot.worker_ready:
                return slot
        if self._task_seconds > PIPELINE_MAX_TASK_SECONDS:
            return None
        best: _Slot | None = None
        for slot in self._slots:
            if slot.holder is None and slot.worker_ready and len(slot.batch_ends) < PIPELINE_BATCHES:
                if best is None or len(slot.inflight) < len(best.inflight):
                    best = slot
        return best

    def _idle_slots(self, count: int, need_worker: bool) -> list[_Slot] | None:
        idle = [slot for slot in self._slots if slot.idle]
        if len(idle) < count:
            return None
        if need_worker:
            # The task runs in the first slot's worker.
            ready = [slot for slot in idle if slot.worker_ready]
            if not ready:
                return None
            idle.remove(ready[0])
            idle.insert(0, ready[0])
        return idle[:count]

    def _batch_size(self) -> int:
        by_depth = self._queued_live // len(self._slots)
        by_time = int(TARGET_BATCH_SECONDS / self._task_seconds) if self._task_seconds > 0 else MAX_BATCH
        return max(1, min(MAX_BATCH, by_depth, by_time))

    def _dispatch_batch(self, slot: _Slot) -> None:
        """Move the run of one-slot Python tasks at the queue's head to ``slot``'s worker."""
        limit = self._batch_size()
        queue = self._queue
        inflight = slot.inflight
        queued, running = _Stage.QUEUED, _Stage.RUNNING
        seq = self._seq
        entries: list[tuple[Any, ...]] = []
        with_timeout = False
        while queue and len(entries) < limit:
            task = queue[0]
            if task.stage is not queued:
                queue.popleft()  # cancelled while queued
                continue
            spec = task.spec
            if spec.kind == KIND_SHELL or spec.slots != 1:
                break
            queue.popleft()
            seq += 1
            task.seq = seq
            task.stage = running
            inflight[seq] = task
            entries.append(_entry(seq, spec))
            if spec.timeout is not None:
                with_timeout = True
        self._queued_live -= len(entries)
        self._seq = seq
        self._send(slot, entries, with_timeout)

    def _send_one(self, slot: _Slot, task: _Task) -> None:
        """A Python task holding several slots runs alone in the first one's worker."""
        self._seq += 1
        task.seq = self._seq
        slot.inflight[task.seq] = task
        self._send(slot, [_entry(task.seq, task.spec)], task.spec.timeout is not None)

    def _send(self, slot: _Slot, entries: list[tuple[Any, ...]], with_timeout: bool) -> None:
        assert slot.worker is not None
        slot.batch_ends.append(self._seq)
        slot.worker.run(entries)
        if with_timeout and slot.timeout_watch is None:
            self._watch_timeouts(slot)

    # --- Python workers ------------------------------------------------------------------

    def _spawn_worker(self, slot: _Slot) -> None:
        assert self._loop is not None
        worker = WorkerProcess(self._loop, partial(self._worker_events, slot), partial(self._worker_exit, slot))
        slot.worker = worker
        try:
            worker.spawn()
        except OSError as exc:
            self._startup_failure = f"cannot start a python worker: {exc}"
            assert self._workers_started is not None
            self._workers_started.set()
            return
        self._reaper.register(worker.pid)

    def _worker_events(self, slot: _Slot, worker: WorkerProcess, events: list[Any]) -> None:
        if slot.worker is not worker:
            return
        inflight = slot.inflight
        done: list[tuple[_Task, TaskResult]] = []
        handlers = self._event_handlers
        run_time = 0.0
        ok = 0
        for event in events:
            if event[0] == EV_OK:  # the hot path (tens of thousands a second), kept inline
                _, seq, value, started, ended = event
                task = inflight.pop(seq)
                run_time += ended - started
                ok += 1
                if task.output is None:
                    result = TaskResult(task.id, OUTCOME_OK, value, "", "", None, None, started, ended, b"", b"")
                else:
                    result = self._python_result(task, OUTCOME_OK, value, "", "", started, ended)
                done.append((task, result))
            else:
                handlers[event[0]](self, slot, event, done)
        if ok:
            # Moving average, weighted by batch: adapts within a few batches.
            self._task_seconds = 0.7 * self._task_seconds + 0.3 * (run_time / ok)
        if done:
            ends = slot.batch_ends
            # inflight is ordered by seq: a batch is done once its last seq
            # is below every seq still out (a skip can finish one early).
            while ends and (not inflight or ends[0] < next(iter(inflight))):
                ends.popleft()
            self._complete(done)
            self._schedule_pump()

    @staticmethod
    def _python_result(
        task: _Task, outcome: str, value: Any, error: str, tb: str, started: float, ended: float
    ) -> TaskResult:
        stdout, stderr = _tails(task)
        return TaskResult(task.id, outcome, value, error, tb, None, None, started, ended, stdout, stderr)

    def _on_error(self, slot: _Slot, event: list[Any], done: list[tuple[_Task, TaskResult]]) -> None:
        _, seq, error, tb, started, ended = event
        task = slot.inflight.pop(seq)
        self._task_seconds = 0.7 * self._task_seconds + 0.3 * (ended - started)
        done.append((task, self._python_result(task, OUTCOME_ERROR, None, error, tb, started, ended)))

    def _on_skipped(self, slot: _Slot, event: list[Any], done: list[tuple[_Task, TaskResult]]) -> None:
        task = slot.inflight.pop(event[1], None)
        if task is None:
            return  # a cancel that crossed the task's result: the result won
        task.stage = _Stage.DONE  # it never ran: no started report
        outcome, error = task.kill or (OUTCOME_CANCELLED, ERROR_SHUTDOWN)
        done.append((task, _result(task, outcome, error=error)))

    def _on_started(self, slot: _Slot, event: list[Any], done: list[tuple[_Task, TaskResult]]) -> None:
        task = slot.inflight.get(event[1])
        if task is not None:
            self._report_started(task)

    def _on_progress(self, slot: _Slot, event: list[Any], done: list[tuple[_Task, TaskResult]]) -> None:
        _, seq, fraction, message = event
        task = slot.inflight.get(seq)
        if task is not None:
            self._report_started(task)
            self._listener.task_progress(task.owner, task.id, fraction, message)

    def _on_output(self, slot: _Slot, event: list[Any], done: list[tuple[_Task, TaskResult]]) -> None:
        _, seq, stream, data = event
        task = slot.inflight.get(seq)
        if task is not None:
            self._report_started(task)
            self._add_output(task, stream, data)

    def _on_ready(self, slot: _Slot, event: list[Any], done: list[tuple[_Task, TaskResult]]) -> None:
        assert slot.worker is not None
        slot.worker.ready = True
        slot.failed_starts = 0
        if self._workers_started is not None and all(s.worker_ready for s in self._slots):
            self._workers_started.set()
        self._schedule_pump()

    _event_handlers: dict[int, Callable[[Executor, _Slot, list[Any], list[tuple[_Task, TaskResult]]], None]] = {
        EV_ERROR: _on_error,
        EV_SKIPPED: _on_skipped,
        EV_STARTED: _on_started,
        EV_PROGRESS: _on_progress,
        EV_OUTPUT: _on_output,
        EV_READY: _on_ready,
    }

    def _watch_timeouts(self, slot: _Slot) -> None:
        """Kill the worker once the task it runs is past its timeout.

        Reads the worker's shared cell rather than trusting messages, so a
        task stuck in C code holding the GIL is still killed on time, and the
        deadline counts from the moment the task really began: never early.
        """
        slot.timeout_watch = None
        worker = slot.worker
        if worker is None or not any(task.spec.timeout is not None for task in slot.inflight.values()):
            return
        delay = TIMEOUT_POLL_SECONDS
        seq, started = worker.current()
        task = slot.inflight.get(seq)
        if task is not None and task.spec.timeout is not None:
            remaining = started + task.spec.timeout - time.time()
            if remaining <= 0:
                worker.read_now()  # its result may be in the pipe already
                if slot.worker is worker and slot.inflight.get(seq) is task and task.kill is None:
                    task.kill = (OUTCOME_TIMEOUT, f"timed out after {task.spec.timeout:g} s")
                    worker.kill()
                    return
            else:
                delay = min(delay, remaining)
        assert self._loop is not None
        slot.timeout_watch = self._loop.call_later(delay, self._watch_timeouts, slot)

    def _worker_exit(self, slot: _Slot, worker: WorkerProcess, returncode: int) -> None:
        self._reaper.unregister(worker.pid)
        if slot.worker is not worker:
            return
        victim, victim_started = worker.current()
        if slot.timeout_watch is not None:
            slot.timeout_watch.cancel()
            slot.timeout_watch = None
        unfinished = list(slot.inflight.values())
        if not victim and unfinished and not worker.killed_by_agent:
            # It died between two tasks: blame the next in line, so a worker
            # that keeps dying cannot requeue the same tasks forever.
            victim = unfinished[0].seq
        slot.inflight.clear()
        slot.batch_ends.clear()
        now = time.time()
        done: list[tuple[_Task, TaskResult]] = []
        requeue: list[_Task] = []
        for task in unfinished:
            started = victim_started if task.seq == victim else 0.0
            if task.kill is not None:
                outcome, error = task.kill
                done.append((task, self._python_result(task, outcome, None, error, "", started, now)))
            elif self._closing:
                done.append((task, _result(task, OUTCOME_CANCELLED, error=ERROR_SHUTDOWN)))
            elif task.seq == victim and not worker.killed_by_agent:
                done.append((task, self._crash_result(task, returncode, victim_started, now)))
            else:
                # Never began, or finished but its result died with the
                # worker, or was hit by a kill meant for another task.
                requeue.append(task)
        for task in requeue:
            self._release(task)
            task.stage = _Stage.QUEUED
            task.seq = 0
        self._queue.extendleft(reversed(requeue))
        self._queued_live += len(requeue)
        slot.worker = None
        if not worker.ready:
            slot.failed_starts += 1
            log.error("a python worker exited with code %d before it was ready", returncode)
            if self._workers_started is not None and not self._workers_started.is_set():
                self._startup_failure = (
                    f"python worker exited with code {returncode} before it was ready (see the agent's stderr)"
                )
                self._workers_started.set()
        elif not self._closing:
            log.info("python worker %d %s; starting a new one", worker.pid, _exit_text(returncode))
        self._complete(done)
        if not self._closing and not self._startup_failure:
            delay = WORKER_RESPAWN_DELAY if slot.failed_starts else 0.0
            assert self._loop is not None
            self._loop.call_later(delay, self._respawn, slot)
        self._schedule_pump()

    def _respawn(self, slot: _Slot) -> None:
        if slot.worker is None and not self._closing:
            self._spawn_worker(slot)

    @staticmethod
    def _crash_result(task: _Task, returncode: int, started: float, ended: float) -> TaskResult:
        signum = -returncode if returncode < 0 else None
        stdout, stderr = _tails(task)
        return TaskResult(
            id=task.id,
            outcome=OUTCOME_CRASHED,
            error=f"worker {_exit_text(returncode)}",
            exit_code=returncode if returncode >= 0 else None,
            signal=signum,
            started=started,
            ended=ended,
            stdout=stdout,
            stderr=stderr,
        )

    # --- shell tasks ---------------------------------------------------------------------

    def _start_shell(self, task: _Task) -> None:
        assert self._loop is not None
        run = _ShellRun(self, task, self._loop)
        error = run.start()
        if error:
            self._release(task)
            self._complete([(task, _result(task, OUTCOME_ERROR, error=error, started=run.started))])
            self._schedule_pump()
            return
        self._shells[task] = run
        self._report_started(task)
        if task.spec.timeout is not None:
            run.arm_timeout(task.spec.timeout)

    def _shell_exited(self, task: _Task, run: _ShellRun, returncode: int) -> None:
        del self._shells[task]
        self._release(task)
        self._complete([(task, run.result(returncode))])
        self._schedule_pump()

    # --- shared by both kinds ---------------------------------------------------------------

    def _report_started(self, task: _Task) -> None:
        if task.stage is _Stage.RUNNING:
            task.stage = _Stage.STARTED
            self._listener.task_started(task.owner, task.id)

    def _add_output(self, task: _Task, stream: str, data: bytes) -> None:
        if task.output is None:
            task.output = _Output(self._tail_bytes)
        task.output.add(stream, data)
        self._listener.task_output(task.owner, task.id, stream, data)

    def _progress(self, task: _Task, fraction: float | None, message: str) -> None:
        self._listener.task_progress(task.owner, task.id, fraction, message)

    @staticmethod
    def _release(task: _Task) -> None:
        if task.reserved is not None:
            for slot in task.reserved:
                slot.holder = None
            task.reserved = None

    def _complete(self, done: list[tuple[_Task, TaskResult]]) -> None:
        """Journal the results (one write), then tell the listener."""
        if not done:
            return
        journal = self._journal
        for task, result in done:
            journal.record(task.owner, result)
        journal.flush()
        held = self._held
        listener = self._listener
        running = _Stage.RUNNING
        finished = _Stage.DONE
        for task, result in done:
            owner = task.owner
            held[owner].pop(task.id, None)
            if task.reserved is not None:
                self._release(task)
            if task.stage is running:
                # Reported together with the result: a short task's started
                # and finished reach the console in the same frame batch.
                listener.task_started(owner, task.id)
            task.stage = finished
            listener.task_finished(owner, result)
        if self._closing:
            self._check_idle()


class _ShellRun:
    """One shell task's subprocess: output pipes, progress lines, exit, timeout."""

    def __init__(self, executor: Executor, task: _Task, loop: asyncio.AbstractEventLoop) -> None:
        self._executor = executor
        self._task = task
        self._loop = loop
        self._proc: subprocess.Popen[bytes] | None = None
        self._pipes: dict[int, tuple[str, IO[bytes]]] = {}  # fd -> (stream name, pipe), open ones
        self._progress = _ProgressFilter()
        self._timer: asyncio.TimerHandle | None = None
        self.started = 0.0

    def start(self) -> str:
        """Spawn the process; return an error line if it could not start."""
        spec = self._task.spec
        argv = spec.argv if spec.argv is not None else ["/bin/sh", "-c", spec.shell or ""]
        env = dict(os.environ, **spec.env) if spec.env else None
        self.started = time.time()
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=spec.cwd,
                env=env,
                start_new_session=True,  # its own process group: a kill takes its children too
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return f"{type(exc).__name__}: {exc}"
        self._executor._reaper.register(self._proc.pid)
        assert self._proc.stdout is not None and self._proc.stderr is not None
        for pipe, stream in ((self._proc.stdout, "stdout"), (self._proc.stderr, "stderr")):
            fd = pipe.fileno()
            os.set_blocking(fd, False)
            self._pipes[fd] = (stream, pipe)
            self._loop.add_reader(fd, self._readable, fd)
        watch_exit(self._loop, self._proc.pid, self._exited)
        return ""

    def arm_timeout(self, seconds: float) -> None:
        self._timer = self._loop.call_later(seconds, self._timed_out, seconds)

    def _timed_out(self, seconds: float) -> None:
        if self._task.kill is None:
            self._task.kill = (OUTCOME_TIMEOUT, f"timed out after {seconds:g} s")
        self.kill()

    def kill(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            kill_group(self._proc.pid)

    def _readable(self, fd: int) -> None:
        try:
            data = os.read(fd, SHELL_READ_BYTES)
        except BlockingIOError:
            return
        if not data:
            self._close_fd(fd)
            return
        self._deliver(self._pipes[fd][0], data)

    def _deliver(self, stream: str, data: bytes) -> None:
        executor = self._executor
        if stream == "stderr":
            executor._add_output(self._task, stream, data)
            return
        for piece in self._progress.feed(data):
            if isinstance(piece, bytes):
                executor._add_output(self._task, stream, piece)
            else:
                executor._progress(self._task, *piece)

    def _close_fd(self, fd: int) -> None:
        self._loop.remove_reader(fd)
        _, pipe = self._pipes.pop(fd)
        pipe.close()

    def _exited(self) -> None:
        assert self._proc is not None
        # Everything the process wrote is in the pipes by now; read it before
        # the kill below, which also ends background children holding them.
        for fd in list(self._pipes):
            self._drain(fd)
        kill_group(self._proc.pid)  # leftovers die with the task; the zombie still reserves the pgid
        returncode = self._proc.wait()
        self._executor._reaper.unregister(self._proc.pid)
        for fd in list(self._pipes):
            self._drain(fd)
            if fd in self._pipes:
                self._close_fd(fd)
        rest = self._progress.finish()
        if rest:
            self._executor._add_output(self._task, "stdout", rest)
        if self._timer is not None:
            self._timer.cancel()
        self._executor._shell_exited(self._task, self, returncode)

    def _drain(self, fd: int) -> None:
        while fd in self._pipes:
            try:
                data = os.read(fd, SHELL_READ_BYTES)
            except BlockingIOError:
                return
            if not data:
                self._close_fd(fd)
                return
            self._deliver(self._pipes[fd][0], data)

    def result(self, returncode: int) -> TaskResult:
        task = self._task
        stdout, stderr = _tails(task)
        ended = time.time()
        common: dict[str, Any] = {"started": self.started, "ended": ended, "stdout": stdout, "stderr": stderr}
        if task.kill is not None:
            outcome, error = task.kill
            return TaskResult(id=task.id, outcome=outcome, error=error, **common)
        if returncode == 0:
            return TaskResult(id=task.id, outcome=OUTCOME_OK, exit_code=0, **common)
        if returncode > 0:
            return TaskResult(
                id=task.id, outcome=OUTCOME_ERROR, error=f"exit code {returncode}", exit_code=returncode, **common
            )
        return TaskResult(
            id=task.id,
            outcome=OUTCOME_ERROR,
            error=f"killed by signal {-returncode} ({signal_name(-returncode)})",
            signal=-returncode,
            **common,
        )


class _ProgressFilter:
    """Takes ``::shoal-progress 0.25 message`` lines out of a stdout stream.

    Output passes through at once, except a partial line that could still
    turn out to be a progress line.
    """

    def __init__(self) -> None:
        self._held = b""  # start of a line that may be a progress line
        self._at_line_start = True

    def feed(self, data: bytes) -> list[bytes | tuple[float | None, str]]:
        """Output chunks and (fraction, message) reports, in stream order."""
        prefix = SHELL_PROGRESS_PREFIX
        if not self._held and prefix[:1] not in data:
            self._at_line_start = data.endswith(b"\n")
            return [data]
        data = self._held + data
        self._held = b""
        pieces: list[bytes | tuple[float | None, str]] = []
        out: list[bytes] = []  # output lines since the last report
        start = 0
        at_line_start = self._at_line_start
        while start < len(data):
            end = data.find(b"\n", start)
            line = data[start:] if end < 0 else data[start : end + 1]
            if at_line_start and end >= 0 and line.startswith(prefix):
                if out:
                    pieces.append(b"".join(out))
                    out = []
                pieces.append(_parse_progress(line[len(prefix) :]))
            elif end < 0 and at_line_start and len(line) <= MAX_PROGRESS_LINE and (
                line.startswith(prefix) or prefix.startswith(line)
            ):
                self._held = line  # may yet be a progress line: wait for its end
                break
            else:
                out.append(line)
            at_line_start = end >= 0
            start = len(data) if end < 0 else end + 1
        self._at_line_start = at_line_start
        if out:
            pieces.append(b"".join(out))
        return pieces

    def finish(self) -> bytes:
        """What was held back when the stream ended."""
        held, self._held = self._held, b""
        return held


def _parse_progress(rest: bytes) -> tuple[float | None, str]:
    text = rest.decode("utf-8", "replace").strip()
    number, _, message = text.partition(" ")
    try:
        fraction: float | None = min(1.0, max(0.0, float(number)))
    except ValueError:
        return None, text
    return fraction, message.strip()


def _entry(seq: int, spec: TaskSpec) -> tuple[Any, ...]:
    """A task as a worker batch entry."""
    if spec.kind == KIND_CALL:
        return (seq, CALL, spec.fn, spec.args, spec.kwargs, spec.env, spec.cwd)
    return (seq, PICKLE, spec.payload, spec.args, spec.kwargs, spec.env, spec.cwd)


def _result(task: _Task, outcome: str, *, error: str = "", started: float = 0.0) -> TaskResult:
    return TaskResult(id=task.id, outcome=outcome, error=error, started=started, ended=time.time())


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    if event.is_set():
        return True
    try:
        await asyncio.wait_for(event.wait(), max(timeout, 0.0))
    except asyncio.TimeoutError:
        return False
    return True


def _exit_text(returncode: int) -> str:
    if returncode < 0:
        return f"killed by signal {-returncode} ({signal_name(-returncode)})"
    return f"exited with code {returncode}"
