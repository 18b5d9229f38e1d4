"""Durable state in one SQLite file (WAL): jobs, task outcomes, audit trail.

Only durable facts are written: a job when it is submitted (the submit is
acknowledged after the commit), and a task row when an attempt ends (result,
failure, retry, loss). "Running" is not written: after a crash, tasks in
flight are sent again under the same attempt id, which the agent recognises.
Writes come in one transaction per engine flush, so persistence costs a few
microseconds per task, not a commit per task.

``synchronous=NORMAL`` in WAL mode survives a crash of the engine process
(``kill -9``); a power cut may lose the last flushes, never corrupt the file.

A write the state dir refuses (disk full, an I/O error, a read-only remount)
raises ``StoreUnavailable`` with one line for a person, after rolling the
transaction back: nothing of it is on disk and the same write can be tried
again later (engine/writeback.py holds and retries the engine's flushes).
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from operator import itemgetter
from pathlib import Path
from typing import Any

import msgpack

from engine.interface import EngineError
from engine.model import TERMINAL, TaskStatus
from engine.paths import private_file
from engine.spec import JobSpec

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    spec BLOB NOT NULL,
    status TEXT NOT NULL,
    total INTEGER NOT NULL,
    submitted_at REAL NOT NULL,
    finished_at REAL,
    result BLOB,
    counts BLOB,
    kind TEXT NOT NULL DEFAULT '',
    reducer TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS tasks (
    job_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    status INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    node_failures INTEGER NOT NULL,
    node TEXT,
    value BLOB,
    error TEXT,
    traceback TEXT,
    exit_code INTEGER,
    stdout BLOB,
    stderr BLOB,
    started REAL,
    ended REAL,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
-- The tasks that did not succeed, by status: what a UI filters for (failed,
-- cancelled) and what waits for a retry. Partial, so the common row, a
-- success, costs no index write; the key (job_id, idx) serves the rest.
CREATE INDEX IF NOT EXISTS tasks_not_succeeded ON tasks (job_id, status) WHERE status != 3;
-- Attempts that ended without ending their task (a retry, a requeue), and
-- the final attempts of resubmitted tasks: a task's row holds only its
-- latest attempt, these are the earlier ones of its timeline.
CREATE TABLE IF NOT EXISTS attempts (
    job_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    node TEXT NOT NULL,
    started REAL,
    ended REAL,
    outcome TEXT NOT NULL,
    exit_code INTEGER,
    error TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_by_task ON attempts (job_id, idx);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (address TEXT PRIMARY KEY, first_seen REAL NOT NULL);
"""

# Output tails kept per task in the database (the agent keeps 64 KiB).
STORED_TAIL_BYTES = 8 * 1024

_UPSERT_TASK = """
INSERT INTO tasks (job_id, idx, status, attempts, failures, node_failures, node, value,
                   error, traceback, exit_code, stdout, stderr, started, ended)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (job_id, idx) DO UPDATE SET
    status = excluded.status, attempts = excluded.attempts, failures = excluded.failures,
    node_failures = excluded.node_failures, node = excluded.node, value = excluded.value,
    error = excluded.error, traceback = excluded.traceback, exit_code = excluded.exit_code,
    stdout = excluded.stdout, stderr = excluded.stderr, started = excluded.started,
    ended = excluded.ended
"""

