"""Zeroconf names of the wire contract."""

# Zeroconf advertisement. TXT keys: v (protocol version), id (agent id),
# host (hostname), slots, labels ("k=v,k=v"), fp (host key SHA256
# fingerprint, a hint only: trust comes from the pinned key, never from mDNS).
MDNS_SERVICE_TYPE = "_shoal._tcp.local."
