"""Process plumbing for the agent's children: process groups, exit watches,
helper interpreters, and the reaper that outlives a killed agent.

Imported by every worker process too, so it stays light: no asyncio at run
time, no engine imports.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger("shoal.agent.procs")

_PR_SET_PDEATHSIG = 1
EXIT_POLL_SECONDS = 0.02  # only where pidfd is missing


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


def helper_env() -> dict[str, str]:
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
                helper_command(__name__, "reaper_main"),
                stdin=read_end,
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
