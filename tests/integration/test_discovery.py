"""Discovery with real zeroconf, on 127.0.0.1 only.

Other tests (and other test runs on this machine) may share the multicast
group, so each test advertises under a fresh uuid name and looks only at
events for the names it made.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from engine.discovery import (
    Discovery,
    DiscoveryEvent,
    MalformedRecord,
    node_from_record,
    parse_node_address,
)
from nodeagent.protocol import MDNS_SERVICE_TYPE, PROTOCOL_VERSION

# Advertises and browses mDNS: one at a time with the other such tests (pyproject).
pytestmark = [pytest.mark.timeout(30), pytest.mark.xdist_group("mdns")]

LOOPBACK = "127.0.0.1"
WAIT = 10.0


def txt(**overrides: str) -> dict[str, str]:
    record = {"v": str(PROTOCOL_VERSION), "id": "a1", "host": "box", "slots": "4", "labels": "gpu=a100,zone=b", "fp": "SHA256:abc"}
    record.update(overrides)
    return record


def service(properties: dict[str, str], port: int = 7447, instance: str = "") -> AsyncServiceInfo:
    instance = instance or f"test-{uuid.uuid4().hex[:12]}"
    return AsyncServiceInfo(
        MDNS_SERVICE_TYPE,
        f"{instance}.{MDNS_SERVICE_TYPE}",
        port=port,
        properties=properties,
        server=f"{instance}.local.",
        parsed_addresses=[LOOPBACK],
    )


@pytest.fixture
async def advertiser() -> AsyncIterator[AsyncZeroconf]:
    zc = AsyncZeroconf(interfaces=[LOOPBACK])
    yield zc
    await asyncio.wait_for(zc.async_close(), 5)


@pytest.fixture
async def discovery() -> AsyncIterator[Discovery]:
    found = Discovery(interfaces=[LOOPBACK])
    await found.start()
    yield found
    await found.stop()


async def next_event(discovery: Discovery, where: Callable[[DiscoveryEvent], bool]) -> DiscoveryEvent:
    async def scan() -> DiscoveryEvent:
        async for event in discovery:
            if where(event):
                return event
        raise AssertionError("discovery stopped")

    return await asyncio.wait_for(scan(), WAIT)


async def test_agent_is_found_updated_and_removed(advertiser: AsyncZeroconf, discovery: Discovery) -> None:
    info = service(txt(), port=7447)
    await advertiser.async_register_service(info)

    added = await next_event(discovery, lambda e: e.node.name == info.name)
    assert added.kind == "added"
    node = added.node
    assert (node.agent_id, node.hostname, node.port, node.slots) == ("a1", "box", 7447, 4)
    assert node.addresses == [LOOPBACK]
    assert node.labels == {"gpu": "a100", "zone": "b"}
    assert node.fingerprint_hint == "SHA256:abc"
    assert node.version == PROTOCOL_VERSION

    instance = info.name.removesuffix("." + MDNS_SERVICE_TYPE)
    info = service(txt(slots="8"), port=7447, instance=instance)
    await advertiser.async_update_service(info)
    updated = await next_event(discovery, lambda e: e.node.name == info.name)
    assert (updated.kind, updated.node.slots) == ("updated", 8)

    await advertiser.async_unregister_service(info)
    removed = await next_event(discovery, lambda e: e.node.name == info.name)
    assert (removed.kind, removed.node.agent_id) == ("removed", "a1")
    assert info.name not in {n.name for n in discovery.nodes}


async def test_real_agent_advertisement_is_understood(start_agent: Callable[..., Any], discovery: Discovery) -> None:
    agent = await start_agent(advertise=True, mdns_interfaces=[LOOPBACK], slots=3, labels={"zone": "b"})
    found = await next_event(discovery, lambda e: e.node.agent_id == agent.agent.agent_id)
    node = found.node
    assert (found.kind, node.port, node.slots, node.labels) == ("added", agent.port, 3, {"zone": "b"})
    assert node.addresses == [LOOPBACK]
    assert node.fingerprint_hint == agent.host_key.get_fingerprint("sha256")


async def test_malformed_record_is_ignored_with_a_warning(
    advertiser: AsyncZeroconf, discovery: Discovery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="shoal.discovery")
    bad = service(txt(slots="many"))
    good = service(txt(id="a2"))
    await asyncio.gather(advertiser.async_register_service(bad), advertiser.async_register_service(good))

    seen = await next_event(discovery, lambda e: e.node.name in (bad.name, good.name))
    assert seen.node.name == good.name

    async def warned() -> None:
        while bad.name not in caplog.text:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(warned(), WAIT)
    assert "'slots' is not a number" in caplog.text
    assert bad.name not in {n.name for n in discovery.nodes}


async def test_callback_gets_events_and_stop_is_bounded(advertiser: AsyncZeroconf) -> None:
    info = service(txt(id="a3"))
    got: asyncio.Queue[DiscoveryEvent] = asyncio.Queue()

    def on_event(event: DiscoveryEvent) -> None:
        if event.node.name == info.name:
            got.put_nowait(event)

    found = Discovery(interfaces=[LOOPBACK], callback=on_event)
    await found.start()
    try:
        await advertiser.async_register_service(info)
        event = await asyncio.wait_for(got.get(), WAIT)
        assert (event.kind, event.node.agent_id) == ("added", "a3")
    finally:
        await asyncio.wait_for(found.stop(), 5)
    await found.stop()  # a second stop is harmless


async def test_iteration_ends_after_stop() -> None:
    found = Discovery(interfaces=[LOOPBACK])
    await found.start()
    await asyncio.wait_for(found.stop(), 5)
    assert [event async for event in found] == []


def test_interfaces_must_be_named_explicitly() -> None:
    with pytest.raises(ValueError, match="at least one interface"):
        Discovery(interfaces=[])
    with pytest.raises(ValueError, match="not an interface IP address"):
        Discovery(interfaces=["eth0"])


@pytest.mark.parametrize(
    ("properties", "problem"),
    [
        ({"v": "1", "slots": "2"}, "'id' is missing"),
        (txt(slots="0"), "at least 1"),
        (txt(v="one"), "'v' is not a number"),
        (txt(labels="gpu"), "want k=v"),
        ({b"id": b"\xff", b"v": b"1", b"slots": b"1"}, "not UTF-8"),
    ],
)
def test_malformed_records_are_rejected(properties: dict, problem: str) -> None:
    raw = {(k.encode() if isinstance(k, str) else k): (v.encode() if isinstance(v, str) else v) for k, v in properties.items()}
    with pytest.raises(MalformedRecord, match=problem):
        node_from_record("x", raw, [LOOPBACK], 7447)


def test_optional_txt_keys_have_defaults() -> None:
    node = node_from_record("x", {b"v": b"1", b"id": b"a", b"slots": b"2", b"labels": None}, [], 7447)
    assert (node.hostname, node.labels, node.fingerprint_hint) == ("", {}, "")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.5:7447", ("10.0.0.5", 7447)),
        (" node-1.lan:22 ", ("node-1.lan", 22)),
        ("[::1]:7447", ("::1", 7447)),
        ("[fe80::1%eth0]:7447", ("fe80::1%eth0", 7447)),
    ],
)
def test_parse_node_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_node_address(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("node1", "expected HOST:PORT"),
        (":7447", "expected HOST:PORT"),
        ("::1:7447", "in brackets"),
        ("[node1]:7447", "not an IPv6 address"),
        ("node1:http", "port must be a number"),
        ("node1:70000", "port must be a number"),
        ("node1:0", "port must be a number"),
        ("no de:7447", "not a host name"),
    ],
)
def test_parse_node_address_rejects_bad_input(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_node_address(text)
