"""Under EHC_LOG_FORMAT=json every line ehc writes to stderr parses as JSON: the coordinator's and its
workers' alike, so a JSON log pipeline never receives a stray text line."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from helpers import conditions_are, stop, until

from ehc.sim import SimCluster


async def test_every_stderr_line_is_json_workers_included() -> None:
    async with SimCluster(nodes=1, pods_per_node=6, kubelet_delay=None, netns=False) as sim:
        gate_pods = [p for p in sim.fleet.targets() if p.style == "gate"]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ehc", "run", "--kubeconfig", sim.kubeconfig, "--identity", "ehc-json",
            "--namespace", "default", "--metrics-address", "", "--peer-address", "", "--workers", "2",
            env={**os.environ, "EHC_LOG_FORMAT": "json", "EHC_LOG_LEVEL": "debug", "PYTHONUNBUFFERED": "1"},
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stderr is not None
        lines: list[bytes] = []

        async def read() -> None:
            assert proc.stderr is not None
            lines.extend([line async for line in proc.stderr])

        reader = asyncio.create_task(read())
        try:
            await until(conditions_are(sim.api, gate_pods, "True"), "every gate pod's first value")
            await asyncio.sleep(1.0)  # a few stats frames and lease renewals
        finally:
            assert await stop(proc) == 0
            await reader
    records = [json.loads(line) for line in lines if line.strip()]  # raises on any text line
    assert records and all({"time", "level", "logger", "pid", "msg"} <= r.keys() for r in records)
    loggers = {r["logger"] for r in records}
    assert any(name.startswith("ehc.worker") for name in loggers), loggers  # the workers' lines too
    assert len({r["pid"] for r in records}) >= 3  # the coordinator and two workers
    assert any(r.get("health") == "healthy" and r.get("pod") for r in records)  # transitions carry fields
