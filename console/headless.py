"""Headless mode: run one job to completion with plain progress on stderr.

A client of the engine's API and event stream, like the TUI. Progress is
redrawn at most a few times a second, whatever the event rate.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any, TextIO

from engine import diagnose
from engine import events as ev
from engine.api import Engine
from engine.spec import JobSpec

REDRAW_SECONDS = 0.25
NO_NODE_GRACE_SECONDS = 15.0
DEFAULT_WAIT_FOR_NODES = 60.0  # shoal run --wait-for-nodes


def _bar(done: int, total: int, width: int = 24) -> str:
    filled = int(width * done / total) if total else width
    return "#" * filled + "-" * (width - filled)


class Progress:
    """One status line on a TTY (rewritten in place), periodic lines otherwise."""

    def __init__(self, stream: TextIO, quiet: bool = False) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.quiet = quiet
        self._last_line = 0.0

    def line(self, text: str) -> None:
        if self.quiet:
            return
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
        else:
            now = time.monotonic()
            if now - self._last_line < 2.0:
                return
            self._last_line = now
            self.stream.write(text + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K")
        self.stream.write(text + "\n")
        self.stream.flush()

    def end(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K")
        if not self.quiet:
            self.stream.write(text + "\n")
        self.stream.flush()


def _cause(detail: str) -> str:
    """A node's detail without its retry countdown: what to say once."""
    return detail.split(", retrying", 1)[0]


async def run_job(
    engine: Engine,
    spec: JobSpec,
    *,
    as_json: bool,
    quiet: bool = False,
    summary: bool = False,
    wait_for_nodes: float = DEFAULT_WAIT_FOR_NODES,
) -> int:
    """Submit, follow, print the result. Returns the exit code: 0 succeeded,
    1 some task failed, 2 the job cannot run (no node reached within
    ``wait_for_nodes`` seconds, or no node offers its labels or slots)."""
    out = Progress(sys.stderr, quiet)
    events = engine.subscribe()
    started = time.monotonic()
    resumed = engine.find_unfinished(spec)
    if resumed is not None:
        job_id = resumed
        out.message(f"shoal: resuming job {job_id} ({spec.name}) left unfinished in {engine.state_dir}")
    else:
        earlier = _unfinished_from_same_file(engine, spec)
        job_id = await engine.submit(spec, actor="shoal run")
        if earlier:
            listed = ", ".join(map(str, earlier))
            out.message(
                f"shoal: {spec.source} changed since job {listed} was submitted from it: this is a new job"
                f" ({job_id}); job {listed} resumes too unless cancelled (shoal cancel {earlier[0]})"
            )
    waiter = asyncio.create_task(engine.wait(job_id))
    total = spec.task_count()
    said: dict[str, str] = {}  # node -> the cause last said, so each is said once
    said_unmet = ""
    ever_reached = False
    try:
        while not waiter.done():
            await asyncio.wait({waiter}, timeout=REDRAW_SECONDS)
            for event in events.take_ready():
                if isinstance(event, ev.Alert):
                    if event.node and said.get(event.node, "").startswith("refused"):
                        continue  # the node's own line said it (a changed key: once)
                    out.message(f"shoal: {event.level}: {event.message}")
                elif isinstance(event, ev.TaskChanged) and event.status == "failed" and event.job == job_id:
                    out.message(f"shoal: task {event.index} failed: {event.error}")
                elif isinstance(event, ev.NodeChanged) and event.state in ("untrusted", "refused", "connecting"):
                    cause = f"{event.state}: {_cause(event.detail)}"
                    if said.get(event.node) != cause:
                        said[event.node] = cause
                        state = "" if event.state == "connecting" else f" {event.state}"
                        out.message(f"shoal: node {event.node}{state}: {event.detail}")
                elif isinstance(event, ev.NodeChanged) and event.state == "up":
                    said.pop(event.node, None)
            counts = (await engine.job(job_id)).counts
            done = counts.get("succeeded", 0) + counts.get("failed", 0) + counts.get("cancelled", 0)
            nodes = await engine.nodes()
            nodes_up = sum(1 for n in nodes if n.state in diagnose.REACHED)
            ever_reached = ever_reached or nodes_up > 0
            elapsed = time.monotonic() - started
            rate = done / elapsed if elapsed > 0 else 0.0
            unmet = diagnose.unmet_field(spec, nodes) if counts.get("running", 0) == 0 and done < total else None
            if unmet is not None:
                field_name, sentence = unmet
                if diagnose.all_known_reached(nodes):
                    # Every node we know is up and none can ever take it.
                    await engine.cancel(job_id, actor="shoal run")
                    out.end(f"shoal: job {job_id} ({spec.name}): field '{field_name}': {sentence}; cancelled")
                    return 2
                if sentence != said_unmet:
                    said_unmet = sentence
                    out.message(f"shoal: job {job_id} waits: {sentence}")
            waiting = ""
            if nodes_up == 0:
                waiting = "  waiting for nodes: " + (diagnose.unreachable(nodes) or "none known yet")
            elif unmet is not None:
                waiting = "  waiting: " + unmet[1]
            out.line(
                f"{spec.name} [{_bar(done, total)}] {done}/{total}  running {counts.get('running', 0)}"
                f"  failed {counts.get('failed', 0)}  nodes {nodes_up}  {rate:,.0f}/s{waiting}"
            )
            if not ever_reached and elapsed > wait_for_nodes:
                out.end(f"shoal: {diagnose.no_node_reached(nodes, elapsed)} (job {job_id} stays stored: run again to resume it)")
                return 2
            if nodes_up == 0 and elapsed > NO_NODE_GRACE_SECONDS and done == 0 and nodes:
                if all(n.state in ("untrusted", "refused") for n in nodes):
                    out.end("shoal: no trusted node to run on (see the messages above)")
                    return 2
    finally:
        events.close()
        if not waiter.done():
            waiter.cancel()
    status = waiter.result()
    counts = (await engine.job(job_id)).counts
    result = await engine.result(job_id)
    elapsed = time.monotonic() - started
    out.end(
        f"{spec.name}: {status} in {elapsed:.1f}s — {counts.get('succeeded', 0)} succeeded,"
        f" {counts.get('failed', 0)} failed, {counts.get('cancelled', 0)} cancelled (job {job_id})"
    )
    if as_json:
        report = {
            "job": job_id,
            "name": spec.name,
            "status": status,
            "counts": counts,
            "result": result,
            "elapsed": round(elapsed, 3),
        }
        print(json.dumps(report, default=_jsonable))
    else:
        print(format_result(summarise(result) if summary else result))
    return 0 if status == "succeeded" else 1


def _unfinished_from_same_file(engine: Engine, spec: JobSpec) -> list[int]:
    """Unfinished jobs submitted from the same job file with other contents.
    (The engine's job table, as ``find_unfinished`` reads it.)"""
    if spec.source is None:
        return []
    jobs = engine.coordinator.core.jobs.values()
    return sorted(j.id for j in jobs if j.status.value == "running" and j.spec.source == spec.source)


def format_result(result: Any) -> str:
    if isinstance(result, str):
        return result
    return json.dumps(result, default=_jsonable, indent=None if not isinstance(result, dict) else 2)


def summarise(result: Any, top: int = 10) -> Any:
    """A big mapping cut to its largest entries, for a screen rather than a pipe."""
    if isinstance(result, dict) and len(result) > top:
        try:
            best = sorted(result.items(), key=lambda kv: kv[1], reverse=True)[:top]
        except TypeError:
            best = list(result.items())[:top]
        return {**dict(best), "...": f"{len(result) - top} more"}
    return result


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return repr(value)
