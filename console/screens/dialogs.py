"""Modal questions: a yes/no confirmation and a one-line prompt whose answer
is checked before it is accepted (errors shown inline, under the input)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Generic, TypeVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.suggester import Suggester
from textual.widgets import Button, Input, Label, Static

T = TypeVar("T")


class ConfirmScreen(ModalScreen[bool]):
    """Asks before work is destroyed; y / Enter on Yes confirms, n / Esc declines."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes", id="confirm.yes", tooltip="Do it"),
        Binding("n,escape", "answer(False)", "No", id="confirm.no", tooltip="Leave everything as it is"),
    ]

    def __init__(self, title: str, body: str, yes: str = "Yes") -> None:
        super().__init__()
        self.title_text = title
        self.body = body
        self.yes = yes

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.title_text, id="dialog-title")
            yield Static(self.body, id="dialog-body", markup=False)
            with Horizontal(id="dialog-buttons"):
                yield Button(f"{self.yes} (y)", id="yes", variant="error")
                yield Button("No (n)", id="no", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class PromptScreen(ModalScreen[T | None], Generic[T]):
    """One line of input; ``check`` turns it into the answer or raises
    ValueError whose text is shown under the input (the dialog stays)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="prompt.cancel", tooltip="Close without doing anything"),
    ]

    def __init__(
        self,
        title: str,
        check: Callable[[str], T],
        *,
        value: str = "",
        placeholder: str = "",
        hint: str = "",
        suggester: Suggester | None = None,
    ) -> None:
        super().__init__()
        self.title_text = title
        self.check = check
        self.value = value
        self.placeholder = placeholder
        self.hint = hint
        self.suggester = suggester

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.title_text, id="dialog-title")
            yield Input(self.value, placeholder=self.placeholder, suggester=self.suggester, id="prompt-input")
            yield Static(self.hint, id="prompt-hint", markup=False)
            yield Static("", id="prompt-error", markup=False)

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        try:
            answer = self.check(event.value)
        except ValueError as exc:
            error = self.query_one("#prompt-error", Static)
            error.update(str(exc))
            error.add_class("shown")
            return
        self.dismiss(answer)

    def action_cancel(self) -> None:
        self.dismiss(None)


class PathSuggester(Suggester):
    """Completes the path typed so far from the file system (Right or End
    accepts), preferring ``suffixes`` and directories."""

    def __init__(self, suffixes: tuple[str, ...] = ()) -> None:
        super().__init__(use_cache=False, case_sensitive=True)
        self.suffixes = suffixes

    async def get_suggestion(self, value: str) -> str | None:
        if not value:
            return None
        expanded = os.path.expanduser(value)
        folder, stem = os.path.split(expanded)
        try:
            names = sorted(os.listdir(folder or "."))
        except OSError:
            return None
        for name in names:
            if not name.startswith(stem) or name == stem or name.startswith("."):
                continue
            full = os.path.join(folder, name)
            is_dir = os.path.isdir(full)
            if is_dir or not self.suffixes or name.endswith(self.suffixes):
                tail = name[len(stem) :] + ("/" if is_dir else "")
                return value + tail
        return None


def existing_file(text: str) -> Path:
    path = Path(os.path.expanduser(text.strip()))
    if not text.strip():
        raise ValueError("type a path")
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    return path
