"""The `shoal` command as a user meets it."""

import os
import subprocess
import sys

import asyncssh

from demos.cluster import REPO


def shoal(*args, env=None):
    return subprocess.run([sys.executable, "-m", "console.cli", *args], capture_output=True, text=True, timeout=60, cwd=REPO, env=env)


def test_keys_prints_one_openssh_line_and_nothing_else(tmp_path):
    env = {**os.environ, "SHOAL_CONFIG_DIR": str(tmp_path / "cfg")}
    first = shoal("keys", env=env)
    assert first.returncode == 0 and first.stderr == ""
    lines = first.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ssh-ed25519 ")
    asyncssh.import_public_key(lines[0])
    assert shoal("keys", env=env).stdout == first.stdout  # the same key every time
    assert (tmp_path / "cfg" / "console_key").stat().st_mode & 0o777 == 0o600


def test_help_lists_every_command_and_bad_usage_exits_2(tmp_path):
    out = shoal("--help").stdout
    for command in ("agent", "run", "demo", "keys", "jobs", "nodes", "results", "trust"):
        assert command in out
    assert shoal("run").returncode == 2
    bad_node = shoal("run", "demos/jobs/squares.toml", "--node", "nowhere", "--state-dir", str(tmp_path))
    assert bad_node.returncode == 2 and "Traceback" not in bad_node.stderr
    missing = shoal("run", str(tmp_path / "nope.toml"), "--node", "127.0.0.1:1")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    no_state = shoal("jobs", "--state-dir", str(tmp_path / "empty"))
    assert no_state.returncode == 2 and "nothing has run" in no_state.stderr


def test_agent_without_authorized_keys_refuses_to_start(tmp_path):
    proc = shoal("agent", "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path), "--no-advertise")
    assert proc.returncode == 2
    assert "authorized-keys" in proc.stderr and "Traceback" not in proc.stderr
