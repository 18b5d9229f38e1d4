"""The agent's SSH surface: who gets in, with what, and what they may open."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import AsyncIterator
from typing import Any

import asyncssh
import msgpack
import pytest
from asyncssh.packet import Boolean, String, UInt32
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine.link as link_module
import nodeagent.server as server_module
from engine.link import AuthRefused, HostKeyMismatch, UnknownHostKey
from nodeagent.journal import Journal
from nodeagent.protocol import (
    ERR_FRAME_TOO_LARGE,
    ERR_PROTOCOL,
    ERR_STATE,
    ERR_VERSION,
    PROTOCOL_VERSION,
    SUBSYSTEM,
    Error,
    FrameDecoder,
    Hello,
    Message,
    ProtocolError,
    Started,
    decode_body,
    encode,
)
from nodeagent.server import load_or_create_host_key, main
from tests.integration.conftest import shell

pytestmark = pytest.mark.timeout(60)


def ssh_options(agent: Any, **overrides: Any) -> dict[str, Any]:
    """A raw asyncssh client that speaks the agent's algorithms (tests only)."""
    options: dict[str, Any] = dict(
        known_hosts=None,
        username="shoal",
        client_keys=[agent.client_key],
        agent_path=None,
        config=None,
        kex_algs=server_module.KEX_ALGS,
        encryption_algs=server_module.CIPHERS,
        mac_algs=server_module.MACS,
        connect_timeout=10,
    )
    options.update(overrides)
    return options


@contextlib.asynccontextmanager
async def ssh(agent: Any, **overrides: Any) -> AsyncIterator[asyncssh.SSHClientConnection]:
    conn = await asyncssh.connect("127.0.0.1", agent.port, **ssh_options(agent, **overrides))
    try:
        yield conn
    finally:
        conn.close()
        await asyncio.wait_for(conn.wait_closed(), 10)


async def exchange(conn: asyncssh.SSHClientConnection, data: bytes, timeout: float = 10.0) -> list[Message]:
    """Open a shoal channel, send raw bytes, return what the agent sent before closing."""
    writer, reader, _ = await conn.open_session(subsystem=SUBSYSTEM, encoding=None)
    writer.write(data)
    raw = await asyncio.wait_for(reader.read(), timeout)
    await asyncio.wait_for(writer.channel.wait_closed(), timeout)
    return FrameDecoder().feed(raw)


def console_hello(version: int = PROTOCOL_VERSION, console_id: str = "probe") -> bytes:
    return encode(Hello(version=version, role="console", id=console_id))


# --- authentication -------------------------------------------------------------


async def test_unknown_client_key_is_refused(agent):
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(AuthRefused):
        await agent.link(client_key=stranger)


async def test_only_public_key_auth_is_offered(agent):
    methods = await asyncssh.get_server_auth_methods(
        "127.0.0.1", agent.port, "shoal", kex_algs=server_module.KEX_ALGS, config=None
    )
    assert methods == ["publickey"]
    with pytest.raises(asyncssh.PermissionDenied):
        await asyncssh.connect("127.0.0.1", agent.port, **ssh_options(agent, client_keys=None, password="secret"))


async def test_key_added_to_authorized_keys_is_accepted_without_restart(agent, authorized_keys):
    newcomer = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(AuthRefused):
        await agent.link(client_key=newcomer)
    with authorized_keys.open("ab") as file:
        file.write(newcomer.export_public_key())
    # The reload keys on mtime; make sure it moves even on a coarse clock.
    later = authorized_keys.stat().st_mtime_ns + 1_000_000_000
    os.utime(authorized_keys, ns=(later, later))
    link = await agent.link(client_key=newcomer)
    assert link.hello is not None
    link.close()


# --- host keys ---------------------------------------------------------------------


async def test_changed_host_key_is_refused_with_both_fingerprints(agent):
    other = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(HostKeyMismatch) as caught:
        await agent.link(pinned_host_key=other)
    message = str(caught.value)
    assert other.get_fingerprint("sha256") in message
    assert agent.host_key.get_fingerprint("sha256") in message
    assert caught.value.key.public_data == agent.host_key.public_data


