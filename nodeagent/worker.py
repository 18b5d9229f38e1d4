"""Pre-started Python worker processes: the child's run loop and the agent's handle.

One worker per slot is started ahead of time, so a call task costs no
interpreter start. The agent pipes BATCHES of tasks to a worker; the worker
runs them in order and writes the results back batched: when its input batch
is done, or every few milliseconds while a long task runs.

Wire: msgpack over two os pipes, each message one msgpack array.

    agent -> worker   (CMD_RUN, [(seq, kind, target, args, kwargs, env, cwd), ...])
                      (CMD_CANCEL, seq)   (CMD_STOP,)
    worker -> agent   (EV_READY, pid)  (EV_OK, seq, value, started, ended)
                      (EV_ERROR, seq, error, traceback, started, ended)
                      (EV_SKIPPED, seq)  (EV_STARTED, seq, started)
                      (EV_PROGRESS, seq, fraction, message)  (EV_OUTPUT, seq, stream, data)

Results come back in the order the tasks were sent. A 16-byte shared memory
cell holds the seq of the task running now and its start time: the agent
reads it to enforce timeouts even while a task holds the GIL in C code, and to
blame the right task when a worker dies (a crash loses unflushed results).

This module is imported by every worker process, so it stays light: no
asyncio, no engine imports.
"""

from __future__ import annotations

import ctypes
import importlib
import io
import logging
import mmap
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgpack

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger("shoal.agent.worker")

# Commands, agent to worker.
CMD_RUN = 1
CMD_CANCEL = 2
CMD_STOP = 3

# Events, worker to agent.
EV_READY = 0
EV_OK = 1
EV_ERROR = 2
EV_SKIPPED = 3  # cancelled or stopped before it started: it never ran (or is a late answer)
EV_STARTED = 4
EV_PROGRESS = 5
EV_OUTPUT = 6

# Kinds of a batch entry.
CALL = 0  # target is "package.module:function"
PICKLE = 1  # target is a cloudpickled callable

# How often the worker's io thread flushes results, output and progress while
# a task runs, and how long a task must run before the worker says it started
# (short tasks are reported started together with their result).
TICK_SECONDS = 0.005
STARTED_AFTER_SECONDS = 0.002
# Flush pending results early when they grow past this, so a batch of large
# values does not pile up in memory.
FLUSH_BYTES = 1 << 20
# A single result larger than this becomes an error: it could never be sent
# to the console in one frame anyway.
MAX_EVENT_BYTES = 16 * 1024 * 1024
READ_BYTES = 1 << 20
FUNCTION_CACHE_SIZE = 1024

_SHM_LAYOUT = struct.Struct("=qd")  # seq of the running task, its start time
_SHM_BYTES = _SHM_LAYOUT.size
_PR_SET_PDEATHSIG = 1


# --- process plumbing, shared with shell tasks ----------------------------------


