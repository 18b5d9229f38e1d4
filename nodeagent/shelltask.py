"""Shell tasks: one subprocess in its own process group, its output pipes,
its ``::shoal-progress`` lines, its exit and its timeout.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Callable
from typing import IO, Any

from engine.protocol import (
    OUTCOME_ERROR,
    OUTCOME_OK,
    SHELL_PROGRESS_PREFIX,
    TaskResult,
    TaskSpec,
)
from nodeagent.procs import GroupReaper, kill_group, killed_text, watch_exit

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
        reaper: GroupReaper,
        *,
        on_output: Callable[[str, bytes], None],
        on_progress: Callable[[float | None, str], None],
        on_exit: Callable[[int], None],
    ) -> None:
        self._spec = spec
        self._loop = loop
        self._reaper = reaper
        self._on_output = on_output
        self._on_progress = on_progress
        self._on_exit = on_exit
        self._proc: subprocess.Popen[bytes] | None = None
        self._pipes: dict[int, tuple[str, IO[bytes]]] = {}  # fd -> (stream name, pipe), open ones
        self._progress = ProgressFilter()
        self._timer: asyncio.TimerHandle | None = None
        self.started = 0.0

    def start(self) -> str:
        """Spawn the process; return an error line if it could not start."""
        spec = self._spec
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
        self._reaper.register(self._proc.pid)
        assert self._proc.stdout is not None and self._proc.stderr is not None
        for pipe, stream in ((self._proc.stdout, "stdout"), (self._proc.stderr, "stderr")):
            fd = pipe.fileno()
            os.set_blocking(fd, False)
            self._pipes[fd] = (stream, pipe)
            self._loop.add_reader(fd, self._read, fd)
        watch_exit(self._loop, self._proc.pid, self._exited)
        return ""

    def arm_timeout(self, seconds: float, expired: Callable[[], None]) -> None:
        """Call ``expired`` after ``seconds`` unless the process ended first."""
        self._timer = self._loop.call_later(seconds, expired)

    def kill(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            kill_group(self._proc.pid)

    def _read(self, fd: int) -> bool:
        """Read one chunk; False when there is nothing more to read now."""
        try:
            data = os.read(fd, SHELL_READ_BYTES)
        except BlockingIOError:
            return False
        if not data:
            self._close_fd(fd)
            return False
        self._deliver(self._pipes[fd][0], data)
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
        self._reaper.unregister(self._proc.pid)
        for fd in list(self._pipes):
            self._drain(fd)
            if fd in self._pipes:
                self._close_fd(fd)
        rest = self._progress.finish()
        if rest:
            self._on_output("stdout", rest)
        if self._timer is not None:
            self._timer.cancel()
        self._on_exit(returncode)


def shell_result(
    task_id: str,
    returncode: int,
    kill: tuple[str, str] | None,
    *,
    started: float,
    stdout: bytes,
    stderr: bytes,
) -> TaskResult:
    """A shell task's result from its return code, or from why the agent killed it."""
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
        fraction: float | None = min(1.0, max(0.0, float(number)))
    except ValueError:
        return None, text
    return fraction, message.strip()
