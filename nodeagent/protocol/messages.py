"""The Shoal wire messages: frozen dataclasses with hand-written field checks
(decoding sits on the hot path).

A frame is one msgpack map with a ``type`` string and the message's fields.
Fields equal to their default are left out on the wire, so a no-op task's
result costs a few bytes. Unknown fields are ignored (room to grow); unknown
types, missing or mistyped fields are ``ProtocolError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, cast

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024

# A task's value: whole, or the task fails. A run task's ``max_result`` caps
# it (default DEFAULT_MAX_RESULT); a big value travels in ``value`` frames of
# at most VALUE_CHUNK_BYTES each, ahead of the result that names its size, so
# no frame ever comes near the frame cap.
DEFAULT_MAX_RESULT = 16 * 1024 * 1024
MAX_RESULT_LIMIT = (1 << 32) - 1  # a shell value is one msgpack bin: bin32 holds at most this
VALUE_CHUNK_BYTES = 1024 * 1024  # what a sender puts in one value frame
MAX_VALUE_CHUNK_BYTES = 4 * 1024 * 1024  # what a receiver accepts in one value frame

# Task kinds carried by a run frame.
KIND_SHELL = "shell"  # argv list or shell string, run as a subprocess
KIND_CALL = "call"  # "package.module:function" imported in a worker process
KIND_PICKLE = "pickle"  # cloudpickled callable; needs the agent's --allow-pickle
TASK_KINDS = (KIND_SHELL, KIND_CALL, KIND_PICKLE)

class Outcome(StrEnum):
    """How one attempt ended, in a finished result. It also says who ended an
    attempt that did not run to its end: a console's ``cancel`` (final), the
    agent stopping (not the task's doing: run it again), or the agent dying."""

    OK = "ok"
    ERROR = "error"  # the task raised, or a shell command exited non-zero
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"  # by a console's cancel frame
    CRASHED = "crashed"  # the worker process died (signal, os._exit, OOM)
    LOST = "lost"  # the agent died while the task was queued or ran
    STOPPED = "stopped"  # the agent was stopped (SIGTERM) before the attempt could end
    TOO_BIG = "too_big"  # its value was over the job's max_result: final, a rerun makes the same


class RejectCode(StrEnum):
    """Why an agent refused attempts, in a rejected frame. The ``reason``
    text beside it is for people; a console acts on the code only."""

    DRAINING = "draining"  # transient: the agent is drained
    FULL = "full"  # transient: its queue is full
    SHUTTING_DOWN = "shutting_down"  # transient: the agent is stopping
    BAD_SPEC = "bad_spec"  # the task itself is malformed: no agent will take it
    UNSUPPORTED = "unsupported"  # this agent cannot run it (kind, pickle, slots)


# Plain ``str`` aliases (equal to the enum members) for the hot paths:
# msgpack packs an exact ``str`` faster than a subclass.
OUTCOME_OK = Outcome.OK.value
OUTCOME_ERROR = Outcome.ERROR.value
OUTCOME_TIMEOUT = Outcome.TIMEOUT.value
OUTCOME_CANCELLED = Outcome.CANCELLED.value
OUTCOME_CRASHED = Outcome.CRASHED.value
OUTCOME_LOST = Outcome.LOST.value
OUTCOME_STOPPED = Outcome.STOPPED.value
OUTCOME_TOO_BIG = Outcome.TOO_BIG.value
OUTCOMES = tuple(outcome.value for outcome in Outcome)

# Error codes of the error frame.
ERR_PROTOCOL = "protocol"  # malformed frame, unknown type, bad field
ERR_VERSION = "version"  # incompatible protocol version
ERR_FRAME_TOO_LARGE = "frame_too_large"
ERR_STATE = "state"  # a message that is not valid now (e.g. run before hello)

# A shell task reports progress with a line of this form on stdout:
#   ::shoal-progress 0.25 optional message
SHELL_PROGRESS_PREFIX = b"::shoal-progress "


class ProtocolError(Exception):
    """A frame that breaks the protocol. The receiver closes that channel."""

    def __init__(self, message: str, code: str = ERR_PROTOCOL) -> None:
        super().__init__(message)
        self.code = code


# --- field checks -----------------------------------------------------------
# Hand-written per message rather than reflected from annotations: decode is on
# the hot path (tens of thousands of results a second).


def _need(body: dict[str, Any], name: str, kind: type | tuple[type, ...], mtype: str) -> Any:
    try:
        value = body[name]
    except KeyError:
        raise ProtocolError(f"{mtype}: missing field {name!r}") from None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"{mtype}: field {name!r} has the wrong type")
    return value


