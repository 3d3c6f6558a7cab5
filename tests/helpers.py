"""Helpers shared by the tests: the one polling helper, and what tests of a checker process need."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ehc.kube.model import GATE


async def until(
    predicate: Callable[[], bool], what: str = "the condition", limit: float = 30.0, step: float = 0.01
) -> float:
    """Poll ``predicate`` every ``step`` seconds; return the monotonic time it held.

    ``limit`` only turns a hang into a readable failure: it is not a bound under test."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {limit:g}s")
        await asyncio.sleep(step)
    return time.monotonic()


async def stop(proc: asyncio.subprocess.Process) -> int:
    """SIGTERM, then the exit status (the checker releases its lease on the way out)."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), 20)


def conditions_are(api: Any, pods: Iterable[Any], status: str, condition: str = GATE) -> Callable[[], bool]:
    """A predicate: every pod's ``condition`` has ``status`` on the simulated API server."""
    pods = list(pods)
    return lambda: all(api.pod_condition(p.namespace, p.name, condition) == status for p in pods)


class RawServer:
    """A loopback TCP server that runs ``handler(conn, server)`` in a thread per connection: for peers
    that misbehave in ways no real server library will (hang, send garbage, reset, cut short)."""

    def __init__(self, handler: Callable[[socket.socket, RawServer], None], ip: str = "127.0.0.1") -> None:
        self.handler = handler
        self.sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
        self.sock.bind((ip, 0))
        self.sock.listen(64)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.requests: list[bytes] = []
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            self.handler(conn, self)
        except Exception as exc:
            self.errors.append(exc)
        finally:
            conn.close()

    def read_request(self, conn: socket.socket) -> bytes:
        """Read an HTTP request head (up to the blank line) and keep it in ``requests``."""
        data = b""
        while b"\r\n\r\n" not in data:
            more = conn.recv(4096)
            if not more:
                break
            data += more
        self.requests.append(data)
        return data

    def hold(self, conn: socket.socket) -> None:
        """Keep the connection open, reading (and dropping) whatever comes, until the client closes it."""
        conn.settimeout(0.05)
        while not self.stop.is_set():
            try:
                if not conn.recv(65536):
                    return
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self._accepter.join(2)
        for t in self._threads:
            t.join(2)
        self.sock.close()
        if self.errors:
            raise self.errors[0]

    def __enter__(self) -> RawServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def attempt(
    prober_cls: Any,
    ip: str,
    check: Any,
    timeout: float = 2.0,
    family: int | None = None,
    at_done: Callable[[], None] | None = None,
) -> tuple[int, float, str]:
    """One attempt with a new prober of ``prober_cls``; also checks the contract: never synchronous,
    nothing left in flight after.  ``at_done`` runs inside ``done``, to see the world as it was then."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[tuple[int, float, str]] = loop.create_future()
    prober = prober_cls(loop, timeout)
    prober.open()
    calls: list[tuple[int, float, str]] = []

    def done(*result: Any) -> None:
        calls.append(result)  # type: ignore[arg-type]
        if at_done is not None:
            at_done()
        if not fut.done():
            fut.set_result(result)  # type: ignore[arg-type]

    prober.start(ip, family or (socket.AF_INET6 if ":" in ip else socket.AF_INET), check, done)
    assert calls == []
    result = await fut
    await asyncio.sleep(0)
    assert len(calls) == 1 and prober.in_flight == 0
    prober.close()
    return result


def has_ipv6_loopback() -> bool:
    """Whether ::1 can be bound here (some CI hosts have IPv6 switched off)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


async def connect_from(fleet: Any, ip: str, port: int, timeout: float = 0.5) -> str:
    """'ok', 'refused' or 'timeout' for one TCP connect (no data sent) from where ``fleet``'s pods live
    (inside its network namespace when it has one)."""
    sock = fleet.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (ip, port)), timeout)
        return "ok"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    finally:
        sock.close()
