"""The HTTP probe against real servers other people wrote: aiohttp, http.server, and http.server over TLS,
on IPv4 and IPv6 loopback, plus raw sockets for the ways a server can misbehave.

Each test names a kubelet rule (DESIGN.md §8) and checks both the outcome and the detail the prober
reports, and where it matters what the server saw (paths requested, headers, connections)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiohttp import web
from helpers import RawServer, attempt, has_ipv6_loopback

from ehc import __version__
from ehc.probe import FAIL, OK
from ehc.probe.http import HttpProber
from ehc.wire.checks import Http

HUGE = 50 * 1024 * 1024
"""A body far past the 10 KiB the prober reads: it must judge without reading it all."""
CHUNK = 64 * 1024


async def until(predicate: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    """Poll; ``limit`` only turns a hang into a readable failure, it is not a bound under test."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {limit:g}s")
        await asyncio.sleep(0.005)


IPV6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback (::1) on this host")


async def probe(
    ip: str,
    check: Http,
    timeout: float = 2.0,
    family: int | None = None,
    at_done: Callable[[], None] | None = None,
) -> tuple[int, float, str]:
    return await attempt(HttpProber, ip, check, timeout, family, at_done)


# ---- the servers ----------------------------------------------------------------------------------


@dataclass
class Seen:
    path: str
    headers: list[tuple[str, str]]  # as received, names lower-cased, in order
    peer: tuple[object, ...]

    def get(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]


@dataclass
class Huge:
    """What the handler streaming the huge body got to do."""

    sent: int = 0
    error: BaseException | None = None
    finished: threading.Event = field(default_factory=threading.Event)


@dataclass
class Served:
    """A running server: where it is, and what it saw."""

    kind: str
    ip: str
    port: int = 0
    https: bool = False
    seen: list[Seen] = field(default_factory=list)
    huge: Huge = field(default_factory=Huge)

    @property
    def authority(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"

    @property
    def base(self) -> str:
        return f"{'https' if self.https else 'http'}://{self.authority}"

    def check(self, path: str, **kw: object) -> Http:
        return Http(self.port, path, self.https, **kw)  # type: ignore[arg-type]

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]

    def reply(self, path: str) -> tuple[int, str | None, list[tuple[str, str]], bytes]:
        """``(status, reason or None for the standard one, headers, body)`` for a path: the same routes
        on every server."""
        path = path.split("?", 1)[0]
        other = f"{'https' if self.https else 'http'}://127.0.0.2:{self.port}"
        simple = {
            "/ok": 200,
            "/empty": 204,
            "/not-modified": 304,
            "/notfound": 404,
            "/error": 500,
            "/unavailable": 503,
        }
        if path in simple:
            status = simple[path]
            return status, None, [], b"" if status in (204, 304) else b"body of %s\n" % path.encode()
        if path.startswith("/status/"):  # the 200-399 boundary, with a reason of our own
            return int(path.rsplit("/", 1)[1]), "Custom", [], b"custom\n"
        redirects = {
            "/maintenance": (503, "Down for maintenance", None),
            "/to-ok": (301, None, "/ok"),
            "/to-ok-absolute": (301, None, f"{self.base}/ok"),
            "/to-ok-dot-relative": (302, None, "sub/../ok"),
            "/to-query": (302, None, "/ok?a=1&b=two"),
            "/to-unavailable": (301, None, "/unavailable"),
            "/to-unavailable-absolute": (308, None, f"{self.base}/unavailable"),
            "/elsewhere": (302, None, f"{other}/unavailable"),  # another host: success, not followed
            "/elsewhere-by-name": (
                307,
                None,
                f"{'https' if self.https else 'http'}://localhost:{self.port}/unavailable",
            ),
            "/loop": (302, None, "/loop"),
            "/unsupported-scheme": (302, None, f"ftp://{self.authority}/ok"),
        }
        if path in redirects:
            status, reason, location = redirects[path]
            return status, reason, [("Location", location)] if location else [], b"moved\n"
        if path.startswith("/chain/"):  # /chain/N: N redirects, then 200
            n = int(path.rsplit("/", 1)[1])
            if n == 0:
                return 200, None, [], b"end of chain\n"
            return 302, None, [("Location", f"/chain/{n - 1}")], b""
        return 404, None, [], b"no such route\n"


# aiohttp, on the test's own event loop


