"""Who the console is and which agents it trusts.

The console has one Ed25519 key (``console_key`` in the config dir); agents
list its public line in their authorized-keys file. Agents are trusted by
their pinned SSH host key, kept in an OpenSSH-format known-hosts file so an
operator can inspect it with ``ssh-keygen -F '[host]:port' -f known_hosts``.
A key is pinned once (first trust); a different key later is CHANGED and is
never replaced behind the operator's back. Nothing else (mDNS fingerprints
included) is evidence of trust.
"""

from __future__ import annotations

import enum
import fcntl
import ipaddress
import logging
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from engine.paths import ensure_private_dir

log = logging.getLogger("shoal.trust")

CONSOLE_KEY_FILE = "console_key"
SSH_DEFAULT_PORT = 22  # OpenSSH writes a bare host name only for this port

Endpoint = tuple[str, int]


class TrustError(Exception):
    """A key or known-hosts problem the operator has to act on."""


class HostKeyChanged(TrustError):
    """``pin`` refused: another key is pinned for this endpoint."""

    def __init__(self, host: str, port: int, pinned: asyncssh.SSHKey, presented: asyncssh.SSHKey) -> None:
        self.pinned = pinned
        self.presented = presented
        super().__init__(
            f"host key of {display_endpoint(host, port)} changed: pinned {fingerprint(pinned)}, "
            f"presented {fingerprint(presented)}; not replaced without an explicit replace"
        )


class TrustStatus(enum.Enum):
    TRUSTED = "trusted"  # the presented key is the pinned one
    UNKNOWN = "unknown"  # nothing pinned for this endpoint yet
    CHANGED = "changed"  # another key is pinned: refuse and tell the operator


def fingerprint(key: asyncssh.SSHKey) -> str:
    """``SHA256:`` + unpadded base64, as ``ssh-keygen -l`` prints it."""
    return key.get_fingerprint("sha256")


def same_key(a: asyncssh.SSHKey, b: asyncssh.SSHKey) -> bool:
    return a.public_data == b.public_data


def display_endpoint(host: str, port: int) -> str:
    """``host:port``, with IPv6 literals in brackets (``[::1]:7447``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- the console's own key ------------------------------------------------------


def load_or_create_console_key(config_dir: str | Path) -> asyncssh.SSHKey:
    """The console's private key, generated (0600) on first use."""
    cdir = ensure_private_dir(Path(config_dir))
    path = cdir / CONSOLE_KEY_FILE
    try:
        key = asyncssh.read_private_key(path)
    except FileNotFoundError:
        key = asyncssh.generate_private_key("ssh-ed25519")
        if not _create_exclusive(path, key.export_private_key("openssh")):
            # Another process created it between our read and write: use
            # theirs, or the two would hand agents different keys.
            key = asyncssh.read_private_key(path)
    except (OSError, asyncssh.KeyImportError) as exc:
        raise TrustError(f"cannot read the console key {path}: {exc}") from None
    pub = cdir / (CONSOLE_KEY_FILE + ".pub")
    if not pub.exists():
        _write_atomic(pub, (public_key_line(key) + "\n").encode())
    return key


def public_key_line(key: asyncssh.SSHKey, comment: str | None = None) -> str:
    """One OpenSSH public-key line for an agent's authorized-keys file."""
    if comment is None:
        comment = f"shoal-console@{socket.gethostname()}"
    return f"{_key_text(key)} {comment}".rstrip()


def _key_text(key: asyncssh.SSHKey) -> str:
    """``ssh-ed25519 AAAA...``: the algorithm and base64 blob, no comment."""
    algorithm, blob = key.export_public_key("openssh").decode().split()[:2]
    return f"{algorithm} {blob}"


# --- known hosts -------------------------------------------------------------------


@dataclass
class _Entry:
    """One parsed known-hosts line: ``pattern[,pattern...] keytype base64 [comment]``."""

    endpoints: list[Endpoint]
    key: asyncssh.SSHKey
    key_text: str
    comment: str = ""

    def render(self) -> str:
        names = ",".join(_format_pattern(host, port) for host, port in self.endpoints)
        return f"{names} {self.key_text} {self.comment}".rstrip()


# A line we do not interpret (comment, hashed name, @marker, wildcard) is
# kept verbatim, so an operator's edits survive our rewrites.
_Line = _Entry | str


