"""Each attempt's ``run`` message (``TaskSpec``), made cheaply.

Placing a task is mostly building its ``TaskSpec``, and every attempt of a
job shares all of it but the attempt id, ``report_start`` and the item's
fields (``args``, or ``argv`` / ``shell``). So a job's spec is built once
the ordinary way, as an example, and each attempt's is a copy of it with
its own values put in.

``TaskSpec`` is a frozen, slotted dataclass: its ``__init__`` stores each
field through a guarded ``object.__setattr__`` (about 3 us a task), and
even the slot descriptors' ``__set__`` cost a call per field. So the copy
is filled in as a ``_Draft``, a plain class with ``TaskSpec``'s slots, by
straight assignments (which Python 3.11 runs as specialised slot stores,
with no call), and then becomes a ``TaskSpec`` by assigning its
``__class__``: Python allows that only between classes of the same layout
(same slots, same base), and checks it. The result is an ordinary
``TaskSpec``, frozen like any other. ``make`` names every field of
``TaskSpec``: one it did not set would be missing, which
``tests/unit/test_scheduler.py`` would find, as it checks that a made spec
equals the one built field by field, for every kind and option.

The constant values are shared by the job's specs (``kwargs``, ``env``: the
same objects ``JobSpec.task_fields`` shares); nobody mutates a sent task.
"""

from __future__ import annotations

from typing import Any

from engine.spec import JobSpec
from nodeagent.protocol import TaskSpec


class _Draft:
    __slots__ = TaskSpec.__slots__


_new = object.__new__


class RunSpecs:
    """Makes the ``TaskSpec`` of any attempt of one job."""

    __slots__ = ("_example", "_item_fields", "_items", "_extra_args")

    def __init__(self, spec: JobSpec) -> None:
        count = spec.task_count()
        self._example = TaskSpec("", spec.kind, **spec.task_fields(0)) if count else TaskSpec("", spec.kind)
        self._item_fields = spec.item_fields
        # A call or pickle task's only item field is ``args``: its item, then
        # the job's args (``JobSpec.item_fields``). Made here without the
        # dict that ``item_fields`` returns; shell tasks go through it.
        self._items: Any = None
        self._extra_args: tuple[Any, ...] = ()
        if count and spec.item_fields(0).keys() == {"args"}:
            self._items, self._extra_args = spec.items, spec.args

    def make(self, attempt_id: str, index: int, report_start: bool) -> TaskSpec:
        example = self._example
        run: Any = _new(_Draft)
        run.id = attempt_id
        run.kind = example.kind
        run.argv = example.argv
        run.shell = example.shell
        run.fn = example.fn
        run.payload = example.payload
        run.args = example.args
        run.kwargs = example.kwargs
        run.env = example.env
        run.cwd = example.cwd
        run.timeout = example.timeout
        run.slots = example.slots
        run.report_start = report_start
        run.max_result = example.max_result
        if self._items is not None:
            run.args = [self._items[index], *self._extra_args]
        else:
            for name, value in self._item_fields(index).items():
                setattr(run, name, value)
        run.__class__ = TaskSpec  # same slots: see the module's docstring
        return run  # type: ignore[no-any-return]
