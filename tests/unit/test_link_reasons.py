"""Why a connection failed, in an operator's words: never empty."""

from __future__ import annotations

import socket

import asyncssh
import pytest

from engine.link import connect_reason


@pytest.mark.parametrize(
    "exc,words",
    [
        (socket.gaierror(-2, "Name or service not known"), "cannot resolve the host name 'gpu-box'"),
        (ConnectionRefusedError(111, "Connect call failed"), "connection refused"),
        (TimeoutError(), "no answer within 10 s"),
        (asyncssh.ConnectionLost(""), "not an SSH server"),
        (OSError(113, "No route to host"), "no route to host"),
        (OSError(), "OSError"),
    ],
)
def test_every_connect_failure_has_a_reason(exc, words):
    reason = connect_reason(exc, "gpu-box", None, 10)
    assert words in reason and reason.strip()
