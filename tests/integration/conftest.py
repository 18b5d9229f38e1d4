"""Real node agents for integration tests, one line each.

``agent = await start_agent(slots=2)`` runs a real agent (asyncssh server on
127.0.0.1, port 0, real executor and worker processes) inside the test's event
loop; ``console = await agent.console("c1")`` connects a real console link to
it. ``agent_process`` runs ``shoal agent`` as a real subprocess. Everything
is stopped at teardown.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
import pytest

from engine.link import AgentLink, open_link
from nodeagent.protocol import KIND_SHELL, Ack, Finished, Message, Run, TaskResult, TaskSpec
from nodeagent.server import Agent, AgentConfig

REPO = Path(__file__).resolve().parents[2]
M = TypeVar("M", bound=Message)
_ids = itertools.count(1)


def shell(command: str, **fields: Any) -> TaskSpec:
    """A shell task with a fresh attempt id."""
    return TaskSpec(id=f"t{next(_ids)}", kind=KIND_SHELL, shell=command, **fields)


class ConsoleProbe:
    """A test's console: a real AgentLink plus waiting helpers with deadlines."""

    def __init__(self, link: AgentLink) -> None:
        self.link = link
        self.seen: list[Message] = []

    @property
    def hello(self) -> Any:
        return self.link.hello

    def send(self, *messages: Message) -> None:
        self.link.send_many(list(messages))

    def run(self, *tasks: TaskSpec) -> list[str]:
        self.link.send(Run(tasks=list(tasks)))
        return [task.id for task in tasks]

    async def next(
        self, mtype: type[M], where: Callable[[M], bool] = lambda _: True, timeout: float = 10.0
    ) -> M:
        """The next message of ``mtype`` that satisfies ``where``."""

        async def scan() -> M:
            while True:
                message = await self.link.recv()
                self.seen.append(message)
                if isinstance(message, mtype) and where(message):
                    return message

        return await asyncio.wait_for(scan(), timeout)

    async def results(self, ids: list[str], *, ack: bool = True, timeout: float = 15.0) -> dict[str, TaskResult]:
        """Wait for the results of ``ids`` (acknowledging them unless told not to)."""
        wanted = set(ids)
        found: dict[str, TaskResult] = {}
        while wanted - found.keys():
            finished = await self.next(Finished, lambda m: any(r.id in wanted for r in m.results), timeout)
            for result in finished.results:
                if result.id in wanted:
                    found[result.id] = result
            if ack:
                self.link.send(Ack(ids=[r.id for r in finished.results]))
        return found

    async def closed(self, timeout: float = 10.0) -> list[Message]:
        """Read until the agent ends the channel; returns what came meanwhile."""
        messages: list[Message] = []

        async def drain() -> None:
            async for message in self.link:
                messages.append(message)

        await asyncio.wait_for(drain(), timeout)
        return messages

    async def close(self) -> None:
        self.link.close()
        await asyncio.wait_for(self.link.wait_closed(), 10)


@dataclass
class RunningAgent:
    agent: Agent
    client_key: asyncssh.SSHKey
    consoles: list[ConsoleProbe] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.agent.port

    @property
    def host_key(self) -> asyncssh.SSHKey:
        return self.agent.host_key

    async def link(self, console_id: str = "console-1", **options: Any) -> AgentLink:
        options.setdefault("client_key", self.client_key)
        options.setdefault("pinned_host_key", self.host_key)
        return await open_link("127.0.0.1", self.port, console_id=console_id, connect_timeout=10, **options)

    async def console(self, console_id: str = "console-1", **options: Any) -> ConsoleProbe:
        probe = ConsoleProbe(await self.link(console_id, **options))
        self.consoles.append(probe)
        return probe

    async def stop(self) -> None:
        for probe in self.consoles:
            probe.link.close()
        await self.agent.stop()


@pytest.fixture
def client_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


@pytest.fixture
def authorized_keys(tmp_path: Path, client_key: asyncssh.SSHKey) -> Path:
    path = tmp_path / "authorized_keys"
    path.write_bytes(client_key.export_public_key())
    return path


@pytest.fixture
async def start_agent(
    tmp_path: Path, client_key: asyncssh.SSHKey, authorized_keys: Path
) -> AsyncIterator[Callable[..., Awaitable[RunningAgent]]]:
    """``await start_agent(slots=2, **AgentConfig fields)`` -> a running agent."""
    running: list[RunningAgent] = []

    async def start(*, name: str = "agent", **fields: Any) -> RunningAgent:
        config = AgentConfig(
            authorized_keys=authorized_keys,
            state_dir=tmp_path / name,
            listen_host="127.0.0.1",
            listen_port=0,
            slots=2,
            advertise=False,
            grace=1.0,
        )
        agent = Agent(replace(config, **fields))
        await agent.start()
        handle = RunningAgent(agent, client_key)
        running.append(handle)
        return handle

    yield start
    for handle in running:
        await asyncio.wait_for(handle.stop(), 15)


@pytest.fixture
async def agent(start_agent: Callable[..., Awaitable[RunningAgent]]) -> RunningAgent:
    return await start_agent()


@dataclass
class AgentProcess:
    proc: asyncio.subprocess.Process
    port: int

    async def stop(self, timeout: float = 15.0) -> int:
        if self.proc.returncode is None:
            self.proc.terminate()
        return await asyncio.wait_for(self.proc.wait(), timeout)


@pytest.fixture
async def agent_process(
    tmp_path: Path, authorized_keys: Path
) -> AsyncIterator[Callable[..., Awaitable[AgentProcess]]]:
    """``await agent_process(*extra_flags)``: ``shoal agent`` as a subprocess."""
    started: list[AgentProcess] = []

    async def launch(*extra: str, state_dir: Path | None = None) -> AgentProcess:
        argv = [
            sys.executable,
            "-c",
            "import sys; from nodeagent.server import main; sys.exit(main(sys.argv[1:]))",
            "--listen", "127.0.0.1:0",
            "--authorized-keys", str(authorized_keys),
            "--state-dir", str(state_dir or tmp_path / "agent-process"),
            "--no-advertise",
            "--grace", "1",
            *extra,
        ]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
        except TimeoutError:
            proc.kill()
            raise
        if not line.startswith(b"shoal agent listening on "):
            await proc.wait()
            stderr = await proc.stderr.read() if proc.stderr else b""
            raise RuntimeError(f"agent did not start: {line!r} {stderr.decode(errors='replace')}")
        handle = AgentProcess(proc, int(line.rsplit(b":", 1)[1]))
        started.append(handle)
        return handle

    yield launch
    for handle in started:
        if handle.proc.returncode is None:
            handle.proc.kill()
        # Read its pipes to their end, so that its transport closes now and
        # not when it is collected after the loop has closed (a warning).
        await asyncio.wait_for(handle.proc.communicate(), 10)