def _opt(
    body: dict[str, Any], name: str, kind: type | tuple[type, ...], mtype: str, default: Any = None
) -> Any:
    value = body.get(name, default)
    if value is default:
        return value
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"{mtype}: field {name!r} has the wrong type")
    return value


def _str_list(body: dict[str, Any], name: str, mtype: str) -> list[str]:
    value = _need(body, name, list, mtype)
    for item in value:
        if not isinstance(item, str):
            raise ProtocolError(f"{mtype}: field {name!r} must hold strings")
    return cast(list[str], value)


def _str_map(body: dict[str, Any], name: str, mtype: str) -> dict[str, str] | None:
    value = _opt(body, name, dict, mtype)
    if value is not None:
        for v in value.values():
            if not isinstance(v, str):
                raise ProtocolError(f"{mtype}: field {name!r} must map strings to strings")
    return cast("dict[str, str] | None", value)


_NUMBER = (int, float)

# What each numeric field may hold. Every number from the wire is checked
# against its range (the comparison also refuses NaN, which fails every
# comparison, and infinities), on both sides: a NaN timeout would kill a task
# at once and upset the agent's timer queue; a NaN time would poison a
# console's statistics.
MAX_TIMESTAMP = 1e11  # seconds since the epoch, year 5138
MAX_TIMEOUT = 1e9  # seconds, about 31 years
MAX_SLOTS = 1 << 20
MAX_COUNT = 1 << 62  # counters: tasks queued, protocol version
MAX_EXIT_CODE = (1 << 32) - 1  # wider than POSIX's 0..255, for other platforms
MIN_EXIT_CODE = -(1 << 31)
MAX_SIGNAL = 1024
MAX_LOAD = 1e9
MAX_PERCENT = 100.0


def _in_range(value: Any, lo: float, hi: float, name: str, mtype: str) -> Any:
    """``value``, if a real number (not a bool) within ``lo``..``hi``."""
    if value.__class__ is bool or not isinstance(value, _NUMBER):
        raise ProtocolError(f"{mtype}: field {name!r} has the wrong type")
    if not lo <= value <= hi:  # NaN fails every comparison: it lands here too
        raise ProtocolError(f"{mtype}: field {name!r} must be within {lo:g}..{hi:g}, got {value!r}")
    return value


def _int_field(
    body: dict[str, Any], name: str, lo: int, hi: int, mtype: str, default: Any = KeyError
) -> Any:
    value = body.get(name, default)
    if value.__class__ is int and lo <= value <= hi:  # the common case first: decode is on the hot path
        return value
    if value is KeyError:
        raise ProtocolError(f"{mtype}: missing field {name!r}")
    if value is default:
        return value
    if value.__class__ is not int:  # msgpack decodes integers as exact ints; a bool is not one
        raise ProtocolError(f"{mtype}: field {name!r} has the wrong type")
    raise ProtocolError(f"{mtype}: field {name!r} must be within {lo}..{hi}, got {value}")


def _float_field(
    body: dict[str, Any], name: str, lo: float, hi: float, mtype: str, default: Any = KeyError
) -> Any:
    value = body.get(name, default)
    if value.__class__ is float and lo <= value <= hi:
        return value
    if value is KeyError:
        raise ProtocolError(f"{mtype}: missing field {name!r}")
    if value is default:
        return value
    return float(_in_range(value, lo, hi, name, mtype))


# --- messages -----------------------------------------------------------------


