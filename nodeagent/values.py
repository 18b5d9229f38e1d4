"""A task's value on the agent: whole or not at all.

A shell task's value is its stdout (less its progress lines); a call task's is
its return value. Either is capped by the task's ``max_result``: above it the
attempt fails with a clear error and no value is kept. A value too big to
ride in its result (see ``nodeagent.protocol.VALUE_INLINE_BYTES``) waits in a
spool file in the state dir's ``values/`` directory, next to the journal,
until the console acks its result; the session sends it in ``value`` frames.

Spool files are written as ``*.part`` and renamed to their final name (a
digest of the owner and attempt id) by the journal just before it records
the result that names them: a file without its record is an orphan, removed
when the journal opens.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

VALUES_DIR = "values"
PART_SUFFIX = ".part"
VALUE_SUFFIX = ".value"

# A spilled shell value is one msgpack bin32: this header, then the bytes.
_BIN32 = struct.Struct(">BI")
BIN32_HEADER_BYTES = _BIN32.size


def size_text(size: int) -> str:
    """``20.1 MiB``, ``16 MiB``, ``190.5 KiB``, ``12 bytes``: exact sizes
    without decimals, others to one."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            amount = size / scale
            return f"{amount:.0f} {unit}" if size % scale == 0 else f"{amount:.1f} {unit}"
    return f"{size} bytes" if size != 1 else "1 byte"


def over_limit_error(size: int, limit: int) -> str:
    """The error of an attempt whose value is over its ``max_result``."""
    if size - limit <= limit // 200:  # too close to tell apart at one decimal: exact numbers
        return f"value is {size:,} bytes, over the job's max_result of {limit:,} bytes"
    limit_text = size_text(limit)
    if "." in limit_text:  # a limit the user gave in bytes (3000) is said as given, not as 2.9 KiB
        limit_text = f"{limit:,} bytes"
    return f"value is {size_text(size)}, over the job's max_result of {limit_text}"


def spool_name(owner: str, attempt_id: str) -> str:
    """The final file name of an attempt's spooled value (ids are console
    chosen: never trusted as path parts)."""
    digest = hashlib.sha256(f"{owner}\0{attempt_id}".encode("utf-8", "surrogatepass")).hexdigest()
    return digest[:40] + VALUE_SUFFIX


class ShellValue:
    """A shell task's stdout, kept whole: in memory up to ``inline`` bytes,
    then in a spool file; past ``limit`` bytes only counted, so that the
    error can say how big it was."""

    __slots__ = ("_spool_dir", "_name", "_inline", "_limit", "_memory", "_fd", "size", "failure")

    def __init__(self, spool_dir: Path, name: str, *, inline: int, limit: int) -> None:
        self._spool_dir = spool_dir
        self._name = name  # unique among parts being written, e.g. "s<pid>-<n>"
        self._inline = inline
        self._limit = limit
        self._memory = bytearray()
        self._fd = -1
        self.size = 0
        self.failure = ""  # why the value could not be kept (the disk), once it could not

    @property
    def part_path(self) -> Path:
        return self._spool_dir / (self._name + PART_SUFFIX)

    def add(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self._limit or self.failure:
            self.discard()  # counted from now on, never kept
            return
        try:
            if self._fd >= 0:
                _write_all(self._fd, data)
                return
            self._memory += data
            if len(self._memory) > self._inline:
                self._spill()
        except OSError as exc:
            self.failure = f"the agent cannot keep the value: {exc}"
            self.discard()

    def _spill(self) -> None:
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.part_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        _write_all(self._fd, bytes(BIN32_HEADER_BYTES) + self._memory)  # header filled in at the end
        self._memory = bytearray()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def over_limit(self) -> bool:
        return self.size > self._limit

    def finish(self) -> tuple[Path | None, int]:
        """(part file, its size) of a spilled value, or (None, 0) when the
        whole stdout stayed in memory (it is then the output tail itself).
        OSError when the header cannot be written."""
        if self._fd < 0:
            self._memory = bytearray()
            return None, 0
        fd, self._fd = self._fd, -1
        try:
            os.pwrite(fd, _BIN32.pack(0xC6, self.size), 0)
        except OSError:
            os.close(fd)
            os.unlink(self.part_path)
            raise
        os.close(fd)
        return self.part_path, BIN32_HEADER_BYTES + self.size

    def discard(self) -> None:
        """Drop what is kept (the attempt failed, or the value is over its limit)."""
        self._memory = bytearray()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            try:
                os.unlink(self.part_path)
            except FileNotFoundError:
                pass


def write_part(spool_dir: Path, name: str, data: bytes) -> Path:
    """A call task's encoded value as a part file (written by its worker)."""
    path = spool_dir / (name + PART_SUFFIX)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, data)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return path


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
