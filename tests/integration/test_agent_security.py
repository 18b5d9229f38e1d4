"""The agent's SSH surface: who gets in, with what, and what they may open."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
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
    Heartbeat,
    Hello,
    Message,
    ProtocolError,
    Rejected,
    Run,
    Started,
    TaskSpec,
    decode_body,
    encode,
)
from nodeagent.server import load_or_create_host_key, main
from tests.integration.conftest import REPO, shell

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


# --- --run-as USER: an agent started as root runs its tasks as USER -----------------------------

RUN_AS = "nobody"


def _run_as_user() -> Any:
    if os.geteuid() != 0:
        pytest.skip(f"--run-as needs an agent started as root, and these tests run as uid {os.geteuid()}")
    try:
        return pwd.getpwnam(RUN_AS)
    except KeyError:
        pytest.skip(f"no user {RUN_AS!r} on this machine to run tasks as")


@pytest.fixture
def open_root() -> Iterator[Path]:
    """A directory every user may pass through (pytest's own temp dir is 0700
    root's): a read the task is denied below it is the agent's modes at work."""
    root = Path(tempfile.mkdtemp(prefix="shoal-run-as-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@contextlib.asynccontextmanager
async def run_as_agent(root: Path, *extra: str, python: str = sys.executable) -> AsyncIterator[tuple[Any, Any, Path]]:
    """A real ``shoal agent --run-as nobody`` process (run by ``python``) and a
    real engine attached to it: yields (engine, agent process, state dir)."""
    from engine.api import Engine
    from engine.trust import load_or_create_console_key, public_key_line

    config_dir, state_dir = root / "console-config", root / "agent-state"
    keys = root / "authorized_keys"
    keys.write_text(public_key_line(load_or_create_console_key(config_dir)) + "\n")
    site_packages = [p for p in sys.path if p.endswith("site-packages")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *site_packages])}
    agent = subprocess.Popen(
        [python, "-c", "import sys; from nodeagent.server import main; sys.exit(main(sys.argv[1:]))",
         "--listen", "127.0.0.1:0", "--authorized-keys", str(keys), "--state-dir", str(state_dir),
         "--no-advertise", "--grace", "1", "--slots", "2", "--run-as", RUN_AS, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=env,
    )  # fmt: skip
    engine = None
    try:
        assert agent.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(agent.stdout.readline), 30)
        assert line.startswith(b"shoal agent listening on "), line + agent.communicate(timeout=10)[1]
        address = line.split()[-1].decode()
        engine = await Engine.open(root / "console-state", config_dir, nodes=[address], trust_new=True)
        await engine.wait_for_nodes(1, timeout=30)
        yield engine, agent, state_dir
    finally:
        if engine is not None:
            await engine.close()
        if agent.poll() is None:
            agent.terminate()
        await asyncio.to_thread(agent.wait, 15)


async def test_run_as_tasks_run_as_the_user_and_cannot_read_the_agents_files(open_root):
    from engine.spec import JobSpec

    user = _run_as_user()
    readable = open_root / "readable"
    readable.write_text("open to all\n")
    async with run_as_agent(open_root) as (engine, agent, state_dir):
        probes = {
            "uid": "id -u",
            "groups": "id -G",
            "home": 'echo "$HOME"',
            "directory": "stat -c '%u %a' .",
            "parent": "stat -c '%u %g %a' ..",
            "control": f"cat {readable}",
            "host key": f"cat {state_dir / 'host_key'}",
            "journal": f"cat {state_dir / 'results.journal'}",
            "state dir": f"ls {state_dir}",
            "signal the agent": f"kill -0 {agent.pid}",
            "descriptors": 'for f in /proc/$$/fd/*; do readlink "$f"; done; true',
        }
        spec = JobSpec(name="run-as probes", kind="shell", shell_template="sh -c {item}", items=list(probes.values()), retries=0)
        job_id = await engine.submit(spec)
        assert await engine.wait(job_id, timeout=60) == "failed"  # the denied reads fail, as they must
        rows = dict(zip(probes, await engine.task_results(job_id), strict=True))

    def out(name: str) -> str:
        assert rows[name]["status"] == "succeeded", (name, rows[name])
        return str(rows[name]["stdout"]).strip()

    assert out("uid") == str(user.pw_uid)
    assert set(out("groups").split()) == {str(g) for g in os.getgrouplist(user.pw_name, user.pw_gid)}
    assert out("home") == user.pw_dir
    assert out("directory") == f"{user.pw_uid} 700"  # its working dir is the user's own
    assert out("parent") == f"0 {user.pw_gid} 710"  # in root's, which USER may pass but not list or change
    assert out("control") == "open to all"  # the path to the state dir is open: the modes below do the denying
    for name in ("host key", "journal", "state dir"):
        assert rows[name]["status"] == "failed" and "Permission denied" in rows[name]["stderr"], (name, rows[name])
    assert rows["signal the agent"]["status"] == "failed", rows["signal the agent"]
    assert "not permitted" in rows["signal the agent"]["stderr"]
    links = out("descriptors").splitlines()
    assert len(links) >= 3 and not [link for link in links if str(state_dir) in link or "authorized_keys" in link], links
    # The agent's own files stay root's and private.
    assert (state_dir.stat().st_uid, stat.S_IMODE(state_dir.stat().st_mode)) == (0, 0o700)
    for name in ("host_key", "results.journal"):
        st = (state_dir / name).stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600), name


async def test_run_as_a_jobs_cwd_is_entered_as_the_user(open_root):
    """Popen's cwd= would chdir as root: a directory the user cannot reach
    must stay out of reach even when the job names it."""
    from engine.spec import JobSpec

    _run_as_user()
    hidden = open_root / "hidden"
    (hidden / "inside").mkdir(parents=True)
    hidden.chmod(0o700)
    (hidden / "inside").chmod(0o755)
    (hidden / "inside" / "secret").write_text("s3cret\n")
    async with run_as_agent(open_root) as (engine, _, _):
        refused = await engine.submit(
            JobSpec(name="hidden cwd", kind="shell", shell_template="cat secret", items=[0], cwd=str(hidden / "inside"), retries=0)
        )
        allowed = await engine.submit(
            JobSpec(name="open cwd", kind="shell", shell_template="pwd", items=[0], cwd="/", retries=0)
        )
        assert await engine.wait(refused, timeout=60) == "failed"
        assert await engine.wait(allowed, timeout=60) == "succeeded"
        (denied,) = await engine.task_results(refused)
        (entered,) = await engine.task_results(allowed)
    assert denied["exit_code"] == 126 and "s3cret" not in denied["stdout"], denied
    assert str(hidden / "inside") in denied["stderr"], denied  # the shell's "cd: can't cd to ..."
    assert entered["stdout"].strip() == "/"


async def test_run_as_tasks_are_still_the_agents_to_time_out(open_root):
    """USER's process group, background children included, dies on time."""
    from engine.spec import JobSpec

    _run_as_user()
    async with run_as_agent(open_root) as (engine, _, _):
        job_id = await engine.submit(
            JobSpec(name="slow", kind="shell", shell_template="sleep 29.125 & sleep 30.125", items=[0], timeout=1, retries=0)
        )
        assert await engine.wait(job_id, timeout=60) == "failed"
        (row,) = await engine.task_results(job_id)
        # Killed, as a group, before the result was sent: no survivor now.
        assert "timed out" in row["error"], row
        assert not _processes_running("sleep\x0029.125") and not _processes_running("sleep\x0030.125")


def _processes_running(cmdline: str) -> list[int]:
    """Live processes whose command line starts with ``cmdline`` (NUL-separated; zombies have none)."""
    found = []
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and Path(f"/proc/{name}/cmdline").read_bytes().startswith(cmdline.encode()):
                found.append(int(name))
        except OSError:
            pass  # gone since the listing
    return found


def _unreadable_python_refusal() -> str:
    from nodeagent.runas import python_refusal, resolve_run_as

    user = resolve_run_as(RUN_AS)
    return python_refusal(user, {"PATH": os.defpath, "HOME": user.home, "LANG": "C.UTF-8"})


async def test_run_as_call_tasks_are_refused_as_unsupported_when_the_user_cannot_run_python(open_root):
    from engine.spec import JobSpec

    _run_as_user()
    refusal = _unreadable_python_refusal()
    if not refusal:
        pytest.skip(f"{RUN_AS} can run {sys.executable} here: see the test that call tasks run as the user")
    async with run_as_agent(open_root) as (engine, agent, _):
        shell_job = await engine.submit(JobSpec(name="shell", kind="shell", shell_template="echo {item}", items=[1]))
        assert await engine.wait(shell_job, timeout=60) == "succeeded"  # the agent serves shell tasks
        job_id = await engine.submit(JobSpec(name="calls", kind="call", fn="math:sqrt", items=[4.0]))
        # The engine places call tasks only where a hello offers them, and says why it waits.
        with pytest.raises(TimeoutError, match=r"field 'function': no node runs call tasks \(1 nodes: 127.0.0.1:\d+ shell\)"):
            await engine.wait(job_id, timeout=2)
        assert (await engine.job(job_id)).counts["queued"] == 1
        await engine.cancel(job_id)
        # A call task sent anyway (an engine that does not read the hello) is refused, saying why.
        hello, rejected = await _hello_and_reply(engine, open_root, Run([TaskSpec("probe.0.1", "call", fn="math:sqrt", args=[4.0])]))
    assert hello.capabilities == ["shell"], hello  # the hello says it too
    assert isinstance(rejected, Rejected) and rejected.code == "unsupported", rejected
    assert f"{RUN_AS} (--run-as) cannot run {sys.executable}" in rejected.reason, rejected
    assert "permission denied" in rejected.reason and f"install Shoal and its Python where {RUN_AS} can read" in rejected.reason
    log = agent.stderr.read().decode()
    assert [line for line in log.splitlines() if "call and pickle tasks cannot run on this agent" in line], log


async def _hello_and_reply(engine: Any, root: Path, message: Any = None) -> tuple[Any, Any]:
    """The agent's hello to a second console link with the engine's key, and
    the first reply to ``message`` sent on it (None when none is sent)."""
    from engine.link import open_link
    from engine.trust import load_or_create_console_key

    (node,) = await engine.nodes()
    host, port = node.id.rsplit(":", 1)
    key = load_or_create_console_key(root / "console-config")
    link = await open_link(
        host, int(port), client_key=key, console_id="hello-probe", pinned_host_key=None, accept_unknown=True,
        connect_timeout=10,
    )  # fmt: skip
    try:
        if message is None:
            return link.hello, None
        link.send(message)
        while True:
            for reply in await asyncio.wait_for(link.recv_many(), 30):
                if not isinstance(reply, Heartbeat):
                    return link.hello, reply
    finally:
        link.close()
        await asyncio.wait_for(link.wait_closed(), 10)


def _python_the_user_can_run() -> str:
    """An interpreter of this Python version that ``RUN_AS`` can run (a system one), or ""."""
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    for candidate in (f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if os.path.exists(candidate):
            probe = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info[:2])"], user=RUN_AS, capture_output=True, cwd="/"
            )
            if probe.returncode == 0 and probe.stdout.strip() == str(tuple(sys.version_info[:2])).encode():
                return candidate
    return ""


