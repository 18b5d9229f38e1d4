"""Each attempt's ``run`` message (``TaskSpec``), made cheaply.

Placing a task is mostly building its ``TaskSpec``, and every attempt of a
job shares all of it but the attempt id, ``report_start`` and the item's
fields (``args``, or ``argv`` / ``shell``). ``TaskSpec`` is a frozen, slotted
dataclass: its ``__init__`` stores each of its fields through a guarded
``object.__setattr__`` and makes fresh default lists, about 3 us a task, the
largest part of placing one. So a job's constant fields are worked out once,
from one spec built the ordinary way, and each attempt's spec is a new
instance whose slots are filled directly with those values (the slot
descriptors' ``__set__``: what ``__init__`` stores, without its checks).
``tests/unit/test_scheduler.py`` checks that both give equal specs for every
kind and option.

The constant values are shared by the job's specs (``kwargs``, ``env``: the
same objects ``JobSpec.task_fields`` shares); nobody mutates a sent task.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.spec import JobSpec
from nodeagent.protocol import TaskSpec

_Setter = Callable[[TaskSpec, Any], None]
_SETTERS: dict[str, _Setter] = {name: getattr(TaskSpec, name).__set__ for name in TaskSpec.__slots__}
_set_id = _SETTERS["id"]
_set_report_start = _SETTERS["report_start"]
_new = object.__new__


class RunSpecs:
    """Makes the ``TaskSpec`` of any attempt of one job."""

    __slots__ = ("_item_fields", "_constant")

    def __init__(self, spec: JobSpec) -> None:
        self._item_fields = spec.item_fields
        varying = {"id", "report_start"}
        example = TaskSpec("", spec.kind)
        if spec.task_count():
            varying.update(spec.item_fields(0))
            example = TaskSpec("", spec.kind, **spec.task_fields(0))
        self._constant = tuple((setter, getattr(example, name)) for name, setter in _SETTERS.items() if name not in varying)

    def make(self, attempt_id: str, index: int, report_start: bool) -> TaskSpec:
        run: TaskSpec = _new(TaskSpec)
        for setter, value in self._constant:
            setter(run, value)
        _set_id(run, attempt_id)
        _set_report_start(run, report_start)
        for name, value in self._item_fields(index).items():
            _SETTERS[name](run, value)
        return run
