"""Values in pieces: the agent's capture and sender, the console's assembly
(engine.link.ValueAssembly), on real files and real frames."""

from __future__ import annotations

import os
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.link import ValueAssembly
from nodeagent.protocol import (
    OUTCOME_ERROR,
    OUTCOME_OK,
    VALUE_CHUNK_BYTES,
    Finished,
    FrameDecoder,
    ProtocolError,
    TaskResult,
    Value,
)
from nodeagent.values import BIN32_HEADER_BYTES, ShellValue, over_limit_error, size_text
from nodeagent.valuesend import ValueSender

settings.register_profile("values", deadline=None, database=None)
settings.load_profile("values")


def pieces(attempt_id: str, encoded: bytes, size: int) -> list[Value]:
    return [Value(id=attempt_id, offset=i, data=encoded[i : i + size]) for i in range(0, len(encoded), size)]


def streamed(attempt_id: str, encoded: bytes) -> TaskResult:
    return TaskResult(id=attempt_id, outcome=OUTCOME_OK, value_size=len(encoded))


# --- the console's side: assembly ----------------------------------------------------


@given(
    st.lists(st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary(), max_size=50),
    st.integers(1, 64),
    st.lists(st.booleans(), min_size=1, max_size=3),
)
def test_pieces_of_interleaved_values_assemble_into_each_whole_value(value, size, order):
    encoded = msgpack.packb(value, use_bin_type=True)
    assembly = ValueAssembly()
    a, b = pieces("a", encoded, size), pieces("b", encoded, size + 1)
    while a or b:  # interleaved in a drawn order: each attempt's pieces stay in order
        for take_a in order:
            queue = (a if take_a else b) or a or b
            if queue:
                assembly.add(queue.pop(0))
    done = assembly.complete(Finished(results=[streamed("a", encoded), TaskResult(id="c", outcome=OUTCOME_OK, value=7),
                                                streamed("b", encoded)]))
    assert [r.value for r in done.results] == [value, 7, value]
    assert all(r.value_size == 0 for r in done.results)  # as if it had come in the result
    assert not assembly  # nothing held once the results came


def test_a_result_without_pieces_passes_untouched():
    finished = Finished(results=[TaskResult(id="a", outcome=OUTCOME_OK, value=[1, 2])])
    assert ValueAssembly().complete(finished) is finished


@pytest.mark.parametrize(
    "feed, result_size, needle",
    [
        ([("a", 0, b"\x92\x01")], 3, "is 3 bytes, got 2"),  # short
        ([], 3, "is 3 bytes, got 0"),  # no pieces at all
        ([("a", 0, b"\x92\x01"), ("a", 3, b"\x02")], 3, "at byte 3, expected byte 2"),  # a gap
        ([("a", 1, b"\x92")], 1, "at byte 1, expected byte 0"),  # not from the start
        ([("a", 0, b"\x92\x01\x02\x03")], 4, "not one msgpack value"),  # trailing bytes
        ([("a", 0, b"\xc1")], 1, "not one msgpack value"),  # never valid msgpack
        ([("a", 0, msgpack.packb(msgpack.ExtType(1, b"x")))], 3, "ext type"),
        ([("a", 0, msgpack.packb({1: 2}))], 3, "not one msgpack value"),  # a non-string key
    ],
)
def test_a_value_that_is_not_whole_is_a_protocol_error(feed, result_size, needle):
    assembly = ValueAssembly()
    with pytest.raises(ProtocolError, match=needle):
        for attempt_id, offset, data in feed:
            assembly.add(Value(id=attempt_id, offset=offset, data=data))
        assembly.complete(Finished(results=[TaskResult(id="a", outcome=OUTCOME_OK, value_size=result_size)]))


def test_a_result_without_value_size_drops_the_pieces_of_its_attempt():
    assembly = ValueAssembly()
    assembly.add(Value(id="a", offset=0, data=b"\x92"))
    failed = TaskResult(id="a", outcome=OUTCOME_ERROR, error="the agent lost the value: gone")
    assert assembly.complete(Finished(results=[failed])).results == [failed]
    assert not assembly


def test_pending_pieces_beyond_the_cap_are_a_protocol_error():
    assembly = ValueAssembly(max_bytes=10)
    assembly.add(Value(id="a", offset=0, data=b"x" * 6))
    with pytest.raises(ProtocolError, match="more than 10 bytes"):
        assembly.add(Value(id="b", offset=0, data=b"x" * 5))


