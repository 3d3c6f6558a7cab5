"""The gRPC health probe against real grpcio servers with the official health servicer, and against
hand-written HTTP/2 servers on raw sockets for the protocol's corners.

Each test checks both the outcome and the detail the prober reports."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import hpack
import pytest
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from helpers import RawServer, attempt, has_ipv6_loopback

from ehc import __version__
from ehc.probe import FAIL, OK
from ehc.probe.grpc import GrpcProber
from ehc.wire.checks import Grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UNKNOWN = health_pb2.HealthCheckResponse.UNKNOWN
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


async def probe(ip: str, check: Grpc, timeout: float = 2.0) -> tuple[int, float, str]:
    return await attempt(GrpcProber, ip, check, timeout)


# ---- real grpcio servers ----------------------------------------------------------------------------


@dataclass
class GrpcServer:
    port: int
    health: health.HealthServicer | None
    server: grpc.Server


def start_grpc(address: str = "127.0.0.1:0", servicer: object | None = None) -> GrpcServer:
    """A grpcio server; with the official HealthServicer unless ``servicer`` is given (``False``:
    no health service at all)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    official = None
    if servicer is None:
        official = health.HealthServicer()
        official.set("shop", SERVING)
        official.set("down", NOT_SERVING)
        official.set("undecided", UNKNOWN)
        servicer = official
    if servicer is not False:
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port(address)
    server.start()
    return GrpcServer(port, official, server)


@pytest.fixture
def grpc_server() -> Iterator[GrpcServer]:
    g = start_grpc()
    yield g
    g.server.stop(0)


@pytest.mark.parametrize(
    ("service", "outcome", "detail"),
    [
        ("", OK, ""),  # the whole server: SERVING by default in the official servicer
        ("shop", OK, ""),
        ("down", FAIL, "health status NOT_SERVING"),
        ("undecided", FAIL, "health status UNKNOWN"),
        ("no-such-service", FAIL, "gRPC status NOT_FOUND (the server does not know the service)"),
    ],
)
async def test_official_health_servicer(
    grpc_server: GrpcServer, service: str, outcome: int, detail: str
) -> None:
    result, latency, said = await probe("127.0.0.1", Grpc(grpc_server.port, service))
    assert (result, said) == (outcome, detail)
    assert latency > 0


async def test_a_server_without_the_health_service_is_unimplemented() -> None:
    g = start_grpc(servicer=False)
    try:
        result, _, said = await probe("127.0.0.1", Grpc(g.port))
    finally:
        g.server.stop(0)
    assert result == FAIL
    assert said.startswith("gRPC status UNIMPLEMENTED (no health service)"), said


async def test_a_status_change_is_seen_by_the_next_probe(grpc_server: GrpcServer) -> None:
    servicer = grpc_server.health
    assert servicer is not None
    check = Grpc(grpc_server.port, "flapping")
    servicer.set("flapping", SERVING)
    assert (await probe("127.0.0.1", check))[::2] == (OK, "")
    servicer.set("flapping", NOT_SERVING)
    assert (await probe("127.0.0.1", check))[::2] == (FAIL, "health status NOT_SERVING")
    servicer.set("flapping", SERVICE_UNKNOWN)
    assert (await probe("127.0.0.1", check))[::2] == (FAIL, "health status SERVICE_UNKNOWN")
    servicer.set("flapping", SERVING)
    assert (await probe("127.0.0.1", check))[::2] == (OK, "")
    servicer.enter_graceful_shutdown()  # every service NOT_SERVING, as a server on its way out
    assert (await probe("127.0.0.1", check))[::2] == (FAIL, "health status NOT_SERVING")
    assert (await probe("127.0.0.1", Grpc(grpc_server.port)))[::2] == (FAIL, "health status NOT_SERVING")


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback (::1) on this host")
async def test_ipv6() -> None:
    g = start_grpc("[::1]:0")
    try:
        assert (await probe("::1", Grpc(g.port, "shop")))[::2] == (OK, "")
        assert (await probe("::1", Grpc(g.port, "down")))[::2] == (FAIL, "health status NOT_SERVING")
    finally:
        g.server.stop(0)


