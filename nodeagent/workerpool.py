"""The executor's slots and their pre-started Python workers.

Each slot owns one worker (``nodeagent.workerproc``). Call and pickle tasks
go to workers in batches sized to the queue depth and to how long tasks have
been taking, so ten thousand no-op calls cost a few pipe writes, while slow
tasks still spread one by one over the slots. A task may also hold slots
exclusively (a shell task, or one needing several slots).

A worker that dies takes its unfinished tasks with it: the one it was running
is reported crashed, the rest go back to the queue, and a new worker takes
the slot.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from nodeagent.procs import GroupReaper, exit_text
from nodeagent.protocol import (
    KIND_CALL,
    KIND_SHELL,
    OUTCOME_CRASHED,
    OUTCOME_ERROR,
    OUTCOME_OK,
    OUTCOME_STOPPED,
    OUTCOME_TOO_BIG,
    TaskResult,
    TaskSpec,
)
from nodeagent.runas import adopt_part
from nodeagent.taskenv import TaskEnvironment
from nodeagent.tasks import (
    ERROR_SHUTDOWN,
    Done,
    Stage,
    Task,
    plain_result,
    timeout_kill,
)
from nodeagent.values import PART_SUFFIX
from nodeagent.workerproc import WorkerProcess
from nodeagent.workerwire import (
    CALL,
    EV_ERROR,
    EV_OK,
    EV_OK_SPOOLED,
    EV_OUTPUT,
    EV_PROGRESS,
    EV_READY,
    EV_SKIPPED,
    EV_STARTED,
    EV_TOO_BIG,
    PICKLE,
)

log = logging.getLogger("shoal.agent.executor")

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
WORKER_RESPAWN_DELAY = 1.0  # after a worker died before it was ready


class Slot:
    __slots__ = ("worker", "inflight", "batch_ends", "holder", "timeout_watch", "failed_starts")

    def __init__(self) -> None:
        self.worker: WorkerProcess | None = None
        self.inflight: dict[int, Task] = {}  # seq -> task, in the order the worker runs them
        self.batch_ends: deque[int] = deque()  # last seq of each batch the worker holds
        self.holder: Task | None = None  # a task holding this slot exclusively
        self.timeout_watch: asyncio.TimerHandle | None = None
        self.failed_starts = 0

    @property
    def idle(self) -> bool:
        return self.holder is None and not self.inflight

    @property
    def worker_ready(self) -> bool:
        return self.worker is not None and self.worker.ready


class WorkerPool:
    """What happens to a task inside a worker goes back through the hooks:
    ``on_started``, ``on_progress`` and ``on_output`` as it runs,
    ``on_settled`` with finished results (or none, when a slot may have freed
    up), ``on_requeue`` with tasks a dead worker never finished."""

    def __init__(
        self,
        size: int,
        reaper: GroupReaper,
        task_env: TaskEnvironment,
        *,
        on_started: Callable[[Task], None],
        on_progress: Callable[[Task, float | None, str], None],
        on_output: Callable[[Task, str, bytes], None],
        on_settled: Callable[[Done], None],
        on_requeue: Callable[[list[Task]], None],
        values_dir: Path,
    ) -> None:
        self.slots = [Slot() for _ in range(size)]
        self._reaper = reaper
        self._task_env = task_env
        self._on_started = on_started
        self._on_progress = on_progress
        self._on_output = on_output
        self._on_settled = on_settled
        self._on_requeue = on_requeue
        self._values_dir = values_dir
        self._loop: asyncio.AbstractEventLoop | None = None
        self._seq = 0
        self._task_seconds = INITIAL_TASK_SECONDS  # moving average of Python task run time
        self._closing = False
        self._all_ready: asyncio.Event | None = None
        self._startup_failure = ""

    # --- lifecycle ------------------------------------------------------------------

    async def start(self, timeout: float) -> str:
        """Start one worker per slot; return why they did not all get ready, or ""."""
        self._loop = asyncio.get_running_loop()
        self._all_ready = asyncio.Event()
        if self._task_env.python_refused:
            return ""  # no workers: the executor refuses Python tasks, shell tasks need none
        for slot in self.slots:
            self._spawn(slot)
        try:
            await asyncio.wait_for(self._all_ready.wait(), timeout)
        except TimeoutError:
            self._startup_failure = f"python workers did not start within {timeout:g} s"
        return self._startup_failure

    def stop(self) -> None:
        """Start no more workers; each skips the tasks it has not begun."""
        self._closing = True
        for slot in self.slots:
            if slot.worker is not None and slot.inflight:
                slot.worker.stop()

    def kill_all(self, kill: tuple[str, str]) -> None:
        """Kill every worker running tasks; a task not already being killed gets ``kill``."""
        for slot in self.slots:
            if slot.worker is not None and slot.inflight:
                for task in slot.inflight.values():
                    task.kill = task.kill or kill
                slot.worker.kill()

    async def close(self, timeout: float) -> None:
        """Close every worker's command pipe and wait for it to exit; kill laggards."""
        workers = [slot.worker for slot in self.slots if slot.worker is not None]
        for worker in workers:
            worker.close()  # an idle worker exits on the EOF
        exits = [worker.exited for worker in workers if not worker.exited.done()]
        if exits:
            _, pending = await asyncio.wait(exits, timeout=timeout)
            for worker in workers:
                worker.kill()
            if pending:
                await asyncio.wait(pending, timeout=timeout)

    @property
    def size(self) -> int:
        return len(self.slots)

    @property
    def busy(self) -> int:
        return sum(1 for slot in self.slots if not slot.idle)

    @property
    def has_inflight(self) -> bool:
        return any(slot.inflight for slot in self.slots)

    # --- placing work ------------------------------------------------------------------

    def slot_for_batch(self) -> Slot | None:
        for slot in self.slots:
            if slot.idle and slot.worker_ready:
                return slot
        if self._task_seconds > PIPELINE_MAX_TASK_SECONDS:
            return None
        best: Slot | None = None
        for slot in self.slots:
            if slot.holder is None and slot.worker_ready and len(slot.batch_ends) < PIPELINE_BATCHES:
                if best is None or len(slot.inflight) < len(best.inflight):
                    best = slot
        return best

    def reserve(self, task: Task, need_worker: bool) -> bool:
        """Give ``task`` idle slots of its own, if there are enough now."""
        idle = [slot for slot in self.slots if slot.idle]
        if len(idle) < task.spec.slots:
            return False
        if need_worker:
            # The task runs in the first slot's worker.
            ready = [slot for slot in idle if slot.worker_ready]
            if not ready:
                return False
            idle.remove(ready[0])
            idle.insert(0, ready[0])
        task.reserved = idle[: task.spec.slots]
        for slot in task.reserved:
            slot.holder = task
        return True

    def send_batch(self, slot: Slot, queue: deque[Task], queued: int) -> int:
        """Move the run of one-slot Python tasks at the head of ``queue`` (which
        holds ``queued`` live tasks) to ``slot``'s worker; return how many."""
        by_depth = queued // len(self.slots)
        by_time = int(TARGET_BATCH_SECONDS / self._task_seconds) if self._task_seconds > 0 else MAX_BATCH
        limit = max(1, min(MAX_BATCH, by_depth, by_time))
        inflight = slot.inflight
        waiting, running = Stage.QUEUED, Stage.RUNNING
        seq = self._seq
        entries: list[tuple[Any, ...]] = []
        with_timeout = False
        while queue and len(entries) < limit:
            task = queue[0]
            if task.stage is not waiting:
                queue.popleft()  # cancelled while queued
                continue
            spec = task.spec
            if spec.kind == KIND_SHELL or spec.slots != 1 or spec.report_start:
                break  # placed on its own by the executor
            queue.popleft()
            seq += 1
            task.seq = seq
            task.stage = running
            inflight[seq] = task
            entries.append(_entry(seq, spec))
            if spec.timeout is not None:
                with_timeout = True
        self._seq = seq
        self._send(slot, entries, with_timeout)
        return len(entries)

    def send_alone(self, task: Task) -> None:
        """A Python task holding several slots runs alone in the first one's worker."""
        assert task.reserved is not None
        first = task.reserved[0]  # the one reserve() chose for its ready worker
        slot = next(slot for slot in self.slots if slot is first)
        self._seq += 1
        task.seq = self._seq
        slot.inflight[task.seq] = task
        self._send(slot, [_entry(task.seq, task.spec)], task.spec.timeout is not None)

    def _send(self, slot: Slot, entries: list[tuple[Any, ...]], with_timeout: bool) -> None:
        assert slot.worker is not None
        slot.batch_ends.append(self._seq)
        slot.worker.run(entries)
        if with_timeout and slot.timeout_watch is None:
            self._watch_timeouts(slot)

    def cancel(self, task: Task) -> None:
        """Stop a task a worker holds; its result comes back as usual."""
        for slot in self.slots:
            if task.seq in slot.inflight and slot.worker is not None:
                worker = slot.worker
                # The worker skips it if not begun, or kills itself if it
                # runs it; only a worker that cannot answer is killed here.
                worker.cancel(task.seq)
                assert self._loop is not None
                self._loop.call_later(CANCEL_GRACE_SECONDS, self._force_cancel, slot, worker, task)
                return

    def _force_cancel(self, slot: Slot, worker: WorkerProcess, task: Task) -> None:
        if slot.worker is worker and slot.inflight.get(task.seq) is task:
            log.warning("worker %d did not honour a cancel: killing it", worker.pid)
            worker.kill()

    # --- workers ---------------------------------------------------------------------

    def _spawn(self, slot: Slot) -> None:
        assert self._loop is not None
        worker = WorkerProcess(
            self._loop, self._task_env, partial(self._worker_events, slot), partial(self._worker_exit, slot),
            self._values_dir,
        )
        slot.worker = worker
        try:
            worker.spawn()
        except OSError as exc:
            slot.worker = None  # no process to wait for at shutdown
            self._startup_failure = f"cannot start a python worker: {exc}"
            assert self._all_ready is not None
            self._all_ready.set()
            return
        self._reaper.register(worker.pid)

    def _worker_events(self, slot: Slot, worker: WorkerProcess, events: list[Any]) -> None:
        if slot.worker is not worker:
            return
        inflight = slot.inflight
        done: Done = []
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
                    result = _python_result(task, OUTCOME_OK, value, "", "", started, ended)
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
            self._on_settled(done)

    def _ev_error(self, slot: Slot, event: list[Any], done: Done) -> None:
        kind, seq, error, tb, started, ended = event
        task = slot.inflight.pop(seq)
        self._task_seconds = 0.7 * self._task_seconds + 0.3 * (ended - started)
        outcome = OUTCOME_TOO_BIG if kind == EV_TOO_BIG else OUTCOME_ERROR
        done.append((task, _python_result(task, outcome, None, error, tb, started, ended)))

    def _ev_ok_spooled(self, slot: Slot, event: list[Any], done: Done) -> None:
        _, seq, part, size, started, ended = event
        task = slot.inflight.pop(seq)
        self._task_seconds = 0.7 * self._task_seconds + 0.3 * (ended - started)
        run_as = self._task_env.run_as
        if run_as is not None:  # the worker is USER's: its word is no path for the agent to take
            assert slot.worker is not None
            try:
                part = adopt_part(part, size, slot.worker.directory, self._values_dir, run_as)
            except OSError as exc:
                error = f"the agent refused the value's spool file: {exc}"
                done.append((task, _python_result(task, OUTCOME_ERROR, None, error, "", started, ended)))
                return
        elif not _own_part(part, size, self._values_dir):
            # Task code shares the worker's pipe: a forged event must not
            # make the journal move some other file of the agent's user.
            error = f"the agent refused the value's spool file: {part!r} is not a part file of {size} bytes in its spool"
            done.append((task, _python_result(task, OUTCOME_ERROR, None, error, "", started, ended)))
            return
        task.value_part = Path(part)
        stdout, stderr = task.tails()
        result = TaskResult(task.id, OUTCOME_OK, None, "", "", None, None, started, ended, stdout, stderr, size)
        done.append((task, result))

    def _ev_skipped(self, slot: Slot, event: list[Any], done: Done) -> None:
        task = slot.inflight.pop(event[1], None)
        if task is None:
            return  # a cancel that crossed the task's result: the result won
        task.stage = Stage.DONE  # it never ran: no started report
        outcome, error = task.kill or (OUTCOME_STOPPED, ERROR_SHUTDOWN)
        done.append((task, plain_result(task, outcome, error=error)))

    def _ev_started(self, slot: Slot, event: list[Any], done: Done) -> None:
        task = slot.inflight.get(event[1])
        if task is not None:
            self._on_started(task)

    def _ev_progress(self, slot: Slot, event: list[Any], done: Done) -> None:
        _, seq, fraction, message = event
        task = slot.inflight.get(seq)
        if task is not None:
            self._on_progress(task, fraction, message)

    def _ev_output(self, slot: Slot, event: list[Any], done: Done) -> None:
        _, seq, stream, data = event
        task = slot.inflight.get(seq)
        if task is not None:
            self._on_output(task, stream, data)

    def _ev_ready(self, slot: Slot, event: list[Any], done: Done) -> None:
        assert slot.worker is not None
        slot.worker.ready = True
        slot.failed_starts = 0
        if self._all_ready is not None and all(s.worker_ready for s in self.slots):
            self._all_ready.set()
        self._on_settled([])

    _event_handlers: dict[int, Callable[[WorkerPool, Slot, list[Any], Done], None]] = {
        EV_ERROR: _ev_error,
        EV_TOO_BIG: _ev_error,
        EV_OK_SPOOLED: _ev_ok_spooled,
        EV_SKIPPED: _ev_skipped,
        EV_STARTED: _ev_started,
        EV_PROGRESS: _ev_progress,
        EV_OUTPUT: _ev_output,
        EV_READY: _ev_ready,
    }

    def _watch_timeouts(self, slot: Slot) -> None:
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
                    task.kill = timeout_kill(task.spec.timeout)
                    worker.kill()
                    return
            else:
                delay = min(delay, remaining)
        assert self._loop is not None
        slot.timeout_watch = self._loop.call_later(delay, self._watch_timeouts, slot)

    def _worker_exit(self, slot: Slot, worker: WorkerProcess, returncode: int) -> None:
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
        done: Done = []
        requeue: list[Task] = []
        for task in unfinished:
            started = victim_started if task.seq == victim else 0.0
            if task.kill is not None:
                if task.seq != victim:
                    task.stage = Stage.DONE  # it never began here: no started report
                outcome, error = task.kill
                done.append((task, _python_result(task, outcome, None, error, "", started, now)))
            elif self._closing:
                done.append((task, plain_result(task, OUTCOME_STOPPED, error=ERROR_SHUTDOWN)))
            elif task.seq == victim and not worker.killed_by_agent:
                done.append((task, _crash_result(task, returncode, victim_started, now)))
            else:
                # Never began, or finished but its result died with the
                # worker, or was hit by a kill meant for another task.
                requeue.append(task)
        for task in requeue:
            task.release()
            task.stage = Stage.QUEUED
            task.seq = 0
        self._on_requeue(requeue)
        slot.worker = None
        if not worker.ready:
            slot.failed_starts += 1
            log.error("a python worker exited with code %d before it was ready", returncode)
            if self._all_ready is not None and not self._all_ready.is_set():
                self._startup_failure = (
                    f"python worker exited with code {returncode} before it was ready (see the agent's stderr)"
                )
                self._all_ready.set()
        elif not self._closing:
            log.info("python worker %d %s; starting a new one", worker.pid, exit_text(returncode))
        if not self._closing and not self._startup_failure:
            delay = WORKER_RESPAWN_DELAY if slot.failed_starts else 0.0
            assert self._loop is not None
            self._loop.call_later(delay, self._respawn, slot)
        self._on_settled(done)

    def _respawn(self, slot: Slot) -> None:
        if slot.worker is None and not self._closing:
            self._spawn(slot)


