"""Nodes: one row per agent, what it is doing, and the operator's levers on
it (drain, undrain, trust)."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType

from console.host import Tick
from console.screens.base import ShoalScreen
from console.screens.dialogs import ConfirmScreen
from console.widgets import format as fmt
from console.widgets.line_table import Column, ListTable, Row
from engine.views import NodeInfo

SPARK_WIDTH = 20

COLUMNS = [
    Column("NODE", 21),
    Column("HOST", 0, keep=1),
    Column("STATE", 10),
    Column("SLOTS", 5, right=True, keep=8),
    Column("CPU", 4, right=True, keep=7),
    Column("CPU 1 MIN", SPARK_WIDTH, keep=5),
    Column("MEM", 4, right=True, keep=4),
    Column("LOAD", 5, right=True, keep=2),
    Column("QUEUE", 5, right=True, keep=2),
    Column("DONE", 7, right=True, keep=6),
    Column("FAIL", 5, right=True, keep=6),
    Column("BEAT", 5, right=True, keep=3),
]


def node_row(node: NodeInfo, cpu: list[float]) -> Row:
    beat = "-" if node.heartbeat_age is None else f"{node.heartbeat_age:.0f}s"
    late = node.heartbeat_age is not None and node.heartbeat_age > 5
    return (
        node.id,
        node.hostname or "-",
        (node.state, fmt.node_tone(node.state)),
        f"{node.slots_busy}/{node.slots}",
        fmt.percent(node.cpu),
        (fmt.sparkline(cpu, SPARK_WIDTH), "accent"),
        fmt.percent(node.mem),
        fmt.number(node.load1),
        str(node.queued),
        f"{node.done:,}",
        (str(node.failed), "bad" if node.failed else ""),
        (beat, "warn" if late else ""),
    )


class NodesScreen(ShoalScreen):
    TITLE_TEXT = "Nodes"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("d", "drain(False)", "Drain", id="node.drain", tooltip="Send no new tasks to this node; its running tasks finish there"),
        Binding("D", "drain(True)", "Drain+requeue", id="node.drain_requeue", tooltip="Send no new tasks and move its running tasks elsewhere now (asks first)"),
        Binding("u", "undrain", "Undrain", id="node.undrain", tooltip="Let a drained node take tasks again"),
        Binding("t", "trust", "Trust", id="node.trust", tooltip="Pin an untrusted node's host key after checking its SHA256 fingerprint"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._rows: dict[str, tuple[NodeInfo, tuple[float, ...], Row]] = {}

    def compose_body(self) -> ComposeResult:
        yield ListTable(COLUMNS, id="nodes-table")

    @property
    def table(self) -> ListTable:
        return self.query_one("#nodes-table", ListTable)

    def show_tick(self, tick: Tick) -> None:
        feed = tick.feed
        nodes = sorted(feed.nodes, key=lambda n: n.id)
        self.table.set_rows([n.id for n in nodes], [self._row(n, tuple(feed.cpu.get(n.id, ()))) for n in nodes])

    def _row(self, node: NodeInfo, cpu: tuple[float, ...]) -> Row:
        # A node that did not change keeps its row: formatting 64 rows (the
        # sparklines most) is most of a redraw, and most nodes stand still.
        kept = self._rows.get(node.id)
        if kept is not None and kept[0] == node and kept[1] == cpu:
            return kept[2]
        row = node_row(node, list(cpu))
        self._rows[node.id] = (node, cpu, row)
        return row

    def _selected(self) -> NodeInfo | None:
        key = self.table.cursor_key
        node = self.shoal.feed.node(key) if key else None
        if node is None:
            self.notify("no node selected", severity="warning")
        return node

    def action_drain(self, requeue: bool) -> None:
        node = self._selected()
        if node is None:
            return
        api = self.shoal.api

        def drain() -> None:
            self.act(lambda: api.drain(node.id, requeue=requeue, actor="console"), f"drained {node.id}" + (" (running tasks requeued)" if requeue else ""))

        if not requeue:
            drain()
            return
        running = node.running or node.slots_busy
        self.app.push_screen(
            ConfirmScreen(
                f"Drain {node.id} and requeue?",
                f"Its {running} running task(s) are stopped now and run again on other nodes; their work so far is lost.",
                yes="Drain and requeue",
            ),
            lambda yes: drain() if yes else None,
        )

    def action_undrain(self) -> None:
        node = self._selected()
        if node is not None:
            api = self.shoal.api
            self.act(lambda: api.undrain(node.id, actor="console"), f"undrained {node.id}")

    def action_trust(self) -> None:
        node = self._selected()
        if node is None:
            return
        if node.state == "refused":
            # A changed key may be an attack: replacing it is a deliberate
            # act outside the console (shoal trust --replace).
            self.notify(
                f"{node.id}: {node.detail or 'refused'}. A changed host key is not trusted from here; "
                f"if you know why it changed, run: shoal trust {node.id} --replace",
                title="Host key",
                severity="error",
                timeout=10,
            )
            return
        if node.state != "untrusted":
            self.notify(f"{node.id} is already trusted ({node.fingerprint or 'key pinned'})")
            return
        api = self.shoal.api
        self.app.push_screen(
            ConfirmScreen(
                f"Trust {node.id}?",
                f"It presents the host key\n\n  {node.fingerprint}\n\nCompare it with the agent's host key on that machine (ssh-keygen -lf). "
                "Once pinned, a different key from this address is refused.",
                yes="Trust",
            ),
            lambda yes: self.act(lambda: api.trust(node.id, actor="console"), f"trusted {node.id}") if yes else None,
        )
