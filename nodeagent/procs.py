"""Process plumbing for the agent's children: process groups, exit watches,
helper interpreters, and the reaper that outlives a killed agent.

Imported by every worker process too, so it stays light: no asyncio at run
time, no engine imports.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger("shoal.agent.procs")

_PR_SET_PDEATHSIG = 1
EXIT_POLL_SECONDS = 0.02  # only where pidfd is missing
REAPER_TABLE_ENTRIES = 4096  # process groups an agent can cover at once


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


def killed_text(signum: int) -> str:
    return f"killed by signal {signum} ({signal_name(signum)})"


def exit_text(returncode: int) -> str:
    """How a process ended, from its ``Popen`` return code."""
    if returncode < 0:
        return killed_text(-returncode)
    return f"exited with code {returncode}"


class FdWatcher:
    """Readable callbacks for the agent's many short-lived descriptors (task
    pipes, pidfds), through an epoll of its own that the event loop watches
    as one descriptor.

    Adding or removing a descriptor is then one system call rather than a
    trip through asyncio's selector bookkeeping (a few dozen Python calls),
    and a shell task adds and removes three. Where there is no epoll it
    hands everything to the loop.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        self._callbacks: dict[int, tuple[Callable[..., object], tuple[Any, ...]]] = {}
        if self._epoll is not None:
            loop.add_reader(self._epoll.fileno(), self._ready)

    def add_reader(self, fd: int, callback: Callable[..., object], *args: Any) -> None:
        if self._epoll is None:
            self._loop.add_reader(fd, callback, *args)
            return
        self._epoll.register(fd, select.EPOLLIN)
        self._callbacks[fd] = (callback, args)

    def remove_reader(self, fd: int) -> None:
        """Stop watching ``fd``; call it before closing ``fd``. (Closing alone
        is not enough: the kernel may hold a pidfd's file open after the
        close, and its stale watch would then fire for whichever new
        descriptor reuses the number.)"""
        if self._epoll is None:
            self._loop.remove_reader(fd)
        elif self._callbacks.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    def _ready(self) -> None:
        assert self._epoll is not None
        callbacks = self._callbacks
        ready = [(fd, callbacks.get(fd)) for fd, _ in self._epoll.poll(0)]
        for fd, entry in ready:
            # Skip one removed, or reused for a new descriptor, by an earlier
            # callback of this batch.
            if entry is not None and callbacks.get(fd) is entry:
                entry[0](*entry[1])

    def close(self) -> None:
        if self._epoll is not None:
            self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._callbacks.clear()


def watch_exit(
    loop: asyncio.AbstractEventLoop, pid: int, callback: Callable[[], None], readers: FdWatcher | None = None
) -> None:
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
        if readers is None:
            loop.remove_reader(pidfd)
        else:
            readers.remove_reader(pidfd)
        os.close(pidfd)
        callback()

    (loop if readers is None else readers).add_reader(pidfd, on_readable)


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
            loop.call_later(EXIT_POLL_SECONDS, check)

    loop.call_later(EXIT_POLL_SECONDS, check)


# A helper imports what the agent can import (its packages, the repo root
# under test): the agent's sys.path travels in this variable, which the
# helper removes again so that a task's own subprocesses do not inherit it
# (PYTHONPATH would leak this interpreter's site-packages into them).
_PATH_VARIABLE = "SHOAL_WORKER_SYS_PATH"


def helper_command(module: str, entry: str, *args: str) -> list[str]:
    """argv that runs ``<module>.<entry>()`` in a fresh interpreter.

    ``-c`` rather than ``-m``: under ``-m`` the module would load twice (as
    __main__ and under its own name), and in a worker ``progress()`` would
    see the wrong copy.
    """
    bootstrap = (
        "import os, sys; "
        f"sys.path[1:1] = os.environ.pop({_PATH_VARIABLE!r}).split(os.pathsep); "
        f"from {module} import {entry}; {entry}()"
    )
    return [sys.executable, "-c", bootstrap, *args]