async def test_many_probes_at_once(grpc_server: GrpcServer) -> None:
    loop = asyncio.get_running_loop()
    prober = GrpcProber(loop, 10.0)  # generous: 200 calls queue on 8 server threads
    results: list[tuple[int, str]] = []
    all_in = loop.create_future()

    def done(outcome: int, latency: float, detail: str) -> None:
        results.append((outcome, detail))
        if len(results) == 200:
            all_in.set_result(None)

    for i in range(200):
        prober.start("127.0.0.1", socket.AF_INET, Grpc(grpc_server.port, "shop" if i % 2 else ""), done)
    assert prober.in_flight == 200 and results == []
    await all_in
    assert results == [(OK, "")] * 200
    assert prober.in_flight == 0
    prober.close()


class _Recording(health_pb2_grpc.HealthServicer):
    """A health servicer of our own that notes what each call carried."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float | None, dict[str, str]]] = []

    def Check(self, request, context):  # type: ignore[no-untyped-def]  (grpc's method name)
        self.calls.append((request.service, context.time_remaining(), dict(context.invocation_metadata())))
        return health_pb2.HealthCheckResponse(status=SERVING)


async def test_the_server_sees_the_deadline_the_service_and_the_user_agent() -> None:
    recording = _Recording()
    g = start_grpc(servicer=recording)
    try:
        result, _, said = await probe("127.0.0.1", Grpc(g.port, "checkout.v1.Cart"), timeout=1.5)
    finally:
        g.server.stop(0)
    assert (result, said) == (OK, "")
    [(service, remaining, metadata)] = recording.calls
    assert service == "checkout.v1.Cart"
    # Without grpc-timeout grpcio reports an effectively infinite time (about 9.2e18 s) remaining.
    assert remaining is not None and 0 < remaining <= 1.5 + 0.5, remaining
    assert metadata.get("user-agent") == f"endpoint-health-checker/{__version__}"


# ---- servers that are not gRPC servers --------------------------------------------------------------


def read_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = conn.recv(n - len(data))
        if not more:
            raise ConnectionError(f"the client closed after {len(data)} of {n} bytes")
        data += more
    return data


async def test_a_listener_that_never_speaks_times_out() -> None:
    with RawServer(lambda conn, raw: raw.hold(conn)) as raw:
        result, _, said = await probe("127.0.0.1", Grpc(raw.port), timeout=0.3)
    assert (result, said) == (FAIL, "timeout waiting for the response")


async def test_an_http1_server_is_not_an_http2_server() -> None:
    """http.server (which, on Python 3.11, answers the preface's "PRI * HTTP/2.0" line with a bare
    HTML error page) and aiohttp (a 400)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        result, _, said = await probe("127.0.0.1", Grpc(server.server_address[1]))
    finally:
        server.shutdown()
        server.server_close()
    assert result == FAIL
    assert said.startswith("not an HTTP/2 server: it answered b'"), said

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        result, _, said = await probe("127.0.0.1", Grpc(runner.addresses[0][1]))
    finally:
        await runner.cleanup()
    assert (result, said) == (FAIL, "not an HTTP/2 server: it answered b'HTTP/1.0 400 Bad Request'")


@pytest.mark.parametrize(
    "garbage", [b"SSH-2.0-OpenSSH_9.6\r\n", bytes(range(256)), b"\x00\x00\x06\x04\x01\x00\x00\x00\x00"]
)
async def test_a_server_that_sends_garbage(garbage: bytes) -> None:
    """An SSH banner, binary noise, and a SETTINGS *acknowledgement* where the server's SETTINGS must be."""

    def handler(conn: socket.socket, raw: RawServer) -> None:
        conn.sendall(garbage)
        raw.hold(conn)

    with RawServer(handler) as raw:
        result, _, said = await probe("127.0.0.1", Grpc(raw.port))
    assert (result, said) == (FAIL, f"not an HTTP/2 server: it answered {garbage[:24]!r}")


# ---- hand-written HTTP/2 servers: the protocol's corners --------------------------------------------

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0,
    1,
    2,
    3,
    4,
    6,
    7,
    8,
    9,
)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload


def read_frame(conn: socket.socket) -> tuple[int, int, int, bytes]:
    head = read_exactly(conn, 9)
    length = int.from_bytes(head[:3], "big")
    return head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, read_exactly(conn, length)