async def start_aiohttp(served: Served) -> web.AppRunner:
    async def handle(request: web.Request) -> web.StreamResponse:
        served.seen.append(
            Seen(
                request.path_qs,
                [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in request.raw_headers],
                request.transport.get_extra_info("peername") if request.transport else (),
            )
        )
        if request.path == "/huge":
            return await huge_aiohttp(request, served.huge)
        status, reason, headers, body = served.reply(request.path_qs)
        return web.Response(status=status, reason=reason, headers=headers, body=body or None)

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, served.ip, 0)
    await site.start()
    served.port = runner.addresses[0][1]
    return runner


async def huge_aiohttp(request: web.Request, huge: Huge) -> web.StreamResponse:
    """Streams HUGE bytes chunked (no length declared), noting how far it got and why it stopped."""
    response = web.StreamResponse()
    await response.prepare(request)
    chunk = b"x" * CHUNK
    try:
        while huge.sent < HUGE:
            await response.write(chunk)
            huge.sent += len(chunk)
    except (ConnectionError, asyncio.CancelledError) as exc:
        huge.error = exc
        if isinstance(exc, asyncio.CancelledError):
            raise
    finally:
        huge.finished.set()
    return response


# http.server, in threads, optionally behind TLS


class _Handler(BaseHTTPRequestHandler):
    served: Served  # set on a subclass per server

    def do_GET(self) -> None:
        served = self.served
        served.seen.append(
            Seen(self.path, [(k.lower(), v) for k, v in self.headers.items()], self.client_address)
        )
        if self.path == "/huge":
            self.huge(served.huge)
            return
        if self.path == "/until-close":  # HTTP/1.0 without Content-Length: the close ends the body
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"the body runs until the close\n" * 10)
            return
        status, reason, headers, body = served.reply(self.path)
        self.send_response(status, reason)
        for name, value in headers:
            self.send_header(name, value)
        if status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def huge(self, huge: Huge) -> None:
        """Declares HUGE bytes in Content-Length and writes until done or stopped."""
        self.send_response(200)
        self.send_header("Content-Length", str(HUGE))
        self.end_headers()
        chunk = b"x" * CHUNK
        try:
            while huge.sent < HUGE:
                self.wfile.write(chunk)
                huge.sent += len(chunk)
        except OSError as exc:  # ConnectionResetError, BrokenPipeError, ssl.SSLError
            huge.error = exc
        finally:
            huge.finished.set()

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a TLS handshake a test broke on purpose, a client that reset: expected here


class _Server6(_Server):
    address_family = socket.AF_INET6


def start_http_server(served: Served, tls: ssl.SSLContext | None) -> _Server:
    handler = type("Handler", (_Handler,), {"served": served})
    server = (_Server6 if ":" in served.ip else _Server)((served.ip, 0), handler)
    if tls is not None:
        # The handshake happens on the first read, in the connection's own thread.
        server.socket = tls.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        served.https = True
    served.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture(scope="session")
