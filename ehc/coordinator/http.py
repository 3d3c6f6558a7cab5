"""ehc's own HTTP endpoints (metrics and health, the peers' questions): each an aiohttp app on its port."""

from __future__ import annotations

from aiohttp import web

from ehc.coordinator.settings import parse_address


async def listen(app: web.Application, address: str) -> web.AppRunner:
    """Serve ``app`` on ``HOST:PORT`` (``:PORT``: every address).  Raises OSError when it cannot."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = parse_address(address)
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