class Message:
    """Base of every message. ``TYPE`` is the wire name."""

    TYPE: ClassVar[str]

    def to_wire(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Message:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """First frame both ways. The console speaks first; the agent answers.

    ``holding`` (agent to console) lists the attempt ids of this console that
    the agent still has queued or running, so a reconnecting console knows
    which of its tasks survived. Results that finished while the console was
    away follow at once as ``finished`` frames.
    """

    TYPE: ClassVar[str] = "hello"
    version: int
    role: str  # "console" or "agent"
    id: str  # console id (stable across console restarts) or agent id
    hostname: str = ""
    slots: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    capabilities: list[str] = field(default_factory=list)
    drained: bool = False
    holding: list[str] = field(default_factory=list)
    software: str = ""

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.TYPE,
            "version": self.version,
            "role": self.role,
            "id": self.id,
            "hostname": self.hostname,
            "slots": self.slots,
            "labels": self.labels,
            "capabilities": self.capabilities,
            "drained": self.drained,
            "software": self.software,
        }
        if self.holding:
            body["holding"] = self.holding
        return body

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Hello:
        t = cls.TYPE
        role = _need(body, "role", str, t)
        if role not in ("console", "agent"):
            raise ProtocolError(f"hello: unknown role {role!r}")
        caps = body.get("capabilities", [])
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise ProtocolError("hello: field 'capabilities' must hold strings")
        holding = body.get("holding", [])
        if not isinstance(holding, list) or not all(isinstance(c, str) for c in holding):
            raise ProtocolError("hello: field 'holding' must hold strings")
        return cls(
            version=_int_field(body, "version", 0, MAX_COUNT, t),
            role=role,
            id=_need(body, "id", str, t),
            hostname=_opt(body, "hostname", str, t, ""),
            slots=_int_field(body, "slots", 0, MAX_SLOTS, t, 0),
            labels=_str_map(body, "labels", t) or {},
            capabilities=caps,
            drained=_opt(body, "drained", bool, t, False),
            holding=holding,
            software=_opt(body, "software", str, t, ""),
        )


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One attempt of one task, as sent in a ``run`` frame.

    ``id`` is the attempt id: unique per console, never reused, so a result
    that arrives twice (after a reconnect) is recognised and dropped.
    """

    id: str
    kind: str
    argv: list[str] | None = None  # shell: exec this argv (no shell)
    shell: str | None = None  # shell: run with /bin/sh -c
    fn: str | None = None  # call: "package.module:function"
    payload: bytes | None = None  # pickle: cloudpickle.dumps(callable)
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] | None = None  # added to the agent's environment
    cwd: str | None = None
    timeout: float | None = None  # seconds; the whole process group is killed
    slots: int = 1
    # Report the start before starting, with every result held back: the
    # console suspects this task of having killed a node (section 5.2).
    report_start: bool = False
    # Bytes the value may take (a shell task's stdout, a call's encoded
    # return value); a bigger one fails the attempt, with no value.
    max_result: int = DEFAULT_MAX_RESULT

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "kind": self.kind}
        if self.argv is not None:
            body["argv"] = self.argv
        if self.shell is not None:
            body["shell"] = self.shell
        if self.fn is not None:
            body["fn"] = self.fn
        if self.payload is not None:
            body["payload"] = self.payload
        if self.args:
            body["args"] = self.args
        if self.kwargs:
            body["kwargs"] = self.kwargs
        if self.env:
            body["env"] = self.env
        if self.cwd is not None:
            body["cwd"] = self.cwd
        if self.timeout is not None:
            body["timeout"] = self.timeout
        if self.slots != 1:
            body["slots"] = self.slots
        if self.report_start:
            body["report_start"] = True
        if self.max_result != DEFAULT_MAX_RESULT:
            body["max_result"] = self.max_result
        return body

    @classmethod
    def from_wire(cls, body: Any) -> TaskSpec:
        t = "run.task"
        if not isinstance(body, dict):
            raise ProtocolError("run: each task must be a map")
        kind = _need(body, "kind", str, t)
        if kind not in TASK_KINDS:
            raise ProtocolError(f"run.task: unknown kind {kind!r}")
        argv = _opt(body, "argv", list, t)
        if argv is not None and not all(isinstance(a, str) for a in argv):
            raise ProtocolError("run.task: field 'argv' must hold strings")
        spec = cls(
            id=_need(body, "id", str, t),
            kind=kind,
            argv=argv,
            shell=_opt(body, "shell", str, t),
            fn=_opt(body, "fn", str, t),
            payload=_opt(body, "payload", bytes, t),
            args=_opt(body, "args", list, t, None) or [],
            kwargs=_opt(body, "kwargs", dict, t, None) or {},
            env=_str_map(body, "env", t),
            cwd=_opt(body, "cwd", str, t),
            timeout=_float_field(body, "timeout", 0.0, MAX_TIMEOUT, t, None),
            slots=_int_field(body, "slots", 1, MAX_SLOTS, t, 1),
            report_start=_opt(body, "report_start", bool, t, False),
            max_result=_int_field(body, "max_result", 0, MAX_RESULT_LIMIT, t, DEFAULT_MAX_RESULT),
        )
        if kind == KIND_SHELL and (spec.argv is None) == (spec.shell is None):
            raise ProtocolError("run.task: a shell task needs exactly one of 'argv' or 'shell'")
        if kind == KIND_SHELL and spec.argv is not None and not spec.argv:
            raise ProtocolError("run.task: field 'argv' is empty")
        if kind == KIND_CALL and (spec.fn is None or ":" not in spec.fn):
            raise ProtocolError("run.task: a call task needs 'fn' as 'module:function'")
        if kind == KIND_PICKLE and spec.payload is None:
            raise ProtocolError("run.task: a pickle task needs 'payload'")
        if spec.slots < 1:
            raise ProtocolError("run.task: field 'slots' must be at least 1")
        if spec.timeout is not None and spec.timeout <= 0:
            raise ProtocolError("run.task: field 'timeout' must be positive")
        return spec


@dataclass(frozen=True, slots=True)
class Run(Message):
    """Console to agent: start these attempts (a batch)."""

    TYPE: ClassVar[str] = "run"
    tasks: list[TaskSpec]

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "tasks": [task.to_wire() for task in self.tasks]}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Run:
        tasks = _need(body, "tasks", list, cls.TYPE)
        return cls(tasks=[TaskSpec.from_wire(task) for task in tasks])


@dataclass(frozen=True, slots=True)
class _IdsMessage(Message):
    ids: list[str]

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "ids": self.ids}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Message:
        return cls(ids=_str_list(body, "ids", cls.TYPE))


@dataclass(frozen=True, slots=True)
class Cancel(_IdsMessage):
    """Console to agent: cancel these attempts (queued or running)."""

    TYPE: ClassVar[str] = "cancel"


@dataclass(frozen=True, slots=True)
class Ack(_IdsMessage):
    """Console to agent: these results are safely stored; forget them."""

    TYPE: ClassVar[str] = "ack"


@dataclass(frozen=True, slots=True)
class Started(_IdsMessage):
    """Agent to console: these attempts began to run."""

    TYPE: ClassVar[str] = "started"


@dataclass(frozen=True, slots=True)
class Drain(Message):
    """Console to agent: accept no new tasks; running ones finish."""

    TYPE: ClassVar[str] = "drain"

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Drain:
        return cls()


@dataclass(frozen=True, slots=True)
class Undrain(Message):
    """Console to agent: accept tasks again."""

    TYPE: ClassVar[str] = "undrain"

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Undrain:
        return cls()


@dataclass(frozen=True, slots=True)
class Rejected(Message):
    """Agent to console: these attempts were not accepted and never ran.
    ``code`` is a ``RejectCode`` value (kept a plain string so a newer
    agent's code is not a protocol error); ``reason`` is one line for people."""

    TYPE: ClassVar[str] = "rejected"
    ids: list[str]
    reason: str
    code: str = ""  # absent from agents older than the codes

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.TYPE, "ids": self.ids, "reason": self.reason}
        if self.code:
            body["code"] = self.code
        return body

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Rejected:
        t = cls.TYPE
        return cls(ids=_str_list(body, "ids", t), reason=_need(body, "reason", str, t), code=_opt(body, "code", str, t, ""))


