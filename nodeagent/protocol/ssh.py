"""The SSH side of the wire contract: the subsystem name, the algorithms both
ends offer (see PROTOCOL.md), and one asyncssh adjustment."""

from __future__ import annotations

from typing import Any

SUBSYSTEM = "shoal"

# SSH algorithms, offered by both sides (see PROTOCOL.md). Post-quantum hybrid
# key exchange only; plain X25519 only when asked for, for older peers.
# Nothing with SHA-1, NIST curves, CBC or finite-field DH. AES-GCM first: with
# AES-NI it costs less per packet than chacha20-poly1305 in asyncssh.
SSH_KEX_ALGS = ["mlkem768x25519-sha256"]
SSH_COMPAT_KEX_ALGS = ["curve25519-sha256"]
SSH_HOST_KEY_ALGS = ["ssh-ed25519"]
SSH_CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"]
SSH_MACS = ["hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com"]

_SSH_MSG_IGNORE = 2
_SSH_EMPTY_STRING = b"\0\0\0\0"


def skip_cbc_countermeasure(conn: Any) -> None:
    """Stop an asyncssh connection from sending an empty SSH_MSG_IGNORE
    ahead of every packet once encryption is on.

    That is a countermeasure for CBC modes (a predictable IV lets an attacker
    test guesses), which SSH_CIPHERS exclude: with AEAD ciphers it only
    doubles the packets, the encryptions and the socket writes of every frame
    on both ends. Call it from ``connection_made``, before key exchange.
    """
    send_packet = conn.send_packet

    def send_without_padding_ignore(pkttype: int, *args: bytes, **kwargs: Any) -> None:
        if pkttype == _SSH_MSG_IGNORE and args == (_SSH_EMPTY_STRING,):
            return
        send_packet(pkttype, *args, **kwargs)

    conn.send_packet = send_without_padding_ignore
