"""Files only the agent's user may touch: writing them, and checking that
nobody else can have written them (OpenSSH's ``StrictModes``).

The authorized-keys file decides who may run code as the agent's user, so a
file that another user can write, or that sits in a directory another user
can write (and so replace it), is refused like sshd refuses it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class UnsafeFile(Exception):
    """A file (or a directory above it) that someone else could have written."""


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` readable by its owner only, atomically (never half-written)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


def check_strict_modes(path: Path) -> None:
    """Raise ``UnsafeFile`` unless ``path`` and every directory above it are
    owned by this user or root and writable by nobody else.

    Like sshd, symlinks are resolved first and every component of the real
    path is checked up to ``/``. One difference: a world-writable directory
    with the sticky bit (``/tmp``) is accepted, because there nobody but its
    owner can rename or delete the entry below it, which was checked already.
    """
    uid = os.geteuid()
    real = Path(os.path.realpath(path))
    try:
        st = os.stat(real)
    except OSError as exc:
        raise UnsafeFile(f"{real}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFile(f"{real} is not a regular file")
    _check_owner_and_mode(real, st, uid, "file")
    for directory in real.parents:
        st = os.stat(directory)
        if st.st_mode & stat.S_ISVTX and st.st_uid in (uid, 0):
            continue  # sticky, like /tmp: the entry below was checked
        _check_owner_and_mode(directory, st, uid, "directory")


def _check_owner_and_mode(path: Path, st: os.stat_result, uid: int, what: str) -> None:
    if st.st_uid not in (uid, 0):
        raise UnsafeFile(f"bad ownership of {what} {path}: owned by uid {st.st_uid}, not by this user or root")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeFile(
            f"bad modes of {what} {path} ({stat.S_IMODE(st.st_mode):04o}): writable by group or others "
            f"(fix: chmod go-w {path})"
        )
