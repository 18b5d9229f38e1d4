"""A real local cluster for tests, benchmarks and the demo: `shoal agent`
subprocesses on 127.0.0.1, each with its own state dir, trusting one console
key. Nothing here is a fake: kill -9 means kill -9."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LISTENING = re.compile(rb"listening on (\S+):(\d+)")


@dataclass
class AgentProcess:
    name: str
    state_dir: Path
    slots: int
    labels: str = ""
    extra: list[str] = field(default_factory=list)
    advertise: bool = False  # over mDNS on 127.0.0.1 only
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, authorized_keys: Path, port: int = 0, timeout: float = 20.0) -> None:
        argv = [
            sys.executable,
            "-m",
            "console.cli",
            "agent",
            "--listen",
            f"127.0.0.1:{port or self.port}",
            "--authorized-keys",
            str(authorized_keys),
            "--slots",
            str(self.slots),
            "--state-dir",
            str(self.state_dir),
            *(["--mdns-interface", "127.0.0.1"] if self.advertise else ["--no-advertise"]),
            "--grace",
            "1",
            *(["--labels", self.labels] if self.labels else []),
            *self.extra,
        ]
        # The console's own Python first on PATH: job files say "python3", and
        # a version-manager shim in front of it can cost 300 ms a task.
        bindir = str(Path(sys.executable).parent)
        env = {
            **os.environ,
            "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=env)
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        line = b""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            match = LISTENING.search(line)
            if match:
                self.port = int(match.group(2))
                return
            if not line and self.proc.poll() is not None:
                break
        err = self.proc.stderr.read() if self.proc.stderr else b""
        raise RuntimeError(f"agent {self.name} did not start: {line!r} {err.decode(errors='replace')}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class LocalCluster:
    def __init__(
        self,
        root: Path,
        slots: list[int],
        labels: list[str] | None = None,
        extra: list[str] | None = None,
        advertise: bool = False,
        trusted: bool = True,  # pin the agents' host keys at start (False: strangers to the console)
    ) -> None:
        from engine.trust import load_or_create_console_key, public_key_line

        self.root = root
        self.trusted = trusted
        self.config_dir = root / "console-config"
        self.state_dir = root / "console-state"
        key = load_or_create_console_key(self.config_dir)
        self.authorized_keys = root / "authorized_keys"
        self.authorized_keys.write_text(public_key_line(key) + "\n")
        labels = labels or [""] * len(slots)
        self.agents = [
            AgentProcess(f"agent{i}", root / f"agent{i}", n, labels[i], list(extra or []), advertise)
            for i, n in enumerate(slots)
        ]

    def start(self) -> LocalCluster:
        for agent in self.agents:
            agent.start(self.authorized_keys)
        if self.trusted:
            self.trust_agents()
        return self

    def trust_agents(self) -> None:
        """Pin each agent's host key, read from the state dir this cluster
        gave it: the cluster trusts what it started, and nothing it merely
        hears of over mDNS (which --trust-new never pins)."""
        import asyncssh

        from engine.trust import KnownHosts

        known = KnownHosts(self.config_dir / "known_hosts")
        for agent in self.agents:
            key = asyncssh.read_private_key(agent.state_dir / "host_key")
            known.pin("127.0.0.1", agent.port, key.convert_to_public(), replace=True)

    @property
    def addresses(self) -> list[str]:
        return [agent.address for agent in self.agents]

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
