"""Attacks from issue 12, each through the real path: a real agent on a real
socket, a real engine, real tasks. Each test fails on the code before the fix."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import logging
import os
import re
import stat
import time
from pathlib import Path
from typing import Any

import asyncssh
import msgpack
import pytest
from asyncssh.packet import String, UInt32

import nodeagent.server as server_module
from engine.link import AgentRefused
from nodeagent.consolekeys import CONSOLE_KEYS_FILE
from nodeagent.protocol import (
    ERR_PROTOCOL,
    SUBSYSTEM,
    Error,
    FrameDecoder,
    Heartbeat,
    Hello,
    Message,
    Progress,
    ProtocolError,
    TaskResult,
    TaskSpec,
    Value,
    decode,
)
from nodeagent.server import main
from tests.integration.conftest import shell
from tests.integration.test_agent_security import console_hello, ssh

pytestmark = pytest.mark.timeout(120)


# --- StrictModes on the authorized-keys file ------------------------------------------


def _agent_argv(keys: Path, state: Path) -> list[str]:
    return ["--authorized-keys", str(keys), "--state-dir", str(state), "--listen", "127.0.0.1:0", "--no-advertise"]


@pytest.mark.parametrize(
    "unsafe, culprit",
    [
        (lambda keys: keys.chmod(0o666), "file"),
        (lambda keys: keys.chmod(0o620), "file"),
        (lambda keys: keys.parent.chmod(0o777), "directory"),
        (lambda keys: keys.parent.parent.chmod(0o775), "directory"),
    ],
    ids=["world-writable-file", "group-writable-file", "world-writable-dir", "group-writable-grandparent"],
)
def test_unsafe_authorized_keys_refused_at_start(tmp_path, capsys, unsafe, culprit):
    home = tmp_path / "home"
    (home / "ssh").mkdir(parents=True, mode=0o700)
    home.chmod(0o755)
    keys = home / "ssh" / "authorized_keys"
    keys.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_public_key())
    keys.chmod(0o600)
    unsafe(keys)
    try:
        assert main(_agent_argv(keys, tmp_path / "state")) == 2
    finally:
        keys.parent.chmod(0o700)
        home.chmod(0o755)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"bad modes of {culprit}" in err and "chmod go-w" in err and str(keys) in err


def test_keys_in_a_sticky_world_writable_dir_are_accepted(tmp_path):
    """/tmp-like dirs are fine: only the owner of an entry may replace it."""
    from nodeagent.privatefiles import check_strict_modes

    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    keys = sticky / "keys"
    keys.write_text("x\n")
    check_strict_modes(keys)


async def test_reload_of_unsafe_keys_keeps_the_old_keys_and_alerts(agent, authorized_keys, caplog):
    caplog.set_level(logging.INFO, logger="shoal.agent")
    newcomer = asyncssh.generate_private_key("ssh-ed25519")
    with authorized_keys.open("ab") as file:
        file.write(newcomer.export_public_key())
    authorized_keys.chmod(0o666)  # someone else could have written that line
    later = authorized_keys.stat().st_mtime_ns + 1_000_000_000
    os.utime(authorized_keys, ns=(later, later))
    with pytest.raises(Exception, match="does not accept"):
        await agent.link("newcomer", client_key=newcomer)
    old = await agent.link()  # the key read at start still works
    assert old.hello is not None
    old.close()
    alerts = [r.getMessage() for r in caplog.records if "ALERT" in r.getMessage()]
    assert alerts and "keeping the keys read before" in alerts[0] and "chmod go-w" in alerts[0]
    # Fixed modes: the next login re-reads the file and the newcomer gets in.
    authorized_keys.chmod(0o600)
    link = await agent.link("newcomer", client_key=newcomer)
    assert link.hello is not None
    link.close()


# --- a console id belongs to the key that created it --------------------------------------


async def test_console_id_is_bound_to_the_key_that_created_it(start_agent, authorized_keys):
    intruder = asyncssh.generate_private_key("ssh-ed25519")
    with authorized_keys.open("ab") as file:
        file.write(intruder.export_public_key())
    agent = await start_agent(name="bound")
    victim = await agent.console("victim")
    task = shell("sleep 0.3; echo mine")
    victim.run(task)
    with pytest.raises(AgentRefused) as caught:
        await agent.link("victim", client_key=intruder)
    assert caught.value.code == ERR_PROTOCOL and "belongs to another key" in str(caught.value)
    # The victim's session was not replaced: its result still reaches it.
    result = (await victim.results([task.id]))[task.id]
    assert result.ok and result.stdout == b"mine\n" and not victim.link.closed
    # The intruder's own id works, and the binding outlives an agent restart.
    own = await agent.link("intruder", client_key=intruder)
    own.close()
    await agent.stop()
    assert stat.S_IMODE((agent.agent.config.state_dir / CONSOLE_KEYS_FILE).stat().st_mode) == 0o600
    again = await start_agent(name="bound")
    with pytest.raises(AgentRefused):
        await again.link("victim", client_key=intruder)
    link = await again.link("victim")
    link.close()


# --- channel requests -------------------------------------------------------------------


async def test_env_signal_and_window_change_requests_are_refused(agent):
    async with ssh(agent) as conn:
        writer, reader, _ = await conn.open_session(subsystem=SUBSYSTEM, encoding=None)
        chan = writer.channel
        # asyncssh's client does not report these answers, so ask at the packet level.
        assert not await chan._make_request(b"env", String(b"LD_PRELOAD"), String(b"/tmp/evil.so"))
        assert not await chan._make_request(b"signal", String(b"KILL"))
        assert not await chan._make_request(b"window-change", UInt32(80), UInt32(24), UInt32(0), UInt32(0))
        # The refusals leave a working channel.
        writer.write(console_hello(console_id="after-refusals"))
        decoder = FrameDecoder()
        replies: list[Message] = []
        while not replies:
            replies = decoder.feed(await asyncio.wait_for(reader.read(65536), 10))
        assert isinstance(replies[0], Hello) and replies[0].role == "agent"
        chan.close()


# --- refused connections are summarised, not logged one by one --------------------------------


async def test_connection_flood_is_logged_as_a_few_summary_lines(agent, caplog):
    caplog.set_level(logging.INFO)
    sources = [f"127.0.0.{i}" for i in range(2, 8)]
    refused: dict[str, int] = dict.fromkeys(sources, 0)

    async def garbage(source: str) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", agent.port, local_addr=(source, 0))
        except OSError:
            return
        try:
            # Read before writing: an accepted connection sends its banner
            # first, and the reset our garbage then earns would make asyncio
            # drop a banner still unread in the buffer.
            banner = await asyncio.wait_for(reader.read(4), 30)
            writer.write(b"GET / HTTP/1.0\r\n\r\n" * 4)
        except TimeoutError:
            raise AssertionError(f"a connection from {source} was neither answered nor refused") from None
        except OSError:
            banner = b""
        finally:
            writer.close()
        if not banner:
            refused[source] += 1  # aborted before the SSH banner: the gate refused it

    began = time.monotonic()
    # 60 connections at a time: well under the listen backlog, so none waits
    # in the kernel past the client's timeout and every one is decided.
    for _ in range(60):
        await asyncio.gather(*(garbage(source) for source in sources for _ in range(10)))
    agent.agent.refusals.summarise()
    windows = 2 + int((time.monotonic() - began) // server_module.REFUSAL_WINDOW_SECONDS)
    assert sum(refused.values()) > 2000, refused

    # One line when an address is first refused, then one per window at most.
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) <= len(sources) * windows, lines[:20]
    assert sum(len(line) + 40 for line in lines) < 2048 * windows  # with a timestamp and logger name each
    for source in sources:
        first = sum(1 for line in lines if line.startswith(f"refused connection from {source} "))
        summed = [
            int(m.group(1))
            for line in lines
            if (m := re.fullmatch(rf"(\d+) connections refused from {re.escape(source)} in the last \d+ s", line))
        ]
        assert first == 1 and first + sum(summed) == refused[source], (source, lines)


async def test_refusal_log_gives_a_known_address_one_line_per_window(caplog):
    caplog.set_level(logging.INFO, logger="shoal.agent")
    refusals = server_module.RefusalLog(window=0.05, max_sources=2)

    async def window_closes(count: int) -> list[str]:
        deadline = time.monotonic() + 10
        while len([r for r in caplog.records if "in the last" in r.getMessage()]) < count:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        return [r.getMessage() for r in caplog.records]

    for source in ("10.0.0.1", "10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.3"):
        refusals.refused(source, "test")
    lines = await window_closes(2)
    assert sum(line.startswith("refused connection from") for line in lines) == 2  # the named sources
    assert "2 connections refused from 10.0.0.1 in the last 1 s" in lines
    assert "3 connections refused from 2 other addresses in the last 1 s" in lines
    # Still refused in the next window: its summary only, no new first line.
    refusals.refused("10.0.0.1", "test")
    lines = await window_closes(3)
    assert sum(line.startswith("refused connection from 10.0.0.1") for line in lines) == 1
    assert lines.count("1 connections refused from 10.0.0.1 in the last 1 s") == 1
    refusals.summarise()


# --- numbers from the wire ------------------------------------------------------------------

_VALID_BODIES: dict[str, dict[str, Any]] = {
    "hello": {"type": "hello", "version": 1, "role": "agent", "id": "a", "slots": 2},
    "run.task": {"type": "run", "tasks": [{"id": "t", "kind": "shell", "shell": "true", "timeout": 5.0, "slots": 1}]},
    "progress": {"type": "progress", "id": "t", "fraction": 0.5},
    "finished.result": {
        "type": "finished",
        "results": [{"id": "t", "outcome": "error", "exit_code": 3, "signal": 9, "started": 1.0, "ended": 2.0}],
    },
    "heartbeat": {
        "type": "heartbeat", "time": 1.0, "cpu": 1.0, "mem": 1.0, "load": [0.5, 0.5, 0.5],
        "slots_total": 2, "slots_busy": 1, "queued": 0,
    },
    "value": {"type": "value", "id": "t", "offset": 0, "data": b"x"},
}  # fmt: skip
# Every numeric field of every message, with values it must refuse.
_NAN, _INF = float("nan"), float("inf")
_BAD_NUMBERS: dict[tuple[str, str], list[Any]] = {
    ("hello", "version"): [-1, 2**64 - 1, True, 1.5],
    ("hello", "slots"): [-1, 2**40, _NAN],
    ("run.task", "timeout"): [_NAN, _INF, -_INF, -1.0, 0, 1e300, True],
    ("run.task", "slots"): [0, -3, 2**40, True, 1.0],
    ("run.task", "max_result"): [-1, 2**32, True, 1.5],
    ("progress", "fraction"): [_NAN, _INF, -0.1, 1.5, True],
    ("finished.result", "exit_code"): [2**63, -(2**40), 1.0, True],
    ("finished.result", "signal"): [0, -9, 2**20, True],
    ("finished.result", "started"): [_NAN, _INF, -1.0, 1e300],
    ("finished.result", "ended"): [_NAN, -_INF, -5],
    ("finished.result", "value_size"): [-1, 2**32, True, 1.5, _NAN],
    ("value", "offset"): [-1, 2**32, True, 1.5],
    ("heartbeat", "time"): [_NAN, _INF, -1.0],
    ("heartbeat", "cpu"): [_NAN, -1.0, 101.0, _INF],
    ("heartbeat", "mem"): [_NAN, 150.0],
    ("heartbeat", "load"): [[_NAN], [-1.0], [_INF], [1.0] * 17, [True]],
    ("heartbeat", "slots_total"): [-1, 2**40, _NAN],
    ("heartbeat", "slots_busy"): [-1, _INF],
    ("heartbeat", "queued"): [-1, 2**63, 1.5],
}


def _with_field(where: str, name: str, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(_VALID_BODIES[where])
    target = body["tasks"][0] if where == "run.task" else body["results"][0] if where == "finished.result" else body
    target[name] = value
    return body


def test_every_numeric_wire_field_has_a_range_check():
    """A numeric field added later without a check (and a row here) fails this test."""
    classes = {"hello": Hello, "run.task": TaskSpec, "progress": Progress, "finished.result": TaskResult, "heartbeat": Heartbeat,
               "value": Value}  # fmt: skip
    numeric = {
        (where, f.name)
        for where, cls in classes.items()
        for f in dataclasses.fields(cls)
        if re.search(r"\b(int|float)\b", str(f.type))
    }
    assert numeric == set(_BAD_NUMBERS)


@pytest.mark.parametrize("where, name", list(_BAD_NUMBERS), ids=[f"{w}.{n}" for w, n in _BAD_NUMBERS])
def test_out_of_range_numbers_are_protocol_errors_on_decode(where, name):
    decode(msgpack.packb(_VALID_BODIES[where], use_bin_type=True))  # the base body is fine
    for bad in _BAD_NUMBERS[(where, name)]:
        with pytest.raises(ProtocolError, match=name):
            decode(msgpack.packb(_with_field(where, name, bad), use_bin_type=True))


@pytest.mark.parametrize("timeout", [_NAN, _INF, -1.0], ids=["nan", "inf", "negative"])
async def test_agent_refuses_a_nan_timeout_from_the_wire(agent, tmp_path, timeout):
    marker = tmp_path / "ran"
    task = {"id": "nan-1", "kind": "shell", "shell": f"touch {marker}", "timeout": timeout}
    async with ssh(agent) as conn:
        writer, reader, _ = await conn.open_session(subsystem=SUBSYSTEM, encoding=None)
        writer.write(console_hello(console_id="nan-console") + msgpack.packb({"type": "run", "tasks": [task]}))
        raw = await asyncio.wait_for(reader.read(), 10)
    replies = FrameDecoder().feed(raw)
    assert isinstance(replies[0], Hello)
    errors = [m for m in replies if isinstance(m, Error)]
    assert errors and errors[0].code == ERR_PROTOCOL and "timeout" in errors[0].message
    # The agent is still serving, and the task never ran.
    console = await agent.console("after-nan")
    probe = shell("echo alive")
    console.run(probe)
    assert (await console.results([probe.id]))[probe.id].stdout == b"alive\n"
    assert not marker.exists()


# --- placeholders: quoting is the engine's job -------------------------------------------------

_MARKER = "INJECTED"  # a hostile item that runs anything creates a file with this name


def _hostile_items(marker: Path) -> list[str]:
    m = str(marker)
    return [
        f"$(touch {m})", f"`touch {m}`", f'"; touch {m}; "', f"'; touch {m}; '", f"x\ntouch {m}\n",
        f"; touch {m}", f"| touch {m}", f"&& touch {m}", f"$(touch {m})'\"", f"\\'; touch {m}; #",
        "*", "~", "$HOME", "-n", "--help", "-", "a b  c", "tab\there", "trailing\\", "", "{item}", "{{x}}",
        "\u00e9t\u00e9 \u2603", "'", '"', "'\"'\"'", "#not a comment", "\r\n",
    ]  # fmt: skip


@pytest.fixture
def one_agent_cluster(tmp_path):
    from demos.cluster import LocalCluster

    with LocalCluster(tmp_path / "cluster", [2]) as cluster:
        yield cluster


async def test_hostile_items_round_trip_exactly_and_inject_nothing(one_agent_cluster, tmp_path):
    from engine.api import Engine
    from engine.spec import JobSpec

    cluster = one_agent_cluster
    marker = tmp_path / _MARKER
    items = _hostile_items(marker)
    forms = {
        "shell": dict(shell_template="printf %s {item}"),
        "command list": dict(argv_template=["printf", "%s", "{item}"]),
        "command list running sh -c": dict(argv_template=["sh", "-c", "printf %s {item}"]),
        "command list running bash -ec": dict(argv_template=["bash", "-ec", "printf %s {item}; true"]),
    }
    engine = await Engine.open(cluster.state_dir, cluster.config_dir, nodes=cluster.addresses, trust_new=True)
    try:
        await engine.wait_for_nodes(1, timeout=30)
        for form, task in forms.items():
            spec = JobSpec(name=f"hostile {form}", kind="shell", items=items, retries=0, **task)
            job_id = await engine.submit(spec)
            assert await engine.wait(job_id, timeout=60) == "succeeded", form
            outputs = [row["stdout"] for row in await engine.task_results(job_id)]
            assert outputs == items, form
    finally:
        await engine.close()
    assert not marker.exists()


@pytest.mark.parametrize(
    "task, field",
    [
        ('shell = "echo \\"{item}\\""', "shell"),
        ("shell = \"echo '{item}'\"", "shell"),
        ('shell = "echo \\"name: {item} here\\""', "shell"),
        ('shell = "echo ok # {item}"', "shell"),
        ('shell = "echo `basename {item}`"', "shell"),
        ('shell = "echo \\\\{item}"', "shell"),
        ('shell = """\ncat <<EOF\n{item}\nEOF\n"""', "shell"),
        ('command = ["sh", "-c", "echo \\"{item}\\""]', "command"),
        ("command = [\"python3\", \"-c\", \"print('{item}')\"]", "command"),
        ('command = ["echo", "\\"{item}\\""]', "command"),
    ],
    ids=["double", "single", "inside-double", "comment", "backquotes", "backslash", "heredoc", "sh-c", "python-c", "argv"],
)
def test_quoted_placeholder_exits_2_before_any_task_runs(one_agent_cluster, tmp_path, task, field):
    import subprocess
    import sys

    from demos.cluster import REPO

    cluster = one_agent_cluster
    marker = tmp_path / _MARKER
    job = tmp_path / "quoted.toml"
    job.write_text(f'name = "quoted"\n{task}\nitems = [{json.dumps(f"$(touch {marker})")}]\n')
    proc = subprocess.run(
        [sys.executable, "-m", "console.cli", "run", str(job), "--json", "--trust-new",
         "--state-dir", str(cluster.state_dir), "--config-dir", str(cluster.config_dir), "--node", cluster.addresses[0]],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert f"field '{field}'" in proc.stderr and "quotes every substituted value itself" in proc.stderr
    assert "quoted.toml:2" in proc.stderr
    assert not marker.exists()


def test_item_with_a_nul_is_refused_at_load():
    from engine.spec import SpecError, parse_job_text

    with pytest.raises(SpecError, match="NUL"):
        parse_job_text('shell = "printf %s {item}"\nitems = ["ok", "a\\u0000b"]\n')


# --- state files are private -------------------------------------------------------------------


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode) for p in [root, *root.rglob("*")]}


async def test_state_and_config_files_are_private_whatever_the_umask(one_agent_cluster, start_agent, tmp_path):
    from engine.api import Engine
    from engine.spec import JobSpec

    cluster = one_agent_cluster
    state = tmp_path / "state"
    (cluster.config_dir / "known_hosts").unlink(missing_ok=True)
    old_umask = os.umask(0o002)  # a careless operator's umask: group-writable, world-readable
    try:
        engine = await Engine.open(state, cluster.config_dir, nodes=cluster.addresses, trust_new=True)
        try:
            await engine.wait_for_nodes(1, timeout=30)
            job_id = await engine.submit(JobSpec(name="modes", kind="shell", shell_template="echo {item}", items=[1, 2, 3]))
            assert await engine.wait(job_id, timeout=60) == "succeeded"
            # While the engine runs: the database's WAL and shared memory exist now.
            live = _modes(state)
            assert {"shoal.db", "shoal.db-wal", "shoal.db-shm", "engine.lock"} <= live.keys()
        finally:
            await engine.close()
        agent = await start_agent(name="careless")
        console = await agent.console("modes")
        task = shell("echo hi")
        console.run(task)
        await console.results([task.id], ack=False)
        agent_files = _modes(tmp_path / "careless")
    finally:
        os.umask(old_umask)
    config_files = _modes(cluster.config_dir)
    for root, seen in ((state, live), (cluster.config_dir, config_files), (tmp_path / "careless", agent_files)):
        for name, mode in seen.items():
            path = root / name
            if path.is_socket():
                assert mode & 0o077 == 0, (name, oct(mode))
            else:
                assert mode == (0o700 if path.is_dir() else 0o600), (str(path), oct(mode))
    assert {"console_key", "known_hosts"} <= config_files.keys()
    assert {"host_key", "agent_id", "console_keys.json"} <= agent_files.keys()


# --- what a task gets from the agent -------------------------------------------------------------

_TASK_VARIABLES = {"PATH", "HOME", "LANG", "TMPDIR", "SHOAL_JOB", "SHOAL_TASK", "SHOAL_ATTEMPT", "SHOAL_NODE"}


@pytest.fixture
async def secretive_agent(agent_process, monkeypatch, tmp_path):
    """A real ``shoal agent`` process whose environment holds a secret."""
    monkeypatch.setenv("AGENT_SECRET", "hunter2")
    monkeypatch.setenv("NODE_GPU", "gpu-7")
    proc = await agent_process("--pass-env", "NODE_GPU", state_dir=tmp_path / "secretive")
    return proc


async def _console_of(proc: Any, client_key: asyncssh.SSHKey, tmp_path: Path) -> Any:
    from engine.link import open_link
    from tests.integration.conftest import ConsoleProbe

    link = await open_link(
        "127.0.0.1", proc.port, client_key=client_key, console_id="env-test", pinned_host_key=None,
        accept_unknown=True, connect_timeout=10,
    )  # fmt: skip
    return ConsoleProbe(link)


async def test_tasks_get_a_minimal_environment_and_a_directory_of_their_own(secretive_agent, client_key, tmp_path):
    console = await _console_of(secretive_agent, client_key, tmp_path)
    shell_env = TaskSpec(id="7.3.1", kind="shell", argv=["env"], env={"JOB_SETTING": "x=y"})
    shell_dir = TaskSpec(id="7.4.1", kind="shell", shell='pwd; echo "$TMPDIR"; touch leftover; mkdir sub; touch sub/f')
    call_env = TaskSpec(id="7.5.2", kind="call", fn="tests.integration.securitytasks:environment", env={"JOB_SETTING": "1"})
    console.run(shell_env, shell_dir, call_env)
    results = await console.results([shell_env.id, shell_dir.id, call_env.id])

    assert results[shell_env.id].ok, results[shell_env.id]
    env = dict(line.split("=", 1) for line in results[shell_env.id].stdout.decode().splitlines())
    assert set(env) == _TASK_VARIABLES | {"NODE_GPU", "JOB_SETTING"}, sorted(env)
    assert (env["SHOAL_JOB"], env["SHOAL_TASK"], env["SHOAL_ATTEMPT"]) == ("7", "3", "7.3.1")
    assert env["NODE_GPU"] == "gpu-7" and env["JOB_SETTING"] == "x=y" and env["SHOAL_NODE"] == console.hello.id

    cwd, tmpdir = results[shell_dir.id].stdout.decode().splitlines()
    assert cwd == tmpdir and Path(cwd).name.startswith("task-") and "secretive" not in cwd
    assert not (Path(cwd) / "leftover").exists()  # what the task left is gone with it

    value = results[call_env.id].value
    call_vars, call_cwd = value[0], value[1]
    assert "AGENT_SECRET" not in call_vars and "hunter2" not in repr(call_vars)
    assert {"SHOAL_JOB": "7", "SHOAL_TASK": "5", "SHOAL_ATTEMPT": "7.5.2", "NODE_GPU": "gpu-7", "JOB_SETTING": "1"}.items() <= call_vars.items()
    assert call_cwd == call_vars["TMPDIR"] and Path(call_cwd).name.startswith("worker-")
    await console.close()


async def test_tasks_hold_no_descriptor_to_the_agents_files(secretive_agent, client_key, authorized_keys, tmp_path):
    console = await _console_of(secretive_agent, client_key, tmp_path)
    shell_fds = TaskSpec(id="1.0.1", kind="shell", shell="for f in /proc/$$/fd/*; do readlink $f; done")
    call_fds = TaskSpec(id="1.1.1", kind="call", fn="tests.integration.securitytasks:open_descriptors")
    console.run(shell_fds, call_fds)
    results = await console.results([shell_fds.id, call_fds.id])
    links = results[shell_fds.id].stdout.decode().splitlines() + results[call_fds.id].value
    state_dir = str(tmp_path / "secretive")
    assert links and not [link for link in links if link.startswith(state_dir) or link == str(authorized_keys)], links
    await console.close()


async def test_call_task_output_is_captured_not_written_to_the_agents_log(secretive_agent, client_key, tmp_path):
    console = await _console_of(secretive_agent, client_key, tmp_path)
    task = TaskSpec(id="2.0.1", kind="call", fn="tests.integration.securitytasks:noisy")
    console.run(task)
    result = (await console.results([task.id]))[task.id]
    assert result.ok and result.value == "done"
    for line in (b"FORGED printed line", b"FORGED fd1 line", b"FORGED child out"):
        assert line in result.stdout
    for line in (b"FORGED fd2 line", b"FORGED dunder stderr", b"FORGED child err"):
        assert line in result.stderr
    await console.close()
    assert await secretive_agent.stop() == 0
    log = await secretive_agent.proc.stderr.read()
    assert b"FORGED" not in log, log.decode(errors="replace")


# --- discovery: mDNS is trusted for nothing -------------------------------------------------------


async def _until(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.mark.xdist_group("mdns")
async def test_mdns_found_nodes_are_hints_never_pinned_or_remembered(tmp_path):
    from demos.cluster import LocalCluster
    from engine.api import Engine
    from engine.trust import KnownHosts

    with LocalCluster(tmp_path / "mdns", [1], advertise=True, trusted=False) as cluster:
        address = cluster.addresses[0]
        known = KnownHosts(cluster.config_dir / "known_hosts")
        engine = await Engine.open(
            tmp_path / "state", cluster.config_dir, mdns_interfaces=["127.0.0.1"], trust_new=True
        )
        try:
            coordinator = engine.coordinator
            await _until(lambda: address in coordinator.peers and coordinator.peers[address].state == "untrusted",
                         "the advertised agent to be seen and left untrusted")  # fmt: skip
            # --trust-new did not pin it, and it is not a known node.
            assert known.lookup("127.0.0.1", cluster.agents[0].port) is None
            assert address not in coordinator.store.known_nodes()
            # It stops advertising: the engine stops dialing it.
            await asyncio.to_thread(cluster.agents[0].stop)
            await _until(lambda: address not in coordinator.peers, "the hint to be dropped")
            assert address not in coordinator.store.known_nodes()
        finally:
            await engine.close()


@pytest.mark.xdist_group("mdns")
async def test_an_mdns_node_the_operator_trusts_becomes_a_known_node(tmp_path):
    from demos.cluster import LocalCluster
    from engine.api import Engine

    with LocalCluster(tmp_path / "mdns", [1], advertise=True, trusted=False) as cluster:
        address = cluster.addresses[0]
        engine = await Engine.open(tmp_path / "state", cluster.config_dir, mdns_interfaces=["127.0.0.1"])
        try:
            coordinator = engine.coordinator
            await _until(lambda: address in coordinator.peers and coordinator.peers[address].state == "untrusted",
                         "the advertised agent to be seen")  # fmt: skip
            await engine.trust(address)
            await engine.wait_for_nodes(1, timeout=30)
            assert address in coordinator.store.known_nodes()
        finally:
            await engine.close()


def test_agent_help_says_plainly_what_an_authorized_key_can_do(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "an authorized key can run any program, and any Python code, as the user this agent runs as" in text
    assert "--allow-pickle only adds pickled callables, it is not a boundary" in text
    assert "--pass-env NAME" in text
