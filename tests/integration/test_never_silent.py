"""Issue 11, "never silent, never wrong": each fault a new user met, through
the real `shoal` command and real agents on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from demos.cluster import REPO, LocalCluster


def shoal(*args: str, env: dict[str, str] | None = None, timeout: float = 90, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "console.cli", *args],
        capture_output=True, text=True, timeout=timeout, cwd=kwargs.pop("cwd", REPO), env=env, **kwargs,
    )


@pytest.fixture
def cluster(tmp_path: Path):
    with LocalCluster(tmp_path, [2, 1]) as running:
        yield running


def cluster_env(cluster: LocalCluster) -> dict[str, str]:
    return {**os.environ, "SHOAL_STATE_DIR": str(cluster.state_dir), "SHOAL_CONFIG_DIR": str(cluster.config_dir)}


def node_flags(cluster: LocalCluster) -> list[str]:
    return [flag for address in cluster.addresses for flag in ("--node", address)]


@pytest.mark.timeout(120)
def test_demo_flaky_job_fails_each_item_first_one_or_two_attempts_then_succeeds(cluster):
    env = cluster_env(cluster)
    run = shoal("run", "demos/jobs/flaky.toml", *node_flags(cluster), "--json", env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    assert report["result"] == 40 and report["counts"]["succeeded"] == 40
    rows = json.loads(shoal("results", str(report["job"]), "--json", env=env).stdout)["tasks"]
    assert [row["attempts"] for row in rows] == [2 + index % 2 for index in range(40)]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_job(tmp_path: Path, text: str, name: str = "job.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


TINY = 'command = ["echo", "{item}"]\nitems = [1, 2, 3]\nreduce = "sum"\n'


def isolated_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "SHOAL_STATE_DIR": str(tmp_path / "state"), "SHOAL_CONFIG_DIR": str(tmp_path / "cfg")}


@pytest.mark.timeout(60)
def test_a_closed_port_is_said_with_its_reason_and_run_gives_up_with_exit_2(tmp_path):
    port = free_port()
    job = write_job(tmp_path, TINY)
    run = shoal("run", str(job), "--node", f"127.0.0.1:{port}", "--wait-for-nodes", "3", env=isolated_env(tmp_path))
    assert run.returncode == 2, run.stderr
    assert f"node 127.0.0.1:{port}: connection refused" in run.stderr
    assert "retrying" in run.stderr and "cannot connect: ;" not in run.stderr
    assert f"no node reached in 3 s: 127.0.0.1:{port}: connection refused" in run.stderr.splitlines()[-1]
    assert "Traceback" not in run.stderr
    # Never reached: not remembered, so no later run dials it again.
    nodes = shoal("nodes", "--json", env=isolated_env(tmp_path))
    assert nodes.returncode == 0 and json.loads(nodes.stdout) == []


@pytest.mark.timeout(60)
def test_an_http_server_given_as_a_node_is_said_to_be_no_ssh_server(tmp_path):
    port = free_port()
    http = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import socket
        import time

        deadline = time.monotonic() + 10
        while True:  # until it listens
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        run = shoal("run", str(write_job(tmp_path, TINY)), "--node", f"127.0.0.1:{port}", "--wait-for-nodes", "3",
                    env=isolated_env(tmp_path))
    finally:
        http.terminate()
        http.wait(10)
    assert run.returncode == 2
    assert f"node 127.0.0.1:{port}: not an SSH server" in run.stderr


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "extra,words",
    [
        ('labels = { gpu = "yes" }\n', "field 'labels': no node offers labels gpu=yes (2 nodes: 127.0.0.1:"),
        ("slots = 8\n", "field 'slots': no node offers 8 slots per task (2 nodes: 127.0.0.1:"),
    ],
)
def test_a_job_no_node_can_take_fails_with_exit_2_naming_the_field(cluster, tmp_path, extra, words):
    job = write_job(tmp_path, TINY + extra)
    run = shoal("run", str(job), *node_flags(cluster), env=cluster_env(cluster))
    assert run.returncode == 2, run.stderr
    assert words in run.stderr and "Traceback" not in run.stderr
    jobs = json.loads(shoal("jobs", "--json", env=cluster_env(cluster)).stdout)
    assert [j["status"] for j in jobs] == ["cancelled"]  # not resumed by a later run


@pytest.mark.timeout(90)
def test_nodes_are_remembered_once_reached_and_forgotten_on_request(cluster, tmp_path):
    env = cluster_env(cluster)
    assert shoal("run", str(write_job(tmp_path, TINY)), *node_flags(cluster), env=env).returncode == 0
    remembered = {n["id"] for n in json.loads(shoal("nodes", "--json", env=env).stdout)}
    # Those the run reached (it may end before the second one answers).
    assert remembered and remembered <= set(cluster.addresses)
    gone = sorted(remembered)[0]
    forget = shoal("nodes", "forget", gone, env=env)
    assert forget.returncode == 0 and f"forgot {gone}" in forget.stdout
    assert {n["id"] for n in json.loads(shoal("nodes", "--json", env=env).stdout)} == remembered - {gone}
    again = shoal("nodes", "forget", "127.0.0.1:1", env=env)
    assert again.returncode == 2 and "not a remembered node" in again.stderr


@pytest.mark.timeout(90)
def test_a_changed_host_key_is_said_once(cluster, tmp_path):
    import asyncssh

    from engine.trust import KnownHosts

    agent = cluster.agents[0]
    KnownHosts(cluster.config_dir / "known_hosts").pin(
        "127.0.0.1", agent.port, asyncssh.generate_private_key("ssh-ed25519").convert_to_public(), replace=True
    )
    run = shoal("run", str(write_job(tmp_path, TINY)), "--node", agent.address, "--wait-for-nodes", "3", env=cluster_env(cluster))
    assert run.returncode == 2
    assert run.stderr.count("expected SHA256:") == 1, run.stderr  # the key's change, said once


@pytest.mark.timeout(60)
def test_a_reader_that_goes_away_ends_no_command_with_a_traceback(cluster, tmp_path):
    env = cluster_env(cluster)
    assert shoal("run", str(write_job(tmp_path, TINY)), *node_flags(cluster), env=env).returncode == 0
    for args in (["results", "1", "--json"], ["jobs"], ["nodes", "--json"], ["--help"], ["run", "--help"]):
        read_end, write_end = os.pipe()
        os.close(read_end)  # the first write meets EPIPE, as `| head` does once it has its lines
        try:
            proc = subprocess.run([sys.executable, "-m", "console.cli", *args], stdout=write_end, stderr=subprocess.PIPE,
                                  text=True, timeout=60, cwd=REPO, env=env)
        finally:
            os.close(write_end)
        assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, (args, proc.stderr)
        assert proc.returncode in (0, 2)


def _options_without_default(help_text: str) -> list[str]:
    """The option entries of an argparse --help whose text names no default."""
    entries: list[list[str]] = []
    for line in help_text.split("options:", 1)[-1].splitlines():
        if line.startswith("  -"):
            entries.append([line])
        elif entries and line.startswith("    "):
            entries[-1].append(line)
    return [
        entry[0].split()[0] for entry in entries
        if not entry[0].lstrip().startswith("-h") and not any(w in " ".join(entry) for w in ("default", "required"))
    ]


def test_every_flag_of_every_command_has_help_with_its_default(tmp_path):
    from console.cli import COMMANDS

    top = shoal("--help").stdout
    for command in ["agent", *COMMANDS]:
        help_text = shoal(command, "--help").stdout
        assert _options_without_default(help_text) == [], command
        line = next(line for line in top.splitlines() if line.strip().startswith(command + " "))
        assert len(line.split()) > 2, f"{command} has no description in 'shoal --help'"
    agent_help = " ".join(shoal("agent", "--help").stdout.split())
    assert "advertises itself over mDNS on EVERY network interface unless --mdns-interface" in agent_help


def test_keys_takes_a_config_dir_and_the_agent_honours_its_state_dir_variable(tmp_path, authorized_keys=None):
    keys = shoal("keys", "--config-dir", str(tmp_path / "cfg"))
    assert keys.returncode == 0 and (tmp_path / "cfg" / "console_key").exists()
    (tmp_path / "authorized_keys").write_text(keys.stdout)
    env = {**os.environ, "SHOAL_AGENT_STATE_DIR": str(tmp_path / "agent-state")}
    agent = subprocess.Popen(
        [sys.executable, "-m", "console.cli", "agent", "--listen", "127.0.0.1:0", "--no-advertise",
         "--authorized-keys", str(tmp_path / "authorized_keys")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=env,
    )
    try:
        assert agent.stdout is not None and b"listening on" in agent.stdout.readline()
        assert (tmp_path / "agent-state" / "host_key").exists()
    finally:
        agent.terminate()
        agent.wait(15)


@pytest.mark.timeout(60)
def test_the_python_api_says_why_a_wait_times_out(cluster, tmp_path):
    from engine.api import Cluster

    closed = f"127.0.0.1:{free_port()}"
    with Cluster([closed], state_dir=tmp_path / "s1", config_dir=cluster.config_dir) as nowhere:
        job = nowhere.map(["echo", "{item}"], [1, 2])
        with pytest.raises(TimeoutError, match=f"still running after 2s: no node reached: {closed}: connection refused"):
            job.wait(timeout=2)
        with pytest.raises(TimeoutError, match=f"only 0 of 1 nodes up after 1s: {closed}: connection refused"):
            nowhere._call(nowhere.engine.wait_for_nodes(1, timeout=1))
    with Cluster(cluster.addresses, state_dir=tmp_path / "s2", config_dir=cluster.config_dir, wait_for=2) as running:
        job = running.map(["echo", "{item}"], [1, 2], labels={"gpu": "yes"})
        with pytest.raises(TimeoutError, match=r"field 'labels': no node offers labels gpu=yes \(2 nodes: 127.0.0.1:"):
            job.wait(timeout=2)
        # A callable pickled by value, and agents started without --allow-pickle.
        job = running.map(lambda x: x + 1, [1, 2])
        with pytest.raises(
            TimeoutError,
            match=r"field 'function': no node runs pickle tasks \(2 nodes: 127.0.0.1:\d+ call/shell, .*\); "
            r"an agent runs pickled callables only when started with --allow-pickle",
        ):
            job.wait(timeout=2)
        assert job.counts["queued"] == 2  # none sent to be refused


@pytest.mark.timeout(120)
def test_a_job_file_is_the_same_job_however_its_path_is_spelt_and_a_changed_file_is_a_new_one(cluster, tmp_path):
    env = cluster_env(cluster)
    job = write_job(tmp_path, 'command = ["echo", "{item}"]\nitems = { range = [1, 101] }\nreduce = "sum"\n')
    # Left unfinished in the store (no node reachable), by its absolute path.
    first = shoal("run", str(job), "--node", f"127.0.0.1:{free_port()}", "--wait-for-nodes", "1", env=env)
    assert first.returncode == 2 and "job 1 stays stored" in first.stderr
    again = shoal("run", "./job.toml", *node_flags(cluster), env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "resuming job 1" in again.stderr and again.stdout.strip() == "5050"
    assert [j["id"] for j in json.loads(shoal("jobs", "--json", env=env).stdout)] == [1]  # never submitted twice
    # Changed, and left unfinished as job 2 (the nodes forgotten, so none is dialed).
    for node in json.loads(shoal("nodes", "--json", env=env).stdout):
        assert shoal("nodes", "forget", node["id"], env=env).returncode == 0
    job.write_text(job.read_text().replace("101", "11"))
    changed = shoal("run", str(job), "--node", f"127.0.0.1:{free_port()}", "--wait-for-nodes", "1", env=env)
    assert changed.returncode == 2
    # Changed again, run through a symlinked directory: a new job, said in one line.
    job.write_text(job.read_text().replace("11]", "21]"))
    (tmp_path / "link").symlink_to(tmp_path)
    newer = shoal("run", str(tmp_path / "link" / "job.toml"), *node_flags(cluster), env=env)
    assert newer.returncode == 0, newer.stderr
    lines = [line for line in newer.stderr.splitlines() if "changed since job 2" in line]
    assert len(lines) == 1 and "this is a new job (3)" in lines[0], newer.stderr


@pytest.mark.timeout(120)
def test_with_no_engine_the_views_show_what_the_store_holds_of_an_unfinished_job(cluster, tmp_path):
    import time

    env = cluster_env(cluster)
    job = write_job(tmp_path, 'shell = "sleep 0.2; echo {item}"\nitems = { range = [1, 61] }\nreduce = "sum"\n')
    run = subprocess.Popen([sys.executable, "-m", "console.cli", "run", str(job), *node_flags(cluster)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:  # until some results are stored, asking the running engine
            listed = shoal("jobs", "--json", env=env)
            if listed.returncode == 0 and listed.stdout.strip() not in ("", "[]"):
                if json.loads(listed.stdout)[0]["counts"].get("succeeded", 0) >= 6:
                    break
            assert time.monotonic() < deadline and run.poll() is None
            time.sleep(0.1)
    finally:
        run.kill()  # kill -9: no engine left to answer
        run.wait(10)
    stored = json.loads(shoal("results", "1", "--json", env=env).stdout)
    succeeded = [row["value"] for row in stored["tasks"] if row["status"] == "succeeded"]
    assert len(succeeded) >= 6 and stored["partial"] is True
    assert stored["result"] == sum(succeeded)
    [offline] = json.loads(shoal("jobs", "--json", env=env).stdout)
    assert offline["status"] == "unfinished" and offline["counts"]["succeeded"] == len(succeeded)
    assert offline["counts"]["queued"] == 60 - len(succeeded)
    plain = shoal("results", "1", env=env)
    assert plain.stdout.strip() == str(sum(succeeded))
    assert f"job 1 is unfinished: the partial result of {len(succeeded)} of 60 tasks" in plain.stderr
    table = shoal("jobs", env=env).stdout
    assert f"{len(succeeded)}/60" in table.replace(" ", "")
