"""ICMP echo probe (ehc.probe.icmp) against real sockets.

Most tests run inside a private network namespace (root, ``ip`` and ``nft`` needed) so that the socket
mode is chosen by the test: a new namespace starts with ``net.ipv4.ping_group_range = 1 0`` (datagram
ICMP denied, so root falls back to raw sockets) and the test opens the range for datagram mode.  The
pinger runs on a uvloop loop in a thread that entered the namespace with setns(2); sockets stay in the
namespace they were created in.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from ehc.probe import FAIL, LOCAL_ERROR, OK
from ehc.probe.icmp import IcmpPinger
from ehc.sim import netns as sim_netns
from ehc.wire.checks import Icmp

REPO = Path(__file__).resolve().parent.parent
IS_ROOT = os.geteuid() == 0
MISSING_TOOLS = [t for t in ("ip", "nft") if shutil.which(t) is None]
_ns_counter = itertools.count()

DEAD_V4 = "127.0.0.9"  # echo requests to it are dropped on input: silence
DEAD_V6 = "fd00::9"
LIVE_V6 = "fd00::1"
BLOCKED_V4 = "127.0.0.10"  # dropped on output: the local firewall refuses the send (EPERM)
NFT_RULES = f"""
table inet ehc_test {{
    chain input {{
        type filter hook input priority 0;
        ip daddr {DEAD_V4} icmp type echo-request drop
        ip6 daddr {DEAD_V6} icmpv6 type echo-request drop
    }}
    chain output {{
        type filter hook output priority 0;
        ip daddr {BLOCKED_V4} drop
    }}
}}
"""


def v4_addresses(n: int) -> list[str]:
    """n distinct loopback addresses 127.1.x.y (all answer on lo)."""
    return [f"127.1.{i >> 8}.{i & 255}" for i in range(n)]


async def ping_all(pinger: IcmpPinger, targets: list[tuple[str, int]]) -> dict[str, list]:
    """Ping every (ip, family) at once; return ip -> list of (outcome, latency, detail) callbacks."""
    calls: dict[str, list] = {ip: [] for ip, _ in targets}
    left = len(targets)
    finished = asyncio.get_running_loop().create_future()

    def make_done(ip: str) -> Callable[[int, float, str], None]:
        def done(outcome: int, latency: float, detail: str) -> None:
            nonlocal left
            calls[ip].append((outcome, latency, detail))
            left -= 1
            if left == 0:
                finished.set_result(None)

        return done

    for ip, fam in targets:
        pinger.start(ip, fam, Icmp(), make_done(ip))
    await finished
    await asyncio.sleep(0.05)  # a second callback for any ping would land here
    return calls


def only_call(calls: list) -> tuple[int, float, str]:
    assert len(calls) == 1, calls
    return calls[0]


class IcmpNetNs:
    def __init__(self, name: str) -> None:
        self.name = name
        self.mode = ""  # the ICMP mode the pinger is expected to get here

    def sh(self, *args: str, stdin: str | None = None) -> None:
        subprocess.run(["ip", "netns", "exec", self.name, *args], input=stdin, text=True, check=True)

    def sysctl(self, key: str, value: str) -> None:
        self.sh("sysctl", "-q", "-w", f"{key}={value}")

    def run(self, body: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``body()`` on a fresh uvloop loop in a thread inside this namespace."""
        return sim_netns.call_in(self.name, lambda: uvloop.run(body()))


@pytest.fixture
def private_netns():
    if not IS_ROOT:
        pytest.skip("network namespaces and nftables need root")
    if MISSING_TOOLS:
        pytest.skip(f"missing tools: {', '.join(MISSING_TOOLS)} (scripts/setup installs nftables)")
    name = f"ehc-icmp-{os.getpid()}-{next(_ns_counter)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        ns = IcmpNetNs(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture(params=["raw", "dgram"])
