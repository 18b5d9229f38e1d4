"""``shoal agent --run-as USER``: an agent started as root runs its tasks as USER.

Like sshd's privilege separation or Slurm's slurmd, the agent keeps root for
itself (its state dir, host key and journal stay 0700/0600 root's) and drops
to USER's uid, gid and supplementary groups (as initgroups gives them) in
each task's process, between fork and exec. So a task cannot read the
agent's keys, cannot signal or trace the agent, and its files are USER's.

Shell tasks then start through ``subprocess.Popen(user=, group=,
extra_groups=)`` rather than posix_spawn, which cannot change credentials
(a fork instead of a vfork: slower, and paid only by run-as agents). Python
workers start the same way, if USER can run this interpreter and import
Shoal at all: ``python_refusal`` finds out once, at agent start, by trying.

A worker of USER's, and every task in it, is on the other side of the
boundary: what it says is a claim. Its stderr reaches the agent's log only
through ``StderrRelay``, and a value it spooled only through ``adopt_part``.

Imported by the agent only; workers never need it.
"""

from __future__ import annotations

import errno
import logging
import os
import pwd
import stat
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodeagent.procs import helper_command, helper_env
from nodeagent.values import PART_SUFFIX

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger("shoal.agent.runas")

COPY_BYTES = 1 << 20
RELAY_LINE_CHARS = 500
RELAY_BYTES = 64 * 1024  # what one worker may put in the agent's log, in all
PROBE_SECONDS = 30.0  # a cold interpreter on a slow disk can take seconds
# A job's own cwd is entered by the task itself, once it is USER: Popen's
# cwd= would chdir as root, before the credentials change, and a process
# already inside a directory reaches what is below it even when USER could
# not have walked there (the search permission of the directories above is
# never checked again). The shell is the smallest thing that can chdir and exec.
_CHDIR_THEN_EXEC = 'cd -- "$1" || exit 126; shift; exec "$@"'


class RunAsError(ValueError):
    """--run-as cannot be honoured; the text is the one line to show."""


