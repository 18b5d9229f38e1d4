"""``shoal run`` headless, as a user sees it: a rich progress display and a
summary table in a real terminal (tmux), plain lines without one, and no
colour under NO_COLOR (a real pseudo-terminal, raw bytes). Real agent
processes on 127.0.0.1, a real engine process."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from console.headless_progress import LiveProgress, PlainProgress, Snapshot, Summary, display_for
from demos.cluster import REPO, LocalCluster
from engine.views import JobInfo, NodeInfo
from tests.tui.conftest import wait_for

pytestmark = pytest.mark.timeout(120)

TMUX = shutil.which("tmux")
# 40 tasks, 2 attempts allowed: items 0, 5, ... (8) fail both attempts, items
# 1, 6, ... (8) fail once and then succeed, the other 24 succeed at once.
MIXED_JOB = (
    'name = "mixed"\nfunction = "tests.tui.headless_taskfns:mixed"\ncount = 40\nretries = 1\n'
    'backoff = { base = "50ms", cap = "100ms" }\nreduce = "count"\n'
)
SUCCEEDED, FAILED, RETRIED = 32, 8, 16
ATTEMPTS, FAILED_ATTEMPTS = 40 + 16, 8 * 2 + 8
COLOUR_SGR = re.compile(r"\x1b\[([0-9;:]*)m")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path, [2, 2]) as c:
        yield c


def run_argv(cluster: LocalCluster, job_file: Path, *extra: str) -> list[str]:
    nodes = [arg for address in cluster.addresses for arg in ("--node", address)]
    return [sys.executable, "-m", "console.cli", "run", str(job_file), "--state-dir", str(cluster.state_dir),
            "--config-dir", str(cluster.config_dir), *nodes, *extra]


def table_after(screen: str, header: list[str]) -> dict[str, str]:
    """The row under a table's header line (a rich SIMPLE_HEAD table), by column."""
    lines = screen.splitlines()
    for i, line in enumerate(lines):
        if line.split() == header:
            values = next(v for v in lines[i + 1 :] if v.strip() and not set(v.strip()) <= set("─ ")).split()
            return dict(zip(header, values, strict=False))
    raise AssertionError(f"no table with columns {header} on the screen:\n{screen}")


def node_rows(screen: str, cluster: LocalCluster) -> dict[str, tuple[int, int]]:
    rows = {}
    for line in screen.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] in cluster.addresses and words[1].isdigit():
            rows[words[0]] = (int(words[1]), int(words[2]))
    return rows


