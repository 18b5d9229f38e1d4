"""Help: every key of the screen underneath, with what it does."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label

from console.widgets.line_table import Column, ListTable

COLUMNS = [Column("KEY", 12), Column("ACTION", 16), Column("WHAT IT DOES", 0)]


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q", "dismiss", "Close", id="help.close", tooltip="Close the help"),
    ]

    def __init__(self, title: str, bindings: list[tuple[str, str, str]]) -> None:
        super().__init__()
        self.title_text = title
        self.bindings = bindings

    def compose(self) -> ComposeResult:
        with Vertical(id="help"):
            yield Label(f"Keys: {self.title_text}", id="help-title")
            yield ListTable(COLUMNS, id="help-table")

    def on_mount(self) -> None:
        table = self.query_one(ListTable)
        table.set_rows([f"{k}:{a}" for k, a, _ in self.bindings], list(self.bindings))
        table.focus()

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(None)
