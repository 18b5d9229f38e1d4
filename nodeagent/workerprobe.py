"""What ``--run-as USER`` runs, as USER, at agent start: can USER import
what a Python worker imports? (``nodeagent.runas.python_refusal``)

A module of its own so that the agent's side imports no worker code."""

from __future__ import annotations


def main() -> None:
    import nodeagent.worker  # noqa: F401
