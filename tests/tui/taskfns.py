"""Task functions for the console tests, imported inside the agents' worker
processes."""

from __future__ import annotations

import sys
import time


def square_odd_fails(n: int) -> int:
    """n*n for even n; odd n fail, with a line on stderr first."""
    if n % 2:
        print(f"about to fail on {n}", file=sys.stderr)
        raise ValueError(f"odd item {n}")
    print(f"square of {n}")
    return n * n


def square(n: int) -> int:
    return n * n


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def slow_square(n: int) -> int:
    """n*n after 40 ms: a job that lasts long enough to attach to."""
    time.sleep(0.04)
    return n * n


def pause(item: int, seconds: float = 0.02) -> int:
    """Sleeps ``seconds`` whatever the item: a long job of many short tasks."""
    time.sleep(seconds)
    return item
