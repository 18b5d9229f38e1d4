"""The console's end of an agent connection: SSH, the ``shoal`` subsystem, frames.

``open_link`` connects with the console's key, checks the agent's host key
against the pinned one BEFORE authenticating, opens the subsystem, says hello
and returns an ``AgentLink`` once the agent has answered. The link moves
``nodeagent.protocol`` messages: ``send_many`` is one channel write for a whole
batch, ``recv_many`` hands over everything decoded so far in one await.

A big value comes in ``value`` frames ahead of its result; the link puts the
pieces together (``ValueAssembly``) and hands on the ``finished`` frame with
the whole value in it, so nothing above the link sees pieces. Pieces die
with the link: after a reconnect the agent sends the value again, whole.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from dataclasses import replace
from operator import attrgetter
from typing import Any

import asyncssh

from engine.spec import MAX_MAX_RESULT
from nodeagent import protocol
from nodeagent.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    ERR_PROTOCOL,
    PROTOCOL_VERSION,
    SUBSYSTEM,
    Error,
    Finished,
    FrameDecoder,
    Hello,
    Message,
    ProtocolError,
    TaskResult,
    Value,
    decode_body,
    encode,
    encode_many,
    unpack,
)

KEX_ALGS = protocol.SSH_KEX_ALGS
COMPAT_KEX_ALGS = protocol.SSH_COMPAT_KEX_ALGS
HOST_KEY_ALGS = protocol.SSH_HOST_KEY_ALGS
CIPHERS = protocol.SSH_CIPHERS
MACS = protocol.SSH_MACS

SSH_USERNAME = "shoal"  # the agent authorizes keys, not user names
MAX_PACKET_SIZE = 256 * 1024
WINDOW_SIZE = 8 * 1024 * 1024
# Decoded messages held for a slow reader before the channel stops reading
# (the SSH window then pushes back on the agent).
RECV_HIGH_WATER = 50_000
RECV_LOW_WATER = 10_000


# Bytes of values being put together on one link at a time: an agent sends
# one value at a time, and no job allows one over MAX_MAX_RESULT (plus the
# few bytes of its msgpack header).
MAX_ASSEMBLING_BYTES = MAX_MAX_RESULT + 16


_VALUE_SIZE = attrgetter("value_size")


class ValueAssembly:
    """Values arriving in pieces, per attempt, until their results come."""

    def __init__(self, max_bytes: int = MAX_ASSEMBLING_BYTES) -> None:
        self._max_bytes = max_bytes
        self._parts: dict[str, bytearray] = {}
        self._held = 0  # bytes in self._parts

    def __bool__(self) -> bool:
        return bool(self._parts)

    def add(self, piece: Value) -> None:
        buf = self._parts.get(piece.id)
        have = 0 if buf is None else len(buf)
        if piece.offset != have:
            raise ProtocolError(f"value: piece of {piece.id!r} at byte {piece.offset}, expected byte {have}")
        if self._held + len(piece.data) > self._max_bytes:
            raise ProtocolError(f"value: more than {self._max_bytes} bytes of values pending")
        if buf is None:
            self._parts[piece.id] = bytearray(piece.data)
        else:
            buf += piece.data
        self._held += len(piece.data)

    def complete(self, finished: Finished) -> Finished:
        """``finished`` with each streamed value in place; a result without
        one drops whatever pieces came for its attempt."""
        if not self._parts and not any(map(_VALUE_SIZE, finished.results)):
            return finished  # the common case, at C speed: no value in pieces at all
        results: list[TaskResult] | None = None
        for i, result in enumerate(finished.results):
            buf = self._parts.pop(result.id, None)
            if buf is not None:
                self._held -= len(buf)
            if not result.value_size:
                continue  # e.g. the agent could not send it whole and says so
            if buf is None or len(buf) != result.value_size:
                got = 0 if buf is None else len(buf)
                raise ProtocolError(f"finished: value of {result.id!r} is {result.value_size} bytes, got {got}")
            value = unpack(buf, f"finished: value of {result.id!r} is not one msgpack value")
            if results is None:
                results = list(finished.results)
            results[i] = replace(result, value=value, value_size=0)
        return finished if results is None else Finished(results=results)


class LinkError(Exception):
    """Any failure to reach, trust or talk to an agent. ``reason`` is the
    cause alone (no address), for a line that names the node itself."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


