"""Every registered probe kind keeps the one Prober contract, against real sockets."""

from __future__ import annotations

import asyncio
import socket
import threading
import typing
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from grpc_health.v1 import health, health_pb2_grpc

from ehc.probe import FAIL, LOCAL_ERROR, OK
from ehc.probe.registry import PROBERS
from ehc.wire.checks import KINDS, Check, Grpc, Http, Icmp, Tcp, kind_of


def check_for(kind: str, port: int) -> Check:
    return {"tcp": Tcp(port), "icmp": Icmp(), "http": Http(port, "/"), "grpc": Grpc(port)}[kind]


def test_the_registry_runs_every_kind_the_wire_can_carry() -> None:
    assert set(PROBERS) == set(KINDS)
    assert [kind_of(c()) if c is Icmp else kind_of(c(1)) for c in typing.get_args(Check)] == list(KINDS)


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def answering(kind: str, listener: socket.socket) -> Iterator[int]:
    """A loopback port where a healthy endpoint of ``kind`` answers."""
    if kind == "http":
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield server.server_address[1]
        server.shutdown()
        server.server_close()
    elif kind == "grpc":
        g = grpc.server(futures.ThreadPoolExecutor(2))
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), g)
        port = g.add_insecure_port("127.0.0.1:0")
        g.start()
        yield port
        g.stop(0)
    else:
        yield listener.getsockname()[1]


@pytest.fixture(params=sorted(PROBERS))
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


async def _opened(kind: str, timeout: float = 1.0):  # type: ignore[no-untyped-def]
    prober = PROBERS[kind](asyncio.get_running_loop(), timeout)
    said = prober.open()
    if "unavailable" in said and not said.startswith("icmp: raw") and "datagram" not in said:
        prober.close()
        pytest.skip(said)
    return prober


async def test_done_once_never_from_inside_start(kind: str, answering: int) -> None:
    prober = await _opened(kind)
    calls: list[tuple[int, float, str]] = []
    prober.start("127.0.0.1", socket.AF_INET, check_for(kind, answering), lambda *r: calls.append(r))
    assert calls == [] and prober.in_flight in (0, 1)
    await asyncio.sleep(0.2)
    assert [c[0] for c in calls] == [OK]
    await asyncio.sleep(1.0)  # past the deadline: no second call
    assert len(calls) == 1 and prober.in_flight == 0
    prober.close()


async def test_bad_input_is_reported_not_raised(kind: str) -> None:
    prober = await _opened(kind)
    calls: list[tuple[int, float, str]] = []
    for ip, family in (
        ("not-an-ip", socket.AF_INET),
        ("::1", socket.AF_INET),
        ("fe80::1%nosuchif", socket.AF_INET6),
    ):
        prober.start(ip, family, check_for(kind, 80), lambda *r: calls.append(r))
    if kind != "icmp":
        prober.start("127.0.0.1", socket.AF_INET, check_for(kind, 99999), lambda *r: calls.append(r))
    await asyncio.sleep(0.2)
    assert len(calls) == (3 if kind == "icmp" else 4)
    assert all(outcome in (LOCAL_ERROR, FAIL) for outcome, _, _ in calls), calls
    prober.close()


async def test_no_callback_after_close(kind: str, answering: int, closed_port: int) -> None:
    prober = await _opened(kind, timeout=0.3)
    calls: list[tuple[int, float, str]] = []
    for port in (answering, closed_port):  # answered at once, or soon: either way after close
        prober.start("127.0.0.1", socket.AF_INET, check_for(kind, port), lambda *r: calls.append(r))
    prober.start(
        "not-an-ip", socket.AF_INET, check_for(kind, 80), lambda *r: calls.append(r)
    )  # decided at once
    prober.close()
    await asyncio.sleep(0.6)  # past the deadline
    assert calls == [] and prober.in_flight == 0