async def test_unknown_host_key_is_refused_unless_accepted(agent):
    with pytest.raises(UnknownHostKey) as caught:
        await agent.link(pinned_host_key=None)
    assert caught.value.fingerprint == agent.host_key.get_fingerprint("sha256")
    link = await agent.link(pinned_host_key=None, accept_unknown=True)
    assert link.host_key.public_data == agent.host_key.public_data
    link.close()


async def test_host_key_is_created_private_and_kept(start_agent, tmp_path):
    first = await start_agent(name="keep")
    key_file = tmp_path / "keep" / server_module.HOST_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_or_create_host_key(tmp_path / "keep").public_data == first.host_key.public_data
    await first.stop()
    second = await start_agent(name="keep")
    assert second.host_key.public_data == first.host_key.public_data
    assert second.agent.agent_id == first.agent.agent_id


# --- algorithms ---------------------------------------------------------------------


def test_link_and_agent_offer_the_same_algorithms():
    for name in ("KEX_ALGS", "COMPAT_KEX_ALGS", "HOST_KEY_ALGS", "CIPHERS", "MACS"):
        assert getattr(link_module, name) == getattr(server_module, name), name


@pytest.mark.parametrize(
    "weak",
    [
        dict(kex_algs=["diffie-hellman-group14-sha1"]),
        dict(kex_algs=["ecdh-sha2-nistp256"]),
        dict(kex_algs=["diffie-hellman-group16-sha512"]),
        dict(kex_algs=["curve25519-sha256"]),  # only with --compat-kex
        dict(encryption_algs=["aes128-cbc"]),
        dict(encryption_algs=["aes256-ctr"], mac_algs=["hmac-sha1"]),
        dict(server_host_key_algs=["ecdsa-sha2-nistp256", "rsa-sha2-256"]),
    ],
    ids=["dh-group14-sha1", "ecdh-nistp256", "dh-group16", "curve25519-default", "cbc", "ctr-sha1", "nist-hostkey"],
)
async def test_weak_algorithms_are_refused(agent, weak):
    with pytest.raises(asyncssh.KeyExchangeFailed):
        await asyncssh.connect("127.0.0.1", agent.port, **ssh_options(agent, **weak))


async def test_compat_kex_admits_plain_curve25519(start_agent):
    agent = await start_agent(compat_kex=True)
    async with ssh(agent, kex_algs=["curve25519-sha256"]) as conn:
        assert conn.get_extra_info("server_version")
    link = await agent.link(compat_kex=True)
    assert link.hello is not None
    link.close()


# --- channels ------------------------------------------------------------------------


async def test_only_the_shoal_subsystem_opens(agent):
    async with ssh(agent) as conn:
        for request in (dict(subsystem="sftp"), dict(command="id"), dict()):
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.create_session(asyncssh.SSHClientSession, **request)
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_session(asyncssh.SSHClientSession, subsystem=SUBSYSTEM, term_type="xterm")
        # The refusals leave the connection good for the channel it may open.
        chan, _ = await conn.create_session(asyncssh.SSHClientSession, subsystem=SUBSYSTEM, encoding=None)
        chan.close()


async def test_agent_and_x11_forwarding_requests_are_refused(agent):
    async with ssh(agent) as conn:
        chan, _ = await conn.create_session(asyncssh.SSHClientSession, subsystem=SUBSYSTEM, encoding=None)
        # asyncssh's client ignores these refusals, so ask at the packet level.
        assert not await chan._make_request(b"auth-agent-req@openssh.com")
        assert not await chan._make_request(
            b"x11-req", Boolean(False), String(b"MIT-MAGIC-COOKIE-1"), String(b"00" * 16), UInt32(0)
        )
        chan.close()


async def test_port_forwarding_is_refused(agent):
    async with ssh(agent) as conn:
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_connection(asyncssh.SSHTCPSession, "127.0.0.1", agent.port)
        with pytest.raises(asyncssh.ChannelListenError):
            await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", agent.port)
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_unix_connection(asyncssh.SSHUNIXSession, "/tmp/.X11-unix/X0")


async def test_channels_per_connection_are_capped(agent):
    async with ssh(agent) as conn:
        chans = []
        for _ in range(server_module.MAX_CHANNELS_PER_CONNECTION):
            chan, _ = await conn.create_session(asyncssh.SSHClientSession, subsystem=SUBSYSTEM, encoding=None)
            chans.append(chan)
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_session(asyncssh.SSHClientSession, subsystem=SUBSYSTEM, encoding=None)
        chans[0].close()
        await chans[0].wait_closed()
        chan, _ = await conn.create_session(asyncssh.SSHClientSession, subsystem=SUBSYSTEM, encoding=None)
        chan.close()