@dataclass(frozen=True, slots=True)
class Progress(Message):
    """Agent to console: a running attempt reported progress."""

    TYPE: ClassVar[str] = "progress"
    id: str
    fraction: float | None = None  # 0.0 .. 1.0, or None when unknown
    message: str = ""

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.TYPE, "id": self.id}
        if self.fraction is not None:
            body["fraction"] = self.fraction
        if self.message:
            body["message"] = self.message
        return body

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Progress:
        t = cls.TYPE
        fraction = _float_field(body, "fraction", 0.0, 1.0, t, None)
        return cls(
            id=_need(body, "id", str, t),
            fraction=None if fraction is None else float(fraction),
            message=_opt(body, "message", str, t, ""),
        )


@dataclass(frozen=True, slots=True)
class Output(Message):
    """Agent to console: a chunk of a running attempt's stdout or stderr."""

    TYPE: ClassVar[str] = "output"
    id: str
    stream: str  # "stdout" or "stderr"
    data: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "id": self.id, "stream": self.stream, "data": self.data}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Output:
        t = cls.TYPE
        stream = _need(body, "stream", str, t)
        if stream not in ("stdout", "stderr"):
            raise ProtocolError(f"output: unknown stream {stream!r}")
        return cls(id=_need(body, "id", str, t), stream=stream, data=_need(body, "data", bytes, t))


