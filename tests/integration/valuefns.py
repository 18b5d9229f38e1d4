"""Call-task functions for tests/integration/test_values.py (imported by the agent's workers)."""

from __future__ import annotations


def blob(size: int) -> bytes:
    return b"x" * size


def numbers(count: int) -> list[int]:
    return list(range(count))
