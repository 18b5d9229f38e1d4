"""The ``shoal`` command.

Exit codes: 0 success, 1 some tasks failed, 2 usage or input error (one
line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UserError(Exception):
    """A mistake of the user's: printed as one line, exit 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shoal",
        description="Shoal: a distributed batch task engine for LAN clusters.",
        epilog="Run 'shoal COMMAND --help' for a command's options. State lives under the XDG "
        "dirs (override with --state-dir or SHOAL_STATE_DIR / SHOAL_CONFIG_DIR).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    sub.add_parser(
        "agent",
        help="run a node agent: an SSH server that runs tasks (advertises over mDNS on every interface unless told otherwise)",
        add_help=False,
    )

    demo = sub.add_parser("demo", help="start a local demo cluster of real agents on 127.0.0.1 and run example jobs")
    demo.add_argument("--nodes", type=int, default=4, help="number of agents, 1 to 64 (default: 4)")
    demo.add_argument("--chaos", action="store_true", help="kill -9 and restart agents during the jobs (default: off)")
    demo.add_argument("--headless", action="store_true", help="progress on stderr instead of the console (default: the console on a terminal, else headless)")
    demo.add_argument("--job", action="append", default=[], metavar="NAME.toml", help="run only these demos/jobs files (repeatable; default: all)")

    console = sub.add_parser("console", help="open the interactive console (attaches to the engine running on the state dir, else embeds one)")
    console.add_argument("jobs", nargs="*", metavar="JOB.toml", help="job files to submit at start (default: none)")
    _engine_options(console)
    console.add_argument("--theme", metavar="NAME", help="shoal-dark, shoal-light or shoal-high-contrast, remembered (default: the last one, else shoal-dark)")

    keys = sub.add_parser("keys", help="print this console's public key (one OpenSSH line) for agents' authorized-keys files")
    keys.add_argument("--config-dir", help="console config dir holding the key (default: SHOAL_CONFIG_DIR, else the XDG config dir)")

    run = sub.add_parser("run", help="run a job file to completion; the aggregated result goes to stdout")
    run.add_argument("job", metavar="JOB.toml", help="the job file")
    _engine_options(run)
    run.add_argument("--json", action="store_true", help="print a JSON summary instead of the bare result (default: the bare result)")
    run.add_argument("--headless", action="store_true", help="progress on stderr, no console (the default, and the only mode, of 'run')")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr (default: progress)")
    run.add_argument(
        "--wait-for-nodes",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="give up with exit 2 if no node was reached within this time (default: 60)",
    )

    nodes = sub.add_parser(
        "nodes", help="list the nodes this console knows; 'shoal nodes forget ADDR' stops redialing one"
    )
    nodes.add_argument("action", nargs="?", choices=["forget"], help="forget: stop redialing ADDR on later runs")
    nodes.add_argument("address", nargs="?", metavar="ADDR", help="HOST:PORT of the node to forget")
    nodes.add_argument("--state-dir", help=_STATE_DIR_HELP)
    nodes.add_argument("--json", action="store_true", help="print JSON (default: a table)")

    jobs = sub.add_parser("jobs", help="list jobs (stored counts when no engine runs)")
    jobs.add_argument("--state-dir", help=_STATE_DIR_HELP)
    jobs.add_argument("--json", action="store_true", help="print JSON (default: a table)")

    results = sub.add_parser("results", help="a job's aggregated result (partial while unfinished) and per-task results")
    results.add_argument("job", type=int, metavar="JOB", help="job id (see 'shoal jobs')")
    results.add_argument("--state-dir", help=_STATE_DIR_HELP)
    fmt = results.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="per-task results as JSON (default: the aggregated result)")
    fmt.add_argument("--csv", action="store_true", help="per-task results as CSV (default: the aggregated result)")

    drain = sub.add_parser("drain", help="stop sending tasks to a node (of the running engine)")
    drain.add_argument("node", metavar="NODE", help="HOST:PORT, hostname or agent id")
    drain.add_argument("--requeue", action="store_true", help="also move its running tasks elsewhere now (default: let them finish)")
    _live_options(drain)

    undrain = sub.add_parser("undrain", help="let a drained node take tasks again")
    undrain.add_argument("node", metavar="NODE", help="HOST:PORT, hostname or agent id")
    _live_options(undrain)

    resubmit = sub.add_parser("resubmit", help="run a job's failed and cancelled tasks again (or, with --all, the whole ended job)")
    resubmit.add_argument("job", type=int, metavar="JOB", help="job id (see 'shoal jobs')")
    which = resubmit.add_mutually_exclusive_group()
    which.add_argument("--failed", action="store_true", help="failed and cancelled tasks only (the default)")
    which.add_argument("--all", action="store_true", help="the whole job, from scratch, once it has ended (default: off)")
    _live_options(resubmit)

    cancel = sub.add_parser("cancel", help="cancel a job, or some of its tasks")
    cancel.add_argument("job", type=int, metavar="JOB", help="job id (see 'shoal jobs')")
    cancel.add_argument("--task", type=int, action="append", metavar="N", help="only this task index (repeatable; default: every unfinished task)")
    _live_options(cancel)

    events = sub.add_parser("events", help="tail a running engine's event stream")
    events.add_argument("--state-dir", help=_STATE_DIR_HELP)
    events.add_argument("--json", action="store_true", help="one JSON object per line (default: one text line per event)")
    events.add_argument("--job", type=int, metavar="N", help="only this job's events and node events (default: all jobs)")
    events.add_argument("--kind", action="append", metavar="KIND", help="only events of this kind, e.g. TaskChanged (repeatable; default: all)")
    events.add_argument("--since", type=int, metavar="SEQ", help="first replay the events after this sequence number (default: only new ones)")

    trust = sub.add_parser("trust", help="pin an agent's SSH host key (first trust, like ssh)")
    trust.add_argument("node", metavar="HOST:PORT", help="the agent whose host key to pin")
    trust.add_argument("--config-dir", help=_CONFIG_DIR_HELP)
    trust.add_argument("--state-dir", help="tell the engine running on this state dir to use the node now (default: " + _STATE_DEFAULT + ")")
    trust.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation (default: ask)")
    trust.add_argument("--replace", action="store_true", help="replace a pinned key that changed, after you checked why (default: refuse)")
    for choice in sub._choices_actions:  # each command's --help opens with its one line
        command = sub.choices[choice.dest]
        command.description = command.description or choice.help
    return parser


