"""Finding agents: zeroconf browsing on chosen interfaces, and static addresses.

What mDNS says is a hint, never trust: anyone on the segment can answer. A
discovered node is only an address to dial; the SSH host key it presents is
checked against the pinned one (``engine.trust``) before anything is sent.
The ``fp`` TXT key is carried as ``fingerprint_hint`` so an operator can
compare it when trusting a node for the first time, nothing more.

Zeroconf binds only to the interfaces the caller names; there is no
"all interfaces" default, so a console never announces queries on a network
it was not pointed at.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from zeroconf import ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from nodeagent.protocol import MDNS_SERVICE_TYPE

log = logging.getLogger("shoal.discovery")

RESOLVE_TIMEOUT_MS = 3000  # an answer slower than this on a LAN is not worth waiting for
STOP_TIMEOUT = 3.0

EventKind = Literal["added", "updated", "removed"]


@dataclass(frozen=True, slots=True)
class DiscoveredNode:
    name: str  # the mDNS service instance name
    agent_id: str
    hostname: str
    addresses: list[str]
    port: int
    slots: int
    labels: dict[str, str]
    fingerprint_hint: str  # the advertised host-key fingerprint: a hint, not trust
    version: int  # the advertised protocol version; hello negotiates the real one


@dataclass(frozen=True, slots=True)
class DiscoveryEvent:
    kind: EventKind
    node: DiscoveredNode


class MalformedRecord(ValueError):
    """A TXT record that does not follow nodeagent/protocol/'s layout."""


def node_from_record(
    name: str, properties: Mapping[bytes, bytes | None], addresses: list[str], port: int | None
) -> DiscoveredNode:
    """A resolved service record as a node, or ``MalformedRecord``."""
    try:
        txt = {k.decode(): (v or b"").decode() for k, v in properties.items()}
    except UnicodeDecodeError:
        raise MalformedRecord("TXT record is not UTF-8") from None
    agent_id = txt.get("id", "")
    if not agent_id:
        raise MalformedRecord("TXT key 'id' is missing")
    if port is None or not 0 < port < 65536:
        raise MalformedRecord(f"bad port {port!r}")
    slots = _txt_int(txt, "slots")
    if slots < 1:
        raise MalformedRecord(f"TXT key 'slots' must be at least 1, not {slots}")
    return DiscoveredNode(
        name=name,
        agent_id=agent_id,
        hostname=txt.get("host", ""),
        addresses=list(addresses),
        port=port,
        slots=slots,
        labels=_parse_labels(txt.get("labels", "")),
        fingerprint_hint=txt.get("fp", ""),
        version=_txt_int(txt, "v"),
    )


def _txt_int(txt: dict[str, str], key: str) -> int:
    value = txt.get(key)
    if value is None:
        raise MalformedRecord(f"TXT key {key!r} is missing")
    if not value.isdigit():
        raise MalformedRecord(f"TXT key {key!r} is not a number: {value!r}")
    return int(value)


def _parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MalformedRecord(f"TXT key 'labels' has a bad item {item!r} (want k=v)")
        labels[key] = value
    return labels


