"""Length-prefixed msgpack frames over a byte stream (the pipes between coordinator and workers).

A frame is a 4-byte big-endian payload length followed by one msgspec-encoded message.  The decoder
accepts the stream in arbitrary chunks, so partial reads and many frames per read both work.
"""

from __future__ import annotations

import struct
from typing import Any, Generic, TypeVar

import msgspec

T = TypeVar("T")

HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024


class FrameError(ValueError):
    """The stream is not a valid frame sequence: the peer is broken and must be restarted.

    ``messages`` holds the well-formed messages that preceded the bad frame in the same feed.
    """

    def __init__(self, reason: str, messages: list[Any]) -> None:
        super().__init__(reason)
        self.messages = messages


class FrameEncoder:
    __slots__ = ("_encoder",)

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()

    def encode(self, message: Any) -> bytes:
        payload = self._encoder.encode(message)
        if len(payload) > MAX_FRAME:
            raise FrameError(f"frame of {len(payload)} bytes exceeds the {MAX_FRAME}-byte limit", [])
        return HEADER.pack(len(payload)) + payload


class FrameDecoder(Generic[T]):
    """Turns chunks of the stream into messages of type ``T`` (usually a tagged union)."""

    __slots__ = ("_buffer", "_decoder")

    def __init__(self, message_type: type[T]) -> None:
        self._decoder = msgspec.msgpack.Decoder(message_type)
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[T]:
        """Add ``data``; return every message now complete.  Raises FrameError on garbage."""
        buf = self._buffer
        buf += data
        out: list[T] = []
        pos, size = 0, len(buf)
        while size - pos >= HEADER.size:
            (length,) = HEADER.unpack_from(buf, pos)
            if length > MAX_FRAME:
                raise FrameError(f"frame header announces {length} bytes (limit {MAX_FRAME})", out)
            end = pos + HEADER.size + length
            if end > size:
                break
            try:
                out.append(self._decoder.decode(memoryview(buf)[pos + HEADER.size : end]))
            except msgspec.DecodeError as exc:
                raise FrameError(f"undecodable frame of {length} bytes: {exc}", out) from None
            pos = end
        if pos:
            del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buffer)
