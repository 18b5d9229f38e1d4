"""The line at the top of every screen: where we are, what the engine is,
and the cluster at a glance."""

from __future__ import annotations

from textual.markup import escape
from textual.widgets import Static

from engine.views import JobInfo, NodeInfo


def summary(screen_title: str, attached: bool, path: str, nodes: list[NodeInfo], jobs: list[JobInfo]) -> str:
    """Content markup: colours are theme variables, never names. The state
    dir's path goes last, the first thing cut on a narrow terminal."""
    up = sum(1 for n in nodes if n.state == "up")
    bad = sum(1 for n in nodes if n.state in ("lost", "untrusted", "refused"))
    drained = sum(1 for n in nodes if n.state in ("draining", "drained"))
    busy = sum(n.slots_busy for n in nodes)
    slots = sum(n.slots for n in nodes)
    running = [j for j in jobs if j.status == "running"]
    how = "[b $warning]attached[/]" if attached else "embedded"
    parts = [f"[b]SHOAL[/b] [$text-muted]›[/] [b $accent]{screen_title}[/]", how]
    nodes_text = f"{up} up"
    if drained:
        nodes_text += f" [$warning]{drained} drained[/]"
    if bad:
        nodes_text += f" [$error]{bad} down[/]"
    parts.append(nodes_text)
    parts.append(f"slots {busy}/{slots}")
    if running:
        done = sum(j.done for j in running)
        total = sum(j.total for j in running)
        parts.append(f"{len(running)} running {done:,}/{total:,}")
    else:
        parts.append(f"{len(jobs)} jobs")
    if path:
        parts.append(f"[$text-muted]{escape(path)}[/]")
    return " [$text-muted]│[/] ".join(parts)


class StatusBar(Static):
    """Set with ``show``; it draws nothing else."""

    _shown = ""

    def show(self, screen_title: str, attached: bool, path: str, nodes: list[NodeInfo], jobs: list[JobInfo]) -> None:
        text = summary(screen_title, attached, path, nodes, jobs)
        if text != self._shown:
            self._shown = text
            # One line, fixed size: a repaint, never a layout of the screen.
            self.update(text, layout=False)
