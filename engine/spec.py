"""Job specifications: TOML job files and the Python API, validated into a frozen ``JobSpec``.

A job file (the full reference with examples is ``demos/jobs/README.md``)::

    name = "squares"                                    # default: the file's stem
    command = ["python3", "-c", "print({item} ** 2)"]   # or shell = "...", or function = "mod:fn"
    items = { range = [1, 1001] }                       # or a list, { glob }, { lines }, or count = N
    reduce = "sum"
    retries = 2
    timeout = "30s"

The task, exactly one of:
  ``command``   argv template list, exec'd without a shell (values passed verbatim; the
                script after a shell's ``-c``, as in ``["sh", "-c", "..."]``, is treated
                like ``shell``)
  ``shell``     a /bin/sh string; substituted values are shell-quoted, so a placeholder
                inside or touching quotes (or in a comment, here-document or backquotes)
                is refused: see ``engine.shellquote``
  ``function``  "package.module:function", imported on the node and called with the
                item as its first argument, then ``args`` (list) and ``kwargs`` (table)

The items, exactly one of:
  ``items = [..]``                          any TOML values (no dates)
  ``items = { range = [start, stop] }``     or ``[start, stop, step]``; half-open like Python
  ``items = { glob = "data/*.txt" }``       sorted absolute paths (``**`` recurses)
  ``items = { lines = "file.txt" }``        the file's non-empty lines, stripped
  ``count = N``                             the items 0 .. N-1
Relative paths (``glob``, ``lines``, ``cwd``) are relative to the job file's directory.

Template placeholders: ``{item}``, ``{index}``, and for path items (glob, lines or a
list of strings) ``{stem}`` and ``{name}``; ``{{`` and ``}}`` are literal braces. Any
other brace is an error, so a typo cannot run silently. A non-string item is written
as JSON (``true``, ``[1, 2]``); numbers as Python prints them.

Options (defaults): ``reduce`` (none; see ``engine.reducers``), ``retries`` (3),
``backoff = { base = "1s", cap = "60s" }``, ``timeout`` (none; "250ms", "30s", "5m",
"1h30m", "2d" or seconds), ``priority`` (0, higher first), ``slots`` (1 per task),
``labels`` (node labels required, table of strings), ``env`` (table of strings),
``cwd``, ``max_node_failures`` (3: a task whose node died this often is poison and
fails), ``speculative`` (false: re-run stragglers on a second node), ``max_result``
("16MiB": the most a task's value may take, its stdout or its encoded return value;
"64MiB", "1.5GB" or a number of bytes, at most 512 MiB; a bigger value fails the task).

Every mistake is one ``SpecError`` sentence naming the file, the line and the field::

    jobs/x.toml:4: field 'timeout': expected a duration like "30s", got "soon"

Items stay lazy: a range is kept as a ``range``, and ``task_fields(index)`` renders
one task's fields on demand from templates compiled once, so a million-task job
costs a few hundred bytes until its tasks are dispatched.
"""

from __future__ import annotations

import base64
import difflib
import glob
import json
import math
import os
import re
import shlex
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, ClassVar

from engine.reducers import ReducerError, reducer_factory
from engine.shellquote import UnsafePlaceholder, check_template, shell_script_index
from nodeagent.protocol import DEFAULT_MAX_RESULT, KIND_CALL, KIND_PICKLE, KIND_SHELL, TASK_KINDS

DEFAULT_RETRIES = 3
DEFAULT_BACKOFF_BASE = 1.0
DEFAULT_BACKOFF_CAP = 60.0
DEFAULT_MAX_NODE_FAILURES = 3
# The store keeps a value in one SQLite blob (at most 1e9 bytes by default).
MAX_MAX_RESULT = 512 * 1024 * 1024


class SpecError(ValueError):
    """A job that cannot be run, as one sentence: ``where: field 'x': problem``."""

    def __init__(self, problem: str, field: str | None = None, where: str | None = None) -> None:
        self.problem = problem
        self.field = field
        self.where = where
        text = f"field '{field}': {problem}" if field else problem
        super().__init__(f"{where}: {text}" if where else text)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }" if value else "{}"
    return repr(value)


