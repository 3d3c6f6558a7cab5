"""gRPC health probe: one ``grpc.health.v1.Health/Check`` call over a new plaintext HTTP/2 connection.

Only a reply of ``SERVING`` is healthy.  ``NOT_SERVING`` and ``UNKNOWN``, a non-OK gRPC status
(``NOT_FOUND``: the server does not know the service; ``UNIMPLEMENTED``: it has no health service),
an HTTP status other than 200, a reset or refused stream, a malformed frame, a server that does not
speak HTTP/2 and a timeout are failures, each named in the detail.  The deadline travels in
``grpc-timeout`` so the server gives up when ehc does.

The client side of one unary call is a fixed run of frames, so ehc writes them itself: the
connection preface, SETTINGS, one HEADERS block (HPACK literals, no Huffman, no table) and one DATA
frame with the ``HealthCheckRequest``.  The reply's header blocks are decoded with ``hpack`` (the
python-hyper HPACK codec), the one protobuf field by hand.  Every connection starts with an empty
HPACK table, so a server's replies decode the same way every time: the prober remembers the headers
decoded from each sequence of blocks it has seen, and decodes only what it has not.  A new ``h2``
connection per probe costs 33 times as much to build and parse, and a probe with it or with
``grpc.aio`` (a new channel each time) about 5 times the CPU of this one (``perf/README.md``).
"""

from __future__ import annotations

import urllib.parse

import hpack

from ehc import __version__
from ehc.probe import FAIL, OK
from ehc.probe.stream import StreamProber, Verdict
from ehc.wire.checks import Grpc

PATH = "/grpc.health.v1.Health/Check"
STATUS_NAMES = ("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")
CODE_NAMES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)  # fmt: skip
H2_ERRORS = (
    "NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT", "STREAM_CLOSED",
    "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR", "CONNECT_ERROR", "ENHANCE_YOUR_CALM",
    "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED",
)  # fmt: skip
REPLY_LIMIT = 64 * 1024
"""Most bytes read for one reply; a health reply is a few dozen."""

_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY, _CONTINUATION = 0, 1, 3, 4, 6, 7, 9
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
_MAX_FRAME = 16384  # SETTINGS_MAX_FRAME_SIZE, which ehc leaves at its default
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload


def _integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer (RFC 7541 §5.1) after ``first``'s flag bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(index: int, value: str, name: str = "") -> bytes:
    """A header field as a literal never added to the table: by static-table name index, or new name."""
    raw = value.encode()
    head = _integer(index, 4) if index else b"\x00" + _integer(len(name), 7) + name.encode()
    return head + _integer(len(raw), 7) + raw


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SETTINGS_ACK = _frame(_SETTINGS, _ACK, 0, b"")
_SETTINGS_NO_PUSH = _frame(_SETTINGS, 0, 0, (2).to_bytes(2, "big") + (0).to_bytes(4, "big"))
_FIXED_HEADERS = (
    b"\x83\x86"  # :method POST, :scheme http (static table 3 and 6)
    + _literal(4, PATH)  # :path
    + _literal(31, "application/grpc")  # content-type
    + _literal(0, "trailers", "te")
    + _literal(58, f"endpoint-health-checker/{__version__}")  # user-agent
)


_DECODED_MAX = 1024
"""Bound on remembered header decodings: a server that varies its headers must not grow it for ever."""

Decoded = dict[tuple[bytes, ...], dict[bytes, bytes]]
"""The header blocks of one connection so far → the headers the last of them decodes to."""


