"""Probes that hold a conversation: connect, TLS if asked, send a request, read until a verdict.

The HTTP and gRPC probes share this one state machine, as Envoy's checkers share one base: a kind
supplies an *exchange*, a sans-IO object that says what to send and judges the bytes that come back,
and this module owns the socket, TLS, the deadline and the outcome.  An attempt is a socket, an
exchange and an entry in the prober's ``Deadlines`` FIFO, driven by loop callbacks: no task, no
future, no transport.  TLS runs over memory BIOs on the same socket.

Every attempt is a new connection, closed with RST once judged (no keep-alive, no TIME_WAIT), so a
dead node is found the way a TCP connect finds it.  One deadline covers everything: connect, TLS,
request, response and redirects.  A deadline that passes while the loop was late first reads what
already arrived, so an overloaded checker does not blame the endpoint for its own lateness.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import socket
import ssl
import time
from typing import Protocol

from ehc.probe import FAIL, Done, describe_errno
from ehc.probe.sockets import ConnectingProber, connect_failed, start_connect
from ehc.wire.checks import Check

_READ = 65536
MAX_REDIRECTS = 10
"""As Go's HTTP client, which the kubelet's prober uses."""

Verdict = tuple[int, str]
"""``(outcome, detail)``: how the attempt ended."""


class Redirect:
    """An exchange's answer that means: start over against ``check`` (a redirect to the same host)."""

    __slots__ = ("check",)

    def __init__(self, check: Check) -> None:
        self.check = check


class Exchange(Protocol):
    """The part of an attempt that knows the protocol; it never touches a socket."""

    reply: bytes
    """Bytes to send back after ``feed`` (an HTTP/2 SETTINGS acknowledgement); the attempt clears it."""

    def request(self) -> bytes:
        """What to send once connected."""
        ...

    def feed(self, data: bytes) -> Verdict | Redirect | None:
        """Judge what arrived (``b""``: the peer closed); None until there is enough to judge."""
        ...


class StreamProber(ConnectingProber):
    """The Prober for a kind built on an ``Exchange``; subclasses say how to make one."""

    __slots__ = ("_tls",)

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        super().__init__(loop, timeout)
        self._tls: ssl.SSLContext | None = None

    def exchange(self, ip: str, check: Check) -> Exchange:
        raise NotImplementedError

    def uses_tls(self, check: Check) -> bool:
        return False

    def start(self, ip: str, family: int, check: Check, done: Done) -> None:
        """Start one attempt; ``done`` is called exactly once, never synchronously."""
        attempt = _Attempt(self, ip, family, time.monotonic(), done)
        failed = attempt.connect(check)
        if failed is not None:
            self._later(done, *failed)
        else:
            self._deadlines.add(attempt)

    def tls_context(self) -> ssl.SSLContext:
        """Like the kubelet: TLS without verifying the certificate (a probe checks liveness, not identity)."""
        if self._tls is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["http/1.1"])
            self._tls = ctx
        return self._tls


_CONNECTING, _HANDSHAKE, _TALKING = "connecting", "in the TLS handshake", "waiting for the response"


