"""Fixtures for the console tests: a REAL engine (real SQLite in tmp_path)
driving REAL agents (asyncssh servers on 127.0.0.1, real worker processes),
all in the test's event loop, and the app built over it with ``build_app``
exactly as ``shoal console`` builds it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from console.app import ShoalApp, build_app
from engine.api import Engine
from engine.spec import JobSpec, parse_job_text
from engine.trust import load_or_create_console_key, public_key_line
from tests.integration.conftest import RunningAgent, client_key, start_agent  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[2]
TEST_HZ = 20.0  # the console's redraw rate in tests: fast, still a timer


@pytest.fixture
def console_config(tmp_path: Path) -> Path:
    """The engine's config dir, holding its console key."""
    path = tmp_path / "console-config"
    load_or_create_console_key(path)
    return path


@pytest.fixture
def authorized_keys(tmp_path: Path, console_config: Path) -> Path:
    """Overrides the integration fixture: agents trust the engine's key."""
    path = tmp_path / "authorized_keys"
    path.write_text(public_key_line(load_or_create_console_key(console_config)) + "\n")
    return path


@pytest.fixture
async def agents(start_agent: Callable[..., Awaitable[RunningAgent]]) -> list[RunningAgent]:  # noqa: F811
    return [await start_agent(name="a1", slots=2), await start_agent(name="a2", slots=2)]


@pytest.fixture
async def engine(tmp_path: Path, console_config: Path, agents: list[RunningAgent]) -> AsyncIterator[Engine]:
    engine = await Engine.open(
        tmp_path / "state", console_config, nodes=[f"127.0.0.1:{a.port}" for a in agents], trust_new=True
    )
    try:
        await engine.wait_for_nodes(len(agents), timeout=20)
        yield engine
    finally:
        await engine.close()


def job(text: str) -> JobSpec:
    return parse_job_text(text, source="test.toml", base_dir=REPO)


def app_for(api: Any, tmp_path: Path, **options: Any) -> ShoalApp:
    return build_app(api, config_dir=tmp_path / "console-settings", refresh_hz=TEST_HZ, **options)


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition()`` (outside an app) until truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {value!r}")
        time.sleep(0.05)


async def until(pilot: Any, condition: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    """Let the app run until ``condition()`` is truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await pilot.pause(0.02)


async def until_async(pilot: Any, condition: Callable[[], Awaitable[Any]], timeout: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await pilot.pause(0.02)
