"""The engine's retry policy and schedule, with scripted probe outcomes and with real sockets."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import until

from ehc.probe import FAIL, LOCAL_ERROR, OK, Done
from ehc.wire.checks import Check, Http, Icmp, Tcp
from ehc.wire.messages import Health, Target, Transition
from ehc.wire.settings import ProbeSettings
from ehc.worker.engine import Engine

FAST = ProbeSettings(interval=0.2, timeout=0.1, retry_count=3, recovery_threshold=2, confirm_spacing=0.005)


class ScriptedProber:
    """Stands in for the TCP prober: answers each attempt with the next outcome of a script."""

    def __init__(self, loop: asyncio.AbstractEventLoop, script: Callable[[int], int]) -> None:
        self._loop = loop
        self.timeout = FAST.timeout
        self._script = script
        self.calls: list[float] = []
        self.in_flight = 0

    def open(self) -> str:
        return ""

    def start(self, ip: str, family: int, check: Check, done: Done) -> None:
        outcome = self._script(len(self.calls))
        self.calls.append(self._loop.time())
        self._loop.call_soon(done, outcome, 0.001, "" if outcome == OK else "scripted")

    def close(self) -> None:
        pass


def _engine(script: Callable[[int], int], settings: ProbeSettings = FAST):
    loop = asyncio.get_running_loop()
    transitions: list[tuple[int, Transition]] = []
    prober = ScriptedProber(loop, script)
    engine = Engine(
        loop, settings, lambda tr: transitions.append((len(prober.calls), tr)), probers={"tcp": prober}
    )  # type: ignore[dict-item]
    engine.start()
    return engine, prober, transitions


async def test_flips_after_exactly_one_plus_retry_count_failures() -> None:
    # Known healthy; every attempt fails.
    engine, prober, transitions = _engine(lambda i: FAIL)
    engine.upsert(Target("a", "127.0.0.1", (Tcp(80),), Health.HEALTHY), immediate=True)
    await until(lambda: bool(transitions))
    calls_at_flip, tr = transitions[0]
    # The wheel may add a regular attempt of its own; the policy still needs exactly 4 votes.
    assert calls_at_flip >= 1 + FAST.retry_count
    assert (tr.health, tr.attempts, tr.detail, tr.port) == (Health.UNHEALTHY, 4, "scripted", 80)
    engine.close()


async def test_one_success_resets_the_failure_count() -> None:
    # F F F S | F F F F : the success closes the first episode; only the next four in a row flip it.
    script = [FAIL, FAIL, FAIL, OK, FAIL, FAIL, FAIL, FAIL]
    engine, prober, transitions = _engine(lambda i: script[i] if i < len(script) else FAIL)
    engine.upsert(Target("a", "127.0.0.1", (Tcp(80),), Health.HEALTHY), immediate=True)
    await until(lambda: bool(transitions))
    # Exactly one flip, not before the second run of four failures (a regular attempt racing the
    # first episode's success may be discarded as stale, so it can take one more call).
    assert [(tr.health, tr.attempts) for _, tr in transitions] == [(Health.UNHEALTHY, 4)]
    assert transitions[0][0] >= 8
    engine.close()


class SilentProber(ScriptedProber):
    """A powered-off endpoint: every attempt fails, and only when its timeout runs out."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop, lambda i: FAIL)
        self.most_in_flight = 0

    def start(self, ip: str, family: int, check: Check, done: Done) -> None:
        self.calls.append(self._loop.time())
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self._loop.call_later(self.timeout, self._expire, done)

    def _expire(self, done: Done) -> None:
        self.in_flight -= 1
        done(FAIL, self.timeout, "timeout")


async def test_confirmations_run_in_parallel_not_one_timeout_after_another() -> None:
    loop = asyncio.get_running_loop()
    prober = SilentProber(loop)
    transitions: list[Transition] = []
    engine = Engine(loop, FAST, transitions.append, probers={"tcp": prober})  # type: ignore[dict-item]
    engine.start()
    engine.upsert(Target("a", "127.0.0.1", (Tcp(80),), Health.HEALTHY), immediate=True)
    await until(lambda: bool(transitions))
    # All confirmations were launched from the first failure, confirm_spacing apart, well inside
    # one interval: they did not wait for each other or for the next tick.
    spread = prober.calls[3] - prober.calls[0]
    assert spread < FAST.interval
    # Each answers only at its deadline, so in parallel they were all in flight at once.
    assert prober.most_in_flight >= FAST.retry_count
    assert transitions[0].attempts == 1 + FAST.retry_count
    engine.close()


