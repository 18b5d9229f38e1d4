"""Streaming aggregation of task values into a job's result.

A job names a reducer with ``reduce``; the engine makes one per job with
``make_reducer(name)`` and calls ``add(index, value)`` exactly once per
succeeded task, in whatever order tasks finish. ``result()`` may be read at any
time: while the job runs it is the partial result of the values so far.

Built-in reducers (``add`` is O(1) unless noted):

=================  ==========================================================
``None``           keep nothing; the result is ``None`` (values stay per task)
``collect``        the list of values in task index order
``count``          how many tasks succeeded
``sum``            the exact sum of numbers, the same whatever the finish order
``min`` / ``max``  the smallest / largest value
``concat``         strings joined as they are, or lists flattened, in index order
``merge-counts``   counts summed into one ``{key: count}`` dict, largest first.
                   A value may be a dict of counts, a list of keys (each counts
                   one) or a string (each whitespace-separated word counts one).
                   ``add`` is O(size of the value).
=================  ==========================================================

Any other name is ``"module:attribute"``, imported in the engine process:

* a class: instantiated with no arguments; it is itself a reducer (``add(index,
  value)`` and ``result()``), so it can stream in constant memory;
* a function: called with the list of values in index order whenever the result
  is read (cached until the next ``add``), so it sees partial lists while the job
  runs.

A value a reducer cannot take (a string for ``sum``) raises ``ReducerError``
and leaves the reducer unchanged.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol


class ReducerError(ValueError):
    """An unknown reducer name, or a value a reducer cannot take."""


class Reducer(Protocol):
    def add(self, index: int, value: Any) -> None: ...

    def result(self) -> Any: ...


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _refuse(reducer: str, index: int, value: Any, wanted: str) -> ReducerError:
    return ReducerError(f"reduce {reducer!r}: task {index} gave {_show(value)} ({type(value).__name__}), {wanted}")


# --- built-ins -------------------------------------------------------------------


class NoReducer:
    def add(self, index: int, value: Any) -> None:
        pass

    def result(self) -> None:
        return None


class CountReducer:
    def __init__(self) -> None:
        self.count = 0

    def add(self, index: int, value: Any) -> None:
        self.count += 1

    def result(self) -> int:
        return self.count


# Every finite float is a whole multiple of 2**-1074 (the smallest subnormal).
_FLOAT_SCALE_BITS = 1074


class SumReducer:
    """The exact sum, rounded once at the end: ints add as ints, floats as
    exact fractions over powers of two (every finite float is a whole
    multiple of 2**-1074), so nothing is rounded on the way and the result
    is the correctly rounded sum whatever the finish order, retries or
    restores: ``[2**53 + 1, 0.5]`` gives 9007199254740994.0. Only ints: the
    exact int. ``add`` is O(1); ``result`` is O(distinct exponents)."""

    def __init__(self) -> None:
        self.int_total = 0
        # The floats' numerators summed per denominator (a power of two):
        # exact, and cheaper per add than one huge scaled integer.
        self.numerators: dict[int, int] = {}
        self.non_finite = 0.0  # inf/nan summed apart, as Python would
        self.has_float = False

    def add(self, index: int, value: Any) -> None:
        if type(value) is int:  # the common case first: one check
            self.int_total += value
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _refuse("sum", index, value, "not a number")
        if isinstance(value, int):
            self.int_total += int(value)
            return
        self.has_float = True
        if not math.isfinite(value):
            self.non_finite += value
            return
        numerator, denominator = float(value).as_integer_ratio()
        numerators = self.numerators
        numerators[denominator] = numerators.get(denominator, 0) + numerator

    def result(self) -> int | float:
        if not self.has_float:
            return self.int_total
        exact = self.int_total << _FLOAT_SCALE_BITS
        for denominator, numerator in self.numerators.items():
            exact += numerator << (_FLOAT_SCALE_BITS + 1 - denominator.bit_length())
        try:
            finite = exact / (1 << _FLOAT_SCALE_BITS)  # int / int: correctly rounded
        except OverflowError:
            finite = math.inf if exact > 0 else -math.inf
        return finite + self.non_finite


class _ExtremeReducer:
    name = ""

    def __init__(self) -> None:
        self.best: Any = None
        self.empty = True

    def _beats(self, value: Any) -> bool:
        raise NotImplementedError

    def add(self, index: int, value: Any) -> None:
        if self.empty:
            self.best, self.empty = value, False
            return
        try:
            if self._beats(value):
                self.best = value
        except TypeError:
            raise _refuse(self.name, index, value, f"which cannot be compared with {_show(self.best)}") from None

    def result(self) -> Any:
        return self.best


class MinReducer(_ExtremeReducer):
    name = "min"

    def _beats(self, value: Any) -> bool:
        return bool(value < self.best)


class MaxReducer(_ExtremeReducer):
    name = "max"

    def _beats(self, value: Any) -> bool:
        return bool(value > self.best)


class _IndexedReducer:
    """Keeps values by task index; the ordered result is built when read and
    cached until the next add (a UI may read it many times a second)."""

    def __init__(self) -> None:
        self.values: dict[int, Any] = {}
        self._cached: Any = None
        self._fresh = False

    def add(self, index: int, value: Any) -> None:
        self.values[index] = value
        self._fresh = False

    def ordered(self) -> list[Any]:
        values = self.values
        return [values[i] for i in sorted(values)]

    def build(self) -> Any:
        raise NotImplementedError

    def result(self) -> Any:
        if not self._fresh:
            self._cached, self._fresh = self.build(), True
        return self._cached


class CollectReducer(_IndexedReducer):
    def build(self) -> list[Any]:
        return self.ordered()


class ConcatReducer(_IndexedReducer):
    def __init__(self) -> None:
        super().__init__()
        self.kind: type | None = None  # str or list, fixed by the first value

    def add(self, index: int, value: Any) -> None:
        kind = str if isinstance(value, str) else list if isinstance(value, (list, tuple)) else None
        if kind is None:
            raise _refuse("concat", index, value, "not a string or a list")
        if self.kind is not None and kind is not self.kind:
            raise _refuse("concat", index, value, f"but earlier tasks gave {self.kind.__name__}s")
        self.kind = kind
        super().add(index, value)

    def build(self) -> str | list[Any]:
        parts = self.ordered()
        if self.kind is list:
            return [element for part in parts for element in part]
        return "".join(parts)


class MergeCountsReducer:
    def __init__(self) -> None:
        self.counts: Counter[Any] = Counter()
        self._cached: dict[Any, Any] | None = None

    def add(self, index: int, value: Any) -> None:
        if isinstance(value, dict):
            bad = next((v for v in value.values() if isinstance(v, bool) or not isinstance(v, (int, float))), None)
            if bad is not None:
                raise _refuse("merge-counts", index, value, f"a dict whose count {_show(bad)} is not a number")
            self.counts.update(value)
        elif isinstance(value, str):
            self.counts.update(value.split())
        elif isinstance(value, (list, tuple)):
            try:
                self.counts.update(value)
            except TypeError:
                raise _refuse("merge-counts", index, value, "a list holding something that cannot be a key") from None
        else:
            raise _refuse("merge-counts", index, value, "not a dict of counts, a list or a string")
        self._cached = None

    def result(self) -> dict[Any, Any]:
        if self._cached is None:
            ranked = sorted(self.counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
            self._cached = dict(ranked)
        return self._cached


class FunctionReducer(_IndexedReducer):
    def __init__(self, function: Callable[[list[Any]], Any]) -> None:
        super().__init__()
        self.function = function

    def build(self) -> Any:
        return self.function(self.ordered())


BUILTIN: dict[str, Callable[[], Reducer]] = {
    "collect": CollectReducer,
    "count": CountReducer,
    "sum": SumReducer,
    "min": MinReducer,
    "max": MaxReducer,
    "concat": ConcatReducer,
    "merge-counts": MergeCountsReducer,
}

_TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def reducer_factory(name: str | None) -> Callable[[], Reducer]:
    """What ``make_reducer`` will call; raises ReducerError for a bad name.
    ``engine.spec`` calls it to refuse a bad ``reduce`` when the job loads."""
    if name is None:
        return NoReducer
    builtin = BUILTIN.get(name)
    if builtin is not None:
        return builtin
    if not isinstance(name, str) or not _TARGET.fullmatch(name):
        known = ", ".join(BUILTIN)
        raise ReducerError(f"unknown reducer {name!r}: use one of {known} or 'module:function'")
    module_name, _, attr_path = name.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for attr in attr_path.split("."):
            target = getattr(target, attr)
    except ImportError as exc:
        raise ReducerError(f"reducer {name!r}: cannot import {module_name!r} ({exc})") from None
    except AttributeError:
        raise ReducerError(f"reducer {name!r}: {module_name!r} has no {attr_path!r}") from None
    if isinstance(target, type):
        if not (callable(getattr(target, "add", None)) and callable(getattr(target, "result", None))):
            raise ReducerError(f"reducer {name!r}: a reducer class needs add(index, value) and result() methods")
        return target
    if callable(target):
        return lambda: FunctionReducer(target)
    raise ReducerError(f"reducer {name!r} is neither a class nor a function")


def make_reducer(name: str | None) -> Reducer:
    return reducer_factory(name)()


# --- values and exports ----------------------------------------------------------------


def shell_value(stdout: bytes) -> Any:
    """A shell task's value: its stdout as JSON when it parses, else the text."""
    text = stdout.decode("utf-8", "replace").strip()
    if not text:
        return text  # the common case of no output: spare json its exception
    try:
        return json.loads(text)
    except ValueError:
        return text