def message(payload: bytes, compressed: bool = False) -> bytes:
    """A gRPC length-prefixed message."""
    return bytes((compressed,)) + len(payload).to_bytes(4, "big") + payload


def health_reply(status: int) -> bytes:
    """A serialized HealthCheckResponse (by the protobuf library, not by hand)."""
    return health_pb2.HealthCheckResponse(status=status).SerializeToString()  # type: ignore[arg-type]


SERVER_SETTINGS = frame(
    SETTINGS, 0, 0, (3).to_bytes(2, "big") + (100).to_bytes(4, "big")
)  # MAX_CONCURRENT_STREAMS


@dataclass
class Call:
    """What the client sent: its frames in order, the request's headers and its message."""

    frames: list[tuple[int, int, int, bytes]] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    data: bytes = b""


def read_call(conn: socket.socket) -> Call:
    """Read the client's preface and frames up to the end of stream 1."""
    assert read_exactly(conn, len(PREFACE)) == PREFACE
    call = Call()
    decoder = hpack.Decoder()
    while True:
        kind, flags, stream, payload = read_frame(conn)
        call.frames.append((kind, flags, stream, payload))
        if kind == HEADERS and stream == 1:
            assert flags & END_HEADERS
            call.headers = [(k, v) for k, v in decoder.decode(payload)]
        elif kind == DATA and stream == 1:
            call.data += payload
        if stream == 1 and flags & END_STREAM:
            return call


def serving_reply(encoder: hpack.Encoder, status: int = SERVING) -> bytes:
    return (
        frame(
            HEADERS,
            END_HEADERS,
            1,
            encoder.encode([(":status", "200"), ("content-type", "application/grpc")]),
        )
        + frame(DATA, 0, 1, message(health_reply(status)))
        + frame(
            HEADERS, END_HEADERS | END_STREAM, 1, encoder.encode([("grpc-status", "0"), ("grpc-message", "")])
        )
    )


def h2_server(
    script: Callable[[socket.socket, Call, hpack.Encoder], None], calls: list[Call] | None = None
) -> RawServer:
    """A raw HTTP/2 server: reads the call, then lets ``script`` answer; holds the connection after."""

    def handler(conn: socket.socket, raw: RawServer) -> None:
        call = read_call(conn)
        if calls is not None:
            calls.append(call)
        script(conn, call, hpack.Encoder())
        raw.hold(conn)

    return RawServer(handler)


async def test_the_request_on_the_wire() -> None:
    """What a server must see: the preface, SETTINGS without push, one POST with the gRPC headers and
    the deadline, and the HealthCheckRequest; then the acknowledgement of the server's SETTINGS."""
    calls: list[Call] = []
    acked = threading.Event()

    def script(conn: socket.socket, call: Call, encoder: hpack.Encoder) -> None:
        conn.sendall(SERVER_SETTINGS)
        while True:
            kind, flags, _, _ = read_frame(conn)
            if kind == SETTINGS and flags & ACK:
                acked.set()
                break
        conn.sendall(serving_reply(encoder))

    with h2_server(script, calls) as raw:
        result, _, said = await probe("127.0.0.1", Grpc(raw.port, "shop"), timeout=1.5)
    assert (result, said) == (OK, "")
    assert acked.is_set()
    [call] = calls
    settings = [f for f in call.frames if f[0] == SETTINGS]
    assert settings[0][:3] == (SETTINGS, 0, 0) and settings[0][3] == (2).to_bytes(2, "big") + (0).to_bytes(
        4, "big"
    )
    assert dict(call.headers) == {
        ":method": "POST",
        ":scheme": "http",
        ":path": "/grpc.health.v1.Health/Check",
        ":authority": f"127.0.0.1:{raw.port}",
        "content-type": "application/grpc",
        "te": "trailers",
        "user-agent": f"endpoint-health-checker/{__version__}",
        "grpc-timeout": "1500m",
    }
    assert call.data[:1] == b"\x00"  # not compressed
    request = health_pb2.HealthCheckRequest.FromString(call.data[5:])
    assert int.from_bytes(call.data[1:5], "big") == len(call.data) - 5 and request.service == "shop"