_STATE_DEFAULT = "SHOAL_STATE_DIR, else the XDG state dir"
_STATE_DIR_HELP = f"engine state dir (default: {_STATE_DEFAULT})"
_CONFIG_DIR_HELP = "console config dir: key and known-hosts (default: SHOAL_CONFIG_DIR, else the XDG config dir)"


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


def _live_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", help=f"the running engine's state dir (default: {_STATE_DEFAULT})")
    p.add_argument("--json", action="store_true", help="print the answer as JSON (default: one line of text)")


def _engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node", action="append", default=[], metavar="HOST:PORT", help="an agent to use (repeatable; default: the nodes reached before)")
    p.add_argument(
        "--mdns-interface", action="append", default=[], metavar="IP",
        help="discover agents over mDNS on this interface (repeatable; default: no mDNS)",
    )
    p.add_argument("--state-dir", help=_STATE_DIR_HELP)
    p.add_argument("--config-dir", help=_CONFIG_DIR_HELP)
    p.add_argument(
        "--trust-new", action="store_true",
        help="pin the host key of a --node seen for the first time, never one found only over mDNS (default: off)",
    )


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, so a closed pipe is caught below and not at exit
        return code
    except BrokenPipeError:
        # The reader went away (`shoal results --json | head`): what it did
        # not read does not matter. Point stdout at /dev/null so the
        # interpreter's own flush at exit does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_OK


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "agent":
        from nodeagent.server import main as agent_main

        return agent_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return EXIT_USAGE
    handler: Callable[[argparse.Namespace], int] = COMMANDS[args.command]
    try:
        return handler(args)
    except UserError as exc:
        print(f"shoal: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("shoal: interrupted", file=sys.stderr)
        return 130


def cmd_demo(args: argparse.Namespace) -> int:
    from console.demo import main as demo_main

    if not 1 <= args.nodes <= 64:
        raise UserError("--nodes must be between 1 and 64")
    return demo_main(args.nodes, args.chaos, args.job or None, tui=sys.stdout.isatty() and not args.headless)


def cmd_console(args: argparse.Namespace) -> int:
    from console.launch import main as console_main

    return console_main(args)


def cmd_keys(args: argparse.Namespace) -> int:
    from engine.paths import config_dir
    from engine.trust import TrustError, load_or_create_console_key, public_key_line

    try:
        print(public_key_line(load_or_create_console_key(config_dir(args.config_dir))))
    except TrustError as exc:
        raise UserError(str(exc)) from None
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from engine.discovery import parse_node_address
    from engine.spec import SpecError, load_job_file

    try:
        spec = load_job_file(Path(args.job))
    except SpecError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"cannot read {args.job}: {exc.strerror}") from None
    for address in args.node:
        try:
            parse_node_address(address)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    return asyncio.run(_run(args, spec))


