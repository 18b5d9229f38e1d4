"""Make the README's screenshots of the console, so they can be redone:

    .venv/bin/python -m console.screenshot [--out docs] [--theme shoal-dark]

Starts a real local cluster (4 agents on 127.0.0.1, as `shoal demo` does,
without mDNS), an embedded engine, submits the demo jobs, lets them run a
moment, and saves Textual's own SVG screenshots of the Jobs, Nodes and
Tasks screens (console-jobs.svg, console-nodes.svg, console-tasks.svg).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import console.launch  # noqa: F401  (the console's frame rate, set before Textual loads)

SIZE = (120, 30)


async def shoot(out: Path, theme: str, settle: float) -> list[Path]:
    from console.app import build_app
    from console.demo import DEMO_JOBS, JOBS_DIR
    from demos.cluster import LocalCluster
    from engine.api import Engine
    from engine.spec import load_job_file

    out.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="shoal-shot-") as tmp:
        root = Path(tmp)
        with LocalCluster(root, [2, 3, 1, 2]) as cluster:
            engine = await Engine.open(root / "state", cluster.config_dir, nodes=cluster.addresses, trust_new=True)
            try:
                await engine.wait_for_nodes(len(cluster.addresses), timeout=30)
                specs = [load_job_file(JOBS_DIR / name) for name in DEMO_JOBS]
                app = build_app(engine, theme=theme, jobs=specs)
                async with app.run_test(size=SIZE) as pilot:
                    deadline = time.monotonic() + settle
                    while time.monotonic() < deadline:
                        await pilot.pause(0.1)
                    for key, name in (("2", "jobs"), ("1", "nodes")):
                        await pilot.press(key)
                        await pilot.pause(0.5)
                        path = out / f"console-{name}.svg"
                        app.save_screenshot(str(path))
                        saved.append(path)
                    await pilot.press("2", "end", "enter")  # the tasks of the oldest job
                    await pilot.pause(0.8)
                    path = out / "console-tasks.svg"
                    app.save_screenshot(str(path))
                    saved.append(path)
                    app.exit()
            finally:
                await engine.close()
    return saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m console.screenshot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("themes/screenshots"), help="folder for the SVG files (default themes/screenshots/)")
    parser.add_argument("--theme", default="shoal-dark")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds the jobs run before the shots")
    args = parser.parse_args(argv)
    for path in asyncio.run(shoot(args.out, args.theme, args.settle)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