async def test_run_as_call_tasks_run_as_the_user_where_it_can_run_python(open_root):
    user = _run_as_user()
    python = _python_the_user_can_run()
    if not python:
        pytest.skip(f"no Python {sys.version_info[0]}.{sys.version_info[1]} here that {RUN_AS} can run")
    from engine.spec import JobSpec

    async with run_as_agent(open_root, python=python) as (engine, _, state_dir):
        env_job = await engine.submit(
            JobSpec(name="env", kind="call", fn="tests.integration.runastasks:identity", items=[0], retries=0)
        )
        assert await engine.wait(env_job, timeout=60) == "succeeded"
        assert "call" in (await _hello_and_reply(engine, open_root))[0].capabilities
        (row,) = await engine.task_results(env_job)
        big = await engine.submit(JobSpec(name="big", kind="call", fn="tests.integration.runastasks:big", items=[3 << 20]))
        assert await engine.wait(big, timeout=60) == "succeeded"  # spooled by USER's worker, adopted by the agent
        (big_row,) = await engine.task_results(big)
    assert big_row["value"] == "v" * (3 << 20)
    uid, gid, groups, home, cwd_owner, links = row["value"]
    assert (uid, gid, set(groups), home, cwd_owner) == (
        user.pw_uid, user.pw_gid, set(os.getgrouplist(user.pw_name, user.pw_gid)), user.pw_dir, user.pw_uid
    )
    assert not [link for link in links if str(state_dir) in link], links