class Discovery:
    """Browses ``_shoal._tcp.local.`` on ``interfaces`` (IP addresses).

    Events go to ``callback`` when one is given (called in the event loop; it
    must not block), else to an unbounded queue read with ``async for``
    (mDNS traffic is a handful of records a minute, so it cannot grow far).
    ``updated`` is sent only when a node's record really changed.
    """

    def __init__(
        self, interfaces: list[str], callback: Callable[[DiscoveryEvent], None] | None = None
    ) -> None:
        if not interfaces:
            raise ValueError("discovery needs at least one interface address (e.g. 127.0.0.1)")
        for address in interfaces:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(f"not an interface IP address: {address!r}") from None
        self.interfaces = list(interfaces)
        self._callback = callback
        self._queue: asyncio.Queue[DiscoveryEvent | None] = asyncio.Queue()
        self._zeroconf: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._nodes: dict[str, DiscoveredNode] = {}
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._stopped = False

    @property
    def nodes(self) -> list[DiscoveredNode]:
        """The nodes currently known."""
        return list(self._nodes.values())

    async def start(self) -> None:
        self._zeroconf = AsyncZeroconf(interfaces=self.interfaces)
        self._browser = AsyncServiceBrowser(self._zeroconf.zeroconf, MDNS_SERVICE_TYPE, handlers=[self._on_change])
        log.info("browsing %s on %s", MDNS_SERVICE_TYPE, ", ".join(self.interfaces))

    async def stop(self) -> None:
        """Stop browsing and end the event stream; bounded by ``STOP_TIMEOUT``."""
        if self._stopped:
            return
        self._stopped = True
        tasks = list(self._resolving.values())
        for task in tasks:
            task.cancel()
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await asyncio.gather(*tasks, return_exceptions=True)
                if self._browser is not None:
                    await self._browser.async_cancel()
                if self._zeroconf is not None:
                    await self._zeroconf.async_close()
        except TimeoutError:
            log.warning("zeroconf did not close within %.0fs", STOP_TIMEOUT)
        self._queue.put_nowait(None)

    def __aiter__(self) -> Discovery:
        return self

    async def __anext__(self) -> DiscoveryEvent:
        event = await self._queue.get()
        if event is None:
            self._queue.put_nowait(None)  # later readers end too
            raise StopAsyncIteration
        return event

    # zeroconf calls handlers by keyword, so the parameter names are fixed.
    def _on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if self._stopped:
            return
        previous = self._resolving.pop(name, None)
        if previous is not None:
            previous.cancel()  # a newer change supersedes it; a late answer must not win
        if state_change is ServiceStateChange.Removed:
            node = self._nodes.pop(name, None)
            if node is not None:
                self._emit(DiscoveryEvent("removed", node))
            return
        task = asyncio.get_running_loop().create_task(self._resolve(zeroconf, name))
        self._resolving[name] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._resolving.get(name) is done:
                del self._resolving[name]
            if not done.cancelled() and done.exception() is not None:
                log.warning("could not resolve %s: %s", name, done.exception())

        task.add_done_callback(forget)

    async def _resolve(self, zeroconf: Zeroconf, name: str) -> None:
        info = AsyncServiceInfo(MDNS_SERVICE_TYPE, name)
        if not await info.async_request(zeroconf, RESOLVE_TIMEOUT_MS):
            log.debug("no complete answer for %s", name)
            return
        try:
            node = node_from_record(name, info.properties, info.parsed_scoped_addresses(), info.port)
        except MalformedRecord as exc:
            log.warning("ignoring the mDNS record of %s: %s", name, exc)
            return
        old = self._nodes.get(name)
        if old == node:
            return
        self._nodes[name] = node
        self._emit(DiscoveryEvent("added" if old is None else "updated", node))

    def _emit(self, event: DiscoveryEvent) -> None:
        if self._callback is None:
            self._queue.put_nowait(event)
            return
        try:
            self._callback(event)
        except Exception:
            # A consumer's bug must not stop discovery of the other nodes.
            log.exception("discovery callback failed on %s", event.node.name)


# --- static nodes --------------------------------------------------------------------

_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?")


def parse_node_address(text: str) -> tuple[str, int]:
    """``host:port`` or ``[ipv6]:port`` to ``(host, port)``; ValueError says what is wrong."""
    address = text.strip()
    bracketed = re.fullmatch(r"\[([^\]]*)\]:(.*)", address)
    if bracketed:
        host, port_text = bracketed.groups()
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} in brackets is not an IPv6 address") from None
    else:
        host, sep, port_text = address.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text!r}: expected HOST:PORT, e.g. 10.0.0.5:7447")
        if ":" in host:
            raise ValueError(f"{text!r}: put an IPv6 address in brackets, e.g. [::1]:7447")
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(f"{text!r}: {host!r} is not a host name or address")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)
