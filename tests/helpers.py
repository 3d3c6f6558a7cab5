"""Helpers shared by the tests: the one polling helper, and what tests of a checker process need."""

from __future__ import annotations

import asyncio
import signal
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