def helper_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: the agent's environment) and the variable that
    carries the agent's sys.path."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(dict.fromkeys([package_root] + [p for p in sys.path if p]))
    return dict(os.environ if base is None else base, **{_PATH_VARIABLE: path})


class GroupReaper:
    """A helper process that SIGKILLs the agent's task process groups if the agent dies.

    PR_SET_PDEATHSIG reaches a direct child only, and costs a slow fork per
    spawn; a task's own children would outlive a SIGKILLed agent. The agent
    keeps the live group ids in a small table of shared memory that the
    reaper reads only once: when its pipe from the agent reaches EOF (the
    agent's death, or its orderly close), it kills every group still listed.
    A register or unregister is one 4-byte store: no system call, and no
    wakeup of the reaper, on the path of every task.

    Best effort: if it cannot start, the agent runs without it.
    """

    def __init__(self, capacity: int = REAPER_TABLE_ENTRIES) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._fd = -1  # write end of the liveness pipe
        self._capacity = capacity
        self._table: memoryview | None = None  # int32 group ids; 0 is a free entry
        self._mmap: mmap.mmap | None = None
        self._entry: dict[int, int] = {}  # pgid -> its entry in the table
        self._free: list[int] = []
        self._warned_full = False

    def start(self) -> None:
        size = self._capacity * 4
        table_fd = _shared_memory_fd(size)
        read_end, self._fd = os.pipe()
        try:
            self._proc = subprocess.Popen(
                helper_command(__name__, "reaper_main", str(table_fd), str(size)),
                stdin=read_end,
                pass_fds=(table_fd,),
                start_new_session=True,  # not hit by the terminal's Ctrl-C meant for the agent
                env=helper_env(),
            )
        except OSError as exc:
            log.warning("cannot start the process group reaper: %s", exc)
            os.close(self._fd)
            self._fd = -1
        finally:
            os.close(read_end)
        if self._fd >= 0:
            self._mmap = mmap.mmap(table_fd, size)
            self._table = memoryview(self._mmap).cast("i")
            self._free = list(range(self._capacity - 1, -1, -1))
        os.close(table_fd)  # the mapping and the reaper's copy keep it alive

    def register(self, pgid: int) -> None:
        table = self._table
        if table is None:
            return
        if not self._free:
            if not self._warned_full:
                self._warned_full = True
                log.warning("process group reaper table full (%d groups): new groups are not covered", self._capacity)
            return
        entry = self._free.pop()
        table[entry] = pgid
        self._entry[pgid] = entry

    def unregister(self, pgid: int) -> None:
        """Call before reaping the group leader, while its pid is still reserved:
        a recycled pid must never be on the list."""
        entry = self._entry.pop(pgid, None)
        if entry is not None and self._table is not None:
            self._table[entry] = 0
            self._free.append(entry)

    def close(self, timeout: float) -> None:
        """Close the pipe and reap the reaper (it exits at once on the EOF,
        killing whatever is still registered)."""
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
        if self._table is not None and self._mmap is not None:
            self._table.release()
            self._mmap.close()
            self._table = self._mmap = None


def _shared_memory_fd(size: int) -> int:
    """A zero-filled file of ``size`` bytes that lives only in memory (Linux),
    or an unlinked temporary file elsewhere."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("shoal-reaper", os.MFD_CLOEXEC)
    else:
        import tempfile

        with tempfile.TemporaryFile() as file:
            fd = os.dup(file.fileno())
    os.ftruncate(fd, size)
    return fd


def reaper_main() -> None:
    """Entry point of the reaper process (started by ``GroupReaper.start``)."""
    table_fd, size = int(sys.argv[1]), int(sys.argv[2])
    table = memoryview(mmap.mmap(table_fd, size)).cast("i")
    while sys.stdin.buffer.read(65536):
        pass  # nothing is ever written: only the EOF matters
    for pgid in table:
        if pgid > 0:
            kill_group(pgid)