def icmp_ns(request, private_netns):
    """A namespace with the dead/blocked addresses set up, in which the pinger gets ``request.param``."""
    mode = request.param
    private_netns.sysctl("net.ipv4.ping_group_range", "0 2147483647" if mode == "dgram" else "1 0")
    for addr in (LIVE_V6, DEAD_V6):
        private_netns.sh("ip", "addr", "add", f"{addr}/128", "dev", "lo", "nodad")
    private_netns.sh("nft", "-f", "-", stdin=NFT_RULES)
    private_netns.mode = mode
    return private_netns


def open_pinger(expect_mode: str, timeout: float = 5.0) -> IcmpPinger:
    pinger = IcmpPinger(asyncio.get_running_loop(), timeout)
    desc = pinger.open()
    assert pinger.mode == expect_mode, desc
    assert pinger.modes == {socket.AF_INET: expect_mode, socket.AF_INET6: expect_mode}, desc
    return pinger


# -- the root namespace: whatever mode this process gets --------------------------------------------


async def test_loopback_v4_v6_ok():
    pinger = IcmpPinger(asyncio.get_running_loop(), 2.0)
    desc = pinger.open()
    if pinger.mode == "unavailable":
        pytest.skip(f"no ICMP socket for this user: {desc}")
    try:
        targets = [("127.0.0.1", socket.AF_INET)]
        if pinger.modes[socket.AF_INET6] != "unavailable":
            targets.append(("::1", socket.AF_INET6))
        calls = await ping_all(pinger, targets)
        for ip, _ in targets:
            outcome, latency, detail = only_call(calls[ip])
            assert (outcome, detail) == (OK, ""), ip
            assert latency >= 0
        assert pinger.in_flight == 0
    finally:
        pinger.close()


async def test_many_loopback_addresses_at_once():
    pinger = IcmpPinger(asyncio.get_running_loop(), 5.0)
    desc = pinger.open()
    if pinger.mode == "unavailable":
        pytest.skip(f"no ICMP socket for this user: {desc}")
    try:
        targets = [(ip, socket.AF_INET) for ip in v4_addresses(2000)]
        calls = await ping_all(pinger, targets)
        bad = {ip: c for ip, c in calls.items() if [x[0] for x in c] != [OK]}
        assert not bad, list(bad.items())[:5]
        assert pinger.in_flight == 0
    finally:
        pinger.close()


async def test_bad_input_and_closed_pinger_are_local_errors():
    loop = asyncio.get_running_loop()
    pinger = IcmpPinger(loop, 1.0)
    calls = await ping_all(pinger, [("127.0.0.1", socket.AF_INET)])  # not opened yet
    assert only_call(calls["127.0.0.1"])[::2] == (LOCAL_ERROR, "icmp pinger not opened")
    pinger.open()
    if pinger.mode == "unavailable":
        pinger.close()
        pytest.skip("no ICMP socket for this user")
    calls = await ping_all(pinger, [("not-an-ip", socket.AF_INET), ("::1", socket.AF_INET)])
    assert only_call(calls["not-an-ip"])[0] == LOCAL_ERROR
    assert only_call(calls["::1"])[0] == LOCAL_ERROR
    # close() abandons pings still in flight: the Prober contract is no callback after close().
    got: list = []
    pinger.start("127.0.0.1", socket.AF_INET, Icmp(), lambda *a: got.append(a))
    pinger.close()
    await asyncio.sleep(1.2)  # past the ping's deadline
    assert got == []
    assert pinger.in_flight == 0


# -- both modes, chosen per namespace --------------------------------------------------------------