async def test_recovers_after_recovery_threshold_successes() -> None:
    script = [OK, FAIL, OK, OK]  # S F: no flip (count reset); S S: flip
    engine, prober, transitions = _engine(lambda i: script[i] if i < len(script) else OK)
    engine.upsert(Target("a", "127.0.0.1", (Tcp(80),), Health.UNHEALTHY), immediate=True)
    await until(lambda: bool(transitions))
    n, tr = transitions[0]
    assert (tr.health, tr.attempts) == (Health.HEALTHY, 2)
    assert n >= 4  # the first success was cancelled by the failure after it
    engine.close()


async def test_unknown_target_is_healthy_on_first_success() -> None:
    engine, prober, transitions = _engine(lambda i: OK)
    engine.upsert(Target("a", "127.0.0.1", (Tcp(80),)), immediate=True)
    await until(lambda: bool(transitions))
    assert [(tr.health, tr.attempts) for _, tr in transitions] == [(Health.HEALTHY, 1)]
    engine.close()


async def test_local_errors_never_flip_a_target() -> None:
    engine, prober, transitions = _engine(lambda i: LOCAL_ERROR)
    engine.upsert(Target("a", "127.0.0.1", (Tcp(80),), Health.HEALTHY), immediate=True)
    await until(lambda: engine.local_errors >= 3)  # several intervals of nothing but local errors
    assert transitions == []
    assert engine.health("a") == Health.HEALTHY
    assert engine.local_errors >= 3
    engine.close()


async def test_a_probe_that_raises_is_a_local_error_and_the_wheel_keeps_turning() -> None:
    # A bad target makes its probe raise on every attempt; every other target is still probed.
    def script(i: int) -> int:
        return OK

    engine, prober, transitions = _engine(script)
    start = prober.start

    def start_or_raise(ip: str, family: int, check: Check, done: Done) -> None:
        if ip == "127.0.0.66":
            raise OverflowError("port must be 0-65535")
        start(ip, family, check, done)

    prober.start = start_or_raise  # type: ignore[method-assign]
    engine.upsert(Target("bad", "127.0.0.66", (Tcp(80),), Health.HEALTHY))
    for i in range(20):
        engine.upsert(Target(f"t{i}", "127.0.0.1", (Tcp(80),), Health.HEALTHY))
    await until(lambda: engine.local_errors >= 3)  # several intervals: the wheel kept turning
    assert len(prober.calls) >= 20 * 2 and engine.probes["tcp"] >= 20 * 2
    assert transitions == [] and engine.health("bad") == Health.HEALTHY
    engine.close()


async def test_removed_target_reports_nothing() -> None:
    engine, prober, transitions = _engine(lambda i: FAIL)
    engine.upsert(Target("a", "127.0.0.1", (Tcp(80),), Health.HEALTHY), immediate=True)
    await until(lambda: len(prober.calls) >= 1)
    engine.remove("a")
    await asyncio.sleep(FAST.interval * 2)
    assert transitions == []
    engine.close()


async def test_start_times_spread_evenly_over_the_interval() -> None:
    settings = ProbeSettings(interval=0.5, timeout=0.1)
    engine, prober, _ = _engine(lambda i: OK, settings)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i in range(2000):
        engine.upsert(Target(f"t{i}", "127.0.0.1", (Tcp(80),), Health.HEALTHY))
    await until(lambda: len(prober.calls) >= 2000)
    first = prober.calls[:2000]
    # By phase within the interval: a loop slowed down while the targets went in only shifts whole rounds.
    deciles = Counter(min(9, int((t - t0) % settings.interval / settings.interval * 10)) for t in first)
    assert set(deciles) == set(range(10))
    assert all(120 <= n <= 280 for n in deciles.values()), deciles  # 200 expected per tenth
    engine.close()


async def test_each_target_is_probed_once_per_interval() -> None:
    settings = ProbeSettings(interval=0.1, timeout=0.05)
    engine, prober, _ = _engine(lambda i: OK, settings)
    for i in range(100):
        engine.upsert(Target(f"t{i}", "127.0.0.1", (Tcp(80),), Health.HEALTHY))
    await asyncio.sleep(1.05)
    engine.close()
    # ~10 intervals: 100 targets × 10, give or take one slot per target at each end.
    assert 100 * 8 <= len(prober.calls) <= 100 * 11


# ---- real sockets -------------------------------------------------------------------------------


