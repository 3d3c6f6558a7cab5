"""The TCP connect probe against real loopback sockets."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys

import pytest

from ehc.probe import FAIL, LOCAL_ERROR, OK
from ehc.probe.tcp import TcpProber
from ehc.wire.checks import Tcp


async def _probe(
    ip: str, port: int, family: int = socket.AF_INET, timeout: float = 1.0
) -> tuple[int, float, str]:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[tuple[int, float, str]] = loop.create_future()
    prober = TcpProber(loop, timeout)
    prober.start(ip, family, Tcp(port), lambda *r: fut.set_result(r))
    result = await fut
    assert prober.in_flight == 0
    return result


async def test_open_port_is_ok(listener: socket.socket) -> None:
    outcome, latency, detail = await _probe("127.0.0.1", listener.getsockname()[1])
    assert (outcome, detail) == (OK, "")
    assert latency >= 0


async def test_closed_port_is_refused(closed_port: int) -> None:
    outcome, _, detail = await _probe("127.0.0.1", closed_port)
    assert (outcome, detail) == (FAIL, "connrefused")


async def test_ipv6() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    s = socket.socket(socket.AF_INET6)
    try:
        s.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"::1 not usable: {exc}")
    s.listen(16)
    try:
        assert (await _probe("::1", s.getsockname()[1], socket.AF_INET6))[0] == OK
    finally:
        s.close()


async def test_many_in_flight_at_once(listener: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    prober = TcpProber(loop, 2.0)
    port = listener.getsockname()[1]
    results: list[int] = []
    done = loop.create_future()

    def on_done(outcome: int, latency: float, detail: str) -> None:
        results.append(outcome)
        if len(results) == 500:
            done.set_result(None)

    for _ in range(500):
        prober.start("127.0.0.1", socket.AF_INET, Tcp(port), on_done)
    assert prober.in_flight > 0  # none of them completed synchronously
    await done
    assert results.count(OK) == 500


async def test_closes_with_reset_so_no_time_wait_piles_up(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    for _ in range(200):
        assert (await _probe("127.0.0.1", port))[0] == OK
    listener.setblocking(False)
    while True:  # accept and close what the kernel completed, like a real server would
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            break
        conn.close()
    ss = subprocess.run(
        ["ss", "-Htan", "state", "time-wait", f"( sport = :{port} or dport = :{port} )"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if ss.returncode != 0:
        pytest.skip("ss is not available")
    assert ss.stdout.strip() == ""


async def test_silent_drop_times_out_as_failure(netns) -> None:  # type: ignore[no-untyped-def]
    # A powered-off host: packets vanish; only the timeout tells.  Run inside a private namespace.
    netns.drop("ip daddr 127.0.0.9")
    code = (
        "import asyncio, socket\n"
        "from ehc.probe.tcp import TcpProber\n"
        "from ehc.wire.checks import Tcp\n"
        "async def main():\n"
        "    loop = asyncio.get_running_loop(); fut = loop.create_future()\n"
        "    TcpProber(loop, 0.3).start('127.0.0.9', socket.AF_INET, Tcp(80), lambda *r: fut.set_result(r))\n"
        "    print(*(await fut))\n"
        "asyncio.run(main())\n"
    )
    out = netns.run([sys.executable, "-c", code], check=True).stdout.split()
    assert out[0] == str(FAIL) and out[2] == "timeout"
    assert float(out[1]) >= 0.29


def test_running_out_of_descriptors_is_a_local_error_that_says_so(listener: socket.socket) -> None:
    code = (
        "import asyncio, json, resource, socket\n"
        "from ehc.probe.tcp import TcpProber\n"
        "from ehc.wire.checks import Tcp\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n"
        "async def main():\n"
        "    loop = asyncio.get_running_loop(); got = []\n"
        "    prober = TcpProber(loop, 1.0)\n"
        f"    for _ in range(200): prober.start('127.0.0.1', socket.AF_INET, Tcp({listener.getsockname()[1]}), lambda *r: got.append(r))\n"
        "    while len(got) < 200: await asyncio.sleep(0.01)\n"
        "    print(json.dumps(got))\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30)
    results = json.loads(out.stdout)
    local = [detail for outcome, _, detail in results if outcome == LOCAL_ERROR]
    assert local and all("too many open files (limit 64" in d for d in local), local[:3]
    assert all(outcome in (OK, LOCAL_ERROR) for outcome, _, _ in results)  # never blamed on the endpoint
