"""The command palette's own provider: every key of the current screen (the
same ``Binding`` list the footer shows), the screens, and the themes."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import cast

from textual.command import DiscoveryHit, Hit, Hits, Provider

from console.host import ConsoleHost


class ShoalCommands(Provider):
    def _commands(self) -> list[tuple[str, str, Callable[[], object]]]:
        app = self.app
        host = cast(ConsoleHost, app)
        commands: list[tuple[str, str, Callable[[], object]]] = []
        seen: set[str] = set()
        for active in self.screen.active_bindings.values():
            binding = active.binding
            if not binding.description or not active.enabled or binding.action in seen:
                continue
            seen.add(binding.action)
            label = f"{binding.description} ({binding.key_display or app.get_key_display(binding)})"
            commands.append((label, active.tooltip or binding.tooltip, partial(app.run_action, binding.action, active.node)))
        for name in host.shoal_theme_names():
            commands.append((f"Theme: {name}", "Switch the console's colours (remembered)", partial(host.set_theme, name)))
        return commands

    async def discover(self) -> Hits:
        for label, help_text, command in self._commands():
            yield DiscoveryHit(label, command, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for label, help_text, command in self._commands():
            score = matcher.match(label)
            if score > 0:
                yield Hit(score, matcher.highlight(label), command, help=help_text)
