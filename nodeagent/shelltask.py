"""Shell tasks: one subprocess in its own process group, its output pipes,
its ``::shoal-progress`` lines, its exit and its timeout.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from nodeagent.procs import FdWatcher, GroupReaper, kill_group, killed_text, watch_exit
from nodeagent.protocol import (
    OUTCOME_ERROR,
    OUTCOME_OK,
    OUTCOME_TOO_BIG,
    SHELL_PROGRESS_PREFIX,
    TaskResult,
    TaskSpec,
)
from nodeagent.runas import spawn_as
from nodeagent.taskenv import TaskEnvironment
from nodeagent.values import ShellValue, over_limit_error

SHELL_READ_BYTES = 65536
MAX_PROGRESS_LINE = 4096


class ShellRun:
    """One shell task's subprocess. What it writes goes to ``on_output`` and
    ``on_progress`` as it comes; ``on_exit`` hears the return code once every
    pipe is read and the process group is gone."""

    def __init__(
        self,
        spec: TaskSpec,
        loop: asyncio.AbstractEventLoop,
        readers: FdWatcher,
        reaper: GroupReaper,
        task_env: TaskEnvironment,
        *,
        on_output: Callable[[str, bytes], None],
        on_progress: Callable[[float | None, str], None],
        on_exit: Callable[[int], None],
    ) -> None:
        self._spec = spec
        self._loop = loop
        self._readers = readers
        self._reaper = reaper
        self._task_env = task_env
        self._directory = ""  # the task's own, removed when it ends
        self._on_output = on_output
        self._on_progress = on_progress
        self._on_exit = on_exit
        self.pid = 0
        self._popen: subprocess.Popen[bytes] | None = None  # only where posix_spawn could not be used
        self._reaped = False
        self._pipes: dict[int, str] = {}  # fd -> stream name, open ones
        self._progress = ProgressFilter()
        self._timer: asyncio.TimerHandle | None = None
        self.started = 0.0

    def start(self) -> str:
        """Spawn the process; return an error line if it could not start."""
        spec = self._spec
        argv = spec.argv if spec.argv is not None else ["/bin/sh", "-c", spec.shell or ""]
        self.started = time.time()
        try:
            self._directory = self._task_env.task_directory()
        except OSError as exc:
            return f"cannot create the task's directory: {exc}"
        env, search_path = self._task_env.shell_env(spec, self._directory)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            if self._task_env.run_as is None:
                self.pid, self._popen = spawn(argv, env, search_path, spec.cwd or self._directory, out_w, err_w)
            else:  # --run-as: a fork that changes credentials before the exec
                self._popen = spawn_as(self._task_env.run_as, argv, env, self._directory, spec.cwd, out_w, err_w)
                self.pid = self._popen.pid
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            os.close(out_r)
            os.close(err_r)
            self._task_env.release(self._directory)
            return f"{type(exc).__name__}: {exc}"
        finally:
            os.close(out_w)
            os.close(err_w)
        self._reaper.register(self.pid)
        for fd, stream in ((out_r, "stdout"), (err_r, "stderr")):
            os.set_blocking(fd, False)  # the read end only: the child's stays blocking
            self._pipes[fd] = stream
            self._readers.add_reader(fd, self._read, fd)
        watch_exit(self._loop, self.pid, self._exited, self._readers)
        return ""

    def arm_timeout(self, seconds: float, expired: Callable[[], None]) -> None:
        """Call ``expired`` after ``seconds`` unless the process ended first."""
        self._timer = self._loop.call_later(seconds, expired)

    def kill(self) -> None:
        if self.pid and not self._reaped:
            kill_group(self.pid)

    def _read(self, fd: int) -> bool:
        """Read one chunk; False when there is nothing more to read now."""
        try:
            data = os.read(fd, SHELL_READ_BYTES)
        except BlockingIOError:
            return False
        if not data:
            self._close_fd(fd)
            return False
        self._deliver(self._pipes[fd], data)
        return True

    def _drain(self, fd: int) -> None:
        while fd in self._pipes and self._read(fd):
            pass

    def _deliver(self, stream: str, data: bytes) -> None:
        if stream == "stderr":
            self._on_output(stream, data)
            return
        for piece in self._progress.feed(data):
            if isinstance(piece, bytes):
                self._on_output(stream, piece)
            else:
                self._on_progress(*piece)

    def _close_fd(self, fd: int) -> None:
        self._readers.remove_reader(fd)
        del self._pipes[fd]
        os.close(fd)

    def _exited(self) -> None:
        # Everything the process wrote is in the pipes by now; read it before
        # the kill below, which also ends background children holding them.
        for fd in list(self._pipes):
            self._drain(fd)
        kill_group(self.pid)  # leftovers die with the task; the zombie still reserves the pgid
        self._reaper.unregister(self.pid)  # before the reap frees the pid for reuse
        returncode = self._reap()
        for fd in list(self._pipes):
            self._drain(fd)
            if fd in self._pipes:
                self._close_fd(fd)
        rest = self._progress.finish()
        if rest:
            self._on_output("stdout", rest)
        if self._timer is not None:
            self._timer.cancel()
        self._task_env.release(self._directory)
        self._on_exit(returncode)

    def _reap(self) -> int:
        self._reaped = True
        if self._popen is not None:
            return self._popen.wait()
        return os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])


# posix_spawn (vfork and exec in one call) costs the agent a fraction of what
# Popen does, and the child skips Popen's search of PATH by failed execs: the
# executable is looked up here once per (name, PATH) and remembered.
_executables: dict[tuple[str, str], str] = {}
_devnull_fd = -1
_agent_cwd_fd = -1
_posix_spawn_ok = hasattr(os, "posix_spawn")


def seal_inherited_descriptors() -> None:
    """Make every descriptor above 2 non-inheritable, once per process.

    posix_spawn does not close descriptors the way Popen's ``close_fds``
    does: it relies on them being non-inheritable, which every descriptor
    Python opens is. What the agent itself inherited from whoever started it
    is sealed here; without a listing of open descriptors the agent falls
    back to Popen.
    """
    global _posix_spawn_ok
    for listing in ("/proc/self/fd", "/dev/fd"):
        try:
            names = os.listdir(listing)
        except OSError:
            continue
        for name in names:
            fd = int(name)
            if fd > 2:
                try:
                    os.set_inheritable(fd, False)
                except OSError:
                    pass  # closed since (the listing's own descriptor)
        return
    _posix_spawn_ok = False


def spawn(
    argv: list[str], env: Mapping[Any, Any], search_path: str, cwd: str, stdout_fd: int, stderr_fd: int
) -> tuple[int, subprocess.Popen[bytes] | None]:
    """Start ``argv`` in ``cwd``, in a new session (its own process group),
    with stdin on /dev/null and ``env``, looking the program up in
    ``search_path``; return its pid, and the ``Popen`` where that had to be used.

    The child gets descriptors 0, 1 and 2 only, as with Popen's
    ``close_fds``, once ``seal_inherited_descriptors`` has run.
    """
    global _devnull_fd, _agent_cwd_fd, _posix_spawn_ok
    if _devnull_fd < 0:
        _devnull_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        _agent_cwd_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    # dup2 onto itself would keep CLOEXEC.
    if _posix_spawn_ok and min(_devnull_fd, stdout_fd, stderr_fd) > 2:
        actions = [
            (os.POSIX_SPAWN_DUP2, _devnull_fd, 0),
            (os.POSIX_SPAWN_DUP2, stdout_fd, 1),
            (os.POSIX_SPAWN_DUP2, stderr_fd, 2),
        ]
        name = argv[0]
        key = (name, search_path)
        cached = _executables.get(key)
        # Python's posix_spawn has no chdir action: the agent steps into the
        # task's directory around the call. Its event loop is the only thread
        # that uses relative paths, and it does nothing else meanwhile.
        os.chdir(cwd)
        try:
            path = cached or _which(name, search_path)
            try:
                pid = os.posix_spawn(path, argv, env, file_actions=actions, setsid=True)
            except (FileNotFoundError, PermissionError):
                if cached is None:
                    raise
                del _executables[key]  # moved or removed since: look again, once
                path = _which(name, search_path)
                pid = os.posix_spawn(path, argv, env, file_actions=actions, setsid=True)
            _executables[key] = path
            return pid, None
        except NotImplementedError:  # no POSIX_SPAWN_SETSID on this platform
            _posix_spawn_ok = False
        finally:
            os.fchdir(_agent_cwd_fd)
    executable = _which(argv[0], search_path) if os.sep not in argv[0] else None
    proc = subprocess.Popen(
        argv, executable=executable, stdin=subprocess.DEVNULL, stdout=stdout_fd, stderr=stderr_fd, cwd=cwd,
        env=env, start_new_session=True,
    )  # fmt: skip
    return proc.pid, proc


def _which(name: str, search_path: str) -> str:
    if os.sep in name:
        return name
    found = shutil.which(name, path=search_path)
    if found is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)
    return found


def shell_result(
    task_id: str,
    returncode: int,
    kill: tuple[str, str] | None,
    *,
    started: float,
    stdout: bytes,
    stderr: bytes,
    value: ShellValue | None = None,
) -> tuple[TaskResult, Path | None]:
    """A shell task's result from its return code, or from why the agent
    killed it; with the spool file of its value when that is too big to ride
    in the result. A value is whole or the attempt fails: over its
    ``max_result``, or not kept (the disk), an ``ok`` becomes an ``error``."""
    result = _shell_outcome(task_id, returncode, kill, started=started, stdout=stdout, stderr=stderr)
    if value is None:
        return result, None
    if result.outcome != OUTCOME_OK:
        value.discard()
        return result, None
    if value.over_limit:
        return replace(result, outcome=OUTCOME_TOO_BIG, error=over_limit_error(value.size, value.limit)), None
    try:
        part, size = value.finish()
    except OSError as exc:
        value.failure = f"the agent cannot keep the value: {exc}"
    if value.failure:
        value.discard()
        return replace(result, outcome=OUTCOME_ERROR, error=value.failure), None
    if part is None:
        return result, None  # the whole stdout is in the result's tail
    return replace(result, value_size=size), part


def _shell_outcome(
    task_id: str,
    returncode: int,
    kill: tuple[str, str] | None,
    *,
    started: float,
    stdout: bytes,
    stderr: bytes,
) -> TaskResult:
    common: dict[str, Any] = {"started": started, "ended": time.time(), "stdout": stdout, "stderr": stderr}
    if kill is not None:
        outcome, error = kill
        return TaskResult(id=task_id, outcome=outcome, error=error, **common)
    if returncode == 0:
        return TaskResult(id=task_id, outcome=OUTCOME_OK, exit_code=0, **common)
    if returncode > 0:
        return TaskResult(
            id=task_id, outcome=OUTCOME_ERROR, error=f"exit code {returncode}", exit_code=returncode, **common
        )
    return TaskResult(
        id=task_id, outcome=OUTCOME_ERROR, error=killed_text(-returncode), signal=-returncode, **common
    )


class ProgressFilter:
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
        value = float(number)
    except ValueError:
        return None, text
    # The wire takes 0.0 .. 1.0 only: clamp, and "nan" means unknown.
    fraction = min(1.0, max(0.0, value)) if value == value else None
    return fraction, message.strip()
