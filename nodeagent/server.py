"""The node agent's SSH server and the ``shoal agent`` command.

SSH only: who may connect (public keys in an authorized-keys file), with
which algorithms, how fast, and on which channel (the ``shoal`` subsystem and
nothing else). What happens on that channel is ``nodeagent.session``; tasks
are ``nodeagent.executor``. This module knows nothing of tasks.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import logging
import os
import re
import signal
import socket
import sys
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import asyncssh
import platformdirs

from nodeagent import protocol
from nodeagent.advertise import Advertisement, Advertiser, addresses_to_advertise
from nodeagent.consolekeys import ConsoleKeys
from nodeagent.executor import Executor, ExecutorListener
from nodeagent.journal import JournalInUse
from nodeagent.privatefiles import UnsafeFile, check_strict_modes, write_private
from nodeagent.protocol import DEFAULT_MAX_FRAME_BYTES, KIND_CALL, KIND_PICKLE, KIND_SHELL
from nodeagent.runas import RunAs, RunAsError, check_state_dir, python_refusal, resolve_run_as
from nodeagent.session import AgentIdentity, ConsoleSession, SessionHub
from nodeagent.taskenv import TaskEnvironment

log = logging.getLogger("shoal.agent")

# --- algorithms ------------------------------------------------------------------
# Post-quantum hybrid key exchange only; plain X25519 only when asked for, for
# older clients. Nothing with SHA-1, NIST curves, CBC or finite-field DH.
KEX_ALGS = protocol.SSH_KEX_ALGS
COMPAT_KEX_ALGS = protocol.SSH_COMPAT_KEX_ALGS
HOST_KEY_ALGS = protocol.SSH_HOST_KEY_ALGS
CIPHERS = protocol.SSH_CIPHERS
MACS = protocol.SSH_MACS

DEFAULT_PORT = 7447
LOGIN_TIMEOUT = 10.0
# A console needs one channel; a few more leave room for tools, not floods.
MAX_CHANNELS_PER_CONNECTION = 4
MAX_CONNECTIONS = 256
# Handshake flood limits: per source address, and unauthenticated in total.
HANDSHAKES_PER_SECOND = 10.0
HANDSHAKE_BURST = 20
MAX_PENDING_HANDSHAKES = 64
# Large SSH packets mean fewer crypto calls per megabyte of frames.
MAX_PACKET_SIZE = 256 * 1024
WINDOW_SIZE = 8 * 1024 * 1024

# Refused connections are logged once per source and then summarised per
# window, so a flood of bad handshakes costs a few lines, not one each.
REFUSAL_WINDOW_SECONDS = 10.0
REFUSAL_SOURCES_NAMED = 32  # per window; more sources share one summary line

HOST_KEY_FILE = "host_key"
AGENT_ID_FILE = "agent_id"
LISTENING_LINE = "shoal agent listening on {host}:{port}"


class UsageError(Exception):
    """A user mistake: one line on stderr, exit status 2."""


def software_version() -> str:
    try:
        return importlib.metadata.version("shoal")
    except importlib.metadata.PackageNotFoundError:
        return "dev"


# --- configuration ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentConfig:
    authorized_keys: Path
    state_dir: Path
    listen_host: str = "0.0.0.0"
    listen_port: int = DEFAULT_PORT
    slots: int = field(default_factory=lambda: os.cpu_count() or 1)
    labels: dict[str, str] = field(default_factory=dict)
    mdns_interfaces: list[str] | None = None  # None: every interface
    advertise: bool = True
    allow_pickle: bool = False
    pass_env: tuple[str, ...] = ()  # the agent's variables tasks also get (--pass-env)
    grace: float = 5.0
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    compat_kex: bool = False
    agent_id: str | None = None  # None: the id persisted in the state dir
    run_as: RunAs | None = None  # None: tasks run as the agent's own user (--run-as)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _listen_address(text: str) -> tuple[str, int]:
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]*):(\d+)", text)
    if match is None:
        raise UsageError(f"--listen {text!r}: expected HOST:PORT (or [IPV6]:PORT)")
    host = match.group(1) or match.group(3) or "0.0.0.0"
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise UsageError(f"--listen {text!r}: port must be 0..65535")
    return host, port


def parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--labels: {item!r} is not key=value")
        labels[key.strip()] = value.strip()
    return labels


def _agent_id_arg(text: str) -> str:
    # It becomes a DNS-SD instance name and a file name component.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", text):
        raise UsageError(f"--agent-id {text!r}: use 1-63 letters, digits, '.', '_' or '-'")
    return text


def _env_name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text):
        raise UsageError(f"--pass-env {text!r}: expected an environment variable name")
    return text


AGENT_DESCRIPTION = """\
Run a Shoal node agent: an SSH server that runs tasks for the consoles whose
public keys are in the authorized-keys file.