def _show(value: Any) -> str:
    """A value as the user wrote it in TOML, kept short."""
    text = _toml(value)
    return text if len(text) <= 50 else text[:47] + "..."


def _suggest(word: str, choices: Sequence[str], shape: str = "'{}'") -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {shape.format(close[0])}?)" if close else ""


# --- durations -----------------------------------------------------------------------

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)"
_DURATION = re.compile(rf"\s*(?:{_DURATION_PART}\s*)+")


def parse_duration(value: Any) -> float:
    """Seconds from "250ms", "30s", "5m", "1h30m", "2d" or a number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value >= 0 and math.isfinite(value):
            return float(value)
    elif isinstance(value, str) and _DURATION.fullmatch(value):
        return sum(float(amount) * _UNIT_SECONDS[unit] for amount, unit in re.findall(_DURATION_PART, value))
    raise ValueError(f'expected a duration like "30s", got {_show(value)}')


# --- sizes ---------------------------------------------------------------------------

_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30,
               "kb": 1000, "mb": 1000**2, "gb": 1000**3}  # fmt: skip
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_size(value: Any) -> int:
    """Bytes from "64MiB", "512 KiB", "1.5GB", "100b" or a number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value >= 0:
            return value
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value)
        if match and match.group(2).lower() in _SIZE_UNITS:
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    raise ValueError(f'expected a size like "64MiB" or a number of bytes, got {_show(value)}')


def _check_size(name: str, value: Any, maximum: int) -> int:
    try:
        size = parse_size(value)
    except ValueError as exc:
        raise SpecError(str(exc), name) from None
    if not 1 <= size <= maximum:
        raise SpecError(f"must be 1 byte to {maximum // (1 << 20)} MiB, got {_show(value)}", name)
    return size


# --- templates ----------------------------------------------------------------------

PLACEHOLDERS = ("item", "index", "stem", "name")
PATH_PLACEHOLDERS = frozenset({"stem", "name"})
_BRACE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


def _placeholders(template: str, field_name: str) -> frozenset[str]:
    """The placeholders a template uses; SpecError for any other brace.

    The accepted grammar is a subset of ``str.format``'s, so the template is
    its own format string: rendering is one C-level ``format_map`` call."""
    used = set()
    for match in _BRACE.finditer(template):
        token, name = match.group(0), match.group(1)
        if token in ("{{", "}}"):
            continue
        if name is None:
            raise SpecError(f"a single {token!r} must be doubled ({token * 2}) to mean a literal brace", field_name)
        if name not in PLACEHOLDERS:
            hint = _suggest(name, PLACEHOLDERS, "{{{}}}") or " (write {{ and }} for literal braces)"
            raise SpecError(f"unknown placeholder {{{name}}}{hint}", field_name)
        used.add(name)
    return frozenset(used)


def _item_text(item: Any) -> str:
    if type(item) is str:
        return item
    if type(item) in (int, float):
        return str(item)
    return json.dumps(item, ensure_ascii=False, default=str)


@dataclass(frozen=True, slots=True)
class _Template:
    """One compiled template string: constant, or a format string and the
    placeholders it needs."""

    text: str  # the format string, or the literal value when constant
    used: frozenset[str]
    shell: bool = False  # shell script: values are substituted shell-quoted

    @classmethod
    def compile(cls, template: str, field_name: str, shell: bool = False) -> _Template:
        used = _placeholders(template, field_name)
        if used:
            try:
                check_template(template, shell=shell)
            except UnsafePlaceholder as exc:
                raise SpecError(str(exc), field_name) from None
        return cls(template if used else template.format(), used, shell)


# --- the spec --------------------------------------------------------------------------

_FUNCTION = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def _check_int(name: str, value: Any, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"expected an integer, got {_show(value)}", name)
    if minimum is not None and value < minimum:
        raise SpecError(f"must be at least {minimum}, got {value}", name)


