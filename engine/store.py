"""Durable state in one SQLite file (WAL): jobs, task outcomes, audit trail.

Only durable facts are written: a job when it is submitted (the submit is
acknowledged after the commit), and a task row when an attempt ends (result,
failure, retry, loss). "Running" is not written: after a crash, tasks in
flight are sent again under the same attempt id, which the agent recognises.
Writes come in one transaction per engine flush, so persistence costs a few
microseconds per task, not a commit per task.

``synchronous=NORMAL`` in WAL mode survives a crash of the engine process
(``kill -9``); a power cut may lose the last flushes, never corrupt the file.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

import msgpack

from engine.model import TaskStatus
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
    counts BLOB
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

_pack = msgpack.Packer(use_bin_type=True, default=repr)


def pack(value: Any) -> bytes | None:
    return None if value is None else _pack.pack(value)


def unpack(blob: bytes | None) -> Any:
    return None if blob is None else msgpack.unpackb(blob, raw=False, strict_map_key=False)


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # --- identity ---------------------------------------------------------------

    def console_id(self) -> str:
        """Stable across restarts: agents keep our unacked results under it."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'console_id'").fetchone()
        if row:
            return str(row[0])
        value = uuid.uuid4().hex
        self.db.execute("INSERT INTO meta VALUES ('console_id', ?)", (value,))
        return value

    # --- writes -----------------------------------------------------------------

    def add_job(self, spec: JobSpec, now: float, actor: str = "operator") -> int:
        with self.db:
            self.db.execute("BEGIN")
            cur = self.db.execute(
                "INSERT INTO jobs (name, spec, status, total, submitted_at) VALUES (?, ?, 'running', ?, ?)",
                (spec.name, pack(spec.to_dict()), spec.task_count(), now),
            )
            job_id = int(cur.lastrowid or 0)
            self.db.execute(
                "INSERT INTO audit (at, actor, action, target, detail) VALUES (?, ?, 'submit', ?, ?)",
                (now, actor, f"job {job_id}", f"{spec.name}: {spec.task_count()} tasks"),
            )
        return job_id

    def write(
        self,
        task_rows: list[tuple[Any, ...]],
        audit: list[tuple[float, str, str, str, str]],
        jobs: Iterable[tuple[int, str, float, Any, dict[str, int]]],
    ) -> None:
        """One transaction: task outcomes, audit entries, job status changes
        (id, status, finished_at, result, counts)."""
        job_rows = [(status, finished, pack(result), pack(counts), job_id) for job_id, status, finished, result, counts in jobs]
        if not (task_rows or audit or job_rows):
            return
        rows = [
            r[:7] + (pack(r[7]),) + r[8:11] + (r[11][-STORED_TAIL_BYTES:], r[12][-STORED_TAIL_BYTES:]) + r[13:]
            for r in task_rows
        ]
        db = self.db
        db.execute("BEGIN")
        try:
            if rows:
                db.executemany(_UPSERT_TASK, rows)
            if audit:
                db.executemany("INSERT INTO audit (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)", audit)
            if job_rows:
                db.executemany("UPDATE jobs SET status = ?, finished_at = ?, result = ?, counts = ? WHERE id = ?", job_rows)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def reset_job(self, job_id: int) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM tasks WHERE job_id = ?", (job_id,))
            self.db.execute("UPDATE jobs SET status = 'running', finished_at = NULL, result = NULL WHERE id = ?", (job_id,))

    def remember_node(self, address: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO nodes VALUES (?, ?)", (address, time.time()))

    # --- reads ------------------------------------------------------------------

    def known_nodes(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT address FROM nodes ORDER BY first_seen")]

    def unfinished_jobs(self) -> list[tuple[int, JobSpec, float]]:
        rows = self.db.execute("SELECT id, spec, submitted_at FROM jobs WHERE status = 'running' ORDER BY id")
        return [(r[0], JobSpec.from_dict(unpack(r[1])), r[2]) for r in rows]

    def job_spec(self, job_id: int) -> JobSpec | None:
        row = self.db.execute("SELECT spec FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return JobSpec.from_dict(unpack(row[0])) if row else None

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

    def jobs(self) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT id, name, status, total, submitted_at, finished_at, counts FROM jobs ORDER BY id"
        )
        return [
            {
                "id": r[0],
                "name": r[1],
                "status": r[2],
                "total": r[3],
                "submitted_at": r[4],
                "finished_at": r[5],
                "counts": unpack(r[6]) or {},
            }
            for r in rows
        ]

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

    def audit_log(self, limit: int = 100) -> list[tuple[float, str, str, str, str]]:
        rows = self.db.execute(
            "SELECT at, actor, action, target, detail FROM audit ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]