# --- frames ----------------------------------------------------------------------------


async def test_run_before_hello_is_a_state_error(agent):
    async with ssh(agent) as conn:
        replies = await exchange(conn, msgpack.packb({"type": "run", "tasks": []}))
    assert [type(m) for m in replies] == [Error]
    assert replies[0].code == ERR_STATE


async def test_incompatible_version_is_refused_naming_both(agent):
    async with ssh(agent) as conn:
        replies = await exchange(conn, console_hello(version=PROTOCOL_VERSION + 41))
    assert replies[0].code == ERR_VERSION
    assert str(PROTOCOL_VERSION + 41) in replies[0].message and str(PROTOCOL_VERSION) in replies[0].message


async def test_oversized_frame_is_refused_as_frame_too_large(start_agent):
    agent = await start_agent(max_frame_bytes=64 * 1024)
    async with ssh(agent) as conn:
        big = msgpack.packb({"type": "hello", "pad": b"x" * 200_000}, use_bin_type=True)
        replies = await exchange(conn, big)
    assert replies[-1].code == ERR_FRAME_TOO_LARGE


def _expected_code(frame: bytes) -> str | None:
    """The error code the agent must answer a first frame with, or None if the frame is fine."""
    try:
        message = decode_body(msgpack.unpackb(frame, strict_map_key=True, raw=False))
    except ProtocolError as exc:
        return exc.code
    except Exception:
        return ERR_PROTOCOL
    if isinstance(message, Hello):
        if message.role != "console":
            return ERR_PROTOCOL
        if message.version != PROTOCOL_VERSION:
            return ERR_VERSION
        return None if message.id else ERR_PROTOCOL
    if isinstance(message, Error):
        return None  # a peer's error just closes the channel
    return ERR_STATE if message.TYPE in ("run", "cancel", "ack", "drain", "undrain") else ERR_PROTOCOL


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False),
    st.text(max_size=20), st.binary(max_size=20),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
type_names = st.sampled_from(["hello", "run", "cancel", "ack", "drain", "undrain", "started", "finished",
                              "heartbeat", "output", "progress", "rejected", "error", "bogus", ""])
frames = st.one_of(
    # Maps that look like messages, with random fields.
    st.builds(lambda t, body: msgpack.packb({"type": t, **body}, use_bin_type=True),
              type_names, st.dictionaries(st.sampled_from(["version", "role", "id", "tasks", "ids", "results", "x"]), values, max_size=4)),
    # Any msgpack value at all.
    values.map(lambda v: msgpack.packb(v, use_bin_type=True)),
    # Ext types and non-string keys, which the decoder refuses.
    st.binary(max_size=8).map(lambda b: msgpack.packb({"type": "hello", "x": msgpack.ExtType(5, b)})),
    st.integers().map(lambda i: msgpack.packb({i % 1000: "x", "type": "hello"})),
)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frame=frames)
async def test_malformed_frames_close_only_their_channel(shared_agent, frame):
    agent, conn, busy_console = shared_agent
    expected = _expected_code(frame)
    if expected is None:
        return
    replies = await exchange(conn, frame)
    assert [type(m) for m in replies] == [Error], replies
    assert replies[0].code == expected
    assert not busy_console.link.closed


@pytest.fixture
async def shared_agent(start_agent):
    """One agent for every hypothesis example, with a second console's task
    running the whole time; afterwards that task must finish normally."""
    agent = await start_agent()
    busy = await agent.console("busy-console")
    task = shell("sleep 1; echo survived")
    busy.run(task)
    await busy.next(Started)
    async with ssh(agent) as conn:
        yield agent, conn, busy
    result = (await busy.results([task.id]))[task.id]
    assert result.ok and result.stdout == b"survived\n"
    assert not busy.link.closed


# --- floods ------------------------------------------------------------------------------


