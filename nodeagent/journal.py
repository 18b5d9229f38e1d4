"""The agent's results journal: finished results survive until the console acks them.

An append-only file of msgpack records under the state dir:

    (REC_ACCEPTED, owner, [attempt ids])   one per accepted batch
    (REC_RESULT, owner, *TaskResult fields)
    (REC_ACK, owner, [attempt ids])

Records are buffered and written with one ``write`` per ``flush``, without
fsync: the OS keeps what a killed process wrote, which is the failure this
guards against. A torn last record (the agent died mid-write) is cut off on
load. An accepted id with no result when the journal is opened belonged to a
task that was queued or running when the agent died: it becomes a ``lost``
result. When most entries are acked the file is rewritten with only the live
ones (atomically: a temp file renamed over it).
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Container
from pathlib import Path
from typing import Any

import msgpack

from nodeagent.protocol import OUTCOME_LOST, TaskResult

log = logging.getLogger("shoal.agent.journal")

JOURNAL_FILE = "results.journal"
LOCK_FILE = "agent.lock"
LOST_ERROR = "agent restarted while the task ran"

REC_ACCEPTED = 1
REC_RESULT = 2
REC_ACK = 3

# Rewrite the file once it holds this many entries and at most a quarter of
# them are still live: the cost of a rewrite is then small next to the
# appends it saves.
COMPACT_MIN_ENTRIES = 50_000


class JournalInUse(RuntimeError):
    """Another agent holds the state dir."""


class Journal:
    def __init__(self, state_dir: Path, *, compact_min_entries: int = COMPACT_MIN_ENTRIES) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / JOURNAL_FILE
        self._compact_min_entries = compact_min_entries
        self._results: dict[str, dict[str, TaskResult]] = {}  # owner -> attempt id -> result, unacked
        self._accepted: dict[str, set[str]] = {}  # owner -> attempt ids with no result yet
        self._buffer: list[bytes] = []
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._fd = -1
        self._lock_fd = -1
        self._entries = 0  # ids the file mentions; compared with the live ones to decide a rewrite

    # --- lifecycle -------------------------------------------------------------

    def open(self) -> int:
        """Lock the state dir, load the file, turn unfinished tasks into lost
        results. Returns how many were lost."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.state_dir / LOCK_FILE, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise JournalInUse(f"state dir {self.state_dir} is in use by another agent") from None
        self._load()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        lost = self._mark_lost()
        self.flush()
        self._maybe_compact()
        return lost

    def close(self) -> None:
        if self._fd >= 0:
            self.flush()
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    # --- writes (buffered until flush) ---------------------------------------------

    def accepted(self, owner: str, ids: list[str]) -> None:
        self._accepted.setdefault(owner, set()).update(ids)
        self._entries += len(ids)
        self._buffer.append(self._pack((REC_ACCEPTED, owner, ids)))

    def record(self, owner: str, result: TaskResult) -> None:
        # On the hot path (once per task): no helper calls, positional fields.
        attempt_id = result.id
        accepted = self._accepted.get(owner)
        if accepted:
            accepted.discard(attempt_id)
        results = self._results.get(owner)
        if results is None:
            results = self._results[owner] = {}
        results[attempt_id] = result
        self._entries += 1
        r = result
        record = (REC_RESULT, owner, attempt_id, r.outcome, r.value, r.error, r.traceback)
        self._buffer.append(self._pack(record + (r.exit_code, r.signal, r.started, r.ended, r.stdout, r.stderr)))

    def ack(self, owner: str, ids: list[str]) -> None:
        results = self._results.get(owner)
        if results is None:
            return
        gone = [attempt_id for attempt_id in ids if results.pop(attempt_id, None) is not None]
        if not gone:
            return  # duplicate or unknown: nothing to forget
        self._entries += len(gone)
        self._buffer.append(self._pack((REC_ACK, owner, gone)))
        self._maybe_compact()

    def flush(self) -> None:
        if not self._buffer or self._fd < 0:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        _write_all(self._fd, data)

    # --- reads -----------------------------------------------------------------------

    def unacked(self, owner: str) -> list[TaskResult]:
        return list(self._results.get(owner, {}).values())

    def has_result(self, owner: str, attempt_id: str) -> bool:
        results = self._results.get(owner)
        return results is not None and attempt_id in results

    def unacked_ids(self, owner: str) -> Container[str]:
        """A live view, for membership tests: do not keep it across writes."""
        return self._results.get(owner, {}).keys()

    # --- load and compaction -----------------------------------------------------------

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        unpacker = msgpack.Unpacker(raw=False, use_list=True)
        unpacker.feed(data)
        good = 0
        appliers = {REC_ACCEPTED: self._load_accepted, REC_RESULT: self._load_result, REC_ACK: self._load_ack}
        try:
            for record in unpacker:
                appliers[record[0]](record)
                good = unpacker.tell()
        except Exception as exc:  # a torn or garbled record: everything after it is unreadable
            log.warning("journal %s: dropping a damaged record at byte %d (%s)", self.path, good, exc)
        if good < len(data):
            # Cut the tail so new records do not follow garbage.
            os.truncate(self.path, good)
        self._buffer.clear()

    def _load_accepted(self, record: list[Any]) -> None:
        _, owner, ids = record
        self.accepted(owner, ids)

    def _load_result(self, record: list[Any]) -> None:
        self.record(record[1], TaskResult(*record[2:]))

    def _load_ack(self, record: list[Any]) -> None:
        _, owner, ids = record
        results = self._results.get(owner, {})
        for attempt_id in ids:
            results.pop(attempt_id, None)
        self._entries += len(ids)

    def _mark_lost(self) -> int:
        now = time.time()
        lost = 0
        for owner, ids in list(self._accepted.items()):
            for attempt_id in sorted(ids):
                self.record(owner, TaskResult(id=attempt_id, outcome=OUTCOME_LOST, error=LOST_ERROR, ended=now))
                lost += 1
        if lost:
            log.warning("%d task(s) were running or queued when the agent stopped: reported lost", lost)
        return lost

    def _live(self) -> int:
        """Unacked results plus accepted ids with no result yet."""
        return sum(map(len, self._results.values())) + sum(map(len, self._accepted.values()))

    def _maybe_compact(self) -> None:
        if self._fd < 0:
            return  # closed: nothing more reaches the file
        if self._entries >= self._compact_min_entries and self._live() * 4 <= self._entries:
            self.compact()

    def compact(self) -> None:
        """Rewrite the file with only the live entries, atomically."""
        self.flush()
        records = [self._pack((REC_ACCEPTED, owner, sorted(ids))) for owner, ids in self._accepted.items() if ids]
        for owner, results in self._results.items():
            records.extend(self._pack((REC_RESULT, owner, *_fields(r))) for r in results.values())
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, b"".join(records))
            os.fsync(fd)  # the rename must not publish an empty file after a power cut
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._entries = self._live()


def _fields(result: TaskResult) -> tuple[Any, ...]:
    # Positional, in TaskResult's field order: no key names per record.
    return (
        result.id,
        result.outcome,
        result.value,
        result.error,
        result.traceback,
        result.exit_code,
        result.signal,
        result.started,
        result.ended,
        result.stdout,
        result.stderr,
    )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