class GrpcProber(StreamProber):
    __slots__ = ("_decoded", "_timeout_header")

    def __init__(self, loop, timeout: float) -> None:  # type: ignore[no-untyped-def]
        super().__init__(loop, timeout)
        self._timeout_header = _literal(0, f"{max(1, round(timeout * 1000))}m", "grpc-timeout")
        self._decoded: Decoded = {}

    def exchange(self, ip: str, check: Grpc) -> _GrpcExchange:  # type: ignore[override]
        authority = f"{f'[{ip}]' if ':' in ip else ip}:{check.port}"
        service = check.service.encode()
        message = b"\x0a" + _varint(len(service)) + service if service else b""
        block = _FIXED_HEADERS + self._timeout_header + _literal(1, authority)  # :authority
        request = (
            _PREFACE
            + _SETTINGS_NO_PUSH
            + _frame(_HEADERS, _END_HEADERS, 1, block)
            + _frame(_DATA, _END_STREAM, 1, b"\x00" + len(message).to_bytes(4, "big") + message)
        )
        if len(self._decoded) >= _DECODED_MAX:
            self._decoded.clear()
        return _GrpcExchange(request, self._decoded)


class _GrpcExchange:
    """The client's side of one call: reads frames, answers SETTINGS and PING, judges the reply."""

    __slots__ = (
        "_block",
        "_block_ends_stream",
        "_blocks",
        "_buffer",
        "_data",
        "_decoded",
        "_decoder",
        "_headers_seen",
        "_received",
        "_request",
        "_settings_seen",
        "reply",
    )

    def __init__(self, request: bytes, decoded: Decoded) -> None:
        self._request = request
        self._decoded = decoded
        self._blocks: tuple[bytes, ...] = ()  # the header blocks decoded so far, in order
        self._buffer = b""
        self._received = 0
        self._settings_seen = False
        self._headers_seen = False
        self._block = b""  # a header block still waiting for its CONTINUATION frames
        self._block_ends_stream = False
        self._data = b""
        self._decoder: hpack.Decoder | None = None
        self.reply = b""

    def request(self) -> bytes:
        return self._request

    def feed(self, data: bytes) -> Verdict | None:
        if not data:
            if not self._received:
                return FAIL, "connection closed before a reply (not a gRPC server?)"
            return FAIL, "connection closed before the call ended"
        self._received += len(data)
        if self._received > REPLY_LIMIT:
            return FAIL, f"reply over {REPLY_LIMIT // 1024} KiB"
        buffer = self._buffer + data if self._buffer else data
        at, end = 0, len(buffer)
        while end - at >= 9:
            length = int.from_bytes(buffer[at : at + 3], "big")
            kind, flags = buffer[at + 3], buffer[at + 4]
            stream = int.from_bytes(buffer[at + 5 : at + 9], "big") & 0x7FFFFFFF
            if not self._settings_seen:
                if kind != _SETTINGS or flags & _ACK or length % 6:
                    return FAIL, f"not an HTTP/2 server: it answered {bytes(buffer[:24])!r}"
                self._settings_seen = True
            if length > _MAX_FRAME:
                return FAIL, f"malformed reply: a {length}-byte frame (at most {_MAX_FRAME})"
            if end - at - 9 < length:
                break
            payload = buffer[at + 9 : at + 9 + length]
            at += 9 + length
            verdict = self._frame(kind, flags, stream, payload)
            if verdict is not None:
                return verdict
        self._buffer = buffer[at:]
        return None

    def _frame(self, kind: int, flags: int, stream: int, payload: bytes) -> Verdict | None:
        if kind == _SETTINGS:
            if not flags & _ACK:
                self.reply += _SETTINGS_ACK
            return None
        if kind == _PING:
            if not flags & _ACK:
                self.reply += _frame(_PING, _ACK, 0, payload)
            return None
        if kind == _GOAWAY:
            if len(payload) >= 8 and int.from_bytes(payload[:4], "big") & 0x7FFFFFFF < 1:
                return FAIL, f"the server refused the call (GOAWAY {_h2_error(payload[4:8])})"
            return None
        if stream != 1:
            return None  # WINDOW_UPDATE, PRIORITY and whatever else: nothing to judge
        if kind == _RST_STREAM:
            return FAIL, f"the server reset the call ({_h2_error(payload[:4])})"
        if kind == _DATA:
            body = _unpad(payload, flags)
            if body is None:
                return FAIL, "malformed reply: bad DATA padding"
            self._data += body
            if flags & _END_STREAM:
                return FAIL, "the call ended without a gRPC status"
            return None
        if kind == _HEADERS:
            fragment = _unpad(payload, flags)
            if fragment is None:
                return FAIL, "malformed reply: bad HEADERS padding"
            if flags & _PRIORITY:
                fragment = fragment[5:]
            self._block, self._block_ends_stream = fragment, bool(flags & _END_STREAM)
        elif kind == _CONTINUATION:
            self._block += payload
        else:
            return None
        if not flags & _END_HEADERS:
            return None
        block, self._block = self._block, b""
        return self._headers(block, self._block_ends_stream)

    def _headers(self, block: bytes, ends_stream: bool) -> Verdict | None:
        seen = self._blocks
        self._blocks = key = (*seen, block)
        headers = self._decoded.get(key)
        if headers is None:
            try:
                if self._decoder is None:  # the earlier blocks were remembered: replay them first
                    self._decoder = hpack.Decoder()
                    for earlier in seen:
                        self._decoder.decode(earlier, raw=True)
                headers = self._decoded[key] = dict(self._decoder.decode(block, raw=True))
            except hpack.HPACKError as exc:
                return FAIL, f"malformed reply headers: {type(exc).__name__}"
        if not self._headers_seen:
            self._headers_seen = True
            status = headers.get(b":status")
            if status != b"200":
                return FAIL, f"HTTP {(status or b'?').decode('latin-1')} (not a gRPC server?)"
        code = headers.get(b"grpc-status")
        if code is None:
            return (FAIL, "the call ended without a gRPC status") if ends_stream else None
        if code != b"0":
            return FAIL, _grpc_error(code, headers.get(b"grpc-message", b""))
        return _health(self._data)


