"""Every registered probe kind keeps the one Prober contract, against real sockets."""

from __future__ import annotations

import asyncio
import socket
import typing

import pytest

from ehc.probe import FAIL, LOCAL_ERROR, OK
from ehc.probe.registry import PROBERS
from ehc.wire.checks import KINDS, Check, Icmp, Tcp, kind_of


def check_for(kind: str, port: int) -> Check:
    return {"tcp": Tcp(port), "icmp": Icmp()}[kind]


def test_the_registry_runs_every_kind_the_wire_can_carry() -> None:
    assert set(PROBERS) == set(KINDS)
    assert [kind_of(c()) if c is Icmp else kind_of(c(1)) for c in typing.get_args(Check)] == list(KINDS)


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


async def test_done_once_never_from_inside_start(kind: str, listener: socket.socket) -> None:
    prober = await _opened(kind)
    calls: list[tuple[int, float, str]] = []
    prober.start(
        "127.0.0.1", socket.AF_INET, check_for(kind, listener.getsockname()[1]), lambda *r: calls.append(r)
    )
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
    if kind == "tcp":
        prober.start("127.0.0.1", socket.AF_INET, Tcp(99999), lambda *r: calls.append(r))
    await asyncio.sleep(0.2)
    assert len(calls) == (4 if kind == "tcp" else 3)
    assert all(outcome in (LOCAL_ERROR, FAIL) for outcome, _, _ in calls), calls
    prober.close()


async def test_no_callback_after_close(kind: str, listener: socket.socket, closed_port: int) -> None:
    prober = await _opened(kind, timeout=0.3)
    calls: list[tuple[int, float, str]] = []
    for port in (listener.getsockname()[1], closed_port):  # answered at once, or soon: either way after close
        prober.start("127.0.0.1", socket.AF_INET, check_for(kind, port), lambda *r: calls.append(r))
    prober.start(
        "not-an-ip", socket.AF_INET, check_for(kind, 80), lambda *r: calls.append(r)
    )  # decided at once
    prober.close()
    await asyncio.sleep(0.6)  # past the deadline
    assert calls == [] and prober.in_flight == 0
