"""The console key, the known-hosts file and the XDG paths, on real files."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import asyncssh
import pytest

from engine import paths
from engine.trust import (
    HostKeyChanged,
    KnownHosts,
    TrustError,
    TrustStatus,
    fingerprint,
    load_or_create_console_key,
    public_key_line,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def new_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


@pytest.fixture
def known(tmp_path: Path) -> KnownHosts:
    return KnownHosts(tmp_path / "cfg" / "known_hosts")


# --- the console key ---------------------------------------------------------------


def test_console_key_is_created_once_with_private_modes(tmp_path: Path) -> None:
    cdir = tmp_path / "cfg"
    first = load_or_create_console_key(cdir)
    second = load_or_create_console_key(cdir)
    assert first.public_data == second.public_data
    assert first.algorithm == b"ssh-ed25519"
    assert mode(cdir) == 0o700
    assert mode(cdir / "console_key") == 0o600
    pub = (cdir / "console_key.pub").read_text()
    assert pub == public_key_line(first) + "\n"
    assert [p.name for p in cdir.iterdir() if p.name.endswith(".tmp")] == []


def test_unreadable_console_key_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "console_key").write_text("not a key\n")
    with pytest.raises(TrustError, match="cannot read the console key"):
        load_or_create_console_key(tmp_path)


def test_public_key_line_is_one_openssh_line_that_parses_back() -> None:
    key = new_key()
    line = public_key_line(key)
    assert "\n" not in line
    algorithm, _blob, comment = line.split(" ")
    assert algorithm == "ssh-ed25519"
    assert comment.startswith("shoal-console@")
    assert asyncssh.import_public_key(line).public_data == key.public_data
    assert public_key_line(key, comment="ops").endswith(" ops")


def test_fingerprint_is_openssh_sha256() -> None:
    key = new_key()
    assert fingerprint(key).startswith("SHA256:")
    assert fingerprint(key) == key.convert_to_public().get_fingerprint("sha256")


# --- known hosts ----------------------------------------------------------------------


def test_pin_lookup_and_check(known: KnownHosts) -> None:
    key, other = new_key(), new_key()
    assert known.lookup("10.0.0.5", 7447) is None
    assert known.check("10.0.0.5", 7447, key) is TrustStatus.UNKNOWN
    known.pin("10.0.0.5", 7447, key)
    assert known.lookup("10.0.0.5", 7447).public_data == key.public_data
    assert known.check("10.0.0.5", 7447, key) is TrustStatus.TRUSTED
    assert known.check("10.0.0.5", 7447, other) is TrustStatus.CHANGED
    assert known.check("10.0.0.5", 7448, key) is TrustStatus.UNKNOWN
    known.pin("10.0.0.5", 7447, key)  # pinning the same key again is a no-op
    assert known.path.read_text().count("\n") == 1


def test_changed_key_is_never_silently_replaced(known: KnownHosts) -> None:
    key, other = new_key(), new_key()
    known.pin("node1", 7447, key)
    with pytest.raises(HostKeyChanged) as caught:
        known.pin("node1", 7447, other)
    assert fingerprint(key) in str(caught.value) and fingerprint(other) in str(caught.value)
    assert known.check("node1", 7447, other) is TrustStatus.CHANGED
    known.pin("node1", 7447, other, replace=True)
    assert known.check("node1", 7447, other) is TrustStatus.TRUSTED
    assert known.path.read_text().count("ssh-ed25519") == 1


def test_file_is_openssh_format_and_reads_back(known: KnownHosts) -> None:
    key, v6key, sshkey = new_key(), new_key(), new_key()
    known.pin("127.0.0.1", 7447, key)
    known.pin("[::1]", 7448, v6key)
    known.pin("Build-Box", 22, sshkey)
    lines = known.path.read_text().splitlines()
    blob = public_key_line(key, comment="").split()[1]
    assert lines[0] == f"[127.0.0.1]:7447 ssh-ed25519 {blob}"
    assert lines[1].startswith("[::1]:7448 ssh-ed25519 ")
    assert lines[2].startswith("build-box ssh-ed25519 ")  # port 22: bare name, as OpenSSH writes
    assert mode(known.path) == 0o600
    again = KnownHosts(known.path)
    assert again.check("127.0.0.1", 7447, key) is TrustStatus.TRUSTED
    assert again.check("::1", 7448, v6key) is TrustStatus.TRUSTED
    assert again.check("0:0::1", 7448, v6key) is TrustStatus.TRUSTED  # same address, other spelling
    assert again.check("BUILD-BOX", 22, sshkey) is TrustStatus.TRUSTED


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH's ssh-keygen")
def test_ssh_keygen_finds_pinned_hosts(known: KnownHosts) -> None:
    key = new_key()
    known.pin("::1", 7448, key)
    found = subprocess.run(
        ["ssh-keygen", "-F", "[::1]:7448", "-f", str(known.path)], capture_output=True, text=True, timeout=10
    )
    assert found.returncode == 0
    assert public_key_line(key, comment="").split()[1] in found.stdout


def test_writes_are_atomic_and_leave_no_temp_files(known: KnownHosts) -> None:
    for port in range(7000, 7010):
        known.pin("10.0.0.5", port, new_key())
    known.forget("10.0.0.5", 7003)
    leftovers = [p.name for p in known.path.parent.iterdir() if p.name not in ("known_hosts", "known_hosts.lock")]
    assert leftovers == []
    assert len(known.path.read_text().splitlines()) == 9


def test_forget_drops_one_endpoint(known: KnownHosts) -> None:
    key = new_key()
    known.pin("10.0.0.5", 7447, key)
    assert known.forget("10.0.0.5", 7447)
    assert not known.forget("10.0.0.5", 7447)
    assert known.lookup("10.0.0.5", 7447) is None


def test_find_by_key_names_every_address_of_one_agent(known: KnownHosts) -> None:
    key, other = new_key(), new_key()
    known.pin("10.0.0.5", 7447, key)
    known.pin("node5.local", 7447, key)
    known.pin("10.0.0.6", 7447, other)
    assert known.find_by_key(key) == [("10.0.0.5", 7447), ("node5.local", 7447)]
    assert known.find_by_key(new_key()) == []


def test_hand_edited_lines_survive_a_rewrite(known: KnownHosts) -> None:
    key = new_key()
    text = public_key_line(key, comment="")
    known.path.parent.mkdir(mode=0o700)
    known.path.write_text(
        "# pinned by hand\n"
        f"[a]:7447,[b]:7447 {text} from ops\n"
        f"|1|hashed= {text}\n"
        "[c]:7447 ssh-ed25519 not-base64\n"
    )
    assert known.check("b", 7447, key) is TrustStatus.TRUSTED
    assert known.lookup("c", 7447) is None  # an unreadable key is ignored, not a crash
    known.forget("a", 7447)
    assert known.path.read_text().splitlines() == [
        "# pinned by hand",
        f"[b]:7447 {text} from ops",
        f"|1|hashed= {text}",
        "[c]:7447 ssh-ed25519 not-base64",
    ]


# --- paths -------------------------------------------------------------------------------


def test_dirs_follow_flag_then_env_var_and_are_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_STATE_DIR", str(tmp_path / "env-state"))
    monkeypatch.setenv("SHOAL_CONFIG_DIR", str(tmp_path / "env-config"))
    monkeypatch.setenv("SHOAL_AGENT_STATE_DIR", str(tmp_path / "env-agent"))
    assert paths.state_dir(tmp_path / "flag") == tmp_path / "flag"
    assert paths.state_dir() == tmp_path / "env-state"
    assert paths.config_dir(None) == tmp_path / "env-config"
    assert paths.agent_state_dir() == tmp_path / "env-agent"
    for name in ("flag", "env-state", "env-config", "env-agent"):
        assert mode(tmp_path / name) == 0o700


def test_dirs_default_to_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SHOAL_STATE_DIR", "SHOAL_CONFIG_DIR", "SHOAL_AGENT_STATE_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert paths.state_dir() == tmp_path / "state" / "shoal"
    assert paths.config_dir() == tmp_path / "config" / "shoal"
    assert paths.agent_state_dir() == tmp_path / "data" / "shoal" / "agent"