@dataclass(frozen=True, slots=True)
class TaskResult:
    """The outcome of one attempt, as journaled by the agent and sent in ``finished``.

    ``value`` is the Python callable's return value (msgpack types); a shell
    task's output is in ``stdout``/``stderr`` (the last 64 KiB of each).
    """

    id: str
    outcome: str
    value: Any = None
    error: str = ""  # one line: exception type and message, or why it failed
    traceback: str = ""
    exit_code: int | None = None
    signal: int | None = None
    started: float = 0.0  # wall-clock seconds on the agent
    ended: float = 0.0
    stdout: bytes = b""
    stderr: bytes = b""
    # Non-zero: the value is not in ``value`` but was sent ahead in ``value``
    # frames, this many bytes of msgpack in all (agent side: it waits in a
    # spool file next to the journal). Last, so older journal records load.
    value_size: int = 0

    @property
    def ok(self) -> bool:
        return self.outcome == OUTCOME_OK

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "outcome": self.outcome}
        if self.value is not None:
            body["value"] = self.value
        if self.error:
            body["error"] = self.error
        if self.traceback:
            body["traceback"] = self.traceback
        if self.exit_code is not None:
            body["exit_code"] = self.exit_code
        if self.signal is not None:
            body["signal"] = self.signal
        if self.started:
            body["started"] = self.started
        if self.ended:
            body["ended"] = self.ended
        if self.stdout:
            body["stdout"] = self.stdout
        if self.stderr:
            body["stderr"] = self.stderr
        if self.value_size:
            body["value_size"] = self.value_size
        return body

    @classmethod
    def from_wire(cls, body: Any) -> TaskResult:
        t = "finished.result"
        if not isinstance(body, dict):
            raise ProtocolError("finished: each result must be a map")
        outcome = _need(body, "outcome", str, t)
        if outcome not in OUTCOMES:
            raise ProtocolError(f"finished.result: unknown outcome {outcome!r}")
        result = cls(
            id=_need(body, "id", str, t),
            outcome=outcome,
            value=body.get("value"),
            error=_opt(body, "error", str, t, ""),
            traceback=_opt(body, "traceback", str, t, ""),
            exit_code=_int_field(body, "exit_code", MIN_EXIT_CODE, MAX_EXIT_CODE, t, None),
            signal=_int_field(body, "signal", 1, MAX_SIGNAL, t, None),
            started=_float_field(body, "started", 0.0, MAX_TIMESTAMP, t, 0.0),
            ended=_float_field(body, "ended", 0.0, MAX_TIMESTAMP, t, 0.0),
            stdout=_opt(body, "stdout", bytes, t, b""),
            stderr=_opt(body, "stderr", bytes, t, b""),
        )
        if "value_size" in body:  # rare: a value sent in pieces (a dict lookup for the rest)
            size = _int_field(body, "value_size", 0, MAX_RESULT_LIMIT, t)
            if size and result.value is not None:
                raise ProtocolError("finished.result: a result has a 'value' or a 'value_size', not both")
            object.__setattr__(result, "value_size", size)
        return result


