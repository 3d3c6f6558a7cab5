"""WorkerPool with real worker processes and real pipes."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from helpers import until

from ehc.coordinator.pool import WorkerPool
from ehc.coordinator.sharding import worker_for
from ehc.wire.checks import Icmp, Tcp
from ehc.wire.messages import Health, Stats, Target, Transition
from ehc.wire.settings import ProbeSettings

FAST = ProbeSettings(interval=0.2, timeout=0.2, retry_count=1, recovery_threshold=1, confirm_spacing=0.01)


class Recorder:
    def __init__(self) -> None:
        self.transitions: list[tuple[int, Transition]] = []
        self.stats: list[Stats] = []

    def on_transitions(self, worker: int, transitions: list[Transition], suspects: int) -> None:
        self.transitions.extend((worker, tr) for tr in transitions)

    def on_stats(self, stats: Stats) -> None:
        self.stats.append(stats)

    def health(self) -> dict[str, Health]:
        return {tr.key: tr.health for _, tr in self.transitions}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


async def test_targets_are_spread_and_probed(
    recorder: Recorder, listener: socket.socket, closed_port: int
) -> None:
    port = listener.getsockname()[1]
    up = [Target(f"up-{i}", "127.0.0.1", (Tcp(port),)) for i in range(20)]
    down = [Target(f"down-{i}", "127.0.0.1", (Tcp(closed_port),)) for i in range(10)]
    ping = [Target("ping-v4", "127.0.0.1", (Icmp(),)), Target("ping-v6", "::1", (Icmp(),))]
    async with WorkerPool(
        3, FAST, on_transitions=recorder.on_transitions, on_stats=recorder.on_stats, stats_interval=0.2
    ) as pool:
        pool.upsert(up + down + ping)
        await until(lambda: len(recorder.health()) == len(up + down + ping))
        health = recorder.health()
        assert all(health[t.key] == Health.HEALTHY for t in up)
        assert all(health[t.key] == Health.UNHEALTHY for t in down)
        if "unavailable" not in " ".join(pool.prober_notes.values()):
            assert health["ping-v4"] == health["ping-v6"] == Health.HEALTHY
        # each transition came from the worker the hash assigns
        by_key = {t.key: t for t in up + down + ping}
        assert all(worker == pool.worker_of(by_key[tr.key]) for worker, tr in recorder.transitions)
        assert {w for w, _ in recorder.transitions} == {0, 1, 2}
        await until(lambda: {s.worker for s in recorder.stats} == {0, 1, 2})
        # Pipe traffic follows transitions: one per target, however many probes ran.
        probes_before = sum(pool.stats[w].probes["tcp"] for w in range(3))
        n = len(recorder.transitions)
        await asyncio.sleep(1.0)
        assert sum(pool.stats[w].probes["tcp"] for w in range(3)) > probes_before
        assert len(recorder.transitions) == n


async def test_a_nodes_targets_share_one_worker_and_follow_their_node(
    recorder: Recorder, closed_port: int
) -> None:
    nodes = [f"node-{i}" for i in range(6)]
    targets = [
        Target(f"{n}/pod-{j}", "127.0.0.1", (Tcp(closed_port),), node=n) for n in nodes for j in range(4)
    ]
    async with WorkerPool(3, FAST, on_transitions=recorder.on_transitions) as pool:
        assert len({worker_for(n, 3) for n in nodes}) > 1  # the nodes spread over the workers
        pool.upsert(targets)
        await until(lambda: len(recorder.transitions) == len(targets), "every target judged")
        # Each target was judged by its node's worker, so a node's targets are judged together.
        assert all(worker == worker_for(tr.key.split("/")[0], 3) for worker, tr in recorder.transitions)
        # A target whose node changes (an address moved) moves to the new node's worker.
        elsewhere = next(n for n in nodes if worker_for(n, 3) != worker_for("node-0", 3))
        pool.upsert([Target("node-0/pod-0", "127.0.0.1", (Tcp(closed_port),), node=elsewhere)])
        await until(lambda: len(recorder.transitions) == len(targets) + 1, "the moved target judged again")
        assert recorder.transitions[-1][0] == worker_for(elsewhere, 3)


async def test_remove_and_update(recorder: Recorder, listener: socket.socket, closed_port: int) -> None:
    port = listener.getsockname()[1]
    async with WorkerPool(2, FAST, on_transitions=recorder.on_transitions) as pool:
        pool.upsert([Target("a", "127.0.0.1", (Tcp(port),)), Target("b", "127.0.0.1", (Tcp(port),))])
        await until(lambda: len(recorder.transitions) == 2)
        pool.remove(["b"])
        pool.upsert([Target("a", "127.0.0.1", (Tcp(closed_port),), Health.HEALTHY)])  # its port changed
        await until(lambda: recorder.health()["a"] == Health.UNHEALTHY)
        assert len(pool) == 1
        assert [tr.key for _, tr in recorder.transitions].count("b") == 1


async def test_sigkilled_worker_is_restarted_and_resumes_quietly(
    recorder: Recorder, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    targets = [Target(f"t{i}", "127.0.0.1", (Tcp(port),)) for i in range(40)]
    async with WorkerPool(
        2, FAST, on_transitions=recorder.on_transitions, stats_interval=0.2, restart_backoff=(0.05, 1.0)
    ) as pool:
        pool.upsert(targets)
        await until(lambda: len(recorder.transitions) == 40)
        victim = pool.pids()[0]
        os.kill(victim, signal.SIGKILL)
        await until(lambda: pool.restarts[0] == 1 and len(pool.pids()) == 2 and victim not in pool.pids())
        new_pid = pool.pids()[0]
        # The new process probes the victim's targets again...
        await until(
            lambda: 0 in pool.stats and pool.stats[0].pid == new_pid and pool.stats[0].probes["tcp"] > 0
        )
        assert pool.stats[0].targets["tcp"] == sum(1 for t in targets if pool.worker_of(t) == 0)
        await asyncio.sleep(0.5)
        # ...resuming from the health it had: no transition was reported for the crash.
        assert len(recorder.transitions) == 40


async def test_old_incarnation_is_never_heard(recorder: Recorder, listener: socket.socket) -> None:
    from ehc.wire.messages import Transitions

    async with WorkerPool(
        1, FAST, on_transitions=recorder.on_transitions, restart_backoff=(0.05, 1.0)
    ) as pool:
        pool.upsert([Target("t", "127.0.0.1", (Tcp(listener.getsockname()[1]),))])
        await until(lambda: len(recorder.transitions) == 1)
        old = pool._procs[0]
        os.kill(pool.pids()[0], signal.SIGKILL)
        await until(lambda: pool._procs[0] is not old and len(pool.pids()) == 1)
        fake = Transition("t", Health.UNHEALTHY, Tcp(1), "timeout", 0.2, 2, time.time())
        pool._on_message(old, Transitions(items=[fake]))  # a frame from the dead process
        assert len(recorder.transitions) == 1
        assert pool.dropped_frames == 1


def _broken_worker(then: str) -> list[str]:
    """A fake worker command: says hello properly, then does ``then`` (Python) and hangs."""
    script = textwrap.dedent(
        """
        import os, sys, time
        from ehc.wire.frames import FrameEncoder
        from ehc.wire.messages import Hello
        out = sys.stdout.buffer
        out.write(FrameEncoder().encode(Hello(worker=0, pid=os.getpid(), probers="none")))
        out.flush()
        {then}
        time.sleep(60)
        """
    ).format(then=then)
    return [sys.executable, "-c", script]


@pytest.mark.parametrize(
    ("then", "logged"),
    [
        ('out.write(b"\\x00\\x00\\x00\\x04\\xc1\\xc1\\xc1\\xc1"); out.flush()', "malformed frame"),
        ("os.close(1)", "closed its output pipe"),
        ("pass", "silent for"),  # hangs: no stats, nothing; the watchdog must notice
    ],
    ids=["garbage", "closes-output", "hangs"],
)
async def test_broken_worker_is_killed_and_restarted_not_the_coordinator(
    recorder: Recorder, caplog, then: str, logged: str
) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.ERROR, logger="ehc.coordinator.pool")
    pool = WorkerPool(
        1, FAST, on_transitions=recorder.on_transitions, stats_interval=0.1, restart_backoff=(0.05, 0.5),
        worker_command=_broken_worker(then),
    )  # fmt: skip
    await pool.start()
    try:
        first = pool.pids()
        await until(lambda: pool.restarts[0] >= 1)
        assert logged in caplog.text
        assert recorder.transitions == []
        assert not any(_alive(p) for p in first)
    finally:
        await pool.close()
    assert pool.pids() == []


# The real worker, with a wheel that never turns: its stats keep coming, its probes do not.
STALLED_WORKER = [
    sys.executable, "-c",
    "import sys; from ehc.worker.engine import Engine; Engine._drive = lambda self: None; "
    "from ehc.worker.__main__ import main; sys.exit(main())",
]  # fmt: skip


async def test_a_worker_that_stops_probing_is_noticed_restarted_and_not_healthy(
    recorder: Recorder, listener: socket.socket, caplog
) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.ERROR, logger="ehc.coordinator.pool")
    pool = WorkerPool(
        1, FAST, on_transitions=recorder.on_transitions, stats_interval=0.2, restart_backoff=(0.05, 0.2),
        worker_command=STALLED_WORKER,
    )  # fmt: skip
    await pool.start()
    try:
        pool.upsert([Target(f"t{i}", "127.0.0.1", (Tcp(listener.getsockname()[1]),)) for i in range(5)])
        await until(lambda: 0 in pool.stats and sum(pool.stats[0].targets.values()) == 5, "its stats")
        await until(lambda: pool.stalls[0] >= 1 and pool.restarts[0] >= 1, "the stall noticed", limit=30)
        assert "holds 5 targets but made no probe attempt" in caplog.text
        assert not pool.healthy()
    finally:
        await pool.close()


async def test_a_healthy_pool_says_so_once_its_workers_probe(
    recorder: Recorder, listener: socket.socket
) -> None:
    async with WorkerPool(1, FAST, on_transitions=recorder.on_transitions, stats_interval=0.2) as pool:
        pool.upsert([Target(f"t{i}", "127.0.0.1", (Tcp(listener.getsockname()[1]),)) for i in range(5)])
        await until(pool.healthy, "a probing worker")
        assert pool.stalls == [0]


async def test_start_gives_up_on_workers_that_exit_before_they_are_ready(recorder: Recorder) -> None:
    pool = WorkerPool(
        2, FAST, on_transitions=recorder.on_transitions, restart_backoff=(0.01, 0.05),
        worker_command=[sys.executable, "-c", "import sys; sys.exit(3)"],
    )  # fmt: skip
    try:
        with pytest.raises(RuntimeError, match=r"exited with code -?\d+ 3 times before it was ready"):
            await pool.start(timeout=30)
    finally:
        await pool.close()


COORDINATOR = [sys.executable, "-m", "ehc", "probe", "--watch", "--workers", "3", "--interval", "200ms"]


def _start_coordinator(port: int) -> tuple[subprocess.Popen[str], list[int]]:
    proc = subprocess.Popen(
        [*COORDINATOR, f"127.0.0.1:{port}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "watching" in line:
            pids = [int(p) for p in line.split("pids ")[1].split(";")[0].split()]
            assert len(pids) == 3
            return proc, pids
    proc.kill()
    raise AssertionError("coordinator did not start")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_clean_shutdown_leaves_no_orphans(listener: socket.socket, sig: signal.Signals) -> None:
    proc, pids = _start_coordinator(listener.getsockname()[1])
    assert all(_alive(p) for p in pids)
    proc.send_signal(sig)
    assert proc.wait(timeout=15) == 0
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)


def test_workers_exit_when_the_coordinator_is_killed(listener: socket.socket) -> None:
    proc, pids = _start_coordinator(listener.getsockname()[1])
    proc.kill()  # SIGKILL: no chance to clean up; the workers see their stdin close
    proc.wait(timeout=5)
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)


async def test_suspect_counts_reach_the_coordinator_in_step_with_the_transitions(netns) -> None:  # type: ignore[no-untyped-def]
    # Run the pool inside a namespace where 127.0.0.9 is dark: its targets become suspects, then
    # unhealthy, and the suspect count falls back to zero.  Each frame's count is of the same moment
    # as its transitions, so the dark total (unhealthy + suspects), frame by frame, never falls while
    # nothing recovers: the fail-safe weighing it cannot flap.
    code = textwrap.dedent(
        """
        import asyncio
        from ehc.wire.settings import ProbeSettings
        from ehc.wire.checks import Tcp
        from ehc.wire.messages import Health, Target
        from ehc.coordinator.pool import WorkerPool
        async def main():
            counts, flips, dark = [], [], []
            def on_transitions(worker, transitions, suspects):
                flips.extend(t.key for t in transitions)
                if suspects >= 0:
                    counts.append(suspects)
                    dark.append(len(flips) + suspects)
            settings = ProbeSettings(interval=0.5, timeout=0.3, retry_count=2, confirm_spacing=0.05)
            pool = WorkerPool(1, settings, on_transitions=on_transitions)
            async with pool:
                pool.upsert([Target(f"t{i}", "127.0.0.9", (Tcp(80),), Health.HEALTHY) for i in range(20)])
                for _ in range(100):
                    await asyncio.sleep(0.05)
                    if len(flips) == 20 and counts and counts[-1] == 0:
                        break
            print(max(counts), counts[-1], len(flips), int(dark == sorted(dark)))
        asyncio.run(main())
        """
    )
    netns.drop("ip daddr 127.0.0.9")
    out = netns.run([sys.executable, "-c", code], timeout=60)
    assert out.returncode == 0, out.stderr
    peak, last, flipped, monotonic = map(int, out.stdout.split())
    assert peak > 0 and last == 0 and flipped == 20 and monotonic


async def test_workers_yield_the_cpu_to_their_coordinator(recorder: Recorder) -> None:
    # Probing may saturate the CPU; the coordinator's Lease renewals must still run on time.
    async with WorkerPool(2, FAST, on_transitions=recorder.on_transitions) as pool:
        mine = os.getpriority(os.PRIO_PROCESS, 0)
        assert [os.getpriority(os.PRIO_PROCESS, pid) for pid in pool.pids()] == [min(19, mine + 5)] * 2


async def test_a_dead_workers_suspects_stand_until_its_next_incarnation_counts_anew(netns) -> None:  # type: ignore[no-untyped-def]
    # Its targets are in doubt when it is killed.  While it waits for its restart nobody probes them,
    # so its last count stands (the fail-safe's best guess); once the new incarnation is up, only its
    # own count does: the targets answer again and it doubts nothing, so nothing may linger.
    code = textwrap.dedent(
        """
        import asyncio, os, signal, socket, subprocess
        from ehc.wire.settings import ProbeSettings
        from ehc.wire.checks import Tcp
        from ehc.wire.messages import Health, Target
        from ehc.coordinator.pool import WorkerPool
        async def main():
            counts = []
            def on_transitions(worker, transitions, suspects):
                if suspects >= 0:
                    counts.append(suspects)
            # long episodes: 30 confirmations 0.2 s apart, so the targets stay in doubt
            settings = ProbeSettings(interval=0.5, timeout=0.3, retry_count=30, confirm_spacing=0.2)
            app = socket.create_server(("127.0.0.9", 0))  # answers once the drop is gone
            port = app.getsockname()[1]
            async with WorkerPool(1, settings, on_transitions=on_transitions, restart_backoff=(1.5, 1.5)) as pool:
                pool.upsert([Target(f"t{i}", "127.0.0.9", (Tcp(port),), Health.HEALTHY) for i in range(5)])
                for _ in range(100):
                    await asyncio.sleep(0.05)
                    if counts and counts[-1] == 5:
                        break
                before = counts[-1]
                os.kill(pool.pids()[0], signal.SIGKILL)
                subprocess.run(["nft", "flush", "chain", "inet", "ehc_test", "inbound"], check=True)
                await asyncio.sleep(0.75)  # inside the restart backoff
                dead = counts[-1], len(pool.pids())
                for _ in range(100):
                    await asyncio.sleep(0.05)
                    if pool.healthy():
                        break
                await asyncio.sleep(1.0)  # every target probed (and answering) again
                print(before, *dead, counts[-1])
        asyncio.run(main())
        """
    )
    netns.drop("ip daddr 127.0.0.9")
    out = netns.run([sys.executable, "-c", code], timeout=60)
    assert out.returncode == 0, out.stderr
    before, while_dead, alive, after = map(int, out.stdout.split())
    assert (before, while_dead, alive, after) == (5, 5, 0, 0)