async def test_handshake_flood_does_not_starve_a_console(agent):
    """Raw TCP connections that never start SSH, opened as fast as the loop
    allows from eight loopback addresses (enough to overflow the pending cap);
    a console from another address still gets in and runs a task quickly."""
    gate = agent.agent.gate
    held: list[asyncio.StreamWriter] = []
    stop = asyncio.Event()

    async def flood() -> None:
        sources = [f"127.0.1.{i}" for i in range(1, 9)]
        while not stop.is_set() and len(held) < 600:
            source = sources[len(held) % len(sources)]
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", agent.port, local_addr=(source, 0))
                held.append(writer)
            await asyncio.sleep(0)

    flooding = asyncio.create_task(flood())
    try:
        # Let the flood fill the pending cap before the console arrives.
        deadline = asyncio.get_running_loop().time() + 5
        while len(gate._pending) < server_module.MAX_PENDING_HANDSHAKES:
            assert asyncio.get_running_loop().time() < deadline, "the flood never filled the pending cap"
            await asyncio.sleep(0.01)
        began = asyncio.get_running_loop().time()
        console = await agent.console("flooded-console", local_addr=("127.0.0.2", 0))
        task = shell("echo through")
        console.run(task)
        result = (await console.results([task.id], timeout=10))[task.id]
        assert result.ok and result.stdout == b"through\n"
        assert asyncio.get_running_loop().time() - began < 5
        assert len(gate._pending) <= server_module.MAX_PENDING_HANDSHAKES
    finally:
        stop.set()
        await asyncio.wait_for(flooding, 10)
        for writer in held:
            writer.close()


class _FakeConn:
    """Stands in for an SSH connection in the gate's bookkeeping only."""

    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


def test_gate_limits_each_source_and_evicts_the_oldest_pending():
    gate = server_module.ConnectionGate(rate=1.0, burst=3, max_pending=4, max_connections=6)
    c = [_FakeConn() for _ in range(9)]
    # A source gets its burst, then waits for tokens.
    assert [gate.admit(conn, "10.0.0.1") for conn in c[:4]] == [True, True, True, False]
    assert gate.admit(c[4], "10.0.0.2")
    # The pending cap is full: a newcomer is admitted and the oldest dropped.
    assert gate.admit(c[5], "10.0.0.2")
    assert [conn.aborted for conn in c[:3]] == [True, False, False]
    gate.closed(c[0])
    # An authenticated connection no longer counts as pending (nor is evicted).
    gate.authenticated(c[1])
    assert gate.admit(c[6], "10.0.0.3") and gate.admit(c[7], "10.0.0.4")
    assert not c[1].aborted and c[2].aborted
    # Six open (c1, c4..c7, and the evicted c2 until its connection_lost): the total cap.
    assert not gate.admit(c[8], "10.0.0.5")


# --- the command line ---------------------------------------------------------------------


def test_agent_refuses_to_start_without_authorized_keys(tmp_path, capsys):
    assert main(["--listen", "127.0.0.1:0", "--state-dir", str(tmp_path), "--no-advertise"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--authorized-keys" in err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--slots", "0"], "--slots"),
        (["--slots", "many"], "--slots"),
        (["--listen", "nowhere"], "--listen"),
        (["--labels", "gpu"], "--labels"),
        (["--bogus"], "--bogus"),
        (["--mdns-interface", "eth0"], "--mdns-interface"),
        (["--authorized-keys", "/nonexistent/keys"], "/nonexistent/keys"),
    ],
)
def test_bad_flags_exit_2_with_one_line(tmp_path, capsys, argv, needle):
    base = ["--state-dir", str(tmp_path / "s"), "--no-advertise", "--listen", "127.0.0.1:0"]
    if "--authorized-keys" not in argv:
        keys = tmp_path / "keys"
        keys.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_public_key())
        base += ["--authorized-keys", str(keys)]
    assert main(base + argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err


def test_authorized_keys_with_garbage_is_refused(tmp_path, capsys):
    keys = tmp_path / "keys"
    keys.write_text("# console\nssh-ed25519 not-base64 someone\n")
    assert main(["--authorized-keys", str(keys), "--state-dir", str(tmp_path / "s"), "--no-advertise"]) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and err.count("\n") == 1


def test_second_agent_on_the_same_state_dir_exits_2(tmp_path, authorized_keys, capsys):
    holder = Journal(tmp_path / "state")
    holder.open()
    try:
        argv = ["--authorized-keys", str(authorized_keys), "--state-dir", str(tmp_path / "state"),
                "--listen", "127.0.0.1:0", "--no-advertise"]
        assert main(argv) == 2
    finally:
        holder.close()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "in use" in err
