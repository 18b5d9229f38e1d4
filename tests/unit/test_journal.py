"""The results journal on real files: reopen, acks, torn tails, compaction, lost tasks."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeagent.journal import JOURNAL_FILE, LOST_ERROR, Journal, JournalInUse
from nodeagent.protocol import OUTCOME_ERROR, OUTCOME_LOST, OUTCOME_OK, TaskResult

OWNER = "console-1"


def ok(attempt_id: str, value: object = 1) -> TaskResult:
    return TaskResult(id=attempt_id, outcome=OUTCOME_OK, value=value, started=1.0, ended=2.0)


def reopen(journal: Journal, **kwargs: int) -> Journal:
    journal.close()
    fresh = Journal(journal.state_dir, **kwargs)
    fresh.open()
    return fresh


def test_unacked_results_survive_a_reopen_and_acked_ones_are_forgotten(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    journal.accepted(OWNER, ["a", "b", "c"])
    full = TaskResult(
        id="c", outcome=OUTCOME_ERROR, value=None, error="ValueError: x", traceback="tb", exit_code=3,
        signal=None, started=1.5, ended=2.5, stdout=b"out", stderr=b"err",
    )
    for result in (ok("a", [1, {"k": b"v"}]), ok("b"), full):
        journal.record(OWNER, result)
    journal.record("other", ok("a"))
    journal.ack(OWNER, ["b", "b", "unknown"])  # duplicates and unknown ids are harmless
    journal.flush()

    journal = reopen(journal)
    assert {r.id: r for r in journal.unacked(OWNER)} == {"a": ok("a", [1, {"k": b"v"}]), "c": full}
    assert [r.id for r in journal.unacked("other")] == ["a"]
    assert journal.has_result(OWNER, "a") and not journal.has_result(OWNER, "b")
    journal.close()


def test_accepted_ids_without_a_result_come_back_lost(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    journal.accepted(OWNER, ["done", "running"])
    journal.record(OWNER, ok("done"))
    journal.flush()
    journal = reopen(journal)
    lost = {r.id: r for r in journal.unacked(OWNER)}["running"]
    assert (lost.outcome, lost.error) == (OUTCOME_LOST, LOST_ERROR)
    # Lost once: the lost result itself is journaled, a second restart does not repeat it.
    journal = reopen(journal)
    assert sorted(r.id for r in journal.unacked(OWNER)) == ["done", "running"]
    journal.close()


def test_a_torn_last_record_is_skipped_and_the_file_stays_appendable(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    journal.record(OWNER, ok("whole"))
    journal.record(OWNER, ok("torn"))
    journal.flush()
    journal.close()
    path = tmp_path / JOURNAL_FILE
    path.write_bytes(path.read_bytes()[:-5])  # the agent died mid-write

    journal = Journal(tmp_path)
    journal.open()
    assert [r.id for r in journal.unacked(OWNER)] == ["whole"]
    journal.record(OWNER, ok("after"))
    journal = reopen(journal)
    assert sorted(r.id for r in journal.unacked(OWNER)) == ["after", "whole"]
    journal.close()


def test_a_mostly_acked_journal_is_rewritten_with_only_live_entries(tmp_path: Path) -> None:
    journal = Journal(tmp_path, compact_min_entries=100)
    journal.open()
    path = tmp_path / JOURNAL_FILE
    ids = [f"t{i}" for i in range(60)]
    journal.accepted(OWNER, ids)
    for attempt_id in ids:
        journal.record(OWNER, ok(attempt_id))
    journal.accepted(OWNER, ["pending"])
    journal.flush()
    size_before = path.stat().st_size
    journal.ack(OWNER, ids[:-1])  # entries pass 100 with 2 of them live: rewrite
    journal.flush()
    assert path.stat().st_size < size_before / 4
    assert not path.with_name(JOURNAL_FILE + ".tmp").exists()
    journal.record(OWNER, ok("late"))  # appends to the rewritten file
    journal = reopen(journal, compact_min_entries=100)
    results = {r.id: r.outcome for r in journal.unacked(OWNER)}
    assert results == {"t59": OUTCOME_OK, "late": OUTCOME_OK, "pending": OUTCOME_LOST}
    journal.close()


def test_a_second_agent_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    with pytest.raises(JournalInUse, match="in use by another agent"):
        Journal(tmp_path).open()
    journal.close()
    again = Journal(tmp_path)
    again.open()
    again.close()
