"""``shoal console``: check the command line, open the engine (attach or
embed), run the app, close the engine."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

# Textual flushes a changed screen on a timer of 1/TEXTUAL_FPS (60 by
# default). After a frame that followed a pause that timer sleeps one to two
# of its intervals, so a key that comes then waits up to 33 ms at 60, 17 ms
# at 120, 4 ms at 500 (bench_console.py, 100 keys/s: page down p95 up to
# 24 ms at 60 Hz, 7.8-8.4 ms at 500). Frames are still drawn only when
# something changed: the node table's CPU measured the same. Read
# once, when Textual is first imported, so it is set before the imports below.
os.environ.setdefault("TEXTUAL_FPS", "500")

import themes  # noqa: E402

EXIT_OK, EXIT_USAGE = 0, 2


class UserError(Exception):
    """Bad input: one line on stderr, exit 2 (raised and caught here, since
    ``python -m console.cli`` runs the CLI module as ``__main__``)."""


def main(args: argparse.Namespace) -> int:
    try:
        return _main(args)
    except UserError as exc:
        print(f"shoal: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _main(args: argparse.Namespace) -> int:
    from engine.discovery import parse_node_address
    from engine.spec import SpecError, load_job_file

    if args.theme is not None and themes.resolve(args.theme) is None:
        raise UserError(f"no theme {args.theme!r}; choose one of {', '.join(themes.THEMES)}")
    for address in args.node:
        try:
            parse_node_address(address)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    specs = []
    for name in args.jobs:
        try:
            specs.append(load_job_file(Path(name)))
        except SpecError as exc:
            raise UserError(str(exc)) from None
        except OSError as exc:
            raise UserError(f"cannot read {name}: {exc.strerror}") from None
    asyncio.run(_run(args, specs))
    return EXIT_OK


async def _run(args: argparse.Namespace, specs: list[Any]) -> None:
    from console.app import build_app, open_api, run_console
    from engine.interface import EngineError
    from engine.paths import config_dir

    try:
        api = await open_api(
            args.state_dir, args.config_dir, nodes=args.node, mdns_interfaces=args.mdns_interface, trust_new=args.trust_new
        )
    except (EngineError, RuntimeError, OSError) as exc:
        raise UserError(str(exc)) from None
    app = build_app(api, config_dir=config_dir(args.config_dir), theme=args.theme, jobs=specs)
    await run_console(api, app)
    if app.return_code and app.return_code != 0:
        raise UserError("the console stopped on an error")
