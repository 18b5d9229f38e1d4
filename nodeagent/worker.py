"""A pre-started Python worker process: the child's side of ``nodeagent.workerwire``.

One worker per slot is started ahead of time, so a call task costs no
interpreter start. The agent (``nodeagent.workerproc``) pipes BATCHES of
tasks to a worker; the worker runs them in order and writes the results back
batched: when its input batch is done, or every few milliseconds while a long
task runs.

This module is imported by every worker process, so it stays light: no
asyncio, no engine imports.
"""

from __future__ import annotations

import importlib
import io
import mmap
import os
import pickle
import select
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from nodeagent.procs import set_parent_death_signal
from nodeagent.taskenv import attempt_parts
from nodeagent.values import over_limit_error, write_part
from nodeagent.workerwire import (
    CALL,
    CMD_CANCEL,
    CMD_RUN,
    CMD_STOP,
    EV_ERROR,
    EV_OK,
    EV_OK_SPOOLED,
    EV_OUTPUT,
    EV_PROGRESS,
    EV_READY,
    EV_SKIPPED,
    EV_STARTED,
    EV_TOO_BIG,
    READ_BYTES,
    SHM_BYTES,
    SPOOL_VALUE_BYTES,
)

# How often the worker's io thread flushes results, output and progress while
# a task runs, and how long a task must run before the worker says it started
# (short tasks are reported started together with their result).
TICK_SECONDS = 0.005
STARTED_AFTER_SECONDS = 0.002
# Flush pending results early when they grow past this, so a batch of large
# values does not pile up in memory.
FLUSH_BYTES = 1 << 20
FUNCTION_CACHE_SIZE = 1024


class _Capture(io.TextIOBase):
    """sys.stdout / sys.stderr inside a worker: collects what a task prints,
    and (``add_bytes``) what it writes to descriptors 1 and 2."""

    def __init__(self, loop: _WorkerLoop, stream: str) -> None:
        super().__init__()
        self._worker = loop
        self.stream = stream
        self.parts: list[bytes] = []
        self.size = 0

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        data = text.encode("utf-8", "replace")
        with self._worker.lock:
            self.add_bytes_locked(data)
        return len(text)

    def add_bytes_locked(self, data: bytes) -> None:
        self.parts.append(data)
        self.size += len(data)
        if self.size > FLUSH_BYTES:
            self._worker.emit_output_locked()
            self._worker.flush_locked()

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        self.size = 0
        return data


