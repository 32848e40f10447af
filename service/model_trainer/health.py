"""HTTP operations endpoints: ``/healthz`` (alive), ``/readyz`` (serving), ``/metrics``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from .metrics import REGISTRY


async def _healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


def _readyz(
    check: Callable[[], dict[str, bool]],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(_request: web.Request) -> web.Response:
        checks = check()
        ready = all(checks.values())
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    return handler


async def start_http(
    host: str, port: int, readiness: Callable[[], dict[str, bool]]
) -> web.AppRunner:
    """Serve the endpoints until the returned runner is cleaned up."""
    app = web.Application()
    ready = _readyz(readiness)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", ready)
    app.router.add_get("/metrics", make_aiohttp_handler(REGISTRY))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