async def _run(args: argparse.Namespace, spec: Any) -> int:
    from console.headless import run_job
    from engine.api import Engine
    from engine.interface import EngineError

    try:
        engine = await Engine.open(
            args.state_dir,
            args.config_dir,
            nodes=args.node,
            mdns_interfaces=args.mdns_interface,
            trust_new=args.trust_new,
        )
    except (RuntimeError, EngineError) as exc:  # e.g. the state dir is locked, or full
        raise UserError(str(exc)) from None
    try:
        if not await engine.nodes() and not args.mdns_interface:
            raise UserError("no nodes: give --node HOST:PORT or --mdns-interface IP")
        return await run_job(engine, spec, as_json=args.json, quiet=args.quiet, wait_for_nodes=args.wait_for_nodes)
    except EngineError as exc:  # e.g. the submit found the state dir full
        raise UserError(str(exc)) from None
    finally:
        await engine.close()


def _open_store(state_dir: str | None) -> Any:
    from engine.interface import EngineError
    from engine.paths import state_dir as default_state_dir
    from engine.store import Store

    path = default_state_dir(state_dir) / "shoal.db"
    if not path.exists():
        raise UserError(f"no engine state at {path.parent} (nothing has run there yet)")
    try:
        return Store(path)
    except EngineError as exc:  # e.g. the state dir is full: SQLite cannot even map its index of the log
        raise UserError(str(exc)) from None


def cmd_jobs(args: argparse.Namespace) -> int:
    from engine.live import LiveState, job_info

    jobs = _ask(args.state_dir, lambda r: r.jobs())
    if jobs is None:  # no engine: what the store knows, unfinished jobs counted from their stored tasks
        now, nothing_live, store = time.time(), LiveState(), _open_store(args.state_dir)
        rows = store.jobs()
        for row in rows:
            if row["status"] == "running":
                row["counts"] = store.stored_counts(row["id"], row["total"])
                row["status"] = "unfinished"
        jobs = [job_info(row, None, nothing_live, now) for row in rows]
    if args.json:
        print(json.dumps([j.to_dict() for j in jobs]))
        return EXIT_OK
    print(f"{'JOB':>5}  {'NAME':<24} {'STATUS':<10} {'DONE':>12}  FAILED")
    for j in jobs:
        status = "blocked" if j.blocked else j.status
        print(f"{j.id:>5}  {j.name[:24]:<24} {status:<10} {j.done:>6}/{j.total:<5}  {j.counts.get('failed', 0)}")
    blocked = next((j.blocked for j in jobs if j.blocked), "")
    if blocked:
        print(f"blocked: {blocked}")
    return EXIT_OK


def cmd_nodes(args: argparse.Namespace) -> int:
    from engine.views import NodeInfo

    if args.action == "forget":
        return _forget_node(args)
    if args.address is not None:
        raise UserError(f"unexpected {args.address!r}: did you mean 'shoal nodes forget {args.address}'?")

    nodes = _ask(args.state_dir, lambda r: r.nodes())
    if nodes is None:
        known = _open_store(args.state_dir).known_nodes()
        nodes = [NodeInfo(id=n, state="unknown", detail="no engine running") for n in known]
    if args.json:
        print(json.dumps([n.to_dict() for n in nodes]))
        return EXIT_OK
    print(f"{'NODE':<22} {'STATE':<10} {'SLOTS':>5} {'BUSY':>4} {'CPU%':>5} {'MEM%':>5}  HOST")
    for n in nodes:
        cpu = "" if n.cpu is None else f"{n.cpu:.0f}"
        mem = "" if n.mem is None else f"{n.mem:.0f}"
        print(f"{n.id:<22} {n.state:<10} {n.slots:>5} {n.slots_busy:>4} {cpu:>5} {mem:>5}  {n.hostname}")
    return EXIT_OK