def _describe(exc: BaseException) -> str:
    """'ValueError: message' on one line."""
    try:
        text = str(exc).strip()
    except Exception:
        text = ""
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class _WorkerLoop:
    """Runs batches in the main thread; an io thread reads commands and flushes
    results, output and progress while a task runs. ``lock`` guards every
    hand-over between the two, so a cancel cannot race a task's start."""

    def __init__(
        self, cmd_fd: int, res_fd: int, shm: mmap.mmap, out_fd: int, err_fd: int, values_dir: Path
    ) -> None:
        self.lock = threading.RLock()  # re-entrant: a __del__ that prints may run inside a locked section
        self._work = threading.Condition(self.lock)
        self._cmd_fd = cmd_fd
        self._res_fd = res_fd
        self._values_dir = values_dir
        # Read ends of the pipes on descriptors 1 and 2, where a task's
        # subprocesses, C code and os.write land (non-blocking).
        self._out_fd = out_fd
        self._err_fd = err_fd
        self._fd_poll = select.poll()
        self._fd_poll.register(out_fd, select.POLLIN)
        self._fd_poll.register(err_fd, select.POLLIN)
        self._job = ""  # SHOAL_JOB as set now
        self._batches: deque[list[Any]] = deque()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._skip: set[int] = set()
        self._stopping = False
        self._busy = False
        self._current = 0
        self._current_started = 0.0
        self._started_sent = 0
        self._progress: tuple[int, float | None, str] | None = None
        self._funcs: dict[str | bytes, Callable[..., Any]] = {}
        self._pack: Callable[[Any], bytes] = msgpack.Packer(use_bin_type=True).pack
        view = memoryview(shm)
        self._seq_cell = view[0:8].cast("q")
        self._start_cell = view[8:16].cast("d")  # matches SHM_LAYOUT
        self.stdout = _Capture(self, "stdout")
        self.stderr = _Capture(self, "stderr")
        self._fd_captures = {out_fd: self.stdout, err_fd: self.stderr}

    # --- main thread ------------------------------------------------------------

    def serve(self) -> None:
        self._write(self._pack((EV_READY, os.getpid())))
        threading.Thread(target=self._io_thread, name="shoal-worker-io", daemon=True).start()
        while True:
            with self._work:
                if self._pending:
                    self.flush_locked()
                while not self._batches:
                    self._busy = False
                    # Idle: any cancel left in the set named a task that had
                    # already finished.
                    self._skip.clear()
                    self._work.wait()
                batch = self._batches.popleft()
                self._busy = True
            self._run_batch(batch)

    def _run_batch(self, batch: list[Any]) -> None:
        lock = self.lock
        pending = self._pending
        pack = self._pack
        funcs = self._funcs
        now = time.time
        seq_cell = self._seq_cell
        start_cell = self._start_cell
        fd_ready = self._fd_poll.poll
        for seq, kind, target, args, kwargs, env, cwd, attempt_id, max_result in batch:
            with lock:
                if seq in self._skip:
                    self._skip.discard(seq)  # cancelled: the io thread already answered
                    continue
                if self._stopping:
                    pending.append(pack((EV_SKIPPED, seq)))
                    continue
                self._current = seq
                self._current_started = started = now()
                start_cell[0] = started
                seq_cell[0] = seq
            self._set_task_variables(attempt_id)
            try:
                fn = funcs.get(target) or self._resolve(kind, target)
                if env is None and cwd is None:
                    value = fn(*args, **kwargs)
                else:
                    value = self._call_in(env, cwd, fn, args, kwargs)
            except BaseException as exc:  # SystemExit and KeyboardInterrupt in a task are its errors too
                event = self._error_event(seq, exc, started, now())
            else:
                event = self._ok_event(seq, value, max_result, started, now())
            with lock:
                if fd_ready(0):
                    self._read_fds_locked()  # what the task wrote to 1 and 2 is its output
                seq_cell[0] = 0
                self._current = 0
                if self.stdout.size or self.stderr.size:
                    self._emit_output_for(seq)
                if self._progress is not None:
                    self._emit_progress_locked()
                pending.append(event)
                self._pending_bytes += len(event)
                if self._pending_bytes > FLUSH_BYTES:
                    self.flush_locked()

    def _set_task_variables(self, attempt_id: str) -> None:
        # Only what changed: each assignment is a putenv.
        environ = os.environ
        environ["SHOAL_ATTEMPT"] = attempt_id
        parts = attempt_parts(attempt_id)
        job, task = parts if parts is not None else ("", "")
        if job != self._job:
            self._job = job
            if job:
                environ["SHOAL_JOB"] = job
            else:
                environ.pop("SHOAL_JOB", None)
        if task:
            environ["SHOAL_TASK"] = task
        else:
            environ.pop("SHOAL_TASK", None)

    def _read_fds_locked(self) -> None:
        """Move what waits in the descriptor pipes to the running task's
        output; with no task running it is dropped (a leftover background
        process of a finished task)."""
        for fd, capture in self._fd_captures.items():
            while True:
                try:
                    data = os.read(fd, READ_BYTES)
                except BlockingIOError:
                    break
                if not data:
                    break
                if self._current:
                    capture.add_bytes_locked(data)

    def _resolve(self, kind: int, target: str | bytes) -> Callable[..., Any]:
        if kind == CALL:
            assert isinstance(target, str)
            module_name, _, path = target.partition(":")
            obj: Any = importlib.import_module(module_name)
            for part in path.split("."):
                obj = getattr(obj, part)
        else:
            assert isinstance(target, bytes)
            obj = pickle.loads(target)
        if not callable(obj):
            raise TypeError(f"{target!r} is not callable" if kind == CALL else "the pickled object is not callable")
        if len(self._funcs) >= FUNCTION_CACHE_SIZE:
            self._funcs.clear()
        self._funcs[target] = obj
        return obj  # type: ignore[no-any-return]

    @staticmethod
    def _call_in(
        env: dict[str, str] | None, cwd: str | None, fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]
    ) -> Any:
        # A worker serves many tasks: apply the task's env and cwd around the
        # call only, and put the worker's own back afterwards.
        saved_env = {key: os.environ.get(key) for key in env} if env else {}
        saved_cwd = os.getcwd() if cwd is not None else None
        try:
            if env:
                os.environ.update(env)
            if cwd is not None:
                os.chdir(cwd)
            return fn(*args, **kwargs)
        finally:
            for key, old in saved_env.items():
                if old is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = old
            if saved_cwd is not None:
                os.chdir(saved_cwd)

    def _ok_event(self, seq: int, value: Any, max_result: int, started: float, ended: float) -> bytes:
        try:
            event = self._pack((EV_OK, seq, value, started, ended))
        except (TypeError, ValueError, OverflowError) as exc:
            error = f"TypeError: return value of type {type(value).__name__} is not msgpack-serialisable: {exc}"
            return self._pack((EV_ERROR, seq, error, "", started, ended))
        if len(event) <= SPOOL_VALUE_BYTES and len(event) <= max_result:
            return event  # the common case: a small value rides in the result
        encoded = self._pack(value)  # what max_result measures
        del event
        if len(encoded) > max_result:
            return self._pack((EV_TOO_BIG, seq, over_limit_error(len(encoded), max_result), "", started, ended))
        if len(encoded) <= SPOOL_VALUE_BYTES:
            return self._pack((EV_OK, seq, value, started, ended))
        # Too big for a result: the agent keeps it in a spool file and sends
        # it in pieces. Written here, so that it never crosses the pipe.
        try:
            part = write_part(self._values_dir, f"w{os.getpid()}-{seq}", encoded)
        except OSError as exc:
            return self._pack((EV_ERROR, seq, f"the agent cannot keep the value: {exc}", "", started, ended))
        return self._pack((EV_OK_SPOOLED, seq, str(part), len(encoded), started, ended))

    def _error_event(self, seq: int, exc: BaseException, started: float, ended: float) -> bytes:
        tb = exc.__traceback__
        # Drop this loop's own frame: the user's traceback starts at their code.
        lines = traceback.format_exception(type(exc), exc, tb.tb_next if tb is not None else None)
        return self._pack((EV_ERROR, seq, _describe(exc), "".join(lines), started, ended))

    def report_progress(self, fraction: float | None, message: str) -> None:
        with self.lock:
            if self._current:
                self._progress = (self._current, fraction, message)

    # --- shared with the io thread (call with lock held) ------------------------------

    def emit_output_locked(self) -> None:
        if self._current:
            self._emit_output_for(self._current)

    def _emit_output_for(self, seq: int) -> None:
        for capture in (self.stdout, self.stderr):
            if capture.size:
                self._pending.append(self._pack((EV_OUTPUT, seq, capture.stream, capture.take())))

    def _emit_progress_locked(self) -> None:
        assert self._progress is not None
        seq, fraction, message = self._progress
        self._progress = None
        self._pending.append(self._pack((EV_PROGRESS, seq, fraction, message)))

    def flush_locked(self) -> None:
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        self._write(data)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._res_fd, view) :]
        except OSError:
            os._exit(0)  # the agent is gone

    # --- io thread ------------------------------------------------------------------

    def _io_thread(self) -> None:
        try:
            self._io_loop()
        except BaseException:
            traceback.print_exc(file=_agent_stderr)
            _agent_stderr.flush()
            os._exit(70)

    def _io_loop(self) -> None:
        unpacker = msgpack.Unpacker(raw=False, use_list=True, max_buffer_size=0)
        poller = select.poll()
        poller.register(self._cmd_fd, select.POLLIN)
        for fd in self._fd_captures:
            poller.register(fd, select.POLLIN)
        cmd_fd = self._cmd_fd
        handlers: dict[int, Callable[[list[Any]], None]] = {
            CMD_RUN: self._on_run,
            CMD_CANCEL: self._on_cancel,
            CMD_STOP: self._on_stop,
        }
        while True:
            ready = poller.poll(TICK_SECONDS * 1000 if self._busy else None)
            if len(ready) > 1 or (ready and ready[0][0] != cmd_fd):
                with self.lock:
                    self._read_fds_locked()
            if any(fd == cmd_fd for fd, _ in ready):
                data = os.read(cmd_fd, READ_BYTES)
                if not data:
                    os._exit(0)  # the agent closed the pipe or died
                unpacker.feed(data)
                for command in unpacker:
                    handlers[command[0]](command)
            if self._busy:
                self._tick()

    def _tick(self) -> None:
        with self.lock:
            seq = self._current
            if seq:
                if self._started_sent != seq and time.time() - self._current_started >= STARTED_AFTER_SECONDS:
                    self._pending.append(self._pack((EV_STARTED, seq, self._current_started)))
                    self._started_sent = seq
                if self.stdout.size or self.stderr.size:
                    self._emit_output_for(seq)
                if self._progress is not None:
                    self._emit_progress_locked()
            if self._pending:
                self.flush_locked()

    def _on_run(self, command: list[Any]) -> None:
        with self._work:
            self._batches.append(command[1])
            self._busy = True
            self._work.notify()

    def _on_cancel(self, command: list[Any]) -> None:
        seq = command[1]
        with self.lock:
            if seq == self._current:
                # Holding the lock, the task cannot finish or hand over to the
                # next one: the agent reads this seq from the shared cell and
                # reports it cancelled. The group kill takes its children too.
                self.flush_locked()
                os.killpg(os.getpid(), signal.SIGKILL)
            # Not begun (or already done: then its result is ahead of this
            # answer in the stream and the agent ignores the answer).
            self._skip.add(seq)
            self._pending.append(self._pack((EV_SKIPPED, seq)))
            self.flush_locked()

    def _on_stop(self, command: list[Any]) -> None:
        with self.lock:
            self._stopping = True


