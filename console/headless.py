"""Headless mode: run one job to completion with progress on stderr.

A client of the engine's API and event stream, like the TUI. Progress is
redrawn at most a few times a second, whatever the event rate: a ``rich``
live display on a terminal, plain lines otherwise (console/headless_progress.py).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from console.headless_progress import LiveProgress, Snapshot, Summary, display_for
from engine import diagnose
from engine import events as ev
from engine.api import Engine
from engine.interface import EngineAPI
from engine.spec import JobSpec
from engine.views import NodeInfo

REDRAW_SECONDS = 0.25
NO_NODE_GRACE_SECONDS = 15.0
DEFAULT_WAIT_FOR_NODES = 60.0  # shoal run --wait-for-nodes


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
    out = display_for(sys.stderr, quiet)
    events = engine.subscribe()
    started = time.monotonic()
    nodes_at_start = {n.id: n for n in await engine.nodes()}  # their counts before this job
    resumed = engine.find_unfinished(spec)
    if resumed is not None:
        job_id = resumed
        out.message(f"shoal: resuming job {job_id} ({spec.name}) left unfinished in {engine.state_dir}")
    else:
        earlier = engine.unfinished_from_file(spec)
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
            info = await engine.job(job_id)
            counts = info.counts
            done = info.done
            nodes = await engine.nodes()
            nodes_up = sum(1 for n in nodes if n.state in diagnose.REACHED)
            ever_reached = ever_reached or nodes_up > 0
            elapsed = time.monotonic() - started
            rate = done / elapsed if elapsed > 0 else 0.0
            unmet = diagnose.unmet_field(spec, nodes) if counts.get("running", 0) + counts.get("sent", 0) == 0 and done < total else None
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
            if info.blocked:  # the engine holds results until its state dir takes writes again
                waiting = "  blocked: " + info.blocked
            elif nodes_up == 0:
                waiting = "  waiting for nodes: " + (diagnose.unreachable(nodes) or "none known yet")
            elif unmet is not None:
                waiting = "  waiting: " + unmet[1]
            out.show(Snapshot(spec.name, info, nodes, elapsed, waiting), rate)
            if not ever_reached and elapsed > wait_for_nodes:
                out.end(f"shoal: {diagnose.no_node_reached(nodes, elapsed)} (job {job_id} stays stored: run again to resume it)")
                return 2
            if nodes_up == 0 and elapsed > NO_NODE_GRACE_SECONDS and done == 0 and nodes:
                if all(n.state in ("untrusted", "refused") for n in nodes):
                    out.end("shoal: no trusted node to run on (see the messages above)")
                    return 2
    finally:
        events.close()
        out.close()  # whatever ended the loop, the terminal is left clean
        if not waiter.done():
            waiter.cancel()
    status = waiter.result()
    counts = (await engine.job(job_id)).counts
    result = await engine.result(job_id)
    elapsed = time.monotonic() - started
    line = (
        f"{spec.name}: {status} in {elapsed:.1f}s — {counts.get('succeeded', 0)} succeeded,"
        f" {counts.get('failed', 0)} failed, {counts.get('cancelled', 0)} cancelled (job {job_id})"
    )
    if not isinstance(out, LiveProgress):
        out.end(line)  # the plain closing line: no need to count retries
    else:
        retried = await count_retried(engine, job_id)
        nodes_now = await engine.nodes()
        out.finish(Summary(line, status, counts, retried, elapsed, node_counts(nodes_at_start, nodes_now)))
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


async def count_retried(engine: EngineAPI, job_id: int, page: int = 1000) -> int:
    """Tasks of the job that ran more than once: the engine sorts by attempts,
    so this reads only those (and one row more), a page at a time."""
    retried, offset = 0, 0
    while True:
        rows = (await engine.tasks(job_id, order="attempts", descending=True, offset=offset, limit=page)).rows
        more = sum(1 for r in rows if r.attempts > 1)
        retried += more
        if more < len(rows) or len(rows) < page:
            return retried
        offset += page


def node_counts(before: dict[str, NodeInfo], after: list[NodeInfo]) -> list[tuple[str, int, int]]:
    """Per node: attempts that ended there during the job, and of them failed
    (the engine counts both per node since it started: the difference)."""
    out = []
    for node in after:
        was = before.get(node.id)
        ran = node.done - (was.done if was else 0)
        failed = node.failed - (was.failed if was else 0)
        if ran or node.state in diagnose.REACHED:
            out.append((node.id, ran, failed))
    return out


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