def connect_reason(exc: BaseException, host: str, conn: asyncssh.SSHClientConnection | None, timeout: float) -> str:
    """Why a connection attempt failed, in an operator's words; never empty."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name {host!r} ({exc.strerror or 'unknown name'})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens on that port: is the agent running?)"
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer within {timeout:g} s (a firewall, or a host that is down?)"
    if isinstance(exc, (asyncssh.ConnectionLost, asyncssh.ProtocolError)) and (
        conn is None or conn.get_extra_info("server_version") is None
    ):
        return "not an SSH server (it closed the connection without an SSH greeting): is the port right?"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    if isinstance(exc, asyncssh.DisconnectError) and exc.reason:
        return exc.reason
    return str(exc) or type(exc).__name__


class HostKeyMismatch(LinkError):
    """The agent presented a different host key from the pinned one.

    ``key`` is the presented key (as in ``UnknownHostKey``), ``expected`` the pinned one.
    """

    def __init__(self, host: str, port: int, expected: asyncssh.SSHKey, presented: asyncssh.SSHKey) -> None:
        self.expected = expected
        self.key = presented
        self.fingerprint = fingerprint(presented)
        reason = f"host key CHANGED: expected {fingerprint(expected)}, presented {fingerprint(presented)}"
        super().__init__(f"host key of {host}:{port} changed: expected {fingerprint(expected)}, presented {fingerprint(presented)}", reason)


class UnknownHostKey(LinkError):
    """No key is pinned for this agent; ``key`` is what it presented, to pin."""

    def __init__(self, host: str, port: int, key: asyncssh.SSHKey) -> None:
        self.key = key
        self.fingerprint = fingerprint(key)
        super().__init__(f"host key of {host}:{port} is not trusted yet: {self.fingerprint}", f"host key not trusted yet: {self.fingerprint}")


class AuthRefused(LinkError):
    """The agent does not accept the console's key."""


