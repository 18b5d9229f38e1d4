"""A job whose engine cannot write its state dir (issue 11 item 10) reads
"blocked" in the console's jobs table, in the tone of trouble; the reason
itself reaches the console as an error alert (a toast and the Events screen)."""

from __future__ import annotations

from console.screens.jobs import job_row
from engine.views import JobInfo


def test_a_blocked_job_reads_blocked_in_the_jobs_table() -> None:
    counts = {"succeeded": 59, "running": 0, "queued": 341}
    running = JobInfo(id=1, name="disk", status="running", total=400, counts=counts, submitted_at=0.0, finished_at=None)
    blocked = JobInfo(
        id=1, name="disk", status="running", total=400, counts=counts, submitted_at=0.0, finished_at=None,
        blocked="state dir /x: disk full (database or disk is full); results are held, retrying every 2 s",
    )
    assert job_row(running, None)[2] == ("running", "accent")
    assert job_row(blocked, None)[2] == ("blocked", "bad")