def _health(data: bytes) -> Verdict:
    """Judge the ``HealthCheckResponse`` in the reply's one length-prefixed message."""
    if len(data) < 5:
        return FAIL, "the call succeeded without a reply message"
    if data[0]:
        return FAIL, "the reply is compressed (ehc asked for none)"
    length = int.from_bytes(data[1:5], "big")
    message = data[5 : 5 + length]
    if len(message) < length:
        return FAIL, "malformed reply: message cut short"
    status = _field_1(message)
    if status is None:
        return FAIL, "malformed HealthCheckResponse"
    if status == 1:
        return OK, ""
    name = STATUS_NAMES[status] if status < len(STATUS_NAMES) else str(status)
    return FAIL, f"health status {name}"


def _field_1(message: bytes) -> int | None:
    """Field 1 (varint) of a protobuf message: 0 when absent, as proto3 defaults; None if malformed."""
    value, at, end = 0, 0, len(message)
    try:
        while at < end:
            key, at = _read_varint(message, at)
            number, wire = key >> 3, key & 7
            if wire == 0:
                v, at = _read_varint(message, at)
                if number == 1:
                    value = v
            elif wire == 1:
                at += 8
            elif wire == 2:
                size, at = _read_varint(message, at)
                at += size
            elif wire == 5:
                at += 4
            else:
                return None
    except IndexError:
        return None
    return value if at == end else None


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise IndexError("varint too long")


def _unpad(payload: bytes, flags: int) -> bytes | None:
    if not flags & _PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        return None
    return payload[1 : len(payload) - payload[0]]


def _h2_error(code: bytes) -> str:
    n = int.from_bytes(code, "big") if len(code) == 4 else -1
    return H2_ERRORS[n] if 0 <= n < len(H2_ERRORS) else f"error {n}"


def _grpc_error(code: bytes, message: bytes) -> str:
    n = int(code) if code.isdigit() else -1
    name = CODE_NAMES[n] if 0 <= n < len(CODE_NAMES) else code.decode("latin-1")[:16]
    text = urllib.parse.unquote(message.decode("latin-1"))[:100]  # grpc-message is percent-encoded
    hint = {"NOT_FOUND": " (the server does not know the service)", "UNIMPLEMENTED": " (no health service)"}
    return f"gRPC status {name}{hint.get(name, '')}" + (f": {text}" if text else "")
