"""The agent's handle on one pre-started Python worker process (``nodeagent.worker``).

It spawns the worker in its own process group, sends it batches and
commands without ever blocking the event loop (what the pipe will not take
waits for it to drain), and hands the events it reads back to the executor.
The wire itself is ``nodeagent.workerwire``.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from nodeagent.procs import helper_command, helper_env, kill_group, watch_exit
from nodeagent.runas import StderrRelay
from nodeagent.taskenv import TaskEnvironment
from nodeagent.workerwire import (
    CMD_CANCEL,
    CMD_RUN,
    CMD_STOP,
    MAX_EVENT_BYTES,
    READ_BYTES,
    SHM_BYTES,
    SHM_LAYOUT,
)


class WorkerProcess:
    """The agent's end of one worker: spawn, send commands, read events, kill.

    Events are handed to ``on_events`` as they arrive; ``on_exit`` is called
    once, after the dead worker's last events were read, with its return code.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        task_env: TaskEnvironment,
        on_events: Callable[[WorkerProcess, list[Any]], None],
        on_exit: Callable[[WorkerProcess, int], None],
        values_dir: Path,
    ) -> None:
        self._loop = loop
        self._task_env = task_env
        self._directory = ""  # the worker's own: its tasks' cwd and TMPDIR
        self._on_events = on_events
        self._on_exit = on_exit
        self._values_dir = values_dir  # where it writes values too big for a result
        self._unpacker = msgpack.Unpacker(raw=False, use_list=True, max_buffer_size=2 * MAX_EVENT_BYTES + READ_BYTES)
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._out: list[bytes] = []  # command bytes the pipe would not take yet
        self._proc: subprocess.Popen[bytes] | None = None
        self._cmd_fd = -1
        self._res_fd = -1
        self._shm: mmap.mmap | None = None
        self._relay: StderrRelay | None = None  # --run-as: the worker's stderr, into the agent's log
        self.ready = False
        self.killed_by_agent = False
        self.returncode: int | None = None
        self.exited: asyncio.Future[int] = loop.create_future()

    @property
    def pid(self) -> int:
        return self._proc.pid if self._proc is not None else 0

    @property
    def directory(self) -> str:
        return self._directory

    def spawn(self) -> None:
        self._directory = self._task_env.new_directory("worker")
        run_as = self._task_env.run_as
        if run_as is not None:  # not the agent's own stdout and log: tasks share the worker's process
            self._relay = StderrRelay(self._loop, run_as)
            outputs = {"stdout": subprocess.DEVNULL, "stderr": self._relay.write_fd, **run_as.popen_credentials()}
        cmd_r, cmd_w = os.pipe()
        res_r, res_w = os.pipe()
        with tempfile.TemporaryFile() as shm_file:
            shm_file.truncate(SHM_BYTES)
            shm_fd = shm_file.fileno()
            self._shm = mmap.mmap(shm_fd, SHM_BYTES)
            try:
                self._proc = subprocess.Popen(
                    helper_command(
                        "nodeagent.worker", "main", str(cmd_r), str(res_w), str(shm_fd), str(os.getpid()),
                        # --run-as: USER cannot write the agent's spool; parts wait in its own directory
                        str(self._directory if self._task_env.run_as else self._values_dir),
                    ),
                    stdin=subprocess.DEVNULL,
                    pass_fds=(cmd_r, res_w, shm_fd),
                    start_new_session=True,  # its own process group: a kill takes the task's children too
                    env=helper_env(self._task_env.worker_env(self._directory)),
                    cwd=self._directory,
                    # --run-as: the worker is the tasks' user from its first instruction
                    **(outputs if run_as is not None else {}),
                )
            except OSError:
                self._task_env.remove_directory(self._directory)
                if self._relay is not None:
                    self._relay.close()
                raise
            finally:
                os.close(cmd_r)
                os.close(res_w)
        self._cmd_fd, self._res_fd = cmd_w, res_r
        if self._relay is not None:
            self._relay.start(self._proc.pid)
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
            seq, started = SHM_LAYOUT.unpack_from(self._shm)
            if SHM_LAYOUT.unpack_from(self._shm)[0] == seq:
                return seq, started

    def read_now(self) -> None:
        """Read and hand on every event already in the pipe (e.g. before a kill)."""
        if self._res_fd >= 0:
            self._readable()

    def _send(self, data: bytes) -> None:
        if self._cmd_fd < 0:
            return
        if self._out:
            self._out.append(data)  # behind what waits already: commands stay in order
            return
        written = self._write(data)
        if written is not None and written < len(data):
            self._out.append(data[written:])
            self._loop.add_writer(self._cmd_fd, self._writable)

    def _writable(self) -> None:
        data = b"".join(self._out)
        self._out.clear()
        written = self._write(data)
        if written is not None and written < len(data):
            self._out.append(data[written:])
        else:
            self._loop.remove_writer(self._cmd_fd)

    def _write(self, data: bytes) -> int | None:
        """Bytes the command pipe took; None once the worker is gone."""
        try:
            return os.write(self._cmd_fd, data)
        except BlockingIOError:
            return 0
        except BrokenPipeError:
            return None  # the worker is dying; its exit is handled by the watch

    # --- events -----------------------------------------------------------------

    def _readable(self) -> None:
        while True:
            try:
                data = os.read(self._res_fd, READ_BYTES)
            except BlockingIOError:
                return
            if not data:
                self._close_results()  # EOF: the worker is gone or going; its exit watch finishes up
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
        self._close_results()
        self.close()
        if self._relay is not None:
            self._relay.close()
        self._task_env.remove_directory(self._directory)
        self._on_exit(self, returncode)  # may still read current() to name the task it died in
        if self._shm is not None:
            self._shm.close()
            self._shm = None
        if not self.exited.done():
            self.exited.set_result(returncode)

    def _close_results(self) -> None:
        if self._res_fd >= 0:
            self._loop.remove_reader(self._res_fd)
            os.close(self._res_fd)
            self._res_fd = -1
