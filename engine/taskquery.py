"""One page of a job's tasks, filtered and sorted, without touching them all.

A job's tasks live in three places, and a page merges them:

* finished tasks: SQLite rows with a terminal status (a task that runs again
  has its row set back to queued, so a terminal row always means finished);
  the store filters, sorts and pages them (by the key (job, index), or a
  partial index of the tasks that did not succeed), and the job's counts
  say how many there are when only the status is filtered;
* the few the core holds in memory: running, waiting out a retry, queued
  again (``live.LiveTask``); sorted here, they are merged into the store's
  order by a window of at most ``len(live) + limit`` rows;
* never-dispatched tasks: indices ``cursor..total-1``, all queued, with no
  row and no object. They all share one sort key and their indices are above
  every other task's, so in any order they form one contiguous block whose
  position is a count; the page takes its part of the block as a range.

So a page costs one indexed SQL page, at most one count or two, and sorting
the live tasks: a few milliseconds at 100,000 tasks, whatever the page.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from engine.live import LiveTask
from engine.model import TaskStatus
from engine.store import FinishedRow, Store
from engine.views import TASK_ORDERS, TaskInfo, TaskPage

MAX_PAGE = 10_000
_TERMINAL = {int(s) for s in (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED)}
_QUEUED = int(TaskStatus.QUEUED)
_STATUS_CODES = {s.label: int(s) for s in TaskStatus}
_LABELS = {int(s): s.label for s in TaskStatus}

# A row as the page works with it: idx, status, node, attempts, duration, error.
Row = tuple[int, int, str, int, "float | None", str]
# What a never-dispatched task sorts by, per order (its index aside).
_FRESH_KEY: dict[str, Any] = {"status": _QUEUED, "node": "", "attempts": 0, "duration": None, "error": ""}
_COLUMN = {"index": 0, "status": 1, "node": 2, "attempts": 3, "duration": 4, "error": 5}


class QueryError(ValueError):
    """A bad argument to ``tasks()``: one line for the caller."""


def check(status: str | None, order: str, offset: int, limit: int) -> int | None:
    if order not in TASK_ORDERS:
        raise QueryError(f"unknown order {order!r}; one of {', '.join(TASK_ORDERS)}")
    if status is not None and status not in _STATUS_CODES:
        raise QueryError(f"unknown status {status!r}; one of {', '.join(_STATUS_CODES)}")
    if offset < 0 or not 0 <= limit <= MAX_PAGE:
        raise QueryError(f"offset must be >= 0 and limit between 0 and {MAX_PAGE}")
    return None if status is None else _STATUS_CODES[status]


def sort_key(order: str) -> Callable[[Row], tuple[Any, ...]]:
    """SQLite's order for a column, index last: NULLs first ascending (and so
    last descending, as reverse=True flips the whole key)."""
    column = _COLUMN[order]
    if order == "index":
        return lambda row: (row[0],)
    if order == "duration":
        return lambda row: (row[4] is not None, row[4] or 0.0, row[0])
    return lambda row: (row[column], row[0])


def page(
    store: Store,
    job_id: int,
    *,
    live: Sequence[LiveTask],
    open_errors: dict[int, str],
    fresh: range,
    counts: Mapping[str, int] | None = None,
    status: str | None = None,
    node: str | None = None,
    text: str | None = None,
    order: str = "index",
    descending: bool = False,
    offset: int = 0,
    limit: int = 100,
) -> TaskPage:
    code = check(status, order, offset, limit)
    needle = (text or "").lower()
    # The live tasks that match, in the page's order.
    live_rows: list[Row] = []
    if code is None or code not in _TERMINAL:
        for t in live:
            error = open_errors.get(t.idx, "")
            if code is not None and t.status != code:
                continue
            if node and t.node != node:
                continue
            if needle and needle not in error.lower() and needle not in t.node.lower():
                continue
            live_rows.append((t.idx, t.status, t.node, t.attempts, t.duration, error))
    key = sort_key(order)
    live_rows.sort(key=key, reverse=descending)
    # Finished rows that match: only terminal statuses are ever finished.
    finished = code is None or code in _TERMINAL
    if not finished:
        stored = 0
    elif counts is not None and not node and not text:
        # The job's counts say how many ended each way: no need to count rows.
        stored = sum(counts.get(_LABELS[c], 0) for c in ((code,) if code is not None else sorted(_TERMINAL)))
    else:
        stored = store.count_finished(job_id, code, node, text)
    matched = stored + len(live_rows)
    # The never-dispatched block, and where it sits among the others.
    block = len(fresh) if (code is None or code == _QUEUED) and not node and not text else 0
    at = matched
    if block and order != "index":
        fresh_key = _FRESH_KEY[order]
        fresh_row: Row = (fresh.start, _QUEUED, "", 0, None, "")
        if descending:
            live_before = sum(1 for r in live_rows if key(r)[:-1] > key(fresh_row)[:-1])
        else:
            live_before = sum(1 for r in live_rows if key(r)[:-1] <= key(fresh_row)[:-1])
        if order == "status":  # finished statuses all sort after queued
            stored_before = stored if descending else 0
        elif finished:
            stored_before = store.count_finished(job_id, code, node, text, before=(order, descending, fresh_key))
        else:
            stored_before = 0
        at = live_before + stored_before
    elif block and descending:
        at = 0

    by_status_counts = order == "status" and code is None and counts is not None and not node and not text

    def finished_window(start: int, count: int) -> list[Row]:
        if not finished or count <= 0:
            return []
        if by_status_counts:
            return status_segments(start, count)
        rows = store.finished_rows(job_id, code, node, text, order, descending, start, count)
        return [_row(r) for r in rows]

    def status_segments(start: int, count: int) -> list[Row]:
        """Sorted by status, the finished rows are one run per status, whose
        lengths the counts give: page each run by the key instead of sorting
        them all."""
        assert counts is not None
        out: list[Row] = []
        for c in sorted(_TERMINAL, reverse=descending):
            size = counts.get(_LABELS[c], 0)
            if start < size and count > 0:
                rows = store.finished_rows(job_id, c, None, None, "index", descending, start, min(count, size - start))
                out += [_row(r) for r in rows]
                count -= len(rows)
            start = max(0, start - size)
        return out

    def others(lo: int, hi: int) -> list[Row]:
        """Positions [lo, hi) of finished and live rows merged in order."""
        if hi <= lo:
            return []
        if not live_rows:
            return finished_window(lo, hi - lo)
        # Between lo - len(live) and lo of the rows before position lo are
        # finished ones: read from there and merge all the live ones in. The
        # live rows that belong before the window take positions below lo
        # (there are at most len(live) of them), so they are counted, never
        # shown, and every row from lo on gets its true position.
        start = max(0, lo - len(live_rows))
        window = finished_window(start, hi - start)
        keys = [key(r) for r in live_rows]
        position = start
        out: list[Row] = []
        i, j = 0, 0
        while position < hi and (i < len(window) or j < len(live_rows)):
            take_live = i >= len(window) or (
                j < len(live_rows) and ((keys[j] > key(window[i])) if descending else (keys[j] < key(window[i])))
            )
            if take_live:
                row = live_rows[j]
                j += 1
            else:
                row = window[i]
                i += 1
            if position >= lo:
                out.append(row)
            position += 1
        return out

    end = offset + limit
    if not block:
        rows = others(offset, end)
    else:
        rows = others(offset, min(end, at))
        lo, hi = max(offset, at), min(end, at + block)
        if hi > lo:
            # Ascending, the block's first position holds its lowest index;
            # descending, its highest.
            first, last = lo - at, hi - at
            indices = (
                range(fresh.stop - 1 - first, fresh.stop - 1 - last, -1)
                if descending
                else range(fresh.start + first, fresh.start + last)
            )
            rows += [(i, _QUEUED, "", 0, None, "") for i in indices]
        rows += others(max(offset, at + block) - block, end - block)
    return TaskPage(
        total=matched + block,
        offset=offset,
        rows=[TaskInfo(job_id, r[0], _LABELS[r[1]], r[2], r[3], r[4], r[5]) for r in rows],
    )


def _row(r: FinishedRow) -> Row:
    idx, status, node, attempts, started, ended, error = r
    duration = (ended - started) if started and ended else None
    return (idx, status, node, attempts, duration, error)