class KnownHosts:
    """The console's pinned agent host keys, one key per ``(host, port)``.

    Every call reads the file afresh, so a ``shoal trust`` in another process
    is seen by a running engine. Writes hold a lock file and replace the file
    atomically (temp file + rename, 0600), so a crash leaves the old file or
    the new one, never half of one.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def lookup(self, host: str, port: int) -> asyncssh.SSHKey | None:
        return _pinned(self._load(), _endpoint(host, port))

    def check(self, host: str, port: int, presented: asyncssh.SSHKey) -> TrustStatus:
        pinned = self.lookup(host, port)
        if pinned is None:
            return TrustStatus.UNKNOWN
        return TrustStatus.TRUSTED if same_key(pinned, presented) else TrustStatus.CHANGED

    def pin(self, host: str, port: int, key: asyncssh.SSHKey, *, replace: bool = False) -> None:
        """Trust ``key`` for this endpoint. A different pinned key raises
        ``HostKeyChanged`` unless ``replace`` (an operator's explicit choice)."""
        endpoint = _endpoint(host, port)
        with self._locked():
            lines = self._load()
            pinned = _pinned(lines, endpoint)
            if pinned is not None and same_key(pinned, key):
                return
            if pinned is not None and not replace:
                raise HostKeyChanged(host, port, pinned, key)
            lines = _without(lines, endpoint)
            lines.append(_Entry([endpoint], key, _key_text(key)))
            self._save(lines)
        log.info("pinned %s for %s", fingerprint(key), display_endpoint(*endpoint))

    def forget(self, host: str, port: int) -> bool:
        """Drop the pinned key of this endpoint; False if there was none."""
        endpoint = _endpoint(host, port)
        with self._locked():
            lines = self._load()
            if _pinned(lines, endpoint) is None:
                return False
            self._save(_without(lines, endpoint))
        return True

    def find_by_key(self, key: asyncssh.SSHKey) -> list[Endpoint]:
        """Every endpoint pinned to ``key``: one agent reached under several names."""
        return [
            endpoint
            for line in self._load()
            if isinstance(line, _Entry) and same_key(line.key, key)
            for endpoint in line.endpoints
        ]

    def _load(self) -> list[_Line]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise TrustError(f"cannot read the known-hosts file {self.path}: {exc}") from None
        return [_parse_line(line) for line in text.splitlines()]

    def _save(self, lines: list[_Line]) -> None:
        text = "".join((line if isinstance(line, str) else line.render()) + "\n" for line in lines)
        _write_atomic(self.path, text.encode())

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # A sidecar lock: the file itself is replaced by rename, so a lock on
        # it would guard an inode that is about to go away.
        ensure_private_dir(self.path.parent)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _endpoint(host: str, port: int) -> Endpoint:
    """The canonical key for a host: IP literals compressed, names lower-cased
    (as OpenSSH compares them), brackets dropped."""
    host = host.strip().removeprefix("[").removesuffix("]")
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        host = host.lower()
    if not host or not 0 < port < 65536:
        raise ValueError(f"not a host and port: {host!r} {port!r}")
    return host, port


def _format_pattern(host: str, port: int) -> str:
    return host if port == SSH_DEFAULT_PORT else f"[{host}]:{port}"


_BRACKETED = re.compile(r"\[(?P<host>[^\]]+)\]:(?P<port>\d{1,5})")


def _parse_pattern(pattern: str) -> Endpoint | None:
    """A literal host pattern; None for what we do not interpret (wildcards, negation)."""
    match = _BRACKETED.fullmatch(pattern)
    if match:
        host, port = match["host"], int(match["port"])
    elif any(c in pattern for c in "*?![]"):
        return None
    else:
        host, port = pattern, SSH_DEFAULT_PORT
    try:
        return _endpoint(host, port)
    except ValueError:
        return None


def _parse_line(line: str) -> _Line:
    fields = line.split()
    if len(fields) < 3 or fields[0].startswith(("#", "@", "|")):
        return line
    endpoints = [_parse_pattern(p) for p in fields[0].split(",")]
    if any(e is None for e in endpoints):
        return line
    key_text = f"{fields[1]} {fields[2]}"
    try:
        key = asyncssh.import_public_key(key_text)
    except (asyncssh.KeyImportError, ValueError):
        log.warning("ignoring a known-hosts line with an unreadable key: %.60s", line)
        return line
    return _Entry([e for e in endpoints if e is not None], key, key_text, " ".join(fields[3:]))


def _pinned(lines: list[_Line], endpoint: Endpoint) -> asyncssh.SSHKey | None:
    for line in lines:
        if isinstance(line, _Entry) and endpoint in line.endpoints:
            return line.key
    return None


def _without(lines: list[_Line], endpoint: Endpoint) -> list[_Line]:
    """``lines`` with ``endpoint`` removed from every entry (an emptied entry goes)."""
    kept: list[_Line] = []
    for line in lines:
        if isinstance(line, _Entry) and endpoint in line.endpoints:
            rest = [e for e in line.endpoints if e != endpoint]
            if rest:
                kept.append(_Entry(rest, line.key, line.key_text, line.comment))
        else:
            kept.append(line)
    return kept


# --- files -------------------------------------------------------------------------


def _temp_beside(path: Path, data: bytes) -> Path:
    """``data`` in a fresh 0600 temp file in ``path``'s dir, synced to disk."""
    ensure_private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = _temp_beside(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_dir(path.parent)


def _create_exclusive(path: Path, data: bytes) -> bool:
    """Write ``path`` atomically unless it exists; False if it did."""
    tmp = _temp_beside(path, data)
    try:
        os.link(tmp, path)  # link, unlike rename, refuses to overwrite
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    _sync_dir(path.parent)
    return True


def _sync_dir(path: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
