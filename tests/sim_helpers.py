"""Helpers for tests that run a checker process against the simulated cluster."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterable
from typing import Any

from ehc.kube.model import GATE


async def until(predicate: Callable[[], bool], limit: float = 30.0) -> None:
    async with asyncio.timeout(limit):
        while not predicate():
            await asyncio.sleep(0.05)


async def stop(proc: asyncio.subprocess.Process) -> int:
    """SIGTERM, then the exit status (the checker releases its lease on the way out)."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), 20)


def conditions_are(api: Any, pods: Iterable[Any], status: str, condition: str = GATE) -> Callable[[], bool]:
    """A predicate: every pod's ``condition`` has ``status`` on the simulated API server."""
    pods = list(pods)
    return lambda: all(api.pod_condition(p.namespace, p.name, condition) == status for p in pods)