_ARCHIVE_ATTEMPT = """
INSERT INTO attempts (job_id, idx, attempt, node, started, ended, outcome, exit_code, error)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

# Rows of tasks that ended, in the order the task queries sort by; the
# expressions match engine.taskquery's keys for the live tasks.
TASK_ORDER_SQL = {
    "index": "idx",
    "status": "status",
    "node": "node",
    "attempts": "attempts",
    "duration": "(CASE WHEN started > 0 AND ended > 0 THEN ended - started END)",
    "error": "error",
}
_TERMINAL_CODES = tuple(sorted(int(s) for s in TERMINAL))
_SUCCEEDED = int(TaskStatus.SUCCEEDED)
_STATUS = itemgetter(2)  # of a task row

# A finished row as the task queries read it.
FinishedRow = tuple[int, int, str, int, float | None, float | None, str]  # idx, status, node, attempts, started, ended, error

_pack = msgpack.Packer(use_bin_type=True, default=repr)


def pack(value: Any) -> bytes | None:
    return None if value is None else _pack.pack(value)


def unpack(blob: bytes | None) -> Any:
    return None if blob is None else msgpack.unpackb(blob, raw=False, strict_map_key=False)


# SQLite's primary result codes for a state dir that cannot take a write now
# but may later: SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN.
_DISK_CODES = {8: "cannot write", 10: "cannot write", 13: "disk full", 14: "cannot write"}


class StoreUnavailable(EngineError):
    """The state dir refused a write; nothing of it was kept. ``str()`` is
    one line: ``state dir /x: disk full (database or disk is full)``."""

    def __init__(self, state_dir: Path, what: str, detail: str) -> None:
        if what != "disk full" and _no_space_left(state_dir):
            # SQLite says "disk I/O error" when it cannot grow its -shm file.
            what = "disk full"
        self.state_dir, self.what, self.detail = state_dir, what, detail
        super().__init__(f"state dir {state_dir}: {what} ({detail})")


def _no_space_left(directory: Path) -> bool:
    try:
        return os.statvfs(directory).f_bavail == 0
    except OSError:
        return False


def _disk_trouble(exc: BaseException) -> str | None:
    """What the state dir's trouble is, if ``exc`` is the disk refusing a write."""
    if not isinstance(exc, sqlite3.OperationalError):
        return None
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:  # not from the library itself: go by its words
        text = str(exc)
        return "disk full" if "full" in text else "cannot write" if "I/O error" in text else None
    return _DISK_CODES.get(code & 0xFF)


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        # Private before SQLite opens it: its -wal and -shm take its mode.
        for part in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if part == path or part.exists():
                private_file(part)
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            columns = {row[1] for row in self.db.execute("PRAGMA table_info(jobs)")}
            self.db.execute("DROP INDEX IF EXISTS tasks_by_status")  # full indexes of an earlier version
            self.db.execute("DROP INDEX IF EXISTS tasks_by_node")
            for name in ("kind", "reducer"):  # a state dir from before these columns
                if name not in columns:
                    self.db.execute(f"ALTER TABLE jobs ADD COLUMN {name} TEXT NOT NULL DEFAULT ''")
        except sqlite3.OperationalError as exc:
            what = _disk_trouble(exc)
            if what is None:
                raise
            raise StoreUnavailable(path.parent, what, str(exc)) from None

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction, rolled back whole if anything in it fails, COMMIT
        included (a commit that finds the disk full may leave the transaction
        open, and every later BEGIN would fail: the engine wedged for good)."""
        db = self.db
        try:
            db.execute("BEGIN")
            yield db
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # SQLite rolled it back itself
            what = _disk_trouble(exc)
            if what is None:
                raise
            raise StoreUnavailable(self.path.parent, what, str(exc)) from None

    # --- identity ---------------------------------------------------------------

    def console_id(self) -> str:
        """Stable across restarts: agents keep our unacked results under it."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'console_id'").fetchone()
        if row:
            return str(row[0])
        value = uuid.uuid4().hex
        with self._transaction() as db:
            db.execute("INSERT INTO meta VALUES ('console_id', ?)", (value,))
        return value

    # --- writes -----------------------------------------------------------------

    def add_job(self, spec: JobSpec, now: float, actor: str = "operator") -> int:
        with self._transaction():
            cur = self.db.execute(
                "INSERT INTO jobs (name, spec, status, total, submitted_at, kind, reducer)"
                " VALUES (?, ?, 'running', ?, ?, ?, ?)",
                (spec.name, pack(spec.to_dict()), spec.task_count(), now, spec.kind, spec.reduce or ""),
            )
            job_id = int(cur.lastrowid or 0)
            self.db.execute(
                "INSERT INTO audit (at, actor, action, target, detail) VALUES (?, ?, 'submit', ?, ?)",
                (now, actor, f"job {job_id}", f"{spec.name}: {spec.task_count()} tasks"),
            )
        return job_id

    def write(
        self,
        task_rows: Sequence[tuple[Any, ...]],
        audit: Sequence[tuple[float, str, str, str, str]],
        jobs: Iterable[tuple[int, str, float, Any, dict[str, int]]],
        nodes: Sequence[str] = (),
    ) -> None:
        """One transaction: task outcomes, audit entries, job status changes
        (id, status, finished_at, result, counts), nodes to remember. A row
        that does not end its task (a retry or a requeue) also goes to
        ``attempts``, so the task's timeline keeps it once the next attempt
        overwrites the row. All or nothing: StoreUnavailable if the state
        dir refuses it."""
        job_rows = [(status, finished, pack(result), pack(counts), job_id) for job_id, status, finished, result, counts in jobs]
        if not (task_rows or audit or job_rows or nodes):
            return
        rows = [
            r[:7] + (pack(r[7]),) + r[8:11] + (r[11][-STORED_TAIL_BYTES:], r[12][-STORED_TAIL_BYTES:]) + r[13:]
            for r in task_rows
        ]
        # Status codes below SUCCEEDED are pending (a retry) and queued (lost,
        # drained or refused); a queued row with no node is a resubmit or a
        # restart's reservation, which ended no attempt.
        ended = [r for r in task_rows if r[2] < _SUCCEEDED and r[6]] if task_rows and min(map(_STATUS, task_rows)) < _SUCCEEDED else []
        with self._transaction() as db:
            if rows:
                db.executemany(_UPSERT_TASK, rows)
            if ended:
                now = time.time()
                db.executemany(
                    _ARCHIVE_ATTEMPT,
                    [
                        (
                            r[0], r[1], r[3], r[6] or "", r[13] or None, r[14] or now,
                            "failed" if r[2] == TaskStatus.PENDING else "requeued", r[10], r[8] or "",
                        )
                        for r in ended
                    ],
                )
            if audit:
                db.executemany("INSERT INTO audit (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)", audit)
            if job_rows:
                db.executemany("UPDATE jobs SET status = ?, finished_at = ?, result = ?, counts = ? WHERE id = ?", job_rows)
            if nodes:
                db.executemany("INSERT OR IGNORE INTO nodes VALUES (?, ?)", [(address, time.time()) for address in nodes])

    def _archive_finished(self, where: str, params: tuple[Any, ...]) -> None:
        """Copy the final attempts of the tasks ``where`` selects into
        ``attempts`` (inside the caller's transaction)."""
        self.db.execute(
            "INSERT INTO attempts (job_id, idx, attempt, node, started, ended, outcome, exit_code, error)"
            " SELECT job_id, idx, attempts, COALESCE(node, ''), NULLIF(started, 0), NULLIF(ended, 0),"
            " CASE status WHEN 3 THEN 'succeeded' WHEN 4 THEN 'failed' ELSE 'cancelled' END,"
            " exit_code, COALESCE(error, '')"
            f" FROM tasks WHERE {where} AND COALESCE(node, '') != ''",
            params,
        )

    def requeue_finished(self, job_id: int, indices: Iterable[int]) -> None:
        """Resubmitted tasks are queued again: their rows say so (a restarted
        engine runs them, and a task's row is terminal only while it is
        finished; its ``attempts`` stays, so its next attempt id is a fresh
        one), their last attempt joins the timeline, and their job runs."""
        chosen = sorted(indices)
        if not chosen:
            return
        with self._transaction():
            self.db.execute("UPDATE jobs SET status = 'running', finished_at = NULL WHERE id = ?", (job_id,))
            for chunk in _chunks(chosen, 500):
                marks = ",".join("?" * len(chunk))
                where = f"job_id = ? AND idx IN ({marks})"
                self._archive_finished(where, (job_id, *chunk))
                self.db.execute(
                    f"UPDATE tasks SET status = ?, failures = 0 WHERE {where}", (int(TaskStatus.QUEUED), job_id, *chunk)
                )

    def remember_node(self, address: str) -> None:
        self.write([], [], [], [address])

    def forget_node(self, address: str) -> bool:
        """Stop redialing ``address`` at start; False if it was not known."""
        with self._transaction() as db:
            return db.execute("DELETE FROM nodes WHERE address = ?", (address,)).rowcount > 0

    # --- reads ------------------------------------------------------------------

    def known_nodes(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT address FROM nodes ORDER BY first_seen")]

    def unfinished_jobs(self) -> list[tuple[int, JobSpec, float]]:
        rows = self.db.execute("SELECT id, spec, submitted_at FROM jobs WHERE status = 'running' ORDER BY id")
        return [(r[0], JobSpec.from_dict(unpack(r[1])), r[2]) for r in rows]

    def job_spec(self, job_id: int) -> JobSpec | None:
        row = self.db.execute("SELECT spec FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return JobSpec.from_dict(unpack(row[0])) if row else None

    def has_job(self, job_id: int) -> bool:
        return self.db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is not None

    def task_states(self, job_id: int) -> list[tuple[int, TaskStatus, int, int, int]]:
        rows = self.db.execute(
            "SELECT idx, status, attempts, failures, node_failures FROM tasks WHERE job_id = ?", (job_id,)
        )
        return [(r[0], TaskStatus(r[1]), r[2], r[3], r[4]) for r in rows]

    def succeeded_values(self, job_id: int) -> list[tuple[int, Any]]:
        rows = self.db.execute(
            "SELECT idx, value FROM tasks WHERE job_id = ? AND status = ? ORDER BY idx",
            (job_id, int(TaskStatus.SUCCEEDED)),
        )
        return [(r[0], unpack(r[1])) for r in rows]

    def rows_with_status(self, job_id: int, statuses: Iterable[TaskStatus]) -> list[tuple[int, TaskStatus, int]]:
        wanted = [int(s) for s in statuses]
        marks = ",".join("?" * len(wanted))
        rows = self.db.execute(
            f"SELECT idx, status, attempts FROM tasks WHERE job_id = ? AND status IN ({marks}) ORDER BY idx",
            (job_id, *wanted),
        )
        return [(r[0], TaskStatus(r[1]), r[2]) for r in rows]

    def jobs(self, job_id: int | None = None) -> list[dict[str, Any]]:
        """Every job (or the one asked for), oldest first."""
        sql = "SELECT id, name, status, total, submitted_at, finished_at, counts, kind, reducer FROM jobs"
        rows = self.db.execute(sql + " WHERE id = ?", (job_id,)) if job_id is not None else self.db.execute(sql + " ORDER BY id")
        return [
            {
                "id": r[0],
                "name": r[1],
                "status": r[2],
                "total": r[3],
                "submitted_at": r[4],
                "finished_at": r[5],
                "counts": unpack(r[6]) or {},
                "kind": r[7],
                "reduce": r[8],
            }
            for r in rows
        ]

    def stored_counts(self, job_id: int, total: int) -> dict[str, int]:
        """An unfinished job's task counts as stored, for views with no
        engine running: ended tasks by outcome, the rest as queued (a task
        stored as running ran under an engine that has gone)."""
        ended = (int(TaskStatus.SUCCEEDED), int(TaskStatus.FAILED), int(TaskStatus.CANCELLED))
        rows = self.db.execute(
            "SELECT status, COUNT(*) FROM tasks WHERE job_id = ? AND status IN (?, ?, ?) GROUP BY status", (job_id, *ended)
        )
        counts = {TaskStatus(status).label: count for status, count in rows}
        counts["queued"] = total - sum(counts.values())
        return counts

    def job_result(self, job_id: int) -> Any:
        row = self.db.execute("SELECT result FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return unpack(row[0]) if row else None

    def task_results(self, job_id: int) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT idx, status, attempts, node, value, error, exit_code, started, ended, stdout, stderr, traceback"
            " FROM tasks WHERE job_id = ? ORDER BY idx",
            (job_id,),
        )
        return [
            {
                "index": r[0],
                "status": TaskStatus(r[1]).label,
                "attempts": r[2],
                "node": r[3] or "",
                "value": unpack(r[4]),
                "error": r[5] or "",
                "exit_code": r[6],
                "duration": (r[8] - r[7]) if r[7] and r[8] else None,
                "stdout": (r[9] or b"").decode("utf-8", "replace"),
                "stderr": (r[10] or b"").decode("utf-8", "replace"),
                "traceback": r[11] or "",
            }
            for r in rows
        ]

    # --- task queries (engine.taskquery merges these with the live tasks) ----------

    @staticmethod
    def _finished_where(
        job_id: int, status: int | None, node: str | None, text: str | None
    ) -> tuple[str, list[Any]]:
        """Rows of tasks that ended (a task that runs again has a queued row
        or a live object, never a terminal row) matching the filter."""
        params: list[Any]
        if status is None:
            where, params = f"job_id = ? AND status IN {_TERMINAL_CODES}", [job_id]
        elif status == _SUCCEEDED:
            where, params = "job_id = ? AND status = ?", [job_id, status]
        else:
            # "status != 3" spelled out: SQLite takes the partial index only then.
            where, params = "job_id = ? AND status != 3 AND status = ?", [job_id, status]
        if node:
            where += " AND node = ?"
            params.append(node)
        if text:
            pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where += " AND (error LIKE ? ESCAPE '\\' OR node LIKE ? ESCAPE '\\')"
            params += [pattern, pattern]
        return where, params

    def count_finished(
        self, job_id: int, status: int | None, node: str | None, text: str | None, before: tuple[str, bool, Any] | None = None
    ) -> int:
        """How many finished rows match; with ``before=(order, descending,
        key)`` only those that sort before a key (ties included ascending:
        the key is a never-dispatched task's, whose index is above them all)."""
        where, params = self._finished_where(job_id, status, node, text)
        if before is not None:
            order, descending, key = before
            expr = TASK_ORDER_SQL[order]
            if key is None:
                where += f" AND {expr} IS NOT NULL" if descending else f" AND {expr} IS NULL"
            else:
                where += f" AND {expr} {'>' if descending else '<='} ?"
                params.append(key)
        row = self.db.execute(f"SELECT COUNT(*) FROM tasks WHERE {where}", params).fetchone()
        return int(row[0])

    def finished_rows(
        self,
        job_id: int,
        status: int | None,
        node: str | None,
        text: str | None,
        order: str,
        descending: bool,
        offset: int,
        limit: int,
    ) -> list[FinishedRow]:
        where, params = self._finished_where(job_id, status, node, text)
        direction = "DESC" if descending else "ASC"
        sql = (
            f"SELECT idx, status, COALESCE(node, ''), attempts, started, ended, COALESCE(error, '') FROM tasks"
            f" WHERE {where} ORDER BY {TASK_ORDER_SQL[order]} {direction}, idx {direction} LIMIT ? OFFSET ?"
        )
        return list(self.db.execute(sql, (*params, limit, offset)))

    def open_errors(self, job_id: int) -> dict[int, str]:
        """The last error of tasks waiting for a retry (their row is pending)."""
        rows = self.db.execute(
            "SELECT idx, error FROM tasks WHERE job_id = ? AND status != 3 AND status = ? AND error != ''",
            (job_id, int(TaskStatus.PENDING)),
        )
        return {r[0]: r[1] for r in rows}

    def task_row(self, job_id: int, index: int) -> dict[str, Any] | None:
        row = self.db.execute(
            "SELECT status, attempts, node, value, error, traceback, exit_code, stdout, stderr, started, ended"
            " FROM tasks WHERE job_id = ? AND idx = ?",
            (job_id, index),
        ).fetchone()
        if row is None:
            return None
        return {
            "status": TaskStatus(row[0]),
            "attempts": row[1],
            "node": row[2] or "",
            "value": unpack(row[3]),
            "error": row[4] or "",
            "traceback": row[5] or "",
            "exit_code": row[6],
            "stdout": row[7] or b"",
            "stderr": row[8] or b"",
            "started": row[9] or None,
            "ended": row[10] or None,
        }

    def attempt_rows(self, job_id: int, index: int) -> list[tuple[int, str, float | None, float | None, str, int | None, str]]:
        """(attempt, node, started, ended, outcome, exit_code, error), oldest first."""
        rows = self.db.execute(
            "SELECT attempt, node, started, ended, outcome, exit_code, error FROM attempts"
            " WHERE job_id = ? AND idx = ? ORDER BY rowid",
            (job_id, index),
        )
        return list(rows)

    def audit(self, limit: int = 200) -> list[tuple[float, str, str, str, str]]:
        """The newest audit entries, newest first: (at, actor, action, target, detail)."""
        rows = self.db.execute(
            "SELECT at, actor, action, target, detail FROM audit ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]


def _chunks(items: list[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
