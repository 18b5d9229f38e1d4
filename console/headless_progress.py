"""What headless mode shows on stderr while a job runs, and when it ends.

Two displays with one interface (``message``, ``show``, ``end``, ``finish``):

* ``PlainProgress``: plain lines, for a pipe, a log file or ``--quiet``. Its
  lines are a contract (scripts and tests read them): a progress line every
  2 s at most, each message on its own line, one closing line.
* ``LiveProgress``: on a terminal, a ``rich`` live display: a bar per job
  with its rate and ETA (the engine's smoothed figures), a compact line per
  node (slots busy/total, CPU %), and a summary table at the end.

The runner calls ``show`` a few times a second with views it already read
from the engine's API (one ``job()``, one ``nodes()``): drawing costs the
same at 100 tasks or 100,000, and nothing here touches a task.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TextIO

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from engine import diagnose
from engine.views import JobInfo, NodeInfo

PLAIN_EVERY = 2.0  # seconds between two progress lines without a terminal
NODE_STATE_STYLE = {"up": "green", "draining": "yellow", "drained": "yellow", "lost": "red", "refused": "red", "untrusted": "red"}


def _bar(done: int, total: int, width: int = 24) -> str:
    filled = int(width * done / total) if total else width
    return "#" * filled + "-" * (width - filled)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one redraw shows: the job, the nodes, and why it waits (if it does)."""

    name: str
    job: JobInfo
    nodes: list[NodeInfo]
    elapsed: float
    waiting: str = ""

    @property
    def done(self) -> int:
        return self.job.done

    @property
    def nodes_up(self) -> int:
        return sum(1 for n in self.nodes if n.state in diagnose.REACHED)


@dataclass(frozen=True, slots=True)
class Summary:
    """The end of a job, for the closing table."""

    line: str  # the closing line the plain display prints
    status: str
    counts: dict[str, int]
    retried: int  # tasks that ran more than once (a retry, a requeue, a second copy)
    elapsed: float
    node_counts: list[tuple[str, int, int]]  # node, attempts ended there, of them failed


