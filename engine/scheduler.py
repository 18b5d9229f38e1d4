"""Task placement: a pure function of state (no I/O, no clock).

The core asks, once per flush, "given these queued jobs and these nodes, how
many tasks of which job go to which node?" and gets counts back. Placement is
per job (all tasks of a job share labels and slots per task), highest priority
first, then oldest job first. Within a job, each task goes to the eligible node
with the lowest fill ratio ``(in_flight + slots) / capacity``, so the least
loaded node is served first and heterogeneous nodes fill in proportion to
their capacity.
"""

from __future__ import annotations

import heapq
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field


# Not frozen: a frozen dataclass stores each field through object.__setattr__,
# and the core makes these on every flush. Nothing changes them once made.
@dataclass(slots=True)
class NodeRoom:
    """What the scheduler needs to know about one node."""

    node_id: str
    capacity: int  # slots + prefetch: the most slot-units it may hold
    in_flight: int  # slot-units already sent and not finished
    labels: dict[str, str] = field(default_factory=dict)
    kinds: AbstractSet[str] = frozenset()  # task kinds it runs; empty: any


@dataclass(slots=True)
class JobDemand:
    """A job with tasks ready to place."""

    job_id: int
    priority: int
    ready: int  # tasks ready now
    slots_per_task: int = 1
    labels: dict[str, str] = field(default_factory=dict)
    excluded: AbstractSet[str] = frozenset()  # nodes that refused this job's tasks (read, not kept)
    kind: str = ""  # its tasks' kind (shell, call, pickle); "": any node


@dataclass(slots=True)
class Placement:
    job_id: int
    node_id: str
    count: int


def labels_match(required: dict[str, str], offered: dict[str, str]) -> bool:
    return all(offered.get(key) == value for key, value in required.items())


def _by_priority(job: JobDemand) -> int:
    return -job.priority


def place(jobs: list[JobDemand], nodes: list[NodeRoom]) -> list[Placement]:
    """Counts of tasks per (job, node). Jobs are taken in priority order
    (higher first; ties keep the given order, which is submit order).

    Called on every flush, most often with one job and one node (the node
    whose results just came in), so the common case does no more than it
    must: plain loops rather than comprehensions, which on Python 3.11 make
    and call a function each time (about as long as placing a task)."""
    in_flight: dict[str, int] = {}
    for node in nodes:
        in_flight[node.node_id] = node.in_flight
    placements: list[Placement] = []
    for job in sorted(jobs, key=_by_priority) if len(jobs) > 1 else jobs:  # sorted() is stable
        need, excluded, labels, kind = job.slots_per_task, job.excluded, job.labels, job.kind
        eligible: list[NodeRoom] = []
        room = 0  # tasks of this job the eligible nodes have room for
        for node in nodes:
            free = node.capacity - in_flight[node.node_id]
            if (
                free >= need
                and node.node_id not in excluded
                and (not labels or labels_match(labels, node.labels))
                and (not node.kinds or not kind or kind in node.kinds)
            ):
                eligible.append(node)
                room += free // need
        if not eligible:
            continue
        if len(eligible) == 1 or job.ready >= room:
            # One node has room (the common flush: one node's results came
            # in), or there are tasks enough to fill every node (a deep
            # queue): what the heap below would give each, without the heap.
            left = job.ready
            for node in eligible:
                count = (node.capacity - in_flight[node.node_id]) // need
                if count > left:
                    count = left
                if count:
                    in_flight[node.node_id] += count * need
                    placements.append(Placement(job.job_id, node.node_id, count))
                    left -= count
            continue
        # Heap of (fill ratio after one more task, tiebreak, node).
        heap = [((in_flight[n.node_id] + need) / n.capacity, k, n) for k, n in enumerate(eligible)]
        heapq.heapify(heap)
        given: dict[str, int] = {}
        remaining = job.ready
        while remaining and heap:
            _, k, node = heapq.heappop(heap)
            in_flight[node.node_id] += need
            given[node.node_id] = given.get(node.node_id, 0) + 1
            remaining -= 1
            if node.capacity - in_flight[node.node_id] >= need:
                heapq.heappush(heap, ((in_flight[node.node_id] + need) / node.capacity, k, node))
        placements.extend(Placement(job.job_id, node_id, count) for node_id, count in given.items())
    return placements
