"""Each attempt's ``run`` message (``TaskSpec``), made cheaply.

Placing a task is mostly building its ``TaskSpec``, and every attempt of a
job shares all of it but the attempt id, ``report_start`` and the item's
fields (``args``, or ``argv`` / ``shell``). So a job's field values are
worked out once, from one spec built the ordinary way, and each attempt gets
a copy of that row with its own values put in.

``TaskSpec`` is a frozen, slotted dataclass: its ``__init__`` stores each
field through a guarded ``object.__setattr__`` (about 3 us a task), and
even the slot descriptors' ``__set__`` (what this module used before) cost
a call per field. So an attempt's spec is filled in as a
``_Draft``, a plain slotted dataclass with ``TaskSpec``'s slots whose
``__init__`` stores them directly, and then becomes a ``TaskSpec`` by
assigning its ``__class__``: Python allows that only between classes of the
same layout (same slots, same base), and checks it. The result is an
ordinary ``TaskSpec``, frozen like any other. ``tests/unit/test_scheduler.py``
checks that it equals the spec built field by field, for every kind and
option.

The constant values are shared by the job's specs (``kwargs``, ``env``: the
same objects ``JobSpec.task_fields`` shares); nobody mutates a sent task.
"""

from __future__ import annotations

from dataclasses import make_dataclass
from typing import Any

from engine.spec import JobSpec
from nodeagent.protocol import TaskSpec

_FIELDS: tuple[str, ...] = TaskSpec.__slots__
_Draft = make_dataclass("_Draft", _FIELDS, slots=True)
_POSITION = {name: position for position, name in enumerate(_FIELDS)}
_ID, _REPORT_START, _ARGS = _POSITION["id"], _POSITION["report_start"], _POSITION["args"]


class RunSpecs:
    """Makes the ``TaskSpec`` of any attempt of one job."""

    __slots__ = ("_values", "_item_fields", "_items", "_extra_args")

    def __init__(self, spec: JobSpec) -> None:
        example = TaskSpec("", spec.kind, **spec.task_fields(0)) if spec.task_count() else TaskSpec("", spec.kind)
        self._values = [getattr(example, name) for name in _FIELDS]
        self._item_fields = spec.item_fields
        # A call or pickle task's only item field is ``args``: its item, then
        # the job's args (``JobSpec.item_fields``). Made here without the
        # dict that ``item_fields`` returns; shell tasks go through it.
        self._items: Any = None
        self._extra_args: tuple[Any, ...] = ()
        if spec.task_count() and spec.item_fields(0).keys() == {"args"}:
            self._items, self._extra_args = spec.items, spec.args

    def make(self, attempt_id: str, index: int, report_start: bool) -> TaskSpec:
        values = self._values.copy()
        values[_ID] = attempt_id
        values[_REPORT_START] = report_start
        if self._items is not None:
            values[_ARGS] = [self._items[index], *self._extra_args]
        else:
            for name, value in self._item_fields(index).items():
                values[_POSITION[name]] = value
        run = _Draft(*values)
        run.__class__ = TaskSpec  # same slots: see the module's docstring
        return run  # type: ignore[no-any-return]