def test_mode_and_loopback(icmp_ns):
    async def body():
        pinger = open_pinger(icmp_ns.mode)
        try:
            targets = [(ip, socket.AF_INET) for ip in v4_addresses(2000)]
            targets += [("::1", socket.AF_INET6), (LIVE_V6, socket.AF_INET6)]
            return pinger.description, await ping_all(pinger, targets), pinger.in_flight
        finally:
            pinger.close()

    desc, calls, in_flight = icmp_ns.run(body)
    if icmp_ns.mode == "raw":
        assert desc.startswith("icmp: raw sockets (IPv4, IPv6)"), desc
        assert "ping_group_range=1 0" in desc, desc
    else:
        assert desc.startswith("icmp: unprivileged datagram sockets (IPv4, IPv6)"), desc
    bad = {ip: c for ip, c in calls.items() if [x[0] for x in c] != [OK]}
    assert not bad, list(bad.items())[:5]
    assert in_flight == 0


def test_silence_is_a_timeout(icmp_ns):
    timeout = 0.3

    async def body():
        pinger = open_pinger(icmp_ns.mode, timeout)
        try:
            targets = [(DEAD_V4, socket.AF_INET), (DEAD_V6, socket.AF_INET6), ("127.0.0.1", socket.AF_INET)]
            return await ping_all(pinger, targets), pinger.in_flight
        finally:
            pinger.close()

    calls, in_flight = icmp_ns.run(body)
    for ip in (DEAD_V4, DEAD_V6):
        outcome, latency, detail = only_call(calls[ip])
        assert (outcome, detail) == (FAIL, "timeout"), ip
        assert latency >= timeout * 0.9  # the timer fired, not something else
    assert only_call(calls["127.0.0.1"])[0] == OK
    assert in_flight == 0


def test_send_errors(icmp_ns):
    async def body():
        pinger = open_pinger(icmp_ns.mode, 2.0)
        try:
            targets = [
                ("10.1.2.3", socket.AF_INET),  # no route in a fresh namespace
                ("2001:db8::1", socket.AF_INET6),
                (BLOCKED_V4, socket.AF_INET),  # the local firewall drops it on output
            ]
            return await ping_all(pinger, targets)
        finally:
            pinger.close()

    calls = icmp_ns.run(body)
    assert only_call(calls["10.1.2.3"])[::2] == (FAIL, "network unreachable")
    assert only_call(calls["2001:db8::1"])[::2] == (FAIL, "network unreachable")
    outcome, _, detail = only_call(calls[BLOCKED_V4])
    assert outcome == LOCAL_ERROR, detail
    assert "not permitted" in detail


def test_concurrent_pinger_replies_are_not_ours(icmp_ns):
    """Two pingers pinging the same addresses at once: each gets exactly its own replies."""

    async def body():
        a, b = open_pinger(icmp_ns.mode), open_pinger(icmp_ns.mode)
        try:
            targets = [(ip, socket.AF_INET) for ip in v4_addresses(500)] + [("::1", socket.AF_INET6)]
            ra, rb = await asyncio.gather(ping_all(a, targets), ping_all(b, targets))
            return ra, rb, a.foreign + b.foreign
        finally:
            a.close()
            b.close()

    ra, rb, foreign = icmp_ns.run(body)
    for calls in (ra, rb):
        bad = {ip: c for ip, c in calls.items() if [x[0] for x in c] != [OK]}
        assert not bad, list(bad.items())[:5]
    if icmp_ns.mode == "raw":
        assert foreign > 0  # every raw socket saw the other pinger's replies, and ignored them
    else:
        assert foreign == 0  # the kernel hands a ping socket only its own identifier's replies


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _echo_reply(ident: int, seq: int, payload: bytes) -> bytes:
    head = struct.pack("!BBHHH", 0, 0, 0, ident, seq)
    return struct.pack("!BBHHH", 0, 0, _checksum(head + payload), ident, seq) + payload


