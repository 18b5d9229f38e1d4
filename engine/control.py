"""The engine's API and event stream for other local clients.

A running engine listens on a Unix socket in its state dir (mode 0600, and
the peer's uid is checked: only the engine's own user and root are served;
no TCP). ``RemoteEngine`` implements ``EngineAPI`` over it, so ``shoal
drain``, a later console or a script steer a job another process started
exactly as they would an embedded engine.

Wire: a stream of msgpack maps, each at most ``MAX_REQUEST_BYTES``.
Request ``{"id": n, "call": "drain", "args": {...}}``; reply
``{"id": n, "ok": value}`` or ``{"id": n, "error": "one line", "kind": k}``
(``kind``: ``engine`` for a refused call, ``timeout``, ``request`` for a
malformed one). Requests run concurrently, so replies come in any order: a
``wait`` in progress never delays ``nodes()``. ``subscribe`` (with ``job``,
``kinds``, ``since``) starts a stream of ``{"sub": id, "event": {...}}`` on
the same connection until ``unsubscribe``. Only the calls in ``CALLS``
exist, each with a schema of its arguments; a request that does not fit gets
an error reply, and bytes that are not msgpack end that connection, never
the server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any

import msgpack

from engine import events as ev
from engine.interface import EngineAPI, EngineError
from engine.spec import JobSpec, SpecError
from engine.views import AuditEntry, JobInfo, LoadSample, NodeInfo, TaskDetail, TaskPage

log = logging.getLogger("shoal.control")

SOCKET_NAME = "engine.sock"
MAX_REQUEST_BYTES = 16 * 1024 * 1024  # what the engine reads from a client, per request
MAX_REPLY_BYTES = 1024 * 1024 * 1024  # what a client reads: a whole job's results can be big
MAX_SUBSCRIPTIONS = 16  # event streams one connection may hold
MAX_IN_FLIGHT = 256  # requests one connection may have running at once; past it, reading waits

# --- argument schemas ------------------------------------------------------------

# A schema maps an argument to (check, required). bool is not an int here:
# ``True`` as a job id is a malformed request, not job 1.
Check = Callable[[Any], bool]


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _map(v: Any) -> bool:
    return isinstance(v, dict)


def _opt(check: Check) -> Check:
    return lambda v: v is None or check(v)


def _list_of(check: Check) -> Check:
    return lambda v: isinstance(v, list) and all(check(x) for x in v)


Schema = dict[str, tuple[Check, bool]]
_JOB: Schema = {"job_id": (_int, True)}
_ACTOR: Schema = {"actor": (_str, False)}
SCHEMAS: dict[str, Schema] = {
    "submit": {"spec": (_map, True), **_ACTOR},
    "jobs": {},
    "job": _JOB,
    "result": _JOB,
    "wait": {**_JOB, "timeout": (_opt(_num), False)},
    "cancel": {**_JOB, "indices": (_opt(_list_of(_int)), False), **_ACTOR},
    "resubmit": {**_JOB, "indices": (_opt(_list_of(_int)), False), "failed_only": (_bool, False), **_ACTOR},
    "tasks": {
        **_JOB,
        "status": (_opt(_str), False),
        "node": (_opt(_str), False),
        "text": (_opt(_str), False),
        "order": (_str, False),
        "descending": (_bool, False),
        "offset": (_int, False),
        "limit": (_int, False),
    },
    "task": {**_JOB, "index": (_int, True)},
    "task_results": _JOB,
    "nodes": {},
    "node_history": {"node": (_str, True), "seconds": (_num, False)},
    "drain": {"node": (_str, True), "requeue": (_bool, False), **_ACTOR},
    "undrain": {"node": (_str, True), **_ACTOR},
    "trust": {"node": (_str, True), "replace": (_bool, False), **_ACTOR},
    "add_node": {"address": (_str, True)},
    "audit": {"limit": (_int, False)},
    "subscribe": {"job": (_opt(_int), False), "kinds": (_opt(_list_of(_str)), False), "since": (_opt(_int), False)},
    "unsubscribe": {"sub": (_int, True)},
}


class BadRequest(Exception):
    """A request that does not fit its schema."""


def check_request(request: Any) -> tuple[Any, str, dict[str, Any]]:
    """(id, call, args) of a well-formed request, or BadRequest."""
    if not isinstance(request, dict):
        raise BadRequest("a request must be a map")
    rid = request.get("id")
    if not _int(rid):
        raise BadRequest("a request needs an integer 'id'")
    name = request.get("call")
    schema = SCHEMAS.get(name) if isinstance(name, str) else None
    if schema is None:
        raise BadRequest(f"unknown call {name!r}")
    args = request.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise BadRequest(f"{name}: 'args' must be a map")
    for key, value in args.items():
        rule = schema.get(key) if isinstance(key, str) else None
        if rule is None:
            raise BadRequest(f"{name}: unknown argument {key!r}")
        if not rule[0](value):
            raise BadRequest(f"{name}: bad value for {key!r}: {value!r:.80}")
    missing = [key for key, (_, required) in schema.items() if required and key not in args]
    if missing:
        raise BadRequest(f"{name}: missing argument {missing[0]!r}")
    return rid, str(name), args


# --- the server --------------------------------------------------------------------


def peer_credentials(sock: socket.socket | None) -> tuple[int, int] | None:
    """(pid, uid) of the process at the other end of a Unix socket."""
    if sock is None:
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    pid, uid, _gid = struct.unpack("3i", creds)
    return pid, uid


def _wire(value: Any) -> Any:
    """A view (or a list of views) as msgpack-ready data."""
    if isinstance(value, list):
        return [_wire(v) for v in value]
    to_dict = getattr(value, "to_dict", None)
    return to_dict() if callable(to_dict) else value


async def _answer(engine: EngineAPI, name: str, args: dict[str, Any], actor: str) -> Any:
    """Carry out one (well-formed) call; its value as wire data."""
    if "actor" in SCHEMAS[name]:
        # Who asked, as the client says, and who it is, as the kernel says.
        args = {**args, "actor": f"{args.get('actor') or 'client'}@{actor}"}
    if name == "submit":
        try:
            args["spec"] = JobSpec.from_dict(args["spec"])
        except SpecError as exc:
            raise EngineError(str(exc)) from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise EngineError(f"bad job spec: {type(exc).__name__}: {exc}") from None
    method: Callable[..., Awaitable[Any]] = getattr(engine, name)
    return _wire(await method(**args))


class Connection:
    """One client: requests in, replies and events out, concurrently."""

    def __init__(self, engine: EngineAPI, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, actor: str) -> None:
        self.engine = engine
        self.reader = reader
        self.writer = writer
        self.actor = actor
        self._write_lock = asyncio.Lock()
        self._calls: set[asyncio.Task[None]] = set()
        self._subs: dict[int, tuple[ev.EventQueue, asyncio.Task[None]]] = {}

    async def serve(self) -> None:
        unpacker = msgpack.Unpacker(max_buffer_size=MAX_REQUEST_BYTES, strict_map_key=False, raw=False, ext_hook=_no_ext)
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    return
                try:
                    unpacker.feed(data)
                    requests = list(unpacker)
                except msgpack.BufferFull:
                    await self.send({"id": None, "error": f"malformed request: larger than {MAX_REQUEST_BYTES} bytes", "kind": "request"})
                    return
                except Exception as exc:  # msgpack raises several types for garbage
                    await self.send({"id": None, "error": f"malformed request: {exc}", "kind": "request"})
                    return  # the stream cannot be resynchronised
                for request in requests:
                    while len(self._calls) >= MAX_IN_FLIGHT:
                        # Read no more until some finish: a client that sends
                        # and never reads fills its own socket, not our memory.
                        await asyncio.wait(self._calls, return_when=asyncio.FIRST_COMPLETED)
                    self._dispatch(request)
        finally:
            await self.close()

    def _dispatch(self, request: Any) -> None:
        try:
            rid, name, args = check_request(request)
        except BadRequest as exc:
            rid = request.get("id") if isinstance(request, dict) and _int(request.get("id")) else None
            self._spawn(self.send({"id": rid, "error": str(exc), "kind": "request"}))
            return
        if name == "subscribe":
            self._subscribe(rid, args)  # at once: events from this point on are the client's
        elif name == "unsubscribe":
            self._unsubscribe(args["sub"])
            self._spawn(self.send({"id": rid, "ok": True}))
        else:
            self._spawn(self._call(rid, name, args))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _call(self, rid: int, name: str, args: dict[str, Any]) -> None:
        try:
            reply = {"id": rid, "ok": await _answer(self.engine, name, args, self.actor)}
        except EngineError as exc:
            reply = {"id": rid, "error": str(exc) or type(exc).__name__, "kind": "engine"}
        except TimeoutError as exc:
            reply = {"id": rid, "error": str(exc) or "timed out", "kind": "timeout"}
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as exc:  # a bug of ours: one line to the client, one to the log
            log.warning("control call %s failed: %s: %s", name, type(exc).__name__, exc)
            reply = {"id": rid, "error": f"internal error in {name}: {type(exc).__name__}: {exc}", "kind": "engine"}
        await self.send(reply)

    def _subscribe(self, rid: int, args: dict[str, Any]) -> None:
        if len(self._subs) >= MAX_SUBSCRIPTIONS:
            # Each costs the engine a filter check per event published.
            self._spawn(self.send({"id": rid, "error": f"more than {MAX_SUBSCRIPTIONS} subscriptions", "kind": "request"}))
            return
        try:
            sub = self.engine.subscribe(job=args.get("job"), kinds=args.get("kinds"), since=args.get("since"))
        except EngineError as exc:
            self._spawn(self.send({"id": rid, "error": str(exc), "kind": "engine"}))
            return
        assert isinstance(sub, ev.EventQueue)  # what both Engine and RemoteEngine hand out
        self._subs[rid] = (sub, asyncio.ensure_future(self._pump(rid, sub)))
        self._spawn(self.send({"id": rid, "ok": True}))

    async def _pump(self, rid: int, sub: ev.EventQueue) -> None:
        """Events to the client; a client that does not read blocks only
        this pump, and its subscription lags instead of the engine."""
        try:
            async for event in sub:
                await self.send({"sub": rid, "event": ev.event_to_dict(event)})
        except (ConnectionError, asyncio.CancelledError):
            pass
        else:
            # The engine stopped: say so, so the client's iteration ends.
            await self.send({"sub": rid, "end": True})

    def _unsubscribe(self, rid: int) -> None:
        entry = self._subs.pop(rid, None)
        if entry is not None:
            entry[0].close()

    async def send(self, message: dict[str, Any]) -> None:
        data = msgpack.packb(message, use_bin_type=True, default=repr)
        async with self._write_lock:
            if self.writer.is_closing():
                return
            self.writer.write(data)
            try:
                await self.writer.drain()
            except ConnectionError:
                pass

    async def close(self) -> None:
        for sub, pump in self._subs.values():
            sub.close()
            pump.cancel()
        self._subs.clear()
        for task in list(self._calls):
            task.cancel()
        await asyncio.gather(*self._calls, return_exceptions=True)
        self.writer.close()


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack ext type {code} is not allowed")


class ControlServer:
    def __init__(self, engine: EngineAPI, path: Path) -> None:
        self.engine = engine
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        # The engine lock is held, so a socket file left here is stale.
        self.path.unlink(missing_ok=True)
        old = os.umask(0o177)  # born 0600: no window where others may connect
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._clients):
                task.cancel()
            await asyncio.gather(*self._clients, return_exceptions=True)
            self._server = None
        self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            creds = peer_credentials(writer.get_extra_info("socket"))
            if creds is None or creds[1] not in (os.getuid(), 0):
                # Modes keep others out; this holds if the modes are ever loosened.
                who = "unknown" if creds is None else f"uid {creds[1]}"
                log.warning("control socket: refused a client of %s", who)
                writer.write(msgpack.packb({"id": None, "error": f"refused: {who} is not this engine's user", "kind": "request"}))
                writer.close()
                return
            pid, uid = creds
            await Connection(self.engine, reader, writer, f"socket:uid={uid},pid={pid}").serve()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()


# --- the client ----------------------------------------------------------------------


class RemoteSubscription(ev.EventQueue):
    """Events of a running engine, over its socket."""

    def __init__(self, engine: RemoteEngine, rid: int) -> None:
        super().__init__()
        self._engine = engine
        self._rid = rid

    def close(self) -> None:
        if not self._closed:
            self._engine._unsubscribe(self._rid)
        super().close()


class RemoteEngine:
    """A running engine, reached over its socket: ``EngineAPI``."""

    attached = True

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._reader = reader
        self._writer = writer
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._subs: dict[int, RemoteSubscription] = {}
        self._closed: str | None = None
        self._receiver = asyncio.ensure_future(self._receive())

    async def close(self) -> None:
        self._writer.close()
        self._receiver.cancel()
        try:
            await self._receiver
        except asyncio.CancelledError:
            pass
        self._shut("this client closed the connection")

    async def __aenter__(self) -> RemoteEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _receive(self) -> None:
        unpacker = msgpack.Unpacker(max_buffer_size=MAX_REPLY_BYTES, raw=False, strict_map_key=False)
        reason = "the engine closed the connection"
        try:
            while True:
                data = await self._reader.read(1 << 20)
                if not data:
                    break
                unpacker.feed(data)
                for message in unpacker:
                    self._route(message)
        except (ConnectionError, OSError) as exc:
            reason = f"lost the engine: {exc}"
        except (ValueError, msgpack.UnpackException) as exc:
            reason = f"garbled reply from the engine: {exc}"
        finally:
            self._shut(reason)

    def _route(self, message: Any) -> None:
        if not isinstance(message, dict):
            return
        sub_id = message.get("sub")
        if sub_id is not None:
            sub = self._subs.get(sub_id)
            if sub is None:
                return
            if message.get("end"):
                self._subs.pop(sub_id, None)
                sub._end()
            else:
                try:
                    sub._offer(ev.event_from_dict(message["event"]))
                except (KeyError, TypeError):
                    pass  # an event this client cannot read: skip it
            return
        rid = message.get("id")
        future = self._pending.pop(rid, None) if rid is not None else None
        if future is None:
            if rid in self._subs and "error" in message:
                self._subs.pop(rid)._end()  # the engine refused the subscription
            elif rid is None and "error" in message:
                self._shut(str(message["error"]))
            return
        if not future.done():
            future.set_result(message)

    def _shut(self, reason: str) -> None:
        if self._closed is None:
            self._closed = reason
        for future in self._pending.values():
            if not future.done():
                future.set_exception(EngineError(self._closed))
        self._pending.clear()
        for sub in self._subs.values():
            sub._end()
        self._subs.clear()

    def _send(self, name: str, args: dict[str, Any]) -> int:
        if self._closed is not None:
            raise EngineError(self._closed)
        self._next_id += 1
        self._writer.write(msgpack.packb({"id": self._next_id, "call": name, "args": args}, use_bin_type=True))
        return self._next_id

    async def call(self, name: str, **args: Any) -> Any:
        """One call by name (the typed methods below use this)."""
        rid = self._send(name, args)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        await self._writer.drain()
        answer = await future
        if "error" in answer:
            if answer.get("kind") == "timeout":
                raise TimeoutError(answer["error"])
            raise EngineError(answer["error"])
        return answer.get("ok")

    # --- EngineAPI --------------------------------------------------------------

    async def submit(self, spec: JobSpec, *, actor: str = "api") -> int:
        return int(await self.call("submit", spec=spec.to_dict(), actor=actor))

    async def jobs(self) -> list[JobInfo]:
        return [JobInfo.from_dict(d) for d in await self.call("jobs")]

    async def job(self, job_id: int) -> JobInfo:
        return JobInfo.from_dict(await self.call("job", job_id=job_id))

    async def result(self, job_id: int) -> Any:
        return await self.call("result", job_id=job_id)

    async def wait(self, job_id: int, timeout: float | None = None) -> str:
        return str(await self.call("wait", job_id=job_id, timeout=timeout))

    async def cancel(self, job_id: int, indices: list[int] | None = None, *, actor: str = "api") -> int:
        return int(await self.call("cancel", job_id=job_id, indices=indices, actor=actor))

    async def resubmit(
        self, job_id: int, indices: list[int] | None = None, *, failed_only: bool = True, actor: str = "api"
    ) -> int:
        return int(await self.call("resubmit", job_id=job_id, indices=indices, failed_only=failed_only, actor=actor))

    async def tasks(
        self,
        job_id: int,
        *,
        status: str | None = None,
        node: str | None = None,
        text: str | None = None,
        order: str = "index",
        descending: bool = False,
        offset: int = 0,
        limit: int = 100,
    ) -> TaskPage:
        answer = await self.call(
            "tasks", job_id=job_id, status=status, node=node, text=text, order=order,
            descending=descending, offset=offset, limit=limit,
        )
        return TaskPage.from_dict(answer)

    async def task(self, job_id: int, index: int) -> TaskDetail:
        return TaskDetail.from_dict(await self.call("task", job_id=job_id, index=index))

    async def task_results(self, job_id: int) -> list[dict[str, Any]]:
        return list(await self.call("task_results", job_id=job_id))

    async def nodes(self) -> list[NodeInfo]:
        return [NodeInfo.from_dict(d) for d in await self.call("nodes")]

    async def node_history(self, node: str, seconds: float = 60.0) -> list[LoadSample]:
        return [LoadSample.from_dict(d) for d in await self.call("node_history", node=node, seconds=seconds)]

    async def drain(self, node: str, *, requeue: bool = False, actor: str = "api") -> None:
        await self.call("drain", node=node, requeue=requeue, actor=actor)

    async def undrain(self, node: str, *, actor: str = "api") -> None:
        await self.call("undrain", node=node, actor=actor)

    async def trust(self, node: str, *, replace: bool = False, actor: str = "api") -> str:
        return str(await self.call("trust", node=node, replace=replace, actor=actor))

    async def add_node(self, address: str) -> None:
        await self.call("add_node", address=address)

    async def audit(self, limit: int = 200) -> list[AuditEntry]:
        return [AuditEntry.from_dict(d) for d in await self.call("audit", limit=limit)]

    def subscribe(
        self, *, job: int | None = None, kinds: Collection[str] | None = None, since: int | None = None
    ) -> RemoteSubscription:
        """Events from the moment this returns (the request is on its way
        before any later call's), or from ``since``."""
        try:
            ev.parse_kinds(kinds)  # refuse a bad kind here, as the engine would
        except ValueError as exc:
            raise EngineError(str(exc)) from None
        rid = self._send("subscribe", {"job": job, "kinds": None if kinds is None else list(kinds), "since": since})
        sub = RemoteSubscription(self, rid)
        self._subs[rid] = sub
        return sub

    def _unsubscribe(self, rid: int) -> None:
        if self._subs.pop(rid, None) is not None and self._closed is None and not self._writer.is_closing():
            self._send("unsubscribe", {"sub": rid})


async def connect(state_dir: Path) -> RemoteEngine:
    """The engine running on ``state_dir``; EngineError when none is."""
    path = state_dir / SOCKET_NAME
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        raise EngineError(f"no shoal engine is running for {state_dir}") from None
    except OSError as exc:
        raise EngineError(f"cannot reach the engine at {path}: {exc.strerror or exc}") from None
    return RemoteEngine(reader, writer, state_dir)


def _implements_api(engine: RemoteEngine) -> EngineAPI:
    return engine  # mypy checks here that RemoteEngine is an EngineAPI
