"""HTTP operations endpoints: ``/healthz`` (alive), ``/readyz`` (serving), ``/metrics``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from .metrics import REGISTRY


async def _healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


def _readyz(
    check: Callable[[], dict[str, bool]],
    reasons: Callable[[], Mapping[str, str]] | None = None,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(_request: web.Request) -> web.Response:
        checks = check()
        ready = all(checks.values())
        body: dict[str, object] = {"ready": ready, "checks": checks}
        # Why a failing check fails, where that is known (e.g. the broker refused us).
        known = reasons() if reasons is not None else {}
        why = {name: text for name, text in known.items() if not checks.get(name, True)}
        if why:
            body["reasons"] = why
        return web.json_response(body, status=200 if ready else 503)

    return handler


async def start_http(
    host: str,
    port: int,
    readiness: Callable[[], dict[str, bool]],
    reasons: Callable[[], Mapping[str, str]] | None = None,
) -> web.AppRunner:
    """Serve the endpoints until the returned runner is cleaned up. ``/readyz`` answers the
    checks of ``readiness`` and, for those that fail, the ``reasons`` it knows."""
    app = web.Application()
    ready = _readyz(readiness, reasons)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", ready)
    app.router.add_get("/metrics", make_aiohttp_handler(REGISTRY))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