It advertises itself over mDNS on EVERY network interface unless
--mdns-interface IP names the ones to use, or --no-advertise turns that off.

Security: an authorized key can run any program, and any Python code, as the
user this agent runs as, exactly like an SSH login (a "call" task imports and
calls any function; --allow-pickle only adds pickled callables, it is not a
boundary). Give only keys you would give a shell. Tasks get a minimal
environment (PATH, HOME, LANG, TMPDIR, SHOAL_JOB, SHOAL_TASK, SHOAL_ATTEMPT,
SHOAL_NODE, the job's env, and what --pass-env names) and a directory of their
own, but they run as this user and can read what this user can read,
including the agent's host key, unless an agent started as root runs them as
another user with --run-as USER."""


def parse_args(argv: list[str]) -> AgentConfig:
    parser = _Parser(
        prog="shoal agent", description=AGENT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--listen", default=f"0.0.0.0:{DEFAULT_PORT}", metavar="HOST:PORT", help="address and port to serve SSH on (default: %(default)s, every interface)")
    parser.add_argument("--authorized-keys", type=Path, metavar="FILE", help="OpenSSH authorized_keys file of the consoles allowed in (required; 'shoal keys' prints a console's key)")
    parser.add_argument("--slots", type=int, default=os.cpu_count() or 1, metavar="N", help="tasks run at once (default: the CPU count, %(default)s here)")
    parser.add_argument("--labels", default="", metavar="k=v,...", help="labels jobs can require, e.g. gpu=yes,zone=a (default: none)")
    parser.add_argument("--state-dir", type=Path, metavar="DIR", help="host key, agent id and result journal (default: SHOAL_AGENT_STATE_DIR, else the XDG data dir's shoal/agent)")
    parser.add_argument("--mdns-interface", action="append", metavar="IP", dest="mdns_interfaces", help="advertise over mDNS on this interface only (repeatable; default: EVERY interface)")
    parser.add_argument("--no-advertise", action="store_true", help="do not advertise over mDNS at all (default: advertise on every interface, or on those --mdns-interface names)")
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="also run cloudpickled callables; an authorized key can run code as this user with or without it (default: off)",
    )
    parser.add_argument(
        "--pass-env",
        action="append",
        default=[],
        metavar="NAME",
        type=_env_name,
        help="give tasks this variable of the agent's environment too, e.g. CUDA_VISIBLE_DEVICES (repeatable; default: none)",
    )
    parser.add_argument("--grace", type=float, default=5.0, metavar="SECONDS", help="on SIGTERM, let running tasks finish this long before killing them (default: %(default)s)")
    parser.add_argument("--max-frame-bytes", type=int, default=DEFAULT_MAX_FRAME_BYTES, metavar="N", help="largest protocol frame accepted (default: %(default)s)")
    parser.add_argument("--compat-kex", action="store_true", help="also offer plain curve25519 key exchange, for older SSH clients (default: post-quantum hybrid only)")
    parser.add_argument("--agent-id", metavar="ID", help="this agent's id (default: one made up once and kept in the state dir)")
    parser.add_argument("--run-as", metavar="USER", help="an agent started as root runs every task as USER (name or uid: its uid, groups and HOME); the agent keeps root and its host key and journal stay unreadable to tasks; call tasks need USER to be able to run this Python and Shoal, else they are refused (default: tasks run as the agent's user)")
    args = parser.parse_args(argv)

    if args.authorized_keys is None:
        raise UsageError("--authorized-keys FILE is required (OpenSSH authorized_keys format)")
    if args.slots < 1:
        raise UsageError("--slots must be at least 1")
    if args.grace < 0:
        raise UsageError("--grace must not be negative")
    if args.max_frame_bytes < 1024:
        raise UsageError("--max-frame-bytes must be at least 1024")
    for ip in args.mdns_interfaces or []:
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)
        except OSError:
            raise UsageError(f"--mdns-interface {ip!r}: expected an IP address") from None
    host, port = _listen_address(args.listen)
    state_dir = args.state_dir or Path(os.environ.get("SHOAL_AGENT_STATE_DIR") or Path(platformdirs.user_data_dir("shoal")) / "agent")
    return AgentConfig(
        authorized_keys=args.authorized_keys,
        state_dir=state_dir,
        listen_host=host,
        listen_port=port,
        slots=args.slots,
        labels=parse_labels(args.labels),
        mdns_interfaces=args.mdns_interfaces,
        advertise=not args.no_advertise,
        allow_pickle=args.allow_pickle,
        pass_env=tuple(dict.fromkeys(args.pass_env)),
        grace=args.grace,
        max_frame_bytes=args.max_frame_bytes,
        compat_kex=args.compat_kex,
        agent_id=None if args.agent_id is None else _agent_id_arg(args.agent_id),
        run_as=None if args.run_as is None else _run_as_arg(args.run_as),
    )


def _run_as_arg(text: str) -> RunAs:
    try:
        return resolve_run_as(text)
    except RunAsError as exc:
        raise UsageError(str(exc)) from None


# --- persistent identity -----------------------------------------------------------


def load_or_create_host_key(state_dir: Path) -> asyncssh.SSHKey:
    path = state_dir / HOST_KEY_FILE
    if path.exists():
        try:
            key = asyncssh.read_private_key(path)
        except (OSError, asyncssh.KeyImportError) as exc:
            raise UsageError(f"host key {path}: {exc}") from None
        if key.algorithm != b"ssh-ed25519":
            raise UsageError(f"host key {path}: expected ssh-ed25519, found {key.algorithm.decode()}")
        return key
    key = asyncssh.generate_private_key("ssh-ed25519")
    write_private(path, key.export_private_key())
    return key


def load_or_create_agent_id(state_dir: Path) -> str:
    path = state_dir / AGENT_ID_FILE
    if path.exists():
        return path.read_text().strip()
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]) or "agent"
    agent_id = f"{host[:40]}-{uuid.uuid4().hex[:8]}"
    write_private(path, agent_id.encode() + b"\n")
    return agent_id


class AuthorizedKeys:
    """The authorized-keys file, re-read when it changes, so a console's key
    can be added without restarting the agent.

    The file must be safe (``check_strict_modes``): at start an unsafe one is
    a usage error; a reload that finds it unsafe, or unreadable, keeps the
    keys read before and logs an alert.
    """

    _KEY_TYPE = re.compile(r"(ssh-|ecdsa-|sk-)\S+")

    def __init__(self, path: Path) -> None:
        self._path = path
        self._seen = self._stat()
        self._keys = self._load()

    def _stat(self) -> tuple[int, int, int, int]:
        # ctime too: a chmod that makes the file unsafe is a change to look at.
        try:
            st = self._path.stat()
        except OSError as exc:
            raise UsageError(f"authorized keys {self._path}: {exc.strerror}") from None
        return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns

    def _load(self) -> asyncssh.SSHAuthorizedKeys:
        try:
            check_strict_modes(self._path)
        except UnsafeFile as exc:
            raise UsageError(f"authorized keys {self._path} refused: {exc}") from None
        try:
            text = self._path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"authorized keys {self._path}: {exc}") from None
        count = 0
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not self._parses(line):
                raise UsageError(f"authorized keys {self._path} line {number}: not an OpenSSH public key")
            count += 1
        if count == 0:
            raise UsageError(f"authorized keys {self._path}: holds no keys")
        return asyncssh.import_authorized_keys(text)

    def _parses(self, line: str) -> bool:
        # Options may precede the key ("from=... ssh-ed25519 AAAA..."), so the
        # key is the first token that names a key type and decodes.
        tokens = line.split()
        for i, token in enumerate(tokens[:-1]):
            if self._KEY_TYPE.fullmatch(token):
                try:
                    asyncssh.import_public_key(f"{token} {tokens[i + 1]}")
                    return True
                except asyncssh.KeyImportError:
                    continue
        return False

    def current(self) -> asyncssh.SSHAuthorizedKeys:
        try:
            seen = self._stat()
            if seen != self._seen:
                self._seen = seen
                self._keys = self._load()
                log.info("re-read authorized keys %s", self._path)
        except UsageError as exc:
            log.error("ALERT: %s; keeping the keys read before", exc)
        return self._keys

    def allows(self, key: asyncssh.SSHKey, peer_address: str) -> bool:
        """Whether ``key`` may log in from ``peer_address`` (``from=`` options apply)."""
        return self.current().validate(key, peer_address, peer_address) is not None


# --- refused connections --------------------------------------------------------------


class RefusalLog:
    """Logs refused connections as a few lines rather than one each.

    The first refusal from an address is logged at once; later ones are
    counted and summarised when the window closes ("N connections refused
    from ADDR in the last 10 s"). An address still refused in the next window
    gets only its summary line; past ``max_sources`` addresses per window the
    rest share one line. So a flood costs at most ``max_sources + 1`` lines
    per window, however many addresses and connections it uses.
    """

    def __init__(self, window: float = REFUSAL_WINDOW_SECONDS, max_sources: int = REFUSAL_SOURCES_NAMED) -> None:
        self._window = window
        self._max_sources = max_sources
        self._counts: dict[str, int] = {}  # source -> refusals not logged yet
        self._others = 0  # refusals from sources past max_sources
        self._other_sources: set[str] = set()
        self._window_start = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def refused(self, source: str, why: str) -> None:
        count = self._counts.get(source)
        if count is not None:
            self._counts[source] = count + 1
        elif len(self._counts) < self._max_sources:
            self._counts[source] = 0
            log.warning(
                "refused connection from %s (%s); further refusals from it are summarised every %g s",
                source, why, self._window,
            )  # fmt: skip
        else:
            self._others += 1
            if len(self._other_sources) < 65536:
                self._other_sources.add(source)
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._window_start = loop.time()
            self._timer = loop.call_later(self._window, self.summarise)

    def summarise(self) -> None:
        """Log what was counted and start a new window (also called at stop)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        seconds = max(1, round(min(self._window, asyncio.get_running_loop().time() - self._window_start)))
        for source, count in self._counts.items():
            if count:
                log.warning("%d connections refused from %s in the last %d s", count, source, seconds)
        if self._others:
            log.warning(
                "%d connections refused from %d other addresses in the last %d s",
                self._others, len(self._other_sources), seconds,
            )  # fmt: skip
        # An address still refused stays known: the next window gives it its
        # summary line only. One quiet for a whole window is forgotten.
        active = [source for source, count in self._counts.items() if count]
        self._counts = dict.fromkeys(active, 0)
        self._others = 0
        self._other_sources.clear()
        if active:
            loop = asyncio.get_running_loop()
            self._window_start = loop.time()
            self._timer = loop.call_later(self._window, self.summarise)


# --- connection admission ----------------------------------------------------------


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class ConnectionGate:
    """Admission control before the SSH handshake.

    Each source address gets a token bucket of handshakes. Unauthenticated
    connections are capped in total; when the cap is reached the OLDEST one is
    dropped rather than the new one refused, so connections that never finish
    their handshake cannot lock out a console whose handshake takes
    milliseconds.
    """

    def __init__(
        self,
        *,
        rate: float = HANDSHAKES_PER_SECOND,
        burst: int = HANDSHAKE_BURST,
        max_pending: int = MAX_PENDING_HANDSHAKES,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._max_pending = max_pending
        self._max_connections = max_connections
        self._buckets: dict[str, _Bucket] = {}
        self._pending: OrderedDict[asyncssh.SSHServerConnection, None] = OrderedDict()
        self._open: set[asyncssh.SSHServerConnection] = set()

    def admit(self, conn: asyncssh.SSHServerConnection, source: str) -> bool:
        if len(self._open) >= self._max_connections or not self._take_token(source):
            return False
        if len(self._pending) >= self._max_pending:
            oldest, _ = self._pending.popitem(last=False)
            oldest.abort()
        self._pending[conn] = None
        self._open.add(conn)
        return True

    def authenticated(self, conn: asyncssh.SSHServerConnection) -> None:
        self._pending.pop(conn, None)

    def closed(self, conn: asyncssh.SSHServerConnection) -> None:
        self._pending.pop(conn, None)
        self._open.discard(conn)

    @property
    def connections(self) -> list[asyncssh.SSHServerConnection]:
        return list(self._open)

    def _take_token(self, source: str) -> bool:
        now = time.monotonic()
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) > 4096:
                self._forget_full_buckets(now)
            bucket = self._buckets[source] = _Bucket(self._burst, now)
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.stamp) * self._rate)
        bucket.stamp = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _forget_full_buckets(self, now: float) -> None:
        # A bucket that has refilled is the same as no bucket.
        refill = self._burst / self._rate
        for source in [s for s, b in self._buckets.items() if now - b.stamp >= refill]:
            del self._buckets[source]