def test_forged_replies_do_not_match(icmp_ns):
    """Replies with the wrong source, payload or identifier are ignored; only the right one answers.

    The namespace ignores echo requests, so the only replies are the ones this test forges from the
    request it sniffs."""
    icmp_ns.sysctl("net.ipv4.icmp_echo_ignore_all", "1")
    target = "127.0.0.5"

    async def body():
        loop = asyncio.get_running_loop()
        pinger = open_pinger(icmp_ns.mode, 10.0)
        sniffer = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        sniffer.settimeout(5)
        result = loop.create_future()
        try:
            pinger.start(target, socket.AF_INET, Icmp(), lambda *a: result.set_result(a))
            while True:  # our echo request, as seen on lo
                pkt, _ = sniffer.recvfrom(2048)
                ihl = (pkt[0] & 15) * 4
                if pkt[ihl] == 8 and socket.inet_ntoa(pkt[16:20]) == target:
                    break
            ident, seq = struct.unpack_from("!HH", pkt, ihl + 4)
            payload = pkt[ihl + 8 :]
            requester = socket.inet_ntoa(pkt[12:16])

            def forge(source: str, packet: bytes) -> None:
                with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
                    s.bind((source, 0))
                    s.sendto(packet, (requester, 0))

            forge("127.0.0.6", _echo_reply(ident, seq, payload))  # wrong source address
            forge(target, _echo_reply(ident, seq, b"X" * len(payload)))  # not our cookie
            forge(target, _echo_reply(ident ^ 1, seq, payload))  # another identifier
            forge(target, _echo_reply(ident, seq ^ 1, payload))  # another sequence
            # raw: the socket sees all four; dgram: the kernel drops the wrong identifier's reply.
            expect = 4 if icmp_ns.mode == "raw" else 3
            for _ in range(500):
                if pinger.foreign + pinger.stray >= expect:
                    break
                await asyncio.sleep(0.01)
            ignored = (pinger.foreign, pinger.stray, result.done())
            forge(target, _echo_reply(ident, seq, payload))  # the real thing
            return ignored, await result
        finally:
            sniffer.close()
            pinger.close()

    (foreign, stray, answered_early), (outcome, _, detail) = icmp_ns.run(body)
    assert not answered_early
    expected_foreign = 2 if icmp_ns.mode == "raw" else 1
    assert (foreign, stray) == (expected_foreign, 2)
    assert (outcome, detail) == (OK, "")


# -- neither mode ---------------------------------------------------------------------------------

_CHILD = """
import asyncio, json, os, socket, sys
from ehc.probe.icmp import IcmpPinger
from ehc.wire.checks import Icmp

os.setgroups([])
os.setgid(65534)
os.setuid(65534)  # drops every capability, CAP_NET_RAW included

async def main():
    loop = asyncio.get_running_loop()
    pinger = IcmpPinger(loop, 2.0)
    desc = pinger.open()
    result = loop.create_future()
    pinger.start("127.0.0.1", socket.AF_INET, Icmp(), lambda *a: result.set_result(a))
    outcome, _, detail = await result
    pinger.close()
    return {"mode": pinger.mode, "desc": desc, "outcome": outcome, "detail": detail}

print(json.dumps(asyncio.run(main())))
"""


@pytest.mark.parametrize("group_range", ["1 0", "0 2147483647"])
def test_unprivileged_user(private_netns, group_range):
    """Without CAP_NET_RAW: datagram sockets when ping_group_range allows, else clearly unavailable."""
    private_netns.sysctl("net.ipv4.ping_group_range", group_range)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        ["ip", "netns", "exec", private_netns.name, sys.executable, "-c", _CHILD],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    if group_range == "1 0":
        assert got["mode"] == "unavailable"
        assert got["desc"].startswith("icmp: unavailable: "), got
        assert "ping_group_range=1 0" in got["desc"] and "CAP_NET_RAW" in got["desc"], got
        assert got["outcome"] == LOCAL_ERROR and "icmp unavailable for IPv4" in got["detail"], got
    else:
        assert got["mode"] == "dgram", got
        assert (got["outcome"], got["detail"]) == (OK, ""), got