def _check_seconds(name: str, value: Any, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(f"expected a number of seconds, got {_show(value)}", name)
    if value < 0 or (value == 0 and not allow_zero):
        raise SpecError(f"must be {'at least 0' if allow_zero else 'more than 0'} seconds, got {value:g}", name)
    return float(value)


def _check_strings(name: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise SpecError(f"expected a table of strings like {{ key = \"value\" }}, got {_show(value)}", name)
    return dict(value)


_INT_MINIMUMS: dict[str, int | None] = {"retries": 0, "priority": None, "slots": 1, "max_node_failures": 1}


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """A validated job: what to run, over which items, and how.

    Built from a job file (``load_job_file``), from the Python API
    (``JobSpec.build``) or directly; every path validates the same way and
    raises ``SpecError`` naming the field.
    """

    name: str
    kind: str  # nodeagent.protocol.KIND_*
    items: Sequence[Any]  # a range stays a range; anything else becomes a tuple
    argv_template: tuple[str, ...] | None = None
    shell_template: str | None = None
    fn: str | None = None
    payload: bytes | None = None  # cloudpickled callable (API only)
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    retries: int = DEFAULT_RETRIES
    backoff_base: float = DEFAULT_BACKOFF_BASE
    backoff_cap: float = DEFAULT_BACKOFF_CAP
    timeout: float | None = None
    priority: int = 0
    slots: int = 1
    labels: dict[str, str] = field(default_factory=dict)
    reduce: str | None = None
    max_node_failures: int = DEFAULT_MAX_NODE_FAILURES
    speculative: bool = False
    max_result: int = DEFAULT_MAX_RESULT  # bytes a task's value may take; "64MiB" is read too
    source: str | None = None  # the job file, for messages

    # Compiled once, so task_fields is a dict copy and a format call.
    _argv: tuple[_Template, ...] = field(init=False, repr=False, compare=False, default=())
    _shell: _Template | None = field(init=False, repr=False, compare=False, default=None)
    _argv_script: bool = field(init=False, repr=False, compare=False, default=False)  # ["sh", "-c", {item}...]
    _used: frozenset[str] = field(init=False, repr=False, compare=False, default=frozenset())
    _static: dict[str, Any] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise once, here
        if not isinstance(self.name, str) or not self.name.strip():
            raise SpecError(f"expected a non-empty string, got {_show(self.name)}", "name")
        if self.kind not in TASK_KINDS:
            raise SpecError(f"expected one of {', '.join(TASK_KINDS)}, got {_show(self.kind)}", "kind")
        self._check_task()
        if isinstance(self.items, (str, bytes)) or not isinstance(self.items, Sequence):
            raise SpecError(f"expected a sequence of items, got {_show(self.items)}", "items")
        if not isinstance(self.items, (range, tuple)):
            set_(self, "items", tuple(self.items))
        if not isinstance(self.args, (list, tuple)):
            raise SpecError(f"expected a list, got {_show(self.args)}", "args")
        set_(self, "args", tuple(self.args))
        if not isinstance(self.kwargs, dict) or not all(isinstance(k, str) for k in self.kwargs):
            raise SpecError(f"expected a table with string keys, got {_show(self.kwargs)}", "kwargs")
        set_(self, "env", _check_strings("env", self.env))
        set_(self, "labels", _check_strings("labels", self.labels))
        if self.cwd is not None and (not isinstance(self.cwd, str) or not self.cwd):
            raise SpecError(f"expected a directory path, got {_show(self.cwd)}", "cwd")
        for name, minimum in _INT_MINIMUMS.items():
            _check_int(name, getattr(self, name), minimum)
        set_(self, "backoff_base", _check_seconds("backoff_base", self.backoff_base, allow_zero=True))
        set_(self, "backoff_cap", _check_seconds("backoff_cap", self.backoff_cap, allow_zero=True))
        if self.backoff_cap < self.backoff_base:
            raise SpecError(f"must be at least the base ({self.backoff_base:g}s), got {self.backoff_cap:g}s", "backoff_cap")
        if self.timeout is not None:
            set_(self, "timeout", _check_seconds("timeout", self.timeout, allow_zero=False))
        set_(self, "max_result", _check_size("max_result", self.max_result, MAX_MAX_RESULT))
        if not isinstance(self.speculative, bool):
            raise SpecError(f"expected true or false, got {_show(self.speculative)}", "speculative")
        try:
            reducer_factory(self.reduce)
        except ReducerError as exc:
            raise SpecError(str(exc), "reduce") from None
        self._compile()
        if self.kind == KIND_SHELL and self._used and isinstance(self.items, tuple):
            for index, item in enumerate(self.items):
                if type(item) is str and "\0" in item:
                    raise SpecError(f"item {index} holds a NUL character, which no command line can carry", "items")

    def _check_task(self) -> None:
        given = {
            "argv_template": self.argv_template is not None,
            "shell_template": self.shell_template is not None,
            "fn": self.fn is not None,
            "payload": self.payload is not None,
        }
        wanted = {KIND_SHELL: ("argv_template", "shell_template"), KIND_CALL: ("fn",), KIND_PICKLE: ("payload",)}[self.kind]
        present = [name for name, is_given in given.items() if is_given]
        if len(present) != 1 or present[0] not in wanted:
            raise SpecError(f"a {self.kind} job needs exactly one of {' or '.join(wanted)}, got {', '.join(present) or 'none'}")
        if self.argv_template is not None:
            argv = self.argv_template
            if isinstance(argv, str) or not isinstance(argv, (list, tuple)) or not argv or not all(isinstance(a, str) for a in argv):
                raise SpecError(f"expected a non-empty list of strings, got {_show(argv)}", "argv_template")
            object.__setattr__(self, "argv_template", tuple(argv))
        if self.shell_template is not None and (not isinstance(self.shell_template, str) or not self.shell_template.strip()):
            raise SpecError(f"expected a non-empty string, got {_show(self.shell_template)}", "shell_template")
        if self.fn is not None and (not isinstance(self.fn, str) or not _FUNCTION.fullmatch(self.fn)):
            raise SpecError(f'expected "package.module:function", got {_show(self.fn)}', "fn")
        if self.payload is not None and not isinstance(self.payload, bytes):
            raise SpecError("expected the bytes of a cloudpickled callable", "payload")

    def _compile(self) -> None:
        set_ = object.__setattr__
        static: dict[str, Any] = {}
        if self.argv_template is not None:
            # ["sh", "-c", SCRIPT, ...]: SCRIPT is shell, quoted like a shell template.
            script = shell_script_index(self.argv_template)
            argv = tuple(
                _Template.compile(arg, "argv_template", shell=i == script) for i, arg in enumerate(self.argv_template)
            )
            set_(self, "_argv", argv)
            set_(self, "_argv_script", any(t.shell and t.used for t in argv))
            set_(self, "_used", frozenset().union(*(t.used for t in argv)))
        elif self.shell_template is not None:
            shell = _Template.compile(self.shell_template, "shell_template", shell=True)
            set_(self, "_shell", shell)
            set_(self, "_used", shell.used)
        elif self.fn is not None:
            static["fn"] = self.fn
        else:
            static["payload"] = self.payload
        # Shared by every TaskSpec of the job: nobody mutates a sent task.
        if self.kwargs:
            static["kwargs"] = self.kwargs
        if self.env:
            static["env"] = self.env
        if self.cwd is not None:
            static["cwd"] = self.cwd
        if self.timeout is not None:
            static["timeout"] = self.timeout
        if self.slots != 1:
            static["slots"] = self.slots
        if self.max_result != DEFAULT_MAX_RESULT:
            static["max_result"] = self.max_result
        set_(self, "_static", static)

    # --- per task -------------------------------------------------------------------

    def task_count(self) -> int:
        return len(self.items)

    def _values(self, index: int, quote: Callable[[str], str] | None) -> dict[str, str]:
        text = _item_text(self.items[index])
        values = {"item": text, "index": str(index)}
        if self._used & PATH_PLACEHOLDERS:
            name = os.path.basename(text)
            values["name"], values["stem"] = name, os.path.splitext(name)[0]
        if quote is not None:
            return {key: quote(values[key]) for key in self._used}
        return values

    def task_fields(self, index: int) -> dict[str, Any]:
        """The kind-specific fields of ``nodeagent.protocol.TaskSpec`` for item ``index``:
        ``TaskSpec(id=attempt_id, kind=spec.kind, **spec.task_fields(index))``."""
        fields_ = self._static.copy()
        fields_.update(self.item_fields(index))
        return fields_

    def item_fields(self, index: int) -> dict[str, Any]:
        """The part of ``task_fields`` that depends on the item (``argv``,
        ``shell`` or ``args``); the rest is the same for every task of the job."""
        fields_: dict[str, Any] = {}
        if self._argv:
            values = self._values(index, None) if self._used else {}
            quoted = {key: shlex.quote(value) for key, value in values.items()} if self._argv_script else values
            fields_["argv"] = [
                t.text.format_map(quoted if t.shell else values) if t.used else t.text for t in self._argv
            ]
        elif self._shell is not None:
            shell = self._shell
            fields_["shell"] = shell.text.format_map(self._values(index, shlex.quote)) if shell.used else shell.text
        else:
            fields_["args"] = [self.items[index], *self.args]
        return fields_

    # --- persistence ----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON- and msgpack-able; a range is stored as ``{"range": [start, stop, step]}``."""
        items = self.items
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        out["items"] = (
            {"range": [items.start, items.stop, items.step]} if isinstance(items, range) else list(items)
        )
        out["argv_template"] = None if self.argv_template is None else list(self.argv_template)
        out["args"] = list(self.args)
        out["payload"] = None if self.payload is None else base64.b64encode(self.payload).decode("ascii")
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        # Keys a newer version wrote are ignored; missing ones take defaults.
        known = {f.name for f in fields(cls) if f.init}
        values = {key: value for key, value in data.items() if key in known}
        items = values.get("items")
        if isinstance(items, dict) and "range" in items:
            values["items"] = range(*items["range"])
        if values.get("payload") is not None:
            values["payload"] = base64.b64decode(values["payload"])
        return cls(**values)

    @classmethod
    def build(cls, **options: Any) -> JobSpec:
        """A JobSpec from friendly values (the Python API): durations as "30s"
        or seconds, lists for tuples. An unknown option is a SpecError."""
        known = [f.name for f in fields(cls) if f.init]
        for key in options:
            if key not in known:
                raise SpecError(f"no such option{_suggest(key, known)}", key)
        for key in ("timeout", "backoff_base", "backoff_cap"):
            if options.get(key) is not None:
                options[key] = _duration_field(key, options[key])
        _raise_default_cap(options)
        return cls(**options)


# --- job files -------------------------------------------------------------------------

TOP_LEVEL_KEYS = (
    "name", "command", "shell", "function", "args", "kwargs", "items", "count", "reduce", "retries",
    "backoff", "timeout", "priority", "slots", "labels", "env", "cwd", "max_node_failures", "speculative",
    "max_result",
)  # fmt: skip
ITEM_SOURCES = ("range", "glob", "lines")
BACKOFF_KEYS = ("base", "cap")
# JobSpec field -> the job file key that sets it, to locate an error.
_FILE_KEY = {
    "argv_template": "command",
    "shell_template": "shell",
    "fn": "function",
    "backoff_base": "backoff.base",
    "backoff_cap": "backoff.cap",
}
# Values a task cannot receive over msgpack.
_TOML_TIMES = (datetime, date, time)


def _raise_default_cap(options: dict[str, Any]) -> None:
    # A base above the default cap lifts the cap, rather than being an error
    # about a cap the user never wrote.
    if isinstance(options.get("backoff_base"), float) and "backoff_cap" not in options:
        options["backoff_cap"] = max(DEFAULT_BACKOFF_CAP, options["backoff_base"])


def _duration_field(name: str, value: Any) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise SpecError(str(exc), name) from None


def _refuse_times(name: str, value: Any) -> None:
    if isinstance(value, _TOML_TIMES):
        raise SpecError(f"a TOML date or time ({value}) cannot be sent to a task; quote it as a string", name)
    if isinstance(value, list):
        for element in value:
            _refuse_times(name, element)
    elif isinstance(value, dict):
        for element in value.values():
            _refuse_times(name, element)


def _one_of(doc: dict[str, Any], keys: Sequence[str], what: str) -> str:
    present = [key for key in keys if key in doc]
    names = ", ".join(f"'{key}'" for key in keys)
    if not present:
        raise SpecError(f"needs {what}: one of {names}")
    if len(present) > 1:
        raise SpecError(f"give only one of {names}", present[1])
    return present[0]


def _check_keys(table: dict[str, Any], allowed: Sequence[str], prefix: str = "") -> None:
    for key in table:
        if key not in allowed:
            shape = "'" + prefix + "{}'"
            raise SpecError(f"no such field{_suggest(key, allowed, shape)}", prefix + key)


class _Items:
    """The ``items``/``count`` of a job file, resolved against the job's directory."""

    def __init__(self, doc: dict[str, Any], base_dir: Path) -> None:
        self.paths = False  # {stem} and {name} make sense
        key = _one_of(doc, ("items", "count"), "items")
        value = doc[key]
        if key == "count":
            _check_int("count", value, 0)
            self.items: Sequence[Any] = range(value)
        elif isinstance(value, list):
            _refuse_times("items", value)
            self.items = tuple(value)
            self.paths = all(isinstance(item, str) for item in value)
        elif isinstance(value, dict):
            _check_keys(value, ITEM_SOURCES, "items.")
            source = _one_of(value, ITEM_SOURCES, "items")
            self.items = self._SOURCES[source](self, value[source], base_dir)
        else:
            raise SpecError(f'expected a list, {{ range = [1, 11] }}, {{ glob = "*.txt" }} or {{ lines = "f.txt" }}, got {_show(value)}', "items")

    def _range(self, bounds: Any, base_dir: Path) -> Sequence[Any]:
        if (
            not isinstance(bounds, list)
            or len(bounds) not in (2, 3)
            or not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds)
        ):
            raise SpecError(f"expected [start, stop] or [start, stop, step] integers, got {_show(bounds)}", "items.range")
        if len(bounds) == 3 and bounds[2] == 0:
            raise SpecError("the step must not be 0", "items.range")
        return range(*bounds)

    def _glob(self, pattern: Any, base_dir: Path) -> Sequence[Any]:
        if not isinstance(pattern, str) or not pattern:
            raise SpecError(f"expected a pattern like \"data/*.txt\", got {_show(pattern)}", "items.glob")
        matches = glob.glob(pattern, root_dir=base_dir, recursive=True)
        if not matches:
            raise SpecError(f"{_show(pattern)} matches no file in {base_dir}", "items.glob")
        self.paths = True
        return tuple(sorted(os.path.abspath(os.path.join(base_dir, match)) for match in matches))

    def _lines(self, path: Any, base_dir: Path) -> Sequence[Any]:
        if not isinstance(path, str) or not path:
            raise SpecError(f"expected a file name, got {_show(path)}", "items.lines")
        try:
            text = (base_dir / path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise SpecError(f"cannot read {base_dir / path}: {reason}", "items.lines") from None
        self.paths = True
        return tuple(stripped for line in text.splitlines() if (stripped := line.strip()))

    _SOURCES: ClassVar[dict[str, Callable[[_Items, Any, Path], Sequence[Any]]]] = {
        "range": _range,
        "glob": _glob,
        "lines": _lines,
    }


def _spec_from_document(doc: dict[str, Any], source: str, base_dir: Path) -> JobSpec:
    """A parsed job file to a JobSpec. Checks here what JobSpec cannot (keys,
    shapes, paths, durations) and leaves the rest to JobSpec."""
    _check_keys(doc, TOP_LEVEL_KEYS)
    out: dict[str, Any] = {"source": source}
    out["name"] = doc.get("name", Path(source).stem if not source.startswith("<") else "job")
    task_key = _one_of(doc, ("command", "shell", "function"), "a task")
    out["kind"] = KIND_CALL if task_key == "function" else KIND_SHELL
    out[{"command": "argv_template", "shell": "shell_template", "function": "fn"}[task_key]] = doc[task_key]
    for key in ("args", "kwargs"):
        if key in doc:
            if task_key != "function":
                raise SpecError("only a 'function' job takes extra arguments", key)
            _refuse_times(key, doc[key])
            out[key] = doc[key]
    items = _Items(doc, base_dir)
    out["items"] = items.items
    backoff = doc.get("backoff", {})
    if not isinstance(backoff, dict):
        raise SpecError(f'expected a table like {{ base = "1s", cap = "60s" }}, got {_show(backoff)}', "backoff")
    _check_keys(backoff, BACKOFF_KEYS, "backoff.")
    for key in BACKOFF_KEYS:
        if key in backoff:
            out[f"backoff_{key}"] = _duration_field(f"backoff.{key}", backoff[key])
    _raise_default_cap(out)
    if "timeout" in doc:
        out["timeout"] = _duration_field("timeout", doc["timeout"])
    if isinstance(doc.get("cwd"), str) and doc["cwd"]:
        out["cwd"] = os.path.abspath(os.path.join(base_dir, doc["cwd"]))
    for key in ("reduce", "retries", "priority", "slots", "labels", "env", "cwd", "max_node_failures", "speculative",
                "max_result"):  # fmt: skip
        if key in doc:
            out.setdefault(key, doc[key])
    spec = JobSpec(**out)
    if spec._used & PATH_PLACEHOLDERS and not items.paths:
        used = ", ".join(f"{{{name}}}" for name in sorted(spec._used & PATH_PLACEHOLDERS))
        raise SpecError(f"{used} needs path items (a glob, lines, or a list of strings)", task_key)
    return spec


# Matches `key =`, `"key" =`, `a.b =` at the start of a line, and `[table]` headers.
_KEY_LINE = re.compile(r"""^\s*((?:[\w-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[\w-]+|"[^"]*"|'[^']*'))*)\s*=""")
_HEADER_LINE = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")


def _dotted(key: str) -> str:
    # Quoted keys holding a dot are rare enough to locate imperfectly.
    return ".".join(part.strip("\"'") for part in re.split(r"\s*\.\s*", key.strip()))


def _line_of(text: str, field_path: str) -> int | None:
    """The line that sets a (dotted) field: good enough for an error message.
    Falls back to the line of the enclosing table (``backoff = { base = .. }``)."""
    table = ""
    fallback = None
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER_LINE.match(line)
        if header:
            table = _dotted(header.group(1))
            if fallback is None and (field_path == table or field_path.startswith(table + ".")):
                fallback = number
            continue
        key = _KEY_LINE.match(line)
        if not key:
            continue
        path = _dotted(key.group(1))
        path = f"{table}.{path}" if table else path
        if path == field_path:
            return number
        if fallback is None and field_path.startswith(path + "."):
            fallback = number
    return fallback


_TOML_POSITION = re.compile(r"^(.*) \(at line (\d+), column (\d+)\)$")


def parse_job_text(text: str, source: str = "<string>", base_dir: str | Path | None = None) -> JobSpec:
    """A job file's text to a JobSpec. Relative paths in it are relative to
    ``base_dir`` (default: the directory of ``source``, or the current one)."""
    if base_dir is None:
        base_dir = Path(source).parent if not source.startswith("<") else Path.cwd()
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        position = _TOML_POSITION.match(str(exc))
        if position:
            message, line, column = position.groups()
            raise SpecError(f"invalid TOML: {message}", where=f"{source}:{line}:{column}") from None
        raise SpecError(f"invalid TOML: {exc}", where=source) from None
    try:
        return _spec_from_document(doc, source, Path(base_dir))
    except SpecError as exc:
        key = _FILE_KEY.get(exc.field or "", exc.field)
        line = _line_of(text, key) if key else None
        raise SpecError(exc.problem, key, where=f"{source}:{line}" if line else source) from None


def load_job_file(path: str | Path) -> JobSpec:
    """A job file to a JobSpec; every problem (unreadable file included) is one SpecError.

    The spec's ``source`` is the file's resolved path, and relative paths in
    it resolve from there: a job's identity (its spec: where it came from and
    what it says) is the same however the path was spelt (``./x.toml``, an
    absolute path, a symlink), so a rerun after a crash resumes it."""
    try:
        resolved = Path(path).resolve()
    except OSError:
        resolved = Path(path).absolute()
    source = str(resolved)
    try:
        text = resolved.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read the job file: {exc.strerror or exc}", where=str(path)) from None
    except UnicodeDecodeError:
        raise SpecError("the job file is not UTF-8 text", where=str(path)) from None
    try:
        return parse_job_text(text, source=source, base_dir=resolved.parent)
    except SpecError as exc:  # name the file as the user typed it
        where = exc.where or source
        raise SpecError(exc.problem, exc.field, str(path) + where[len(source):] if where.startswith(source) else where) from None
