"""A real local cluster for tests, benchmarks and the demo: `shoal agent`
subprocesses on 127.0.0.1, each with its own state dir, trusting one console
key. Nothing here is a fake: kill -9 means kill -9."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LISTENING = re.compile(rb"listening on (\S+):(\d+)")

# `shoal agent ARGS` that asks the kernel for SIGTERM when its parent dies,
# set in the child itself (a preexec_fn is unsafe in a threaded parent); if
# the parent died before that, it ends at once.
_TIED_AGENT = """
import ctypes, os, signal, sys
PR_SET_PDEATHSIG = 1
ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
if os.getppid() != int(sys.argv[1]):
    sys.exit(0)
from nodeagent.server import main
sys.exit(main(sys.argv[2:]))
"""


@dataclass
class AgentProcess:
    name: str
    state_dir: Path
    slots: int
    labels: str = ""
    extra: list[str] = field(default_factory=list)
    advertise: bool = False  # over mDNS on 127.0.0.1 only
    # Ends (SIGTERM) when the thread that started it dies, however it dies
    # (Linux PR_SET_PDEATHSIG): no agent outlives a demo killed with -9.
    tied_to_parent: bool = False
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, authorized_keys: Path, port: int = 0, timeout: float = 20.0) -> None:
        argv = [
            sys.executable,
            *(["-c", _TIED_AGENT, str(os.getpid())] if self.tied_to_parent else ["-m", "nodeagent"]),
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
        tied_to_parent: bool = False,  # agents end when this process does, even on kill -9 (Linux)
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
            AgentProcess(f"agent{i}", root / f"agent{i}", n, labels[i], list(extra or []), advertise, tied_to_parent)
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


async def until_signalled(main: Coroutine[Any, Any, int], signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP)) -> int:
    """Run ``main``; on one of ``signals`` cancel it, so its ``finally``
    and ``with`` blocks stop the agents and remove the temp dir, and return
    128 + the signal's number, as a shell reports a death by signal."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(main)
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        task.cancel()

    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        return await task
    except asyncio.CancelledError:
        if not received:
            raise
        print(f"demo: {signal.Signals(received[0]).name}: agents stopped, temp dir removed", file=sys.stderr)
        return 128 + received[0]
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