def set_parent_death_signal(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (even by SIGKILL).

    Exits at once if the parent is already gone (it died before the prctl).
    A no-op where prctl does not exist; the worker's EOF check still applies.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(0)


def kill_group(pgid: int) -> None:
    """SIGKILL a whole process group; a group already gone is fine."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def watch_exit(loop: asyncio.AbstractEventLoop, pid: int, callback: Callable[[], None]) -> None:
    """Call ``callback`` once when ``pid`` exits, WITHOUT reaping it.

    The zombie keeps its pid (and so its process group id) reserved, so the
    callback may kill the group's leftovers before reaping: no risk of
    signalling a recycled pid.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        _poll_exit(loop, pid, callback)
        return

    def on_readable() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        callback()

    loop.add_reader(pidfd, on_readable)


def _poll_exit(loop: asyncio.AbstractEventLoop, pid: int, callback: Callable[[], None]) -> None:
    # Fallback without pidfd (not Linux): poll with WNOWAIT, which leaves the
    # child unreaped like the pidfd path does.
    def check() -> None:
        try:
            exited = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            exited = True
        if exited:
            callback()
        else:
            loop.call_later(0.02, check)

    loop.call_later(0.02, check)


# A helper imports what the agent can import (its packages, the repo root
# under test): the agent's sys.path travels in this variable, which the
# helper removes again so that a task's own subprocesses do not inherit it
# (PYTHONPATH would leak this interpreter's site-packages into them).
_PATH_VARIABLE = "SHOAL_WORKER_SYS_PATH"


def _helper_command(entry: str, *args: str) -> list[str]:
    """argv that runs ``nodeagent.worker.<entry>()`` in a fresh interpreter.

    ``-c`` rather than ``-m``: under ``-m`` this module would load twice
    (as __main__ and as nodeagent.worker) and ``progress()`` would see the
    wrong copy.
    """
    bootstrap = (
        "import os, sys; "
        f"sys.path[1:1] = os.environ.pop({_PATH_VARIABLE!r}).split(os.pathsep); "
        f"from nodeagent.worker import {entry}; {entry}()"
    )
    return [sys.executable, "-c", bootstrap, *args]


def _helper_env() -> dict[str, str]:
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(dict.fromkeys([package_root] + [p for p in sys.path if p]))
    return dict(os.environ, **{_PATH_VARIABLE: path})


class GroupReaper:
    """A helper process that SIGKILLs the agent's task process groups if the agent dies.

    PR_SET_PDEATHSIG reaches a direct child only, and costs a slow fork per
    spawn; a task's own children would outlive a SIGKILLed agent. The reaper
    reads group ids from a pipe ("+pgid" / "-pgid" lines); the pipe's EOF
    (the agent's death, or its orderly close) makes it kill every group still
    registered. Best effort: if it cannot start, the agent runs without it.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._fd = -1

    def start(self) -> None:
        read_end, self._fd = os.pipe()
        try:
            self._proc = subprocess.Popen(
                _helper_command("reaper_main"),
                stdin=read_end,
                start_new_session=True,  # not hit by the terminal's Ctrl-C meant for the agent
                env=_helper_env(),
            )
        except OSError as exc:
            log.warning("cannot start the process group reaper: %s", exc)
            os.close(self._fd)
            self._fd = -1
        finally:
            os.close(read_end)
        if self._fd >= 0:
            os.set_blocking(self._fd, False)

    def register(self, pgid: int) -> None:
        self._send(b"+%d\n" % pgid)

    def unregister(self, pgid: int) -> None:
        self._send(b"-%d\n" % pgid)

    def _send(self, line: bytes) -> None:
        if self._fd < 0:
            return
        try:
            os.write(self._fd, line)
        except (BlockingIOError, BrokenPipeError) as exc:
            # A line is a few bytes: the pipe is only full if the reaper hangs.
            log.warning("process group reaper not reachable (%s): continuing without it", exc)
            os.close(self._fd)
            self._fd = -1

    def close(self, timeout: float) -> None:
        """Close the pipe and reap the reaper (it exits at once on the EOF)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None


def reaper_main() -> None:
    """Entry point of the reaper process (started by ``GroupReaper.start``)."""
    groups: set[int] = set()
    for line in sys.stdin.buffer:
        pgid = int(line[1:])
        if line[:1] == b"+":
            groups.add(pgid)
        else:
            groups.discard(pgid)
    for pgid in groups:
        kill_group(pgid)


# --- the agent's handle on one worker ---------------------------------------------


class WorkerProcess:
    """The agent's end of one worker: spawn, send commands, read events, kill.

    Events are handed to ``on_events`` as they arrive; ``on_exit`` is called
    once, after the dead worker's last events were read, with its return code.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_events: Callable[[WorkerProcess, list[Any]], None],
        on_exit: Callable[[WorkerProcess, int], None],
    ) -> None:
        self._loop = loop
        self._on_events = on_events
        self._on_exit = on_exit
        self._unpacker = msgpack.Unpacker(raw=False, use_list=True, max_buffer_size=2 * MAX_EVENT_BYTES + READ_BYTES)
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._out: list[bytes] = []  # command bytes the pipe would not take yet
        self._proc: subprocess.Popen[bytes] | None = None
        self._cmd_fd = -1
        self._res_fd = -1
        self._shm: mmap.mmap | None = None
        self.ready = False
        self.killed_by_agent = False
        self.returncode: int | None = None
        self.exited: asyncio.Future[int] = loop.create_future()

    @property
    def pid(self) -> int:
        return self._proc.pid if self._proc is not None else 0

    def spawn(self) -> None:
        cmd_r, cmd_w = os.pipe()
        res_r, res_w = os.pipe()
        with tempfile.TemporaryFile() as shm_file:
            shm_file.truncate(_SHM_BYTES)
            shm_fd = shm_file.fileno()
            self._shm = mmap.mmap(shm_fd, _SHM_BYTES)
            try:
                self._proc = subprocess.Popen(
                    _helper_command("main", str(cmd_r), str(res_w), str(shm_fd), str(os.getpid())),
                    stdin=subprocess.DEVNULL,
                    pass_fds=(cmd_r, res_w, shm_fd),
                    start_new_session=True,  # its own process group: a kill takes the task's children too
                    env=_helper_env(),
                )
            finally:
                os.close(cmd_r)
                os.close(res_w)
        self._cmd_fd, self._res_fd = cmd_w, res_r
        os.set_blocking(cmd_w, False)
        os.set_blocking(res_r, False)
        self._loop.add_reader(res_r, self._readable)
        watch_exit(self._loop, self._proc.pid, self._exited)

    # --- commands -------------------------------------------------------------

    def run(self, entries: list[tuple[Any, ...]]) -> None:
        self._send(self._pack((CMD_RUN, entries)))

    def cancel(self, seq: int) -> None:
        self._send(self._pack((CMD_CANCEL, seq)))

    def stop(self) -> None:
        """Skip every task not started yet; the running one finishes."""
        self._send(self._pack((CMD_STOP,)))

    def close(self) -> None:
        """Close the command pipe: an idle worker exits on the EOF."""
        if self._cmd_fd >= 0:
            if self._out:
                self._loop.remove_writer(self._cmd_fd)
                self._out.clear()
            os.close(self._cmd_fd)
            self._cmd_fd = -1

    def kill(self) -> None:
        if self._proc is not None and self.returncode is None:
            self.killed_by_agent = True
            kill_group(self._proc.pid)

    def current(self) -> tuple[int, float]:
        """(seq, start time) of the task running now; seq 0 when none."""
        if self._shm is None:
            return 0, 0.0
        # The worker writes the start time before the seq, so a torn read
        # pairs a seq with a LATER start: a timeout is never enforced early.
        while True:
            seq, started = _SHM_LAYOUT.unpack_from(self._shm)
            if _SHM_LAYOUT.unpack_from(self._shm)[0] == seq:
                return seq, started

    def read_now(self) -> None:
        """Read and hand on every event already in the pipe (e.g. before a kill)."""
        if self._res_fd >= 0:
            self._readable()

    def _send(self, data: bytes) -> None:
        if self._cmd_fd < 0:
            return
        if self._out:
            self._out.append(data)
            return
        try:
            written = os.write(self._cmd_fd, data)
        except BlockingIOError:
            written = 0
        except BrokenPipeError:
            return  # the worker is dying; its exit is handled by the watch
        if written < len(data):
            self._out.append(data[written:])
            self._loop.add_writer(self._cmd_fd, self._writable)

    def _writable(self) -> None:
        data = b"".join(self._out)
        self._out.clear()
        try:
            written = os.write(self._cmd_fd, data)
        except BlockingIOError:
            written = 0
        except BrokenPipeError:
            self._loop.remove_writer(self._cmd_fd)
            return
        if written < len(data):
            self._out.append(data[written:])
        else:
            self._loop.remove_writer(self._cmd_fd)

    # --- events -----------------------------------------------------------------

    def _readable(self) -> None:
        while True:
            try:
                data = os.read(self._res_fd, READ_BYTES)
            except BlockingIOError:
                return
            if not data:
                # EOF: the worker is gone or going; its exit watch finishes up.
                self._loop.remove_reader(self._res_fd)
                os.close(self._res_fd)
                self._res_fd = -1
                return
            self._unpacker.feed(data)
            events = list(self._unpacker)
            if events:
                self._on_events(self, events)
            if len(data) < READ_BYTES:
                return

    def _exited(self) -> None:
        assert self._proc is not None
        self.read_now()  # what the worker wrote before it died is still in the pipe
        # Kill leftovers of its tasks while the zombie still reserves the pgid.
        kill_group(self._proc.pid)
        returncode = self._proc.wait()
        self.returncode = returncode
        if self._res_fd >= 0:
            self._loop.remove_reader(self._res_fd)
            os.close(self._res_fd)
            self._res_fd = -1
        self.close()
        self._on_exit(self, returncode)  # may still read current() to name the task it died in
        if self._shm is not None:
            self._shm.close()
            self._shm = None
        if not self.exited.done():
            self.exited.set_result(returncode)


# --- the worker process ------------------------------------------------------------


class _Capture(io.TextIOBase):
    """sys.stdout / sys.stderr inside a worker: collects what a task prints."""

    def __init__(self, loop: _WorkerLoop, stream: str) -> None:
        super().__init__()
        self._worker = loop
        self.stream = stream
        self.parts: list[str] = []
        self.size = 0

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self._worker.lock:
            self.parts.append(text)
            self.size += len(text)
            if self.size > FLUSH_BYTES:
                self._worker.emit_output_locked()
                self._worker.flush_locked()
        return len(text)

    def take(self) -> bytes:
        data = "".join(self.parts).encode("utf-8", "replace")
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

    def __init__(self, cmd_fd: int, res_fd: int, shm: mmap.mmap) -> None:
        self.lock = threading.RLock()  # re-entrant: a __del__ that prints may run inside a locked section
        self._work = threading.Condition(self.lock)
        self._cmd_fd = cmd_fd
        self._res_fd = res_fd
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
        self._pack = msgpack.Packer(use_bin_type=True).pack
        view = memoryview(shm)
        self._seq_cell = view[0:8].cast("q")
        self._start_cell = view[8:16].cast("d")  # matches _SHM_LAYOUT
        self.stdout = _Capture(self, "stdout")
        self.stderr = _Capture(self, "stderr")

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
        for seq, kind, target, args, kwargs, env, cwd in batch:
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
            try:
                fn = funcs.get(target) or self._resolve(kind, target)
                if env is None and cwd is None:
                    value = fn(*args, **kwargs)
                else:
                    value = self._call_in(env, cwd, fn, args, kwargs)
            except BaseException as exc:  # SystemExit and KeyboardInterrupt in a task are its errors too
                event = self._error_event(seq, exc, started, now())
            else:
                event = self._ok_event(seq, value, started, now())
            with lock:
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

    def _ok_event(self, seq: int, value: Any, started: float, ended: float) -> bytes:
        try:
            event = self._pack((EV_OK, seq, value, started, ended))
        except (TypeError, ValueError, OverflowError) as exc:
            error = f"TypeError: return value of type {type(value).__name__} is not msgpack-serialisable: {exc}"
            return self._pack((EV_ERROR, seq, error, "", started, ended))
        if len(event) > MAX_EVENT_BYTES:
            error = f"return value of {len(event)} bytes exceeds the limit of {MAX_EVENT_BYTES} bytes"
            return self._pack((EV_ERROR, seq, error, "", started, ended))
        return event

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
            traceback.print_exc(file=sys.__stderr__)
            os._exit(70)

    def _io_loop(self) -> None:
        unpacker = msgpack.Unpacker(raw=False, use_list=True, max_buffer_size=0)
        poller = select.poll()
        poller.register(self._cmd_fd, select.POLLIN)
        handlers: dict[int, Callable[[list[Any]], None]] = {
            CMD_RUN: self._on_run,
            CMD_CANCEL: self._on_cancel,
            CMD_STOP: self._on_stop,
        }
        while True:
            if poller.poll(TICK_SECONDS * 1000 if self._busy else None):
                data = os.read(self._cmd_fd, READ_BYTES)
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


def progress(fraction: float | None, message: str = "") -> None:
    """Report a running task's progress (0.0 .. 1.0, or None when unknown).

    Only the latest report is sent, every few milliseconds, so calling this in
    a tight loop is cheap. Outside a Shoal worker it does nothing.
    """
    worker = _active
    if worker is None:
        return
    worker.report_progress(None if fraction is None else float(fraction), str(message))


def main() -> None:
    """Entry point of a worker process (started by ``WorkerProcess.spawn``)."""
    global _active
    cmd_fd, res_fd, shm_fd, parent_pid = (int(arg) for arg in sys.argv[1:5])
    set_parent_death_signal(parent_pid)
    for fd in (cmd_fd, res_fd, shm_fd):
        # Task subprocesses must not hold the agent's pipes open.
        os.set_inheritable(fd, False)
    shm = mmap.mmap(shm_fd, _SHM_BYTES)
    os.close(shm_fd)
    worker = _WorkerLoop(cmd_fd, res_fd, shm)
    _active = worker
    sys.stdout = worker.stdout
    sys.stderr = worker.stderr
    worker.serve()