async def test_run_as_a_task_cannot_write_lines_of_its_own_into_the_agents_log(open_root):
    _run_as_user()
    python = _python_the_user_can_run()
    if not python:
        pytest.skip(f"no Python {sys.version_info[0]}.{sys.version_info[1]} here that {RUN_AS} can run")
    from engine.spec import JobSpec

    forged = "2026-01-01 00:00:00,000 shoal.agent console FORGED connected\nFORGED second line\n"
    async with run_as_agent(open_root, python=python) as (engine, agent, _):
        job_id = await engine.submit(
            JobSpec(name="log", kind="call", fn="tests.integration.runastasks:write_agent_log", items=[forged])
        )
        assert await engine.wait(job_id, timeout=60) == "succeeded"
    log = agent.stderr.read().decode()
    assert not [line for line in log.splitlines() if "FORGED" in line.split("wrote on stderr: ", 1)[0]], log
    assert f"(as {RUN_AS}) wrote on stderr: 'FORGED second line'" in log, log  # relayed, quoted, attributed


@pytest.mark.parametrize("how", ["path", "link"])
async def test_run_as_a_worker_cannot_pass_off_roots_file_as_its_value(open_root, how):
    """A worker is USER's, and so is its results pipe: a task that claims its
    value waits in a file of root's must not have the agent (root) move it
    into its spool and send it to the console."""
    _run_as_user()
    python = _python_the_user_can_run()
    if not python:
        pytest.skip(f"no Python {sys.version_info[0]}.{sys.version_info[1]} here that {RUN_AS} can run")
    from engine.spec import JobSpec

    secret = open_root / "root-only"
    secret.write_bytes(b"\xa6secret")  # a msgpack string, were it ever taken for a value
    secret.chmod(0o600)
    async with run_as_agent(open_root, python=python) as (engine, _, _):
        job_id = await engine.submit(
            JobSpec(name="forged", kind="call", fn="tests.integration.runastasks:forged_part", items=[str(secret)],
                    args=(7, how), retries=0)
        )  # fmt: skip
        assert await engine.wait(job_id, timeout=60) == "failed"
        (row,) = await engine.task_results(job_id)
    assert "refused the value's spool file" in row["error"], row
    assert row["value"] != "secret"
    assert secret.read_bytes() == b"\xa6secret" and secret.stat().st_uid == 0


