"""The results journal on real files: reopen, acks, torn tails, compaction, lost tasks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nodeagent.journal import JOURNAL_FILE, LOST_ERROR, SPOOL_GONE_ERROR, Journal, JournalInUse
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


# --- values in spool files ------------------------------------------------------------------


def spooled(journal: Journal, attempt_id: str, data: bytes, owner: str = OWNER) -> TaskResult:
    """Record an ok result whose value waits in a spool file, as the executor does."""
    journal.values_dir.mkdir(exist_ok=True)
    part = journal.values_dir / f"{attempt_id}.part"
    part.write_bytes(data)
    result = TaskResult(id=attempt_id, outcome=OUTCOME_OK, value_size=len(data), stdout=b"tail")
    journal.record(owner, result, part)
    return result


def test_a_spooled_value_survives_a_reopen_and_goes_with_its_ack(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    journal.accepted(OWNER, ["big", "other"])
    result = spooled(journal, "big", b"\xc4\x03abc")
    spooled(journal, "other", b"\x01")
    journal.flush()
    assert not list(journal.values_dir.glob("*.part"))  # renamed into place

    journal = reopen(journal)
    assert journal.unacked(OWNER) == [result, TaskResult(id="other", outcome=OUTCOME_OK, value_size=1, stdout=b"tail")]
    assert journal.value_path(OWNER, "big").read_bytes() == b"\xc4\x03abc"
    journal.ack(OWNER, ["big"])
    assert journal.value_path(OWNER, "big").exists()  # until the ack's record is written
    journal.flush()
    assert not journal.value_path(OWNER, "big").exists()
    assert journal.value_path(OWNER, "other").exists()
    journal.compact()  # a rewrite keeps what is live, spool files included
    journal = reopen(journal)
    assert [r.id for r in journal.unacked(OWNER)] == ["other"] and journal.value_path(OWNER, "other").exists()
    journal.close()


def test_spool_files_no_live_result_names_are_swept_at_open(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    spooled(journal, "kept", b"\x01")
    journal.flush()
    (journal.values_dir / "w123-4.part").write_bytes(b"half a value")  # a worker died writing it
    orphan = journal.value_path(OWNER, "never-recorded")  # renamed, then the agent died before the record
    orphan.write_bytes(b"\x01")
    journal = reopen(journal)
    assert sorted(os.listdir(journal.values_dir)) == [journal.value_path(OWNER, "kept").name]
    journal.close()


@pytest.mark.parametrize("damage", ["remove", "truncate"])
def test_a_result_whose_spool_file_is_gone_or_short_becomes_an_error(tmp_path: Path, damage: str) -> None:
    journal = Journal(tmp_path)
    journal.open()
    spooled(journal, "big", b"\xc4\x03abc")
    journal.flush()
    path = journal.value_path(OWNER, "big")
    if damage == "remove":
        path.unlink()
    else:
        path.write_bytes(b"\xc4\x03a")
    journal = reopen(journal)
    [result] = journal.unacked(OWNER)
    assert (result.outcome, result.error, result.value_size) == (OUTCOME_ERROR, SPOOL_GONE_ERROR, 0)
    assert result.stdout == b"tail" and not path.exists()  # no partial value kept
    journal = reopen(journal)  # and that is journaled: the same next time
    assert journal.unacked(OWNER) == [result]
    journal.close()