def _forget_node(args: argparse.Namespace) -> int:
    if not args.address:
        raise UserError("which node? 'shoal nodes forget HOST:PORT' (see 'shoal nodes')")
    store = _open_store(args.state_dir)
    if not store.forget_node(args.address):
        known = ", ".join(store.known_nodes()) or "none"
        raise UserError(f"{args.address} is not a remembered node (remembered: {known})")
    running = _ask(args.state_dir, lambda r: r.nodes()) is not None
    after = " once the running engine stops (it dials it until then)" if running else ""
    print(json.dumps({"ok": True, "forgotten": args.address}) if args.json else f"forgot {args.address}: no later run dials it{after}")
    return EXIT_OK


def cmd_results(args: argparse.Namespace) -> int:
    from console.headless import format_result
    from engine.reducers import results_to_csv

    store = _open_store(args.state_dir)
    spec = store.job_spec(args.job)
    if spec is None:
        raise UserError(f"no job {args.job} (see 'shoal jobs')")
    rows = store.task_results(args.job)
    unfinished = store.jobs(args.job)[0]["status"] == "running"
    result = _partial_result(spec, store.succeeded_values(args.job)) if unfinished else store.job_result(args.job)
    if unfinished and not args.csv:
        done = sum(1 for row in rows if row["status"] in ("succeeded", "failed", "cancelled"))
        print(f"shoal: job {args.job} is unfinished: the partial result of {done} of {spec.task_count()} tasks", file=sys.stderr)
    if args.json:
        print(json.dumps({"job": args.job, "result": result, "partial": unfinished, "tasks": rows}, default=repr))
    elif args.csv:
        sys.stdout.write(results_to_csv(rows, spec.items))
    else:
        print(format_result(result))
    failed = any(row["status"] == "failed" for row in rows)
    return EXIT_FAILED if failed else EXIT_OK


def _partial_result(spec: Any, values: list[tuple[int, Any]]) -> Any:
    """An unfinished job's result from its stored values, as the engine's
    reducer would have it so far (a value it refuses is left out, as the
    engine fails that task)."""
    from engine.reducers import ReducerError, make_reducer

    reducer = make_reducer(spec.reduce)
    for index, value in values:
        try:
            reducer.add(index, value)
        except ReducerError:
            pass
    return reducer.result()


def _ask(state_dir: str | None, call: Callable[[Any], Any], *, required: str = "") -> Any:
    """``call(engine)`` against the engine running on the state dir, over
    its socket. With no engine there: None, or (when ``required`` says what
    needed one) a UserError. A refused call is a UserError."""
    from engine.control import connect
    from engine.interface import EngineError
    from engine.paths import state_dir as default_state_dir

    async def ask() -> Any:
        try:
            remote = await connect(default_state_dir(state_dir))
        except EngineError as exc:
            if required:
                raise UserError(f"{exc}: {required}") from None
            return None
        try:
            return await call(remote)
        except EngineError as exc:
            raise UserError(str(exc)) from None
        finally:
            await remote.close()

    return asyncio.run(ask())


_STEERS = "drain, undrain, cancel and resubmit steer the engine of a running 'shoal run' or 'shoal console'"


def _steer(args: argparse.Namespace, call: Callable[[Any], Any], done: str) -> int:
    answer = _ask(args.state_dir, call, required=_STEERS)
    print(json.dumps({"ok": True, "answer": answer}) if args.json else done.format(answer=answer))
    return EXIT_OK


def cmd_drain(args: argparse.Namespace) -> int:
    how = "its running tasks requeued" if args.requeue else "running tasks finish there"
    return _steer(args, lambda r: r.drain(args.node, requeue=args.requeue, actor="shoal drain"), f"drained {args.node} ({how})")


def cmd_undrain(args: argparse.Namespace) -> int:
    return _steer(args, lambda r: r.undrain(args.node, actor="shoal undrain"), f"undrained {args.node}")