@pytest.mark.skipif(TMUX is None, reason="needs tmux (apt-get install tmux) for a real terminal")
def test_shoal_run_on_a_terminal_shows_bars_node_lines_and_one_summary_table(cluster, tmp_path):
    job_file = tmp_path / "mixed.toml"
    job_file.write_text(MIXED_JOB)
    done = tmp_path / "exit-code"
    argv = run_argv(cluster, job_file)
    env = f"-u COLUMNS -u LINES -u NO_COLOR PYTHONPATH={REPO} TERM=xterm-256color"
    socket = f"shoal-test-{uuid.uuid4().hex[:8]}"

    def tmux(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([TMUX or "tmux", "-L", socket, *args], capture_output=True, text=True, timeout=10)

    def screen() -> str:
        return tmux("capture-pane", "-p", "-J", "-S", "-100", "-t", "run").stdout

    try:
        # The pane stays open after the run (the sleep) so its last screen can be read.
        tmux("new-session", "-d", "-x", "120", "-y", "40", "-s", "run", "-c", str(REPO),
             f"env {env} {' '.join(argv)}; echo $? > {done}; sleep 60")
        # While it runs: the job's bar with its rate and ETA, a line per node.
        live = wait_for(lambda: (s := screen()) and "ETA" in s and "tasks/s" in s and "━" in s
                        and all(a in s for a in cluster.addresses) and s, 60, "the live progress display")
        bar_line = next(line for line in live.splitlines() if "ETA" in line)
        assert bar_line.lstrip().startswith("mixed") and re.search(r"\d+/40", bar_line), live
        for address in cluster.addresses:
            node_line = next(line for line in live.splitlines() if address in line)
            assert re.search(r"slots \d/2", node_line) and "cpu" in node_line, live
        wait_for(lambda: done.exists() and done.read_text().strip(), 90, "shoal run to end")
        assert done.read_text().strip() == "1"  # some tasks failed
        final = screen()
        # The live display is gone; the summary table, once, with the exact counts.
        assert "ETA" not in final and final.count("mixed: failed in") == 1, final
        summary = table_after(final, ["succeeded", "failed", "retried", "cancelled", "duration", "rate"])
        assert (summary["succeeded"], summary["failed"], summary["retried"], summary["cancelled"]) == (
            str(SUCCEEDED), str(FAILED), str(RETRIED), "0"), final
        per_node = node_rows(final, cluster)
        assert set(per_node) == set(cluster.addresses), final
        assert sum(ran for ran, _ in per_node.values()) == ATTEMPTS
        assert sum(failed for _, failed in per_node.values()) == FAILED_ATTEMPTS
    finally:
        tmux("kill-server")


def test_shoal_run_without_a_terminal_writes_plain_lines(cluster, tmp_path):
    job_file = tmp_path / "mixed.toml"
    job_file.write_text(MIXED_JOB)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.run(run_argv(cluster, job_file), capture_output=True, text=True, timeout=90, cwd=REPO,
                          env={**env, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.strip() == str(SUCCEEDED)  # the count reducer over the tasks that succeeded
    lines = proc.stderr.splitlines()
    assert "\x1b" not in proc.stderr and "\r" not in proc.stderr
    failed = sorted(int(m.group(1)) for line in lines if (m := re.fullmatch(r"shoal: task (\d+) failed: .*", line)))
    assert failed == list(range(0, 40, 5))  # each failure said once, when final
    progress = [line for line in lines if line.startswith("mixed [")]
    assert progress and all(re.fullmatch(r"mixed \[[#-]{24}\] \d+/40  running \d+  failed \d+  nodes \d  [\d,]+/s", p)
                            for p in progress), proc.stderr
    assert re.fullmatch(r"mixed: failed in \d+\.\ds — 32 succeeded, 8 failed, 0 cancelled \(job 1\)", lines[-1]), proc.stderr


def test_shoal_run_on_a_terminal_with_no_color_writes_no_colour_codes(cluster, tmp_path):
    job_file = tmp_path / "squares.toml"
    job_file.write_text('name = "squares"\nfunction = "tests.tui.taskfns:slow_square"\ncount = 60\nreduce = "sum"\n')
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(PYTHONPATH=str(REPO), NO_COLOR="1", TERM="xterm-256color")
    # stderr on a pseudo-terminal (rich draws its live display there); stdout a pipe.
    leader, follower = pty.openpty()
    proc = subprocess.Popen(run_argv(cluster, job_file), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=follower, cwd=REPO, env=env)
    os.close(follower)
    raw = b""
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: the child closed its end
                    break
                if not chunk:
                    break
                raw += chunk
            elif proc.poll() is not None:
                break
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)
    text = raw.decode("utf-8", "replace")
    assert proc.returncode == 0, text[-2000:]
    assert out.decode().strip() == str(sum(i * i for i in range(60)))
    # It did draw on the terminal: the bar, the ETA, the summary table.
    assert "ETA" in text and "━" in text and "squares: succeeded in" in text, text[-2000:]
    assert text.count("squares: succeeded in") == 1
    colours = [params for params in COLOUR_SGR.findall(text)
               if any(p and (30 <= int(p) <= 49 or 90 <= int(p) <= 107) for p in re.split("[;:]", params) if p.isdigit())]
    assert colours == [], colours[:5]


def _live(height: int = 24) -> tuple[LiveProgress, io.StringIO]:
    out = io.StringIO()
    return LiveProgress(out, Console(file=out, force_terminal=True, width=100, height=height, color_system=None)), out


def test_the_live_display_fits_64_nodes_in_the_terminal_and_the_summary_prints_once():
    nodes = [NodeInfo(f"10.0.0.{i}:7447", "up", slots=4, slots_busy=i % 5, cpu=float(i)) for i in range(64)]
    info = JobInfo(1, "frames", "running", 1000, {"succeeded": 400, "running": 8}, 0.0, None, rate=12.5, eta=48.0)
    progress, out = _live(height=24)
    lines = progress.console.render_lines(progress.render(Snapshot("frames", info, nodes, 3.0)), pad=False)
    text = ["".join(segment.text for segment in line).rstrip() for line in lines]
    assert len(text) <= 24 - 2  # room left for the cursor line and a message
    assert "400/1,000" in text[0] and "12.5 tasks/s" in text[0] and "ETA 0:00:48" in text[0]
    shown = [line for line in text if ":7447" in line]
    assert 10 < len(shown) < 64 and "slots 1/4" in shown[1] and "cpu    1%" in shown[1]
    more = 64 - len(shown)
    assert text[-1].strip().startswith(f"… {more} more nodes")
    summary = Summary("frames: succeeded in 3.0s", "succeeded", {"succeeded": 1000}, 7, 3.0, [("10.0.0.1:7447", 1007, 7)])
    progress.finish(summary)
    progress.finish(summary)  # a second call (a finally block) prints nothing
    assert out.getvalue().count("frames: succeeded in 3.0s") == 1
    assert "333.3/s" in out.getvalue() and "1007" in out.getvalue()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_live_display_is_for_a_real_terminal_only(monkeypatch):
    monkeypatch.setenv("TERM", "xterm-256color")
    assert isinstance(display_for(_Terminal(), quiet=False), LiveProgress)
    assert isinstance(display_for(_Terminal(), quiet=True), PlainProgress)  # messages only
    assert isinstance(display_for(io.StringIO(), quiet=False), PlainProgress)  # a pipe, a file
    monkeypatch.setenv("TERM", "dumb")  # no cursor moves: rich would show nothing until the end
    assert isinstance(display_for(_Terminal(), quiet=False), PlainProgress)