class _Attempt:
    """One attempt: its socket (a new one after a redirect), exchange, stage and deadline."""

    __slots__ = (
        "active",
        "deadline",
        "done",
        "exchange",
        "family",
        "fd",
        "incoming",
        "ip",
        "outgoing",
        "pending",
        "prober",
        "redirects",
        "sock",
        "stage",
        "start",
        "tls",
    )

    def __init__(self, prober: StreamProber, ip: str, family: int, start: float, done: Done) -> None:
        self.prober = prober
        self.ip = ip
        self.family = family
        self.start = start
        self.deadline = start + prober.timeout
        self.done = done
        self.active = False
        self.sock: _socket.socket | None = None
        self.fd = -1
        self.redirects = 0
        self.tls: ssl.SSLObject | None = None
        self.incoming: ssl.MemoryBIO | None = None
        self.outgoing: ssl.MemoryBIO | None = None
        self.pending = b""
        self.stage = _CONNECTING
        self.exchange: Exchange | None = None

    # ---- connection -------------------------------------------------------------------------------

    def connect(self, check: Check) -> tuple[int, float, str] | None:
        """Open a connection for ``check``; what went wrong at once, or None once it is under way."""
        prober = self.prober
        got = start_connect(self.ip, self.family, check.port, self.start)  # type: ignore[union-attr]
        if isinstance(got, tuple):
            return got
        sock = got
        self.sock, self.fd, self.stage, self.pending = sock, sock.fileno(), _CONNECTING, b""
        self.exchange = prober.exchange(self.ip, check)
        if prober.uses_tls(check):
            self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            self.tls = prober.tls_context().wrap_bio(self.incoming, self.outgoing)
        else:
            self.tls = None
        if not self.active:
            self.active = True
            prober.in_flight += 1
        prober._loop.add_writer(self.fd, self._on_connected)  # a connected socket is writable at once
        return None

    def _hang_up(self) -> None:
        sock = self.sock
        if sock is not None:
            self.sock = None
            loop = self.prober._loop
            loop.remove_writer(self.fd)
            loop.remove_reader(self.fd)
            sock.close()

    def finish(self) -> float:
        self._hang_up()
        self.active = False
        self.prober.in_flight -= 1
        return time.monotonic() - self.start

    def _end(self, outcome: int, detail: str) -> None:
        latency = self.finish()
        self.done(outcome, latency, detail)

    # ---- events -----------------------------------------------------------------------------------

    def _on_connected(self) -> None:
        sock = self.sock
        if sock is None:
            return
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._end(*connect_failed(code))
            return
        loop = self.prober._loop
        loop.remove_writer(self.fd)
        loop.add_reader(self.fd, self._on_readable)
        if self.tls is not None:
            self.stage = _HANDSHAKE
            self._handshake()
        else:
            self.stage = _TALKING
            self._send(self.exchange.request())  # type: ignore[union-attr]

    def _handshake(self) -> None:
        tls = self.tls
        assert tls is not None
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush_tls()
            return
        except (ssl.SSLError, ssl.CertificateError) as exc:
            self._end(FAIL, f"TLS handshake failed: {getattr(exc, 'reason', None) or exc}")
            return
        self.stage = _TALKING
        tls.write(self.exchange.request())  # type: ignore[union-attr]
        self._flush_tls()

    def _flush_tls(self) -> None:
        data = self.outgoing.read()  # type: ignore[union-attr]
        if data:
            self._send(data)

    def _send(self, data: bytes) -> None:
        if self.pending:
            self.pending += data
            return
        try:
            sent = self.sock.send(data)  # type: ignore[union-attr]
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._end(FAIL, f"send: {describe_errno(exc.errno or 0)}")
            return
        if sent < len(data):
            self.pending = data[sent:]
            self.prober._loop.add_writer(self.fd, self._on_drain)

    def _on_drain(self) -> None:
        if self.sock is None:
            return
        data, self.pending = self.pending, b""
        self.prober._loop.remove_writer(self.fd)
        self._send(data)

    def _on_readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        try:
            data = sock.recv(_READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            code = exc.errno or 0
            self._end(
                FAIL, "connection reset" if code == errno.ECONNRESET else f"recv: {describe_errno(code)}"
            )
            return
        if self.tls is None:
            self._judge(data)
            return
        if data:
            self.incoming.write(data)  # type: ignore[union-attr]
        else:
            self.incoming.write_eof()  # type: ignore[union-attr]
        if self.stage is _HANDSHAKE:
            if not data:
                self._end(FAIL, "connection closed in the TLS handshake")
            else:
                self._handshake()
            return
        self._read_tls(closed=not data)

    def _read_tls(self, closed: bool) -> None:
        tls = self.tls
        assert tls is not None
        while True:
            try:
                plain = tls.read(_READ)
            except ssl.SSLWantReadError:
                if closed:
                    self._judge(b"")
                return
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):  # a close without close_notify, as
                plain = b""  # Go accepts: a body that runs to the close is judged, not failed
            except ssl.SSLError as exc:
                self._end(FAIL, f"TLS: {exc.reason or exc}")
                return
            if not self._judge(plain) or not plain:
                return

    def _judge(self, data: bytes) -> bool:
        """Hand ``data`` to the exchange and act on its verdict; True while the conversation goes on."""
        exchange = self.exchange
        assert exchange is not None
        verdict = exchange.feed(data)
        if verdict is None:
            if not data:  # closed and undecided: an exchange always decides on close, but never hang
                self._end(FAIL, "connection closed")
                return False
            if exchange.reply:
                reply, exchange.reply = exchange.reply, b""
                if self.tls is not None:
                    self.tls.write(reply)
                    self._flush_tls()
                else:
                    self._send(reply)
            return self.active
        if isinstance(verdict, Redirect):
            self._hang_up()
            self.redirects += 1
            if self.redirects >= MAX_REDIRECTS:  # as Go: the 10th request may not redirect again
                self._end(FAIL, f"stopped after {MAX_REDIRECTS} redirects")
                return False
            failed = self.connect(verdict.check)
            if failed is not None:
                self._end(failed[0], failed[2])
            return False
        self._end(*verdict)
        return False

    def expire(self) -> None:
        """The deadline passed: read what may have arrived while the loop was late, then time out."""
        if self.stage is not _CONNECTING:
            self._on_readable()
            if not self.active:
                return
        elif self.sock is not None:
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._end(*connect_failed(code))
                return
        self._end(FAIL, f"timeout {self.stage}")
