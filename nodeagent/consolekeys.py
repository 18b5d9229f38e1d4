"""Which public key owns each console id.

A console id names a console's tasks and unacked results on this agent. The
first authorized key to say hello under an id owns it, for good: another
authorized key that claims the id is refused, so it cannot take over that
console's session or acknowledge its results away. The bindings survive a
restart of the agent (a JSON file in its state dir, 0600), as the journal's
results do.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from nodeagent.privatefiles import write_private

log = logging.getLogger("shoal.agent")

CONSOLE_KEYS_FILE = "console_keys.json"


class ConsoleKeys:
    def __init__(self, state_dir: Path | None) -> None:
        self._path = None if state_dir is None else state_dir / CONSOLE_KEYS_FILE
        self._owners: dict[str, str] = self._load()

    def _load(self) -> dict[str, str]:
        if self._path is None or not self._path.exists():
            return {}
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            # Starting with no bindings would let any key claim any id.
            raise ValueError(f"console key bindings {self._path}: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ValueError(f"console key bindings {self._path}: not a map of console ids to key fingerprints")
        return data

    def claim(self, console_id: str, key_fingerprint: str) -> bool:
        """Whether the key may speak as ``console_id``; the first claim binds it."""
        owner = self._owners.get(console_id)
        if owner is not None:
            return owner == key_fingerprint
        self._owners[console_id] = key_fingerprint
        if self._path is not None:
            write_private(self._path, json.dumps(self._owners, indent=0, sort_keys=True).encode())
        log.info("console id %s is bound to key %s", console_id, key_fingerprint)
        return True
