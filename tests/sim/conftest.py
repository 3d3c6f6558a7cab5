"""Fixtures of the simulated API server's own tests: a server and the real kubernetes_asyncio client
talking to it through a kubeconfig."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client, config

from ehc.sim.apiserver import ApiServer

TOKEN = "sim-token"


@pytest.fixture
async def api(tmp_path: Any) -> AsyncIterator[ApiServer]:
    server = ApiServer(token=TOKEN, history=500, bookmark_interval=0.2)
    await server.start()
    server.kubeconfig_path = server.write_kubeconfig(str(tmp_path / "kubeconfig"))  # type: ignore[attr-defined]
    yield server
    await server.stop()


@pytest.fixture
async def ac(api: ApiServer) -> AsyncIterator[client.ApiClient]:
    c = await config.new_client_from_config(config_file=api.kubeconfig_path)  # type: ignore[attr-defined]
    async with c:
        yield c