async def test_pings_are_answered() -> None:
    """A server may PING before it answers; the reply must echo the payload with ACK."""
    pinged = threading.Event()

    def script(conn: socket.socket, call: Call, encoder: hpack.Encoder) -> None:
        conn.sendall(SERVER_SETTINGS + frame(PING, 0, 0, b"ehc-ping"))
        while True:
            kind, flags, stream, payload = read_frame(conn)
            if kind == PING:
                assert (flags, stream, payload) == (ACK, 0, b"ehc-ping")
                pinged.set()
                break
        conn.sendall(serving_reply(encoder))

    with h2_server(script) as raw:
        result, _, said = await probe("127.0.0.1", Grpc(raw.port))
    assert (result, said) == (OK, "")
    assert pinged.is_set()


def replies(*parts: bytes | Callable[[hpack.Encoder], bytes], pause: float = 0.0) -> Callable[..., None]:
    """A script: send SETTINGS, then each part (bytes, or made with the connection's HPACK encoder)."""

    def script(conn: socket.socket, call: Call, encoder: hpack.Encoder) -> None:
        conn.sendall(SERVER_SETTINGS)
        for part in parts:
            data = part(encoder) if callable(part) else part
            if pause:
                for i in range(len(data)):  # byte by byte: every frame split across reads
                    conn.sendall(data[i : i + 1])
                    time.sleep(pause)
            else:
                conn.sendall(data)

    return script


def head(*extra: tuple[str, str], status: str = "200") -> Callable[[hpack.Encoder], bytes]:
    return lambda enc: frame(
        HEADERS,
        END_HEADERS,
        1,
        enc.encode([(":status", status), ("content-type", "application/grpc"), *extra]),
    )


def trailers(code: str = "0", text: str = "") -> Callable[[hpack.Encoder], bytes]:
    fields = [("grpc-status", code)] + ([("grpc-message", text)] if text else [])
    return lambda enc: frame(HEADERS, END_HEADERS | END_STREAM, 1, enc.encode(fields))


