"""The event bus: sequence numbers, resuming with since=, filters, Lagged."""

from __future__ import annotations

import asyncio

import pytest

from engine import events as ev


def progress(job: int, index: int = 0) -> ev.TaskProgress:
    return ev.TaskProgress(job, index, 0.5)


def output(job: int) -> ev.TaskOutput:
    return ev.TaskOutput(job, 0, "stdout", b"x")


async def test_every_event_gets_the_next_seq_and_a_time():
    bus = ev.EventBus()
    sub = bus.subscribe()
    bus.publish([progress(1), progress(2)])
    bus.publish([ev.Alert("info", "hi")])
    got = sub.take_ready()
    assert [e.seq for e in got] == [1, 2, 3] and bus.seq == 3
    assert all(e.t > 0 for e in got)


async def test_since_replays_what_came_after_that_seq_with_the_filter():
    bus = ev.EventBus()
    bus.publish([progress(1), progress(2), ev.Alert("info", "a"), progress(1, 5)])
    sub = bus.subscribe(job=1, since=1)
    got = sub.take_ready()
    # seq 2 is job 2's: filtered out; the alert concerns every job.
    assert [(type(e).__name__, e.seq) for e in got] == [("Alert", 3), ("TaskProgress", 4)]
    bus.publish([progress(1, 6)])
    assert [e.seq for e in sub.take_ready()] == [5]


async def test_since_older_than_the_ring_starts_with_lagged():
    bus = ev.EventBus(ring_size=3)
    bus.publish([progress(1, i) for i in range(10)])  # seqs 1..10, ring holds 8..10
    got = bus.subscribe(since=2).take_ready()
    assert isinstance(got[0], ev.Lagged) and got[0].dropped == 5 and got[0].seq == 7
    assert [e.seq for e in got[1:]] == [8, 9, 10]
    assert [e.seq for e in bus.subscribe(since=7).take_ready()] == [8, 9, 10]
    # A seq this bus never gave (an earlier engine's): the client missed an unknown amount.
    unknown = bus.subscribe(since=99).take_ready()
    assert len(unknown) == 1 and isinstance(unknown[0], ev.Lagged)


async def test_a_slow_subscriber_gets_lagged_and_then_the_newest_events():
    bus = ev.EventBus()
    sub = bus.subscribe(maxsize=3)
    bus.publish([progress(1, i) for i in range(10)])
    first = [await sub.next() for _ in range(4)]
    assert [e.seq for e in first[:3]] == [1, 2, 3]
    assert isinstance(first[3], ev.Lagged) and first[3].dropped == 7 and first[3].seq == 10
    bus.publish([progress(1, 11)])
    assert [e.seq for e in sub.take_ready()] == [11]


async def test_task_output_only_for_those_who_ask_and_not_in_the_ring():
    bus = ev.EventBus()
    plain = bus.subscribe()
    wants = bus.subscribe(kinds=["TaskOutput"])
    bus.publish([output(1), progress(1)])
    assert [type(e) for e in plain.take_ready()] == [ev.TaskProgress]
    assert [type(e) for e in wants.take_ready()] == [ev.TaskOutput]
    assert [type(e) for e in bus.subscribe(kinds=["TaskOutput", "TaskProgress"], since=0).take_ready()] == [ev.TaskProgress]


async def test_unknown_kind_is_refused_by_name():
    with pytest.raises(ValueError, match="Nonsense"):
        ev.EventBus().subscribe(kinds=["Nonsense"])


async def test_iteration_waits_for_events_and_ends_when_the_bus_closes():
    bus = ev.EventBus()
    sub = bus.subscribe()
    seen: list[ev.Event] = []

    async def read() -> None:
        async for event in sub:
            seen.append(event)

    reader = asyncio.create_task(read())
    await asyncio.sleep(0)
    bus.publish([progress(3)])
    bus.close()
    await asyncio.wait_for(reader, 5)
    assert [e.seq for e in seen] == [1]


def test_events_round_trip_through_dicts_and_ignore_unknown_fields():
    event = ev.NodeChanged("h:1", "up", slots=4, cpu=12.5)
    object.__setattr__(event, "seq", 9)
    data = ev.event_to_dict(event)
    assert data["event"] == "NodeChanged" and data["seq"] == 9
    assert ev.event_from_dict({**data, "from_a_newer_engine": 1}) == event