# --- the agent's side: capture --------------------------------------------------------


def test_a_shell_value_stays_in_memory_up_to_the_tail_then_spills_whole(tmp_path):
    small = ShellValue(tmp_path, "s1", inline=10, limit=100)
    small.add(b"0123456789")
    assert small.finish() == (None, 0) and os.listdir(tmp_path) == []

    big = ShellValue(tmp_path, "s2", inline=10, limit=100)
    for piece in (b"0123456789", b"abc", b"d" * 20):
        big.add(piece)
    part, size = big.finish()
    assert part == tmp_path / "s2.part" and size == BIN32_HEADER_BYTES + 33
    assert msgpack.unpackb(part.read_bytes()) == b"0123456789abc" + b"d" * 20  # one msgpack bin, whole


def test_a_shell_value_over_its_limit_is_counted_and_never_kept(tmp_path):
    value = ShellValue(tmp_path, "s1", inline=10, limit=25)
    for _ in range(5):
        value.add(b"x" * 8)
    assert value.over_limit and value.size == 40
    assert os.listdir(tmp_path) == []  # the spilled part went when the limit was passed


def test_the_over_limit_error_says_both_sizes():
    assert over_limit_error(int(20.1 * 2**20), 16 * 2**20) == "value is 20.1 MiB, over the job's max_result of 16 MiB"
    # Too close to tell apart at one decimal: exact numbers.
    assert over_limit_error(2**24 + 5, 2**24) == "value is 16,777,221 bytes, over the job's max_result of 16,777,216 bytes"
    assert [size_text(n) for n in (0, 1, 1023, 1024, 190_000, 3 * 2**30)] == [
        "0 bytes", "1 byte", "1023 bytes", "1 KiB", "185.5 KiB", "3 GiB"]


# --- the agent's side: sending ------------------------------------------------------------


def test_the_sender_sends_pieces_no_bigger_than_a_chunk_then_the_result(tmp_path):
    encoded = msgpack.packb(os.urandom(2 * VALUE_CHUNK_BYTES + 5), use_bin_type=True)
    (tmp_path / "a").write_bytes(encoded)
    (tmp_path / "b").write_bytes(b"\x01")
    sender = ValueSender(lambda attempt_id: tmp_path / attempt_id)
    sender.add(streamed("a", encoded))
    sender.add(streamed("b", b"\x01"))
    frames: list[bytes] = []
    writes = 0
    while sender:
        frames.extend(sender.frames(max_chunks=2))
        writes += 1
    assert writes == 2 and all(len(frame) < VALUE_CHUNK_BYTES + 64 for frame in frames)
    messages = FrameDecoder(max_frame_bytes=VALUE_CHUNK_BYTES + 64).feed(b"".join(frames))
    assert [type(m).__name__ for m in messages] == ["Value", "Value", "Value", "Finished", "Value", "Finished"]
    assembly = ValueAssembly()
    results = []
    for message in messages:
        if isinstance(message, Value):
            assembly.add(message)
        else:
            results.extend(assembly.complete(message).results)
    assert [r.value for r in results] == [msgpack.unpackb(encoded), 1]


def test_a_spool_file_that_is_gone_or_short_becomes_an_error_result(tmp_path: Path):
    (tmp_path / "short").write_bytes(b"\x92\x01")
    sender = ValueSender(lambda attempt_id: tmp_path / attempt_id)
    sender.add(TaskResult(id="gone", outcome=OUTCOME_OK, value_size=3, stdout=b"tail"))
    sender.add(TaskResult(id="short", outcome=OUTCOME_OK, value_size=3))
    messages = FrameDecoder().feed(b"".join(sender.frames(max_chunks=8)))
    results = [r for m in messages if isinstance(m, Finished) for r in m.results]
    assert [(r.id, r.outcome, r.value_size) for r in results] == [("gone", OUTCOME_ERROR, 0), ("short", OUTCOME_ERROR, 0)]
    assert results[0].error.startswith("the agent lost the value: cannot open its spool file")
    assert results[0].stdout == b"tail"
    assert results[1].error == "the agent lost the value: its spool file ends at byte 2"
    assert not sender