def trailers_only(code: str, text: str = "") -> Callable[[hpack.Encoder], bytes]:
    fields = [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", code)]
    fields += [("grpc-message", text)] if text else []
    return lambda enc: frame(HEADERS, END_HEADERS | END_STREAM, 1, enc.encode(fields))


def split_block(kind_flags_end: int, block: bytes, pieces: int = 3) -> bytes:
    """A header block as HEADERS + CONTINUATION frames (END_HEADERS only on the last)."""
    size = max(1, len(block) // pieces)
    chunks = [block[i : i + size] for i in range(0, len(block), size)]
    out = frame(HEADERS, kind_flags_end, 1, chunks[0])
    for i, chunk in enumerate(chunks[1:], 1):
        out += frame(CONTINUATION, END_HEADERS if i == len(chunks) - 1 else 0, 1, chunk)
    return out


SERVING_MESSAGE = frame(DATA, 0, 1, message(health_reply(SERVING)))

H2_CASES = [
    pytest.param(replies(head(), SERVING_MESSAGE, trailers()), OK, "", id="serving"),
    pytest.param(
        replies(head(), SERVING_MESSAGE, trailers(), pause=0.0005), OK, "", id="serving-one-byte-at-a-time"
    ),
    pytest.param(
        replies(
            lambda enc: split_block(
                0, enc.encode([(":status", "200"), ("content-type", "application/grpc")])
            ),
            SERVING_MESSAGE,
            lambda enc: split_block(END_STREAM, enc.encode([("grpc-status", "0"), ("grpc-message", "fine")])),
        ),
        OK,
        "",
        id="headers-and-trailers-in-continuation-frames",
    ),
    pytest.param(
        replies(
            lambda enc: frame(
                HEADERS,
                END_HEADERS | PADDED | PRIORITY_FLAG,
                1,
                b"\x04" + b"\x00\x00\x00\x00\x10" + enc.encode([(":status", "200")]) + b"\x00" * 4,
            ),
            frame(DATA, PADDED, 1, b"\x07" + message(health_reply(SERVING)) + b"\x00" * 7),
            trailers(),
        ),
        OK,
        "",
        id="padding-and-priority",
    ),
    pytest.param(
        replies(
            frame(WINDOW_UPDATE, 0, 0, (65535).to_bytes(4, "big")),
            frame(PRIORITY, 0, 3, b"\x00\x00\x00\x00\x10"),
            head(),
            frame(DATA, END_STREAM, 3, message(health_reply(NOT_SERVING))),  # another stream: not ours
            SERVING_MESSAGE,
            trailers(),
        ),
        OK,
        "",
        id="frames-for-the-connection-and-other-streams-are-ignored",
    ),
    pytest.param(
        replies(
            frame(GOAWAY, 0, 0, (1).to_bytes(4, "big") + (0).to_bytes(4, "big")),
            head(),
            SERVING_MESSAGE,
            trailers(),
        ),
        OK,
        "",
        id="graceful-goaway-still-answers-the-call",
    ),
    pytest.param(
        replies(head(), frame(DATA, 0, 1, message(health_reply(SERVING) + b"\x12\x03abc")), trailers()),
        OK,
        "",
        id="unknown-fields-in-the-reply",
    ),
    pytest.param(
        replies(frame(RST_STREAM, 0, 1, (7).to_bytes(4, "big"))),
        FAIL,
        "the server reset the call (REFUSED_STREAM)",
        id="rst-stream",
    ),
    pytest.param(
        replies(frame(GOAWAY, 0, 0, (0).to_bytes(4, "big") + (11).to_bytes(4, "big") + b"calm down")),
        FAIL,
        "the server refused the call (GOAWAY ENHANCE_YOUR_CALM)",
        id="goaway-last-stream-0",
    ),
    pytest.param(
        replies(head(status="503")),
        FAIL,
        "HTTP 503 (not a gRPC server?)",
        id="http-503",
    ),
    pytest.param(
        replies(trailers_only("5", "unknown%20service%20%22shop%22")),
        FAIL,
        'gRPC status NOT_FOUND (the server does not know the service): unknown service "shop"',
        id="trailers-only-not-found",
    ),
    pytest.param(
        replies(head(), trailers("14", "draining")),
        FAIL,
        "gRPC status UNAVAILABLE: draining",
        id="unavailable-in-trailers",
    ),
    pytest.param(
        replies(trailers_only("99")),
        FAIL,
        "gRPC status 99",
        id="unknown-grpc-code",
    ),
    pytest.param(
        replies(head(), frame(DATA, END_STREAM, 1, message(health_reply(SERVING)))),
        FAIL,
        "the call ended without a gRPC status",
        id="data-ends-the-stream-without-trailers",
    ),
    pytest.param(
        replies(
            head(),
            SERVING_MESSAGE,
            lambda enc: frame(HEADERS, END_HEADERS | END_STREAM, 1, enc.encode([("x", "y")])),
        ),
        FAIL,
        "the call ended without a gRPC status",
        id="trailers-without-grpc-status",
    ),
    pytest.param(
        replies(head(), trailers()),
        FAIL,
        "the call succeeded without a reply message",
        id="ok-without-a-message",
    ),
    pytest.param(
        replies(head(), frame(DATA, 0, 1, message(b"")), trailers()),
        FAIL,
        "health status UNKNOWN",  # proto3: an absent status is its default, UNKNOWN
        id="empty-message",
    ),
    pytest.param(
        replies(head(), frame(DATA, 0, 1, message(health_reply(SERVING), compressed=True)), trailers()),
        FAIL,
        "the reply is compressed (ehc asked for none)",
        id="compressed",
    ),
    pytest.param(
        replies(head(), frame(DATA, 0, 1, message(b"\x08")), trailers()),
        FAIL,
        "malformed HealthCheckResponse",
        id="truncated-protobuf",
    ),
    pytest.param(
        replies(head(), frame(DATA, 0, 1, message(health_reply(SERVING))[:-1]), trailers()),
        FAIL,
        "malformed reply: message cut short",
        id="message-cut-short",
    ),
    pytest.param(
        replies(frame(HEADERS, END_HEADERS, 1, b"\xff\xff\xff\xff\x0f")),
        FAIL,
        f"malformed reply headers: {hpack.InvalidTableIndex.__name__}",  # index 2^28: no such entry
        id="bad-hpack",
    ),
    pytest.param(
        replies(frame(DATA, PADDED, 1, b"\x09abc")),
        FAIL,
        "malformed reply: bad DATA padding",
        id="bad-padding",
    ),
    pytest.param(
        replies((20000).to_bytes(3, "big") + bytes((DATA, 0)) + (1).to_bytes(4, "big")),
        FAIL,
        "malformed reply: a 20000-byte frame (at most 16384)",
        id="frame-too-big",
    ),
    pytest.param(
        replies(*[frame(PING, ACK, 0, b"12345678")] * 4000),
        FAIL,
        "reply over 64 KiB",
        id="endless-reply",
    ),
]


@pytest.mark.parametrize(("script", "outcome", "detail"), H2_CASES)
async def test_http2_corners(script: Callable[..., None], outcome: int, detail: str) -> None:
    with h2_server(script) as raw:
        result, _, said = await probe("127.0.0.1", Grpc(raw.port), timeout=2.0)
    assert (result, said) == (outcome, detail)


def closes_after(*parts: bytes, reset: bool = False) -> Callable[[socket.socket, RawServer], None]:
    def handler(conn: socket.socket, raw: RawServer) -> None:
        read_call(conn)
        for part in parts:
            conn.sendall(part)
        time.sleep(0.02)  # the client has read it all (and acknowledged the SETTINGS)
        if reset:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            conn.close()
            return
        conn.shutdown(socket.SHUT_WR)  # a FIN (closing with the ACK unread would send a RST instead)
        raw.hold(conn)

    return handler


@pytest.mark.parametrize(
    ("handler", "detail"),
    [
        pytest.param(
            closes_after(), "connection closed before a reply (not a gRPC server?)", id="closed-at-once"
        ),
        pytest.param(
            closes_after(SERVER_SETTINGS),
            "connection closed before the call ended",
            id="closed-after-settings",
        ),
        pytest.param(
            closes_after(SERVER_SETTINGS, frame(HEADERS, 0, 1, hpack.Encoder().encode([(":status", "200")]))),
            "connection closed before the call ended",
            id="closed-waiting-for-continuation",
        ),
        pytest.param(closes_after(SERVER_SETTINGS, reset=True), "connection reset", id="reset"),
    ],
)
async def test_a_connection_that_ends_early(
    handler: Callable[[socket.socket, RawServer], None], detail: str
) -> None:
    with RawServer(handler) as raw:
        result, _, said = await probe("127.0.0.1", Grpc(raw.port))
    assert (result, said) == (FAIL, detail)


async def test_refused(closed_port: int) -> None:
    assert (await probe("127.0.0.1", Grpc(closed_port)))[::2] == (FAIL, "connrefused")


async def test_remembered_header_decodings_give_the_answers_a_fresh_decoder_would() -> None:
    """One prober, several connections: the reply headers it has decoded before are remembered, and a
    new block after a remembered one is decoded against the table the remembered ones built (these
    trailers name content-type through the dynamic-table entry the response headers added)."""
    loop = asyncio.get_running_loop()
    prober = GrpcProber(loop, 2.0)

    async def once(port: int) -> tuple[int, str]:
        fut: asyncio.Future[tuple[int, str]] = loop.create_future()
        prober.start("127.0.0.1", socket.AF_INET, Grpc(port), lambda o, _l, d: fut.set_result((o, d)))
        return await fut

    def reply(code: str) -> Callable[..., None]:
        fields = [("grpc-status", code), ("content-type", "application/grpc")]
        fields += [("grpc-message", "unknown service")] if code != "0" else []
        return replies(
            head(),
            frame(DATA, 0, 1, message(health_reply(SERVING))),
            lambda enc: frame(HEADERS, END_HEADERS | END_STREAM, 1, enc.encode(fields)),
        )

    answers = []
    for code in ("0", "5", "0", "5"):
        with h2_server(reply(code)) as raw:
            answers.append(await once(raw.port))
    prober.close()
    not_found = (FAIL, "gRPC status NOT_FOUND (the server does not know the service): unknown service")
    assert answers == [(OK, ""), not_found, (OK, ""), not_found]
