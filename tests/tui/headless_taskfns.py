"""Task functions for the headless-mode tests, imported inside the agents'
worker processes: an exact mix of first-try successes, retried successes and
failures, with enough run time to watch the progress display."""

from __future__ import annotations

import os
import time


def mixed(item: int) -> int:
    """item % 5 == 0 fails every attempt; item % 5 == 1 fails its first
    attempt only; the rest succeed at once. Each attempt sleeps 0.15 s."""
    time.sleep(0.15)
    attempt = int(os.environ.get("SHOAL_ATTEMPT", "0.0.1").rsplit(".", 1)[-1])
    if item % 5 == 0 or (item % 5 == 1 and attempt == 1):
        raise RuntimeError(f"item {item}: attempt {attempt} fails on purpose")
    return item
