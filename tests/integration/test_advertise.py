"""The agent's zeroconf advertisement, seen by a real browser on loopback only."""

from __future__ import annotations

import asyncio

import pytest
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from nodeagent.advertise import addresses_to_advertise, service_name
from nodeagent.protocol import MDNS_SERVICE_TYPE, PROTOCOL_VERSION

# Advertises and browses mDNS: one at a time with the other such tests (pyproject).
pytestmark = [pytest.mark.timeout(30), pytest.mark.xdist_group("mdns")]

LOOPBACK = "127.0.0.1"


@pytest.fixture
async def browser_zeroconf():
    zc = AsyncZeroconf(interfaces=[LOOPBACK], ip_version=IPVersion.V4Only)
    yield zc
    await zc.async_close()


class Watcher:
    """A real service browser that records what happens to one service name."""

    def __init__(self, zc: Zeroconf, name: str) -> None:
        self._name = name
        self._changes: asyncio.Queue[ServiceStateChange] = asyncio.Queue()
        self._browser = AsyncServiceBrowser(zc, MDNS_SERVICE_TYPE, handlers=[self._on_change])

    def _on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if name == self._name:
            self._changes.put_nowait(state_change)

    async def wait_for(self, state: ServiceStateChange, timeout: float = 10.0) -> None:
        async def scan() -> None:
            while await self._changes.get() is not state:
                pass

        await asyncio.wait_for(scan(), timeout)

    async def close(self) -> None:
        await self._browser.async_cancel()


async def test_agent_is_advertised_on_loopback_with_its_txt_record(start_agent, browser_zeroconf):
    agent = await start_agent(advertise=True, mdns_interfaces=[LOOPBACK], slots=3, labels={"gpu": "a100", "zone": "b"})
    name = service_name(agent.agent.agent_id)
    watcher = Watcher(browser_zeroconf.zeroconf, name)
    await watcher.wait_for(ServiceStateChange.Added)
    await watcher.close()

    info = AsyncServiceInfo(MDNS_SERVICE_TYPE, name)
    assert await info.async_request(browser_zeroconf.zeroconf, 3000)
    assert info.port == agent.port
    assert info.parsed_addresses() == [LOOPBACK]
    txt = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
    assert txt == {
        "v": str(PROTOCOL_VERSION),
        "id": agent.agent.agent_id,
        "host": txt["host"],
        "slots": "3",
        "labels": "gpu=a100,zone=b",
        "fp": agent.host_key.get_fingerprint("sha256"),
    }
    assert txt["host"]


async def test_stopped_agent_no_longer_answers(start_agent, browser_zeroconf):
    agent = await start_agent(advertise=True, mdns_interfaces=[LOOPBACK])
    name = service_name(agent.agent.agent_id)
    watcher = Watcher(browser_zeroconf.zeroconf, name)
    await watcher.wait_for(ServiceStateChange.Added)
    await watcher.close()
    await agent.stop()
    # A fresh cache, so only a live answer could satisfy the query.
    fresh = AsyncZeroconf(interfaces=[LOOPBACK], ip_version=IPVersion.V4Only)
    try:
        assert not await AsyncServiceInfo(MDNS_SERVICE_TYPE, name).async_request(fresh.zeroconf, 1000)
    finally:
        await fresh.async_close()


def test_advertised_addresses_follow_the_listen_address():
    assert addresses_to_advertise("10.1.2.3", ["127.0.0.1"]) == ["10.1.2.3"]
    assert addresses_to_advertise("0.0.0.0", ["127.0.0.1"]) == ["127.0.0.1"]
    assert LOOPBACK not in addresses_to_advertise("0.0.0.0", None)