_active: _WorkerLoop | None = None
_agent_stderr: Any = sys.__stderr__  # the agent's log: for the worker's own failures only


def progress(fraction: float | None, message: str = "") -> None:
    """Report a running task's progress (0.0 .. 1.0, or None when unknown).

    Only the latest report is sent, every few milliseconds, so calling this in
    a tight loop is cheap. Outside a Shoal worker it does nothing.
    """
    worker = _active
    if worker is None:
        return
    value = None if fraction is None else float(fraction)
    if value is not None and value == value:  # not NaN: the wire takes 0.0 .. 1.0 only
        value = min(1.0, max(0.0, value))
    else:
        value = None
    worker.report_progress(value, str(message))


def main() -> None:
    """Entry point of a worker process (started by ``WorkerProcess.spawn``)."""
    global _active, _agent_stderr
    cmd_fd, res_fd, shm_fd, parent_pid = (int(arg) for arg in sys.argv[1:5])
    values_dir = Path(sys.argv[5])
    set_parent_death_signal(parent_pid)
    for fd in (cmd_fd, res_fd, shm_fd):
        # Task subprocesses must not hold the agent's pipes open.
        os.set_inheritable(fd, False)
    shm = mmap.mmap(shm_fd, SHM_BYTES)
    os.close(shm_fd)
    # Descriptors 1 and 2 become pipes this worker reads into the running
    # task's output, so nothing a task writes reaches the agent's log (where
    # it could forge lines). The worker keeps the log for its own failures.
    _agent_stderr = os.fdopen(os.dup(2), "w")
    read_ends = []
    for target in (1, 2):
        read_end, write_end = os.pipe()
        os.dup2(write_end, target)  # inheritable: the task's subprocesses write there too
        os.close(write_end)
        os.set_blocking(read_end, False)
        read_ends.append(read_end)
    worker = _WorkerLoop(cmd_fd, res_fd, shm, read_ends[0], read_ends[1], values_dir)
    _active = worker
    sys.stdout = worker.stdout
    sys.stderr = worker.stderr
    worker.serve()
