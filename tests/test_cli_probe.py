"""``ehc probe`` as a user runs it: a real process, real sockets, exit codes and messages."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

EHC = [sys.executable, "-m", "ehc"]


def ehc(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EHC, *args], capture_output=True, text=True, timeout=60, **kw)  # type: ignore[call-overload]


def test_all_healthy_exits_0(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    r = ehc("probe", f"127.0.0.1:{port}", f"127.0.0.1:{port}")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1 or all("healthy" in line and "tcp" in line for line in lines)


def test_any_unhealthy_exits_1_and_says_why(listener: socket.socket, closed_port: int) -> None:
    r = ehc(
        "probe", "--retry-count", "2", f"127.0.0.1:{listener.getsockname()[1]}", f"127.0.0.1:{closed_port}"
    )
    assert r.returncode == 1, r.stderr
    good, bad = r.stdout.splitlines()
    assert good.split()[1:3] == ["healthy", "tcp"]
    assert bad.split()[1:4] == ["unhealthy", "tcp", "connrefused"]
    assert "(3 attempts failed)" in bad


def test_icmp_and_ipv6_forms() -> None:
    r = ehc("probe", "127.0.0.1", "::1")
    if "unavailable" in r.stderr:
        pytest.skip(r.stderr.strip())
    assert r.returncode == 0, r.stdout + r.stderr
    assert [line.split()[1:3] for line in r.stdout.splitlines()] == [["healthy", "icmp"]] * 2


def test_bracketed_ipv6_port(closed_port: int) -> None:
    s = socket.socket(socket.AF_INET6)
    s.bind(("::1", 0))
    s.listen(8)
    try:
        r = ehc("probe", f"[::1]:{s.getsockname()[1]}")
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        s.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["probe", "1.2.3"], "'1.2.3' is not an IPv4 or IPv6 address"),
        (["probe", "127.0.0.1:http"], "port 'http' is not a number from 1 to 65535"),
        (["probe", "127.0.0.1:70000"], "port '70000'"),
        (["probe", "127.0.0.1:"], "missing port"),
        (["probe", "[::1]80"], "expected [IPv6]:PORT"),
        (["probe", "--timeout", "5", "127.0.0.1"], "argument --timeout: invalid duration '5'"),
        (["probe", "--timeout", "0s", "127.0.0.1"], "argument --timeout: must be greater than 0"),
        (["probe", "--retry-count", "-1", "127.0.0.1"], "argument --retry-count"),
        (["probe", "--watch", "--workers", "0", "127.0.0.1"], "argument --workers"),
        (["probe", "--retry-count", "99999999", "127.0.0.1"], "expected a whole number >= 0 and <= 100"),
        (["probe", "127.0.0.1:８０"], "port '８０' is not a number from 1 to 65535"),
        (["probe"], "the following arguments are required: TARGET"),
        (["probe", "ftp://127.0.0.1/"], "scheme 'ftp' is not one of http, https, grpc"),
        (["probe", "http://localhost:80/"], "'localhost' is not an IPv4 or IPv6 address"),
        (["probe", "http://127.0.0.1:99999/"], "Port out of range"),
        (["probe", "grpc://127.0.0.1/"], "a grpc:// target needs a port"),
        (["probe", "http://[::1/"], "Invalid IPv6 URL"),
    ],
)
def test_bad_arguments_exit_2_naming_the_argument(args: list[str], message: str) -> None:
    r = ehc(*args)
    assert r.returncode == 2
    assert message in r.stderr
    assert r.stdout == ""


def test_silently_dropped_traffic_is_unhealthy_after_the_timeout(netns, listener) -> None:  # type: ignore[no-untyped-def]
    # Inside a private namespace: 127.0.0.9 is "powered off" (everything to it vanishes), while
    # 127.0.0.10 is up (ICMP answered by the kernel).
    netns.drop("ip daddr 127.0.0.9")
    r = netns.run(
        [*EHC, "probe", "--timeout", "300ms", "--retry-count", "1", "127.0.0.9:80", "127.0.0.9", "127.0.0.10"]
    )
    assert r.returncode == 1, r.stdout + r.stderr
    tcp, icmp, up = r.stdout.splitlines()
    assert tcp.split()[1:4] == ["unhealthy", "tcp", "timeout"]
    assert icmp.split()[1:4] == ["unhealthy", "icmp", "timeout"]
    assert up.split()[1:3] == ["healthy", "icmp"]


def test_an_ipv6_address_that_looks_like_a_port_gets_a_hint() -> None:
    r = ehc("probe", "--timeout", "100ms", "--retry-count", "0", "::1:80")
    assert (
        "'::1:80' is the IPv6 address ::1:80, probed by ICMP; for port 80 of ::1 write [::1]:80" in r.stderr
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sim", "--nodes", "-1"], "argument --nodes: expected a whole number >= 1 and <= 4096, got '-1'"),
        (
            ["sim", "--pods-per-node", "5000"],
            "argument --pods-per-node: expected a whole number >= 1 and <= 1021",
        ),
        (["sim", "--nodes", "4000", "--pods-per-node", "1000"], "is 4,000,000 pods; at most 100,000 in all"),
    ],
)
def test_sim_refuses_a_fleet_it_cannot_be(args: list[str], message: str) -> None:
    r = ehc(*args)
    assert r.returncode == 2 and message in r.stderr, r.stderr


class _Status(BaseHTTPRequestHandler):
    """Answers GET /<status> with that status."""

    def do_GET(self) -> None:
        self.send_response(int(self.path.strip("/") or 200))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def grpc_port() -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(2))
    servicer = health.HealthServicer()
    servicer.set("shop.Cart", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(0)


def test_http_and_grpc_urls(http_port: int, grpc_port: int) -> None:
    r = ehc("probe", f"http://127.0.0.1:{http_port}/204", f"grpc://127.0.0.1:{grpc_port}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert [line.split()[1:3] for line in r.stdout.splitlines()] == [["healthy", "http"], ["healthy", "grpc"]]
    r = ehc(
        "probe",
        "--retry-count",
        "1",
        f"http://127.0.0.1:{http_port}/503",
        f"grpc://127.0.0.1:{grpc_port}/shop.Cart",
    )
    assert r.returncode == 1, r.stdout + r.stderr
    http_line, grpc_line = r.stdout.splitlines()
    assert "unhealthy  http  HTTP 503 Service Unavailable (2 attempts failed)" in http_line
    assert "unhealthy  grpc  health status NOT_SERVING (2 attempts failed)" in grpc_line