@dataclass(frozen=True, slots=True)
class RunAs:
    """Who tasks run as: a user's ids as its login would have them."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary groups, as initgroups(3) would set them
    home: str

    def popen_credentials(self) -> dict[str, Any]:
        """``subprocess.Popen`` keywords that switch the child to this user."""
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups)}


def resolve_run_as(text: str) -> RunAs:
    """The user named (or numbered) by ``--run-as``; ``RunAsError`` saying
    why not when the agent is not root, the user does not exist, or it is root."""
    euid = os.geteuid()
    if euid != 0:
        raise RunAsError(
            f"--run-as {text}: the agent must be started as root to run tasks as another user (it runs as uid {euid})"
        )
    try:
        entry = pwd.getpwuid(int(text)) if text.isdigit() else pwd.getpwnam(text)
    except (KeyError, OverflowError):
        raise RunAsError(f"--run-as {text}: no such user") from None
    if entry.pw_uid == 0:
        raise RunAsError(f"--run-as {text}: that is root; name an unprivileged user for tasks to run as")
    groups = tuple(dict.fromkeys(g for g in os.getgrouplist(entry.pw_name, entry.pw_gid)))
    return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir or "/")


def check_state_dir(state_dir: Path, user: RunAs) -> None:
    """Refuse a state dir the tasks' user could read, or could swap for one
    of its own (a directory above it that USER may write): the host key
    and the journal are only as private as the directories they live in."""
    real = Path(os.path.realpath(state_dir))
    st = os.stat(real)
    if st.st_uid != os.geteuid():
        raise RunAsError(
            f"--run-as {user.name}: state dir {real} is owned by uid {st.st_uid}, not by the agent's user "
            f"(fix: chown root {real})"
        )
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise RunAsError(
            f"--run-as {user.name}: state dir {real} is open to group or others "
            f"({stat.S_IMODE(st.st_mode):04o}; fix: chmod 700 {real})"
        )
    for directory in real.parents:  # as OpenSSH's StrictModes walks up to /
        st = os.stat(directory)
        if st.st_mode & stat.S_ISVTX and st.st_uid == 0:
            continue  # sticky and root's, like /tmp: nobody else can rename what is below
        if st.st_uid not in (0, os.geteuid()) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise RunAsError(
                f"--run-as {user.name}: {directory}, above the state dir, is owned by uid {st.st_uid} "
                f"or writable by others ({stat.S_IMODE(st.st_mode):04o}): tasks could put a state dir of their own "
                f"in its place (fix: a state dir under directories only root can write)"
            )


def python_refusal(user: RunAs, base_env: Mapping[str, str]) -> str:
    """Why ``user`` cannot run Shoal's Python workers here (one line, saying
    what to do), or "" if it can.

    Tried for real: this interpreter imports the worker module as ``user``,
    with the sys.path a worker gets, from the filesystem root.
    """
    command = helper_command("nodeagent.workerprobe", "main")
    interpreter = command[0]
    real = os.path.realpath(interpreter)
    if real != interpreter:
        interpreter = f"{interpreter} (which is {real})"
    try:
        proc = subprocess.run(
            command, env=helper_env(dict(base_env)), cwd="/", stdin=subprocess.DEVNULL,
            capture_output=True, timeout=PROBE_SECONDS, **user.popen_credentials(),
        )  # fmt: skip
        failure = ""
        if proc.returncode != 0:
            lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            failure = f"importing Shoal failed: {lines[-1] if lines else f'exit code {proc.returncode}'}"
    except OSError as exc:
        failure = f"cannot run {interpreter}: {(exc.strerror or str(exc)).lower()}"
    except subprocess.TimeoutExpired:
        failure = f"{interpreter} did not import Shoal within {PROBE_SECONDS:g} s"
    if not failure:
        return ""
    return (
        f"{user.name} (--run-as) {failure}; so call and pickle tasks cannot run on this agent: "
        f"install Shoal and its Python where {user.name} can read and run them"
    )


def spawn_as(
    user: RunAs,
    argv: list[str],
    env: Mapping[bytes, bytes],
    own_directory: str,
    job_cwd: str | None,
    stdout_fd: int,
    stderr_fd: int,
) -> subprocess.Popen[bytes]:
    """Start a shell task as ``user``: new session, stdin on /dev/null, in its
    own directory, or in the job's ``cwd`` entered as ``user``.

    The program is looked up in ``env``'s PATH by the child, as ``user``.
    Popen's ``close_fds`` leaves the child descriptors 0, 1 and 2 only.
    """
    if job_cwd:
        argv = ["/bin/sh", "-c", _CHDIR_THEN_EXEC, "sh", job_cwd, *argv]
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=stdout_fd, stderr=stderr_fd, cwd=own_directory, env=env,
        start_new_session=True, close_fds=True, **user.popen_credentials(),
    )  # fmt: skip


def adopt_part(claimed: str, size: int, worker_dir: str, values_dir: Path, user: RunAs) -> Path:
    """Copy a value's part file that a worker running as ``user`` says it
    wrote into the agent's spool, and return the copy.

    The worker is USER's, and so is every task it runs: what it says is a
    claim, never a path for root to rename or read. Taken only if it names
    a file directly in that worker's own directory (whose parent is root's,
    so it cannot be swapped for a link), opened without following links,
    a regular file of USER's with one link (not a hard link to someone
    else's file) and of the size announced. Raises OSError otherwise.
    """
    name = os.path.basename(claimed)
    if not name.endswith(PART_SUFFIX) or claimed != os.path.join(worker_dir, name):
        raise PermissionError(errno.EPERM, "not a part file in the worker's own directory", claimed)
    dir_fd = os.open(worker_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        source = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            st = os.fstat(source)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != user.uid or st.st_nlink != 1 or st.st_size != size:
                raise PermissionError(errno.EPERM, f"not a regular file of {user.name}'s of {size} bytes", claimed)
            target = values_dir / name
            _copy(source, target)
        finally:
            os.close(source)
        os.unlink(name, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    return target


def _copy(source: int, target: Path) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        while chunk := os.read(source, COPY_BYTES):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        os.unlink(target)
        raise
    os.close(fd)


class StderrRelay:
    """The stderr of a worker of USER's, relayed into the agent's log.

    A worker keeps its stderr for its own failures, and the tasks it runs
    share its process: handing it the agent's own log descriptor would let
    any task append what it likes to root's log. So it gets a pipe; each
    line read becomes one log record saying which worker wrote it, quoted
    (no line of its own, no control characters), up to ``RELAY_BYTES`` per
    worker; past that it is read and dropped, so the worker never blocks.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, user: RunAs) -> None:
        self._loop = loop
        self._user = user
        self._read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)  # the child gets write_fd as its stderr
        self._pid = 0
        self._held = b""
        self._logged = 0

    def start(self, pid: int) -> None:
        """The worker is started: keep only the read end, and read it."""
        os.close(self.write_fd)
        self.write_fd = -1
        self._pid = pid
        os.set_blocking(self._read_fd, False)
        self._loop.add_reader(self._read_fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self._read_fd, 65536)
        except BlockingIOError:
            return
        if not data:
            self.close()
            return
        *lines, self._held = (self._held + data).split(b"\n")
        self._held = self._held[-RELAY_LINE_CHARS:]
        for line in lines:
            self._log(line)

    def _log(self, line: bytes) -> None:
        if self._logged >= RELAY_BYTES:
            return
        self._logged += len(line)
        text = line.decode("utf-8", "replace")[:RELAY_LINE_CHARS]
        log.warning("python worker %d (as %s) wrote on stderr: %r", self._pid, self._user.name, text)
        if self._logged >= RELAY_BYTES:
            log.warning("python worker %d (as %s): more on stderr, not logged", self._pid, self._user.name)

    def close(self) -> None:
        if self._read_fd >= 0:
            if self._pid:
                self._loop.remove_reader(self._read_fd)
            os.close(self._read_fd)
            self._read_fd = -1
            if self._held:
                self._log(self._held)
                self._held = b""
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1
