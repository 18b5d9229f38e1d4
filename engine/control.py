"""The engine's API and event stream for other local clients.

A running engine listens on a Unix socket in its state dir (mode 0600; no
TCP): ``shoal drain``, ``shoal resubmit``, a later console, or a script can
steer a job that another process started. ``RemoteEngine`` has the same
method names as ``Engine``; calls that need the engine are ``async``.

Wire: msgpack maps, one per request or reply, size-capped.
Request ``{"id": n, "call": "drain", "args": {...}}``; reply
``{"id": n, "ok": value}`` or ``{"id": n, "error": "one line"}``. The call
``subscribe`` turns the connection into a stream of ``{"event": ...}`` maps.
Only the calls in ``CALLS`` exist; anything else is refused by name.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import msgpack

from engine import events as ev
from engine.spec import JobSpec

if TYPE_CHECKING:
    from engine.api import Engine

SOCKET_NAME = "engine.sock"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class ControlError(Exception):
    """A call the engine refused, or no engine to talk to."""


def _actor(writer: asyncio.StreamWriter) -> str:
    sock = writer.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _ = struct.unpack("3i", creds)
        return f"socket:uid={uid},pid={pid}"
    except (OSError, AttributeError):
        return "socket"


def _calls(engine: Engine, actor: str) -> dict[str, Callable[..., Any]]:
    """What a socket client may ask: the Engine API, audited under ``actor``."""

    async def wait(job_id: int, timeout: float | None = None) -> str:
        return await engine.wait(job_id, timeout)

    return {
        "jobs": engine.jobs,
        "nodes": engine.nodes,
        "counts": engine.counts,
        "result": engine.result,
        "task_results": engine.task_results,
        "job_status": engine.job_status,
        "submit": lambda spec: engine.submit(JobSpec.from_dict(spec), actor=actor),
        "wait": wait,
        "resubmit": lambda job_id, failed_only=True: engine.resubmit(job_id, failed_only, actor=actor),
        "cancel": lambda job_id, indices=None: engine.cancel(job_id, indices, actor=actor),
        "drain": lambda node, requeue=False: engine.drain(node, requeue, actor=actor),
        "undrain": lambda node: engine.undrain(node, actor=actor),
        "trust": lambda node, replace=False: engine.trust(node, replace),
    }


class ControlServer:
    def __init__(self, engine: Engine, path: Path) -> None:
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
        calls = _calls(self.engine, _actor(writer))
        unpacker = msgpack.Unpacker(max_buffer_size=MAX_MESSAGE_BYTES, strict_map_key=True, raw=False)
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                try:
                    unpacker.feed(data)
                    requests = list(unpacker)
                except Exception as exc:  # msgpack raises several types for garbage
                    await _reply(writer, {"id": None, "error": f"malformed request: {exc}"})
                    return
                for request in requests:
                    if isinstance(request, dict) and request.get("call") == "subscribe":
                        await self._stream(writer)
                        return
                    await _reply(writer, await _answer(calls, request))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()

    async def _stream(self, writer: asyncio.StreamWriter) -> None:
        subscription = self.engine.events()
        try:
            await _reply(writer, {"id": None, "ok": "subscribed"})
            async for event in subscription:
                await _reply(writer, ev.event_to_dict(event))
        finally:
            subscription.close()


async def _answer(calls: dict[str, Callable[..., Any]], request: Any) -> dict[str, Any]:
    if not isinstance(request, dict):
        return {"id": None, "error": "a request must be a map"}
    rid = request.get("id")
    name = request.get("call")
    args = request.get("args") or {}
    handler = calls.get(name) if isinstance(name, str) else None
    if handler is None:
        return {"id": rid, "error": f"unknown call {name!r}"}
    if not isinstance(args, dict):
        return {"id": rid, "error": "'args' must be a map"}
    try:
        value = handler(**args)
        if isinstance(value, Awaitable):
            value = await value
    except (KeyError, ValueError, TypeError, RuntimeError, TimeoutError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        return {"id": rid, "error": str(message) or type(exc).__name__}
    return {"id": rid, "ok": value}


async def _reply(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(msgpack.packb(message, use_bin_type=True, default=repr))
    await writer.drain()


class RemoteEngine:
    """A running engine, reached over its socket. Same names as ``Engine``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._reader = reader
        self._writer = writer
        self._unpacker = msgpack.Unpacker(max_buffer_size=MAX_MESSAGE_BYTES, raw=False, strict_map_key=False)
        self._next_id = 0
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        self._writer.close()

    async def __aenter__(self) -> RemoteEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _read_one(self) -> Any:
        while True:
            for message in self._unpacker:
                return message
            data = await self._reader.read(65536)
            if not data:
                raise ControlError("the engine closed the connection")
            self._unpacker.feed(data)

    async def call(self, name: str, **args: Any) -> Any:
        async with self._lock:
            self._next_id += 1
            await _reply(self._writer, {"id": self._next_id, "call": name, "args": args})
            answer = await self._read_one()
        if "error" in answer:
            raise ControlError(answer["error"])
        return answer["ok"]

    async def jobs(self) -> list[dict[str, Any]]:
        return list(await self.call("jobs"))

    async def nodes(self) -> list[dict[str, Any]]:
        return list(await self.call("nodes"))

    async def counts(self, job_id: int) -> dict[str, int]:
        return dict(await self.call("counts", job_id=job_id))

    async def result(self, job_id: int) -> Any:
        return await self.call("result", job_id=job_id)

    async def task_results(self, job_id: int) -> list[dict[str, Any]]:
        return list(await self.call("task_results", job_id=job_id))

    async def job_status(self, job_id: int) -> str:
        return str(await self.call("job_status", job_id=job_id))

    async def submit(self, spec: JobSpec) -> int:
        return int(await self.call("submit", spec=spec.to_dict()))

    async def wait(self, job_id: int, timeout: float | None = None) -> str:
        return str(await self.call("wait", job_id=job_id, timeout=timeout))

    async def resubmit(self, job_id: int, failed_only: bool = True) -> int:
        return int(await self.call("resubmit", job_id=job_id, failed_only=failed_only))

    async def cancel(self, job_id: int, indices: list[int] | None = None) -> None:
        await self.call("cancel", job_id=job_id, indices=indices)

    async def drain(self, node: str, requeue: bool = False) -> None:
        await self.call("drain", node=node, requeue=requeue)

    async def undrain(self, node: str) -> None:
        await self.call("undrain", node=node)

    async def trust(self, node: str, replace: bool = False) -> str:
        return str(await self.call("trust", node=node, replace=replace))

    async def events(self) -> EventStream:
        """Subscribe to the engine's event stream (on a connection of its own);
        events from the moment this returns are delivered."""
        reader, writer = await asyncio.open_unix_connection(str(self.state_dir / SOCKET_NAME))
        connection = RemoteEngine(reader, writer, self.state_dir)
        await _reply(writer, {"id": 0, "call": "subscribe"})
        await connection._read_one()  # "subscribed"
        return EventStream(connection)


class EventStream:
    def __init__(self, connection: RemoteEngine) -> None:
        self._connection = connection

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> ev.Event:
        try:
            return ev.event_from_dict(await self._connection._read_one())
        except ControlError:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._connection.close()


async def connect(state_dir: Path) -> RemoteEngine:
    path = state_dir / SOCKET_NAME
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        raise ControlError(
            f"no shoal engine is running for {state_dir}; start one with 'shoal run'"
        ) from None
    return RemoteEngine(reader, writer, state_dir)