@pytest.mark.parametrize(
    "user, needle",
    [("root", "that is root"), ("0", "that is root"), ("no-such-user-shoal", "no such user")],
)
def test_run_as_bad_user_exits_2_with_one_line(tmp_path, authorized_keys, capsys, user, needle):
    _run_as_user()  # as another user, the first thing said is that the agent is not root
    argv = ["--authorized-keys", str(authorized_keys), "--state-dir", str(tmp_path / "s"), "--listen", "127.0.0.1:0",
            "--no-advertise", "--run-as", user]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--run-as {user}: {needle}" in err and "Traceback" not in err


def test_run_as_by_an_agent_not_started_as_root_exits_2_with_one_line(tmp_path, authorized_keys, capsys, monkeypatch):
    if os.geteuid() == 0:
        monkeypatch.setattr(os, "geteuid", lambda: 1000)  # root's test run plays an ordinary user
    argv = ["--authorized-keys", str(authorized_keys), "--state-dir", str(tmp_path / "s"), "--listen", "127.0.0.1:0",
            "--no-advertise", "--run-as", "nobody"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--run-as nobody: the agent must be started as root" in err


def test_run_as_refuses_a_state_dir_the_user_could_read(tmp_path, authorized_keys, capsys):
    _run_as_user()
    state = tmp_path / "s"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    argv = ["--authorized-keys", str(authorized_keys), "--state-dir", str(state), "--listen", "127.0.0.1:0",
            "--no-advertise", "--run-as", RUN_AS]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "open to group or others" in err and "chmod 700" in err
    assert not (state / "host_key").exists()  # refused before any key was written


def test_run_as_refuses_a_state_dir_below_a_directory_the_user_owns(tmp_path, authorized_keys, capsys):
    user = _run_as_user()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, user.pw_uid, user.pw_gid)
    state = theirs / "state"
    state.mkdir(mode=0o700)
    argv = ["--authorized-keys", str(authorized_keys), "--state-dir", str(state), "--listen", "127.0.0.1:0",
            "--no-advertise", "--run-as", RUN_AS]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{theirs}, above the state dir, is owned by uid {user.pw_uid}" in err


def test_agent_help_gives_run_as_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--run-as USER" in text and "(default: tasks run as the agent's user)" in text