def cmd_resubmit(args: argparse.Namespace) -> int:
    return _steer(
        args,
        lambda r: r.resubmit(args.job, failed_only=not args.all, actor="shoal resubmit"),
        f"job {args.job}: {{answer}} tasks queued again",
    )


def cmd_cancel(args: argparse.Namespace) -> int:
    return _steer(
        args, lambda r: r.cancel(args.job, args.task, actor="shoal cancel"), f"job {args.job}: {{answer}} tasks cancelled"
    )


def cmd_events(args: argparse.Namespace) -> int:
    """Follow the engine's events until it stops (or Ctrl-C)."""

    async def follow(remote: Any) -> None:
        subscription = remote.subscribe(job=args.job, kinds=args.kind, since=args.since)
        async for event in subscription:
            print(_event_line(event, args.json), flush=True)

    _ask(args.state_dir, follow, required="'shoal events' follows a running engine")
    return EXIT_OK


def _event_line(event: Any, as_json: bool) -> str:
    from engine.events import event_to_dict

    data = event_to_dict(event)
    if as_json:
        return json.dumps(data, default=lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else repr(v))
    kind, seq, t = data.pop("event"), data.pop("seq"), data.pop("t")
    stamp = time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"
    fields = " ".join(f"{k}={v.decode('utf-8', 'replace')!r}" if isinstance(v, bytes) else f"{k}={v!r}" for k, v in data.items())
    return f"{stamp} #{seq} {kind} {fields}"


def cmd_trust(args: argparse.Namespace) -> int:
    return asyncio.run(_trust(args))


async def _trust(args: argparse.Namespace) -> int:
    from engine.discovery import parse_node_address
    from engine.link import LinkError, open_link
    from engine.paths import config_dir
    from engine.paths import state_dir as default_state_dir
    from engine.trust import (
        KnownHosts,
        TrustError,
        TrustStatus,
        fingerprint,
        load_or_create_console_key,
    )

    try:
        host, port = parse_node_address(args.node)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    cdir = config_dir(args.config_dir)
    known = KnownHosts(cdir / "known_hosts")
    try:
        key = load_or_create_console_key(cdir)
    except TrustError as exc:
        raise UserError(str(exc)) from None
    try:
        link = await open_link(host, port, client_key=key, console_id="trust-probe", pinned_host_key=None, accept_unknown=True)
    except (LinkError, OSError) as exc:
        raise UserError(f"cannot reach {args.node}: {exc}") from None
    presented = link.host_key
    link.close()
    status = known.check(host, port, presented)
    fp = fingerprint(presented)
    if status is TrustStatus.TRUSTED:
        print(f"{args.node} is already trusted ({fp})")
        return EXIT_OK
    if status is TrustStatus.CHANGED and not args.replace:
        raise UserError(f"the host key of {args.node} CHANGED (now {fp}); if you know why, run again with --replace")
    if not args.yes:
        if not sys.stdin.isatty():
            raise UserError(f"{args.node} presents {fp}; confirm with --yes (stdin is not a terminal)")
        answer = input(f"{args.node} presents host key {fp}. Trust it? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("not trusted")
            return EXIT_USAGE
    known.pin(host, port, presented, replace=args.replace)
    print(f"trusted {args.node} ({fp})")
    # A running engine re-reads the pinned key when it next tries the node;
    # nudge it to try now.
    from engine.control import connect
    from engine.interface import EngineError

    try:
        remote = await connect(default_state_dir(args.state_dir))
    except EngineError:
        return EXIT_OK
    try:
        await remote.trust(args.node, replace=args.replace, actor="shoal trust")
    except EngineError:
        pass  # it has not seen this node: it will pick the key up when it does
    finally:
        await remote.close()
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": cmd_demo,
    "console": cmd_console,
    "keys": cmd_keys,
    "run": cmd_run,
    "jobs": cmd_jobs,
    "nodes": cmd_nodes,
    "results": cmd_results,
    "trust": cmd_trust,
    "drain": cmd_drain,
    "undrain": cmd_undrain,
    "resubmit": cmd_resubmit,
    "cancel": cmd_cancel,
    "events": cmd_events,
}


if __name__ == "__main__":
    sys.exit(main())
