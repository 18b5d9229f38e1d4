"""Where Shoal keeps its files: XDG dirs, overridable by flag and env var.

Resolution order for each dir: the explicit override (a CLI flag), then the
environment variable, then the platform default from ``platformdirs``. Tests
and demos point everything at temp dirs this way. A dir is created on first
use with mode 0700: it holds private keys, the known-hosts file and the
engine's control socket, none of which other users should reach.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import platformdirs

APP_NAME = "shoal"
STATE_DIR_ENV = "SHOAL_STATE_DIR"
CONFIG_DIR_ENV = "SHOAL_CONFIG_DIR"
AGENT_STATE_DIR_ENV = "SHOAL_AGENT_STATE_DIR"


def state_dir(override: str | Path | None = None) -> Path:
    """The console's state: the SQLite store, the engine lock, the control socket."""
    return _resolve(override, STATE_DIR_ENV, lambda: Path(platformdirs.user_state_dir(APP_NAME)))


def config_dir(override: str | Path | None = None) -> Path:
    """The console's SSH key and known-hosts file."""
    return _resolve(override, CONFIG_DIR_ENV, lambda: Path(platformdirs.user_config_dir(APP_NAME)))


def agent_state_dir(override: str | Path | None = None) -> Path:
    """A node agent's host key and result journal."""
    return _resolve(override, AGENT_STATE_DIR_ENV, lambda: Path(platformdirs.user_data_dir(APP_NAME)) / "agent")


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if missing; the leaf gets mode 0700.

    An existing dir keeps its mode: the operator may have chosen it on purpose.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` if missing, and make it 0600 either way, before anything
    else opens it: SQLite gives its -wal and -shm files the mode of the
    database, so a database created private keeps its journals private whatever
    the umask."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    return path


def _resolve(override: str | Path | None, env_var: str, default: Callable[[], Path]) -> Path:
    chosen = override if override not in (None, "") else os.environ.get(env_var) or None
    path = Path(chosen).expanduser() if chosen is not None else default()
    return ensure_private_dir(path.absolute())
