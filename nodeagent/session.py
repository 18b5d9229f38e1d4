"""One console channel (frames in, frames out) and the hub that routes to it.

The executor reports events per owner (console id) through one listener, the
``SessionHub``; the hub hands each event to that console's live session, if
any. A session coalesces what it is handed and writes it once per event-loop
turn, so a burst of ten thousand finished tasks becomes a few ``finished``
frames in one channel write, not ten thousand writes. Results for a console
that is not connected are simply not routed: they wait in the executor's
journal until the console says hello again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncssh
import psutil

from nodeagent.consolekeys import ConsoleKeys
from nodeagent.executor import Executor, ExecutorListener
from nodeagent.protocol import (
    ERR_PROTOCOL,
    ERR_STATE,
    ERR_VERSION,
    OUTCOME_ERROR,
    PROTOCOL_VERSION,
    SUBSYSTEM,
    Ack,
    Cancel,
    Drain,
    Error,
    Finished,
    FrameDecoder,
    Heartbeat,
    Hello,
    Message,
    Output,
    Progress,
    ProtocolError,
    Rejected,
    Run,
    Started,
    TaskResult,
    Undrain,
    decode_body,
    encode,
)
from nodeagent.valuesend import ValueSender

log = logging.getLogger("shoal.agent")

HEARTBEAT_INTERVAL = 1.0
# Results per finished frame before the size check; a no-op result is ~30 bytes.
RESULTS_PER_FRAME = 4096
# Output chunks held for a console whose channel is paused. Beyond this the
# chunks are dropped: the result still carries the output's tail.
MAX_PENDING_OUTPUT_BYTES = 1024 * 1024
# While a console still has tasks here, what they report waits for the next
# write at most this long after the last one, so that several results share
# an SSH packet (each costs both ends tens of microseconds of Python). The
# console's last result, a refusal or a heartbeat goes at once, so an idle
# cluster's latency is untouched; the engine's prefetch covers the wait.
COALESCE_SECONDS = 0.050
# Chunks of spooled values per write: the channel pauses writing while they
# go out, so a big value streams at the window's pace without starving the
# other frames or piling up in memory.
VALUE_CHUNKS_PER_WRITE = 2

# Message types a console may send; anything else from a console is a
# protocol error, while one of these at the wrong moment is a state error.
CONSOLE_MESSAGES: frozenset[type[Message]] = frozenset({Hello, Run, Cancel, Ack, Drain, Undrain, Error})


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    """What the agent says about itself in its hello."""

    agent_id: str
    hostname: str
    labels: dict[str, str]
    capabilities: list[str]
    software: str


class LoadSampler:
    """Samples machine load once per heartbeat, for all sessions at once."""

    def __init__(self) -> None:
        # The first cpu_percent(None) call only sets the baseline.
        psutil.cpu_percent(interval=None)

    def sample(self, executor: Executor) -> Heartbeat:
        return Heartbeat(
            time=time.time(),
            cpu=psutil.cpu_percent(interval=None),
            mem=psutil.virtual_memory().percent,
            load=list(os.getloadavg()),
            slots_total=executor.slots_total,
            slots_busy=executor.slots_busy,
            queued=executor.queued,
            drained=executor.drained,
        )


class SessionHub(ExecutorListener):
    """The executor's listener: routes each owner's events to its live session."""

    def __init__(
        self,
        identity: AgentIdentity,
        make_executor: Callable[[ExecutorListener], Executor],
        *,
        max_frame_bytes: int,
        console_keys: ConsoleKeys | None = None,
    ) -> None:
        self.identity = identity
        self.max_frame_bytes = max_frame_bytes
        self._console_keys = console_keys if console_keys is not None else ConsoleKeys(None)
        self.executor = make_executor(self)
        self._sessions: dict[str, ConsoleSession] = {}
        self._sampler = LoadSampler()
        self._heartbeat_task: asyncio.Task[None] | None = None

    # --- sessions ----------------------------------------------------------

    def claim(self, console_id: str, principal: str) -> bool:
        """Whether the key ``principal`` may speak as ``console_id`` (the first key to claim an id owns it)."""
        return self._console_keys.claim(console_id, principal)

    def attach(self, session: ConsoleSession) -> None:
        """Make ``session`` the live one of its console, replacing an older one."""
        old = self._sessions.get(session.owner)
        self._sessions[session.owner] = session
        if old is not None and old is not session:
            old.fail(ERR_STATE, "replaced by a newer connection of the same console")

    def detach(self, session: ConsoleSession) -> None:
        if self._sessions.get(session.owner) is session:
            del self._sessions[session.owner]

    @property
    def sessions(self) -> list[ConsoleSession]:
        return list(self._sessions.values())

    def heartbeat_now(self) -> Heartbeat:
        return self._sampler.sample(self.executor)

    def start(self) -> None:
        self._heartbeat_task = asyncio.get_running_loop().create_task(self._beat())

    async def stop(self) -> None:
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            await asyncio.gather(self._heartbeat_task, return_exceptions=True)
            self._heartbeat_task = None
        for session in self.sessions:
            session.close()

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        next_beat = loop.time()
        while True:
            # Scheduled on a fixed grid so a slow turn does not drift the rate.
            next_beat += HEARTBEAT_INTERVAL
            await asyncio.sleep(max(0.0, next_beat - loop.time()))
            if not self._sessions:
                continue
            heartbeat = self._sampler.sample(self.executor)
            for session in self.sessions:
                session.queue_heartbeat(heartbeat)

    # --- ExecutorListener ----------------------------------------------------

    def task_started(self, owner: str, attempt_id: str) -> None:
        session = self._sessions.get(owner)
        if session is not None:
            session.queue_started(attempt_id)

    def task_starting(self, owner: str, attempt_id: str) -> None:
        session = self._sessions.get(owner)
        if session is not None:
            session.queue_started(attempt_id)
            session.flush()

    def task_progress(self, owner: str, attempt_id: str, fraction: float | None, message: str) -> None:
        session = self._sessions.get(owner)
        if session is not None:
            session.queue_progress(Progress(id=attempt_id, fraction=fraction, message=message))

    def task_output(self, owner: str, attempt_id: str, stream: str, data: bytes) -> None:
        session = self._sessions.get(owner)
        if session is not None:
            session.queue_output(attempt_id, stream, data)

    def task_finished(self, owner: str, result: TaskResult) -> None:
        session = self._sessions.get(owner)
        if session is not None:
            session.queue_finished(result)


class ConsoleSession(asyncssh.SSHServerSession[bytes]):
    """One ``shoal`` subsystem channel from one console."""

    def __init__(self, hub: SessionHub, on_close: Callable[[], None], principal: str = "") -> None:
        self._hub = hub
        self._principal = principal  # fingerprint of the SSH key that opened this channel
        self._on_close = on_close
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._decoder = FrameDecoder(hub.max_frame_bytes)
        self.owner = ""
        self._closing = False
        self._paused = False
        self._handlers: dict[type[Message], Callable[[Any], None]] = {
            Hello: self._on_hello,
            Error: self._on_peer_error,
        }
        self._loop = asyncio.get_running_loop()
        # Coalesced outgoing events, written by flush.
        self._flush_scheduled = False  # a flush is due on the next loop turn
        self._flush_timer: asyncio.TimerHandle | None = None  # a coalescing flush is due later
        self._last_write = 0.0
        self._rejected: dict[tuple[str, str], list[str]] = {}  # (code, reason) -> attempt ids
        self._started: list[str] = []
        self._progress: dict[str, Progress] = {}
        self._output: list[Output] = []
        self._output_bytes = 0
        self._finished: list[TaskResult] = []
        self._values = ValueSender(lambda attempt_id: hub.executor.value_path(self.owner, attempt_id))
        self._heartbeat: Heartbeat | None = None

    # --- asyncssh callbacks ----------------------------------------------------

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._chan = chan

    def subsystem_requested(self, subsystem: str) -> bool:
        return subsystem == SUBSYSTEM

    def shell_requested(self) -> bool:
        return False

    def exec_requested(self, command: str) -> bool:
        return False

    def pty_requested(self, term_type: str, term_size: Any, term_modes: Any) -> bool:
        return False

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        try:
            # Objects are dispatched one by one, so the frames before a bad
            # one in the same read still take effect.
            for obj in self._decoder.feed_raw(data):
                if self._closing:
                    return
                self._dispatch(decode_body(obj))
        except ProtocolError as exc:
            self.fail(exc.code, str(exc))
        except Exception as exc:
            # A bug on this side must cost this channel, not the whole
            # connection (asyncssh would tear that down) or other consoles.
            log.exception("console %s: handling a frame failed", self.owner or "?")
            self.fail(ERR_PROTOCOL, f"the agent failed to handle a frame: {type(exc).__name__}: {exc}")

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._chan = None
        self._values.close()
        if self.owner:
            self._hub.detach(self)
        self._on_close()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._schedule_flush()

    # --- incoming -------------------------------------------------------------

    def _dispatch(self, message: Message) -> None:
        handler = self._handlers.get(type(message))
        if handler is not None:
            handler(message)
        elif type(message) in CONSOLE_MESSAGES:
            when = "before hello" if not self.owner else "after hello"
            raise ProtocolError(f"{message.TYPE!r} is not valid {when}", ERR_STATE)
        else:
            raise ProtocolError(f"{message.TYPE!r} is not a message a console may send")

    def _on_hello(self, hello: Hello) -> None:
        if hello.role != "console":
            raise ProtocolError(f"hello: expected role 'console', got {hello.role!r}")
        if hello.version != PROTOCOL_VERSION:
            raise ProtocolError(
                f"console speaks protocol version {hello.version}, "
                f"this agent speaks version {PROTOCOL_VERSION}",
                ERR_VERSION,
            )
        if not hello.id:
            raise ProtocolError("hello: field 'id' is empty")
        if not self._hub.claim(hello.id, self._principal):
            raise ProtocolError(f"hello: console id {hello.id!r} belongs to another key")
        self.owner = hello.id
        self._handlers = {
            Run: self._on_run,
            Cancel: self._on_cancel,
            Ack: self._on_ack,
            Drain: self._on_drain,
            Undrain: self._on_undrain,
            Error: self._on_peer_error,
        }
        self._hub.attach(self)
        executor = self._hub.executor
        ident = self._hub.identity
        unacked = executor.unacked(self.owner)
        # Attempts whose result is not acked yet count as held: the console
        # may act on the hello before it reads the results that follow (a
        # value in pieces takes several writes), and must not think them
        # gone and run them again meanwhile.
        reply = Hello(
            version=PROTOCOL_VERSION,
            role="agent",
            id=ident.agent_id,
            hostname=ident.hostname,
            slots=executor.slots_total,
            labels=ident.labels,
            capabilities=ident.capabilities,
            drained=executor.drained,
            holding=executor.holding(self.owner) + [result.id for result in unacked],
            software=ident.software,
        )
        # The hello goes out first, ahead of anything coalesced; the journal's
        # unacked results follow in the same flush.
        self._write(encode(reply))
        for result in unacked:
            (self._values.add if result.value_size else self._finished.append)(result)
        self._heartbeat = self._hub.heartbeat_now()
        self._schedule_flush()
        log.info("console %s connected", self.owner)

    def _on_run(self, run: Run) -> None:
        for attempt_id, code, reason in self._hub.executor.submit(self.owner, run.tasks):
            self._rejected.setdefault((code, reason), []).append(attempt_id)
        if self._rejected:
            self._schedule_flush()

    def _on_cancel(self, cancel: Cancel) -> None:
        self._hub.executor.cancel(self.owner, cancel.ids)

    def _on_ack(self, ack: Ack) -> None:
        self._hub.executor.ack(self.owner, ack.ids)

    def _on_drain(self, _: Drain) -> None:
        self._hub.executor.drain()
        self._broadcast_heartbeat()

    def _on_undrain(self, _: Undrain) -> None:
        self._hub.executor.undrain()
        self._broadcast_heartbeat()

    def _broadcast_heartbeat(self) -> None:
        # Drain state is agent-wide: every console learns of it at once
        # rather than on the next tick.
        heartbeat = self._hub.heartbeat_now()
        for session in self._hub.sessions:
            session.queue_heartbeat(heartbeat)

    def _on_peer_error(self, error: Error) -> None:
        log.warning("console %s reported %s: %s", self.owner or "?", error.code, error.message)
        self.close()

    # --- outgoing -------------------------------------------------------------

    def queue_started(self, attempt_id: str) -> None:
        self._started.append(attempt_id)
        self._schedule_flush(urgent=False)

    def queue_progress(self, progress: Progress) -> None:
        # Only the latest progress of an attempt matters to the console.
        self._progress[progress.id] = progress
        self._schedule_flush(urgent=False)

    def queue_output(self, attempt_id: str, stream: str, data: bytes) -> None:
        if self._output_bytes + len(data) > MAX_PENDING_OUTPUT_BYTES:
            return
        self._output_bytes += len(data)
        last = self._output[-1] if self._output else None
        if last is not None and last.id == attempt_id and last.stream == stream:
            self._output[-1] = Output(id=attempt_id, stream=stream, data=last.data + data)
        else:
            self._output.append(Output(id=attempt_id, stream=stream, data=data))
        self._schedule_flush(urgent=False)

    def queue_finished(self, result: TaskResult) -> None:
        if result.value_size:  # its value waits in a spool file: it goes out in pieces
            self._values.add(result)
            self._schedule_flush()
            return
        self._finished.append(result)
        if self._hub.executor.holds_any(self.owner):
            self._schedule_flush(urgent=False)
        else:
            # Its last task here: nothing more can join this write, so it
            # goes now rather than a loop turn later (the round trip of a
            # lone task is what a waiting user feels).
            self.flush()

    def queue_heartbeat(self, heartbeat: Heartbeat) -> None:
        self._heartbeat = heartbeat
        self._schedule_flush()

    def _schedule_flush(self, urgent: bool = True) -> None:
        if self._flush_scheduled or self._closing:
            return
        loop = self._loop
        due = self._last_write + COALESCE_SECONDS
        if urgent or due <= loop.time():
            if self._flush_timer is not None:
                self._flush_timer.cancel()
                self._flush_timer = None
            self._flush_scheduled = True
            loop.call_soon(self.flush)
        elif self._flush_timer is None:
            self._flush_timer = loop.call_at(due, self.flush)

    def flush(self) -> None:
        """Write what is queued now (it is also what a scheduled flush runs)."""
        self._flush_scheduled = False
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._closing or self._paused:
            # resume_writing schedules the next flush; results are safe in
            # the journal meanwhile.
            return
        parts: list[bytes] = []
        for (code, reason), ids in self._rejected.items():
            parts.append(encode(Rejected(ids=ids, reason=reason, code=code)))
        self._rejected = {}
        finished = self._finished
        done = {r.id for r in finished} if finished and (self._started or self._progress) else set()
        started = [i for i in self._started if i not in done] if done else self._started
        if started:
            parts.append(encode(Started(ids=started)))
        self._started = []
        for attempt_id, progress in self._progress.items():
            if attempt_id not in done:
                parts.append(encode(progress))
        self._progress = {}
        parts.extend(encode(output) for output in self._output)
        self._output = []
        self._output_bytes = 0
        if finished:
            self._finished = []
            parts.extend(self._finished_frames(finished))
        if self._heartbeat is not None:
            parts.append(encode(self._heartbeat))
            self._heartbeat = None
        if self._values:
            parts.extend(self._values.frames(VALUE_CHUNKS_PER_WRITE))
        if parts:
            self._write(b"".join(parts))
            self._last_write = self._loop.time()
        if self._values and not self._paused:
            self._schedule_flush()  # the channel still takes more: the next chunks

    def _finished_frames(self, results: list[TaskResult]) -> list[bytes]:
        frames: list[bytes] = []
        for start in range(0, len(results), RESULTS_PER_FRAME):
            frames.extend(self._fit(results[start : start + RESULTS_PER_FRAME]))
        return frames

    def _fit(self, results: list[TaskResult]) -> list[bytes]:
        """Frames for ``results``, split until each is within the frame cap."""
        frame = encode(Finished(results=results))
        if len(frame) <= self._hub.max_frame_bytes:
            return [frame]
        if len(results) > 1:
            half = len(results) // 2
            return self._fit(results[:half]) + self._fit(results[half:])
        # One result alone is over the cap: the console could never accept it,
        # so it gets an error it can ack (which clears the journal entry).
        big = results[0]
        return [
            encode(
                Finished(
                    results=[
                        TaskResult(
                            id=big.id,
                            outcome=OUTCOME_ERROR,
                            error=f"result of {len(frame)} bytes exceeds the frame limit "
                            f"of {self._hub.max_frame_bytes} bytes",
                            exit_code=big.exit_code,
                            started=big.started,
                            ended=big.ended,
                        )
                    ]
                )
            )
        ]

    def _write(self, data: bytes) -> None:
        if self._chan is None or self._closing:
            return
        try:
            self._chan.write(data)
        except (BrokenPipeError, ConnectionError, asyncssh.Error) as exc:
            # The console closed the channel while this end could not see it
            # (e.g. the agent was stopped with SIGSTOP and the console gave
            # up on it): asyncssh knows before connection_lost has run. A
            # closed channel is a closed session; what was being written is
            # results still in the journal, sent again on the next hello.
            log.info(
                "console %s: channel closed (%s); its results stay journaled for its next connection",
                self.owner or "?", exc or type(exc).__name__,
            )
            self.close()

    # --- closing --------------------------------------------------------------

    def fail(self, code: str, message: str) -> None:
        """Tell the console what broke, then close this channel only."""
        if self._closing:
            return
        log.warning("closing channel of console %s: %s: %s", self.owner or "?", code, message)
        self._write(encode(Error(code=code, message=message)))
        self.close()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self.owner:
            self._hub.detach(self)
        if self._chan is not None:
            # close() flushes what is buffered (an error frame) before closing.
            self._chan.close()
