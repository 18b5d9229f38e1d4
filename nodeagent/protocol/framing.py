"""msgpack framing: frames are self-delimiting msgpack maps, decoded as a
stream with a size cap and no ext types."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import msgpack

from nodeagent.protocol.messages import (
    DEFAULT_MAX_FRAME_BYTES,
    ERR_FRAME_TOO_LARGE,
    MESSAGE_TYPES,
    Message,
    ProtocolError,
)


def _no_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(f"msgpack ext type {code} is not allowed")


def encode(message: Message) -> bytes:
    """One message as one frame."""
    return cast(bytes, msgpack.packb(message.to_wire(), use_bin_type=True))


def encode_many(messages: list[Message]) -> bytes:
    """Several frames in one write (frames are self-delimiting)."""
    packer = msgpack.Packer(use_bin_type=True)
    return b"".join(packer.pack(m.to_wire()) for m in messages)


def decode_body(obj: Any) -> Message:
    """A decoded msgpack object to a message, or ProtocolError."""
    if not isinstance(obj, dict):
        raise ProtocolError("a frame must be a map")
    mtype = obj.get("type")
    if not isinstance(mtype, str):
        raise ProtocolError("a frame needs a 'type' string")
    cls = MESSAGE_TYPES.get(mtype)
    if cls is None:
        raise ProtocolError(f"unknown message type {mtype!r}")
    return cls.from_wire(obj)


def unpack(data: bytes | bytearray, what: str) -> Any:
    """Exactly one msgpack object as the protocol allows it (string keys, no
    ext types), or a ProtocolError that starts with ``what``."""
    try:
        return msgpack.unpackb(data, strict_map_key=True, ext_hook=_no_ext, raw=False)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"{what}: {exc}") from None


def decode(frame: bytes, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Message:
    """Exactly one frame to a message."""
    if len(frame) > max_frame_bytes:
        raise ProtocolError(f"frame larger than {max_frame_bytes} bytes", ERR_FRAME_TOO_LARGE)
    return decode_body(unpack(frame, "malformed frame"))


class FrameDecoder:
    """Streaming decoder: feed bytes as they arrive, get whole messages back.

    The buffer is capped at ``max_frame_bytes``, so a peer cannot make the
    receiver hold more than one oversized frame's worth of memory.
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._unpacker = msgpack.Unpacker(
            max_buffer_size=max_frame_bytes,
            strict_map_key=True,
            ext_hook=_no_ext,
            raw=False,
            use_list=True,
        )
        self._fed = 0

    def feed(self, data: bytes) -> list[Message]:
        messages: list[Message] = []
        for obj in self.feed_raw(data):
            messages.append(decode_body(obj))
        return messages

    def feed_raw(self, data: bytes) -> Iterator[Any]:
        """Yield decoded msgpack objects; raise ProtocolError on a bad stream."""
        view = memoryview(data)
        start = 0
        # Feed no more than the room left under the cap (the unpacker still
        # holds the unfinished tail of the last frame): a large read of many
        # small frames is legal, only a single frame over the cap is not.
        while start < len(view) or not view:
            room = self.max_frame_bytes - (self._fed - self._unpacker.tell())
            if room <= 0:
                raise ProtocolError(f"frame larger than {self.max_frame_bytes} bytes", ERR_FRAME_TOO_LARGE)
            chunk = view[start : start + room]
            self._unpacker.feed(chunk)
            self._fed += len(chunk)
            start += len(chunk)
            yield from self._drain()
            if not view:
                return

    def _drain(self) -> Iterator[Any]:
        unpacker = self._unpacker
        while True:
            try:
                obj = unpacker.unpack()
            except msgpack.OutOfData:
                return
            except ProtocolError:
                raise
            except Exception as exc:  # msgpack raises ValueError, TypeError, FormatError, ...
                raise ProtocolError(f"malformed frame: {exc}") from None
            yield obj
