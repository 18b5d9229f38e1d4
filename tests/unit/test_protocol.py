"""nodeagent/protocol/: every message survives the wire, and bad input is only
ever a ProtocolError (never another exception, never a silent pass)."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodeagent.protocol import (
    ERR_FRAME_TOO_LARGE,
    ERR_PROTOCOL,
    KIND_CALL,
    KIND_PICKLE,
    KIND_SHELL,
    MAX_RESULT_LIMIT,
    MAX_VALUE_CHUNK_BYTES,
    MESSAGE_TYPES,
    OUTCOMES,
    SSH_CIPHERS,
    Ack,
    Cancel,
    Drain,
    Error,
    Finished,
    FrameDecoder,
    Heartbeat,
    Hello,
    Message,
    Output,
    Progress,
    ProtocolError,
    Rejected,
    Run,
    Started,
    TaskResult,
    TaskSpec,
    Undrain,
    Value,
    decode,
    encode,
    encode_many,
)

settings.register_profile("protocol", deadline=None, database=None)
settings.load_profile("protocol")

text = st.text(max_size=12)
ids = st.lists(text, max_size=5)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
# What the wire's numeric fields may hold (see messages.MAX_*): others are protocol errors.
timestamp = st.floats(0, 1e11)
percent = st.floats(0, 100)
str_map = st.dictionaries(text, text, max_size=3)
# Values a task may return or take: msgpack's own types (lists, str-keyed maps).
plain = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), finite, text, st.binary(max_size=16)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def task_specs(draw: st.DrawFn) -> TaskSpec:
    kind = draw(st.sampled_from([KIND_SHELL, KIND_CALL, KIND_PICKLE]))
    fields: dict[str, Any] = {}
    if kind == KIND_SHELL:
        if draw(st.booleans()):
            fields["argv"] = draw(st.lists(text, min_size=1, max_size=4))
        else:
            fields["shell"] = draw(text)
    elif kind == KIND_CALL:
        fields["fn"] = draw(text) + ":" + draw(text)
    else:
        fields["payload"] = draw(st.binary(max_size=32))
    return TaskSpec(
        id=draw(text),
        kind=kind,
        args=draw(st.lists(plain, max_size=3)),
        kwargs=draw(st.dictionaries(text, plain, max_size=3)),
        env=draw(st.none() | str_map.filter(bool)),
        cwd=draw(st.none() | text),
        timeout=draw(st.none() | st.floats(min_value=0.001, max_value=1e6)),
        slots=draw(st.integers(1, 64)),
        report_start=draw(st.booleans()),
        max_result=draw(st.integers(0, MAX_RESULT_LIMIT)),
        **fields,
    )


results = st.builds(
    TaskResult,
    id=text,
    outcome=st.sampled_from(OUTCOMES),
    value=plain,
    error=text,
    traceback=text,
    exit_code=st.none() | st.integers(-255, 255),
    signal=st.none() | st.integers(1, 64),
    started=timestamp,
    ended=timestamp,
    stdout=st.binary(max_size=32),
    stderr=st.binary(max_size=32),
) | st.builds(TaskResult, id=text, outcome=st.sampled_from(OUTCOMES), value_size=st.integers(1, MAX_RESULT_LIMIT))

STRATEGIES: dict[type[Message], st.SearchStrategy[Any]] = {
    Hello: st.builds(
        Hello,
        version=st.integers(0, 10),
        role=st.sampled_from(["console", "agent"]),
        id=text,
        hostname=text,
        slots=st.integers(0, 1024),
        labels=str_map,
        capabilities=st.lists(text, max_size=3),
        drained=st.booleans(),
        holding=ids,
        software=text,
    ),
    Run: st.builds(Run, tasks=st.lists(task_specs(), max_size=4)),
    Cancel: st.builds(Cancel, ids=ids),
    Ack: st.builds(Ack, ids=ids),
    Started: st.builds(Started, ids=ids),
    Drain: st.just(Drain()),
    Undrain: st.just(Undrain()),
    Rejected: st.builds(Rejected, ids=ids, reason=text),
    Progress: st.builds(Progress, id=text, fraction=st.none() | st.floats(0, 1), message=text),
    Output: st.builds(Output, id=text, stream=st.sampled_from(["stdout", "stderr"]), data=st.binary(max_size=64)),
    Value: st.builds(Value, id=text, offset=st.integers(0, 1 << 20), data=st.binary(min_size=1, max_size=64)),
    Finished: st.builds(Finished, results=st.lists(results, max_size=4)),
    Heartbeat: st.builds(
        Heartbeat,
        time=timestamp,
        cpu=percent,
        mem=percent,
        load=st.lists(st.floats(0, 1e6), min_size=3, max_size=3),
        slots_total=st.integers(0, 512),
        slots_busy=st.integers(0, 512),
        queued=st.integers(0, 10**6),
        drained=st.booleans(),
    ),
    Error: st.builds(Error, code=text, message=text),
}
messages: st.SearchStrategy[Message] = st.one_of(*STRATEGIES.values())


def test_every_message_type_has_a_strategy() -> None:
    assert set(STRATEGIES) == set(MESSAGE_TYPES.values())


@given(messages)
def test_message_round_trips(message: Message) -> None:
    assert decode(encode(message)) == message


@given(st.lists(messages, max_size=8), st.data())
def test_stream_of_frames_decodes_the_same_however_it_is_cut(batch: list[Message], data: st.DataObject) -> None:
    stream = encode_many(batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    decoder = FrameDecoder()
    out: list[Message] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out.extend(decoder.feed(stream[start:end]))
    assert out == batch


@given(st.binary(max_size=256))
def test_random_bytes_are_messages_or_protocol_errors(blob: bytes) -> None:
    decoder = FrameDecoder(max_frame_bytes=4096)
    try:
        for message in decoder.feed(blob):
            assert isinstance(message, Message)
    except ProtocolError as exc:
        assert exc.code in (ERR_PROTOCOL, ERR_FRAME_TOO_LARGE)


@given(
    st.dictionaries(
        st.sampled_from(["type", "version", "role", "id", "tasks", "ids", "results", "reason", "code", "message",
                         "stream", "data", "load", "time", "cpu", "mem", "slots_total", "slots_busy", "queued",
                         "offset"]),
        plain,
        max_size=6,
    ),
    st.sampled_from(sorted(MESSAGE_TYPES)),
)
def test_random_fields_are_messages_or_protocol_errors(body: dict[str, Any], mtype: str) -> None:
    frame = msgpack.packb({**body, "type": mtype}, use_bin_type=True)
    try:
        assert isinstance(decode(frame), MESSAGE_TYPES[mtype])
    except ProtocolError as exc:
        assert exc.code == ERR_PROTOCOL


@pytest.mark.parametrize(
    "obj, needle",
    [
        ([1, 2], "must be a map"),
        ({"no": "type"}, "'type'"),
        ({"type": "teleport"}, "unknown message type"),
        ({"type": "ack", "ids": "a1"}, "'ids'"),
        ({"type": "ack", "ids": [1]}, "strings"),
        ({"type": "hello", "version": 1, "role": "server", "id": "x"}, "role"),
        ({"type": "hello", "version": True, "role": "console", "id": "x"}, "'version'"),
        ({"type": "run", "tasks": [{"id": "a", "kind": "shell"}]}, "exactly one"),
        ({"type": "run", "tasks": [{"id": "a", "kind": "call", "fn": "nocolon"}]}, "module:function"),
        ({"type": "run", "tasks": [{"id": "a", "kind": "shell", "shell": "x", "timeout": 0}]}, "timeout"),
        ({"type": "run", "tasks": [{"id": "a", "kind": "teleport"}]}, "kind"),
        ({"type": "finished", "results": [{"id": "a", "outcome": "meh"}]}, "outcome"),
        ({"type": "output", "id": "a", "stream": "stdin", "data": b""}, "stream"),
        # Every field a big value added is checked on decode: type and range.
        ({"type": "run", "tasks": [{"id": "a", "kind": "shell", "shell": "x", "max_result": -1}]}, "'max_result'"),
        ({"type": "run", "tasks": [{"id": "a", "kind": "shell", "shell": "x", "max_result": 1 << 32}]}, "'max_result'"),
        ({"type": "run", "tasks": [{"id": "a", "kind": "shell", "shell": "x", "max_result": "1MiB"}]}, "'max_result'"),
        ({"type": "run", "tasks": [{"id": "a", "kind": "shell", "shell": "x", "max_result": True}]}, "'max_result'"),
        ({"type": "finished", "results": [{"id": "a", "outcome": "ok", "value_size": -1}]}, "'value_size'"),
        ({"type": "finished", "results": [{"id": "a", "outcome": "ok", "value_size": 1.5}]}, "'value_size'"),
        ({"type": "finished", "results": [{"id": "a", "outcome": "ok", "value_size": 1 << 32}]}, "'value_size'"),
        ({"type": "finished", "results": [{"id": "a", "outcome": "ok", "value": 1, "value_size": 3}]}, "not both"),
        ({"type": "value", "offset": 0, "data": b"x"}, "'id'"),
        ({"type": "value", "id": 7, "offset": 0, "data": b"x"}, "'id'"),
        ({"type": "value", "id": "a", "data": b"x"}, "'offset'"),
        ({"type": "value", "id": "a", "offset": -1, "data": b"x"}, "'offset'"),
        ({"type": "value", "id": "a", "offset": False, "data": b"x"}, "'offset'"),
        ({"type": "value", "id": "a", "offset": 0, "data": "text"}, "'data'"),
        ({"type": "value", "id": "a", "offset": 0, "data": b""}, "'data'"),
        ({"type": "value", "id": "a", "offset": 0, "data": b"x" * (MAX_VALUE_CHUNK_BYTES + 1)}, "'data'"),
        ({"type": "value", "id": "a", "offset": MAX_RESULT_LIMIT, "data": b"x"}, "past"),
    ],
)
def test_bad_frames_name_the_problem(obj: Any, needle: str) -> None:
    with pytest.raises(ProtocolError, match=needle) as caught:
        decode(msgpack.packb(obj, use_bin_type=True))
    assert caught.value.code == ERR_PROTOCOL


def test_ext_types_and_non_string_keys_are_refused() -> None:
    with pytest.raises(ProtocolError, match="ext type"):
        FrameDecoder().feed(msgpack.packb({"type": "ack", "ids": [], "x": msgpack.ExtType(1, b"!")}))
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(msgpack.packb({"type": "ack", "ids": [], 7: "x"}))


def test_oversized_frame_is_frame_too_large_even_when_fed_in_pieces() -> None:
    frame = encode(Output(id="a", stream="stdout", data=b"x" * 10_000))
    decoder = FrameDecoder(max_frame_bytes=4096)
    with pytest.raises(ProtocolError) as caught:
        for start in range(0, len(frame), 1000):
            decoder.feed(frame[start : start + 1000])
    assert caught.value.code == ERR_FRAME_TOO_LARGE
    with pytest.raises(ProtocolError) as caught:
        decode(frame, max_frame_bytes=4096)
    assert caught.value.code == ERR_FRAME_TOO_LARGE


def test_many_small_frames_in_one_large_read_are_fine() -> None:
    batch = [Ack(ids=[f"a{i}"]) for i in range(2000)]
    stream = encode_many(batch)
    assert len(stream) > 4096
    assert FrameDecoder(max_frame_bytes=4096).feed(stream) == batch


def test_defaults_are_left_off_the_wire() -> None:
    assert msgpack.unpackb(encode(Finished(results=[TaskResult(id="a", outcome="ok")]))) == {
        "type": "finished",
        "results": [{"id": "a", "outcome": "ok"}],
    }
    # A task with the default max_result costs no more than before it existed.
    assert msgpack.unpackb(encode(Run(tasks=[TaskSpec(id="a", kind=KIND_SHELL, shell="x")]))) == {
        "type": "run",
        "tasks": [{"id": "a", "kind": "shell", "shell": "x"}],
    }


def test_no_cipher_needs_the_cbc_countermeasure_that_is_switched_off() -> None:
    # skip_cbc_countermeasure drops asyncssh's empty SSH_MSG_IGNORE before
    # each packet; that is only sound while no CBC mode can be negotiated.
    assert SSH_CIPHERS and not any("cbc" in cipher for cipher in SSH_CIPHERS)