def server_tls(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """A server context with a throwaway self-signed certificate (which no verifying client accepts)."""
    if shutil.which("openssl") is None:
        pytest.skip(
            "needs the 'openssl' command to make a throwaway certificate (cryptography is not installed)"
        )
    d = tmp_path_factory.mktemp("tls")
    key, cert = d / "key.pem", d / "cert.pem"
    subject = "/CN=ehc-test-self-signed"
    command = ["openssl", "req", "-x509", "-nodes", "-days", "2", "-newkey", "ec"]
    command += ["-pkeyopt", "ec_paramgen_curve:prime256v1"]
    made = subprocess.run(
        [*command, "-keyout", str(key), "-out", str(cert), "-subj", subject],
        capture_output=True,
        text=True,
    )
    if made.returncode:
        pytest.skip(f"openssl could not make a certificate: {made.stderr.strip()[:200]}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def _verifying_client_rejects(port: int) -> None:
    """Proof the certificate is one a verifying client refuses (so an OK means ehc did not verify)."""
    client = ssl.create_default_context()
    with (
        socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        client.wrap_socket(raw, server_hostname="127.0.0.1")


SERVERS = [
    pytest.param(("aiohttp", "127.0.0.1"), id="aiohttp"),
    pytest.param(("http.server", "127.0.0.1"), id="http.server"),
    pytest.param(("http.server+tls", "127.0.0.1"), id="http.server+tls"),
    pytest.param(("aiohttp", "::1"), id="aiohttp-ipv6", marks=IPV6),
    pytest.param(("http.server+tls", "::1"), id="http.server+tls-ipv6", marks=IPV6),
]


@pytest.fixture(params=SERVERS)
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    kind, ip = request.param
    served = Served(kind, ip)
    if kind == "aiohttp":
        runner = await start_aiohttp(served)
        yield served
        await runner.cleanup()
        return
    tls = request.getfixturevalue("server_tls") if kind.endswith("+tls") else None
    http = start_http_server(served, tls)
    yield served
    http.shutdown()
    http.server_close()


@pytest.fixture
def http_server() -> Iterator[Served]:
    served = Served("http.server", "127.0.0.1")
    http = start_http_server(served, None)
    yield served
    http.shutdown()
    http.server_close()


@pytest.fixture
def tls_server(server_tls: ssl.SSLContext) -> Iterator[Served]:
    served = Served("http.server+tls", "127.0.0.1")
    http = start_http_server(served, server_tls)
    yield served
    http.shutdown()
    http.server_close()


# ---- status ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "outcome", "detail"),
    [
        ("/ok", OK, ""),
        ("/empty", OK, ""),
        ("/not-modified", OK, ""),  # a 3xx without Location is a success, as in Go's client
        ("/status/399", OK, ""),
        ("/status/400", FAIL, "HTTP 400 Custom"),
        ("/notfound", FAIL, "HTTP 404 Not Found"),
        ("/error", FAIL, "HTTP 500 Internal Server Error"),
        ("/unavailable", FAIL, "HTTP 503 Service Unavailable"),
        ("/maintenance", FAIL, "HTTP 503 Down for maintenance"),  # the server's own reason phrase
    ],
)
async def test_the_status_decides(server: Served, path: str, outcome: int, detail: str) -> None:
    result, latency, said = await probe(server.ip, server.check(path))
    assert (result, said) == (outcome, detail)
    assert latency > 0
    assert server.paths() == [path]


# ---- redirects ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "outcome", "detail", "requested"),
    [
        ("/to-ok", OK, "", ["/to-ok", "/ok"]),
        ("/to-ok-absolute", OK, "", ["/to-ok-absolute", "/ok"]),
        ("/to-ok-dot-relative", OK, "", ["/to-ok-dot-relative", "/ok"]),
        ("/to-query", OK, "", ["/to-query", "/ok?a=1&b=two"]),
        # the final target's status decides, not the redirect's
        ("/to-unavailable", FAIL, "HTTP 503 Service Unavailable", ["/to-unavailable", "/unavailable"]),
        (
            "/to-unavailable-absolute",
            FAIL,
            "HTTP 503 Service Unavailable",
            ["/to-unavailable-absolute", "/unavailable"],
        ),
        # another host (by address or by name, compared as the kubelet does): success, not followed
        ("/elsewhere", OK, "", ["/elsewhere"]),
        ("/elsewhere-by-name", OK, "", ["/elsewhere-by-name"]),
        # Go's client (and so the kubelet) gives up when a 10th request answers with a redirect
        ("/chain/9", OK, "", [f"/chain/{n}" for n in range(9, -1, -1)]),
        ("/chain/10", FAIL, "stopped after 10 redirects", [f"/chain/{n}" for n in range(10, 0, -1)]),
        ("/loop", FAIL, "stopped after 10 redirects", ["/loop"] * 10),
        ("/unsupported-scheme", FAIL, "redirect to an unsupported scheme 'ftp'", ["/unsupported-scheme"]),
    ],
)
async def test_redirects_are_followed_only_on_the_same_host(
    server: Served, path: str, outcome: int, detail: str, requested: list[str]
) -> None:
    result, _, said = await probe(server.ip, server.check(path))
    assert (result, said) == (outcome, detail)
    assert server.paths() == requested


async def test_a_redirect_may_switch_to_https_on_the_same_host(
    http_server: Served, tls_server: Served
) -> None:
    """Same host, other port and scheme: followed, over TLS, to the other server."""
    http_server.reply = lambda path: (302, None, [("Location", f"{tls_server.base}/unavailable")], b"")  # type: ignore[method-assign]
    result, _, said = await probe("127.0.0.1", http_server.check("/go-secure"))
    assert (result, said) == (FAIL, "HTTP 503 Service Unavailable")
    assert (http_server.paths(), tls_server.paths()) == (["/go-secure"], ["/unavailable"])


# ---- what the server receives ---------------------------------------------------------------------


async def test_default_headers(server: Served) -> None:
    result, _, said = await probe(server.ip, server.check("/ok"))
    assert (result, said) == (OK, "")
    [seen] = server.seen
    assert seen.get("host") == [server.authority]
    assert seen.get("user-agent") == [f"endpoint-health-checker/{__version__}"]
    assert seen.get("accept") == ["*/*"]
    assert seen.get("connection") == ["close"]


async def test_custom_headers_and_host(server: Served) -> None:
    check = server.check(
        "/ok",
        host="probe-target.internal",
        headers=(("X-Probe", "yes"), ("user-agent", "kube-probe/1.31"), ("X-Multi", "a"), ("X-Multi", "b")),
    )
    result, _, said = await probe(server.ip, check)
    assert (result, said) == (OK, "")
    [seen] = server.seen
    assert seen.get("host") == ["probe-target.internal"]
    assert seen.get("user-agent") == ["kube-probe/1.31"]  # replaces ehc's, not added to it
    assert seen.get("x-probe") == ["yes"]
    assert seen.get("x-multi") == ["a", "b"]
    assert seen.get("connection") == ["close"]


async def test_a_custom_host_survives_only_a_relative_redirect(server: Served) -> None:
    """As Go's client: the Host header set by the caller is kept when the Location is relative, and
    replaced by the Location's own when it is absolute; other headers go along either way."""
    headers = (("X-Probe", "yes"),)
    for path in ("/to-ok", "/to-ok-absolute"):
        result, _, said = await probe(server.ip, server.check(path, host="svc.internal", headers=headers))
        assert (result, said) == (OK, "")
    hosts = [(s.path, s.get("host"), s.get("x-probe")) for s in server.seen]
    assert hosts == [
        ("/to-ok", ["svc.internal"], ["yes"]),
        ("/ok", ["svc.internal"], ["yes"]),
        ("/to-ok-absolute", ["svc.internal"], ["yes"]),
        ("/ok", [server.authority], ["yes"]),
    ]


async def test_every_request_gets_a_new_connection(server: Served) -> None:
    for path in ("/to-ok", "/ok", "/ok"):
        result, _, said = await probe(server.ip, server.check(path))
        assert (result, said) == (OK, "")
    peers = [s.peer for s in server.seen]
    assert len(peers) == 4 and len(set(peers)) == 4, peers


# ---- a body too big to read ---------------------------------------------------------------------


async def test_a_huge_body_is_judged_without_reading_it(server: Served) -> None:
    """Judged on the first 10 KiB (aiohttp streams it chunked, http.server declares its length): the
    server's write fails part way because ehc reset the connection instead of draining 50 MB."""
    huge = server.huge
    when_judged: list[tuple[bool, int]] = []
    result, _, said = await probe(
        server.ip,
        server.check("/huge"),
        timeout=5.0,
        at_done=lambda: when_judged.append((huge.finished.is_set(), huge.sent)),
    )
    assert (result, said) == (OK, "")
    await until(huge.finished.is_set, "the server's handler to stop writing")
    assert huge.sent < HUGE
    assert isinstance(huge.error, OSError), huge.error  # reset or broken pipe, not a clean finish
    if server.kind == "aiohttp":  # on this very loop, so deterministic: the handler was mid-stream
        [(finished, sent)] = when_judged
        assert not finished and sent < HUGE


# ---- TLS -------------------------------------------------------------------------------------------


async def test_https_does_not_verify_the_certificate(tls_server: Served) -> None:
    await asyncio.to_thread(_verifying_client_rejects, tls_server.port)
    result, _, said = await probe("127.0.0.1", tls_server.check("/ok"))
    assert (result, said) == (OK, "")
    assert tls_server.paths() == ["/ok"]


async def test_https_against_a_plain_http_server_fails_the_handshake(http_server: Served) -> None:
    result, _, said = await probe("127.0.0.1", Http(http_server.port, "/ok", https=True))
    assert result == FAIL
    assert said.startswith("TLS handshake failed: "), said
    assert http_server.paths() == []  # no request was sent in the clear


async def test_plain_http_against_a_tls_server_fails(tls_server: Served) -> None:
    result, _, said = await probe("127.0.0.1", Http(tls_server.port, "/ok", https=False))
    assert result == FAIL
    assert said in ("connection closed before a response", "connection reset") or said.startswith(
        "malformed response"
    ), said
    assert tls_server.paths() == []


# ---- misbehaving servers, on raw sockets ------------------------------------------------------------


def reset(conn: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a crashing or overloaded server's kernel does."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    conn.close()


def sends(*parts: bytes, then: str = "close") -> Callable[[socket.socket, RawServer], None]:
    """A handler: read the request, send ``parts``, then close, reset or hold the connection."""

    def handler(conn: socket.socket, server: RawServer) -> None:
        server.read_request(conn)
        for part in parts:
            conn.sendall(part)
            time.sleep(0.01)  # separate segments: the prober must reassemble them
        if then == "reset":
            reset(conn)
        elif then == "hold":
            server.hold(conn)

    return handler


@pytest.mark.parametrize(
    ("handler", "outcome", "detail"),
    [
        pytest.param(sends(then="hold"), FAIL, "timeout waiting for the response", id="never-answers"),
        pytest.param(
            sends(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial", then="hold"),
            FAIL,
            "timeout waiting for the response",
            id="body-stalls",
        ),
        pytest.param(
            sends(b"HTTP/1.1 200 OK\r\nContent-Le"),
            FAIL,
            "malformed response: the connection closed inside the status line or headers",
            id="closed-mid-headers",
        ),
        pytest.param(sends(), FAIL, "connection closed before a response", id="closed-at-once"),
        pytest.param(sends(then="reset"), FAIL, "connection reset", id="reset-at-once"),
        pytest.param(
            sends(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000, then="reset"),
            FAIL,
            "connection reset",
            id="reset-mid-body",
        ),
        pytest.param(
            sends(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10),
            FAIL,
            "malformed response: the connection closed inside the body",
            id="body-cut-short",
        ),
        pytest.param(
            sends(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"),
            FAIL,
            "malformed response: the connection closed inside the body",
            id="chunked-body-cut-short",
        ),
        pytest.param(
            sends(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nthe body runs ", b"until the close"),
            OK,
            "",
            id="body-until-close",
        ),
        pytest.param(
            sends(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                b"0\r\n\r\n",
                then="hold",
            ),
            OK,
            "",
            id="chunked",
        ),
        pytest.param(
            sends(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n", b"\r\ndown", then="hold"),
            FAIL,
            "HTTP 503 Service Unavailable",
            id="split-headers",
        ),
        pytest.param(
            sends(
                b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                then="hold",
            ),
            OK,
            "",
            id="interim-103-then-200",
        ),
        pytest.param(
            sends(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n",
                then="hold",
            ),
            FAIL,
            "HTTP 502 Bad Gateway",
            id="interim-100-then-502",
        ),
        pytest.param(
            sends(b"SSH-2.0-OpenSSH_9.6\r\n", then="hold"),
            FAIL,
            "malformed response: ",
            id="ssh-banner",
        ),
        pytest.param(
            sends(bytes(range(256)), then="hold"),
            FAIL,
            "malformed response: ",
            id="binary-garbage",
        ),
        pytest.param(
            sends(b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"y" * 70000, then="hold"),
            FAIL,
            "malformed response: no end of headers in 64 KiB",
            id="endless-headers",
        ),
    ],
)
async def test_misbehaving_servers(
    handler: Callable[[socket.socket, RawServer], None], outcome: int, detail: str
) -> None:
    with RawServer(handler) as raw:
        result, _, said = await probe("127.0.0.1", Http(raw.port, "/healthz"), timeout=0.3)
        assert result == outcome
        if detail.endswith(": "):
            assert said.startswith(detail) and len(said) > len(detail), said
        else:
            assert said == detail
        assert len(raw.requests) == 1 and raw.requests[0].startswith(b"GET /healthz HTTP/1.1\r\n")


async def test_tls_server_that_never_handshakes_times_out() -> None:
    with RawServer(lambda conn, raw: raw.hold(conn)) as raw:
        result, _, said = await probe("127.0.0.1", Http(raw.port, "/", https=True), timeout=0.3)
    assert (result, said) == (FAIL, "timeout in the TLS handshake")


async def test_refused(closed_port: int) -> None:
    result, _, said = await probe("127.0.0.1", Http(closed_port))
    assert (result, said) == (FAIL, "connrefused")


@pytest.mark.parametrize("which", ["http_server", "tls_server"])
async def test_a_body_that_runs_until_the_close(request: pytest.FixtureRequest, which: str) -> None:
    """No length: the body ends with the connection.  Over TLS, http.server (as many servers) closes
    without a close_notify alert; Go accepts that EOF at a record boundary, so must ehc."""
    served: Served = request.getfixturevalue(which)
    result, _, said = await probe("127.0.0.1", served.check("/until-close"))
    assert (result, said) == (OK, "")
    assert served.paths() == ["/until-close"]


async def test_the_connection_is_closed_with_a_reset() -> None:
    """Once judged, ehc closes with RST, not FIN, even after reading the whole response: no TIME_WAIT
    piles up on the checker's side."""
    after: list[object] = []

    def handler(conn: socket.socket, raw: RawServer) -> None:
        raw.read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        try:
            after.append(conn.recv(1))  # b"" had the client closed with FIN
        except ConnectionResetError:
            after.append("reset")

    with RawServer(handler) as raw:
        result, _, said = await probe("127.0.0.1", Http(raw.port))
    assert (result, said) == (OK, "")
    assert after == ["reset"]
