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

A value too big to ride in its result lives in a spool file in ``values/``
(``nodeagent.values``): renamed into place before its result's record is
written, unlinked once the ack's record is written. At open, a spool file no
live result names is removed, and a live result whose file is missing or cut
short becomes an ``error`` result: a value is whole or not at all.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Container
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack

from nodeagent.protocol import OUTCOME_ERROR, OUTCOME_LOST, TaskResult
from nodeagent.values import PART_SUFFIX, VALUE_SUFFIX, VALUES_DIR, spool_name

log = logging.getLogger("shoal.agent.journal")

JOURNAL_FILE = "results.journal"
LOCK_FILE = "agent.lock"
LOST_ERROR = "agent restarted while the task ran"
SPOOL_GONE_ERROR = "the agent lost the value's spool file"

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
        self.values_dir = self.state_dir / VALUES_DIR
        self._compact_min_entries = compact_min_entries
        self._results: dict[str, dict[str, TaskResult]] = {}  # owner -> attempt id -> result, unacked
        self._accepted: dict[str, set[str]] = {}  # owner -> attempt ids with no result yet
        self._buffer: list[bytes] = []
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._fd = -1
        self._lock_fd = -1
        self._entries = 0  # ids the file mentions; compared with the live ones to decide a rewrite
        self._unlink: list[Path] = []  # spool files of acked results, removed once the ack is written

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
        self._check_spooled()
        self._sweep_spool()
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

    def record(self, owner: str, result: TaskResult, part: Path | None = None) -> None:
        """Journal ``result``; ``part`` is the spool file of its value, when
        that is too big for the record (``result.value_size`` says how big)."""
        # On the hot path (once per task): no helper calls, positional fields.
        attempt_id = result.id
        if part is not None:
            # In place before the record that names it can reach the file.
            os.replace(part, self.values_dir / spool_name(owner, attempt_id))
        accepted = self._accepted.get(owner)
        if accepted:
            accepted.discard(attempt_id)
        results = self._results.get(owner)
        if results is None:
            results = self._results[owner] = {}
        results[attempt_id] = result
        self._entries += 1
        r = result
        record: tuple[Any, ...] = (REC_RESULT, owner, attempt_id, r.outcome, r.value, r.error, r.traceback)
        record += (r.exit_code, r.signal, r.started, r.ended, r.stdout, r.stderr)
        if r.value_size:
            record += (r.value_size,)
        self._buffer.append(self._pack(record))

    def ack(self, owner: str, ids: list[str]) -> None:
        results = self._results.get(owner)
        if results is None:
            return
        gone: list[str] = []
        for attempt_id in ids:
            result = results.pop(attempt_id, None)
            if result is not None:
                gone.append(attempt_id)
                if result.value_size:
                    self._unlink.append(self.value_path(owner, attempt_id))
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
        if self._unlink:
            # The acks are written: those values are no longer needed.
            for path in self._unlink:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            self._unlink.clear()

    # --- reads -----------------------------------------------------------------------

    def unacked(self, owner: str) -> list[TaskResult]:
        return list(self._results.get(owner, {}).values())

    def has_result(self, owner: str, attempt_id: str) -> bool:
        results = self._results.get(owner)
        return results is not None and attempt_id in results

    def value_path(self, owner: str, attempt_id: str) -> Path:
        """Where the spooled value of a result with a ``value_size`` is."""
        return self.values_dir / spool_name(owner, attempt_id)

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

    def _check_spooled(self) -> None:
        """A live result whose spool file is missing or short fails loudly."""
        for owner, results in self._results.items():
            for result in list(results.values()):
                if not result.value_size:
                    continue
                try:
                    size = os.stat(self.value_path(owner, result.id)).st_size
                except OSError:
                    size = -1
                if size != result.value_size:
                    log.error("journal: the value of %s (%d bytes) is gone from %s", result.id, result.value_size, self.values_dir)
                    self.record(owner, replace(result, outcome=OUTCOME_ERROR, error=SPOOL_GONE_ERROR, value_size=0))

    def _sweep_spool(self) -> None:
        """Remove spool files no live result names: parts of values whose
        result was never recorded, and values acked before a crash."""
        try:
            names = os.listdir(self.values_dir)
        except FileNotFoundError:
            self.values_dir.mkdir(mode=0o700)
            return
        live = {spool_name(owner, r.id) for owner, results in self._results.items() for r in results.values() if r.value_size}
        for name in names:
            if name.endswith(PART_SUFFIX) or (name.endswith(VALUE_SUFFIX) and name not in live):
                try:
                    os.unlink(self.values_dir / name)
                except OSError as exc:
                    log.warning("journal: cannot remove %s: %s", self.values_dir / name, exc)

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
    fields = (
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
    return fields + (result.value_size,) if result.value_size else fields


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
