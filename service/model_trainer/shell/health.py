"""HTTP operations endpoints: ``/healthz`` (alive), ``/readyz`` (serving), ``/metrics``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from model_trainer.metrics import REGISTRY

Checks = Callable[[], dict[str, bool]]


def _probe(
    check: Checks, key: str, reasons: Callable[[], Mapping[str, str]] | None = None
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(_request: web.Request) -> web.Response:
        checks = check()
        ok = all(checks.values())
        body: dict[str, object] = {key: ok, "checks": checks}
        # Why a failing check fails, where that is known (e.g. the broker refused us).
        known = reasons() if reasons is not None else {}
        why = {name: text for name, text in known.items() if not checks.get(name, True)}
        if why:
            body["reasons"] = why
        return web.json_response(body, status=200 if ok else 503)

    return handler


async def start_http(
    host: str,
    port: int,
    liveness: Checks,
    readiness: Checks,
    reasons: Callable[[], Mapping[str, str]] | None = None,
) -> web.AppRunner:
    """Serve the endpoints until the returned runner is cleaned up. ``/healthz`` fails only
    when a restart would help (a wedged publisher), so a liveness probe can act on it;
    ``/readyz`` answers its checks and, for those that fail, the ``reasons`` it knows."""
    app = web.Application()
    app.router.add_get("/healthz", _probe(liveness, "alive"))
    app.router.add_get("/readyz", _probe(readiness, "ready", reasons))
    app.router.add_get("/metrics", make_aiohttp_handler(REGISTRY))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