async def _decide(target: Target, settings: ProbeSettings = FAST) -> Transition:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Transition] = loop.create_future()
    engine = Engine(loop, settings, lambda tr: fut.done() or fut.set_result(tr))
    engine.start()
    engine.upsert(target, immediate=True)
    try:
        return await asyncio.wait_for(fut, 5)
    finally:
        engine.close()


async def test_real_closed_port_flips_after_retries(closed_port: int) -> None:
    tr = await _decide(Target("x", "127.0.0.1", (Tcp(closed_port),), Health.HEALTHY))
    assert (tr.health, tr.kind, tr.port, tr.detail, tr.attempts) == (
        Health.UNHEALTHY, "tcp", closed_port, "connrefused", 1 + FAST.retry_count,
    )  # fmt: skip


async def test_real_open_port_is_healthy(listener: socket.socket) -> None:
    tr = await _decide(Target("x", "127.0.0.1", (Tcp(listener.getsockname()[1]),)))
    assert (tr.health, tr.kind) == (Health.HEALTHY, "tcp")


async def test_every_port_must_answer(listener: socket.socket, closed_port: int) -> None:
    tr = await _decide(
        Target("x", "127.0.0.1", (Tcp(listener.getsockname()[1]), Tcp(closed_port)), Health.HEALTHY)
    )
    assert (tr.health, tr.port, tr.detail) == (Health.UNHEALTHY, closed_port, "connrefused")


class _Answers(BaseHTTPRequestHandler):
    """Answers GET with the next status of the server's script (then 200 for ever)."""

    def do_GET(self) -> None:
        script: list[int] = self.server.script  # type: ignore[attr-defined]
        self.send_response(script.pop(0) if script else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def scripted_http() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


async def test_an_explicit_no_needs_the_same_confirmations_as_silence(
    scripted_http: ThreadingHTTPServer,
) -> None:
    """The policy (README, "Which probe"): one 503 is a blip (a reload, a shed request), as one lost
    packet is; only 1 + retry_count in a row eject, and they come back fast, so it costs little time."""
    port = scripted_http.server_address[1]
    loop = asyncio.get_running_loop()
    transitions: list[Transition] = []
    engine = Engine(loop, FAST, transitions.append)
    engine.start()
    scripted_http.script = [503]  # type: ignore[attr-defined]
    engine.upsert(Target("blip", "127.0.0.1", (Http(port, "/"),), Health.HEALTHY), immediate=True)
    await until(lambda: not scripted_http.script, "the one 503 to be served")  # type: ignore[attr-defined]
    await asyncio.sleep(3 * FAST.interval)  # its confirmations and a few regular probes: all 200
    assert transitions == [] and engine.suspects == 0
    scripted_http.script = [503] * 1000  # type: ignore[attr-defined]
    await until(lambda: bool(transitions), "the flip")
    tr = transitions[0]
    assert (tr.health, tr.kind, tr.attempts) == (Health.UNHEALTHY, "http", 1 + FAST.retry_count)
    assert tr.detail == "HTTP 503 Service Unavailable"
    engine.close()


async def test_real_icmp_to_loopback_is_healthy() -> None:
    tr = await _decide(Target("x", "127.0.0.1", (Icmp(),)))
    if tr.health != Health.HEALTHY and "unavailable" in tr.detail:
        pytest.skip(tr.detail)
    assert (tr.health, tr.kind, tr.port) == (Health.HEALTHY, "icmp", 0)


async def test_invalid_ip_is_rejected() -> None:
    engine, _, _ = _engine(lambda i: OK)
    with pytest.raises(ValueError):
        engine.upsert(Target("x", "not-an-ip", (Tcp(80),)))
    engine.close()


async def test_suspects_count_open_failure_episodes() -> None:
    # Two failures then a success: a suspect while the episode is open, none after.
    script = [FAIL, FAIL, OK]
    engine, prober, transitions = _engine(lambda i: script[i] if i < len(script) else OK)
    engine.upsert(Target("a", "127.0.0.1", (Tcp(80),), Health.HEALTHY), immediate=True)
    seen: list[int] = []
    await until(
        lambda: seen.append(engine.suspects) or (len(prober.calls) >= 3 and engine.suspects == 0), step=0.002
    )
    assert 1 in seen and transitions == []
    # Confirmed dead: no longer a suspect but unhealthy.
    engine2, _, transitions2 = _engine(lambda i: FAIL)
    engine2.upsert(Target("b", "127.0.0.1", (Tcp(80),), Health.HEALTHY), immediate=True)
    await until(lambda: bool(transitions2))
    assert engine2.suspects == 0
    engine.close()
    engine2.close()