@dataclass(frozen=True, slots=True)
class Value(Message):
    """Agent to console: the next piece of an attempt's value (its msgpack
    encoding), ahead of the result that names its total size. Pieces of one
    attempt come in order, each starting where the last ended."""

    TYPE: ClassVar[str] = "value"
    id: str
    offset: int
    data: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "id": self.id, "offset": self.offset, "data": self.data}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Value:
        t = cls.TYPE
        offset = _int_field(body, "offset", 0, MAX_RESULT_LIMIT, t)
        data = _need(body, "data", bytes, t)
        if not data or len(data) > MAX_VALUE_CHUNK_BYTES:
            raise ProtocolError(f"value: field 'data' must hold 1..{MAX_VALUE_CHUNK_BYTES} bytes, got {len(data)}")
        if offset + len(data) > MAX_RESULT_LIMIT:
            raise ProtocolError(f"value: a value ends at byte {offset + len(data)}, past {MAX_RESULT_LIMIT}")
        return cls(id=_need(body, "id", str, t), offset=offset, data=data)


@dataclass(frozen=True, slots=True)
class Finished(Message):
    """Agent to console: these attempts ended (a batch). Acknowledge with ``ack``."""

    TYPE: ClassVar[str] = "finished"
    results: list[TaskResult]

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "results": [result.to_wire() for result in self.results]}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Finished:
        results = _need(body, "results", list, cls.TYPE)
        return cls(results=[TaskResult.from_wire(result) for result in results])


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    """Agent to console, every second: load and slot use."""

    TYPE: ClassVar[str] = "heartbeat"
    time: float
    cpu: float  # percent of all cores, 0..100
    mem: float  # percent of memory in use
    load: list[float]  # 1, 5, 15 minute load averages
    slots_total: int
    slots_busy: int
    queued: int  # accepted tasks waiting for a slot (all consoles)
    drained: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "time": self.time,
            "cpu": self.cpu,
            "mem": self.mem,
            "load": self.load,
            "slots_total": self.slots_total,
            "slots_busy": self.slots_busy,
            "queued": self.queued,
            "drained": self.drained,
        }

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Heartbeat:
        t = cls.TYPE
        load = _need(body, "load", list, t)
        if len(load) > 16:
            raise ProtocolError("heartbeat: field 'load' holds more than 16 numbers")
        for x in load:
            _in_range(x, 0.0, MAX_LOAD, "load", t)
        return cls(
            time=_float_field(body, "time", 0.0, MAX_TIMESTAMP, t),
            cpu=_float_field(body, "cpu", 0.0, MAX_PERCENT, t),
            mem=_float_field(body, "mem", 0.0, MAX_PERCENT, t),
            load=[float(x) for x in load],
            slots_total=_int_field(body, "slots_total", 0, MAX_SLOTS, t),
            slots_busy=_int_field(body, "slots_busy", 0, MAX_SLOTS, t),
            queued=_int_field(body, "queued", 0, MAX_COUNT, t),
            drained=_opt(body, "drained", bool, t, False),
        )


@dataclass(frozen=True, slots=True)
class Error(Message):
    """Either way: the sender hit a fatal problem on this channel and closes it."""

    TYPE: ClassVar[str] = "error"
    code: str
    message: str

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "code": self.code, "message": self.message}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Error:
        return cls(code=_need(body, "code", str, cls.TYPE), message=_need(body, "message", str, cls.TYPE))


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Run,
        Cancel,
        Drain,
        Undrain,
        Ack,
        Started,
        Rejected,
        Progress,
        Output,
        Value,
        Finished,
        Heartbeat,
        Error,
    )
}