def _own_part(part: Any, size: Any, values_dir: Path) -> bool:
    """Whether a worker's spooled value names a regular part file directly
    in the agent's spool, of the size it says."""
    if not isinstance(part, str) or not isinstance(size, int):
        return False
    path = Path(part)
    if path.parent != values_dir or not path.name.endswith(PART_SUFFIX):
        return False
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == size


def _entry(seq: int, spec: TaskSpec) -> tuple[Any, ...]:
    """A task as a worker batch entry."""
    if spec.kind == KIND_CALL:
        return (seq, CALL, spec.fn, spec.args, spec.kwargs, spec.env, spec.cwd, spec.id, spec.max_result)
    return (seq, PICKLE, spec.payload, spec.args, spec.kwargs, spec.env, spec.cwd, spec.id, spec.max_result)


def _python_result(
    task: Task, outcome: str, value: Any, error: str, tb: str, started: float, ended: float
) -> TaskResult:
    stdout, stderr = task.tails()
    return TaskResult(task.id, outcome, value, error, tb, None, None, started, ended, stdout, stderr)


def _crash_result(task: Task, returncode: int, started: float, ended: float) -> TaskResult:
    stdout, stderr = task.tails()
    return TaskResult(
        id=task.id,
        outcome=OUTCOME_CRASHED,
        error=f"worker {exit_text(returncode)}",
        exit_code=returncode if returncode >= 0 else None,
        signal=-returncode if returncode < 0 else None,
        started=started,
        ended=ended,
        stdout=stdout,
        stderr=stderr,
    )
