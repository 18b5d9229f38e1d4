"""Spooled values going out on one console channel.

A result whose value waits in a spool file (``TaskResult.value_size``) goes
out as ``value`` frames read from that file, a chunk at a time, then the
result itself in a ``finished`` frame of its own. A session asks for a few
chunks per write, so a 50 MB value shares the channel with everything else
and, like everything else, waits while the console's window is closed: the
agent never holds more than a few chunks of it in memory.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from nodeagent.protocol import (
    OUTCOME_ERROR,
    VALUE_CHUNK_BYTES,
    Finished,
    TaskResult,
    Value,
    encode,
)

log = logging.getLogger("shoal.agent")


class ValueSender:
    def __init__(self, value_path: Callable[[str], Path], chunk_bytes: int = VALUE_CHUNK_BYTES) -> None:
        self._value_path = value_path  # attempt id -> its spool file
        self._chunk_bytes = chunk_bytes
        self._waiting: deque[TaskResult] = deque()
        self._current: TaskResult | None = None
        self._file: BinaryIO | None = None
        self._offset = 0
        self._open_error = ""

    def add(self, result: TaskResult) -> None:
        self._waiting.append(result)

    def __bool__(self) -> bool:
        return self._current is not None or bool(self._waiting)

    def frames(self, max_chunks: int) -> list[bytes]:
        """The next frames to write: at most ``max_chunks`` value chunks, and
        the result of each value finished by them."""
        out: list[bytes] = []
        chunks = 0
        while chunks < max_chunks and (self._current is not None or self._waiting):
            if self._current is None:
                self._open(self._waiting.popleft())
            result, file = self._current, self._file
            assert result is not None
            if file is None:
                out.append(self._give_up(result, self._open_error))
                continue
            try:
                data = file.read(min(self._chunk_bytes, result.value_size - self._offset))
            except OSError as exc:
                out.append(self._give_up(result, f"cannot read its spool file: {exc}"))
                continue
            if not data:
                out.append(self._give_up(result, f"its spool file ends at byte {self._offset}"))
                continue
            out.append(encode(Value(id=result.id, offset=self._offset, data=data)))
            chunks += 1
            self._offset += len(data)
            if self._offset >= result.value_size:
                out.append(encode(Finished(results=[result])))
                self._done()
        return out

    def _open(self, result: TaskResult) -> None:
        self._current = result
        self._offset = 0
        try:
            self._file = open(self._value_path(result.id), "rb")  # noqa: SIM115 (kept open across writes)
        except OSError as exc:
            self._file = None
            self._open_error = f"cannot open its spool file: {exc}"

    def _give_up(self, result: TaskResult, why: str) -> bytes:
        """The value cannot be sent whole: the console gets an error it can
        ack (a partial value it holds is dropped when this arrives)."""
        log.error("value of %s: %s", result.id, why)
        self._done()
        failed = TaskResult(
            id=result.id, outcome=OUTCOME_ERROR, error=f"the agent lost the value: {why}",
            exit_code=result.exit_code, started=result.started, ended=result.ended,
            stdout=result.stdout, stderr=result.stderr,
        )  # fmt: skip
        return encode(Finished(results=[failed]))

    def _done(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._current = None
        self._offset = 0

    def close(self) -> None:
        self._done()
        self._waiting.clear()
