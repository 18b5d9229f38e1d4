"""Announces the agent on the LAN with zeroconf (mDNS/DNS-SD).

The advertisement is a hint for discovery only: a console trusts an agent by
its pinned host key, never by what mDNS says. Zeroconf is bound to exactly the
interfaces the operator names, so an agent on a multi-homed machine does not
announce itself on networks it was not meant for.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any

import psutil
from zeroconf import InterfaceChoice, IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from nodeagent.protocol import MDNS_SERVICE_TYPE, PROTOCOL_VERSION

log = logging.getLogger("shoal.agent")


@dataclass(frozen=True, slots=True)
class Advertisement:
    agent_id: str
    hostname: str
    port: int
    slots: int
    labels: dict[str, str]
    fingerprint: str  # "SHA256:..." of the host key
    addresses: list[str]  # the IPs a console should dial

    def txt(self) -> dict[str, str]:
        """The TXT record; keys are documented in nodeagent/protocol/."""
        return {
            "v": str(PROTOCOL_VERSION),
            "id": self.agent_id,
            "host": self.hostname,
            "slots": str(self.slots),
            "labels": ",".join(f"{k}={v}" for k, v in sorted(self.labels.items())),
            "fp": self.fingerprint,
        }


def service_name(agent_id: str) -> str:
    return f"{agent_id}.{MDNS_SERVICE_TYPE}"


def _ip_version(interfaces: list[str] | None) -> IPVersion:
    if interfaces is None:
        return IPVersion.All
    versions = {ipaddress.ip_address(ip).version for ip in interfaces}
    if versions == {4}:
        return IPVersion.V4Only
    if versions == {6}:
        return IPVersion.V6Only
    return IPVersion.All


class Advertiser:
    """Registers one service record; ``interfaces=None`` means all interfaces."""

    def __init__(self, advertisement: Advertisement, interfaces: list[str] | None) -> None:
        self._ad = advertisement
        self._interfaces = interfaces
        self._zeroconf: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None
        self._announcing: asyncio.Future[Any] | None = None

    async def start(self) -> None:
        ad = self._ad
        choice: list[str] | InterfaceChoice = (
            InterfaceChoice.All if self._interfaces is None else list(self._interfaces)
        )
        self._zeroconf = AsyncZeroconf(interfaces=choice, ip_version=_ip_version(self._interfaces))
        self._info = AsyncServiceInfo(
            MDNS_SERVICE_TYPE,
            service_name(ad.agent_id),
            port=ad.port,
            properties=ad.txt(),
            server=f"{ad.agent_id}.local.",
            parsed_addresses=ad.addresses,
        )
        # The agent id is unique and stable, so a name clash means a stale
        # record of this same agent; allow_name_change would only hide that.
        # The call returns the task that keeps announcing for a second or two.
        self._announcing = asyncio.ensure_future(await self._zeroconf.async_register_service(self._info))
        log.info("advertising %s on %s", service_name(ad.agent_id), self._interfaces or "all interfaces")

    async def stop(self) -> None:
        if self._zeroconf is None:
            return
        if self._announcing is not None:
            # An announcement sent after the goodbye would revive the record
            # in every console's cache, for its whole TTL.
            self._announcing.cancel()
            await asyncio.gather(self._announcing, return_exceptions=True)
        if self._info is not None:
            # The call returns the task that sends the goodbye; closing before
            # it is done would cancel it, and consoles would keep a stale record.
            await (await self._zeroconf.async_unregister_service(self._info))
        await self._zeroconf.async_close()
        self._zeroconf = None


def addresses_to_advertise(listen_host: str, interfaces: list[str] | None) -> list[str]:
    """The addresses a console should dial for an agent bound to ``listen_host``."""
    if listen_host not in ("0.0.0.0", "::", ""):
        return [listen_host]
    if interfaces is not None:
        return list(interfaces)
    # Bound to every address and advertised everywhere: name this host's
    # addresses, except loopback (useless to another machine) and IPv6
    # link-local (needs a scope id a TXT-less A/AAAA record cannot carry).
    found: list[str] = []
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = ipaddress.ip_address(addr.address.split("%")[0])
            if not ip.is_loopback and not ip.is_link_local and str(ip) not in found:
                found.append(str(ip))
    return found
