"""tasks() pages: finished rows (real SQLite), live tasks and the never-dispatched
block merged, checked against sorting everything by brute force."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.live import LiveTask
from engine.spec import JobSpec
from engine.store import Store
from engine.taskquery import QueryError, Row, page, sort_key
from engine.views import TASK_ORDERS

NODES = ["", "a:1", "b:2"]
ERRORS = ["", "boom", "Bad thing"]
LABELS = ["pending", "queued", "running", "succeeded", "failed", "cancelled"]


def new_store(path: Path, total: int) -> tuple[Store, int]:
    store = Store(path)
    job = store.add_job(JobSpec.build(name="q", kind="shell", argv_template=("true",), items=list(range(total))), time.time())
    return store, job


def finished_row(job: int, idx: int, status: int, node: str, attempts: int, started: float, ended: float, error: str) -> tuple:
    return (job, idx, status, attempts, 0, 0, node, None, error, "", None, b"", b"", started, ended)


task_state = st.one_of(
    st.tuples(st.just("stored"), st.sampled_from([3, 4, 5]), st.sampled_from(NODES), st.integers(0, 3),
              st.sampled_from([0.0, 10.0, 20.0]), st.sampled_from([0.0, 11.0, 25.0, 30.5]), st.sampled_from(ERRORS)),
    st.tuples(st.just("live"), st.sampled_from([0, 1, 2]), st.sampled_from(NODES), st.integers(0, 3),
              st.sampled_from([None, 0.5, 3.0]), st.sampled_from(ERRORS)),
)


@settings(max_examples=600, deadline=None)
@given(
    states=st.lists(task_state, max_size=30),
    fresh=st.integers(0, 20),
    # No filter half the time: that is when the never-dispatched block shows.
    status=st.one_of(st.none(), st.sampled_from(LABELS)),
    node=st.one_of(st.none(), st.sampled_from(NODES)),
    text=st.one_of(st.none(), st.sampled_from(["", "boom", "b:", "BAD"])),
    order=st.sampled_from(TASK_ORDERS),
    descending=st.booleans(),
    offset=st.integers(0, 40),
    limit=st.integers(0, 25),
    use_counts=st.booleans(),
)
def test_a_page_is_the_slice_of_all_tasks_sorted(tmp_path_factory, states, fresh, status, node, text, order, descending, offset, limit, use_counts):
    cursor = len(states)
    store, job = new_store(tmp_path_factory.mktemp("q") / "shoal.db", cursor + fresh)
    rows, live, errors, everything = [], [], {}, []
    for idx, state in enumerate(states):
        if state[0] == "stored":
            _, code, where, attempts, started, ended, error = state
            rows.append(finished_row(job, idx, code, where, attempts, started, ended, error))
            duration = (ended - started) if started and ended else None
            everything.append((idx, code, where, attempts, duration, error))
        else:
            _, code, where, attempts, duration, error = state
            where = where if code == 2 else ""
            duration = duration if code == 2 else None
            error = error if code == 0 else ""
            if error:
                errors[idx] = error
            live.append(LiveTask(idx, code, where, attempts, duration, None))
            everything.append((idx, code, where, attempts, duration, error))
    store.write(rows, [], [])
    for idx in range(cursor, cursor + fresh):
        everything.append((idx, 1, "", 0, None, ""))
    counts = {label: sum(1 for r in rows if LABELS[r[2]] == label) for label in LABELS[3:]} if use_counts else None
    got = page(store, job, live=live, open_errors=errors, fresh=range(cursor, cursor + fresh), counts=counts, status=status,
               node=node, text=text, order=order, descending=descending, offset=offset, limit=limit)
    wanted = [r for r in everything if matches(r, status, node, text)]
    wanted.sort(key=sort_key(order), reverse=descending)
    assert got.total == len(wanted)
    assert [(r.index, r.status, r.node, r.attempts, r.duration, r.error) for r in got.rows] == [
        (r[0], LABELS[r[1]], r[2], r[3], r[4], r[5]) for r in wanted[offset : offset + limit]
    ]
    store.close()


def matches(row: Row, status: str | None, node: str | None, text: str | None) -> bool:
    if status is not None and LABELS[row[1]] != status:
        return False
    if node and row[2] != node:
        return False
    needle = (text or "").lower()
    return not needle or needle in row[5].lower() or needle in row[2].lower()


def test_bad_arguments_are_refused_by_name(tmp_path):
    store, job = new_store(tmp_path / "shoal.db", 3)
    for kwargs, words in (({"order": "colour"}, "unknown order"), ({"status": "done"}, "unknown status"),
                          ({"limit": -1}, "limit"), ({"offset": -5}, "offset")):
        with pytest.raises(QueryError, match=words):
            page(store, job, live=[], open_errors={}, fresh=range(0, 3), **kwargs)
    store.close()


def test_every_page_of_a_mixed_job_in_every_order(tmp_path):
    """200 tasks: finished rows, live tasks interleaved among them, and a
    never-dispatched tail; every order, both directions, pages of 7."""
    import random

    rng = random.Random(7)
    cursor, fresh = 150, 50
    store, job = new_store(tmp_path / "shoal.db", cursor + fresh)
    rows, live, errors, everything = [], [], {}, []
    for idx in range(cursor):
        if rng.random() < 0.3:
            code = rng.choice([0, 1, 2])
            where = rng.choice(NODES[1:]) if code == 2 else ""
            duration = rng.choice([None, 1.5, 7.0]) if code == 2 else None
            error = rng.choice(ERRORS) if code == 0 else ""
            if error:
                errors[idx] = error
            live.append(LiveTask(idx, code, where, rng.randint(0, 3), duration, None))
            everything.append((idx, code, where, live[-1].attempts, duration, error))
        else:
            code, where, error = rng.choice([3, 4, 5]), rng.choice(NODES), rng.choice(ERRORS)
            started, ended = rng.choice([(0.0, 0.0), (10.0, 12.5), (10.0, 19.0)])
            attempts = rng.randint(0, 3)
            rows.append(finished_row(job, idx, code, where, attempts, started, ended, error))
            everything.append((idx, code, where, attempts, (ended - started) if started else None, error))
    store.write(rows, [], [])
    everything += [(idx, 1, "", 0, None, "") for idx in range(cursor, cursor + fresh)]
    counts = {label: sum(1 for r in rows if LABELS[r[2]] == label) for label in LABELS[3:]}
    for order in TASK_ORDERS:
        for descending in (False, True):
            wanted = sorted(everything, key=sort_key(order), reverse=descending)
            for offset in range(0, 205, 7):
                for known in (None, counts):  # counted by SQL, or given by the job's counts
                    got = page(store, job, live=live, open_errors=errors, fresh=range(cursor, cursor + fresh),
                               counts=known, order=order, descending=descending, offset=offset, limit=7)
                    assert got.total == 200
                    assert [r.index for r in got.rows] == [r[0] for r in wanted[offset : offset + 7]], (order, descending, offset)
    store.close()