RESULT_COLUMNS = ("index", "item", "status", "value", "error", "node", "attempts", "duration")


def _export_rows(rows: Iterable[Mapping[str, Any]], items: Sequence[Any] | None) -> Iterable[dict[str, Any]]:
    for row in rows:
        out = {column: row.get(column) for column in RESULT_COLUMNS}
        if items is not None and out["item"] is None:
            out["item"] = items[row["index"]]
        yield out


def results_to_json(rows: Iterable[Mapping[str, Any]], items: Sequence[Any] | None = None) -> str:
    """Per-task results (rows as ``Store.task_results`` gives them) as a JSON
    list; ``items`` (``JobSpec.items``) fills the item column."""
    return json.dumps(list(_export_rows(rows, items)), default=repr)


def _cell(value: Any) -> Any:
    # Strings go in as they are (no JSON quotes in a spreadsheet); structures as JSON.
    if value is None or isinstance(value, (str, int, float)):
        return "" if value is None else value
    return json.dumps(value, default=repr)


def results_to_csv(rows: Iterable[Mapping[str, Any]], items: Sequence[Any] | None = None) -> str:
    """Per-task results as CSV with a header row of ``RESULT_COLUMNS``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(RESULT_COLUMNS)
    for row in _export_rows(rows, items):
        writer.writerow([_cell(row[column]) for column in RESULT_COLUMNS])
    return buffer.getvalue()
