"""How numbers, states and results read in a cell: one place, so every
screen says "3m12s" and "lost" the same way."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

STATUS_TONES = {
    "succeeded": "good",
    "running": "accent",
    "failed": "bad",
    "cancelled": "muted",
    "queued": "",
    "pending": "muted",
    "blocked": "bad",
}

NODE_TONES = {
    "up": "good",
    "connecting": "muted",
    "draining": "warn",
    "drained": "warn",
    "lost": "bad",
    "untrusted": "bad",
    "refused": "bad",
}

SPARKS = "▁▂▃▄▅▆▇█"


def status_tone(status: str) -> str:
    return STATUS_TONES.get(status, "")


def node_tone(state: str) -> str:
    return NODE_TONES.get(state, "")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def rate(per_second: float) -> str:
    if per_second <= 0:
        return "-"
    if per_second >= 100:
        return f"{per_second:,.0f}/s"
    return f"{per_second:.1f}/s"


def bar(fraction: float, width: int) -> tuple[str, str]:
    """A progress bar as (filled, empty) text, each drawn in its own tone."""
    fraction = min(1.0, max(0.0, fraction))
    filled = round(fraction * width)
    return "█" * filled, "░" * (width - filled)


def sparkline(values: Iterable[float], width: int, top: float = 100.0) -> str:
    points = list(values)[-width:]
    if not points:
        return ""
    last = len(SPARKS) - 1
    line = "".join(SPARKS[min(last, max(0, round(v / top * last)))] for v in points)
    return line.rjust(width)


def short(value: Any, width: int = 60) -> str:
    """A result on one line, cut to ``width`` cells."""
    if value is None:
        return "-"
    try:
        text = json.dumps(value, default=repr, ensure_ascii=False, separators=(", ", ": "))
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def pretty(value: Any) -> str:
    """A result as indented JSON (repr for what JSON cannot hold)."""
    try:
        return json.dumps(value, default=repr, ensure_ascii=False, indent=2)
    except (TypeError, ValueError):
        return repr(value)