class PlainProgress:
    """Plain lines: today's output of ``shoal run`` without a terminal."""

    def __init__(self, stream: TextIO, quiet: bool = False) -> None:
        self.stream = stream
        self.quiet = quiet
        self._last_line = 0.0

    def message(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def show(self, snap: Snapshot, rate: float) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if now - self._last_line < PLAIN_EVERY:
            return
        self._last_line = now
        counts, total = snap.job.counts, snap.job.total
        self.stream.write(
            f"{snap.name} [{_bar(snap.done, total)}] {snap.done}/{total}  running {counts.get('running', 0)}"
            f"  failed {counts.get('failed', 0)}  nodes {snap.nodes_up}  {rate:,.0f}/s{snap.waiting}\n"
        )
        self.stream.flush()

    def end(self, text: str) -> None:
        if not self.quiet:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        pass


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "ETA -:--:--"
    seconds = int(seconds)
    return f"ETA {seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


class LiveProgress:
    """A ``rich`` live display on a terminal, redrawn only by ``show`` (no
    refresh thread), and a summary table printed once at the end. Colours
    follow rich's own rules: ``NO_COLOR`` (or a dumb terminal) draws none."""

    BAR_WIDTH = 32

    def __init__(self, stream: TextIO, console: Console | None = None) -> None:
        self.console = console or Console(file=stream, highlight=False)
        # stderr only: stdout may be a pipe that gets the result, and other
        # writers to stderr (the demo's chaos lines) print above the display.
        self.live = Live(console=self.console, auto_refresh=False, transient=True, redirect_stdout=False, redirect_stderr=True)
        self._started = False
        self._ended = False
        self._summarised = False

    def _start(self) -> None:
        if not self._started and not self._ended:
            self._started = True
            self.live.start()

    def message(self, text: str) -> None:
        self.console.print(Text(text), soft_wrap=True)

    def show(self, snap: Snapshot, rate: float) -> None:
        if self._ended:
            return
        self._start()
        self.live.update(self.render(snap), refresh=True)

    def render(self, snap: Snapshot) -> RenderableType:
        job = snap.job
        counts = job.counts
        total = max(job.total, 1)
        head = Table.grid(padding=(0, 1))
        head.add_row(
            Text(snap.name, style="bold"),
            ProgressBar(total=total, completed=snap.done, width=self.BAR_WIDTH),
            Text(f"{snap.done:,}/{job.total:,} {100 * snap.done / total:3.0f}%"),
            Text(f"running {counts.get('running', 0)}"),
            Text(f"failed {counts.get('failed', 0)}", style="red" if counts.get("failed") else ""),
            Text(f"{job.rate:,.1f} tasks/s"),
            Text(_eta(job.eta), style="cyan"),
        )
        parts: list[RenderableType] = [head]
        if snap.waiting:
            parts.append(Text(snap.waiting.strip(), style="yellow"))
        room = max(1, self.console.height - len(parts) - 2)
        nodes = snap.nodes
        shown = nodes if len(nodes) <= room else nodes[: room - 1]
        if shown:
            # One Text of fixed-width lines, not a table: laying out a rich
            # table of 64 rows costs ~30 ms a frame, this a fraction of it.
            id_width = max(len(n.id) for n in shown)
            state_width = max(len(n.state) for n in shown)
            body = Text(no_wrap=True, overflow="ellipsis")
            for i, node in enumerate(shown):
                cpu = "cpu    -" if node.cpu is None else f"cpu {node.cpu:4.0f}%"
                body.append(f"  {node.id:<{id_width}} ")
                body.append(f"{node.state:<{state_width}}", style=NODE_STATE_STYLE.get(node.state, ""))
                body.append(f" slots {node.slots_busy}/{node.slots} {cpu}" + ("\n" if i < len(shown) - 1 else ""))
            parts.append(body)
        if len(shown) < len(nodes):
            rest = nodes[len(shown) :]
            busy, slots = sum(n.slots_busy for n in rest), sum(n.slots for n in rest)
            parts.append(Text(f"  … {len(rest)} more nodes, slots {busy}/{slots}", style="dim"))
        return Group(*parts)

    def end(self, text: str) -> None:
        """The job ends without a summary (it cannot run): one line."""
        self.close()
        self.console.print(Text(text), soft_wrap=True)

    def finish(self, summary: Summary) -> None:
        """The summary table, once."""
        if self._summarised:
            return
        self._summarised = True
        self.close()
        counts = summary.counts
        done = sum(counts.get(k, 0) for k in ("succeeded", "failed", "cancelled"))
        rate = done / summary.elapsed if summary.elapsed > 0 else 0.0
        self.console.print(Text(summary.line, style="bold"), soft_wrap=True)
        table = Table(box=box.SIMPLE_HEAD)
        for label in ("succeeded", "failed", "retried", "cancelled", "duration", "rate"):
            table.add_column(label, justify="right")
        table.add_row(
            Text(str(counts.get("succeeded", 0)), style="green"),
            Text(str(counts.get("failed", 0)), style="red" if counts.get("failed") else ""),
            str(summary.retried),
            str(counts.get("cancelled", 0)),
            _duration(summary.elapsed),
            f"{rate:,.1f}/s",
        )
        self.console.print(table)
        if summary.node_counts:
            nodes = Table(box=box.SIMPLE_HEAD)
            nodes.add_column("node")
            nodes.add_column("attempts", justify="right")
            nodes.add_column("failed", justify="right")
            for node, ran, failed in summary.node_counts:
                nodes.add_row(node, str(ran), str(failed))
            self.console.print(nodes)

    def close(self) -> None:
        """Stop the live display (idempotent): the terminal is left clean
        whatever ended the run."""
        self._ended = True
        if self._started:
            self._started = False
            self.live.stop()


Display = PlainProgress | LiveProgress


def display_for(stream: TextIO, quiet: bool) -> Display:
    """A live display on a terminal, plain lines otherwise (and when quiet,
    and on a dumb terminal, where rich would show nothing until the end)."""
    if stream.isatty() and not quiet and os.environ.get("TERM") != "dumb":
        return LiveProgress(stream)
    return PlainProgress(stream, quiet)
