"""The engine's writes while the state dir refuses them (issue 11 item 10):
a refused commit keeps nothing, the batch is held with every batch after it,
they are retried together in order when the retry is due, and the store is
never left inside a transaction. The disk is made full for real, to SQLite:
``PRAGMA max_page_count`` at the file's current size makes the next page the
database needs fail with SQLITE_FULL, "database or disk is full", as a full
filesystem does (the integration test fills a real tmpfs)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from engine.inputs import AuditEntry, Effects, TaskRow
from engine.model import TaskStatus
from engine.store import Store, StoreUnavailable
from engine.writeback import Batch, WriteBack


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def row(index: int, value: int) -> TaskRow:
    # A big value, so each batch needs pages of its own.
    return TaskRow(1, index, int(TaskStatus.SUCCEEDED), 1, 0, 0, "n1", "x" * 3000 + str(value), "", "", 0, b"", b"", 1.0, 2.0)


def batch(*indices: int) -> Batch:
    return Batch(Effects(task_rows=[row(i, i) for i in indices], acks={"n1": [f"1.{i}.1" for i in indices]}))


def fill(store: Store) -> None:
    """No page more for the database: the next write that needs one fails."""
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages}")


def free(store: Store) -> None:
    store.db.execute("PRAGMA max_page_count = 1073741823")


def stored(path: Path) -> list[int]:
    db = sqlite3.connect(path)
    try:
        return [r[0] for r in db.execute("SELECT idx FROM tasks ORDER BY idx")]
    finally:
        db.close()


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "shoal.db")
    yield s
    s.close()


def test_a_refused_write_says_disk_full_in_one_line_keeps_nothing_and_does_not_wedge_the_store(store, tmp_path):
    store.write([row(0, 0)], [], [])
    fill(store)
    with pytest.raises(StoreUnavailable) as refused:
        store.write([row(i, i) for i in range(1, 20)], [AuditEntry(1.0, "engine", "x", "y", "z")], [])
    assert str(refused.value) == f"state dir {tmp_path}: disk full (database or disk is full)"
    assert not store.db.in_transaction
    assert stored(tmp_path / "shoal.db") == [0]
    free(store)
    store.write([row(i, i) for i in range(1, 20)], [], [])  # a later BEGIN works: not wedged
    assert stored(tmp_path / "shoal.db") == list(range(20))


def test_held_batches_are_retried_in_order_as_one_transaction_when_the_retry_is_due(store, tmp_path):
    clock = Clock()
    writes = WriteBack(store, retry_seconds=2.0, clock=clock)
    first = batch(0)
    assert writes.persist(first) == [first] and writes.refused is None
    fill(store)
    second, third = batch(*range(1, 20)), batch(*range(20, 40))
    assert writes.persist(second) == []
    assert writes.blocked == (
        f"state dir {tmp_path}: disk full (database or disk is full); results are held, retrying every 2 s"
    )
    assert writes.persist(third) == []  # not tried before the retry is due: it waits behind the second
    assert writes.held == [second, third] and writes.held_results() == 39
    free(store)
    assert writes.retry() == []  # space is back, but the retry is not due yet
    clock.now += 2.0
    assert writes.retry() == [second, third]  # both at once, oldest first
    assert writes.refused is None and writes.blocked == "" and writes.held == []
    assert stored(tmp_path / "shoal.db") == list(range(40))


def test_a_retry_that_fails_again_keeps_every_batch_and_waits_another_interval(store, tmp_path):
    clock = Clock()
    writes = WriteBack(store, retry_seconds=2.0, clock=clock)
    fill(store)
    held = batch(*range(20))
    assert writes.persist(held) == []
    clock.now += 2.0
    assert writes.retry() == [] and writes.held == [held]
    clock.now += 1.0
    free(store)
    assert writes.retry() == []  # the failed retry pushed the next one 2 s on
    assert writes.retry(force=True) == [held]  # an operator's resubmit or the engine's close does not wait
    assert stored(tmp_path / "shoal.db") == list(range(20))


def test_a_job_whose_end_is_held_is_known_and_a_node_to_remember_waits_with_the_batches(store, tmp_path):
    clock = Clock()
    writes = WriteBack(store, clock=clock)
    fill(store)
    ended = Batch(Effects(task_rows=[row(i, i) for i in range(20)]), jobs=[(1, "succeeded", 5.0, 190, {"succeeded": 20})])
    assert writes.persist(ended) == []
    assert writes.holds_end_of(1) and not writes.holds_end_of(2)
    writes.remember_node("127.0.0.1:7447")  # blocked: held, not tried now
    assert store.known_nodes() == []
    free(store)
    assert writes.retry(force=True) == [ended]
    assert store.known_nodes() == ["127.0.0.1:7447"] and not writes.holds_end_of(1)
