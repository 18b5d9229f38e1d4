"""The control socket under garbage: every malformed frame or request gets an
error reply (or, for bytes that are not msgpack, a closed connection), never
a traceback, and the engine keeps serving everyone else."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import msgpack
import pytest

from engine.api import Engine
from engine.control import MAX_REQUEST_BYTES, SCHEMAS, SOCKET_NAME, connect

pytestmark = pytest.mark.timeout(120)

VALUES: list[Any] = [None, True, 0, -1, 2**63 - 1, 1.5, float("nan"), "", "x" * 300, b"\x00\xff", [], [1, "a"], {}, {"a": 1}, {1: 2}]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(6 if depth < 2 else 4)
    if kind < 3:
        return rng.choice(VALUES)
    if kind == 3:
        return rng.choice(["jobs", "nodes", "submit", "job_id", "args", "call", "id", "spec", "kinds"])
    if kind == 4:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys: list[Any] = [None, True, 0, -1, 1.5, "", "id", "call", "args", "x"]
    return {rng.choice(keys): random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def random_request(rng: random.Random, rid: int) -> Any:
    """A request that is well framed but wrong in some way (or, now and then, right)."""
    call = rng.choice([*SCHEMAS, "__class__", "close", "_answer", ""])
    schema = SCHEMAS.get(call, {})
    args: Any = {}
    for name in schema:
        if rng.random() < 0.7:
            args[name] = random_value(rng)
    if rng.random() < 0.2:
        args[rng.choice(["bogus", "self", "__init__"])] = random_value(rng)
    if rng.random() < 0.1:
        args = random_value(rng)
    request: Any = {"id": rid, "call": call, "args": args}
    if rng.random() < 0.1:
        request["id"] = random_value(rng)
    return request


async def roundtrip(path: Path, payload: bytes, *, expect_reply: bool = True, hang_up: bool = False) -> list[Any]:
    """Send raw bytes (then, with ``hang_up``, end the stream: a frame left
    incomplete is waited for, like any frame still arriving); read replies
    until the engine answered or closed."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(payload)
        if hang_up:
            writer.write_eof()
        await writer.drain()
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        replies: list[Any] = []
        while expect_reply and not replies:
            data = await asyncio.wait_for(reader.read(65536), 10)
            if not data:
                break
            unpacker.feed(data)
            replies.extend(unpacker)
        return replies
    finally:
        writer.close()


@pytest.fixture
async def engine(tmp_path: Path) -> Any:
    engine = await Engine.open(tmp_path / "state", tmp_path / "config")
    try:
        yield engine
    finally:
        await engine.close()


async def test_random_frames_and_requests_get_error_replies_and_the_engine_keeps_serving(engine, caplog):
    caplog.set_level(logging.WARNING)
    path = engine.state_dir / SOCKET_NAME
    rng = random.Random(12)
    bystander = await connect(engine.state_dir)
    try:
        for round_ in range(300):
            request = random_request(rng, round_)
            payload = msgpack.packb(request, use_bin_type=True)
            replies = await roundtrip(path, payload)
            assert replies, request
            reply = replies[0]
            assert isinstance(reply, dict) and ("ok" in reply or "error" in reply), (request, reply)
            if "error" in reply:
                assert "Traceback" not in reply["error"] and "\n" not in reply["error"], reply
            # The one already connected is served meanwhile, and no job came from garbage.
            if round_ % 50 == 0:
                assert isinstance(await asyncio.wait_for(bystander.nodes(), 5), list)
        for junk in (b"\xc1", rng.randbytes(64), rng.randbytes(64), b"\x91" * 2000, b"\xdf\xff\xff\xff\xff"):
            replies = await roundtrip(path, junk, hang_up=True)
            assert not replies or "error" in replies[0]
        await roundtrip(path, b"\x92\x01", expect_reply=False)  # half a frame, then hang up
        oversized = msgpack.packb({"id": 1, "call": "jobs", "args": {"pad": "x" * (MAX_REQUEST_BYTES + 10)}})
        replies = await roundtrip(path, oversized)
        assert "larger than" in replies[0]["error"]
        assert isinstance(await bystander.jobs(), list)
    finally:
        await bystander.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if "internal error" in r.getMessage() or "failed:" in r.getMessage()]


@pytest.mark.parametrize("spec", [[], ["name", "x"], "spec", 7, None, {"name": 3}, {"kind": "shell"}])
async def test_a_submit_whose_spec_is_not_a_job_is_an_error_reply(engine, spec):
    path = engine.state_dir / SOCKET_NAME
    replies = await roundtrip(path, msgpack.packb({"id": 5, "call": "submit", "args": {"spec": spec}}))
    assert replies[0]["id"] == 5 and replies[0]["kind"] in ("request", "engine"), replies
    assert await (await connect(engine.state_dir)).jobs() == []


@pytest.mark.skipif(os.getuid() != 0 or not shutil.which("setpriv"), reason="needs root to act as another user")
async def test_another_uid_is_refused_even_when_the_modes_let_it_connect():
    # Outside pytest's 0700 tmp dir, so another user can reach the socket at all.
    root = Path(tempfile.mkdtemp(prefix="shoal-uid-"))
    try:
        engine = await Engine.open(root / "state", root / "config")
        try:
            os.chmod(root, 0o755)
            os.chmod(engine.state_dir, 0o755)
            os.chmod(engine.state_dir / SOCKET_NAME, 0o666)  # modes loosened by mistake
            client = (
                "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]);"
                "s.settimeout(10); print(s.recv(4096))"
            )
            proc = await asyncio.create_subprocess_exec(
                "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-I", "-c", client,
                str(engine.state_dir / SOCKET_NAME), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 0, err
            assert b"refused" in out and b"uid 65534" in out
        finally:
            await engine.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def test_a_subscriber_that_does_not_read_lags_instead_of_holding_the_engine(engine):
    from engine import events as ev

    slow = await connect(engine.state_dir)
    other = await connect(engine.state_dir)
    try:
        stream = slow.subscribe(kinds=["Alert"])
        await slow.jobs()  # the subscribe went ahead of this call: it is registered
        engine.coordinator.bus.publish([ev.Alert("info", f"event {i} " + "x" * 200) for i in range(40_000)])
        assert isinstance(await asyncio.wait_for(other.nodes(), 5), list)
        got: list[ev.Event] = []
        async for event in stream:
            got.append(event)
            if isinstance(event, ev.Lagged):
                break
        lagged = got[-1]
        assert isinstance(lagged, ev.Lagged) and lagged.dropped > 0
        assert all(isinstance(e, ev.Alert) for e in got[:-1]) and len(got) - 1 + lagged.dropped <= 40_000
        stream.close()
    finally:
        await slow.close()
        await other.close()