class AgentRefused(LinkError):
    """The agent sent an error frame during the handshake (e.g. version)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(f"agent refused ({code}): {message}")


class LinkClosed(LinkError):
    """The channel ended; ``recv`` after the last message raises this."""


def fingerprint(key: asyncssh.SSHKey) -> str:
    return key.get_fingerprint("sha256")


class _HostKeyCheck(asyncssh.SSHClient):
    """Decides on the host key during key exchange, before any auth is sent."""

    def __init__(self, pinned: asyncssh.SSHKey | None, accept_unknown: bool) -> None:
        self._pinned = pinned
        self._accept_unknown = accept_unknown
        self.presented: asyncssh.SSHKey | None = None
        self.conn: asyncssh.SSHClientConnection | None = None

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self.conn = conn  # to tell afterwards whether it ever said SSH
        protocol.skip_cbc_countermeasure(conn)

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.presented = key
        if self._pinned is None:
            return self._accept_unknown
        # SSHKey has no value equality; a pinned key may also be a private key.
        return key.public_data == self._pinned.public_data


class _LinkChannel(asyncssh.SSHClientSession[bytes]):
    def __init__(self, link: AgentLink) -> None:
        self._link = link

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self._link._on_data(data)

    def eof_received(self) -> bool:
        self._link._on_end("the agent closed the channel")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._link._on_end(f"connection lost: {exc}" if exc else "the channel closed")
        # The connection exists for this one channel.
        self._link.conn.close()

    def pause_writing(self) -> None:
        self._link._writable.clear()

    def resume_writing(self) -> None:
        self._link._writable.set()


class AgentLink:
    """One console-to-agent channel. Built by ``open_link``."""

    def __init__(self, conn: asyncssh.SSHClientConnection, host_key: asyncssh.SSHKey, max_frame_bytes: int) -> None:
        self.conn = conn
        self.host_key = host_key
        self.hello: Hello | None = None
        self.close_reason: str | None = None
        self._chan: asyncssh.SSHClientChannel[bytes] | None = None
        self._decoder = FrameDecoder(max_frame_bytes)
        self._values = ValueAssembly()
        self._inbox: deque[Message] = deque()
        self._arrived = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._reading_paused = False
        self._peer_error: str | None = None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.host_key)

    @property
    def closed(self) -> bool:
        return self.close_reason is not None

    # --- sending ---------------------------------------------------------------

    def send(self, message: Message) -> None:
        self._write(encode(message))

    def send_many(self, messages: list[Message]) -> None:
        """Several messages in one channel write."""
        if messages:
            self._write(encode_many(messages))

    def _write(self, data: bytes) -> None:
        if self._chan is None or self.closed:
            raise LinkClosed(self.close_reason or "the link is closed")
        self._chan.write(data)

    async def drain(self) -> None:
        """Wait while the agent is not taking data (its SSH window is full).

        Returns at once in the common case; callers await it between batches,
        never per message.
        """
        if not self._writable.is_set():
            await self._writable.wait()

    # --- receiving ---------------------------------------------------------------

    def _on_data(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            for obj in self._decoder.feed_raw(data):
                message = decode_body(obj)
                if isinstance(message, Finished):
                    message = self._values.complete(message)
                elif isinstance(message, Value):
                    self._values.add(message)
                    continue
                elif isinstance(message, Error):
                    # The agent closes right after; say why when it does.
                    self._peer_error = f"agent error {message.code}: {message.message}"
                self._inbox.append(message)
        except ProtocolError as exc:
            # Tell the agent why, keep what decoded, then end the link.
            self._fail(exc.code, str(exc))
        if self._inbox:
            self._arrived.set()
            if len(self._inbox) > RECV_HIGH_WATER and self._chan is not None and not self._reading_paused:
                self._reading_paused = True
                self._chan.pause_reading()

    def _fail(self, code: str, message: str) -> None:
        if self._chan is not None and not self.closed:
            self._chan.write(encode(Error(code=code, message=message)))
            self._chan.close()
        self._on_end(f"{code}: {message}")

    def _on_end(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = self._peer_error or reason
        self._arrived.set()
        self._writable.set()

    async def recv_many(self) -> list[Message]:
        """Every message received so far (at least one); LinkClosed at the end."""
        while not self._inbox:
            if self.closed:
                raise LinkClosed(self.close_reason or "closed")
            self._arrived.clear()
            await self._arrived.wait()
        batch = list(self._inbox)
        self._inbox.clear()
        self._resume_reading_if_low()
        return batch

    async def recv(self) -> Message:
        while not self._inbox:
            if self.closed:
                raise LinkClosed(self.close_reason or "closed")
            self._arrived.clear()
            await self._arrived.wait()
        message = self._inbox.popleft()
        self._resume_reading_if_low()
        return message

    def _resume_reading_if_low(self) -> None:
        if self._reading_paused and len(self._inbox) < RECV_LOW_WATER and self._chan is not None:
            self._reading_paused = False
            self._chan.resume_reading()

    def __aiter__(self) -> AgentLink:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.recv()
        except LinkClosed:
            raise StopAsyncIteration from None

    # --- closing -----------------------------------------------------------------

    def close(self) -> None:
        self._on_end("closed by the console")
        self.conn.close()

    async def wait_closed(self) -> None:
        await self.conn.wait_closed()

    async def __aenter__(self) -> AgentLink:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()
        await self.wait_closed()

    # --- setup ---------------------------------------------------------------------

    async def _open(self, console_id: str, timeout: float) -> None:
        chan, _ = await self.conn.create_session(
            lambda: _LinkChannel(self), subsystem=SUBSYSTEM, encoding=None, window=WINDOW_SIZE,
            max_pktsize=MAX_PACKET_SIZE,
        )
        self._chan = chan
        self.send(Hello(version=PROTOCOL_VERSION, role="console", id=console_id))
        first = await asyncio.wait_for(self.recv(), timeout)
        if isinstance(first, Error):
            raise AgentRefused(first.code, first.message)
        if not isinstance(first, Hello) or first.role != "agent":
            self._fail(ERR_PROTOCOL, f"expected the agent's hello, got {first.TYPE!r}")
            raise LinkError(f"agent answered {first.TYPE!r} instead of hello")
        self.hello = first


async def open_link(
    host: str,
    port: int,
    *,
    client_key: asyncssh.SSHKey,
    console_id: str,
    pinned_host_key: asyncssh.SSHKey | None,
    accept_unknown: bool = False,
    connect_timeout: float = 10,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    compat_kex: bool = False,
    local_addr: tuple[str, int] | None = None,
) -> AgentLink:
    """Connect, verify the host key, authenticate, say hello. Raises LinkError.

    ``compat_kex`` also offers plain curve25519 (for agents run with
    ``--compat-kex``); ``local_addr`` picks the source address on a
    multi-homed console.
    """
    check = _HostKeyCheck(pinned_host_key, accept_unknown)
    where = f"{host}:{port}"
    try:
        conn, _ = await asyncssh.create_connection(
            lambda: check,
            host,
            port,
            # An empty trust list sends every key to validate_host_public_key.
            known_hosts=([], [], []),
            username=SSH_USERNAME,
            client_keys=[client_key],
            agent_path=None,
            password=None,
            preferred_auth="publickey",
            kbdint_auth=False,
            password_auth=False,
            host_based_auth=False,
            gss_host=None,
            gss_kex=False,
            gss_auth=False,
            kex_algs=KEX_ALGS + (COMPAT_KEX_ALGS if compat_kex else []),
            server_host_key_algs=HOST_KEY_ALGS,
            signature_algs=HOST_KEY_ALGS,
            encryption_algs=CIPHERS,
            mac_algs=MACS,
            compression_algs=None,
            connect_timeout=connect_timeout,
            login_timeout=connect_timeout,
            local_addr=local_addr or (),
            config=None,
        )
    except asyncssh.HostKeyNotVerifiable:
        presented = check.presented
        if presented is None:
            raise LinkError(f"{where}: host key could not be verified") from None
        if pinned_host_key is not None:
            raise HostKeyMismatch(host, port, pinned_host_key, presented) from None
        raise UnknownHostKey(host, port, presented) from None
    except asyncssh.PermissionDenied:
        reason = "the agent does not accept this console's key (add 'shoal keys' to its authorized keys)"
        raise AuthRefused(f"{where}: {reason}", reason) from None
    except (TimeoutError, asyncssh.DisconnectError, OSError) as exc:
        reason = connect_reason(exc, host, check.conn, connect_timeout)
        raise LinkError(f"{where}: {reason}", reason) from None

    host_key = conn.get_server_host_key()
    assert host_key is not None
    link = AgentLink(conn, host_key, max_frame_bytes)
    try:
        await link._open(console_id, connect_timeout)
    except asyncssh.ChannelOpenError as exc:
        conn.close()
        reason = f"an SSH server, but not a shoal agent (subsystem {SUBSYSTEM!r} refused: {exc.reason or 'no reason given'})"
        raise LinkError(f"{where}: {reason}", reason) from None
    except TimeoutError:
        conn.close()
        reason = f"no hello from the agent within {connect_timeout:g} s"
        raise LinkError(f"{where}: {reason}", reason) from None
    except LinkError:
        conn.close()
        raise
    return link
