"""Task functions and a reducer for the demo jobs in ``demos/jobs/``.

Tasks run in worker processes on the nodes, so they take and return plain
msgpack values (numbers, strings, lists, dicts). The reducer runs in the engine.
"""

from __future__ import annotations

import os
from typing import Any


def collatz_steps(n: int) -> list[int]:
    """[n, the number of Collatz steps from n down to 1]."""
    steps, value = 0, n
    while value != 1:
        value = value // 2 if value % 2 == 0 else 3 * value + 1
        steps += 1
    return [n, steps]


class LongestChain:
    """A streaming reducer (engine.reducers): keeps only the best [n, steps]
    so far, so memory stays constant however many tasks the job has."""

    def __init__(self) -> None:
        self.best: list[int] | None = None

    def add(self, index: int, value: Any) -> None:
        n, steps = value
        # Ties go to the smaller n, so the result does not depend on finish order.
        if self.best is None or (steps, -n) > (self.best[1], -self.best[0]):
            self.best = [n, steps]

    def result(self) -> dict[str, int] | None:
        return None if self.best is None else {"n": self.best[0], "steps": self.best[1]}


def flaky(item: int, failing_attempts: int = 2) -> int:
    """Fails the first one or two attempts of each item (odd items twice), to
    show retries and backoff: deterministic, so the demo's answer and exit
    code never vary. The attempt number is the last part of SHOAL_ATTEMPT
    (``JOB.TASK.ATTEMPT``), which the agent sets for every task."""
    attempt = int(os.environ.get("SHOAL_ATTEMPT", "0.0.1").rsplit(".", 1)[-1])
    failures = 1 + item % failing_attempts if failing_attempts else 0
    if attempt <= failures:
        raise RuntimeError(f"item {item}: simulated failure of attempt {attempt} (of the first {failures})")
    return item