class _ShoalChannel(asyncssh.SSHServerChannel[bytes]):
    """A session channel that refuses what the ``shoal`` subsystem has no use
    for. asyncssh answers ``env`` and ``signal`` requests with success even
    when nothing acts on them (and ``window-change`` without a PTY); a
    refusal says the truth, as for every other request."""

    def _process_env_request(self, packet: asyncssh.packet.SSHPacket) -> bool:
        return False

    def _process_signal_request(self, packet: asyncssh.packet.SSHPacket) -> bool:
        return False

    def _process_window_change_request(self, packet: asyncssh.packet.SSHPacket) -> bool:
        return False


class _SSHConnection(asyncssh.SSHServer):
    """One TCP connection: admission, auth, and which channels it may open."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._conn: asyncssh.SSHServerConnection | None = None
        self._source = "?"
        self._channels = 0
        self._offered_key: asyncssh.SSHKey | None = None
        self._principal = ""  # fingerprint of the key that authenticated

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        protocol.skip_cbc_countermeasure(conn)
        peer = conn.get_extra_info("peername")
        self._source = source = str(peer[0]) if peer else "?"
        if not self._agent.gate.admit(conn, source):
            self._agent.refusals.refused(source, "rate or connection limit")
            conn.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._agent.gate.closed(self._conn)

    def begin_auth(self, username: str) -> bool:
        return True

    # Keys are checked here rather than handed to asyncssh, so that the
    # connection knows WHICH key logged in: a console id is bound to it.
    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        if not self._agent.authorized_keys.allows(key, self._source):
            return False
        # asyncssh checks the signature after this returns, with no await in
        # between: the key that authenticates is the last one accepted here.
        self._offered_key = key
        return True

    def auth_completed(self) -> None:
        assert self._conn is not None and self._offered_key is not None
        self._principal = self._offered_key.get_fingerprint("sha256")
        self._agent.gate.authenticated(self._conn)

    def session_requested(self) -> tuple[asyncssh.SSHServerChannel[bytes], ConsoleSession] | bool:
        if self._channels >= MAX_CHANNELS_PER_CONNECTION:
            return False
        assert self._conn is not None
        self._channels += 1
        chan = self._conn.create_server_channel(encoding=None, window=WINDOW_SIZE, max_pktsize=MAX_PACKET_SIZE)
        chan.__class__ = _ShoalChannel  # the same object, with the refusals above
        return chan, ConsoleSession(self._agent.hub, on_close=self._channel_closed, principal=self._principal)

    def _channel_closed(self) -> None:
        self._channels -= 1


# --- the agent ------------------------------------------------------------------


class Agent:
    """The running agent: SSH listener, session hub, executor, advertiser."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.authorized_keys = AuthorizedKeys(config.authorized_keys)
        self.refusals = RefusalLog()
        try:
            console_keys = ConsoleKeys(config.state_dir)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        self.python_refused = ""  # why this agent's tasks' user cannot run call tasks
        if config.run_as is not None:
            try:
                check_state_dir(config.state_dir, config.run_as)
            except RunAsError as exc:
                raise UsageError(str(exc)) from None
            probe_env = TaskEnvironment("", config.pass_env, run_as=config.run_as).base
            self.python_refused = python_refusal(config.run_as, probe_env)
            if self.python_refused:
                log.warning("%s", self.python_refused)
        self.host_key = load_or_create_host_key(config.state_dir)
        self.agent_id = config.agent_id or load_or_create_agent_id(config.state_dir)
        self.gate = ConnectionGate()
        python_kinds = [] if self.python_refused else [KIND_CALL] + ([KIND_PICKLE] if config.allow_pickle else [])
        capabilities = [KIND_SHELL, *python_kinds]
        identity = AgentIdentity(
            agent_id=self.agent_id,
            hostname=socket.gethostname(),
            labels=dict(config.labels),
            capabilities=capabilities,
            software=software_version(),
        )
        self.hub = SessionHub(
            identity, self._make_executor, max_frame_bytes=config.max_frame_bytes, console_keys=console_keys
        )
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._advertiser: Advertiser | None = None
        self.port = 0

    def _make_executor(self, listener: ExecutorListener) -> Executor:
        return Executor(
            slots=self.config.slots,
            state_dir=self.config.state_dir,
            allow_pickle=self.config.allow_pickle,
            listener=listener,
            task_env=TaskEnvironment(
                self.agent_id, self.config.pass_env, run_as=self.config.run_as, python_refused=self.python_refused
            ),
        )

    @property
    def fingerprint(self) -> str:
        return self.host_key.get_fingerprint("sha256")

    async def start(self) -> None:
        await self.hub.executor.start()
        self.hub.start()
        config = self.config
        self._acceptor = await asyncssh.listen(
            config.listen_host,
            config.listen_port,
            server_factory=lambda: _SSHConnection(self),
            server_host_keys=[self.host_key],
            kex_algs=KEX_ALGS + (COMPAT_KEX_ALGS if config.compat_kex else []),
            # The only host key is Ed25519, so that is the only host key
            # algorithm offered; signatures (host and client) are Ed25519 too.
            encryption_algs=CIPHERS,
            mac_algs=MACS,
            compression_algs=None,
            signature_algs=HOST_KEY_ALGS,
            public_key_auth=True,
            password_auth=False,
            kbdint_auth=False,
            host_based_auth=False,
            gss_host=None,
            gss_kex=False,
            gss_auth=False,
            allow_pty=False,
            x11_forwarding=False,
            agent_forwarding=False,
            allow_scp=False,
            rdns_lookup=False,
            login_timeout=LOGIN_TIMEOUT,
            keepalive_interval=15,
            keepalive_count_max=3,
            encoding=None,
            max_pktsize=MAX_PACKET_SIZE,
            window=WINDOW_SIZE,
            config=None,
        )
        self.port = self._acceptor.get_port()
        if config.advertise:
            await self._start_advertising()

    async def _start_advertising(self) -> None:
        config = self.config
        ad = Advertisement(
            agent_id=self.agent_id,
            hostname=socket.gethostname(),
            port=self.port,
            slots=config.slots,
            labels=config.labels,
            fingerprint=self.fingerprint,
            addresses=addresses_to_advertise(config.listen_host, config.mdns_interfaces),
        )
        self._advertiser = Advertiser(ad, config.mdns_interfaces)
        await self._advertiser.start()

    async def stop(self) -> None:
        """Stop accepting, let running tasks finish within the grace, close."""
        if self._acceptor is not None:
            self._acceptor.close()
        self.refusals.summarise()
        if self._advertiser is not None:
            await self._advertiser.stop()
            self._advertiser = None
        # Sessions stay open during the grace so results still reach consoles.
        await self.hub.executor.shutdown(self.config.grace)
        await self.hub.stop()
        connections = self.gate.connections
        for conn in connections:
            conn.close()
        if connections:
            # Give consoles their disconnect message; a peer that does not
            # answer must not hold the shutdown up.
            waits = [asyncio.ensure_future(conn.wait_closed()) for conn in connections]
            _, stuck = await asyncio.wait(waits, timeout=2)
            for wait in stuck:
                wait.cancel()
        if self._acceptor is not None:
            await self._acceptor.wait_closed()
            self._acceptor = None


async def _serve(config: AgentConfig) -> int:
    agent = Agent(config)
    try:
        await agent.start()
    except OSError as exc:
        await agent.stop()
        where = f"{config.listen_host}:{config.listen_port}"
        print(f"shoal agent: cannot listen on {where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except JournalInUse as exc:
        await agent.stop()
        print(f"shoal agent: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # the executor could not start its workers
        await agent.stop()
        print(f"shoal agent: {exc}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(LISTENING_LINE.format(host=config.listen_host, port=agent.port), flush=True)
    await stop.wait()
    log.info("stopping (grace %.1f s)", config.grace)
    await agent.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``shoal agent``: returns the exit status."""
    try:
        config = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(f"shoal agent: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    log.setLevel(logging.INFO)
    try:
        return asyncio.run(_serve(config))
    except UsageError as exc:
        print(f"shoal agent: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
