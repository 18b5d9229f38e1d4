"""What a task gets from the agent: a minimal environment and a directory of its own.

Tasks do not inherit the agent's environment (which may hold credentials the
operator never meant to hand to jobs). They get, like an SSH login or
Slurm's ``--export=NONE``:

* ``PATH``, ``HOME`` and ``LANG`` from the agent (``LANG`` defaults to C.UTF-8),
* ``TMPDIR``: their working directory,
* ``SHOAL_NODE`` (the agent id), ``SHOAL_ATTEMPT`` (the attempt id), and
  ``SHOAL_JOB`` and ``SHOAL_TASK`` (job id and task index) when the attempt
  id has the engine's form ``JOB.TASK.ATTEMPT``,
* the agent's variables the operator names with ``--pass-env NAME``,
* what the job's ``env`` sets (it may override PATH, HOME, LANG and TMPDIR,
  not the SHOAL_ variables).

Each shell task runs in an empty 0700 directory no other task uses while it
runs (its cwd unless the job gives one, and its TMPDIR). What a task leaves
there is removed when it ends. (A directory left empty is handed to the next
task rather than removed and made again: on ext4 a mkdir and rmdir cost a
millisecond, more than the task itself.) A Python worker has one such
directory for the tasks it runs in turn, removed when the worker exits. They
all live in one 0700 directory per agent under the system's temp dir, never
in the agent's state dir.

For the shell fast path the environment is built once per job and env, as
encoded bytes ready for ``posix_spawn``; a task adds its three variables.

With ``--run-as USER`` (``nodeagent.runas``) tasks run as USER: HOME is
USER's home, and each task's (and worker's) directory is USER's, 0700,
inside the agent's directory, which is then root's, 0710 and group USER's
primary group: USER can reach its own directories by path, nobody else can
list or enter them, and a task cannot rename its directory away.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # worker processes import this module: it stays light
    from nodeagent.protocol import TaskSpec
    from nodeagent.runas import RunAs

ENV_CACHE_ENTRIES = 256
DEFAULT_LANG = "C.UTF-8"


def attempt_parts(attempt_id: str) -> tuple[str, str] | None:
    """(job, task) from an engine attempt id ``JOB.TASK.ATTEMPT``, else None."""
    job, dot, rest = attempt_id.partition(".")
    task, dot2, attempt = rest.partition(".")
    if dot and dot2 and job.isdigit() and task.isdigit() and attempt.isdigit():
        return job, task
    return None


class TaskEnvironment:
    def __init__(
        self,
        node_id: str,
        pass_env: Sequence[str] = (),
        *,
        environ: Mapping[str, str] | None = None,
        temp_root: str | None = None,
        run_as: RunAs | None = None,
        python_refused: str = "",
    ) -> None:
        source = os.environ if environ is None else environ
        home = run_as.home if run_as is not None else source.get("HOME") or _home_of_this_user()
        base = {"PATH": source.get("PATH") or os.defpath, "HOME": home, "LANG": source.get("LANG") or DEFAULT_LANG}
        for name in pass_env:
            if name in source:
                base[name] = source[name]
        self.node_id = node_id
        self.run_as = run_as  # None: tasks run as the agent's own user
        self.python_refused = python_refused  # why call tasks cannot run here, or ""
        self.base: dict[str, str] = base  # a worker's environment, before TMPDIR and SHOAL_*
        self._temp_root = temp_root
        self._root: Path | None = None  # created on first use
        self._numbers = itertools.count(1)
        self._clean: list[str] = []  # empty task directories, ready for the next task
        # (job, env items) -> encoded environment without the per-task variables
        self._shell_envs: dict[tuple[str, tuple[tuple[str, str], ...]], dict[bytes, bytes]] = {}

    # --- directories -------------------------------------------------------------

    def new_directory(self, kind: str) -> str:
        """A fresh 0700 directory for one task (``kind`` "task") or one worker."""
        run_as = self.run_as
        if self._root is None:
            root = tempfile.mkdtemp(prefix=f"shoal-{os.getpid()}-", dir=self._temp_root)
            if run_as is not None:
                os.chown(root, -1, run_as.gid)
                os.chmod(root, 0o710)  # USER may pass through to its own directories, not list them
            self._root = Path(root)
        path = f"{self._root}/{kind}-{next(self._numbers)}"
        os.mkdir(path, 0o700)
        if run_as is not None:
            os.chown(path, run_as.uid, run_as.gid)
        return path

    def task_directory(self) -> str:
        """An empty directory for one shell task; give it back with ``release``."""
        return self._clean.pop() if self._clean else self.new_directory("task")

    def release(self, path: str) -> None:
        """A task ended: keep its directory for the next one if the task left
        it empty, else remove it. (Its mode need not be checked: the agent's
        directory above keeps other users out whatever a task did, all but
        the members of USER's group with --run-as.)"""
        try:
            if not os.listdir(path) and not os.path.islink(path):
                self._clean.append(path)
                return
        except OSError:
            pass
        self.remove_directory(path)

    @staticmethod
    def remove_directory(path: str) -> None:
        """Remove a directory and whatever was left in it."""
        try:
            if os.path.islink(path):
                os.unlink(path)  # the task replaced its directory by a link: remove the link only
            else:
                os.rmdir(path)  # the common case: nothing was left
        except FileNotFoundError:
            pass
        except OSError:
            shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
            self._clean.clear()

    # --- environments --------------------------------------------------------------

    def worker_env(self, directory: str) -> dict[str, str]:
        """A Python worker's own environment (tasks add theirs around each call)."""
        return {**self.base, "TMPDIR": directory, "SHOAL_NODE": self.node_id}

    def shell_env(self, spec: TaskSpec, directory: str) -> tuple[dict[bytes, bytes], str]:
        """A shell task's encoded environment, and the PATH to find its program in."""
        parts = attempt_parts(spec.id)
        job = parts[0] if parts else ""
        key = (job, tuple(spec.env.items()) if spec.env else ())
        shared = self._shell_envs.get(key)
        if shared is None:
            if len(self._shell_envs) >= ENV_CACHE_ENTRIES:
                self._shell_envs.clear()
            shared = self._shell_envs[key] = self._encode_job_env(job, spec.env)
        env = shared.copy()
        if b"TMPDIR" not in shared:  # the job's env did not set one
            env[b"TMPDIR"] = os.fsencode(directory)
        env[b"SHOAL_ATTEMPT"] = os.fsencode(spec.id)
        if parts is not None:
            env[b"SHOAL_TASK"] = parts[1].encode()
        return env, os.fsdecode(env[b"PATH"])

    def _encode_job_env(self, job: str, job_env: dict[str, str] | None) -> dict[bytes, bytes]:
        merged = {**self.base, **(job_env or {}), "SHOAL_NODE": self.node_id}
        if job:
            merged["SHOAL_JOB"] = job
        return {os.fsencode(k): os.fsencode(v) for k, v in merged.items()}


def _home_of_this_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return "/"
